/*
 * kvmhost.h - shared declarations of the reference KVM host.
 */
#ifndef KVMHOST_H
#define KVMHOST_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "guest_abi.h"

#define MAX_SLOTS 64
#define MAX_MSRS  32

/* Exit codes (documented in README.md; the tests rely on them). */
enum {
    EXIT_OK = 0,          /* source: migration completed; dest: loaded, verified, guest continued */
    EXIT_ERROR = 1,       /* internal error, verification failure, guest broken */
    EXIT_MIG_FAILED = 2,  /* source: migration failed, guest healthy; dest: incoming failed */
    EXIT_MIG_CANCELLED = 3, /* source: migration cancelled, guest healthy */
    EXIT_MIG_UNDECIDED = 4, /* source: END sent, no answer: vCPUs stay paused, memory intact */
    EXIT_USAGE = 64,
    EXIT_NOKVM = 77       /* /dev/kvm missing or unusable: tests print SKIPPED */
};

/* ---- util.c ---- */
uint64_t now_ns(void);                     /* CLOCK_MONOTONIC */
double now_s(void);
uint64_t rdtsc(void);
uint64_t measure_tsc_hz(void);
void sleep_ns(uint64_t ns);
int parse_size(const char *s, uint64_t *out);        /* 512M, 4G, 4096 (K/M/G/T powers of 1024) */
int parse_seconds(const char *s, double *out);
void fmt_bytes(char *buf, size_t cap, uint64_t bytes);  /* "12.3 MiB" */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
const char *jesc(const char *s);  /* JSON string literal, quotes included */
void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern int g_quiet;
extern int g_signal_fd;   /* main.c: readable once SIGINT/SIGTERM arrived (self-pipe) */

/* ---- leak.c ---- */
struct proc_sample { int fds, threads; };
void proc_sample(struct proc_sample *p);
void proc_sample_settled(struct proc_sample *p, const struct proc_sample *before);
void leak_on_purpose(int fd);

/* ---- vm.c ---- */
struct vm_config {
    uint64_t mem_size;
    uint32_t nr_vcpus;
    uint64_t slot_size;
    int hugepages;          /* request: 0 no, 1 yes */
    int dirty_log;          /* DIRTY_LOG_AUTO (ring where offered), DIRTY_LOG_RING, DIRTY_LOG_BITMAP */
};
enum { DIRTY_LOG_AUTO = 0, DIRTY_LOG_RING, DIRTY_LOG_BITMAP };

struct vcpu;

struct vm {
    int kvm_fd, vm_fd;
    int run_size;
    uint64_t mem_size;
    uint8_t *mem;
    uint64_t map_size;
    const char *backing;    /* "anonymous 4K", "hugetlbfs 2M", "THP (madvise)" */
    uint32_t nslots;
    struct { uint64_t gpa, size; uint8_t *host; } slots[MAX_SLOTS];
    int manual_protect;     /* KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled */
    /* KVM dirty ring (KVM_CAP_DIRTY_LOG_RING): per-vCPU rings instead of the
     * bitmap. Harvested entries go into ring_bitmap[slot] until the library's
     * get_dirty_log takes them, and count for the vCPU that wrote the page. */
    int dirty_ring;
    uint32_t ring_entries;  /* per vCPU */
    pthread_mutex_t ring_lock;
    uint64_t *ring_bitmap[MAX_SLOTS];
    _Atomic uint64_t ring_harvests, ring_full_exits, ring_entries_total;
    _Atomic uint64_t ring_partial_resets;  /* KVM_RESET_DIRTY_RINGS had to be called again */
    int mem_fresh;          /* RAM is a fresh zero mapping nobody wrote yet (MK_REGION_FRESH holds) */
    int dirty_logging;
    uint64_t tsc_hz;
    uint32_t nr_vcpus;
    struct vcpu *vcpus;
    struct kvm_cpuid2 *cpuid;
    uint32_t xsave_size;    /* bytes for KVM_GET_XSAVE2 / SET_XSAVE; 0 = no XSAVE, use FPU */
    int has_xcrs, has_events;
    uint32_t nmsrs;
    uint32_t msrs[MAX_MSRS]; /* MSRs saved and restored */

