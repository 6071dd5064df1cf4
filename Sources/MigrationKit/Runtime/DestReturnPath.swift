/// The destination's frames back to the source over its transport: hello,
/// nonce, progress, acknowledgement. Used by the thread in mk_dest_run,
/// then by mk_dest_ack's.
final class DestReturnPath: Sendable {
    private struct Pending {
        /// An authenticated stream's session key, once the nonces are
        /// exchanged: the acknowledgement then carries its tag.
        var sessionKey: [UInt8]?
        /// A progress frame the transport took only in part (or not at all).
        var unsentProgress: [UInt8] = []
    }

    let transport: any DestTransport
    private let pending = Locked(Pending())

    init(_ transport: any DestTransport) { self.transport = transport }

    func send(_ bytes: [UInt8]) throws(MKError) { try transport.sendReturn(bytes) }

    func setSessionKey(_ key: [UInt8]) { pending.withLock { $0.sessionKey = key } }

    /// Progress must never block the loader: a source busy writing the
    /// stream reads the return channel only now and then, and a loader
    /// blocked on a full return channel would stop reading the stream the
    /// source is blocked on. So progress goes out without waiting, only
    /// where the transport allows it (a VMM's write callback may block),
    /// and is skipped when there is no room. The tail of a frame the
    /// transport took only in part is kept and goes first next time, so
    /// the frames stay whole. A frame none of which went out is replaced by
    /// the newer report (it says more), and the idle flush retries it when
    /// the stream pauses.
    func sendProgress(_ report: ProgressReport) {
        guard transport.carriesProgress else { return }
        pending.withLock { p in
            if p.unsentProgress.isEmpty || p.unsentProgress.count == ReturnMessage.size {
                p.unsentProgress = Progress.encode(report)
            }
        }
        flushProgress()
    }

    var hasUnsentProgress: Bool { pending.withLock { !$0.unsentProgress.isEmpty } }

    func flushProgress() {
        pending.withLock { p in
            let n = p.unsentProgress.withUnsafeBytes { transport.sendWithoutWaiting($0) }
            if n > 0 { p.unsentProgress.removeFirst(n) }
        }
    }

    /// The acknowledgement, behind any progress frame's tail (frames stay
    /// whole); on an authenticated stream the source believes only a
    /// tagged ack.
    func sendAck(_ reply: AckReply) throws(MKError) {
        let ack = Ack.encode(reply)
        let (key, unsent) = pending.withLock { ($0.sessionKey, $0.unsentProgress) }
        let tag = key.map { SealFrame.encode(SealFrame.ackTagMagic, StreamAuth.ackTag(sessionKey: $0, ack: ack)) } ?? []
        try send(unsent + ack + tag)
        pending.withLock { $0.unsentProgress = [] }
    }
}
