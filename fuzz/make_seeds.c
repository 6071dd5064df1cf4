/*
 * make_seeds.c - real streams for the fuzz corpus: the library's own source
 * migrates a small guest (the fuzz loader's two regions: 64 KiB at
 * 0x100000000 and 16 KiB at 0x200000000) into a write callback that keeps
 * every byte, with zero and non-zero pages, a second pass of dirty pages
 * and, in some seeds, device state. No return channel, so no hello is
 * awaited. Each stream is written to DIR/loader-N (prefixed with the fuzz
 * target's chunking byte).
 */
#define _GNU_SOURCE
#include <migrationkit.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct capture { unsigned char *buf; size_t len, cap; int syncs, dirty_second, device; };

static int cap_write(void *user, const mk_iovec *iov, int n)
{
    struct capture *c = user;
    for (int i = 0; i < n; i++) {
        if (c->len + iov[i].len > c->cap) {
            c->cap = (c->len + iov[i].len) * 2;
            c->buf = realloc(c->buf, c->cap);
            if (!c->buf) return -1;
        }
        memcpy(c->buf + c->len, iov[i].base, iov[i].len);
        c->len += iov[i].len;
    }
    return 0;
}

static int dirty_log(void *user, uint32_t region, uint64_t *bitmap, uint64_t npages)
{
    struct capture *c = user;
    /* Arm, then report a few pages dirty once: a second pass. */
    if (region == 0 && ++c->syncs == 3 && c->dirty_second) {
        bitmap[0] |= 0x5ull;
        if (npages > 9) bitmap[0] |= 1ull << 9;
    }
    return 0;
}

static int nop(void *u) { (void)u; return 0; }

static int save_dev(void *user, mk_buffer *out)
{
    struct capture *c = user;
    static const char blob[] = "vcpu0 registers and a device or two";
    return c->device ? mk_buffer_append(out, blob, sizeof blob) : 0;
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : ".";
    static const size_t sizes[2] = { 64 << 10, 16 << 10 };
    static const uint64_t gpas[2] = { 0x100000000ull, 0x200000000ull };
    for (int seed = 0; seed < 4; seed++) {
        struct capture c = { .dirty_second = seed & 1, .device = seed >> 1 };
        mk_source_config sc;
        mk_source_config_init(&sc);
        mk_source_callbacks cb = { .struct_size = sizeof cb, .user = &c, .write = cap_write,
                                   .get_dirty_log = dirty_log, .pause_vcpus = nop, .resume_vcpus = nop,
                                   .save_device_state = save_dev };
        mk_source *s;
        if (mk_source_create(&s, &sc, &cb, NULL) != 0) { fprintf(stderr, "%s\n", mk_last_error()); return 1; }
        unsigned char *mem[2];
        for (int r = 0; r < 2; r++) {
            mem[r] = mmap(NULL, sizes[r], PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            /* Every other page non-zero, some pages half zero. */
            for (size_t p = 0; p < sizes[r] / 4096; p++)
                if (p % 2 == (size_t)seed % 2)
                    memset(mem[r] + p * 4096, (int)(p * 37 + (size_t)seed) | 1, p % 3 ? 4096 : 2048);
            mk_region reg;
            mk_region_init(&reg);
            reg.guest_phys_addr = gpas[r];
            reg.size = sizes[r];
            reg.host_addr = mem[r];
            mk_source_add_region(s, &reg, NULL);
        }
        if (mk_source_start(s) != 0 || mk_source_wait(s, NULL) != 0) {
            fprintf(stderr, "seed %d: %s\n", seed, mk_source_errmsg(s));
            return 1;
        }
        mk_source_destroy(s);
        char path[4096];
        snprintf(path, sizeof path, "%s/loader-%d", dir, seed);
        FILE *f = fopen(path, "wb");
        unsigned char chunking = (unsigned char)(seed * 29 + 3);
        if (!f || fwrite(&chunking, 1, 1, f) != 1 || fwrite(c.buf, 1, c.len, f) != c.len || fclose(f) != 0) {
            perror(path);
            return 1;
        }
        printf("%s: %zu bytes\n", path, c.len + 1);
        free(c.buf);
        for (int r = 0; r < 2; r++) munmap(mem[r], sizes[r]);
    }
    return 0;
}
