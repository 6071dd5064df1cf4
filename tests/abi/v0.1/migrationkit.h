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
 *     The message behind the last failure is kept on the handle
 *     (mk_source_errmsg / mk_dest_errmsg) and, for the calling thread, in
 *     mk_last_error() (useful when the handle itself was NULL).
 *   - Every struct passed in starts with `uint32_t struct_size`: set it to
 *     sizeof(the struct) (the *_init functions do). The library accepts older,
 *     smaller structs (missing fields take their defaults) and newer, larger
 *     ones as long as the bytes it does not know are zero (MK_EVERSION if not).
 *   - Every callback gets the `user` pointer given with it, first.
 *   - Sizes are bytes, bandwidths bytes per second, times milliseconds unless
 *     a name ends in _us (microseconds). Parameter names and defaults follow
 *     QEMU's migrate-set-parameters where QEMU has the parameter.
 *
 * Threading
 *   - All mk_source_* and mk_dest_* functions may be called from any thread,
 *     concurrently, except *_destroy, which must be the last call on a handle.
 *   - Source callbacks run on the library's migration thread, except
 *     kick_vcpu, which runs on the library's throttle thread. None of them is
 *     called with a library lock held, so they may call mk_source_get_stats
 *     or mk_source_cancel (but not mk_source_wait or mk_source_destroy).
 *   - Destination callbacks run on the thread that called mk_dest_run.
 *
 * Build: cc vmm.c $(pkg-config --cflags --libs migrationkit)
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
#define MK_VERSION_MINOR 1
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
    MK_ENOSPC = -15      /**< an output buffer is too small (see the out_len argument) */
};

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
    uint32_t flags;             /**< must be 0 */
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
 * Migration parameters. All can change while a migration runs
 * (mk_source_set_params); a change takes effect at the next iteration.
 */
typedef struct mk_params {
    uint32_t struct_size;
    /** Throttle vCPUs when dirtying outpaces the transfer (bool, default 0). */
    uint32_t auto_converge;
    /** Highest acceptable downtime, ms. Default 300, range 0..2000000. */
    uint64_t downtime_limit_ms;
    /**
     * Rate limit while the guest runs, B/s. 0 = unlimited (the default).
     * Otherwise >= MK_PAGE_SIZE. Lifted for the stop-and-copy phase.
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
    /** Give up (or force switchover) after this long, ms. 0 (default) = never. */
    uint64_t completion_timeout_ms;
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
    MK_BW_OVERRIDE = 3     /**< avail_switchover_bandwidth, set by the user */
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
     * Predicted downtime if the guest stopped now, ms: the value the
     * switchover decision compares with downtime_limit_ms. At completion it
     * keeps the prediction made at switchover. 0 until a bandwidth figure
     * exists (bandwidth_source MK_BW_NONE).
     */
    uint64_t expected_downtime_ms;
    uint64_t downtime_limit_ms;     /**< in force */
    uint64_t ram_transferred;       /**< wire bytes sent: records, pages, device state */
    uint64_t ram_remaining;         /**< dirty bytes still to send, at dirty granularity */
    uint64_t ram_total;             /**< sum of registered region sizes */
    uint64_t ram_duplicate;         /**< zero pages sent as small records */
    uint64_t ram_normal;            /**< pages sent with their contents */
    uint64_t ram_normal_bytes;      /**< ram_normal * page size */
    uint64_t ram_dirty_sync_count;  /**< dirty-log syncs (1 after setup) */
    uint64_t ram_dirty_pages_rate;  /**< pages/s dirtied, last >= 1 s period */
    uint64_t ram_page_size;         /**< MK_PAGE_SIZE */
    double ram_mbps;                /**< Mbit/s: last window while active, average after */
    uint64_t passes;                /**< complete sweeps over dirty memory */
    /** The library's own estimate of the stop-and-copy rate, B/s (0 if none). */
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
} mk_stats;

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
     * destination sends MK_ACK_SIZE-byte frames back: progress reports
     * while it loads (the library skips them here) and the final
     * acknowledgement. Not needed with a transport_fd, which is read
     * directly (and whose progress reports make expected downtime count the
     * bytes still buffered on the way). Without either, the migration
     * completes when the last byte is written, and downtime ends there.
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
     * thread. Must not block. Runs on the library's throttle thread.
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
} mk_source_callbacks;

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
     * descriptor (blocking; a socket or pipe) and reads the acknowledgement
     * from it. It never closes it; cancel shuts a socket down to unblock it.
     * A closed peer is an MK_ETRANSPORT error, never a SIGPIPE.
     * -1: use the write/read callbacks.
     */
    int32_t transport_fd;
    uint32_t flags;                 /**< enum mk_source_flags */
    /** Device state size for expected downtime when there is no device_state_size callback. */
    uint64_t device_state_hint;
    /** How long to wait for the destination's ack, ms. 0 = 30000. */
    uint64_t ack_timeout_ms;
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
 * range is rounded out to pages. MK_ERANGE if it is outside every region.
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
 * true/false, 1/0), "throttle-trigger-threshold", "cpu-throttle-initial",
 * "cpu-throttle-increment", "cpu-throttle-tailslow", "max-cpu-throttle",
 * "completion-timeout" (ms), "timeout-strategy" (cancel/switchover).
 * Numbers are decimal; bandwidths may end in K, M, G (powers of 1024).
 */
