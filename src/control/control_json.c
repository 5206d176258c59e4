#include "control/control_json.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- UTF-8 ---- */

size_t control_json_utf8_seq_len(const unsigned char *s, size_t n)
{
	unsigned char lo = 0x80, hi = 0xbf; /* the second byte's range (Unicode table 3-7) */
	size_t len;

	if (n == 0)
		return 0;
	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		len = 2;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		len = 3;
		if (s[0] == 0xe0)
			lo = 0xa0; /* below: overlong */
		else if (s[0] == 0xed)
			hi = 0x9f; /* above: surrogates */
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		len = 4;
		if (s[0] == 0xf0)
			lo = 0x90; /* below: overlong */
		else if (s[0] == 0xf4)
			hi = 0x8f; /* above: beyond U+10FFFF */
	} else {
		return 0;
	}
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return len;
}

bool control_json_utf8_valid(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;

	for (size_t i = 0; i < n;) {
		size_t k = control_json_utf8_seq_len(u + i, n - i);

		if (k == 0)
			return false;
		i += k;
	}
	return true;
}

int control_json_utf8_cut(const char *s, size_t max_bytes)
{
	size_t n = strnlen(s, max_bytes + 1);

	if (max_bytes > INT32_MAX)
		max_bytes = INT32_MAX;
	if (n <= max_bytes)
		return (int)n;
	/* s[max_bytes] is the first byte left out: back up to a lead byte. */
	n = max_bytes;
	for (int k = 0; k < 3 && n > 0 && (s[n] & 0xc0) == 0x80; k++)
		n--;
	return (int)n;
}

char *control_json_utf8_sanitize(const char *s, size_t n, size_t *out_len)
{
	static const char replacement[] = "\xef\xbf\xbd"; /* U+FFFD */
	const unsigned char *u = (const unsigned char *)s;
	size_t need = 0, o = 0;
	char *out;

	for (size_t i = 0; i < n;) {
		size_t k = control_json_utf8_seq_len(u + i, n - i);

		need += k ? k : 3;
		i += k ? k : 1;
	}
	out = malloc(need + 1);
	if (!out)
		return NULL;
	for (size_t i = 0; i < n;) {
		size_t k = control_json_utf8_seq_len(u + i, n - i);

		if (k) {
			memcpy(out + o, s + i, k);
			o += k;
			i += k;
		} else {
			memcpy(out + o, replacement, 3);
			o += 3;
			i++;
		}
	}
	out[o] = '\0';
	if (out_len)
		*out_len = o;
	return out;
}

/* Why the bytes at @s are not UTF-8, for an error message. */
static const char *control_json_utf8_why(const unsigned char *s, size_t n)
{
	unsigned char c = s[0], c1 = n > 1 ? s[1] : 0;
	bool cont = (c1 & 0xc0) == 0x80;

	if (c >= 0x80 && c < 0xc0)
		return "a continuation byte without a lead byte";
	if (c == 0xc0 || c == 0xc1 || (c == 0xe0 && cont && c1 < 0xa0) ||
	    (c == 0xf0 && cont && c1 < 0x90))
		return "an overlong encoding";
	if (c == 0xed && cont && c1 >= 0xa0)
		return "a UTF-16 surrogate";
	if ((c == 0xf4 && cont && c1 >= 0x90) || (c >= 0xf5 && c <= 0xf7))
		return "a code point beyond U+10FFFF";
	if (c >= 0xf8)
		return "a byte that never occurs in UTF-8";
	return "a truncated sequence";
}

/* ---- the check ---- */

struct control_json_key {
	const char *name; /* decoded, in the scan's keybuf */
	size_t len;
	size_t offset;    /* of its opening quote in the text */
};

struct control_json_frame {
	bool is_object;
	bool expect_key;  /* in an object: the next string is a member name */
	size_t key_first; /* this object's first entry in keys[] */
	size_t keybuf_mark;
};

struct control_json_scan {
	const unsigned char *s;
	size_t n, pos;
	char *keybuf;     /* n + 1 bytes: decoded names and their NULs never outgrow their text */
	size_t keybuf_len;
	struct control_json_key *keys; /* names of the objects open now */
	size_t nkeys, keys_cap;
	char *why;
	size_t why_bytes;
};

