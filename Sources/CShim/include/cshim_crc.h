#ifndef CSHIM_CRC_H
#define CSHIM_CRC_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32C (Castagnoli). Pass crc = 0 to start; feed the result back to
 * continue over more bytes. Uses SSE4.2 when the CPU has it. */
uint32_t cshim_crc32c(uint32_t crc, const void *data, size_t len);

#endif