int mk_source_set_param(mk_source *src, const char *name, const char *value);

/** Start the migration thread. Once per handle; needs regions and a transport. */
int mk_source_start(mk_source *src);

/**
 * Cancel from any thread. Returns at once; the migration thread unwinds,
 * resumes the vCPUs if it had paused them, releases any throttle and ends
 * in MK_STATUS_CANCELLED. MK_ESTATE if already terminal, not started, or
 * too late: once the END record is about to go out the destination may run
 * the guest, and a cancel could leave it running twice.
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
 * made them leave guest mode; it sleeps as long as the current throttle
 * says (up to ~1 s at 99 %) and returns at once when there is no throttle,
 * when the throttle is lifted, or when the migration ends.
 */
int mk_source_throttle_point(mk_source *src, uint32_t vcpu);

/** Fill a snapshot (out->struct_size must be set). */
int mk_source_get_stats(mk_source *src, mk_stats *out);

/**
 * The snapshot as one JSON object with query-migrate names ("status",
 * "total-time", "expected-downtime", "ram": {"transferred", ...}), plus
 * "bandwidth-estimate", "bandwidth-source", "switchover-bandwidth" and a
 * "stop-copy" object. Writes a NUL-terminated string; *out_len (may be NULL)
 * gets its length without the NUL, or on MK_ENOSPC the buffer size needed
 * (length + 1).
 */
int mk_source_stats_json(mk_source *src, char *buf, size_t cap, size_t *out_len);

/** Message for the handle's last failure ("" if none). Valid until the next call. */
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
    int32_t transport_fd;   /**< >= 0: read the stream from (and ack to) this fd; -1: callbacks */
    uint32_t flags;         /**< enum mk_dest_flags */
    uint32_t reserved;
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
} mk_dest_stats;

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
 */
int mk_dest_run(mk_dest *dst);

/**
 * With MK_DEST_MANUAL_ACK: tell the source the guest runs here (status 0)
 * or that resuming failed (negative status; the source reports MK_EDEST).
 */
int mk_dest_ack(mk_dest *dst, int status);

/** Make a running mk_dest_run stop with MK_ECANCELED (shuts a socket fd down). */
int mk_dest_cancel(mk_dest *dst);

/** Fill a snapshot of the load (out->struct_size must be set). Any thread,
 *  also while mk_dest_run runs. */
int mk_dest_get_stats(mk_dest *dst, mk_dest_stats *out);

/** Message for the handle's last failure ("" if none). Valid until the next call. */
const char *mk_dest_errmsg(mk_dest *dst);

/** Free. NULL is accepted. Must not race with mk_dest_run. */
void mk_dest_destroy(mk_dest *dst);

#ifdef __cplusplus
}
#endif

#endif /* MIGRATIONKIT_H */
