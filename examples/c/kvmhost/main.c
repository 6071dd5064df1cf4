/*
 * main.c - kvmhost: the reference KVM host for libmigrationkit.
 *
 * Source:      kvmhost --mem 512M --vcpus 2 --working-set 64M --dirty-rate 100M
 *                      --migrate tcp:127.0.0.1:4444 [library parameters...]
 * Destination: kvmhost --incoming tcp:0.0.0.0:4444 --mem 512M --vcpus 2
 * See README.md for every option and the exit codes.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "kvmhost.h"
#include "migrationkit.h"

volatile sig_atomic_t g_interrupted;
int g_signal_fd = -1;           /* read end of the self-pipe on_signal writes */
static int g_signal_wfd = -1;

static void on_signal(int sig)
{
    (void)sig;
    g_interrupted = 1;
    /* wake threads that sleep in poll() (the destination's Ctrl-C watcher) */
    if (g_signal_wfd >= 0) {
        int saved = errno;
        if (write(g_signal_wfd, "!", 1) < 0) {
            /* pipe full: a wake-up is already pending */
        }
        errno = saved;
    }
}

static void signal_pipe_setup(void)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0) {
        g_signal_fd = p[0];
        g_signal_wfd = p[1];
    }
}

/* Library parameters accepted as --NAME VALUE and passed through by name. */
static const char *const lib_params[] = {
    "downtime-limit", "max-bandwidth", "avail-switchover-bandwidth", "auto-converge",
    "throttle-trigger-threshold", "cpu-throttle-initial", "cpu-throttle-increment",
    "cpu-throttle-tailslow", "max-cpu-throttle", "completion-timeout", "timeout-strategy", "downtime-target",
    "throttle-mode",
    NULL,
};

