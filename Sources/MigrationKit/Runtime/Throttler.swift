import CShim
import Glibc

/// Carries an auto-converge percentage to the vCPUs, the way QEMU's
/// cpu-throttle does: every 10 ms / (1 - p) a throttle thread kicks each
/// vCPU (the VMM's kick_vcpu), and the vCPU thread, back from guest mode,
/// sleeps p / (1 - p) x 10 ms in mk_source_throttle_point. Any drop of the
/// percentage wakes sleepers at once, so release on a terminal state or
/// before a pause is immediate.
final class Throttler: @unchecked Sendable {
    private let lock = ConditionLock()
    private var percent: UInt32 = 0
    private var stopped = false
    private var thread: pthread_t?
    private let vcpus: UInt32
    private let kick: ((UInt32) -> Void)?

    init(vcpus: UInt32, kick: ((UInt32) -> Void)?) {
        self.vcpus = vcpus
        self.kick = kick
    }

    var current: UInt32 { lock.withLock { percent } }

    func set(_ p: UInt32) {
        let needThread: Bool = lock.withLock {
            percent = min(p, 99)
            lock.broadcast()
            return percent > 0 && thread == nil && !stopped && kick != nil
        }
        if needThread, let tid = try? spawnThread({ [self] in kickLoop() }) {
            lock.withLock { thread = tid }
        }
    }

    /// Called on a vCPU thread after a kick.
    func throttlePoint() {
        lock.withLock {
            let p = percent
            guard p > 0, !stopped else { return }
            let deadline = cshim_monotonic_ns() + ThrottleTiming.sleepNs(percent: p)
            while percent > 0 && !stopped && cshim_monotonic_ns() < deadline {
                lock.wait(untilNs: deadline)
            }
        }
    }

    /// Release everything and join the throttle thread (handle teardown).
    func stop() {
        let tid: pthread_t? = lock.withLock {
            stopped = true
            percent = 0
            lock.broadcast()
            let t = thread
            thread = nil
            return t
        }
        if let tid { pthread_join(tid, nil) }
    }

    private func kickLoop() {
        while true {
            let p: UInt32? = lock.withLock {
                while percent == 0 && !stopped { lock.wait() }
                return stopped ? nil : percent
            }
            guard let p else { return }
            for v in 0..<vcpus { kick?(v) }
            let deadline = cshim_monotonic_ns() + ThrottleTiming.periodNs(percent: p)
            lock.withLock {
                while !stopped && percent == p && cshim_monotonic_ns() < deadline { lock.wait(untilNs: deadline) }
            }
        }
    }
}
