/*
 * errmsg_contract.c - issue 9.7 item 8: mk_source_errmsg / mk_dest_errmsg
 * keep the migration's own failure. Before the migration ended they give
 * the last failing call on the handle; once it failed or was cancelled,
 * its message stays, whatever fails later (a late cancel, a second start):
 * those calls' messages go to mk_last_error() of the calling thread.
 */
#include "test_util.h"

#include <sys/socket.h>

static int write_fails(void *u, const mk_iovec *iov, int n) { (void)u; (void)iov; (void)n; return -5; }
static int read_fails(void *u, void *b, size_t cap, size_t *got) { (void)u; (void)b; (void)cap; (void)got; return -3; }

int main(void)
{
    t_name = "errmsg_contract";
    struct t_guest g;
    t_guest_init(&g, 1u << 20);
    mk_source_config cfg;
    mk_source_config_init(&cfg);
    mk_source_callbacks cb = t_guest_callbacks(&g);
    cb.write = write_fails;
    mk_source *s;
    if (mk_source_create(&s, &cfg, &cb, NULL) != 0) { printf("%s\n", mk_last_error()); return 2; }

    /* Before the migration: the last failing call. */
    int rc = mk_source_set_param(s, "no-such-parameter", "1");
    CHECK(rc == MK_EINVAL && strstr(mk_source_errmsg(s), "no-such-parameter") != NULL,
          "before start, errmsg is the last failing call's: \"%s\"", mk_source_errmsg(s));

    mk_region r = t_region(g.mem, 1u << 20);
    mk_source_add_region(s, &r, NULL);
    mk_source_start(s);
    /* The migration fails on its own thread; wait for the terminal state
     * through the stats, not through mk_source_wait (which re-reports). */
    mk_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    t_hang_bound(20);
    do {
        usleep(1000);
        mk_source_get_stats(s, &st);
    } while (st.status != MK_STATUS_FAILED);
    usleep(20 * 1000);
    char failure[1024];
    snprintf(failure, sizeof failure, "%s", mk_source_errmsg(s));
    CHECK(strstr(failure, "write callback returned -5") != NULL,
          "once the migration failed, errmsg is its failure even before mk_source_wait: \"%s\"", failure);

    rc = mk_source_cancel(s);
    CHECK(rc == MK_ESTATE, "a late cancel is refused (got %d)", rc);
    CHECK(strcmp(mk_source_errmsg(s), failure) == 0,
          "the late cancel does not overwrite the migration's failure: \"%s\"", mk_source_errmsg(s));
    CHECK(strstr(mk_last_error(), "running") != NULL || mk_last_error()[0] != '\0',
          "the late cancel's own message is in mk_last_error(): \"%s\"", mk_last_error());
    rc = mk_source_start(s);
    CHECK(rc == MK_ESTATE && strcmp(mk_source_errmsg(s), failure) == 0,
          "a second start (%d) does not overwrite it either: \"%s\"", rc, mk_source_errmsg(s));
    rc = mk_source_wait(s, NULL);
    CHECK(rc == MK_ETRANSPORT && strcmp(mk_source_errmsg(s), failure) == 0,
          "mk_source_wait reports the migration's failure (%d): \"%s\"", rc, mk_source_errmsg(s));
    mk_source_cancel(s);
    CHECK(strcmp(mk_source_errmsg(s), failure) == 0, "and it is still there after the wait and another cancel");
    mk_source_destroy(s);

    /* The destination: a failed run's message survives a late cancel. */
    mk_dest_config dc;
    mk_dest_config_init(&dc);
    mk_dest_callbacks dcb;
    memset(&dcb, 0, sizeof dcb);
    dcb.struct_size = sizeof dcb;
    dcb.read = read_fails;
    mk_dest *d;
    if (mk_dest_create(&d, &dc, &dcb) != 0) { printf("%s\n", mk_last_error()); return 2; }
    mk_dest_add_region(d, &r, NULL);
    rc = mk_dest_run(d);
    snprintf(failure, sizeof failure, "%s", mk_dest_errmsg(d));
    CHECK(rc == MK_ETRANSPORT && strstr(failure, "read callback returned -3") != NULL, "dest run fails (%d): \"%s\"",
          rc, failure);
    rc = mk_dest_cancel(d);
    CHECK(rc == MK_ESTATE && strcmp(mk_dest_errmsg(d), failure) == 0,
          "a late mk_dest_cancel (%d) leaves the run's failure: \"%s\"", rc, mk_dest_errmsg(d));
    rc = mk_dest_ack(d, 0);
    CHECK(rc == MK_ESTATE && strcmp(mk_dest_errmsg(d), failure) == 0,
          "so does a refused mk_dest_ack (%d): \"%s\"", rc, mk_dest_errmsg(d));
    mk_dest_destroy(d);
    t_guest_free(&g);
    return t_done();
}
