/// A snapshot of a migration; the Swift twin of struct mk_stats.
package struct MigrationStats: Sendable, Equatable {
    package var status: MigrationStatus = .none
    package var error: Int32 = 0
    package var errorMessage: String = ""
    package var cpuThrottlePercentage: UInt32 = 0
    var totalTimeMs: UInt64 = 0
    var setupTimeMs: UInt64 = 0
    package var downtimeMs: UInt64 = 0
    package var expectedDowntimeMs: UInt64 = 0
    package var downtimeLimitMs: UInt64 = 0
    package var transferred: UInt64 = 0
    package var remaining: UInt64 = 0
    package var total: UInt64 = 0
    package var duplicate: UInt64 = 0
    package var normal: UInt64 = 0
    package var dirtySyncCount: UInt64 = 0
    package var dirtyPagesRate: UInt64 = 0
    package var mbps: Double = 0
    package var passes: UInt64 = 0
    package var bandwidthEstimate: UInt64 = 0
    package var bandwidthSource: BandwidthSource = .none
    package var switchoverBandwidth: UInt64 = 0
    package var switchoverSource: BandwidthSource = .none
    package var pendingDeviceBytes: UInt64 = 0
    package var deviceStateBytes: UInt64 = 0
    package var abortedSwitchovers: UInt64 = 0
    package var stop = StopCopyBreakdown()
    /// The last prediction's parts (at completion: the one at switchover).
    package var expected = ExpectedParts()
    package var downtimeTargetMs: UInt64 = 0
    package var switchoverReason: SwitchoverReason = .none
    package var backlogBytes: UInt64 = 0
    package var rttUs: UInt64 = 0
    /// The destination's END-to-ack time, from its ack.
    var destResumeUs: UInt64 = 0
    /// Delivered rate timed by the destination, B/s (0 = none yet).
    var pipelineBandwidth: UInt64 = 0
    /// Auto-converge's controller in force.
    package var throttleMode: ThrottleMode = .closedLoop
    /// Guest time taken by throttling: vCPU-microseconds slept, all vCPUs.
    package var throttleSleepUs: UInt64 = 0
    /// Per vCPU: throttle, dirty rate (where the VMM attributes it), sleep.
    package var vcpus: [VCPUStats] = []

    package init() {}

    var normalBytes: UInt64 { normal * MigrationParameters.pageSize }
}

/// One vCPU's share of auto-converge.
package struct VCPUStats: Sendable, Equatable {
    package var throttlePercent: UInt32 = 0
    /// Pages/s this vCPU dirtied in the last >= 1 s period; valid only
    /// when `dirtyRateKnown` (the VMM reports per-vCPU counts).
    package var dirtyPagesRate: UInt64 = 0
    package var dirtyRateKnown = false
    /// Pages attributed to this vCPU since the migration started.
    var dirtyPages: UInt64 = 0
    /// Time asleep in the throttle point, us (cumulative).
    package var throttleSleepUs: UInt64 = 0

    package init() {}
}

/// Expected downtime, part by part, in microseconds.
package struct ExpectedParts: Sendable, Equatable {
    package var ramUs: UInt64 = 0
    package var backlogUs: UInt64 = 0
    package var deviceUs: UInt64 = 0
    package var destinationUs: UInt64 = 0
    package var fixedUs: UInt64 = 0
    package var marginUs: UInt64 = 0

    package init() {}

    package init(_ p: DowntimePrediction) {
        func us(_ ms: Double) -> UInt64 { UInt64(max(ms, 0) * 1000) }
        ramUs = us(p.ramMs)
        backlogUs = us(p.backlogMs)
        deviceUs = us(p.deviceMs)
        destinationUs = us(p.destinationMs)
        fixedUs = us(p.fixedMs)
        marginUs = us(p.marginMs)
    }
}

/// Where the downtime went: a flush can dwarf the rest, and only a
/// per-step timing shows which step to blame.
package struct StopCopyBreakdown: Sendable, Equatable {
    package var pauseUs: UInt64 = 0
    package var syncUs: UInt64 = 0
    package var ramUs: UInt64 = 0
    package var ramBytes: UInt64 = 0
    package var deviceUs: UInt64 = 0
    package var flushUs: UInt64 = 0
    /// Of the whole stop-and-copy (pause to ack), how long the migration
    /// thread was ready to run but had no CPU; nil where the system does
    /// not say.
    package var cpuWaitUs: UInt64?

    package init() {}

    package var totalUs: UInt64 { pauseUs + syncUs + ramUs + deviceUs + flushUs }
}
