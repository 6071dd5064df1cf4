/*
 * auth.c - authenticated streams (mk_*_config.auth_key), end to end in one
 * process over real sockets, with a relay thread between source and
 * destination that can record the stream, replay it or damage it.
 *
 * What a VMM relies on, each checked here:
 *   - same key on both sides: the migration completes, memory equal, while
 *     a writer keeps dirtying the guest;
 *   - a key on one side only, or different keys: the destination refuses
 *     with MK_EAUTH, its guest memory is untouched (still all zero), the
 *     source fails and its guest runs on (resumed, memory intact);
 *   - a stream recorded from a successful migration and replayed to a new
 *     destination with the same key: refused, memory untouched;
 *   - one byte changed in flight: refused;
 *   - keys that are too short or NULL with a length: MK_EINVAL at create.
 * The test fails on an alarm instead of hanging.
 */
#define _GNU_SOURCE
#include <migrationkit.h>

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define SIZE (32u << 20)
#define PAGES (SIZE / 4096)
#define WORDS (PAGES / 64)

static int failures;
#define CHECK(cond, ...) do { \
    if (cond) { printf("ok   "); } else { printf("FAIL "); failures++; } \
    printf(__VA_ARGS__); printf("\n"); } while (0)

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "FAIL auth: a migration hung\n";
    if (write(2, msg, sizeof msg - 1) < 0) { /* nothing left to do */ }
    _exit(1);
}

/* ---- a guest: memory, a writer that dirties it, a dirty log ---- */

struct guest {
    unsigned char *mem;
    _Atomic uint64_t dirty[WORDS];
    atomic_int paused, stop, pauses, resumes;
    pthread_t writer;
};

static void *writer(void *arg)
{
    struct guest *g = arg;
    uint64_t x = 88172645463325252ull;
    while (!atomic_load(&g->stop)) {
        if (atomic_load(&g->paused)) { usleep(200); continue; }
        for (int i = 0; i < 64; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            uint64_t page = x % PAGES;
            g->mem[page * 4096 + (x >> 40) % 4096] = (unsigned char)x;
            atomic_fetch_or(&g->dirty[page / 64], 1ull << (page % 64));
        }
        usleep(100);
    }
    return NULL;
}

static int get_dirty_log(void *user, uint32_t region, uint64_t *bitmap, uint64_t npages)
{
    struct guest *g = user;
    (void)region;
    for (uint64_t w = 0; w < (npages + 63) / 64; w++) bitmap[w] |= atomic_exchange(&g->dirty[w], 0);
    return 0;
}

static int pause_vcpus(void *user)
{
    struct guest *g = user;
    atomic_store(&g->paused, 1);
    atomic_fetch_add(&g->pauses, 1);
    usleep(1000); /* let the writer leave its batch */
    return 0;
}

static int resume_vcpus(void *user)
{
    struct guest *g = user;
    atomic_store(&g->paused, 0);
    atomic_fetch_add(&g->resumes, 1);
    return 0;
}

static void *map(void)
{
    void *p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    return p;
}

static int all_zero(const unsigned char *p)
{
    for (size_t i = 0; i < SIZE; i += 8)
        if (*(const uint64_t *)(p + i) != 0) return 0;
    return 1;
}

/* ---- the relay: source <-> relay <-> destination ---- */

struct relay {
    int a, b;                 /* a: the source's peer, b: the destination's */
    unsigned char *record;    /* source -> destination bytes, if recording */
    size_t recorded, cap;
    long flip_at;             /* >= 0: xor one byte at this stream offset */
    size_t forwarded;
};