static void usage(FILE *f)
{
    fprintf(f,
        "usage: kvmhost [guest options] [--migrate URI [migration options]]\n"
        "       kvmhost --incoming URI [guest shape options] [destination options]\n"
        "       kvmhost --self-test [guest options]\n"
        "       kvmhost --probe              (exit 0 if KVM can run the guest here, 77 if not)\n"
        "\n"
        "guest (both sides must agree on --mem, --vcpus, --slot-size):\n"
        "  --mem SIZE               guest RAM, multiple of 2M (default 512M)\n"
        "  --vcpus N                1..%d (default 1)\n"
        "  --slot-size SIZE         KVM memory slot / library region size (default 1G)\n"
        "  --hugepages              back RAM with huge pages (hugetlbfs, else THP)\n"
        "  --dirty-log auto|ring|bitmap  dirty tracking: the KVM dirty ring (per-vCPU attribution,\n"
        "                           feeds per-vCPU auto-converge) or the bitmap; auto = ring where the\n"
        "                           kernel offers it (default)\n"
        "  --working-set SIZE       memory the dirtiers sweep (default 64M; 0 = idle guest)\n"
        "  --dirty-rate RATE        bytes/s dirtied in total, e.g. 100M (default 0 = as fast as it can)\n"
        "  --dirtiers LIST          vCPUs that dirty: 0,1 | all | none (default 0)\n"
        "  --idle LIST              vCPUs that only idle (others that do not dirty compute)\n"
        "  --compute-duty PCT       compute vCPUs compute PCT%% of every 10 ms (default 10)\n"
        "  --fill pattern|zero      rest of RAM: address pattern (default) or left zero\n"
        "  --run-seconds S          without --migrate: run S seconds then stop (default: until Ctrl-C)\n"
        "\n"
        "source migration:\n"
        "  --migrate URI            tcp:HOST:PORT or unix:PATH\n"
        "  --migrate-after S        let the guest run S seconds first (default 1)\n"
        "  --connect-timeout S      retry connecting this long (default 10)\n"
        "  --NAME VALUE             any library parameter by its QEMU name:\n"
        "                           --downtime-limit MS --max-bandwidth B/s --avail-switchover-bandwidth B/s\n"
        "                           --auto-converge on|off --throttle-trigger-threshold PCT\n"
        "                           --cpu-throttle-initial PCT --cpu-throttle-increment PCT\n"
        "                           --cpu-throttle-tailslow on|off --max-cpu-throttle PCT\n"
        "                           --completion-timeout MS --timeout-strategy cancel|switchover\n"
        "                           --downtime-target MS (iterate on while a pass would halve downtime, down to MS)\n"
        "                           --throttle-mode closed-loop|step (auto-converge's controller)\n"
        "  --param NAME=VALUE       the same for any name (passed to mk_source_set_param)\n"
        "  --set-param-at S NAME=VALUE  change a parameter S seconds into the migration\n"
        "  --cancel-after S         cancel the migration after S seconds\n"
        "  --cancel-at EVENT[+MS]   cancel MS ms after EVENT: start (mk_source_start returned), active,\n"
        "                           pass:N (N passes done) or device (guest paused for stop-and-copy)\n"
        "  --speed-window S         measure each vCPU's speed for S s before the migration (default 0:\n"
        "                           not measured); reported with its speed during the migration\n"
        "  --ack-timeout MS         how long to wait for the destination's ack\n"
        "  --auth-key-file FILE     (both sides) authenticate the stream with the key in FILE\n"
        "                           (16..1024 bytes, the same file on both sides)\n"
        "  --after-fail-seconds S   after a failed/cancelled migration, watch the guest S s (default 2)\n"
        "  --keep-running           ... then keep it running until Ctrl-C\n"
        "\n"
        "soak (two processes pass one guest back and forth):\n"
        "  --soak URI               after each migration take the other role on URI: listen there after\n"
        "                           sending, connect there after receiving. A: --migrate B --soak A,\n"
        "                           B: --incoming B --soak A. --stats-json FILE: {hop} becomes the hop number\n"
        "  --hops N                 migrations in all, over both processes\n"
        "\n"
        "destination:\n"
        "  --incoming URI           listen on tcp:HOST:PORT or unix:PATH\n"
        "  --accept-timeout S       give up if no source connects (default 120)\n"
        "  --run-after-seconds S    run the guest S seconds after resume, then check it (default 1)\n"
        "  --keep-running           run until Ctrl-C instead\n"
        "  --working-set SIZE       the source's working set: sizes the resume-cost estimate (default 64M)\n"
        "  --resume-cost-us N       tell the library N us from END to the ack (default: measured estimate)\n"
        "  --no-fresh               do not register guest memory as MK_REGION_FRESH\n"
        "  --no-prefault            do not fault guest memory in before accepting the source\n"
        "  --corrupt-after-load     testing aid: damage a working-set counter after loading\n"
        "                           (found before resume: the source keeps its guest)\n"
        "  --corrupt-pattern-after-load  testing aid: damage a byte the guest never writes\n"
        "                           (found after resume: the destination fails, the source has handed over)\n"
        "\n"
        "both:\n"
        "  --stats-json FILE        final statistics as JSON (library's plus host fields)\n"
        "  --progress auto|tty|plain|none   progress display (default auto: tty if stdout is one)\n"
        "  --timeline FILE.svg      chart of the migration from the progress callbacks (remaining, rates,\n"
        "                           expected downtime vs limit, throttle; switchover and downtime marked)\n"
        "  --quiet                  fewer messages\n"
        "\n"
        "exit codes: 0 ok, 1 error/verification failed, 2 migration failed (source guest healthy),\n"
        "            3 migration cancelled (source guest healthy), 4 source: END sent and no answer, vCPUs\n"
        "            left paused (memory checked intact), 64 usage, 77 no usable /dev/kvm\n",
        MAX_VCPUS);
}

