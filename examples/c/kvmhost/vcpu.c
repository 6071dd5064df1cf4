/*
 * vcpu.c - vCPU threads, the kvmtool-style pause and kick, the sleep the
 * guest asks for, and the calls to the library's throttle point.
 *
 * One thread per vCPU runs KVM_RUN. To get a vCPU out of guest mode another
 * thread sets kvm_run->immediate_exit = 1 and sends SIGUSR1 (empty handler,
 * no SA_RESTART): KVM_RUN returns -EINTR either way, and immediate_exit
 * covers the race where the signal lands just before KVM_RUN is entered.
 *
 * State of a vCPU (under vm->lock):
 *   RUNNING  in KVM_RUN or about to enter it
 *   OUTSIDE  sleeping for the guest or in the throttle point; the last exit
 *            was completed ("settled"), so its registers are final
 *   PARKED   waiting for vcpus_resume
 *   DEAD     the guest failed (exception, shutdown) or the thread stopped
 * vcpus_pause() sets vm->paused and returns once no vCPU is RUNNING; a vCPU
 * checks vm->paused under the lock before every KVM_RUN.
 *
 * An MMIO (or I/O) exit is completed by KVM only at the next KVM_RUN (RIP
 * still points at the doorbell store), so before a vCPU leaves RUNNING it
 * "settles": one KVM_RUN with immediate_exit = 1, which finishes the access
 * and returns -EINTR without running guest code.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

#include "kvmhost.h"
#include "migrationkit.h"

#define KICK_SIGNAL SIGUSR1
#define MAX_SLEEP_NS (1500ull * 1000000ull)

static void kick_handler(int sig)
{
    (void)sig;
}

void vcpu_signal_setup(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kick_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: KVM_RUN must return EINTR */
    sigaction(KICK_SIGNAL, &sa, NULL);
}

static void set_immediate_exit(struct vcpu *v, int on)
{
    __atomic_store_n(&v->run->immediate_exit, (uint8_t)on, __ATOMIC_SEQ_CST);
}

int vcpu_init_boot_state(struct vcpu *v)
{
    struct kvm_sregs s;
    if (ioctl(v->fd, KVM_GET_SREGS, &s) < 0)
        return -1;
    struct kvm_segment code = {
        .base = 0, .limit = 0xffffffff, .selector = SEL_UCODE, .type = 0xb, .present = 1,
        .dpl = 3, .db = 0, .s = 1, .l = 1, .g = 1,
    };
    struct kvm_segment data = {
        .base = 0, .limit = 0xffffffff, .selector = SEL_UDATA, .type = 0x3, .present = 1,
        .dpl = 3, .db = 1, .s = 1, .l = 0, .g = 1,
    };
    s.cs = code;
    s.ds = s.es = s.fs = s.gs = s.ss = data;
    s.tr = (struct kvm_segment){
        .base = GPA_TSS, .limit = 0x67, .selector = SEL_TSS, .type = 0xb, .present = 1,
    };
    s.ldt = (struct kvm_segment){ .selector = 0, .type = 0x2, .present = 1, .unusable = 1 };
    s.gdt.base = GPA_GDT;
    s.gdt.limit = 7 * 8 - 1;
    s.idt.base = GPA_IDT;
    s.idt.limit = EXC_VECTORS * 16 - 1;
    s.cr3 = GPA_PML4;
    s.cr4 = (1u << 5) | (1u << 9) | (1u << 10);                 /* PAE, OSFXSR, OSXMMEXCPT */
    s.cr0 = (1u << 0) | (1u << 1) | (1u << 4) | (1u << 5) | (1u << 16) | (1u << 31); /* PE MP ET NE WP PG */
    s.efer = (1u << 8) | (1u << 10);                             /* LME, LMA */
    if (ioctl(v->fd, KVM_SET_SREGS, &s) < 0) {
        logmsg("vCPU %u KVM_SET_SREGS: %s", v->id, strerror(errno));
        return -1;
    }
    struct kvm_regs r;
    memset(&r, 0, sizeof(r));
    r.rip = GPA_CODE;
    r.rsp = GPA_STACKS + (uint64_t)(v->id + 1) * STACK_SIZE;
    r.rdi = v->id;
    r.rflags = 0x2;    /* IF = 0: no interrupts; doorbells are MMIO stores, no IOPL needed */
    if (ioctl(v->fd, KVM_SET_REGS, &r) < 0) {
        logmsg("vCPU %u KVM_SET_REGS: %s", v->id, strerror(errno));
        return -1;
    }
    return 0;
}

