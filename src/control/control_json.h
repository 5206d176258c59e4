/*
 * What json-c does not check in control JSON, and UTF-8 helpers for replies.
 *
 * json-c 0.16 in strict mode with JSON_TOKENER_VALIDATE_UTF8 checks the
 * grammar and the byte structure of UTF-8, but keeps the last of duplicate
 * member names, clamps integers beyond int64 (to INT64_MAX or INT64_MIN, or
 * stores them as uint64), accepts overlong forms, UTF-16 surrogates and code
 * points beyond U+10FFFF, turns \u escapes of lone surrogates into U+FFFD and
 * keeps \u0000 inside a string that C code then reads cut short.
 * control_json_check() refuses all of those on a text json-c has already
 * accepted; docs/control.md lists the rules.
 *
 * Pure functions: no I/O, no globals; any thread.
 */
#ifndef VMFERRY_CONTROL_JSON_H
#define VMFERRY_CONTROL_JSON_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Check @len bytes of @text, one JSON value that json-c parsed successfully:
 * no object holds a member name twice (names compared after unescaping, at
 * any depth); every integer (a number without fraction or exponent) fits in
 * int64 and every other number is finite as a double; every string is
 * strict UTF-8 (no overlong form, no surrogate, nothing beyond U+10FFFF) and
 * its \u escapes pair surrogates correctly and are not \u0000.
 * Returns 0, -EBADMSG with a one-line reason (ASCII, naming the byte offset)
 * in @why, or -ENOMEM.  Nesting deeper than @max_depth is -EBADMSG too.
 */
int control_json_check(const char *text, size_t len, size_t max_depth,
		       char *why, size_t why_bytes);

/*
 * Length of the valid UTF-8 sequence at @s (1..4), at most @n bytes read;
 * 0 when the bytes there are not strict UTF-8.
 */
size_t control_json_utf8_seq_len(const unsigned char *s, size_t n);

/* True when the @n bytes at @s are strict UTF-8. */
bool control_json_utf8_valid(const char *s, size_t n);

/*
 * The number of bytes of @s (NUL-terminated) to print so that at most
 * @max_bytes are printed and no UTF-8 sequence is cut: for "%.*s".
 */
int control_json_utf8_cut(const char *s, size_t max_bytes);

/*
 * A malloc'd copy of @n bytes at @s with each byte that does not begin a
 * valid UTF-8 sequence replaced by U+FFFD, NUL-terminated, its length in
 * *out_len.  Bytes below 0x80 are copied as they are, so JSON text stays
 * JSON text.  NULL on allocation failure.
 */
char *control_json_utf8_sanitize(const char *s, size_t n, size_t *out_len);

#endif
