import CShim
import Glibc

/// The built-in transport on the VMM's transport_fd: every wait bounded by
/// the deadline and by cancel; on a socket, the return channel comes back
/// on the same fd. The VMM closes the fd, never this.
final class FdSourceTransport: SourceTransport {
    private let fd: Int32
    private let isSocket: Bool
    /// The fd's return side, when the fd is a socket.
    private let channel: ReturnChannel?
    /// Woken by cancel: ends every wait on the fd (see cshim_writev_bounded
    /// for why not shutdown).
    private let wake: WakeSignal
    /// No wait on the fd goes past this (CLOCK_MONOTONIC ns; 0 = none): the
    /// completion-timeout, set by the engine.
    private var deadlineNs: UInt64 = 0

    /// `wake`: the signal cancel raises (SourceTransportChoice.interrupt).
    init(fd: Int32, isSocket: Bool, wake: WakeSignal) {
        self.fd = fd
        self.isSocket = isSocket
        self.wake = wake
        channel = isSocket ? ReturnChannel(fd: fd, wakeFd: wake.fd) : nil
    }

    var hasReturnChannel: Bool { isSocket }

    func setWaitDeadline(ns: UInt64?) { deadlineNs = ns ?? 0 }

    /// A write that waits for room looks at the return channel every
    /// `channelLookNs`: a destination that failed and stopped reading has
    /// said why there, and the write ends with that at once. (Waking on
    /// every incoming frame instead cost a wakeup per progress report,
    /// thousands a second, while the stop-and-copy waited for room.)
    func write(_ iov: UnsafePointer<iovec>, count: Int) throws(MKError) {
        var done = 0
        while true {
            var until = deadlineNs
            if let channel, !channel.closed, channel.verdict == nil {
                let look = cshim_monotonic_ns() + Self.channelLookNs
                until = until == 0 ? look : min(until, look)
            }
            let rc = cshim_writev_bounded(fd, isSocket ? 1 : 0, iov, Int32(count), &done, wake.fd, until)
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
        try returnChannel().awaitHello(timeoutMs: timeoutMs)
    }

    func awaitNonce(timeoutMs: Int) throws(MKError) -> [UInt8] {
        try returnChannel().awaitNonce(timeoutMs: timeoutMs)
    }

    func awaitAckTag(timeoutMs: Int) throws(MKError) -> [UInt8] {
        try returnChannel().awaitAckTag(timeoutMs: timeoutMs)
    }

    func awaitAck(timeoutMs: Int) throws(MKError) -> AckReply {
        try returnChannel().awaitAck(timeoutMs: timeoutMs)
    }

    /// A pipe carries the stream one way only.
    private func returnChannel() throws(MKError) -> ReturnChannel {
        guard let channel else { throw MKError(.invalid, "no return channel") }
        return channel
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
        report.returnChannelLost = channel.lost
        return report
    }

    /// Shut a socket down so that the destination's read ends now
    /// (MK_ETRUNCATED) instead of waiting for a stream that will not come.
    /// The fd stays open: the VMM closes it.
    func abandon() { if isSocket { _ = cshim_shutdown(fd) } }
}
