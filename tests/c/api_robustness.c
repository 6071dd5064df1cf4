/*
 * api_robustness.c - every entry point of migrationkit.h against bad input.
 *
 * The expectations come from the header, not from the implementation: for
 * each misuse the exact negative MK_E* code, a non-empty message (the
 * handle's, which must also be the calling thread's mk_last_error(), or
 * mk_last_error() alone when there is no handle) and no crash. Valid
 * boundary values must be accepted, and a rejected call must change nothing.
 *
 * The checks are split into groups; each group runs in a child process so
 * that a crash (a Swift trap, SIGSEGV, SIGPIPE) or a hang (SIGALRM after
 * GROUP_TIMEOUT_S) is reported as a failure of that group while the other
 * groups still run. The parent never calls the library itself.
 *
 * Output: one line per check ("ok  " or "FAIL", group.number, what), then a
 * summary. Exit status 0 only if every check passed and no group crashed.
 *
 * Usage: api_robustness [--no-fork] [group...]
 *
 * Build: see tests/c/Makefile (pkg-config only).
 */
#define _GNU_SOURCE
#include <migrationkit.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define GROUP_TIMEOUT_S 60
#define NOALT 1 /* "no alternative code": 1 is never an MK_E* value */

enum { H_NONE, H_SRC, H_DST };

/* ------------------------------------------------------------------------ */
/* Reporting                                                                */
/* ------------------------------------------------------------------------ */

static const char *g_group = "main";
static unsigned g_seq;
static int g_report_fd = -1; /* pipe to the parent: one byte per check */
static unsigned g_pass, g_fail;

static void report(int ok, const char *desc, const char *detail)
{
    g_seq++;
    if (ok)
        g_pass++;
    else
        g_fail++;
    printf("%s %s.%u %s%s%s\n", ok ? "ok  " : "FAIL", g_group, g_seq, desc,
           detail[0] ? "  -- " : "", detail);
    fflush(stdout);
    if (g_report_fd >= 0) {
        char c = ok ? 'P' : 'F';
        if (write(g_report_fd, &c, 1) != 1) {
            /* The parent went away; the exit status still tells. */
        }
    }
}

