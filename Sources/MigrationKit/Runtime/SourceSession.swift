import CShim
import Glibc

/// The object behind an mk_source handle: configuration gathered before
/// start, then the migration thread and its shared control.
final class SourceSession: @unchecked Sendable {
    private enum Phase { case created, running, finished }

    let callbacks: SourceCallbacks
    let config: mk_source_config
    let control: SourceControl
    let errors = ErrorSlot()
    private let throttler: Throttler
    private let hooks: CallbackHooks
    private let lock = ConditionLock()
    // Guarded by `lock`.
    private var phase = Phase.created
    private var regions: [GuestRegion] = []
    private var marks: ExternalMarks?
    private var thread: pthread_t?
    private var result: MKError?
    private var finalStatus = MigrationStatus.none

    /// The pre-shared key for an authenticated stream (copied from the config).
    private let authKey: [UInt8]?

    init(config: mk_source_config, callbacks: SourceCallbacks, params: MigrationParameters,
         authKey: [UInt8]? = nil) throws(MKError) {
        self.authKey = authKey
        self.config = config
        self.callbacks = callbacks
        // The throttle is served in mk_source_throttle_point, and a vCPU
        // running guest code only gets there when kick_vcpu makes it leave
        // guest mode (Throttler): without it a throttle would be reported
        // and never applied, so the configuration is refused.
        let canKick = callbacks.c.kick_vcpu != nil
        let requirement: @Sendable (MigrationParameters) throws(MKError) -> Void = { (p) throws(MKError) in
            if p.autoConverge && !canKick {
                throw MKError(.invalid, "auto-converge needs callbacks->kick_vcpu: without it a throttled vCPU never reaches mk_source_throttle_point")
            }
        }
        try requirement(params)
        control = SourceControl(params: params, requirement: requirement)
        let kick = callbacks.c.kick_vcpu.map { f in
            { [callbacks] (v: UInt32) in _ = f(callbacks.user, v) }
        }
        throttler = Throttler(vcpus: config.nr_vcpus, kick: kick)
        hooks = CallbackHooks(callbacks: callbacks, fd: config.transport_fd, throttler: throttler,
                              vcpus: config.nr_vcpus)
        var initial = control.snapshot()
        initial.vcpus = Array(repeating: VCPUStats(), count: Int(max(config.nr_vcpus, 1)))
        initial.throttleMode = params.throttleMode
        control.publish(initial)
    }

    func addRegion(_ r: GuestRegion) throws(MKError) -> UInt32 {
        let outcome: Result<UInt32, MKError> = lock.withLock {
            guard phase == .created else { return .failure(MKError(.state, "regions must be added before mk_source_start")) }
            do throws(MKError) { try GuestRegion.validate(r, against: regions) } catch { return .failure(error) }
            regions.append(r)
            // Known from registration on, not only once the engine runs.
            var snap = control.snapshot()
            snap.total = regions.reduce(0) { $0 + $1.size }
            control.publish(snap)
            return .success(UInt32(regions.count - 1))
        }
        return try outcome.get()
    }

    func markDirty(gpa: UInt64, length: UInt64) throws(MKError) {
        let (m, regs) = lock.withLock { (marks, regions) }
        if let m {
            guard m.mark(guestPhysAddr: gpa, length: length) else {
                throw MKError(.range, "0x\(String(gpa, radix: 16))+\(length) is outside every registered region")
            }
            return
        }
        // Before start everything will be sent anyway; only check the range.
        let (end, o) = gpa.addingReportingOverflow(max(length, 1))
        guard !o, regs.contains(where: { gpa < $0.guestPhysAddr + $0.size && $0.guestPhysAddr < end }) else {
            throw MKError(.range, "0x\(String(gpa, radix: 16))+\(length) is outside every registered region")
        }
    }

