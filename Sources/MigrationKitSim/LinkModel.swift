import Glibc
import MigrationKit

package struct LinkConfig: Sendable {
    /// Drain rate, B/s. Change it while running with `LinkModel.setBandwidth`.
    package var bytesPerSecond: Double = 1e9
    /// Send buffer (socket buffers, NIC queues): writes up to this much
    /// return at once; the writer blocks only while it is full.
    package var bufferBytes: UInt64 = 256 << 10
    /// One-way latency.
    package var latencyNs: UInt64 = 100_000
    /// Windows (seconds after the start) in which nothing drains.
    package var stalls: [Stall] = []
    /// A stall of `stallSeconds` every `periodSeconds`, from `phaseSeconds`.
    package var periodicStall: PeriodicStall?
    /// Fail every write once this many bytes were accepted (a broken link).
    package var failAfterBytes: UInt64?
    /// The destination closes its return direction (shutdown(SHUT_WR))
    /// this many seconds after the start: it still reads the stream, but
    /// no report, hello or acknowledgement comes back from then on.
    package var returnClosesAtSeconds: Double?
    /// Drain-rate changes over time (`bytesPerSecond` is the rate before
    /// the first one).
    package var bandwidthChanges: [RateStep] = []

    package struct Stall: Sendable, Equatable {
        package var startSeconds: Double
        package var endSeconds: Double
        package init(startSeconds: Double, endSeconds: Double) {
            self.startSeconds = startSeconds
            self.endSeconds = endSeconds
        }
    }

    package struct PeriodicStall: Sendable, Equatable {
        package var periodSeconds: Double
        package var stallSeconds: Double
        package var phaseSeconds: Double
        package init(periodSeconds: Double, stallSeconds: Double, phaseSeconds: Double = 0) {
            self.periodSeconds = periodSeconds
            self.stallSeconds = stallSeconds
            self.phaseSeconds = phaseSeconds
        }
    }

    package init() {}
}

/// The destination host's side of the timing: what loading the stream
/// costs there, how much it buffers, what it reports back. The defaults
/// are a free loader (the stream is loaded as it arrives), so scenarios
/// that do not set these are timed by the link alone.
package struct DestinationConfig: Sendable {
    /// Page data (PAGES payload) the loader copies per second; 0 = free.
    package var loaderBytesPerSecond: Double = 0
    /// A ZERO page the loader has to check and clear: memory it wrote
    /// (or, without `fresh`, memory already mapped).
    package var zeroPageTouchedNs: Double = 0
    /// A ZERO page of memory never touched, without `fresh`: the zero
    /// check reads it, which faults it in.
    package var zeroPageUntouchedNs: Double = 0
    /// Regions registered MK_REGION_FRESH: the real loader then clears
    /// only pages it wrote itself, and a ZERO page it never wrote is free.
    package var fresh = false
    /// The destination's memory was touched before the stream (pre-faulted):
    /// every ZERO page costs `zeroPageTouchedNs`.
    var memoryPreTouched = false
    /// Loading the device-state blob (load_device_state).
    package var deviceLoadNs: UInt64 = 0
    /// Stream bytes on the wire or received but not yet loaded: when this
    /// is full the link stops (TCP's receive window), the sender's buffer
    /// fills and its writes block.
    package var receiveBufferBytes: UInt64 = 6 << 20
    /// A progress report once this many more bytes were loaded, as
    /// DestSession does; nil = none (a destination without a socket).
    package var progressEveryBytes: UInt64? = 64 << 10
    /// What the VMM declares as its resume cost in the hello (nil = the
    /// real one, SimConfig.destinationResumeNs).
    var declaredResumeNs: UInt64?
    /// The destination's monotonic clock runs this far ahead of the
    /// source's: only differences between its timestamps mean anything.
    var clockOffsetNs: UInt64 = 987_654_321_000

    package init() {}
}

