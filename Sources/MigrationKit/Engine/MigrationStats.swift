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

    public init() {}

    public var normalBytes: UInt64 { normal * MigrationParameters.pageSize }
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
