/*
 * proxy.c - a one-connection TCP relay that injects one fault.
 *
 *   proxy --listen HOST:PORT --to HOST:PORT [--at WHEN] [--do ACTION] [--rate B/s]
 *
 * WHEN (default never; SIGUSR1 fires at any time):
 *   s2d:N       once N bytes source -> destination have been forwarded
 *   d2s:N       when return byte N+1 arrives (d2s:0 = as the hello arrives, unforwarded)
 *   ms:T        T ms after the source connected
 *   stopped:N   N bytes after the start of the first record flagged STOPPED
 *               (the first one sent with the guest paused: stop-and-copy)
 *   device:N, end:N   N bytes after the start of the DEVICE / END record
 * ACTION (default rst):
 *   rst         abortive close of both sockets (SO_LINGER 0: both peers get RST)
 *   fin         orderly close of both (shutdown + close: FIN; data that still
 *               arrives is answered with RST by the kernel, as for a dead process)
 *   stall       stop forwarding both ways, keep both sockets open until SIGTERM
 *   kill:PID    SIGKILL PID (the destination) and keep relaying what is left
 *   return-fin  FIN towards the source only (it reads EOF), drop later return bytes
 *   return-drop drop every later return byte silently (no FIN, no RST)
 * Record triggers parse the stream as docs/stream-format.md describes it;
 * bytes of a record header are held back until the whole header is in, so a
 * cut can land on any byte of it. --rate caps source -> destination.
 * Prints "proxy: FIRED ..." with the byte counts when the fault happens.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { T_NEVER, T_S2D, T_D2S, T_MS, T_STOPPED, T_DEVICE, T_END };
enum { A_RST, A_FIN, A_STALL, A_KILL, A_RETURN_FIN, A_RETURN_DROP };
static const char *trig_names[] = { "never", "s2d", "d2s", "ms", "stopped", "device", "end" };

static volatile sig_atomic_t g_fire, g_term;
static void on_usr1(int s) { (void)s; g_fire = 1; }
static void on_term(int s) { (void)s; g_term = 1; }

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void die(const char *m)
{
    fprintf(stderr, "proxy: %s: %s\n", m, strerror(errno));
    exit(1);
}

static int resolve(const char *hp, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    const char *colon = strrchr(hp, ':');
    if (!colon || (size_t)(colon - hp) >= sizeof(host))
        return -1;
    snprintf(host, sizeof(host), "%.*s", (int)(colon - hp), hp);
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai;
    if (getaddrinfo(host, colon + 1, &hints, &ai) != 0)
        return -1;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

/* The stream parser: where records start, which one is the trigger. */
struct parser {
    int dead;               /* not our stream: stop parsing */
    uint64_t rec;           /* absolute offset of the next record header, 0 = stream header not read */
    uint64_t stopped, device, end;   /* record starts (+1, 0 = not seen) */
};

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Parse what [pos, pos+len) shows. Returns how far it is safe to forward
 * (a header seen only in part is held back). */
static uint64_t parse(struct parser *p, const uint8_t *buf, uint64_t pos, uint64_t len)
{
    uint64_t have = pos + len;
    if (p->dead)
        return have;
    if (!p->rec) {
        if (have < 20)
            return pos; /* held back: it comes in one write */
        uint64_t n = le(buf + 16, 4);
        if (pos || memcmp(buf, "MKSTREAM", 8) || n < 1 || n > 4096) {
            p->dead = 1;
            return have;
        }
        p->rec = 28 + 24 * n;
    }
    while (p->rec >= pos && p->rec + 32 <= have) {
        const uint8_t *h = buf + (p->rec - pos);
        uint64_t type = le(h, 2), flags = le(h + 2, 2), length = le(h + 16, 8), payload = 0;
        if (type == 1)
            payload = length + ((flags & 1) ? length / 4096 * 4 : 0);
        else if (type == 3)
            payload = length;
        else if (type != 2 && type != 4) {
            p->dead = 1;
            return have;
        }
        if ((flags & 2) && !p->stopped) {
            p->stopped = p->rec + 1;
            printf("proxy: first STOPPED record at s2d byte %llu\n", (unsigned long long)p->rec);
        }
        if (type == 3 && !p->device) {
            p->device = p->rec + 1;
            printf("proxy: DEVICE record at s2d byte %llu (%llu bytes)\n", (unsigned long long)p->rec,
                   (unsigned long long)length);
        }
        if (type == 4 && !p->end) {
            p->end = p->rec + 1;
            printf("proxy: END record at s2d byte %llu\n", (unsigned long long)p->rec);
        }
        fflush(stdout);
        p->rec += 32 + payload;
    }
    return p->rec >= pos && p->rec < have ? p->rec : have;
}