    func start() throws(MKError) {
        let outcome: Result<Void, MKError> = lock.withLock {
            guard phase == .created else { return .failure(MKError(.state, "mk_source_start may be called once per handle")) }
            if control.isCancelRequested {
                // A cancel that came first is remembered, never dropped:
                // the migration ends cancelled without having started.
                let e = MKError(.canceled, "cancelled by mk_source_cancel before mk_source_start")
                var snap = control.snapshot()
                snap.status = .cancelled
                snap.error = e.code.rawValue
                snap.errorMessage = e.message
                control.publish(snap)
                result = e
                finalStatus = .cancelled
                phase = .finished
                errors.seal(e.message)
                lock.broadcast()
                return .failure(e)
            }
            guard !regions.isEmpty else { return .failure(MKError(.invalid, "no guest memory registered (mk_source_add_region)")) }
            let m = ExternalMarks(regions)
            var engineConfig = SourceEngine.Config()
            engineConfig.deviceStateHint = config.device_state_hint
            engineConfig.waitForAck = config.flags & MK_SOURCE_NO_ACK.rawValue == 0
            engineConfig.ackTimeoutMs = config.ack_timeout_ms == 0 ? 30_000 : Int(clamping: config.ack_timeout_ms)
            engineConfig.vcpus = Int(config.nr_vcpus)
            if let authKey {
                engineConfig.authKey = authKey
                do throws(MKError) { engineConfig.authNonce = try StreamAuth.nonce() } catch { return .failure(error) }
            }
            let engine = SourceEngine(regions: regions, hooks: hooks, clock: SystemClock(), control: control,
                                      marks: m, config: engineConfig)
            do throws(MKError) {
                thread = try spawnThread { [self] in finish(engine.run()) }
            } catch {
                return .failure(error)
            }
            marks = m
            phase = .running
            return .success(())
        }
        try outcome.get()
    }

    private func finish(_ error: MKError?) {
        throttler.set(0)
        // The migration's own failure is what errmsg says from now on.
        if let error { errors.seal(error.message) }
        lock.withLock {
            result = error
            finalStatus = control.snapshot().status
            phase = .finished
            lock.broadcast()
        }
    }

    /// Decided under the session lock, so a cancel racing mk_source_start
    /// is either seen by start (remembered) or reaches the running thread.
    func cancel() throws(MKError) {
        let outcome: Result<Bool, MKError> = lock.withLock {
            switch phase {
            case .created:
                control.requestCancel()
                return .success(false)
            case .running:
                guard control.requestCancel() else {
                    return .failure(MKError(.state, "too late to cancel: the migration has ended or its END record is going out"))
                }
                return .success(true)
            case .finished:
                return .failure(MKError(.state, "no migration is running: it has already ended"))
            }
        }
        guard try outcome.get() else { return }
        throttler.set(0)
        hooks.interrupt()
    }

    /// Block until the migration thread ended; join it once.
    func wait() throws(MKError) -> (MKError?, MigrationStatus) {
        let outcome: Result<(MKError?, MigrationStatus, pthread_t?), MKError> = lock.withLock {
            guard phase != .created else { return .failure(MKError(.state, "mk_source_start was not called")) }
            while phase != .finished { lock.wait() }
            let t = thread
            thread = nil
            return .success((result, finalStatus, t))
        }
        let (err, status, tid) = try outcome.get()
        if let tid { pthread_join(tid, nil) }
        return (err, status)
    }

    func throttlePoint(vcpu: UInt32) throws(MKError) {
        guard vcpu < config.nr_vcpus else {
            throw MKError(.invalid, "vcpu \(vcpu) out of range (nr_vcpus \(config.nr_vcpus))")
        }
        throttler.throttlePoint(vcpu: vcpu)
    }

    /// Teardown: cancel, join, stop the throttle thread.
    func close() {
        let running = lock.withLock { phase == .running }
        if running { try? cancel() }
        if lock.withLock({ phase != .created }) { _ = try? wait() }
        throttler.stop()
    }
}

/// The per-handle error text, readable as a stable C string: the last
/// failing call's message until the migration itself failed (seal), then
/// that failure's for good (see mk_source_errmsg).
final class ErrorSlot: @unchecked Sendable {
    private let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: 1024)
    private let lock = Locked(false)  // sealed

    init() { buffer.initialize(repeating: 0, count: 1024) }
    deinit { buffer.deallocate() }

    /// A failing call's message; ignored once sealed.
    func set(_ message: String) { store(message, seal: false) }

    /// The migration's own failure: kept whatever fails later.
    func seal(_ message: String) { store(message, seal: true) }

    private func store(_ message: String, seal: Bool) {
        lock.withLock { sealed in
            guard !sealed else { return }
            sealed = seal
            var utf8 = Array(message.utf8.prefix(1023))
            utf8.append(0)
            utf8.withUnsafeBufferPointer { src in
                UnsafeMutableRawPointer(buffer).copyMemory(from: src.baseAddress!, byteCount: src.count)
            }
        }
    }

    var cString: UnsafePointer<CChar> { UnsafePointer(buffer) }
}