static void check(int ok, const char *fmt, ...)
{
    char desc[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(desc, sizeof desc, fmt, ap);
    va_end(ap);
    report(ok, desc, "");
}

static void copy_str(char *dst, size_t cap, const char *s)
{
    snprintf(dst, cap, "%s", s ? s : "(null)");
}

static size_t shorter(const char *a, const char *b)
{
    size_t x = strlen(a), y = strlen(b);
    return x < y ? x : y;
}

static const char *code_name(int c)
{
    static const char *const names[] = {
        "MK_OK", "MK_EINVAL", "MK_ENOMEM", "MK_ESTATE", "MK_EVERSION",
        "MK_ETRANSPORT", "MK_ECALLBACK", "MK_ECANCELED", "MK_ETIMEDOUT",
        "MK_EPROTO", "MK_ECHECKSUM", "MK_ETRUNCATED", "MK_ERANGE",
        "MK_ENOTSUP", "MK_EDEST", "MK_ENOSPC", "MK_EAUTH",
    };
    if (c <= 0 && c >= MK_EAUTH)
        return names[-c];
    return "not-an-MK_E-code";
}

/* The message behind the failure just seen: the handle's if there is one,
 * else the calling thread's. NULL-safe. */
static const char *failure_text(int kind, void *h)
{
    if (kind == H_SRC && h)
        return mk_source_errmsg(h);
    if (kind == H_DST && h)
        return mk_dest_errmsg(h);
    return mk_last_error();
}

/* The migration (or the run) on this handle failed or was cancelled: its
 * errmsg keeps that failure, later calls' messages are in mk_last_error(). */
static int handle_failed(int kind, void *h)
{
    if (kind == H_SRC && h) {
        mk_stats st;
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        return mk_source_get_stats(h, &st) == 0 && (st.status == MK_STATUS_FAILED || st.status == MK_STATUS_CANCELLED);
    }
    if (kind == H_DST && h) {
        mk_dest_stats st;
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        return mk_dest_get_stats(h, &st) == 0 && (st.status == MK_STATUS_FAILED || st.status == MK_STATUS_CANCELLED);
    }
    return 0;
}

/*
 * Check one return code. `want` (or `alt` unless NOALT) must match; for a
 * negative result the message must be non-empty, and for a handle the
 * handle's message must equal mk_last_error() (the header says the failure
 * text is kept in both) -- unless the handle's migration failed: then the
 * handle keeps that failure and the call's message is mk_last_error()'s.
 */
static int check_rc(int kind, void *h, int rc, int want, int alt, const char *label, const char *call)
{
    char msg[1100], last[600], detail[1400], desc[1800];
    copy_str(msg, sizeof msg, failure_text(kind, h));
    copy_str(last, sizeof last, mk_last_error());
    if (rc < 0 && handle_failed(kind, h)) {
        copy_str(msg, sizeof msg, last);
        kind = H_NONE;
    }
    int ok = rc == want || (alt != NOALT && rc == alt);
    detail[0] = '\0';
    if (!ok) {
        snprintf(detail, sizeof detail, "expected %s%s%s, got %s (%d)", code_name(want),
                 alt != NOALT ? " or " : "", alt != NOALT ? code_name(alt) : "", code_name(rc), rc);
    } else if (rc < 0) {
        if (msg[0] == '\0' || strcmp(msg, "(null)") == 0) {
            ok = 0;
            snprintf(detail, sizeof detail, "no message: %s is empty",
                     kind == H_NONE || !h ? "mk_last_error()" : "the handle's errmsg");
        } else if (kind != H_NONE && h && strncmp(msg, last, shorter(msg, last)) != 0) {
            /* Either copy may be truncated; the shorter must be a prefix. */
            ok = 0;
            snprintf(detail, sizeof detail, "handle message differs from mk_last_error() \"%s\"", last);
        }
    }
    snprintf(desc, sizeof desc, "%s%s%s -> %s%s%s%s", label, label[0] ? ": " : "", call, code_name(rc),
             rc < 0 ? " \"" : "", rc < 0 ? msg : "", rc < 0 ? "\"" : "");
    report(ok, desc, detail);
    return rc;
}

#define RC(kind, h, want, label, call) check_rc(kind, (void *)(h), (call), want, NOALT, label, #call)
#define RC2(kind, h, want, alt, label, call) check_rc(kind, (void *)(h), (call), want, alt, label, #call)

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Anonymous memory aligned to `align` (a power of two >= the page size). */
static unsigned char *map_aligned(size_t size, size_t align)
{
    size_t len = size + align;
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    uintptr_t a = ((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1);
    return (unsigned char *)a;
}

static mk_region region_at(uint64_t gpa, uint64_t size, void *host, uint64_t granularity)
{
    mk_region r;
    mk_region_init(&r);
    r.guest_phys_addr = gpa;
    r.size = size;
    r.host_addr = host;
    r.dirty_granularity = granularity;
    return r;
}

static int cb_dirty_none(void *user, uint32_t region, uint64_t *bitmap, uint64_t npages)
{
    (void)user;
    (void)region;
    (void)bitmap;
    (void)npages;
    return 0;
}

static int cb_write_sink(void *user, const mk_iovec *iov, int iovcnt)
{
    (void)user;
    (void)iov;
    (void)iovcnt;
    return 0;
}

static int cb_write_fail(void *user, const mk_iovec *iov, int iovcnt)
{
    (void)user;
    (void)iov;
    (void)iovcnt;
    return -5;
}

static int cb_vcpus_ok(void *user)
{
    (void)user;
    return 0;
}

static int cb_kick_ok(void *user, uint32_t vcpu)
{
    (void)user;
    (void)vcpu;
    return 0;
}

/* With kick_vcpu: auto-converge needs it (MK_EINVAL without). */
static mk_source_callbacks good_src_callbacks(void)
{
    mk_source_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.struct_size = sizeof cb;
    cb.get_dirty_log = cb_dirty_none;
    cb.write = cb_write_sink;
    cb.pause_vcpus = cb_vcpus_ok;
    cb.resume_vcpus = cb_vcpus_ok;
    cb.kick_vcpu = cb_kick_ok;
    return cb;
}

static mk_source_config good_src_config(void)
{
    mk_source_config c;
    memset(&c, 0, sizeof c);
    mk_source_config_init(&c);
    return c;
}

/* A source handle that must come up; exits the group if it does not. */
static mk_source *new_source(const mk_source_config *cfg, const mk_source_callbacks *cb, const mk_params *p)
{
    mk_source *s = NULL;
    int rc = mk_source_create(&s, cfg, cb, p);
    if (rc != 0 || !s) {
        check(0, "fixture: mk_source_create failed: %s (%s)", code_name(rc), mk_last_error());
        fflush(stdout);
        _exit(3);
    }
    return s;
}

static int cb_dest_read_eof(void *user, void *buf, size_t cap, size_t *out_len)
{
    (void)user;
    (void)buf;
    (void)cap;
    *out_len = 0;
    return 0;
}

static mk_dest_callbacks good_dst_callbacks(void)
{
    mk_dest_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.struct_size = sizeof cb;
    cb.read = cb_dest_read_eof;
    return cb;
}

static mk_dest_config good_dst_config(void)
{
    mk_dest_config c;
    memset(&c, 0, sizeof c);
    mk_dest_config_init(&c);
    return c;
}

static mk_dest *new_dest(const mk_dest_config *cfg, const mk_dest_callbacks *cb)
{
    mk_dest *d = NULL;
    int rc = mk_dest_create(&d, cfg, cb);
    if (rc != 0 || !d) {
        check(0, "fixture: mk_dest_create failed: %s (%s)", code_name(rc), mk_last_error());
        fflush(stdout);
        _exit(3);
    }
    return d;
}

static int params_equal(const mk_params *a, const mk_params *b)
{
    return a->auto_converge == b->auto_converge && a->downtime_limit_ms == b->downtime_limit_ms &&
           a->max_bandwidth == b->max_bandwidth &&
           a->avail_switchover_bandwidth == b->avail_switchover_bandwidth &&
           a->throttle_trigger_threshold == b->throttle_trigger_threshold &&
           a->cpu_throttle_initial == b->cpu_throttle_initial &&
           a->cpu_throttle_increment == b->cpu_throttle_increment &&
           a->cpu_throttle_tailslow == b->cpu_throttle_tailslow &&
           a->max_cpu_throttle == b->max_cpu_throttle && a->timeout_strategy == b->timeout_strategy &&
           a->completion_timeout_ms == b->completion_timeout_ms && a->throttle_mode == b->throttle_mode;
}

static void params_text(char *out, size_t cap, const mk_params *p)
{
    snprintf(out, cap,
             "ac=%u dl=%" PRIu64 " bw=%" PRIu64 " avail=%" PRIu64 " trig=%u init=%u inc=%u tail=%u max=%u "
             "strat=%u ct=%" PRIu64 " mode=%u",
             p->auto_converge, p->downtime_limit_ms, p->max_bandwidth, p->avail_switchover_bandwidth,
             p->throttle_trigger_threshold, p->cpu_throttle_initial, p->cpu_throttle_increment,
             p->cpu_throttle_tailslow, p->max_cpu_throttle, p->timeout_strategy, p->completion_timeout_ms,
             p->throttle_mode);
}

/* The handle's parameters must equal *want (after a rejected change). */
static void check_params_are(mk_source *s, const mk_params *want, const char *what)
{
    mk_params now;
    memset(&now, 0, sizeof now);
    now.struct_size = sizeof now;
    int rc = mk_source_get_params(s, &now);
    char a[300], b[300];
    params_text(a, sizeof a, &now);
    params_text(b, sizeof b, want);
    if (rc == 0 && params_equal(&now, want))
        check(1, "%s: parameters unchanged", what);
    else
        check(0, "%s: parameters unchanged (rc %s; now {%s}, expected {%s})", what, code_name(rc), a, b);
}

/* ------------------------------------------------------------------------ */
/* Group: basics (version, layout, strerror, status names, init functions)  */
/* ------------------------------------------------------------------------ */

static void group_basics(void)
{
    const char *le = mk_last_error();
    check(le != NULL && le[0] == '\0', "mk_last_error() is \"\" before any failure on this thread (got \"%s\")",
          le ? le : "(null)");

    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", MK_VERSION_MAJOR, MK_VERSION_MINOR, MK_VERSION_PATCH);
    const char *v = mk_version();
    check(v != NULL && strcmp(v, want) == 0, "mk_version() == \"%s\" (got \"%s\")", want, v ? v : "(null)");
    check(mk_version_number() == (uint32_t)MK_VERSION_NUMBER,
          "mk_version_number() == MK_VERSION_NUMBER (header %u, library %u)", (unsigned)MK_VERSION_NUMBER,
          (unsigned)mk_version_number());

    check(sizeof(mk_iovec) == sizeof(struct iovec), "sizeof(mk_iovec) %zu == sizeof(struct iovec) %zu",
          sizeof(mk_iovec), sizeof(struct iovec));
    check(offsetof(mk_iovec, base) == offsetof(struct iovec, iov_base),
          "offsetof(mk_iovec, base) %zu == offsetof(struct iovec, iov_base) %zu", offsetof(mk_iovec, base),
          offsetof(struct iovec, iov_base));
    check(offsetof(mk_iovec, len) == offsetof(struct iovec, iov_len),
          "offsetof(mk_iovec, len) %zu == offsetof(struct iovec, iov_len) %zu", offsetof(mk_iovec, len),
          offsetof(struct iovec, iov_len));
    {
        mk_iovec m;
        struct iovec k;
        check(sizeof m.base == sizeof k.iov_base && sizeof m.len == sizeof k.iov_len,
              "mk_iovec members have struct iovec's member sizes");
    }

    /* mk_strerror: every enum mk_error value has its own non-empty text. */
    const char *texts[17];
    for (int c = 0; c >= MK_EAUTH; c--) {
        const char *t = mk_strerror(c);
        texts[-c] = t;
        check(t != NULL && t[0] != '\0', "mk_strerror(%s) is non-empty: \"%s\"", code_name(c), t ? t : "(null)");
    }
    for (int i = 0; i < 17; i++) {
        for (int j = i + 1; j < 17; j++) {
            if (texts[i] && texts[j] && strcmp(texts[i], texts[j]) == 0)
                check(0, "mk_strerror(%s) and mk_strerror(%s) differ (both \"%s\")", code_name(-i), code_name(-j),
                      texts[i]);
        }
    }
    {
        int distinct = 1;
        for (int i = 0; i < 17; i++)
            for (int j = i + 1; j < 17; j++)
                if (!texts[i] || !texts[j] || strcmp(texts[i], texts[j]) == 0)
                    distinct = 0;
        check(distinct, "mk_strerror gives 17 distinct texts for MK_OK..MK_EAUTH");
    }
    static const int garbage_codes[] = { 1, 2, 100, MK_EAUTH - 1, -100, -1000000, INT_MIN, INT_MAX };
    for (size_t g = 0; g < sizeof garbage_codes / sizeof garbage_codes[0]; g++) {
        int c = garbage_codes[g];
        const char *t = mk_strerror(c);
        int clash = 0;
        for (int i = 0; t && i < 17; i++)
            if (texts[i] && strcmp(t, texts[i]) == 0)
                clash = 1;
        check(t != NULL && t[0] != '\0' && !clash,
              "mk_strerror(%d) is non-NULL, non-empty and not a real code's text: \"%s\"", c, t ? t : "(null)");
    }

    /* mk_status_name: QEMU's names, "unknown" otherwise. */
    static const char *const status_names[] = { "none",      "setup",  "active",     "device",
                                                "completed", "failed", "cancelling", "cancelled" };
    static const int statuses[] = { MK_STATUS_NONE,      MK_STATUS_SETUP,     MK_STATUS_ACTIVE,
                                    MK_STATUS_DEVICE,    MK_STATUS_COMPLETED, MK_STATUS_FAILED,
                                    MK_STATUS_CANCELLING, MK_STATUS_CANCELLED };
    for (int i = 0; i < 8; i++) {
        const char *n = mk_status_name(statuses[i]);
        check(n != NULL && strcmp(n, status_names[i]) == 0, "mk_status_name(%d) == \"%s\" (got \"%s\")",
              statuses[i], status_names[i], n ? n : "(null)");
    }
    static const int garbage_status[] = { -1, 8, 9, 100, INT_MIN, INT_MAX };
    for (size_t g = 0; g < sizeof garbage_status / sizeof garbage_status[0]; g++) {
        const char *n = mk_status_name(garbage_status[g]);
        check(n != NULL && strcmp(n, "unknown") == 0, "mk_status_name(%d) == \"unknown\" (got \"%s\")",
              garbage_status[g], n ? n : "(null)");
    }

    /* mk_params_init: QEMU's defaults. */
    mk_params p;
    memset(&p, 0xA5, sizeof p);
    RC(H_NONE, NULL, MK_OK, "", mk_params_init(&p));
    check(p.struct_size == sizeof p, "mk_params_init: struct_size == sizeof(mk_params) %zu (got %u)", sizeof p,
          p.struct_size);
    check(p.downtime_limit_ms == 300, "mk_params_init: downtime_limit_ms == 300 (got %" PRIu64 ")",
          p.downtime_limit_ms);
    check(p.throttle_trigger_threshold == 50, "mk_params_init: throttle_trigger_threshold == 50 (got %u)",
          p.throttle_trigger_threshold);
    check(p.cpu_throttle_initial == 20, "mk_params_init: cpu_throttle_initial == 20 (got %u)",
          p.cpu_throttle_initial);
    check(p.cpu_throttle_increment == 10, "mk_params_init: cpu_throttle_increment == 10 (got %u)",
          p.cpu_throttle_increment);
    check(p.max_cpu_throttle == 99, "mk_params_init: max_cpu_throttle == 99 (got %u)", p.max_cpu_throttle);
    check(p.max_bandwidth == 0, "mk_params_init: max_bandwidth == 0 (got %" PRIu64 ")", p.max_bandwidth);
    check(p.avail_switchover_bandwidth == 0, "mk_params_init: avail_switchover_bandwidth == 0 (got %" PRIu64 ")",
          p.avail_switchover_bandwidth);
    check(p.auto_converge == 0, "mk_params_init: auto_converge == 0 (got %u)", p.auto_converge);
    check(p.throttle_mode == MK_THROTTLE_CLOSED_LOOP, "mk_params_init: throttle_mode == MK_THROTTLE_CLOSED_LOOP (got %u)",
          p.throttle_mode);
    check(p.cpu_throttle_tailslow == 0, "mk_params_init: cpu_throttle_tailslow == 0 (got %u)",
          p.cpu_throttle_tailslow);
    check(p.timeout_strategy == MK_TIMEOUT_CANCEL, "mk_params_init: timeout_strategy == MK_TIMEOUT_CANCEL (got %u)",
          p.timeout_strategy);
    check(p.completion_timeout_ms == 0, "mk_params_init: completion_timeout_ms == 0 (got %" PRIu64 ")",
          p.completion_timeout_ms);
    RC(H_NONE, NULL, MK_EINVAL, "", mk_params_init_sized(NULL, sizeof(mk_params)));

    /* mk_region_init: struct_size, everything else 0. */
    mk_region r, zero;
    memset(&r, 0xA5, sizeof r);
    memset(&zero, 0, sizeof zero);
    zero.struct_size = sizeof zero;
    RC(H_NONE, NULL, MK_OK, "", mk_region_init(&r));
    check(memcmp(&r, &zero, sizeof r) == 0, "mk_region_init: struct_size == %zu, all else 0 (struct_size %u)",
          sizeof r, r.struct_size);
    RC(H_NONE, NULL, MK_EINVAL, "", mk_region_init_sized(NULL, sizeof(mk_region)));

    /* mk_source_config_init: nr_vcpus 1, transport_fd -1, hint 0, timeout 0. */
    mk_source_config sc;
    memset(&sc, 0xA5, sizeof sc);
    RC(H_NONE, NULL, MK_OK, "", mk_source_config_init(&sc));
    check(sc.struct_size == sizeof sc && sc.nr_vcpus == 1 && sc.transport_fd == -1 && sc.flags == 0 &&
              sc.device_state_hint == 0 && sc.ack_timeout_ms == 0,
          "mk_source_config_init: size %u, nr_vcpus %u, transport_fd %d, flags %u, hint %" PRIu64
          ", ack_timeout %" PRIu64 " (want %zu, 1, -1, 0, 0, 0)",
          sc.struct_size, sc.nr_vcpus, (int)sc.transport_fd, sc.flags, sc.device_state_hint, sc.ack_timeout_ms,
          sizeof sc);
    RC(H_NONE, NULL, MK_EINVAL, "", mk_source_config_init_sized(NULL, sizeof(mk_source_config)));

    /* mk_dest_config_init: only struct_size and "no flags" are implied. */
    mk_dest_config dc;
    memset(&dc, 0xA5, sizeof dc);
    RC(H_NONE, NULL, MK_OK, "", mk_dest_config_init(&dc));
    check(dc.struct_size == sizeof dc && dc.flags == 0 && dc.reserved == 0,
          "mk_dest_config_init: struct_size %u (want %zu), flags %u, reserved %u (want 0, 0); transport_fd %d",
          dc.struct_size, sizeof dc, dc.flags, dc.reserved, (int)dc.transport_fd);
    RC(H_NONE, NULL, MK_EINVAL, "", mk_dest_config_init_sized(NULL, sizeof(mk_dest_config)));

    /* NULL handles where the header promises a no-op. */
    mk_source_destroy(NULL);
    check(1, "mk_source_destroy(NULL) is a no-op");
    mk_dest_destroy(NULL);
    check(1, "mk_dest_destroy(NULL) is a no-op");
    const char *em = mk_source_errmsg(NULL);
    check(em != NULL, "mk_source_errmsg(NULL) returns a string, not NULL (\"%s\")", em ? em : "(null)");
    em = mk_dest_errmsg(NULL);
    check(em != NULL, "mk_dest_errmsg(NULL) returns a string, not NULL (\"%s\")", em ? em : "(null)");

    /* mk_buffer_append without a buffer. */
    RC(H_NONE, NULL, MK_EINVAL, "", mk_buffer_append(NULL, "x", 1));
}

/* ------------------------------------------------------------------------ */
/* Group: mk_source_create                                                  */
/* ------------------------------------------------------------------------ */

static char g_sentinel_obj;

static void create_src_expect(int want, const char *label, const mk_source_config *cfg,
                              const mk_source_callbacks *cb, const mk_params *params)
{
    mk_source *sentinel = (mk_source *)(void *)&g_sentinel_obj;
    mk_source *s = sentinel;
    int rc = check_rc(H_NONE, NULL, mk_source_create(&s, cfg, cb, params), want, NOALT, label,
                      "mk_source_create(&s, cfg, cb, params)");
    if (rc != 0)
        check(s == NULL, "%s: *out is NULL after the failed mk_source_create", label);
    else if (s != sentinel)
        mk_source_destroy(s);
}

static void group_source_create(void)
{
    mk_source_config cfg = good_src_config();
    mk_source_callbacks cb = good_src_callbacks();

    create_src_expect(MK_OK, "valid config, callbacks, params NULL", &cfg, &cb, NULL);
    RC(H_NONE, NULL, MK_EINVAL, "out = NULL", mk_source_create(NULL, &cfg, &cb, NULL));
    create_src_expect(MK_EINVAL, "config = NULL", NULL, &cb, NULL);
    create_src_expect(MK_EINVAL, "callbacks = NULL", &cfg, NULL, NULL);

    /* config->struct_size */
    static const uint32_t bad_sizes[] = { 0, 2, 0x00100000u, UINT32_MAX };
    for (size_t i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++) {
        char label[96];
        mk_source_config c = cfg;
        c.struct_size = bad_sizes[i];
        snprintf(label, sizeof label, "config->struct_size = %u", bad_sizes[i]);
        create_src_expect(MK_EVERSION, label, &c, &cb, NULL);
    }
    {
        struct {
            mk_source_config c;
            unsigned char tail[24];
        } big;
        memset(&big, 0, sizeof big);
        big.c = cfg;
        big.c.struct_size = sizeof big;
        create_src_expect(MK_OK, "larger config, zero tail", &big.c, &cb, NULL);
        big.tail[23] = 1;
        create_src_expect(MK_EVERSION, "larger config, non-zero tail", &big.c, &cb, NULL);
    }
    {
        mk_source_config c = cfg;
        c.struct_size = offsetof(mk_source_config, flags);
        c.flags = 0xFFFFFFFFu; /* beyond struct_size: must be ignored */
        c.device_state_hint = UINT64_MAX;
        create_src_expect(MK_OK, "older config (up to transport_fd), garbage beyond", &c, &cb, NULL);
        c.struct_size = sizeof(uint32_t);
        c.nr_vcpus = 0;
        c.transport_fd = -77;
        mk_source *s = NULL;
        int rc = RC(H_NONE, NULL, MK_OK, "older config (struct_size only), garbage beyond",
                    mk_source_create(&s, &c, &cb, NULL));
        if (rc == 0 && s) {
            /* nr_vcpus took its default, 1: vCPU 0 exists, vCPU 1 does not. */
            RC(H_SRC, s, MK_OK, "nr_vcpus defaulted to 1", mk_source_throttle_point(s, 0));
            RC(H_SRC, s, MK_EINVAL, "nr_vcpus defaulted to 1", mk_source_throttle_point(s, 1));
            mk_source_destroy(s);
        }
    }

    /* config values */
    static const uint32_t bad_vcpus[] = { 0, 1025, 2000, UINT32_MAX };
    for (size_t i = 0; i < sizeof bad_vcpus / sizeof bad_vcpus[0]; i++) {
        char label[96];
        mk_source_config c = cfg;
        c.nr_vcpus = bad_vcpus[i];
        snprintf(label, sizeof label, "nr_vcpus = %u", bad_vcpus[i]);
        create_src_expect(MK_EINVAL, label, &c, &cb, NULL);
    }
    {
        mk_source_config c = cfg;
        c.nr_vcpus = 1024;
        create_src_expect(MK_OK, "nr_vcpus = 1024 (top of range)", &c, &cb, NULL);
        c = cfg;
        c.transport_fd = -2;
        create_src_expect(MK_EINVAL, "transport_fd = -2", &c, &cb, NULL);
        c.transport_fd = INT32_MIN;
        create_src_expect(MK_EINVAL, "transport_fd = INT32_MIN", &c, &cb, NULL);
        c = cfg;
        c.flags = 1u << 1;
        create_src_expect(MK_EINVAL, "config->flags = 0x2 (unknown)", &c, &cb, NULL);
        c.flags = 0x80000000u;
        create_src_expect(MK_EINVAL, "config->flags = 0x80000000 (unknown)", &c, &cb, NULL);
        c.flags = 0xFFFFFFFFu;
        create_src_expect(MK_EINVAL, "config->flags = 0xffffffff", &c, &cb, NULL);
        c.flags = MK_SOURCE_NO_ACK;
        create_src_expect(MK_OK, "config->flags = MK_SOURCE_NO_ACK", &c, &cb, NULL);
    }

    /* callbacks */
    for (size_t i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++) {
        char label[96];
        mk_source_callbacks c = cb;
        c.struct_size = bad_sizes[i];
        snprintf(label, sizeof label, "callbacks->struct_size = %u", bad_sizes[i]);
        create_src_expect(MK_EVERSION, label, &cfg, &c, NULL);
    }
    {
        struct {
            mk_source_callbacks c;
            unsigned char tail[32];
        } big;
        memset(&big, 0, sizeof big);
        big.c = cb;
        big.c.struct_size = sizeof big;
        create_src_expect(MK_OK, "larger callbacks, zero tail", &cfg, &big.c, NULL);
        big.tail[0] = 0x80;
        create_src_expect(MK_EVERSION, "larger callbacks, non-zero tail", &cfg, &big.c, NULL);
    }
    {
        mk_source_callbacks c = cb;
        c.struct_size = offsetof(mk_source_callbacks, kick_vcpu);
        memset((unsigned char *)&c + offsetof(mk_source_callbacks, kick_vcpu), 0xAB,
               sizeof c - offsetof(mk_source_callbacks, kick_vcpu));
        create_src_expect(MK_OK, "older callbacks (up to resume_vcpus), garbage beyond", &cfg, &c, NULL);
    }
    {
        mk_source_callbacks c = cb;
        c.reserved = 1;
        create_src_expect(MK_EINVAL, "callbacks->reserved = 1", &cfg, &c, NULL);
        c = cb;
        c.get_dirty_log = NULL;
        create_src_expect(MK_EINVAL, "get_dirty_log = NULL (required)", &cfg, &c, NULL);
        c = cb;
        c.pause_vcpus = NULL;
        create_src_expect(MK_EINVAL, "pause_vcpus = NULL (required)", &cfg, &c, NULL);
        c = cb;
        c.resume_vcpus = NULL;
        create_src_expect(MK_EINVAL, "resume_vcpus = NULL (required)", &cfg, &c, NULL);
        c = cb;
        c.write = NULL;
        create_src_expect(MK_EINVAL, "write = NULL and transport_fd = -1 (no transport)", &cfg, &c, NULL);
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0) {
            mk_source_config fc = cfg;
            fc.transport_fd = sv[0];
            create_src_expect(MK_OK, "write = NULL with a transport_fd", &fc, &c, NULL);
            close(sv[0]);
            close(sv[1]);
        }
    }

    /* params at create time */
    {
        mk_params p;
        mk_params_init(&p);
        create_src_expect(MK_OK, "params from mk_params_init", &cfg, &cb, &p);
        p.downtime_limit_ms = 2000001;
        create_src_expect(MK_EINVAL, "params->downtime_limit_ms = 2000001", &cfg, &cb, &p);
        mk_params_init(&p);
        p.max_cpu_throttle = 100;
        create_src_expect(MK_EINVAL, "params->max_cpu_throttle = 100", &cfg, &cb, &p);
        mk_params_init(&p);
        p.struct_size = 0;
        create_src_expect(MK_EVERSION, "params->struct_size = 0", &cfg, &cb, &p);
        p.struct_size = UINT32_MAX;
        create_src_expect(MK_EVERSION, "params->struct_size = UINT32_MAX", &cfg, &cb, &p);

        struct {
            mk_params p;
            unsigned char tail[16];
        } big;
        memset(&big, 0, sizeof big);
        mk_params_init(&big.p);
        big.p.struct_size = sizeof big;
        create_src_expect(MK_OK, "larger params, zero tail", &cfg, &cb, &big.p);
        big.tail[15] = 9;
        create_src_expect(MK_EVERSION, "larger params, non-zero tail", &cfg, &cb, &big.p);

        /* Older, smaller params: missing fields take their defaults. */
        mk_params old;
        memset(&old, 0xFF, sizeof old); /* garbage beyond struct_size */
        old.struct_size = offsetof(mk_params, max_bandwidth);
        old.auto_converge = 1;
        old.downtime_limit_ms = 1234;
        mk_source *s = NULL;
        int rc = RC(H_NONE, NULL, MK_OK, "older params (up to downtime_limit_ms), garbage beyond",
                    mk_source_create(&s, &cfg, &cb, &old));
        if (rc == 0 && s) {
            mk_params got, want;
            memset(&got, 0, sizeof got);
            got.struct_size = sizeof got;
            mk_params_init(&want);
            want.auto_converge = 1;
            want.downtime_limit_ms = 1234;
            RC(H_SRC, s, MK_OK, "", mk_source_get_params(s, &got));
            char a[300], b[300];
            params_text(a, sizeof a, &got);
            params_text(b, sizeof b, &want);
            check(params_equal(&got, &want),
                  "older params at create: given fields kept, the rest default {%s} (want {%s})", a, b);
            mk_source_destroy(s);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Group: parameters (set_params / get_params / set_param)                  */
/* ------------------------------------------------------------------------ */

struct bad_param {
    const char *what;
    void (*apply)(mk_params *p);
};

#define BAD(name, stmt)                                                                                               \
    static void bad_##name(mk_params *p) { stmt; }
BAD(ac2, p->auto_converge = 2)
BAD(acmax, p->auto_converge = UINT32_MAX)
BAD(dl, p->downtime_limit_ms = 2000001)
BAD(dlmax, p->downtime_limit_ms = UINT64_MAX)
BAD(bw1, p->max_bandwidth = 1)
BAD(bw4095, p->max_bandwidth = MK_PAGE_SIZE - 1)
BAD(trig0, p->throttle_trigger_threshold = 0)
BAD(trig101, p->throttle_trigger_threshold = 101)
BAD(init0, p->cpu_throttle_initial = 0)
BAD(init100, p->cpu_throttle_initial = 100)
BAD(inc0, p->cpu_throttle_increment = 0)
BAD(inc100, p->cpu_throttle_increment = 100)
BAD(tail2, p->cpu_throttle_tailslow = 2)
BAD(max100, p->max_cpu_throttle = 100)
BAD(maxlow, p->max_cpu_throttle = p->cpu_throttle_initial - 1)
BAD(max0, p->max_cpu_throttle = 0)
BAD(strat2, p->timeout_strategy = 2)
BAD(stratmax, p->timeout_strategy = UINT32_MAX)
BAD(mode2, p->throttle_mode = 2)
BAD(modemax, p->throttle_mode = UINT32_MAX)
BAD(reserved0, p->reserved0 = 1)
#undef BAD

static const struct bad_param bad_params[] = {
    { "auto_converge = 2 (bool)", bad_ac2 },
    { "auto_converge = UINT32_MAX", bad_acmax },
    { "downtime_limit_ms = 2000001 (range 0..2000000)", bad_dl },
    { "downtime_limit_ms = UINT64_MAX", bad_dlmax },
    { "max_bandwidth = 1 (0 or >= MK_PAGE_SIZE)", bad_bw1 },
    { "max_bandwidth = 4095", bad_bw4095 },
    { "throttle_trigger_threshold = 0 (range 1..100)", bad_trig0 },
    { "throttle_trigger_threshold = 101", bad_trig101 },
    { "cpu_throttle_initial = 0 (range 1..99)", bad_init0 },
    { "cpu_throttle_initial = 100", bad_init100 },
    { "cpu_throttle_increment = 0 (range 1..99)", bad_inc0 },
    { "cpu_throttle_increment = 100", bad_inc100 },
    { "cpu_throttle_tailslow = 2 (bool)", bad_tail2 },
    { "max_cpu_throttle = 100 (range initial..99)", bad_max100 },
    { "max_cpu_throttle = cpu_throttle_initial - 1", bad_maxlow },
    { "max_cpu_throttle = 0", bad_max0 },
    { "timeout_strategy = 2 (enum)", bad_strat2 },
    { "timeout_strategy = UINT32_MAX", bad_stratmax },
    { "throttle_mode = 2 (enum)", bad_mode2 },
    { "throttle_mode = UINT32_MAX", bad_modemax },
    { "reserved0 = 1 (must be 0)", bad_reserved0 },
};

/* A valid, non-default parameter set. */
static mk_params custom_params(void)
{
    mk_params p;
    mk_params_init(&p);
    p.auto_converge = 1;
    p.downtime_limit_ms = 500;
    p.max_bandwidth = 1u << 20;
    p.avail_switchover_bandwidth = 0;
    p.throttle_trigger_threshold = 60;
    p.cpu_throttle_initial = 30;
    p.cpu_throttle_increment = 5;
    p.cpu_throttle_tailslow = 1;
    p.max_cpu_throttle = 95;
    p.timeout_strategy = MK_TIMEOUT_SWITCHOVER;
    p.completion_timeout_ms = 10000;
    return p;
}

struct set_param_case {
    const char *name;
    const char *value;
};

static void group_params(void)
{
    mk_source_config cfg = good_src_config();
    mk_source_callbacks cb = good_src_callbacks();
    mk_source *s = new_source(&cfg, &cb, NULL);

    const char *em = mk_source_errmsg(s);
    check(em != NULL && em[0] == '\0', "mk_source_errmsg on a fresh handle is \"\" (got \"%s\")", em ? em : "(null)");

    mk_params defaults, got;
    mk_params_init(&defaults);
    memset(&got, 0, sizeof got);
    got.struct_size = sizeof got;
    RC(H_SRC, s, MK_OK, "", mk_source_get_params(s, &got));
    {
        char a[300];
        params_text(a, sizeof a, &got);
        check(params_equal(&got, &defaults) && got.struct_size == sizeof got,
              "get_params of a handle created with params = NULL equals mk_params_init {%s}", a);
    }

    mk_params P = custom_params();
    RC(H_SRC, s, MK_OK, "custom valid parameters", mk_source_set_params(s, &P));
    check_params_are(s, &P, "after set_params(custom)");

    /* Every field beyond its documented range: MK_EINVAL, nothing changes. */
    for (size_t i = 0; i < sizeof bad_params / sizeof bad_params[0]; i++) {
        mk_params b = P;
        bad_params[i].apply(&b);
        RC(H_SRC, s, MK_EINVAL, bad_params[i].what, mk_source_set_params(s, &b));
        check_params_are(s, &P, bad_params[i].what);
    }

    /* Documented boundaries are accepted. */
    {
        struct {
            const char *what;
            mk_params p;
        } edges[8];
        int n = 0;
        edges[n].what = "downtime_limit_ms = 0";
        edges[n].p = P;
        edges[n++].p.downtime_limit_ms = 0;
        edges[n].what = "downtime_limit_ms = 2000000";
        edges[n].p = P;
        edges[n++].p.downtime_limit_ms = 2000000;
        edges[n].what = "max_bandwidth = MK_PAGE_SIZE";
        edges[n].p = P;
        edges[n++].p.max_bandwidth = MK_PAGE_SIZE;
        edges[n].what = "throttle_trigger_threshold = 1";
        edges[n].p = P;
        edges[n++].p.throttle_trigger_threshold = 1;
        edges[n].what = "throttle_trigger_threshold = 100";
        edges[n].p = P;
        edges[n++].p.throttle_trigger_threshold = 100;
        edges[n].what = "cpu_throttle_initial = max_cpu_throttle = 99, increment 99";
        edges[n].p = P;
        edges[n].p.cpu_throttle_initial = 99;
        edges[n].p.cpu_throttle_increment = 99;
        edges[n++].p.max_cpu_throttle = 99;
        edges[n].what = "cpu_throttle_initial = max_cpu_throttle = 1, increment 1";
        edges[n].p = P;
        edges[n].p.cpu_throttle_initial = 1;
        edges[n].p.cpu_throttle_increment = 1;
        edges[n++].p.max_cpu_throttle = 1;
        edges[n].what = "completion_timeout_ms = UINT64_MAX (no documented limit)";
        edges[n].p = P;
        edges[n++].p.completion_timeout_ms = UINT64_MAX;
        for (int i = 0; i < n; i++) {
            RC(H_SRC, s, MK_OK, edges[i].what, mk_source_set_params(s, &edges[i].p));
            check_params_are(s, &edges[i].p, edges[i].what);
        }
        RC(H_SRC, s, MK_OK, "restore custom", mk_source_set_params(s, &P));
    }

    /* avail_switchover_bandwidth: 0 or at least one page per second. */
    {
        mk_params b = P;
        b.avail_switchover_bandwidth = 1;
        RC(H_SRC, s, MK_EINVAL, "avail_switchover_bandwidth = 1 (below one page per second)", mk_source_set_params(s, &b));
        RC(H_SRC, s, MK_OK, "restore custom", mk_source_set_params(s, &P));
    }

    /* struct_size of the parameters given. */
    RC(H_SRC, s, MK_EINVAL, "", mk_source_set_params(s, NULL));
    check_params_are(s, &P, "set_params(NULL)");
    RC(H_NONE, NULL, MK_EINVAL, "", mk_source_set_params(NULL, &P));
    static const uint32_t bad_sizes[] = { 0, 2, 0x00100000u, UINT32_MAX };
    for (size_t i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++) {
        char label[96];
        mk_params b = P;
        b.downtime_limit_ms = 777;
        b.struct_size = bad_sizes[i];
        snprintf(label, sizeof label, "params->struct_size = %u", bad_sizes[i]);
        RC(H_SRC, s, MK_EVERSION, label, mk_source_set_params(s, &b));
        check_params_are(s, &P, label);
    }
    {
        struct {
            mk_params p;
            unsigned char tail[40];
        } big;
        memset(&big, 0, sizeof big);
        big.p = P;
        big.p.downtime_limit_ms = 888;
        big.p.struct_size = sizeof big;
        big.tail[39] = 1;
        RC(H_SRC, s, MK_EVERSION, "larger params, non-zero tail", mk_source_set_params(s, &big.p));
        check_params_are(s, &P, "larger params, non-zero tail");
        big.tail[39] = 0;
        RC(H_SRC, s, MK_OK, "larger params, zero tail", mk_source_set_params(s, &big.p));
        mk_params want = P;
        want.downtime_limit_ms = 888;
        check_params_are(s, &want, "larger params, zero tail (new value taken, not a change)");
        RC(H_SRC, s, MK_OK, "restore custom", mk_source_set_params(s, &P));
    }
    {
        /* An older header's struct ending after cpu_throttle_increment; the
         * bytes beyond struct_size are garbage the library must not read. */
        mk_params old = P;
        old.struct_size = offsetof(mk_params, cpu_throttle_tailslow);
        old.downtime_limit_ms = 700;
        old.cpu_throttle_tailslow = 7;
        old.max_cpu_throttle = 0;
        old.timeout_strategy = 9;
        old.completion_timeout_ms = 5;
        RC(H_SRC, s, MK_OK, "older params (up to cpu_throttle_increment), garbage beyond",
           mk_source_set_params(s, &old));
        mk_params want = P;
        want.downtime_limit_ms = 700;
        want.cpu_throttle_tailslow = defaults.cpu_throttle_tailslow;
        want.max_cpu_throttle = defaults.max_cpu_throttle;
        want.timeout_strategy = defaults.timeout_strategy;
        want.completion_timeout_ms = defaults.completion_timeout_ms;
        mk_params now;
        memset(&now, 0, sizeof now);
        now.struct_size = sizeof now;
        mk_source_get_params(s, &now);
        char a[300], b[300];
        params_text(a, sizeof a, &now);
        params_text(b, sizeof b, &want);
        check(params_equal(&now, &want),
              "older params to set_params: given fields set, missing ones take their defaults "
              "(\"missing fields take their defaults\"): now {%s}, expected {%s}",
              a, b);
        RC(H_SRC, s, MK_OK, "restore custom", mk_source_set_params(s, &P));
    }

    /* get_params output struct. */
    RC(H_NONE, NULL, MK_EINVAL, "", mk_source_get_params(NULL, &got));
    RC(H_SRC, s, MK_EINVAL, "", mk_source_get_params(s, NULL));
    for (size_t i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++) {
        char label[96];
        memset(&got, 0, sizeof got);
        got.struct_size = bad_sizes[i];
        snprintf(label, sizeof label, "out->struct_size = %u", bad_sizes[i]);
        RC(H_SRC, s, MK_EVERSION, label, mk_source_get_params(s, &got));
    }
    {
        unsigned char raw[sizeof(mk_params) + 32];
        mk_params small;
        size_t n = offsetof(mk_params, max_bandwidth);
        memset(raw, 0xEE, sizeof raw);
        small.struct_size = (uint32_t)n;
        memcpy(raw, &small.struct_size, sizeof small.struct_size);
        RC(H_SRC, s, MK_OK, "older out struct (up to downtime_limit_ms)",
           mk_source_get_params(s, (mk_params *)(void *)raw));
        int untouched = 1;
        for (size_t i = n; i < sizeof raw; i++)
            if (raw[i] != 0xEE)
                untouched = 0;
        uint64_t dl;
        memcpy(&dl, raw + offsetof(mk_params, downtime_limit_ms), sizeof dl);
        check(untouched, "get_params with an older out struct writes nothing past its struct_size %zu", n);
        check(dl == P.downtime_limit_ms,
              "get_params with an older out struct fills the fields it has (downtime %" PRIu64 ")", dl);
        struct {
            mk_params p;
            unsigned char tail[16];
        } big;
        memset(&big, 0xEE, sizeof big);
        big.p.struct_size = sizeof big;
        RC(H_SRC, s, MK_OK, "larger out struct", mk_source_get_params(s, &big.p));
        check(params_equal(&big.p, &P), "get_params into a larger out struct fills the known fields");
    }

    /* mk_source_set_param: valid names and values. */
    {
        static const struct {
            const char *name, *value;
        } good[] = {
            { "downtime-limit", "450" },
            { "downtime-limit", "0" },
            { "downtime-limit", "2000000" },
            { "max-bandwidth", "0" },
            { "max-bandwidth", "4096" },
            { "max-bandwidth", "8K" },
            { "max-bandwidth", "2M" },
            { "max-bandwidth", "1G" },
            { "avail-switchover-bandwidth", "16M" },
            { "avail-switchover-bandwidth", "0" },
            { "auto-converge", "on" },
            { "auto-converge", "off" },
            { "auto-converge", "true" },
            { "auto-converge", "false" },
            { "auto-converge", "1" },
            { "auto-converge", "0" },
            { "throttle-trigger-threshold", "70" },
            { "cpu-throttle-initial", "25" },
            { "cpu-throttle-increment", "15" },
            { "cpu-throttle-tailslow", "on" },
            { "max-cpu-throttle", "90" },
            { "completion-timeout", "60000" },
            { "timeout-strategy", "switchover" },
            { "timeout-strategy", "cancel" },
            { "throttle-mode", "step" },
            { "throttle-mode", "closed-loop" },
        };
        for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
            char label[128];
            snprintf(label, sizeof label, "\"%s\" = \"%s\"", good[i].name, good[i].value);
            check_rc(H_SRC, s, mk_source_set_param(s, good[i].name, good[i].value), MK_OK, NOALT, label,
                     "mk_source_set_param(s, name, value)");
        }
        mk_params now;
        memset(&now, 0, sizeof now);
        now.struct_size = sizeof now;
        mk_source_get_params(s, &now);
        check(now.downtime_limit_ms == 2000000 && now.max_bandwidth == (1u << 30) && now.auto_converge == 0 &&
                  now.throttle_trigger_threshold == 70 && now.cpu_throttle_initial == 25 &&
                  now.cpu_throttle_increment == 15 && now.cpu_throttle_tailslow == 1 && now.max_cpu_throttle == 90 &&
                  now.completion_timeout_ms == 60000 && now.timeout_strategy == MK_TIMEOUT_CANCEL &&
                  now.avail_switchover_bandwidth == 0,
              "set_param values arrive in get_params (1G = 2^30, \"0\" = off, ...)");
        mk_source_set_param(s, "max-bandwidth", "8K");
        mk_source_get_params(s, &now);
        check(now.max_bandwidth == 8192, "\"max-bandwidth\" = \"8K\" is 8192 B/s (got %" PRIu64 ")", now.max_bandwidth);
        mk_source_set_param(s, "max-bandwidth", "2M");
        mk_source_get_params(s, &now);
        check(now.max_bandwidth == 2097152, "\"max-bandwidth\" = \"2M\" is 2097152 B/s (got %" PRIu64 ")",
              now.max_bandwidth);
    }

    /* mk_source_set_param: unknown names, bad numbers, bad suffixes, out of range. */
    {
        mk_params before;
        memset(&before, 0, sizeof before);
        before.struct_size = sizeof before;
        mk_source_get_params(s, &before);
        static const struct set_param_case bad[] = {
            /* unknown names */
            { "", "1" },
            { "bogus", "1" },
            { "downtime_limit", "300" },
            { "Downtime-Limit", "300" },
            { "downtime-limit ", "300" },
            { " downtime-limit", "300" },
            { "downtime-limit-ms", "300" },
            { "x-checkpoint-delay", "100" },
            { "max-postcopy-bandwidth", "1M" },
            /* bad numbers */
            { "downtime-limit", "" },
            { "downtime-limit", "abc" },
            { "downtime-limit", "-1" },
            { "downtime-limit", "1.5" },
            { "downtime-limit", "0x10" },
            { "downtime-limit", " 300" },
            { "downtime-limit", "300 " },
            { "downtime-limit", "300ms" },
            { "downtime-limit", "300K" },
            { "downtime-limit", "1e3" },
            { "downtime-limit", "18446744073709551616" },
            { "completion-timeout", "-5" },
            { "completion-timeout", "5s" },
            { "cpu-throttle-initial", "twenty" },
            { "cpu-throttle-initial", "4294967321" },
            /* out of range */
            { "downtime-limit", "2000001" },
            { "throttle-trigger-threshold", "0" },
            { "throttle-trigger-threshold", "101" },
            { "cpu-throttle-initial", "0" },
            { "cpu-throttle-initial", "100" },
            { "cpu-throttle-increment", "0" },
            { "cpu-throttle-increment", "100" },
            { "max-cpu-throttle", "100" },
            { "max-cpu-throttle", "24" }, /* below cpu-throttle-initial (25) */
            { "cpu-throttle-initial", "95" }, /* above max-cpu-throttle (90) */
            { "max-bandwidth", "1" },
            { "max-bandwidth", "4095" },
            { "max-bandwidth", "3K" },
            /* bad suffixes and sizes */
            { "max-bandwidth", "10T" },
            { "max-bandwidth", "10KB" },
            { "max-bandwidth", "10KiB" },
            { "max-bandwidth", "K" },
            { "max-bandwidth", "M" },
            { "max-bandwidth", "1.5G" },
            { "max-bandwidth", "-1M" },
            { "max-bandwidth", "10 M" },
            { "max-bandwidth", "" },
            { "max-bandwidth", "17179869184G" },
            { "max-bandwidth", "18446744073709551615K" },
            { "avail-switchover-bandwidth", "5X" },
            /* booleans and enums */
            { "auto-converge", "maybe" },
            { "auto-converge", "2" },
            { "throttle-mode", "Step" },
            { "throttle-mode", "closed_loop" },
            { "throttle-mode", "closedloop" },
            { "throttle-mode", "" },
            { "throttle-mode", "1" },
            { "auto-converge", "" },
            { "cpu-throttle-tailslow", "onn" },
            { "timeout-strategy", "abort" },
            { "timeout-strategy", "" },
            { "timeout-strategy", "2" },
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            char label[160];
            snprintf(label, sizeof label, "\"%s\" = \"%s\"", bad[i].name, bad[i].value);
            check_rc(H_SRC, s, mk_source_set_param(s, bad[i].name, bad[i].value), MK_EINVAL, NOALT, label,
                     "mk_source_set_param(s, name, value)");
            check_params_are(s, &before, label);
        }
        {
            /* Very long strings: rejected, no crash, a message either way. */
            size_t n = 100 * 1024;
            char *huge = malloc(n + 1);
            memset(huge, '7', n);
            huge[n] = '\0';
            RC(H_SRC, s, MK_EINVAL, "100 KiB of digits", mk_source_set_param(s, "downtime-limit", huge));
            memset(huge, 'x', n);
            RC(H_SRC, s, MK_EINVAL, "100 KiB name", mk_source_set_param(s, huge, "1"));
            free(huge);
            check_params_are(s, &before, "very long set_param strings");
        }
        RC(H_SRC, s, MK_EINVAL, "", mk_source_set_param(s, NULL, "1"));
        RC(H_SRC, s, MK_EINVAL, "", mk_source_set_param(s, "downtime-limit", NULL));
        RC(H_NONE, NULL, MK_EINVAL, "", mk_source_set_param(NULL, "downtime-limit", "300"));
        check_params_are(s, &before, "set_param with NULL arguments");
    }

    mk_source_destroy(s);
}

/* ------------------------------------------------------------------------ */
/* Group: regions (mk_source_add_region and mk_dest_add_region)            */
/* ------------------------------------------------------------------------ */

typedef int (*add_region_fn)(void *h, const mk_region *r, uint32_t *out_index);

static int add_src_region(void *h, const mk_region *r, uint32_t *out_index)
{
    return mk_source_add_region(h, r, out_index);
}

static int add_dst_region(void *h, const mk_region *r, uint32_t *out_index)
{
    return mk_dest_add_region(h, r, out_index);
}

static void region_checks(const char *side, int kind, void *h, add_region_fn add)
{
    const size_t M = 1u << 20;
    unsigned char *base = map_aligned(6 * M, 2 * M); /* 2 MiB aligned, 6 MiB usable */
    uint32_t idx = 0xFFFFFFFFu;
    char label[200];
    const mk_region good = region_at(0, M, base, 0);

#define REG_EXPECT(want, text, reg)                                                                                   \
    do {                                                                                                              \
        snprintf(label, sizeof label, "%s: %s", side, text);                                                          \
        check_rc(kind, h, add(h, reg, &idx), want, NOALT, label, "add_region(h, &r, &idx)");                         \
    } while (0)

    snprintf(label, sizeof label, "%s: handle = NULL", side);
    check_rc(H_NONE, NULL, add(NULL, &good, &idx), MK_EINVAL, NOALT, label, "add_region(NULL, &r, &idx)");
    REG_EXPECT(MK_EINVAL, "region = NULL", NULL);

    static const uint32_t bad_sizes[] = { 0, 2, 0x00100000u, UINT32_MAX };
    for (size_t i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++) {
        mk_region r = good;
        char text[64];
        r.struct_size = bad_sizes[i];
        snprintf(text, sizeof text, "struct_size = %u", bad_sizes[i]);
        REG_EXPECT(MK_EVERSION, text, &r);
    }
    {
        struct {
            mk_region r;
            unsigned char tail[16];
        } big;
        memset(&big, 0, sizeof big);
        big.r = good;
        big.r.struct_size = sizeof big;
        big.tail[7] = 1;
        REG_EXPECT(MK_EVERSION, "larger struct, non-zero tail", &big.r);
    }
    {
        mk_region r = good;
        r.flags = 1u << 1;
        REG_EXPECT(MK_EINVAL, "flags = 0x2 (unknown)", &r);
        if (kind == H_SRC) {
            r.flags = MK_REGION_FRESH;
            REG_EXPECT(MK_EINVAL, "flags = MK_REGION_FRESH (a destination flag)", &r);
        }
        r.flags = 0x80000000u;
        REG_EXPECT(MK_EINVAL, "flags = 0x80000000", &r);
        r = good;
        r.host_addr = NULL;
        REG_EXPECT(MK_EINVAL, "host_addr = NULL", &r);
        r.host_addr = base + 1;
        REG_EXPECT(MK_EINVAL, "host_addr unaligned (+1)", &r);
        r.host_addr = base + 2048;
        REG_EXPECT(MK_EINVAL, "host_addr unaligned (+2048)", &r);
        r = good;
        r.size = 0;
        REG_EXPECT(MK_EINVAL, "size = 0", &r);
        r.size = 1000;
        REG_EXPECT(MK_EINVAL, "size = 1000 (not a multiple of the page granularity)", &r);
        r.size = 3 * MK_PAGE_SIZE;
        r.dirty_granularity = 2 * MK_PAGE_SIZE;
        REG_EXPECT(MK_EINVAL, "size = 12 KiB, granularity 8 KiB", &r);
        r.size = M;
        r.dirty_granularity = 2 * M;
        REG_EXPECT(MK_EINVAL, "size = 1 MiB, granularity 2 MiB", &r);
        static const uint64_t bad_gran[] = { 1, 3, 2048, 6000, 3 * MK_PAGE_SIZE, (1ull << 21) + MK_PAGE_SIZE,
                                             UINT64_MAX };
        for (size_t i = 0; i < sizeof bad_gran / sizeof bad_gran[0]; i++) {
            char text[96];
            r = good;
            r.dirty_granularity = bad_gran[i];
            snprintf(text, sizeof text, "dirty_granularity = %" PRIu64 " (not a power of two >= 4096)", bad_gran[i]);
            REG_EXPECT(MK_EINVAL, text, &r);
        }
        r = good;
        r.guest_phys_addr = 0x800;
        REG_EXPECT(MK_EINVAL, "guest_phys_addr = 0x800 (not page aligned)", &r);
        r = region_at(MK_PAGE_SIZE, 2 * M, base, 2 * M);
        REG_EXPECT(MK_EINVAL, "guest_phys_addr = 4 KiB with 2 MiB granularity", &r);
        r = region_at(UINT64_MAX - (MK_PAGE_SIZE - 1), 2 * MK_PAGE_SIZE, base, 0);
        REG_EXPECT(MK_EINVAL, "guest_phys_addr + size wraps around", &r);
    }

    /* Nothing above was registered: the first good region is index 0. */
    idx = 0xFFFFFFFFu;
    REG_EXPECT(MK_OK, "region A: gpa 0, 1 MiB", &good);
    check(idx == 0, "%s: first accepted region is index 0 (got %u)", side, idx);
    {
        mk_region r = region_at(M / 2, M, base + 2 * M, 0);
        REG_EXPECT(MK_EINVAL, "overlaps region A in guest-physical addresses", &r);
        r = region_at(0, M, base + 2 * M, 0);
        REG_EXPECT(MK_EINVAL, "same guest-physical range as region A", &r);
        r = region_at(16 * M, M, base + M / 2, 0);
        REG_EXPECT(MK_EINVAL, "overlaps region A in host addresses", &r);
        r = region_at(32 * M, M / 4, base + M / 4, 0);
        REG_EXPECT(MK_EINVAL, "host range inside region A's", &r);
    }
    idx = 0xFFFFFFFFu;
    {
        mk_region r = region_at(M, M, base + M, MK_PAGE_SIZE);
        REG_EXPECT(MK_OK, "region B: adjacent to A in both address spaces", &r);
        check(idx == 1, "%s: second accepted region is index 1 (got %u)", side, idx);
    }
    {
        struct {
            mk_region r;
            unsigned char tail[16];
        } big;
        memset(&big, 0, sizeof big);
        big.r = region_at(2 * M, 2 * M, base + 2 * M, 2 * M);
        big.r.struct_size = sizeof big;
        idx = 0xFFFFFFFFu;
        REG_EXPECT(MK_OK, "region C: larger struct, zero tail, 2 MiB granularity", &big.r);
        check(idx == 2, "%s: third accepted region is index 2 (got %u)", side, idx);
    }
    {
        mk_region r = region_at(4 * M, 3 * MK_PAGE_SIZE, base + 4 * M, 0);
        r.struct_size = offsetof(mk_region, dirty_granularity);
        r.dirty_granularity = 12345; /* beyond struct_size: must be ignored */
        idx = 0xFFFFFFFFu;
        REG_EXPECT(MK_OK, "region D: older struct without dirty_granularity, garbage beyond", &r);
        check(idx == 3, "%s: fourth accepted region is index 3 (got %u)", side, idx);
    }
    {
        mk_region r = region_at(8 * M, MK_PAGE_SIZE, base + 5 * M, 0);
        snprintf(label, sizeof label, "%s: region E, out_index = NULL", side);
        check_rc(kind, h, add(h, &r, NULL), MK_OK, NOALT, label, "add_region(h, &r, NULL)");
    }
#undef REG_EXPECT
}

static void group_regions(void)
{
    mk_source_config cfg = good_src_config();
    mk_source_callbacks cb = good_src_callbacks();
    mk_source *s = new_source(&cfg, &cb, NULL);
    region_checks("source", H_SRC, s, add_src_region);
    mk_source_destroy(s);

    mk_dest_config dcfg = good_dst_config();
    mk_dest_callbacks dcb = good_dst_callbacks();
    mk_dest *d = new_dest(&dcfg, &dcb);
    region_checks("dest", H_DST, d, add_dst_region);
    mk_dest_destroy(d);
}

/* ------------------------------------------------------------------------ */
/* Group: source state machine, mark_dirty, throttle point, stats           */
/* ------------------------------------------------------------------------ */

static void stats_json_checks(mk_source *s)
{
    char full[16384];
    size_t len = 0;
    int rc = RC(H_SRC, s, MK_OK, "large buffer", mk_source_stats_json(s, full, sizeof full, &len));
    if (rc != 0)
        return;
    size_t L = strlen(full);
    check(len == L, "stats_json: *out_len is the length without the NUL (%zu, strlen %zu)", len, L);
    check(L > 2 && full[0] == '{' && full[L - 1] == '}', "stats_json: one JSON object: %s", full);
    check(strstr(full, "\"status\"") != NULL && strstr(full, "\"ram\"") != NULL &&
              strstr(full, "\"stop-copy\"") != NULL && strstr(full, "\"bandwidth-estimate\"") != NULL,
          "stats_json: has \"status\", \"ram\", \"bandwidth-estimate\", \"stop-copy\"");

    /* Too small: MK_ENOSPC, the size needed, nothing written past cap. */
    unsigned char small[64];
    memset(small, 0xEE, sizeof small);
    size_t need = 0;
    RC(H_SRC, s, MK_ENOSPC, "cap = 8", mk_source_stats_json(s, (char *)small, 8, &need));
    int untouched = 1;
    for (size_t i = 8; i < sizeof small; i++)
        if (small[i] != 0xEE)
            untouched = 0;
    check(untouched, "stats_json with cap 8 writes nothing past cap");
    check(need >= L, "stats_json MK_ENOSPC reports the size needed (got %zu, string length %zu)", need, L);
    {
        char *exact = malloc(need ? need : 1);
        size_t len2 = 0;
        int rc2 = mk_source_stats_json(s, exact, need, &len2);
        check(rc2 == 0,
              "stats_json: a buffer of the reported needed size (%zu) is enough (rc %s; string length %zu, "
              "so the size needed is %zu)",
              need, code_name(rc2), L, L + 1);
        free(exact);
    }
    memset(small, 0xEE, sizeof small);
    RC(H_SRC, s, MK_ENOSPC, "cap = 0", mk_source_stats_json(s, (char *)small, 0, &need));
    check(small[0] == 0xEE, "stats_json with cap 0 writes nothing");
    RC(H_SRC, s, MK_ENOSPC, "cap = 1, out_len = NULL", mk_source_stats_json(s, (char *)small, 1, NULL));
    {
        char *buf = malloc(L + 1);
        RC(H_SRC, s, MK_ENOSPC, "cap = strlen (no room for the NUL)", mk_source_stats_json(s, buf, L, &len));
        RC(H_SRC, s, MK_OK, "cap = strlen + 1", mk_source_stats_json(s, buf, L + 1, &len));
        check(memchr(buf, '\0', L + 1) == buf + L, "stats_json with cap strlen + 1 is NUL-terminated at %zu", L);
        free(buf);
    }
    RC(H_SRC, s, MK_OK, "out_len = NULL", mk_source_stats_json(s, full, sizeof full, NULL));
    len = 0;
    RC(H_SRC, s, MK_ENOSPC, "buf = NULL, cap = 0: the size query", mk_source_stats_json(s, NULL, 0, &len));
    check(len == L + 1, "stats_json size query reports length + 1 (%zu, strlen %zu)", len, L);
    RC(H_SRC, s, MK_EINVAL, "buf = NULL", mk_source_stats_json(s, NULL, 100, &len));
    RC(H_NONE, NULL, MK_EINVAL, "", mk_source_stats_json(NULL, full, sizeof full, &len));
    RC(H_SRC, s, MK_OK, "cap = SIZE_MAX (the string fits)", mk_source_stats_json(s, full, SIZE_MAX, &len));
}

static void stats_struct_checks(mk_source *s)
{
    mk_stats st;
    RC(H_NONE, NULL, MK_EINVAL, "", mk_source_get_stats(NULL, &st));
    RC(H_SRC, s, MK_EINVAL, "", mk_source_get_stats(s, NULL));
    static const uint32_t bad_sizes[] = { 0, 2, 0x00100000u, UINT32_MAX };
    for (size_t i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++) {
        char label[96];
        memset(&st, 0, sizeof st);
        st.struct_size = bad_sizes[i];
        snprintf(label, sizeof label, "out->struct_size = %u", bad_sizes[i]);
        RC(H_SRC, s, MK_EVERSION, label, mk_source_get_stats(s, &st));
    }
    memset(&st, 0xEE, sizeof st);
    st.struct_size = sizeof st;
    RC(H_SRC, s, MK_OK, "", mk_source_get_stats(s, &st));
    check(st.status == MK_STATUS_NONE && st.error == 0 && st.downtime_limit_ms == 300 &&
              st.ram_page_size == MK_PAGE_SIZE,
          "get_stats before start: status none (%d), error 0 (%d), downtime_limit 300 (%" PRIu64
          "), page size 4096 (%" PRIu64 ")",
          (int)st.status, (int)st.error, st.downtime_limit_ms, st.ram_page_size);

    unsigned char raw[sizeof(mk_stats) + 16];
    uint32_t n = (uint32_t)offsetof(mk_stats, total_time_ms);
    memset(raw, 0xEE, sizeof raw);
    memcpy(raw, &n, sizeof n);
    RC(H_SRC, s, MK_OK, "older out struct (up to cpu_throttle_percentage)",
       mk_source_get_stats(s, (mk_stats *)(void *)raw));
    int untouched = 1;
    for (size_t i = n; i < sizeof raw; i++)
        if (raw[i] != 0xEE)
            untouched = 0;
    check(untouched, "get_stats with an older out struct writes nothing past its struct_size %u", n);
    struct {
        mk_stats s;
        unsigned char tail[24];
    } big;
    memset(&big, 0xEE, sizeof big);
    big.s.struct_size = sizeof big;
    RC(H_SRC, s, MK_OK, "larger out struct", mk_source_get_stats(s, &big.s));
}

static void group_source_state(void)
{
    const size_t M = 1u << 20;
    mk_source_config cfg = good_src_config();
    cfg.nr_vcpus = 4;
    mk_source_callbacks cb = good_src_callbacks();
    mk_source *s = new_source(&cfg, &cb, NULL);
    unsigned char *mem = map_aligned(M, MK_PAGE_SIZE);
    int status = -1;

    /* Before any region. */
    RC(H_SRC, s, MK_ERANGE, "no regions yet", mk_source_mark_dirty(s, 0, MK_PAGE_SIZE));
    RC2(H_SRC, s, MK_ESTATE, MK_EINVAL, "no regions (header: \"needs regions\")", mk_source_start(s));
    RC(H_NONE, NULL, MK_EINVAL, "", mk_source_start(NULL));

    mk_region r = region_at(M, 64 * 1024, mem, 0);
    RC(H_SRC, s, MK_OK, "", mk_source_add_region(s, &r, NULL));

    /* mark_dirty */
    RC(H_NONE, NULL, MK_EINVAL, "", mk_source_mark_dirty(NULL, M, MK_PAGE_SIZE));
    RC(H_SRC, s, MK_OK, "first page of the region", mk_source_mark_dirty(s, M, MK_PAGE_SIZE));
    RC(H_SRC, s, MK_OK, "unaligned range inside (rounded out)", mk_source_mark_dirty(s, M + 100, 10));
    RC(H_SRC, s, MK_OK, "whole region", mk_source_mark_dirty(s, M, 64 * 1024));
    RC(H_SRC, s, MK_ERANGE, "below every region", mk_source_mark_dirty(s, 0, MK_PAGE_SIZE));
    RC(H_SRC, s, MK_ERANGE, "page just below the region", mk_source_mark_dirty(s, M - MK_PAGE_SIZE, MK_PAGE_SIZE));
    RC(H_SRC, s, MK_ERANGE, "page just past the region", mk_source_mark_dirty(s, M + 64 * 1024, MK_PAGE_SIZE));
    RC(H_SRC, s, MK_ERANGE, "far above", mk_source_mark_dirty(s, 1ull << 40, MK_PAGE_SIZE));
    RC(H_SRC, s, MK_ERANGE, "range wraps around", mk_source_mark_dirty(s, UINT64_MAX - 1, 16));

    /* throttle point */
    RC(H_NONE, NULL, MK_EINVAL, "", mk_source_throttle_point(NULL, 0));
    RC(H_SRC, s, MK_EINVAL, "vcpu == nr_vcpus (4)", mk_source_throttle_point(s, 4));
    RC(H_SRC, s, MK_EINVAL, "vcpu = UINT32_MAX", mk_source_throttle_point(s, UINT32_MAX));
    {
        double t0 = now_s();
        RC(H_SRC, s, MK_OK, "vcpu 3, no throttle", mk_source_throttle_point(s, 3));
        double dt = now_s() - t0;
        check(dt < 0.2, "throttle point without a throttle returns at once (%.3f s)", dt);
    }

    /* Not started yet. */
    RC(H_NONE, NULL, MK_EINVAL, "", mk_source_cancel(NULL));
    RC(H_SRC, s, MK_OK, "before start (remembered)", mk_source_cancel(s));
    RC(H_NONE, NULL, MK_EINVAL, "", mk_source_wait(NULL, &status));
    RC(H_SRC, s, MK_ESTATE, "before start", mk_source_wait(s, &status));
    RC(H_SRC, s, MK_ESTATE, "before start, out_status NULL", mk_source_wait(s, NULL));

    stats_struct_checks(s);
    stats_json_checks(s);
    RC(H_SRC, s, MK_ECANCELED, "after a cancel before start", mk_source_start(s));
    RC(H_SRC, s, MK_ECANCELED, "after a cancel before start", mk_source_wait(s, &status));
    check(status == MK_STATUS_CANCELLED, "wait after a cancel before start: MK_STATUS_CANCELLED (got %s)",
          mk_status_name(status));
    mk_source_destroy(s);

    /* A migration whose write callback fails. */
    cb.write = cb_write_fail;
    s = new_source(&cfg, &cb, NULL);
    RC(H_SRC, s, MK_OK, "", mk_source_add_region(s, &r, NULL));
    RC(H_SRC, s, MK_OK, "write callback fails", mk_source_start(s));
    RC(H_SRC, s, MK_ESTATE, "second start", mk_source_start(s));
    {
        mk_region r2 = region_at(8 * M, MK_PAGE_SIZE, mem + 64 * 1024, 0);
        RC(H_SRC, s, MK_ESTATE, "after start", mk_source_add_region(s, &r2, NULL));
    }
    status = -1;
    RC(H_SRC, s, MK_ETRANSPORT, "write callback returned -5", mk_source_wait(s, &status));
    check(status == MK_STATUS_FAILED, "wait: out_status is MK_STATUS_FAILED (got %d %s)", status,
          mk_status_name(status));
    {
        mk_stats st;
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        RC(H_SRC, s, MK_OK, "", mk_source_get_stats(s, &st));
        check(st.status == MK_STATUS_FAILED && st.error == MK_ETRANSPORT,
              "get_stats after the failure: status failed, error MK_ETRANSPORT (got %s, %s)",
              mk_status_name(st.status), code_name(st.error));
    }
    RC(H_SRC, s, MK_ESTATE, "migration already failed", mk_source_cancel(s));
    RC(H_SRC, s, MK_ESTATE, "start after the end", mk_source_start(s));
    RC(H_SRC, s, MK_OK, "vcpu 0 after the end", mk_source_throttle_point(s, 0));
    RC(H_SRC, s, MK_EINVAL, "vcpu 4 after the end", mk_source_throttle_point(s, 4));
    {
        char json[4096];
        RC(H_SRC, s, MK_OK, "after the failure", mk_source_stats_json(s, json, sizeof json, NULL));
        check(strstr(json, "\"failed\"") != NULL, "stats_json after the failure says \"failed\"");
    }
    mk_source_destroy(s);
}

/* ------------------------------------------------------------------------ */
/* Group: cancel and destroy of a running source (fd transport)             */
/* ------------------------------------------------------------------------ */

static void cancel_checks(int ignore_sigpipe)
{
    const size_t size = 8u << 20; /* far more than a socket buffer */
    if (ignore_sigpipe)
        signal(SIGPIPE, SIG_IGN);
    unsigned char *mem = map_aligned(size, MK_PAGE_SIZE);
    memset(mem, 0x5A, size); /* non-zero pages are sent in full */
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        check(0, "socketpair: %s", strerror(errno));
        return;
    }
    mk_source_config cfg = good_src_config();
    cfg.transport_fd = sv[0];
    mk_source_callbacks cb = good_src_callbacks();
    cb.write = NULL;
    mk_source *s = new_source(&cfg, &cb, NULL);
    mk_region r = region_at(0, size, mem, 0);
    RC(H_SRC, s, MK_OK, "", mk_source_add_region(s, &r, NULL));
    RC(H_SRC, s, MK_OK, "nobody reads the socket", mk_source_start(s));
    sleep_ms(100);
    {
        mk_stats st;
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        mk_source_get_stats(s, &st);
        check(st.status == MK_STATUS_SETUP || st.status == MK_STATUS_ACTIVE,
              "migration is blocked in setup/active (%s)", mk_status_name(st.status));
    }
    double t0 = now_s();
    RC(H_SRC, s, MK_OK, "while blocked in writev", mk_source_cancel(s));
    check(now_s() - t0 < 0.5, "mk_source_cancel returns at once (%.3f s)", now_s() - t0);
    int status = -1;
    RC(H_SRC, s, MK_ECANCELED, "after cancel", mk_source_wait(s, &status));
    check(status == MK_STATUS_CANCELLED, "wait after cancel: out_status MK_STATUS_CANCELLED (got %s)",
          mk_status_name(status));
    RC(H_SRC, s, MK_ESTATE, "second cancel (already cancelled)", mk_source_cancel(s));
    mk_source_destroy(s);
    check(1, "destroy after cancel returned");
    close(sv[0]);
    close(sv[1]);

    /* destroy on a running migration: cancel, join, free. */
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        check(0, "socketpair: %s", strerror(errno));
        return;
    }
    cfg.transport_fd = sv[0];
    s = new_source(&cfg, &cb, NULL);
    RC(H_SRC, s, MK_OK, "", mk_source_add_region(s, &r, NULL));
    RC(H_SRC, s, MK_OK, "nobody reads the socket", mk_source_start(s));
    sleep_ms(50);
    t0 = now_s();
    mk_source_destroy(s);
    check(now_s() - t0 < 5.0, "mk_source_destroy on a running migration returns (%.3f s)", now_s() - t0);
    close(sv[0]);
    close(sv[1]);
}

static void group_source_cancel(void)
{
    cancel_checks(1);
}

/* Same, with SIGPIPE at its default: a VMM that never asked for SIGPIPE
 * must not be killed because the library shut its own socket down. */
static void group_source_cancel_sigpipe(void)
{
    signal(SIGPIPE, SIG_DFL);
    cancel_checks(0);
}

/* ------------------------------------------------------------------------ */
/* Group: destination                                                       */
/* ------------------------------------------------------------------------ */

static void create_dst_expect(int want, const char *label, const mk_dest_config *cfg, const mk_dest_callbacks *cb)
{
    mk_dest *sentinel = (mk_dest *)(void *)&g_sentinel_obj;
    mk_dest *d = sentinel;
    int rc = check_rc(H_NONE, NULL, mk_dest_create(&d, cfg, cb), want, NOALT, label, "mk_dest_create(&d, cfg, cb)");
    if (rc != 0)
        check(d == NULL, "%s: *out is NULL after the failed mk_dest_create", label);
    else if (d != sentinel)
        mk_dest_destroy(d);
}

struct byte_stream {
    unsigned char fill;
    size_t left;
};

static int cb_dest_read_garbage(void *user, void *buf, size_t cap, size_t *out_len)
{
    struct byte_stream *b = user;
    size_t n = b->left < cap ? b->left : cap;
    memset(buf, b->fill, n);
    b->left -= n;
    *out_len = n;
    return 0;
}

static int cb_dest_read_fail(void *user, void *buf, size_t cap, size_t *out_len)
{
    (void)user;
    (void)buf;
    (void)cap;
    *out_len = 0;
    return -1;
}

static void dest_failed_run(const char *label, mk_dest_callbacks cb, int want)
{
    mk_dest_config cfg = good_dst_config();
    mk_dest *d = new_dest(&cfg, &cb);
    unsigned char *mem = map_aligned(64 * 1024, MK_PAGE_SIZE);
    mk_region r = region_at(0, 64 * 1024, mem, 0);
    RC(H_DST, d, MK_OK, "", mk_dest_add_region(d, &r, NULL));
    RC(H_DST, d, MK_OK, "before run", mk_dest_prefault(d));
    RC(H_DST, d, want, label, mk_dest_run(d));
    mk_dest_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    RC(H_DST, d, MK_OK, "", mk_dest_get_stats(d, &st));
    check(st.status == MK_STATUS_FAILED && st.error == want, "%s: dest stats say failed, %s (got %s, %s)", label,
          code_name(want), mk_status_name(st.status), code_name(st.error));
    RC(H_DST, d, MK_ESTATE, "second run", mk_dest_run(d));
    RC(H_DST, d, MK_ESTATE, "after a failed run", mk_dest_ack(d, 0));
    RC(H_DST, d, MK_ESTATE, "after a failed run", mk_dest_cancel(d));
    RC(H_DST, d, MK_ESTATE, "after a failed run", mk_dest_prefault(d));
    RC(H_DST, d, MK_ESTATE, "after a failed run", mk_dest_set_transport_fd(d, 0));
    mk_region r2 = region_at(1u << 20, MK_PAGE_SIZE, mem + 32 * 1024, 0);
    RC(H_DST, d, MK_ESTATE, "after run", mk_dest_add_region(d, &r2, NULL));
    mk_dest_destroy(d);
}

static void group_dest(void)
{
    mk_dest_config cfg = good_dst_config();
    mk_dest_callbacks cb = good_dst_callbacks();
    static const uint32_t bad_sizes[] = { 0, 2, 0x00100000u, UINT32_MAX };

    create_dst_expect(MK_OK, "valid config and callbacks", &cfg, &cb);
    RC(H_NONE, NULL, MK_EINVAL, "out = NULL", mk_dest_create(NULL, &cfg, &cb));
    create_dst_expect(MK_EINVAL, "config = NULL", NULL, &cb);
    create_dst_expect(MK_EINVAL, "callbacks = NULL", &cfg, NULL);
    for (size_t i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++) {
        char label[96];
        mk_dest_config c = cfg;
        c.struct_size = bad_sizes[i];
        snprintf(label, sizeof label, "config->struct_size = %u", bad_sizes[i]);
        create_dst_expect(MK_EVERSION, label, &c, &cb);
        mk_dest_callbacks k = cb;
        k.struct_size = bad_sizes[i];
        snprintf(label, sizeof label, "callbacks->struct_size = %u", bad_sizes[i]);
        create_dst_expect(MK_EVERSION, label, &cfg, &k);
    }
    {
        struct {
            mk_dest_config c;
            unsigned char tail[16];
        } big;
        memset(&big, 0, sizeof big);
        big.c = cfg;
        big.c.struct_size = sizeof big;
        create_dst_expect(MK_OK, "larger config, zero tail", &big.c, &cb);
        big.tail[3] = 1;
        create_dst_expect(MK_EVERSION, "larger config, non-zero tail", &big.c, &cb);
        struct {
            mk_dest_callbacks c;
            unsigned char tail[16];
        } bigk;
        memset(&bigk, 0, sizeof bigk);
        bigk.c = cb;
        bigk.c.struct_size = sizeof bigk;
        create_dst_expect(MK_OK, "larger callbacks, zero tail", &cfg, &bigk.c);
        bigk.tail[15] = 1;
        create_dst_expect(MK_EVERSION, "larger callbacks, non-zero tail", &cfg, &bigk.c);
    }
    {
        mk_dest_config c = cfg;
        c.struct_size = offsetof(mk_dest_config, flags);
        c.flags = 0xFFFFFFFFu; /* beyond struct_size */
        c.reserved = 7;
        create_dst_expect(MK_OK, "older config (up to transport_fd), garbage beyond", &c, &cb);
        mk_dest_callbacks k = cb;
        k.struct_size = offsetof(mk_dest_callbacks, write);
        memset((unsigned char *)&k + offsetof(mk_dest_callbacks, write), 0xAB,
               sizeof k - offsetof(mk_dest_callbacks, write));
        create_dst_expect(MK_OK, "older callbacks (up to read), garbage beyond", &cfg, &k);
    }
    {
        mk_dest_config c = cfg;
        c.flags = 2;
        create_dst_expect(MK_EINVAL, "config->flags = 0x2 (unknown)", &c, &cb);
        c.flags = 0x80000000u;
        create_dst_expect(MK_EINVAL, "config->flags = 0x80000000", &c, &cb);
        c.flags = MK_DEST_MANUAL_ACK;
        create_dst_expect(MK_OK, "config->flags = MK_DEST_MANUAL_ACK", &c, &cb);
        c = cfg;
        c.reserved = 1;
        create_dst_expect(MK_EINVAL, "config->reserved = 1", &c, &cb);
        c = cfg;
        c.transport_fd = -2;
        create_dst_expect(MK_EINVAL, "transport_fd = -2", &c, &cb);
        c.transport_fd = INT32_MIN;
        create_dst_expect(MK_EINVAL, "transport_fd = INT32_MIN", &c, &cb);
        mk_dest_callbacks k = cb;
        k.reserved = 1;
        create_dst_expect(MK_EINVAL, "callbacks->reserved = 1", &cfg, &k);
        k = cb;
        k.read = NULL;
        c = cfg;
        c.transport_fd = -1;
        create_dst_expect(MK_OK, "read = NULL and transport_fd = -1 (transport given later)", &c, &k);
        {
            /* Without a transport by mk_dest_run: MK_EINVAL; the fd can be given until then. */
            mk_dest *late = new_dest(&c, &k);
            unsigned char *mem = map_aligned(64 * 1024, MK_PAGE_SIZE);
            mk_region r = region_at(0, 64 * 1024, mem, 0);
            RC(H_DST, late, MK_OK, "", mk_dest_add_region(late, &r, NULL));
            RC(H_NONE, NULL, MK_EINVAL, "", mk_dest_set_transport_fd(NULL, 0));
            RC(H_DST, late, MK_EINVAL, "fd = -1", mk_dest_set_transport_fd(late, -1));
            RC(H_DST, late, MK_EINVAL, "no transport yet", mk_dest_run(late));
            mk_dest_destroy(late);
        }
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0) {
            c.transport_fd = sv[1];
            create_dst_expect(MK_OK, "read = NULL with a transport_fd", &c, &k);
            close(sv[0]);
            close(sv[1]);
        }
    }

    /* A fresh handle. */
    mk_dest *d = new_dest(&cfg, &cb);
    const char *em = mk_dest_errmsg(d);
    check(em != NULL && em[0] == '\0', "mk_dest_errmsg on a fresh handle is \"\" (got \"%s\")", em ? em : "(null)");
    {
        mk_dest_stats st;
        RC(H_NONE, NULL, MK_EINVAL, "", mk_dest_get_stats(NULL, &st));
        RC(H_DST, d, MK_EINVAL, "", mk_dest_get_stats(d, NULL));
        for (size_t i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++) {
            char label[96];
            memset(&st, 0, sizeof st);
            st.struct_size = bad_sizes[i];
            snprintf(label, sizeof label, "out->struct_size = %u", bad_sizes[i]);
            RC(H_DST, d, MK_EVERSION, label, mk_dest_get_stats(d, &st));
        }
        memset(&st, 0xEE, sizeof st);
        st.struct_size = sizeof st;
        RC(H_DST, d, MK_OK, "", mk_dest_get_stats(d, &st));
        check(st.status == MK_STATUS_NONE && st.error == 0 && st.bytes_received == 0,
              "dest stats before run: status none, error 0, nothing received (got %s, %d, %" PRIu64 ")",
              mk_status_name(st.status), (int)st.error, st.bytes_received);
        unsigned char raw[sizeof(mk_dest_stats) + 16];
        uint32_t n = (uint32_t)offsetof(mk_dest_stats, bytes_received);
        memset(raw, 0xEE, sizeof raw);
        memcpy(raw, &n, sizeof n);
        RC(H_DST, d, MK_OK, "older out struct (up to reserved)", mk_dest_get_stats(d, (mk_dest_stats *)(void *)raw));
        int untouched = 1;
        for (size_t i = n; i < sizeof raw; i++)
            if (raw[i] != 0xEE)
                untouched = 0;
        check(untouched, "dest get_stats with an older out struct writes nothing past its struct_size %u", n);
        struct {
            mk_dest_stats s;
            unsigned char tail[24];
        } big;
        memset(&big, 0xEE, sizeof big);
        big.s.struct_size = sizeof big;
        RC(H_DST, d, MK_OK, "larger out struct", mk_dest_get_stats(d, &big.s));
    }
    RC(H_NONE, NULL, MK_EINVAL, "", mk_dest_ack(NULL, 0));
    RC(H_DST, d, MK_ESTATE, "before run", mk_dest_ack(d, 0));
    RC(H_DST, d, MK_ESTATE, "before run, bad status", mk_dest_ack(d, -1));
    RC(H_NONE, NULL, MK_EINVAL, "", mk_dest_cancel(NULL));
    RC(H_DST, d, MK_OK, "before run (remembered)", mk_dest_cancel(d));
    RC(H_NONE, NULL, MK_EINVAL, "", mk_dest_prefault(NULL));
    RC(H_DST, d, MK_EINVAL, "no regions registered", mk_dest_prefault(d));
    RC(H_NONE, NULL, MK_EINVAL, "", mk_dest_run(NULL));
    RC2(H_DST, d, MK_ESTATE, MK_EINVAL, "no regions registered", mk_dest_run(d));
    mk_dest_destroy(d);

    /* Runs that fail on the stream. */
    dest_failed_run("stream ends at once", cb, MK_ETRUNCATED);
    {
        static struct byte_stream garbage = { 0xAB, 64 * 1024 };
        mk_dest_callbacks k = cb;
        k.read = cb_dest_read_garbage;
        k.user = &garbage;
        dest_failed_run("64 KiB of 0xab (bad magic)", k, MK_EPROTO);
        k.read = cb_dest_read_fail;
        dest_failed_run("read callback returns -1", k, MK_ETRANSPORT);
    }
}

