/*
 * migrate_dst.c - the destination side.
 *
 * The VM is built from our own command line (same --mem/--vcpus as the
 * source; the library's region check catches a mismatch) with its vCPU
 * threads parked. mk_dest_run loads the stream straight into guest memory and
 * hands the device-state blob to load_device_state, which restores every
 * vCPU. With MK_DEST_MANUAL_ACK we then check what the guest is about to
 * change (the working-set counters: QEMU's invariant; the status pages
 * against the source's snapshot), resume the vCPUs, and only then
 * acknowledge, so the library's downtime ends when the guest runs again.
 * Everything the guest never writes (the page pattern of the working set and
 * of the static area) is verified after the resume, off the switchover path.
 * End-to-end downtime = our resume time - the source's pause time (both
 * CLOCK_MONOTONIC on one machine; the pause time travels in the blob).
 *
 * Nothing between mk_dest_run returning and the ack may wait: no sleeps, no
 * joins of threads that sleep, no printing.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "kvmhost.h"
#include "migrationkit.h"

extern volatile sig_atomic_t g_interrupted;

/* Slack on top of the measured parts of the resume cost: vcpus_resume
 * (a lock and a condvar signal per vCPU), the status-page check, the
 * mk_dest_ack call. END -> resume measured 10-20 us here (no working set);
 * generous on purpose, as underestimating can break downtime-limit. */
#define RESUME_SLACK_US 200
/* The counter scan's calibration is a best-of-3 on a quiet buffer; the real
 * scan runs right after a transfer on a shared machine. */
#define SCAN_NOISE_FACTOR 1.25

/* What kvmhost does between the END record and mk_dest_ack, and what it
 * tells the library (mk_dest_config.resume_cost_us). */
struct resume_cost {
    uint64_t hint_us;           /* given to the library */
    int overridden;             /* --resume-cost-us */
    uint64_t devstate_us;       /* a device-state load of this VM, measured */
    double scan_ns_per_page;    /* counter check on cold memory, measured */
    uint64_t ws_pages;          /* working set the estimate assumes */
    uint64_t check_us;          /* scan_ns_per_page * ws_pages * SCAN_NOISE_FACTOR */
};

/* Switchover timeline, CLOCK_MONOTONIC ns (0 = did not happen). */
struct dst_timeline {
    uint64_t devstate_start, devstate_done;  /* inside load_device_state (before END) */
    uint64_t end;                            /* mk_dest_run returned: END received */
    uint64_t verified;                       /* pre-resume checks done */
    uint64_t resumed;                        /* vcpus_resume */
    uint64_t acked;                          /* mk_dest_ack returned */
};

struct dst_ctx {
    struct vm *vm;
    struct host_snapshot snap;
    int loaded;
    struct dst_timeline tl;
    struct resume_cost cost;
    int fresh;                  /* regions registered with MK_REGION_FRESH */
    int prefaulted;             /* mk_dest_prefault succeeded before the accept */
    uint64_t prefault_us;       /* what it took, measured here */
    char err[512];
};

static int cb_load(void *user, const void *data, size_t len)
{
    struct dst_ctx *c = user;
    c->tl.devstate_start = now_ns();
    if (devstate_load(c->vm, data, len, &c->snap, c->err, sizeof(c->err)) < 0) {
        fprintf(stderr, "kvmhost: destination: %s\n", c->err);
        return -1;
    }
    c->loaded = 1;
    c->tl.devstate_done = now_ns();
    return 0;
}

static void cb_log(void *user, int level, const char *msg)
{
    (void)user;
    static const char *names[] = { "error", "warn", "info", "debug" };
    if (level > MK_LOG_INFO && !getenv("KVMHOST_DEBUG"))
        return;
    fprintf(stderr, "[mk %s] %s\n", level >= 0 && level <= 3 ? names[level] : "?", msg);
}

/* ---- the resume-cost estimate ---- */

/* One device-state save + load of this VM's own (boot) vCPU state: the
 * same ioctls load_device_state issues at switchover. Worst of 3. */
