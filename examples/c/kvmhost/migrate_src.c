/*
 * migrate_src.c - the source side: libmigrationkit glue.
 *
 * The library gets one region per KVM memory slot, the KVM dirty log as its
 * get_dirty_log callback, the kvmtool-style pause/kick as pause_vcpus /
 * resume_vcpus / kick_vcpu, and the vCPU state blob as device state. The
 * stream goes over a connected socket through the built-in fd transport.
 * The main thread polls the statistics for the progress display, applies
 * timed parameter changes and the optional cancel, and prints the result.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvmhost.h"
#include "migrationkit.h"

extern volatile sig_atomic_t g_interrupted;

struct src_ctx {
    struct vm *vm;
    mk_source *src;
    uint64_t guest_start_ns;
    uint64_t pause_ns, resume_ns;   /* first pause, resume after failure */
    _Atomic uint32_t max_throttle;
    _Atomic uint64_t dirty_log_calls, dirty_log_ns;
    uint64_t blob_bytes;
    uint64_t save_us;
    struct host_snapshot snap;
    int have_snap;
    uint8_t armed[MAX_SLOTS];       /* first get_dirty_log of the region done */
    pthread_mutex_t lock;
    mk_stats last;                  /* from the progress callback */
    struct timeline *timeline;      /* --timeline: every progress report */
    _Atomic int phase;              /* last of setup/active/device seen: where a failure hit */
    _Atomic uint64_t active_ns, device_ns, pass_ns;  /* first seen (--cancel-at) */
    uint64_t cancel_pass;           /* --cancel-at pass:N */
};

static int cb_get_dirty_log(void *user, uint32_t region, uint64_t *bitmap, uint64_t npages)
{
    struct src_ctx *c = user;
    uint64_t t0 = now_ns();
    int r = vm_get_dirty_log(c->vm, region, bitmap, npages);
    if (r == 0 && region < MAX_SLOTS && !c->armed[region]) {
        /* The first call only arms tracking (the library already counts every
         * page dirty). With KVM_DIRTY_LOG_INITIALLY_SET, KVM hands back all
         * ones here; reporting them would count the whole RAM as "dirtied"
         * in the first period (dirty-pages-rate, auto-converge trigger). */
        c->armed[region] = 1;
        if (!getenv("KVMHOST_REPORT_ARMING_BITS"))
            memset(bitmap, 0, (size_t)((npages + 63) / 64) * 8);
    }
    c->dirty_log_calls++;
    c->dirty_log_ns += now_ns() - t0;
    return r < 0 ? -1 : 0;
}

/* Dirty ring: pages each vCPU dirtied since the last call (harvested at the
 * get_dirty_log calls of the sync just before, and at ring-full exits). */
static int cb_vcpu_dirty_counts(void *user, uint64_t *counts, uint32_t nr_vcpus)
{
    struct src_ctx *c = user;
    vm_take_vcpu_dirty_counts(c->vm, counts, nr_vcpus);
    return 0;
}

/* Per-vCPU auto-converge figures, `info migrate` style. */
static void print_vcpu_stats(FILE *f, mk_source *src, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        mk_vcpu_stats v;
        memset(&v, 0, sizeof(v));
        v.struct_size = sizeof(v);
        if (mk_source_get_vcpu_stats(src, i, &v) != MK_OK)
            continue;
        char rate[64];
        if (v.dirty_rate_known)
            snprintf(rate, sizeof(rate), "%llu pages/s (%llu pages in all)", (unsigned long long)v.dirty_pages_rate,
                     (unsigned long long)v.dirty_pages);
        else
            snprintf(rate, sizeof(rate), "not attributed (dirty bitmap)");
        fprintf(f, "vcpu %u: cpu throttle percentage: %u, dirty pages rate: %s, throttle sleep: %.1f ms\n", i,
                v.throttle_percentage, rate, v.throttle_sleep_us / 1e3);
    }
}

static int cb_pause(void *user)
{
    struct src_ctx *c = user;
    vcpus_pause(c->vm);
    if (!c->pause_ns)
        c->pause_ns = c->vm->pause_ns;
    return 0;
}

static int cb_resume(void *user)
{
    struct src_ctx *c = user;
    vcpus_resume(c->vm);
    c->resume_ns = c->vm->resume_ns;
    return 0;
}

static int cb_kick(void *user, uint32_t vcpu)
{
    struct src_ctx *c = user;
    if (vcpu >= c->vm->nr_vcpus)
        return -1;
    vcpu_kick(&c->vm->vcpus[vcpu]);
    return 0;
}

static int cb_save(void *user, mk_buffer *out)
{
    struct src_ctx *c = user;
    uint64_t t0 = now_ns();
    snapshot_fill(c->vm, &c->snap, c->vm->pause_ns, c->guest_start_ns);
    c->have_snap = 1;
    uint8_t *blob;
    size_t len;
    if (devstate_save(c->vm, &c->snap, &blob, &len) < 0)
        return -1;
    int r = mk_buffer_append(out, blob, len);
    free(blob);
    c->blob_bytes = len;
    c->save_us = (now_ns() - t0) / 1000;
    return r == MK_OK ? 0 : -1;
}

static uint64_t cb_state_size(void *user)
{
    struct src_ctx *c = user;
    return devstate_size(c->vm);
}