/* ------------------------------------------------------------------------ */
/* Groups: a real in-process migration, for the states only it reaches     */
/* ------------------------------------------------------------------------ */

#define MIG_SIZE (256u * 1024u)

struct mig {
    unsigned char *src_mem, *dst_mem;
    int sv[2];
    mk_source *src;
    mk_dest *dst;
    unsigned char device_in[64];
    size_t device_in_len;
    int pauses, resumes;
    int (*save)(void *user, mk_buffer *out);
};

static int mig_pause(void *user)
{
    struct mig *m = user;
    m->pauses++;
    return 0;
}

static int mig_resume(void *user)
{
    struct mig *m = user;
    m->resumes++;
    return 0;
}

static int mig_load(void *user, const void *data, size_t len)
{
    struct mig *m = user;
    if (len > sizeof m->device_in)
        return -1;
    memcpy(m->device_in, data, len);
    m->device_in_len = len;
    return 0;
}

static const char DEVICE_STATE[] = "DEVSTATE-0123456";

/* Everything up to (not including) mk_source_start. */
static void mig_setup(struct mig *m, uint32_t dest_flags)
{
    m->src_mem = map_aligned(MIG_SIZE, MK_PAGE_SIZE);
    m->dst_mem = map_aligned(MIG_SIZE, MK_PAGE_SIZE);
    for (size_t i = 0; i < MIG_SIZE / 2; i++) /* half data, half zero pages */
        m->src_mem[i] = (unsigned char)(i * 7 + (i >> 12));
    memset(m->dst_mem, 0xFF, MIG_SIZE); /* zero pages must really be cleared */
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, m->sv) != 0) {
        perror("socketpair");
        _exit(2);
    }
    mk_source_config cfg = good_src_config();
    cfg.transport_fd = m->sv[0];
    cfg.nr_vcpus = 2;
    cfg.ack_timeout_ms = 5000;
    mk_source_callbacks cb = good_src_callbacks();
    cb.write = NULL;
    cb.user = m;
    cb.pause_vcpus = mig_pause;
    cb.resume_vcpus = mig_resume;
    cb.save_device_state = m->save;
    m->src = new_source(&cfg, &cb, NULL);
    mk_region r = region_at(0, MIG_SIZE, m->src_mem, 0);
    RC(H_SRC, m->src, MK_OK, "source region", mk_source_add_region(m->src, &r, NULL));

    mk_dest_config dcfg = good_dst_config();
    dcfg.transport_fd = m->sv[1];
    dcfg.flags = dest_flags;
    mk_dest_callbacks dcb;
    memset(&dcb, 0, sizeof dcb);
    dcb.struct_size = sizeof dcb;
    dcb.user = m;
    dcb.load_device_state = mig_load;
    m->dst = new_dest(&dcfg, &dcb);
    r.host_addr = m->dst_mem;
    RC(H_DST, m->dst, MK_OK, "dest region", mk_dest_add_region(m->dst, &r, NULL));
}