static uint64_t measure_devstate_us(struct vm *vm)
{
    struct host_snapshot hs;
    memset(&hs, 0, sizeof(hs));
    uint64_t worst = 0;
    for (int i = 0; i < 3; i++) {
        uint8_t *blob;
        size_t len;
        char err[256];
        struct host_snapshot out;
        if (devstate_save(vm, &hs, &blob, &len) < 0)
            return 0;
        uint64_t t0 = now_ns();
        int r = devstate_load(vm, blob, len, &out, err, sizeof(err));
        uint64_t us = (now_ns() - t0) / 1000;
        free(blob);
        if (r < 0) {
            logmsg("resume-cost estimate: device-state load failed: %s", err);
            return 0;
        }
        if (us > worst)
            worst = us;
    }
    return worst;
}

/* Before the vCPU threads start (the ioctls need them out of KVM_RUN). */
static void estimate_resume_cost(struct vm *vm, const struct dst_opts *o, struct resume_cost *rc)
{
    memset(rc, 0, sizeof(*rc));
    uint64_t data = vm->mem_size > GPA_DATA ? vm->mem_size - GPA_DATA : 0;
    uint64_t ws = o->ws_hint < data ? o->ws_hint : data;
    rc->ws_pages = ws / 4096;
    rc->devstate_us = measure_devstate_us(vm);
    rc->scan_ns_per_page = counter_scan_ns_per_page();
    rc->check_us = (uint64_t)(rc->scan_ns_per_page * (double)rc->ws_pages * SCAN_NOISE_FACTOR / 1000.0 + 0.5);
    rc->hint_us = rc->devstate_us + rc->check_us + RESUME_SLACK_US;
    if (o->resume_cost_us >= 0) {
        rc->hint_us = (uint64_t)o->resume_cost_us;
        rc->overridden = 1;
    }
}

/* ---- the Ctrl-C watcher ---- */

/*
 * Ctrl-C while loading: mk_dest_run blocks this thread, so a watcher calls
 * mk_dest_cancel. It sleeps in poll() on the signal handler's self-pipe and
 * on `done`, an eventfd written once the load is over, so it never has a
 * timer to run out: stopping it costs nothing. (It used to poll in 50 ms
 * steps and be joined right after mk_dest_run, which put up to 50 ms into
 * every downtime.) It is stopped only after the ack anyway.
 */
struct cancel_watch {
    mk_dest *dst;
    int done;                   /* eventfd */
    pthread_t thread;
};

static void *watch_interrupt(void *arg)
{
    struct cancel_watch *cw = arg;
    struct pollfd fds[2] = { { .fd = cw->done, .events = POLLIN }, { .fd = g_signal_fd, .events = POLLIN } };
    for (;;) {
        if (g_interrupted) {
            mk_dest_cancel(cw->dst);
            break;
        }
        int n = poll(fds, g_signal_fd >= 0 ? 2 : 1, -1);
        if (n < 0 && errno != EINTR)
            break;
        if (fds[0].revents)
            break;
    }
    return NULL;
}

static void watch_start(struct cancel_watch *cw, mk_dest *dst)
{
    cw->dst = dst;
    cw->done = eventfd(0, EFD_CLOEXEC);
    if (cw->done < 0 || pthread_create(&cw->thread, NULL, watch_interrupt, cw) != 0)
        die("cannot start the Ctrl-C watcher");
}

static void watch_stop(struct cancel_watch *cw)
{
    uint64_t one = 1;
    if (write(cw->done, &one, sizeof(one)) != sizeof(one))
        logmsg("waking the Ctrl-C watcher: %s", strerror(errno));
    pthread_join(cw->thread, NULL);
    close(cw->done);
}

/* ---- reporting ---- */

/* us of `t` relative to END received, as a JSON number (null if it did not happen). */
static const char *rel_us(const struct dst_timeline *tl, uint64_t t, char *buf, size_t cap)
{
    if (!t || !tl->end)
        snprintf(buf, cap, "null");
    else
        snprintf(buf, cap, "%.1f", ((double)t - (double)tl->end) / 1e3);
    return buf;
}