static int parse_list(const char *s, uint32_t nr, uint32_t *mask)
{
    *mask = 0;
    if (!strcmp(s, "all")) {
        *mask = nr >= 32 ? ~0u : (1u << nr) - 1;
        return 0;
    }
    if (!strcmp(s, "none") || !*s)
        return 0;
    char *copy = strdup(s), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *end;
        long v = strtol(t, &end, 10);
        if (*end || v < 0 || v >= MAX_VCPUS) {
            free(copy);
            return -1;
        }
        *mask |= 1u << v;
    }
    free(copy);
    return 0;
}

static int split_nv(const char *s, struct param_set *p)
{
    const char *eq = strchr(s, '=');
    if (!eq || eq == s || (size_t)(eq - s) >= sizeof(p->name) || strlen(eq + 1) >= sizeof(p->value))
        return -1;
    snprintf(p->name, sizeof(p->name), "%.*s", (int)(eq - s), s);
    snprintf(p->value, sizeof(p->value), "%s", eq + 1);
    return 0;
}

/* --cancel-at EVENT[+MS]: start (right after mk_source_start), active,
 * pass:N (N passes done), device (the guest paused for stop-and-copy). */
static int parse_cancel_at(const char *v, struct src_opts *o)
{
    char ev[32];
    const char *plus = strchr(v, '+');
    size_t n = plus ? (size_t)(plus - v) : strlen(v);
    if (n >= sizeof(ev))
        return -1;
    snprintf(ev, sizeof(ev), "%.*s", (int)n, v);
    o->cancel_delay_ms = 0;
    if (plus) {
        char *end;
        o->cancel_delay_ms = strtod(plus + 1, &end);
        if (*end || end == plus + 1 || o->cancel_delay_ms < 0)
            return -1;
    }
    if (!strcmp(ev, "start"))
        o->cancel_at = CANCEL_AT_START;
    else if (!strcmp(ev, "active"))
        o->cancel_at = CANCEL_AT_ACTIVE;
    else if (!strcmp(ev, "device"))
        o->cancel_at = CANCEL_AT_DEVICE;
    else if (!strncmp(ev, "pass:", 5) && atoi(ev + 5) > 0) {
        o->cancel_at = CANCEL_AT_PASS;
        o->cancel_pass = (uint64_t)atoi(ev + 5);
    } else
        return -1;
    return 0;
}

struct options {
    struct vm_config vmc;
    struct workload w;
    const char *dirtiers, *idle;
    double run_seconds;
    int self_test;
    int probe;
    struct src_opts src;
    struct dst_opts dst;
    const char *incoming;
    const char *soak;       /* --soak URI: take the other role there after each hop */
    uint32_t hops;
};

#define USAGE_ERR(...)                                          \
    do {                                                        \
        fprintf(stderr, "kvmhost: " __VA_ARGS__);               \
        fprintf(stderr, " (see --help)\n");                     \
        exit(EXIT_USAGE);                                       \
    } while (0)

static char *need_value(int argc, char **argv, int *i, char *inl, const char *name)
{
    if (inl)
        return inl;
    if (*i + 1 >= argc)
        USAGE_ERR("%s needs a value", name);
    return argv[++*i];
}

