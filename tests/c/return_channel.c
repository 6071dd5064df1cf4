/*
 * return_channel.c - regression test: a long stream over a socketpair with
 * a source that reads the return channel only now and then.
 *
 * The destination reports progress back while it loads. If those reports
 * could block it (a full return channel), the destination would stop
 * reading the stream while the source is blocked writing it: both sides
 * wait forever. An idle 128 MiB guest of non-zero pages did exactly that
 * (pre-faulted memory: a fast destination sends reports quickly enough to
 * fill the channel between two reads of the source). The test fails on an
 * alarm instead of hanging.
 */
#define _GNU_SOURCE
#include <migrationkit.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define SIZE (128u << 20)

static int no_dirt(void *u, uint32_t r, uint64_t *b, uint64_t n) { (void)u; (void)r; (void)b; (void)n; return 0; }
static int nop(void *u) { (void)u; return 0; }

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "FAIL return_channel: migration hung (return channel blocked the loader?)\n";
    if (write(2, msg, sizeof msg - 1) < 0) { /* nothing left to do */ }
    _exit(1);
}

static void *run_dest(void *arg)
{
    mk_dest *d = arg;
    long rc = mk_dest_run(d);
    return (void *)rc;
}

int main(void)
{
    signal(SIGALRM, on_alarm);
    alarm(60);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) { perror("socketpair"); return 1; }
    unsigned char *src = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    unsigned char *dst = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (src == MAP_FAILED || dst == MAP_FAILED) { perror("mmap"); return 1; }
    for (size_t i = 0; i < SIZE; i += 512)
        src[i] = (unsigned char)(i >> 9) | 1;

    mk_region r;
    mk_region_init(&r);
    r.size = SIZE;
    mk_dest_config dc;
    mk_dest_config_init(&dc);
    dc.transport_fd = sv[1];
    mk_dest_callbacks dcb = { .struct_size = sizeof dcb };
    mk_dest *d;
    if (mk_dest_create(&d, &dc, &dcb) != 0) { fprintf(stderr, "%s\n", mk_last_error()); return 1; }
    r.host_addr = dst;
    mk_dest_add_region(d, &r, NULL);

    mk_source_config sc;
    mk_source_config_init(&sc);
    sc.transport_fd = sv[0];
    mk_source_callbacks cb = { .struct_size = sizeof cb, .get_dirty_log = no_dirt,
                               .pause_vcpus = nop, .resume_vcpus = nop };
    mk_source *s;
    if (mk_source_create(&s, &sc, &cb, NULL) != 0) { fprintf(stderr, "%s\n", mk_last_error()); return 1; }
    r.host_addr = src;
    mk_source_add_region(s, &r, NULL);

    pthread_t t;
    pthread_create(&t, NULL, run_dest, d);
    mk_source_start(s);
    int rc = mk_source_wait(s, NULL);
    void *drc;
    pthread_join(t, &drc);
    int same = memcmp(src, dst, SIZE) == 0;
    printf("%s return_channel: source %s, destination %s, memory %s\n",
           rc == 0 && drc == NULL && same ? "ok  " : "FAIL",
           rc ? mk_source_errmsg(s) : "completed", drc ? mk_dest_errmsg(d) : "loaded",
           same ? "equal" : "DIFFERS");
    mk_source_destroy(s);
    mk_dest_destroy(d);
    return rc == 0 && drc == NULL && same ? 0 : 1;
}
