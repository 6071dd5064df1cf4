/*
 * test_util.h - the few helpers the small C tests share: a failure counter,
 * a hang bound (alarm: a test that would hang fails instead), a guest
 * whose vCPU callbacks count pauses and resumes, and the first steps of a
 * hand-written destination.
 */
#ifndef MK_TEST_UTIL_H
#define MK_TEST_UTIL_H

#define _GNU_SOURCE
#include <migrationkit.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static int t_failures;
static const char *t_name = "test";

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        int ok_ = (cond) ? 1 : 0;                                            \
        printf("%s %s: ", ok_ ? "ok  " : "FAIL", t_name);                    \
        printf(__VA_ARGS__);                                                 \
        printf("\n");                                                        \
        fflush(stdout);                                                      \
        if (!ok_)                                                            \
            t_failures++;                                                    \
    } while (0)

static inline void t_on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "FAIL: hung (hang bound reached)\n";
    if (write(2, msg, sizeof msg - 1) < 0) { /* nothing left to do */ }
    _exit(1);
}

/* A generous bound for a step that would hang forever without the fix. */
static inline void t_hang_bound(unsigned seconds)
{
    signal(SIGALRM, t_on_alarm);
    alarm(seconds);
}

struct t_guest {
    unsigned char *mem, *copy;
    size_t size;
    int pauses, resumes;
};

static inline int t_pause(void *u) { ((struct t_guest *)u)->pauses++; return 0; }
static inline int t_resume(void *u) { ((struct t_guest *)u)->resumes++; return 0; }
static inline int t_no_dirt(void *u, uint32_t r, uint64_t *b, uint64_t n) { (void)u; (void)r; (void)b; (void)n; return 0; }
static inline int t_kick(void *u, uint32_t v) { (void)u; (void)v; return 0; }

/* `size` bytes of non-zero pages (sent in full) and a copy to compare. */
static inline void t_guest_init(struct t_guest *g, size_t size)
{
    memset(g, 0, sizeof *g);
    g->size = size;
    g->mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    g->copy = malloc(size);
    if (g->mem == MAP_FAILED || !g->copy) { perror("guest memory"); exit(2); }
    for (size_t i = 0; i < size; i++)
        g->mem[i] = (unsigned char)(i * 13 + (i >> 12)) | 1;
    memcpy(g->copy, g->mem, size);
}

/* Give the guest's memory back (LeakSanitizer in `make sanitize` checks). */
static inline void t_guest_free(struct t_guest *g)
{
    munmap(g->mem, g->size);
    free(g->copy);
    g->mem = NULL;
    g->copy = NULL;
}

static inline mk_source_callbacks t_guest_callbacks(struct t_guest *g)
{
    mk_source_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.struct_size = sizeof cb;
    cb.user = g;
    cb.get_dirty_log = t_no_dirt;
    cb.pause_vcpus = t_pause;
    cb.resume_vcpus = t_resume;
    cb.kick_vcpu = t_kick;
    return cb;
}

static inline mk_region t_region(void *host, size_t size)
{
    mk_region r;
    mk_region_init(&r);
    r.host_addr = host;
    r.size = size;
    return r;
}

/* After a failure or cancel: the guest runs on the source, unthrottled,
 * its memory as it was. */
static inline void t_check_guest_left_running(mk_source *s, struct t_guest *g, const char *what)
{
    mk_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    mk_source_get_stats(s, &st);
    CHECK(g->pauses == g->resumes, "%s: vCPUs running (pauses %d, resumes %d)", what, g->pauses, g->resumes);
    CHECK(st.cpu_throttle_percentage == 0, "%s: no throttle left (%u %%)", what, st.cpu_throttle_percentage);
    CHECK(memcmp(g->mem, g->copy, g->size) == 0, "%s: guest memory intact", what);
}

/* CRC-32C, bitwise: enough for one hello frame. */
static inline uint32_t t_crc32c(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
}

/* Play a destination's first steps on `fd`: read the stream header of a
 * one-region source (28 + 24 bytes) and answer with a hello frame, so
 * that the source starts sending pages. */
static inline void t_fake_dest_accept_header(int fd)
{
    unsigned char hdr[28 + 24];
    size_t got = 0;
    while (got < sizeof hdr) {
        ssize_t n = read(fd, hdr + got, sizeof hdr - got);
        if (n <= 0) { perror("fake destination read"); exit(2); }
        got += (size_t)n;
    }
    unsigned char hello[24] = { 'M', 'K', 'H', 'I' };
    uint32_t crc = t_crc32c(hello, 20);
    memcpy(hello + 20, &crc, 4); /* little-endian host */
    if (write(fd, hello, sizeof hello) != (ssize_t)sizeof hello) { perror("hello"); exit(2); }
}

static inline int t_done(void)
{
    printf("%s: %s (%d failure%s)\n", t_name, t_failures ? "FAILED" : "passed", t_failures, t_failures == 1 ? "" : "s");
    return t_failures ? 1 : 0;
}

#endif
