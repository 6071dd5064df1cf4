import CShim
import Glibc

/// Start a pthread running `body`. `sending`: the closure and what it
/// captures belong to the new thread from now on, so the compiler checks
/// that the caller keeps no access to them. The closure travels through the
/// void* argument, because a C function pointer cannot capture context.
/// `name` (at most 15 bytes) is what `top -H`, perf and gdb show for the
/// thread inside the VMM's process.
func spawnThread(name: String, _ body: sending @escaping () -> Void) throws(MKError) -> pthread_t {
    let arg = Unmanaged.passRetained(ThreadBody(name: name, body)).toOpaque()
    var tid = pthread_t()
    let rc = pthread_create(&tid, nil, { raw in
        // A write to a pipe whose reader left must fail with EPIPE on this
        // thread, not raise a process-wide SIGPIPE in the VMM.
        cshim_block_sigpipe()
        let t = Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue()
        cshim_name_thread(t.name)
        t.body()
        return nil
    }, arg)
    if rc != 0 {
        Unmanaged<ThreadBody>.fromOpaque(arg).release()
        throw MKError(.noMemory, "pthread_create failed: \(String(cString: strerror(rc)))")
    }
    return tid
}

/// Wait for a thread started by spawnThread. Joining a thread twice, or one
/// that is not joinable, is a bug in this library.
func joinThread(_ tid: pthread_t) {
    pthreadCheck(pthread_join(tid, nil), "pthread_join")
}

/// The closure on its way to the new thread; only that thread touches it
/// once pthread_create succeeded.
private final class ThreadBody {
    let name: String
    let body: () -> Void
    init(name: String, _ body: sending @escaping () -> Void) {
        self.name = name
        self.body = body
    }
}
