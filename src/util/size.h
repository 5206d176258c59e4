/* Parsing of human sizes ("1G", "256M", "4096") and small integers. */
#ifndef VMFERRY_UTIL_SIZE_H
#define VMFERRY_UTIL_SIZE_H

#include <stdint.h>

/*
 * Parse a size with an optional binary suffix K, M, G, T (case-insensitive,
 * optional trailing "iB"/"B"), or a hex number "0x..." without suffix.  Returns 0 and stores the value, or -EINVAL
 * for junk, -ERANGE on overflow.
 */
int size_parse(const char *text, uint64_t *out_bytes);

/* Parse a decimal unsigned integer in [min, max].  0 or -EINVAL/-ERANGE. */
int size_parse_uint(const char *text, uint64_t min, uint64_t max, uint64_t *out);

#endif
