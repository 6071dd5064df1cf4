/*
 * migrationkit.h - precopy live migration for virtual machine monitors.
 *
 * libmigrationkit moves a running guest's memory and device state from a
 * source VMM process to a destination VMM process. The VMM keeps everything
 * it knows best (vCPUs, the dirty log, devices, the channel) and hands the
 * library callbacks; the library runs the migration thread, decides when to
 * stop the guest, and loads the stream on the other side.
 *
 * Conventions
 *   - Every handle is opaque (mk_source, mk_dest, mk_buffer).
 *   - Every fallible function returns int: 0 (MK_OK) or a negative MK_E* code.
 *     The message of every failing call goes to the calling thread's
 *     mk_last_error() (useful when the handle itself was NULL) and, as
 *     sqlite keeps a connection's error, to the handle (mk_source_errmsg /
 *     mk_dest_errmsg): there, added in 0.2, the migration's own failure
 *     wins. Until the migration (mk_dest_run) failed or was cancelled the
 *     handle's message is the last failing call's; from then on it is that
 *     failure's, whatever fails later (a late cancel, a second start):
 *     those calls' messages are in mk_last_error() only.
 *   - Every struct passed in starts with `uint32_t struct_size`: set it to
 *     sizeof(the struct) (the *_init functions do). The library accepts older,
 *     smaller structs (missing fields take their defaults) and newer, larger
 *     ones as long as the bytes it does not know are zero (MK_EVERSION if not).
 *   - Every callback gets the `user` pointer given with it, first.
 *   - Sizes are bytes, bandwidths bytes per second, times milliseconds unless
 *     a name ends in _us (microseconds). Parameter names and defaults follow
 *     QEMU's migrate-set-parameters where QEMU has the parameter.
 *
 * Lifetimes
 *   - Configs, callback tables, parameters and auth keys are copied at
 *     create time: free or reuse them after the call.
 *   - Guest memory (mk_region.host_addr) must stay mapped from
 *     mk_*_add_region until mk_source_wait returned (source: it is read
 *     until then) or mk_dest_run returned (destination: written until
 *     then); unmapping it earlier is a crash, not an error code.
 *   - What the library hands a callback is valid during that call only:
 *     the iovecs and their bytes in write, the mk_stats in progress, the
 *     mk_buffer in save_device_state, the data in load_device_state, the
 *     message in log. Copy what you keep.
 *   - mk_strerror, mk_status_name and mk_version return static strings;
 *     mk_last_error's is the calling thread's until its next failing call;
 *     *_errmsg, see below.
 *   - Output structs (mk_stats, mk_dest_stats, mk_vcpu_stats): the library
 *     writes at most the caller's struct_size bytes and sets struct_size to
 *     what it wrote. A program built against a newer header that may run on
 *     an older library must check struct_size before reading a field added
 *     later (`out.struct_size >= offsetof(mk_stats, field) + sizeof field`);
 *     the *_init helpers zero the rest, so an unwritten field reads as 0.
 *   - Later releases may add MK_E* codes and enum values: treat any
 *     negative return as a failure and show mk_strerror()/errmsg for it.
 *
 * Callbacks
 *   - A callback succeeds with any return >= 0 and fails with any negative
 *     value; the library's error then names the callback and the value.
 *   - resume_vcpus is called after every failure or cancel before END,
 *     including a failed pause_vcpus (some vCPUs may have stopped): it must
 *     cope with vCPUs that are already running.
 *   - Devices that write guest memory (DMA) report it with
 *     mk_source_mark_dirty until pause_vcpus returns; the final dirty sync
 *     comes right after it, so a device must be quiesced by then: marks
 *     after the pause are not sent.
 *
 * Switchover
 *   - No switchover happens before every page has been sent once (the first
 *     pass) and a bandwidth figure is trusted (about 100 ms of measured
 *     transfer), whatever downtime-limit says: a limit of 0 still migrates.
 *
 * Threading
 *   - All mk_source_* and mk_dest_* functions may be called from any thread,
 *     concurrently, except *_destroy, which must be the last call on a handle.
 *   - Source callbacks run on the library's migration thread, except
 *     kick_vcpu, which runs on the library's throttle thread. None of them is
 *     called with a library lock held, so they may call mk_source_get_stats
 *     or mk_source_cancel (but not mk_source_wait or mk_source_destroy).
 *   - Destination callbacks run on the thread that called mk_dest_run.
 *   - The library's own threads are named "mk-migration" and "mk-throttle"
 *     (what top -H, perf and gdb show). They start with the signal mask of
 *     the thread that created them (mk_source_start), plus SIGPIPE blocked.
 *
 * Build: cc vmm.c $(pkg-config --cflags --libs migrationkit)
 *   Under a prefix the dynamic linker does not search (not /usr/lib),
 *   also give the binary the library's directory, e.g.
 *   -Wl,-rpath,$(pkg-config --variable=libdir migrationkit)
 */
#ifndef MIGRATIONKIT_H
#define MIGRATIONKIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Version                                                                  */
/* ------------------------------------------------------------------------ */

#define MK_VERSION_MAJOR 0
#define MK_VERSION_MINOR 2
#define MK_VERSION_PATCH 0
/** major * 10000 + minor * 100 + patch, as returned by mk_version_number(). */
#define MK_VERSION_NUMBER (MK_VERSION_MAJOR * 10000 + MK_VERSION_MINOR * 100 + MK_VERSION_PATCH)

/** The library's version as "major.minor.patch" (static string). */
const char *mk_version(void);
/** The library's version as MK_VERSION_NUMBER, to compare with the header. */
uint32_t mk_version_number(void);

/** Guest page size the library tracks and sends: 4 KiB. */
#define MK_PAGE_SIZE 4096u
/** Size of the destination's acknowledgement on the return channel. */
#define MK_ACK_SIZE 24u

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

enum mk_error {
    MK_OK = 0,
    MK_EINVAL = -1,      /**< an argument is NULL, out of range, or inconsistent */
    MK_ENOMEM = -2,      /**< out of memory */
    MK_ESTATE = -3,      /**< not allowed in the handle's current state */
    MK_EVERSION = -4,    /**< struct_size not supported, or unknown stream version */
    MK_ETRANSPORT = -5,  /**< the channel failed (write/read callback or fd) */
    MK_ECALLBACK = -6,   /**< a VMM callback returned an error */
    MK_ECANCELED = -7,   /**< cancelled by mk_*_cancel */
    MK_ETIMEDOUT = -8,   /**< completion-timeout expired (strategy cancel), or no ack */
    MK_EPROTO = -9,      /**< malformed stream: bad magic, unknown record, bad field */
    MK_ECHECKSUM = -10,  /**< a stream record failed its checksum */
    MK_ETRUNCATED = -11, /**< the stream ended before its END record */
    MK_ERANGE = -12,     /**< an address or size outside registered guest memory, or a
                              stream region that does not match the registered one */
    MK_ENOTSUP = -13,    /**< valid but not supported by this build or this host */
    MK_EDEST = -14,      /**< the destination reported that it failed */
    MK_ENOSPC = -15,     /**< an output buffer is too small (see the out_len argument) */
    /** Added in 0.2: an authenticated stream failed its check, or one side
     *  has an auth_key and the other does not (see mk_source_config.auth_key). */
    MK_EAUTH = -16
};
/* Later releases may add codes below MK_EAUTH: treat any negative value as a
 * failure and show mk_strerror() / the handle's errmsg for it. */

