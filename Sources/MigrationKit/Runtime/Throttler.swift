import CShim
import Glibc

/// Carries auto-converge throttles to the vCPUs, the way QEMU's
/// cpu-throttle does, with a percentage per vCPU: every 10 ms / (1 - p)
/// the throttle thread kicks vCPU i (the VMM's kick_vcpu) if its p > 0, and
/// the vCPU thread, back from guest mode, sleeps p / (1 - p) x 10 ms in
/// mk_source_throttle_point. Any drop of a vCPU's percentage wakes its
/// sleeper at once, so release on a terminal state or before a pause is
/// immediate. The time each vCPU spent asleep is counted (guest time taken).
final class Throttler: Sendable {
    private struct State {
        var percents: [UInt32]
        var sleptNs: [UInt64]
        var nextKickNs: [UInt64]
        var stopped = false
        var thread: pthread_t?
    }

    private let state: ConditionLock<State>
    private let vcpus: Int
    private let kick: (@Sendable (UInt32) -> Void)?

    init(vcpus: UInt32, kick: (@Sendable (UInt32) -> Void)?) {
        let n = max(Int(vcpus), 1)
        self.vcpus = n
        self.kick = kick
        state = ConditionLock(State(percents: Array(repeating: 0, count: n), sleptNs: Array(repeating: 0, count: n),
                                    nextKickNs: Array(repeating: 0, count: n)))
    }

    /// The highest throttle of any vCPU.
    var current: UInt32 { state.withLock { $0.percents.max() ?? 0 } }

    /// Nanoseconds each vCPU has slept in the throttle point so far.
    var sleepNs: [UInt64] { state.withLock { $0.sleptNs } }

    /// The same throttle for every vCPU.
    func set(_ p: UInt32) { set(perVCPU: Array(repeating: p, count: vcpus)) }

    /// A throttle per vCPU (missing entries: 0).
    func set(perVCPU p: [UInt32]) {
        let needThread: Bool = state.withLock { s in
            let now = cshim_monotonic_ns()
            for i in 0..<vcpus {
                let v = i < p.count ? min(p[i], 99) : 0
                if v > 0 && s.percents[i] == 0 { s.nextKickNs[i] = now }
                s.percents[i] = v
            }
            state.broadcast()
            return s.percents.contains { $0 > 0 } && s.thread == nil && !s.stopped && kick != nil
        }
        if needThread, let tid = try? spawnThread(name: "mk-throttle", { [self] in kickLoop() }) {
            state.withLock { $0.thread = tid }
        }
    }

    /// Called on vCPU `vcpu`'s thread after a kick.
    func throttlePoint(vcpu: UInt32) {
        let i = Int(vcpu)
        guard i < vcpus else { return }
        var t0: UInt64?
        state.withLockUntilDone { (s) -> ConditionLock<State>.Next<Void> in
            if t0 == nil {
                guard s.percents[i] > 0, !s.stopped else { return .done(()) }
                t0 = cshim_monotonic_ns()
            }
            // A lower throttle set meanwhile shortens the sleep at once.
            if s.percents[i] > 0 && !s.stopped {
                let deadline = t0! + ThrottleTiming.sleepNs(percent: s.percents[i])
                if cshim_monotonic_ns() < deadline { return .waitUntil(ns: deadline) }
            }
            s.sleptNs[i] += cshim_monotonic_ns() - t0!
            return .done(())
        }
    }

    /// Release everything and join the throttle thread (handle teardown).
    func stop() {
        let tid: pthread_t? = state.withLock { s in
            s.stopped = true
            for i in 0..<vcpus { s.percents[i] = 0 }
            state.broadcast()
            let t = s.thread
            s.thread = nil
            return t
        }
        if let tid { joinThread(tid) }
    }

    /// Kick each throttled vCPU once per its period (a slice of running plus
    /// its sleep); wait for the earliest next kick or a change.
    private func kickLoop() {
        while true {
            var waited = false
            let due: [UInt32]? = state.withLockUntilDone { (s) -> ConditionLock<State>.Next<[UInt32]?> in
                if s.stopped { return .done(nil) }
                if !s.percents.contains(where: { $0 > 0 }) { return .wait }
                // After the timed wait below, back to the caller, which
                // kicks nothing and looks again.
                if waited { return .done([]) }
                let now = cshim_monotonic_ns()
                var out: [UInt32] = []
                var earliest = UInt64.max
                for i in 0..<vcpus where s.percents[i] > 0 {
                    if s.nextKickNs[i] <= now {
                        out.append(UInt32(i))
                        s.nextKickNs[i] = now + ThrottleTiming.periodNs(percent: s.percents[i])
                    }
                    earliest = min(earliest, s.nextKickNs[i])
                }
                if out.isEmpty && earliest != .max {
                    waited = true
                    return .waitUntil(ns: earliest)
                }
                return .done(out)
            }
            guard let due else { return }
            for v in due { kick?(v) }
        }
    }
}
