/*
 * blocked_transport.c - issue 9.7 item 1: a destination that stops reading
 * must not hold the source forever. completion-timeout (strategy cancel)
 * and mk_source_cancel end a migration blocked writing to the built-in fd
 * transport, on a socket and on a pipe, and the guest is left running,
 * unthrottled, its memory intact. Likewise mk_dest_cancel ends a
 * destination waiting on a pipe nobody writes. Before the fix these waits
 * lasted for good (the socket+cancel case excepted: shutdown already
 * ended it); the hang bound (alarm) turns that into a failure.
 */
#include "test_util.h"

#include <pthread.h>
#include <sys/socket.h>

#define SIZE (16u << 20) /* far more than any socket or pipe buffer */

enum ending { BY_TIMEOUT, BY_CANCEL };

static void run_case(const char *what, int use_socket, int stall_after_hello, enum ending how)
{
    struct t_guest g;
    t_guest_init(&g, SIZE);
    int fds[2];
    int rc = use_socket ? socketpair(AF_UNIX, SOCK_STREAM, 0, fds) : pipe(fds);
    if (rc != 0) { perror("channel"); exit(2); }
    int src_fd = use_socket ? fds[0] : fds[1], peer = use_socket ? fds[1] : fds[0];

    mk_source_config cfg;
    mk_source_config_init(&cfg);
    cfg.transport_fd = src_fd;
    cfg.ack_timeout_ms = 120000; /* far beyond the hang bound: not what ends it */
    mk_source_callbacks cb = t_guest_callbacks(&g);
    mk_source *s;
    if (mk_source_create(&s, &cfg, &cb, NULL) != 0) { printf("create: %s\n", mk_last_error()); exit(2); }
    mk_region r = t_region(g.mem, SIZE);
    mk_source_add_region(s, &r, NULL);
    if (how == BY_TIMEOUT)
        mk_source_set_param(s, "completion-timeout", "500");

    t_hang_bound(20);
    CHECK(mk_source_start(s) == 0, "%s: start", what);
    if (stall_after_hello)
        t_fake_dest_accept_header(peer); /* then never reads again */
    if (how == BY_CANCEL) {
        usleep(300 * 1000); /* let it block; any state must end on cancel */
        rc = mk_source_cancel(s);
        CHECK(rc == 0, "%s: cancel accepted (%d %s)", what, rc, rc ? mk_source_errmsg(s) : "");
    }
    int status = -1;
    rc = mk_source_wait(s, &status);
    alarm(0);
    int want = how == BY_TIMEOUT ? MK_ETIMEDOUT : MK_ECANCELED;
    int want_status = how == BY_TIMEOUT ? MK_STATUS_FAILED : MK_STATUS_CANCELLED;
    CHECK(rc == want && status == want_status, "%s: ends with %s, %s (got %d, %s: %s)", what, mk_strerror(want),
          mk_status_name(want_status), rc, mk_status_name(status), mk_source_errmsg(s));
    t_check_guest_left_running(s, &g, what);
    mk_source_destroy(s);
    close(fds[0]);
    close(fds[1]);
    munmap(g.mem, SIZE);
    free(g.copy);
}

static void *cancel_dest_later(void *arg)
{
    usleep(300 * 1000); /* let it block in its read */
    int rc = mk_dest_cancel(arg);
    CHECK(rc == 0, "destination on a pipe: mk_dest_cancel accepted while it waits (%d)", rc);
    return NULL;
}

/* The destination's side of the same rule: mk_dest_cancel ends a run
 * waiting on a pipe nobody writes (shutdown cannot: it is not a socket). */
static void dest_pipe_cancel(void)
{
    int fds[2];
    if (pipe(fds) != 0) { perror("pipe"); exit(2); }
    unsigned char *mem = mmap(NULL, 1u << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mk_dest_config dc;
    mk_dest_config_init(&dc);
    dc.transport_fd = fds[0];
    mk_dest_callbacks dcb;
    memset(&dcb, 0, sizeof dcb);
    dcb.struct_size = sizeof dcb;
    mk_dest *d;
    if (mk_dest_create(&d, &dc, &dcb) != 0) { printf("%s\n", mk_last_error()); exit(2); }
    mk_region r = t_region(mem, 1u << 20);
    mk_dest_add_region(d, &r, NULL);
    t_hang_bound(20);
    pthread_t t;
    pthread_create(&t, NULL, cancel_dest_later, d);
    int rc = mk_dest_run(d);
    pthread_join(t, NULL);
    alarm(0);
    CHECK(rc == MK_ECANCELED, "destination on a pipe nobody writes: mk_dest_cancel ends mk_dest_run (%d: %s)", rc,
          mk_dest_errmsg(d));
    mk_dest_destroy(d);
    close(fds[0]);
    close(fds[1]);
    munmap(mem, 1u << 20);
}

/* With an argument N, only case N (0-5): each alone against an older
 * library, since a hang ends the whole run. */
int main(int argc, char **argv)
{
    t_name = "blocked_transport";
    signal(SIGPIPE, SIG_IGN);
    int only = argc > 1 ? atoi(argv[1]) : -1;
    if (only < 0 || only == 0)
        run_case("pipe nobody reads, completion-timeout 500 ms", 0, 0, BY_TIMEOUT);
    if (only < 0 || only == 1)
        run_case("socket, destination said hello then stopped reading, completion-timeout 500 ms", 1, 1, BY_TIMEOUT);
    if (only < 0 || only == 2)
        run_case("socket, destination never says hello, completion-timeout 500 ms", 1, 0, BY_TIMEOUT);
    if (only < 0 || only == 3)
        run_case("pipe nobody reads, cancel", 0, 0, BY_CANCEL);
    if (only < 0 || only == 4)
        run_case("socket, destination stopped reading, cancel", 1, 1, BY_CANCEL);
    if (only < 0 || only == 5)
        dest_pipe_cancel();
    return t_done();
}
