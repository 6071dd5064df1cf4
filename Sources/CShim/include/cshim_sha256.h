#ifndef CSHIM_SHA256_H
#define CSHIM_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* SHA-256 (FIPS 180-4) and HMAC-SHA-256 (RFC 2104), for authenticated
 * streams. The block function uses the CPU's SHA extensions where it has
 * them (about 4x the portable code); both give the same digest. */

typedef struct cshim_sha256 {
    uint32_t state[8];
    uint64_t total;          /* bytes hashed so far */
    uint8_t block[64];       /* a partial block */
    uint32_t used;           /* bytes in block */
} cshim_sha256;

void cshim_sha256_init(cshim_sha256 *c);
void cshim_sha256_update(cshim_sha256 *c, const void *data, size_t len);
void cshim_sha256_final(cshim_sha256 *c, uint8_t out[32]);
/* The same with the portable block function only, for tests. */
void cshim_sha256_scalar(const void *data, size_t len, uint8_t out[32]);
/* Whether the SHA-extension path is in use (for benchmarks and logs). */
int cshim_sha256_accelerated(void);

/* HMAC with the key's inner and outer pads hashed once: a keyed context is
 * copied for every message, so per-message cost is the message plus two
 * compression calls. */
typedef struct cshim_hmac_key {
    cshim_sha256 inner;
    cshim_sha256 outer;
} cshim_hmac_key;

void cshim_hmac_key_init(cshim_hmac_key *k, const void *key, size_t len);
/* Start a message under a prepared key. */
void cshim_hmac_begin(const cshim_hmac_key *k, cshim_sha256 *msg);
void cshim_hmac_end(const cshim_hmac_key *k, cshim_sha256 *msg, uint8_t out[32]);
/* One-shot HMAC-SHA-256. */
void cshim_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len, uint8_t out[32]);
/* Constant-time comparison of n bytes: 0 when equal. */
int cshim_ct_compare(const void *a, const void *b, size_t n);
/* n bytes from the kernel's random source (getrandom); 0 or -errno. */
int cshim_random_bytes(void *out, size_t n);

#endif
