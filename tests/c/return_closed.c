/*
 * return_closed.c - a destination that closes its return direction (here
 * right after its hello) can never acknowledge. The source must fail then,
 * MK_ETRANSPORT with the guest never paused, rather than pause it, send
 * END and be left undecided with its vCPUs paused (tests/faults FINDINGS
 * item 2). With MK_SOURCE_NO_ACK nothing is awaited on the way back, and
 * the migration completes as before.
 */
#include "test_util.h"

#include <pthread.h>
#include <sys/socket.h>

#define SIZE (16u << 20)

/* A destination that accepts the header, says hello, shuts its sending
 * side down and goes on reading whatever comes, until the end. */
static void *hello_then_close_return(void *arg)
{
    int fd = *(int *)arg;
    unsigned char buf[1 << 16];
    t_fake_dest_accept_header(fd);
    shutdown(fd, SHUT_WR);
    while (read(fd, buf, sizeof buf) > 0) {
    }
    return NULL;
}

static void run_case(const char *what, uint32_t flags)
{
    struct t_guest g;
    t_guest_init(&g, SIZE);
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) { perror("socketpair"); exit(2); }
    mk_source_config cfg;
    mk_source_config_init(&cfg);
    cfg.transport_fd = fds[0];
    cfg.flags = flags;
    cfg.ack_timeout_ms = 120000; /* far beyond the hang bound: not what ends it */
    mk_source_callbacks cb = t_guest_callbacks(&g);
    mk_source *s;
    if (mk_source_create(&s, &cfg, &cb, NULL) != 0) { printf("create: %s\n", mk_last_error()); exit(2); }
    mk_region r = t_region(g.mem, SIZE);
    mk_source_add_region(s, &r, NULL);
    pthread_t dest;
    pthread_create(&dest, NULL, hello_then_close_return, &fds[1]);

    t_hang_bound(20);
    CHECK(mk_source_start(s) == 0, "%s: start", what);
    int status = -1;
    int rc = mk_source_wait(s, &status);
    alarm(0);
    const char *msg = mk_source_errmsg(s);
    if (flags & MK_SOURCE_NO_ACK) {
        CHECK(rc == 0 && status == MK_STATUS_COMPLETED, "%s: completes, nothing awaited on the way back (%d, %s: %s)",
              what, rc, mk_status_name(status), msg);
    } else {
        CHECK(rc == MK_ETRANSPORT && status == MK_STATUS_FAILED, "%s: fails MK_ETRANSPORT (%d, %s: %s)", what, rc,
              mk_status_name(status), msg);
        CHECK(g.pauses == 0, "%s: before any pause (%d pauses)", what, g.pauses);
        CHECK(strncmp(msg, "pass ", 5) == 0 && strstr(msg, "closed the return channel") != NULL,
              "%s: errmsg names the pass and the cause: \"%s\"", what, msg);
        t_check_guest_left_running(s, &g, what);
    }
    mk_source_destroy(s);
    close(fds[0]); /* the VMM closes the fd: the fake destination's read ends */
    pthread_join(dest, NULL);
    close(fds[1]);
    t_guest_free(&g);
}

int main(void)
{
    t_name = "return_closed";
    signal(SIGPIPE, SIG_IGN);
    run_case("return direction closed after the hello", 0);
    run_case("return direction closed after the hello, MK_SOURCE_NO_ACK", MK_SOURCE_NO_ACK);
    return t_done();
}
