#include "cshim_sha256.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t IV[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

static inline uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static inline uint32_t load_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void blocks_scalar(uint32_t s[8], const uint8_t *p, size_t n)
{
    for (; n > 0; n--, p += 64) {
        uint32_t w[64];
        for (int i = 0; i < 16; i++) w[i] = load_be32(p + 4 * i);
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = s[0], b = s[1], c = s[2], d = s[3], e = s[4], f = s[5], g = s[6], h = s[7];
        for (int i = 0; i < 64; i++) {
            uint32_t t1 = h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
            uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            h = g; g = f; f = e; e = d + t1;
            d = c; c = b; b = a; a = t1 + t2;
        }
        s[0] += a; s[1] += b; s[2] += c; s[3] += d;
        s[4] += e; s[5] += f; s[6] += g; s[7] += h;
    }
}

#if defined(__x86_64__)
/* The SHA extensions keep the state as two vectors, ABEF and CDGH, and do
 * two rounds per sha256rnds2; msg1/msg2 compute the message schedule four
 * words at a time. */
__attribute__((target("sha,sse4.1,ssse3")))
static void blocks_shani(uint32_t s[8], const uint8_t *p, size_t n)
{
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
    __m128i t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&s[0]), 0xB1);   /* CDAB */
    __m128i st1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&s[4]), 0x1B); /* EFGH */
    __m128i st0 = _mm_alignr_epi8(t, st1, 8);      /* ABEF */
    st1 = _mm_blend_epi16(st1, t, 0xF0);           /* CDGH */
    for (; n > 0; n--, p += 64) {
        __m128i save0 = st0, save1 = st1;
        __m128i w[16];
#pragma clang loop unroll(full)
        for (int g = 0; g < 16; g++) {
            if (g < 4) {
                w[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * g)), bswap);
            } else {
                __m128i x = _mm_sha256msg1_epu32(w[g - 4], w[g - 3]);
                x = _mm_add_epi32(x, _mm_alignr_epi8(w[g - 1], w[g - 2], 4));
                w[g] = _mm_sha256msg2_epu32(x, w[g - 1]);
            }
            __m128i m = _mm_add_epi32(w[g], _mm_loadu_si128((const __m128i *)&K[4 * g]));
            st1 = _mm_sha256rnds2_epu32(st1, st0, m);
            st0 = _mm_sha256rnds2_epu32(st0, st1, _mm_shuffle_epi32(m, 0x0E));
        }
        st0 = _mm_add_epi32(st0, save0);
        st1 = _mm_add_epi32(st1, save1);
    }
    t = _mm_shuffle_epi32(st0, 0x1B);              /* FEBA */
    st1 = _mm_shuffle_epi32(st1, 0xB1);            /* DCHG */
    st0 = _mm_blend_epi16(t, st1, 0xF0);           /* DCBA */
    st1 = _mm_alignr_epi8(st1, t, 8);              /* HGFE */
    _mm_storeu_si128((__m128i *)&s[0], st0);
    _mm_storeu_si128((__m128i *)&s[4], st1);
}

static int has_shani(void)
{
    static int cached = -1;
    if (cached < 0) cached = __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1");
    return cached;
}
#endif

static void blocks(uint32_t s[8], const uint8_t *p, size_t n)
{
#if defined(__x86_64__)
    if (has_shani()) {
        blocks_shani(s, p, n);
        return;
    }
#endif
    blocks_scalar(s, p, n);
}

int cshim_sha256_accelerated(void)
{
#if defined(__x86_64__)
    return has_shani();
#else
    return 0;
#endif
}

void cshim_sha256_init(cshim_sha256 *c)
{
    memcpy(c->state, IV, sizeof IV);
    c->total = 0;
    c->used = 0;
}

