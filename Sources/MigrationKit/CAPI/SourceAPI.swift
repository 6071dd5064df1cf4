import CShim

// The mk_source_* entry points. Each one checks its arguments, turns every
// failure into a negative MK_E* code plus a message, and never lets a Swift
// trap reach the VMM.

private func session(_ h: OpaquePointer) -> SourceSession {
    Unmanaged<SourceSession>.fromOpaque(UnsafeRawPointer(h)).takeUnretainedValue()
}

/// Run `body` on the handle's session, recording failures on it.
private func withSource(_ h: OpaquePointer?, _ body: (SourceSession) throws(MKError) -> Void) -> Int32 {
    guard let h else { return CResult.fail(.null("source handle"), nil) }
    let s = session(h)
    return CResult.run(s.errors) { () throws(MKError) in try body(s) }
}

@c @implementation
public func mk_source_config_init_sized(_ cfg: UnsafeMutablePointer<mk_source_config>?, _ size: Int) -> Int32 {
    CResult.run(nil) { () throws(MKError) in
        try CStruct.initialize(cfg, size: size, with: defaultSourceConfig(), name: "config")
    }
}

private func defaultSourceConfig() -> mk_source_config {
    var c = CStruct.fresh(mk_source_config())
    c.nr_vcpus = 1
    c.transport_fd = -1
    return c
}

@c @implementation
public func mk_source_create(_ out: UnsafeMutablePointer<OpaquePointer?>?,
                           _ cfgp: UnsafePointer<mk_source_config>?,
                           _ cbp: UnsafePointer<mk_source_callbacks>?,
                           _ paramsp: UnsafePointer<mk_params>?) -> Int32 {
    out?.pointee = nil
    return CResult.run(nil) { () throws(MKError) in
        guard let out else { throw .null("out") }
        let cfg = try CStruct.read(cfgp, defaults: defaultSourceConfig(), name: "config")
        guard (1...1024).contains(cfg.nr_vcpus) else {
            throw MKError(.invalid, "config->nr_vcpus must be 1..1024, got \(cfg.nr_vcpus)")
        }
        guard cfg.transport_fd >= -1 else { throw MKError(.invalid, "config->transport_fd must be >= 0 or -1") }
        guard cfg.flags & ~MK_SOURCE_NO_ACK.rawValue == 0 else {
            throw MKError(.invalid, "config->flags has unknown bits 0x\(String(cfg.flags, radix: 16))")
        }
        let cb = try CStruct.read(cbp, defaults: CStruct.fresh(mk_source_callbacks()), name: "callbacks")
        guard cb.reserved == 0 else { throw MKError(.invalid, "callbacks->reserved must be 0") }
        guard cb.get_dirty_log != nil else { throw MKError(.invalid, "callbacks->get_dirty_log is required") }
        guard cb.pause_vcpus != nil, cb.resume_vcpus != nil else {
            throw MKError(.invalid, "callbacks->pause_vcpus and resume_vcpus are required")
        }
        guard cfg.transport_fd >= 0 || cb.write != nil else {
            throw MKError(.invalid, "no transport: set config->transport_fd or callbacks->write")
        }
        let key = try authKey(cfg.auth_key, cfg.auth_key_len)
        let table = CallbackTable(c: cb)
        // The transport is chosen here, once: the fd if there is one, else
        // the VMM's callbacks.
        let transport: SourceTransportChoice = cfg.transport_fd >= 0 ? .fd(cfg.transport_fd) : table.transport
        if key != nil {
            guard transport.hasReturnChannel else {
                throw MKError(.invalid, "config->auth_key needs a return channel (a socket transport_fd or callbacks->read): the destination's nonce and tagged ack come back on it")
            }
        }
        var params = MigrationParameters()
        if paramsp != nil {
            params = try CStruct.read(paramsp, defaults: mk_params(MigrationParameters()), name: "params").parameters()
        }
        var config = SourceSessionConfig()
        config.vcpus = cfg.nr_vcpus
        config.deviceStateHint = cfg.device_state_hint
        config.waitForAck = cfg.flags & MK_SOURCE_NO_ACK.rawValue == 0
        config.ackTimeoutMs = cfg.ack_timeout_ms == 0 ? 30_000 : Int(clamping: cfg.ack_timeout_ms)
        config.authKey = key
        let s = try SourceSession(config: config, vmm: table.vmm, transport: transport, params: params)
        out.pointee = OpaquePointer(Unmanaged.passRetained(s).toOpaque())
    }
}

@c @implementation
public func mk_source_add_region(_ h: OpaquePointer?, _ r: UnsafePointer<mk_region>?,
                              _ outIndex: UnsafeMutablePointer<UInt32>?) -> Int32 {
    withSource(h) { (s) throws(MKError) in
        let i = try s.addRegion(GuestRegion(r, destination: false))
        outIndex?.pointee = i
    }
}

@c @implementation
public func mk_source_mark_dirty(_ h: OpaquePointer?, _ gpa: UInt64, _ len: UInt64) -> Int32 {
    withSource(h) { (s) throws(MKError) in try s.markDirty(gpa: gpa, length: len) }
}

@c @implementation
public func mk_source_set_params(_ h: OpaquePointer?, _ p: UnsafePointer<mk_params>?) -> Int32 {
    withSource(h) { (s) throws(MKError) in
        let params = try CStruct.read(p, defaults: mk_params(MigrationParameters()), name: "params").parameters()
        try s.control.setParams(params)
    }
}