static void parse_args(int argc, char **argv, struct options *o)
{
    memset(o, 0, sizeof(*o));
    o->vmc.mem_size = 512ull << 20;
    o->vmc.nr_vcpus = 1;
    o->vmc.slot_size = 1ull << 30;
    o->w.ws_size = 64ull << 20;
    o->w.compute_duty = 10;
    o->w.fill = 1;
    o->dirtiers = "0";
    o->idle = "none";
    o->run_seconds = -1;
    o->src.migrate_after = 1.0;
    o->src.connect_timeout = 10;
    o->src.cancel_after = -1;
    o->src.after_fail_seconds = 2;
    o->dst.accept_timeout = 120;
    o->dst.run_after_seconds = 1;
    o->dst.resume_cost_us = -1;

    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        char *inl = NULL;
        char namebuf[64];
        char *eq = strchr(a, '=');
        if (!strncmp(a, "--", 2) && eq && (size_t)(eq - a) < sizeof(namebuf)) {
            /* --name=value */
            snprintf(namebuf, sizeof(namebuf), "%.*s", (int)(eq - a), a);
            a = namebuf;
            inl = eq + 1;
        }
#define VAL() need_value(argc, argv, &i, inl, a)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--mem")) {
            if (parse_size(VAL(), &o->vmc.mem_size) < 0)
                USAGE_ERR("bad --mem");
        } else if (!strcmp(a, "--vcpus")) {
            o->vmc.nr_vcpus = (uint32_t)atoi(VAL());
        } else if (!strcmp(a, "--slot-size")) {
            if (parse_size(VAL(), &o->vmc.slot_size) < 0)
                USAGE_ERR("bad --slot-size");
        } else if (!strcmp(a, "--dirty-log")) {
            const char *v = VAL();
            if (!strcmp(v, "auto"))
                o->vmc.dirty_log = DIRTY_LOG_AUTO;
            else if (!strcmp(v, "ring"))
                o->vmc.dirty_log = DIRTY_LOG_RING;
            else if (!strcmp(v, "bitmap"))
                o->vmc.dirty_log = DIRTY_LOG_BITMAP;
            else
                USAGE_ERR("--dirty-log auto|ring|bitmap");
        } else if (!strcmp(a, "--speed-window")) {
            if (parse_seconds(VAL(), &o->src.speed_window) < 0)
                USAGE_ERR("bad --speed-window");
        } else if (!strcmp(a, "--hugepages")) {
            o->vmc.hugepages = 1;
        } else if (!strcmp(a, "--working-set")) {
            if (parse_size(VAL(), &o->w.ws_size) < 0)
                USAGE_ERR("bad --working-set");
            o->w.ws_size &= ~4095ull;
        } else if (!strcmp(a, "--dirty-rate")) {
            if (parse_size(VAL(), &o->w.dirty_rate) < 0)
                USAGE_ERR("bad --dirty-rate");
        } else if (!strcmp(a, "--dirtiers")) {
            o->dirtiers = VAL();
        } else if (!strcmp(a, "--idle")) {
            o->idle = VAL();
        } else if (!strcmp(a, "--compute-duty")) {
            o->w.compute_duty = (uint32_t)atoi(VAL());
        } else if (!strcmp(a, "--fill")) {
            const char *v = VAL();
            if (!strcmp(v, "pattern"))
                o->w.fill = 1;
            else if (!strcmp(v, "zero"))
                o->w.fill = 0;
            else
                USAGE_ERR("--fill pattern|zero");
        } else if (!strcmp(a, "--run-seconds")) {
            if (parse_seconds(VAL(), &o->run_seconds) < 0)
                USAGE_ERR("bad --run-seconds");
        } else if (!strcmp(a, "--self-test")) {
            o->self_test = 1;
        } else if (!strcmp(a, "--probe")) {
            o->probe = 1;
        } else if (!strcmp(a, "--migrate")) {
            o->src.uri = VAL();
        } else if (!strcmp(a, "--migrate-after")) {
            if (parse_seconds(VAL(), &o->src.migrate_after) < 0)
                USAGE_ERR("bad --migrate-after");
        } else if (!strcmp(a, "--connect-timeout")) {
            if (parse_seconds(VAL(), &o->src.connect_timeout) < 0)
                USAGE_ERR("bad --connect-timeout");
        } else if (!strcmp(a, "--param")) {
            if (o->src.nparams >= 64 || split_nv(VAL(), &o->src.params[o->src.nparams]) < 0)
                USAGE_ERR("--param NAME=VALUE");
            o->src.params[o->src.nparams++].at = -1;
        } else if (!strcmp(a, "--set-param-at")) {
            if (i + 2 >= argc || o->src.nparams >= 64)
                USAGE_ERR("--set-param-at SECONDS NAME=VALUE");
            struct param_set *p = &o->src.params[o->src.nparams];
            if (parse_seconds(argv[++i], &p->at) < 0 || split_nv(argv[++i], p) < 0)
                USAGE_ERR("--set-param-at SECONDS NAME=VALUE");
            o->src.nparams++;
        } else if (!strcmp(a, "--cancel-after")) {
            if (parse_seconds(VAL(), &o->src.cancel_after) < 0)
                USAGE_ERR("bad --cancel-after");
        } else if (!strcmp(a, "--cancel-at")) {
            if (parse_cancel_at(VAL(), &o->src) < 0)
                USAGE_ERR("--cancel-at start|active|pass:N|device[+MS]");
        } else if (!strcmp(a, "--ack-timeout")) {
            o->src.ack_timeout_ms = strtoull(VAL(), NULL, 10);
        } else if (!strcmp(a, "--after-fail-seconds")) {
            if (parse_seconds(VAL(), &o->src.after_fail_seconds) < 0)
                USAGE_ERR("bad --after-fail-seconds");
        } else if (!strcmp(a, "--keep-running")) {
            o->src.keep_running = 1;
            o->dst.keep_running = 1;
        } else if (!strcmp(a, "--soak")) {
            o->soak = VAL();
        } else if (!strcmp(a, "--hops")) {
            o->hops = (uint32_t)atoi(VAL());
        } else if (!strcmp(a, "--incoming")) {
            o->incoming = VAL();
        } else if (!strcmp(a, "--accept-timeout")) {
            if (parse_seconds(VAL(), &o->dst.accept_timeout) < 0)
                USAGE_ERR("bad --accept-timeout");
        } else if (!strcmp(a, "--corrupt-after-load")) {
            o->dst.corrupt_after_load = CORRUPT_COUNTER;
        } else if (!strcmp(a, "--corrupt-pattern-after-load")) {
            o->dst.corrupt_after_load = CORRUPT_PATTERN;
        } else if (!strcmp(a, "--no-fresh")) {
            o->dst.no_fresh = 1;
        } else if (!strcmp(a, "--no-prefault")) {
            o->dst.no_prefault = 1;
        } else if (!strcmp(a, "--resume-cost-us")) {
            char *end;
            const char *v = VAL();
            long long us = strtoll(v, &end, 10);
            if (*end || end == v || us < 0)
                USAGE_ERR("bad --resume-cost-us");
            o->dst.resume_cost_us = us;
        } else if (!strcmp(a, "--auth-key-file")) {
            static unsigned char key[1025];
            const char *path = VAL();
            FILE *f = fopen(path, "rb");
            size_t n = f ? fread(key, 1, sizeof key, f) : 0;
            if (f) fclose(f);
            if (!f || n == 0 || n > 1024)
                USAGE_ERR("--auth-key-file: cannot read 1..1024 bytes of key from that file");
            o->src.auth_key = o->dst.auth_key = key;
            o->src.auth_key_len = o->dst.auth_key_len = n;
        } else if (!strcmp(a, "--run-after-seconds")) {
            if (parse_seconds(VAL(), &o->dst.run_after_seconds) < 0)
                USAGE_ERR("bad --run-after-seconds");
        } else if (!strcmp(a, "--timeline")) {
            o->src.timeline = VAL();
        } else if (!strcmp(a, "--stats-json")) {
            o->src.stats_json = o->dst.stats_json = VAL();
        } else if (!strcmp(a, "--progress")) {
            const char *v = VAL();
            o->src.progress_mode = !strcmp(v, "tty") ? PROGRESS_TTY : !strcmp(v, "plain") ? PROGRESS_PLAIN
                                 : !strcmp(v, "none") ? PROGRESS_NONE : PROGRESS_AUTO;
        } else if (!strcmp(a, "--quiet")) {
            g_quiet = 1;
        } else if (!strncmp(a, "--", 2)) {
            int k;
            for (k = 0; lib_params[k]; k++)
                if (!strcmp(a + 2, lib_params[k]))
                    break;
            if (!lib_params[k])
                USAGE_ERR("unknown option %s", a);
            if (o->src.nparams >= 64)
                USAGE_ERR("too many parameters");
            struct param_set *p = &o->src.params[o->src.nparams++];
            p->at = -1;
            snprintf(p->name, sizeof(p->name), "%s", lib_params[k]);
            snprintf(p->value, sizeof(p->value), "%s", VAL());
        } else {
            USAGE_ERR("unexpected argument %s", a);
        }
