#ifndef CSHIM_HASH_H
#define CSHIM_HASH_H

#include <stddef.h>
#include <stdint.h>

/* MKH-32, the per-page check value of stream format version 2 (specified
 * in docs/stream-format.md): an XXH3-style multiply-accumulate over eight
 * 64-bit lanes, about four times faster than CRC-32C here because the lanes
 * are independent. Not cryptographic: it catches torn pages and accidental
 * damage. Uses AVX2 when the CPU has it; both paths give the same value. */
uint32_t cshim_page_hash(const void *page);
/* The portable reference, for tests. */
uint32_t cshim_page_hash_scalar(const void *page);
/* Copy a 4096-byte page and hash it in the same pass (the loader's path:
 * the source bytes are hot in cache, the destination is guest memory). */
uint32_t cshim_page_copy_hash(void *dst, const void *src);

/* The source's pass over a run of n pages at base: for each page, whether
 * it is all zero (bit i of zero_mask, (n+63)/64 words) or else its MKH-32
 * in hashes[i] (0 for zero pages). Returns the number of zero pages. */
int cshim_pages_zero_or_hash(const void *base, int n, uint32_t *hashes, uint64_t *zero_mask);

#endif