@c @implementation
public func mk_source_get_params(_ h: OpaquePointer?, _ out: UnsafeMutablePointer<mk_params>?) -> Int32 {
    withSource(h) { (s) throws(MKError) in
        try CStruct.write(mk_params(s.control.params), to: out, name: "out")
    }
}

@c @implementation
public func mk_source_set_param(_ h: OpaquePointer?, _ name: UnsafePointer<CChar>?,
                             _ value: UnsafePointer<CChar>?) -> Int32 {
    withSource(h) { (s) throws(MKError) in
        guard let name else { throw .null("name") }
        guard let value else { throw .null("value") }
        let n = String(cString: name), v = String(cString: value)
        try s.control.updateParams { (p) throws(MKError) in try p.set(name: n, value: v) }
    }
}

@c @implementation
public func mk_source_start(_ h: OpaquePointer?) -> Int32 {
    withSource(h) { (s) throws(MKError) in try s.start() }
}

@c @implementation
public func mk_source_cancel(_ h: OpaquePointer?) -> Int32 {
    withSource(h) { (s) throws(MKError) in try s.cancel() }
}

@c @implementation
public func mk_source_wait(_ h: OpaquePointer?, _ outStatus: UnsafeMutablePointer<Int32>?) -> Int32 {
    guard let h else { return CResult.fail(.null("source handle"), nil) }
    let s = session(h)
    do throws(MKError) {
        let (error, status) = try s.wait()
        outStatus?.pointee = status.rawValue
        if let error { return CResult.fail(error, s.errors) }
        return 0
    } catch {
        return CResult.fail(error, s.errors)
    }
}

@c @implementation
public func mk_source_throttle_point(_ h: OpaquePointer?, _ vcpu: UInt32) -> Int32 {
    withSource(h) { (s) throws(MKError) in try s.throttlePoint(vcpu: vcpu) }
}

@c @implementation
public func mk_source_get_stats(_ h: OpaquePointer?, _ out: UnsafeMutablePointer<mk_stats>?) -> Int32 {
    withSource(h) { (s) throws(MKError) in
        var st = mk_stats()
        st.fill(from: s.control.snapshot())
        try CStruct.write(st, to: out, name: "out")
    }
}

@c @implementation
public func mk_source_get_vcpu_stats(_ h: OpaquePointer?, _ vcpu: UInt32, _ out: UnsafeMutablePointer<mk_vcpu_stats>?) -> Int32 {
    withSource(h) { (s) throws(MKError) in
        guard vcpu < s.config.vcpus else {
            throw MKError(.invalid, "vcpu \(vcpu) out of range (nr_vcpus \(s.config.vcpus))")
        }
        let snap = s.control.snapshot()
        let v = Int(vcpu) < snap.vcpus.count ? snap.vcpus[Int(vcpu)] : VCPUStats()
        try CStruct.write(mk_vcpu_stats(v, index: vcpu), to: out, name: "out")
    }
}

@c @implementation
public func mk_source_stats_json(_ h: OpaquePointer?, _ buf: UnsafeMutablePointer<CChar>?, _ cap: Int,
                              _ outLen: UnsafeMutablePointer<Int>?) -> Int32 {
    withSource(h) { (s) throws(MKError) in
        let text = s.control.snapshot().json
        try copyCString(text, to: buf, cap: cap, outLen: outLen)
    }
}

/// Copy a string with its NUL if it fits. Every answer that does not fit
/// (the size query: buf NULL and cap 0; a buffer too small) reports the
/// same figure, the size a buffer needs (length + 1, snprintf's return plus
/// one), so a caller can size its buffer from either.
func copyCString(_ text: String, to buf: UnsafeMutablePointer<CChar>?, cap: Int,
                 outLen: UnsafeMutablePointer<Int>?) throws(MKError) {
    let utf8 = Array(text.utf8)
    let room = UInt(bitPattern: cap)  // size_t
    let needed = utf8.count + 1
    guard let buf else {
        guard room == 0 else { throw .null("buf (with cap \(room))") }
        outLen?.pointee = needed
        throw MKError(.noSpace, "size query: a buffer of \(needed) bytes is needed")
    }
    guard room >= UInt(needed) else {
        outLen?.pointee = needed
        if room > 0 { buf[0] = 0 }
        throw MKError(.noSpace, "buffer of \(room) bytes is too small: \(needed) needed")
    }
    utf8.withUnsafeBufferPointer { src in
        UnsafeMutableRawPointer(buf).copyMemory(from: src.baseAddress!, byteCount: src.count)
    }
    buf[utf8.count] = 0
    outLen?.pointee = utf8.count
}

@c @implementation
public func mk_source_errmsg(_ h: OpaquePointer?) -> UnsafePointer<CChar>? {
    guard let h else {
        let s: StaticString = "source handle is NULL"
        return UnsafeRawPointer(s.utf8Start).assumingMemoryBound(to: CChar.self)
    }
    return session(h).errors.cString
}

@c @implementation
public func mk_source_destroy(_ h: OpaquePointer?) {
    guard let h else { return }
    let s = Unmanaged<SourceSession>.fromOpaque(UnsafeRawPointer(h)).takeRetainedValue()
    s.close()
}
