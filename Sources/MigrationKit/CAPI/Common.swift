import CShim
import Glibc

/// The header's MK_VERSION_* macros are the one source of the version: the
/// string is built from them once and lives as long as the library (never
/// written after that, so sharing the pointer is safe).
nonisolated(unsafe) private let versionCString: UnsafePointer<CChar> = {
    let text = "\(MK_VERSION_MAJOR).\(MK_VERSION_MINOR).\(MK_VERSION_PATCH)"
    return UnsafePointer(strdup(text)!)
}()

@c @implementation
public func mk_version() -> UnsafePointer<CChar>? { versionCString }

@c @implementation
public func mk_version_number() -> UInt32 {
    UInt32(MK_VERSION_MAJOR * 10000 + MK_VERSION_MINOR * 100 + MK_VERSION_PATCH)
}

@c @implementation
public func mk_strerror(_ code: Int32) -> UnsafePointer<CChar>? {
    let s: StaticString = code == 0 ? "success" : (MKError.Code(rawValue: code)?.text ?? "unknown error code")
    return UnsafeRawPointer(s.utf8Start).assumingMemoryBound(to: CChar.self)
}

@c @implementation
public func mk_last_error() -> UnsafePointer<CChar>? { cshim_last_error() }

@c @implementation
public func mk_status_name(_ status: Int32) -> UnsafePointer<CChar>? {
    let s: StaticString
    switch MigrationStatus(rawValue: status) {
    case .none?: s = "none"
    case .setup?: s = "setup"
    case .active?: s = "active"
    case .device?: s = "device"
    case .completed?: s = "completed"
    case .failed?: s = "failed"
    case .cancelling?: s = "cancelling"
    case .cancelled?: s = "cancelled"
    case nil: s = "unknown"
    }
    return UnsafeRawPointer(s.utf8Start).assumingMemoryBound(to: CChar.self)
}

@c @implementation
public func mk_region_init_sized(_ r: UnsafeMutablePointer<mk_region>?, _ size: Int) -> Int32 {
    CResult.run(nil) { () throws(MKError) in
        try CStruct.initialize(r, size: size, with: CStruct.fresh(mk_region()), name: "region")
    }
}

@c @implementation
public func mk_params_init_sized(_ p: UnsafeMutablePointer<mk_params>?, _ size: Int) -> Int32 {
    CResult.run(nil) { () throws(MKError) in
        try CStruct.initialize(p, size: size, with: mk_params(MigrationParameters()), name: "params")
    }
}

@c @implementation
public func mk_buffer_append(_ b: OpaquePointer?, _ data: UnsafeRawPointer?, _ len: Int) -> Int32 {
    CResult.run(nil) { () throws(MKError) in
        guard let b else { throw .null("buffer") }
        let n = UInt(bitPattern: len)  // size_t
        if n == 0 { return }
        guard let data else { throw .null("data") }
        try Unmanaged<DeviceBuffer>.fromOpaque(UnsafeRawPointer(b)).takeUnretainedValue().append(data, n)
    }
}

extension mk_params {
    init(_ p: MigrationParameters) {
        self = CStruct.fresh(mk_params())
        auto_converge = p.autoConverge ? 1 : 0
        downtime_limit_ms = p.downtimeLimitMs
        max_bandwidth = p.maxBandwidth
        avail_switchover_bandwidth = p.availSwitchoverBandwidth
        throttle_trigger_threshold = p.throttleTriggerThreshold
        cpu_throttle_initial = p.cpuThrottleInitial
        cpu_throttle_increment = p.cpuThrottleIncrement
        cpu_throttle_tailslow = p.cpuThrottleTailslow ? 1 : 0
        max_cpu_throttle = p.maxCpuThrottle
        timeout_strategy = p.timeoutStrategy.rawValue
        completion_timeout_ms = p.completionTimeoutMs
        downtime_target_ms = p.downtimeTargetMs
        throttle_mode = p.throttleMode == .step ? MK_THROTTLE_STEP.rawValue : MK_THROTTLE_CLOSED_LOOP.rawValue
    }

