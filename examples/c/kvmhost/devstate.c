/*
 * devstate.c - the device-state blob: every vCPU's registers (general,
 * special, XSAVE or FPU, XCRs, pending events, the MSRs the guest needs) and
 * the host's snapshot of the workload at the moment the vCPUs were paused.
 *
 * Layout (native little-endian, versioned; both ends are this program):
 *   struct blob_header
 *   per vCPU: struct vcpu_header, kvm_regs, kvm_sregs,
 *             XSAVE area (xsave_size bytes) or kvm_fpu,
 *             kvm_xcrs (if HAS_XCRS), kvm_vcpu_events (if HAS_EVENTS),
 *             u64 MSR values (nmsrs, indices in the header)
 *   u32 END_MAGIC, u32 checksum of everything before it
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "kvmhost.h"

#define BLOB_MAGIC   0x5348564bu /* "KVHS" */
#define BLOB_VERSION 1
#define VCPU_MAGIC   0x55504356u /* "VCPU" */
#define END_MAGIC    0x21444e45u /* "END!" */

enum { HAS_XSAVE = 1, HAS_XCRS = 2, HAS_EVENTS = 4 };

struct blob_header {
    uint32_t magic;
    uint16_t version;
    uint16_t header_size;
    uint32_t nr_vcpus;
    uint32_t flags;
    uint64_t total_size;
    uint64_t mem_size;
    uint32_t xsave_size;
    uint32_t nmsrs;
    uint32_t msr_index[MAX_MSRS];
    uint32_t snapshot_size;
    uint32_t vcpu_size;
    struct host_snapshot snap;
};

struct vcpu_header {
    uint32_t magic;
    uint32_t id;
};

static uint32_t blob_flags(struct vm *vm)
{
    return (vm->xsave_size ? HAS_XSAVE : 0) | (vm->has_xcrs ? HAS_XCRS : 0) |
           (vm->has_events ? HAS_EVENTS : 0);
}

static size_t vcpu_part_size(uint32_t flags, uint32_t xsave_size, uint32_t nmsrs)
{
    return sizeof(struct vcpu_header) + sizeof(struct kvm_regs) + sizeof(struct kvm_sregs) +
           ((flags & HAS_XSAVE) ? xsave_size : sizeof(struct kvm_fpu)) +
           ((flags & HAS_XCRS) ? sizeof(struct kvm_xcrs) : 0) +
           ((flags & HAS_EVENTS) ? sizeof(struct kvm_vcpu_events) : 0) + (size_t)nmsrs * 8;
}

size_t devstate_size(struct vm *vm)
{
    return sizeof(struct blob_header) +
           vm->nr_vcpus * vcpu_part_size(blob_flags(vm), vm->xsave_size, vm->nmsrs) + 8;
}

static uint32_t checksum(const uint8_t *p, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

void read_status(struct vm *vm, uint32_t vcpu, struct guest_status *st)
{
    uint64_t b = GPA_STATUS + (uint64_t)vcpu * 0x1000;
    st->magic = gpa_u64(vm, b + S_MAGIC);
    st->starts = gpa_u64(vm, b + S_STARTS);
    st->role = gpa_u64(vm, b + S_ROLE);
    st->work = gpa_u64(vm, b + S_WORK);
    st->sweeps = gpa_u64(vm, b + S_SWEEPS);
    st->pos = gpa_u64(vm, b + S_POS);
    st->sleeps = gpa_u64(vm, b + S_SLEEPS);
    st->lcg_n = gpa_u64(vm, b + S_LCG_N);
    st->lcg_x = gpa_u64(vm, b + S_LCG_X);
    st->last_tsc = gpa_u64(vm, b + S_LAST_TSC);
    st->vcpu = gpa_u64(vm, b + S_VCPU);
}

void snapshot_fill(struct vm *vm, struct host_snapshot *hs, uint64_t pause_ns, uint64_t guest_start_ns)
{
    memset(hs, 0, sizeof(*hs));
    hs->pause_ns = pause_ns;
    hs->tsc_hz = vm->tsc_hz;
    hs->mem_size = vm->mem_size;
    hs->nr_vcpus = vm->nr_vcpus;
    hs->guest_start_ns = guest_start_ns;
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        read_status(vm, i, &hs->status[i]);
        struct kvm_regs r;
        if (ioctl(vm->vcpus[i].fd, KVM_GET_REGS, &r) == 0) {
            hs->rip[i] = r.rip;
            hs->r13[i] = r.r13;
        }
    }
}

#define PUT(ptr, obj) do { memcpy((ptr), &(obj), sizeof(obj)); (ptr) += sizeof(obj); } while (0)

