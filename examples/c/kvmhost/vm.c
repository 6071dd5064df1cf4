/*
 * vm.c - the KVM VM: guest RAM and memory slots, dirty logging, CPUID, the
 * MSR/XSAVE capabilities state save needs, and 64-bit long mode set up from
 * the host (GDT, TSS, IDT, identity page tables with 2 MiB pages and U/S=1,
 * plus the MMIO doorbell page).
 */
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvmhost.h"

extern const uint8_t guest_bin[], guest_bin_end[];

static int check_cap(int fd, long cap)
{
    int r = ioctl(fd, KVM_CHECK_EXTENSION, cap);
    return r < 0 ? 0 : r;
}

static int set_slot(struct vm *vm, uint32_t i, uint32_t flags)
{
    struct kvm_userspace_memory_region r = {
        .slot = i,
        .flags = flags,
        .guest_phys_addr = vm->slots[i].gpa,
        .memory_size = vm->slots[i].size,
        .userspace_addr = (uint64_t)(uintptr_t)vm->slots[i].host,
    };
    if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0) {
        logmsg("KVM_SET_USER_MEMORY_REGION slot %u: %s", i, strerror(errno));
        return -1;
    }
    return 0;
}

static int map_memory(struct vm *vm, int hugepages)
{
    vm->map_size = vm->mem_size;
    void *p = MAP_FAILED;
    if (hugepages) {
        /* no MAP_NORESERVE: without enough reserved huge pages mmap fails
         * here instead of the first touch raising SIGBUS */
        p = mmap(NULL, vm->map_size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
        /* Some kernels hand out the mapping even with an empty pool and
         * raise SIGBUS on first touch: prefault it now (2 MiB per fault),
         * which fails cleanly if the pool is short. */
        if (p != MAP_FAILED && madvise(p, vm->map_size, MADV_POPULATE_WRITE) != 0) {
            logmsg("hugetlbfs pool too small for %llu MiB (%s)", (unsigned long long)(vm->map_size >> 20),
                   strerror(errno));
            munmap(p, vm->map_size);
            p = MAP_FAILED;
        }
        if (p != MAP_FAILED) {
            vm->backing = "hugetlbfs 2 MiB pages";
        } else {
            logmsg("no hugetlbfs pages (see /proc/sys/vm/nr_hugepages): using transparent huge pages");
            /* 2 MiB aligned anonymous memory so THP can back it */
            size_t extra = 2u << 20;
            uint8_t *q = mmap(NULL, vm->map_size + extra, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (q == MAP_FAILED)
                return -1;
            uintptr_t a = ((uintptr_t)q + extra - 1) & ~(uintptr_t)(extra - 1);
            if (a > (uintptr_t)q)
                munmap(q, a - (uintptr_t)q);
            uintptr_t end = (uintptr_t)q + vm->map_size + extra;
            if (end > a + vm->map_size)
                munmap((void *)(a + vm->map_size), end - (a + vm->map_size));
            p = (void *)a;
            if (madvise(p, vm->map_size, MADV_HUGEPAGE) != 0)
                logmsg("madvise(MADV_HUGEPAGE): %s", strerror(errno));
            vm->backing = "transparent huge pages (madvise)";
        }
    } else {
        p = mmap(NULL, vm->map_size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        vm->backing = "anonymous 4 KiB pages";
    }
    if (p == MAP_FAILED)
        return -1;
    vm->mem = p;
    /* Anonymous memory reads as zero (hugetlbfs pre-faulted above: zeroed
     * pages). vm_setup_longmode clears this when it writes the guest in. */
    vm->mem_fresh = 1;
    return 0;
}

/* The MSRs worth saving for this guest, filtered by what KVM can read. */
static void pick_msrs(struct vm *vm)
{
    static const uint32_t wanted[] = {
        0x10,       /* IA32_TSC */
        0x174, 0x175, 0x176, /* SYSENTER_CS/ESP/EIP */
        0x277,      /* PAT */
        0xc0000081, /* STAR */
        0xc0000082, /* LSTAR */
        0xc0000083, /* CSTAR */
        0xc0000084, /* SFMASK */
        0xc0000102, /* KERNEL_GS_BASE */
        0xc0000103, /* TSC_AUX */
    };
    struct {
        struct kvm_msrs h;
        struct kvm_msr_entry e[1];
    } one;
    vm->nmsrs = 0;
    for (size_t i = 0; i < sizeof(wanted) / sizeof(wanted[0]); i++) {
        memset(&one, 0, sizeof(one));
        one.h.nmsrs = 1;
        one.e[0].index = wanted[i];
        if (ioctl(vm->vcpus[0].fd, KVM_GET_MSRS, &one) == 1)
            vm->msrs[vm->nmsrs++] = wanted[i];
    }
}

static int setup_cpuid(struct vm *vm)
{
    int n = 256;
    for (;;) {
        vm->cpuid = calloc(1, sizeof(struct kvm_cpuid2) + (size_t)n * sizeof(struct kvm_cpuid_entry2));
        vm->cpuid->nent = (uint32_t)n;
        if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, vm->cpuid) == 0)
            return 0;
        free(vm->cpuid);
        vm->cpuid = NULL;
        if (errno != E2BIG || n > 4096)
            return -1;
        n *= 2;
    }
}

static int set_vcpu_cpuid(struct vm *vm, struct vcpu *v)
{
    size_t sz = sizeof(struct kvm_cpuid2) + vm->cpuid->nent * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *c = malloc(sz);
    memcpy(c, vm->cpuid, sz);
    for (uint32_t i = 0; i < c->nent; i++) {
        struct kvm_cpuid_entry2 *e = &c->entries[i];
        if (e->function == 1) {
            e->ebx = (e->ebx & 0x00ffffffu) | (v->id << 24);    /* initial APIC id */
        } else if (e->function == 0xb || e->function == 0x1f) {
            e->edx = v->id;                                        /* x2APIC id */
        }
    }
    int r = ioctl(v->fd, KVM_SET_CPUID2, c);
    free(c);
    return r;
}

int vm_create(struct vm *vm, const struct vm_config *cfg)
{
    memset(vm, 0, sizeof(*vm));
    pthread_mutex_init(&vm->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&vm->cond, &ca);

    if (cfg->mem_size < (4u << 20) || cfg->mem_size % (2u << 20)) {
        logmsg("--mem must be a multiple of 2 MiB and at least 4 MiB");
        return -1;
    }
    if (cfg->mem_size > (uint64_t)MAX_GIB << 30) {
        logmsg("--mem above %d GiB is not supported", MAX_GIB);
        return -1;
    }
    if (cfg->nr_vcpus < 1 || cfg->nr_vcpus > MAX_VCPUS) {
        logmsg("--vcpus must be 1..%d", MAX_VCPUS);
        return -1;
    }
    vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (vm->kvm_fd < 0) {
        logmsg("/dev/kvm: %s", strerror(errno));
        return -2;
    }
    if (ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
        logmsg("KVM API version mismatch");
        return -2;
    }
    vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
    if (vm->vm_fd < 0) {
        logmsg("KVM_CREATE_VM: %s", strerror(errno));
        return -2;
    }
    vm->run_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (vm->run_size <= 0)
        return -1;
    vm->tsc_hz = measure_tsc_hz();

    /* The dirty ring, where the kernel offers it (and not refused with
     * --dirty-log bitmap): it must be enabled before any vCPU exists. Each
     * vCPU gets the largest ring offered, up to 1 MiB (65536 entries). */
    pthread_mutex_init(&vm->ring_lock, NULL);
    if (cfg->dirty_log != DIRTY_LOG_BITMAP) {
        int max_bytes = check_cap(vm->vm_fd, KVM_CAP_DIRTY_LOG_RING);
        if (max_bytes > 0) {
            uint32_t bytes = (uint32_t)max_bytes < (1u << 20) ? (uint32_t)max_bytes : (1u << 20);
            const char *env = getenv("KVMHOST_RING_BYTES"); /* testing aid: a smaller ring fills up more often */
            if (env && atoi(env) >= 4096 && (uint32_t)atoi(env) < bytes)
                bytes = (uint32_t)atoi(env);
            struct kvm_enable_cap cap = { .cap = KVM_CAP_DIRTY_LOG_RING };
            cap.args[0] = bytes;
            if (ioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap) == 0) {
                vm->dirty_ring = 1;
                vm->ring_entries = bytes / sizeof(struct kvm_dirty_gfn);
            } else {
                logmsg("KVM_ENABLE_CAP(DIRTY_LOG_RING, %u): %s; using the dirty bitmap", bytes, strerror(errno));
            }
        }
        if (!vm->dirty_ring && cfg->dirty_log == DIRTY_LOG_RING) {
            logmsg("--dirty-log ring: this kernel offers no KVM dirty ring");
            return -1;
        }
    }

    /* Manual dirty-log protection: GET only reads, CLEAR re-protects what we
     * pass; INITIALLY_SET means turning logging on write-protects nothing.
     * (Bitmap mode only: with a ring KVM keeps no bitmap.) */
    if (!vm->dirty_ring && check_cap(vm->vm_fd, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)) {
        struct kvm_enable_cap cap = { .cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 };
        cap.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET;
        if (ioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap) == 0)
            vm->manual_protect = 1;
        else
            logmsg("KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2): %s; using classic dirty log",
                   strerror(errno));
    }

    vm->mem_size = cfg->mem_size;
    if (map_memory(vm, cfg->hugepages) < 0) {
        logmsg("cannot map %llu bytes of guest memory: %s", (unsigned long long)vm->mem_size,
               strerror(errno));
        return -1;
    }
    uint64_t slot_size = cfg->slot_size ? cfg->slot_size : (1ull << 30);
    slot_size = (slot_size + (2u << 20) - 1) & ~(uint64_t)((2u << 20) - 1);
    int max_slots = check_cap(vm->kvm_fd, KVM_CAP_NR_MEMSLOTS);
    if (max_slots <= 0 || max_slots > MAX_SLOTS)
        max_slots = MAX_SLOTS;
    for (uint64_t gpa = 0; gpa < vm->mem_size; gpa += slot_size) {
        if (vm->nslots >= (uint32_t)max_slots) {
            logmsg("too many memory slots; raise --slot-size");
            return -1;
        }
        uint32_t i = vm->nslots++;
        vm->slots[i].gpa = gpa;
        vm->slots[i].size = vm->mem_size - gpa < slot_size ? vm->mem_size - gpa : slot_size;
        vm->slots[i].host = vm->mem + gpa;
        if (set_slot(vm, i, 0) < 0)
            return -1;
    }

    if (setup_cpuid(vm) < 0) {
        logmsg("KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
        return -1;
    }
    int xs2 = check_cap(vm->vm_fd, KVM_CAP_XSAVE2);
    if (xs2 > 0)
        vm->xsave_size = (uint32_t)xs2;
    else if (check_cap(vm->kvm_fd, KVM_CAP_XSAVE))
        vm->xsave_size = sizeof(struct kvm_xsave);
    vm->has_xcrs = check_cap(vm->kvm_fd, KVM_CAP_XCRS);
    vm->has_events = check_cap(vm->kvm_fd, KVM_CAP_VCPU_EVENTS);

    vm->nr_vcpus = cfg->nr_vcpus;
    vm->vcpus = calloc(vm->nr_vcpus, sizeof(struct vcpu));
    pthread_condattr_t vca;
    pthread_condattr_init(&vca);
    pthread_condattr_setclock(&vca, CLOCK_MONOTONIC);
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        struct vcpu *v = &vm->vcpus[i];
        v->vm = vm;
        v->id = i;
        pthread_cond_init(&v->cond, &vca);
        v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, i);
        if (v->fd < 0) {
            logmsg("KVM_CREATE_VCPU %u: %s", i, strerror(errno));
            return -1;
        }
        v->run = mmap(NULL, (size_t)vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
        if (v->run == MAP_FAILED) {
            logmsg("mmap kvm_run: %s", strerror(errno));
            return -1;
        }
        if (set_vcpu_cpuid(vm, v) < 0) {
            logmsg("KVM_SET_CPUID2: %s", strerror(errno));
            return -1;
        }
        if (vm->dirty_ring) {
            v->ring = mmap(NULL, (size_t)vm->ring_entries * sizeof(struct kvm_dirty_gfn), PROT_READ | PROT_WRITE,
                           MAP_SHARED, v->fd, (off_t)KVM_DIRTY_LOG_PAGE_OFFSET * getpagesize());
            if (v->ring == MAP_FAILED) {
                v->ring = NULL;
                logmsg("mmap dirty ring of vCPU %u: %s", i, strerror(errno));
                return -1;
            }
        }
    }
    if (vm->dirty_ring)
        for (uint32_t i = 0; i < vm->nslots; i++)
            vm->ring_bitmap[i] = calloc((vm->slots[i].size / 4096 + 63) / 64, 8);
    pick_msrs(vm);
    return 0;
}