static void json_dest_stats(FILE *f, const mk_dest_stats *ds)
{
    fprintf(f, "\"dest\": {\"status\": \"%s\", \"error\": %d, \"bytes_received\": %" PRIu64 ", \"pages_loaded\": %" PRIu64
               ", \"zero_pages\": %" PRIu64 ", \"records\": %" PRIu64 ", \"device_state_bytes\": %" PRIu64
               ", \"total_time_ms\": %" PRIu64,
            mk_status_name(ds->status), ds->error, ds->bytes_received, ds->pages_loaded, ds->zero_pages, ds->records,
            ds->device_state_bytes, ds->total_time_ms);
    if (MK_HAS(ds, end_to_ack_us))
        fprintf(f, ", \"zero_load_us\": %" PRIu64 ", \"zero_pages_cleared\": %" PRIu64 ", \"device_load_us\": %" PRIu64
                   ", \"end_to_ack_us\": %" PRIu64,
                ds->zero_load_us, ds->zero_pages_cleared, ds->device_load_us, ds->end_to_ack_us);
    if (MK_HAS(ds, prefault_us))
        fprintf(f, ", \"prefault_us\": %" PRIu64, ds->prefault_us);
    if (MK_HAS(ds, stopped_cpu_wait_us) && ds->stopped_cpu_wait_us != UINT64_MAX)
        fprintf(f, ", \"stopped_cpu_wait_us\": %" PRIu64, ds->stopped_cpu_wait_us);
    else
        fprintf(f, ", \"stopped_cpu_wait_us\": null");
    fprintf(f, "},\n");
}

static void json_switchover(FILE *f, const struct dst_ctx *c)
{
    const struct dst_timeline *tl = &c->tl;
    char a[32], b[32], d[32], e[32], g[32];
    fprintf(f, "  \"switchover_us\": {\"device_state_load_start\": %s, \"device_state_loaded\": %s, "
               "\"device_state_load_us\": %.1f, \"memory_verified\": %s, \"vcpus_resumed\": %s, \"ack_sent\": %s},\n",
            rel_us(tl, tl->devstate_start, a, sizeof(a)), rel_us(tl, tl->devstate_done, b, sizeof(b)),
            tl->devstate_done ? (double)(tl->devstate_done - tl->devstate_start) / 1e3 : 0.0,
            rel_us(tl, tl->verified, d, sizeof(d)), rel_us(tl, tl->resumed, e, sizeof(e)),
            rel_us(tl, tl->acked, g, sizeof(g)));
    const struct resume_cost *rc = &c->cost;
    fprintf(f, "  \"resume_cost\": {\"hint_us\": %" PRIu64 ", \"source\": \"%s\", \"device_state_us\": %" PRIu64
               ", \"check_us\": %" PRIu64 ", \"check_ns_per_page\": %.1f, \"working_set_pages\": %" PRIu64
               ", \"slack_us\": %d},\n",
            rc->hint_us, rc->overridden ? "--resume-cost-us" : "estimate", rc->devstate_us, rc->check_us,
            rc->scan_ns_per_page, rc->ws_pages, RESUME_SLACK_US);
    fprintf(f, "  \"fresh\": %s,\n", c->fresh ? "true" : "false");
}

static void json_verify(FILE *f, const char *name, const struct verify_result *vr)
{
    fprintf(f, "  \"%s\": {\"ok\": %s, \"pages\": %" PRIu64 ", \"pattern_pages\": %" PRIu64 ", \"static_pages\": %" PRIu64
               ", \"static_bad\": %" PRIu64 ", \"slices\": [",
            name, vr->ok ? "true" : "false", vr->pages_checked, vr->pattern_pages, vr->static_pages, vr->static_bad);
    for (uint32_t i = 0; i < vr->nslices; i++)
        fprintf(f, "%s{\"vcpu\": %u, \"pages\": %" PRIu64 ", \"edge\": %" PRId64 ", \"counter\": %u}", i ? ", " : "",
                vr->slices[i].vcpu, vr->slices[i].pages, vr->slices[i].edge, vr->slices[i].first);
    fprintf(f, "], \"msg\": %s},\n", jesc(vr->msg));
}

/* Results of the checks, for the JSON. */
struct dst_checks {
    const struct verify_result *before;   /* pre-resume: counters + snapshot */
    const struct verify_result *all;      /* + working-set pattern + static area (after resume) */
    const struct verify_result *end;      /* after running */
    const char *continued;
    const struct guest_status *guest_end;
};

