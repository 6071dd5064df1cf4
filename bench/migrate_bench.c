/*
 * migrate_bench.c - how close does a MigrationKit migration get to the
 * physical limit of the channel it runs on? Every figure is a ratio
 * library time / raw time, both measured in the same run, interleaved
 * (raw then library on even runs, library then raw on odd ones) so machine
 * noise hits both alike. Median of the runs.
 *
 * Cases (a guest of MiB MiB, idle: nothing is written during the migration):
 *
 *   tcp, unix    two processes over TCP loopback or a Unix socket. This
 *                process sends; the receiver is a child process (fork) with
 *                memory it maps fresh for each run.
 *                raw:     write() the non-zero buffer in 4 MiB pieces; the
 *                         receiver read()s straight into its fresh memory.
 *                library: mk_source over the socket; the receiver runs
 *                         mk_dest into the fresh memory (MK_REGION_FRESH).
 *   pair         the same in one process over a socketpair, the receiver
 *                on a thread.
 *   ...+prefault the receiver's memory faulted in before the first byte
 *                (raw: MADV_POPULATE_WRITE; library: mk_dest_prefault);
 *                that time is listed apart and not counted.
 *   tcp+pf+auth  tcp+prefault with an authenticated stream (auth_key on both
 *                sides: a copy and HMAC-SHA-256 of every byte on each side)
 *                against the same raw copy: the price of authentication.
 *   zero         an all-zero guest, in process over a socketpair into fresh
 *                memory, against a raw scan of the same buffer (OR of words).
 *
 * A third baseline, raw+check ("chk"), is the raw copy plus the per-page
 * check the library's stream carries, done the library's way but with
 * nothing else: the sender zero-checks and MKH-32-hashes each 1 MiB before
 * writing it, the receiver hashes each page in place right after reading
 * it, and the two sums of check values are compared at the end. lib/chk is
 * then what the library costs beyond the integrity it promises; chk/raw is
 * what that integrity costs on this machine. (page_hash.c is the library's
 * own code, compiled into this program; it is not part of the C API.)
 * MKBENCH_CHECK_AFTER=1 makes the raw+check sender hash each 1 MiB after
 * writing it instead, while the kernel's copy has left it in cache: what the
 * check would cost if the stream put the check values after the data.
 *
 * Time runs from just before the sender's first write (raw) or
 * mk_source_start (library) to the receiver having every byte in place
 * (raw: its last read returned; library: mk_dest_run returned, ack sent).
 * Afterwards, untimed, the receiver's memory is checked against the source.
 *
 * Usage: migrate_bench [MiB] [runs] [case-substring ...]
 *        (default 1024 MiB, 3 runs, every case)
 * Also:  migrate_bench MiB runs --only lib|raw CASE   (one side, to profile)
 */
#define _GNU_SOURCE
#include <migrationkit.h>

#include "cshim_hash.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* Raw read()/write() size. 4 MiB moved the most per second of the sizes
 * tried (256 KiB, 1, 4, 16 MiB, whole buffer) here. */
#define RAW_CHUNK ((size_t)4 << 20)
#define MAXRUNS 31

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* CPU time (user + system) of this process so far, all threads. */
static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static unsigned char *map_fresh(size_t size)
{
    unsigned char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap");
    return p;
}

/* The sender's guest: populated, and not inherited by receiver processes. */
static unsigned char *map_guest(size_t size)
{
    unsigned char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED)
        die("mmap");
    madvise(p, size, MADV_DONTFORK);
    return p;
}

/* Position-weighted word sum: what the receiver reports back. */
static uint64_t digest(const unsigned char *p, size_t size)
{
    const uint64_t *w = (const uint64_t *)p;
    uint64_t a = 0, b = 0;
    for (size_t i = 0; i < size / 8; i++) {
        a += w[i];
        b += a;
    }
    return a ^ (b * 0x9E3779B97F4A7C15ull);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *v, int n)
{
    double c[MAXRUNS];
    memcpy(c, v, (size_t)n * sizeof *v);
    qsort(c, (size_t)n, sizeof *c, cmp_double);
    return n % 2 ? c[n / 2] : (c[n / 2 - 1] + c[n / 2]) / 2;
}

/* ---- the receiving side ------------------------------------------------- */

/* The pre-shared key of the +auth cases (authenticated streams). */
static const unsigned char BENCH_KEY[32] = "migrate_bench pre-shared key 32";

