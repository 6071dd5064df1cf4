/// What one accounting window (about 100 ms of the migration thread's life)
/// saw. Time is split by what the thread was doing, because only some of it
/// says anything about how fast the final stop-and-copy will go.
package struct WindowSample: Sendable, Equatable {
    package var elapsedNs: UInt64 = 0   // wall time of the window
    package var sleepNs: UInt64 = 0     // rate-limit sleeps: not a property of the link
    package var syncNs: UInt64 = 0      // dirty-log fetches: budgeted separately
    package var idleNs: UInt64 = 0      // nothing dirty: waiting for the guest
    package var busyNs: UInt64 = 0      // inside the transport's write
    /// Part of the sync time during which the transport still had stream
    /// queued (it kept sending while the thread fetched the dirty log).
    package var linkAwayNs: UInt64 = 0
    package var wireBytes: UInt64 = 0   // bytes handed to the transport
    package var dataBytes: UInt64 = 0   // guest bytes sent with their contents
    package var zeroBytes: UInt64 = 0   // guest bytes retired as zero records
    /// Bytes handed to the transport since the migration began, at window end.
    package var cumulativeWireBytes: UInt64 = 0
    /// The batches that followed another batch with no sleep or sync
    /// between (warm caches, a receiver already awake): their time, the
    /// part of it inside the write, and their pages. The stop-and-copy runs
    /// only such batches; under a cap a batch after a sleep took 1.5 times
    /// as long on KVM (686 against 447 us a MiB, stop-and-copy 439).
    package var warm = WarmBatches()

    /// Time and pages of back-to-back batches.
    package struct WarmBatches: Sendable, Equatable {
        package var ns: UInt64 = 0
        package var busyNs: UInt64 = 0
        package var dataBytes: UInt64 = 0
        package var zeroBytes: UInt64 = 0

        package init() {}

        mutating func absorb(_ w: WarmBatches) {
            ns += w.ns
            busyNs += w.busyNs
            dataBytes += w.dataBytes
            zeroBytes += w.zeroBytes
        }
    }

    package init() {}

    /// Time the thread spent moving memory: scanning, checksumming, writing.
    var activeNs: UInt64 {
        let idle = sleepNs &+ syncNs &+ idleNs
        return elapsedNs > idle ? elapsedNs - idle : 0
    }

    /// Fold a later window into this one.
    mutating func absorb(_ s: WindowSample) {
        elapsedNs += s.elapsedNs
        sleepNs += s.sleepNs
        syncNs += s.syncNs
        idleNs += s.idleNs
        busyNs += s.busyNs
        linkAwayNs += s.linkAwayNs
        wireBytes += s.wireBytes
        dataBytes += s.dataBytes
        zeroBytes += s.zeroBytes
        cumulativeWireBytes = s.cumulativeWireBytes
        warm.absorb(s.warm)
    }
}

/// Where a bandwidth figure came from (mirrors enum mk_bandwidth_source).
package enum BandwidthSource: Int32, Sendable {
    case none = 0
    case link = 1        // transport-bound windows: the link was the bottleneck
    case throughput = 2  // CPU-bound or rate-limited windows: a conservative figure
    case override = 3    // avail-switchover-bandwidth
    case pipeline = 4    // delivered rate timed by the destination (under a cap)
}

package struct BandwidthEstimate: Sendable, Equatable {
    /// Guest bytes per second that the stop-and-copy can retire.
    package var bytesPerSecond: Double
    package var source: BandwidthSource
}