static void cb_log(void *user, int level, const char *msg)
{
    (void)user;
    static const char *names[] = { "error", "warn", "info", "debug" };
    if (level > MK_LOG_INFO && !getenv("KVMHOST_DEBUG"))
        return;
    fprintf(stderr, "%s[mk %s] %s\n", isatty(STDERR_FILENO) ? "\r\033[K" : "",
            level >= 0 && level <= 3 ? names[level] : "?", msg);
}

static void cb_progress(void *user, const mk_stats *s)
{
    struct src_ctx *c = user;
    uint32_t t = s->cpu_throttle_percentage, m = atomic_load(&c->max_throttle);
    while (t > m && !atomic_compare_exchange_weak(&c->max_throttle, &m, t)) {
    }
    /* the library's struct may be smaller than ours (0.1): copy what it has */
    size_t n = s->struct_size < sizeof(c->last) ? s->struct_size : sizeof(c->last);
    pthread_mutex_lock(&c->lock);
    memset(&c->last, 0, sizeof(c->last));
    memcpy(&c->last, s, n);
    c->last.struct_size = (uint32_t)n;
    pthread_mutex_unlock(&c->lock);
    timeline_record(c->timeline, now_ns(), &c->last);
    if (s->status == MK_STATUS_SETUP || s->status == MK_STATUS_ACTIVE || s->status == MK_STATUS_DEVICE)
        c->phase = s->status;
    uint64_t zero = 0, now = now_ns();
    if (s->status == MK_STATUS_ACTIVE)
        atomic_compare_exchange_strong(&c->active_ns, &zero, now);
    zero = 0;
    if (s->status == MK_STATUS_DEVICE)
        atomic_compare_exchange_strong(&c->device_ns, &zero, now);
    zero = 0;
    if (c->cancel_pass && s->passes >= c->cancel_pass)
        atomic_compare_exchange_strong(&c->pass_ns, &zero, now);
}

/* When --cancel-at's event happened (0: not yet). */
static uint64_t cancel_event_ns(struct src_ctx *c, const struct src_opts *o, uint64_t start_ns)
{
    switch (o->cancel_at) {
    case CANCEL_AT_START: return start_ns;
    case CANCEL_AT_ACTIVE: return c->active_ns;
    case CANCEL_AT_PASS: return c->pass_ns;
    case CANCEL_AT_DEVICE: return c->device_ns;
    default: return 0;
    }
}

static int is_terminal(int st)
{
    return st == MK_STATUS_COMPLETED || st == MK_STATUS_FAILED || st == MK_STATUS_CANCELLED;
}

/* Why the migration is not switching over yet, from the statistics. */
static void why_not_converging(const mk_stats *s, char *buf, size_t cap)
{
    buf[0] = 0;
    if (s->status != MK_STATUS_ACTIVE || s->ram_dirty_sync_count < 2)
        return;
    if (s->expected_downtime_ms <= s->downtime_limit_ms)
        return;
    char rem[32];
    fmt_bytes(rem, sizeof(rem), s->ram_remaining);
    snprintf(buf, cap,
             "not converging: expected downtime %llu ms > downtime-limit %llu ms (%s dirty at %.1f MB/s switchover bandwidth, %llu pages/s dirtied)",
             (unsigned long long)s->expected_downtime_ms, (unsigned long long)s->downtime_limit_ms, rem,
             (double)s->switchover_bandwidth / 1e6, (unsigned long long)s->ram_dirty_pages_rate);
}

static char *stats_json(mk_source *src)
{
    size_t need = 0, cap = 4096;
    char *buf = malloc(cap);
    int r = mk_source_stats_json(src, buf, cap, &need);
    if (r == MK_ENOSPC) {
        cap = need + 1;
        buf = realloc(buf, cap);
        r = mk_source_stats_json(src, buf, cap, &need);
    }
    if (r != MK_OK) {
        snprintf(buf, cap, "null");
    }
    return buf;
}

static void json_status_array(FILE *f, const struct host_snapshot *hs, uint32_t n)
{
    fprintf(f, "[");
    for (uint32_t i = 0; i < n; i++)
        fprintf(f, "%s{\"vcpu\": %u, \"role\": \"%s\", \"work\": %" PRIu64 ", \"sweeps\": %" PRIu64
                   ", \"pos\": %" PRIu64 ", \"lcg_n\": %" PRIu64 ", \"starts\": %" PRIu64 ", \"rip\": %" PRIu64 "}",
                i ? ", " : "", i, role_name(hs->status[i].role), hs->status[i].work, hs->status[i].sweeps,
                hs->status[i].pos, hs->status[i].lcg_n, hs->status[i].starts, hs->rip[i]);
    fprintf(f, "]");
}

static void set_throttle_src(struct vm *vm, mk_source *src)
{
    pthread_mutex_lock(&vm->lock);
    vm->throttle_src = src;
    if (!src)
        while (vm->in_throttle > 0)
            pthread_cond_wait(&vm->cond, &vm->lock);
    pthread_mutex_unlock(&vm->lock);
}

struct change_log {
    double t;
    char text[160];
    int rc;
};