#undef VAL
    }
    uint32_t n = o->vmc.nr_vcpus;
    if (n < 1 || n > MAX_VCPUS)
        USAGE_ERR("--vcpus must be 1..%d", MAX_VCPUS);
    uint32_t all = (1u << n) - 1, idle;
    if (parse_list(o->dirtiers, n, &o->w.dirtier_mask) < 0 || (o->w.dirtier_mask & ~all))
        USAGE_ERR("bad --dirtiers '%s'", o->dirtiers);
    if (parse_list(o->idle, n, &idle) < 0 || (idle & ~all))
        USAGE_ERR("bad --idle '%s'", o->idle);
    o->w.dirtier_mask &= ~idle;
    o->w.compute_mask = all & ~o->w.dirtier_mask & ~idle;
    o->dst.ws_hint = o->w.ws_size;
    if (o->incoming && o->src.uri)
        USAGE_ERR("--incoming and --migrate exclude each other");
    if (o->soak && (!o->incoming == !o->src.uri || o->hops < 1))
        USAGE_ERR("--soak URI needs --hops N >= 1 and one of --migrate (first hop out) or --incoming (first hop in)");
}

static struct vm *make_vm(const struct options *o, int fresh_guest)
{
    struct vm *vm = calloc(1, sizeof(*vm));
    int r = vm_create(vm, &o->vmc);
    if (r == -2) {
        fprintf(stderr, "kvmhost: SKIPPED: no usable /dev/kvm\n");
        exit(EXIT_NOKVM);
    }
    if (r < 0)
        die("cannot create the VM");
    if (fresh_guest) {
        if (vm_setup_longmode(vm) < 0)
            die("cannot set up long mode");
        if (workload_write_params(vm, &o->w) < 0)
            exit(EXIT_USAGE);
        uint64_t t0 = now_ns();
        workload_fill(vm);
        logmsg("filled guest memory in %.0f ms", (now_ns() - t0) / 1e6);
    }
    return vm;
}