static void mig_teardown(struct mig *m)
{
    mk_source_destroy(m->src);
    mk_dest_destroy(m->dst);
    close(m->sv[0]);
    close(m->sv[1]);
}

static int save_plain(void *user, mk_buffer *out)
{
    (void)user;
    /* A buffer but no data: MK_EINVAL (this runs on the migration thread). */
    int rc = mk_buffer_append(out, NULL, 4);
    const char *le = mk_last_error();
    check(rc == MK_EINVAL && le && le[0], "in save_device_state: mk_buffer_append(out, NULL, 4) -> %s \"%s\"",
          code_name(rc), le ? le : "(null)");
    return mk_buffer_append(out, DEVICE_STATE, sizeof DEVICE_STATE);
}

static void group_manual_ack(void)
{
    static struct mig m;
    m.save = save_plain;
    mig_setup(&m, MK_DEST_MANUAL_ACK);

    RC(H_DST, m.dst, MK_ESTATE, "before run", mk_dest_ack(m.dst, 0));
    RC(H_SRC, m.src, MK_OK, "", mk_source_start(m.src));
    RC(H_SRC, m.src, MK_ESTATE, "second start while running", mk_source_start(m.src));
    RC(H_DST, m.dst, MK_OK, "MK_DEST_MANUAL_ACK", mk_dest_run(m.dst));
    check(memcmp(m.src_mem, m.dst_mem, MIG_SIZE) == 0, "guest memory arrived byte for byte");
    check(m.device_in_len == sizeof DEVICE_STATE && memcmp(m.device_in, DEVICE_STATE, sizeof DEVICE_STATE) == 0,
          "device state arrived unchanged (%zu bytes)", m.device_in_len);
    {
        mk_dest_stats st;
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        RC(H_DST, m.dst, MK_OK, "", mk_dest_get_stats(m.dst, &st));
        check(st.status == MK_STATUS_COMPLETED && st.error == 0 && st.device_state_bytes == sizeof DEVICE_STATE,
              "dest stats after run: completed, error 0, %zu device bytes (got %s, %d, %" PRIu64 ")",
              sizeof DEVICE_STATE, mk_status_name(st.status), (int)st.error, st.device_state_bytes);
    }
    RC(H_DST, m.dst, MK_ESTATE, "second run", mk_dest_run(m.dst));
    RC(H_DST, m.dst, MK_ESTATE, "after run returned", mk_dest_cancel(m.dst));
    {
        mk_region r = region_at(1u << 30, MK_PAGE_SIZE, m.dst_mem + MIG_SIZE - MK_PAGE_SIZE, 0);
        RC(H_DST, m.dst, MK_ESTATE, "after run", mk_dest_add_region(m.dst, &r, NULL));
    }
    /* A rejected ack must not use up the one real ack. */
    RC(H_DST, m.dst, MK_EINVAL, "status 1 (must be 0 or a negative MK_E*)", mk_dest_ack(m.dst, 1));
    RC(H_DST, m.dst, MK_OK, "after the rejected one", mk_dest_ack(m.dst, 0));
    RC(H_DST, m.dst, MK_ESTATE, "second ack", mk_dest_ack(m.dst, 0));

    int status = -1;
    RC(H_SRC, m.src, MK_OK, "after the manual ack", mk_source_wait(m.src, &status));
    check(status == MK_STATUS_COMPLETED, "source out_status MK_STATUS_COMPLETED (got %s)", mk_status_name(status));
    {
        mk_stats st;
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        RC(H_SRC, m.src, MK_OK, "", mk_source_get_stats(m.src, &st));
        check(st.status == MK_STATUS_COMPLETED && st.error == 0 && st.ram_total == MIG_SIZE,
              "source stats: completed, error 0, ram_total %u (got %s, %s, %" PRIu64 ")", MIG_SIZE,
              mk_status_name(st.status), code_name(st.error), st.ram_total);
        char json[8192];
        RC(H_SRC, m.src, MK_OK, "completed", mk_source_stats_json(m.src, json, sizeof json, NULL));
        check(strstr(json, "\"completed\"") != NULL, "stats_json says \"completed\"");
    }
    check(m.pauses >= 1, "pause_vcpus was called (%d)", m.pauses);
    RC(H_SRC, m.src, MK_ESTATE, "completed", mk_source_cancel(m.src));
    RC(H_SRC, m.src, MK_ESTATE, "completed", mk_source_start(m.src));
    {
        mk_region r = region_at(1u << 30, MK_PAGE_SIZE, m.src_mem + MIG_SIZE - MK_PAGE_SIZE, 0);
        RC(H_SRC, m.src, MK_ESTATE, "completed", mk_source_add_region(m.src, &r, NULL));
    }
    mig_teardown(&m);
}