static int send_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void *relay_run(void *arg)
{
    struct relay *r = arg;
    unsigned char buf[1 << 16];
    struct pollfd p[2] = { { .fd = r->a, .events = POLLIN }, { .fd = r->b, .events = POLLIN } };
    int open_a = 1, open_b = 1;
    while (open_a || open_b) {
        if (poll(p, 2, -1) < 0) break;
        if (open_a && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t n = recv(r->a, buf, sizeof buf, 0);
            if (n <= 0) { shutdown(r->b, SHUT_WR); open_a = 0; p[0].fd = -1; }
            else {
                if (r->flip_at >= 0 && (size_t)r->flip_at >= r->forwarded && (size_t)r->flip_at < r->forwarded + (size_t)n)
                    buf[(size_t)r->flip_at - r->forwarded] ^= 0x01;
                if (r->record && r->recorded + (size_t)n <= r->cap) {
                    memcpy(r->record + r->recorded, buf, (size_t)n);
                    r->recorded += (size_t)n;
                }
                r->forwarded += (size_t)n;
                if (send_all(r->b, buf, (size_t)n) != 0) { open_a = 0; p[0].fd = -1; shutdown(r->a, SHUT_RD); }
            }
        }
        if (open_b && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t n = recv(r->b, buf, sizeof buf, 0);
            if (n <= 0) { shutdown(r->a, SHUT_WR); open_b = 0; p[1].fd = -1; }
            else if (send_all(r->a, buf, (size_t)n) != 0) { open_b = 0; p[1].fd = -1; }
        }
    }
    return NULL;
}

/* ---- one migration ---- */

struct outcome {
    int src_rc, dst_rc;
    char src_msg[512], dst_msg[512];
    int memory_equal, dest_untouched, source_running;
};

struct dest_run { mk_dest *d; int fd; };

/* Like a VMM: run the destination, then hang up on a failure (the source
 * may still be writing; it learns the reason from the ack already sent). */
static void *dest_thread(void *arg)
{
    struct dest_run *r = arg;
    int rc = mk_dest_run(r->d);
    if (rc != 0) shutdown(r->fd, SHUT_RDWR);
    return (void *)(long)rc;
}

static const unsigned char KEY_A[33] = "0123456789abcdef0123456789abcdef";
static const unsigned char KEY_B[33] = "0123456789abcdef0123456789abcdeX";

/* Migrate a fresh guest through a relay; keys may be NULL. */
static struct outcome migrate(const unsigned char *src_key, const unsigned char *dst_key, struct relay *relay)
{
    struct outcome o;
    memset(&o, 0, sizeof o);
    struct guest *g = calloc(1, sizeof *g);
    g->mem = map();
    for (size_t i = 0; i < SIZE; i += 4096) g->mem[i] = (unsigned char)(i >> 12) | 1;
    unsigned char *dst = map();

    int s_side[2], d_side[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, s_side) || socketpair(AF_UNIX, SOCK_STREAM, 0, d_side)) {
        perror("socketpair"); exit(1);
    }
    relay->a = s_side[1];
    relay->b = d_side[0];
    pthread_t rt;
    pthread_create(&rt, NULL, relay_run, relay);

    mk_region r;
    mk_region_init(&r);
    r.guest_phys_addr = 0;
    r.size = SIZE;

    mk_dest_config dc;
    mk_dest_config_init(&dc);
    dc.transport_fd = d_side[1];
    dc.auth_key = dst_key;
    dc.auth_key_len = dst_key ? 32 : 0;
    mk_dest_callbacks dcb = { .struct_size = sizeof dcb };
    mk_dest *d;
    if (mk_dest_create(&d, &dc, &dcb) != 0) { fprintf(stderr, "dest: %s\n", mk_last_error()); exit(1); }
    r.host_addr = dst;
    mk_dest_add_region(d, &r, NULL);

    mk_source_config sc;
    mk_source_config_init(&sc);
    sc.transport_fd = s_side[0];
    sc.ack_timeout_ms = 5000;
    sc.auth_key = src_key;
    sc.auth_key_len = src_key ? 32 : 0;
    mk_source_callbacks cb = { .struct_size = sizeof cb, .user = g, .get_dirty_log = get_dirty_log,
                               .pause_vcpus = pause_vcpus, .resume_vcpus = resume_vcpus };
    mk_params params;
    mk_params_init(&params);
    params.downtime_limit_ms = 300;
    mk_source *s;
    if (mk_source_create(&s, &sc, &cb, &params) != 0) { fprintf(stderr, "source: %s\n", mk_last_error()); exit(1); }
    r.host_addr = g->mem;
    mk_source_add_region(s, &r, NULL);

    pthread_create(&g->writer, NULL, writer, g);
    pthread_t dt;
    struct dest_run dr = { d, d_side[1] };
    pthread_create(&dt, NULL, dest_thread, &dr);
    o.src_rc = mk_source_start(s);
    if (o.src_rc == 0) o.src_rc = mk_source_wait(s, NULL);
    void *drc;
    pthread_join(dt, &drc);
    o.dst_rc = (int)(long)drc;
    snprintf(o.src_msg, sizeof o.src_msg, "%s", o.src_rc ? mk_source_errmsg(s) : "completed");
    snprintf(o.dst_msg, sizeof o.dst_msg, "%s", o.dst_rc ? mk_dest_errmsg(d) : "loaded");
    /* A failed source resumed its guest: the writer runs on. */
    o.source_running = !atomic_load(&g->paused);
    atomic_store(&g->stop, 1);
    pthread_join(g->writer, NULL);
    o.memory_equal = memcmp(g->mem, dst, SIZE) == 0;
    o.dest_untouched = all_zero(dst);

    mk_source_destroy(s);
    mk_dest_destroy(d);
    close(s_side[0]);
    close(d_side[1]);
    pthread_join(rt, NULL);
    close(s_side[1]);
    close(d_side[0]);
    munmap(g->mem, SIZE);
    munmap(dst, SIZE);
    free(g);
    return o;
}