int main(int argc, char **argv)
{
    const char *listen_on = NULL, *to = NULL;
    int trig = T_NEVER, action = A_RST;
    uint64_t arg = 0;
    double rate = 0, tokens = 0, refill = 0;
    pid_t victim = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *o = argv[i], *v = argv[i + 1];
        if (!strcmp(o, "--listen"))
            listen_on = v;
        else if (!strcmp(o, "--to"))
            to = v;
        else if (!strcmp(o, "--rate"))
            rate = strtod(v, NULL);
        else if (!strcmp(o, "--at")) {
            const char *c = strchr(v, ':');
            size_t k;
            for (k = 0; k < sizeof(trig_names) / sizeof(*trig_names); k++)
                if (!strncmp(v, trig_names[k], c ? (size_t)(c - v) : strlen(v)) && strlen(trig_names[k]) == (c ? (size_t)(c - v) : strlen(v)))
                    break;
            if (k == sizeof(trig_names) / sizeof(*trig_names))
                return fprintf(stderr, "proxy: bad --at %s\n", v), 64;
            trig = (int)k;
            arg = c ? strtoull(c + 1, NULL, 0) : 0;
        } else if (!strcmp(o, "--do")) {
            if (!strcmp(v, "rst")) action = A_RST;
            else if (!strcmp(v, "fin")) action = A_FIN;
            else if (!strcmp(v, "stall")) action = A_STALL;
            else if (!strcmp(v, "return-fin")) action = A_RETURN_FIN;
            else if (!strcmp(v, "return-drop")) action = A_RETURN_DROP;
            else if (!strncmp(v, "kill:", 5)) { action = A_KILL; victim = (pid_t)atoi(v + 5); }
            else return fprintf(stderr, "proxy: bad --do %s\n", v), 64;
        } else
            return fprintf(stderr, "proxy: unknown option %s\n", o), 64;
    }
    if (!listen_on || !to)
        return fprintf(stderr, "usage: proxy --listen HOST:PORT --to HOST:PORT [--at WHEN] [--do ACTION] [--rate B/s]\n"), 64;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_usr1 };
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    struct sockaddr_storage la, ta;
    socklen_t ll, tl;
    if (resolve(listen_on, &la, &ll) < 0 || resolve(to, &ta, &tl) < 0)
        return fprintf(stderr, "proxy: cannot resolve addresses\n"), 64;
    int lfd = socket(la.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(lfd, (struct sockaddr *)&la, ll) < 0 || listen(lfd, 1) < 0)
        die("listen");
    printf("proxy: listening on %s -> %s, fault %s:%llu\n", listen_on, to, trig_names[trig], (unsigned long long)arg);
    int a = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (a < 0)
        die(g_term ? "terminated before a connection" : "accept");
    close(lfd);
    int b = socket(ta.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(b, (struct sockaddr *)&ta, tl) < 0)
        die("connect onward");
    setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    double t0 = now_ms();
    printf("proxy: connected\n");

    static uint8_t sbuf[1 << 18], dbuf[1 << 16];
    uint64_t soff = 0, slen = 0, doff = 0, dlen = 0, spos = 0, dpos = 0;
    struct parser ps = { 0 };
    int fired = 0, stalled = 0, drop_return = 0, s_eof = 0, d_eof = 0;
    for (;;) {
        if (g_term)
            break;
        /* where the trigger sits in the s2d stream, once known */
        uint64_t safe = parse(&ps, sbuf + soff, spos, slen);
        uint64_t at = UINT64_MAX;
        if (!fired) {
            if (trig == T_S2D) at = arg;
            else if (trig == T_STOPPED && ps.stopped) at = ps.stopped - 1 + arg;
            else if (trig == T_DEVICE && ps.device) at = ps.device - 1 + arg;
            else if (trig == T_END && ps.end) at = ps.end - 1 + arg;
        }
        int fire = !fired && (g_fire || spos == at || (trig == T_MS && now_ms() - t0 >= (double)arg) ||
                              (trig == T_D2S && dpos == arg && dlen > 0));
        if (fire) {
            fired = 1;
            printf("proxy: FIRED %s after %.0f ms at s2d byte %llu, d2s byte %llu (trigger %s:%llu%s)\n",
                   action == A_RST ? "rst" : action == A_FIN ? "fin" : action == A_STALL ? "stall"
                   : action == A_KILL ? "kill" : action == A_RETURN_FIN ? "return-fin" : "return-drop",
                   now_ms() - t0, (unsigned long long)spos, (unsigned long long)dpos, trig_names[trig],
                   (unsigned long long)arg, g_fire ? ", SIGUSR1" : "");
            if (action == A_RST || action == A_FIN) {
                if (action == A_RST) {
                    struct linger lg = { 1, 0 };
                    setsockopt(a, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
                    setsockopt(b, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
                } else {
                    shutdown(a, SHUT_WR);
                    shutdown(b, SHUT_WR);
                }
                close(a);
                close(b);
                printf("proxy: done\n");
                return 0;
            }
            if (action == A_STALL)
                stalled = 1;
            if (action == A_KILL && kill(victim, SIGKILL) < 0)
                printf("proxy: kill %d: %s\n", (int)victim, strerror(errno));
            if (action == A_RETURN_FIN)
                shutdown(a, SHUT_WR);
            if (action == A_RETURN_FIN || action == A_RETURN_DROP) {
                drop_return = 1;
                dlen = 0;
            }
        }
        if (s_eof && slen == 0 && (d_eof || drop_return) && dlen == 0)
            break;
        /* how much s2d may go now: up to the trigger, a held-back header, the rate */
        uint64_t lim = slen;
        if (safe - spos < lim) lim = safe - spos;
        if (at != UINT64_MAX && at >= spos && at - spos < lim) lim = at - spos;
        int timeout = -1;
        if (rate > 0) {
            /* a token bucket of 64 KiB: a link, not an average */
            double t = now_ms();
            tokens += (t - (refill ? refill : t0)) / 1e3 * rate;
            if (tokens > 65536) tokens = 65536;
            refill = t;
            if (tokens < (double)lim) {
                lim = (uint64_t)tokens;
                timeout = 2;
            }
        }
        if (trig == T_MS && !fired) {
            double left = (double)arg - (now_ms() - t0);
            int l = left > 0 ? (int)left + 1 : 0;
            if (timeout < 0 || l < timeout) timeout = l;
        }
        struct pollfd pf[2] = { { .fd = a }, { .fd = b } };
        if (!stalled) {
            /* room to read even while a record header is held back in part */
            if (slen < sizeof(sbuf) / 2 && !s_eof) pf[0].events |= POLLIN;
            if (lim) pf[1].events |= POLLOUT;
            if (!dlen && !d_eof) pf[1].events |= POLLIN;
            if (dlen && !(trig == T_D2S && !fired && dpos == arg)) pf[0].events |= POLLOUT;
        }
        if (poll(pf, 2, timeout) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        if (pf[0].revents & (POLLIN | POLLHUP | POLLERR) && pf[0].events & POLLIN) {
            memmove(sbuf, sbuf + soff, slen);
            soff = 0;
            ssize_t n = read(a, sbuf + slen, sizeof(sbuf) - slen);
            if (n <= 0) {
                printf("proxy: source %s at s2d byte %llu\n", n == 0 ? "closed" : strerror(errno), (unsigned long long)spos);
                s_eof = 1;
                if (n < 0) break;
                shutdown(b, SHUT_WR);
            } else {
                slen += (uint64_t)n;
            }
        }
        if (pf[1].revents & POLLOUT && lim) {
            ssize_t n = write(b, sbuf + soff, lim);
            if (n < 0) {
                printf("proxy: writing to the destination: %s at s2d byte %llu\n", strerror(errno), (unsigned long long)spos);
                break;
            }
            soff += (uint64_t)n;
            slen -= (uint64_t)n;
            spos += (uint64_t)n;
            tokens -= (double)n;
        }
        if (pf[1].revents & (POLLIN | POLLHUP | POLLERR) && pf[1].events & POLLIN) {
            ssize_t n = read(b, dbuf, sizeof(dbuf));
            if (n <= 0) {
                printf("proxy: destination %s at s2d byte %llu, d2s byte %llu\n", n == 0 ? "closed" : strerror(errno),
                       (unsigned long long)spos, (unsigned long long)dpos);
                d_eof = 1;
                if (n < 0) break;
                if (!drop_return) shutdown(a, SHUT_WR);
            } else if (!drop_return) {
                doff = 0;
                dlen = (uint64_t)n;
            }
        }
        if (pf[0].revents & POLLOUT && dlen) {
            uint64_t m = dlen;
            if (trig == T_D2S && !fired && dpos < arg && arg - dpos < m) m = arg - dpos;
            ssize_t n = write(a, dbuf + doff, m);
            if (n < 0) {
                printf("proxy: writing to the source: %s\n", strerror(errno));
                break;
            }
            doff += (uint64_t)n;
            dlen -= (uint64_t)n;
            dpos += (uint64_t)n;
        }
    }
    /* A peer failed (or SIGTERM): pass an abortive end on to the other one. */
    struct linger lg = { 1, 0 };
    setsockopt(a, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    setsockopt(b, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(a);
    close(b);
    printf("proxy: done, s2d %llu bytes, d2s %llu bytes%s\n", (unsigned long long)spos, (unsigned long long)dpos,
           fired ? "" : ", fault NOT fired");
    return 0;
}