static void set_fatal(struct vm *vm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_fatal(struct vm *vm, const char *fmt, ...)
{
    int expected = 0;
    if (!atomic_compare_exchange_strong(&vm->fatal, &expected, 1))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(vm->fatal_msg, sizeof(vm->fatal_msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "kvmhost: GUEST ERROR: %s\n", vm->fatal_msg);
}

void vcpu_dump(struct vcpu *v, FILE *f)
{
    struct kvm_regs r;
    struct kvm_sregs s;
    if (ioctl(v->fd, KVM_GET_REGS, &r) < 0 || ioctl(v->fd, KVM_GET_SREGS, &s) < 0) {
        fprintf(f, "vCPU %u: cannot read registers: %s\n", v->id, strerror(errno));
        return;
    }
    fprintf(f, "vCPU %u: rip=%#llx rsp=%#llx rflags=%#llx rax=%#llx rbx=%#llx rcx=%#llx rdx=%#llx\n"
               "        r12=%#llx r13=%#llx r14=%#llx r15=%#llx cs=%#x cpl=%u cr0=%#llx cr3=%#llx cr4=%#llx efer=%#llx\n",
            v->id, (unsigned long long)r.rip, (unsigned long long)r.rsp, (unsigned long long)r.rflags,
            (unsigned long long)r.rax, (unsigned long long)r.rbx, (unsigned long long)r.rcx,
            (unsigned long long)r.rdx, (unsigned long long)r.r12, (unsigned long long)r.r13,
            (unsigned long long)r.r14, (unsigned long long)r.r15, s.cs.selector, s.cs.dpl,
            (unsigned long long)s.cr0, (unsigned long long)s.cr3, (unsigned long long)s.cr4,
            (unsigned long long)s.efer);
}

/* Finish a pending I/O exit without running guest code. */
static void settle(struct vcpu *v)
{
    if (!v->unsettled)
        return;
    set_immediate_exit(v, 1);
    int r = ioctl(v->fd, KVM_RUN, 0);
    if (r == 0 || errno != EINTR)
        logmsg("vCPU %u: settling KVM_RUN returned %d (%s), exit %u", v->id, r,
               r < 0 ? strerror(errno) : "ok", v->run->exit_reason);
    set_immediate_exit(v, 0);
    v->unsettled = 0;
}

/* Called with vm->lock held. */
static void set_state(struct vcpu *v, int state)
{
    v->state = state;
    pthread_cond_broadcast(&v->vm->cond);
}

static struct timespec deadline_after(uint64_t ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t t = (uint64_t)ts.tv_nsec + ns;
    ts.tv_sec += (time_t)(t / 1000000000ull);
    ts.tv_nsec = (long)(t % 1000000000ull);
    return ts;
}

/* The guest asked to sleep `ticks` TSC ticks: block like a halted vCPU, until
 * the time is up, a pause, a kick, or a stop. */
static void guest_sleep(struct vcpu *v, uint64_t ticks)
{
    struct vm *vm = v->vm;
    uint64_t ns = (uint64_t)((unsigned __int128)ticks * 1000000000u / vm->tsc_hz);
    if (ns > MAX_SLEEP_NS)
        ns = MAX_SLEEP_NS;
    settle(v);
    uint64_t t0 = now_ns();
    struct timespec dl = deadline_after(ns);
    pthread_mutex_lock(&vm->lock);
    set_state(v, VCPU_OUTSIDE);
    while (!vm->paused && !v->stop && !atomic_load(&v->kick_pending)) {
        if (pthread_cond_timedwait(&v->cond, &vm->lock, &dl) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&vm->lock);
    v->sleeps++;
    v->sleep_ns += now_ns() - t0;
}

/* A doorbell store to the MMIO page. */
static void handle_mmio(struct vcpu *v)
{
    struct kvm_run *run = v->run;
    if (!run->mmio.is_write) {
        memset(run->mmio.data, 0, sizeof(run->mmio.data));
        return;
    }
    uint64_t val = 0;
    memcpy(&val, run->mmio.data, run->mmio.len < 8 ? run->mmio.len : 8);
    struct vm *vm = v->vm;
    switch (run->mmio.phys_addr - GPA_MMIO) {
    case MMIO_SLEEP:
        guest_sleep(v, val);
        break;
    case MMIO_EVENT:
        if (val == EV_STARTED)
            v->started_event++;
        else if (val == EV_BAD_PARAMS)
            set_fatal(vm, "vCPU %u: guest found no valid parameter page", v->id);
        break;
    case MMIO_EXCEPTION:
        set_fatal(vm, "vCPU %u: guest exception %llu (error %#llx) at rip %#llx cs %#llx rsp %#llx cr2 %#llx",
                  v->id, (unsigned long long)val, (unsigned long long)gpa_u64(vm, GPA_CRASH + C_ERROR),
                  (unsigned long long)gpa_u64(vm, GPA_CRASH + C_RIP),
                  (unsigned long long)gpa_u64(vm, GPA_CRASH + C_CS),
                  (unsigned long long)gpa_u64(vm, GPA_CRASH + C_RSP),
                  (unsigned long long)gpa_u64(vm, GPA_CRASH + C_CR2));
        break;
    default:
        set_fatal(vm, "vCPU %u: store to unknown MMIO address %#llx", v->id,
                  (unsigned long long)run->mmio.phys_addr);
        break;
    }
}

static void *vcpu_thread(void *arg)
{
    struct vcpu *v = arg;
    struct vm *vm = v->vm;
    char name[16];
    snprintf(name, sizeof(name), "vcpu%u", v->id);
    pthread_setname_np(pthread_self(), name);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, KICK_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);

    for (;;) {
        pthread_mutex_lock(&vm->lock);
        while ((vm->paused || atomic_load(&vm->fatal)) && !v->stop) {
            if (v->unsettled) {
                pthread_mutex_unlock(&vm->lock);
                settle(v);
                pthread_mutex_lock(&vm->lock);
                continue;
            }
            set_state(v, VCPU_PARKED);
            pthread_cond_wait(&v->cond, &vm->lock);
        }
        if (v->stop) {
            set_state(v, VCPU_DEAD);
            pthread_mutex_unlock(&vm->lock);
            break;
        }
        if (atomic_exchange(&v->kick_pending, 0)) {
            /* Kicked by the library's throttle thread: sleep as the throttle says. */
            pthread_mutex_unlock(&vm->lock);
            settle(v);
            pthread_mutex_lock(&vm->lock);
            set_state(v, VCPU_OUTSIDE);
            mk_source *src = vm->throttle_src;
            if (src)
                vm->in_throttle++;
            pthread_mutex_unlock(&vm->lock);
            if (src) {
                uint64_t t0 = now_ns();
                mk_source_throttle_point(src, v->id);
                v->throttle_ns += now_ns() - t0;
                v->throttle_calls++;
                pthread_mutex_lock(&vm->lock);
                vm->in_throttle--;
                pthread_cond_broadcast(&vm->cond);
                pthread_mutex_unlock(&vm->lock);
            }
            continue;
        }
        set_state(v, VCPU_RUNNING);
        pthread_mutex_unlock(&vm->lock);

        int r = ioctl(v->fd, KVM_RUN, 0);
        int err = errno;
        set_immediate_exit(v, 0);
        v->exits++;
        v->unsettled = 0;
        if (r < 0) {
            if (err == EINTR || err == EAGAIN)
                continue;
            set_fatal(vm, "vCPU %u: KVM_RUN: %s", v->id, strerror(err));
            vcpu_dump(v, stderr);
            continue;
        }
        switch (v->run->exit_reason) {
        case KVM_EXIT_MMIO:
            v->io_exits++;
            v->unsettled = 1;
            handle_mmio(v);
            break;
        case KVM_EXIT_INTR:
            break;
        case KVM_EXIT_DIRTY_RING_FULL:
            /* Our ring is (nearly) full: harvest every ring and reset, or
             * KVM_RUN exits again at once. */
            v->vm->ring_full_exits++;
            if (vm_harvest_dirty_rings(v->vm) < 0)
                set_fatal(vm, "vCPU %u: dirty ring full and KVM_RESET_DIRTY_RINGS failed", v->id);
            break;
        case KVM_EXIT_HLT:
            set_fatal(vm, "vCPU %u halted (after a guest exception?)", v->id);
            break;
        case KVM_EXIT_SHUTDOWN:
            set_fatal(vm, "vCPU %u: triple fault (KVM_EXIT_SHUTDOWN)", v->id);
            vcpu_dump(v, stderr);
            break;
        case KVM_EXIT_INTERNAL_ERROR:
            set_fatal(vm, "vCPU %u: KVM internal error, suberror %u", v->id, v->run->internal.suberror);
            vcpu_dump(v, stderr);
            break;
        case KVM_EXIT_FAIL_ENTRY:
            set_fatal(vm, "vCPU %u: entry failed, reason %#llx", v->id,
                      (unsigned long long)v->run->fail_entry.hardware_entry_failure_reason);
            vcpu_dump(v, stderr);
            break;
        default:
            set_fatal(vm, "vCPU %u: unexpected exit reason %u", v->id, v->run->exit_reason);
            vcpu_dump(v, stderr);
            break;
        }
    }
    return NULL;
}

int vcpus_start(struct vm *vm, int paused)
{
    vcpu_signal_setup();
    pthread_mutex_lock(&vm->lock);
    vm->paused = paused;
    for (uint32_t i = 0; i < vm->nr_vcpus; i++)
        vm->vcpus[i].state = paused ? VCPU_PARKED : VCPU_RUNNING;
    pthread_mutex_unlock(&vm->lock);
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        struct vcpu *v = &vm->vcpus[i];
        if (pthread_create(&v->thread, NULL, vcpu_thread, v) != 0)
            return -1;
        v->thread_started = 1;
    }
    return 0;
}

static void poke(struct vcpu *v)
{
    set_immediate_exit(v, 1);
    if (v->thread_started)
        pthread_kill(v->thread, KICK_SIGNAL);
    pthread_cond_signal(&v->cond);
}

int vcpus_pause(struct vm *vm)
{
    pthread_mutex_lock(&vm->lock);
    vm->pause_ns = now_ns();
    vm->paused = 1;
    for (uint32_t i = 0; i < vm->nr_vcpus; i++)
        poke(&vm->vcpus[i]);
    for (;;) {
        uint32_t running = 0;
        for (uint32_t i = 0; i < vm->nr_vcpus; i++)
            if (vm->vcpus[i].state == VCPU_RUNNING)
                running++;
        if (!running)
            break;
        struct timespec dl = deadline_after(50 * 1000000ull);
        if (pthread_cond_timedwait(&vm->cond, &vm->lock, &dl) == ETIMEDOUT) {
            /* a signal can be lost only if the thread was between checks; poke again */
            for (uint32_t i = 0; i < vm->nr_vcpus; i++)
                if (vm->vcpus[i].state == VCPU_RUNNING)
                    poke(&vm->vcpus[i]);
        }
    }
    pthread_mutex_unlock(&vm->lock);
    return 0;
}

void vcpus_resume(struct vm *vm)
{
    pthread_mutex_lock(&vm->lock);
    vm->paused = 0;
    vm->resume_ns = now_ns();
    for (uint32_t i = 0; i < vm->nr_vcpus; i++)
        pthread_cond_signal(&vm->vcpus[i].cond);
    pthread_mutex_unlock(&vm->lock);
}

void vcpu_kick(struct vcpu *v)
{
    struct vm *vm = v->vm;
    atomic_store(&v->kick_pending, 1);
    v->kicks++;
    set_immediate_exit(v, 1);
    if (v->thread_started)
        pthread_kill(v->thread, KICK_SIGNAL);
    /* wake it if it sleeps for the guest (vm->lock is only ever held briefly) */
    pthread_mutex_lock(&vm->lock);
    pthread_cond_signal(&v->cond);
    pthread_mutex_unlock(&vm->lock);
}

void vcpus_stop(struct vm *vm)
{
    pthread_mutex_lock(&vm->lock);
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        vm->vcpus[i].stop = 1;
        poke(&vm->vcpus[i]);
    }
    pthread_mutex_unlock(&vm->lock);
    for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
        if (vm->vcpus[i].thread_started) {
            pthread_join(vm->vcpus[i].thread, NULL);
            vm->vcpus[i].thread_started = 0;
        }
    }
}