/// Estimates how fast the stop-and-copy phase will move dirty memory, in the
/// same unit as the pending figure (guest bytes, not wire bytes).
///
/// Windows are classified by what bounded them:
/// - transport-bound (blocked in writes for at least half the active time):
///   the link, receiver included, was the bottleneck: its rate is the figure;
/// - rate-limited (asleep for at least half the window): writes never block
///   under the cap, so the link's speed is unknown; the rate actually
///   delivered is the only safe figure (the cap is lifted at switchover,
///   but a link we never saw go faster is not assumed to);
/// - CPU-bound (scanning, checksumming): the final stage does the same work,
///   so the rate of data pages over their share of the time is the figure
///   (zero-page scanning and bitmap fetches are not link time).
///
/// What it refuses to be fooled by:
/// - short cycles: windows are pooled until they hold 10 ms of
///   activity; a sample is never taken from less, unless under 10 MiB
///   remain, so a flaky link still lets a nearly finished migration end;
/// - buffered writes: until the transport has taken `absorptionBytes` at the
///   start of a window, writes may only have filled socket buffers, so such
///   windows stay provisional (used only when little is left).
/// Samples are smoothed (EWMA), since one 100 ms window is jittery.
package struct BandwidthEstimator: Sendable {
    static let minActiveNs: UInt64 = 10_000_000
    static let littleLeftBytes: UInt64 = 10 << 20
    var absorptionBytes: UInt64 = 16 << 20
    var smoothing: Double = 0.4

    private var pooled = WindowSample()
    private var pooledFromBytes: UInt64 = 0 // cumulative wire bytes when the pool began
    private var linkRate: Double?           // transport-bound, guest bytes/s
    private var cpuRate: Double?            // CPU-bound, guest bytes/s
    private var cappedRate: Double?         // rate-limited: delivered wire bytes/s
    private var productionRate: Double?     // rate-limited: data bytes per active second
    private var warmPool = WindowSample.WarmBatches()
    private var provisionalRate: Double?    // from windows we do not trust
    private var wireLinkRate: Double?       // wire bytes / busy time, for display
    private enum Kind { case none, link, cpu, capped }
    private var lastKind = Kind.none
    private var totalWire: UInt64 = 0
    private var totalBusyNs: UInt64 = 0
    /// How far trusted samples strayed from the figure they updated
    /// (EWMA of the relative error): the prediction's margin.
    package private(set) var dispersion: Double = 0

    package init() {}

    package mutating func add(_ s: WindowSample) {
        totalWire += s.wireBytes
        totalBusyNs += s.busyNs
        if pooled.elapsedNs == 0 { pooledFromBytes = s.cumulativeWireBytes - min(s.wireBytes, s.cumulativeWireBytes) }
        // Trust starts with the first window that began after the transport
        // had taken `absorptionBytes`: the buffers are full by then, if the
        // link is slower than the sender.
        pooled.absorb(s)
        // A window with a little activity and a lot of sleep is a rate-limited
        // window; pool it until the activity is worth a sample.
        let rateLimited = pooled.sleepNs * 2 >= pooled.elapsedNs
        guard pooled.activeNs >= Self.minActiveNs || (rateLimited && pooled.elapsedNs >= 10 * Self.minActiveNs) else {
            if pooled.dataBytes > 0, pooled.activeNs > 0 {
                provisionalRate = blend(provisionalRate, dataRate(pooled))
            }
            return
        }
        let w = pooled
        let fromBytes = pooledFromBytes
        pooled = WindowSample()
        sample(w, trusted: fromBytes >= absorptionBytes)
    }

    private mutating func sample(_ w: WindowSample, trusted: Bool) {
        let active = w.activeNs
        if w.busyNs >= Self.minActiveNs {
            wireLinkRate = blend(wireLinkRate, Double(w.wireBytes) / Double(w.busyNs) * 1e9)
        }
        guard w.dataBytes > 0 else { return }
        let rate = dataRate(w)
        guard trusted, rate > 0 else {
            provisionalRate = blend(provisionalRate, rate)
            return
        }
        // Sleep first: under a cap, the short bursts between sleeps block on
        // nothing and would pass for a transport-bound link of any speed.
        if w.sleepNs * 2 >= w.elapsedNs {
            cappedRate = blend(cappedRate, Double(w.wireBytes) / Double(w.elapsedNs) * 1e9)
            // Between sleeps no write waits on the link, so the active time
            // is the source's own work per byte (scan, check values, copy
            // into the socket): a ceiling for the uncapped stop-and-copy.
            // Timed on the warm batches alone where there are any: the
            // stop-and-copy runs back to back, and the first batch after
            // each sleep pays for waking up. They are pooled like windows,
            // until they hold 10 ms (a window has 2-3 ms of them at 100 MB/s).
            warmPool.absorb(w.warm)
            if warmPool.ns >= Self.minActiveNs, warmPool.dataBytes > 0 {
                productionRate = blend(productionRate, Self.dataRate(data: warmPool.dataBytes, zero: warmPool.zeroBytes,
                                                                     activeNs: warmPool.ns, busyNs: warmPool.busyNs))
                warmPool = WindowSample.WarmBatches()
            } else if warmPool.ns == 0 {
                productionRate = blend(productionRate, rate)
            }
            lastKind = .capped
        } else if w.busyNs * 2 >= active {
            // The link keeps draining while the writer is away (idle, dirty
            // log sync, sleep) as long as its queue lasts; what it drained
            // then is written afterwards without blocking, so bytes over
            // busy time overstate a link with a deep queue by up to
            // away / busy (a 16 MiB send buffer after a finished pass, 89 ms
            // idle and 11 ms blocked per window: 17.7 MB/s on a 10 MB/s
            // link). A shallow queue empties at once and the figure holds
            // (sync and idle are not link time), but a window mostly away
            // cannot tell the two apart: keep the figure as it is.
            let away = w.idleNs &+ w.syncNs &+ w.sleepNs
            guard away <= 2 * w.busyNs else { return }
            // The link kept sending while the thread scanned and hashed
            // between writes, and through any sync that ended with stream
            // still queued: charging that time to anything else reads a
            // transport-bound link too fast (85 MB/s on a 78 MB/s link in the
            // simulator, a 4 ms sync every 20 ms). A link busy all along
            // moved the wire bytes over the active time plus those syncs.
            let linkSample = min(rate, Double(w.wireBytes) / Double(max(active + w.linkAwayNs, 1)) * 1e9)
            noteError(linkRate, linkSample)
            linkRate = blend(linkRate, linkSample)
            lastKind = .link
        } else {
            noteError(cpuRate, rate)
            cpuRate = blend(cpuRate, rate)
            lastKind = .cpu
        }
    }

    /// Data pages retired per second of the time that was theirs: all the
    /// transport time (zero records are a few bytes each) plus their share,
    /// by page count, of the rest of the active time.
    private func dataRate(_ w: WindowSample) -> Double {
        Self.dataRate(data: w.dataBytes, zero: w.zeroBytes, activeNs: w.activeNs, busyNs: w.busyNs)
    }

    private static func dataRate(data: UInt64, zero: UInt64, activeNs active: UInt64, busyNs busy: UInt64) -> Double {
        let share = Double(data) / Double(data + zero)
        let other = active > busy ? active - busy : 0
        let dataNs = Double(min(busy, active)) + Double(other) * share
        return dataNs > 0 ? Double(data) / dataNs * 1e9 : 0
    }

    /// The rate to plan the stop-and-copy with, or nil when there is no
    /// figure we may act on yet.
    package func estimate(remainingBytes: UInt64, override: UInt64) -> BandwidthEstimate? {
        if override > 0 {
            return BandwidthEstimate(bytesPerSecond: Double(override), source: .override)
        }
        if let e = measured { return e }
        // Little left: any figure beats waiting on a link that
        // never gives a clean sample, down to what every write so far saw.
        if remainingBytes < Self.littleLeftBytes {
            if let r = provisionalRate ?? wireLinkRate {
                return BandwidthEstimate(bytesPerSecond: r, source: .throughput)
            }
            if totalBusyNs > 0 && totalWire > 0 {
                return BandwidthEstimate(bytesPerSecond: Double(totalWire) / Double(totalBusyNs) * 1e9, source: .throughput)
            }
        }
        return nil
    }

    /// The library's own figure, ignoring any override (what stats report).
    /// The final stage runs at min(what the thread can produce, what the
    /// link takes); a link seen transport-bound is real evidence of the
    /// latter, a rate-limited phase only proves the delivered rate.
    package var measured: BandwidthEstimate? {
        if let l = linkRate {
            if let c = cpuRate, c < l { return BandwidthEstimate(bytesPerSecond: c, source: .throughput) }
            return BandwidthEstimate(bytesPerSecond: l, source: .link)
        }
        let r = lastKind == .capped ? (cappedRate ?? cpuRate) : (cpuRate ?? cappedRate)
        return r.map { BandwidthEstimate(bytesPerSecond: $0, source: .throughput) }
    }

    /// The latest trusted sample found the link to be the bottleneck.
    var isTransportBound: Bool { lastKind == .link }

    /// The latest trusted sample was paced by max-bandwidth: the link's own
    /// speed was not seen.
    var isRateLimited: Bool { lastKind == .capped }

    /// Under max-bandwidth: how fast the source itself produced data pages
    /// (guest bytes per second of its active time), nil before a sample.
    var sourceProductionRate: Double? { productionRate }

    private mutating func noteError(_ old: Double?, _ new: Double) {
        guard let old, old > 0 else { return }
        dispersion += smoothing * (min(abs(new - old) / old, 1) - dispersion)
    }

    /// Wire bytes per busy second of the transport, for display.
    package var link: Double? { wireLinkRate }

    private func blend(_ old: Double?, _ new: Double) -> Double {
        guard let old else { return new }
        return old + smoothing * (new - old)
    }
}