/** Static text for an MK_E* code ("invalid argument", ...); never NULL. */
const char *mk_strerror(int code);

/**
 * The message of the last failing mk_* call made by the calling thread
 * (thread-local; "" if none). Use it when a call failed before a handle
 * existed (mk_source_create) or was given a NULL handle.
 */
const char *mk_last_error(void);

/* ------------------------------------------------------------------------ */
/* Shared types                                                             */
/* ------------------------------------------------------------------------ */

/** A piece of the stream. Same layout as struct iovec on Linux. */
typedef struct mk_iovec {
    const void *base;
    size_t len;
} mk_iovec;

/**
 * A range of guest memory, registered on both sides in the same order.
 * Regions must not overlap, in guest-physical or in host addresses
 * (MK_EINVAL).
 */
typedef struct mk_region {
    uint32_t struct_size;       /**< sizeof(mk_region) */
    uint32_t flags;             /**< enum mk_region_flags; 0 on the source */
    uint64_t guest_phys_addr;   /**< multiple of dirty_granularity */
    uint64_t size;              /**< > 0, multiple of dirty_granularity */
    void *host_addr;            /**< where the VMM mapped it; MK_PAGE_SIZE aligned */
    /**
     * Bytes the source must re-send when one byte in them is written: 0 or
     * MK_PAGE_SIZE for ordinary memory, the huge-page size (2 MiB, 1 GiB) for
     * huge-page-backed memory. A power of two >= MK_PAGE_SIZE. Expected
     * downtime counts dirty memory in these units.
     */
    uint64_t dirty_granularity;
} mk_region;

/**
 * Fill the first `size` bytes of *r with defaults (struct_size set,
 * everything else 0). Use the mk_region_init(r) macro, which passes
 * sizeof(*r): a caller built against an older, smaller header is never
 * written past its struct. The same holds for every *_init below.
 */
int mk_region_init_sized(mk_region *r, size_t size);
#define mk_region_init(r) mk_region_init_sized((r), sizeof *(r))

/** Region flags (mk_region.flags). */
enum mk_region_flags {
    /**
     * Destination only (MK_EINVAL on the source): the VMM promises that the
     * region reads as zero everywhere when mk_dest_run starts (a fresh
     * anonymous or memfd mapping, or memory zeroed or pre-faulted with zeros
     * and not written since) and that nothing but the loader writes it until
     * mk_dest_run returns (no vCPU runs, no device DMA).
     *
     * Why it matters: a ZERO record must leave its pages zero. Without this
     * flag the loader has to read every page it covers (a page fault per
     * page on memory nobody touched, ~165 ms per GiB), and the stream data
     * behind that record waits in the socket, during the downtime if it is
     * the stop-and-copy. With it the loader keeps a bitmap of the pages it
     * wrote itself (1 bit per page) and clears only those: a ZERO record on
     * untouched memory costs no memory access at all.
     *
     * Breaking the promise loads wrong memory: pages written behind the
     * loader's back are not cleared by a ZERO record.
     */
    MK_REGION_FRESH = 1u << 0
};

/** Log levels passed to log callbacks. */
enum mk_log_level {
    MK_LOG_ERROR = 0,
    MK_LOG_WARN = 1,
    MK_LOG_INFO = 2,
    MK_LOG_DEBUG = 3
};

/** Migration states, with QEMU's names (see mk_status_name). */
enum mk_status {
    MK_STATUS_NONE = 0,       /**< created, not started */
    MK_STATUS_SETUP = 1,      /**< writing the stream header, first dirty sync */
    MK_STATUS_ACTIVE = 2,     /**< iterating over dirty memory, guest running */
    MK_STATUS_DEVICE = 3,     /**< guest paused: final RAM, device state, ack */
    MK_STATUS_COMPLETED = 4,  /**< destination has everything (acked if 2-way) */
    /**
     * An error. The guest runs again on the source, with one exception: the
     * whole stream reached the destination but its acknowledgement did not
     * come back (MK_ETIMEDOUT / MK_ETRANSPORT after END). The destination may
     * then be running the guest, so the source vCPUs stay paused and the
     * VMM decides (mk_source_errmsg says so).
     */
    MK_STATUS_FAILED = 5,
    MK_STATUS_CANCELLING = 6, /**< mk_source_cancel seen, unwinding */
    MK_STATUS_CANCELLED = 7   /**< cancelled; guest running on the source */
};

/** "none", "setup", "active", "device", "completed", "failed",
 *  "cancelling", "cancelled"; "unknown" for anything else. */
const char *mk_status_name(int status);

/* ------------------------------------------------------------------------ */
/* Parameters                                                               */
/* ------------------------------------------------------------------------ */

/** What to do when completion-timeout-ms expires before switchover. */
enum mk_timeout_strategy {
    MK_TIMEOUT_CANCEL = 0,     /**< give up: status failed, MK_ETIMEDOUT, guest stays */
    MK_TIMEOUT_SWITCHOVER = 1  /**< stop the guest and send the rest, whatever the downtime */
};

/**
 * Auto-converge's controller (mk_params.throttle_mode, "throttle-mode").
 * Zero is the default, so a struct from an older header, or one zeroed
 * without mk_params_init, gets the closed loop.
 */