static void write_json(const struct dst_opts *o, const char *result, int exit_code, const char *error,
                       const mk_dest_stats *ds, struct dst_ctx *c, const struct dst_checks *k, struct vm *vm)
{
    if (!o->stats_json)
        return;
    FILE *f = fopen(o->stats_json, "w");
    if (!f) {
        fprintf(stderr, "kvmhost: %s: %s\n", o->stats_json, strerror(errno));
        return;
    }
    fprintf(f, "{\n\"role\": \"destination\",\n\"result\": \"%s\",\n\"exit_code\": %d,\n\"error\": %s,\n", result,
            exit_code, jesc(error));
    json_dest_stats(f, ds);
    fprintf(f, "\"host\": {\n");
    uint64_t resume_ns = c->tl.resumed;
    fprintf(f, "  \"pause_ns\": %" PRIu64 ", \"load_ns\": %" PRIu64 ", \"end_ns\": %" PRIu64 ", \"resume_ns\": %" PRIu64
               ", \"ack_ns\": %" PRIu64 ",\n",
            c->loaded ? c->snap.pause_ns : 0, c->tl.devstate_done, c->tl.end, resume_ns, c->tl.acked);
    double e2e = (c->loaded && resume_ns) ? (double)(resume_ns - c->snap.pause_ns) / 1e6 : -1;
    uint64_t verify_us = c->tl.verified ? (c->tl.verified - c->tl.end) / 1000 : 0;
    fprintf(f, "  \"downtime_e2e_ms\": %.3f, \"verify_before_resume_us\": %" PRIu64 ",\n", e2e, verify_us);
    json_switchover(f, c);
    if (k && k->before)
        json_verify(f, "verify_before_resume", k->before);
    if (k && k->all)
        json_verify(f, "verify", k->all);
    if (k && k->end)
        fprintf(f, "  \"verify_end\": {\"ok\": %s, \"pages\": %" PRIu64 ", \"msg\": %s},\n",
                k->end->ok ? "true" : "false", k->end->pages_checked, jesc(k->end->msg));
    fprintf(f, "  \"continued\": %s,\n", jesc(k && k->continued ? k->continued : ""));
    fprintf(f, "  \"prefault\": {\"done\": %s, \"us\": %" PRIu64 "},\n", c->prefaulted ? "true" : "false", c->prefault_us);
    fprintf(f, "  \"guest_at_pause\": [");
    for (uint32_t i = 0; c->loaded && i < vm->nr_vcpus; i++)
        fprintf(f, "%s{\"vcpu\": %u, \"role\": \"%s\", \"work\": %" PRIu64 ", \"rip\": %" PRIu64 "}", i ? ", " : "", i,
                role_name(c->snap.status[i].role), c->snap.status[i].work, c->snap.rip[i]);
    fprintf(f, "],\n  \"guest_end\": [");
    for (uint32_t i = 0; k && k->guest_end && i < vm->nr_vcpus; i++)
        fprintf(f, "%s{\"vcpu\": %u, \"work\": %" PRIu64 ", \"starts\": %" PRIu64 "}", i ? ", " : "", i,
                k->guest_end[i].work, k->guest_end[i].starts);
    fprintf(f, "],\n  \"mem_size\": %" PRIu64 ", \"vcpus\": %u, \"tsc_hz\": %" PRIu64 ", \"regions\": %u\n}\n}\n",
            vm->mem_size, vm->nr_vcpus, vm->tsc_hz, vm->nslots);
    fclose(f);
}

/* ---- setup ---- */

/*
 * Register guest memory. MK_REGION_FRESH when the mapping is fresh and
 * untouched (it is here: the destination VM is built empty and its vCPUs
 * stay parked until we resume them), so ZERO records cost the loader no
 * memory access. Pre-faulting (a later change) keeps the memory zero, so
 * the promise still holds then. A library that does not know the flag
 * (0.1) rejects it with MK_EINVAL: register without it, and say so.
 */
