/*
 * quiet_stream.c - regression test: an idle guest must switch over once its
 * first pass is loaded, even when the destination's progress reports could
 * not all get through.
 *
 * The destination sends progress reports without ever blocking (a report
 * that does not fit in the return channel waits). When the channel was full
 * as the first pass ended, the last report stayed behind for good: the
 * destination was blocked reading a stream that had gone quiet, and the
 * source went on counting what the destination had long loaded as backlog,
 * with the ZERO pages in it at their load cost. The expected downtime stayed
 * above downtime-target and the migration never ended (seen: "0 KiB dirty,
 * expected downtime 151 ms > 50 ms" for two minutes). Here the return
 * channel is made tiny (SO_SNDBUF on the destination's end) so that reports
 * do get held back while the source writes, and the guest is mostly zero,
 * so that a stale backlog is expensive.
 */
#include "test_util.h"

#include <pthread.h>
#include <sys/socket.h>

#define SIZE (512u << 20)
#define SPARSE (32u << 20)

static void *run_dest(void *arg)
{
    return (void *)(long)mk_dest_run(arg);
}

int main(void)
{
    t_name = "quiet_stream";
    t_hang_bound(60);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) { perror("socketpair"); return 2; }
    int small = 1; /* the kernel rounds it up to its minimum */
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);

    struct t_guest g;
    memset(&g, 0, sizeof g);
    g.size = SIZE;
    /* One non-zero page in 16 over the first 32 MiB (the ZERO records in
     * between tell the source what a ZERO page costs the destination), then
     * 480 MiB of zero: the stream ends with one ZERO record for all of it,
     * about 60 ms of work on memory that is not declared fresh. */
    g.mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *dst = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g.mem == MAP_FAILED || dst == MAP_FAILED) { perror("mmap"); return 2; }
    for (size_t p = 0; p < SPARSE / 4096; p += 16)
        memset(g.mem + p * 4096, (int)(p | 1), 4096);

    mk_dest_config dc;
    mk_dest_config_init(&dc);
    dc.transport_fd = sv[1];
    mk_dest_callbacks dcb = { .struct_size = sizeof dcb };
    mk_dest *d;
    if (mk_dest_create(&d, &dc, &dcb) != 0) { fprintf(stderr, "%s\n", mk_last_error()); return 2; }
    mk_region r = t_region(dst, SIZE);
    mk_dest_add_region(d, &r, NULL);

    mk_source_config sc;
    mk_source_config_init(&sc);
    sc.transport_fd = sv[0];
    mk_source_callbacks cb = t_guest_callbacks(&g);
    mk_params params;
    mk_params_init(&params);
    params.downtime_limit_ms = 50;
    mk_source *s;
    if (mk_source_create(&s, &sc, &cb, &params) != 0) { fprintf(stderr, "%s\n", mk_last_error()); return 2; }
    r = t_region(g.mem, SIZE);
    mk_source_add_region(s, &r, NULL);

    pthread_t t;
    pthread_create(&t, NULL, run_dest, d);
    mk_source_start(s);
    /* An idle guest like this takes about a second here; a stuck backlog
     * never ends (the alarm above would say so). 15 s is the verdict. */
    int status = MK_STATUS_ACTIVE;
    for (int i = 0; i < 150; i++) {
        mk_stats st;
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        mk_source_get_stats(s, &st);
        status = (int)st.status;
        if (status != MK_STATUS_SETUP && status != MK_STATUS_ACTIVE && status != MK_STATUS_NONE && status != MK_STATUS_DEVICE) break;
        usleep(100 * 1000);
    }
    mk_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    mk_source_get_stats(s, &st);
    CHECK(status == MK_STATUS_COMPLETED,
          "idle guest switched over within 15 s (status %s, expected downtime %llu ms, backlog %llu bytes)",
          mk_status_name(status), (unsigned long long)st.expected_downtime_ms, (unsigned long long)st.backlog_bytes);
    if (status != MK_STATUS_COMPLETED) mk_source_cancel(s);
    mk_source_wait(s, NULL);
    void *drc;
    pthread_join(t, &drc);
    if (status == MK_STATUS_COMPLETED)
        CHECK(drc == NULL && memcmp(g.mem, dst, SIZE) == 0, "destination loaded, memory equal");
    mk_source_destroy(s);
    mk_dest_destroy(d);
    return t_done();
}
