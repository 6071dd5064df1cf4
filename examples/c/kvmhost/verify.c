/*
 * verify.c - checking guest memory without a copy of the source.
 *
 * Every page of the data area carries a pattern that depends only on its
 * guest-physical address (qwords 1..511), so a page loaded at the wrong place
 * or not loaded at all shows. Byte 0 of each working-set page is the counter
 * the dirtier increments in address order, so within one dirtier's slice
 * every page equals its predecessor except at one place where it is exactly
 * one lower (mod 256): QEMU's migration-test invariant.
 */
#include <string.h>
#include <sys/mman.h>

#include "kvmhost.h"

#define APPEND(r, ...)                                                                    \
    do {                                                                                  \
        size_t _l = strlen((r)->msg);                                                     \
        if (_l < sizeof((r)->msg) - 1)                                                    \
            snprintf((r)->msg + _l, sizeof((r)->msg) - _l, __VA_ARGS__);                  \
    } while (0)

/* 0 if the page at gpa has the pattern (byte 0 excepted when counter < 0, else == counter). */
static int page_ok(struct vm *vm, uint64_t gpa, int counter)
{
    const uint64_t *q = gpa_ptr(vm, gpa);
    uint64_t head = counter < 0 ? (q[0] & ~0xffull) : (q[0] ^ (uint64_t)counter);
    if (head)
        return -1;
    for (uint64_t k = 1; k < 512; k++)
        if (q[k] != pattern_word(gpa + k * 8))
            return -1;
    return 0;
}

static int page_zero(struct vm *vm, uint64_t gpa)
{
    const uint64_t *q = gpa_ptr(vm, gpa);
    for (int k = 0; k < 512; k++)
        if (q[k])
            return -1;
    return 0;
}

static int params_ok(struct vm *vm, struct verify_result *r)
{
    if (gpa_u64(vm, GPA_PARAMS + P_MAGIC) != PARAMS_MAGIC) {
        APPEND(r, "parameter page has no magic; ");
        return -1;
    }
    if (gpa_u64(vm, GPA_PARAMS + P_MEM_SIZE) != vm->mem_size ||
        gpa_u64(vm, GPA_PARAMS + P_NR_VCPUS) != vm->nr_vcpus) {
        APPEND(r, "parameter page is for another VM shape; ");
        return -1;
    }
    return 0;
}

/*
 * The QEMU invariant over one slice's counters (byte 0 of each page, 4 KiB
 * apart from `base`): every page equals its predecessor except at one edge
 * where it is exactly one lower. Only byte 0 is read, so this costs one
 * cache line (and TLB entry) per page; the calibration in
 * counter_scan_ns_per_page runs this very function.
 */
static void scan_counters(const uint8_t *base, struct slice_result *s, struct verify_result *r)
{
    s->edge = -1;
    s->first = base[0];
    uint8_t prev = base[0];
    for (uint64_t p = 1; p < s->pages; p++) {
        uint8_t c = base[p * 4096];
        if (c != prev) {
            if ((uint8_t)(c + 1) == prev && s->edge < 0) {
                s->edge = (int64_t)p;
            } else {
                if (!s->bad_counter)
                    APPEND(r, "v%u page %llu counter %u after %u%s; ", s->vcpu, (unsigned long long)p, c, prev,
                           s->edge >= 0 ? " (second edge)" : "");
                s->bad_counter++;
            }
        }
        prev = c;
    }
    s->last = prev;
}

/* Dirtier i's slice from the parameter page; 0 pages if it does not dirty. */
static uint64_t slice_of(struct vm *vm, uint32_t i, uint64_t *base)
{
    uint64_t b = GPA_PARAMS + P_VCPU + (uint64_t)i * P_VCPU_STRIDE;
    if (gpa_u64(vm, b + PV_ROLE) != ROLE_DIRTY)
        return 0;
    *base = gpa_u64(vm, b + PV_SLICE_BASE);
    return gpa_u64(vm, b + PV_SLICE_PAGES);
}