/// A piece of the stream as the destination's loader sees it: how long
/// loading it takes, and what it is.
struct StreamSegment {
    var bytes: Double
    var costNs: Double = 0
    var zeroPages: UInt64 = 0
    var zeroCostNs: Double = 0
    /// The last byte of the stream header (the hello goes out once loaded).
    var endsHeader = false
    /// The END record.
    var isEnd = false
}

/// Follows the stream's records (in any chunking) to price each byte for
/// the destination: page data at the loader's rate, ZERO pages by whether
/// the memory was touched, device state at its load time. It keeps the
/// destination's page states: written by the loader since the last ZERO
/// (what a fresh region's loader clears) and ever touched (mapped).
final class StreamTap {
    let config: DestinationConfig
    private let regionPages: [Int]
    private var written: [[UInt64]]
    private var touched: [[UInt64]]
    private var staging: [UInt8] = []
    private enum Phase { case streamHeader(total: Int?), recordHeader, payload(left: UInt64, isPages: Bool, device: Bool), done }
    private var phase = Phase.streamHeader(total: nil)
    private var pending: StreamSegment?
    static let maxSegment: Double = 65536

    init(regionSizes: [UInt64], config: DestinationConfig) {
        self.config = config
        regionPages = regionSizes.map { Int($0 / 4096) }
        written = regionPages.map { [UInt64](repeating: 0, count: ($0 + 63) / 64) }
        let fill: UInt64 = config.memoryPreTouched ? ~0 : 0
        touched = regionPages.map { [UInt64](repeating: fill, count: ($0 + 63) / 64) }
    }

    /// Price `count` bytes; segments come out through `emit`, in order.
    func consume(_ p: UnsafeRawBufferPointer, emit: (StreamSegment) -> Void) {
        var i = 0
        let n = p.count
        while i < n {
            switch phase {
            case .streamHeader(let total):
                staging.append(p[i])
                i += 1
                if total == nil && staging.count == 24 {
                    let count = Int(UInt32(staging[16]) | UInt32(staging[17]) << 8 | UInt32(staging[18]) << 16 | UInt32(staging[19]) << 24)
                    phase = .streamHeader(total: 24 + 24 * min(count, 4096) + 4)
                } else if let total, staging.count == total {
                    add(StreamSegment(bytes: Double(total), endsHeader: true), emit)
                    flush(emit)
                    staging.removeAll()
                    phase = .recordHeader
                }
            case .recordHeader:
                let take = min(32 - staging.count, n - i)
                staging.append(contentsOf: p[i..<(i + take)])
                i += take
                if staging.count == 32 { recordHeader(emit) }
            case .payload(let left, let isPages, let device):
                let take = min(UInt64(n - i), left)
                i += Int(take)
                var seg = StreamSegment(bytes: Double(take))
                if isPages && config.loaderBytesPerSecond > 0 {
                    seg.costNs = Double(take) / config.loaderBytesPerSecond * 1e9
                }
                let rest = left - take
                if device && rest == 0 { seg.costNs += Double(config.deviceLoadNs) }
                add(seg, emit)
                phase = rest == 0 ? .recordHeader : .payload(left: rest, isPages: isPages, device: device)
            case .done:
                add(StreamSegment(bytes: Double(n - i)), emit)
                i = n
            }
        }
        flush(emit)
    }

