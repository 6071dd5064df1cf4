import CShim
import Glibc

/// An eventfd that cancel makes readable: every bounded wait on a transport
/// fd (cshim_wait_fd and its users) ends when it is. Shared by the thread
/// that waits and the thread that cancels; nothing in it changes after init.
final class WakeSignal: Sendable {
    /// -1 if the kernel gave none: cancel then falls back to a shutdown.
    let fd: Int32

    init() {
        let w = cshim_wake_fd_new()
        fd = w >= 0 ? w : -1
    }

    deinit { if fd >= 0 { close(fd) } }

    var isAvailable: Bool { fd >= 0 }

    func wake() { if fd >= 0 { cshim_wake(fd) } }
}