/* What moves the bytes: */
enum kind { RAW, LIB, CHK };

struct receiver {
    int lib, prefault, auth, fd;
    int checked; /* raw+check: hash every page received */
    uint64_t check_sum;
    size_t size;
    unsigned char *mem;
    mk_dest *dest;
    uint64_t prefault_ns, done_ns, digest;
    double cpu; /* process CPU time spent receiving (child process only) */
    int rc;
};

/* Map fresh memory and, if asked, fault it in: before the clock starts. */
static void receiver_prepare(struct receiver *r)
{
    r->mem = map_fresh(r->size);
    r->rc = 0;
    r->prefault_ns = 0;
    if (r->lib) {
        mk_dest_config dc;
        mk_dest_config_init(&dc);
        dc.transport_fd = r->fd;
        if (r->auth) {
            dc.auth_key = BENCH_KEY;
            dc.auth_key_len = sizeof BENCH_KEY;
        }
        mk_dest_callbacks dcb = { .struct_size = sizeof dcb };
        if (mk_dest_create(&r->dest, &dc, &dcb) != 0) {
            fprintf(stderr, "mk_dest_create: %s\n", mk_last_error());
            exit(1);
        }
        mk_region reg;
        mk_region_init(&reg);
        reg.size = r->size;
        reg.host_addr = r->mem;
        reg.flags = MK_REGION_FRESH;
        if (mk_dest_add_region(r->dest, &reg, NULL) != 0) {
            fprintf(stderr, "mk_dest_add_region: %s\n", mk_dest_errmsg(r->dest));
            exit(1);
        }
    }
    if (r->prefault) {
        uint64_t t0 = now_ns();
        int rc = r->lib ? mk_dest_prefault(r->dest) : madvise(r->mem, r->size, MADV_POPULATE_WRITE);
        if (rc != 0) {
            fprintf(stderr, "prefault failed (%d)\n", rc);
            exit(1);
        }
        r->prefault_ns = now_ns() - t0;
    }
}

static void receiver_run(struct receiver *r)
{
    if (r->lib) {
        r->rc = mk_dest_run(r->dest);
        r->done_ns = now_ns();
        if (r->rc != 0)
            fprintf(stderr, "mk_dest_run: %s\n", mk_dest_errmsg(r->dest));
        mk_dest_destroy(r->dest);
        r->dest = NULL;
    } else {
        size_t got = 0, hashed = 0;
        r->check_sum = 0;
        while (got < r->size) {
            size_t want = r->size - got < RAW_CHUNK ? r->size - got : RAW_CHUNK;
            ssize_t n = read(r->fd, r->mem + got, want);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                r->rc = -1;
                break;
            }
            got += (size_t)n;
            /* Hash the pages this read completed, in place, while they are in cache. */
            for (; r->checked && hashed + 4096 <= got; hashed += 4096)
                r->check_sum += cshim_page_hash(r->mem + hashed);
        }
        r->done_ns = now_ns();
    }
}

static void receiver_finish(struct receiver *r)
{
    r->digest = digest(r->mem, r->size);
    munmap(r->mem, r->size);
}

static void *receiver_thread(void *arg)
{
    receiver_run(arg);
    return NULL;
}

/* ---- the sending side --------------------------------------------------- */

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

/* The sender's check pass of raw+check: the library's batch size. */
#define CHECK_BATCH ((size_t)1 << 20)

/* The sender's per-page pass: zero check, else MKH-32; summed. */
static void check_sum_pages(const unsigned char *p, size_t len, uint32_t *hashes, uint64_t *zero_mask, uint64_t *sum)
{
    cshim_pages_zero_or_hash(p, (int)(len / 4096), hashes, zero_mask);
    for (size_t i = 0; i < len / 4096; i++)
        *sum += hashes[i];
}

/* Send the guest; returns the time the sending started. `check_sum`
 * (raw+check only) gets the sum of the check values sent. */
