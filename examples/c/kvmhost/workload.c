/*
 * workload.c - the guest workload as the host sets it up: the parameter page,
 * the page pattern over guest RAM, and helpers that read the guest's progress.
 */
#include <stdlib.h>
#include <string.h>

#include "kvmhost.h"

const char *role_name(uint64_t role)
{
    switch (role) {
    case ROLE_DIRTY: return "dirty";
    case ROLE_COMPUTE: return "compute";
    case ROLE_IDLE: return "idle";
    default: return "?";
    }
}

static void put64(struct vm *vm, uint64_t gpa, uint64_t v)
{
    *(volatile uint64_t *)gpa_ptr(vm, gpa) = v;
}

int workload_write_params(struct vm *vm, const struct workload *w)
{
    uint64_t data_end = vm->mem_size;
    if (GPA_DATA + w->ws_size > data_end) {
        logmsg("--working-set %llu MiB does not fit: RAM from %u MiB to %llu MiB is available",
               (unsigned long long)(w->ws_size >> 20), GPA_DATA >> 20,
               (unsigned long long)(data_end >> 20));
        return -1;
    }
    uint32_t ndirty = 0;
    for (uint32_t i = 0; i < vm->nr_vcpus; i++)
        if (w->dirtier_mask & (1u << i))
            ndirty++;
    uint64_t hz = vm->tsc_hz;
    uint64_t p = GPA_PARAMS;
    memset(gpa_ptr(vm, p), 0, 4096);
    put64(vm, p + P_VERSION, 1);
    put64(vm, p + P_TSC_HZ, hz);
    put64(vm, p + P_NR_VCPUS, vm->nr_vcpus);
    put64(vm, p + P_WS_BASE, GPA_DATA);
    put64(vm, p + P_WS_SIZE, w->ws_size);
    put64(vm, p + P_MEM_SIZE, vm->mem_size);
    uint64_t chunk_ticks = 0;
    if (w->dirty_rate && ndirty) {
        double per = (double)w->dirty_rate / ndirty;                  /* bytes/s per dirtier */
        chunk_ticks = (uint64_t)((double)DIRTY_CHUNK * 4096.0 * (double)hz / per);
        if (!chunk_ticks)
            chunk_ticks = 1;
    }
    put64(vm, p + P_CHUNK_TICKS, chunk_ticks);
    put64(vm, p + P_MAX_LAG_TICKS, hz / 500);                         /* 2 ms */
    put64(vm, p + P_MIN_SLEEP_TICKS, hz / 2000);                      /* 0.5 ms */
    uint64_t ahead = chunk_ticks * 4 > hz ? chunk_ticks * 4 : hz;     /* >= 1 s */
    put64(vm, p + P_MAX_AHEAD_TICKS, ahead);
    put64(vm, p + P_IDLE_TICKS, hz / 100);                            /* 10 ms heartbeat */
    uint32_t duty = w->compute_duty > 100 ? 100 : w->compute_duty;
    put64(vm, p + P_COMPUTE_ON, hz / 100 * duty / 100);
    put64(vm, p + P_COMPUTE_OFF, hz / 100 * (100 - duty) / 100);
    put64(vm, p + P_FILL, (uint64_t)w->fill);

    uint64_t ws_pages = w->ws_size / 4096, next = 0;
    uint32_t k = 0;
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        uint64_t b = p + P_VCPU + (uint64_t)i * P_VCPU_STRIDE;
        if (w->dirtier_mask & (1u << i)) {
            uint64_t n = ws_pages / ndirty + (k == ndirty - 1 ? ws_pages % ndirty : 0);
            put64(vm, b + PV_ROLE, n ? ROLE_DIRTY : ROLE_IDLE);   /* no pages: it idles */
            put64(vm, b + PV_SLICE_BASE, GPA_DATA + next * 4096);
            put64(vm, b + PV_SLICE_PAGES, n);
            next += n;
            k++;
        } else if (w->compute_mask & (1u << i)) {
            put64(vm, b + PV_ROLE, ROLE_COMPUTE);
        } else {
            put64(vm, b + PV_ROLE, ROLE_IDLE);
        }
        put64(vm, b + PV_LCG_SEED, 0x1234567ull * (i + 1));
    }
    memset(gpa_ptr(vm, GPA_STATUS), 0, MAX_VCPUS * 4096ull);
    /* magic last: the guest checks it first */
    put64(vm, p + P_MAGIC, PARAMS_MAGIC);
    return 0;
}

struct fill_job {
    struct vm *vm;
    uint64_t from, to;
};