    /* vCPU control (vcpu.c) */
    pthread_mutex_t lock;
    pthread_cond_t cond;    /* signalled when a vCPU changes state */
    int paused;             /* vCPUs must stay out of guest mode */
    uint64_t pause_ns;      /* CLOCK_MONOTONIC when the last pause started */
    uint64_t resume_ns;     /* ... when the last resume happened */
    void *throttle_src;     /* mk_source * while a migration runs (throttle point) */
    int in_throttle;        /* vCPU threads inside mk_source_throttle_point (under lock) */
    _Atomic int fatal;      /* a vCPU hit a guest error */
    char fatal_msg[512];
};

int vm_create(struct vm *vm, const struct vm_config *cfg);
void vm_destroy(struct vm *vm);
/* Write GDT/TSS/IDT, page tables and the guest code; vCPU registers for a fresh boot. */
int vm_setup_longmode(struct vm *vm);
int vm_set_dirty_logging(struct vm *vm, int on);
int vm_get_dirty_log(struct vm *vm, uint32_t slot, uint64_t *bitmap, uint64_t npages);
/* Dirty ring: collect every vCPU's entries into ring_bitmap, then
 * KVM_RESET_DIRTY_RINGS. Any thread (a vCPU on KVM_EXIT_DIRTY_RING_FULL). */
int vm_harvest_dirty_rings(struct vm *vm);
/* Dirty ring: pages each vCPU dirtied since the last call (counts[nr_vcpus]). */
void vm_take_vcpu_dirty_counts(struct vm *vm, uint64_t *counts, uint32_t n);
const char *vm_dirty_log_name(const struct vm *vm);
static inline void *gpa_ptr(struct vm *vm, uint64_t gpa) { return vm->mem + gpa; }
static inline uint64_t gpa_u64(struct vm *vm, uint64_t gpa) { return *(volatile uint64_t *)(vm->mem + gpa); }

/* ---- workload.c: parameter page and memory pattern ---- */
struct workload {
    uint64_t ws_size;       /* bytes, multiple of 4096 */
    uint64_t dirty_rate;    /* total bytes/s over all dirtiers; 0 = as fast as it can */
    uint32_t dirtier_mask;  /* bit i: vCPU i dirties */
    uint32_t compute_mask;  /* bit i: vCPU i computes (others idle unless dirtier) */
    uint32_t compute_duty;  /* percent of each 10 ms period a compute vCPU computes */
    int fill;               /* 1: static area gets the page pattern */
};
int workload_write_params(struct vm *vm, const struct workload *w);
void workload_fill(struct vm *vm);   /* pattern over the whole data area (multi-threaded) */
static inline uint64_t pattern_word(uint64_t addr)
{
    return (addr ^ 0x5bd1e9955bd1e995ull) * PATTERN_MUL;
}
const char *role_name(uint64_t role);
uint64_t lcg_jump(uint64_t x, uint64_t steps);

/* Per-vCPU status as the guest reports it. */
struct guest_status {
    uint64_t magic, starts, role, work, sweeps, pos, sleeps, lcg_n, lcg_x, last_tsc, vcpu;
};
void read_status(struct vm *vm, uint32_t vcpu, struct guest_status *st);

/* ---- vcpu.c ---- */
enum vcpu_state { VCPU_RUNNING = 0, VCPU_OUTSIDE, VCPU_PARKED, VCPU_DEAD };

struct vcpu {
    struct vm *vm;
    uint32_t id;
    int fd;
    struct kvm_run *run;
    pthread_t thread;
    int thread_started;
    pthread_cond_t cond;    /* wakes this vCPU's thread (sleep, park) */
    int state;              /* enum vcpu_state, under vm->lock */
    int stop;               /* under vm->lock */
    int unsettled;          /* the last exit was I/O: completes at the next KVM_RUN */
    _Atomic int kick_pending;
    /* counters (vCPU thread) */
    _Atomic uint64_t exits, io_exits, sleeps, kicks, throttle_calls, throttle_ns, sleep_ns;
    struct kvm_dirty_gfn *ring;   /* dirty ring mapping (vm->dirty_ring) */
    uint32_t ring_next;           /* next entry to harvest (under vm->ring_lock) */
    uint64_t ring_pages;          /* harvested since the last vm_take_vcpu_dirty_counts (ring_lock) */
    int started_event;
};