void vm_destroy(struct vm *vm)
{
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        if (vm->vcpus[i].ring)
            munmap(vm->vcpus[i].ring, (size_t)vm->ring_entries * sizeof(struct kvm_dirty_gfn));
        if (vm->vcpus[i].run)
            munmap(vm->vcpus[i].run, (size_t)vm->run_size);
        if (vm->vcpus[i].fd > 0)
            close(vm->vcpus[i].fd);
    }
    free(vm->vcpus);
    free(vm->cpuid);
    for (uint32_t i = 0; i < MAX_SLOTS; i++)
        free(vm->ring_bitmap[i]);
    if (vm->vm_fd > 0)
        close(vm->vm_fd);
    if (vm->kvm_fd > 0)
        close(vm->kvm_fd);
    if (vm->mem)
        munmap(vm->mem, vm->map_size);
    memset(vm, 0, sizeof(*vm));
}

int vm_set_dirty_logging(struct vm *vm, int on)
{
    for (uint32_t i = 0; i < vm->nslots; i++)
        if (set_slot(vm, i, on ? KVM_MEM_LOG_DIRTY_PAGES : 0) < 0)
            return -1;
    vm->dirty_logging = on;
    if (vm->dirty_ring) {
        /* Start (or end) with empty rings, bitmaps and counts. */
        vm_harvest_dirty_rings(vm);
        pthread_mutex_lock(&vm->ring_lock);
        for (uint32_t i = 0; i < vm->nslots; i++)
            memset(vm->ring_bitmap[i], 0, (vm->slots[i].size / 4096 + 63) / 64 * 8);
        for (uint32_t i = 0; i < vm->nr_vcpus; i++)
            vm->vcpus[i].ring_pages = 0;
        pthread_mutex_unlock(&vm->ring_lock);
    }
    return 0;
}

