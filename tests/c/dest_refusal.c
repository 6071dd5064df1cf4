/*
 * dest_refusal.c - issue 9.7 item 2: when the destination refuses the
 * stream, the source learns at once, with the reason, over the built-in fd
 * transport: (a) a header that does not match the destination's regions,
 * (b) a destination that fails in the middle of the stream and keeps its
 * end of the socket open without reading (the source must read the
 * refusal off the return channel instead of blocking in its write).
 * ack_timeout_ms is far beyond the hang bound, so only the refusal can end
 * the source in time.
 */
#include "test_util.h"

#include <pthread.h>
#include <sys/socket.h>

#define SIZE (16u << 20)

struct dest_run {
    mk_dest *d;
    int fd;
    size_t fail_after; /* (b): the read callback fails after this many bytes */
    size_t read_so_far;
    int rc;
};

static int read_then_fail(void *user, void *buf, size_t cap, size_t *out_len)
{
    struct dest_run *r = user;
    if (r->read_so_far >= r->fail_after)
        return -1;
    ssize_t n = read(r->fd, buf, cap);
    if (n < 0)
        return -1;
    r->read_so_far += (size_t)n;
    *out_len = (size_t)n;
    return 0;
}

static int write_back(void *user, const mk_iovec *iov, int cnt)
{
    struct dest_run *r = user;
    for (int i = 0; i < cnt; i++)
        if (write(r->fd, iov[i].base, iov[i].len) != (ssize_t)iov[i].len)
            return -1;
    return 0;
}

static void *dest_thread(void *arg)
{
    struct dest_run *r = arg;
    r->rc = mk_dest_run(r->d);
    return NULL;
}

static void run_case(const char *what, size_t dest_size, size_t fail_after, int want_dest_rc, const char *reason)
{
    struct t_guest g;
    t_guest_init(&g, SIZE);
    unsigned char *dmem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0 || dmem == MAP_FAILED) { perror("setup"); exit(2); }

    static struct dest_run dr;
    memset(&dr, 0, sizeof dr);
    dr.fd = sv[1];
    dr.fail_after = fail_after;
    mk_dest_config dc;
    mk_dest_config_init(&dc);
    mk_dest_callbacks dcb;
    memset(&dcb, 0, sizeof dcb);
    dcb.struct_size = sizeof dcb;
    if (fail_after) {
        dcb.user = &dr;
        dcb.read = read_then_fail;
        dcb.write = write_back;
    } else {
        dc.transport_fd = sv[1];
    }
    if (mk_dest_create(&dr.d, &dc, &dcb) != 0) { printf("dest: %s\n", mk_last_error()); exit(2); }
    mk_region r = t_region(dmem, dest_size);
    mk_dest_add_region(dr.d, &r, NULL);

    mk_source_config cfg;
    mk_source_config_init(&cfg);
    cfg.transport_fd = sv[0];
    cfg.ack_timeout_ms = 120000;
    mk_source_callbacks cb = t_guest_callbacks(&g);
    mk_source *s;
    if (mk_source_create(&s, &cfg, &cb, NULL) != 0) { printf("create: %s\n", mk_last_error()); exit(2); }
    r = t_region(g.mem, SIZE);
    mk_source_add_region(s, &r, NULL);

    t_hang_bound(20);
    pthread_t t;
    pthread_create(&t, NULL, dest_thread, &dr);
    mk_source_start(s);
    pthread_join(t, NULL);
    /* The destination's end stays open and unread: only the refusal on the
     * return channel can tell the source. */
    int status = -1;
    int rc = mk_source_wait(s, &status);
    alarm(0);
    const char *msg = mk_source_errmsg(s);
    CHECK(dr.rc == want_dest_rc, "%s: destination fails with %s (got %d: %s)", what, mk_strerror(want_dest_rc), dr.rc,
          mk_dest_errmsg(dr.d));
    CHECK(rc == MK_EDEST && status == MK_STATUS_FAILED, "%s: source fails with MK_EDEST (got %d, %s)", what, rc,
          mk_status_name(status));
    CHECK(strstr(msg, reason) != NULL, "%s: the source's message gives the reason \"%s\": \"%s\"", what, reason, msg);
    t_check_guest_left_running(s, &g, what);
    mk_source_destroy(s);
    mk_dest_destroy(dr.d);
    close(sv[0]);
    close(sv[1]);
    munmap(g.mem, SIZE);
    munmap(dmem, SIZE);
    free(g.copy);
}

/* With an argument N, only case N (0-1), as in blocked_transport. */
int main(int argc, char **argv)
{
    t_name = "dest_refusal";
    signal(SIGPIPE, SIG_IGN);
    int only = argc > 1 ? atoi(argv[1]) : -1;
    if (only < 0 || only == 0)
        run_case("header refused (region size differs)", SIZE / 2, 0, MK_ERANGE, "outside registered guest memory");
    if (only < 0 || only == 1)
        run_case("destination failed mid-stream, socket left open", SIZE, 2u << 20, MK_ETRANSPORT, "transport failure");
    return t_done();
}
