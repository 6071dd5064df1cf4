import Glibc
import MigrationKit

public struct LinkConfig: Sendable {
    /// Drain rate, B/s. Change it while running with `LinkModel.setBandwidth`.
    public var bytesPerSecond: Double = 1e9
    /// Send buffer (socket buffers, NIC queues): writes up to this much
    /// return at once; the writer blocks only while it is full.
    public var bufferBytes: UInt64 = 256 << 10
    /// One-way latency.
    public var latencyNs: UInt64 = 100_000
    /// Windows (seconds after the start) in which nothing drains.
    public var stalls: [Stall] = []
    /// A stall of `stallSeconds` every `periodSeconds`, from `phaseSeconds`.
    public var periodicStall: PeriodicStall?
    /// Fail every write once this many bytes were accepted (a broken link).
    public var failAfterBytes: UInt64?
    /// Drain-rate changes over time (`bytesPerSecond` is the rate before
    /// the first one).
    public var bandwidthChanges: [RateStep] = []

    public struct Stall: Sendable, Equatable {
        public var startSeconds: Double
        public var endSeconds: Double
        public init(startSeconds: Double, endSeconds: Double) {
            self.startSeconds = startSeconds
            self.endSeconds = endSeconds
        }
    }

    public struct PeriodicStall: Sendable, Equatable {
        public var periodSeconds: Double
        public var stallSeconds: Double
        public var phaseSeconds: Double
        public init(periodSeconds: Double, stallSeconds: Double, phaseSeconds: Double = 0) {
            self.periodSeconds = periodSeconds
            self.stallSeconds = stallSeconds
            self.phaseSeconds = phaseSeconds
        }
    }

    public init() {}
}

/// The channel from source to destination. Bytes go into a send buffer at
/// once while it has room and drain at the link's rate (nothing drains in a
/// stall); a write blocks, in virtual time, until its last byte is in the
/// buffer. The bytes themselves go straight to the destination's loader,
/// in order, so every simulated migration is checked end to end.
public final class LinkModel {
    public let clock: VirtualClock
    public let destination: Destination
    public private(set) var bytesPerSecond: Double
    public let bufferBytes: UInt64
    public let latencyNs: UInt64

    /// Bytes in the send buffer now.
    public var buffered: Double {
        update(to: clock.now)
        return level
    }
    private var level: Double = 0
    public private(set) var acceptedBytes: UInt64 = 0
    public private(set) var drainedBytes: Double = 0
    public private(set) var writes: UInt64 = 0
    /// Virtual time writers spent blocked on a full buffer (and waiting for
    /// the ack to come back).
    public private(set) var blockedNs: UInt64 = 0
    /// (elapsed ns, B/s) for every bandwidth change.
    public private(set) var bandwidthHistory: [(ns: UInt64, bytesPerSecond: Double)] = []
    /// Set to break the link: every later write and read fails.
    public var broken: MKError?
    /// A blocked write or read gives up with a transport error when this
    /// says so (production: cancel shuts the socket down).
    public var interrupted: () -> Bool = { false }

    private let stalls: [(start: UInt64, end: UInt64)]
    private let periodic: (period: UInt64, length: UInt64, phase: UInt64)?
    private let failAfterBytes: UInt64?
    private var lastNs: UInt64
    private var deliveries: [(consumed: Double, ns: UInt64)] = []

    public init(_ config: LinkConfig, clock: VirtualClock, destination: Destination) {
        self.clock = clock
        self.destination = destination
        bytesPerSecond = config.bytesPerSecond
        bufferBytes = max(config.bufferBytes, 4096)
        latencyNs = config.latencyNs
        stalls = config.stalls.map { (clock.ns(atSeconds: $0.startSeconds), clock.ns(atSeconds: $0.endSeconds)) }
            .filter { $0.1 > $0.0 }.sorted { $0.0 < $1.0 }
        if let p = config.periodicStall, p.periodSeconds > 0, p.stallSeconds > 0 {
            periodic = (UInt64(p.periodSeconds * 1e9), UInt64(min(p.stallSeconds, p.periodSeconds) * 1e9),
                        clock.ns(atSeconds: p.phaseSeconds))
        } else {
            periodic = nil
        }
        failAfterBytes = config.failAfterBytes
        lastNs = clock.now
        bandwidthHistory.append((0, bytesPerSecond))
        for step in config.bandwidthChanges {
            clock.schedule(atSeconds: step.atSeconds) { [unowned self] in setBandwidth(step.bytesPerSecond) }
        }
    }

    /// Change the drain rate from now on.
    public func setBandwidth(_ bps: Double) {
        update(to: clock.now)
        bytesPerSecond = bps
        bandwidthHistory.append((clock.elapsedNs, bps))
    }

    // MARK: stalls