static void describe(struct vm *vm, const struct options *o)
{
    char ws[32], rate[32];
    fmt_bytes(ws, sizeof(ws), o->w.ws_size);
    fmt_bytes(rate, sizeof(rate), o->w.dirty_rate);
    printf("guest: %llu MiB (%s, %u slot(s)), %u vCPU(s), working set %s, dirty rate %s, TSC %.3f GHz; roles:",
           (unsigned long long)(vm->mem_size >> 20), vm->backing, vm->nslots, vm->nr_vcpus, ws,
           o->w.dirty_rate ? strcat(rate, "/s") : "unlimited", vm->tsc_hz / 1e9);
    for (uint32_t i = 0; i < vm->nr_vcpus; i++)
        printf(" v%u=%s", i,
               role_name((o->w.dirtier_mask >> i) & 1 ? (o->w.ws_size ? ROLE_DIRTY : ROLE_IDLE)
                         : (o->w.compute_mask >> i) & 1 ? ROLE_COMPUTE : ROLE_IDLE));
    printf("\n");
    fflush(stdout);
}

static void wait_started(struct vm *vm)
{
    double until = now_s() + 5;
    for (;;) {
        uint32_t n = 0;
        for (uint32_t i = 0; i < vm->nr_vcpus; i++)
            if (vm->vcpus[i].started_event)
                n++;
        if (n == vm->nr_vcpus || atomic_load(&vm->fatal))
            break;
        if (now_s() > until)
            die("the guest did not start within 5 s");
        sleep_ns(1000000);
    }
    if (atomic_load(&vm->fatal))
        die("guest failed: %s", vm->fatal_msg);
}

