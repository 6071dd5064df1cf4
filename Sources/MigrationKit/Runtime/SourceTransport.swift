import CShim
import Glibc

/// The stream's way to the destination and the return channel's way back:
/// the VMM's transport_fd (FdSourceTransport) or its write/read callbacks
/// (CallbackSourceTransport). Only the migration thread uses it.
protocol SourceTransport: AnyObject {
    /// True when the destination's frames can be read back.
    var hasReturnChannel: Bool { get }
    /// No wait inside write goes past this (CLOCK_MONOTONIC ns; nil: none).
    func setWaitDeadline(ns: UInt64?)
    /// Every byte of `iov[0..<count]`, in order.
    func write(_ iov: UnsafePointer<iovec>, count: Int) throws(MKError)
    func awaitHello(timeoutMs: Int) throws(MKError) -> UInt64
    func awaitNonce(timeoutMs: Int) throws(MKError) -> [UInt8]
    func awaitAckTag(timeoutMs: Int) throws(MKError) -> [UInt8]
    func awaitAck(timeoutMs: Int) throws(MKError) -> AckReply
    /// What the destination reported since the last call, without waiting.
    func pollDestination() -> DestinationReport
    /// The stream broke off before END: let the destination know, if the
    /// transport can.
    func abandon()
}

/// A session's transport, chosen once when the session is built and made
/// when the migration starts, so that it belongs to the migration thread
/// alone; only `interrupt` is shared.
struct SourceTransportChoice: Sendable {
    let hasReturnChannel: Bool
    /// Ends any wait inside the transport (cancel), from any thread.
    let interrupt: @Sendable () -> Void
    let make: @Sendable () -> any SourceTransport

    static func fd(_ fd: Int32) -> Self {
        let wake = WakeSignal()
        let isSocket = cshim_is_socket(fd) != 0
        return Self(hasReturnChannel: isSocket,
                    // Without an eventfd, cancel shuts the fd down instead.
                    interrupt: { if wake.isAvailable { wake.wake() } else { _ = cshim_shutdown(fd) } },
                    make: { FdSourceTransport(fd: fd, isSocket: isSocket, wake: wake) })
    }

    static func callbacks(write: @escaping CallbackSourceTransport.Write, read: CallbackSourceTransport.Read?) -> Self {
        Self(hasReturnChannel: read != nil, interrupt: {}, make: { CallbackSourceTransport(write: write, read: read) })
    }
}

/// The VMM's write and read callbacks. The VMM's transport owns every
/// timeout and every wakeup: nothing here waits by itself.
final class CallbackSourceTransport: SourceTransport {
    /// Hands the VMM all of `iov[0..<count]`; returns the callback's int.
    typealias Write = @Sendable (_ iov: UnsafePointer<iovec>, _ count: Int32) -> Int32
    /// Fills all of the buffer with return-channel bytes; returns the
    /// callback's int.
    typealias Read = @Sendable (UnsafeMutableRawBufferPointer) -> Int32

    private let writeBytes: Write
    private let readBytes: Read?

    init(write: @escaping Write, read: Read?) {
        writeBytes = write
        readBytes = read
    }

    var hasReturnChannel: Bool { readBytes != nil }
    func setWaitDeadline(ns: UInt64?) {}
    func pollDestination() -> DestinationReport { DestinationReport() }
    func abandon() {}

    func write(_ iov: UnsafePointer<iovec>, count: Int) throws(MKError) {
        let rc = writeBytes(iov, Int32(count))
        if rc < 0 { throw MKError(.transport, "write callback returned \(rc)") }
    }

    func awaitHello(timeoutMs: Int) throws(MKError) -> UInt64 {
        while true {
            switch try readFrame(waitingFor: "the destination's hello") {
            case .hello(let cost): return cost
            case .ack(let reply): throw ReturnChannel.refusal(reply)
            case .progress, .nonce, .ackTag: continue
            }
        }
    }

    func awaitNonce(timeoutMs: Int) throws(MKError) -> [UInt8] {
        while true {
            switch try readFrame(waitingFor: "the destination's nonce") {
            case .nonce(let n): return n
            case .ack(let reply): throw ReturnChannel.refusal(reply)
            default: continue
            }
        }
    }

    func awaitAckTag(timeoutMs: Int) throws(MKError) -> [UInt8] {
        while true {
            if case .ackTag(let t) = try readFrame(waitingFor: "the acknowledgement's tag") { return t }
        }
    }

    /// Progress reports on the way are skipped.
    func awaitAck(timeoutMs: Int) throws(MKError) -> AckReply {
        while true {
            if case .ack(let reply) = try readFrame(waitingFor: "the acknowledgement") { return reply }
        }
    }

    /// One return frame through the VMM's read callback (it blocks).
    private func readFrame(waitingFor what: String) throws(MKError) -> ReturnMessage {
        guard let readBytes else { throw MKError(.invalid, "no return channel") }
        var frame = [UInt8](repeating: 0, count: ReturnMessage.size)
        let rc = frame.withUnsafeMutableBytes { readBytes($0) }
        if rc < 0 { throw MKError(.transport, "read callback returned \(rc) while waiting for \(what)") }
        return try withBytes(frame) { (raw) throws(MKError) in try ReturnMessage.decode(raw) }
    }
}
