/// Auto-converge's decision: when to throttle the guest and by how much.
/// QEMU's rule: in each period of at least a second, if the guest dirtied
/// more than `throttle-trigger-threshold` % of what was sent, count it; on
/// the second such period step the throttle (initial, then +increment, or
/// with tailslow an increment sized by the overshoot), up to the maximum.
public struct AutoConverge: Sendable, Equatable {
    public private(set) var percentage: UInt32 = 0
    public private(set) var highPeriods = 0

    public init() {}

    /// Feed one period; returns true when the throttle changed.
    public mutating func onPeriod(dirtiedBytes: UInt64, transferredBytes: UInt64,
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
    public mutating func release() -> Bool {
        let changed = percentage != 0
        percentage = 0
        highPeriods = 0
        return changed
    }
}

/// How a throttle percentage becomes vCPU sleep: every vCPU runs a 10 ms
/// slice, then sleeps so that the sleeping fraction is the percentage.
public enum ThrottleTiming {
    public static let timesliceNs: UInt64 = 10_000_000

    /// Sleep per kick, ns.
    public static func sleepNs(percent: UInt32) -> UInt64 {
        guard percent > 0 else { return 0 }
        let p = Double(min(percent, 99)) / 100
        return UInt64(p / (1 - p) * Double(timesliceNs))
    }

    /// Time between kicks, ns: one slice of running plus the sleep.
    public static func periodNs(percent: UInt32) -> UInt64 {
        timesliceNs + sleepNs(percent: percent)
    }
}
