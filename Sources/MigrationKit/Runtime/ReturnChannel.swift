import CShim
import Glibc

/// The source's end of the return channel on a socket: 24-byte frames that
/// may arrive in pieces. Progress frames are read without blocking between
/// batches; the acknowledgement is waited for at the end. A verdict that
/// arrives early (the destination failed mid-stream) is kept for later.
final class ReturnChannel {
    private let fd: Int32
    private var partial: [UInt8] = []
    private(set) var consumed: UInt64?
    private var verdict: (status: Int32, timestampNs: UInt64)?

    init(fd: Int32) { self.fd = fd }

    /// Take whatever frames are there, without waiting.
    func poll() {
        var buf = [UInt8](repeating: 0, count: 4096)
        while verdict == nil {
            let n = buf.withUnsafeMutableBytes { cshim_recv_nowait(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return }
            do throws(MKError) { try take(buf[0..<n]) } catch { return }
        }
    }

    /// Wait for the acknowledgement; progress frames on the way are taken.
    func awaitAck(timeoutMs: Int) throws(MKError) -> (status: Int32, timestampNs: UInt64) {
        let deadline = cshim_monotonic_ns() + UInt64(max(timeoutMs, 0)) * 1_000_000
        while verdict == nil {
            let now = cshim_monotonic_ns()
            guard now < deadline else {
                throw MKError(.timedOut, "no acknowledgement from the destination within \(timeoutMs) ms")
            }
            var frame = [UInt8](repeating: 0, count: ReturnMessage.size - partial.count)
            let left = Int32(clamping: (deadline - now) / 1_000_000 + 1)
            let rc = frame.withUnsafeMutableBytes { cshim_read_exact(fd, $0.baseAddress, $0.count, left) }
            switch rc {
            case 0: try take(frame[...])
            case -ETIMEDOUT: continue
            case -EPIPE: throw MKError(.transport, "the destination closed the channel before acknowledging")
            default: throw MKError(.transport, "reading the acknowledgement: \(String(cString: strerror(-rc)))")
            }
        }
        return verdict!
    }

    /// A verdict already received, or one that comes within `timeoutMs`.
    func earlyVerdict(timeoutMs: Int) -> (status: Int32, timestampNs: UInt64)? {
        poll()
        if let verdict { return verdict }
        do throws(MKError) { return try awaitAck(timeoutMs: timeoutMs) } catch { return nil }
    }

    private func take(_ bytes: ArraySlice<UInt8>) throws(MKError) {
        partial.append(contentsOf: bytes)
        while partial.count >= ReturnMessage.size {
            let frame = Array(partial[0..<ReturnMessage.size])
            partial.removeFirst(ReturnMessage.size)
            let message = try withBytes(frame) { (raw) throws(MKError) in try ReturnMessage.decode(raw) }
            switch message {
            case .progress(let n): consumed = max(consumed ?? 0, n)
            case .ack(let status, let ts):
                verdict = (status, ts)
                return
            }
        }
    }
}