enum mk_throttle_mode {
    /**
     * The default ("closed-loop"). The first pass runs unthrottled: a
     * page written before its first send costs the link nothing, and what
     * the guest writes again after a send is bounded by its working set,
     * which the second pass sends anyway (the price: a guest that rewrites
     * all of its memory faster than the link starts the second pass with
     * nearly all of it dirty). From then on, every control period (0.5 s,
     * at a dirty-log sync of its own if no pass asks for one) the library
     * compares the dirty rate it measured (every page the dirty log
     * reported, also those still waiting to be sent) with the rate the
     * link retires (bytes sent per second the engine was not idle for lack
     * of dirty pages, or the bandwidth estimate capped by max_bandwidth,
     * whichever is higher) and sets the throttle that brings the dirty
     * rate to throttle_trigger_threshold % of it, at most
     * max_cpu_throttle: no fixed steps, no waiting for a second high
     * period. It works on each vCPU's demand
     * (its measured rate divided by the share of time the throttle let it
     * run), so a throttle that holds the guest at the target stays, and it
     * is dropped as soon as the demand fits under the target without it.
     *
     * With get_vcpu_dirty_counts (e.g. the KVM dirty ring) only the vCPUs
     * that dirty are slowed: each keeps up to a common cap of dirty rate
     * (water-filling), a vCPU under the cap (or dirtying under 2 % of the
     * total) runs unthrottled, one over it runs cap / demand of the time.
     * Without it (a plain dirty bitmap) every vCPU gets the same throttle.
     * cpu_throttle_initial, cpu_throttle_increment and
     * cpu_throttle_tailslow do not apply.
     */
    MK_THROTTLE_CLOSED_LOOP = 0,
    /**
     * QEMU's step controller ("step"), exactly as before 0.2: once a
     * period of at least 1 s dirtied more than throttle_trigger_threshold
     * % of what was sent, twice, every vCPU is throttled
     * cpu_throttle_initial %, then cpu_throttle_increment % more (or
     * tailslow) per two such periods, up to max_cpu_throttle.
     */
    MK_THROTTLE_STEP = 1
};

/**
 * Migration parameters. All can change while a migration runs
 * (mk_source_set_params); a change takes effect at the next iteration.
 */
typedef struct mk_params {
    uint32_t struct_size;
    /** Throttle vCPUs when dirtying outpaces the transfer (bool, default 0).
     *  Needs the kick_vcpu callback (MK_EINVAL without, since 0.2). */
    uint32_t auto_converge;
    /** Highest acceptable downtime, ms. Default 300, range 0..2000000. */
    uint64_t downtime_limit_ms;
    /**
     * Rate limit while the guest runs, B/s. 0 = unlimited (the default).
     * Otherwise >= MK_PAGE_SIZE. Lifted for the stop-and-copy phase.
     * Paced by a token bucket holding 50 ms of the rate (at least 256 KiB);
     * pages go in bursts of two 1 MiB batches, so the transport may see
     * about 2 MiB plus the bucket at once. The average stays at the rate;
     * the pair is what lets the library time its own work as the uncapped
     * stop-and-copy will do it (the first batch after a wait runs cold).
     */
    uint64_t max_bandwidth;
    /**
     * Bandwidth available at switchover, B/s. 0 (default) = use the
     * library's estimate; otherwise >= MK_PAGE_SIZE. When set, it replaces the estimate in the
     * switchover decision and in expected downtime (QEMU 8.2 semantics).
     */
    uint64_t avail_switchover_bandwidth;
    /** Throttle when bytes dirtied exceed this % of bytes sent in a
     *  period, twice. Default 50, range 1..100. */
    uint32_t throttle_trigger_threshold;
    /** First throttle step, %. Default 20, range 1..99. */
    uint32_t cpu_throttle_initial;
    /** Further steps, %. Default 10, range 1..99. */
    uint32_t cpu_throttle_increment;
    /** Size steps from the dirty/transfer overshoot near the top (bool, default 0). */
    uint32_t cpu_throttle_tailslow;
    /** Highest throttle, %. Default 99, range cpu_throttle_initial..99. */
    uint32_t max_cpu_throttle;
    /** enum mk_timeout_strategy, default MK_TIMEOUT_CANCEL. */
    uint32_t timeout_strategy;
    /**
     * Give up (or force switchover) after this long, ms. 0 (default) =
     * never. With MK_TIMEOUT_CANCEL it is a deadline for the whole
     * migration up to its END record (added in 0.2: also for a write to the
     * built-in fd transport that waits for room, and for the wait for the
     * destination's hello).
     */
    uint64_t completion_timeout_ms;
    /**
     * Added in 0.2 ("downtime-target"). Downtime worth iterating for, ms,
     * 0..2000000; default 50 (values above downtime_limit_ms act as the
     * limit). Once expected downtime plus its margin is under
     * downtime_limit_ms, QEMU switches over at once. This library keeps
     * iterating while expected downtime is above downtime_target_ms and,
     * at the rate it has been falling (measured over the last 0.3-2 s),
     * would reach half of itself (or the target) within max(1 s, half the
     * migration's time so far); it switches as soon as either stops being
     * true. While auto-converge throttles a vCPU the target is at least
     * half of downtime_limit_ms: iterating further would keep the guest
     * throttled for a downtime the limit does not ask for, while the upper
     * half stays as room for a stop-and-copy slower than measured (the
     * throttled vCPUs' share of the CPUs changes at the pause). Iterating
     * never waits on what it cannot shrink (device state, fixed costs, the
     * destination's resume). 0: go as low as the link allows;
     * downtime_limit_ms: QEMU's behaviour. The default keeps the extra time
     * small: a guest that dirties half as fast as a capped link takes a few
     * seconds more to get from the limit down to 50 ms.
     * mk_stats.switchover_reason says which rule fired.
     */
    uint64_t downtime_target_ms;
    /**
     * Added in 0.2 ("throttle-mode"): enum mk_throttle_mode, default
     * MK_THROTTLE_CLOSED_LOOP (0). Only matters with auto_converge.
     * Changing it while a migration runs drops the current throttle; the
     * new controller starts from none.
     */
    uint32_t throttle_mode;
    uint32_t reserved0;     /**< 0 */
} mk_params;

/** Fill *p with the defaults above (use the mk_params_init(p) macro). */
int mk_params_init_sized(mk_params *p, size_t size);
#define mk_params_init(p) mk_params_init_sized((p), sizeof *(p))

/* ------------------------------------------------------------------------ */
/* Statistics                                                               */
/* ------------------------------------------------------------------------ */

/** How bandwidth_estimate was obtained. */
enum mk_bandwidth_source {
    MK_BW_NONE = 0,        /**< no usable sample yet */
    MK_BW_LINK = 1,        /**< bytes / time the transport was busy, saturated windows */
    MK_BW_THROUGHPUT = 2,  /**< bytes / elapsed time: a lower bound (link never saturated) */
    MK_BW_OVERRIDE = 3,    /**< avail_switchover_bandwidth, set by the user */
    /** Added in 0.2: the rate the destination loaded stretches of stream
     *  at, on its own clock (used under max_bandwidth, where no write waits
     *  on the link and the stop-and-copy runs uncapped). */
    MK_BW_PIPELINE = 4
};

/** Why the source switched over (mk_stats.switchover_reason). */
enum mk_switchover_reason {
    MK_SWITCHOVER_NONE = 0,     /**< not switched over yet */
    /** Expected downtime (plus margin) was under downtime_limit_ms and
     *  at or under downtime_target_ms. */
    MK_SWITCHOVER_TARGET = 1,
    /** Under downtime_limit_ms, and one more pass would not halve the
     *  expected downtime (the guest dirties too fast, or fixed costs
     *  dominate). */
    MK_SWITCHOVER_NO_GAIN = 2,
    /** completion_timeout_ms expired with MK_TIMEOUT_SWITCHOVER. */
    MK_SWITCHOVER_TIMEOUT = 3
};