static void add_regions(mk_dest *dst, struct vm *vm, const struct dst_opts *o, struct dst_ctx *c)
{
    c->fresh = vm->mem_fresh && !o->no_fresh;
    for (uint32_t i = 0; i < vm->nslots; i++) {
        mk_region reg;
        mk_region_init(&reg);
        reg.guest_phys_addr = vm->slots[i].gpa;
        reg.size = vm->slots[i].size;
        reg.host_addr = vm->slots[i].host;
        reg.dirty_granularity = MK_PAGE_SIZE;
        reg.flags = c->fresh ? MK_REGION_FRESH : 0;
        int r = mk_dest_add_region(dst, &reg, NULL);
        if (r == MK_EINVAL && c->fresh && i == 0) {
            logmsg("the library refused MK_REGION_FRESH (%s): loading without it", mk_dest_errmsg(dst));
            c->fresh = 0;
            reg.flags = 0;
            r = mk_dest_add_region(dst, &reg, NULL);
        }
        if (r != MK_OK)
            die("mk_dest_add_region: %s: %s", mk_strerror(r), mk_dest_errmsg(dst));
    }
}

/* The transport comes later (mk_dest_set_transport_fd), once the source
 * connected. */
static mk_dest *create_dest(struct dst_ctx *c, const struct dst_opts *o)
{
    mk_dest_config cfg;
    mk_dest_config_init(&cfg);
    cfg.flags = MK_DEST_MANUAL_ACK;
    cfg.resume_cost_us = c->cost.hint_us;
    cfg.auth_key = o->auth_key;
    cfg.auth_key_len = o->auth_key_len;
    mk_dest_callbacks cb;
    memset(&cb, 0, sizeof(cb));
    cb.struct_size = sizeof(cb);
    cb.user = c;
    cb.load_device_state = cb_load;
    cb.log = cb_log;
    mk_dest *dst = NULL;
    int r = mk_dest_create(&dst, &cfg, &cb);
    if (r != MK_OK)
        die("mk_dest_create: %s: %s", mk_strerror(r), mk_last_error());
    return dst;
}

/* Testing aid: a lost page write, to show the checks and the NACK work.
 * COUNTER damages byte 0 (found before resume: NACK, the source keeps its
 * guest); PATTERN damages a byte the guest never writes (found after
 * resume, when the source has handed over: the destination fails). */
static void corrupt(struct vm *vm, int what)
{
    uint64_t ws = gpa_u64(vm, GPA_PARAMS + P_WS_SIZE);
    uint64_t gpa = GPA_DATA + (ws ? (ws / 2 & ~4095ull) : 0) + (what == CORRUPT_COUNTER ? 0 : 100);
    *(volatile uint8_t *)gpa_ptr(vm, gpa) ^= 0x5a;
}

static int after_resume(struct vm *vm, const struct dst_opts *o, mk_dest *dst, int fd, struct dst_ctx *c,
                        mk_dest_stats *ds, const struct verify_result *vr_before, uint64_t t0);

/* ---- the switchover ---- */

