/*
 * Fuzz the control protocol as a client's bytes reach it: the input is a
 * byte stream split into lines by the server's line framing, and each line
 * goes through parse, capabilities negotiation (one session per input, as
 * one connection), lookup, argument validation, a handler and reply
 * formatting against a command table covering every argument type.
 *
 * Checks beyond "no crash, no leak": every reply is exactly one line of
 * strict UTF-8 that parses as JSON (by json-c, and again by
 * control_json_check: no duplicate names, integers in range) holding either
 * "return" or "error"; handlers only ever see arguments that passed
 * validation, and only once the session has negotiated.  The handlers echo
 * the client's bytes back (the arguments, the command name in errors) and
 * one reports raw bytes of the input as its error, as a handler passing on
 * a peer's text would.  An input's replies are checked once each: a repeat
 * is the same bytes, so it would get the same verdict.
 */
#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "control/control_json.h"
#include "control/control_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct control_arg_spec fuzz_args[] = {
	{ "file", CONTROL_ARG_STRING, true },
	{ "count", CONTROL_ARG_INT, false },
	{ "rate", CONTROL_ARG_NUMBER, false },
	{ "flag", CONTROL_ARG_BOOL, false },
	{ "obj", CONTROL_ARG_OBJECT, false },
	{ "list", CONTROL_ARG_ARRAY, false },
	{ "any", CONTROL_ARG_ANY, false },
	{ NULL, 0, false },
};

/* The session of the input being run: no handler runs before negotiation. */
static struct control_session fuzz_session;

static int fuzz_cmd_args(void *opaque, struct json_object *args, struct json_object **ret,
			 char *errbuf, size_t errlen)
{
	struct json_object *v;

	(void)opaque;
	assert(fuzz_session.negotiated);
	/* Validation promised: "file" is present and a string. */
	assert(json_object_object_get_ex(args, "file", &v));
	assert(json_object_is_type(v, json_type_string));
	if (json_object_object_get_ex(args, "count", &v)) {
		assert(json_object_is_type(v, json_type_int));
		if (json_object_get_int64(v) < 0) {
			snprintf(errbuf, errlen, "negative count");
			return -EINVAL;
		}
	}
	*ret = json_object_get(args);
	return 0;
}

static int fuzz_cmd_plain(void *opaque, struct json_object *args, struct json_object **ret,
			  char *errbuf, size_t errlen)
{
	(void)opaque;
	(void)ret;
	(void)errbuf;
	(void)errlen;
	assert(fuzz_session.negotiated);
	assert(json_object_is_type(args, json_type_object));
	assert(json_object_object_length(args) == 0);
	return 0;
}

/* The input of the current run, for fuzz_cmd_fail's raw-bytes message. */
static const uint8_t *fuzz_data;
static size_t fuzz_size;

static int fuzz_cmd_fail(void *opaque, struct json_object *args, struct json_object **ret,
			 char *errbuf, size_t errlen)
{
	size_t n = fuzz_size < errlen ? fuzz_size : errlen - 1;

	(void)opaque;
	(void)args;
	*ret = json_object_new_object(); /* must be freed on the error path */
	/* Any bytes at all, not UTF-8 nor NUL-free: the reply must stay valid. */
	memcpy(errbuf, fuzz_data, n);
	errbuf[n] = '\0';
	return -EIO;
}

static void fuzz_after(void *opaque)
{
	(void)opaque;
}

static const struct control_command fuzz_cmds[] = {
	{ "dump-guest-memory", fuzz_cmd_args, NULL, fuzz_args, NULL },
	{ "stop", fuzz_cmd_plain, NULL, NULL, NULL },
	{ "quit", fuzz_cmd_plain, NULL, NULL, fuzz_after },
	{ "fail", fuzz_cmd_fail, NULL, NULL, NULL },
};

/*
 * The replies of the current input already checked, by content.  An input
 * repeats lines and errors repeat replies: about 7 in 10 replies are
 * byte-for-byte ones checked earlier in the same input.  The checks depend on
 * the bytes alone, so a repeat needs none; the memory is per input, so what a
 * run covers does not depend on the inputs run before it.  Not instrumented:
 * libFuzzer should not keep inputs for what they do to this bookkeeping.
 */
#define FUZZ_SEEN_SLOTS 1024u           /* a power of two */
#define FUZZ_SEEN_MAX_BYTES (1u << 20)  /* copies kept per input */

struct fuzz_seen_slot {
	uint64_t hash;
	size_t off, len;   /* of the copy in fuzz_seen_bytes */
	uint64_t input;    /* fuzz_input when filled; otherwise empty */
};

