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

/// State behind a pthread mutex, used instead of Synchronization.Mutex for
/// everything the migration thread shares with API callers. On Linux a
/// contended Mutex is handed over by the kernel (futex, in the standard
/// library, which is not instrumented), so ThreadSanitizer sees no
/// synchronization between the unlock and the next owner's access and
/// reports a race on every contended access -- in `make sanitize` and in a
/// VMM's own TSan build alike, where no suppression pattern can single it
/// out (the lock's frames are gone from both stacks). pthread mutexes are
/// intercepted by every sanitizer and cost the same uncontended.
final class Locked<Value>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var value: Value

    init(_ value: Value) {
        self.value = value
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