int vcpu_init_boot_state(struct vcpu *v);          /* long mode, CPL 3, RIP = entry */
int vcpus_start(struct vm *vm, int paused);        /* threads; paused: park until vcpus_resume */
int vcpus_pause(struct vm *vm);                    /* returns when none is in guest mode */
void vcpus_resume(struct vm *vm);
void vcpu_kick(struct vcpu *v);                    /* never blocks for long */
void vcpus_stop(struct vm *vm);                    /* end and join the threads */
void vcpu_signal_setup(void);
void vcpu_dump(struct vcpu *v, FILE *f);

/* ---- devstate.c: vCPU + host state blob ---- */
struct host_snapshot {
    uint64_t pause_ns;      /* source CLOCK_MONOTONIC at pause */
    uint64_t tsc_hz;
    uint64_t mem_size;
    uint32_t nr_vcpus;
    uint32_t reserved;
    uint64_t guest_start_ns;
    struct guest_status status[MAX_VCPUS];
    uint64_t rip[MAX_VCPUS];
    uint64_t r13[MAX_VCPUS];
};
size_t devstate_size(struct vm *vm);
/* Serialize into a malloc'ed buffer (*out, *len). vCPUs must be paused. */
int devstate_save(struct vm *vm, const struct host_snapshot *hs, uint8_t **out, size_t *len);
/* Validate and apply to vm's vCPUs; fills *hs. errbuf gets the reason on failure. */
int devstate_load(struct vm *vm, const void *data, size_t len, struct host_snapshot *hs,
                  char *errbuf, size_t errcap);
void snapshot_fill(struct vm *vm, struct host_snapshot *hs, uint64_t pause_ns, uint64_t guest_start_ns);

/* ---- verify.c ---- */
struct slice_result {
    uint32_t vcpu;
    uint64_t pages;
    int64_t edge;           /* page index one lower than its predecessor, -1 if all equal */
    uint8_t first, last;    /* counter byte of the first and last page */
    uint64_t bad_counter;   /* pages breaking the invariant */
    uint64_t bad_pattern;   /* pages whose other bytes are wrong */
};
struct verify_result {
    int ok;
    uint64_t pages_checked;     /* working-set counters checked (verify_counters) */
    uint32_t nslices;
    struct slice_result slices[MAX_VCPUS];
    uint64_t pattern_pages;     /* working-set pages whose pattern was checked */
    uint64_t unowned_bad;       /* working-set pages outside every slice that are wrong */
    uint64_t static_pages, static_bad;
    char msg[1024];         /* first problems, human readable */
};
/* Counters of every dirtier's slice: QEMU's invariant (byte 0 of each page
 * only). The guest changes them: run it with the guest stopped. */
int verify_counters(struct vm *vm, struct verify_result *r);
/* The page pattern of the working set (everything but the counters), into r
 * as filled by verify_counters. The guest never writes it: may run while the
 * guest runs. */
int verify_ws_pattern(struct vm *vm, struct verify_result *r);
/* Both (guest must be stopped). */
int verify_working_set(struct vm *vm, struct verify_result *r);
/* ns per page verify_counters takes on cold memory, measured on a 32 MiB buffer. */
double counter_scan_ns_per_page(void);
/* Static area (never written by the guest): the page pattern. Can run while the guest runs. */
int verify_static(struct vm *vm, struct verify_result *r);
/* Cross-check slices with a snapshot (status pages and r13). Appends to r->msg. */
int verify_against_snapshot(struct vm *vm, const struct host_snapshot *hs, struct verify_result *r);
int verify_compute(struct vm *vm, uint32_t vcpu, char *msg, size_t cap);

/* ---- net.c ---- */
int net_connect(const char *uri, double timeout_s, char *err, size_t errcap);
int net_listen(const char *uri, char *err, size_t errcap);
int net_accept(int lfd, double timeout_s, char *err, size_t errcap);

/* mk_stats / mk_dest_stats fields exist only if the library filled them:
 * a 0.1 library reports a smaller struct_size and leaves 0.2 fields unset. */
#define MK_HAS(s, field) ((s)->struct_size >= offsetof(__typeof__(*(s)), field) + sizeof((s)->field))

