import CShim
import Glibc

struct DestCallbacks: @unchecked Sendable {
    var c: mk_dest_callbacks
    var user: UnsafeMutableRawPointer? { c.user }
}

/// The object behind an mk_dest handle: regions, then one blocking run that
/// reads the stream and feeds the loader, then the acknowledgement.
final class DestSession: @unchecked Sendable {
    private struct State {
        var regions: [GuestRegion] = []
        var status = MigrationStatus.none
        var error: Int32 = 0
        var loader: StreamLoader?
        var acked = false
        var cancelled = false
        var startNs: UInt64 = 0
        var endNs: UInt64 = 0
        var deviceLoadNs: UInt64 = 0
        var endToAckNs: UInt64 = 0
        var prefaultNs: UInt64 = 0
        /// config->transport_fd, or what mk_dest_set_transport_fd set.
        var fd: Int32 = -1
    }

    let config: mk_dest_config
    let callbacks: DestCallbacks
    /// The pre-shared key (copied from the config): the stream must be
    /// authenticated with it. nil: only plain streams are accepted.
    let authKey: [UInt8]?
    /// An authenticated stream's session key, once the nonces are exchanged;
    /// only touched by the thread in mk_dest_run.
    private var sessionKey: [UInt8]?
    let errors = ErrorSlot()
    private let state = Locked(State())
    /// Reads of at most 256 KiB, each followed by a progress report once
    /// 64 KiB more were loaded: the source times its stretches of stream
    /// between reports, so they must come several per MiB.
    static let chunk = 256 << 10
    /// Page data read straight into guest memory, then hashed in place:
    /// at most 256 KiB per read too (a whole PAGES record from our source),
    /// so progress reports keep their cadence.
    static let directChunk = 256 << 10
    static let progressEvery: UInt64 = 64 << 10
    /// Only touched by the thread in mk_dest_run.
    private var unsentProgress: [UInt8] = []
    /// The transport fd (-1: callbacks), fixed when mk_dest_run starts;
    /// only read after that (by the run, then by mk_dest_ack).
    private var fd: Int32 = -1
    /// A pipe (any fd that is not a socket) cannot be shut down: cancel
    /// wakes this instead, and reads on such an fd wait in poll() for data
    /// or this (sockets keep the plain read: shutdown ends it).
    private let wakeFd: Int32 = {
        let w = cshim_wake_fd_new()
        return w >= 0 ? w : -1
    }()
    private var fdIsSocket = true

    init(config: mk_dest_config, callbacks: DestCallbacks, authKey: [UInt8]? = nil) {
        self.config = config
        self.callbacks = callbacks
        self.authKey = authKey
        state.withLock { $0.fd = config.transport_fd }
    }

    /// mk_dest_set_transport_fd: the connection may come after the handle
    /// (a VMM prefaults and listens first).
    func setTransportFd(_ newFd: Int32) throws(MKError) {
        guard newFd >= 0 else { throw MKError(.invalid, "fd must be >= 0, got \(newFd)") }
        try state.withLock { (s) throws(MKError) in
            guard s.status == .none else { throw MKError(.state, "the transport is fixed once mk_dest_run started") }
            s.fd = newFd
        }
    }

    var manualAck: Bool { config.flags & MK_DEST_MANUAL_ACK.rawValue != 0 }

    func addRegion(_ r: GuestRegion) throws(MKError) -> UInt32 {
        let outcome: Result<UInt32, MKError> = state.withLock { s in
            guard s.status == .none else { return .failure(MKError(.state, "regions must be added before mk_dest_run")) }
            do throws(MKError) { try GuestRegion.validate(r, against: s.regions) } catch { return .failure(error) }
            s.regions.append(r)
            return .success(UInt32(s.regions.count - 1))
        }
        return try outcome.get()
    }

    /// Fault the registered memory in (see mk_dest_prefault). Regions are
    /// fixed once mk_dest_run starts, so reading them under the lock and
    /// working without it is safe alongside a running load.
    func prefault() throws(MKError) {
        let regions: [GuestRegion] = try state.withLock { (s) throws(MKError) in
            guard s.status == .none || s.status == .active else {
                throw MKError(.state, "mk_dest_prefault after mk_dest_run returned")
            }
            guard !s.regions.isEmpty else { throw MKError(.invalid, "no guest memory registered (mk_dest_add_region)") }
            return s.regions
        }
        let t0 = cshim_monotonic_ns()
        for (i, r) in regions.enumerated() {
            let rc = cshim_populate_write(r.host, Int(r.size))
            if rc == -ENOMEM {
                throw MKError(.noMemory, "prefaulting region \(i) (\(r.size >> 20) MiB): the kernel could not back it")
            }
            if rc < 0 { throw MKError(.invalid, "prefaulting region \(i): \(String(cString: strerror(-rc)))") }
        }
        let spent = cshim_monotonic_ns() - t0
        state.withLock { $0.prefaultNs += spent }
    }