int devstate_save(struct vm *vm, const struct host_snapshot *hs, uint8_t **out, size_t *len)
{
    size_t total = devstate_size(vm);
    uint8_t *buf = calloc(1, total), *p = buf;
    if (!buf)
        return -ENOMEM;
    struct blob_header h;
    memset(&h, 0, sizeof(h));
    h.magic = BLOB_MAGIC;
    h.version = BLOB_VERSION;
    h.header_size = sizeof(h);
    h.nr_vcpus = vm->nr_vcpus;
    h.flags = blob_flags(vm);
    h.total_size = total;
    h.mem_size = vm->mem_size;
    h.xsave_size = vm->xsave_size;
    h.nmsrs = vm->nmsrs;
    memcpy(h.msr_index, vm->msrs, sizeof(h.msr_index));
    h.snapshot_size = sizeof(struct host_snapshot);
    h.vcpu_size = (uint32_t)vcpu_part_size(h.flags, h.xsave_size, h.nmsrs);
    h.snap = *hs;
    PUT(p, h);

    uint8_t *xs = vm->xsave_size ? calloc(1, vm->xsave_size) : NULL;
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        int fd = vm->vcpus[i].fd;
        struct vcpu_header vh = { VCPU_MAGIC, i };
        struct kvm_regs regs;
        struct kvm_sregs sregs;
        PUT(p, vh);
        if (ioctl(fd, KVM_GET_REGS, &regs) < 0 || ioctl(fd, KVM_GET_SREGS, &sregs) < 0)
            goto fail;
        PUT(p, regs);
        PUT(p, sregs);
        if (h.flags & HAS_XSAVE) {
            unsigned long req = vm->xsave_size > sizeof(struct kvm_xsave) ? KVM_GET_XSAVE2 : KVM_GET_XSAVE;
            if (ioctl(fd, req, xs) < 0)
                goto fail;
            memcpy(p, xs, vm->xsave_size);
            p += vm->xsave_size;
        } else {
            struct kvm_fpu fpu;
            if (ioctl(fd, KVM_GET_FPU, &fpu) < 0)
                goto fail;
            PUT(p, fpu);
        }
        if (h.flags & HAS_XCRS) {
            struct kvm_xcrs xcrs;
            if (ioctl(fd, KVM_GET_XCRS, &xcrs) < 0)
                goto fail;
            PUT(p, xcrs);
        }
        if (h.flags & HAS_EVENTS) {
            struct kvm_vcpu_events ev;
            if (ioctl(fd, KVM_GET_VCPU_EVENTS, &ev) < 0)
                goto fail;
            PUT(p, ev);
        }
        struct {
            struct kvm_msrs h;
            struct kvm_msr_entry e[MAX_MSRS];
        } m;
        memset(&m, 0, sizeof(m));
        m.h.nmsrs = vm->nmsrs;
        for (uint32_t k = 0; k < vm->nmsrs; k++)
            m.e[k].index = vm->msrs[k];
        if (vm->nmsrs && ioctl(fd, KVM_GET_MSRS, &m) != (int)vm->nmsrs)
            goto fail;
        for (uint32_t k = 0; k < vm->nmsrs; k++)
            PUT(p, m.e[k].data);
    }
    uint32_t end = END_MAGIC;
    PUT(p, end);
    uint32_t sum = checksum(buf, (size_t)(p - buf));
    PUT(p, sum);
    free(xs);
    if ((size_t)(p - buf) != total) {
        logmsg("device state: wrote %zu bytes, expected %zu", (size_t)(p - buf), total);
        free(buf);
        return -EINVAL;
    }
    *out = buf;
    *len = total;
    return 0;
fail:
    logmsg("device state save: %s", strerror(errno));
    free(xs);
    free(buf);
    return -errno;
}

#define GET(ptr, obj) do { memcpy(&(obj), (ptr), sizeof(obj)); (ptr) += sizeof(obj); } while (0)

