import CShim
import Glibc

/// Production time: CLOCK_MONOTONIC, real sleeps; CPU waits from the
/// migration thread's schedstat.
final class SystemClock: EngineClock {
    /// Opened on first use, by the thread that asks (the migration thread).
    private var wait: ThreadCPUWait?

    func nowNs() -> UInt64 { cshim_monotonic_ns() }

    func sleep(untilNs deadline: UInt64) {
        let now = nowNs()
        guard deadline > now else { return }
        let d = deadline - now
        var ts = timespec(tv_sec: Int(d / 1_000_000_000), tv_nsec: Int(d % 1_000_000_000))
        nanosleep(&ts, nil)
    }

    func didScan(bytes: UInt64) {}

    func cpuWaitNs() -> UInt64? {
        if wait == nil { wait = ThreadCPUWait() }
        return wait?.ns()
    }
}
