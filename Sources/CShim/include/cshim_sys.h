#ifndef CSHIM_SYS_H
#define CSHIM_SYS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* Thread-local "last error" text behind mk_last_error(). */
void cshim_set_last_error(const char *msg);
const char *cshim_last_error(void);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t cshim_monotonic_ns(void);

/* read() exactly len bytes, waiting at most timeout_ms (-1 = forever) and
 * until wake_fd (-1: none) is readable. 0, -ETIMEDOUT, -ECANCELED (woken),
 * -EPIPE at end of file, or -errno. */
int cshim_read_exact(int fd, void *buf, size_t len, int timeout_ms, int wake_fd);

/* Write iov[0..cnt) from byte *done on (advanced as bytes go out), waiting
 * for room in poll() only: never past deadline_ns (CLOCK_MONOTONIC, 0 =
 * none), never once wake_fd (-1: none) is readable. 0 when all is written;
 * -ETIMEDOUT, -ECANCELED (woken), or -errno (EPIPE: the reader is gone;
 * never a SIGPIPE on a socket). Call again after -ETIMEDOUT to go on. */
int cshim_writev_bounded(int fd, int is_socket, const struct iovec *iov, int cnt, size_t *done,
                         int wake_fd, uint64_t deadline_ns);

/* A wakeup fd (eventfd) for cshim_wake: readable for good once woken.
 * The fd or -errno. */
int cshim_wake_fd_new(void);
/* Wait until fd is readable (or at end of file, or failed): 0; -ECANCELED
 * once wake_fd is readable; or -errno. */
int cshim_wait_readable(int fd, int wake_fd);
/* The same with a timeout (-ETIMEDOUT when it passes; wake_fd may be -1). */
int cshim_wait_readable_ms(int fd, int wake_fd, int timeout_ms);
void cshim_wake(int wake_fd);

/* read() up to cap bytes; retries EINTR. Bytes read (0 = EOF) or -errno. */
long cshim_read_some(int fd, void *buf, size_t cap);

/* readv() into a[0..alen) then b[0..blen) (blen may be 0); retries EINTR.
 * Bytes read (0 = EOF) or -errno. */
long cshim_read2(int fd, void *a, size_t alen, void *b, size_t blen);

/* Block SIGPIPE on the calling thread (library threads only). */
void cshim_block_sigpipe(void);

/* Name the calling thread for top -H, perf and gdb (cut to 15 bytes). */
void cshim_name_thread(const char *name);
/* How long the calling thread has waited for a CPU while ready to run
 * (Linux schedstat's run delay), for telling a slow switchover caused by a
 * busy host from one caused by the link. cshim_cpu_wait_open opens the
 * calling thread's /proc/thread-self/schedstat (an fd that keeps naming that
 * thread) or returns -1 where the kernel does not offer it;
 * cshim_cpu_wait_ns reads it: cumulative ns, or -1. */
int cshim_cpu_wait_open(void);
int64_t cshim_cpu_wait_ns(int fd);

/* 1 if fd is a socket (a two-way channel the ack can travel back on). */
int cshim_is_socket(int fd);

/* Bytes queued in a socket's send buffer (SIOCOUTQ), 0 if unknown. */
uint64_t cshim_socket_outq(int fd);

/* recv() without blocking: bytes read, 0 at end of file, -EAGAIN when
 * nothing is there, or -errno. */
long cshim_recv_nowait(int fd, void *buf, size_t cap);

/* send() without blocking and without SIGPIPE: bytes sent (possibly fewer
 * than len), -EAGAIN when the socket is full, or -errno. */
long cshim_send_nowait(int fd, const void *buf, size_t len);

/* shutdown(fd, SHUT_RDWR) if fd is a socket; 0 or -errno. */
int cshim_shutdown(int fd);

/* Fault [addr, addr+len) in writable without changing its contents
 * (MADV_POPULATE_WRITE, or a read and write-back per page where the kernel
 * lacks it). 0 or -errno (-ENOMEM: the kernel could not back it). */
int cshim_populate_write(void *addr, size_t len);

/* 1 if the 4096-byte page at p is all zero. */
int cshim_page_is_zero(const void *p);

/* Word-wide atomics for the dirty marks other threads may set. The mark is
 * a release so that the write it reports (a device's DMA into guest memory)
 * is visible to the migration thread once its exchange has taken the bit;
 * relaxed promised nothing of the kind (x86 gave it anyway). */
static inline void cshim_atomic_or_u64(uint64_t *p, uint64_t v)
{
    __atomic_fetch_or(p, v, __ATOMIC_RELEASE);
}
static inline uint64_t cshim_atomic_xchg_u64(uint64_t *p, uint64_t v)
{
    return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL);
}
/* A peek at a word others may be marking: atomic, so that skipping clean
 * words is not a data race; a mark it misses is taken at the next sync. */
static inline uint64_t cshim_atomic_load_u64(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

#endif /* CSHIM_SYS_H */
