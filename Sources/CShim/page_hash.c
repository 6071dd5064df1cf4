#include "cshim_hash.h"
#include "cshim_sys.h"

#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* Constants: the per-lane keys, the key step per 64-byte stripe and the
 * finalizer's multipliers (well-mixed odd 64-bit constants from xxHash and
 * splitmix64). Changing any of them changes the wire format. */
static const uint64_t KEY[8] = {
    0x9E3779B185EBCA87ull, 0xC2B2AE3D27D4EB4Full, 0x165667B19E3779F9ull, 0x85EBCA77C2B2AE63ull,
    0x27D4EB2F165667C5ull, 0x94D049BB133111EBull, 0xBF58476D1CE4E5B9ull, 0xD6E8FEB86659FD93ull,
};
#define KEY_STEP 0x9E3779B97F4A7C15ull
#define PAGE 4096
#define STRIPES (PAGE / 64)

static uint32_t finish(const uint64_t acc[8])
{
    uint64_t h = PAGE;
    for (int j = 0; j < 8; j++) {
        h ^= acc[j] * KEY[j];
        h = ((h << 31) | (h >> 33)) * 0x9E3779B185EBCA87ull;
    }
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return (uint32_t)h;
}

uint32_t cshim_page_hash_scalar(const void *page)
{
    const unsigned char *p = page;
    uint64_t acc[8] = { 0 };
    for (int s = 0; s < STRIPES; s++) {
        uint64_t v[8];
        memcpy(v, p + 64 * s, 64); /* little-endian host (x86-64, aarch64) */
        for (int j = 0; j < 8; j++) {
            uint64_t m = v[j] ^ (KEY[j] + (uint64_t)s * KEY_STEP);
            acc[j] += (m & 0xFFFFFFFFu) * (m >> 32);
            acc[j] += v[j ^ 1]; /* each lane also takes its neighbour's word */
        }
    }
    return finish(acc);
}

#if defined(__x86_64__)
/* One stripe of the AVX2 path; `store` also writes the stripe to `dst`. */
#define STRIPE(store)                                                                     \
    do {                                                                                  \
        __m256i v0 = _mm256_loadu_si256((const __m256i *)(p + 64 * s));                   \
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(p + 64 * s + 32));              \
        if (store) {                                                                      \
            _mm256_storeu_si256((__m256i *)(d + 64 * s), v0);                             \
            _mm256_storeu_si256((__m256i *)(d + 64 * s + 32), v1);                        \
        }                                                                                 \
        __m256i m0 = _mm256_xor_si256(v0, k0), m1 = _mm256_xor_si256(v1, k1);             \
        a0 = _mm256_add_epi64(a0, _mm256_mul_epu32(m0, _mm256_srli_epi64(m0, 32)));       \
        a1 = _mm256_add_epi64(a1, _mm256_mul_epu32(m1, _mm256_srli_epi64(m1, 32)));       \
        a0 = _mm256_add_epi64(a0, _mm256_shuffle_epi32(v0, 0x4E));                        \
        a1 = _mm256_add_epi64(a1, _mm256_shuffle_epi32(v1, 0x4E));                        \
        k0 = _mm256_add_epi64(k0, step);                                                  \
        k1 = _mm256_add_epi64(k1, step);                                                  \
    } while (0)

__attribute__((target("avx2"))) static uint32_t hash_avx2(unsigned char *d, const unsigned char *p, int store)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    __m256i k0 = _mm256_loadu_si256((const __m256i *)KEY), k1 = _mm256_loadu_si256((const __m256i *)(KEY + 4));
    const __m256i step = _mm256_set1_epi64x((long long)KEY_STEP);
    if (store) {
        for (int s = 0; s < STRIPES; s++)
            STRIPE(1);
    } else {
        for (int s = 0; s < STRIPES; s++)
            STRIPE(0);
    }
    uint64_t acc[8];
    _mm256_storeu_si256((__m256i *)acc, a0);
    _mm256_storeu_si256((__m256i *)(acc + 4), a1);
    return finish(acc);
}

static int have_avx2(void)
{
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        v = __builtin_cpu_supports("avx2") ? 1 : 0;
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}
#endif

uint32_t cshim_page_hash(const void *page)
{
#if defined(__x86_64__)
    if (have_avx2())
        return hash_avx2(NULL, page, 0);
#endif
    return cshim_page_hash_scalar(page);
}

uint32_t cshim_page_copy_hash(void *dst, const void *src)
{
#if defined(__x86_64__)
    if (have_avx2())
        return hash_avx2(dst, src, 1);
#endif
    memcpy(dst, src, PAGE);
    return cshim_page_hash_scalar(dst);
}

int cshim_pages_zero_or_hash(const void *base, int n, uint32_t *hashes, uint64_t *zero_mask)
{
    /* One pass per page: the zero check reads its first 256-byte block (a
     * data page almost always ends the check there), then the hash streams
     * the whole page while those lines are still in L1. The next page's
     * first lines are prefetched meanwhile: the hardware prefetcher stops at
     * page boundaries. */
    const unsigned char *p = base;
    int zeros = 0;
    for (int w = 0; w < (n + 63) / 64; w++)
        zero_mask[w] = 0;
    for (int i = 0; i < n; i++) {
        const unsigned char *page = p + (size_t)i * PAGE;
#if defined(__x86_64__)
        if (i + 1 < n) {
            for (int l = 0; l < 256; l += 64)
                _mm_prefetch((const char *)(page + PAGE + l), _MM_HINT_T0);
        }
#endif
        if (cshim_page_is_zero(page)) {
            zero_mask[i / 64] |= 1ull << (i % 64);
            hashes[i] = 0;
            zeros++;
        } else {
            hashes[i] = cshim_page_hash(page);
        }
    }
    return zeros;
}
