/// A snapshot of a migration; the Swift twin of struct mk_stats.
public struct MigrationStats: Sendable, Equatable {
    public var status: MigrationStatus = .none
    public var error: Int32 = 0
    public var errorMessage: String = ""
    public var cpuThrottlePercentage: UInt32 = 0
    public var totalTimeMs: UInt64 = 0
    public var setupTimeMs: UInt64 = 0
    public var downtimeMs: UInt64 = 0
    public var expectedDowntimeMs: UInt64 = 0
    public var downtimeLimitMs: UInt64 = 0
    public var transferred: UInt64 = 0
    public var remaining: UInt64 = 0
    public var total: UInt64 = 0
    public var duplicate: UInt64 = 0
    public var normal: UInt64 = 0
    public var dirtySyncCount: UInt64 = 0
    public var dirtyPagesRate: UInt64 = 0
    public var mbps: Double = 0
    public var passes: UInt64 = 0
    public var bandwidthEstimate: UInt64 = 0
    public var bandwidthSource: BandwidthSource = .none
    public var switchoverBandwidth: UInt64 = 0
    public var switchoverSource: BandwidthSource = .none
    public var pendingDeviceBytes: UInt64 = 0
    public var deviceStateBytes: UInt64 = 0
    public var abortedSwitchovers: UInt64 = 0
    public var stop = StopCopyBreakdown()
    /// The last prediction's parts (at completion: the one at switchover).
    public var expected = ExpectedParts()
    public var downtimeTargetMs: UInt64 = 0
    public var switchoverReason: SwitchoverReason = .none
    public var backlogBytes: UInt64 = 0
    public var rttUs: UInt64 = 0
    /// The destination's END-to-ack time, from its ack.
    public var destResumeUs: UInt64 = 0
    /// Delivered rate timed by the destination, B/s (0 = none yet).
    public var pipelineBandwidth: UInt64 = 0
    /// Auto-converge's controller in force.
    public var throttleMode: ThrottleMode = .closedLoop
    /// Guest time taken by throttling: vCPU-microseconds slept, all vCPUs.
    public var throttleSleepUs: UInt64 = 0
    /// Per vCPU: throttle, dirty rate (where the VMM attributes it), sleep.
    public var vcpus: [VCPUStats] = []

    public init() {}

    public var normalBytes: UInt64 { normal * MigrationParameters.pageSize }
}

/// One vCPU's share of auto-converge.
public struct VCPUStats: Sendable, Equatable {
    public var throttlePercent: UInt32 = 0
    /// Pages/s this vCPU dirtied in the last >= 1 s period; valid only
    /// when `dirtyRateKnown` (the VMM reports per-vCPU counts).
    public var dirtyPagesRate: UInt64 = 0
    public var dirtyRateKnown = false
    /// Pages attributed to this vCPU since the migration started.
    public var dirtyPages: UInt64 = 0
    /// Time asleep in the throttle point, us (cumulative).
    public var throttleSleepUs: UInt64 = 0

    public init() {}
}

/// Expected downtime, part by part, in microseconds.
public struct ExpectedParts: Sendable, Equatable {
    public var ramUs: UInt64 = 0
    public var backlogUs: UInt64 = 0
    public var deviceUs: UInt64 = 0
    public var destinationUs: UInt64 = 0
    public var fixedUs: UInt64 = 0
    public var marginUs: UInt64 = 0

    public init() {}

    public init(_ p: DowntimePrediction) {
        func us(_ ms: Double) -> UInt64 { UInt64(max(ms, 0) * 1000) }
        ramUs = us(p.ramMs)
        backlogUs = us(p.backlogMs)
        deviceUs = us(p.deviceMs)
        destinationUs = us(p.destinationMs)
        fixedUs = us(p.fixedMs)
        marginUs = us(p.marginMs)
    }
}

/// Where the downtime went (seed 004 asked for this timing in 2012).
public struct StopCopyBreakdown: Sendable, Equatable {
    public var pauseUs: UInt64 = 0
    public var syncUs: UInt64 = 0
    public var ramUs: UInt64 = 0
    public var ramBytes: UInt64 = 0
    public var deviceUs: UInt64 = 0
    public var flushUs: UInt64 = 0

    public init() {}

    public var totalUs: UInt64 { pauseUs + syncUs + ramUs + deviceUs + flushUs }
}
