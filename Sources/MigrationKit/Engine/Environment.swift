import CShim
import Glibc

/// The engine's sense of time, injected so that a simulator with a virtual
/// clock drives the very same code as production.
package protocol EngineClock: AnyObject {
    /// Monotonic time in nanoseconds.
    func nowNs() -> UInt64
    /// Block until `deadline` (or return early; the engine re-checks).
    func sleep(untilNs deadline: UInt64)
    /// The engine just read `bytes` of guest memory (zero checks, checksums).
    /// Production time passes by itself; a simulator advances its clock.
    func didScan(bytes: UInt64)
    /// How long the calling thread has waited, ready to run, for a CPU:
    /// cumulative ns, or nil where the system does not say. A switchover
    /// that took longer than predicted because the host was busy shows it
    /// here, not in the link's figures.
    func cpuWaitNs() -> UInt64?
}

/// Everything the engine asks of the VMM and the channel. Production wraps
/// the C callbacks (and the fd transport); the simulator models a guest and
/// a link.
package protocol SourceHooks: AnyObject {
    /// Set the bits of pages of `region` written since the last call.
    /// `bitmap` arrives zeroed.
    func fetchDirtyLog(region: Int, bitmap: UnsafeMutablePointer<UInt64>, pages: Int) throws(MKError)
    /// Write every byte of `iov[0..<count]`, in order.
    func write(_ iov: UnsafePointer<iovec>, count: Int) throws(MKError)
    /// True when the destination's acknowledgement can be read back.
    var hasReturnChannel: Bool { get }
    /// With a return channel: wait for the destination's hello (it accepted
    /// the stream header) and return its VMM's resume_cost_us. A refusal is
    /// an MK_EDEST error.
    func awaitHello(timeoutMs: Int) throws(MKError) -> UInt64
    /// Wait for the destination's acknowledgement (skipping progress
    /// reports); its status is 0 or a negative MK_E*.
    func awaitAck(timeoutMs: Int) throws(MKError) -> AckReply
    /// Authenticated streams: the destination's nonce, which follows its
    /// hello, and the tag that follows its acknowledgement (16 bytes each).
    func awaitNonce(timeoutMs: Int) throws(MKError) -> [UInt8]
    func awaitAckTag(timeoutMs: Int) throws(MKError) -> [UInt8]
    func pauseVCPUs() throws(MKError)
    func resumeVCPUs() throws(MKError)
    /// Apply an auto-converge throttle (0 = none), the same on every vCPU.
    func setThrottle(percent: UInt32)
    /// Apply a throttle per vCPU (index = vCPU; 0 = none).
    func setThrottle(perVCPU percents: [UInt32])
    /// Pages each vCPU dirtied since the previous call (the VMM's dirty
    /// ring), or nil when the VMM cannot tell which vCPU dirtied what.
    func fetchVCPUDirtyCounts() throws(MKError) -> [UInt64]?
    /// Time each vCPU spent asleep in the throttle so far, ns (cumulative).
    func throttleSleepNs() -> [UInt64]
    /// With the guest paused: the device-state blob.
    func saveDeviceState() throws(MKError) -> [UInt8]
    /// Expected device-state size, if the VMM can tell.
    func deviceStateSize() -> UInt64?
    func log(_ level: LogLevel, _ message: String)
    func progress(_ stats: MigrationStats)
    /// What the destination reported since the last call, without waiting.
    func pollDestination() -> DestinationReport
    /// No wait inside write may go past this time of the engine's clock
    /// (nil: none); such a write fails MK_ETIMEDOUT. (The engine bounds
    /// awaitHello itself; awaitAck, after END, keeps the ack timeout.)
    func setWaitDeadline(ns: UInt64?)
    /// The stream broke off before END (a failure or cancel): let the
    /// destination know, if the transport can.
    func abandonTransport()
}

extension SourceHooks {
    package func setWaitDeadline(ns: UInt64?) {}
    package func abandonTransport() {}
    package func setThrottle(perVCPU percents: [UInt32]) { setThrottle(percent: percents.max() ?? 0) }
    package func fetchVCPUDirtyCounts() throws(MKError) -> [UInt64]? { nil }
    package func throttleSleepNs() -> [UInt64] { [] }
    package func awaitNonce(timeoutMs: Int) throws(MKError) -> [UInt8] {
        throw MKError(.notSupported, "this transport does not carry authenticated streams")
    }
    package func awaitAckTag(timeoutMs: Int) throws(MKError) -> [UInt8] {
        throw MKError(.notSupported, "this transport does not carry authenticated streams")
    }
}

/// The destination's word on how far it is, as the engine gets it.
package struct DestinationReport: Sendable {
    /// Progress reports read since the last poll, oldest first.
    package var progress: [ProgressReport]
    /// Without progress reports: stream bytes still queued on this side
    /// (SIOCOUTQ), a lower bound of what is on the way. nil: unknown.
    package var localQueue: UInt64?
    /// The destination said it failed (an acknowledgement with an error
    /// arrived mid-stream): the migration fails with this at once.
    package var failure: MKError?
    /// The return channel ended (the destination closed it, a read
    /// failed, a frame did not decode): nothing more comes back on it, the
    /// acknowledgement included.
    package var returnChannelLost: MKError?

    package init(progress: [ProgressReport] = [], localQueue: UInt64? = nil, failure: MKError? = nil) {
        self.progress = progress
        self.localQueue = localQueue
        self.failure = failure
    }
}
