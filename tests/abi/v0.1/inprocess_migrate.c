/*
 * inprocess_migrate.c - the smallest complete MigrationKit consumer.
 *
 * A "guest" here is a 256 MiB buffer that a writer thread keeps dirtying
 * (the vCPU). It is live-migrated to a second buffer through a socketpair:
 * the source handle runs on its own migration thread, the destination
 * handle loads on this program's second thread. At the end both buffers
 * must be equal byte for byte.
 *
 * Build: cc inprocess_migrate.c $(pkg-config --cflags --libs migrationkit) -pthread
 */
#define _GNU_SOURCE
#include <migrationkit.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define GUEST_SIZE (256u << 20)
#define GUEST_PAGES (GUEST_SIZE / MK_PAGE_SIZE)
#define WORDS ((GUEST_PAGES + 63) / 64)

struct guest {
    unsigned char *mem;
    _Atomic uint64_t dirty[WORDS]; /* the "dirty log" the writer keeps */
    atomic_int pause_requested;
    atomic_int paused;
    atomic_int stop;
    uint64_t writes;
};

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* The vCPU: writes a counter into pseudo-random pages of a 8 MiB working
 * set, at a paced rate, and honours pause requests. */
static void *writer(void *arg)
{
    struct guest *g = arg;
    uint64_t x = 88172645463325252ull;
    while (!atomic_load(&g->stop)) {
        if (atomic_load(&g->pause_requested)) {
            atomic_store(&g->paused, 1);
            while (atomic_load(&g->pause_requested) && !atomic_load(&g->stop))
                sleep_ms(1);
            atomic_store(&g->paused, 0);
            continue;
        }
        for (int i = 0; i < 256; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            uint64_t page = x % (8u << 20 >> 12);
            uint64_t off = page * MK_PAGE_SIZE + (x >> 40) % MK_PAGE_SIZE;
            g->mem[off] = (unsigned char)(++g->writes);
            atomic_fetch_or(&g->dirty[page / 64], 1ull << (page % 64));
        }
        sleep_ms(1);
    }
    return NULL;
}

static int get_dirty_log(void *user, uint32_t region, uint64_t *bitmap, uint64_t npages)
{
    struct guest *g = user;
    if (region != 0 || npages != GUEST_PAGES)
        return -1;
    for (size_t w = 0; w < WORDS; w++)
        bitmap[w] |= atomic_exchange(&g->dirty[w], 0);
    return 0;
}

static int pause_vcpus(void *user)
{
    struct guest *g = user;
    atomic_store(&g->pause_requested, 1);
    while (!atomic_load(&g->paused))
        sleep_ms(0);
    return 0;
}

static int resume_vcpus(void *user)
{
    struct guest *g = user;
    atomic_store(&g->pause_requested, 0);
    return 0;
}

static int save_device_state(void *user, mk_buffer *out)
{
    struct guest *g = user;
    return mk_buffer_append(out, &g->writes, sizeof(g->writes));
}

struct dest {
    mk_dest *handle;
    unsigned char *mem;
    uint64_t writes;
    int rc;
};

static int load_device_state(void *user, const void *data, size_t len)
{
    struct dest *d = user;
    if (len != sizeof(d->writes))
        return -1;
    memcpy(&d->writes, data, len);
    return 0;
}

static void *dest_thread(void *arg)
{
    struct dest *d = arg;
    d->rc = mk_dest_run(d->handle);
    return NULL;
}

static void log_cb(void *user, int level, const char *msg)
{
    (void)user;
    if (level <= MK_LOG_INFO)
        fprintf(stderr, "  [mk] %s\n", msg);
}

static int check(int rc, const char *what, const char *msg)
{
    if (rc != 0) {
        fprintf(stderr, "%s failed: %s (%s)\n", what, mk_strerror(rc), msg);
        exit(1);
    }
    return rc;
}

int main(void)
{
    printf("libmigrationkit %s\n", mk_version());
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        perror("socketpair");
        return 1;
    }

    static struct guest g;
    g.mem = mmap(NULL, GUEST_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    static struct dest d;
    d.mem = mmap(NULL, GUEST_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g.mem == MAP_FAILED || d.mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (size_t i = 0; i < GUEST_SIZE / 2; i += 64)
        g.mem[i] = (unsigned char)(i >> 12); /* half the guest has data, half is zero */

    pthread_t vcpu;
    pthread_create(&vcpu, NULL, writer, &g);

    /* Destination. */
    mk_dest_config dcfg;
    mk_dest_config_init(&dcfg);
    dcfg.transport_fd = sv[1];
    mk_dest_callbacks dcb = { .struct_size = sizeof dcb, .user = &d,
                              .load_device_state = load_device_state, .log = log_cb };
    check(mk_dest_create(&d.handle, &dcfg, &dcb), "mk_dest_create", mk_last_error());
    mk_region r;
    mk_region_init(&r);
    r.size = GUEST_SIZE;
    r.host_addr = d.mem;
    check(mk_dest_add_region(d.handle, &r, NULL), "mk_dest_add_region", mk_dest_errmsg(d.handle));
    pthread_t dt;
    pthread_create(&dt, NULL, dest_thread, &d);

    /* Source. */
    mk_source_config cfg;
    mk_source_config_init(&cfg);
    cfg.transport_fd = sv[0];
    mk_source_callbacks cb = { .struct_size = sizeof cb, .user = &g,
                               .get_dirty_log = get_dirty_log, .pause_vcpus = pause_vcpus,
                               .resume_vcpus = resume_vcpus, .save_device_state = save_device_state,
                               .log = log_cb };
    mk_source *src;
    check(mk_source_create(&src, &cfg, &cb, NULL), "mk_source_create", mk_last_error());
    r.host_addr = g.mem;
    check(mk_source_add_region(src, &r, NULL), "mk_source_add_region", mk_source_errmsg(src));
    check(mk_source_set_param(src, "downtime-limit", "50"), "set downtime-limit", mk_source_errmsg(src));
    check(mk_source_start(src), "mk_source_start", mk_source_errmsg(src));

    int status;
    int rc = mk_source_wait(src, &status);
    pthread_join(dt, NULL);
    atomic_store(&g.stop, 1);
    pthread_join(vcpu, NULL);

    char json[4096];
    mk_source_stats_json(src, json, sizeof json, NULL);
    printf("source: %s (%s)\n%s\n", mk_status_name(status), rc ? mk_source_errmsg(src) : "ok", json);
    printf("destination: %s\n", d.rc ? mk_dest_errmsg(d.handle) : "loaded");
    if (rc != 0 || d.rc != 0)
        return 1;

    /* The guest stayed paused after completion, so the copies must match. */
    int same = memcmp(g.mem, d.mem, GUEST_SIZE) == 0 && g.writes == d.writes;
    printf("buffers %s (%llu guest writes, device state carried %llu)\n", same ? "EQUAL" : "DIFFER",
           (unsigned long long)g.writes, (unsigned long long)d.writes);
    mk_source_destroy(src);
    mk_dest_destroy(d.handle);
    close(sv[0]);
    close(sv[1]);
    return same ? 0 : 1;
}