static int control_json_fail(struct control_json_scan *sc, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int control_json_fail(struct control_json_scan *sc, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(sc->why, sc->why_bytes, fmt, ap);
	va_end(ap);
	return -EBADMSG;
}

static int control_json_hex4(const unsigned char *p, unsigned *cp)
{
	*cp = 0;
	for (int i = 0; i < 4; i++) {
		unsigned char c = p[i];
		unsigned d;

		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return -1;
		*cp = *cp << 4 | d;
	}
	return 0;
}

/* Append code point @cp as UTF-8 to @out (when not NULL) at *o. */
static void control_json_put_cp(char *out, size_t *o, unsigned cp)
{
	unsigned char b[4];
	size_t k;

	if (cp < 0x80) {
		b[0] = (unsigned char)cp, k = 1;
	} else if (cp < 0x800) {
		b[0] = (unsigned char)(0xc0 | cp >> 6);
		b[1] = (unsigned char)(0x80 | (cp & 0x3f)), k = 2;
	} else if (cp < 0x10000) {
		b[0] = (unsigned char)(0xe0 | cp >> 12);
		b[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
		b[2] = (unsigned char)(0x80 | (cp & 0x3f)), k = 3;
	} else {
		b[0] = (unsigned char)(0xf0 | cp >> 18);
		b[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
		b[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
		b[3] = (unsigned char)(0x80 | (cp & 0x3f)), k = 4;
	}
	if (out)
		memcpy(out + *o, b, k);
	*o += k;
}

/* The \u escape at sc->pos (on the 'u'); its code point in *cp, pairs joined. */
static int control_json_scan_u(struct control_json_scan *sc, unsigned *cp)
{
	size_t at = sc->pos - 1; /* the backslash */
	unsigned lo;

	if (sc->n - sc->pos < 5 || control_json_hex4(sc->s + sc->pos + 1, cp) < 0)
		return control_json_fail(sc, "bad \\u escape at offset %zu", at);
	sc->pos += 5;
	if (*cp == 0)
		return control_json_fail(sc, "\\u0000 at offset %zu: NUL is not allowed in strings", at);
	if (*cp >= 0xdc00 && *cp <= 0xdfff)
		return control_json_fail(sc, "\\u%04X at offset %zu: a lone UTF-16 low surrogate",
					 *cp, at);
	if (*cp < 0xd800 || *cp > 0xdbff)
		return 0;
	if (sc->n - sc->pos < 6 || sc->s[sc->pos] != '\\' || sc->s[sc->pos + 1] != 'u' ||
	    control_json_hex4(sc->s + sc->pos + 2, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
		return control_json_fail(sc, "\\u%04X at offset %zu: a UTF-16 high surrogate "
					 "not followed by a low one", *cp, at);
	sc->pos += 6;
	*cp = 0x10000 + ((*cp - 0xd800) << 10) + (lo - 0xdc00);
	return 0;
}

/*
 * The string whose opening quote is at sc->pos; leaves pos after the closing
 * one.  A member name is decoded onto keybuf and recorded in keys[].
 */
static int control_json_scan_string(struct control_json_scan *sc, bool is_key)
{
	size_t start = sc->pos, o = sc->keybuf_len;
	char *out = is_key ? sc->keybuf : NULL;
	int rc;

	for (sc->pos++; sc->pos < sc->n;) {
		unsigned char c = sc->s[sc->pos];
		unsigned cp;
		size_t k;

		if (c == '"')
			break;
		if (c == '\\') {
			if (sc->pos + 1 >= sc->n)
				return control_json_fail(sc, "bad escape at offset %zu", sc->pos);
			c = sc->s[++sc->pos];
			if (c == 'u') {
				rc = control_json_scan_u(sc, &cp);
				if (rc < 0)
					return rc;
				control_json_put_cp(out, &o, cp);
				continue;
			}
			if (!strchr("\"\\/bfnrt", c) || c == '\0')
				return control_json_fail(sc, "bad escape at offset %zu", sc->pos - 1);
			cp = c == 'b' ? '\b' : c == 'f' ? '\f' : c == 'n' ? '\n' : c == 'r' ? '\r' :
			     c == 't' ? '\t' : c;
			control_json_put_cp(out, &o, cp);
			sc->pos++;
			continue;
		}
		k = control_json_utf8_seq_len(sc->s + sc->pos, sc->n - sc->pos);
		if (k == 0)
			return control_json_fail(sc, "invalid UTF-8 at offset %zu: %s", sc->pos,
						 control_json_utf8_why(sc->s + sc->pos,
								       sc->n - sc->pos));
		if (out)
			memcpy(out + o, sc->s + sc->pos, k);
		o += k;
		sc->pos += k;
	}
	if (sc->pos >= sc->n)
		return control_json_fail(sc, "unterminated string at offset %zu", start);
	sc->pos++;
	if (!is_key)
		return 0;
	if (sc->nkeys == sc->keys_cap) {
		size_t cap = sc->keys_cap ? sc->keys_cap * 2 : 16;
		struct control_json_key *p = realloc(sc->keys, cap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		sc->keys = p;
		sc->keys_cap = cap;
	}
	sc->keys[sc->nkeys++] = (struct control_json_key){
		.name = sc->keybuf + sc->keybuf_len, .len = o - sc->keybuf_len, .offset = start,
	};
	/* NUL-terminated for messages: name + NUL never outgrow the quoted text */
	sc->keybuf[o++] = '\0';
	sc->keybuf_len = o;
	return 0;
}

/* The number starting at sc->pos: integers must fit int64, others be finite. */
static int control_json_scan_number(struct control_json_scan *sc)
{
	static const char int64_max[] = "9223372036854775807";
	size_t start = sc->pos, digits_at, ndigits;
	bool integer = true, negative = sc->s[start] == '-';

	while (sc->pos < sc->n && strchr("+-0123456789.eE", sc->s[sc->pos]) && sc->s[sc->pos]) {
		if (strchr(".eE", sc->s[sc->pos]))
			integer = false;
		sc->pos++;
	}
	if (integer) {
		digits_at = start + negative;
		ndigits = sc->pos - digits_at;
		/* JSON has no leading zeros: longer means larger. -2^63 is one more. */
		if (ndigits > 19 ||
		    (ndigits == 19 && memcmp(sc->s + digits_at, int64_max, 19) > 0 &&
		     !(negative && memcmp(sc->s + digits_at, "9223372036854775808", 19) == 0)))
			return control_json_fail(sc, "integer out of range at offset %zu: "
						 "JSON integers must fit in int64", start);
		return 0;
	}
	{
		size_t len = sc->pos - start;
		char small[64], *copy = len < sizeof(small) ? small : malloc(len + 1);
		double d;

		if (!copy)
			return -ENOMEM;
		memcpy(copy, sc->s + start, len);
		copy[len] = '\0';
		d = strtod(copy, NULL);
		if (copy != small)
			free(copy);
		if (!isfinite(d))
			return control_json_fail(sc, "number out of range at offset %zu: "
						 "beyond a double's range", start);
	}
	return 0;
}

static int control_json_key_cmp(const void *a, const void *b)
{
	const struct control_json_key *x = a, *y = b;
	int c = memcmp(x->name, y->name, x->len < y->len ? x->len : y->len);

	if (c)
		return c;
	if (x->len != y->len)
		return x->len < y->len ? -1 : 1;
	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* An object closes: any name twice among its members is refused. */
static int control_json_close_object(struct control_json_scan *sc,
				     const struct control_json_frame *f)
{
	size_t n = sc->nkeys - f->key_first;
	struct control_json_key *k;

	if (n < 2) /* nothing to compare; keys is NULL until the first name */
		goto done;
	k = sc->keys + f->key_first;
	qsort(k, n, sizeof(*k), control_json_key_cmp);
	for (size_t i = 1; i < n; i++)
		if (k[i].len == k[i - 1].len && memcmp(k[i].name, k[i - 1].name, k[i].len) == 0)
			return control_json_fail(sc, "duplicate member name '%.*s' at offset %zu",
						 control_json_utf8_cut(k[i].name, 64), k[i].name,
						 k[i].offset);
done:
	sc->nkeys = f->key_first;
	sc->keybuf_len = f->keybuf_mark;
	return 0;
}

static int control_json_walk(struct control_json_scan *sc, struct control_json_frame *frames,
			     size_t max_depth)
{
	size_t depth = 0; /* frames[depth - 1] is the innermost open container */
	int rc;

	while (sc->pos < sc->n) {
		unsigned char c = sc->s[sc->pos];
		struct control_json_frame *top = depth ? &frames[depth - 1] : NULL;

		if (c == '{' || c == '[') {
			if (depth >= max_depth)
				return control_json_fail(sc, "nesting deeper than %zu at offset %zu",
							 max_depth, sc->pos);
			frames[depth++] = (struct control_json_frame){
				.is_object = c == '{', .expect_key = c == '{',
				.key_first = sc->nkeys, .keybuf_mark = sc->keybuf_len,
			};
			sc->pos++;
		} else if (c == '}' || c == ']') {
			if (!top || top->is_object != (c == '}'))
				return control_json_fail(sc, "unbalanced '%c' at offset %zu", c, sc->pos);
			if (top->is_object && (rc = control_json_close_object(sc, top)) < 0)
				return rc;
			depth--;
			sc->pos++;
		} else if (c == '"') {
			bool is_key = top && top->is_object && top->expect_key;

			rc = control_json_scan_string(sc, is_key);
			if (rc < 0)
				return rc;
		} else if (c == '-' || (c >= '0' && c <= '9')) {
			rc = control_json_scan_number(sc);
			if (rc < 0)
				return rc;
		} else {
			if (c == ':' && top)
				top->expect_key = false;
			else if (c == ',' && top)
				top->expect_key = top->is_object;
			sc->pos++; /* whitespace, literals: json-c checked them */
		}
	}
	if (depth)
		return control_json_fail(sc, "unterminated %s", frames[depth - 1].is_object ?
					 "object" : "array");
	return 0;
}

int control_json_check(const char *text, size_t len, size_t max_depth,
		       char *why, size_t why_bytes)
{
	struct control_json_scan sc = {
		.s = (const unsigned char *)text, .n = len, .why = why, .why_bytes = why_bytes,
	};
	struct control_json_frame *frames;
	int rc = -ENOMEM;

	if (why_bytes)
		why[0] = '\0';
	frames = calloc(max_depth + 1, sizeof(*frames));
	sc.keybuf = malloc(len + 1);
	if (frames && sc.keybuf)
		rc = control_json_walk(&sc, frames, max_depth);
	if (rc == -ENOMEM && why_bytes)
		snprintf(why, why_bytes, "out of memory");
	free(sc.keys);
	free(sc.keybuf);
	free(frames);
	return rc;
}
