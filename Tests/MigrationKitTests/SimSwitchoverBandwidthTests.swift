import MigrationKit
import MigrationKitSim
import XCTest

/// The switchover bandwidth of a scan-bound migration thread, and the
/// avail-switchover-bandwidth override (QEMU 8.2's answer): when the thread
/// is busy scanning zero pages and fetching dirty bitmaps, bytes /
/// elapsed is far below the link and QEMU never converges. The library must
/// estimate well enough to converge without help, and honour the override
/// (for the decision and the expected downtime) when it is given.
final class SimSwitchoverBandwidthTests: XCTestCase {
    static let linkRate = 1e9

    /// 32 MiB, 90 % zero; the guest keeps sweeping a 24 MiB working set at
    /// 200 MB/s, 90 % of the writes clearing pages; scanning costs 1 ns/B;
    /// each dirty-log fetch costs 36 ms.
    static func busyThreadConfig() -> SimConfig {
        var c = SimT.config(mib: 32, zero: 0.9, linkMBps: linkRate / 1e6, limitMs: 150)
        c.scanBytesPerSecond = 1e9
        c.costs.fetchFixedNs = 30_000_000
        c.costs.fetchNsPerGiB = 200_000_000
        c.guest.workingSetBytes = 24 * SimT.MiB
        c.guest.zeroingWriteFraction = 0.9
        c.guest.dirty(bytesPerSecond: 200e6)
        c.deadlineSeconds = 5
        return c
    }

    func testBusyThreadConvergesWithoutTheOverride() {
        let sim = SimT.make(Self.busyThreadConfig())
        sim.run()
        SimT.assertCompleted(sim)
        let why = sim.summary() + "\n" + sim.logText()
        // The scan-bound situation: QEMU's figure (wire bytes over
        // the elapsed time of a window, what mbps shows) stays far below
        // the link in every window.
        let active = sim.hooks.progress.filter { $0.stats.status == .active && $0.stats.mbps > 0 }
        XCTAssertGreaterThanOrEqual(active.count, 2, why)
        var qemuMax = 0.0
        for h in active {
            let qemuBps = h.stats.mbps * 1e6 / 8
            qemuMax = max(qemuMax, qemuBps)
            XCTAssertLessThan(qemuBps, 0.1 * Self.linkRate, "window at \(h.ns / 1_000_000) ms is not scan-bound; " + why)
        }
        // The library's own figure is several times better than that.
        XCTAssertGreaterThan(Double(sim.stats.switchoverBandwidth), 5 * qemuMax, why)
        // Converged quickly, on the library's own figure, and predicted the
        // outage well.
        XCTAssertLessThan(sim.elapsedSeconds, 2, why)
        XCTAssertNotEqual(sim.stats.bandwidthSource, .override, why)
        XCTAssertNotEqual(sim.stats.bandwidthSource, .none, why)
        let measured = sim.measuredDowntimeMs ?? .infinity
        XCTAssertLessThanOrEqual(measured, Double(sim.stats.downtimeLimitMs), why)
        XCTAssertEqual(Double(sim.stats.expectedDowntimeMs), measured, accuracy: 0.25 * measured, why)
    }

    /// With the override, every decision and prediction uses it.
    func testOverrideIsUsedForDecisionAndExpectedDowntime() {
        var c = Self.busyThreadConfig()
        let override: UInt64 = 400_000_000
        c.params.availSwitchoverBandwidth = override
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        let why = sim.summary() + "\n" + sim.logText()
        let s = sim.stats
        XCTAssertEqual(s.switchoverSource, .override, why)
        XCTAssertNotEqual(s.bandwidthSource, .override, "bandwidth_source describes the library's own estimate; " + why)
        XCTAssertEqual(s.switchoverBandwidth, override, why)
        for h in sim.hooks.progress where h.stats.status == .active && h.stats.expectedDowntimeMs > 0 {
            XCTAssertEqual(h.stats.switchoverBandwidth, override, "at \(h.ns / 1_000_000) ms; " + why)
            XCTAssertEqual(h.stats.switchoverSource, .override, "at \(h.ns / 1_000_000) ms; " + why)
        }
        // Expected downtime computed with the override: (remaining + device)
        // / (B/s / 1000) + final sync + pause, rounded up.
        let fixedMs = Double(s.stop.syncUs + s.stop.pauseUs) / 1000
        let mine = Double(s.stop.ramBytes + s.pendingDeviceBytes) / (Double(override) / 1000) + fixedMs
        XCTAssertEqual(Double(s.expectedDowntimeMs), mine.rounded(.up), accuracy: 1, why)
        XCTAssertLessThanOrEqual(Double(s.expectedDowntimeMs), Double(s.downtimeLimitMs), why)
    }

    /// An override too low for the limit holds the switchover back: it is
    /// the decision's figure, not just a displayed one.
    func testTooLowOverrideHoldsTheSwitchoverBack() {
        var c = Self.busyThreadConfig()
        c.params.availSwitchoverBandwidth = 20_000_000   // 150 ms x 20 MB/s = 3 MB < any pass
        c.deadlineSeconds = 0.6
        let sim = SimT.make(c)
        sim.run()
        let why = sim.summary() + "\n" + sim.logText()
        XCTAssertTrue(sim.reachedDeadline, "converged although the override says it cannot: " + why)
        XCTAssertEqual(sim.statsAtDeadline?.status, .active, why)
        XCTAssertEqual(sim.statsAtDeadline?.switchoverBandwidth, 20_000_000, why)
        XCTAssertEqual(sim.hooks.pauseCalls, 0, "it never even tried: " + why)
        SimT.assertUnwound(sim, code: .canceled, status: .cancelled)
    }

    /// Setting the override while running takes effect: the same guest that
    /// was held back converges once a realistic figure is given.
    func testOverrideSetWhileRunning() {
        var c = Self.busyThreadConfig()
        c.params.availSwitchoverBandwidth = 20_000_000
        let sim = SimT.make(c)
        sim.at(seconds: 0.4) { $0.availSwitchoverBandwidth = 800_000_000 }
        sim.run()
        SimT.assertCompleted(sim)
        XCTAssertGreaterThan(sim.elapsedSeconds, 0.4, sim.summary())
        XCTAssertLessThan(sim.elapsedSeconds, 0.7, sim.summary())
        XCTAssertEqual(sim.stats.switchoverBandwidth, 800_000_000, sim.summary())
    }
}