    func run() throws(MKError) {
        let cb = callbacks
        let setup: Result<StreamLoader, MKError> = state.withLock { s in
            guard s.status == .none else { return .failure(MKError(.state, "mk_dest_run may be called once per handle")) }
            guard !s.regions.isEmpty else { return .failure(MKError(.invalid, "no guest memory registered (mk_dest_add_region)")) }
            guard s.fd >= 0 || cb.c.read != nil else {
                return .failure(MKError(.invalid, "no transport: set config->transport_fd, callbacks->read or mk_dest_set_transport_fd"))
            }
            fd = s.fd
            fdIsSocket = s.fd < 0 || cshim_is_socket(s.fd) != 0
            let l = StreamLoader(
                regions: s.regions,
                loadDevice: { [unowned self] (blob) throws(MKError) in
                    guard let f = cb.c.load_device_state else {
                        throw MKError(.invalid, "the stream carries device state but load_device_state is not set")
                    }
                    let t0 = cshim_monotonic_ns()
                    let rc = f(cb.user, blob.baseAddress, blob.count)
                    let spent = cshim_monotonic_ns() - t0
                    state.withLock { $0.deviceLoadNs += spent }
                    if rc < 0 { throw MKError(.callback, "load_device_state returned \(rc)") }
                })
            l.clock = { cshim_monotonic_ns() }
            s.loader = l
            s.status = .active
            s.startNs = cshim_monotonic_ns()
            return .success(l)
        }
        let l = try setup.get()
        do throws(MKError) {
            try receive(into: l)
            state.withLock {
                $0.status = .completed
                if $0.endNs == 0 { $0.endNs = cshim_monotonic_ns() }
            }
            if !manualAck { try ack(status: 0) }
        } catch {
            let e = state.withLock { s -> MKError in
                s.status = s.cancelled ? .cancelled : .failed
                s.endNs = cshim_monotonic_ns()
                let e = s.cancelled && error.code != .canceled
                    ? MKError(.canceled, "cancelled by mk_dest_cancel (\(error.message))") : error
                s.error = e.code.rawValue
                return e
            }
            // Tell a source that waits for the ack, so it resumes its guest
            // at once instead of timing out. Best effort: the channel may be
            // what failed.
            try? sendAck(status: e.code.rawValue)
            // Then end the stream on a socket: a sender still writing learns
            // through its write too, whether or not it reads the channel.
            // The fd stays open: the VMM closes it.
            if fd >= 0 && cshim_is_socket(fd) != 0 { _ = cshim_shutdown(fd) }
            errors.seal(e.message)
            throw e
        }
    }

