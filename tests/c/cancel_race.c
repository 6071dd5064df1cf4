/*
 * cancel_race.c - issue 9.7 item 3: a cancel is never lost.
 *
 * mk_source_cancel before mk_source_start (and mk_dest_cancel before
 * mk_dest_run) is remembered: start/run then return MK_ECANCELED at once.
 * Then a race, many times over: one thread cancels with zero delay while
 * another starts (runs). The switchover waits until the cancel returned,
 * so no round can be "too late" (the header's only reason left to refuse):
 * every cancel must be accepted and every migration end cancelled. Before
 * the fix the cancels that came before start got MK_ESTATE and those
 * migrations ran to the end.
 */
#include "test_util.h"

#include <pthread.h>
#include <sys/socket.h>

#define SIZE (256u << 10)
#define ROUNDS 40

struct pair {
    struct t_guest g; /* first: the vCPU callbacks get the pair */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int cancel_returned;
    unsigned char *dmem;
    int sv[2];
    mk_source *s;
    mk_dest *d;
    pthread_barrier_t go;
    int start_rc, cancel_rc, dest_rc;
};

/* The switchover waits until the cancel returned: no round can complete
 * before its cancel was decided, so "too late" is never a valid answer and
 * every cancel must be accepted and end the migration. */
static int pause_after_cancel(void *user)
{
    struct pair *p = user;
    pthread_mutex_lock(&p->mu);
    while (!p->cancel_returned)
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    return t_pause(user);
}

static void cancel_returned(struct pair *p)
{
    pthread_mutex_lock(&p->mu);
    p->cancel_returned = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static void pair_setup(struct pair *p)
{
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    t_guest_init(&p->g, SIZE);
    p->dmem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p->dmem == MAP_FAILED || socketpair(AF_UNIX, SOCK_STREAM, 0, p->sv) != 0) { perror("setup"); exit(2); }
    mk_source_config cfg;
    mk_source_config_init(&cfg);
    cfg.transport_fd = p->sv[0];
    mk_source_callbacks cb = t_guest_callbacks(&p->g);
    cb.pause_vcpus = pause_after_cancel;
    if (mk_source_create(&p->s, &cfg, &cb, NULL) != 0) { printf("%s\n", mk_last_error()); exit(2); }
    mk_region r = t_region(p->g.mem, SIZE);
    mk_source_add_region(p->s, &r, NULL);
    mk_dest_config dc;
    mk_dest_config_init(&dc);
    dc.transport_fd = p->sv[1];
    mk_dest_callbacks dcb;
    memset(&dcb, 0, sizeof dcb);
    dcb.struct_size = sizeof dcb;
    if (mk_dest_create(&p->d, &dc, &dcb) != 0) { printf("%s\n", mk_last_error()); exit(2); }
    r = t_region(p->dmem, SIZE);
    mk_dest_add_region(p->d, &r, NULL);
    pthread_barrier_init(&p->go, NULL, 2);
}

static void pair_teardown(struct pair *p)
{
    mk_source_destroy(p->s);
    mk_dest_destroy(p->d);
    close(p->sv[0]);
    close(p->sv[1]);
    munmap(p->g.mem, SIZE);
    munmap(p->dmem, SIZE);
    free(p->g.copy);
    pthread_barrier_destroy(&p->go);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
}

static int g_cancelled, g_refused;

static void *dest_thread(void *arg)
{
    struct pair *p = arg;
    p->dest_rc = mk_dest_run(p->d);
    return NULL;
}

static void *source_canceller(void *arg)
{
    struct pair *p = arg;
    pthread_barrier_wait(&p->go);
    p->cancel_rc = mk_source_cancel(p->s);
    cancel_returned(p);
    return NULL;
}

static void *dest_canceller(void *arg)
{
    struct pair *p = arg;
    pthread_barrier_wait(&p->go);
    p->cancel_rc = mk_dest_cancel(p->d);
    cancel_returned(p);
    return NULL;
}