int devstate_load(struct vm *vm, const void *data, size_t len, struct host_snapshot *hs,
                  char *err, size_t errcap)
{
    const uint8_t *p = data;
    struct blob_header h;
    if (len < sizeof(h) + 8) {
        snprintf(err, errcap, "device state too short (%zu bytes)", len);
        return -1;
    }
    GET(p, h);
    if (h.magic != BLOB_MAGIC) {
        snprintf(err, errcap, "device state: bad magic %#x", h.magic);
        return -1;
    }
    if (h.version != BLOB_VERSION || h.header_size != sizeof(h) ||
        h.snapshot_size != sizeof(struct host_snapshot)) {
        snprintf(err, errcap, "device state: version %u / header %u / snapshot %u not supported",
                 h.version, h.header_size, h.snapshot_size);
        return -1;
    }
    if (h.total_size != len) {
        snprintf(err, errcap, "device state: size %zu, header says %llu", len,
                 (unsigned long long)h.total_size);
        return -1;
    }
    uint32_t sum;
    memcpy(&sum, (const uint8_t *)data + len - 4, 4);
    if (checksum(data, len - 4) != sum) {
        snprintf(err, errcap, "device state: checksum mismatch");
        return -1;
    }
    if (h.nr_vcpus != vm->nr_vcpus || h.mem_size != vm->mem_size) {
        snprintf(err, errcap,
                 "device state is for %u vCPUs / %llu MiB, this VM has %u vCPUs / %llu MiB (use the source's --vcpus and --mem)",
                 h.nr_vcpus, (unsigned long long)(h.mem_size >> 20), vm->nr_vcpus,
                 (unsigned long long)(vm->mem_size >> 20));
        return -1;
    }
    if (h.nmsrs > MAX_MSRS || ((h.flags & HAS_XSAVE) && h.xsave_size > vm->xsave_size) ||
        ((h.flags & HAS_XSAVE) && !vm->xsave_size) || ((h.flags & HAS_XCRS) && !vm->has_xcrs) ||
        ((h.flags & HAS_EVENTS) && !vm->has_events)) {
        snprintf(err, errcap, "device state needs CPU state this host cannot load (flags %#x, xsave %u)",
                 h.flags, h.xsave_size);
        return -1;
    }
    size_t vsz = vcpu_part_size(h.flags, h.xsave_size, h.nmsrs);
    if (h.vcpu_size != vsz || sizeof(h) + h.nr_vcpus * vsz + 8 != len) {
        snprintf(err, errcap, "device state: inconsistent vCPU record size");
        return -1;
    }
    uint8_t *xs = vm->xsave_size ? calloc(1, vm->xsave_size) : NULL;
    for (uint32_t i = 0; i < h.nr_vcpus; i++) {
        int fd = vm->vcpus[i].fd;
        struct vcpu_header vh;
        struct kvm_regs regs;
        struct kvm_sregs sregs;
        GET(p, vh);
        if (vh.magic != VCPU_MAGIC || vh.id != i) {
            snprintf(err, errcap, "device state: vCPU record %u damaged", i);
            free(xs);
            return -1;
        }
        GET(p, regs);
        GET(p, sregs);
        const char *what = "KVM_SET_REGS";
        if (ioctl(fd, KVM_SET_REGS, &regs) < 0)
            goto fail;
        if (h.flags & HAS_XSAVE) {
            memset(xs, 0, vm->xsave_size);
            memcpy(xs, p, h.xsave_size);
            p += h.xsave_size;
            what = "KVM_SET_XSAVE";
            if (ioctl(fd, KVM_SET_XSAVE, xs) < 0)
                goto fail;
        } else {
            struct kvm_fpu fpu;
            GET(p, fpu);
            what = "KVM_SET_FPU";
            if (ioctl(fd, KVM_SET_FPU, &fpu) < 0)
                goto fail;
        }
        if (h.flags & HAS_XCRS) {
            struct kvm_xcrs xcrs;
            GET(p, xcrs);
            what = "KVM_SET_XCRS";
            if (ioctl(fd, KVM_SET_XCRS, &xcrs) < 0)
                goto fail;
        }
        what = "KVM_SET_SREGS";
        if (ioctl(fd, KVM_SET_SREGS, &sregs) < 0)
            goto fail;
        struct {
            struct kvm_msrs h;
            struct kvm_msr_entry e[MAX_MSRS];
        } m;
        memset(&m, 0, sizeof(m));
        struct kvm_vcpu_events ev;
        if (h.flags & HAS_EVENTS)
            GET(p, ev);
        m.h.nmsrs = h.nmsrs;
        for (uint32_t k = 0; k < h.nmsrs; k++) {
            m.e[k].index = h.msr_index[k];
            GET(p, m.e[k].data);
        }
        what = "KVM_SET_MSRS";
        if (h.nmsrs && ioctl(fd, KVM_SET_MSRS, &m) != (int)h.nmsrs)
            goto fail;
        if (h.flags & HAS_EVENTS) {
            what = "KVM_SET_VCPU_EVENTS";
            if (ioctl(fd, KVM_SET_VCPU_EVENTS, &ev) < 0)
                goto fail;
        }
        continue;
    fail:
        snprintf(err, errcap, "vCPU %u: %s: %s", i, what, strerror(errno));
        free(xs);
        return -1;
    }
    free(xs);
    uint32_t end;
    GET(p, end);
    if (end != END_MAGIC) {
        snprintf(err, errcap, "device state: missing end marker");
        return -1;
    }
    *hs = h.snap;
    return 0;
}