/**
 * A snapshot of a source migration. Field names follow QEMU's query-migrate
 * ("ram_" = the "ram" object); see mk_source_stats_json for the JSON form.
 */
typedef struct mk_stats {
    uint32_t struct_size;
    int32_t status;                 /**< enum mk_status */
    int32_t error;                  /**< MK_E* of the failure, 0 otherwise */
    uint32_t cpu_throttle_percentage; /**< current auto-converge throttle, 0..99 */
    uint64_t total_time_ms;         /**< since start (final once terminal) */
    uint64_t setup_time_ms;         /**< start until the first iteration */
    uint64_t downtime_ms;           /**< measured: vCPU pause -> destination ack (completed only) */
    /**
     * Predicted downtime if the guest stopped now, ms: the sum of the
     * expected_*_us parts below except the margin (the switchover decision
     * compares expected + margin with downtime_limit_ms). At completion it
     * keeps the prediction made at switchover, to compare with downtime_ms.
     * 0 until a bandwidth figure exists (bandwidth_source MK_BW_NONE).
     */
    uint64_t expected_downtime_ms;
    uint64_t downtime_limit_ms;     /**< in force */
    uint64_t ram_transferred;       /**< wire bytes sent: records, pages, device state */
    uint64_t ram_remaining;         /**< dirty bytes still to send, at dirty granularity */
    uint64_t ram_total;             /**< sum of registered region sizes (from mk_source_add_region on) */
    uint64_t ram_duplicate;         /**< zero pages sent as small records */
    uint64_t ram_normal;            /**< pages sent with their contents */
    uint64_t ram_normal_bytes;      /**< ram_normal * page size */
    uint64_t ram_dirty_sync_count;  /**< dirty-log syncs (1 after setup) */
    uint64_t ram_dirty_pages_rate;  /**< pages/s dirtied, last >= 1 s period */
    uint64_t ram_page_size;         /**< MK_PAGE_SIZE */
    double ram_mbps;                /**< Mbit/s: last window while active, average after */
    uint64_t passes;                /**< complete sweeps over dirty memory */
    /**
     * The library's own estimate of the stop-and-copy rate, B/s (0 if
     * none): the figure the switchover uses when no
     * avail_switchover_bandwidth is set (since 0.2 exactly that one, a
     * provisional figure or the destination's timing included, so the two
     * never disagree).
     */
    uint64_t bandwidth_estimate;
    /** enum mk_bandwidth_source of bandwidth_estimate (never MK_BW_OVERRIDE). */
    int32_t bandwidth_source;
    /** enum mk_bandwidth_source of switchover_bandwidth (MK_BW_OVERRIDE when set). */
    int32_t switchover_source;
    /** B/s the switchover decision uses: the override if set, else the estimate. */
    uint64_t switchover_bandwidth;
    uint64_t pending_ram_bytes;     /**< same as ram_remaining (RAM's part of QEMU's pending size) */
    uint64_t pending_device_bytes;  /**< device state size estimate */
    uint64_t device_state_bytes;    /**< device state actually sent (completed) */
    /* Stop-and-copy breakdown, filled once the guest has been paused. */
    uint64_t stop_pause_us;         /**< pause_vcpus callback */
    uint64_t stop_sync_us;          /**< final dirty-log sync */
    uint64_t stop_ram_us;           /**< sending the remaining RAM */
    uint64_t stop_ram_bytes;        /**< RAM bytes (at granularity) sent while paused */
    uint64_t stop_device_us;        /**< save_device_state + sending it */
    uint64_t stop_flush_us;         /**< END record and waiting for the destination ack */
    uint64_t downtime_us;           /**< sum of the above = downtime_ms in microseconds */
    /**
     * Times the guest was paused for switchover and resumed again because
     * the exact dirty count after the final sync predicted a downtime over
     * 1.5 x downtime_limit_ms + 10 ms (the migration then keeps iterating).
     */
    uint64_t aborted_switchovers;

    /*
     * Added in 0.2: read only if struct_size covers them (a 0.1 library
     * leaves them unset and reports its smaller struct_size).
     *
     * The parts of expected downtime, us (last prediction; at completion,
     * the one made at switchover):
     */
    uint64_t expected_ram_us;       /**< dirty RAM at the switchover bandwidth */
    /** Stream already written but not yet loaded by the destination: its
     *  bytes at the switchover bandwidth plus the ZERO pages in it at the
     *  destination's measured cost per page. */
    uint64_t expected_backlog_us;
    uint64_t expected_device_us;    /**< device state at the switchover bandwidth */
    /** Destination after the stream: its VMM's resume_cost_us hint (device
     *  state load, resume), plus the ack's return trip (measured RTT). */
    uint64_t expected_dest_us;
    uint64_t expected_fixed_us;     /**< source: pause + final dirty sync, measured */
    /** Safety margin added for the decision, learned from how far the
     *  bandwidth samples strayed from the estimate. */
    uint64_t expected_margin_us;
    uint64_t downtime_target_ms;    /**< in force */
    int32_t switchover_reason;      /**< enum mk_switchover_reason */
    uint32_t reserved0;             /**< 0 */
    /** Stream bytes written but not yet consumed by the destination. */
    uint64_t backlog_bytes;
    /** Return channel round trip, us (measured at setup; 0 = none). */
    uint64_t rtt_us;
    /** The destination's own time from the END record to its ack, us, as
     *  it reported in the ack (completed only; 0 = not reported). */
    uint64_t dest_resume_us;
    /** Delivered rate measured at the destination, B/s (0 = not measured):
     *  what the stop-and-copy runs at under max_bandwidth. */
    uint64_t pipeline_bandwidth;

    /* Added in 0.2 (check struct_size). */
    /**
     * Guest time taken by auto-converge: the sum over vCPUs of the time they
     * slept in mk_source_throttle_point, us (vCPU-microseconds; 2 vCPUs
     * throttled 50 % for 1 s add 1000000). Per vCPU: mk_source_get_vcpu_stats.
     */
    uint64_t throttle_sleep_us;
    int32_t throttle_mode;          /**< enum mk_throttle_mode in force */
    /** vCPUs (mk_source_config.nr_vcpus): valid indexes for
     *  mk_source_get_vcpu_stats. cpu_throttle_percentage is the highest
     *  throttle of any of them. */
    uint32_t nr_vcpus;
    /**
     * Of the stop-and-copy (vCPU pause to the destination's ack), how long
     * the migration thread was ready to run but had no CPU, us (Linux
     * schedstat run delay). UINT64_MAX where the kernel does not say; 0
     * before a switchover completed. A downtime well over its prediction
     * with a large value here points at a busy host, not at the link: the
     * prediction assumes the migration thread has a CPU once the guest is
     * paused. Compare mk_dest_stats.stopped_cpu_wait_us for the other side.
     */
    uint64_t stop_cpu_wait_us;
} mk_stats;