    /// If `t` is inside a stall, when that stall ends.
    private func stallEnd(at t: UInt64) -> UInt64? {
        var end: UInt64?
        for s in stalls where s.start <= t && t < s.end { end = max(end ?? 0, s.end) }
        if let p = periodic, t >= p.phase {
            let into = (t - p.phase) % p.period
            if into < p.length { end = max(end ?? 0, t - into + p.length) }
        }
        return end
    }

    /// The first stall start after `t`.
    private func nextStallStart(after t: UInt64) -> UInt64? {
        var next = stalls.first { $0.start > t }?.start
        if let p = periodic {
            let start = t < p.phase ? p.phase : t - (t - p.phase) % p.period + p.period
            next = min(next ?? .max, start)
        }
        return next
    }

    /// True if no byte drains at `t`.
    public func isStalled(atNs t: UInt64) -> Bool { stallEnd(at: t) != nil || bytesPerSecond <= 0 }

    /// Drain the buffer up to time `t`.
    private func update(to t: UInt64) {
        var cur = lastNs
        while cur < t && level > 0 {
            if let e = stallEnd(at: cur) {
                cur = min(e, t)
                continue
            }
            let segEnd = min(t, nextStallStart(after: cur) ?? t)
            let d = min(level, bytesPerSecond * Double(segEnd - cur) / 1e9)
            level -= d
            drainedBytes += d
            cur = segEnd
        }
        if level < 1e-6 { level = 0 }
        if t > lastNs && drainedBytes > (deliveries.last?.consumed ?? 0) {
            deliveries.append((drainedBytes, t))
        }
        lastNs = max(lastNs, t)
    }

    /// (stream bytes that reached the destination, absolute ns), in order,
    /// since the last call: what its progress reports say.
    public func takeDeliveries() -> [(consumed: Double, ns: UInt64)] {
        update(to: clock.now)
        defer { deliveries.removeAll() }
        return deliveries
    }

    /// Block (in virtual time) until at most `limit` bytes are buffered.
    private func waitUntil(atMost limit: Double) throws(MKError) {
        while true {
            let now = clock.now
            update(to: now)
            if level <= limit + 1e-3 { return }
            if let broken { throw broken }
            var target: UInt64
            if let e = stallEnd(at: now) {
                target = e
            } else if bytesPerSecond > 0 {
                target = now + UInt64(((level - limit) / bytesPerSecond * 1e9).rounded(.up))
                if let s = nextStallStart(after: now) { target = min(target, s) }
            } else if let a = clock.nextActionNs {
                target = a  // maybe an action brings the link back
            } else {
                throw MKError(.transport, "the link has no bandwidth and nothing will change that")
            }
            if let a = clock.nextActionNs, a > now { target = min(target, a) }
            target = max(target, now + 1)
            blockedNs += target - now
            clock.advance(to: target)
            if interrupted() { throw MKError(.transport, "write interrupted: the channel was shut down") }
        }
    }

    /// Time by which everything written so far will have left the buffer
    /// and reached the destination, if nothing changes.
    public func quietAt() -> UInt64 {
        update(to: clock.now)
        var t = clock.now
        var left = level
        while left > 0 {
            if let e = stallEnd(at: t) { t = e; continue }
            guard bytesPerSecond > 0 else { return .max }
            let need = UInt64((left / bytesPerSecond * 1e9).rounded(.up))
            if let s = nextStallStart(after: t), s < t + need {
                left -= bytesPerSecond * Double(s - t) / 1e9
                t = s
            } else {
                t += need
                left = 0
            }
        }
        return t + latencyNs
    }

    // MARK: the transport

    /// Write every byte of `iov`: hand it to the destination, then block
    /// until the last byte fits in the send buffer.
    public func write(_ iov: UnsafePointer<iovec>, count: Int) throws(MKError) {
        if let broken { throw broken }
        var total: UInt64 = 0
        for i in 0..<count { total += UInt64(iov[i].iov_len) }
        // Bytes that get through before a configured failure.
        var room = failAfterBytes.map { $0 - min(acceptedBytes, $0) } ?? .max
        for i in 0..<count where iov[i].iov_len > 0 && room > 0 {
            let n = min(UInt64(iov[i].iov_len), room)
            room -= n
            do throws(MKError) {
                try destination.receive(UnsafeRawBufferPointer(start: iov[i].iov_base, count: Int(n)))
            } catch {
                throw MKError(.transport, "the destination closed the connection: \(error.message)")
            }
        }
        try transmit(bytes: total)
    }

    /// The timing of a write of `bytes` (no bytes delivered): returns once
    /// the last byte is in the send buffer. Fails, and breaks the link, if
    /// it would cross `failAfterBytes`.
    public func transmit(bytes total: UInt64) throws(MKError) {
        if let broken { throw broken }
        if let limit = failAfterBytes, acceptedBytes + total > limit {
            acceptedBytes = max(acceptedBytes, limit)
            let e = MKError(.transport, "connection reset after \(limit) bytes")
            broken = e
            throw e
        }
        writes += 1
        var left = Double(total)
        let cap = Double(bufferBytes)
        while left > 0 {
            let chunk = min(left, cap)
            try waitUntil(atMost: cap - chunk)
            level += chunk
            left -= chunk
        }
        acceptedBytes += total
    }

