/*
 * guest.S - the guest program. 64-bit long mode, ring 3, IOPL 3.
 *
 * The host loads this at GPA_CODE and starts every vCPU at guest_entry with
 * RDI = vCPU id and RSP = its own stack, already in long mode at CPL 3 (the
 * host set CR0/CR4/EFER, the GDT and page tables through KVM_SET_SREGS).
 * Nothing on the hot path traps: the workload reports through its status page
 * (plain stores the host reads), and the only exits are doorbell stores to
 * the MMIO page: MMIO_SLEEP when the vCPU is ahead of its pace (the host
 * sleeps the vCPU thread, as a VMM blocks a halted vCPU) and one MMIO_EVENT
 * at start. Exceptions (bugs only) go through ring-0 stubs that record the
 * frame at GPA_CRASH and ring MMIO_EXCEPTION.
 *
 * Roles (from the parameter page, per vCPU):
 *   dirty    sweep the vCPU's slice of the working set page by page,
 *            incrementing byte 0 of each page (QEMU's migration-test
 *            invariant), paced to a dirty rate with rdtsc;
 *   compute  run an LCG in registers for P_COMPUTE_ON ticks, publish the
 *            step count and value, sleep P_COMPUTE_OFF ticks;
 *   idle     count a heartbeat and sleep P_IDLE_TICKS.
 *
 * Register use (kept across the whole run, saved/restored by migration):
 *   r15 parameter page, r14 this vCPU's status page, rbx its parameter block,
 *   dirty: r12 slice base, r11 slice pages, r13 next page, rbp target TSC;
 *   compute: r12 LCG value, r13 steps, r8/r9 LCG constants, rbp round start.
 */
#include "guest_abi.h"

        .code64
        .text
        .globl  guest_entry
guest_entry:
        mov     $GPA_PARAMS, %r15
        movabs  $PARAMS_MAGIC, %rax
        cmp     %rax, P_MAGIC(%r15)
        jne     bad_params

        mov     %rdi, %r14
        shl     $12, %r14
        add     $GPA_STATUS, %r14
        incq    S_STARTS(%r14)
        mov     %rdi, S_VCPU(%r14)
        movabs  $STATUS_MAGIC, %rax
        mov     %rax, S_MAGIC(%r14)

        mov     %rdi, %rbx
        shl     $5, %rbx
        lea     P_VCPU(%r15,%rbx), %rbx
        mov     PV_ROLE(%rbx), %rax
        mov     %rax, S_ROLE(%r14)

        movabs  $GPA_MMIO, %rdx
        movq    $EV_STARTED, MMIO_EVENT(%rdx)

        mov     S_ROLE(%r14), %rax
        cmp     $ROLE_DIRTY, %rax
        je      dirty_start
        cmp     $ROLE_COMPUTE, %rax
        je      compute_start
        jmp     idle_loop

bad_params:
        movabs  $GPA_MMIO, %rdx
        movq    $EV_BAD_PARAMS, MMIO_EVENT(%rdx)
        jmp     bad_params

/* ---- idle: heartbeat + sleep ---- */
idle_loop:
        incq    S_WORK(%r14)
        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        mov     %rax, S_LAST_TSC(%r14)
        mov     P_IDLE_TICKS(%r15), %rax
        call    sleep_ticks
        jmp     idle_loop

/* sleep_ticks: ask the host to sleep RAX TSC ticks. */
sleep_ticks:
        incq    S_SLEEPS(%r14)
        movabs  $GPA_MMIO, %rdx
        mov     %rax, MMIO_SLEEP(%rdx)
        ret

/* ---- dirty: the per-page counter sweep ---- */
dirty_start:
        mov     PV_SLICE_BASE(%rbx), %r12
        mov     PV_SLICE_PAGES(%rbx), %r11
        test    %r11, %r11
        jz      idle_loop
        xor     %r13d, %r13d
        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        mov     %rax, %rbp

dirty_loop:
        mov     $DIRTY_CHUNK, %ecx