/** Added in 0.2. Zero *out and set its struct_size: ready for
 *  mk_source_get_stats (use the mk_stats_init(out) macro). */
int mk_stats_init_sized(mk_stats *out, size_t size);
#define mk_stats_init(out) mk_stats_init_sized((out), sizeof *(out))

/**
 * Added in 0.2: one vCPU's share of auto-converge (mk_source_get_vcpu_stats;
 * set struct_size). Also in mk_source_stats_json as "vcpus".
 */
typedef struct mk_vcpu_stats {
    uint32_t struct_size;
    uint32_t vcpu;                  /**< the index asked for */
    uint32_t throttle_percentage;   /**< this vCPU's current throttle, 0..99 */
    /** 1 when dirty_pages_rate and dirty_pages are measured: the VMM
     *  reports per-vCPU counts (get_vcpu_dirty_counts); 0 otherwise. */
    uint32_t dirty_rate_known;
    uint64_t dirty_pages_rate;      /**< pages/s this vCPU dirtied, last >= 1 s period */
    uint64_t dirty_pages;           /**< pages attributed to it since the start */
    uint64_t throttle_sleep_us;     /**< time it slept in the throttle point, us */
} mk_vcpu_stats;

/** Added in 0.2. Zero *out and set its struct_size (mk_vcpu_stats_init(out)). */
int mk_vcpu_stats_init_sized(mk_vcpu_stats *out, size_t size);
#define mk_vcpu_stats_init(out) mk_vcpu_stats_init_sized((out), sizeof *(out))

/* ------------------------------------------------------------------------ */
/* Source side                                                              */
/* ------------------------------------------------------------------------ */

typedef struct mk_source mk_source;
/** Growable byte buffer the library gives to save_device_state. */
typedef struct mk_buffer mk_buffer;

/** Append len bytes to a device-state buffer. MK_ENOMEM past 1 GiB in all. */
int mk_buffer_append(mk_buffer *buf, const void *data, size_t len);

/**
 * VMM callbacks for the source. Return 0 on success; any negative value
 * fails the migration (MK_ECALLBACK, or MK_ETRANSPORT for write/read) and
 * the guest is resumed and left running on the source.
 */
typedef struct mk_source_callbacks {
    uint32_t struct_size;   /**< sizeof(mk_source_callbacks) */
    uint32_t reserved;      /**< 0 */
    void *user;             /**< passed first to every callback */

    /**
     * Required. Set bit i (word i / 64, bit i % 64) of `bitmap` for every
     * page i of region `region` (4 KiB pages from the region start) written
     * since the previous call for that region, then restart tracking for
     * them (e.g. KVM_GET_DIRTY_LOG, or GET + KVM_CLEAR_DIRTY_LOG). `bitmap`
     * holds (npages + 63) / 64 words and arrives zeroed; only set bits. The
     * first call of a migration comes after every page was marked dirty, so
     * it only needs to arm tracking. Pages written by the VMM's own devices
     * can be set here too, or reported with mk_source_mark_dirty.
     */
    int (*get_dirty_log)(void *user, uint32_t region, uint64_t *bitmap, uint64_t npages);

    /**
     * The transport. Write all `iovcnt` pieces, in order, completely. The
     * pieces point into guest memory and library buffers valid only during
     * the call. Not needed when mk_source_config.transport_fd >= 0.
     */
    int (*write)(void *user, const mk_iovec *iov, int iovcnt);

    /**
     * Optional return channel: read exactly `len` bytes and return 0. The
     * destination sends MK_ACK_SIZE-byte frames back: a hello once it
     * accepted the stream header (the source waits for it, up to
     * ack_timeout_ms, before sending any page: it learns the round trip and
     * the destination's resume_cost_us, or the reason for a refusal),
     * progress reports while it loads (skipped here) and the final
     * acknowledgement. Set it only if the destination has a way back (its
     * transport_fd is a socket, or its write callback is set). Not needed
     * with a transport_fd, which is read directly (and whose progress
     * reports make expected downtime count what is still on the way, in
     * time). Without either, the migration completes when the last byte is
     * written, and downtime ends there.
     */
    int (*read)(void *user, void *buf, size_t len);

    /**
     * Required. Stop every vCPU and return once none is in guest mode; they
     * must stay out until resume_vcpus. (kvmtool: signal + immediate_exit.)
     */
    int (*pause_vcpus)(void *user);
    /** Required. Let the vCPUs run again (after a failure or cancel). */
    int (*resume_vcpus)(void *user);

    /**
     * Needed for auto-converge. Make vCPU `vcpu` leave guest mode soon (a
     * signal and immediate_exit) and call mk_source_throttle_point from its
     * thread. Must not block. Runs on the library's throttle thread. Only
     * throttled vCPUs are kicked, each at its own throttle's period.
     * The throttle is the time a vCPU sleeps in mk_source_throttle_point,
     * and a vCPU running guest code only gets there after a kick (pausing
     * and resuming every vCPU cannot stand in for it): since 0.2,
     * auto-converge without this callback is refused with MK_EINVAL, at
     * mk_source_create and at mk_source_set_param(s), instead of reporting
     * a throttle that is never applied.
     */
    int (*kick_vcpu)(void *user, uint32_t vcpu);

    /**
     * Optional. With the guest paused, append the device state (vCPU
     * registers, device models) to `out` with mk_buffer_append. The blob
     * reaches the destination's load_device_state unchanged.
     */
    int (*save_device_state)(void *user, mk_buffer *out);

    /**
     * Optional. Expected size of the device state in bytes (counted in
     * expected downtime). Without it, mk_source_config.device_state_hint.
     */
    uint64_t (*device_state_size)(void *user);

    /** Optional. Diagnostic messages (enum mk_log_level). */
    void (*log)(void *user, int level, const char *msg);

    /**
     * Optional. Called on every status change and about every 100 ms while
     * active, on the migration thread, with a fresh snapshot.
     */
    void (*progress)(void *user, const mk_stats *stats);

    /**
     * Optional, added in 0.2 (a smaller struct leaves it NULL). Which vCPU
     * dirtied what: store in counts[i] (i < nr_vcpus, the config's) the
     * pages vCPU i dirtied since the previous call, and return 0 (the array
     * arrives zeroed). Called on the migration thread right after each
     * dirty-log sync (all of get_dirty_log's calls for one sync), so one
     * call covers one interval; pages counted once per vCPU per interval
     * is what the KVM dirty ring gives (a page two vCPUs wrote may count
     * for both). Closed-loop auto-converge then throttles only the vCPUs
     * that dirty, each in proportion; without this callback, or when a call
     * reports nothing while pages were dirty, all vCPUs are throttled
     * alike. A negative return fails the migration (MK_ECALLBACK).
     */
    int (*get_vcpu_dirty_counts)(void *user, uint64_t *counts, uint32_t nr_vcpus);
} mk_source_callbacks;