static uint64_t send_guest(enum kind kind, int auth, int fd, unsigned char *src, size_t size, uint64_t *check_sum)
{
    if (kind != LIB) {
        static uint32_t hashes[CHECK_BATCH / 4096];
        static uint64_t zero_mask[CHECK_BATCH / 4096 / 64];
        size_t piece = kind == CHK ? CHECK_BATCH : RAW_CHUNK;
        int check_after = getenv("MKBENCH_CHECK_AFTER") != NULL;
        uint64_t t0 = now_ns();
        for (size_t off = 0; off < size;) {
            size_t want = size - off < piece ? size - off : piece;
            if (kind == CHK && !check_after)
                check_sum_pages(src + off, want, hashes, zero_mask, check_sum);
            for (size_t done = 0; done < want;) {
                ssize_t n = write(fd, src + off + done, want - done);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0)
                    die("write");
                done += (size_t)n;
            }
            if (kind == CHK && check_after)
                check_sum_pages(src + off, want, hashes, zero_mask, check_sum);
            off += want;
        }
        return t0;
    }
    mk_source_config sc;
    mk_source_config_init(&sc);
    sc.transport_fd = fd;
    if (auth) {
        sc.auth_key = BENCH_KEY;
        sc.auth_key_len = sizeof BENCH_KEY;
    }
    mk_source_callbacks cb = { .struct_size = sizeof cb, .get_dirty_log = no_dirt,
                               .pause_vcpus = nop, .resume_vcpus = nop };
    mk_source *s;
    if (mk_source_create(&s, &sc, &cb, NULL) != 0) {
        fprintf(stderr, "mk_source_create: %s\n", mk_last_error());
        exit(1);
    }
    mk_region r;
    mk_region_init(&r);
    r.size = size;
    r.host_addr = src;
    mk_source_add_region(s, &r, NULL);
    uint64_t t0 = now_ns();
    mk_source_start(s);
    if (mk_source_wait(s, NULL) != 0) {
        fprintf(stderr, "migration failed: %s\n", mk_source_errmsg(s));
        exit(1);
    }
    mk_source_destroy(s);
    return t0;
}

/* ---- channels ----------------------------------------------------------- */

enum chan { TCP, UNIX_SOCK, PAIR };

/* A connected pair: sv[0] the sender's end, sv[1] the receiver's. */
static void connect_pair(enum chan c, int sv[2])
{
    if (c == PAIR) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
            die("socketpair");
        return;
    }
    int lfd;
    if (c == TCP) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t al = sizeof a;
        lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 1) != 0 ||
            getsockname(lfd, (struct sockaddr *)&a, &al) != 0)
            die("tcp listen");
        sv[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(sv[0], (struct sockaddr *)&a, sizeof a) != 0)
            die("tcp connect");
    } else {
        struct sockaddr_un a = { .sun_family = AF_UNIX };
        /* abstract namespace: nothing to clean up */
        snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "migrate_bench.%d", (int)getpid());
        socklen_t al = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(a.sun_path + 1));
        lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, al) != 0 || listen(lfd, 1) != 0)
            die("unix listen");
        sv[0] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(sv[0], (struct sockaddr *)&a, al) != 0)
            die("unix connect");
    }
    sv[1] = accept(lfd, NULL, NULL);
    if (sv[1] < 0)
        die("accept");
    close(lfd);
}

struct outcome {
    double seconds, prefault_s, cpu_s;
};

static void write_all(int fd, const void *p, size_t n)
{
    if (write(fd, p, n) != (ssize_t)n)
        die("pipe write");
}

static void read_all(int fd, void *p, size_t n)
{
    if (read(fd, p, n) != (ssize_t)n) {
        fprintf(stderr, "receiver process died\n");
        exit(1);
    }
}

/* Profiling: with MKBENCH_PERF_CTL=FIFO, "enable"/"disable" go to a
 * `perf record --control=fifo:FIFO -D -1` session around each timed part. */
static void perf_ctl(const char *cmd)
{
    static int fd = -2;
    if (fd == -2) {
        const char *path = getenv("MKBENCH_PERF_CTL");
        fd = path ? open(path, O_WRONLY) : -1;
    }
    if (fd >= 0)
        write_all(fd, cmd, strlen(cmd));
}