/* mk_buffer_append edge sizes, in save_device_state. Its own group: a trap
 * in the library kills the process. Checks are reported one by one from the
 * migration thread (the main thread is blocked in mk_dest_run meanwhile). */
static int save_huge(void *user, mk_buffer *out)
{
    (void)user;
    static const char data[] = "0123456789abcdef"; /* 16 bytes + NUL */
    const char *le = mk_last_error();
    check(le != NULL && le[0] == '\0',
          "mk_last_error() is per thread: \"\" on the migration thread although the main thread failed calls "
          "(got \"%s\")",
          le ? le : "(null)");
    RC(H_NONE, NULL, MK_ENOMEM, "1 GiB + 1 into an empty buffer", mk_buffer_append(out, data, (1u << 30) + 1));
    RC(H_NONE, NULL, MK_ENOMEM, "SIZE_MAX (past 1 GiB)", mk_buffer_append(out, data, SIZE_MAX));
    RC(H_NONE, NULL, MK_OK, "16 bytes", mk_buffer_append(out, data, 16));
    RC(H_NONE, NULL, MK_ENOMEM, "SIZE_MAX / 2 after 16 bytes", mk_buffer_append(out, data, SIZE_MAX / 2));
    return 0;
}

static void group_buffer_append(void)
{
    static struct mig m;
    m.save = save_huge;
    mig_setup(&m, 0);
    RC(H_DST, m.dst, MK_ESTATE, "before run (leaves a failure on this thread)", mk_dest_ack(m.dst, 0));
    RC(H_SRC, m.src, MK_OK, "", mk_source_start(m.src));
    RC(H_DST, m.dst, MK_OK, "automatic ack", mk_dest_run(m.dst));
    int status = -1;
    RC(H_SRC, m.src, MK_OK, "", mk_source_wait(m.src, &status));
    check(m.device_in_len == 16 && memcmp(m.device_in, "0123456789abcdef", 16) == 0,
          "only the accepted 16 bytes of device state arrived (%zu)", m.device_in_len);
    mig_teardown(&m);
}