/** Added in 0.2. Zero *cb (every callback unset, user NULL) and set its
 *  struct_size (mk_source_callbacks_init(cb)); then fill in what you have. */
int mk_source_callbacks_init_sized(mk_source_callbacks *cb, size_t size);
#define mk_source_callbacks_init(cb) mk_source_callbacks_init_sized((cb), sizeof *(cb))

/** Source flags (mk_source_config.flags). */
enum mk_source_flags {
    /** Do not wait for the destination's acknowledgement even on a 2-way fd. */
    MK_SOURCE_NO_ACK = 1u << 0
};

typedef struct mk_source_config {
    uint32_t struct_size;
    /** vCPUs the guest has, 1..1024: kick_vcpu and the throttle point use 0..n-1. */
    uint32_t nr_vcpus;
    /**
     * >= 0: the built-in transport. The library writes the stream to this
     * descriptor (a socket or pipe; blocking or not, its flags are left
     * alone) and reads the acknowledgement from it. A closed peer is an
     * MK_ETRANSPORT error, never a SIGPIPE. -1: use the write/read
     * callbacks (their waits are the VMM's to bound).
     *
     * Added in 0.2, no wait on it is unbounded: a write that finds no room
     * waits in poll() until there is room, until mk_source_cancel, or until
     * the completion-timeout (timeout-strategy cancel) expires, then fails
     * MK_ECANCELED / MK_ETIMEDOUT with the guest running on the source; the
     * same bounds hold for the wait for the destination's hello (besides
     * ack_timeout_ms). On a socket, a refusal the destination sends while
     * the source waits (it failed and stopped reading) fails the migration
     * at once with MK_EDEST and the destination's reason. A return
     * direction the destination closes while the guest runs here (no
     * acknowledgement could come) fails it MK_ETRANSPORT at the next look
     * at the channel, before the guest is paused (at the latest before
     * END, the guest resumed), unless MK_SOURCE_NO_ACK: nothing is awaited.
     *
     * Who closes what after a failure: the library never closes the fd;
     * the VMM closes it once mk_source_wait returned. When the migration
     * fails or is cancelled before its END record went out, the library
     * shuts a socket down (SHUT_RDWR) so that the destination's read ends
     * at once (MK_ETRUNCATED) instead of waiting for the rest; a pipe it
     * cannot shut down: closing it is the VMM's. A cancel before
     * mk_source_start leaves the fd untouched. The destination does the
     * same on its side (see mk_dest_run).
     */
    int32_t transport_fd;
    uint32_t flags;                 /**< enum mk_source_flags */
    /** Device state size for expected downtime when there is no device_state_size callback. */
    uint64_t device_state_hint;
    /** How long to wait for the destination's ack, ms. 0 = 30000. */
    uint64_t ack_timeout_ms;
    /**
     * Added in 0.2. Authenticated streams: a pre-shared key, 16..1024 bytes
     * (32 random bytes are plenty), the same on the destination
     * (mk_dest_config.auth_key). Copied at create time. NULL with length 0:
     * a plain stream.
     *
     * With a key the source puts a fresh nonce in the stream header, the
     * destination answers with its own, and every byte after the header
     * travels in frames sealed with HMAC-SHA-256 under a key derived from
     * both nonces: the destination checks each frame before any of its
     * bytes reaches guest memory, so a stream from someone without the key,
     * or one recorded from another migration, is refused (MK_EAUTH there;
     * MK_EDEST here) with guest memory on the destination untouched by it.
     * The destination's acknowledgement carries a tag under the same key,
     * and an untagged or wrongly tagged one counts as no answer (the vCPUs
     * stay paused, as after an ack timeout). Needs a return channel: a
     * socket transport_fd or a read callback. This is integrity and
     * authenticity, not secrecy: guest memory crosses the channel in clear.
     * For confidentiality run the stream over TLS (or an encrypted tunnel)
     * through the write/read callbacks. Cost: a copy and HMAC-SHA-256 of
     * every byte on each side (BENCHMARKS.md).
     */
    const void *auth_key;
    uint64_t auth_key_len;
} mk_source_config;

/** Fill *cfg with defaults: nr_vcpus 1, transport_fd -1, flags 0, hint 0,
 *  ack timeout 0 (use the mk_source_config_init(cfg) macro). */
int mk_source_config_init_sized(mk_source_config *cfg, size_t size);
#define mk_source_config_init(cfg) mk_source_config_init_sized((cfg), sizeof *(cfg))

/**
 * Create a source handle. `params` may be NULL (defaults). Callbacks are
 * copied. On failure *out is NULL and mk_last_error() says why.
 */
int mk_source_create(mk_source **out, const mk_source_config *cfg,
                     const mk_source_callbacks *callbacks, const mk_params *params);

/**
 * Register guest memory, before mk_source_start. Regions are numbered in
 * registration order from 0 (*out_index, may be NULL); the destination must
 * register the same regions in the same order.
 */
int mk_source_add_region(mk_source *src, const mk_region *region, uint32_t *out_index);

/**
 * Mark guest memory dirty from any thread (e.g. a device model's DMA). The
 * range is rounded out to pages. A range that overlaps registered memory
 * marks the overlap and returns 0 (parts of it in holes between regions are
 * ignored); MK_ERANGE only if it touches no region at all.
 */
int mk_source_mark_dirty(mk_source *src, uint64_t guest_phys_addr, uint64_t len);

/**
 * Replace all parameters (validated as a whole; nothing changes on error).
 * Fields an older, smaller struct lacks take their defaults, not their
 * current values.
 */
int mk_source_set_params(mk_source *src, const mk_params *params);
/** Current parameters. */
int mk_source_get_params(mk_source *src, mk_params *out);

/**
 * Set one parameter by its QEMU name, value as text: "downtime-limit",
 * "max-bandwidth", "avail-switchover-bandwidth", "auto-converge" (on/off,
 * true/false, yes/no, 1/0, any case), "throttle-trigger-threshold", "cpu-throttle-initial",
 * "cpu-throttle-increment", "cpu-throttle-tailslow", "max-cpu-throttle",
 * "completion-timeout" (ms), "timeout-strategy" (cancel/switchover),
 * "downtime-target" (ms), "throttle-mode" (closed-loop/step).
 * Numbers are decimal; bandwidths may end in K, M, G (powers of 1024).
 */