1:      mov     %r13, %rax
        shl     $12, %rax
        incb    (%r12,%rax)
        inc     %r13
        cmp     %r11, %r13
        jb      2f
        xor     %r13d, %r13d
        incq    S_SWEEPS(%r14)
2:      dec     %ecx
        jnz     1b
        mov     %r13, S_POS(%r14)
        addq    $DIRTY_CHUNK, S_WORK(%r14)

        mov     P_CHUNK_TICKS(%r15), %rax
        test    %rax, %rax
        jz      dirty_loop              /* unpaced: as fast as it can */
        add     %rax, %rbp              /* when this chunk should have ended */
pace:
        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        mov     %rax, S_LAST_TSC(%r14)
        mov     %rbp, %rcx
        sub     %rax, %rcx              /* target - now; > 0 means ahead */
        jns     3f
        neg     %rcx                    /* behind by rcx */
        cmp     P_MAX_LAG_TICKS(%r15), %rcx
        jbe     dirty_loop
        mov     %rax, %rbp              /* paused or throttled: drop the debt, no burst */
        jmp     dirty_loop
3:      cmp     P_MIN_SLEEP_TICKS(%r15), %rcx
        jb      dirty_loop
        cmp     P_MAX_AHEAD_TICKS(%r15), %rcx
        jbe     4f
        mov     %rax, %rbp              /* TSC went backwards: resync */
        jmp     dirty_loop
4:      mov     %rcx, %rax
        call    sleep_ticks
        jmp     pace                    /* woken early (kick, pause)? check again */

/* ---- compute: LCG rounds with a duty cycle ---- */
compute_start:
        mov     PV_LCG_SEED(%rbx), %r12
        xor     %r13d, %r13d
        mov     %r12, S_LCG_X(%r14)
        mov     %r13, S_LCG_N(%r14)
        movabs  $LCG_MUL, %r8
        movabs  $LCG_ADD, %r9
compute_round:
        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        mov     %rax, %rbp
1:      mov     $LCG_BATCH, %ecx
        mov     %r12, %rax
2:      imul    %r8, %rax
        add     %r9, %rax
        dec     %ecx
        jnz     2b
        mov     %rax, %r12
        add     $LCG_BATCH, %r13
        mov     %r12, S_LCG_X(%r14)     /* X first, then N: a torn pair has X one batch ahead */
        mov     %r13, S_LCG_N(%r14)
        addq    $LCG_BATCH, S_WORK(%r14)
        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        mov     %rax, S_LAST_TSC(%r14)
        sub     %rbp, %rax              /* elapsed; huge if the TSC went back, which ends the round */
        cmp     P_COMPUTE_ON(%r15), %rax
        jb      1b
        mov     P_COMPUTE_OFF(%r15), %rax
        test    %rax, %rax
        jz      compute_round
        call    sleep_ticks
        jmp     compute_round

/* ---- exception stubs (ring 0; bugs only), at a fixed offset for the IDT ---- */
        .org    EXC_STUBS_OFF
        .irp    vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .balign EXC_STUB_SIZE
        .if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
        pushq   $\vec
        .else
        pushq   $0
        pushq   $\vec
        .endif
        jmp     exc_common
        .endr

exc_common:
        mov     $GPA_CRASH, %rdi
        mov     0(%rsp), %rax
        mov     %rax, C_VECTOR(%rdi)
        mov     8(%rsp), %rax
        mov     %rax, C_ERROR(%rdi)
        mov     16(%rsp), %rax
        mov     %rax, C_RIP(%rdi)
        mov     24(%rsp), %rax
        mov     %rax, C_CS(%rdi)
        mov     32(%rsp), %rax
        mov     %rax, C_RFLAGS(%rdi)
        mov     40(%rsp), %rax
        mov     %rax, C_RSP(%rdi)
        mov     %cr2, %rax
        mov     %rax, C_CR2(%rdi)
        mov     0(%rsp), %rax
        movabs  $GPA_MMIO, %rdx
        mov     %rax, MMIO_EXCEPTION(%rdx)
5:      hlt
        jmp     5b