int run_destination(struct vm *vm, const struct dst_opts *o)
{
    struct dst_ctx c;
    memset(&c, 0, sizeof(c));
    c.vm = vm;
    char err[512];
    mk_dest_stats ds;
    memset(&ds, 0, sizeof(ds));
    ds.struct_size = sizeof(ds);

    estimate_resume_cost(vm, o, &c.cost);
    /* --soak: a process that handed the guest over still has its threads, parked */
    if (!vm->vcpus[0].thread_started && vcpus_start(vm, 1) < 0)
        die("cannot start vCPU threads");
    int lfd = net_listen(o->uri, err, sizeof(err));
    if (lfd < 0) {
        fprintf(stderr, "kvmhost: INCOMING MIGRATION FAILED: %s\n", err);
        write_json(o, "failed", EXIT_MIG_FAILED, err, &ds, &c, NULL, vm);
        return EXIT_MIG_FAILED;
    }
    printf("destination: resume cost %" PRIu64 " us (%s: device state %" PRIu64 " us + counter check %" PRIu64
           " us for %" PRIu64 " working-set pages at %.1f ns/page + %d us)\n",
           c.cost.hint_us, c.cost.overridden ? "--resume-cost-us; estimate was" : "estimate", c.cost.devstate_us,
           c.cost.check_us, c.cost.ws_pages, c.cost.scan_ns_per_page, RESUME_SLACK_US);
    /*
     * Prefault guest memory while no source is connected yet: the load then
     * writes into mapped memory instead of taking a page fault and a page
     * clear per 4 KiB (the largest cost of loading into fresh memory). The
     * handle is created without its transport; the accepted socket is
     * handed over with mk_dest_set_transport_fd below.
     */
    mk_dest *dst = create_dest(&c, o);
    add_regions(dst, vm, o, &c);
    if (!o->no_prefault) {
        uint64_t p0 = now_ns();
        int r = mk_dest_prefault(dst);
        c.prefault_us = (now_ns() - p0) / 1000;
        if (r == MK_OK) {
            c.prefaulted = 1;
            printf("destination: guest memory prefaulted (%llu MiB in %.1f ms)\n",
                   (unsigned long long)(vm->mem_size >> 20), c.prefault_us / 1e3);
        } else {
            printf("destination: prefault failed (%s: %s); loading into memory as it is\n", mk_strerror(r),
                   mk_dest_errmsg(dst));
        }
    }
    printf("destination: listening on %s (%u vCPUs, %llu MiB)\n", o->uri, vm->nr_vcpus,
           (unsigned long long)(vm->mem_size >> 20));
    fflush(stdout);
    int fd = net_accept(lfd, o->accept_timeout, err, sizeof(err));
    close(lfd);
    if (fd < 0) {
        fprintf(stderr, "kvmhost: INCOMING MIGRATION FAILED: %s\n", err);
        write_json(o, "failed", EXIT_MIG_FAILED, err, &ds, &c, NULL, vm);
        mk_dest_destroy(dst);
        return EXIT_MIG_FAILED;
    }
    if (mk_dest_set_transport_fd(dst, fd) != MK_OK)
        die("mk_dest_set_transport_fd: %s", mk_dest_errmsg(dst));
    printf("destination: source connected, loading%s\n", c.fresh ? " (guest memory registered MK_REGION_FRESH)" : "");
    fflush(stdout);

    struct cancel_watch cw;
    watch_start(&cw, dst);
    uint64_t t0 = now_ns();
    int r = mk_dest_run(dst);
    c.tl.end = now_ns();
    vm->mem_fresh = 0;   /* whatever came, memory is written now (--soak loads into it again) */

    /* ---- from here to the ack, the guest is down: nothing that waits ---- */
    struct verify_result vr_before;
    memset(&vr_before, 0, sizeof(vr_before));
    int fail = 0;       /* 1: load failed, 2: pre-resume checks failed */
    if (r != MK_OK) {
        fail = 1;
        snprintf(err, sizeof(err), "%s: %s", mk_strerror(r), mk_dest_errmsg(dst));
    } else if (!c.loaded) {
        fail = 1;
        snprintf(err, sizeof(err), "the stream carried no device state");
        mk_dest_ack(dst, MK_EDEST);
    } else {
        if (o->corrupt_after_load)
            corrupt(vm, o->corrupt_after_load);
        /* what the guest changes once it runs: check it now */
        verify_counters(vm, &vr_before);
        verify_against_snapshot(vm, &c.snap, &vr_before);
        c.tl.verified = now_ns();
        if (!vr_before.ok) {
            fail = 2;
            mk_dest_ack(dst, MK_EDEST);
        } else {
            vcpus_resume(vm);
            c.tl.resumed = vm->resume_ns;
            r = mk_dest_ack(dst, 0);
            c.tl.acked = now_ns();
        }
    }
    /* ---- the guest runs (or the source keeps it): now the slow things ---- */
    watch_stop(&cw);
    mk_dest_get_stats(dst, &ds);
    if (fail == 1) {
        fprintf(stderr, "kvmhost: INCOMING MIGRATION FAILED: %s\n", err);
        printf("destination: INCOMING MIGRATION FAILED after %.1f s, %llu bytes received: %s\n",
               (c.tl.end - t0) / 1e9, (unsigned long long)ds.bytes_received, err);
        write_json(o, "failed", EXIT_MIG_FAILED, err, &ds, &c, NULL, vm);
        mk_dest_destroy(dst);
        close(fd);
        return EXIT_MIG_FAILED;
    }
    if (o->corrupt_after_load)
        printf("destination: --corrupt-after-load: flipped bits of one %s byte after loading\n",
               o->corrupt_after_load == CORRUPT_COUNTER ? "working-set counter" : "working-set pattern");
    if (fail == 2) {
        fprintf(stderr, "kvmhost: MEMORY VERIFICATION FAILED: %s\n", vr_before.msg);
        struct dst_checks k = { .before = &vr_before };
        write_json(o, "verify-failed", EXIT_ERROR, vr_before.msg, &ds, &c, &k, vm);
        mk_dest_destroy(dst);
        close(fd);
        return EXIT_ERROR;
    }
    if (r != MK_OK)
        fprintf(stderr, "kvmhost: mk_dest_ack: %s: %s\n", mk_strerror(r), mk_dest_errmsg(dst));
    return after_resume(vm, o, dst, fd, &c, &ds, &vr_before, t0);
}