int mk_source_set_param(mk_source *src, const char *name, const char *value);

/**
 * Start the migration thread. Once per handle; needs regions and a
 * transport. Added in 0.2: after a mk_source_cancel that came first it
 * starts nothing and returns MK_ECANCELED (the migration is then
 * cancelled: mk_source_wait says MK_ECANCELED, MK_STATUS_CANCELLED).
 */
int mk_source_start(mk_source *src);

/**
 * Cancel from any thread. Returns at once; the migration thread unwinds,
 * resumes the vCPUs if it had paused them, releases any throttle and ends
 * in MK_STATUS_CANCELLED. A cancel is never lost: before mk_source_start
 * it is remembered (added in 0.2; it used to be MK_ESTATE) and start then
 * returns MK_ECANCELED; a cancel racing mk_source_start is one or the
 * other. MK_ESTATE only when the migration already ended, or too late:
 * once the END record is about to go out the destination may run the
 * guest, and a cancel could leave it running twice.
 */
int mk_source_cancel(mk_source *src);

/**
 * Wait for the migration thread to end. Returns 0 if the migration
 * completed, else the MK_E* code it failed with. *out_status (may be NULL)
 * gets the final enum mk_status.
 */
int mk_source_wait(mk_source *src, int *out_status);

/**
 * The auto-converge throttle point. vCPU threads call it after kick_vcpu
 * made them leave guest mode; it sleeps as long as vCPU `vcpu`'s current
 * throttle says (p / (1 - p) x 10 ms: up to ~1 s at 99 %), is cut short when
 * that throttle is lowered, and returns at once when it has none, when it
 * is lifted, or when the migration ends. MK_EINVAL if vcpu >= nr_vcpus.
 */
int mk_source_throttle_point(mk_source *src, uint32_t vcpu);

/** Fill a snapshot (out->struct_size must be set). */
int mk_source_get_stats(mk_source *src, mk_stats *out);

/**
 * Added in 0.2. vCPU `vcpu`'s throttle, dirty rate (where the VMM attributes
 * it) and throttle sleep, as of the latest snapshot (out->struct_size must
 * be set). Any time after mk_source_create; MK_EINVAL if vcpu >= nr_vcpus.
 */
int mk_source_get_vcpu_stats(mk_source *src, uint32_t vcpu, mk_vcpu_stats *out);

/**
 * The snapshot as one JSON object with query-migrate names ("status",
 * "total-time", "expected-downtime", "ram": {"transferred", ...}), plus
 * "bandwidth-estimate", "bandwidth-source", "switchover-bandwidth", a
 * "stop-copy" object, "throttle-mode", "throttle-sleep-us" and "vcpus": an
 * array with one object per vCPU ("vcpu", "cpu-throttle-percentage",
 * "dirty-pages-rate" and "dirty-pages", null when not attributed,
 * "throttle-sleep-us"). Writes a NUL-terminated string; *out_len (may be NULL)
 * gets its length without the NUL, or on MK_ENOSPC the buffer size needed
 * (length + 1, snprintf's return plus one). Added in 0.2: buf NULL with
 * cap 0 is a size query, answered like any buffer too small: MK_ENOSPC
 * and that same size (buf NULL with cap > 0 is MK_EINVAL).
 */
int mk_source_stats_json(mk_source *src, char *buf, size_t cap, size_t *out_len);

/**
 * The handle's error message ("" if none; see Conventions): once the
 * migration failed or was cancelled, its failure, for good; before, the
 * last failing call's. Valid until the next failing call on the handle
 * (for good once the migration failed). The migration's failure begins
 * with where it happened: "setup: ", "waiting for the hello: ", "pass N: "
 * (N = mk_stats.passes + 1), "stop-and-copy: " or "waiting for the ack: ",
 * e.g. "pass 3: writev on fd 8: Connection reset by peer".
 */
const char *mk_source_errmsg(mk_source *src);

/** Cancel if running, join the thread, free. NULL is accepted. */
void mk_source_destroy(mk_source *src);

/* ------------------------------------------------------------------------ */
/* Destination side                                                         */
/* ------------------------------------------------------------------------ */

typedef struct mk_dest mk_dest;

typedef struct mk_dest_callbacks {
    uint32_t struct_size;
    uint32_t reserved;
    void *user;
    /**
     * Read up to `cap` bytes of the stream into buf; set *out_len (0 = end
     * of stream). Not needed when mk_dest_config.transport_fd >= 0.
     */
    int (*read)(void *user, void *buf, size_t cap, size_t *out_len);
    /**
     * Optional: send frames back to the source (progress reports while
     * loading, then the acknowledgement). Not needed with an fd.
     */
    int (*write)(void *user, const mk_iovec *iov, int iovcnt);
    /**
     * Load the device-state blob the source's save_device_state produced.
     * Required if the source sends device state.
     */
    int (*load_device_state)(void *user, const void *data, size_t len);
    /** Optional. Diagnostic messages. */
    void (*log)(void *user, int level, const char *msg);
} mk_dest_callbacks;

/** Added in 0.2. Zero *cb and set its struct_size (mk_dest_callbacks_init(cb)). */
int mk_dest_callbacks_init_sized(mk_dest_callbacks *cb, size_t size);
#define mk_dest_callbacks_init(cb) mk_dest_callbacks_init_sized((cb), sizeof *(cb))

enum mk_dest_flags {
    /**
     * mk_dest_run returns after loading without acknowledging; the VMM
     * resumes its vCPUs, then calls mk_dest_ack, so the source measures
     * downtime up to the moment the guest runs again.
     */
    MK_DEST_MANUAL_ACK = 1u << 0
};

typedef struct mk_dest_config {
    uint32_t struct_size;
    /**
     * >= 0: read the stream from (and send frames back on) this fd.
     * -1: the read/write callbacks, or an fd given later with
     * mk_dest_set_transport_fd (mk_dest_run needs one or the other).
     */
    int32_t transport_fd;
    uint32_t flags;         /**< enum mk_dest_flags */
    uint32_t reserved;
    /**
     * Added in 0.2. What the VMM expects to spend, us, from the END record
     * to mk_dest_ack: loading device state, its own checks, resuming the
     * vCPUs (with MK_DEST_MANUAL_ACK; otherwise the library acks at once
     * and only the device-state load counts). The source learns it before
     * the first switchover attempt and counts it in expected downtime, so
     * underestimating it can break downtime-limit. 0 = nothing to add.
     * The time actually spent is reported back in the ack
     * (mk_stats.dest_resume_us, mk_dest_stats.end_to_ack_us).
     */
    uint64_t resume_cost_us;
    /**
     * Added in 0.2. The pre-shared key (16..1024 bytes, copied at create
     * time; see mk_source_config.auth_key). With a key, only a stream
     * authenticated with it is loaded: a plain stream or a wrong key fails
     * mk_dest_run with MK_EAUTH before any of its records touches guest
     * memory. Without one, an authenticated stream is refused (MK_EAUTH)
     * rather than loaded unchecked.
     */
    const void *auth_key;
    uint64_t auth_key_len;
} mk_dest_config;