    private func recordHeader(_ emit: (StreamSegment) -> Void) {
        func u64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(staging[o + $1]) << (8 * UInt64($1)) } }
        let type = UInt16(staging[0]) | UInt16(staging[1]) << 8
        let flags = UInt16(staging[2]) | UInt16(staging[3]) << 8
        let region = Int(UInt32(staging[4]) | UInt32(staging[5]) << 8 | UInt32(staging[6]) << 16 | UInt32(staging[7]) << 24)
        let offset = u64(8), length = u64(16)
        staging.removeAll(keepingCapacity: true)
        let first = Int(offset / 4096), pages = Int(length / 4096)
        let valid = region < regionPages.count && first + pages <= regionPages[region]
        switch type {
        case 1:  // PAGES: the loader writes these pages
            if valid { mark(region, first, pages) }
            add(StreamSegment(bytes: 32), emit)
            let crcs: UInt64 = flags & 1 != 0 ? length / 4096 * 4 : 0
            phase = length + crcs > 0 ? .payload(left: length + crcs, isPages: true, device: false) : .recordHeader
        case 2:  // ZERO
            var seg = StreamSegment(bytes: 32, zeroPages: UInt64(pages))
            if valid { seg.zeroCostNs = zeroCost(region, first, pages) }
            seg.costNs = seg.zeroCostNs
            add(seg, emit)
            phase = .recordHeader
        case 3:  // DEVICE
            add(StreamSegment(bytes: 32), emit)
            phase = length > 0 ? .payload(left: length, isPages: false, device: true) : .recordHeader
            if length == 0 { add(StreamSegment(bytes: 0, costNs: Double(config.deviceLoadNs)), emit) }
        case 4:  // END
            add(StreamSegment(bytes: 32, isEnd: true), emit)
            flush(emit)
            phase = .done
        default:
            add(StreamSegment(bytes: 32), emit)
            phase = .done  // the real loader fails the stream; the rest is unpriced
        }
    }

    private func bit(_ a: [[UInt64]], _ r: Int, _ p: Int) -> Bool { a[r][p >> 6] & (1 << UInt64(p & 63)) != 0 }

    private func mark(_ r: Int, _ first: Int, _ pages: Int) {
        for p in first..<(first + pages) {
            written[r][p >> 6] |= 1 << UInt64(p & 63)
            touched[r][p >> 6] |= 1 << UInt64(p & 63)
        }
    }

    /// What loading ZERO over these pages costs, and its effect: on fresh
    /// memory the loader clears only what it wrote (and forgets it wrote
    /// it); otherwise it reads every page, faulting untouched ones in.
    private func zeroCost(_ r: Int, _ first: Int, _ pages: Int) -> Double {
        var cost = 0.0
        for p in first..<(first + pages) {
            let m: UInt64 = 1 << UInt64(p & 63)
            if config.fresh {
                if written[r][p >> 6] & m != 0 { cost += config.zeroPageTouchedNs }
            } else {
                cost += touched[r][p >> 6] & m != 0 ? config.zeroPageTouchedNs : config.zeroPageUntouchedNs
                touched[r][p >> 6] |= m
            }
            written[r][p >> 6] &= ~m
        }
        return cost
    }

    /// Merge small pieces into segments of up to 64 KiB; split big ones.
    private func add(_ s: StreamSegment, _ emit: (StreamSegment) -> Void) {
        var s = s
        while s.bytes > Self.maxSegment && !s.endsHeader && !s.isEnd {
            let part = Self.maxSegment / s.bytes
            var head = StreamSegment(bytes: Self.maxSegment, costNs: s.costNs * part)
            s.bytes -= Self.maxSegment
            s.costNs -= head.costNs
            if var p = pending {
                p.bytes += head.bytes; p.costNs += head.costNs
                head = p
                pending = nil
            }
            emit(head)
        }
        if var p = pending {
            p.bytes += s.bytes
            p.costNs += s.costNs
            p.zeroPages += s.zeroPages
            p.zeroCostNs += s.zeroCostNs
            p.endsHeader = p.endsHeader || s.endsHeader
            p.isEnd = p.isEnd || s.isEnd
            pending = p
        } else {
            pending = s
        }
        if let p = pending, p.bytes >= Self.maxSegment { flush(emit) }
    }

    func flush(_ emit: (StreamSegment) -> Void) {
        if let p = pending { emit(p) }
        pending = nil
    }
}

/// A progress report on its way back: what DestSession sends.
struct PendingReport {
    var report: ProgressReport
    var arrivesNs: UInt64
}

