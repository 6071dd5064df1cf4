/// Auto-converge's decision: when to throttle the guest and by how much.
/// QEMU's rule: in each period of at least a second, if the guest dirtied
/// more than `throttle-trigger-threshold` % of what was sent, count it; on
/// the second such period step the throttle (initial, then +increment, or
/// with tailslow an increment sized by the overshoot), up to the maximum.
package struct AutoConverge: Sendable, Equatable {
    package private(set) var percentage: UInt32 = 0
    private(set) var highPeriods = 0

    package init() {}

    /// Feed one period; returns true when the throttle changed.
    package mutating func onPeriod(dirtiedBytes: UInt64, transferredBytes: UInt64,
                                  params: MigrationParameters) -> Bool {
        guard params.autoConverge else { return release() }
        let threshold = Double(transferredBytes) * Double(params.throttleTriggerThreshold) / 100
        guard Double(dirtiedBytes) > threshold else { return false }
        highPeriods += 1
        guard highPeriods >= 2 else { return false }
        highPeriods = 0
        let old = percentage
        if percentage == 0 {
            percentage = params.cpuThrottleInitial
        } else {
            var inc = params.cpuThrottleIncrement
            if params.cpuThrottleTailslow, dirtiedBytes > 0 {
                // Cut the guest's CPU share in proportion to the overshoot,
                // never by more than the normal step.
                let cpuNow = 100 - percentage
                let cpuIdeal = UInt32(Double(cpuNow) * threshold / Double(dirtiedBytes))
                inc = min(cpuNow - min(cpuIdeal, cpuNow), inc)
            }
            percentage = min(percentage + inc, params.maxCpuThrottle)
        }
        percentage = min(max(percentage, 1), 99)
        return percentage != old
    }

    /// Drop the throttle (terminal states, auto-converge switched off).
    @discardableResult
    package mutating func release() -> Bool {
        let changed = percentage != 0
        percentage = 0
        highPeriods = 0
        return changed
    }
}

/// How a throttle percentage becomes vCPU sleep: every vCPU runs a 10 ms
/// slice, then sleeps so that the sleeping fraction is the percentage.
package enum ThrottleTiming {
    static let timesliceNs: UInt64 = 10_000_000

    /// Sleep per kick, ns.
    package static func sleepNs(percent: UInt32) -> UInt64 {
        guard percent > 0 else { return 0 }
        let p = Double(min(percent, 99)) / 100
        return UInt64(p / (1 - p) * Double(timesliceNs))
    }

    /// Time between kicks, ns: one slice of running plus the sleep.
    package static func periodNs(percent: UInt32) -> UInt64 {
        timesliceNs + sleepNs(percent: percent)
    }
}

