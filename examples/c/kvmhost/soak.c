/*
 * soak.c - --soak URI --hops N: one guest migrated back and forth between two
 * long-lived processes. Each process starts in the role its --migrate or
 * --incoming gives it and takes the other one on --soak's URI after every
 * hop, so A (--migrate B --soak A) and B (--incoming B --soak A) pass the
 * guest A -> B -> A ... The VM is built once per process: a process that
 * handed the guest over keeps its (paused) vCPUs and memory and loads the
 * guest into them when it comes back. Hops are counted over both processes.
 */
#include <stdlib.h>
#include <string.h>

#include "kvmhost.h"

/* --stats-json FILE: one file per hop, "{hop}" in FILE becomes the number. */
static const char *hop_path(const char *pattern, uint32_t hop, char *buf, size_t cap)
{
    const char *at = pattern ? strstr(pattern, "{hop}") : NULL;
    if (!at)
        return pattern;
    snprintf(buf, cap, "%.*s%03u%s", (int)(at - pattern), pattern, hop, at + 5);
    return buf;
}

int run_soak(struct vm *vm, const struct workload *w, struct src_opts *src, struct dst_opts *dst,
             const char *soak_uri, uint32_t hops, uint64_t start_ns)
{
    int sending = src->uri != NULL;
    const char *peer = sending ? src->uri : soak_uri, *own = sending ? soak_uri : dst->uri;
    const char *pattern = src->stats_json;
    char path[1024];
    int code = EXIT_OK;
    for (uint32_t hop = 1; hop <= hops && code == EXIT_OK; hop++, sending = !sending) {
        printf("soak: hop %u of %u: %s %s\n", hop, hops, sending ? "sending to" : "receiving on", sending ? peer : own);
        fflush(stdout);
        if (sending) {
            src->uri = peer;
            src->stats_json = hop_path(pattern, hop, path, sizeof(path));
            double until = now_s() + src->migrate_after;
            while (now_s() < until && !atomic_load(&vm->fatal))
                sleep_ns(20 * 1000000ull);
            code = run_source_migration(vm, w, src, start_ns);
        } else {
            dst->uri = own;
            dst->stats_json = hop_path(pattern, hop, path, sizeof(path));
            code = run_destination(vm, dst);
            /* the last check paused the guest: it runs on until it leaves */
            if (code == EXIT_OK)
                vcpus_resume(vm);
        }
        printf("soak: hop %u %s (exit %d)\n", hop, code == EXIT_OK ? "done" : "FAILED", code);
        fflush(stdout);
    }
    return code;
}
