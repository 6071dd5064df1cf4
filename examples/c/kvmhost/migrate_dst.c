/*
 * migrate_dst.c - the destination side.
 *
 * The VM is built from our own command line (same --mem/--vcpus as the
 * source; the library's region check catches a mismatch) with its vCPU
 * threads parked. mk_dest_run loads the stream straight into guest memory and
 * hands the device-state blob to load_device_state, which restores every
 * vCPU. With MK_DEST_MANUAL_ACK we then verify memory (QEMU's invariant, the
 * page pattern, the status pages against the source's snapshot), resume the
 * vCPUs, and only then acknowledge, so the library's downtime ends when the
 * guest runs again. End-to-end downtime = our resume time - the source's
 * pause time (both CLOCK_MONOTONIC on one machine; the pause time travels in
 * the blob).
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "kvmhost.h"
#include "migrationkit.h"

extern volatile sig_atomic_t g_interrupted;

struct dst_ctx {
    struct vm *vm;
    struct host_snapshot snap;
    int loaded;
    uint64_t load_ns;
    char err[512];
};

static int cb_load(void *user, const void *data, size_t len)
{
    struct dst_ctx *c = user;
    if (devstate_load(c->vm, data, len, &c->snap, c->err, sizeof(c->err)) < 0) {
        fprintf(stderr, "kvmhost: destination: %s\n", c->err);
        return -1;
    }
    c->loaded = 1;
    c->load_ns = now_ns();
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

static void write_json(const struct dst_opts *o, const char *result, int exit_code, const char *error,
                       const mk_dest_stats *ds, struct dst_ctx *c, uint64_t resume_ns, uint64_t verify_us,
                       const struct verify_result *vr, const struct verify_result *vr_end, const char *continued,
                       struct vm *vm, const struct guest_status *end)
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
    fprintf(f, "\"dest\": {\"status\": \"%s\", \"error\": %d, \"bytes_received\": %" PRIu64 ", \"pages_loaded\": %" PRIu64
               ", \"zero_pages\": %" PRIu64 ", \"records\": %" PRIu64 ", \"device_state_bytes\": %" PRIu64
               ", \"total_time_ms\": %" PRIu64 "},\n",
            mk_status_name(ds->status), ds->error, ds->bytes_received, ds->pages_loaded, ds->zero_pages, ds->records,
            ds->device_state_bytes, ds->total_time_ms);
    fprintf(f, "\"host\": {\n");
    fprintf(f, "  \"pause_ns\": %" PRIu64 ", \"load_ns\": %" PRIu64 ", \"resume_ns\": %" PRIu64 ",\n",
            c->loaded ? c->snap.pause_ns : 0, c->load_ns, resume_ns);
    double e2e = (c->loaded && resume_ns) ? (double)(resume_ns - c->snap.pause_ns) / 1e6 : -1;
    fprintf(f, "  \"downtime_e2e_ms\": %.3f, \"verify_before_resume_us\": %" PRIu64 ",\n", e2e, verify_us);
    if (vr) {
        fprintf(f, "  \"verify\": {\"ok\": %s, \"pages\": %" PRIu64 ", \"static_pages\": %" PRIu64
                   ", \"static_bad\": %" PRIu64 ", \"slices\": [",
                vr->ok ? "true" : "false", vr->pages_checked, vr->static_pages, vr->static_bad);
        for (uint32_t i = 0; i < vr->nslices; i++)
            fprintf(f, "%s{\"vcpu\": %u, \"pages\": %" PRIu64 ", \"edge\": %" PRId64 ", \"counter\": %u}", i ? ", " : "",
                    vr->slices[i].vcpu, vr->slices[i].pages, vr->slices[i].edge, vr->slices[i].first);
        fprintf(f, "], \"msg\": %s},\n", jesc(vr->msg));
    }
    if (vr_end)
        fprintf(f, "  \"verify_end\": {\"ok\": %s, \"pages\": %" PRIu64 ", \"msg\": %s},\n",
                vr_end->ok ? "true" : "false", vr_end->pages_checked, jesc(vr_end->msg));
    fprintf(f, "  \"continued\": %s,\n", jesc(continued ? continued : ""));
    fprintf(f, "  \"guest_at_pause\": [");
    for (uint32_t i = 0; c->loaded && i < vm->nr_vcpus; i++)
        fprintf(f, "%s{\"vcpu\": %u, \"role\": \"%s\", \"work\": %" PRIu64 ", \"rip\": %" PRIu64 "}", i ? ", " : "", i,
                role_name(c->snap.status[i].role), c->snap.status[i].work, c->snap.rip[i]);
    fprintf(f, "],\n  \"guest_end\": [");
    for (uint32_t i = 0; end && i < vm->nr_vcpus; i++)
        fprintf(f, "%s{\"vcpu\": %u, \"work\": %" PRIu64 ", \"starts\": %" PRIu64 "}", i ? ", " : "", i, end[i].work,
                end[i].starts);
    fprintf(f, "],\n  \"mem_size\": %" PRIu64 ", \"vcpus\": %u, \"tsc_hz\": %" PRIu64 ", \"regions\": %u\n}\n}\n",
            vm->mem_size, vm->nr_vcpus, vm->tsc_hz, vm->nslots);
    fclose(f);
}

struct cancel_watch {
    mk_dest *dst;
    volatile int done;
};

static void *watch_interrupt(void *arg)
{
    struct cancel_watch *cw = arg;
    while (!cw->done) {
        if (g_interrupted) {
            mk_dest_cancel(cw->dst);
            break;
        }
        sleep_ns(50 * 1000000ull);
    }
    return NULL;
}

int run_destination(struct vm *vm, const struct dst_opts *o)
{
    struct dst_ctx c;
    memset(&c, 0, sizeof(c));
    c.vm = vm;
    char err[512];
    mk_dest_stats ds;
    memset(&ds, 0, sizeof(ds));
    ds.struct_size = sizeof(ds);

    if (vcpus_start(vm, 1) < 0)
        die("cannot start vCPU threads");
    int lfd = net_listen(o->uri, err, sizeof(err));
    if (lfd < 0) {
        fprintf(stderr, "kvmhost: INCOMING MIGRATION FAILED: %s\n", err);
        write_json(o, "failed", EXIT_MIG_FAILED, err, &ds, &c, 0, 0, NULL, NULL, NULL, vm, NULL);
        return EXIT_MIG_FAILED;
    }
    printf("destination: listening on %s (%u vCPUs, %llu MiB)\n", o->uri, vm->nr_vcpus,
           (unsigned long long)(vm->mem_size >> 20));
    fflush(stdout);
    int fd = net_accept(lfd, o->accept_timeout, err, sizeof(err));
    close(lfd);
    if (fd < 0) {
        fprintf(stderr, "kvmhost: INCOMING MIGRATION FAILED: %s\n", err);
        write_json(o, "failed", EXIT_MIG_FAILED, err, &ds, &c, 0, 0, NULL, NULL, NULL, vm, NULL);
        return EXIT_MIG_FAILED;
    }
    printf("destination: source connected, loading\n");
    fflush(stdout);

    mk_dest_config cfg;
    mk_dest_config_init(&cfg);
    cfg.transport_fd = fd;
    cfg.flags = MK_DEST_MANUAL_ACK;
    mk_dest_callbacks cb;
    memset(&cb, 0, sizeof(cb));
    cb.struct_size = sizeof(cb);
    cb.user = &c;
    cb.load_device_state = cb_load;
    cb.log = cb_log;
    mk_dest *dst = NULL;
    int r = mk_dest_create(&dst, &cfg, &cb);
    if (r != MK_OK)
        die("mk_dest_create: %s: %s", mk_strerror(r), mk_last_error());
    for (uint32_t i = 0; i < vm->nslots; i++) {
        mk_region reg;
        mk_region_init(&reg);
        reg.guest_phys_addr = vm->slots[i].gpa;
        reg.size = vm->slots[i].size;
        reg.host_addr = vm->slots[i].host;
        reg.dirty_granularity = MK_PAGE_SIZE;
        r = mk_dest_add_region(dst, &reg, NULL);
        if (r != MK_OK)
            die("mk_dest_add_region: %s: %s", mk_strerror(r), mk_dest_errmsg(dst));
    }

    /* Ctrl-C while loading: mk_dest_cancel from a watcher (mk_dest_run blocks this thread) */
    pthread_t watcher;
    struct cancel_watch cw = { dst, 0 };
    pthread_create(&watcher, NULL, watch_interrupt, &cw);
    uint64_t t0 = now_ns();
    r = mk_dest_run(dst);
    cw.done = 1;
    pthread_join(watcher, NULL);
    uint64_t t_loaded = now_ns();
    mk_dest_get_stats(dst, &ds);
    if (r != MK_OK) {
        snprintf(err, sizeof(err), "%s: %s", mk_strerror(r), mk_dest_errmsg(dst));
        fprintf(stderr, "kvmhost: INCOMING MIGRATION FAILED: %s\n", err);
        printf("destination: INCOMING MIGRATION FAILED after %.1f s, %llu bytes received: %s\n",
               (t_loaded - t0) / 1e9, (unsigned long long)ds.bytes_received, err);
        write_json(o, "failed", EXIT_MIG_FAILED, err, &ds, &c, 0, 0, NULL, NULL, NULL, vm, NULL);
        mk_dest_destroy(dst);
        close(fd);
        return EXIT_MIG_FAILED;
    }
    if (!c.loaded) {
        snprintf(err, sizeof(err), "the stream carried no device state");
        mk_dest_ack(dst, MK_EDEST);
        fprintf(stderr, "kvmhost: INCOMING MIGRATION FAILED: %s\n", err);
        write_json(o, "failed", EXIT_MIG_FAILED, err, &ds, &c, 0, 0, NULL, NULL, NULL, vm, NULL);
        mk_dest_destroy(dst);
        close(fd);
        return EXIT_MIG_FAILED;
    }

    if (o->corrupt_after_load) {
        /* testing aid: a lost page write, to show the check and the NACK work */
        uint64_t ws = gpa_u64(vm, GPA_PARAMS + P_WS_SIZE);
        uint64_t gpa = GPA_DATA + (ws ? (ws / 2 & ~4095ull) : 0) + 100;
        *(volatile uint8_t *)gpa_ptr(vm, gpa) ^= 0x5a;
        printf("destination: --corrupt-after-load: flipped bits of the byte at gpa %#llx\n", (unsigned long long)gpa);
    }
    /* Verify before the guest touches anything: working set + status pages. */
    struct verify_result vr;
    verify_working_set(vm, &vr);
    verify_against_snapshot(vm, &c.snap, &vr);
    uint64_t verify_us = (now_ns() - t_loaded) / 1000;
    if (!vr.ok) {
        fprintf(stderr, "kvmhost: MEMORY VERIFICATION FAILED: %s\n", vr.msg);
        mk_dest_ack(dst, MK_EDEST);
        write_json(o, "verify-failed", EXIT_ERROR, vr.msg, &ds, &c, 0, verify_us, &vr, NULL, NULL, vm, NULL);
        mk_dest_destroy(dst);
        close(fd);
        return EXIT_ERROR;
    }

    vcpus_resume(vm);
    uint64_t resume_ns = vm->resume_ns;
    r = mk_dest_ack(dst, 0);
    if (r != MK_OK)
        fprintf(stderr, "kvmhost: mk_dest_ack: %s: %s\n", mk_strerror(r), mk_dest_errmsg(dst));
    double e2e_ms = (double)(resume_ns - c.snap.pause_ns) / 1e6;

    printf("destination: loaded %llu bytes (%llu pages, %llu zero pages, %llu B device state) in %.2f s\n",
           (unsigned long long)ds.bytes_received, (unsigned long long)ds.pages_loaded,
           (unsigned long long)ds.zero_pages, (unsigned long long)ds.device_state_bytes, (t_loaded - t0) / 1e9);
    printf("destination: memory verified before resume in %.1f ms: %llu working-set pages, QEMU invariant holds",
           verify_us / 1e3, (unsigned long long)vr.pages_checked);
    for (uint32_t i = 0; i < vr.nslices; i++)
        printf("; v%u edge at page %lld of %llu (counter %u)", vr.slices[i].vcpu, (long long)vr.slices[i].edge,
               (unsigned long long)vr.slices[i].pages, vr.slices[i].first);
    printf("; status pages match the source's pause snapshot\n");
    printf("destination: guest resumed; END-TO-END DOWNTIME %.2f ms (source vCPU pause -> destination vCPU resume)\n",
           e2e_ms);
    for (uint32_t i = 0; i < vm->nr_vcpus; i++)
        printf("destination: v%u resumes at rip %#llx (%s loop), work %llu, starts %llu\n", i,
               (unsigned long long)c.snap.rip[i], role_name(c.snap.status[i].role),
               (unsigned long long)c.snap.status[i].work, (unsigned long long)c.snap.status[i].starts);
    fflush(stdout);

    /* The static area is never written by the guest: check it while it runs. */
    uint64_t ts0 = now_ns();
    verify_static(vm, &vr);
    printf("destination: static area %s: %llu pages in %.0f ms%s%s\n", vr.static_bad ? "CORRUPT" : "verified",
           (unsigned long long)vr.static_pages, (now_ns() - ts0) / 1e6, vr.static_bad ? ": " : "",
           vr.static_bad ? vr.msg : "");
    int ok = vr.ok;

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
        int adv = end[i].work > c.snap.status[i].work && end[i].starts == 1;
        if (!adv)
            cont_ok = 0;
        n += (size_t)snprintf(continued + n, sizeof(continued) - n,
                              "%sv%u %s work %llu at pause -> %llu now (+%llu), entry ran %llu time(s)", i ? "; " : "",
                              i, role_name(end[i].role), (unsigned long long)c.snap.status[i].work,
                              (unsigned long long)end[i].work,
                              (unsigned long long)(end[i].work - c.snap.status[i].work),
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
    write_json(o, code == EXIT_OK ? "ok" : "guest-check-failed", code, "", &ds, &c, resume_ns, verify_us, &vr,
               &vr_end, continued, vm, end);
    mk_dest_destroy(dst);
    close(fd);
    return code;
}
