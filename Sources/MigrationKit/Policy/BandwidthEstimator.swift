/// What one accounting window (about 100 ms of the migration thread's life)
/// saw. Time is split by what the thread was doing, because only some of it
/// says anything about how fast the final stop-and-copy will go.
public struct WindowSample: Sendable, Equatable {
    public var elapsedNs: UInt64 = 0   // wall time of the window
    public var sleepNs: UInt64 = 0     // rate-limit sleeps: not a property of the link
    public var syncNs: UInt64 = 0      // dirty-log fetches: budgeted separately
    public var busyNs: UInt64 = 0      // inside the transport's write
    public var wireBytes: UInt64 = 0   // bytes handed to the transport
    public var dataBytes: UInt64 = 0   // guest bytes sent with their contents
    public var zeroBytes: UInt64 = 0   // guest bytes retired as zero records
    /// Bytes handed to the transport since the migration began, at window end.
    public var cumulativeWireBytes: UInt64 = 0

    public init() {}

    /// Time the thread spent moving memory: scanning, checksumming, writing.
    public var activeNs: UInt64 {
        let idle = sleepNs &+ syncNs
        return elapsedNs > idle ? elapsedNs - idle : 0
    }
}

/// Where a bandwidth figure came from (mirrors enum mk_bandwidth_source).
public enum BandwidthSource: Int32, Sendable {
    case none = 0
    case link = 1        // transport-bound windows: the link was the bottleneck
    case throughput = 2  // CPU-bound windows: the link is at least this fast
    case override = 3    // avail-switchover-bandwidth
}

public struct BandwidthEstimate: Sendable, Equatable {
    /// Guest bytes per second that the stop-and-copy can retire.
    public var bytesPerSecond: Double
    public var source: BandwidthSource
}

/// Estimates how fast the stop-and-copy phase will move dirty memory, in the
/// same unit as the pending figure (guest bytes, not wire bytes).
///
/// What it refuses to be fooled by:
/// - short cycles (seed 000): a window with under 10 ms of active time gives
///   no sample, unless less than 10 MiB remain, so a flaky link still lets a
///   nearly finished migration end;
/// - buffered writes: until the transport has accepted more than
///   `absorptionBytes`, writes may only have filled socket buffers, so those
///   samples stay provisional (used only when little is left);
/// - a thread busy scanning zero pages or fetching bitmaps (seed 002): sleep
///   and sync time are not link time, and scanning time is charged to data
///   pages only in proportion to the pages that were data.
/// Samples are smoothed (EWMA), since one 100 ms window is jittery.
public struct BandwidthEstimator: Sendable {
    public static let minActiveNs: UInt64 = 10_000_000
    public static let littleLeftBytes: UInt64 = 10 << 20
    public var absorptionBytes: UInt64 = 16 << 20
    public var smoothing: Double = 0.4

    private var dataRate: Double?          // trusted, guest data bytes/s
    private var provisionalRate: Double?   // from windows we do not trust
    private var linkRate: Double?          // wire bytes / busy time, reported
    private var lastWasTransportBound = false
    private var totalWire: UInt64 = 0
    private var totalBusyNs: UInt64 = 0

    public init() {}

    public mutating func add(_ s: WindowSample) {
        let active = s.activeNs
        totalWire += s.wireBytes
        totalBusyNs += s.busyNs
        if s.busyNs >= Self.minActiveNs {
            linkRate = blend(linkRate, Double(s.wireBytes) / Double(s.busyNs) * 1e9)
        }
        guard s.dataBytes > 0, active > 0 else { return }
        // Busy time belongs to data pages (zero records are a few bytes);
        // the rest of the active time is shared out by page count.
        let share = Double(s.dataBytes) / Double(s.dataBytes + s.zeroBytes)
        let other = active > s.busyNs ? active - s.busyNs : 0
        let dataNs = Double(min(s.busyNs, active)) + Double(other) * share
        guard dataNs > 0 else { return }
        let rate = Double(s.dataBytes) / dataNs * 1e9
        let trusted = active >= Self.minActiveNs && s.cumulativeWireBytes > absorptionBytes
        if trusted {
            dataRate = blend(dataRate, rate)
            lastWasTransportBound = s.busyNs * 2 >= active
        } else {
            provisionalRate = blend(provisionalRate, rate)
        }
    }

    /// The rate to plan the stop-and-copy with, or nil when there is no
    /// figure we may act on yet.
    public func estimate(remainingBytes: UInt64, override: UInt64) -> BandwidthEstimate? {
        if override > 0 {
            return BandwidthEstimate(bytesPerSecond: Double(override), source: .override)
        }
        if let r = dataRate {
            return BandwidthEstimate(bytesPerSecond: r, source: lastWasTransportBound ? .link : .throughput)
        }
        // Little left (seed 000): any figure beats waiting on a link that
        // never gives a clean sample, down to what every write so far saw.
        if remainingBytes < Self.littleLeftBytes {
            if let r = provisionalRate ?? linkRate {
                return BandwidthEstimate(bytesPerSecond: r, source: .throughput)
            }
            if totalBusyNs > 0 && totalWire > 0 {
                return BandwidthEstimate(bytesPerSecond: Double(totalWire) / Double(totalBusyNs) * 1e9, source: .throughput)
            }
        }
        return nil
    }

    /// Wire bytes per busy second of the transport, for display.
    public var link: Double? { linkRate }

    private func blend(_ old: Double?, _ new: Double) -> Double {
        guard let old else { return new }
        return old + smoothing * (new - old)
    }
}
