import CShim
import Glibc

/// The engine's sense of time, injected so that a simulator with a virtual
/// clock drives the very same code as production.
public protocol EngineClock: AnyObject {
    /// Monotonic time in nanoseconds.
    func nowNs() -> UInt64
    /// Block until `deadline` (or return early; the engine re-checks).
    func sleep(untilNs deadline: UInt64)
    /// The engine just read `bytes` of guest memory (zero checks, checksums).
    /// Production time passes by itself; a simulator advances its clock.
    func didScan(bytes: UInt64)
}

/// Everything the engine asks of the VMM and the channel. Production wraps
/// the C callbacks (and the fd transport); the simulator models a guest and
/// a link.
public protocol SourceHooks: AnyObject {
    /// Set the bits of pages of `region` written since the last call.
    /// `bitmap` arrives zeroed.
    func fetchDirtyLog(region: Int, bitmap: UnsafeMutablePointer<UInt64>, pages: Int) throws(MKError)
    /// Write every byte of `iov[0..<count]`, in order.
    func write(_ iov: UnsafePointer<iovec>, count: Int) throws(MKError)
    /// True when the destination's acknowledgement can be read back.
    var hasReturnChannel: Bool { get }
    /// Wait for the destination's acknowledgement (skipping progress
    /// reports); its status is 0 or a negative MK_E*.
    func awaitAck(timeoutMs: Int) throws(MKError) -> (status: Int32, timestampNs: UInt64)
    func pauseVCPUs() throws(MKError)
    func resumeVCPUs() throws(MKError)
    /// Apply an auto-converge throttle (0 = none).
    func setThrottle(percent: UInt32)
    /// With the guest paused: the device-state blob.
    func saveDeviceState() throws(MKError) -> [UInt8]
    /// Expected device-state size, if the VMM can tell.
    func deviceStateSize() -> UInt64?
    func log(_ level: LogLevel, _ message: String)
    func progress(_ stats: MigrationStats)
    /// Stream bytes written but not yet consumed by the destination: they
    /// drain during the downtime too. `exact` when the destination reported
    /// its progress; otherwise what the local queue shows (a lower bound).
    func inFlightBytes() -> (bytes: UInt64, exact: Bool)
}

extension SourceHooks {
    public func inFlightBytes() -> (bytes: UInt64, exact: Bool) { (0, false) }
}