/// The channel from source to destination and the destination's loader,
/// as a fluid model in virtual time:
///
///   writer → send buffer (`bufferBytes`) → link (`bytesPerSecond`, stalls)
///          → `latencyNs` → receive buffer → loader (DestinationConfig)
///
/// A write returns once its last byte is in the send buffer. The link
/// drains the send buffer while the destination has room: bytes on the
/// wire or received but not yet loaded stay under `receiveBufferBytes`,
/// so a slow loader fills the send buffer and blocks the writer. The
/// loader takes segments in order, each for its price (StreamTap). The
/// bytes themselves go straight to the destination's real StreamLoader,
/// in order, so every simulated migration is checked end to end; only the
/// timing is modelled.
package final class LinkModel {
    package let clock: VirtualClock
    package let destination: Destination
    package private(set) var bytesPerSecond: Double
    package let bufferBytes: UInt64
    package let latencyNs: UInt64
    package var receiveBufferBytes: UInt64 { destination.config.receiveBufferBytes }

    /// Bytes in the send buffer now.
    package var buffered: Double {
        update(to: clock.now)
        return level
    }
    private var level: Double = 0
    package private(set) var acceptedBytes: UInt64 = 0
    private(set) var drainedBytes: Double = 0
    package private(set) var writes: UInt64 = 0
    /// Virtual time writers spent blocked on a full buffer (and waiting for
    /// the ack to come back).
    package private(set) var blockedNs: UInt64 = 0
    /// (elapsed ns, B/s) for every bandwidth change.
    package private(set) var bandwidthHistory: [(ns: UInt64, bytesPerSecond: Double)] = []
    /// Set to break the link: every later write and read fails.
    package var broken: MKError?
    /// When the return direction closes (absolute ns; nil: never).
    package var returnClosesAtNs: UInt64?
    /// The return direction is closed by now.
    package var returnClosed: Bool { returnClosesAtNs.map { clock.now >= $0 } ?? false }
    /// A blocked write or read gives up with a transport error when this
    /// says so (production: cancel shuts the socket down).
    var interrupted: () -> Bool = { false }

    private let stalls: [(start: UInt64, end: UInt64)]
    private let periodic: (period: UInt64, length: UInt64, phase: UInt64)?
    private let failAfterBytes: UInt64?
    private var lastNs: UInt64

    // The pipeline behind the send buffer.
    private var sendQueue: [StreamSegment] = []
    private var sendHead = 0
    private var headLeft: Double = 0
    /// Segments that left the send buffer, with when the loader finishes
    /// each; `loadedIndex` of them are loaded.
    private var flight: [(seg: StreamSegment, loadEnd: UInt64)] = []
    private var loadedIndex = 0
    private var outstanding: Double = 0
    private var lastLoadEnd: UInt64 = 0
    /// Loader totals so far.
    package private(set) var loadedBytes: Double = 0
    package private(set) var loadedZeroPages: UInt64 = 0
    package private(set) var loadedZeroCostNs: Double = 0
    private var reportedAt: Double = 0
    private var reports: [PendingReport] = []
    private var reportsTaken = 0
    /// When the hello reaches the source; when END was loaded.
    private(set) var helloArrivesNs: UInt64?
    private(set) var endLoadedNs: UInt64?
    /// Time the link waited for room in the destination's receive buffer.
    package private(set) var windowBlockedNs: UInt64 = 0
    /// Time of the last ZERO work the loader finished (absolute ns), minus
    /// the start: how long after the start the loader was still on ZERO pages.
    package var zeroLoadedNs: UInt64 { lastZeroLoadEnd > clock.startNs ? lastZeroLoadEnd - clock.startNs : 0 }
    private var lastZeroLoadEnd: UInt64 = 0

    package init(_ config: LinkConfig, clock: VirtualClock, destination: Destination) {
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
        returnClosesAtNs = config.returnClosesAtSeconds.map { clock.ns(atSeconds: $0) }
        lastNs = clock.now
        bandwidthHistory.append((0, bytesPerSecond))
        for step in config.bandwidthChanges {
            clock.schedule(atSeconds: step.atSeconds) { [unowned self] in setBandwidth(step.bytesPerSecond) }
        }
    }

    /// Change the drain rate from now on.
    package func setBandwidth(_ bps: Double) {
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
    func isStalled(atNs t: UInt64) -> Bool { stallEnd(at: t) != nil || bytesPerSecond <= 0 }

    // MARK: the fluid model

    /// Loader work finished by `t`: progress reports, hello, END.
    private func retire(upTo t: UInt64) {
        let every = destination.config.progressEveryBytes
        while loadedIndex < flight.count, flight[loadedIndex].loadEnd <= t {
            let (seg, end) = flight[loadedIndex]
            loadedIndex += 1
            outstanding -= seg.bytes
            loadedBytes += seg.bytes
            loadedZeroPages += seg.zeroPages
            loadedZeroCostNs += seg.zeroCostNs
            if seg.endsHeader { helloArrivesNs = end + latencyNs }
            if seg.zeroCostNs > 0 { lastZeroLoadEnd = end }
            if seg.isEnd { endLoadedNs = end }
            // As DestSession while the stream flows: every `every` bytes.
            // (Its report after 10 ms of quiet is not modelled: here no
            // report is ever held back, and no scenario idles on a tail.)
            if let every, !seg.isEnd, loadedBytes - reportedAt >= Double(every) {
                reportedAt = loadedBytes
                let ps = loadedZeroPages > 0 ? loadedZeroCostNs * 1000 / Double(loadedZeroPages) : 0
                let us = (end &+ destination.config.clockOffsetNs) / 1000
                allReports.append(ProgressReport(consumed: UInt64(loadedBytes.rounded()),
                                                 destinationUs: UInt32(truncatingIfNeeded: us),
                                                 zeroPagePs: UInt32(clamping: UInt64(ps.rounded()))))
                reports.append(PendingReport(report: ProgressReport(consumed: UInt64(loadedBytes.rounded()),
                                                                    destinationUs: UInt32(truncatingIfNeeded: us),
                                                                    zeroPagePs: UInt32(clamping: UInt64(ps.rounded()))),
                                             arrivesNs: end + latencyNs))
            }
        }
        if loadedIndex > 4096 {
            flight.removeFirst(loadedIndex)
            loadedIndex = 0
        }
        if outstanding < 1e-6 { outstanding = 0 }
    }

    /// The head segment left the send buffer at `t`: it reaches the loader
    /// a latency later and is loaded after what came before it.
    private func depart(at t: UInt64) {
        let seg = sendQueue[sendHead]
        sendHead += 1
        if sendHead > 4096 {
            sendQueue.removeFirst(sendHead)
            sendHead = 0
        }
        headLeft = sendHead < sendQueue.count ? sendQueue[sendHead].bytes : 0
        let start = max(t + latencyNs, lastLoadEnd)
        lastLoadEnd = start + UInt64(seg.costNs.rounded())
        flight.append((seg, lastLoadEnd))
        outstanding += seg.bytes
    }

    /// Run the pipeline up to time `t`.
    /// Set when the run stopped with the link waiting for the receiver.
    private var windowOpensNs: UInt64 = 0

    private func update(to t: UInt64) {
        guard t > lastNs else {
            retire(upTo: t)
            return
        }
        var cur = lastNs
        let window = Double(receiveBufferBytes)
        while cur < t {
            retire(upTo: cur)
            guard sendHead < sendQueue.count else { break }
            if let e = stallEnd(at: cur) {
                cur = min(e, t)
                continue
            }
            guard bytesPerSecond > 0 else { break }
            let seg = sendQueue[sendHead]
            // A segment goes on the wire only if the receiver has room for
            // it (or nothing is outstanding: a segment bigger than the
            // window still goes).
            if headLeft >= seg.bytes && outstanding > 0 && outstanding + seg.bytes > window {
                let next = flight[loadedIndex].loadEnd
                windowBlockedNs += min(next, t) - cur
                if next > t { windowOpensNs = next }
                cur = min(next, t)
                continue
            }
            let segEnd = min(t, nextStallStart(after: cur) ?? t)
            let need = headLeft / bytesPerSecond * 1e9
            if Double(cur) + need <= Double(segEnd) {
                let done = cur + UInt64(need.rounded(.up))
                level -= headLeft
                drainedBytes += headLeft
                cur = min(max(done, cur), t)
                depart(at: cur)
            } else {
                let d = bytesPerSecond * Double(segEnd - cur) / 1e9
                level -= d
                drainedBytes += d
                headLeft -= d
                cur = segEnd
            }
        }
        if level < 1e-6 { level = 0 }
        retire(upTo: t)
        lastNs = t
    }

    /// Every progress report the destination sent so far (for tests).
    package private(set) var allReports: [ProgressReport] = []

    /// Progress reports that reached the source by now, oldest first.
    func takeReports() -> [ProgressReport] {
        update(to: clock.now)
        var out: [ProgressReport] = []
        let until = min(clock.now, returnClosesAtNs ?? .max)
        while reportsTaken < reports.count, reports[reportsTaken].arrivesNs <= until {
            out.append(reports[reportsTaken].report)
            reportsTaken += 1
        }
        if reportsTaken > 1024 {
            reports.removeFirst(reportsTaken)
            reportsTaken = 0
        }
        return out
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
                // Waiting for the receiver: nothing moves before it has room.
                if windowOpensNs > now { target = max(target, windowOpensNs) }
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

    /// Time by which everything written so far will have been loaded at
    /// the destination, if nothing changes (.max if never).
    package func quietAt() -> UInt64 {
        update(to: clock.now)
        if sendHead >= sendQueue.count { return max(lastLoadEnd, clock.now) }
        if bytesPerSecond <= 0 { return .max }
        // Run a copy of the pipeline forward: only the timing matters.
        let saved = (level, drainedBytes, sendQueue, sendHead, headLeft, flight, loadedIndex, outstanding, lastLoadEnd,
                     loadedBytes, loadedZeroPages, loadedZeroCostNs, reportedAt, reports, reportsTaken,
                     helloArrivesNs, endLoadedNs, windowBlockedNs, lastNs)
        var t = clock.now
        while sendHead < sendQueue.count {
            t += 1_000_000_000
            update(to: t)
        }
        let quiet = lastLoadEnd
        (level, drainedBytes, sendQueue, sendHead, headLeft, flight, loadedIndex, outstanding, lastLoadEnd,
         loadedBytes, loadedZeroPages, loadedZeroCostNs, reportedAt, reports, reportsTaken,
         helloArrivesNs, endLoadedNs, windowBlockedNs, lastNs) = saved
        return quiet
    }

    // MARK: the transport

    /// Write every byte of `iov`: hand it to the destination, then block
    /// until the last byte fits in the send buffer.
    package func write(_ iov: UnsafePointer<iovec>, count: Int) throws(MKError) {
        if let broken { throw broken }
        var total: UInt64 = 0
        for i in 0..<count { total += UInt64(iov[i].iov_len) }
        // Bytes that get through before a configured failure.
        var room = failAfterBytes.map { $0 - min(acceptedBytes, $0) } ?? .max
        var segments: [StreamSegment] = []
        for i in 0..<count where iov[i].iov_len > 0 && room > 0 {
            let n = min(UInt64(iov[i].iov_len), room)
            room -= n
            let bytes = UnsafeRawBufferPointer(start: iov[i].iov_base, count: Int(n))
            destination.tap.consume(bytes) { segments.append($0) }
            do throws(MKError) {
                try destination.receive(bytes)
            } catch {
                throw MKError(.transport, "the destination closed the connection: \(error.message)")
            }
        }
        try transmit(bytes: total, segments: segments)
    }

    /// The timing of a write of `bytes` (no bytes delivered): returns once
    /// the last byte is in the send buffer. Fails, and breaks the link, if
    /// it would cross `failAfterBytes`.
    package func transmit(bytes total: UInt64) throws(MKError) {
        try transmit(bytes: total, segments: [])
    }

    private func transmit(bytes total: UInt64, segments given: [StreamSegment]) throws(MKError) {
        if let broken { throw broken }
        if let limit = failAfterBytes, acceptedBytes + total > limit {
            acceptedBytes = max(acceptedBytes, limit)
            let e = MKError(.transport, "connection reset after \(limit) bytes")
            broken = e
            throw e
        }
        writes += 1
        // Unpriced bytes (a bare transmit) load for free.
        var segments = given
        let priced = segments.reduce(0.0) { $0 + $1.bytes }
        if Double(total) > priced + 0.5 {
            var rest = Double(total) - priced
            while rest > 0 {
                let n = min(rest, StreamTap.maxSegment)
                segments.append(StreamSegment(bytes: n))
                rest -= n
            }
        }
        let cap = Double(bufferBytes)
        update(to: clock.now)
        for var seg in segments {
            // A segment bigger than the buffer goes in buffer-sized parts.
            while seg.bytes > 0 {
                let chunk = min(seg.bytes, cap)
                try waitUntil(atMost: cap - chunk)
                var part = seg
                if chunk < seg.bytes {
                    part.bytes = chunk
                    part.costNs = seg.costNs * chunk / seg.bytes
                    part.zeroPages = 0; part.zeroCostNs = 0; part.isEnd = false; part.endsHeader = false
                    seg.costNs -= part.costNs
                }
                seg.bytes -= chunk
                if sendHead >= sendQueue.count { headLeft = part.bytes }
                sendQueue.append(part)
                level += chunk
                if seg.bytes <= 0 { break }
            }
        }
        acceptedBytes += total
    }

    /// Wait for the destination's acknowledgement: until the stream has
    /// been loaded, the destination has resumed the guest (or failed), and
    /// the answer has come back. Throws like a socket: .timedOut past
    /// `timeoutMs`, .transport if broken or interrupted.
    package func readAck(timeoutMs: Int) throws(MKError) -> [UInt8] {
        if let broken { throw broken }
        let t0 = clock.now
        let deadline = t0 + UInt64(max(timeoutMs, 0)) * 1_000_000
        try waitUntil(atMost: 0)
        let loaded = max(lastLoadEnd, clock.now)
        guard let status = destination.answer(endLoadedAtNs: loaded) else {
            try wait(until: deadline)
            throw MKError(.timedOut, "no acknowledgement from the destination within \(timeoutMs) ms")
        }
        let ackAt = loaded + (status == 0 ? destination.resumeNs : 0) + latencyNs
        if let closes = returnClosesAtNs, closes <= min(ackAt, deadline) {
            try wait(until: closes)
            throw MKError(.transport, "the destination closed the channel before its acknowledgement")
        }
        if ackAt > deadline {
            try wait(until: deadline)
            throw MKError(.timedOut, "no acknowledgement from the destination within \(timeoutMs) ms")
        }
        try wait(until: ackAt)
        let resumeUs = status == 0 ? UInt32(clamping: destination.resumeNs / 1000) : 0
        return Ack.encode(AckReply(status: status, timestampNs: ackAt - latencyNs, resumeUs: resumeUs))
    }

    /// The destination's hello: once the stream header was loaded there,
    /// a latency later. Carries the VMM's declared resume cost.
    func readHello() throws(MKError) -> UInt64 {
        if let broken { throw broken }
        try waitUntil(atMost: 0)
        if helloArrivesNs == nil { try wait(until: max(lastLoadEnd, clock.now)) }
        let arrives = helloArrivesNs ?? (clock.now + latencyNs)
        if let closes = returnClosesAtNs, closes <= arrives {
            try wait(until: closes)
            throw MKError(.transport, "the destination closed the channel before its hello")
        }
        try wait(until: arrives)
        return (destination.config.declaredResumeNs ?? destination.resumeNs) / 1000
    }

    private func wait(until t: UInt64) throws(MKError) {
        while clock.now < t {
            var step = t
            if let a = clock.nextActionNs, a > clock.now { step = min(step, a) }
            blockedNs += step - clock.now
            clock.advance(to: step)
            update(to: clock.now)
            if let broken { throw broken }
            if interrupted() { throw MKError(.transport, "read interrupted: the channel was shut down") }
        }
    }
}

/// The destination: its own guest memory and a real StreamLoader.
package final class Destination {
    package struct Region {
        package let host: UnsafeMutableRawPointer
        package let size: UInt64
    }

    package let regions: [Region]
    package let config: DestinationConfig
    package private(set) var loader: StreamLoader!
    /// Prices the stream for the destination's timing.
    let tap: StreamTap
    /// Device-state blobs the loader handed over.
    package var deviceStates: [[UInt8]] { session?.deviceStates ?? loadedDeviceStates }
    private var loadedDeviceStates: [[UInt8]] = []
    /// The first error the loader raised.
    package private(set) var error: MKError?
    private(set) var bytesReceived: UInt64 = 0
    /// Answer the stream with this (negative MK_E*) status instead of 0.
    var rejectStatus: Int32?
    /// Fail loading the device state with this error.
    package var loadDeviceError: MKError?
    /// From END loaded to the guest running here (the VMM's resume).
    var resumeNs: UInt64
    /// Absolute virtual time the guest started running here (ack status 0).
    package private(set) var resumedAtNs: UInt64?
    /// Set: the real DestSession loads the stream (through its seam)
    /// instead of the bare loader above, and its acknowledgement is the
    /// answer.
    package var session: SessionDestination?

    package init(_ source: [GuestRegion], resumeNs: UInt64 = 1_000_000, config: DestinationConfig = DestinationConfig()) {
        self.resumeNs = resumeNs
        self.config = config
        regions = source.map { r in Region(host: SimMemory.zeroed(Int(r.size)), size: r.size) }
        tap = StreamTap(regionSizes: source.map(\.size), config: config)
        let loaderRegions = zip(source, regions).map { s, d in
            LoaderRegion(host: d.host, guestPhysAddr: s.guestPhysAddr, size: s.size, granularity: s.granularity,
                         fresh: config.fresh)
        }
        loader = StreamLoader(regions: loaderRegions) { [unowned self] (blob) throws(MKError) in
            if let e = self.loadDeviceError { throw e }
            self.loadedDeviceStates.append(Array(blob))
        }
    }

    deinit { regions.forEach { SimMemory.release($0.host, Int($0.size)) } }

    package var isComplete: Bool {
        guard let session else { return loader.isComplete }
        return session.session.stats().status == .completed
    }

    /// Feed bytes to the loader; after an error every call throws it.
    package func receive(_ bytes: UnsafeRawBufferPointer) throws(MKError) {
        if let error { throw error }
        bytesReceived += UInt64(bytes.count)
        do throws(MKError) {
            if let session {
                try session.deliver(bytes)
            } else {
                try loader.consume(bytes)
            }
        } catch {
            self.error = error
            throw error
        }
    }

    /// The ack status once the whole stream is in, or nil if there is
    /// nothing to answer (END never arrived: the destination keeps waiting).
    func answer(endLoadedAtNs t: UInt64) -> Int32? {
        if let error { return error.code.rawValue }
        if let session {
            guard let status = session.ack?.status else { return nil }
            if status == 0 && resumedAtNs == nil { resumedAtNs = t + resumeNs }
            return status
        }
        guard loader.isComplete else { return nil }
        if let s = rejectStatus { return s }
        if resumedAtNs == nil { resumedAtNs = t + resumeNs }
        return 0
    }

    /// True when the guest runs (or will run) here.
    package var guestRunning: Bool { resumedAtNs != nil }
}