const char *vm_dirty_log_name(const struct vm *vm)
{
    return vm->dirty_ring ? "KVM dirty ring" : vm->manual_protect ? "KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG"
                                                                  : "KVM_GET_DIRTY_LOG";
}

/*
 * Harvest: walk each vCPU's ring from where we stopped, take every entry
 * KVM published (flags DIRTY, read with acquire), set its page in the slot's
 * bitmap, count it for that vCPU, hand the entry back (flags RESET, release);
 * then KVM_RESET_DIRTY_RINGS re-protects the pages and frees the entries.
 * One lock: the migration thread and vCPUs whose ring filled up both call it.
 */
int vm_harvest_dirty_rings(struct vm *vm)
{
    if (!vm->dirty_ring)
        return 0;
    pthread_mutex_lock(&vm->ring_lock);
    uint64_t taken = 0;
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        struct vcpu *v = &vm->vcpus[i];
        for (;;) {
            struct kvm_dirty_gfn *e = &v->ring[v->ring_next % vm->ring_entries];
            uint32_t flags = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);
            if (!(flags & KVM_DIRTY_GFN_F_DIRTY))
                break;
            uint32_t slot = e->slot & 0xffff;  /* as_id in the high half: always 0 here */
            uint64_t page = e->offset;
            if (slot < vm->nslots && page < vm->slots[slot].size / 4096)
                vm->ring_bitmap[slot][page / 64] |= 1ull << (page % 64);
            v->ring_pages++;
            __atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
            v->ring_next++;
            taken++;
        }
    }
    /* Reset until the kernel has nothing left to reset. It stops early,
     * returning how many entries it did reset, when a signal is pending (a
     * vCPU thread harvesting after a ring-full exit gets kicks): entries we
     * flagged RESET but it did not process leave their pages writable with
     * no entry to come, so writes after we send them would be lost, and a
     * ring that stays soft-full exits KVM_RUN for ever. Called even when
     * this harvest took nothing, to finish an earlier partial reset. The
     * kick signal is blocked meanwhile so a vCPU thread gets through in one. */
    int r = 0;
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    for (int round = 0;; round++) {
        int n = ioctl(vm->vm_fd, KVM_RESET_DIRTY_RINGS, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            logmsg("KVM_RESET_DIRTY_RINGS: %s", strerror(errno));
            r = -1;
            break;
        }
        if (n == 0)
            break;
        if (round > 0)
            vm->ring_partial_resets++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    vm->ring_harvests++;
    vm->ring_entries_total += taken;
    pthread_mutex_unlock(&vm->ring_lock);
    return r;
}