typedef struct mk_dest_stats {
    uint32_t struct_size;
    int32_t status;          /**< NONE, ACTIVE (loading), COMPLETED, FAILED, CANCELLED */
    int32_t error;           /**< MK_E* of the failure */
    uint32_t reserved;
    uint64_t bytes_received; /**< stream bytes consumed */
    uint64_t pages_loaded;   /**< pages written with contents */
    uint64_t zero_pages;     /**< pages cleared by zero records */
    uint64_t records;        /**< records accepted */
    uint64_t device_state_bytes;
    uint64_t total_time_ms;  /**< mk_dest_run start to end of load */
    /* Added in 0.2 (check struct_size). */
    uint64_t zero_load_us;   /**< time spent on ZERO records */
    uint64_t zero_pages_cleared; /**< zero_pages the loader had to read or clear (not fresh) */
    uint64_t device_load_us; /**< time in load_device_state */
    uint64_t end_to_ack_us;  /**< END record accepted -> acknowledgement sent */
    uint64_t prefault_us;    /**< time mk_dest_prefault took (0 = not called) */
    /**
     * From the first record the source sent with the guest paused to the
     * END record, how long the thread in mk_dest_run was ready to run but
     * had no CPU, us (Linux schedstat run delay). UINT64_MAX where the
     * kernel does not say; 0 until such a record arrived. The source's
     * counterpart is mk_stats.stop_cpu_wait_us.
     */
    uint64_t stopped_cpu_wait_us;
} mk_dest_stats;

/** Added in 0.2. Zero *out and set its struct_size (mk_dest_stats_init(out)). */
int mk_dest_stats_init_sized(mk_dest_stats *out, size_t size);
#define mk_dest_stats_init(out) mk_dest_stats_init_sized((out), sizeof *(out))

/** Fill *cfg with defaults: transport_fd -1, flags 0 (use the
 *  mk_dest_config_init(cfg) macro). */
int mk_dest_config_init_sized(mk_dest_config *cfg, size_t size);
#define mk_dest_config_init(cfg) mk_dest_config_init_sized((cfg), sizeof *(cfg))

/** Create a destination handle. On failure *out is NULL; see mk_last_error(). */
int mk_dest_create(mk_dest **out, const mk_dest_config *cfg, const mk_dest_callbacks *callbacks);

/**
 * Register guest memory to load into; same regions, same order as the
 * source. The stream header is checked against them; the loader never
 * writes outside them, whatever the stream says.
 */
int mk_dest_add_region(mk_dest *dst, const mk_region *region, uint32_t *out_index);

/**
 * Receive and load the whole stream (blocking, on the calling thread):
 * validate the header, load pages straight into guest memory, pass device
 * state to load_device_state, stop at the END record, then acknowledge
 * (unless MK_DEST_MANUAL_ACK). 0 when everything loaded; else the MK_E*
 * error, after which guest memory must be considered garbage.
 *
 * After a failure (a refused stream header included) the library sends
 * the source an acknowledgement with the error, so that it fails at once
 * with the reason (MK_EDEST) and resumes its guest, then (added in 0.2)
 * shuts a socket fd down (SHUT_RDWR), so that a sender still writing
 * learns through its write too. It never closes the fd: the VMM does, once
 * mk_dest_run returned. A mk_dest_cancel that came before mk_dest_run
 * makes it return MK_ECANCELED at once (after that acknowledgement).
 */
int mk_dest_run(mk_dest *dst);

/**
 * With MK_DEST_MANUAL_ACK: tell the source the guest runs here (status 0)
 * or that resuming failed: a negative status, by convention an MK_E* code
 * (MK_ECALLBACK for "my VMM could not resume"), which the source shows in
 * its error text; the source then fails with MK_EDEST and resumes its own
 * guest. A positive status is MK_EINVAL.
 */
int mk_dest_ack(mk_dest *dst, int status);

/**
 * Added in 0.2. Give the handle its transport fd after mk_dest_create,
 * before mk_dest_run: a VMM can create the handle, register and prefault
 * its memory, and only then accept the source's connection. Replaces
 * config->transport_fd. MK_EINVAL for fd < 0, MK_ESTATE once mk_dest_run
 * started.
 */
int mk_dest_set_transport_fd(mk_dest *dst, int fd);

/**
 * Added in 0.2. Fault every registered region in now, writable, without
 * changing its contents (MADV_POPULATE_WRITE; on kernels without it, one
 * read and write-back per page), like QEMU's -mem-prealloc. Call it after
 * mk_dest_add_region while waiting for the source (before accepting its
 * connection, say; see mk_dest_set_transport_fd): the load then writes into memory that is already
 * mapped instead of taking a page fault and a page clear per 4 KiB, the
 * largest cost of loading into fresh memory.
 *
 * Cost: every registered byte is committed up front (resident set = guest
 * size, whatever the guest uses), and the call takes about as long as
 * touching it all (~0.35 s per GiB of 4 KiB pages on our machines; less
 * with huge pages). Contents stay as they were, so MK_REGION_FRESH stays
 * valid. May run on another thread while mk_dest_run loads. MK_ENOMEM if
 * the kernel cannot back the memory (nothing is lost: the load can still
 * run, faulting as it goes). MK_ESTATE after mk_dest_run returned.
 */
int mk_dest_prefault(mk_dest *dst);

/**
 * Make a running mk_dest_run stop with MK_ECANCELED (shuts a socket fd
 * down; added in 0.2, a pipe fd, which cannot be shut down, ends too: its
 * reads wait in poll() for data or the cancel). Added in 0.2: before
 * mk_dest_run the cancel is remembered and the run returns MK_ECANCELED at
 * once; MK_ESTATE only once mk_dest_run returned.
 */
int mk_dest_cancel(mk_dest *dst);

/** Fill a snapshot of the load (out->struct_size must be set). Any thread,
 *  also while mk_dest_run runs; then the counters are as of the end of the
 *  last read from the transport (at most one read, 256 KiB, behind). */
int mk_dest_get_stats(mk_dest *dst, mk_dest_stats *out);

/**
 * The handle's error message ("" if none; see Conventions): once
 * mk_dest_run failed or was cancelled, its failure, for good; before, the
 * last failing call's.
 */
const char *mk_dest_errmsg(mk_dest *dst);

/** Free. NULL is accepted. Must not race with mk_dest_run. */
void mk_dest_destroy(mk_dest *dst);

#ifdef __cplusplus
}
#endif

#endif /* MIGRATIONKIT_H */