static void update_with(cshim_sha256 *c, const void *data, size_t len,
                        void (*fn)(uint32_t *, const uint8_t *, size_t))
{
    const uint8_t *p = data;
    c->total += len;
    if (c->used > 0) {
        size_t take = 64 - c->used < len ? 64 - c->used : len;
        memcpy(c->block + c->used, p, take);
        c->used += (uint32_t)take;
        p += take;
        len -= take;
        if (c->used < 64) return;
        fn(c->state, c->block, 1);
        c->used = 0;
    }
    if (len >= 64) {
        fn(c->state, p, len / 64);
        p += len & ~(size_t)63;
        len &= 63;
    }
    memcpy(c->block, p, len);
    c->used = (uint32_t)len;
}

static void final_with(cshim_sha256 *c, uint8_t out[32], void (*fn)(uint32_t *, const uint8_t *, size_t))
{
    uint64_t bits = c->total * 8;
    c->block[c->used++] = 0x80;
    if (c->used > 56) {
        memset(c->block + c->used, 0, 64 - c->used);
        fn(c->state, c->block, 1);
        c->used = 0;
    }
    memset(c->block + c->used, 0, 56 - c->used);
    for (int i = 0; i < 8; i++) c->block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    fn(c->state, c->block, 1);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(c->state[i] >> 24);
        out[4 * i + 1] = (uint8_t)(c->state[i] >> 16);
        out[4 * i + 2] = (uint8_t)(c->state[i] >> 8);
        out[4 * i + 3] = (uint8_t)c->state[i];
    }
}

void cshim_sha256_update(cshim_sha256 *c, const void *data, size_t len) { update_with(c, data, len, blocks); }
void cshim_sha256_final(cshim_sha256 *c, uint8_t out[32]) { final_with(c, out, blocks); }

void cshim_sha256_scalar(const void *data, size_t len, uint8_t out[32])
{
    cshim_sha256 c;
    cshim_sha256_init(&c);
    update_with(&c, data, len, blocks_scalar);
    final_with(&c, out, blocks_scalar);
}

void cshim_hmac_key_init(cshim_hmac_key *k, const void *key, size_t len)
{
    uint8_t block[64] = { 0 };
    if (len > 64) {
        /* RFC 2104: a key longer than the block is hashed first. */
        cshim_sha256 c;
        cshim_sha256_init(&c);
        cshim_sha256_update(&c, key, len);
        cshim_sha256_final(&c, block);
    } else if (len > 0) {
        memcpy(block, key, len);
    }
    uint8_t pad[64];
    for (int i = 0; i < 64; i++) pad[i] = block[i] ^ 0x36;
    cshim_sha256_init(&k->inner);
    cshim_sha256_update(&k->inner, pad, 64);
    for (int i = 0; i < 64; i++) pad[i] = block[i] ^ 0x5c;
    cshim_sha256_init(&k->outer);
    cshim_sha256_update(&k->outer, pad, 64);
    memset(block, 0, sizeof block);
    memset(pad, 0, sizeof pad);
}

void cshim_hmac_begin(const cshim_hmac_key *k, cshim_sha256 *msg) { *msg = k->inner; }

void cshim_hmac_end(const cshim_hmac_key *k, cshim_sha256 *msg, uint8_t out[32])
{
    uint8_t inner[32];
    cshim_sha256_final(msg, inner);
    cshim_sha256 o = k->outer;
    cshim_sha256_update(&o, inner, 32);
    cshim_sha256_final(&o, out);
}

void cshim_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len, uint8_t out[32])
{
    cshim_hmac_key k;
    cshim_sha256 m;
    cshim_hmac_key_init(&k, key, key_len);
    cshim_hmac_begin(&k, &m);
    cshim_sha256_update(&m, data, len);
    cshim_hmac_end(&k, &m, out);
}

int cshim_ct_compare(const void *a, const void *b, size_t n)
{
    const volatile uint8_t *x = a, *y = b;
    uint8_t d = 0;
    for (size_t i = 0; i < n; i++) d |= x[i] ^ y[i];
    return d != 0;
}

int cshim_random_bytes(void *out, size_t n)
{
    uint8_t *p = out;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        p += got;
        n -= (size_t)got;
    }
    return 0;
}