static struct fuzz_seen_slot fuzz_seen[FUZZ_SEEN_SLOTS];
static char *fuzz_seen_bytes;
static size_t fuzz_seen_len;
static uint64_t fuzz_input; /* counts inputs, so no slot needs clearing */

__attribute__((noinline, no_sanitize("coverage")))
static uint64_t fuzz_hash(const char *s, size_t n)
{
	uint64_t h = 0x9e3779b97f4a7c15ull ^ n, w;

	for (; n >= 8; s += 8, n -= 8) {
		memcpy(&w, s, 8);
		h = (h ^ w) * 0x100000001b3ull;
		h ^= h >> 29;
	}
	w = 0;
	memcpy(&w, s, n);
	return (h ^ w) * 0x100000001b3ull;
}

/* True when @reply was checked before in this input; otherwise remembers it. */
__attribute__((noinline, no_sanitize("coverage")))
static bool fuzz_reply_seen(const char *reply, size_t len)
{
	uint64_t h = fuzz_hash(reply, len);
	struct fuzz_seen_slot *slot;

	for (size_t i = 0;; i++) {
		if (i == FUZZ_SEEN_SLOTS)
			return false; /* full: check it, do not remember it */
		slot = &fuzz_seen[(h + i) & (FUZZ_SEEN_SLOTS - 1)];
		if (slot->input != fuzz_input)
			break;
		if (slot->hash == h && slot->len == len &&
		    memcmp(fuzz_seen_bytes + slot->off, reply, len) == 0)
			return true;
	}
	if (!fuzz_seen_bytes)
		fuzz_seen_bytes = malloc(FUZZ_SEEN_MAX_BYTES);
	if (!fuzz_seen_bytes || len > FUZZ_SEEN_MAX_BYTES - fuzz_seen_len)
		return false;
	memcpy(fuzz_seen_bytes + fuzz_seen_len, reply, len);
	*slot = (struct fuzz_seen_slot){ .hash = h, .off = fuzz_seen_len, .len = len,
					 .input = fuzz_input };
	fuzz_seen_len += len;
	return false;
}

static void fuzz_check_reply(const struct control_dispatch *res)
{
	struct json_object *o;
	char why[CONTROL_ERROR_DESC_BYTES];

	if (!res->reply || fuzz_reply_seen(res->reply, res->reply_len_bytes))
		return;
	assert(res->reply_len_bytes > 0 && res->reply[res->reply_len_bytes - 1] == '\n');
	assert(memchr(res->reply, '\n', res->reply_len_bytes - 1) == NULL);
	assert(control_json_utf8_valid(res->reply, res->reply_len_bytes));
	assert(control_json_check(res->reply, res->reply_len_bytes, CONTROL_JSON_MAX_DEPTH + 2,
				  why, sizeof(why)) == 0);
	o = json_tokener_parse(res->reply);
	assert(json_object_is_type(o, json_type_object));
	assert(json_object_object_get_ex(o, "return", NULL) !=
	       json_object_object_get_ex(o, "error", NULL));
	json_object_put(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct control_linebuf lb;
	size_t off = 0;

	fuzz_data = data;
	fuzz_size = size;
	fuzz_input++;
	fuzz_seen_len = 0;
	/* Half the inputs start negotiated, so commands are reached without it. */
	fuzz_session.negotiated = size > 0 && (data[0] & 2);
	/* A small limit as well as the real one, so the overflow path is hit. */
	control_linebuf_init(&lb, size > 0 && (data[0] & 1) ? 256 : CONTROL_LINE_MAX_BYTES);
	while (off < size) {
		/* Feed in uneven chunks, as a socket would deliver them. */
		size_t chunk = 1 + (data[off] % 97);
		char *line;
		size_t len;
		int rc;

		if (chunk > size - off)
			chunk = size - off;
		if (control_linebuf_append(&lb, data + off, chunk) < 0)
			break;
		off += chunk;
		while ((rc = control_linebuf_next(&lb, &line, &len)) == 1) {
			struct control_dispatch res;

			if (control_proto_dispatch(fuzz_cmds, sizeof(fuzz_cmds) / sizeof(fuzz_cmds[0]),
						   &fuzz_session, line, len, &res) == 0) {
				fuzz_check_reply(&res);
				free(res.reply);
			}
		}
		if (rc == -EMSGSIZE)
			break; /* the server drops the client here */
	}
	control_linebuf_free(&lb);

	/* The whole input as a single line, too (NULs and all). */
	{
		struct control_dispatch res;

		fuzz_session.negotiated = true;
		if (control_proto_dispatch(fuzz_cmds, sizeof(fuzz_cmds) / sizeof(fuzz_cmds[0]),
					   &fuzz_session, (const char *)data, size, &res) == 0) {
			fuzz_check_reply(&res);
			free(res.reply);
		}
	}
	return 0;
}
