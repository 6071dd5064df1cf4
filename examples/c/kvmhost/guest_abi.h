/*
 * guest_abi.h - the contract between the host (C) and the guest program
 * (guest.S): guest-physical memory layout, I/O ports, and the offsets of the
 * parameter page (host -> guest) and the per-vCPU status pages (guest ->
 * host). Only #defines, so the assembler can include it too.
 */
#ifndef KVMHOST_GUEST_ABI_H
#define KVMHOST_GUEST_ABI_H

/* ---- guest-physical memory layout (identity mapped, 2 MiB pages, U/S = 1) ---- */
#define GPA_GDT          0x1000   /* GDT: null, kcode, kdata, udata, ucode, TSS */
#define GPA_TSS          0x1100   /* 64-bit TSS (RSP0 for exceptions) */
#define GPA_IDT          0x1200   /* 32 interrupt gates -> exception stubs */
#define GPA_PARAMS       0x2000   /* parameter page, written by the host */
#define GPA_STATUS       0x3000   /* status page of vCPU i at GPA_STATUS + i * 0x1000 */
#define MAX_VCPUS        8
#define GPA_CRASH        0xB000   /* exception handler writes what happened here */
#define GPA_KSTACK_TOP   0x10000  /* ring-0 stack (exceptions only), 0xC000..0x10000 */
#define GPA_PML4         0x10000
#define GPA_PDPT         0x11000
#define GPA_PD           0x12000  /* one page directory per GiB, up to 64 GiB */
#define MAX_GIB          64
#define GPA_CODE         0x100000 /* guest.bin is loaded here, at most 64 KiB */
#define CODE_MAX         0x10000
#define EXC_STUBS_OFF    0x800    /* exception stub of vector v at GPA_CODE + EXC_STUBS_OFF + 16 * v */
#define EXC_STUB_SIZE    16
#define EXC_VECTORS      32
#define GPA_STACKS       0x110000 /* ring-3 stack of vCPU i: 16 KiB below GPA_STACKS + (i+1) * 0x4000 */
#define STACK_SIZE       0x4000
#define GPA_DATA         0x200000 /* working set, then the static pattern area, to the end of RAM */

/* ---- selectors ---- */
#define SEL_KCODE        0x08
#define SEL_KDATA        0x10
#define SEL_UDATA        0x1b     /* index 3, RPL 3 */
#define SEL_UCODE        0x23     /* index 4, RPL 3 */
#define SEL_TSS          0x28

/*
 * ---- doorbells: guest stores to an MMIO page (no memory slot behind it) ->
 * KVM_EXIT_MMIO. Port I/O from ring 3 with IOPL 3 would be the classic way,
 * but this machine's kvm_pvm raises #GP for `out` at CPL 3 whatever IOPL the
 * host sets (see README), and an MMIO store exits just the same (~22 us).
 */
#define GPA_MMIO         0x1000000000ull /* 64 GiB, above any RAM; mapped by its own PD */
#define GPA_MMIO_PD      (GPA_PD + MAX_GIB * 0x1000)
#define MMIO_SLEEP       0x00     /* store u64 = TSC ticks to sleep (vCPU thread sleeps, interruptibly) */
#define MMIO_EVENT       0x08     /* store u64 = event code (EV_*) */
#define MMIO_EXCEPTION   0x10     /* ring-0 exception stub: store u64 = vector; details at GPA_CRASH */

#define EV_STARTED       1        /* the vCPU ran its entry code (only once per boot) */
#define EV_BAD_PARAMS    2        /* parameter page magic wrong */

/* ---- parameter page (GPA_PARAMS), all u64 ---- */
#define PARAMS_MAGIC      0x31534d5241504b4d /* "MKPARMS1" little-endian */
#define P_MAGIC           0x00
#define P_VERSION         0x08
#define P_TSC_HZ          0x10
#define P_NR_VCPUS        0x18
#define P_WS_BASE         0x20    /* GPA of the working set */
#define P_WS_SIZE         0x28    /* bytes */
#define P_MEM_SIZE        0x30    /* guest RAM bytes */
#define P_CHUNK_TICKS     0x38    /* TSC ticks one dirtier should spend on DIRTY_CHUNK pages (0 = unpaced) */
#define P_MAX_LAG_TICKS   0x40    /* behind target by more than this: forget the debt (no bursts) */
#define P_MIN_SLEEP_TICKS 0x48    /* ahead of target by more than this: sleep */
#define P_MAX_AHEAD_TICKS 0x50    /* ahead of target by more than this: the clock jumped, resync */
#define P_IDLE_TICKS      0x58    /* an idle vCPU sleeps this long per heartbeat */
#define P_COMPUTE_ON      0x60    /* compute vCPU: compute this long ... */
#define P_COMPUTE_OFF     0x68    /* ... then sleep this long */
#define P_FILL            0x70    /* 1 = static area holds the page pattern */
#define P_VCPU            0x100   /* per-vCPU block i at P_VCPU + i * P_VCPU_STRIDE */
#define P_VCPU_STRIDE     0x20
#define PV_ROLE           0x00
#define PV_SLICE_BASE     0x08    /* GPA of this dirtier's slice of the working set */
#define PV_SLICE_PAGES    0x10    /* pages in the slice (0: the dirtier idles) */
#define PV_LCG_SEED       0x18    /* compute vCPU: LCG start value */

#define ROLE_IDLE         0
#define ROLE_DIRTY        1
#define ROLE_COMPUTE      2

/* ---- status page of vCPU i (GPA_STATUS + i * 0x1000), all u64, written by the guest ---- */
#define STATUS_MAGIC      0x31544154534b4d /* "MKSTAT1" little-endian */
#define S_MAGIC           0x00
#define S_STARTS          0x08    /* times the entry code ran: 1 unless the guest restarted */
#define S_ROLE            0x10
#define S_WORK            0x18    /* work units: pages written (dirty), LCG steps (compute), heartbeats (idle) */
#define S_SWEEPS          0x20    /* dirtier: complete sweeps over its slice */
#define S_POS             0x28    /* dirtier: next page index (stored once per chunk) */
#define S_SLEEPS          0x30    /* sleep requests made */
#define S_LCG_N           0x38    /* compute: steps done (stored after S_LCG_X) */
#define S_LCG_X           0x40    /* compute: LCG value after S_LCG_N (or S_LCG_N + LCG_BATCH) steps */
#define S_LAST_TSC        0x48    /* TSC at the last status update */
#define S_VCPU            0x50    /* vCPU id the guest was started with */

/* ---- crash page (GPA_CRASH) ---- */
#define C_VECTOR          0x00
#define C_ERROR           0x08
#define C_RIP             0x10
#define C_CS              0x18
#define C_RFLAGS          0x20
#define C_RSP             0x28
#define C_CR2             0x30

/* ---- workload constants ---- */
#define DIRTY_CHUNK       16      /* pages between pacing checks */
#define LCG_BATCH         4096    /* LCG steps between status stores */
#define LCG_MUL           6364136223846793005
#define LCG_ADD           1442695040888963407

/*
 * Page pattern: qword k (1 <= k < 512) of the page at guest-physical address
 * `gpa` holds pattern_word(gpa, k); qword 0 holds the counter byte (byte 0)
 * and zeros. The static area is filled the same way and never changes.
 */
#define PATTERN_MUL       0x9E3779B97F4A7C15

#endif
