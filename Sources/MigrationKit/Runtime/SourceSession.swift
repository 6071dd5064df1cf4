import CShim
import Glibc

/// The object behind an mk_source handle: configuration gathered before
/// start, then the migration thread and its shared control.
final class SourceSession: Sendable {
    private enum Phase { case created, running, finished }

    private struct State {
        var phase = Phase.created
        var regions: [GuestRegion] = []
        var marks: ExternalMarks?
        var thread: pthread_t?
        var result: MKError?
        var finalStatus = MigrationStatus.none
    }

    let config: SourceSessionConfig
    let control: SourceControl
    let errors = ErrorSlot()
    private let vmm: SourceVMM
    private let throttler: Throttler
    private let transport: SourceTransportChoice
    private let state: ConditionLock<State>

    init(config: SourceSessionConfig, vmm: SourceVMM, transport: SourceTransportChoice,
         params: MigrationParameters) throws(MKError) {
        self.config = config
        self.vmm = vmm
        // The throttle is served in mk_source_throttle_point, and a vCPU
        // running guest code only gets there when kick_vcpu makes it leave
        // guest mode (Throttler): without it a throttle would be reported
        // and never applied, so the configuration is refused.
        let canKick = vmm.kickVCPU != nil
        let requirement: @Sendable (MigrationParameters) throws(MKError) -> Void = { (p) throws(MKError) in
            if p.autoConverge && !canKick {
                throw MKError(.invalid, "auto-converge needs callbacks->kick_vcpu: without it a throttled vCPU never reaches mk_source_throttle_point")
            }
        }
        try requirement(params)
        control = SourceControl(params: params, requirement: requirement)
        throttler = Throttler(vcpus: config.vcpus, kick: vmm.kickVCPU)
        self.transport = transport
        state = ConditionLock(State())
        var initial = control.snapshot()
        initial.vcpus = Array(repeating: VCPUStats(), count: Int(max(config.vcpus, 1)))
        initial.throttleMode = params.throttleMode
        control.publish(initial)
    }

    func addRegion(_ r: GuestRegion) throws(MKError) -> UInt32 {
        try state.withLock { (s) throws(MKError) -> UInt32 in
            guard s.phase == .created else { throw MKError(.state, "regions must be added before mk_source_start") }
            try GuestRegion.validate(r, against: s.regions)
            s.regions.append(r)
            // Known from registration on, not only once the engine runs.
            var snap = control.snapshot()
            snap.total = s.regions.reduce(0) { $0 + $1.size }
            control.publish(snap)
            return UInt32(s.regions.count - 1)
        }
    }

    func markDirty(gpa: UInt64, length: UInt64) throws(MKError) {
        let (m, regs) = state.withLock { ($0.marks, $0.regions) }
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
        try state.withLock { (s) throws(MKError) in
            guard s.phase == .created else { throw MKError(.state, "mk_source_start may be called once per handle") }
            if control.isCancelRequested {
                // A cancel that came first is remembered, never dropped:
                // the migration ends cancelled without having started.
                let e = MKError(.canceled, "cancelled by mk_source_cancel before mk_source_start")
                var snap = control.snapshot()
                snap.status = .cancelled
                snap.error = e.code.rawValue
                snap.errorMessage = e.message
                control.publish(snap)
                s.result = e
                s.finalStatus = .cancelled
                s.phase = .finished
                errors.seal(e.message)
                state.broadcast()
                throw e
            }
            guard !s.regions.isEmpty else { throw MKError(.invalid, "no guest memory registered (mk_source_add_region)") }
            var engineConfig = SourceEngine.Config()
            engineConfig.deviceStateHint = config.deviceStateHint
            engineConfig.waitForAck = config.waitForAck
            engineConfig.ackTimeoutMs = config.ackTimeoutMs
            engineConfig.vcpus = Int(config.vcpus)
            if let authKey = config.authKey {
                engineConfig.authKey = authKey
                engineConfig.authNonce = try StreamAuth.nonce()
            }
            let m = ExternalMarks(s.regions)
            let hooks = CallbackHooks(vmm: vmm, transport: transport.make(), throttler: throttler, vcpus: config.vcpus)
            let engine = SourceEngine(regions: s.regions, hooks: hooks, clock: SystemClock(), control: control,
                                      marks: m, config: engineConfig)
            s.thread = try spawnThread(name: "mk-migration") { [self] in finish(engine.run()) }
            s.marks = m
            s.phase = .running
        }
    }

    private func finish(_ error: MKError?) {
        throttler.set(0)
        // The migration's own failure is what errmsg says from now on.
        if let error { errors.seal(error.message) }
        state.withLock { s in
            s.result = error
            s.finalStatus = control.snapshot().status
            s.phase = .finished
            state.broadcast()
        }
    }

    /// Decided under the session lock, so a cancel racing mk_source_start
    /// is either seen by start (remembered) or reaches the running thread.
    func cancel() throws(MKError) {
        let running = try state.withLock { (s) throws(MKError) -> Bool in
            switch s.phase {
            case .created:
                control.requestCancel()
                return false
            case .running:
                guard control.requestCancel() else {
                    throw MKError(.state, "too late to cancel: the migration has ended or its END record is going out")
                }
                return true
            case .finished:
                throw MKError(.state, "no migration is running: it has already ended")
            }
        }
        guard running else { return }
        throttler.set(0)
        transport.interrupt()
    }

    /// Block until the migration thread ended; join it once.
    func wait() throws(MKError) -> (MKError?, MigrationStatus) {
        let outcome: Result<(MKError?, MigrationStatus, pthread_t?), MKError> = state.withLockUntilDone { s in
            guard s.phase != .created else { return .done(.failure(MKError(.state, "mk_source_start was not called"))) }
            guard s.phase == .finished else { return .wait }
            let t = s.thread
            s.thread = nil
            return .done(.success((s.result, s.finalStatus, t)))
        }
        let (err, status, tid) = try outcome.get()
        if let tid { joinThread(tid) }
        return (err, status)
    }

    func throttlePoint(vcpu: UInt32) throws(MKError) {
        guard vcpu < config.vcpus else {
            throw MKError(.invalid, "vcpu \(vcpu) out of range (nr_vcpus \(config.vcpus))")
        }
        throttler.throttlePoint(vcpu: vcpu)
    }

    /// Teardown: cancel, join, stop the throttle thread.
    func close() {
        let phase = state.withLock { $0.phase }
        if phase == .running { try? cancel() }
        if phase != .created { _ = try? wait() }
        throttler.stop()
    }
}
