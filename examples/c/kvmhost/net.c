/*
 * net.c - the migration channel: tcp:HOST:PORT or unix:PATH, as in QEMU's
 * -incoming / migrate URIs. One connected stream socket carries the stream
 * and, back, the destination's acknowledgement.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "kvmhost.h"

struct uri {
    int unix_sock;
    char host[256];
    char port[16];
    char path[108];
};

static int parse_uri(const char *uri, struct uri *u, char *err, size_t cap)
{
    memset(u, 0, sizeof(*u));
    if (!strncmp(uri, "unix:", 5)) {
        if (strlen(uri + 5) == 0 || strlen(uri + 5) >= sizeof(u->path)) {
            snprintf(err, cap, "bad unix socket path in '%s'", uri);
            return -1;
        }
        u->unix_sock = 1;
        strcpy(u->path, uri + 5);
        return 0;
    }
    if (strncmp(uri, "tcp:", 4)) {
        snprintf(err, cap, "'%s': expected tcp:HOST:PORT or unix:PATH", uri);
        return -1;
    }
    const char *h = uri + 4, *colon;
    if (*h == '[') {
        const char *close = strchr(h, ']');
        if (!close || close[1] != ':') {
            snprintf(err, cap, "bad address '%s'", uri);
            return -1;
        }
        snprintf(u->host, sizeof(u->host), "%.*s", (int)(close - h - 1), h + 1);
        colon = close + 1;
    } else {
        colon = strrchr(h, ':');
        if (!colon) {
            snprintf(err, cap, "'%s': missing port", uri);
            return -1;
        }
        snprintf(u->host, sizeof(u->host), "%.*s", (int)(colon - h), h);
    }
    snprintf(u->port, sizeof(u->port), "%s", colon + 1);
    if (!u->port[0]) {
        snprintf(err, cap, "'%s': missing port", uri);
        return -1;
    }
    return 0;
}

static void tune(int fd, int tcp)
{
    int one = 1;
    if (tcp)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int net_connect(const char *uri, double timeout_s, char *err, size_t cap)
{
    struct uri u;
    if (parse_uri(uri, &u, err, cap) < 0)
        return -1;
    double deadline = now_s() + timeout_s;
    for (;;) {
        int fd = -1, e = 0;
        if (u.unix_sock) {
            struct sockaddr_un sa = { .sun_family = AF_UNIX };
            strcpy(sa.sun_path, u.path);
            fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
                return fd;
            e = errno;
        } else {
            struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *ai;
            int g = getaddrinfo(u.host[0] ? u.host : NULL, u.port, &hints, &res);
            if (g) {
                snprintf(err, cap, "%s: %s", uri, gai_strerror(g));
                return -1;
            }
            for (ai = res; ai; ai = ai->ai_next) {
                fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
                if (fd < 0)
                    continue;
                if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
                    freeaddrinfo(res);
                    tune(fd, 1);
                    return fd;
                }
                e = errno;
                close(fd);
                fd = -1;
            }
            freeaddrinfo(res);
        }
        if (fd >= 0)
            close(fd);
        if (now_s() >= deadline || (e != ECONNREFUSED && e != ENOENT && e != EAGAIN)) {
            snprintf(err, cap, "connect %s: %s", uri, strerror(e));
            return -1;
        }
        sleep_ns(50 * 1000000ull);
    }
}

int net_listen(const char *uri, char *err, size_t cap)
{
    struct uri u;
    if (parse_uri(uri, &u, err, cap) < 0)
        return -1;
    int fd;
    if (u.unix_sock) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        strcpy(sa.sun_path, u.path);
        unlink(u.path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1) < 0) {
            snprintf(err, cap, "listen %s: %s", uri, strerror(errno));
            return -1;
        }
        return fd;
    }
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *res;
    int g = getaddrinfo(u.host[0] ? u.host : NULL, u.port, &hints, &res);
    if (g) {
        snprintf(err, cap, "%s: %s", uri, gai_strerror(g));
        return -1;
    }
    fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol);
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 1) < 0) {
        snprintf(err, cap, "listen %s: %s", uri, strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    return fd;
}

int net_accept(int lfd, double timeout_s, char *err, size_t cap)
{
    struct pollfd p = { .fd = lfd, .events = POLLIN };
    int r = poll(&p, 1, timeout_s > 0 ? (int)(timeout_s * 1000) : -1);
    if (r == 0) {
        snprintf(err, cap, "no source connected within %.0f s", timeout_s);
        return -1;
    }
    if (r < 0) {
        snprintf(err, cap, "poll: %s", strerror(errno));
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
    if (fd < 0) {
        snprintf(err, cap, "accept: %s", strerror(errno));
        return -1;
    }
    tune(fd, ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
    return fd;
}
