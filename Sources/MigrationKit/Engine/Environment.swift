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

/// Guest memory as the VMM mapped it.
public struct GuestRegion: @unchecked Sendable, Equatable {
    public var host: UnsafeMutableRawPointer
    public var guestPhysAddr: UInt64
    public var size: UInt64
    public var granularity: UInt64

    public init(host: UnsafeMutableRawPointer, guestPhysAddr: UInt64, size: UInt64, granularity: UInt64) {
        self.host = host
        self.guestPhysAddr = guestPhysAddr
        self.size = size
        self.granularity = granularity
    }

    public var pages: Int { Int(size / MigrationParameters.pageSize) }

    /// Check one region against the rules in migrationkit.h and against
    /// those already registered.
    public static func validate(_ r: GuestRegion, against existing: [GuestRegion]) throws(MKError) {
        let page = MigrationParameters.pageSize
        let g = r.granularity
        if g < page || g & (g - 1) != 0 {
            throw MKError(.invalid, "dirty_granularity must be a power of two >= \(page), got \(g)")
        }
        if r.size == 0 || r.size % g != 0 {
            throw MKError(.invalid, "region size \(r.size) must be > 0 and a multiple of dirty_granularity \(g)")
        }
        if r.guestPhysAddr % g != 0 {
            throw MKError(.invalid, "guest_phys_addr 0x\(String(r.guestPhysAddr, radix: 16)) must be a multiple of dirty_granularity \(g)")
        }
        if UInt(bitPattern: r.host) % UInt(page) != 0 {
            throw MKError(.invalid, "host_addr must be \(page)-byte aligned")
        }
        let (gEnd, o1) = r.guestPhysAddr.addingReportingOverflow(r.size)
        let hStart = UInt64(UInt(bitPattern: r.host))
        let (hEnd, o2) = hStart.addingReportingOverflow(r.size)
        if o1 || o2 { throw MKError(.invalid, "region wraps around the address space") }
        for (i, e) in existing.enumerated() {
            let eh = UInt64(UInt(bitPattern: e.host))
            if r.guestPhysAddr < e.guestPhysAddr + e.size && e.guestPhysAddr < gEnd {
                throw MKError(.invalid, "region overlaps region \(i) in guest-physical addresses")
            }
            if hStart < eh + e.size && eh < hEnd {
                throw MKError(.invalid, "region overlaps region \(i) in host addresses")
            }
        }
        if existing.count >= 4096 { throw MKError(.invalid, "at most 4096 regions") }
    }
}
