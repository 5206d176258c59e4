/* Human sizes ("1G", "256M", "4096"), parsed and formatted, and small integers. */
#ifndef VMFERRY_UTIL_SIZE_H
#define VMFERRY_UTIL_SIZE_H

#include <stddef.h>
#include <stdint.h>

/*
 * Parse a size with an optional binary suffix K, M, G, T (case-insensitive,
 * optional trailing "iB"/"B"), or a hex number "0x..." without suffix.  Returns 0 and stores the value, or -EINVAL
 * for junk, -ERANGE on overflow.
 */
int size_parse(const char *text, uint64_t *out_bytes);

/* Parse a decimal unsigned integer in [min, max].  0 or -EINVAL/-ERANGE. */
int size_parse_uint(const char *text, uint64_t min, uint64_t max, uint64_t *out);

/*
 * Format @bytes for people: "512 B", "4.0 KiB", "312.4 MiB", "1.02 GiB",
 * "1.50 TiB" (binary units; three significant digits from GiB on).
 * Returns @buf.
 */
const char *size_format(uint64_t bytes, char *buf, size_t len);

#endif
