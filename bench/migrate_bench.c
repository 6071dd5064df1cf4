/*
 * migrate_bench.c - how close does a MigrationKit migration get to the raw
 * channel it runs on? Every figure is a ratio against a baseline measured in
 * the same run on the same machine:
 *
 *   channel   raw writev of the guest buffer over a socketpair vs the library
 *             migrating the same buffer (non-zero data, idle guest) over a
 *             socketpair: source engine + stream + destination loader;
 *   zero      a raw scan of a zeroed buffer (OR of every word) vs the library
 *             migrating an all-zero guest (zero detection + ZERO records);
 *   memcpy    memcpy of the buffer vs the destination's load path.
 *
 * Usage: migrate_bench [MiB] [runs]   (default 1024 MiB, 3 runs; median)
 */
#define _GNU_SOURCE
#include <migrationkit.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static unsigned char *map(size_t size)
{
    unsigned char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

/* ---- raw baselines ------------------------------------------------------ */

struct drain {
    int fd;
    size_t total;
    unsigned char *dst; /* NULL: read into a scratch buffer */
};

static void *drain_thread(void *arg)
{
    struct drain *d = arg;
    static unsigned char scratch[1 << 20];
    size_t got = 0;
    while (got < d->total) {
        unsigned char *to = d->dst ? d->dst + got : scratch;
        size_t want = d->total - got < sizeof scratch ? d->total - got : sizeof scratch;
        ssize_t n = read(d->fd, to, want);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return NULL;
}

/* writev the buffer in 1 MiB pieces (the library's batch size) while a
 * reader copies it into the destination buffer, as the loader does. */
static double raw_channel(unsigned char *src, unsigned char *dst, size_t size)
{
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    struct drain d = { sv[1], size, dst };
    pthread_t t;
    double t0 = now_s();
    pthread_create(&t, NULL, drain_thread, &d);
    for (size_t off = 0; off < size;) {
        struct iovec v = { src + off, size - off < (1 << 20) ? size - off : (1 << 20) };
        ssize_t n = writev(sv[0], &v, 1);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    pthread_join(t, NULL);
    double dt = now_s() - t0;
    close(sv[0]);
    close(sv[1]);
    return dt;
}

static double raw_zero_scan(const unsigned char *p, size_t size)
{
    double t0 = now_s();
    const uint64_t *w = (const uint64_t *)p;
    uint64_t acc = 0;
    for (size_t i = 0; i < size / 8; i++)
        acc |= w[i];
    double dt = now_s() - t0;
    if (acc == 42)
        puts("");
    return dt;
}

static double raw_memcpy(unsigned char *dst, const unsigned char *src, size_t size)
{
    double t0 = now_s();
    memcpy(dst, src, size);
    return now_s() - t0;
}

/* ---- the library -------------------------------------------------------- */

static int no_dirt(void *user, uint32_t region, uint64_t *bitmap, uint64_t npages)
{
    (void)user; (void)region; (void)bitmap; (void)npages;
    return 0;
}

static int nop(void *user)
{
    (void)user;
    return 0;
}

struct dest_run {
    mk_dest *d;
    int rc;
};

static void *dest_thread(void *arg)
{
    struct dest_run *r = arg;
    r->rc = mk_dest_run(r->d);
    return NULL;
}

static double library(unsigned char *src, unsigned char *dst, size_t size, mk_stats *out)
{
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    mk_region r;
    mk_region_init(&r);
    r.size = size;

    mk_dest_config dc;
    mk_dest_config_init(&dc);
    dc.transport_fd = sv[1];
    mk_dest_callbacks dcb = { .struct_size = sizeof dcb };
    struct dest_run dr = { NULL, 0 };
    mk_dest_create(&dr.d, &dc, &dcb);
    r.host_addr = dst;
    mk_dest_add_region(dr.d, &r, NULL);

    mk_source_config sc;
    mk_source_config_init(&sc);
    sc.transport_fd = sv[0];
    mk_source_callbacks cb = { .struct_size = sizeof cb, .get_dirty_log = no_dirt,
                               .pause_vcpus = nop, .resume_vcpus = nop };
    mk_source *s;
    mk_source_create(&s, &sc, &cb, NULL);
    r.host_addr = src;
    mk_source_add_region(s, &r, NULL);

    pthread_t t;
    double t0 = now_s();
    pthread_create(&t, NULL, dest_thread, &dr);
    mk_source_start(s);
    int rc = mk_source_wait(s, NULL);
    pthread_join(t, NULL);
    double dt = now_s() - t0;
    if (rc != 0 || dr.rc != 0) {
        fprintf(stderr, "migration failed: %s / %s\n", mk_source_errmsg(s), mk_dest_errmsg(dr.d));
        exit(1);
    }
    out->struct_size = sizeof *out;
    mk_source_get_stats(s, out);
    mk_source_destroy(s);
    mk_dest_destroy(dr.d);
    close(sv[0]);
    close(sv[1]);
    return dt;
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
    int runs = argc > 2 ? atoi(argv[2]) : 3;
    if (runs < 1 || runs > 15)
        runs = 3;
    size_t size = mib << 20;
    printf("libmigrationkit %s, guest %zu MiB, median of %d runs\n\n", mk_version(), mib, runs);

    unsigned char *src = map(size), *dst = map(size), *zero = map(size);
    for (size_t i = 0; i < size; i += 8)
        *(uint64_t *)(src + i) = i * 0x9E3779B97F4A7C15ull | 1;

    double raw_ch[15], lib_ch[15], raw_z[15], lib_z[15], cpy[15];
    mk_stats st;
    for (int i = 0; i < runs; i++) {
        raw_ch[i] = raw_channel(src, dst, size);
        memset(dst, 0, size);
        lib_ch[i] = library(src, dst, size, &st);
        if (memcmp(src, dst, size) != 0) {
            fprintf(stderr, "destination differs from source\n");
            return 1;
        }
        raw_z[i] = raw_zero_scan(zero, size);
        memset(dst, 0, size);
        lib_z[i] = library(zero, dst, size, &st);
        cpy[i] = raw_memcpy(dst, src, size);
    }
    double gb = (double)size / 1e9;
    double rc = median(raw_ch, runs), lc = median(lib_ch, runs);
    double rz = median(raw_z, runs), lz = median(lib_z, runs), mc = median(cpy, runs);
    printf("%-46s %9s %10s %7s\n", "measurement", "time", "GB/s", "ratio");
    printf("%-46s %8.3fs %10.2f %7s\n", "raw: writev 1 MiB pieces over socketpair", rc, gb / rc, "1.00");
    printf("%-46s %8.3fs %10.2f %7.2f\n", "library: migrate non-zero guest, socketpair", lc, gb / lc, rc / lc);
    printf("%-46s %8.3fs %10.2f %7s\n", "raw: scan zeroed buffer (OR of words)", rz, gb / rz, "1.00");
    printf("%-46s %8.3fs %10.2f %7.2f\n", "library: migrate all-zero guest, socketpair", lz, gb / lz, rz / lz);
    printf("%-46s %8.3fs %10.2f %7s\n", "raw: memcpy", mc, gb / mc, "-");
    printf("\nzero guest on the wire: %llu bytes for %zu MiB (%llu zero pages)\n",
           (unsigned long long)st.ram_transferred, mib, (unsigned long long)st.ram_duplicate);
    printf("ratio = baseline time / library time (1.00 = as fast as the raw baseline)\n");
    return 0;
}
