import CShim
import Glibc

/// What the destination's load needs besides its transport, injected: the
/// C API builds it from mk_dest_callbacks, the simulator from its models
/// (with its virtual clock), so both run the same DestSession.
package struct DestHooks: Sendable {
    /// The VMM's load_device_state (its int: negative = failure); nil when
    /// it did not set one.
    package var loadDeviceState: (@Sendable (UnsafeRawBufferPointer) -> Int32)?
    /// Monotonic time in ns.
    package var nowNs: @Sendable () -> UInt64
    /// Called on the thread in mk_dest_run: how to read how long that
    /// thread has waited for a CPU (cumulative ns, nil = unknown).
    package var cpuWaitMeter: @Sendable () -> () -> UInt64?

    package init(loadDeviceState: (@Sendable (UnsafeRawBufferPointer) -> Int32)?,
                nowNs: @escaping @Sendable () -> UInt64 = { cshim_monotonic_ns() },
                cpuWaitMeter: @escaping @Sendable () -> () -> UInt64? = { let w = ThreadCPUWait(); return { w.ns() } }) {
        self.loadDeviceState = loadDeviceState
        self.nowNs = nowNs
        self.cpuWaitMeter = cpuWaitMeter
    }
}

/// A snapshot of the load (mk_dest_get_stats).
package struct DestStats: Sendable {
    package var status = MigrationStatus.none
    package var error: Int32 = 0
    /// nil before mk_dest_run.
    package var loader: LoaderStats?
    package var deviceLoadUs: UInt64 = 0
    package var endToAckUs: UInt64 = 0
    package var prefaultUs: UInt64 = 0
    package var totalTimeMs: UInt64 = 0
    /// First record sent with the guest paused -> END: time the loading
    /// thread waited for a CPU; nil = unknown, or no such record yet.
    package var stoppedCpuWaitUs: UInt64?
}