/* Feed recorded bytes to a new destination with `key`; return its outcome. */
static struct outcome replay(const unsigned char *bytes, size_t n, const unsigned char *key)
{
    struct outcome o;
    memset(&o, 0, sizeof o);
    unsigned char *dst = map();
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) { perror("socketpair"); exit(1); }
    mk_dest_config dc;
    mk_dest_config_init(&dc);
    dc.transport_fd = sv[1];
    dc.auth_key = key;
    dc.auth_key_len = 32;
    mk_dest_callbacks dcb = { .struct_size = sizeof dcb };
    mk_dest *d;
    if (mk_dest_create(&d, &dc, &dcb) != 0) { fprintf(stderr, "dest: %s\n", mk_last_error()); exit(1); }
    mk_region r;
    mk_region_init(&r);
    r.size = SIZE;
    r.host_addr = dst;
    mk_dest_add_region(d, &r, NULL);
    pthread_t dt;
    struct dest_run dr = { d, sv[1] };
    pthread_create(&dt, NULL, dest_thread, &dr);
    /* The recorded stream, as fast as the destination takes it; what it
     * sends back (a new nonce the recording knows nothing of) is ignored. */
    send_all(sv[0], bytes, n);
    shutdown(sv[0], SHUT_WR);
    void *drc;
    pthread_join(dt, &drc);
    o.dst_rc = (int)(long)drc;
    snprintf(o.dst_msg, sizeof o.dst_msg, "%s", o.dst_rc ? mk_dest_errmsg(d) : "loaded");
    o.dest_untouched = all_zero(dst);
    mk_dest_destroy(d);
    close(sv[0]);
    close(sv[1]);
    munmap(dst, SIZE);
    return o;
}

static void refused(const char *what, struct outcome o)
{
    CHECK(o.dst_rc == MK_EAUTH, "%s: destination refuses with MK_EAUTH (got %d: %s)", what, o.dst_rc, o.dst_msg);
    CHECK(o.dest_untouched, "%s: destination guest memory untouched (all zero)", what);
    CHECK(o.src_rc < 0, "%s: source fails (%d: %s)", what, o.src_rc, o.src_msg);
    CHECK(o.source_running, "%s: source guest running again after the failure", what);
}

