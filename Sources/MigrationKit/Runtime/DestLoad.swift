/// One mk_dest_run's reading: the stream from the transport into the
/// loader, the hello (and nonce) once the header is accepted, progress
/// reports while it flows. Lives on the thread in mk_dest_run.
final class DestLoad {
    /// Reads of at most 256 KiB, each followed by a progress report once
    /// 64 KiB more were loaded: the source times its stretches of stream
    /// between reports, so they must come several per MiB.
    static let chunk = 256 << 10
    /// Page data read straight into guest memory, then hashed in place:
    /// at most 256 KiB per read too (a whole PAGES record from our source),
    /// so progress reports keep their cadence.
    static let directChunk = 256 << 10
    static let progressEvery: UInt64 = 64 << 10

    private let loader: StreamLoader
    private let path: DestReturnPath
    private var transport: any DestTransport { path.transport }
    private let config: DestSessionConfig
    private let nowNs: @Sendable () -> UInt64
    private let cpuWaitNs: () -> UInt64?
    private let isCancelled: () -> Bool
    /// The CPU wait reading when the first record sent with the guest
    /// paused arrived, and the wait since then (up to END).
    private var stoppedWaitStart: UInt64?
    private(set) var stoppedCpuWaitNs: UInt64?
    /// Stream bytes loaded, and covered by the last progress report.
    private var consumed: UInt64 = 0
    private var reported: UInt64 = 0

    init(loader: StreamLoader, path: DestReturnPath, config: DestSessionConfig,
         nowNs: @escaping @Sendable () -> UInt64, cpuWaitNs: @escaping () -> UInt64?,
         isCancelled: @escaping () -> Bool) {
        self.loader = loader
        self.path = path
        self.config = config
        self.nowNs = nowNs
        self.cpuWaitNs = cpuWaitNs
        self.isCancelled = isCancelled
    }

    /// Until the END record (or a failure); `didRead` after every read.
    func receive(didRead: () -> Void) throws(MKError) {
        let buf = UnsafeMutableRawPointer.allocate(byteCount: Self.chunk, alignment: 64)
        defer { buf.deallocate() }
        var greeted = false
        var opener: StreamOpener?
        while !loader.isComplete {
            if isCancelled() { throw MKError(.canceled, "cancelled by mk_dest_cancel") }
            defer {
                timeStoppedCPUWait()
                didRead()
            }
            let n: Int
            if let opener {
                // Authenticated: whole frames into the opener's buffer; only
                // a frame whose MAC checks reaches the loader.
                let space = opener.space
                n = try read(into: space.baseAddress!, cap: min(space.count, Self.chunk))
                if n == 0 {
                    guard opener.atBoundary else {
                        throw MKError(.truncated, "the stream ended inside authenticated frame \(opener.sequence)")
                    }
                    try loader.finish()
                    return
                }
                try opener.commit(n) { (payload) throws(MKError) in
                    try loader.consume(payload)
                    consumed += UInt64(payload.count)
                }
            } else if let span = loader.directSpan(limit: Self.directChunk) {
                // Page data: read it straight into guest memory (the
                // kernel's copy is the only one; the loader hashes it in
                // place while it is in cache), together with what follows
                // up to the next record's payload, into the buffer.
                n = try read(into: span.target, cap: span.count, thenInto: buf, cap: min(span.tail, Self.chunk))
                if n == 0 {
                    try loader.finish()
                    return
                }
                let direct = min(n, span.count)
                try loader.consumeInPlace(direct)
                if n > direct { try loader.consume(UnsafeRawBufferPointer(start: buf, count: n - direct)) }
                consumed += UInt64(n)
            } else {
                // Elsewhere read a whole chunk, but after page data stop at
                // the next record's payload, so that it can go direct; and
                // never past the stream header: what follows it may be
                // sealed frames, which must not reach the loader unopened.
                let cap = min(loader.headerBytesWanted ?? loader.bytesBeforeNextPayload ?? Self.chunk, Self.chunk)
                n = try read(into: buf, cap: cap)
                if n == 0 {
                    try loader.finish()
                    return
                }
                try loader.consume(UnsafeRawBufferPointer(start: buf, count: n))
                consumed += UInt64(n)
            }
            if !greeted && loader.headerAccepted {
                // The source waits for this before it sends any page: it
                // learns that the header was accepted, the channel's round
                // trip and what the VMM will spend after END.
                let sealed = try checkAuthentication(loader.acceptedHeader!)
                try path.send(Hello.encode(resumeCostUs: config.resumeCostUs) + sealed.frame)
                opener = sealed.opener
                greeted = true
            }
            // Tell the source how far we are and when, so it can count what
            // still sits in buffers between us, in time: every 64 KiB while
            // the stream flows, and once it has been quiet for 10 ms
            // (flushProgressWhileIdle).
            if consumed - reported >= Self.progressEvery && !loader.isComplete {
                path.sendProgress(report())
                reported = consumed
            }
        }
    }