    private func receive(into loader: StreamLoader) throws(MKError) {
        let buf = UnsafeMutableRawPointer.allocate(byteCount: Self.chunk, alignment: 64)
        defer { buf.deallocate() }
        activeLoader = loader
        defer { activeLoader = nil }
        var greeted = false
        var opener: StreamOpener?
        while !loader.isComplete {
            if state.withLock({ $0.cancelled }) { throw MKError(.canceled, "cancelled by mk_dest_cancel") }
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
                try sendReturn(Hello.encode(resumeCostUs: config.resume_cost_us) + sealed.frame)
                opener = sealed.opener
                greeted = true
            }
            // Tell the source how far we are and when, so it can count what
            // still sits in buffers between us, in time: every 64 KiB while
            // the stream flows, and once it has been quiet for 10 ms
            // (flushProgressWhileIdle).
            if consumed - reported >= Self.progressEvery && !loader.isComplete {
                sendProgress(report(consumed: consumed, stats: loader.stats))
                reported = consumed
            }

        }
        state.withLock { $0.endNs = cshim_monotonic_ns() }
    }

    /// The header's AUTH flag must match this side's key. With both, pick
    /// this side's nonce, derive the session key and return the nonce frame
    /// that goes out after the hello, and the opener for what follows.
    private func checkAuthentication(_ accepted: (header: StreamHeader, bytes: [UInt8])) throws(MKError)
        -> (frame: [UInt8], opener: StreamOpener?) {
        switch (authKey, accepted.header.authenticated) {
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
            sessionKey = key
            return (SealFrame.encode(SealFrame.nonceMagic, nonce), StreamOpener(sessionKey: key))
        }
    }

    private func report(consumed: UInt64, stats: LoaderStats) -> ProgressReport {
        let ps = stats.zeroPages > 0 ? stats.zeroNs * 1000 / stats.zeroPages : 0
        return ProgressReport(consumed: consumed, destinationUs: UInt32(truncatingIfNeeded: cshim_monotonic_ns() / 1000),
                              zeroPagePs: UInt32(clamping: ps))
    }

    /// Read into `a` (cap `alen`), and past it into `b` (cap `blen`) where
    /// the transport allows (an fd: one readv; the read callback fills `a`
    /// only).
    private func read(into a: UnsafeMutableRawPointer, cap alen: Int,
                      thenInto b: UnsafeMutableRawPointer, cap blen: Int) throws(MKError) -> Int {
        guard fd >= 0 else { return try read(into: a, cap: alen) }
        flushProgressWhileIdle()
        try waitReadable()
        let n = cshim_read2(fd, a, alen, b, blen)
        if n < 0 { throw MKError(.transport, "read on fd \(fd): \(String(cString: strerror(Int32(-n))))") }
        return n
    }

    private func read(into buf: UnsafeMutableRawPointer, cap: Int) throws(MKError) -> Int {
        if fd >= 0 {
            flushProgressWhileIdle()
            try waitReadable()
            let n = cshim_read_some(fd, buf, cap)
            if n < 0 { throw MKError(.transport, "read on fd \(fd): \(String(cString: strerror(Int32(-n))))") }
            return n
        }
        guard let f = callbacks.c.read else { throw MKError(.invalid, "no transport: read callback missing") }
        var got = 0
        let rc = f(callbacks.user, buf, cap, &got)
        if rc < 0 { throw MKError(.transport, "read callback returned \(rc)") }
        guard got <= cap else { throw MKError(.callback, "read callback reported \(got) bytes for a \(cap)-byte buffer") }
        return got
    }

    /// Before a read on a pipe: wait for data, or for mk_dest_cancel.
    private func waitReadable() throws(MKError) {
        guard !fdIsSocket, wakeFd >= 0 else { return }
        if cshim_wait_readable(fd, wakeFd) == -ECANCELED {
            throw MKError(.canceled, "cancelled by mk_dest_cancel")
        }
    }

    deinit { if wakeFd >= 0 { close(wakeFd) } }

    func ack(status: Int32) throws(MKError) {
        guard status <= 0 else { throw MKError(.invalid, "ack status must be 0 or a negative MK_E* code, got \(status)") }
        let ok: Bool = state.withLock { s in
            guard s.status == .completed, !s.acked else { return false }
            s.acked = true
            return true
        }
        guard ok else { throw MKError(.state, "nothing to acknowledge: mk_dest_run has not completed, or the ack was sent") }
        try sendAck(status: status)
    }

    private func sendAck(status: Int32) throws(MKError) {
        let now = cshim_monotonic_ns()
        let sinceEnd: UInt64 = state.withLock { s in
            guard s.status == .completed, s.endNs > 0 else { return 0 }
            s.endToAckNs = now - s.endNs
            return s.endToAckNs
        }
        let reply = AckReply(status: status, timestampNs: now, resumeUs: UInt32(clamping: sinceEnd / 1000))
        let ack = Ack.encode(reply)
        // On an authenticated stream the source believes only a tagged ack.
        let tag = sessionKey.map { SealFrame.encode(SealFrame.ackTagMagic, StreamAuth.ackTag(sessionKey: $0, ack: ack)) } ?? []
        try sendReturn(unsentProgress + ack + tag)
        unsentProgress = []
    }

    /// Progress must never block the loader: a source busy writing the
    /// stream reads the return channel only now and then, and a loader
    /// blocked on a full return channel would stop reading the stream the
    /// source is blocked on. So progress goes out without waiting, only on a
    /// socket fd (a VMM's write callback may block), and is skipped when
    /// there is no room. The tail of a frame the socket took only in part is
    /// kept and goes first next time, so the frames stay whole.
    /// A frame none of which went out is replaced by the newer report (it
    /// says more), and flushProgressWhileIdle retries it when the stream
    /// pauses: the last report before a quiet stretch must arrive, or the
    /// source counts what we already loaded as backlog for as long as the
    /// quiet lasts.
    private func sendProgress(_ report: ProgressReport) {
        let fd = fd
        guard fd >= 0, cshim_is_socket(fd) != 0 else { return }
        if unsentProgress.isEmpty || unsentProgress.count == ReturnMessage.size {
            unsentProgress = Progress.encode(report)
        }
        flushProgress()
    }

    private func flushProgress() {
        let n = unsentProgress.withUnsafeBytes { cshim_send_nowait(fd, $0.baseAddress, $0.count) }
        if n > 0 { unsentProgress.removeFirst(n) }
    }

    /// Stream bytes loaded, and covered by the last progress report; the
    /// loader being fed. Only touched by the thread in mk_dest_run.
    private var consumed: UInt64 = 0
    private var reported: UInt64 = 0
    private var activeLoader: StreamLoader?

    /// Before a blocking read on a socket: if the stream stays quiet for
    /// 10 ms while loaded bytes are unreported, or a report is still
    /// waiting for room, send it, and retry until it went out. The last
    /// report before a quiet stretch must arrive: without it the source
    /// counts what we loaded long ago (and the ZERO pages in it, at their
    /// cost) as backlog for as long as the quiet lasts, and an idle guest's
    /// expected downtime stayed above its target for good.
    private func flushProgressWhileIdle() {
        guard let loader = activeLoader, !loader.isComplete else { return }
        while fdIsSocket && (!unsentProgress.isEmpty || consumed > reported) {
            guard cshim_wait_readable_ms(fd, wakeFd, 10) == -ETIMEDOUT else { return }
            if consumed > reported {
                sendProgress(report(consumed: consumed, stats: loader.stats))
                reported = consumed
            } else {
                flushProgress()
            }
        }
    }

    /// One frame back to the source, if the channel goes both ways.
    private func sendReturn(_ bytes: [UInt8]) throws(MKError) {
        try withBytes(bytes) { (raw) throws(MKError) in
            var v = iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress!), iov_len: raw.count)
            if fd >= 0 {
                // A pipe carries the stream one way only: nothing to ack on.
                guard cshim_is_socket(fd) != 0 else { return }
                let rc = cshim_writev_all(fd, &v, 1)
                if rc < 0 { throw MKError(.transport, "sending the acknowledgement: \(String(cString: strerror(-rc)))") }
            } else if let f = callbacks.c.write {
                let rc = withUnsafePointer(to: &v) {
                    UnsafeRawPointer($0).withMemoryRebound(to: mk_iovec.self, capacity: 1) { f(callbacks.user, $0, 1) }
                }
                if rc < 0 { throw MKError(.transport, "write callback returned \(rc) for the acknowledgement") }
            }
        }
    }

    /// Before mk_dest_run the cancel is remembered: the run then ends at
    /// once with MK_ECANCELED (and tells the source), never lost.
    func cancel() throws(MKError) {
        let running: Bool = try state.withLock { (s) throws(MKError) in
            switch s.status {
            case .none:
                s.cancelled = true
                return false
            case .active:
                s.cancelled = true
                return true
            default:
                throw MKError(.state, "mk_dest_run has already returned")
            }
        }
        guard running else { return }
        let current = state.withLock { $0.fd }
        if current >= 0 { _ = cshim_shutdown(current) }
        if wakeFd >= 0 { cshim_wake(wakeFd) }
    }

    func stats() -> mk_dest_stats {
        state.withLock { s in
            var o = CStruct.fresh(mk_dest_stats())
            o.status = s.status.rawValue
            o.error = s.error
            if let ls = s.loader?.stats {
                o.bytes_received = ls.bytes
                o.pages_loaded = ls.pagesLoaded
                o.zero_pages = ls.zeroPages
                o.records = ls.records
                o.device_state_bytes = ls.deviceStateBytes
                o.zero_load_us = ls.zeroNs / 1000
                o.zero_pages_cleared = ls.zeroPagesCleared
            }
            o.device_load_us = s.deviceLoadNs / 1000
            o.end_to_ack_us = s.endToAckNs / 1000
            o.prefault_us = s.prefaultNs / 1000
            if s.startNs > 0 {
                let end = s.endNs > 0 ? s.endNs : cshim_monotonic_ns()
                o.total_time_ms = (end - s.startNs) / 1_000_000
            }
            return o
        }
    }
}
