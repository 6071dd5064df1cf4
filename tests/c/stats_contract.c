/*
 * stats_contract.c - issue 9.7 items 4 and 6 (the ram_total half; the
 * switchover_bandwidth half needs a migration with a provisional figure and
 * is a simulator test, SimStatsContractTests).
 *
 * 4: mk_source_stats_json's size query (buf NULL, cap 0) and MK_ENOSPC
 *    report the same size, the one a buffer needs: length + 1 (snprintf's
 *    return plus one), and a buffer of that size is enough.
 * 6: ram_total is the sum of the registered regions from mk_source_add_region
 *    on, before mk_source_start.
 */
#include "test_util.h"

int main(void)
{
    t_name = "stats_contract";
    struct t_guest g;
    t_guest_init(&g, 3u << 20);
    mk_source_config cfg;
    mk_source_config_init(&cfg);
    mk_source_callbacks cb = t_guest_callbacks(&g);
    cfg.transport_fd = 1; /* never written: the migration is not started */
    mk_source *s;
    if (mk_source_create(&s, &cfg, &cb, NULL) != 0) { printf("%s\n", mk_last_error()); return 2; }
    mk_region r = t_region(g.mem, 1u << 20);
    mk_source_add_region(s, &r, NULL);
    mk_region r2 = t_region(g.mem + (2u << 20), 1u << 20);
    r2.guest_phys_addr = 1ull << 32;
    mk_source_add_region(s, &r2, NULL);

    /* 6: ram_total before start. */
    mk_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    mk_source_get_stats(s, &st);
    CHECK(st.ram_total == (2u << 20), "ram_total before start is the registered 2 MiB (got %llu)",
          (unsigned long long)st.ram_total);
    CHECK(st.ram_remaining == 0 || st.ram_remaining == st.ram_total, "ram_remaining before start is 0 or all (%llu)",
          (unsigned long long)st.ram_remaining);

    /* 4: the size query and MK_ENOSPC agree, and the size is enough. */
    size_t query = 0, nospc = 0, len = 0;
    int rq = mk_source_stats_json(s, NULL, 0, &query);
    char small[4];
    int rs = mk_source_stats_json(s, small, sizeof small, &nospc);
    CHECK(rq == MK_ENOSPC, "stats_json(s, NULL, 0, &n) is a size query answered with MK_ENOSPC (got %d: %s)", rq,
          mk_source_errmsg(s));
    CHECK(rs == MK_ENOSPC, "stats_json with a 4-byte buffer: MK_ENOSPC (got %d)", rs);
    CHECK(query == nospc, "the size query (%zu) and MK_ENOSPC (%zu) report the same size", query, nospc);
    char *buf = malloc(nospc);
    int rc = mk_source_stats_json(s, buf, nospc, &len);
    CHECK(rc == 0 && len + 1 == nospc && strlen(buf) == len,
          "a buffer of the reported size is enough and the size is length + 1 (rc %d, len %zu, size %zu)", rc, len,
          nospc);
    rc = mk_source_stats_json(s, buf, nospc - 1, &len);
    CHECK(rc == MK_ENOSPC, "one byte less is MK_ENOSPC (got %d)", rc);
    rc = mk_source_stats_json(s, NULL, 100, &len);
    CHECK(rc == MK_EINVAL, "buf NULL with cap 100 is MK_EINVAL (got %d)", rc);
    free(buf);
    mk_source_destroy(s);
    t_guest_free(&g);
    return t_done();
}