static void cancel_before_start(void)
{
    struct pair p;
    pair_setup(&p);
    cancel_returned(&p);
    int rc = mk_source_cancel(p.s);
    CHECK(rc == 0, "mk_source_cancel before start is accepted (got %d: %s)", rc, rc ? mk_source_errmsg(p.s) : "");
    rc = mk_source_start(p.s);
    CHECK(rc == MK_ECANCELED, "then mk_source_start returns MK_ECANCELED (got %d: %s)", rc, mk_source_errmsg(p.s));
    int status = -1;
    rc = mk_source_wait(p.s, &status);
    CHECK(rc == MK_ECANCELED && status == MK_STATUS_CANCELLED, "and mk_source_wait: MK_ECANCELED, cancelled (got %d, %s)",
          rc, mk_status_name(status));
    CHECK(p.g.pauses == 0, "the guest was never paused (%d)", p.g.pauses);
    rc = mk_source_cancel(p.s);
    CHECK(rc == MK_ESTATE, "a second cancel after the end: MK_ESTATE (got %d)", rc);

    rc = mk_dest_cancel(p.d);
    CHECK(rc == 0, "mk_dest_cancel before run is accepted (got %d: %s)", rc, rc ? mk_dest_errmsg(p.d) : "");
    rc = mk_dest_run(p.d);
    CHECK(rc == MK_ECANCELED, "then mk_dest_run returns MK_ECANCELED at once (got %d: %s)", rc, mk_dest_errmsg(p.d));
    pair_teardown(&p);
}

/* One round; returns 1 if it kept the contract: the cancel accepted and
 * the migration ended cancelled (start or wait says MK_ECANCELED). */
static int source_round(int i)
{
    struct pair p;
    pair_setup(&p);
    pthread_t dt, ct;
    pthread_create(&dt, NULL, dest_thread, &p);
    pthread_create(&ct, NULL, source_canceller, &p);
    pthread_barrier_wait(&p.go);
    p.start_rc = mk_source_start(p.s);
    pthread_join(ct, NULL);
    int status = -1;
    int wait_rc = mk_source_wait(p.s, &status);
    /* A source cancelled before start never wrote: end the destination. */
    mk_dest_cancel(p.d);
    pthread_join(dt, NULL);
    int ok = p.cancel_rc == 0 && wait_rc == MK_ECANCELED && status == MK_STATUS_CANCELLED &&
             (p.start_rc == 0 || p.start_rc == MK_ECANCELED) && p.g.pauses == p.g.resumes;
    g_cancelled += p.cancel_rc == 0;
    g_refused += p.cancel_rc == MK_ESTATE;
    if (!ok)
        CHECK(0, "source round %d: cancel %d, start %d, wait %d (%s): %s", i, p.cancel_rc, p.start_rc, wait_rc,
              mk_status_name(status), mk_source_errmsg(p.s));
    pair_teardown(&p);
    return ok;
}

static int dest_round(int i)
{
    struct pair p;
    pair_setup(&p);
    mk_source_set_param(p.s, "completion-timeout", "10000");
    pthread_t ct;
    pthread_create(&ct, NULL, dest_canceller, &p);
    mk_source_start(p.s);
    pthread_barrier_wait(&p.go);
    p.dest_rc = mk_dest_run(p.d);
    pthread_join(ct, NULL);
    int status = -1;
    int wait_rc = mk_source_wait(p.s, &status);
    int ok = p.cancel_rc == 0 && p.dest_rc == MK_ECANCELED && wait_rc != 0 && p.g.pauses == p.g.resumes;
    if (!ok)
        CHECK(0, "dest round %d: cancel %d, run %d (%s), source %d", i, p.cancel_rc, p.dest_rc, mk_dest_errmsg(p.d),
              wait_rc);
    pair_teardown(&p);
    return ok;
}

/* "race": only the races (to run them alone against an older library). */
int main(int argc, char **argv)
{
    t_name = "cancel_race";
    signal(SIGPIPE, SIG_IGN);
    t_hang_bound(120);
    if (argc < 2 || strcmp(argv[1], "race") != 0)
        cancel_before_start();
    int good = 0;
    for (int i = 0; i < ROUNDS; i++)
        good += source_round(i);
    CHECK(good == ROUNDS, "source: %d of %d zero-delay cancels racing mk_source_start kept the contract (%d cancelled, %d refused as too late)",
          good, ROUNDS, g_cancelled, g_refused);
    good = 0;
    for (int i = 0; i < ROUNDS; i++)
        good += dest_round(i);
    CHECK(good == ROUNDS, "destination: %d of %d zero-delay cancels racing mk_dest_run kept the contract", good, ROUNDS);
    return t_done();
}
