import CShim
import Glibc

/// A pthread mutex with one condition variable on CLOCK_MONOTONIC. Swift's
/// Mutex has no condition variable, and the throttle and the wait calls need
/// timed, wakeable sleeps on threads the VMM owns.
final class ConditionLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    func withLock<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    /// Only while holding the lock (inside withLock).
    func wait() { pthread_cond_wait(cond, mutex) }

    /// Only while holding the lock. Returns at the deadline (monotonic ns),
    /// on a broadcast, or spuriously; callers re-check their condition.
    func wait(untilNs deadline: UInt64) {
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        pthread_cond_timedwait(cond, mutex, &ts)
    }

    func broadcast() { pthread_cond_broadcast(cond) }
}

/// Start a pthread running `body`. The closure travels through the void*
/// argument, because a C function pointer cannot capture context.
func spawnThread(_ body: @escaping () -> Void) throws(MKError) -> pthread_t {
    final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }
    let arg = Unmanaged.passRetained(Box(body)).toOpaque()
    var tid = pthread_t()
    let rc = pthread_create(&tid, nil, { raw in
        // A write to a pipe whose reader left must fail with EPIPE on this
        // thread, not raise a process-wide SIGPIPE in the VMM.
        cshim_block_sigpipe()
        Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
        return nil
    }, arg)
    if rc != 0 {
        Unmanaged<Box>.fromOpaque(arg).release()
        throw MKError(.noMemory, "pthread_create failed: \(String(cString: strerror(rc)))")
    }
    return tid
}