/// Auto-converge's closed-loop controller (throttle-mode closed-loop).
///
/// Every control period (the engine runs one every 0.5 s at a dirty-log
/// sync, from the end of the first pass on) it compares the guest's
/// measured dirty rate with the rate the link retires and sets the
/// throttle that brings the dirty rate to `throttle-trigger-threshold` %
/// of it: no fixed steps, no waiting for a second high period. It works on demand, the rate a vCPU would dirty
/// at unthrottled (measured rate / the share of time it was let run), so a
/// throttle that holds the rate at the target stays where it is, and is
/// dropped as soon as the demand alone fits under the target.
///
/// With per-vCPU counts (the VMM's dirty ring) each vCPU has its own
/// demand and only the heaviest dirtiers are slowed, water-filling: every
/// vCPU keeps up to a common cap of dirty rate, a vCPU under the cap is not
/// throttled at all, one over it runs cap / demand of the time. Without
/// counts every vCPU gets the same throttle (one demand for the guest).
package struct ClosedLoopThrottle: Sendable, Equatable {
    /// Throttle per vCPU, percent (0..max-cpu-throttle).
    package private(set) var percents: [UInt32]
    /// Smoothed demand per vCPU, bytes/s unthrottled; nil before a period.
    private(set) var demand: [Double]?
    /// The last period's measured dirty rate per vCPU, B/s (nil entries:
    /// not attributed).
    package private(set) var measured: [Double?]
    private(set) var lastTarget: Double = 0

    /// A vCPU whose share of the dirtying is below this is never throttled.
    static let minShare = 0.02

    package init(vcpus: Int) {
        percents = Array(repeating: 0, count: max(vcpus, 1))
        measured = Array(repeating: nil, count: max(vcpus, 1))
    }

    var maxPercent: UInt32 { percents.max() ?? 0 }

    /// One control period: `dirtiedBytes` in `periodNs` (from the dirty
    /// log), `vcpuPages` the pages each vCPU dirtied in it (nil: the VMM
    /// cannot tell), `retireBytesPerSecond` what the link moves. Returns
    /// true when any vCPU's throttle changed.
    package mutating func onPeriod(dirtiedBytes: UInt64, periodNs: UInt64, vcpuPages: [UInt64]?,
                                  retireBytesPerSecond: Double, params: MigrationParameters) -> Bool {
        guard params.autoConverge else { return release() }
        guard periodNs > 0, retireBytesPerSecond > 0 else { return false }
        let n = percents.count
        let rate = Double(dirtiedBytes) * 1e9 / Double(periodNs)
        var shares: [Double]?
        if let c = vcpuPages, c.count == n {
            let sum = c.reduce(0, +)
            if sum > 0 { shares = c.map { Double($0) / Double(sum) } }
            else if rate == 0 { shares = Array(repeating: 0, count: n) }
        }
        var fresh = [Double](repeating: 0, count: n)
        if let shares {
            for i in 0..<n {
                let d = rate * shares[i]
                measured[i] = d
                fresh[i] = d / Self.running(percents[i])
            }
        } else {
            // One demand for the guest, spread evenly (all vCPUs share one
            // throttle, so the split does not matter).
            let common = percents.max() ?? 0
            let total = rate / Self.running(common)
            for i in 0..<n {
                measured[i] = nil
                fresh[i] = total / Double(n)
            }
        }
        // Up at once (the guest dirties more: throttle now), down halfway
        // (one noisy period must not drop a throttle that is working).
        var d = demand ?? fresh
        let target = retireBytesPerSecond * Double(params.throttleTriggerThreshold) / 100
        if demand != nil && fresh.reduce(0, +) > target / 2 {
            for i in 0..<n { d[i] = fresh[i] >= d[i] ? fresh[i] : (d[i] + fresh[i]) / 2 }
        } else {
            // First period, or clearly not needed any more: no smoothing.
            d = fresh
        }
        demand = d
        lastTarget = target
        let old = percents
        let total = d.reduce(0, +)
        if total <= target {
            percents = Array(repeating: 0, count: n)
        } else if shares == nil {
            let p = Self.percent(running: target / total, max: params.maxCpuThrottle)
            percents = Array(repeating: p, count: n)
        } else {
            let cap = Self.waterLevel(d, total: target)
            percents = d.map { di in
                guard di > 0, di > cap, di >= Self.minShare * total else { return 0 }
                return Self.percent(running: cap / di, max: params.maxCpuThrottle)
            }
        }
        return percents != old
    }

    /// The cap c with sum(min(d_i, c)) == total (total < sum(d)).
    static func waterLevel(_ d: [Double], total: Double) -> Double {
        let sorted = d.sorted()
        var left = total
        var count = Double(sorted.count)
        for x in sorted {
            if x * count >= left { return left / count }
            left -= x
            count -= 1
        }
        return sorted.last ?? 0
    }

    /// The share of time a vCPU throttled by p % runs (at least 1 %).
    static func running(_ p: UInt32) -> Double { max(Double(100 - min(p, 99)) / 100, 0.01) }

    /// The throttle that lets a vCPU run `running` of the time, rounded
    /// towards more throttle, within 0...max.
    static func percent(running: Double, max m: UInt32) -> UInt32 {
        let p = ((1 - min(max(running, 0), 1)) * 100).rounded(.up)
        return UInt32(min(max(p, 0), Double(min(m, 99))))
    }

    @discardableResult
    package mutating func release() -> Bool {
        let changed = percents.contains { $0 != 0 }
        percents = Array(repeating: 0, count: percents.count)
        demand = nil
        return changed
    }
}
