import CShim

// The mk_dest_* entry points.

private func session(_ h: OpaquePointer) -> DestSession {
    Unmanaged<DestSession>.fromOpaque(UnsafeRawPointer(h)).takeUnretainedValue()
}

private func withDest(_ h: OpaquePointer?, _ body: (DestSession) throws(MKError) -> Void) -> Int32 {
    guard let h else { return CResult.fail(.null("destination handle"), nil) }
    let s = session(h)
    return CResult.run(s.errors) { () throws(MKError) in try body(s) }
}

private func defaultDestConfig() -> mk_dest_config {
    var c = CStruct.fresh(mk_dest_config())
    c.transport_fd = -1
    return c
}

@c @implementation
public func mk_dest_config_init_sized(_ cfg: UnsafeMutablePointer<mk_dest_config>?, _ size: Int) -> Int32 {
    CResult.run(nil) { () throws(MKError) in
        try CStruct.initialize(cfg, size: size, with: defaultDestConfig(), name: "config")
    }
}

@c @implementation
public func mk_dest_create(_ out: UnsafeMutablePointer<OpaquePointer?>?, _ cfgp: UnsafePointer<mk_dest_config>?,
                         _ cbp: UnsafePointer<mk_dest_callbacks>?) -> Int32 {
    out?.pointee = nil
    return CResult.run(nil) { () throws(MKError) in
        guard let out else { throw .null("out") }
        let cfg = try CStruct.read(cfgp, defaults: defaultDestConfig(), name: "config")
        guard cfg.transport_fd >= -1 else { throw MKError(.invalid, "config->transport_fd must be >= 0 or -1") }
        guard cfg.flags & ~MK_DEST_MANUAL_ACK.rawValue == 0 else {
            throw MKError(.invalid, "config->flags has unknown bits 0x\(String(cfg.flags, radix: 16))")
        }
        guard cfg.reserved == 0 else { throw MKError(.invalid, "config->reserved must be 0") }
        let cb = try CStruct.read(cbp, defaults: CStruct.fresh(mk_dest_callbacks()), name: "callbacks")
        guard cb.reserved == 0 else { throw MKError(.invalid, "callbacks->reserved must be 0") }
        let config = DestSessionConfig(manualAck: cfg.flags & MK_DEST_MANUAL_ACK.rawValue != 0,
                                       resumeCostUs: cfg.resume_cost_us,
                                       authKey: try authKey(cfg.auth_key, cfg.auth_key_len))
        let table = CallbackTable(c: cb)
        // The fd if there is one, else the VMM's read callback; a later
        // mk_dest_set_transport_fd replaces either.
        let transport: (any DestTransport)? = cfg.transport_fd >= 0 ? FdDestTransport(fd: cfg.transport_fd) : table.transport
        let s = DestSession(config: config, hooks: table.hooks, transport: transport)
        out.pointee = OpaquePointer(Unmanaged.passRetained(s).toOpaque())
    }
}

@c @implementation
public func mk_dest_add_region(_ h: OpaquePointer?, _ r: UnsafePointer<mk_region>?,
                            _ outIndex: UnsafeMutablePointer<UInt32>?) -> Int32 {
    withDest(h) { (s) throws(MKError) in
        let i = try s.addRegion(GuestRegion(r, destination: true))
        outIndex?.pointee = i
    }
}

@c @implementation
public func mk_dest_run(_ h: OpaquePointer?) -> Int32 {
    withDest(h) { (s) throws(MKError) in try s.run() }
}

@c @implementation
public func mk_dest_ack(_ h: OpaquePointer?, _ status: Int32) -> Int32 {
    withDest(h) { (s) throws(MKError) in try s.ack(status: status) }
}

@c @implementation
public func mk_dest_set_transport_fd(_ h: OpaquePointer?, _ fd: Int32) -> Int32 {
    withDest(h) { (s) throws(MKError) in
        guard fd >= 0 else { throw MKError(.invalid, "fd must be >= 0, got \(fd)") }
        try s.setTransport(FdDestTransport(fd: fd))
    }
}

@c @implementation
public func mk_dest_prefault(_ h: OpaquePointer?) -> Int32 {
    withDest(h) { (s) throws(MKError) in try s.prefault() }
}

@c @implementation
public func mk_dest_cancel(_ h: OpaquePointer?) -> Int32 {
    withDest(h) { (s) throws(MKError) in try s.cancel() }
}

@c @implementation
public func mk_dest_get_stats(_ h: OpaquePointer?, _ out: UnsafeMutablePointer<mk_dest_stats>?) -> Int32 {
    withDest(h) { (s) throws(MKError) in try CStruct.write(mk_dest_stats(s.stats()), to: out, name: "out") }
}

@c @implementation
public func mk_dest_errmsg(_ h: OpaquePointer?) -> UnsafePointer<CChar>? {
    guard let h else {
        let s: StaticString = "destination handle is NULL"
        return UnsafeRawPointer(s.utf8Start).assumingMemoryBound(to: CChar.self)
    }
    return session(h).errors.cString
}

@c @implementation
public func mk_dest_destroy(_ h: OpaquePointer?) {
    guard let h else { return }
    Unmanaged<DestSession>.fromOpaque(UnsafeRawPointer(h)).release()
}
