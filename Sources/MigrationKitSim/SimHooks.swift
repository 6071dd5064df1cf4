import Glibc
import MigrationKit

/// Virtual-time costs of the VMM side.
package struct SimCosts: Sendable {
    /// One dirty-log fetch: fixed part plus a part per GiB of the region
    /// (walking KVM's bitmap): what keeps a scan-bound thread busy.
    package var fetchFixedNs: UInt64 = 20_000
    package var fetchNsPerGiB: UInt64 = 500_000
    package var pauseNs: UInt64 = 200_000
    var resumeNs: UInt64 = 100_000
    /// A busy host: while the guest is paused, each of the migration
    /// thread's scans waits this fraction of its own time for a CPU (another
    /// process holds it). The prediction cannot know; stats must show it.
    package var pausedScanCpuWait: Double = 0

    package init() {}

    package func fetchNs(regionBytes: UInt64) -> UInt64 {
        fetchFixedNs + UInt64(Double(fetchNsPerGiB) * Double(regionBytes) / Double(1 << 30))
    }
}

/// The VMM as the engine sees it, backed by the guest, link and destination
/// models. Records everything the engine asked for.
package final class SimHooks: SourceHooks {
    /// A hook call, as seen by `onCall`.
    package enum Call: Sendable, Equatable {
        case fetchDirtyLog(region: Int)
        case write(bytes: UInt64)
        case readAck
        case pauseVCPUs
        case resumeVCPUs
        case setThrottle(UInt32)
        case saveDeviceState
    }

    package let clock: VirtualClock
    package let guest: GuestModel
    package let link: LinkModel
    package var costs: SimCosts
    package let hasReturnChannel: Bool

    /// Called at the start of every hook (after none of its time passed).
    /// Throwing makes a throwing hook fail with that error (for the others,
    /// setThrottle, the error is ignored). Tests use it to inject failures
    /// and to cancel at precise points.
    package var onCall: ((Call) throws(MKError) -> Void)?
    /// Called with every progress snapshot.
    package var onProgress: ((MigrationStats) -> Void)?

    // Records (times are elapsed virtual ns).
    package private(set) var logs: [(ns: UInt64, level: LogLevel, message: String)] = []
    package private(set) var progress: [(ns: UInt64, stats: MigrationStats)] = []
    package private(set) var throttleCalls: [(ns: UInt64, percent: UInt32)] = []
    package private(set) var fetchCalls = 0
    package private(set) var pauseCalls = 0
    package private(set) var resumeCalls = 0
    package private(set) var ackReads = 0
    /// Absolute time the last pauseVCPUs started.
    package private(set) var lastPauseStartNs: UInt64?

    package init(clock: VirtualClock, guest: GuestModel, link: LinkModel, costs: SimCosts, hasReturnChannel: Bool) {
        self.clock = clock
        self.guest = guest
        self.link = link
        self.costs = costs
        self.hasReturnChannel = hasReturnChannel
    }

    private func call(_ c: Call) throws(MKError) {
        try onCall?(c)
    }

    package func fetchDirtyLog(region: Int, bitmap: UnsafeMutablePointer<UInt64>, pages: Int) throws(MKError) {
        fetchCalls += 1
        try call(.fetchDirtyLog(region: region))
        clock.advance(by: costs.fetchNs(regionBytes: guest.regions[region].size))
        guest.fetchDirtyLog(region: region, into: bitmap, pages: pages)
    }

    package func write(_ iov: UnsafePointer<iovec>, count: Int) throws(MKError) {
        var n: UInt64 = 0
        for i in 0..<count { n += UInt64(iov[i].iov_len) }
        try call(.write(bytes: n))
        // The vCPUs ran while the batch was scanned and checksummed: their
        // writes land now, so a page may change between its checksum and
        // its copy (a torn page the destination must survive).
        guest.catchUp()
        try link.write(iov, count: count)
    }

    package func awaitHello(timeoutMs: Int) throws(MKError) -> UInt64 {
        try link.readHello()
    }

    package func awaitAck(timeoutMs: Int) throws(MKError) -> AckReply {
        ackReads += 1
        try call(.readAck)
        let ack = try link.readAck(timeoutMs: timeoutMs)
        let result: Result<AckReply, MKError> = ack.withUnsafeBytes { raw in
            do throws(MKError) { return .success(try Ack.decode(raw)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    package func pauseVCPUs() throws(MKError) {
        pauseCalls += 1
        lastPauseStartNs = clock.now
        try call(.pauseVCPUs)
        // The vCPUs run until they are out of guest mode; one asleep in the
        // throttle point comes back only when its sleep ends.
        clock.advance(by: costs.pauseNs + guest.throttleSleepLeftNs(atNs: clock.now))
        guest.pause()
        clock.scanCpuWait = costs.pausedScanCpuWait
    }

    package func resumeVCPUs() throws(MKError) {
        resumeCalls += 1
        try call(.resumeVCPUs)
        clock.scanCpuWait = 0
        clock.advance(by: costs.resumeNs)
        guest.resume()
    }

    package func setThrottle(percent: UInt32) {
        throttleCalls.append((clock.elapsedNs, percent))
        try? call(.setThrottle(percent))
        guest.setThrottle(percent: percent)
    }

    /// (elapsed ns, per-vCPU percents) for every per-vCPU throttle change.
    package private(set) var vcpuThrottleCalls: [(ns: UInt64, percents: [UInt32])] = []
    /// Calls for per-vCPU counts.
    private(set) var countFetches = 0

    package func setThrottle(perVCPU percents: [UInt32]) {
        let m = percents.max() ?? 0
        throttleCalls.append((clock.elapsedNs, m))
        vcpuThrottleCalls.append((clock.elapsedNs, percents))
        try? call(.setThrottle(m))
        guest.setThrottle(perVCPU: percents)
    }

    package func fetchVCPUDirtyCounts() throws(MKError) -> [UInt64]? {
        guard guest.config.attributesDirtying else { return nil }
        countFetches += 1
        return guest.takeVCPUCounts()
    }

    package func throttleSleepNs() -> [UInt64] {
        guest.catchUp()
        return guest.vcpuSleepNs
    }

    package func saveDeviceState() throws(MKError) -> [UInt8] {
        try call(.saveDeviceState)
        clock.advance(by: guest.config.deviceSaveNs)
        return guest.saveDeviceState()
    }

    package func deviceStateSize() -> UInt64? {
        guest.config.reportsDeviceStateSize ? UInt64(guest.config.deviceStateBytes) : nil
    }

    /// Whether the transport tells its queue, as the production fd
    /// transport does with SIOCOUTQ (a callback transport cannot).
    package var reportsQueue = true

    /// The destination's progress reports that came back by now (see
    /// DestinationConfig.progressEveryBytes) and the send buffer's level.
    package func pollDestination() -> DestinationReport {
        var report = DestinationReport(progress: link.takeReports(), localQueue: reportsQueue ? UInt64(link.buffered) : nil)
        if hasReturnChannel && link.returnClosed {
            report.returnChannelLost = MKError(.transport, "the destination closed the return channel")
        }
        return report
    }

    package func log(_ level: LogLevel, _ message: String) {
        logs.append((clock.elapsedNs, level, message))
    }

    package func progress(_ stats: MigrationStats) {
        progress.append((clock.elapsedNs, stats))
        onProgress?(stats)
    }

    /// Throttle values over time, starting from 0, without repeats.
    package var throttleSteps: [UInt32] {
        var out: [UInt32] = [0]
        for c in throttleCalls where out.last != c.percent { out.append(c.percent) }
        return out
    }
}
