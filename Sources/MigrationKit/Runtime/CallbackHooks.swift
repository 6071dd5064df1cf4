import CShim
import Glibc

/// The C callback table, copied at create time. The one place where
/// sendability is asserted: migrationkit.h documents which thread calls
/// what, and `user` is the VMM's business.
struct SourceCallbacks: @unchecked Sendable {
    var c: mk_source_callbacks
    var user: UnsafeMutableRawPointer? { c.user }
}

/// Production SourceHooks: the VMM's callbacks, or the built-in fd transport,
/// and the throttle thread.
final class CallbackHooks: SourceHooks {
    private let cb: SourceCallbacks
    private let fd: Int32
    private let throttler: Throttler
    let hasReturnChannel: Bool
    /// The fd's return side, when the fd is a socket.
    private let channel: ReturnChannel?

    private let vcpus: UInt32
    private let isSocket: Bool
    /// Woken by cancel: ends every wait on the fd (see cshim_writev_bounded
    /// for why not shutdown). -1 if the kernel gave none: cancel then falls
    /// back to shutting a socket down.
    private let wakeFd: Int32
    /// No wait on the fd goes past this (CLOCK_MONOTONIC ns; 0 = none): the
    /// completion-timeout, set by the engine.
    private var deadlineNs: UInt64 = 0

    init(callbacks: SourceCallbacks, fd: Int32, throttler: Throttler, vcpus: UInt32) {
        cb = callbacks
        self.vcpus = max(vcpus, 1)
        self.fd = fd
        self.throttler = throttler
        let wake = cshim_wake_fd_new()
        wakeFd = wake >= 0 ? wake : -1
        if fd >= 0 {
            isSocket = cshim_is_socket(fd) != 0
            hasReturnChannel = isSocket
            channel = hasReturnChannel ? ReturnChannel(fd: fd, wakeFd: wakeFd) : nil
        } else {
            isSocket = false
            hasReturnChannel = callbacks.c.read != nil
            channel = nil
        }
    }

    deinit { if wakeFd >= 0 { close(wakeFd) } }

    func setWaitDeadline(ns: UInt64?) { deadlineNs = ns ?? 0 }

    func fetchDirtyLog(region: Int, bitmap: UnsafeMutablePointer<UInt64>, pages: Int) throws(MKError) {
        guard let f = cb.c.get_dirty_log else { throw MKError(.invalid, "get_dirty_log callback missing") }
        let rc = f(cb.user, UInt32(region), bitmap, UInt64(pages))
        if rc < 0 { throw MKError(.callback, "get_dirty_log(region \(region)) returned \(rc)") }
    }

    func write(_ iov: UnsafePointer<iovec>, count: Int) throws(MKError) {
        if fd >= 0 { return try writeFd(iov, count: count) }
        guard let f = cb.c.write else { throw MKError(.invalid, "no transport: write callback missing and transport_fd < 0") }
        // mk_iovec and struct iovec share their layout (checked in the tests).
        let rc = UnsafeRawPointer(iov).withMemoryRebound(to: mk_iovec.self, capacity: count) {
            f(cb.user, $0, Int32(count))
        }
        if rc < 0 { throw MKError(.transport, "write callback returned \(rc)") }
    }

    /// The built-in transport: every wait bounded by the deadline and by
    /// cancel. A write that waits for room looks at the return channel
    /// every `channelLookNs`: a destination that failed and stopped reading
    /// has said why there, and the write ends with that at once. (Waking
    /// on every incoming frame instead cost a wakeup per progress report,
    /// thousands a second, while the stop-and-copy waited for room.)
    private func writeFd(_ iov: UnsafePointer<iovec>, count: Int) throws(MKError) {
        var done = 0
        while true {
            var until = deadlineNs
            if let channel, !channel.closed, channel.verdict == nil {
                let look = cshim_monotonic_ns() + Self.channelLookNs
                until = until == 0 ? look : min(until, look)
            }
            let rc = cshim_writev_bounded(fd, isSocket ? 1 : 0, iov, Int32(count), &done, wakeFd, until)
            switch rc {
            case 0: return
            case -ETIMEDOUT where deadlineNs == 0 || cshim_monotonic_ns() < deadlineNs:
                channel?.pump()
                if let v = channel?.verdict, v.status < 0 { throw ReturnChannel.refusal(v) }
            case -ECANCELED: throw MKError(.canceled, "cancelled by mk_source_cancel while writing to fd \(fd)")
            case -ETIMEDOUT: throw MKError(.timedOut, "the write to fd \(fd) waited until the deadline: the destination is not reading")
            default:
                let failure = MKError(.transport, "writev on fd \(fd): \(String(cString: strerror(-rc)))")
                throw destinationVerdict() ?? failure
            }
        }
    }

    static let channelLookNs: UInt64 = 100_000_000

    func awaitHello(timeoutMs: Int) throws(MKError) -> UInt64 {
        if let channel { return try channel.awaitHello(timeoutMs: timeoutMs) }
        while true {
            switch try readFrame(waitingFor: "the destination's hello") {
            case .hello(let cost): return cost
            case .ack(let reply): throw ReturnChannel.refusal(reply)
            case .progress, .nonce, .ackTag: continue
            }
        }
    }