int verify_counters(struct vm *vm, struct verify_result *r)
{
    memset(r, 0, sizeof(*r));
    r->ok = 1;
    if (params_ok(vm, r) < 0) {
        r->ok = 0;
        return -1;
    }
    uint64_t ws_base = gpa_u64(vm, GPA_PARAMS + P_WS_BASE);
    uint64_t ws_size = gpa_u64(vm, GPA_PARAMS + P_WS_SIZE);
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        uint64_t base = 0, pages = slice_of(vm, i, &base);
        if (!pages)
            continue;
        if (base < ws_base || base + pages * 4096 > ws_base + ws_size || base + pages * 4096 > vm->mem_size) {
            APPEND(r, "v%u slice outside the working set; ", i);
            r->ok = 0;
            continue;
        }
        struct slice_result *s = &r->slices[r->nslices++];
        memset(s, 0, sizeof(*s));
        s->vcpu = i;
        s->pages = pages;
        scan_counters(gpa_ptr(vm, base), s, r);
        r->pages_checked += pages;
        if (s->bad_counter)
            r->ok = 0;
    }
    return r->ok ? 0 : -1;
}

/*
 * The page pattern of the working set: qwords 1..511 of every page and bytes
 * 1..7 of qword 0 in the dirtiers' slices (the guest only ever increments
 * byte 0), the whole page with counter 0 elsewhere in the working set (no
 * vCPU writes there). Nothing checked here is written by the guest, so it
 * may run while the guest runs and still sees what was loaded.
 * Adds to r (slices from verify_counters on the same r).
 */
int verify_ws_pattern(struct vm *vm, struct verify_result *r)
{
    if (params_ok(vm, r) < 0) {
        r->ok = 0;
        return -1;
    }
    uint64_t ws_base = gpa_u64(vm, GPA_PARAMS + P_WS_BASE);
    uint64_t ws_size = gpa_u64(vm, GPA_PARAMS + P_WS_SIZE);
    uint64_t covered_end = ws_base;
    for (uint32_t k = 0; k < r->nslices; k++) {
        struct slice_result *s = &r->slices[k];
        uint64_t base = 0;
        slice_of(vm, s->vcpu, &base);
        for (uint64_t p = 0; p < s->pages; p++) {
            uint64_t gpa = base + p * 4096;
            if (page_ok(vm, gpa, -1) < 0) {
                if (!s->bad_pattern)
                    APPEND(r, "v%u page %llu (gpa %#llx) has wrong contents; ", s->vcpu, (unsigned long long)p,
                           (unsigned long long)gpa);
                s->bad_pattern++;
            }
        }
        if (s->bad_pattern)
            r->ok = 0;
        if (base + s->pages * 4096 > covered_end)
            covered_end = base + s->pages * 4096;
    }
    /* working-set pages no dirtier owns: pattern with counter 0 */
    for (uint64_t gpa = covered_end; gpa < ws_base + ws_size && gpa < vm->mem_size; gpa += 4096) {
        r->pattern_pages++;
        if (page_ok(vm, gpa, 0) < 0) {
            if (!r->unowned_bad)
                APPEND(r, "unowned working-set page gpa %#llx wrong; ", (unsigned long long)gpa);
            r->unowned_bad++;
            r->ok = 0;
        }
    }
    for (uint32_t k = 0; k < r->nslices; k++)
        r->pattern_pages += r->slices[k].pages;
    return r->ok ? 0 : -1;
}

/* Both, with the guest stopped (the end-of-run check, the self-test). */
int verify_working_set(struct vm *vm, struct verify_result *r)
{
    int a = verify_counters(vm, r);
    if (r->ok || r->nslices)
        verify_ws_pattern(vm, r);
    return a < 0 || !r->ok ? -1 : 0;
}

/*
 * What scan_counters costs per page on memory it has to fetch: a mapping
 * the size of a mid-sized working set, one byte written per page, the
 * cache lines flushed, then scanned (best of 3: noise only ever adds).
 * Guest memory loaded during the migration is just as cold by the time of
 * the final check, and as large or larger, so the rate scales.
 */
double counter_scan_ns_per_page(void)
{
    const uint64_t pages = 8192; /* 32 MiB: beyond the TLB, one line per page */
    uint8_t *buf = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        return 0;
    for (uint64_t p = 0; p < pages; p++)
        buf[p * 4096] = (uint8_t)(p < pages / 2); /* one edge, like a sweep in progress */
    double best = 1e9;
    for (int round = 0; round < 3; round++) {
        for (uint64_t p = 0; p < pages; p++)
            __builtin_ia32_clflush(buf + p * 4096);
        __builtin_ia32_mfence();
        struct verify_result r;
        memset(&r, 0, sizeof(r));
        struct slice_result s = { .pages = pages };
        uint64_t t0 = now_ns();
        scan_counters(buf, &s, &r);
        double ns = (double)(now_ns() - t0) / (double)pages;
        if (ns < best)
            best = ns;
    }
    munmap(buf, pages * 4096);
    return best;
}

