import CShim
import Glibc

/// Carries auto-converge throttles to the vCPUs, the way QEMU's
/// cpu-throttle does, with a percentage per vCPU: every 10 ms / (1 - p)
/// the throttle thread kicks vCPU i (the VMM's kick_vcpu) if its p > 0, and
/// the vCPU thread, back from guest mode, sleeps p / (1 - p) x 10 ms in
/// mk_source_throttle_point. Any drop of a vCPU's percentage wakes its
/// sleeper at once, so release on a terminal state or before a pause is
/// immediate. The time each vCPU spent asleep is counted (guest time taken).
final class Throttler: @unchecked Sendable {
    private let lock = ConditionLock()
    private var percents: [UInt32]
    private var sleptNs: [UInt64]
    private var nextKickNs: [UInt64]
    private var stopped = false
    private var thread: pthread_t?
    private let vcpus: Int
    private let kick: ((UInt32) -> Void)?

    init(vcpus: UInt32, kick: ((UInt32) -> Void)?) {
        self.vcpus = max(Int(vcpus), 1)
        self.kick = kick
        percents = Array(repeating: 0, count: self.vcpus)
        sleptNs = Array(repeating: 0, count: self.vcpus)
        nextKickNs = Array(repeating: 0, count: self.vcpus)
    }

    /// The highest throttle of any vCPU.
    var current: UInt32 { lock.withLock { percents.max() ?? 0 } }

    /// Nanoseconds each vCPU has slept in the throttle point so far.
    var sleepNs: [UInt64] { lock.withLock { sleptNs } }

    /// The same throttle for every vCPU.
    func set(_ p: UInt32) { set(perVCPU: Array(repeating: p, count: vcpus)) }

    /// A throttle per vCPU (missing entries: 0).
    func set(perVCPU p: [UInt32]) {
        let needThread: Bool = lock.withLock {
            let now = cshim_monotonic_ns()
            for i in 0..<vcpus {
                let v = i < p.count ? min(p[i], 99) : 0
                if v > 0 && percents[i] == 0 { nextKickNs[i] = now }
                percents[i] = v
            }
            lock.broadcast()
            return percents.contains { $0 > 0 } && thread == nil && !stopped && kick != nil
        }
        if needThread, let tid = try? spawnThread({ [self] in kickLoop() }) {
            lock.withLock { thread = tid }
        }
    }

    /// Called on vCPU `vcpu`'s thread after a kick.
    func throttlePoint(vcpu: UInt32) {
        let i = Int(vcpu)
        guard i < vcpus else { return }
        lock.withLock {
            let p = percents[i]
            guard p > 0, !stopped else { return }
            let t0 = cshim_monotonic_ns()
            // A lower throttle set meanwhile shortens the sleep at once.
            while percents[i] > 0 && !stopped {
                let deadline = t0 + ThrottleTiming.sleepNs(percent: percents[i])
                if cshim_monotonic_ns() >= deadline { break }
                lock.wait(untilNs: deadline)
            }
            sleptNs[i] += cshim_monotonic_ns() - t0
        }
    }

    /// Release everything and join the throttle thread (handle teardown).
    func stop() {
        let tid: pthread_t? = lock.withLock {
            stopped = true
            for i in 0..<vcpus { percents[i] = 0 }
            lock.broadcast()
            let t = thread
            thread = nil
            return t
        }
        if let tid { pthread_join(tid, nil) }
    }

    /// Kick each throttled vCPU once per its period (a slice of running plus
    /// its sleep); wait for the earliest next kick or a change.
    private func kickLoop() {
        while true {
            let due: [UInt32]? = lock.withLock {
                while !stopped && !percents.contains(where: { $0 > 0 }) { lock.wait() }
                if stopped { return nil }
                let now = cshim_monotonic_ns()
                var out: [UInt32] = []
                var earliest = UInt64.max
                for i in 0..<vcpus where percents[i] > 0 {
                    if nextKickNs[i] <= now {
                        out.append(UInt32(i))
                        nextKickNs[i] = now + ThrottleTiming.periodNs(percent: percents[i])
                    }
                    earliest = min(earliest, nextKickNs[i])
                }
                if out.isEmpty && earliest != .max {
                    lock.wait(untilNs: earliest)
                }
                return out
            }
            guard let due else { return }
            for v in due { kick?(v) }
        }
    }
}