/* One transfer of `src` (size bytes) by raw or library over channel c. */
static struct outcome transfer(enum chan c, enum kind kind, int prefault, int auth, unsigned char *src, size_t size,
                               uint64_t want)
{
    int sv[2];
    connect_pair(c, sv);
    int lib = kind == LIB;
    uint64_t sent_sum = 0;
    struct receiver r = { .lib = lib, .checked = kind == CHK, .prefault = prefault, .auth = auth, .fd = sv[1],
                          .size = size };
    uint64_t t0;
    double c0 = 0, cpu = 0;
    if (c == PAIR) {
        receiver_prepare(&r);
        c0 = cpu_s();
        pthread_t t;
        pthread_create(&t, NULL, receiver_thread, &r);
        perf_ctl("enable\n");
        t0 = send_guest(kind, auth, sv[0], src, size, &sent_sum);
        pthread_join(t, NULL);
        perf_ctl("disable\n");
        cpu = cpu_s() - c0; /* both sides: this process */
        receiver_finish(&r);
    } else {
        int rep[2];
        if (pipe(rep) != 0)
            die("pipe");
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            close(sv[0]);
            close(rep[0]);
            receiver_prepare(&r);
            write_all(rep[1], &r.prefault_ns, sizeof r.prefault_ns);
            double c0 = cpu_s();
            receiver_run(&r);
            r.cpu = cpu_s() - c0;
            receiver_finish(&r);
            write_all(rep[1], &r, sizeof r);
            _exit(0);
        }
        close(sv[1]);
        close(rep[1]);
        uint64_t ready;
        read_all(rep[0], &ready, sizeof ready); /* memory prepared */
        perf_ctl("enable\n");
        c0 = cpu_s();
        t0 = send_guest(kind, auth, sv[0], src, size, &sent_sum);
        cpu = cpu_s() - c0;
        perf_ctl("disable\n");
        read_all(rep[0], &r, sizeof r);
        cpu += r.cpu;
        close(rep[0]);
        int status;
        waitpid(pid, &status, 0);
    }
    close(sv[0]);
    if (c == PAIR)
        close(sv[1]);
    if (r.rc != 0 || r.digest != want || r.check_sum != sent_sum) {
        fprintf(stderr, "%s transfer failed, memory differs or check values differ (rc %d)\n",
                lib ? "library" : kind == CHK ? "raw+check" : "raw", r.rc);
        exit(1);
    }
    return (struct outcome){ (double)(r.done_ns - t0) / 1e9, (double)r.prefault_ns / 1e9, cpu };
}

static double raw_zero_scan(const unsigned char *p, size_t size)
{
    uint64_t t0 = now_ns();
    const uint64_t *w = (const uint64_t *)p;
    uint64_t acc = 0;
    for (size_t i = 0; i < size / 8; i++)
        acc |= w[i];
    double dt = (double)(now_ns() - t0) / 1e9;
    if (acc != 0)
        puts("zero buffer is not zero");
    return dt;
}

/* ---- cases -------------------------------------------------------------- */

struct bcase {
    const char *name;
    enum chan chan;
    int prefault, zero, auth;
    double raw[MAXRUNS], lib[MAXRUNS], pf_raw[MAXRUNS], pf_lib[MAXRUNS], cpu_raw[MAXRUNS], cpu_lib[MAXRUNS];
    double chk[MAXRUNS], cpu_chk[MAXRUNS];
};

static struct bcase cases[] = {
    { .name = "tcp", .chan = TCP, .prefault = 0, .zero = 0, .auth = 0 },
    { .name = "tcp+prefault", .chan = TCP, .prefault = 1, .zero = 0, .auth = 0 },
    { .name = "unix", .chan = UNIX_SOCK, .prefault = 0, .zero = 0, .auth = 0 },
    { .name = "unix+prefault", .chan = UNIX_SOCK, .prefault = 1, .zero = 0, .auth = 0 },
    { .name = "pair", .chan = PAIR, .prefault = 0, .zero = 0, .auth = 0 },
    { .name = "pair+prefault", .chan = PAIR, .prefault = 1, .zero = 0, .auth = 0 },
    { .name = "tcp+pf+auth", .chan = TCP, .prefault = 1, .zero = 0, .auth = 1 },
    { .name = "zero", .chan = PAIR, .prefault = 0, .zero = 1, .auth = 0 },
};
#define NCASES (sizeof cases / sizeof cases[0])

/* raw+check runs where the library carries page checks in the clear: not
 * for the zero guest (no pages) nor the authenticated stream (a MAC instead),
 * and not when only one side is measured. */