void vm_take_vcpu_dirty_counts(struct vm *vm, uint64_t *counts, uint32_t n)
{
    pthread_mutex_lock(&vm->ring_lock);
    for (uint32_t i = 0; i < n && i < vm->nr_vcpus; i++) {
        counts[i] = vm->vcpus[i].ring_pages;
        vm->vcpus[i].ring_pages = 0;
    }
    pthread_mutex_unlock(&vm->ring_lock);
}

/*
 * One slot's dirty pages since the last call, into `bitmap` (KVM's layout is
 * the library's: bit i = page i of the slot). With manual protect, GET reads
 * the log and CLEAR re-arms exactly the pages we are about to send.
 */
int vm_get_dirty_log(struct vm *vm, uint32_t slot, uint64_t *bitmap, uint64_t npages)
{
    if (slot >= vm->nslots || npages != vm->slots[slot].size / 4096)
        return -1;
    if (vm->dirty_ring) {
        /* What the rings hold now, plus what was harvested before (ring
         * full exits): hand over this slot's bitmap and start it afresh. */
        if (vm_harvest_dirty_rings(vm) < 0)
            return -1;
        size_t words = (size_t)(npages + 63) / 64;
        pthread_mutex_lock(&vm->ring_lock);
        for (size_t w = 0; w < words; w++)
            bitmap[w] |= vm->ring_bitmap[slot][w];
        memset(vm->ring_bitmap[slot], 0, words * 8);
        pthread_mutex_unlock(&vm->ring_lock);
        return 0;
    }
    struct kvm_dirty_log log = { .slot = slot, .dirty_bitmap = bitmap };
    if (ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &log) < 0) {
        logmsg("KVM_GET_DIRTY_LOG slot %u: %s", slot, strerror(errno));
        return -1;
    }
    if (vm->manual_protect) {
        struct kvm_clear_dirty_log clr = {
            .slot = slot, .num_pages = (uint32_t)npages, .first_page = 0, .dirty_bitmap = bitmap,
        };
        if (ioctl(vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &clr) < 0) {
            logmsg("KVM_CLEAR_DIRTY_LOG slot %u: %s", slot, strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* ---- long mode from the host ---- */

static uint64_t seg_desc(uint32_t base, uint32_t limit, uint32_t access, uint32_t flags)
{
    return ((uint64_t)(limit & 0xffff)) | ((uint64_t)(base & 0xffffff) << 16) |
           ((uint64_t)access << 40) | ((uint64_t)((limit >> 16) & 0xf) << 48) |
           ((uint64_t)flags << 52) | ((uint64_t)(base >> 24) << 56);
}

int vm_setup_longmode(struct vm *vm)
{
    vm->mem_fresh = 0;
    size_t code_len = (size_t)(guest_bin_end - guest_bin);
    if (code_len > CODE_MAX) {
        logmsg("guest.bin is %zu bytes, more than %d", code_len, CODE_MAX);
        return -1;
    }
    memcpy(gpa_ptr(vm, GPA_CODE), guest_bin, code_len);

    /* GDT: null, kernel code/data (exceptions only), user data, user code, TSS. */
    uint64_t *gdt = gpa_ptr(vm, GPA_GDT);
    gdt[0] = 0;
    gdt[1] = seg_desc(0, 0xfffff, 0x9a, 0xa);  /* P, DPL0, code r/x; G, L */
    gdt[2] = seg_desc(0, 0xfffff, 0x92, 0xc);  /* P, DPL0, data r/w; G, D/B */
    gdt[3] = seg_desc(0, 0xfffff, 0xf2, 0xc);  /* P, DPL3, data r/w */
    gdt[4] = seg_desc(0, 0xfffff, 0xfa, 0xa);  /* P, DPL3, code r/x, L */
    gdt[5] = seg_desc(GPA_TSS, 0x67, 0x8b, 0); /* P, busy 64-bit TSS */
    gdt[6] = 0;                                /* TSS base bits 63:32 */

    uint8_t *tss = gpa_ptr(vm, GPA_TSS);
    memset(tss, 0, 0x68);
    uint64_t rsp0 = GPA_KSTACK_TOP;
    memcpy(tss + 4, &rsp0, 8);
    uint16_t iopb = 0x68;
    memcpy(tss + 0x66, &iopb, 2);

    /* IDT: interrupt gates to the ring-0 stubs in guest.bin. */
    uint64_t *idt = gpa_ptr(vm, GPA_IDT);
    for (int v = 0; v < EXC_VECTORS; v++) {
        uint64_t off = GPA_CODE + EXC_STUBS_OFF + (uint64_t)v * EXC_STUB_SIZE;
        idt[2 * v] = (off & 0xffff) | ((uint64_t)SEL_KCODE << 16) | (0x8eull << 40) |
                     (((off >> 16) & 0xffff) << 48);
        idt[2 * v + 1] = off >> 32;
    }

    /* Identity map all RAM with 2 MiB pages, present | writable | user. */
    uint64_t *pml4 = gpa_ptr(vm, GPA_PML4);
    uint64_t *pdpt = gpa_ptr(vm, GPA_PDPT);
    memset(pml4, 0, 4096);
    memset(pdpt, 0, 4096);
    pml4[0] = GPA_PDPT | 0x7;
    uint64_t gib = (vm->mem_size + (1ull << 30) - 1) >> 30;
    for (uint64_t g = 0; g < gib; g++) {
        uint64_t *pd = gpa_ptr(vm, GPA_PD + g * 4096);
        memset(pd, 0, 4096);
        pdpt[g] = (GPA_PD + g * 4096) | 0x7;
        for (uint64_t j = 0; j < 512; j++) {
            uint64_t addr = (g << 30) + (j << 21);
            if (addr < vm->mem_size)
                pd[j] = addr | 0x87;  /* P | RW | US | PS */
        }
    }

    /* The doorbell page: a 2 MiB mapping at GPA_MMIO with no memory slot behind it. */
    uint64_t *mpd = gpa_ptr(vm, GPA_MMIO_PD);
    memset(mpd, 0, 4096);
    pdpt[GPA_MMIO >> 30] = GPA_MMIO_PD | 0x7;
    mpd[(GPA_MMIO >> 21) & 511] = GPA_MMIO | 0x87;

    for (uint32_t i = 0; i < vm->nr_vcpus; i++)
        if (vcpu_init_boot_state(&vm->vcpus[i]) < 0)
            return -1;
    return 0;
}