/// The object behind an mk_dest handle: regions, then one blocking run that
/// reads the stream and feeds the loader (DestLoad), then the
/// acknowledgement.
package final class DestSession: Sendable {
    private struct State {
        var regions: [GuestRegion] = []
        var status = MigrationStatus.none
        var error: Int32 = 0
        /// The loader's, copied after every read (StreamLoader itself stays
        /// on the thread in mk_dest_run).
        var loaderStats: LoaderStats?
        var acked = false
        var cancelled = false
        var startNs: UInt64 = 0
        var endNs: UInt64 = 0
        var deviceLoadNs: UInt64 = 0
        var endToAckNs: UInt64 = 0
        var prefaultNs: UInt64 = 0
        var stoppedCpuWaitNs: UInt64?
        /// The transport until mk_dest_run takes it.
        var transport: (any DestTransport)?
        /// Ends a read of the running transport (cancel).
        var interrupt: (@Sendable () -> Void)?
        /// Once the load completed: the way back for the acknowledgement,
        /// to whoever sends it (the run itself, or mk_dest_ack).
        var returnPath: DestReturnPath?
    }

    let config: DestSessionConfig
    private let hooks: DestHooks
    let errors = ErrorSlot()
    private let state: Locked<State>

    /// `transport`: nil until setTransport gives one (mk_dest_run needs it).
    package init(config: DestSessionConfig, hooks: DestHooks, transport: sending (any DestTransport)?) {
        self.config = config
        self.hooks = hooks
        state = Locked(State(transport: transport))
    }

    /// mk_dest_set_transport_fd: the connection may come after the handle
    /// (a VMM prefaults and listens first).
    package func setTransport(_ transport: sending any DestTransport) throws(MKError) {
        try state.withLock { (s) throws(MKError) in
            guard s.status == .none else { throw MKError(.state, "the transport is fixed once mk_dest_run started") }
            s.transport = transport
        }
    }

    package func addRegion(_ r: GuestRegion) throws(MKError) -> UInt32 {
        try state.withLock { (s) throws(MKError) -> UInt32 in
            guard s.status == .none else { throw MKError(.state, "regions must be added before mk_dest_run") }
            try GuestRegion.validate(r, against: s.regions)
            s.regions.append(r)
            return UInt32(s.regions.count - 1)
        }
    }

    /// Fault the registered memory in (see mk_dest_prefault). Regions are
    /// fixed once mk_dest_run starts, so reading them under the lock and
    /// working without it is safe alongside a running load.
    func prefault() throws(MKError) {
        let regions: [GuestRegion] = try state.withLock { (s) throws(MKError) in
            guard s.status == .none || s.status == .active else {
                throw MKError(.state, "mk_dest_prefault after mk_dest_run returned")
            }
            guard !s.regions.isEmpty else { throw MKError(.invalid, "no guest memory registered (mk_dest_add_region)") }
            return s.regions
        }
        let t0 = hooks.nowNs()
        for (i, r) in regions.enumerated() {
            let rc = cshim_populate_write(r.host, Int(r.size))
            if rc == -ENOMEM {
                throw MKError(.noMemory, "prefaulting region \(i) (\(r.size >> 20) MiB): the kernel could not back it")
            }
            if rc < 0 { throw MKError(.invalid, "prefaulting region \(i): \(String(cString: strerror(-rc)))") }
        }
        let spent = hooks.nowNs() - t0
        state.withLock { $0.prefaultNs += spent }
    }

    /// Receive and load the whole stream on the calling thread, then
    /// acknowledge (unless manualAck).
    package func run() throws(MKError) {
        let (regions, transport) = try state.withLock { (s) throws(MKError) -> ([GuestRegion], any DestTransport) in
            guard s.status == .none else { throw MKError(.state, "mk_dest_run may be called once per handle") }
            guard !s.regions.isEmpty else { throw MKError(.invalid, "no guest memory registered (mk_dest_add_region)") }
            guard let t = s.transport else {
                throw MKError(.invalid, "no transport: set config->transport_fd, callbacks->read or mk_dest_set_transport_fd")
            }
            s.transport = nil
            s.interrupt = t.interrupt
            s.loaderStats = LoaderStats()
            s.status = .active
            s.startNs = hooks.nowNs()
            return (s.regions, t)
        }
        let path = DestReturnPath(transport)
        let loader = StreamLoader(regions: regions, loadDevice: { [self] (blob) throws(MKError) in try loadDevice(blob) })
        loader.clock = hooks.nowNs
        let load = DestLoad(loader: loader, path: path, config: config, nowNs: hooks.nowNs,
                            cpuWaitNs: hooks.cpuWaitMeter(),
                            isCancelled: { [state] in state.withLock { $0.cancelled } })
        do throws(MKError) {
            try load.receive(didRead: { [state] in
                let stats = loader.stats
                let wait = load.stoppedCpuWaitNs
                state.withLock {
                    $0.loaderStats = stats
                    $0.stoppedCpuWaitNs = wait
                }
            })
            let now = hooks.nowNs()
            state.withLock {
                $0.loaderStats = loader.stats
                if $0.endNs == 0 { $0.endNs = now }
                $0.status = .completed
                $0.returnPath = path
            }
            if !config.manualAck { try ack(status: 0) }
        } catch {
            let now = hooks.nowNs()
            let e = state.withLock { s -> MKError in
                s.loaderStats = loader.stats
                s.status = s.cancelled ? .cancelled : .failed
                s.endNs = now
                let e = s.cancelled && error.code != .canceled
                    ? MKError(.canceled, "cancelled by mk_dest_cancel (\(error.message))") : error
                s.error = e.code.rawValue
                return e
            }
            // Tell a source that waits for the ack, so it resumes its guest
            // at once instead of timing out. Best effort: the channel may be
            // what failed.
            try? sendAck(status: e.code.rawValue, on: path)
            // Then end the stream: a sender still writing learns through its
            // write too, whether or not it reads the channel.
            transport.abandon()
            errors.seal(e.message)
            throw e
        }
    }

    private func loadDevice(_ blob: UnsafeRawBufferPointer) throws(MKError) {
        guard let f = hooks.loadDeviceState else {
            throw MKError(.invalid, "the stream carries device state but load_device_state is not set")
        }
        let t0 = hooks.nowNs()
        let rc = f(blob)
        let spent = hooks.nowNs() - t0
        state.withLock { $0.deviceLoadNs += spent }
        if rc < 0 { throw MKError(.callback, "load_device_state returned \(rc)") }
    }

    package func ack(status: Int32) throws(MKError) {
        guard status <= 0 else { throw MKError(.invalid, "ack status must be 0 or a negative MK_E* code, got \(status)") }
        let path = try state.withLock { (s) throws(MKError) -> DestReturnPath in
            guard s.status == .completed, !s.acked, let p = s.returnPath else {
                throw MKError(.state, "nothing to acknowledge: mk_dest_run has not completed, or the ack was sent")
            }
            s.acked = true
            s.returnPath = nil
            return p
        }
        try sendAck(status: status, on: path)
    }

    private func sendAck(status: Int32, on path: DestReturnPath) throws(MKError) {
        let now = hooks.nowNs()
        let sinceEnd: UInt64 = state.withLock { s in
            guard s.status == .completed, s.endNs > 0 else { return 0 }
            s.endToAckNs = now - s.endNs
            return s.endToAckNs
        }
        try path.sendAck(AckReply(status: status, timestampNs: now, resumeUs: UInt32(clamping: sinceEnd / 1000)))
    }

    /// Before mk_dest_run the cancel is remembered: the run then ends at
    /// once with MK_ECANCELED (and tells the source), never lost.
    package func cancel() throws(MKError) {
        let interrupt = try state.withLock { (s) throws(MKError) -> (@Sendable () -> Void)? in
            switch s.status {
            case .none:
                s.cancelled = true
                return nil
            case .active:
                s.cancelled = true
                return s.interrupt
            default:
                throw MKError(.state, "mk_dest_run has already returned")
            }
        }
        interrupt?()
    }

    package func stats() -> DestStats {
        let now = hooks.nowNs()
        return state.withLock { s in
            var o = DestStats(status: s.status, error: s.error, loader: s.loaderStats)
            o.deviceLoadUs = s.deviceLoadNs / 1000
            o.endToAckUs = s.endToAckNs / 1000
            o.prefaultUs = s.prefaultNs / 1000
            o.stoppedCpuWaitUs = s.stoppedCpuWaitNs.map { $0 / 1000 }
            if s.startNs > 0 {
                let end = s.endNs > 0 ? s.endNs : now
                o.totalTimeMs = (end - s.startNs) / 1_000_000
            }
            return o
        }
    }
}
