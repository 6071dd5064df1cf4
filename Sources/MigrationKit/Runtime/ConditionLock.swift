import CShim
import Glibc

/// State behind a pthread mutex, used instead of Synchronization.Mutex for
/// everything the migration thread shares with API callers. On Linux a
/// contended Mutex is handed over by the kernel (futex, in the standard
/// library, which is not instrumented), so ThreadSanitizer sees no
/// synchronization between the unlock and the next owner's access and
/// reports a race on every contended access -- in `make sanitize` and in a
/// VMM's own TSan build alike, where no suppression pattern can single it
/// out (the lock's frames are gone from both stacks). pthread mutexes are
/// intercepted by every sanitizer and cost the same uncontended.
///
/// The value is reachable only inside withLock, and goes in and out as
/// `sending`, as with Synchronization.Mutex.
// @unchecked: the pthread storage is raw memory; every access to `value`
// holds the mutex.
final class Locked<Value>: @unchecked Sendable {
    private let mutex = PthreadMutex()
    private var value: Value

    init(_ value: sending Value) { self.value = value }

    func withLock<R, E: Error>(_ body: (inout sending Value) throws(E) -> sending R) throws(E) -> sending R {
        mutex.lock()
        defer { mutex.unlock() }
        return try body(&value)
    }
}

/// State behind a pthread mutex with one condition variable on
/// CLOCK_MONOTONIC. Swift's Mutex has no condition variable, and the
/// throttle and the wait calls need timed, wakeable sleeps on threads the
/// VMM owns.
///
/// A body that has to wait returns `.wait`: it never holds the value across
/// the wait, so the compiler cannot keep a stale copy of it while another
/// thread changes it; it is called again, with the lock, after the wakeup.
// @unchecked: the pthread storage is raw memory; every access to `value`
// holds the mutex.
final class ConditionLock<Value>: @unchecked Sendable {
    /// What a `withLockUntilDone` body wants next.
    enum Next<R> {
        case done(R)
        /// Until a broadcast (or spuriously).
        case wait
        /// Until a broadcast, a monotonic time in ns (or spuriously).
        case waitUntil(ns: UInt64)
    }

    private let mutex = PthreadMutex()
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var value: Value

    init(_ value: sending Value) {
        self.value = value
        var attr = pthread_condattr_t()
        pthreadCheck(pthread_condattr_init(&attr), "pthread_condattr_init")
        pthreadCheck(pthread_condattr_setclock(&attr, CLOCK_MONOTONIC), "pthread_condattr_setclock")
        pthreadCheck(pthread_cond_init(cond, &attr), "pthread_cond_init")
        pthreadCheck(pthread_condattr_destroy(&attr), "pthread_condattr_destroy")
    }

    deinit {
        pthreadCheck(pthread_cond_destroy(cond), "pthread_cond_destroy")
        cond.deallocate()
    }

    func withLock<R, E: Error>(_ body: (inout sending Value) throws(E) -> sending R) throws(E) -> sending R {
        mutex.lock()
        defer { mutex.unlock() }
        return try body(&value)
    }

    /// Run `body` with the lock held, again after every wait it asks for,
    /// until it is done.
    func withLockUntilDone<R>(_ body: (inout sending Value) -> Next<R>) -> R {
        mutex.lock()
        defer { mutex.unlock() }
        while true {
            switch body(&value) {
            case .done(let r): return r
            case .wait: pthreadCheck(pthread_cond_wait(cond, mutex.raw), "pthread_cond_wait")
            case .waitUntil(let deadline):
                var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
                let rc = pthread_cond_timedwait(cond, mutex.raw, &ts)
                if rc != ETIMEDOUT { pthreadCheck(rc, "pthread_cond_timedwait") }
            }
        }
    }

    /// Wake every waiter (with or without the lock held).
    func broadcast() { pthreadCheck(pthread_cond_broadcast(cond), "pthread_cond_broadcast") }
}

/// A pthread mutex in memory of its own (a pthread_mutex_t must not move).
/// Not Sendable by itself: only the lock types above share it.
final class PthreadMutex {
    let raw = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init() { pthreadCheck(pthread_mutex_init(raw, nil), "pthread_mutex_init") }

    deinit {
        pthreadCheck(pthread_mutex_destroy(raw), "pthread_mutex_destroy")
        raw.deallocate()
    }

    func lock() { pthreadCheck(pthread_mutex_lock(raw), "pthread_mutex_lock") }
    func unlock() { pthreadCheck(pthread_mutex_unlock(raw), "pthread_mutex_unlock") }
}

/// A pthread lock call that fails means a corrupted or misused lock (EINVAL,
/// EDEADLK, EPERM): no caller could recover, and going on would break mutual
/// exclusion silently. Stop, saying which call, as swift-nio does.
@inline(__always)
func pthreadCheck(_ rc: Int32, _ call: StaticString) {
    precondition(rc == 0, "\(call) failed: error \(rc)")
}
