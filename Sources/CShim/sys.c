#define _GNU_SOURCE
#include "cshim_sys.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/eventfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char last_error[512];

void cshim_set_last_error(const char *msg)
{
    if (!msg)
        msg = "";
    strncpy(last_error, msg, sizeof(last_error) - 1);
    last_error[sizeof(last_error) - 1] = '\0';
}

const char *cshim_last_error(void)
{
    return last_error;
}

uint64_t cshim_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* One wait for `events` on fd, or for wake_fd to become readable (a cancel;
 * -1: none), at most timeout_ms (-1: no limit). 0: ready (or an error or
 * hang-up, which the next read or write reports); -ECANCELED, -ETIMEDOUT, or
 * -errno of poll. Every bounded wait in this file goes through here. */
static int wait_fd(int fd, short events, int wake_fd, int timeout_ms)
{
    struct pollfd pfd[2] = { { .fd = fd, .events = events }, { .fd = wake_fd, .events = POLLIN } };
    for (;;) {
        int r = poll(pfd, wake_fd >= 0 ? 2 : 1, timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (wake_fd >= 0 && (pfd[1].revents & POLLIN))
            return -ECANCELED;
        return r == 0 ? -ETIMEDOUT : 0;
    }
}

int cshim_read_exact(int fd, void *buf, size_t len, int timeout_ms, int wake_fd)
{
    char *p = buf;
    while (len > 0) {
        if (timeout_ms >= 0 || wake_fd >= 0) {
            int r = wait_fd(fd, POLLIN, wake_fd, timeout_ms);
            if (r < 0)
                return r;
        }
        ssize_t n = read(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EPIPE;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * Why poll() and a wakeup fd rather than a blocking write that cancel
 * unblocks with shutdown(): shutdown works on sockets only (a pipe writer
 * stayed blocked for good), it cannot express a deadline (completion-
 * timeout), and it would also be the only way to learn that the destination
 * refused the stream while it stopped reading. Waiting in poll() for room,
 * for the wakeup fd and for the return channel covers all three on any fd,
 * without touching the flags of the VMM's open file description.
 */
int cshim_writev_bounded(int fd, int is_socket, const struct iovec *iov, int cnt, size_t *done,
                         int wake_fd, uint64_t deadline_ns)
{
    struct iovec local[1024];
    for (;;) {
        int first = 0;
        size_t skip = *done;
        while (first < cnt && skip >= iov[first].iov_len) {
            skip -= iov[first].iov_len;
            first++;
        }
        if (first >= cnt)
            return 0;
        int n = 0;
        for (int i = first; i < cnt && n < 1024; i++, n++) {
            local[n] = iov[i];
            if (i == first) {
                local[n].iov_base = (char *)local[n].iov_base + skip;
                local[n].iov_len -= skip;
            }
        }
        ssize_t w;
        if (is_socket) {
            /* MSG_NOSIGNAL: a peer that went away is EPIPE, not a SIGPIPE
             * that kills the VMM; MSG_DONTWAIT: the wait happens in poll. */
            struct msghdr msg = { .msg_iov = local, .msg_iovlen = (size_t)n };
            w = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        } else {
            /* No per-call non-blocking flag on a pipe, and O_NONBLOCK would
             * change the VMM's file description: write only when poll says
             * there is room, at most PIPE_BUF bytes, which then never blocks
             * (the library is the only writer). */
            struct pollfd pfd = { .fd = fd, .events = POLLOUT };
            int r = poll(&pfd, 1, 0);
            if (r < 0) {
                w = -1;
            } else if (r == 0) {
                w = -1;
                errno = EAGAIN;
            } else {
                size_t len = local[0].iov_len < PIPE_BUF ? local[0].iov_len : PIPE_BUF;
                w = write(fd, local[0].iov_base, len);
            }
        }
        if (w >= 0) {
            *done += (size_t)w;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int timeout = -1;
        if (deadline_ns) {
            uint64_t now = cshim_monotonic_ns();
            if (now >= deadline_ns)
                return -ETIMEDOUT;
            uint64_t ms = (deadline_ns - now + 999999) / 1000000;
            timeout = ms > INT_MAX ? INT_MAX : (int)ms;
        }
        int r = wait_fd(fd, POLLOUT, wake_fd, timeout);
        if (r < 0 && r != -ETIMEDOUT)
            return r;
        /* Room, an error or a hang-up: the next write says which; a
         * timeout: the deadline check above. */
    }
}

int cshim_wait_readable(int fd, int wake_fd)
{
    /* Data, end of file or an error: the read says which. */
    return wait_fd(fd, POLLIN, wake_fd, -1);
}

int cshim_wait_readable_ms(int fd, int wake_fd, int timeout_ms)
{
    return wait_fd(fd, POLLIN, wake_fd, timeout_ms);
}

int cshim_wake_fd_new(void)
{
    int fd = eventfd(0, EFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

void cshim_wake(int wake_fd)
{
    uint64_t one = 1;
    if (write(wake_fd, &one, sizeof one) < 0) {
        /* Only EAGAIN at a counter near 2^64: it is readable already. */
    }
}

long cshim_read_some(int fd, void *buf, size_t cap)
{
    for (;;) {
        ssize_t n = read(fd, buf, cap);
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 ? -errno : (long)n;
    }
}

long cshim_read2(int fd, void *a, size_t alen, void *b, size_t blen)
{
    struct iovec v[2] = { { a, alen }, { b, blen } };
    for (;;) {
        ssize_t n = readv(fd, v, blen > 0 ? 2 : 1);
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 ? -errno : (long)n;
    }
}

void cshim_block_sigpipe(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

void cshim_name_thread(const char *name)
{
    char buf[16];
    snprintf(buf, sizeof buf, "%s", name);
    pthread_setname_np(pthread_self(), buf);
}

int cshim_is_socket(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

uint64_t cshim_socket_outq(int fd)
{
    int n = 0;
    if (ioctl(fd, SIOCOUTQ, &n) != 0 || n < 0)
        return 0;
    return (uint64_t)n;
}

long cshim_recv_nowait(int fd, void *buf, size_t cap)
{
    for (;;) {
        ssize_t n = recv(fd, buf, cap, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EWOULDBLOCK)
            return -EAGAIN;
        return n < 0 ? -errno : (long)n;
    }
}

long cshim_send_nowait(int fd, const void *buf, size_t len)
{
    for (;;) {
        ssize_t n = send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EWOULDBLOCK)
            return -EAGAIN;
        return n < 0 ? -errno : (long)n;
    }
}

int cshim_shutdown(int fd)
{
    return shutdown(fd, SHUT_RDWR) == 0 ? 0 : -errno;
}

int cshim_page_is_zero(const void *p)
{
    /* OR-reduce 256-byte blocks (vectorized) and stop at the first non-zero
     * one: a data page usually ends the scan in its first block, a zero page
     * costs one pass. */
    const uint64_t *w = p;
    for (int b = 0; b < 4096 / 8; b += 32) {
        uint64_t acc = 0;
        for (int i = 0; i < 32; i++)
            acc |= w[b + i];
        if (acc)
            return 0;
    }
    return 1;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

int cshim_populate_write(void *addr, size_t len)
{
    /* Linux 5.14+: fault the range in writable without touching the data. */
    if (madvise(addr, len, MADV_POPULATE_WRITE) == 0)
        return 0;
    if (errno != EINVAL)
        return -errno;
    /* Older kernels: write each page's first byte back to itself. The
     * caller promised nobody else writes the memory meanwhile. */
    volatile unsigned char *p = addr;
    for (size_t off = 0; off < len; off += 4096)
        p[off] = p[off];
    return 0;
}

int cshim_cpu_wait_open(void)
{
    return open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
}

int64_t cshim_cpu_wait_ns(int fd)
{
    /* "<ns on a CPU> <ns waiting for one> <timeslices>\n" */
    char buf[96];
    if (fd < 0)
        return -1;
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    unsigned long long on_cpu, waiting;
    if (sscanf(buf, "%llu %llu", &on_cpu, &waiting) != 2)
        return -1;
    return waiting > INT64_MAX ? -1 : (int64_t)waiting;
}