/* ------------------------------------------------------------------------ */
/* Driver                                                                   */
/* ------------------------------------------------------------------------ */

struct group {
    const char *name;
    void (*fn)(void);
};

/* ------------------------------------------------------------------------ */
/* Group: per-vCPU statistics (mk_source_get_vcpu_stats, 0.3)                */
/* ------------------------------------------------------------------------ */

static void group_vcpu_stats(void)
{
    mk_source_config cfg = good_src_config();
    cfg.nr_vcpus = 3;
    mk_source_callbacks cb = good_src_callbacks();
    mk_source *s = new_source(&cfg, &cb, NULL);
    mk_vcpu_stats v;

    memset(&v, 0, sizeof v);
    v.struct_size = sizeof v;
    RC(H_NONE, NULL, MK_EINVAL, "handle = NULL", mk_source_get_vcpu_stats(NULL, 0, &v));
    RC(H_SRC, s, MK_EINVAL, "out = NULL", mk_source_get_vcpu_stats(s, 0, NULL));
    RC(H_SRC, s, MK_EINVAL, "vcpu = nr_vcpus (3)", mk_source_get_vcpu_stats(s, 3, &v));
    RC(H_SRC, s, MK_EINVAL, "vcpu = UINT32_MAX", mk_source_get_vcpu_stats(s, UINT32_MAX, &v));
    static const uint32_t bad_sizes[] = { 0, 2, 0x00100000u, UINT32_MAX };
    for (size_t i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++) {
        char label[96];
        memset(&v, 0, sizeof v);
        v.struct_size = bad_sizes[i];
        snprintf(label, sizeof label, "out->struct_size = %u", bad_sizes[i]);
        RC(H_SRC, s, MK_EVERSION, label, mk_source_get_vcpu_stats(s, 0, &v));
    }
    for (uint32_t i = 0; i < 3; i++) {
        memset(&v, 0xAB, sizeof v);
        v.struct_size = sizeof v;
        char label[64];
        snprintf(label, sizeof label, "vcpu %u before start", i);
        if (RC(H_SRC, s, MK_OK, label, mk_source_get_vcpu_stats(s, i, &v)) == 0)
            check(v.vcpu == i && v.throttle_percentage == 0 && v.dirty_rate_known == 0 && v.dirty_pages_rate == 0 &&
                      v.dirty_pages == 0 && v.throttle_sleep_us == 0 && v.struct_size == sizeof v,
                  "vcpu_stats %u: index set, everything else 0 before start (vcpu %u, throttle %u, sleep %" PRIu64 ")",
                  i, v.vcpu, v.throttle_percentage, v.throttle_sleep_us);
    }
    /* An older, smaller struct: only its bytes are written. */
    {
        struct {
            mk_vcpu_stats v;
            unsigned char canary[8];
        } small;
        memset(&small, 0xCD, sizeof small);
        small.v.struct_size = (uint32_t)offsetof(mk_vcpu_stats, dirty_pages_rate);
        if (RC(H_SRC, s, MK_OK, "smaller struct (up to dirty_rate_known)", mk_source_get_vcpu_stats(s, 1, &small.v)) == 0) {
            const unsigned char *b = (const unsigned char *)&small.v;
            int untouched = 1;
            for (size_t k = offsetof(mk_vcpu_stats, dirty_pages_rate); k < sizeof small; k++)
                if (b[k] != 0xCD)
                    untouched = 0;
            check(untouched && small.v.vcpu == 1, "smaller struct: nothing written past its struct_size");
        }
    }
    /* mk_stats says how many vCPUs there are; the JSON has one entry each. */
    {
        mk_stats st;
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        if (RC(H_SRC, s, MK_OK, "get_stats", mk_source_get_stats(s, &st)) == 0)
            check(st.nr_vcpus == 3 && st.throttle_sleep_us == 0 && st.throttle_mode == MK_THROTTLE_CLOSED_LOOP,
                  "mk_stats: nr_vcpus 3 (got %u), throttle_sleep_us 0, throttle_mode closed-loop (got %d)", st.nr_vcpus,
                  st.throttle_mode);
        char json[16384];
        if (RC(H_SRC, s, MK_OK, "stats_json", mk_source_stats_json(s, json, sizeof json, NULL)) == 0)
            check(strstr(json, "\"vcpus\":[{\"vcpu\":0,") && strstr(json, "{\"vcpu\":2,") && !strstr(json, "{\"vcpu\":3,") &&
                      strstr(json, "\"throttle-mode\":\"closed-loop\""),
                  "stats_json: a vcpus array with entries 0..2 and throttle-mode: %.300s", json);
    }
    /* The throttle point checks the index the same way. */
    RC(H_SRC, s, MK_OK, "throttle_point(vcpu 2) without a throttle", mk_source_throttle_point(s, 2));
    RC(H_SRC, s, MK_EINVAL, "throttle_point(vcpu 3)", mk_source_throttle_point(s, 3));
    mk_source_destroy(s);

    /* The optional callback is accepted, and so is an older callbacks struct without it. */
    {
        mk_source_callbacks c = cb;
        c.get_vcpu_dirty_counts = NULL;
        c.struct_size = (uint32_t)offsetof(mk_source_callbacks, get_vcpu_dirty_counts);
        mk_source *t = NULL;
        if (RC(H_NONE, NULL, MK_OK, "callbacks without get_vcpu_dirty_counts (older struct)",
               mk_source_create(&t, &cfg, &c, NULL)) == 0)
            mk_source_destroy(t);
    }
}