    func parameters() throws(MKError) -> MigrationParameters {
        var p = MigrationParameters()
        guard auto_converge <= 1, cpu_throttle_tailslow <= 1 else {
            throw MKError(.invalid, "auto_converge and cpu_throttle_tailslow are booleans (0 or 1)")
        }
        p.autoConverge = auto_converge != 0
        p.downtimeLimitMs = downtime_limit_ms
        p.maxBandwidth = max_bandwidth
        p.availSwitchoverBandwidth = avail_switchover_bandwidth
        p.throttleTriggerThreshold = throttle_trigger_threshold
        p.cpuThrottleInitial = cpu_throttle_initial
        p.cpuThrottleIncrement = cpu_throttle_increment
        p.cpuThrottleTailslow = cpu_throttle_tailslow != 0
        p.maxCpuThrottle = max_cpu_throttle
        guard let s = TimeoutStrategy(rawValue: timeout_strategy) else {
            throw MKError(.invalid, "timeout_strategy must be MK_TIMEOUT_CANCEL or MK_TIMEOUT_SWITCHOVER, got \(timeout_strategy)")
        }
        p.timeoutStrategy = s
        p.completionTimeoutMs = completion_timeout_ms
        p.downtimeTargetMs = downtime_target_ms
        switch throttle_mode {
        case MK_THROTTLE_CLOSED_LOOP.rawValue: p.throttleMode = .closedLoop
        case MK_THROTTLE_STEP.rawValue: p.throttleMode = .step
        default:
            throw MKError(.invalid, "throttle_mode must be MK_THROTTLE_CLOSED_LOOP or MK_THROTTLE_STEP, got \(throttle_mode)")
        }
        guard reserved0 == 0 else { throw MKError(.invalid, "params->reserved0 must be 0") }
        try p.validate()
        return p
    }
}

extension GuestRegion {
    /// From a caller's mk_region, checking what is checkable alone.
    /// `destination`: MK_REGION_FRESH is allowed (it means nothing to a
    /// source, so a source that gets it is told, not ignored).
    init(_ p: UnsafePointer<mk_region>?, destination: Bool) throws(MKError) {
        let r = try CStruct.read(p, defaults: CStruct.fresh(mk_region()), name: "region")
        let fresh = MK_REGION_FRESH.rawValue
        guard r.flags & ~fresh == 0 else {
            throw MKError(.invalid, "region flags has unknown bits 0x\(String(r.flags & ~fresh, radix: 16))")
        }
        guard destination || r.flags & fresh == 0 else {
            throw MKError(.invalid, "MK_REGION_FRESH is a destination flag; a source region has flags 0")
        }
        guard let host = r.host_addr else { throw MKError(.invalid, "region host_addr is NULL") }
        self.init(host: host, guestPhysAddr: r.guest_phys_addr, size: r.size,
                  granularity: r.dirty_granularity == 0 ? MigrationParameters.pageSize : r.dirty_granularity,
                  fresh: r.flags & fresh != 0)
    }
}

// Added in 0.2: zeroed structs with their struct_size, so no consumer
// writes memset + struct_size by hand.
@c @implementation
public func mk_stats_init_sized(_ p: UnsafeMutablePointer<mk_stats>?, _ size: Int) -> Int32 {
    CResult.run(nil) { () throws(MKError) in try CStruct.initialize(p, size: size, with: CStruct.fresh(mk_stats()), name: "stats") }
}

@c @implementation
public func mk_vcpu_stats_init_sized(_ p: UnsafeMutablePointer<mk_vcpu_stats>?, _ size: Int) -> Int32 {
    CResult.run(nil) { () throws(MKError) in
        try CStruct.initialize(p, size: size, with: CStruct.fresh(mk_vcpu_stats()), name: "vcpu stats")
    }
}

@c @implementation
public func mk_source_callbacks_init_sized(_ p: UnsafeMutablePointer<mk_source_callbacks>?, _ size: Int) -> Int32 {
    CResult.run(nil) { () throws(MKError) in
        try CStruct.initialize(p, size: size, with: CStruct.fresh(mk_source_callbacks()), name: "callbacks")
    }
}

@c @implementation
public func mk_dest_stats_init_sized(_ p: UnsafeMutablePointer<mk_dest_stats>?, _ size: Int) -> Int32 {
    CResult.run(nil) { () throws(MKError) in
        try CStruct.initialize(p, size: size, with: CStruct.fresh(mk_dest_stats()), name: "dest stats")
    }
}

@c @implementation
public func mk_dest_callbacks_init_sized(_ p: UnsafeMutablePointer<mk_dest_callbacks>?, _ size: Int) -> Int32 {
    CResult.run(nil) { () throws(MKError) in
        try CStruct.initialize(p, size: size, with: CStruct.fresh(mk_dest_callbacks()), name: "callbacks")
    }
}
