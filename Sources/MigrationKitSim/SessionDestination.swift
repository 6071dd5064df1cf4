import Dispatch
import Synchronization
import Glibc
import MigrationKit

/// The destination side run by the real DestSession (what mk_dest_run
/// runs), through its seam: a DestTransport fed by the link model and
/// DestHooks on the virtual clock.
///
/// DestSession.run is a blocking read loop and the source engine a
/// blocking write loop, so the destination gets a thread of its own, but
/// the two take turns (a baton): a write hands the bytes over and waits
/// until the destination wants more (or ended), so exactly one thread runs
/// at any time and a run is as deterministic as the rest of the simulator.
package final class SessionDestination: DestTransport {
    private struct State {
        var inbound: [UInt8] = []
        var offset = 0
        /// The source side is done writing: reads end after `inbound`.
        var closed = false
        /// Every byte DestSession sent back, in order.
        var returned: [UInt8] = []
        var deviceStates: [[UInt8]] = []
        /// run() returned (with this error, nil = loaded and acknowledged).
        var finished = false
        var error: MKError?
    }

    package let session: DestSession
    private let state = Mutex(State())
    private let toDestination = DispatchSemaphore(value: 0)
    private let toSource = DispatchSemaphore(value: 0)

    /// `clock` is read by the destination's thread only while it holds the
    /// baton.
    package init(regions: [GuestRegion], resumeCostUs: UInt64, clock: VirtualClock) throws(MKError) {
        let shared = BatonShared(clock)
        let box = DeviceStates()
        session = DestSession(config: DestSessionConfig(resumeCostUs: resumeCostUs),
                              hooks: DestHooks(loadDeviceState: { blob in box.append(blob); return 0 },
                                               nowNs: { shared.value.now },
                                               // CPU waits are not modelled here: the
                                               // meter reads the virtual clock, as if the
                                               // thread waited throughout, so the figure
                                               // is the span it covers (tests check it).
                                               cpuWaitMeter: { { shared.value.now } }),
                              transport: nil)
        for r in regions { _ = try session.addRegion(r) }
        deviceBox = box
        try session.setTransport(self)
    }

    private let deviceBox: DeviceStates

    /// Start mk_dest_run on its thread and let it run until it waits for
    /// the stream.
    package func start() {
        let session = session
        DispatchQueue(label: "sim-destination").async { [self] in
            toDestination.wait()
            var failure: MKError?
            do throws(MKError) { try session.run() } catch { failure = error }
            state.withLock {
                $0.finished = true
                $0.error = failure
            }
            toSource.signal()
        }
        pass()
    }

    /// Hand the baton to the destination; back when it waits for more
    /// stream or ended.
    private func pass() {
        toDestination.signal()
        toSource.wait()
    }

    /// Stream bytes from the link: loaded before this returns. Throws the
    /// destination's failure once it has failed.
    package func deliver(_ bytes: UnsafeRawBufferPointer) throws(MKError) {
        let outcome: (finished: Bool, error: MKError?) = state.withLock { s in
            if !s.finished { s.inbound.append(contentsOf: bytes) }
            return (s.finished, s.error)
        }
        if let e = outcome.error { throw e }
        if outcome.finished { return }
        pass()
        if let e = state.withLock({ $0.error }) { throw e }
    }

    /// The source stopped writing (the end of the simulation): the
    /// destination reads the end of the stream and returns.
    package func close() {
        let running = state.withLock { s -> Bool in
            s.closed = true
            return !s.finished
        }
        if running { pass() }
    }

    package var finished: Bool { state.withLock { $0.finished } }
    package var error: MKError? { state.withLock { $0.error } }
    package var deviceStates: [[UInt8]] { deviceBox.all }

    /// The frames DestSession sent back, decoded.
    package var returnedMessages: [ReturnMessage] {
        let bytes = state.withLock { $0.returned }
        var out: [ReturnMessage] = []
        var i = 0
        while i + ReturnMessage.size <= bytes.count {
            let m = bytes[i..<i + ReturnMessage.size].withUnsafeBytes { raw in try? ReturnMessage.decode(raw) }
            if let m { out.append(m) }
            i += ReturnMessage.size
        }
        return out
    }

    /// The acknowledgement it sent, if any.
    package var ack: AckReply? {
        for m in returnedMessages { if case .ack(let r) = m { return r } }
        return nil
    }

    // MARK: DestTransport (the destination's thread)

    package func read(into buf: UnsafeMutableRawPointer, cap: Int) throws(MKError) -> Int {
        while true {
            let (n, closed): (Int, Bool) = state.withLock { s in
                let n = min(cap, s.inbound.count - s.offset)
                if n > 0 {
                    s.inbound.withUnsafeBytes { buf.copyMemory(from: $0.baseAddress! + s.offset, byteCount: n) }
                    s.offset += n
                    if s.offset == s.inbound.count {
                        s.inbound.removeAll(keepingCapacity: true)
                        s.offset = 0
                    }
                }
                return (n, s.closed)
            }
            if n > 0 { return n }
            if closed { return 0 }
            // Everything delivered is loaded: the source's turn.
            toSource.signal()
            toDestination.wait()
        }
    }

    package func sendReturn(_ bytes: [UInt8]) throws(MKError) {
        state.withLock { $0.returned.append(contentsOf: bytes) }
    }

    package let interrupt: @Sendable () -> Void = {}
}

/// The device-state blobs load_device_state got.
private final class DeviceStates: Sendable {
    private let blobs = Mutex<[[UInt8]]>([])
    func append(_ blob: UnsafeRawBufferPointer) { blobs.withLock { $0.append(Array(blob)) } }
    var all: [[UInt8]] { blobs.withLock { $0 } }
}

/// A simulator object the destination's thread reads while it holds the
/// baton.
// @unchecked: the baton (SessionDestination) lets one thread run at a
// time, and each hand-off goes through a semaphore (a happens-before edge).
private struct BatonShared<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