static const struct group groups[] = {
    { "basics", group_basics },
    { "source_create", group_source_create },
    { "params", group_params },
    { "regions", group_regions },
    { "source_state", group_source_state },
    { "source_cancel", group_source_cancel },
    { "source_cancel_sigpipe", group_source_cancel_sigpipe },
    { "dest", group_dest },
    { "manual_ack", group_manual_ack },
    { "buffer_append", group_buffer_append },
    { "vcpu_stats", group_vcpu_stats },
};

/* Run one group in a child; add its results to *pass / *fail. Returns 0 if
 * the child ended normally. */
static int run_forked(const struct group *g, unsigned *pass, unsigned *fail)
{
    int fds[2];
    if (pipe(fds) != 0) {
        perror("pipe");
        exit(2);
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        close(fds[0]);
        g_report_fd = fds[1];
        g_group = g->name;
        alarm(GROUP_TIMEOUT_S);
        g->fn();
        fflush(stdout);
        _exit(0);
    }
    close(fds[1]);
    unsigned p = 0, f = 0;
    char buf[256];
    for (;;) {
        ssize_t n = read(fds[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] == 'P')
                p++;
            else
                f++;
        }
    }
    close(fds[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    *pass += p;
    *fail += f;
    if (WIFSIGNALED(st)) {
        int sig = WTERMSIG(st);
        if (sig == SIGALRM)
            printf("FAIL %s HUNG: no end after %d s (%u checks done)\n", g->name, GROUP_TIMEOUT_S, p + f);
        else
            printf("FAIL %s CRASHED: killed by signal %d (%s) after %u checks\n", g->name, sig, strsignal(sig),
                   p + f);
        (*fail)++;
        return 1;
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) != 0) {
        printf("FAIL %s exited with status %d after %u checks\n", g->name, WEXITSTATUS(st), p + f);
        (*fail)++;
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int fork_groups = 1;
    const char *only[32];
    int n_only = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--no-fork") == 0)
            fork_groups = 0;
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            printf("usage: %s [--no-fork] [group...]\ngroups:", argv[0]);
            for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++)
                printf(" %s", groups[g].name);
            printf("\n");
            return 0;
        } else if (n_only < 32)
            only[n_only++] = argv[i];
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    unsigned pass = 0, fail = 0, crashed = 0, ran = 0;
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        int wanted = n_only == 0;
        for (int i = 0; i < n_only; i++)
            if (strcmp(only[i], groups[g].name) == 0)
                wanted = 1;
        if (!wanted)
            continue;
        ran++;
        if (fork_groups) {
            crashed += (unsigned)run_forked(&groups[g], &pass, &fail);
        } else {
            g_group = groups[g].name;
            g_seq = 0;
            groups[g].fn();
        }
    }
    if (!fork_groups) {
        pass = g_pass;
        fail = g_fail;
    }
    if (ran == 0) {
        fprintf(stderr, "no such group\n");
        return 2;
    }
    printf("\napi_robustness: %u checks, %u passed, %u failed (%u of %u groups crashed or exited early)\n",
           pass + fail, pass, fail, crashed, ran);
    return fail == 0 ? 0 : 1;
}