    /// Wait for the destination's acknowledgement: until the stream has
    /// drained and crossed the link, the destination has resumed the guest
    /// (or failed), and the answer has come back. Throws like a socket:
    /// .timedOut past `timeoutMs`, .transport if broken or interrupted.
    public func readAck(timeoutMs: Int) throws(MKError) -> [UInt8] {
        if let broken { throw broken }
        let t0 = clock.now
        let deadline = t0 + UInt64(max(timeoutMs, 0)) * 1_000_000
        try waitUntil(atMost: 0)
        let atDestination = clock.now + latencyNs
        guard let status = destination.answer(streamArrivedAtNs: atDestination) else {
            try wait(until: deadline)
            throw MKError(.timedOut, "no acknowledgement from the destination within \(timeoutMs) ms")
        }
        let ackAt = atDestination + (status == 0 ? destination.resumeNs : 0) + latencyNs
        if ackAt > deadline {
            try wait(until: deadline)
            throw MKError(.timedOut, "no acknowledgement from the destination within \(timeoutMs) ms")
        }
        try wait(until: ackAt)
        let resumeUs = status == 0 ? UInt32(clamping: destination.resumeNs / 1000) : 0
        return Ack.encode(AckReply(status: status, timestampNs: ackAt - latencyNs, resumeUs: resumeUs))
    }

    /// The destination's hello: one round trip after the stream header.
    public func readHello() throws(MKError) -> UInt64 {
        if let broken { throw broken }
        try wait(until: clock.now + 2 * latencyNs)
        return destination.resumeNs / 1000
    }

    private func wait(until t: UInt64) throws(MKError) {
        while clock.now < t {
            var step = t
            if let a = clock.nextActionNs, a > clock.now { step = min(step, a) }
            blockedNs += step - clock.now
            clock.advance(to: step)
            if let broken { throw broken }
            if interrupted() { throw MKError(.transport, "read interrupted: the channel was shut down") }
        }
    }
}

/// The destination: its own guest memory and a real StreamLoader.
public final class Destination {
    public struct Region {
        public let host: UnsafeMutableRawPointer
        public let size: UInt64
    }

    public let regions: [Region]
    public private(set) var loader: StreamLoader!
    /// Device-state blobs the loader handed over.
    public private(set) var deviceStates: [[UInt8]] = []
    /// The first error the loader raised.
    public private(set) var error: MKError?
    public private(set) var bytesReceived: UInt64 = 0
    /// Answer the stream with this (negative MK_E*) status instead of 0.
    public var rejectStatus: Int32?
    /// Fail loading the device state with this error.
    public var loadDeviceError: MKError?
    /// From the end of the stream to the guest running here.
    public var resumeNs: UInt64
    /// Absolute virtual time the guest started running here (ack status 0).
    public private(set) var resumedAtNs: UInt64?

    public init(_ source: [GuestRegion], resumeNs: UInt64 = 1_000_000) {
        self.resumeNs = resumeNs
        regions = source.map { r in Region(host: SimMemory.zeroed(Int(r.size)), size: r.size) }
        let loaderRegions = zip(source, regions).map { s, d in
            LoaderRegion(host: d.host, guestPhysAddr: s.guestPhysAddr, size: s.size, granularity: s.granularity)
        }
        loader = StreamLoader(regions: loaderRegions) { [unowned self] (blob) throws(MKError) in
            if let e = self.loadDeviceError { throw e }
            self.deviceStates.append(Array(blob))
        }
    }

    deinit { regions.forEach { SimMemory.release($0.host, Int($0.size)) } }

    public var isComplete: Bool { loader.isComplete }

    /// Feed bytes to the loader; after an error every call throws it.
    public func receive(_ bytes: UnsafeRawBufferPointer) throws(MKError) {
        if let error { throw error }
        bytesReceived += UInt64(bytes.count)
        do throws(MKError) {
            try loader.consume(bytes)
        } catch {
            self.error = error
            throw error
        }
    }

    /// The ack status once the whole stream is in, or nil if there is
    /// nothing to answer (END never arrived: the destination keeps waiting).
    func answer(streamArrivedAtNs t: UInt64) -> Int32? {
        if let error { return error.code.rawValue }
        guard loader.isComplete else { return nil }
        if let s = rejectStatus { return s }
        if resumedAtNs == nil { resumedAtNs = t + resumeNs }
        return 0
    }

    /// True when the guest runs (or will run) here.
    public var guestRunning: Bool { resumedAtNs != nil }
}
