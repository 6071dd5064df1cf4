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
    /// Read exactly `count` bytes of the acknowledgement.
    func readAck(into buffer: UnsafeMutableRawPointer, count: Int, timeoutMs: Int) throws(MKError)
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
    /// Bytes written but not yet taken by the receiver (socket send queue),
    /// if the transport can tell: they drain during the downtime too.
    func inFlightBytes() -> UInt64
}

extension SourceHooks {
    public func inFlightBytes() -> UInt64 { 0 }
}