static void print_switchover(struct vm *vm, const struct dst_ctx *c, const mk_dest_stats *ds,
                             const struct verify_result *vr, uint64_t t0)
{
    const struct dst_timeline *tl = &c->tl;
    printf("destination: loaded %llu bytes (%llu pages, %llu zero pages, %llu B device state) in %.2f s\n",
           (unsigned long long)ds->bytes_received, (unsigned long long)ds->pages_loaded,
           (unsigned long long)ds->zero_pages, (unsigned long long)ds->device_state_bytes, (tl->end - t0) / 1e9);
    if (MK_HAS(ds, end_to_ack_us))
        printf("destination: library: zero records %.1f ms (%llu pages cleared), device-state load %.3f ms, "
               "END -> ack %.3f ms\n",
               ds->zero_load_us / 1e3, (unsigned long long)ds->zero_pages_cleared, ds->device_load_us / 1e3,
               ds->end_to_ack_us / 1e3);
    if (MK_HAS(ds, stopped_cpu_wait_us) && ds->stopped_cpu_wait_us != UINT64_MAX)
        printf("destination: while the source was paused, the loading thread waited %.3f ms for a CPU\n",
               ds->stopped_cpu_wait_us / 1e3);
    printf("destination: switchover, us after END: device state loaded %+.1f (took %.1f), memory verified %+.1f, "
           "vCPUs resumed %+.1f, ack sent %+.1f; resume cost given to the library %llu\n",
           ((double)tl->devstate_done - (double)tl->end) / 1e3, (tl->devstate_done - tl->devstate_start) / 1e3,
           (tl->verified - tl->end) / 1e3, (tl->resumed - tl->end) / 1e3, (tl->acked - tl->end) / 1e3,
           (unsigned long long)c->cost.hint_us);
    printf("destination: checked before resume in %.3f ms: %llu working-set counters, QEMU invariant holds",
           (tl->verified - tl->end) / 1e6, (unsigned long long)vr->pages_checked);
    for (uint32_t i = 0; i < vr->nslices; i++)
        printf("; v%u edge at page %lld of %llu (counter %u)", vr->slices[i].vcpu, (long long)vr->slices[i].edge,
               (unsigned long long)vr->slices[i].pages, vr->slices[i].first);
    printf("; status pages match the source's pause snapshot\n");
    printf("destination: guest resumed; END-TO-END DOWNTIME %.2f ms (source vCPU pause -> destination vCPU resume)\n",
           (double)(tl->resumed - c->snap.pause_ns) / 1e6);
    for (uint32_t i = 0; i < vm->nr_vcpus; i++)
        printf("destination: v%u resumes at rip %#llx (%s loop), work %llu, starts %llu\n", i,
               (unsigned long long)c->snap.rip[i], role_name(c->snap.status[i].role),
               (unsigned long long)c->snap.status[i].work, (unsigned long long)c->snap.status[i].starts);
    uint64_t ws_pages = gpa_u64(vm, GPA_PARAMS + P_WS_SIZE) / 4096;
    if (!c->cost.overridden && ws_pages > c->cost.ws_pages)
        printf("destination: WARNING: the resume-cost estimate assumed %llu working-set pages, the guest has %llu "
               "(give the destination the source's --working-set)\n",
               (unsigned long long)c->cost.ws_pages, (unsigned long long)ws_pages);
    fflush(stdout);
}