/*
 * Migrate inside one process without the library: dirty-log precopy into a
 * second VM, save the vCPU state, load it there, run. Proves the dirty log
 * and the device-state blob on their own.
 */
static int self_test(const struct options *o)
{
    struct vm *a = make_vm(o, 1);
    describe(a, o);
    uint64_t start = now_ns();
    vcpus_start(a, 0);
    wait_started(a);
    struct vm *b = make_vm(o, 0);
    sleep_ns(500000000ull);

    /* A precopy by hand, through the same dirty-log path the library uses:
     * copy everything, then three passes of dirty pages, then pause. */
    if (vm_set_dirty_logging(a, 1) < 0)
        die("cannot enable dirty logging");
    uint64_t *bm[MAX_SLOTS];
    for (uint32_t s = 0; s < a->nslots; s++) {
        uint64_t np = a->slots[s].size / 4096;
        bm[s] = calloc((np + 63) / 64, 8);
        vm_get_dirty_log(a, s, bm[s], np);   /* arm: everything counts as dirty now */
    }
    memcpy(b->mem, a->mem, a->mem_size);
    for (int pass = 1; pass <= 4; pass++) {
        if (pass == 4)
            vcpus_pause(a);
        else
            sleep_ns(200000000ull);
        uint64_t dirty = 0;
        for (uint32_t s = 0; s < a->nslots; s++) {
            uint64_t np = a->slots[s].size / 4096;
            memset(bm[s], 0, (np + 63) / 64 * 8);
            if (vm_get_dirty_log(a, s, bm[s], np) < 0)
                die("dirty log failed");
            for (uint64_t p = 0; p < np; p++)
                if (bm[s][p / 64] >> (p % 64) & 1) {
                    memcpy(b->slots[s].host + p * 4096, a->slots[s].host + p * 4096, 4096);
                    dirty++;
                }
        }
        printf("self-test: dirty pass %d%s: %llu pages\n", pass, pass == 4 ? " (paused)" : "",
               (unsigned long long)dirty);
    }
    for (uint32_t s = 0; s < a->nslots; s++)
        free(bm[s]);
    struct host_snapshot hs;
    snapshot_fill(a, &hs, a->pause_ns, start);
    uint8_t *blob;
    size_t len;
    if (devstate_save(a, &hs, &blob, &len) < 0)
        die("devstate_save failed");
    struct verify_result vr;
    int ok_a = verify_working_set(a, &vr) == 0;
    printf("self-test: VM A paused, invariant %s, device state %zu bytes\n", ok_a ? "OK" : "BROKEN", len);
    char err[512];
    struct host_snapshot hs2;
    if (devstate_load(b, blob, len, &hs2, err, sizeof(err)) < 0)
        die("devstate_load: %s", err);
    free(blob);
    verify_working_set(b, &vr);
    verify_against_snapshot(b, &hs2, &vr);
    printf("self-test: VM B loaded: %s%s\n", vr.ok ? "verified" : "MISMATCH: ", vr.ok ? "" : vr.msg);
    vcpus_start(b, 0);
    sleep_ns(1000000000ull);
    vcpus_pause(b);
    int ok = vr.ok && ok_a && !atomic_load(&b->fatal);
    for (uint32_t i = 0; i < b->nr_vcpus; i++) {
        struct guest_status st;
        read_status(b, i, &st);
        int adv = st.work > hs2.status[i].work && st.starts == 1;
        printf("self-test: v%u %s work %llu at save -> %llu in VM B, starts %llu: %s\n", i, role_name(st.role),
               (unsigned long long)hs2.status[i].work, (unsigned long long)st.work, (unsigned long long)st.starts,
               adv ? "continued" : "DID NOT CONTINUE");
        if (!adv)
            ok = 0;
    }
    int vb = verify_working_set(b, &vr) == 0;
    printf("self-test: VM B invariant after running: %s %s\n", vb ? "OK" : "BROKEN", vb ? "" : vr.msg);
    if (atomic_load(&b->fatal))
        printf("self-test: guest error in VM B: %s\n", b->fatal_msg);
    ok = ok && vb;
    printf("self-test: %s\n", ok ? "PASS" : "FAIL");
    vcpus_stop(a);
    vcpus_stop(b);
    return ok ? EXIT_OK : EXIT_ERROR;
}

