import MigrationKit
import MigrationKitSim
import XCTest

/// A busy host: once the guest is paused, the migration thread may still
/// wait for a CPU (another process holds it), which nothing measured while
/// the guest ran can predict. The stats must say how long it waited, so a
/// downtime over its prediction can be told apart from a slow link; on a
/// quiet host they must say it did not wait.
final class SimCPUWaitTests: XCTestCase {
    /// The source's scan (zero checks and check values at 1.5 GB/s) is the
    /// stop-and-copy's bottleneck: a fast link and loader behind it.
    private func scanBoundMigration(pausedScanCpuWait: Double) -> Simulation {
        var c = SimT.config(mib: 256, zero: 0, linkMBps: 10_000, limitMs: 300)
        SimDestinationTests.realisticDestination(&c)
        c.destination.loaderBytesPerSecond = 8e9
        c.scanBytesPerSecond = 1.5e9
        c.costs.pausedScanCpuWait = pausedScanCpuWait
        c.guest.workingSetBytes = 64 * SimT.MiB
        c.guest.dirty(bytesPerSecond: 200e6)
        c.deadlineSeconds = 60
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        return sim
    }

    func testQuietHostShowsNoCPUWait() {
        let sim = scanBoundMigration(pausedScanCpuWait: 0)
        XCTAssertEqual(sim.stats.stop.cpuWaitUs, 0, sim.summary())
        SimDestinationTests.assertAccurate(sim)
    }

    /// Each scan waits half its time again once the guest is paused: the
    /// same migration's downtime grows by what the CPU wait says, and the
    /// prediction (made before the pause) cannot see it.
    func testBusyHostsWaitAccountsForTheExtraDowntime() {
        let quiet = scanBoundMigration(pausedScanCpuWait: 0)
        let busy = scanBoundMigration(pausedScanCpuWait: 0.5)
        let why = busy.summary() + " parts=\(busy.stats.expected)\n" + busy.logText()
        guard let q = quiet.measuredDowntimeMs, let b = busy.measuredDowntimeMs, let wait = busy.stats.stop.cpuWaitUs else {
            XCTFail("no downtime or no CPU wait: " + why)
            return
        }
        XCTAssertEqual(busy.stats.expectedDowntimeMs, quiet.stats.expectedDowntimeMs, "the same switchover: " + why)
        let waitMs = Double(wait) / 1000
        XCTAssertGreaterThan(waitMs, 0.2 * q, "a wait of a fifth of the downtime or more: " + why)
        XCTAssertEqual(b - q, waitMs, accuracy: 0.1 * waitMs + 0.5,
                       "downtime \(b) ms against \(q) ms on a quiet host; CPU wait \(waitMs) ms: " + why)
    }
}