int verify_static(struct vm *vm, struct verify_result *r)
{
    if (params_ok(vm, r) < 0) {
        r->ok = 0;
        return -1;
    }
    uint64_t from = gpa_u64(vm, GPA_PARAMS + P_WS_BASE) + gpa_u64(vm, GPA_PARAMS + P_WS_SIZE);
    int fill = gpa_u64(vm, GPA_PARAMS + P_FILL) != 0;
    r->static_pages = 0;
    r->static_bad = 0;
    for (uint64_t gpa = from; gpa < vm->mem_size; gpa += 4096) {
        r->static_pages++;
        if ((fill ? page_ok(vm, gpa, 0) : page_zero(vm, gpa)) < 0) {
            if (!r->static_bad)
                APPEND(r, "static page gpa %#llx wrong; ", (unsigned long long)gpa);
            r->static_bad++;
        }
    }
    if (r->static_bad)
        r->ok = 0;
    return r->static_bad ? -1 : 0;
}

int verify_compute(struct vm *vm, uint32_t i, char *msg, size_t cap)
{
    struct guest_status st;
    read_status(vm, i, &st);
    uint64_t seed = gpa_u64(vm, GPA_PARAMS + P_VCPU + (uint64_t)i * P_VCPU_STRIDE + PV_LCG_SEED);
    if (st.lcg_x == lcg_jump(seed, st.lcg_n) || st.lcg_x == lcg_jump(seed, st.lcg_n + LCG_BATCH)) {
        snprintf(msg, cap, "v%u LCG state consistent after %llu steps", i, (unsigned long long)st.lcg_n);
        return 0;
    }
    snprintf(msg, cap, "v%u LCG value %#llx is not the seed after %llu steps", i,
             (unsigned long long)st.lcg_x, (unsigned long long)st.lcg_n);
    return -1;
}

/*
 * The loaded memory against the source's snapshot taken while paused: status
 * pages identical, each dirtier's edge where its saved r13 says, no restart.
 */
int verify_against_snapshot(struct vm *vm, const struct host_snapshot *hs, struct verify_result *r)
{
    int ok = 1;
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        struct guest_status st;
        read_status(vm, i, &st);
        if (memcmp(&st, &hs->status[i], sizeof(st)) != 0) {
            APPEND(r, "v%u status page differs from the source's (work %llu vs %llu); ", i,
                   (unsigned long long)st.work, (unsigned long long)hs->status[i].work);
            ok = 0;
        }
        if (st.magic == STATUS_MAGIC && st.starts != 1) {
            APPEND(r, "v%u entry code ran %llu times; ", i, (unsigned long long)st.starts);
            ok = 0;
        }
        if (st.role == ROLE_COMPUTE) {
            char m[200];
            if (verify_compute(vm, i, m, sizeof(m)) < 0) {
                APPEND(r, "%s; ", m);
                ok = 0;
            }
        }
    }
    for (uint32_t k = 0; k < r->nslices; k++) {
        struct slice_result *s = &r->slices[k];
        const struct guest_status *st = &hs->status[s->vcpu];
        if (st->role != ROLE_DIRTY || st->work == 0)
            continue;
        /* r13 = next page; paused between `incb` and `inc r13` it is one behind */
        uint64_t p = hs->r13[s->vcpu];
        int match = 0;
        for (uint64_t q = p; q <= p + 1; q++) {
            uint64_t e = q % s->pages;
            if ((s->edge < 0 && e == 0) || (s->edge >= 0 && (uint64_t)s->edge == e))
                match = 1;
        }
        if (!match) {
            APPEND(r, "v%u counter edge at page %lld but its r13 was %llu; ", s->vcpu, (long long)s->edge,
                   (unsigned long long)p);
            ok = 0;
        }
        /* first page's counter = sweeps done (+1 if a sweep is in progress), mod 256 */
        uint8_t want = (uint8_t)(st->sweeps + (s->edge >= 0 ? 1 : 0));
        /* paused right at the wrap: every page done, S_SWEEPS not yet incremented */
        int wrap = s->edge < 0 && s->first == (uint8_t)(want + 1);
        if (s->first != want && !wrap) {
            APPEND(r, "v%u first counter %u but %llu sweeps%s; ", s->vcpu, s->first,
                   (unsigned long long)st->sweeps, s->edge >= 0 ? " + one in progress" : "");
            ok = 0;
        }
    }
    if (!ok)
        r->ok = 0;
    return ok ? 0 : -1;
}