    /// Once the guest is paused, whether this thread gets a CPU is part of
    /// the downtime: read the wait when the first paused record arrived and
    /// at END (only then: each reading is a system call, and these reads
    /// are all inside the downtime).
    private func timeStoppedCPUWait() {
        guard loader.sawStopped, stoppedCpuWaitNs == nil else { return }
        if stoppedWaitStart == nil { stoppedWaitStart = cpuWaitNs() }
        guard loader.isComplete, let start = stoppedWaitStart, let now = cpuWaitNs() else { return }
        stoppedCpuWaitNs = now >= start ? now - start : 0
    }

    /// The header's AUTH flag must match this side's key. With both, pick
    /// this side's nonce, derive the session key and return the nonce frame
    /// that goes out after the hello, and the opener for what follows.
    private func checkAuthentication(_ accepted: (header: StreamHeader, bytes: [UInt8])) throws(MKError)
        -> (frame: [UInt8], opener: StreamOpener?) {
        switch (config.authKey, accepted.header.authenticated) {
        case (nil, false):
            return ([], nil)
        case (nil, true):
            throw MKError(.auth, "the source authenticates its stream but this destination has no auth_key: "
                + "set the same pre-shared key on both sides")
        case (_?, false):
            throw MKError(.auth, "this destination requires an authenticated stream (auth_key is set) "
                + "but the source sent a plain one: set the same auth_key on the source")
        case (let psk?, true):
            let nonce = try StreamAuth.nonce()
            let key = StreamAuth.sessionKey(psk: psk, sourceNonce: accepted.header.nonce, destinationNonce: nonce,
                                            header: accepted.bytes)
            path.setSessionKey(key)
            return (SealFrame.encode(SealFrame.nonceMagic, nonce), StreamOpener(sessionKey: key))
        }
    }

    private func report() -> ProgressReport {
        let stats = loader.stats
        let ps = stats.zeroPages > 0 ? stats.zeroNs * 1000 / stats.zeroPages : 0
        return ProgressReport(consumed: consumed, destinationUs: UInt32(truncatingIfNeeded: nowNs() / 1000),
                              zeroPagePs: UInt32(clamping: ps))
    }

    private func read(into a: UnsafeMutableRawPointer, cap alen: Int,
                      thenInto b: UnsafeMutableRawPointer, cap blen: Int) throws(MKError) -> Int {
        flushProgressWhileIdle()
        return try transport.read(into: a, cap: alen, thenInto: b, cap: blen)
    }

    private func read(into buf: UnsafeMutableRawPointer, cap: Int) throws(MKError) -> Int {
        flushProgressWhileIdle()
        return try transport.read(into: buf, cap: cap)
    }

    /// Before a blocking read: if the stream stays quiet for 10 ms while
    /// loaded bytes are unreported, or a report is still waiting for room,
    /// send it, and retry until it went out. The last report before a quiet
    /// stretch must arrive: without it the source counts what we loaded
    /// long ago (and the ZERO pages in it, at their cost) as backlog for as
    /// long as the quiet lasts, and an idle guest's expected downtime
    /// stayed above its target for good.
    private func flushProgressWhileIdle() {
        guard !loader.isComplete else { return }
        while transport.carriesProgress && (path.hasUnsentProgress || consumed > reported) {
            guard transport.waitQuiet(ms: 10) else { return }
            if consumed > reported {
                path.sendProgress(report())
                reported = consumed
            } else {
                path.flushProgress()
            }
        }
    }
}
