/*
 * init_helpers.c - the *_init helpers added in 0.2 for the structs a caller
 * fills (callbacks) or reads (stats): every byte zero but struct_size, in a
 * struct of this header's size, an older smaller one, and a newer larger one
 * (whose unknown tail must read as zero); NULL and nonsense sizes refused.
 */
#include "test_util.h"

#define CHECK_INIT(type, fn)                                                               \
    do {                                                                                   \
        unsigned char buf[sizeof(type) + 32];                                              \
        memset(buf, 0xAA, sizeof buf);                                                     \
        int rc = fn((type *)(void *)buf, sizeof(type) + 32);                               \
        uint32_t got;                                                                      \
        memcpy(&got, buf, sizeof got);                                                     \
        int zero = 1;                                                                      \
        for (size_t i = sizeof(uint32_t); i < sizeof buf; i++) zero &= buf[i] == 0;        \
        CHECK(rc == 0 && got == sizeof(type) && zero,                                      \
              #fn " on a newer, larger struct: rc %d, struct_size %u (want %zu), rest zero %d", \
              rc, got, sizeof(type), zero);                                                \
        memset(buf, 0xAA, sizeof buf);                                                     \
        rc = fn((type *)(void *)buf, 8);                                                   \
        memcpy(&got, buf, sizeof got);                                                     \
        CHECK(rc == 0 && got == 8 && buf[4] == 0 && buf[7] == 0 && buf[8] == 0xAA,         \
              #fn " on an older 8-byte struct: writes 8 bytes only (rc %d)", rc);          \
        CHECK(fn(NULL, sizeof(type)) == MK_EINVAL, #fn "(NULL) is MK_EINVAL");            \
        CHECK(fn((type *)(void *)buf, 2) == MK_EVERSION, #fn " with size 2 is MK_EVERSION"); \
    } while (0)

int main(void)
{
    t_name = "init_helpers";
    CHECK_INIT(mk_stats, mk_stats_init_sized);
    CHECK_INIT(mk_vcpu_stats, mk_vcpu_stats_init_sized);
    CHECK_INIT(mk_dest_stats, mk_dest_stats_init_sized);
    CHECK_INIT(mk_source_callbacks, mk_source_callbacks_init_sized);
    CHECK_INIT(mk_dest_callbacks, mk_dest_callbacks_init_sized);

    /* The macros, as a VMM writes them, and a call that reads into them. */
    struct t_guest g;
    t_guest_init(&g, 1u << 20);
    mk_source_callbacks cb;
    mk_source_callbacks_init(&cb);
    cb.user = &g;
    cb.get_dirty_log = t_no_dirt;
    cb.pause_vcpus = t_pause;
    cb.resume_vcpus = t_resume;
    int sv[2] = { -1, -1 };
    mk_source_config sc;
    mk_source_config_init(&sc);
    sc.transport_fd = 1;
    mk_source *s = NULL;
    int rc = mk_source_create(&s, &sc, &cb, NULL);
    CHECK(rc == 0, "mk_source_create with mk_source_callbacks_init'd callbacks (%d: %s)", rc, mk_last_error());
    mk_stats st;
    mk_stats_init(&st);
    CHECK(s && mk_source_get_stats(s, &st) == 0 && st.struct_size == sizeof st && st.status == MK_STATUS_NONE,
          "mk_source_get_stats into an mk_stats_init'd struct");
    mk_source_destroy(s);
    (void)sv;
    mk_dest_callbacks dcb;
    mk_dest_callbacks_init(&dcb);
    mk_dest_config dc;
    mk_dest_config_init(&dc);
    mk_dest *d = NULL;
    CHECK(mk_dest_create(&d, &dc, &dcb) == 0, "mk_dest_create with mk_dest_callbacks_init'd callbacks");
    mk_dest_stats ds;
    mk_dest_stats_init(&ds);
    CHECK(d && mk_dest_get_stats(d, &ds) == 0 && ds.struct_size == sizeof ds, "mk_dest_get_stats into an mk_dest_stats_init'd struct");
    mk_dest_destroy(d);
    t_guest_free(&g);
    return t_done();
}