static void *fill_range(void *arg)
{
    struct fill_job *j = arg;
    for (uint64_t gpa = j->from; gpa < j->to; gpa += 4096) {
        uint64_t *q = gpa_ptr(j->vm, gpa);
        q[0] = 0;
        for (uint64_t k = 1; k < 512; k++)
            q[k] = pattern_word(gpa + k * 8);
    }
    return NULL;
}

/* The page pattern over the working set (always) and the rest of RAM (if fill). */
void workload_fill(struct vm *vm)
{
    uint64_t ws = gpa_u64(vm, GPA_PARAMS + P_WS_SIZE);
    uint64_t end = gpa_u64(vm, GPA_PARAMS + P_FILL) ? vm->mem_size : GPA_DATA + ws;
    struct fill_job jobs[2];
    pthread_t t;
    uint64_t mid = GPA_DATA + ((end - GPA_DATA) / 2 & ~4095ull);
    jobs[0] = (struct fill_job){ vm, GPA_DATA, mid };
    jobs[1] = (struct fill_job){ vm, mid, end };
    pthread_create(&t, NULL, fill_range, &jobs[1]);
    fill_range(&jobs[0]);
    pthread_join(t, NULL);
}

/* x after `steps` LCG steps: the affine map x -> a*x + c composed with itself. */
uint64_t lcg_jump(uint64_t x, uint64_t steps)
{
    uint64_t a = LCG_MUL, c = LCG_ADD;      /* the map for 2^bit steps */
    uint64_t ra = 1, rc = 0;                /* accumulated map */
    while (steps) {
        if (steps & 1) {
            rc = a * rc + c;
            ra = a * ra;
        }
        c = a * c + c;
        a = a * a;
        steps >>= 1;
    }
    return ra * x + rc;
}

void guest_summary(struct vm *vm, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = 0;
    for (uint32_t i = 0; i < vm->nr_vcpus && n < cap; i++) {
        struct guest_status st;
        read_status(vm, i, &st);
        if (st.role == ROLE_DIRTY)
            n += (size_t)snprintf(buf + n, cap - n, "%sv%u dirty %llu pages (%llu sweeps)", i ? ", " : "", i,
                                  (unsigned long long)st.work, (unsigned long long)st.sweeps);
        else if (st.role == ROLE_COMPUTE)
            n += (size_t)snprintf(buf + n, cap - n, "%sv%u compute %llu steps", i ? ", " : "", i,
                                  (unsigned long long)st.work);
        else
            n += (size_t)snprintf(buf + n, cap - n, "%sv%u idle %llu beats", i ? ", " : "", i,
                                  (unsigned long long)st.work);
    }
}

/*
 * Prove the guest runs: every vCPU's work counter advances over `seconds`,
 * then (vCPUs paused briefly) the memory invariant holds. 0 if healthy.
 */
int guest_health(struct vm *vm, double seconds, double *rates, int *mem_ok, char *buf, size_t cap)
{
    uint64_t before[MAX_VCPUS], after[MAX_VCPUS];
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        struct guest_status st;
        read_status(vm, i, &st);
        before[i] = st.work;
    }
    uint64_t t0 = now_ns();
    sleep_ns((uint64_t)(seconds * 1e9));
    double dt = (double)(now_ns() - t0) / 1e9;
    int ok = !atomic_load(&vm->fatal);
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "over %.1f s:", dt);
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        struct guest_status st;
        read_status(vm, i, &st);
        after[i] = st.work;
        uint64_t d = after[i] - before[i];
        if (!d)
            ok = 0;
        if (rates)
            rates[i] = (double)d / dt;
        const char *unit = st.role == ROLE_DIRTY ? "pages" : st.role == ROLE_COMPUTE ? "steps" : "beats";
        if (n < cap)
            n += (size_t)snprintf(buf + n, cap - n, " v%u +%llu %s (%.0f/s)", i, (unsigned long long)d,
                                  unit, (double)d / dt);
    }
    vcpus_pause(vm);
    struct verify_result vr;
    int vok = verify_working_set(vm, &vr) == 0;
    vcpus_resume(vm);
    if (mem_ok)
        *mem_ok = vok;
    if (n < cap)
        n += (size_t)snprintf(buf + n, cap - n, "; invariant %s over %llu pages%s%s",
                              vok ? "OK" : "BROKEN", (unsigned long long)vr.pages_checked,
                              vok ? "" : ": ", vok ? "" : vr.msg);
    if (atomic_load(&vm->fatal) && n < cap)
        snprintf(buf + n, cap - n, "; guest error: %s", vm->fatal_msg);
    return ok && vok ? 0 : -1;
}