int main(int argc, char **argv)
{
    struct options o;
    parse_args(argc, argv, &o);
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    signal_pipe_setup();
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    vcpu_signal_setup();

    if (mk_version_number() / 100 != MK_VERSION_NUMBER / 100)
        logmsg("warning: header %d.%d, library %s", MK_VERSION_MAJOR, MK_VERSION_MINOR, mk_version());

    if (o.probe) {
        /* can this machine run our guest? exit 0, or 77 (no usable KVM) */
        struct vm_config c = { .mem_size = 4u << 20, .nr_vcpus = 1, .slot_size = 1u << 30 };
        struct vm *vm = calloc(1, sizeof(*vm));
        int r = vm_create(vm, &c);
        if (r == 0)
            r = vm_setup_longmode(vm);
        printf("kvm probe: %s\n", r == 0 ? "ok" : "no usable KVM");
        return r == 0 ? EXIT_OK : EXIT_NOKVM;
    }
    if (o.self_test)
        return self_test(&o);

    if (o.soak) {
        o.dst.uri = o.incoming;
        struct vm *vm = make_vm(&o, o.src.uri != NULL);
        uint64_t start = now_ns();
        if (o.src.uri) {
            describe(vm, &o);
            vcpus_start(vm, 0);
            wait_started(vm);
        }
        int code = run_soak(vm, &o.w, &o.src, &o.dst, o.soak, o.hops, start);
        fflush(stdout);
        _exit(code);
    }
    if (o.incoming) {
        o.dst.uri = o.incoming;
        struct vm *vm = make_vm(&o, 0);
        printf("destination: libmigrationkit %s, VM %llu MiB (%s, %u slot(s)), %u vCPU(s), TSC %.3f GHz\n",
               mk_version(), (unsigned long long)(vm->mem_size >> 20), vm->backing, vm->nslots, vm->nr_vcpus,
               vm->tsc_hz / 1e9);
        int code = run_destination(vm, &o.dst);
        fflush(stdout);
        _exit(code); /* vCPU threads may be parked; no need to unwind them */
    }

    struct vm *vm = make_vm(&o, 1);
    describe(vm, &o);
    uint64_t start = now_ns();
    vcpus_start(vm, 0);
    wait_started(vm);

    if (o.src.uri) {
        double until = now_s() + o.src.migrate_after;
        while (now_s() < until && !g_interrupted && !atomic_load(&vm->fatal))
            sleep_ns(20 * 1000000ull);
        if (atomic_load(&vm->fatal))
            die("guest failed before migration: %s", vm->fatal_msg);
        char sum[512];
        guest_summary(vm, sum, sizeof(sum));
        printf("guest before migration: %s\n", sum);
        int code = run_source_migration(vm, &o.w, &o.src, start);
        fflush(stdout);
        _exit(code);
    }

    /* Just run the guest. */
    double until = o.run_seconds >= 0 ? now_s() + o.run_seconds : 1e300;
    double next = now_s() + 1;
    while (now_s() < until && !g_interrupted && !atomic_load(&vm->fatal)) {
        sleep_ns(20 * 1000000ull);
        if (now_s() >= next) {
            char sum[512];
            guest_summary(vm, sum, sizeof(sum));
            printf("guest: %s\n", sum);
            next += 1;
        }
    }
    char health[1024];
    int ok = guest_health(vm, 0.5, NULL, NULL, health, sizeof(health)) == 0;
    printf("guest %s: %s\n", ok ? "HEALTHY" : "BROKEN", health);
    fflush(stdout);
    _exit(ok ? EXIT_OK : EXIT_ERROR);
}