static int with_check(const struct bcase *c, int only)
{
    return !c->zero && !c->auth && only < 0;
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
    int runs = argc > 2 ? atoi(argv[2]) : 3;
    if (runs < 1 || runs > MAXRUNS)
        runs = 3;
    int only = -1; /* -1 both, 0 raw, 1 lib */
    int selected[NCASES];
    int nsel = 0;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            only = strcmp(argv[++i], "lib") == 0;
            continue;
        }
        for (size_t c = 0; c < NCASES; c++)
            if (strcmp(argv[i], cases[c].name) == 0)
                selected[nsel++] = (int)c;
    }
    if (nsel == 0)
        for (size_t c = 0; c < NCASES; c++)
            selected[nsel++] = (int)c;

    size_t size = mib << 20;
    unsigned char *src = map_guest(size), *zero = map_guest(size);
    for (size_t i = 0; i < size; i += 8)
        *(uint64_t *)(src + i) = i * 0x9E3779B97F4A7C15ull | 1;
    uint64_t want = digest(src, size), want_zero = digest(zero, size);

    printf("libmigrationkit %s, guest %zu MiB, median of %d interleaved runs\n\n", mk_version(), mib, runs);
    fflush(stdout);
    for (int i = 0; i < runs; i++) {
        for (int k = 0; k < nsel; k++) {
            struct bcase *c = &cases[selected[k]];
            int nkinds = with_check(c, only) ? 3 : 2;
            for (int side = 0; side < nkinds; side++) {
                /* Rotate the order from run to run: noise hits every kind alike. */
                enum kind kind = (enum kind)((side + i) % nkinds);
                if (only >= 0 && (kind == LIB) != only)
                    continue;
                if (c->zero && kind == RAW) {
                    double c0 = cpu_s();
                    c->raw[i] = raw_zero_scan(zero, size);
                    c->cpu_raw[i] = cpu_s() - c0;
                } else {
                    struct outcome o = transfer(c->chan, kind, c->prefault, c->auth && kind == LIB, c->zero ? zero : src,
                                                size, c->zero ? want_zero : want);
                    (kind == LIB ? c->lib : kind == CHK ? c->chk : c->raw)[i] = o.seconds;
                    (kind == LIB ? c->cpu_lib : kind == CHK ? c->cpu_chk : c->cpu_raw)[i] = o.cpu_s;
                    if (kind != CHK)
                        (kind == LIB ? c->pf_lib : c->pf_raw)[i] = o.prefault_s;
                }
            }
        }
    }

    double gb = (double)size / 1e9;
    printf("%-15s %8s %6s %8s %6s %7s | %8s %7s | %8s %8s %8s | %13s\n", "case", "raw", "GB/s", "library", "GB/s",
           "lib/raw", "raw+chk", "lib/chk", "raw cpu", "chk cpu", "lib cpu", "prefault r/l");
    for (int k = 0; k < nsel; k++) {
        struct bcase *c = &cases[selected[k]];
        double r = only == 1 ? 0 : median(c->raw, runs), l = only == 0 ? 0 : median(c->lib, runs);
        double cr = only == 1 ? 0 : median(c->cpu_raw, runs), cl = only == 0 ? 0 : median(c->cpu_lib, runs);
        char pf[32] = "-", chk[16] = "-", lchk[16] = "-", cchk[16] = "-";
        if (c->prefault)
            snprintf(pf, sizeof pf, "%.3f/%.3fs", median(c->pf_raw, runs), median(c->pf_lib, runs));
        if (with_check(c, only)) {
            double h = median(c->chk, runs);
            snprintf(chk, sizeof chk, "%.3fs", h);
            snprintf(lchk, sizeof lchk, "%.2f", l / h);
            snprintf(cchk, sizeof cchk, "%.3fs", median(c->cpu_chk, runs));
        }
        printf("%-15s %7.3fs %6.2f %7.3fs %6.2f %7.2f | %8s %7s | %7.3fs %8s %7.3fs | %13s\n", c->name, r,
               r > 0 ? gb / r : 0, l, l > 0 ? gb / l : 0, r > 0 ? l / r : 0, chk, lchk, cr, cchk, cl, pf);
    }
    printf("\nlib/raw = library time / raw time (1.00 = as fast as the raw baseline; target <= 1.15).\n"
           "raw+chk = the raw copy plus the library's per-page check (MKH-32 on both sides, sums compared);\n"
           "lib/chk = library time / raw+chk time: what the library costs beyond that check.\n"
           "cpu = CPU time (user + system) of sender and receiver together, same runs (medians).\n"
           "raw: write()/read() 4 MiB pieces, receiver reads into memory mapped fresh for each run (zero: OR of\n"
           "every word of the buffer). prefault = raw/library time to fault the receiver's memory in, not counted.\n");
    return 0;
}