/* ---- progress.c ---- */
struct mk_stats;
enum { PROGRESS_AUTO = 0, PROGRESS_TTY, PROGRESS_PLAIN, PROGRESS_NONE };
void progress_line(int mode, double t, const struct mk_stats *s, const char *guest, const char *why);
void progress_done(int mode);
void print_info_migrate(FILE *f, const struct mk_stats *s);
const char *bw_source_name(int s);
const char *switchover_reason_name(int r);
/* The expected-downtime parts as one JSON object (0.1 library: null). */
void json_expected(FILE *f, const struct mk_stats *s);
/* Expected downtime in us: the sum of the parts when the library has them, else ms * 1000. */
uint64_t expected_downtime_us(const struct mk_stats *s);

/* ---- timeline.c: --timeline FILE.svg ---- */
struct timeline;
struct timeline_marks {
    uint64_t start_ns, end_ns;     /* migration start (mk_source_start) and end */
    uint64_t pause_ns;             /* source vCPUs paused for the switchover, 0: never */
    double downtime_ms;            /* measured (library: pause -> destination ack) */
    double expected_at_switchover_ms;
    const char *title, *summary;
};
struct timeline *timeline_new(void);
void timeline_free(struct timeline *t);
void timeline_record(struct timeline *t, uint64_t now, const struct mk_stats *s);
int timeline_write_svg(struct timeline *t, const char *path, const struct timeline_marks *m, char *err, size_t errcap);

/* ---- migrate_src.c / migrate_dst.c ---- */
struct param_set { double at; char name[64]; char value[64]; int done; };
enum { CANCEL_AT_NONE = 0, CANCEL_AT_START, CANCEL_AT_ACTIVE, CANCEL_AT_PASS, CANCEL_AT_DEVICE };

struct src_opts {
    const char *uri;
    double migrate_after;
    double connect_timeout;
    struct param_set params[64];   /* at < 0: before start */
    int nparams;
    double cancel_after;           /* < 0: never */
    int cancel_at;                 /* --cancel-at EVENT[+MS]: CANCEL_AT_* */
    uint64_t cancel_pass;          /* CANCEL_AT_PASS: when this many passes are done */
    double cancel_delay_ms;        /* after the event */
    const char *stats_json;
    const char *timeline;          /* --timeline FILE.svg */
    int progress_mode;
    double after_fail_seconds;
    uint64_t ack_timeout_ms;
    int keep_running;
    double speed_window;           /* > 0: measure vCPU speeds this long before migrating */
    const unsigned char *auth_key; /* --auth-key-file: authenticated stream (NULL: plain) */
    size_t auth_key_len;
};
int run_source_migration(struct vm *vm, const struct workload *w, const struct src_opts *o,
                         uint64_t guest_start_ns);

enum { CORRUPT_NONE = 0, CORRUPT_COUNTER, CORRUPT_PATTERN };
struct dst_opts {
    const char *uri;
    double accept_timeout;
    double run_after_seconds;
    const char *stats_json;
    int keep_running;
    int corrupt_after_load;        /* testing aid, CORRUPT_*: damage one working-set byte after loading */
    int no_fresh;                  /* --no-fresh: register guest memory without MK_REGION_FRESH */
    int no_prefault;               /* --no-prefault: do not mk_dest_prefault before accepting */
    int64_t resume_cost_us;        /* --resume-cost-us; < 0: estimate it */
    uint64_t ws_hint;              /* --working-set: the guest's, to size the resume-cost estimate */
    const unsigned char *auth_key; /* --auth-key-file: accept only a stream authenticated with it */
    size_t auth_key_len;
};
int run_destination(struct vm *vm, const struct dst_opts *o);

/* ---- soak.c: --soak URI --hops N ---- */
int run_soak(struct vm *vm, const struct workload *w, struct src_opts *src, struct dst_opts *dst,
             const char *soak_uri, uint32_t hops, uint64_t start_ns);

/* Guest progress helpers shared by main/src/dst. */
void guest_summary(struct vm *vm, char *buf, size_t cap);
/* rates (may be NULL): work units per second per vCPU over the watch. */
int guest_health(struct vm *vm, double seconds, double *rates, int *mem_ok, char *buf, size_t cap);

#endif