static void create_checks(void)
{
    static const unsigned char short_key[9] = "12345678";
    mk_dest_config dc;
    mk_dest_config_init(&dc);
    dc.transport_fd = 0;
    mk_dest_callbacks dcb = { .struct_size = sizeof dcb };
    mk_dest *d = NULL;
    dc.auth_key = short_key;
    dc.auth_key_len = sizeof short_key - 1;
    int rc = mk_dest_create(&d, &dc, &dcb);
    CHECK(rc == MK_EINVAL && d == NULL && strstr(mk_last_error(), "16..1024"),
          "mk_dest_create with an 8-byte key: MK_EINVAL (%d: %s)", rc, mk_last_error());
    dc.auth_key = NULL;
    dc.auth_key_len = 32;
    rc = mk_dest_create(&d, &dc, &dcb);
    CHECK(rc == MK_EINVAL && d == NULL, "mk_dest_create with a NULL key of length 32: MK_EINVAL (%d: %s)", rc, mk_last_error());

    int p[2];
    if (pipe(p)) { perror("pipe"); exit(1); }
    mk_source_config sc;
    mk_source_config_init(&sc);
    sc.transport_fd = p[1];
    sc.auth_key = KEY_A;
    sc.auth_key_len = 32;
    mk_source_callbacks cb = { .struct_size = sizeof cb, .get_dirty_log = get_dirty_log,
                               .pause_vcpus = pause_vcpus, .resume_vcpus = resume_vcpus };
    mk_source *s = NULL;
    rc = mk_source_create(&s, &sc, &cb, NULL);
    CHECK(rc == MK_EINVAL && s == NULL && strstr(mk_last_error(), "return channel"),
          "mk_source_create with a key on a pipe (no return channel): MK_EINVAL (%d: %s)", rc, mk_last_error());
    close(p[0]);
    close(p[1]);
    CHECK(strcmp(mk_strerror(MK_EAUTH), "stream authentication failed") == 0, "mk_strerror(MK_EAUTH) = \"%s\"",
          mk_strerror(MK_EAUTH));
}

int main(void)
{
    signal(SIGALRM, on_alarm);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    alarm(120);
    create_checks();

    struct relay rec = { .flip_at = -1, .cap = 2 * (size_t)SIZE };
    rec.record = malloc(rec.cap);
    struct outcome ok = migrate(KEY_A, KEY_A, &rec);
    CHECK(ok.src_rc == 0 && ok.dst_rc == 0, "same key both sides: migration completes (source: %s; destination: %s)",
          ok.src_msg, ok.dst_msg);
    CHECK(ok.memory_equal, "same key both sides: memory equal while a writer dirtied the guest");

    struct relay plain = { .flip_at = -1 };
    refused("key on the destination only", migrate(NULL, KEY_A, &plain));
    struct relay one = { .flip_at = -1 };
    refused("key on the source only", migrate(KEY_A, NULL, &one));
    struct relay wrong = { .flip_at = -1 };
    refused("different keys", migrate(KEY_A, KEY_B, &wrong));

    /* Past the header (hundreds of bytes) and the first frame's length. */
    struct relay flip = { .flip_at = 4096 + 100 };
    struct outcome f = migrate(KEY_A, KEY_A, &flip);
    CHECK(f.dst_rc == MK_EAUTH && strstr(f.dst_msg, "failed its MAC"),
          "one byte changed in flight: MK_EAUTH (%d: %s)", f.dst_rc, f.dst_msg);
    CHECK(f.src_rc < 0 && f.source_running, "one byte changed in flight: source fails (%s) and its guest runs on", f.src_msg);

    CHECK(rec.recorded > SIZE / 2, "recorded %zu bytes of the successful stream", rec.recorded);
    struct outcome rp = replay(rec.record, rec.recorded, KEY_A);
    CHECK(rp.dst_rc == MK_EAUTH, "the recorded stream replayed to a new destination with the same key: MK_EAUTH (%d: %s)",
          rp.dst_rc, rp.dst_msg);
    CHECK(rp.dest_untouched, "replayed stream: destination guest memory untouched (all zero)");
    free(rec.record);

    printf("%s auth: %d failure(s)\n", failures ? "FAIL" : "ok  ", failures);
    return failures ? 1 : 0;
}