/* Everything the guest never writes, checked while it runs. Adds to *vr. */
static void verify_after_resume(struct vm *vm, struct verify_result *vr)
{
    uint64_t t0 = now_ns();
    verify_ws_pattern(vm, vr);
    uint64_t t1 = now_ns();
    verify_static(vm, vr);
    uint64_t t2 = now_ns();
    uint64_t bad = vr->unowned_bad;
    for (uint32_t k = 0; k < vr->nslices; k++)
        bad += vr->slices[k].bad_pattern;
    printf("destination: after resume: working-set pattern %s (%llu pages, %.0f ms); static area %s (%llu pages, %.0f ms)\n",
           bad ? "CORRUPT" : "verified", (unsigned long long)vr->pattern_pages, (t1 - t0) / 1e6,
           vr->static_bad ? "CORRUPT" : "verified", (unsigned long long)vr->static_pages, (t2 - t1) / 1e6);
    if (!vr->ok)
        fprintf(stderr, "kvmhost: MEMORY VERIFICATION FAILED (after resume; the source has handed over): %s\n", vr->msg);
    fflush(stdout);
}

static int after_resume(struct vm *vm, const struct dst_opts *o, mk_dest *dst, int fd, struct dst_ctx *c,
                        mk_dest_stats *ds, const struct verify_result *vr_before, uint64_t t0)
{
    print_switchover(vm, c, ds, vr_before, t0);
    struct verify_result vr = *vr_before;
    verify_after_resume(vm, &vr);
    int ok = vr.ok;
    double e2e_ms = (double)(c->tl.resumed - c->snap.pause_ns) / 1e6;

    double until = now_s() + o->run_after_seconds;
    while ((o->keep_running || now_s() < until) && !g_interrupted && !atomic_load(&vm->fatal)) {
        sleep_ns(500 * 1000000ull);
        char sum[512];
        guest_summary(vm, sum, sizeof(sum));
        printf("destination: guest running: %s\n", sum);
        fflush(stdout);
    }
    vcpus_pause(vm);
    struct verify_result vr_end;
    verify_working_set(vm, &vr_end);
    struct guest_status end[MAX_VCPUS];
    char continued[1024];
    size_t n = 0;
    int cont_ok = !atomic_load(&vm->fatal);
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        read_status(vm, i, &end[i]);
        struct kvm_regs regs;
        ioctl(vm->vcpus[i].fd, KVM_GET_REGS, &regs);
        int adv = end[i].work > c->snap.status[i].work && end[i].starts == 1;
        if (!adv)
            cont_ok = 0;
        n += (size_t)snprintf(continued + n, sizeof(continued) - n,
                              "%sv%u %s work %llu at pause -> %llu now (+%llu), entry ran %llu time(s)", i ? "; " : "",
                              i, role_name(end[i].role), (unsigned long long)c->snap.status[i].work,
                              (unsigned long long)end[i].work,
                              (unsigned long long)(end[i].work - c->snap.status[i].work),
                              (unsigned long long)end[i].starts);
        if (end[i].role == ROLE_COMPUTE && n < sizeof(continued)) {
            char m[200];
            if (verify_compute(vm, i, m, sizeof(m)) < 0)
                cont_ok = 0;
            n += (size_t)snprintf(continued + n, sizeof(continued) - n, ", %s", m);
        }
    }
    if (!vr_end.ok)
        ok = 0;
    printf("destination: guest %s: %s\n", cont_ok ? "CONTINUED from where it was paused (no restart)" : "DID NOT CONTINUE",
           continued);
    printf("destination: invariant after running: %s (%llu pages)%s%s\n", vr_end.ok ? "OK" : "BROKEN",
           (unsigned long long)vr_end.pages_checked, vr_end.ok ? "" : ": ", vr_end.ok ? "" : vr_end.msg);
    if (atomic_load(&vm->fatal))
        printf("destination: guest error: %s\n", vm->fatal_msg);
    int code = ok && cont_ok ? EXIT_OK : EXIT_ERROR;
    printf("destination: %s (end-to-end downtime %.2f ms)\n", code == EXIT_OK ? "SUCCESS" : "FAILURE", e2e_ms);
    fflush(stdout);
    struct dst_checks k = { vr_before, &vr, &vr_end, continued, end };
    write_json(o, code == EXIT_OK ? "ok" : vr.ok ? "guest-check-failed" : "verify-failed-after-resume", code,
               vr.ok ? "" : vr.msg, ds, c, &k, vm);
    mk_dest_destroy(dst);
    close(fd);
    return code;
}
