import CShim
import Glibc

/// The source's end of the return channel on a socket: 24-byte frames that
/// may arrive in pieces. The hello is waited for at setup, progress frames
/// are read without blocking between batches, the acknowledgement is waited
/// for at the end. A verdict that arrives early (the destination failed) is
/// kept for later.
final class ReturnChannel {
    private let fd: Int32
    private var partial: [UInt8] = []
    private var progress: [ProgressReport] = []
    private var hello: UInt64?
    private(set) var verdict: AckReply?
    /// Nothing more will come: end of file, an error, or a frame that did
    /// not decode (the channel cannot be trusted past it).
    private(set) var closed = false
    /// Why it closed, when the cause means no acknowledgement can come
    /// either: the engine fails with it before the switchover rather than
    /// pause the guest for an answer that cannot arrive.
    private(set) var lost: MKError?
    /// Readable once cancel was requested: ends every wait here.
    private let wakeFd: Int32
    private var nonce: [UInt8]?
    private var ackTag: [UInt8]?

    init(fd: Int32, wakeFd: Int32) {
        self.fd = fd
        self.wakeFd = wakeFd
    }

    /// Take whatever frames are there, without waiting, and keep them.
    func pump() {
        var buf = [UInt8](repeating: 0, count: 4096)
        while verdict == nil && !closed {
            let n = buf.withUnsafeMutableBytes { cshim_recv_nowait(fd, $0.baseAddress, $0.count) }
            if n == -Int(EAGAIN) { break }
            guard n > 0 else {
                closed = true
                lost = MKError(.transport, n == 0 ? "the destination closed the return channel"
                               : "reading the return channel: \(String(cString: strerror(Int32(-n))))")
                break
            }
            do throws(MKError) { try take(buf[0..<n]) } catch {
                closed = true
                lost = MKError(.transport, "the return channel carried a frame that does not decode (\(error.message))")
            }
        }
    }

    /// Take whatever frames are there, without waiting; return the progress
    /// reports read since the last call.
    func poll() -> [ProgressReport] {
        pump()
        defer { progress.removeAll(keepingCapacity: true) }
        return progress
    }

    /// Wait for the hello; an early verdict (the destination refused the
    /// stream header) is an error that says why.
    func awaitHello(timeoutMs: Int) throws(MKError) -> UInt64 {
        try wait(timeoutMs: timeoutMs, for: "hello") { hello != nil || verdict != nil }
        if let hello { return hello }
        throw ReturnChannel.refusal(verdict!)
    }

    /// Wait for the acknowledgement; progress frames on the way are taken.
    func awaitAck(timeoutMs: Int) throws(MKError) -> AckReply {
        try wait(timeoutMs: timeoutMs, for: "acknowledgement") { verdict != nil }
        return verdict!
    }

    /// Authenticated streams: the destination's nonce, after its hello.
    func awaitNonce(timeoutMs: Int) throws(MKError) -> [UInt8] {
        try wait(timeoutMs: timeoutMs, for: "nonce") { nonce != nil || verdict != nil }
        if let nonce { return nonce }
        throw ReturnChannel.refusal(verdict!)
    }

    /// Authenticated streams: the tag after the acknowledgement.
    func awaitAckTag(timeoutMs: Int) throws(MKError) -> [UInt8] {
        try wait(timeoutMs: timeoutMs, for: "acknowledgement's tag") { ackTag != nil }
        return ackTag!
    }

    /// A verdict already received, or one that comes within `timeoutMs`.
    func earlyVerdict(timeoutMs: Int) -> AckReply? {
        pump()
        if let verdict { return verdict }
        do throws(MKError) { return try awaitAck(timeoutMs: timeoutMs) } catch { return nil }
    }

    /// The error for a destination that answered with a failure.
    static func refusal(_ reply: AckReply) -> MKError {
        let why = MKError.Code(rawValue: reply.status).map { "\($0)" } ?? "error \(reply.status)"
        return MKError(.dest, "the destination rejected the stream: \(why) (see its log)")
    }

    private func wait(timeoutMs: Int, for what: String, until done: () -> Bool) throws(MKError) {
        let deadline = cshim_monotonic_ns() + UInt64(max(timeoutMs, 0)) * 1_000_000
        // Whole frames may wait behind an early verdict (the ack's tag).
        try take([][...])
        while !done() {
            let now = cshim_monotonic_ns()
            guard now < deadline else { throw MKError(.timedOut, "no \(what) from the destination within \(timeoutMs) ms") }
            var frame = [UInt8](repeating: 0, count: ReturnMessage.size - partial.count)
            let left = Int32(clamping: (deadline - now) / 1_000_000 + 1)
            let rc = frame.withUnsafeMutableBytes { cshim_read_exact(fd, $0.baseAddress, $0.count, left, wakeFd) }
            switch rc {
            case 0: try take(frame[...])
            case -ETIMEDOUT: continue
            case -ECANCELED: throw MKError(.canceled, "cancelled by mk_source_cancel while waiting for the destination's \(what)")
            case -EPIPE: throw MKError(.transport, "the destination closed the channel before its \(what)")
            default: throw MKError(.transport, "reading the destination's \(what): \(String(cString: strerror(-rc)))")
            }
        }
    }

    private func take(_ bytes: ArraySlice<UInt8>) throws(MKError) {
        partial.append(contentsOf: bytes)
        while partial.count >= ReturnMessage.size {
            let frame = Array(partial[0..<ReturnMessage.size])
            partial.removeFirst(ReturnMessage.size)
            let message = try withBytes(frame) { (raw) throws(MKError) in try ReturnMessage.decode(raw) }
            switch message {
            case .progress(let p): progress.append(p)
            case .hello(let cost): hello = cost
            case .nonce(let n): nonce = n
            case .ackTag(let t): ackTag = t
            case .ack(let reply):
                verdict = reply
                return
            }
        }
    }
}