int run_source_migration(struct vm *vm, const struct workload *w, const struct src_opts *o,
                         uint64_t guest_start_ns)
{
    struct src_ctx c;
    memset(&c, 0, sizeof(c));
    c.vm = vm;
    c.guest_start_ns = guest_start_ns;
    pthread_mutex_init(&c.lock, NULL);
    if (o->timeline && !(c.timeline = timeline_new()))
        fprintf(stderr, "kvmhost: --timeline: out of memory\n");
    int mode = o->progress_mode;
    if (mode == PROGRESS_AUTO)
        mode = isatty(STDOUT_FILENO) ? PROGRESS_TTY : PROGRESS_PLAIN;

    struct proc_sample before, after;
    proc_sample(&before);
    c.cancel_pass = o->cancel_pass;
    char err[512];
    printf("source: connecting to %s\n", o->uri);
    fflush(stdout);
    int fd = net_connect(o->uri, o->connect_timeout, err, sizeof(err));
    if (fd < 0) {
        fprintf(stderr, "kvmhost: MIGRATION FAILED: %s\n", err);
        printf("source: migration not started; guest keeps running here\n");
        FILE *f = o->stats_json ? fopen(o->stats_json, "w") : NULL;
        if (f) {
            fprintf(f, "{\"role\": \"source\", \"result\": \"failed\", \"exit_code\": %d, \"error\": %s, \"error_msg\": %s, \"migration\": null, \"host\": {}}\n",
                    EXIT_MIG_FAILED, jesc("connect failed"), jesc(err));
            fclose(f);
        }
        return EXIT_MIG_FAILED;
    }

    mk_source_config cfg;
    mk_source_config_init(&cfg);
    cfg.nr_vcpus = vm->nr_vcpus;
    cfg.transport_fd = fd;
    cfg.ack_timeout_ms = o->ack_timeout_ms;
    cfg.auth_key = o->auth_key;
    cfg.auth_key_len = o->auth_key_len;
    mk_source_callbacks cb;
    memset(&cb, 0, sizeof(cb));
    cb.struct_size = sizeof(cb);
    cb.user = &c;
    cb.get_dirty_log = cb_get_dirty_log;
    cb.pause_vcpus = cb_pause;
    cb.resume_vcpus = cb_resume;
    cb.kick_vcpu = cb_kick;
    cb.save_device_state = cb_save;
    cb.device_state_size = cb_state_size;
    cb.log = cb_log;
    cb.progress = cb_progress;
    if (vm->dirty_ring)
        cb.get_vcpu_dirty_counts = cb_vcpu_dirty_counts;
    mk_source *src = NULL;
    int r = mk_source_create(&src, &cfg, &cb, NULL);
    if (r != MK_OK) {
        fprintf(stderr, "kvmhost: mk_source_create: %s: %s\n", mk_strerror(r), mk_last_error());
        close(fd);
        return EXIT_ERROR;
    }
    c.src = src;
    for (uint32_t i = 0; i < vm->nslots; i++) {
        mk_region reg;
        mk_region_init(&reg);
        reg.guest_phys_addr = vm->slots[i].gpa;
        reg.size = vm->slots[i].size;
        reg.host_addr = vm->slots[i].host;
        reg.dirty_granularity = MK_PAGE_SIZE; /* KVM logs 4 KiB pages, even on huge pages */
        uint32_t idx;
        r = mk_source_add_region(src, &reg, &idx);
        if (r != MK_OK || idx != i) {
            fprintf(stderr, "kvmhost: mk_source_add_region %u: %s: %s\n", i, mk_strerror(r),
                    mk_source_errmsg(src));
            mk_source_destroy(src);
            close(fd);
            return EXIT_ERROR;
        }
    }

    struct change_log changes[64];
    int nchanges = 0;
    struct param_set ps[64];
    int nps = o->nparams;
    memcpy(ps, o->params, sizeof(ps));
    for (int i = 0; i < nps; i++) {
        if (ps[i].at >= 0)
            continue;
        r = mk_source_set_param(src, ps[i].name, ps[i].value);
        if (r != MK_OK) {
            fprintf(stderr, "kvmhost: parameter %s=%s: %s: %s\n", ps[i].name, ps[i].value, mk_strerror(r),
                    mk_source_errmsg(src));
            mk_source_destroy(src);
            close(fd);
            return EXIT_USAGE;
        }
        ps[i].done = 1;
    }
    mk_params params;
    memset(&params, 0, sizeof(params));
    params.struct_size = sizeof(params);
    mk_source_get_params(src, &params);
    int step_mode = MK_HAS(&params, throttle_mode) && params.throttle_mode == MK_THROTTLE_STEP;
    printf("source: %u vCPUs, %llu MiB in %u region(s), dirty log %s; downtime-limit %llu ms, max-bandwidth %llu B/s, "
           "avail-switchover-bandwidth %llu B/s, auto-converge %s (throttle-mode %s), downtime-target %llu ms\n",
           vm->nr_vcpus, (unsigned long long)(vm->mem_size >> 20), vm->nslots,
           vm->dirty_ring ? "KVM dirty ring (per-vCPU counts)" : vm->manual_protect ? "GET+CLEAR (manual protect)" : "GET (classic)",
           (unsigned long long)params.downtime_limit_ms, (unsigned long long)params.max_bandwidth,
           (unsigned long long)params.avail_switchover_bandwidth, params.auto_converge ? "on" : "off",
           step_mode ? "step" : "closed-loop",
           (unsigned long long)(MK_HAS(&params, downtime_target_ms) ? params.downtime_target_ms : 0));
    fflush(stdout);

    /* Each vCPU's speed (work units per second) before the migration, untracked. */
    double speed_before[MAX_VCPUS] = { 0 };
    if (o->speed_window > 0) {
        struct guest_status a[MAX_VCPUS], b;
        for (uint32_t i = 0; i < vm->nr_vcpus; i++)
            read_status(vm, i, &a[i]);
        uint64_t t0 = now_ns();
        sleep_ns((uint64_t)(o->speed_window * 1e9));
        double dt = (double)(now_ns() - t0) / 1e9;
        for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
            read_status(vm, i, &b);
            speed_before[i] = (double)(b.work - a[i].work) / dt;
        }
        printf("source: vCPU speed before migration (%.1f s):", dt);
        for (uint32_t i = 0; i < vm->nr_vcpus; i++)
            printf(" v%u %.0f/s", i, speed_before[i]);
        printf("\n");
        fflush(stdout);
    }
    uint32_t max_vcpu_throttle[MAX_VCPUS] = { 0 };

    if (vm_set_dirty_logging(vm, 1) < 0) {
        mk_source_destroy(src);
        close(fd);
        return EXIT_ERROR;
    }
    set_throttle_src(vm, src);

    struct guest_status g0[MAX_VCPUS];
    for (uint32_t i = 0; i < vm->nr_vcpus; i++)
        read_status(vm, i, &g0[i]);
    uint64_t start_ns = now_ns();
    r = mk_source_start(src);
    if (r != MK_OK) {
        fprintf(stderr, "kvmhost: mk_source_start: %s: %s\n", mk_strerror(r), mk_source_errmsg(src));
        set_throttle_src(vm, NULL);
        vm_set_dirty_logging(vm, 0);
        mk_source_destroy(src);
        close(fd);
        return EXIT_ERROR;
    }

    /* in setup until the library says otherwise (a cancel may beat its first report) */
    int no_phase = 0;
    atomic_compare_exchange_strong(&c.phase, &no_phase, MK_STATUS_SETUP);
    int cancelled_by_us = 0, cancel_rc = 0;
    double cancel_t = -1;
    if (o->cancel_at == CANCEL_AT_START && o->cancel_delay_ms == 0) {
        /* right behind the start, before the migration thread got far */
        cancelled_by_us = 1;
        cancel_t = 0;
        cancel_rc = mk_source_cancel(src);
        printf("[   0.0s] cancelling migration right after mk_source_start: %s\n",
               cancel_rc == MK_OK ? "ok" : mk_strerror(cancel_rc));
    }
    uint64_t why_count = 0;
    char first_why[400] = "";
    double last_plain = -1;
    uint64_t prev_work[MAX_VCPUS];
    double prev_t = 0;
    for (uint32_t i = 0; i < vm->nr_vcpus; i++)
        prev_work[i] = g0[i].work;
    char guest_rate[256] = "";
    mk_stats s;
    for (;;) {
        memset(&s, 0, sizeof(s));
        s.struct_size = sizeof(s);
        mk_source_get_stats(src, &s);
        double t = (double)(now_ns() - start_ns) / 1e9;
        if (is_terminal(s.status))
            break;
        uint32_t th = s.cpu_throttle_percentage, m = atomic_load(&c.max_throttle);
        while (th > m && !atomic_compare_exchange_weak(&c.max_throttle, &m, th)) {
        }
        for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
            mk_vcpu_stats vs;
            memset(&vs, 0, sizeof(vs));
            vs.struct_size = sizeof(vs);
            if (mk_source_get_vcpu_stats(src, i, &vs) == MK_OK && vs.throttle_percentage > max_vcpu_throttle[i])
                max_vcpu_throttle[i] = vs.throttle_percentage;
        }
        for (int i = 0; i < nps; i++) {
            if (ps[i].done || t < ps[i].at)
                continue;
            ps[i].done = 1;
            int rc = mk_source_set_param(src, ps[i].name, ps[i].value);
            if (nchanges < 64) {
                changes[nchanges].t = t;
                changes[nchanges].rc = rc;
                snprintf(changes[nchanges].text, sizeof(changes[nchanges].text), "%s=%s", ps[i].name, ps[i].value);
                nchanges++;
            }
            fprintf(stdout, "%s[%6.1fs] set %s=%s: %s\n", mode == PROGRESS_TTY ? "\r\033[K" : "", t, ps[i].name,
                    ps[i].value, rc == MK_OK ? "ok" : mk_source_errmsg(src));
        }
        uint64_t ev = cancel_event_ns(&c, o, start_ns);
        int at_event = ev && now_ns() >= ev + (uint64_t)(o->cancel_delay_ms * 1e6);
        if (!cancelled_by_us && ((o->cancel_after >= 0 && t >= o->cancel_after) || at_event || g_interrupted)) {
            cancelled_by_us = 1;
            cancel_t = t;
            cancel_rc = mk_source_cancel(src);
            const char *phase = mk_status_name(c.phase);
            fprintf(stdout, "%s[%6.3fs] cancelling migration%s (status %s, %s): %s\n", mode == PROGRESS_TTY ? "\r\033[K" : "", t,
                    g_interrupted ? " (interrupted)" : "", mk_status_name(s.status), phase,
                    cancel_rc == MK_OK ? "ok" : mk_strerror(cancel_rc));
        }
        char why[400];
        why_not_converging(&s, why, sizeof(why));
        if (why[0]) {
            if (!why_count++)
                snprintf(first_why, sizeof(first_why), "%s", why);
        }
        int show = s.status != MK_STATUS_NONE && (mode == PROGRESS_TTY || (mode == PROGRESS_PLAIN && (last_plain < 0 || t - last_plain >= 0.5)));
        if (show) {
            if (t - prev_t >= 0.4 || !guest_rate[0]) {
                size_t n = 0;
                guest_rate[0] = 0;
                for (uint32_t i = 0; i < vm->nr_vcpus && n < sizeof(guest_rate); i++) {
                    struct guest_status st;
                    read_status(vm, i, &st);
                    double rate = t > prev_t ? (double)(st.work - prev_work[i]) / (t - prev_t) : 0;
                    n += (size_t)snprintf(guest_rate + n, sizeof(guest_rate) - n, "%sv%u %.0f %s/s", i ? " " : "", i,
                                          rate, st.role == ROLE_DIRTY ? "pg" : st.role == ROLE_COMPUTE ? "steps" : "beats");
                    prev_work[i] = st.work;
                }
                prev_t = t;
            }
            progress_line(mode, t, &s, guest_rate, why);
            last_plain = t;
        }
        /* a cancel tied to an event (stop-and-copy is short) needs a fine poll */
        sleep_ns(o->cancel_at != CANCEL_AT_NONE && !cancelled_by_us ? 1000000ull : 100 * 1000000ull);
    }
    /* The guest's progress up to the end of the migration (the pause, if it
     * completed: from the snapshot below). */
    struct guest_status g_end[MAX_VCPUS];
    uint64_t g_end_ns = now_ns();
    for (uint32_t i = 0; i < vm->nr_vcpus; i++)
        read_status(vm, i, &g_end[i]);
    int status = 0;
    int rc = mk_source_wait(src, &status);
    uint64_t end_ns = now_ns();
    memset(&s, 0, sizeof(s));
    s.struct_size = sizeof(s);
    mk_source_get_stats(src, &s);
    progress_line(mode, (double)(end_ns - start_ns) / 1e9, &s, "", "");
    progress_done(mode);
    if (c.timeline) {
        timeline_record(c.timeline, end_ns, &s);
        char title[160], summary[400], terr[256];
        snprintf(title, sizeof(title), "kvmhost migration: %s, %llu MiB guest, %u vCPUs", mk_status_name(status),
                 (unsigned long long)(vm->mem_size >> 20), vm->nr_vcpus);
        snprintf(summary, sizeof(summary),
                 "total %.0f ms, downtime %.1f ms measured (library, pause -> ack), %.1f ms expected at switchover, "
                 "limit %llu ms, %llu MiB sent",
                 (end_ns - start_ns) / 1e6, s.downtime_us / 1e3, expected_downtime_us(&s) / 1e3,
                 (unsigned long long)s.downtime_limit_ms, (unsigned long long)(s.ram_transferred >> 20));
        struct timeline_marks tm = {
            .start_ns = start_ns, .end_ns = end_ns,
            .pause_ns = status == MK_STATUS_COMPLETED ? vm->pause_ns : 0, /* the last pause: the switchover */
            .downtime_ms = s.downtime_us / 1e3, .expected_at_switchover_ms = expected_downtime_us(&s) / 1e3,
            .title = title, .summary = summary,
        };
        if (timeline_write_svg(c.timeline, o->timeline, &tm, terr, sizeof(terr)) == 0)
            printf("timeline: %s\n", o->timeline);
        else
            fprintf(stderr, "kvmhost: --timeline: %s\n", terr);
    }
    /* copied: the handle is gone when the JSON is written (after the leak count) */
    char errmsg[1024];
    snprintf(errmsg, sizeof(errmsg), "%s", rc == MK_OK ? "" : mk_source_errmsg(src));
    const char *phase = mk_status_name(c.phase);
    char *lib_json = stats_json(src);

    printf("\n==== migration %s ====\n", mk_status_name(status));
    print_info_migrate(stdout, &s);
    print_vcpu_stats(stdout, src, vm->nr_vcpus);
    if (rc != MK_OK)
        printf("error: %s: %s (in %s, pass %llu, %llu bytes sent)\n", mk_strerror(rc), errmsg, phase,
               (unsigned long long)s.passes, (unsigned long long)s.ram_transferred);
    if (why_count)
        printf("not-converging reports while active: %llu (first: %s)\n", (unsigned long long)why_count, first_why);
    printf("max cpu throttle seen: %u%%, throttle now: %u%%\n", atomic_load(&c.max_throttle), s.cpu_throttle_percentage);
    printf("dirty log: %llu syncs, %.1f ms total (%s)\n", (unsigned long long)c.dirty_log_calls,
           c.dirty_log_ns / 1e6, vm_dirty_log_name(vm));
    if (vm->dirty_ring)
        printf("dirty ring: %u entries per vCPU, %llu harvests, %llu entries, %llu ring-full exits, %llu resets resumed\n",
               vm->ring_entries, (unsigned long long)vm->ring_harvests, (unsigned long long)vm->ring_entries_total,
               (unsigned long long)vm->ring_full_exits, (unsigned long long)vm->ring_partial_resets);
    /* Speed during the migration: start -> pause (completed) or -> end. */
    double speed_during[MAX_VCPUS] = { 0 };
    {
        uint64_t until = c.have_snap && c.pause_ns ? c.pause_ns : g_end_ns;
        double dt = (double)(until - start_ns) / 1e9;
        for (uint32_t i = 0; i < vm->nr_vcpus && dt > 0; i++) {
            uint64_t w = c.have_snap ? c.snap.status[i].work : g_end[i].work;
            speed_during[i] = (double)(w - g0[i].work) / dt;
        }
        if (o->speed_window > 0) {
            printf("vCPU speed during migration (%.1f s) vs before:", dt);
            for (uint32_t i = 0; i < vm->nr_vcpus; i++)
                printf(" v%u %.0f/s = %.1f%%", i, speed_during[i],
                       speed_before[i] > 0 ? 100 * speed_during[i] / speed_before[i] : 0);
            printf("\n");
        }
    }
    uint64_t throttle_ns = 0, kicks = 0;
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        throttle_ns += vm->vcpus[i].throttle_ns;
        kicks += vm->vcpus[i].kicks;
    }
    printf("vCPU kicks: %llu, time in throttle point: %.1f ms\n", (unsigned long long)kicks, throttle_ns / 1e6);
    if (c.have_snap) {
        char buf[512];
        size_t n = 0;
        for (uint32_t i = 0; i < vm->nr_vcpus; i++)
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%sv%u %s work %llu (+%llu during migration) rip %#llx",
                                  i ? ", " : "", i, role_name(c.snap.status[i].role),
                                  (unsigned long long)c.snap.status[i].work,
                                  (unsigned long long)(c.snap.status[i].work - g0[i].work),
                                  (unsigned long long)c.snap.rip[i]);
        printf("guest at pause: %s\n", buf);
    }
    if (status == MK_STATUS_COMPLETED)
        printf("downtime (library, vCPU pause -> destination ack after resume): %.3f ms; expected at switchover %.3f ms; limit %llu ms\n",
               s.downtime_us / 1e3, expected_downtime_us(&s) / 1e3, (unsigned long long)s.downtime_limit_ms);
    fflush(stdout);

    set_throttle_src(vm, NULL);
    int exit_code;
    char health[1024] = "";
    int healthy = -1;
    double rates_after[MAX_VCPUS] = { 0 };
    uint64_t check_kicks[MAX_VCPUS] = { 0 }, check_throttle_ns[MAX_VCPUS] = { 0 };
    int checked = 0, mem_ok = -1;
    const char *guest_state = "running";
    if (status == MK_STATUS_COMPLETED) {
        exit_code = EXIT_OK;
        guest_state = "handed-over";
        vm_set_dirty_logging(vm, 0);   /* this VM may take a guest in again (--soak) */
        printf("source: guest now runs on the destination; source vCPUs stay paused\n");
    } else if (vm->paused) {
        /* The library left the vCPUs paused: END went out and no answer came
         * back, so the destination may be running the guest. Not ours to
         * resume; check the memory it would resume with. */
        vm_set_dirty_logging(vm, 0);
        struct verify_result vr;
        mem_ok = verify_working_set(vm, &vr) == 0;
        guest_state = "paused-after-end";
        snprintf(health, sizeof(health), "vCPUs stay paused (END sent, no answer: the destination may run the guest); "
                 "invariant %s over %llu pages%s%.600s", mem_ok ? "OK" : "BROKEN", (unsigned long long)vr.pages_checked,
                 mem_ok ? "" : ": ", mem_ok ? "" : vr.msg);
        printf("source: migration %s after the whole stream was sent: %s\n", mk_status_name(status), health);
        exit_code = mem_ok ? EXIT_MIG_UNDECIDED : EXIT_ERROR;
    } else {
        vm_set_dirty_logging(vm, 0);
        printf("source: migration %s; guest keeps running here. Checking it for %.1f s...\n",
               mk_status_name(status), o->after_fail_seconds);
        fflush(stdout);
        uint64_t exits0[MAX_VCPUS], full0 = vm->ring_full_exits;
        for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
            exits0[i] = vm->vcpus[i].exits;
            check_kicks[i] = vm->vcpus[i].kicks;
            check_throttle_ns[i] = vm->vcpus[i].throttle_ns;
        }
        healthy = guest_health(vm, o->after_fail_seconds, rates_after, &mem_ok, health, sizeof(health)) == 0;
        printf("source guest %s: %s\n", healthy ? "HEALTHY" : "BROKEN", health);
        printf("vCPU exits during the check:");
        for (uint32_t i = 0; i < vm->nr_vcpus; i++)
            printf(" v%u %llu", i, (unsigned long long)(vm->vcpus[i].exits - exits0[i]));
        printf(" (dirty ring full: %llu)\n", (unsigned long long)(vm->ring_full_exits - full0));
        printf("throttle during the check (kicks, ms in the throttle point):");
        for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
            check_kicks[i] = vm->vcpus[i].kicks - check_kicks[i];
            check_throttle_ns[i] = vm->vcpus[i].throttle_ns - check_throttle_ns[i];
            printf(" v%u %llu, %.1f", i, (unsigned long long)check_kicks[i], check_throttle_ns[i] / 1e6);
        }
        printf("\n");
        checked = 1;
        mk_stats s2;
        memset(&s2, 0, sizeof(s2));
        s2.struct_size = sizeof(s2);
        mk_source_get_stats(src, &s2);
        printf("cpu throttle percentage after %s: %u%%\n", mk_status_name(status), s2.cpu_throttle_percentage);
        if (s2.cpu_throttle_percentage != 0)
            healthy = 0;
        for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
            mk_vcpu_stats vs;
            memset(&vs, 0, sizeof(vs));
            vs.struct_size = sizeof(vs);
            if (mk_source_get_vcpu_stats(src, i, &vs) == MK_OK && vs.throttle_percentage != 0) {
                printf("vCPU %u still throttled %u%% after %s\n", i, vs.throttle_percentage, mk_status_name(status));
                healthy = 0;
            }
        }
        exit_code = !healthy ? EXIT_ERROR : status == MK_STATUS_CANCELLED ? EXIT_MIG_CANCELLED : EXIT_MIG_FAILED;
    }

    mk_vcpu_stats vs_final[MAX_VCPUS];
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        memset(&vs_final[i], 0, sizeof(vs_final[i]));
        vs_final[i].struct_size = sizeof(vs_final[i]);
        mk_source_get_vcpu_stats(src, i, &vs_final[i]);
    }
    /* vCPUs paused or not, nothing of ours is inside the library any more:
     * everything the migration took must be back now */
    mk_source_destroy(src);
    timeline_free(c.timeline);
    leak_on_purpose(fd);
    close(fd);
    proc_sample_settled(&after, &before);
    if (after.fds != before.fds || after.threads != before.threads)
        printf("source: LEAK: %d descriptors and %d threads before the migration, %d and %d after\n", before.fds,
               before.threads, after.fds, after.threads);
    if (o->stats_json) {
        FILE *f = fopen(o->stats_json, "w");
        if (!f) {
            fprintf(stderr, "kvmhost: %s: %s\n", o->stats_json, strerror(errno));
        } else {
            fprintf(f, "{\n\"role\": \"source\",\n\"result\": \"%s\",\n\"exit_code\": %d,\n", mk_status_name(status),
                    exit_code);
            fprintf(f, "\"error\": %s,\n\"error_msg\": %s,\n", jesc(rc == MK_OK ? "" : mk_strerror(rc)), jesc(errmsg));
            fprintf(f, "\"failed_in\": \"%s\",\n\"guest_state\": \"%s\",\n\"guest_memory_ok\": %s,\n",
                    rc == MK_OK ? "" : phase, guest_state, mem_ok < 0 ? "null" : mem_ok ? "true" : "false");
            fprintf(f, "\"leak\": {\"fds_before\": %d, \"fds_after\": %d, \"threads_before\": %d, \"threads_after\": %d},\n",
                    before.fds, after.fds, before.threads, after.threads);
            fprintf(f, "\"migration\": %s,\n", lib_json);
            fprintf(f, "\"host\": {\n");
            fprintf(f, "  \"start_ns\": %" PRIu64 ", \"end_ns\": %" PRIu64 ",\n", start_ns, end_ns);
            fprintf(f, "  \"pause_ns\": %" PRIu64 ", \"resume_ns\": %" PRIu64 ",\n", c.pause_ns, c.resume_ns);
            fprintf(f, "  \"status\": \"%s\", \"total_time_ms\": %" PRIu64 ", \"downtime_ms\": %" PRIu64
                       ", \"downtime_us\": %" PRIu64 ", \"expected_downtime_ms\": %" PRIu64 ", \"downtime_limit_ms\": %" PRIu64 ",\n",
                    mk_status_name(status), s.total_time_ms, s.downtime_ms, s.downtime_us, s.expected_downtime_ms,
                    s.downtime_limit_ms);
            fprintf(f, "  \"expected_downtime_us\": %" PRIu64 ", \"expected\": ", expected_downtime_us(&s));
            json_expected(f, &s);
            fprintf(f, ",\n");
            fprintf(f, "  \"transferred\": %" PRIu64 ", \"passes\": %" PRIu64 ", \"dirty_sync_count\": %" PRIu64
                       ", \"bandwidth_estimate\": %" PRIu64 ", \"bandwidth_source\": \"%s\",\n",
                    s.ram_transferred, s.passes, s.ram_dirty_sync_count, s.bandwidth_estimate,
                    bw_source_name(s.bandwidth_source));
            fprintf(f, "  \"stop_copy_us\": {\"pause\": %" PRIu64 ", \"sync\": %" PRIu64 ", \"ram\": %" PRIu64
                       ", \"ram_bytes\": %" PRIu64 ", \"device\": %" PRIu64 ", \"flush\": %" PRIu64 ", \"total\": %" PRIu64 "},\n",
                    s.stop_pause_us, s.stop_sync_us, s.stop_ram_us, s.stop_ram_bytes, s.stop_device_us,
                    s.stop_flush_us, s.downtime_us);
            if (MK_HAS(&s, stop_cpu_wait_us) && s.stop_cpu_wait_us != UINT64_MAX)
                fprintf(f, "  \"stop_cpu_wait_us\": %" PRIu64 ",\n", s.stop_cpu_wait_us);
            else
                fprintf(f, "  \"stop_cpu_wait_us\": null,\n");
            fprintf(f, "  \"max_throttle_pct\": %u, \"final_throttle_pct\": %u, \"kicks\": %" PRIu64
                       ", \"throttle_ms\": %.1f,\n",
                    atomic_load(&c.max_throttle), s.cpu_throttle_percentage, kicks, throttle_ns / 1e6);
            fprintf(f, "  \"not_converging_reports\": %" PRIu64 ", \"first_not_converging\": %s,\n", why_count,
                    jesc(first_why));
            fprintf(f, "  \"cancelled_by_host\": %s, \"cancel_t\": %.3f, \"cancel_rc\": %s,\n",
                    cancelled_by_us ? "true" : "false", cancel_t, jesc(cancelled_by_us ? mk_strerror(cancel_rc) : ""));
            fprintf(f, "  \"param_changes\": [");
            for (int i = 0; i < nchanges; i++)
                fprintf(f, "%s{\"t\": %.3f, \"set\": %s, \"rc\": %d}", i ? ", " : "", changes[i].t,
                        jesc(changes[i].text), changes[i].rc);
            fprintf(f, "],\n");
            fprintf(f, "  \"dirty_log\": {\"mode\": \"%s\", \"manual_protect\": %s, \"syncs\": %" PRIu64 ", \"total_us\": %" PRIu64
                       ", \"ring_entries\": %u, \"ring_harvests\": %" PRIu64 ", \"ring_harvested\": %" PRIu64
                       ", \"ring_full_exits\": %" PRIu64 "},\n",
                    vm->dirty_ring ? "ring" : "bitmap", vm->manual_protect ? "true" : "false",
                    (uint64_t)c.dirty_log_calls, (uint64_t)c.dirty_log_ns / 1000, vm->ring_entries,
                    (uint64_t)vm->ring_harvests, (uint64_t)vm->ring_entries_total, (uint64_t)vm->ring_full_exits);
            fprintf(f, "  \"throttle_mode\": \"%s\", \"throttle_sleep_us\": %" PRIu64 ",\n",
                    step_mode ? "step" : "closed-loop", MK_HAS(&s, throttle_sleep_us) ? s.throttle_sleep_us : 0);
            fprintf(f, "  \"time_to_converge_ms\": %.1f,\n",
                    c.pause_ns > start_ns ? (double)(c.pause_ns - start_ns) / 1e6 : -1.0);
            fprintf(f, "  \"throttle_during_check\": ");
            if (checked) {
                fprintf(f, "{\"kicks\": [");
                for (uint32_t i = 0; i < vm->nr_vcpus; i++)
                    fprintf(f, "%s%" PRIu64, i ? ", " : "", check_kicks[i]);
                fprintf(f, "], \"throttle_us\": [");
                for (uint32_t i = 0; i < vm->nr_vcpus; i++)
                    fprintf(f, "%s%" PRIu64, i ? ", " : "", check_throttle_ns[i] / 1000);
                fprintf(f, "]},\n");
            } else {
                fprintf(f, "null,\n");
            }
            fprintf(f, "  \"vcpu_final\": [");
            for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
                const mk_vcpu_stats vs = vs_final[i];
                fprintf(f, "%s{\"throttle_pct\": %u, \"max_throttle_pct\": %u, \"dirty_rate_known\": %s, \"dirty_pages\": %" PRIu64
                           ", \"throttle_sleep_us\": %" PRIu64 ", \"speed_before\": %.1f, \"speed_during\": %.1f, \"speed_fraction\": %.4f}",
                        i ? ", " : "", vs.throttle_percentage, max_vcpu_throttle[i], vs.dirty_rate_known ? "true" : "false",
                        vs.dirty_pages, vs.throttle_sleep_us, speed_before[i], speed_during[i],
                        speed_before[i] > 0 ? speed_during[i] / speed_before[i] : -1.0);
            }
            fprintf(f, "],\n");
            fprintf(f, "  \"device_state_bytes\": %" PRIu64 ", \"device_save_us\": %" PRIu64 ",\n", c.blob_bytes,
                    c.save_us);
            fprintf(f, "  \"guest_before\": [");
            for (uint32_t i = 0; i < vm->nr_vcpus; i++)
                fprintf(f, "%s%" PRIu64, i ? ", " : "", g0[i].work);
            fprintf(f, "],\n  \"guest_at_pause\": ");
            if (c.have_snap)
                json_status_array(f, &c.snap, vm->nr_vcpus);
            else
                fprintf(f, "null");
            fprintf(f, ",\n  \"guest_healthy_after\": %s, \"guest_health\": %s,\n",
                    healthy < 0 ? "null" : healthy ? "true" : "false", jesc(health));
            fprintf(f, "  \"guest_rate_after\": [");
            for (uint32_t i = 0; i < vm->nr_vcpus; i++)
                fprintf(f, "%s%.1f", i ? ", " : "", rates_after[i]);
            fprintf(f, "], \"dirty_rate_pages_per_s\": %.1f,\n", (double)w->dirty_rate / 4096.0);
            fprintf(f, "  \"mem_size\": %" PRIu64 ", \"vcpus\": %u, \"working_set\": %" PRIu64 ", \"dirty_rate\": %" PRIu64
                       ", \"tsc_hz\": %" PRIu64 ", \"backing\": \"%s\", \"regions\": %u\n",
                    vm->mem_size, vm->nr_vcpus, w->ws_size, w->dirty_rate, vm->tsc_hz, vm->backing, vm->nslots);
            fprintf(f, "}\n}\n");
            fclose(f);
        }
    }
    free(lib_json);
    if (status == MK_STATUS_COMPLETED)
        return exit_code;
    if (o->keep_running && healthy) {
        printf("source: --keep-running: guest continues; Ctrl-C to stop\n");
        fflush(stdout);
        while (!g_interrupted && !atomic_load(&vm->fatal)) {
            char sum[512];
            sleep_ns(1000000000ull);
            guest_summary(vm, sum, sizeof(sum));
            printf("guest: %s\n", sum);
            fflush(stdout);
        }
    }
    return exit_code;
}
