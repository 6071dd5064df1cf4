import CShim
import Synchronization
import XCTest
@testable import MigrationKit

/// The production throttle thread with a percentage per vCPU: only throttled
/// vCPUs are kicked, each sleeps its own share, a lowered throttle cuts a
/// sleep short, and the sleep is counted per vCPU.
final class ThrottlerTests: XCTestCase {
    func testOnlyThrottledVCPUsAreKickedAndSleep() {
        let kicks = Mutex([0, 0, 0])
        let t = Throttler(vcpus: 3, kick: { v in kicks.withLock { $0[Int(v)] += 1 } })
        defer { t.stop() }
        t.set(perVCPU: [0, 50, 0])
        XCTAssertEqual(t.current, 50)
        // vCPU 1 at 50 %: a kick every 20 ms. Give it ~200 ms.
        let until = cshim_monotonic_ns() + 200_000_000
        while cshim_monotonic_ns() < until { usleep(5000) }
        let k = kicks.withLock { $0 }
        XCTAssertEqual(k[0], 0, "\(k)")
        XCTAssertEqual(k[2], 0, "\(k)")
        XCTAssertGreaterThanOrEqual(k[1], 5, "\(k)")
        // The throttle point: vCPU 0 returns at once, vCPU 1 sleeps ~10 ms.
        var t0 = cshim_monotonic_ns()
        t.throttlePoint(vcpu: 0)
        XCTAssertLessThan(cshim_monotonic_ns() - t0, 2_000_000)
        t0 = cshim_monotonic_ns()
        t.throttlePoint(vcpu: 1)
        let slept = cshim_monotonic_ns() - t0
        XCTAssertGreaterThanOrEqual(slept, 9_000_000)
        XCTAssertLessThan(slept, 200_000_000)
        let s = t.sleepNs
        XCTAssertEqual(s[0], 0)
        XCTAssertGreaterThanOrEqual(s[1], 9_000_000)
        XCTAssertEqual(s[2], 0)
    }

    func testLoweringTheThrottleWakesTheSleeper() {
        let t = Throttler(vcpus: 2, kick: { _ in })
        defer { t.stop() }
        t.set(perVCPU: [99, 0])              // a ~990 ms sleep
        let done = Atomic<UInt64>(0)
        let t0 = cshim_monotonic_ns()
        let th = try? spawnThread(name: "test") { t.throttlePoint(vcpu: 0); done.store(cshim_monotonic_ns(), ordering: .sequentiallyConsistent) }
        usleep(50_000)
        t.set(perVCPU: [0, 0])               // released: wakes at once
        if let th { pthread_join(th, nil) }
        let took = done.load(ordering: .sequentiallyConsistent) - t0
        XCTAssertLessThan(took, 400_000_000, "a released vCPU slept \(took / 1_000_000) ms")
        XCTAssertEqual(t.current, 0)
    }
}