    func awaitNonce(timeoutMs: Int) throws(MKError) -> [UInt8] {
        if let channel { return try channel.awaitNonce(timeoutMs: timeoutMs) }
        while true {
            switch try readFrame(waitingFor: "the destination's nonce") {
            case .nonce(let n): return n
            case .ack(let reply): throw ReturnChannel.refusal(reply)
            default: continue
            }
        }
    }

    func awaitAckTag(timeoutMs: Int) throws(MKError) -> [UInt8] {
        if let channel { return try channel.awaitAckTag(timeoutMs: timeoutMs) }
        while true {
            if case .ackTag(let t) = try readFrame(waitingFor: "the acknowledgement's tag") { return t }
        }
    }

    func awaitAck(timeoutMs: Int) throws(MKError) -> AckReply {
        if let channel { return try channel.awaitAck(timeoutMs: timeoutMs) }
        // Frames through the VMM's read callback: skip progress reports.
        while true {
            if case .ack(let reply) = try readFrame(waitingFor: "the acknowledgement") { return reply }
        }
    }

    /// One return frame through the VMM's read callback (it blocks; the
    /// VMM's transport owns any timeout).
    private func readFrame(waitingFor what: String) throws(MKError) -> ReturnMessage {
        guard let f = cb.c.read else { throw MKError(.invalid, "no return channel") }
        var frame = [UInt8](repeating: 0, count: ReturnMessage.size)
        let rc = frame.withUnsafeMutableBytes { f(cb.user, $0.baseAddress, $0.count) }
        if rc < 0 { throw MKError(.transport, "read callback returned \(rc) while waiting for \(what)") }
        return try withBytes(frame) { (raw) throws(MKError) in try ReturnMessage.decode(raw) }
    }

    func pauseVCPUs() throws(MKError) {
        guard let f = cb.c.pause_vcpus else { throw MKError(.invalid, "pause_vcpus callback missing") }
        let rc = f(cb.user)
        if rc < 0 { throw MKError(.callback, "pause_vcpus returned \(rc)") }
    }

    func resumeVCPUs() throws(MKError) {
        guard let f = cb.c.resume_vcpus else { throw MKError(.invalid, "resume_vcpus callback missing") }
        let rc = f(cb.user)
        if rc < 0 { throw MKError(.callback, "resume_vcpus returned \(rc)") }
    }

    func setThrottle(percent: UInt32) { throttler.set(percent) }
    func setThrottle(perVCPU percents: [UInt32]) { throttler.set(perVCPU: percents) }
    func throttleSleepNs() -> [UInt64] { throttler.sleepNs }

    func fetchVCPUDirtyCounts() throws(MKError) -> [UInt64]? {
        guard let f = cb.c.get_vcpu_dirty_counts else { return nil }
        var counts = [UInt64](repeating: 0, count: Int(vcpus))
        let rc = counts.withUnsafeMutableBufferPointer { f(cb.user, $0.baseAddress, vcpus) }
        if rc < 0 { throw MKError(.callback, "get_vcpu_dirty_counts returned \(rc)") }
        return counts
    }

    func saveDeviceState() throws(MKError) -> [UInt8] {
        guard let f = cb.c.save_device_state else { return [] }
        let buf = DeviceBuffer()
        let rc = f(cb.user, OpaquePointer(Unmanaged.passUnretained(buf).toOpaque()))
        if rc < 0 { throw MKError(.callback, "save_device_state returned \(rc)") }
        return buf.bytes
    }

    func deviceStateSize() -> UInt64? { cb.c.device_state_size.map { $0(cb.user) } }

    func log(_ level: LogLevel, _ message: String) {
        guard let f = cb.c.log else { return }
        message.withCString { f(cb.user, level.rawValue, $0) }
    }

    func progress(_ stats: MigrationStats) {
        guard let f = cb.c.progress else { return }
        var s = mk_stats()
        s.fill(from: stats)
        f(cb.user, &s)
    }

    /// A destination that rejects the stream says why on the return channel
    /// before it hangs up; read that instead of reporting a bare EPIPE.
    private func destinationVerdict() -> MKError? {
        guard let reply = channel?.earlyVerdict(timeoutMs: 200), reply.status < 0 else { return nil }
        return ReturnChannel.refusal(reply)
    }

    func pollDestination() -> DestinationReport {
        guard let channel else { return DestinationReport() }
        let progress = channel.poll()
        var report = DestinationReport(progress: progress, localQueue: progress.isEmpty ? cshim_socket_outq(fd) : nil)
        if let v = channel.verdict, v.status < 0 { report.failure = ReturnChannel.refusal(v) }
        return report
    }

    /// Unblock a write or read waiting on the fd (cancel).
    func interrupt() {
        if wakeFd >= 0 { cshim_wake(wakeFd) } else if fd >= 0 { _ = cshim_shutdown(fd) }
    }

    /// The stream broke off before END: shut a socket down so that the
    /// destination's read ends now (MK_ETRUNCATED) instead of waiting for
    /// a stream that will not come. The fd stays open: the VMM closes it.
    func abandonTransport() { if fd >= 0 && isSocket { _ = cshim_shutdown(fd) } }
}
