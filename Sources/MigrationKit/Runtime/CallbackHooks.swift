import Glibc

/// Production SourceHooks: the VMM's callbacks (SourceVMM), the transport
/// chosen when the session was built, and the throttle thread.
final class CallbackHooks: SourceHooks {
    private let vmm: SourceVMM
    private let transport: any SourceTransport
    private let throttler: Throttler
    private let vcpus: UInt32

    init(vmm: SourceVMM, transport: any SourceTransport, throttler: Throttler, vcpus: UInt32) {
        self.vmm = vmm
        self.transport = transport
        self.throttler = throttler
        self.vcpus = max(vcpus, 1)
    }

    var hasReturnChannel: Bool { transport.hasReturnChannel }
    func setWaitDeadline(ns: UInt64?) { transport.setWaitDeadline(ns: ns) }
    func write(_ iov: UnsafePointer<iovec>, count: Int) throws(MKError) { try transport.write(iov, count: count) }
    func awaitHello(timeoutMs: Int) throws(MKError) -> UInt64 { try transport.awaitHello(timeoutMs: timeoutMs) }
    func awaitNonce(timeoutMs: Int) throws(MKError) -> [UInt8] { try transport.awaitNonce(timeoutMs: timeoutMs) }
    func awaitAckTag(timeoutMs: Int) throws(MKError) -> [UInt8] { try transport.awaitAckTag(timeoutMs: timeoutMs) }
    func awaitAck(timeoutMs: Int) throws(MKError) -> AckReply { try transport.awaitAck(timeoutMs: timeoutMs) }
    func pollDestination() -> DestinationReport { transport.pollDestination() }
    func abandonTransport() { transport.abandon() }

    func fetchDirtyLog(region: Int, bitmap: UnsafeMutablePointer<UInt64>, pages: Int) throws(MKError) {
        let rc = vmm.getDirtyLog(UInt32(region), bitmap, UInt64(pages))
        if rc < 0 { throw MKError(.callback, "get_dirty_log(region \(region)) returned \(rc)") }
    }

    func pauseVCPUs() throws(MKError) {
        let rc = vmm.pauseVCPUs()
        if rc < 0 { throw MKError(.callback, "pause_vcpus returned \(rc)") }
    }

    func resumeVCPUs() throws(MKError) {
        let rc = vmm.resumeVCPUs()
        if rc < 0 { throw MKError(.callback, "resume_vcpus returned \(rc)") }
    }

    func setThrottle(percent: UInt32) { throttler.set(percent) }
    func setThrottle(perVCPU percents: [UInt32]) { throttler.set(perVCPU: percents) }
    func throttleSleepNs() -> [UInt64] { throttler.sleepNs }

    func fetchVCPUDirtyCounts() throws(MKError) -> [UInt64]? {
        guard let f = vmm.getVCPUDirtyCounts else { return nil }
        var counts = [UInt64](repeating: 0, count: Int(vcpus))
        let rc = counts.withUnsafeMutableBufferPointer { f($0.baseAddress!, vcpus) }
        if rc < 0 { throw MKError(.callback, "get_vcpu_dirty_counts returned \(rc)") }
        return counts
    }

    func saveDeviceState() throws(MKError) -> [UInt8] {
        guard let f = vmm.saveDeviceState else { return [] }
        let buf = DeviceBuffer()
        let rc = f(buf)
        if rc < 0 { throw MKError(.callback, "save_device_state returned \(rc)") }
        return buf.bytes
    }

    func deviceStateSize() -> UInt64? { vmm.deviceStateSize?() }
    func log(_ level: LogLevel, _ message: String) { vmm.log?(level, message) }
    func progress(_ stats: MigrationStats) { vmm.progress?(stats) }
}
