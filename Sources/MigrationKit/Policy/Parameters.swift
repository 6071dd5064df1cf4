/// What happens when `completionTimeoutMs` expires before the guest converged.
package enum TimeoutStrategy: UInt32, Sendable {
    case cancel = 0
    case switchover = 1
}

/// How auto-converge slows the guest.
package enum ThrottleMode: UInt32, Sendable {
    /// QEMU's step controller: two high periods, then initial, +increment, ...
    /// up to max-cpu-throttle, on every vCPU.
    case step = 0
    /// Every control period (<= 1 s): the throttle that brings the measured
    /// dirty rate under throttle-trigger-threshold % of what the link
    /// retires, per vCPU when the VMM attributes dirtying (the default).
    case closedLoop = 1

    package var name: String { self == .step ? "step" : "closed-loop" }
}

/// The operator's knobs, with QEMU's names, units and defaults where QEMU has
/// them. Validation is all-or-nothing so a running migration never sees a
/// half-applied change.
package struct MigrationParameters: Sendable, Equatable {
    package var downtimeLimitMs: UInt64 = 300
    package var maxBandwidth: UInt64 = 0              // B/s, 0 = unlimited
    package var availSwitchoverBandwidth: UInt64 = 0  // B/s, 0 = use the estimate
    package var autoConverge = false
    package var throttleTriggerThreshold: UInt32 = 50 // %
    package var cpuThrottleInitial: UInt32 = 20       // %
    package var cpuThrottleIncrement: UInt32 = 10     // %
    package var cpuThrottleTailslow = false
    package var maxCpuThrottle: UInt32 = 99           // %
    package var completionTimeoutMs: UInt64 = 0       // 0 = never
    package var timeoutStrategy: TimeoutStrategy = .cancel
    /// Downtime worth iterating for (see SwitchoverRule); above the limit
    /// it acts as the limit, so the two can be changed in any order.
    package var downtimeTargetMs: UInt64 = 50
    /// Auto-converge's controller ("throttle-mode").
    package var throttleMode: ThrottleMode = .closedLoop

    static let maxDowntimeLimitMs: UInt64 = 2_000_000
    package static let pageSize: UInt64 = 4096

    package init() {}

    package func validate() throws(MKError) {
        func fail(_ msg: String) -> MKError { MKError(.invalid, msg) }
        if downtimeLimitMs > Self.maxDowntimeLimitMs {
            throw fail("downtime-limit must be 0..\(Self.maxDowntimeLimitMs) ms, got \(downtimeLimitMs)")
        }
        if downtimeTargetMs > Self.maxDowntimeLimitMs {
            throw fail("downtime-target must be 0..\(Self.maxDowntimeLimitMs) ms, got \(downtimeTargetMs)")
        }
        // QEMU silently turns 1..9 B/s into "unlimited"; a limit that cannot
        // move one page per second is a mistake we report instead.
        if maxBandwidth != 0 && maxBandwidth < Self.pageSize {
            throw fail("max-bandwidth must be 0 (unlimited) or at least \(Self.pageSize) B/s, got \(maxBandwidth)")
        }
        if availSwitchoverBandwidth != 0 && availSwitchoverBandwidth < Self.pageSize {
            throw fail("avail-switchover-bandwidth must be 0 (use the estimate) or at least \(Self.pageSize) B/s, got \(availSwitchoverBandwidth)")
        }
        if !(1...100).contains(throttleTriggerThreshold) {
            throw fail("throttle-trigger-threshold must be 1..100 %, got \(throttleTriggerThreshold)")
        }
        if !(1...99).contains(cpuThrottleInitial) {
            throw fail("cpu-throttle-initial must be 1..99 %, got \(cpuThrottleInitial)")
        }
        if !(1...99).contains(cpuThrottleIncrement) {
            throw fail("cpu-throttle-increment must be 1..99 %, got \(cpuThrottleIncrement)")
        }
        if maxCpuThrottle > 99 || maxCpuThrottle < cpuThrottleInitial {
            throw fail("max-cpu-throttle must be cpu-throttle-initial (\(cpuThrottleInitial))..99 %, got \(maxCpuThrottle)")
        }
    }

    /// Set one parameter from text, by its QEMU name. Used by the C API and
    /// by command lines that pass parameters through unchanged.
    package mutating func set(name: String, value: String) throws(MKError) {
        switch name {
        case "downtime-limit": downtimeLimitMs = try Self.number(name, value)
        case "downtime-target": downtimeTargetMs = try Self.number(name, value)
        case "max-bandwidth": maxBandwidth = try Self.size(name, value)
        case "avail-switchover-bandwidth": availSwitchoverBandwidth = try Self.size(name, value)
        case "auto-converge": autoConverge = try Self.bool(name, value)
        case "throttle-trigger-threshold": throttleTriggerThreshold = try Self.percent(name, value)
        case "cpu-throttle-initial": cpuThrottleInitial = try Self.percent(name, value)
        case "cpu-throttle-increment": cpuThrottleIncrement = try Self.percent(name, value)
        case "cpu-throttle-tailslow": cpuThrottleTailslow = try Self.bool(name, value)
        case "max-cpu-throttle": maxCpuThrottle = try Self.percent(name, value)
        case "completion-timeout": completionTimeoutMs = try Self.number(name, value)
        case "throttle-mode":
            switch value {
            case "step": throttleMode = .step
            case "closed-loop": throttleMode = .closedLoop
            default: throw MKError(.invalid, "throttle-mode must be step or closed-loop, got '\(value)'")
            }
        case "timeout-strategy":
            switch value {
            case "cancel": timeoutStrategy = .cancel
            case "switchover": timeoutStrategy = .switchover
            default: throw MKError(.invalid, "timeout-strategy must be cancel or switchover, got '\(value)'")
            }
        default:
            throw MKError(.invalid, "unknown parameter '\(name)'")
        }
    }

    static func number(_ name: String, _ text: String) throws(MKError) -> UInt64 {
        guard !text.isEmpty, let v = UInt64(text) else {
            throw MKError(.invalid, "\(name) expects a decimal number, got '\(text)'")
        }
        return v
    }

    static func percent(_ name: String, _ text: String) throws(MKError) -> UInt32 {
        let v = try number(name, text)
        guard v <= 100 else { throw MKError(.invalid, "\(name) expects a percentage, got '\(text)'") }
        return UInt32(v)
    }

    /// Bytes per second, with an optional K/M/G suffix (powers of 1024).
    static func size(_ name: String, _ text: String) throws(MKError) -> UInt64 {
        var digits = Substring(text)
        var scale: UInt64 = 1
        if let last = digits.last, let s = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30][String(last).uppercased()] {
            scale = UInt64(s)
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, let v = UInt64(digits) else {
            throw MKError(.invalid, "\(name) expects bytes/second (e.g. 125M), got '\(text)'")
        }
        let (r, overflow) = v.multipliedReportingOverflow(by: scale)
        if overflow { throw MKError(.invalid, "\(name) value '\(text)' is too large") }
        return r
    }

    static func bool(_ name: String, _ text: String) throws(MKError) -> Bool {
        switch text.lowercased() {
        case "on", "true", "1", "yes": return true
        case "off", "false", "0", "no": return false
        default: throw MKError(.invalid, "\(name) expects on/off, got '\(text)'")
        }
    }
}
