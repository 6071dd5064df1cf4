import CShim
import Glibc

/// How long one thread has been ready to run without a CPU (Linux
/// schedstat run delay), read from the thread that created it: the fd it
/// opens keeps naming that thread. nil readings where the kernel does not
/// say. A switchover slower than predicted because the host was busy shows
/// here, not in the link's figures.
final class ThreadCPUWait {
    private let fd: Int32

    /// Call on the thread to be measured.
    init() { fd = cshim_cpu_wait_open() }

    deinit { if fd >= 0 { close(fd) } }

    /// Cumulative ns.
    func ns() -> UInt64? {
        let v = cshim_cpu_wait_ns(fd)
        return v < 0 ? nil : UInt64(v)
    }
}
