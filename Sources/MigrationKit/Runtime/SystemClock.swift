import CShim
import Glibc

/// Production time: CLOCK_MONOTONIC, real sleeps.
final class SystemClock: EngineClock {
    func nowNs() -> UInt64 { cshim_monotonic_ns() }

    func sleep(untilNs deadline: UInt64) {
        let now = nowNs()
        guard deadline > now else { return }
        let d = deadline - now
        var ts = timespec(tv_sec: Int(d / 1_000_000_000), tv_nsec: Int(d % 1_000_000_000))
        nanosleep(&ts, nil)
    }

    func didScan(bytes: UInt64) {}
}
