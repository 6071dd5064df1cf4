/*
 * auto_converge_needs_kick.c - issue 9.7 item 7: auto-converge throttles a
 * vCPU only while it sleeps in mk_source_throttle_point, and a vCPU running
 * guest code gets there only when kick_vcpu makes it leave guest mode
 * (Runtime/Throttler.swift). Without kick_vcpu a throttle would be reported
 * and never applied, so the configuration is refused with MK_EINVAL and a
 * message naming the callback, at create time and at set-param time, and
 * nothing changes.
 */
#include "test_util.h"

int main(void)
{
    t_name = "auto_converge_needs_kick";
    struct t_guest g;
    t_guest_init(&g, 1u << 20);
    mk_source_config cfg;
    mk_source_config_init(&cfg);
    cfg.transport_fd = 1; /* never written */
    mk_source_callbacks cb = t_guest_callbacks(&g);
    cb.kick_vcpu = NULL;
    mk_params p;
    mk_params_init(&p);
    p.auto_converge = 1;

    mk_source *s = NULL;
    int rc = mk_source_create(&s, &cfg, &cb, &p);
    CHECK(rc == MK_EINVAL && s == NULL && strstr(mk_last_error(), "kick_vcpu") != NULL,
          "create with auto_converge and no kick_vcpu: MK_EINVAL naming kick_vcpu (got %d: \"%s\")", rc,
          mk_last_error());
    if (s)
        mk_source_destroy(s);

    rc = mk_source_create(&s, &cfg, &cb, NULL);
    CHECK(rc == 0, "create without kick_vcpu and auto-converge off is fine (%d)", rc);
    rc = mk_source_set_param(s, "auto-converge", "on");
    CHECK(rc == MK_EINVAL && strstr(mk_source_errmsg(s), "kick_vcpu") != NULL,
          "set_param auto-converge on without kick_vcpu: MK_EINVAL naming kick_vcpu (got %d: \"%s\")", rc,
          mk_source_errmsg(s));
    rc = mk_source_set_params(s, &p);
    CHECK(rc == MK_EINVAL, "set_params with auto_converge without kick_vcpu: MK_EINVAL (got %d)", rc);
    mk_params now;
    mk_params_init(&now);
    mk_source_get_params(s, &now);
    CHECK(now.auto_converge == 0, "auto-converge stays off (%u)", now.auto_converge);
    rc = mk_source_set_param(s, "auto-converge", "off");
    CHECK(rc == 0, "auto-converge off is still accepted (%d)", rc);
    mk_source_destroy(s);

    cb.kick_vcpu = t_kick;
    rc = mk_source_create(&s, &cfg, &cb, &p);
    CHECK(rc == 0, "with kick_vcpu, auto_converge is accepted at create (%d: %s)", rc, rc ? mk_last_error() : "");
    if (rc == 0) {
        CHECK(mk_source_set_param(s, "auto-converge", "on") == 0, "and at set_param");
        mk_source_destroy(s);
    }
    t_guest_free(&g);
    return t_done();
}
