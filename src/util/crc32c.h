/*
 * CRC-32C (Castagnoli, polynomial 0x1EDC6F41, reflected, as in iSCSI and
 * ext4): the migration stream's end-to-end check (docs/stream-format.md).
 *
 * On x86-64 with SSE4.2 the `crc32` instruction computes it, three streams
 * at once over each 4 KiB page; elsewhere a byte table does.  Both give the
 * same results (tests/unit/test_crc32c.c).  Safe from any thread.
 */
#ifndef VMFERRY_UTIL_CRC32C_H
#define VMFERRY_UTIL_CRC32C_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The CRC-32C of @n bytes at @p continuing @crc: crc32c(0, p, n) is the CRC
 * of those bytes, and crc32c(crc32c(0, a, na), b, nb) that of a then b.
 */
uint32_t crc32c(uint32_t crc, const void *p, size_t n);

/* Whether this CPU has the instruction (crc32c uses it then). */
bool crc32c_hw_available(void);
/* The table version and the instruction's, for tests and benchmarks (the
 * latter only when crc32c_hw_available()). */
uint32_t crc32c_sw(uint32_t crc, const void *p, size_t n);
uint32_t crc32c_hw(uint32_t crc, const void *p, size_t n);

#endif
