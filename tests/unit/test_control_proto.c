/*
 * Unit tests for the control protocol (control_proto.h): line framing,
 * request parsing, argument validation, dispatch and formatting; and for the
 * socket server and client library run without a VM (control_server_create
 * with test commands), which needs no KVM.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <fcntl.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "control/client.h"
#include "control/control.h"
#include "control/control_json.h"
#include "control/control_proto.h"
#include "harness/harness.h"
#include "util/log.h"
#include "util/version.h"

/* ---- helpers ---- */

static struct json_object *parse_line(const char *line, size_t len)
{
	struct json_object *o;

	assert_true(len > 0 && line[len - 1] == '\n');
	assert_null(memchr(line, '\n', len - 1)); /* exactly one line */
	o = json_tokener_parse(line);
	assert_non_null(o);
	assert_true(json_object_is_type(o, json_type_object));
	return o;
}

static const char *get_str(struct json_object *o, const char *k1, const char *k2)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, k1, &v))
		return NULL;
	if (k2 && !json_object_object_get_ex(v, k2, &v))
		return NULL;
	return json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

/* ---- test command table ---- */

static int echo_calls;
static int after_calls;

static int cmd_echo(void *opaque, struct json_object *args, struct json_object **ret,
		    char *errbuf, size_t errlen)
{
	(void)opaque;
	(void)errbuf;
	(void)errlen;
	echo_calls++;
	assert_non_null(args); /* always an object, even without "arguments" */
	assert_true(json_object_is_type(args, json_type_object));
	*ret = json_object_get(args);
	return 0;
}

static int cmd_fail(void *opaque, struct json_object *args, struct json_object **ret,
		    char *errbuf, size_t errlen)
{
	struct json_object *v;

	(void)opaque;
	(void)ret;
	if (json_object_object_get_ex(args, "einval", &v) && json_object_get_boolean(v)) {
		snprintf(errbuf, errlen, "value out of range");
		return -EINVAL;
	}
	if (json_object_object_get_ex(args, "quiet", &v) && json_object_get_boolean(v))
		return -ENOSPC; /* no message: the dispatcher makes one */
	if (json_object_object_get_ex(args, "latin1", &v) && json_object_get_boolean(v)) {
		/* Not UTF-8, as a peer's error string or a file name may be. */
		snprintf(errbuf, errlen, "caf\xe9 \xc0\xaf \xed\xa0\x80 broke");
		return -EIO;
	}
	snprintf(errbuf, errlen, "it broke");
	return -EIO;
}

static int cmd_nothing(void *opaque, struct json_object *args, struct json_object **ret,
		       char *errbuf, size_t errlen)
{
	(void)opaque;
	(void)args;
	(void)ret;
	(void)errbuf;
	(void)errlen;
	return 0;
}

static void cmd_after(void *opaque)
{
	atomic_int *flag = opaque;

	after_calls++;
	if (flag)
		atomic_store(flag, 1);
}

static const struct control_arg_spec echo_args[] = {
	{ "s", CONTROL_ARG_STRING, true },
	{ "i", CONTROL_ARG_INT, false },
	{ "n", CONTROL_ARG_NUMBER, false },
	{ "b", CONTROL_ARG_BOOL, false },
	{ "o", CONTROL_ARG_OBJECT, false },
	{ "a", CONTROL_ARG_ARRAY, false },
	{ "x", CONTROL_ARG_ANY, false },
	{ NULL, 0, false },
};

static const struct control_arg_spec fail_args[] = {
	{ "einval", CONTROL_ARG_BOOL, false },
	{ "quiet", CONTROL_ARG_BOOL, false },
	{ "latin1", CONTROL_ARG_BOOL, false },
	{ NULL, 0, false },
};

static const struct control_command test_cmds[] = {
	{ "echo", cmd_echo, NULL, echo_args, NULL },
	{ "fail", cmd_fail, NULL, fail_args, NULL },
	{ "nothing", cmd_nothing, NULL, NULL, NULL },
	{ "after", cmd_nothing, NULL, NULL, cmd_after },
};
#define NTEST_CMDS (sizeof(test_cmds) / sizeof(test_cmds[0]))

/* Most tests run in command mode, as after qmp_capabilities. */
static struct control_session negotiated = { .negotiated = true };

/* Dispatch @line in @session; the parsed reply (caller puts) or NULL for none. */
static struct json_object *dispatch_in(struct control_session *session, const char *line,
				       const struct control_command **after)
{
	struct control_dispatch res;
	struct json_object *o = NULL;

	assert_int_equal(control_proto_dispatch(test_cmds, NTEST_CMDS, session, line,
						strlen(line), &res), 0);
	if (after)
		*after = res.after;
	if (res.reply) {
		assert_int_equal(strlen(res.reply), res.reply_len_bytes);
		assert_true(control_json_utf8_valid(res.reply, res.reply_len_bytes));
		o = parse_line(res.reply, res.reply_len_bytes);
	}
	free(res.reply);
	return o;
}

static struct json_object *dispatch(const char *line, const struct control_command **after)
{
	return dispatch_in(&negotiated, line, after);
}

/* Dispatch in @session and expect an error of @cls whose desc contains @needle. */
static void expect_error_in(struct control_session *session, const char *line,
			    const char *cls, const char *needle)
{
	struct json_object *o = dispatch_in(session, line, NULL);
	const char *desc;

	assert_non_null(o);
	assert_false(json_object_object_get_ex(o, "return", NULL));
	assert_string_equal(get_str(o, "error", "class"), cls);
	desc = get_str(o, "error", "desc");
	assert_non_null(desc);
	if (!strstr(desc, needle))
		fail_msg("desc '%s' lacks '%s' (line: %s)", desc, needle, line);
	json_object_put(o);
}

static void expect_error(const char *line, const char *cls, const char *needle)
{
	expect_error_in(&negotiated, line, cls, needle);
}

/* ---- line framing ---- */

static void test_linebuf_lines(void **state)
{
	struct control_linebuf lb;
	char *line;
	size_t len;

	(void)state;
	control_linebuf_init(&lb, 16);
	assert_int_equal(control_linebuf_next(&lb, &line, &len), 0);
	assert_int_equal(control_linebuf_append(&lb, "ab\ncd\r\n\nef", 10), 0);
	assert_int_equal(control_linebuf_next(&lb, &line, &len), 1);
	assert_string_equal(line, "ab");
	assert_int_equal(len, 2);
	assert_int_equal(control_linebuf_next(&lb, &line, &len), 1);
	assert_string_equal(line, "cd"); /* CRLF accepted */
	assert_int_equal(len, 2);
	assert_int_equal(control_linebuf_next(&lb, &line, &len), 1);
	assert_int_equal(len, 0);
	assert_int_equal(control_linebuf_next(&lb, &line, &len), 0);
	assert_int_equal(control_linebuf_pending(&lb), 2);
	assert_int_equal(control_linebuf_append(&lb, "gh\n", 3), 0);
	assert_int_equal(control_linebuf_next(&lb, &line, &len), 1);
	assert_string_equal(line, "efgh");
	assert_int_equal(control_linebuf_pending(&lb), 0);
	control_linebuf_free(&lb);
}

static void test_linebuf_byte_by_byte(void **state)
{
	const char *text = "{\"execute\":\"x\"}\nsecond\n";
	struct control_linebuf lb;
	char *line;
	size_t len;
	int got = 0;

	(void)state;
	control_linebuf_init(&lb, CONTROL_LINE_MAX_BYTES);
	for (size_t i = 0; text[i]; i++) {
		assert_int_equal(control_linebuf_append(&lb, &text[i], 1), 0);
		while (control_linebuf_next(&lb, &line, &len) == 1) {
			assert_string_equal(line, got == 0 ? "{\"execute\":\"x\"}" : "second");
			got++;
		}
	}
	assert_int_equal(got, 2);
	control_linebuf_free(&lb);
}

static void test_linebuf_limit(void **state)
{
	struct control_linebuf lb;
	char buf[40];
	char *line;
	size_t len;

	(void)state;
	/* Exactly the limit is fine, terminated or not. */
	control_linebuf_init(&lb, 16);
	memset(buf, 'a', 16);
	assert_int_equal(control_linebuf_append(&lb, buf, 16), 0);
	assert_int_equal(control_linebuf_next(&lb, &line, &len), 0);
	assert_int_equal(control_linebuf_append(&lb, "\n", 1), 0);
	assert_int_equal(control_linebuf_next(&lb, &line, &len), 1);
	assert_int_equal(len, 16);
	/* One more byte without a newline: too long already. */
	memset(buf, 'b', 17);
	assert_int_equal(control_linebuf_append(&lb, buf, 17), 0);
	assert_int_equal(control_linebuf_next(&lb, &line, &len), -EMSGSIZE);
	control_linebuf_free(&lb);

	/* A complete over-long line arriving at once. */
	control_linebuf_init(&lb, 16);
	memset(buf, 'c', sizeof(buf));
	buf[20] = '\n';
	assert_int_equal(control_linebuf_append(&lb, buf, 21), 0);
	assert_int_equal(control_linebuf_next(&lb, &line, &len), -EMSGSIZE);
	control_linebuf_free(&lb);
}

/* ---- parsing: every bad-input class ---- */

static void test_malformed_json(void **state)
{
	static const char *const bad[] = {
		"{", "}", "{\"execute\":", "{\"execute\": \"stop\"", "garbage", "{'execute' 1}",
		"{\"execute\":\"stop\"} trailing", "{\"execute\":\"stop\"}{}",
		"{\"execute\":\"stop\",}", "nul", "tru", "\"unterminated",
		"{\"execute\":\"st\xff\xfe\"}", /* invalid UTF-8 */
		"{\"a\":01}",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_error(bad[i], CONTROL_ERR_GENERIC, "malformed JSON");
	assert_int_equal(echo_calls, 0);
}

static void test_nul_byte(void **state)
{
	static const char line[] = "{\"execute\":\"echo\"}\0{}";
	struct control_dispatch res;
	struct json_object *o;

	(void)state;
	assert_int_equal(control_proto_dispatch(test_cmds, NTEST_CMDS, &negotiated, line,
						sizeof(line) - 1, &res), 0);
	o = parse_line(res.reply, res.reply_len_bytes);
	assert_string_equal(get_str(o, "error", "class"), CONTROL_ERR_GENERIC);
	assert_non_null(strstr(get_str(o, "error", "desc"), "NUL"));
	json_object_put(o);
	free(res.reply);
}

static void test_too_deep(void **state)
{
	char line[256];
	size_t n = 0;

	(void)state;
	n += (size_t)sprintf(line, "{\"execute\":\"echo\",\"arguments\":{\"x\":");
	for (int i = 0; i < CONTROL_JSON_MAX_DEPTH + 2; i++)
		line[n++] = '[';
	for (int i = 0; i < CONTROL_JSON_MAX_DEPTH + 2; i++)
		line[n++] = ']';
	strcpy(line + n, "}}");
	expect_error(line, CONTROL_ERR_GENERIC, "malformed JSON");
}

static void test_not_an_object(void **state)
{
	static const char *const bad[] = {
		"[]", "[{\"execute\":\"echo\"}]", "42", "-1.5", "\"echo\"", "null", "true", "false",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_error(bad[i], CONTROL_ERR_GENERIC, "must be a JSON object");
}

/* ---- what json-c lets through: duplicates, big integers, loose UTF-8 ---- */

static void test_duplicate_members(void **state)
{
	static const char *const dup[] = {
		/* last would win: this ran "after", i.e. quit, before */
		"{\"execute\":\"nothing\",\"execute\":\"after\"}",
		"{\"execute\":\"after\",\"id\":1,\"id\":2}",
		"{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"s\":\"b\"}}",
		"{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"o\":{\"k\":1,\"j\":2,\"k\":3}}}",
		"{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"x\":[1,[{\"k\":1,\"k\":1}]]}}",
		/* the same name spelled two ways */
		"{\"execute\":\"nothing\",\"\\u0065xecute\":\"after\"}",
		"{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"o\":{\"\\u00e9\":1,\"\xc3\xa9\":2}}}",
	};
	struct json_object *o, *ret, *v;

	(void)state;
	echo_calls = after_calls = 0;
	for (size_t i = 0; i < sizeof(dup) / sizeof(dup[0]); i++)
		expect_error(dup[i], CONTROL_ERR_GENERIC, "duplicate member name");
	expect_error(dup[0], CONTROL_ERR_GENERIC, "duplicate member name 'execute' at offset 21");
	assert_int_equal(echo_calls, 0);
	assert_int_equal(after_calls, 0);

	/* The same names in different objects, and names differing only in case. */
	o = dispatch("{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"o\":{\"s\":1,\"S\":2,"
		     "\"o\":{\"s\":3}},\"x\":[{\"k\":1},{\"k\":2},{\"\":0,\"k\":{\"k\":5}}]}}", NULL);
	assert_int_equal(echo_calls, 1);
	assert_true(json_object_object_get_ex(o, "return", &ret));
	assert_true(json_object_object_get_ex(ret, "o", &v));
	assert_int_equal(json_object_object_length(v), 3);
	json_object_put(o);
	echo_calls = 0;
}

static void test_integer_range(void **state)
{
	static const char *const out[] = {
		"9223372036854775808", "-9223372036854775809", "18446744073709551615",
		"18446744073709551616", "100000000000000000000", "-99999999999999999999999",
	};
	char line[160];
	struct json_object *o, *ret, *v;

	(void)state;
	for (size_t i = 0; i < sizeof(out) / sizeof(out[0]); i++) {
		snprintf(line, sizeof(line),
			 "{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"i\":%s}}", out[i]);
		expect_error(line, CONTROL_ERR_GENERIC, "integer out of range at offset 43");
		/* anywhere, not only in arguments that are integers */
		snprintf(line, sizeof(line), "{\"execute\":\"echo\",\"id\":[%s]}", out[i]);
		expect_error(line, CONTROL_ERR_GENERIC, "integer out of range");
	}
	expect_error("{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"n\":1e400}}",
		     CONTROL_ERR_GENERIC, "number out of range");
	expect_error("{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"n\":-1.5E+999}}",
		     CONTROL_ERR_GENERIC, "number out of range");

	/* The edges themselves are fine, and kept exactly. */
	o = dispatch("{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"i\":9223372036854775807,"
		     "\"x\":-9223372036854775808,\"n\":1e-400}}", NULL);
	assert_true(json_object_object_get_ex(o, "return", &ret));
	assert_true(json_object_object_get_ex(ret, "i", &v));
	assert_true(json_object_get_int64(v) == INT64_MAX);
	assert_true(json_object_object_get_ex(ret, "x", &v));
	assert_true(json_object_get_int64(v) == INT64_MIN);
	json_object_put(o);
	/* -5 is an integer in range: the handler, not the parser, refuses it. */
	o = dispatch("{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"i\":-5}}", NULL);
	assert_true(json_object_object_get_ex(o, "return", NULL));
	json_object_put(o);
	echo_calls = 0;
}

static void test_utf8_strict(void **state)
{
	static const struct {
		const char *bytes, *why;
	} bad[] = {
		{ "\xc0\xaf", "overlong" },
		{ "\xc1\xbf", "overlong" },
		{ "\xe0\x80\xaf", "overlong" },
		{ "\xf0\x80\x80\xaf", "overlong" },
		{ "\xed\xa0\x80", "surrogate" },
		{ "\xed\xbf\xbf", "surrogate" },
		{ "\xf4\x90\x80\x80", "beyond U+10FFFF" },
		{ "\xf5\x80\x80\x80", "beyond U+10FFFF" },
		{ "\xf7\xbf\xbf\xbf", "beyond U+10FFFF" },
		{ "\\ud800", "high surrogate" },
		{ "\\ud800x", "high surrogate" },
		{ "\\uDBFF\\u0041", "high surrogate" },
		{ "\\ud800\\ud800", "high surrogate" },
		{ "\\udc00", "low surrogate" },
		{ "\\uDFFFb", "low surrogate" },
		{ "\\u0000", "NUL" },
		{ "\\u0000quit", "NUL" },
	};
	static const char *const good[] = {
		"\xc2\x80", "\xc3\xa9", "\xdf\xbf", "\xe0\xa0\x80", "\xe2\x82\xac", "\xed\x9f\xbf",
		"\xee\x80\x80", "\xef\xbf\xbf", "\xf0\x90\x80\x80", "\xf0\x9f\x98\x80",
		"\xf4\x8f\xbf\xbf", "\\u00e9", "\\ud83d\\ude00", "\\uDBFF\\uDFFF", "\\u0001",
	};
	char line[200];
	struct json_object *o, *ret, *v;

	(void)state;
	echo_calls = 0;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		/* in a value, in a member name, in the command name */
		snprintf(line, sizeof(line),
			 "{\"execute\":\"echo\",\"arguments\":{\"s\":\"%s\"}}", bad[i].bytes);
		expect_error(line, CONTROL_ERR_GENERIC, bad[i].why);
		expect_error(line, CONTROL_ERR_GENERIC, "at offset 36");
		snprintf(line, sizeof(line),
			 "{\"execute\":\"echo\",\"arguments\":{\"s\":\"\",\"%s\":1}}", bad[i].bytes);
		expect_error(line, CONTROL_ERR_GENERIC, bad[i].why);
		snprintf(line, sizeof(line), "{\"execute\":\"%s\"}", bad[i].bytes);
		expect_error(line, CONTROL_ERR_GENERIC, bad[i].why);
	}
	assert_int_equal(echo_calls, 0);
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		snprintf(line, sizeof(line),
			 "{\"execute\":\"echo\",\"arguments\":{\"s\":\"%s\"}}", good[i]);
		o = dispatch(line, NULL);
		assert_true(json_object_object_get_ex(o, "return", &ret));
		assert_true(json_object_object_get_ex(ret, "s", &v));
		assert_true(control_json_utf8_valid(json_object_get_string(v),
						    (size_t)json_object_get_string_len(v)));
		json_object_put(o);
	}
	assert_int_equal(echo_calls, sizeof(good) / sizeof(good[0]));
	echo_calls = 0; /* later tests count from zero */
}

/* Replies that echo a name or carry a handler's text are valid UTF-8. */
static void test_reply_utf8(void **state)
{
	char line[400], name[200];
	struct json_object *o;
	const char *desc;
	size_t n = 0;

	(void)state;
	/* A command name of two-byte characters, cut at 64 bytes: 'x' + 40 x "é". */
	name[n++] = 'x';
	for (int i = 0; i < 40; i++)
		name[n++] = '\xc3', name[n++] = '\xa9';
	name[n] = '\0';
	snprintf(line, sizeof(line), "{\"execute\":\"%s\"}", name);
	o = dispatch(line, NULL); /* dispatch_in checks the whole reply is UTF-8 */
	desc = get_str(o, "error", "desc");
	assert_non_null(desc);
	assert_non_null(strstr(desc, "x\xc3\xa9\xc3\xa9"));
	assert_null(strstr(desc, "\xef\xbf\xbd")); /* cut between characters */
	json_object_put(o);
	/* The same before negotiation and as an unknown member name. */
	{
		struct control_session fresh = { .negotiated = false };

		json_object_put(dispatch_in(&fresh, line, NULL));
	}
	snprintf(line, sizeof(line), "{\"execute\":\"echo\",\"%s\":1}", name);
	expect_error(line, CONTROL_ERR_GENERIC, "unexpected member 'x\xc3\xa9");

	/* A handler's message that is not UTF-8: invalid bytes become U+FFFD. */
	o = dispatch("{\"execute\":\"fail\",\"arguments\":{\"latin1\":true}}", NULL);
	desc = get_str(o, "error", "desc");
	assert_string_equal(desc, "caf\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd "
			    "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd broke");
	json_object_put(o);
}

static void test_utf8_helpers(void **state)
{
	const unsigned char *u;
	size_t n;
	char *s;

	(void)state;
	u = (const unsigned char *)"\xe2\x82\xac";
	assert_int_equal(control_json_utf8_seq_len(u, 3), 3);
	assert_int_equal(control_json_utf8_seq_len(u, 2), 0); /* truncated */
	assert_int_equal(control_json_utf8_seq_len((const unsigned char *)"\x80", 1), 0);
	assert_int_equal(control_json_utf8_seq_len((const unsigned char *)"\xff", 1), 0);
	assert_int_equal(control_json_utf8_seq_len((const unsigned char *)"\xf4\x8f\xbf\xbf", 4), 4);
	assert_true(control_json_utf8_valid("", 0));
	assert_true(control_json_utf8_valid("a\xc3\xa9", 3));
	assert_false(control_json_utf8_valid("a\xc3", 2));
	assert_false(control_json_utf8_valid("\xed\xa0\x80", 3));

	assert_int_equal(control_json_utf8_cut("abc", 64), 3);
	assert_int_equal(control_json_utf8_cut("abc", 2), 2);
	assert_int_equal(control_json_utf8_cut("a\xe2\x82\xac", 2), 1); /* not into the euro */
	assert_int_equal(control_json_utf8_cut("a\xe2\x82\xac", 3), 1);
	assert_int_equal(control_json_utf8_cut("a\xe2\x82\xac", 4), 4);
	assert_int_equal(control_json_utf8_cut("a\xe2\x82\xac" "b", 4), 4);

	s = control_json_utf8_sanitize("a\xff" "b\xc3", 4, &n);
	assert_non_null(s);
	assert_string_equal(s, "a\xef\xbf\xbd" "b\xef\xbf\xbd");
	assert_int_equal(n, strlen(s));
	free(s);
}

static void test_bad_execute(void **state)
{
	(void)state;
	expect_error("{}", CONTROL_ERR_GENERIC, "no 'execute'");
	expect_error("{\"arguments\":{}}", CONTROL_ERR_GENERIC, "no 'execute'");
	expect_error("{\"execute\":42}", CONTROL_ERR_GENERIC, "'execute' must be a string");
	expect_error("{\"execute\":null}", CONTROL_ERR_GENERIC, "'execute' must be a string");
	expect_error("{\"execute\":{\"a\":1}}", CONTROL_ERR_GENERIC, "'execute' must be a string");
	expect_error("{\"execute\":[\"echo\"]}", CONTROL_ERR_GENERIC, "'execute' must be a string");
	expect_error("{\"execute\":\"echo\",\"bogus\":1}", CONTROL_ERR_GENERIC,
		     "unexpected member 'bogus'");
	assert_int_equal(echo_calls, 0);
}

static void test_unknown_command(void **state)
{
	struct json_object *o, *id;

	(void)state;
	expect_error("{\"execute\":\"no-such-thing\"}", CONTROL_ERR_COMMAND_NOT_FOUND,
		     "no-such-thing");
	expect_error("{\"execute\":\"\"}", CONTROL_ERR_COMMAND_NOT_FOUND, "has not been found");
	expect_error("{\"execute\":\"ECHO\"}", CONTROL_ERR_COMMAND_NOT_FOUND, "ECHO");
	o = dispatch("{\"execute\":\"nope\",\"id\":\"abc\"}", NULL);
	assert_true(json_object_object_get_ex(o, "id", &id));
	assert_string_equal(json_object_get_string(id), "abc");
	json_object_put(o);
}

static void test_bad_arguments(void **state)
{
	(void)state;
	/* "arguments" itself */
	expect_error("{\"execute\":\"echo\",\"arguments\":[]}", CONTROL_ERR_INVALID_ARGUMENT,
		     "'arguments' must be an object");
	expect_error("{\"execute\":\"echo\",\"arguments\":\"s\"}", CONTROL_ERR_INVALID_ARGUMENT,
		     "'arguments' must be an object");
	expect_error("{\"execute\":\"echo\",\"arguments\":null}", CONTROL_ERR_INVALID_ARGUMENT,
		     "'arguments' must be an object");
	/* missing required */
	expect_error("{\"execute\":\"echo\"}", CONTROL_ERR_INVALID_ARGUMENT,
		     "missing required argument 's'");
	expect_error("{\"execute\":\"echo\",\"arguments\":{}}", CONTROL_ERR_INVALID_ARGUMENT,
		     "missing required argument 's'");
	/* unknown names */
	expect_error("{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"zz\":1}}",
		     CONTROL_ERR_INVALID_ARGUMENT, "unknown argument 'zz'");
	expect_error("{\"execute\":\"nothing\",\"arguments\":{\"a\":1}}",
		     CONTROL_ERR_INVALID_ARGUMENT, "unknown argument 'a'");
	/* wrong types, one per spec type */
	expect_error("{\"execute\":\"echo\",\"arguments\":{\"s\":1}}",
		     CONTROL_ERR_INVALID_ARGUMENT, "argument 's' must be of type string");
	expect_error("{\"execute\":\"echo\",\"arguments\":{\"s\":null}}",
		     CONTROL_ERR_INVALID_ARGUMENT, "argument 's' must be of type string, not null");
	expect_error("{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"i\":1.5}}",
		     CONTROL_ERR_INVALID_ARGUMENT, "argument 'i' must be of type integer");
	expect_error("{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"i\":\"1\"}}",
		     CONTROL_ERR_INVALID_ARGUMENT, "argument 'i' must be of type integer");
	expect_error("{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"n\":\"1\"}}",
		     CONTROL_ERR_INVALID_ARGUMENT, "argument 'n' must be of type number");
	expect_error("{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"b\":1}}",
		     CONTROL_ERR_INVALID_ARGUMENT, "argument 'b' must be of type boolean");
	expect_error("{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"o\":[]}}",
		     CONTROL_ERR_INVALID_ARGUMENT, "argument 'o' must be of type object");
	expect_error("{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"a\":{}}}",
		     CONTROL_ERR_INVALID_ARGUMENT, "argument 'a' must be of type array");
	assert_int_equal(echo_calls, 0);
}

static void test_good_arguments(void **state)
{
	struct json_object *o, *ret, *v;

	(void)state;
	echo_calls = 0;
	o = dispatch("{\"execute\":\"echo\",\"arguments\":{\"s\":\"a\",\"i\":-3,\"n\":2.5,"
		     "\"b\":true,\"o\":{},\"a\":[1],\"x\":null},\"id\":7}", NULL);
	assert_int_equal(echo_calls, 1);
	assert_true(json_object_object_get_ex(o, "return", &ret));
	assert_true(json_object_object_get_ex(ret, "i", &v));
	assert_int_equal(json_object_get_int64(v), -3);
	assert_true(json_object_object_get_ex(o, "id", &v));
	assert_int_equal(json_object_get_int64(v), 7);
	json_object_put(o);
	/* NUMBER takes integers too; optional arguments may be left out. */
	o = dispatch("{\"execute\":\"echo\",\"arguments\":{\"s\":\"\",\"n\":4}}", NULL);
	assert_true(json_object_object_get_ex(o, "return", NULL));
	assert_false(json_object_object_get_ex(o, "id", NULL)); /* none given, none echoed */
	json_object_put(o);
	assert_int_equal(echo_calls, 2);
}

static void test_check_args_direct(void **state)
{
	struct control_error err;
	struct json_object *args = json_tokener_parse("{\"s\":\"x\"}");

	(void)state;
	assert_int_equal(control_proto_check_args(echo_args, args, &err), 0);
	assert_int_equal(control_proto_check_args(NULL, NULL, &err), 0);
	assert_int_equal(control_proto_check_args(echo_args, NULL, &err), -EINVAL);
	assert_string_equal(err.cls, CONTROL_ERR_INVALID_ARGUMENT);
	assert_int_equal(control_proto_check_args(NULL, args, &err), -EINVAL);
	assert_non_null(strstr(err.desc, "'s'"));
	json_object_put(args);
	args = json_object_new_array();
	assert_int_equal(control_proto_check_args(echo_args, args, &err), -EINVAL);
	json_object_put(args);
}

static void test_id_echo(void **state)
{
	static const char *const ids[] = {
		"1", "\"text\"", "{\"a\":[1,2]}", "[true,null]", "null", "-9223372036854775808", "1.5",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
		char line[256];
		struct json_object *o, *id, *want = json_tokener_parse(ids[i]);

		/* on success */
		snprintf(line, sizeof(line), "{\"id\":%s,\"execute\":\"nothing\"}", ids[i]);
		o = dispatch(line, NULL);
		assert_true(json_object_object_get_ex(o, "return", NULL));
		assert_true(json_object_object_get_ex(o, "id", &id));
		assert_true(json_object_equal(id, want));
		json_object_put(o);
		/* on an error found before the command runs */
		snprintf(line, sizeof(line), "{\"id\":%s,\"execute\":7}", ids[i]);
		o = dispatch(line, NULL);
		assert_true(json_object_object_get_ex(o, "error", NULL));
		assert_true(json_object_object_get_ex(o, "id", &id));
		assert_true(json_object_equal(id, want));
		json_object_put(o);
		json_object_put(want);
	}
}

static void test_handler_errors(void **state)
{
	struct json_object *o;

	(void)state;
	expect_error("{\"execute\":\"fail\"}", CONTROL_ERR_GENERIC, "it broke");
	expect_error("{\"execute\":\"fail\",\"arguments\":{\"einval\":true}}",
		     CONTROL_ERR_INVALID_ARGUMENT, "value out of range");
	expect_error("{\"execute\":\"fail\",\"arguments\":{\"quiet\":true}}",
		     CONTROL_ERR_GENERIC, "fail failed: No space left on device");
	/* A NULL return value becomes {}. */
	o = dispatch("{\"execute\":\"nothing\"}", NULL);
	assert_non_null(o);
	assert_string_equal(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN),
			    "{\"return\":{}}");
	json_object_put(o);
}

static void test_blank_and_after(void **state)
{
	const struct control_command *after = (void *)1;
	struct json_object *o;

	(void)state;
	assert_null(dispatch("", &after));
	assert_null(after);
	assert_null(dispatch("  \t ", NULL));
	o = dispatch("{\"execute\":\"after\"}", &after);
	assert_non_null(o);
	assert_ptr_equal(after, &test_cmds[3]);
	json_object_put(o);
	/* A failed command does not run its after hook. */
	o = dispatch("{\"execute\":\"after\",\"arguments\":{\"x\":1}}", &after);
	assert_null(after);
	json_object_put(o);
}

static void test_format(void **state)
{
	struct json_object *o, *data = json_tokener_parse("{\"reason\":\"user\"}"), *v;
	size_t n;
	char *s;

	(void)state;
	s = control_proto_format_greeting(&n);
	assert_string_equal(s, "{\"QMP\":{\"version\":{\"qemu\":{\"micro\":0,\"minor\":0,\"major\":0},"
			    "\"package\":\"vmferry " VMFERRY_VERSION "\"},\"capabilities\":[]}}\n");
	assert_int_equal(n, strlen(s));
	free(s);

	s = control_proto_format_event("STOP", data, 1700000000123456789ull, &n);
	o = parse_line(s, n);
	assert_string_equal(get_str(o, "event", NULL), "STOP");
	assert_true(json_object_object_get_ex(o, "timestamp", &v));
	assert_true(json_object_object_get_ex(v, "seconds", &v));
	assert_int_equal(json_object_get_int64(v), 1700000000);
	json_object_object_get_ex(o, "timestamp", &v);
	json_object_object_get_ex(v, "microseconds", &v);
	assert_int_equal(json_object_get_int64(v), 123456);
	assert_string_equal(get_str(o, "data", "reason"), "user");
	json_object_put(o);
	free(s);
	json_object_put(data); /* the caller's reference was not taken over */

	s = control_proto_format_event("RESUME", NULL, 0, &n);
	o = parse_line(s, n);
	assert_true(json_object_object_get_ex(o, "data", &v));
	assert_true(json_object_is_type(v, json_type_object));
	json_object_put(o);
	free(s);

	/* Descriptions with quotes and newlines stay one line. */
	s = control_proto_format_error(CONTROL_ERR_GENERIC, "a \"b\"\nc", NULL, false, &n);
	o = parse_line(s, n);
	assert_string_equal(get_str(o, "error", "desc"), "a \"b\"\nc");
	assert_false(json_object_object_get_ex(o, "id", NULL));
	json_object_put(o);
	free(s);
	s = control_proto_format_return(NULL, NULL, true, &n);
	assert_string_equal(s, "{\"return\":{},\"id\":null}\n");
	free(s);
}

/* A session starts in capabilities negotiation, as QMP's does. */
static void test_negotiation(void **state)
{
	struct control_session s = { 0 };
	struct json_object *o, *id;

	(void)state;
	/* Every command, known or not, is refused until qmp_capabilities. */
	expect_error_in(&s, "{\"execute\":\"nothing\"}", CONTROL_ERR_COMMAND_NOT_FOUND,
			"Expecting capabilities negotiation with 'qmp_capabilities'");
	expect_error_in(&s, "{\"execute\":\"no-such\"}", CONTROL_ERR_COMMAND_NOT_FOUND,
			"Expecting capabilities negotiation");
	/* Bad lines are still reported as such. */
	expect_error_in(&s, "{\"execute\":", CONTROL_ERR_GENERIC, "malformed JSON");
	/* qmp_capabilities' own argument checks leave the session negotiating. */
	expect_error_in(&s, "{\"execute\":\"qmp_capabilities\",\"arguments\":{\"x\":1}}",
			CONTROL_ERR_INVALID_ARGUMENT, "unknown argument 'x'");
	expect_error_in(&s, "{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":\"oob\"}}",
			CONTROL_ERR_INVALID_ARGUMENT, "'enable'");
	expect_error_in(&s, "{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":[5]}}",
			CONTROL_ERR_INVALID_ARGUMENT, "'enable'");
	/* We offer no capability: enabling one is refused. */
	expect_error_in(&s, "{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":[\"oob\"]}}",
			CONTROL_ERR_GENERIC, "capability 'oob' is not offered");
	assert_false(s.negotiated);

	o = dispatch_in(&s, "{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":[]},"
			"\"id\":\"neg\"}", NULL);
	assert_string_equal(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN),
			    "{\"return\":{},\"id\":\"neg\"}");
	json_object_put(o);
	assert_true(s.negotiated);

	/* Now commands run, and negotiating again is refused (QMP's class and text). */
	o = dispatch_in(&s, "{\"execute\":\"nothing\",\"id\":2}", NULL);
	assert_true(json_object_object_get_ex(o, "return", NULL));
	assert_true(json_object_object_get_ex(o, "id", &id));
	assert_int_equal(json_object_get_int(id), 2);
	json_object_put(o);
	o = dispatch_in(&s, "{\"execute\":\"qmp_capabilities\",\"id\":3}", NULL);
	assert_string_equal(get_str(o, "error", "class"), CONTROL_ERR_COMMAND_NOT_FOUND);
	assert_string_equal(get_str(o, "error", "desc"),
			    "Capabilities negotiation is already complete, command ignored");
	assert_true(json_object_object_get_ex(o, "id", &id));
	assert_int_equal(json_object_get_int(id), 3);
	json_object_put(o);
	assert_true(s.negotiated);
}

/* Every error reply has QMP's shape: {"error": {"class", "desc"}} (+ "id"). */
static void test_error_shape(void **state)
{
	static const char *const lines[] = {
		"{\"execute\":", "[]", "{\"execute\":\"no-such\",\"id\":1}",
		"{\"execute\":\"fail\"}", "{\"execute\":\"echo\"}",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
		struct json_object *o = dispatch(lines[i], NULL), *e;

		assert_true(json_object_object_get_ex(o, "error", &e));
		assert_true(json_object_is_type(e, json_type_object));
		assert_int_equal(json_object_object_length(e), 2);
		assert_non_null(get_str(o, "error", "class"));
		assert_non_null(get_str(o, "error", "desc"));
		assert_int_equal(json_object_object_length(o),
				 json_object_object_get_ex(o, "id", NULL) ? 2 : 1);
		json_object_put(o);
	}
}

static void test_command_names(void **state)
{
	(void)state;
	assert_true(control_command_name_ok("query-status"));
	assert_true(control_command_name_ok("migrate-set-parameters"));
	assert_true(control_command_name_ok("x_y2"));
	assert_false(control_command_name_ok(NULL));
	assert_false(control_command_name_ok(""));
	assert_false(control_command_name_ok("-stop"));
	assert_false(control_command_name_ok("Stop"));
	assert_false(control_command_name_ok("st op"));
	assert_false(control_command_name_ok(
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
}

/* ---- the socket server, without a VM ---- */

struct srv_fixture {
	char path[HARNESS_PATH_BYTES];
	struct control_server *srv;
	atomic_int after_flag;
};

static struct srv_fixture fx;

static const struct control_command srv_echo = { "echo", cmd_echo, NULL, echo_args, NULL };

static int srv_setup(void **state)
{
	const struct control_command after = { "after", cmd_nothing, &fx.after_flag, NULL, cmd_after };

	(void)state;
	memset(&fx, 0, sizeof(fx));
	if (harness_unique_path(fx.path, sizeof(fx.path), "srv") < 0)
		return -1;
	if (control_server_create(fx.path, &fx.srv) < 0)
		return -1;
	if (control_server_register(fx.srv, &srv_echo) < 0 ||
	    control_server_register(fx.srv, &after) < 0)
		return -1;
	return control_server_start(fx.srv) < 0 ? -1 : 0;
}

static int srv_teardown(void **state)
{
	struct stat st;

	(void)state;
	control_server_destroy(fx.srv);
	fx.srv = NULL;
	/* destroy removes the socket file */
	return stat(fx.path, &st) == 0 ? -1 : 0;
}

static struct control_client *srv_connect(void)
{
	struct control_client *c = NULL;

	assert_int_equal(control_client_connect(fx.path, 5000, &c), 0);
	control_client_set_timeout(c, 5000);
	return c;
}

/* The server still answers a fresh client correctly. */
static void srv_assert_healthy(void)
{
	struct control_client *c = srv_connect();
	struct json_object *args = json_tokener_parse("{\"s\":\"ok\"}"), *reply = NULL;

	assert_int_equal(control_client_call(c, "echo", args, &reply), 0);
	assert_string_equal(get_str(reply, "return", "s"), "ok");
	json_object_put(reply);
	json_object_put(args);
	control_client_close(c);
}

/* Read from a raw fd until EOF or @timeout_ms; returns bytes read. */
static size_t raw_read_all(int fd, char *buf, size_t cap, int timeout_ms)
{
	size_t n = 0;
	uint64_t deadline = clock_monotonic_ns() + (uint64_t)timeout_ms * 1000000ull;

	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		uint64_t now = clock_monotonic_ns();
		ssize_t r;

		if (now >= deadline)
			fail_msg("no EOF within %d ms", timeout_ms);
		if (poll(&pfd, 1, (int)((deadline - now) / 1000000 + 1)) <= 0)
			continue;
		r = recv(fd, buf + n, cap - n - 1, 0);
		if (r == 0 || (r < 0 && errno == ECONNRESET))
			break;
		assert_true(r > 0);
		n += (size_t)r;
		assert_true(n < cap - 1);
	}
	buf[n] = '\0';
	return n;
}

static void test_srv_basic(void **state)
{
	struct control_client *c;
	struct json_object *reply = NULL, *ret;
	bool seen_echo = false, seen_qc = false, seen_caps = false, seen_qv = false;

	(void)state;
	c = srv_connect();
	assert_int_equal(control_client_call(c, "query-commands", NULL, &reply), 0);
	ret = control_reply_return(reply);
	assert_true(json_object_is_type(ret, json_type_array));
	for (size_t i = 0; i < json_object_array_length(ret); i++) {
		const char *name = get_str(json_object_array_get_idx(ret, i), "name", NULL);

		seen_echo |= strcmp(name, "echo") == 0;
		seen_qc |= strcmp(name, "query-commands") == 0;
		seen_caps |= strcmp(name, "qmp_capabilities") == 0;
		seen_qv |= strcmp(name, "query-version") == 0;
	}
	assert_true(seen_echo && seen_qc && seen_caps && seen_qv);
	json_object_put(reply);
	/* No VM: the VM commands are not there. */
	assert_int_equal(control_client_call(c, "stop", NULL, &reply), -EREMOTEIO);
	assert_string_equal(control_reply_error_class(reply), CONTROL_ERR_COMMAND_NOT_FOUND);
	json_object_put(reply);
	control_client_close(c);
}

/* The wire side of negotiation: greeting, refusals, no events before it. */
static void test_srv_negotiation(void **state)
{
	struct control_client *c = NULL;
	struct json_object *g, *v, *reply = NULL;
	const char *pre = "{\"execute\":\"echo\",\"arguments\":{\"s\":\"x\"},\"id\":1}\n";

	(void)state;
	assert_int_equal(control_client_connect_raw(fx.path, 5000, &c), 0);
	control_client_set_timeout(c, 5000);
	g = control_client_greeting(c);
	assert_true(json_object_object_get_ex(g, "QMP", &g));
	assert_true(json_object_object_get_ex(g, "capabilities", &v));
	assert_true(json_object_is_type(v, json_type_array));
	assert_int_equal(json_object_array_length(v), 0);
	assert_true(json_object_object_get_ex(g, "version", &v));
	assert_true(json_object_object_get_ex(v, "qemu", NULL));
	assert_string_equal(get_str(v, "package", NULL), "vmferry " VMFERRY_VERSION);

	/* Emitted before this client negotiated: never sent to it. */
	control_server_emit_event(fx.srv, "EARLY", NULL);
	assert_int_equal(control_client_send_raw(c, pre, strlen(pre)), 0);
	assert_int_equal(control_client_read_reply(c, 5000, &reply), -EREMOTEIO);
	assert_string_equal(control_reply_error_class(reply), CONTROL_ERR_COMMAND_NOT_FOUND);
	assert_non_null(strstr(control_reply_error_desc(reply), "qmp_capabilities"));
	json_object_put(reply);

	assert_int_equal(control_client_call(c, "qmp_capabilities", NULL, NULL), 0);
	assert_int_equal(control_client_call(c, "qmp_capabilities", NULL, &reply), -EREMOTEIO);
	assert_string_equal(control_reply_error_class(reply), CONTROL_ERR_COMMAND_NOT_FOUND);
	json_object_put(reply);
	control_server_emit_event(fx.srv, "LATE", NULL);
	assert_int_equal(control_client_wait_event(c, "LATE", 5000, NULL), 0);
	/* LATE came after EARLY would have: EARLY was not sent. */
	assert_int_equal(control_client_wait_event(c, "EARLY", 0, NULL), -ETIMEDOUT);
	control_client_close(c);
}

static void test_srv_query_version(void **state)
{
	struct control_client *c = srv_connect();
	struct json_object *reply = NULL, *ret, *v;

	(void)state;
	assert_int_equal(control_client_call(c, "query-version", NULL, &reply), 0);
	ret = control_reply_return(reply);
	assert_string_equal(get_str(ret, "package", NULL), "vmferry " VMFERRY_VERSION);
	assert_true(json_object_object_get_ex(ret, "qemu", &v));
	assert_true(json_object_object_get_ex(v, "major", NULL));
	assert_true(json_object_object_get_ex(v, "minor", NULL));
	assert_true(json_object_object_get_ex(v, "micro", NULL));
	json_object_put(reply);
	control_client_close(c);
}

static void test_srv_register(void **state)
{
	struct control_command bad = srv_echo;

	(void)state;
	assert_int_equal(control_server_register(fx.srv, &srv_echo), -EEXIST);
	bad.name = "qmp_capabilities"; /* the protocol's own */
	assert_int_equal(control_server_register(fx.srv, &bad), -EEXIST);
	bad.name = "Bad Name";
	assert_int_equal(control_server_register(fx.srv, &bad), -EINVAL);
	bad.name = "no-fn";
	bad.fn = NULL;
	assert_int_equal(control_server_register(fx.srv, &bad), -EINVAL);
}

static void test_srv_bad_lines(void **state)
{
	static const char *const lines[] = {
		"{\"execute\": \"echo\"\n",
		"[1,2,3]\n",
		"{\"execute\": 5}\n",
		"{\"execute\": \"nope\"}\n",
		"{\"execute\": \"echo\", \"arguments\": {\"s\": 5}}\n",
		"\xff\xfe\n",
	};
	static const char *const classes[] = {
		CONTROL_ERR_GENERIC, CONTROL_ERR_GENERIC, CONTROL_ERR_GENERIC,
		CONTROL_ERR_COMMAND_NOT_FOUND, CONTROL_ERR_INVALID_ARGUMENT, CONTROL_ERR_GENERIC,
	};
	struct control_client *c = srv_connect();
	struct json_object *reply;

	(void)state;
	for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
		assert_int_equal(control_client_send_raw(c, lines[i], strlen(lines[i])), 0);
		assert_int_equal(control_client_read_reply(c, 5000, &reply), -EREMOTEIO);
		assert_string_equal(control_reply_error_class(reply), classes[i]);
		json_object_put(reply);
	}
	/* Same connection still works; so does a blank line (no reply). */
	assert_int_equal(control_client_send_raw(c, "\n\r\n", 3), 0);
	assert_int_equal(control_client_call(c, "query-commands", NULL, NULL), 0);
	control_client_close(c);
	srv_assert_healthy();
}

static void test_srv_oversized_line(void **state)
{
	size_t big = CONTROL_LINE_MAX_BYTES + 4096;
	char *line = malloc(big), *in = malloc(65536);
	struct control_client *c = srv_connect();
	struct json_object *o;
	size_t n;

	(void)state;
	assert_non_null(line);
	assert_non_null(in);
	memcpy(line, "{\"execute\":\"echo\",\"arguments\":{\"s\":\"", 37);
	memset(line + 37, 'a', big - 37);
	assert_int_equal(control_client_send_raw(c, line, big), 0);
	/* An error line, then EOF. */
	n = raw_read_all(control_client_fd(c), in, 65536, 5000);
	assert_true(n > 0);
	o = parse_line(in, n);
	assert_string_equal(get_str(o, "error", "class"), CONTROL_ERR_GENERIC);
	assert_non_null(strstr(get_str(o, "error", "desc"), "longer than 65536"));
	json_object_put(o);
	control_client_close(c);
	free(line);
	free(in);
	srv_assert_healthy();
}

static void test_srv_exact_limit_line(void **state)
{
	/* A request of exactly CONTROL_LINE_MAX_BYTES is served. */
	size_t len = CONTROL_LINE_MAX_BYTES;
	char *line = malloc(len + 1);
	struct control_client *c = srv_connect();
	struct json_object *reply;
	const char *head = "{\"execute\":\"echo\",\"arguments\":{\"s\":\"";

	(void)state;
	memcpy(line, head, strlen(head));
	memset(line + strlen(head), 'z', len - strlen(head) - 3);
	memcpy(line + len - 3, "\"}}", 3);
	line[len] = '\n';
	assert_int_equal(control_client_send_raw(c, line, len + 1), 0);
	assert_int_equal(control_client_read_reply(c, 5000, &reply), 0);
	assert_int_equal(strlen(get_str(reply, "return", "s")), len - strlen(head) - 3);
	json_object_put(reply);
	control_client_close(c);
	free(line);
}

static void test_srv_disconnect_mid_line(void **state)
{
	(void)state;
	for (int i = 0; i < 20; i++) {
		struct control_client *c = srv_connect();
		const char *half = "{\"execute\": \"echo\", \"argu";

		assert_int_equal(control_client_send_raw(c, half, strlen(half)), 0);
		control_client_close(c);
	}
	srv_assert_healthy();
}

static void test_srv_half_close(void **state)
{
	/* `echo '{...}' | socat - UNIX:path` half-closes and waits for replies. */
	struct control_client *c = srv_connect();
	const char *req = "{\"execute\":\"echo\",\"arguments\":{\"s\":\"hc\"},\"id\":1}\n";
	char buf[4096];
	size_t n;
	struct json_object *o;

	(void)state;
	assert_int_equal(control_client_send_raw(c, req, strlen(req)), 0);
	assert_int_equal(shutdown(control_client_fd(c), SHUT_WR), 0);
	n = raw_read_all(control_client_fd(c), buf, sizeof(buf), 5000);
	o = parse_line(buf, n);
	assert_string_equal(get_str(o, "return", "s"), "hc");
	json_object_put(o);
	control_client_close(c);
}

static void test_srv_too_many_clients(void **state)
{
	struct control_client *c[CONTROL_MAX_CLIENTS], *extra = NULL;
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	char buf[1024];
	struct json_object *o;
	size_t n;
	int fd;

	(void)state;
	for (int i = 0; i < CONTROL_MAX_CLIENTS; i++)
		c[i] = srv_connect();
	/* The library reports the refusal... */
	assert_int_equal(control_client_connect(fx.path, 300, &extra), -ECONNREFUSED);
	assert_null(extra);
	/* ...which on the wire is one error line, then EOF. */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	strcpy(addr.sun_path, fx.path);
	assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
	n = raw_read_all(fd, buf, sizeof(buf), 5000);
	o = parse_line(buf, n);
	assert_non_null(strstr(get_str(o, "error", "desc"), "too many clients"));
	json_object_put(o);
	close(fd);
	/* Existing clients are unaffected. */
	for (int i = 0; i < CONTROL_MAX_CLIENTS; i++)
		assert_int_equal(control_client_call(c[i], "query-commands", NULL, NULL), 0);
	/* A slot frees when a client leaves. */
	control_client_close(c[0]);
	c[0] = srv_connect();
	for (int i = 0; i < CONTROL_MAX_CLIENTS; i++)
		control_client_close(c[i]);
	srv_assert_healthy();
}

struct emitter {
	int count;
	const char *name;
};

static void *emitter_thread(void *arg)
{
	struct emitter *e = arg;

	for (int i = 0; i < e->count; i++) {
		struct json_object *data = json_object_new_object();

		json_object_object_add(data, "seq", json_object_new_int(i));
		control_server_emit_event(fx.srv, e->name, data);
		json_object_put(data); /* still ours */
	}
	return NULL;
}

static void test_srv_events(void **state)
{
	struct control_client *a = srv_connect(), *b = srv_connect();
	struct emitter e1 = { 50, "PING" }, e2 = { 50, "PONG" };
	pthread_t t1, t2;
	struct json_object *ev, *v;
	int last_ping = -1;

	(void)state;
	assert_int_equal(pthread_create(&t1, NULL, emitter_thread, &e1), 0);
	assert_int_equal(pthread_create(&t2, NULL, emitter_thread, &e2), 0);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	/* Each client gets every event, in order per emitting thread. */
	for (int i = 0; i < 50; i++) {
		assert_int_equal(control_client_wait_event(a, "PING", 5000, &ev), 0);
		json_object_object_get_ex(ev, "data", &v);
		json_object_object_get_ex(v, "seq", &v);
		assert_int_equal(json_object_get_int(v), last_ping + 1);
		last_ping++;
		assert_true(json_object_object_get_ex(ev, "timestamp", NULL));
		json_object_put(ev);
	}
	for (int i = 0; i < 50; i++) {
		assert_int_equal(control_client_wait_event(b, "PONG", 5000, NULL), 0);
		assert_int_equal(control_client_wait_event(b, "PING", 5000, NULL), 0);
	}
	/* Events interleaved with a call are kept for later. */
	control_server_emit_event(fx.srv, "LATER", NULL);
	assert_int_equal(control_client_call(a, "query-commands", NULL, NULL), 0);
	assert_int_equal(control_client_wait_event(a, "LATER", 5000, &ev), 0);
	json_object_put(ev);
	assert_int_equal(control_client_wait_event(a, "NEVER", 50, NULL), -ETIMEDOUT);
	control_client_close(a);
	control_client_close(b);
}

static void test_srv_slow_reader_dropped(void **state)
{
	/* A client that never reads is dropped once ~1 MiB piles up. */
	struct control_client *slow = srv_connect();
	struct json_object *data = json_object_new_object();
	char *big = malloc(16384), *buf = malloc(1 << 16);
	uint64_t deadline = clock_monotonic_ns() + 10000ull * 1000000ull;
	bool closed = false;
	int fd = control_client_fd(slow);

	(void)state;
	memset(big, 'e', 16383);
	big[16383] = '\0';
	json_object_object_add(data, "blob", json_object_new_string(big));
	/* 2000 x 16 KiB is far past socket buffers plus the 1 MiB backlog. */
	for (int i = 0; i < 2000; i++)
		control_server_emit_event(fx.srv, "FLOOD", data);
	json_object_put(data);
	srv_assert_healthy();
	/* Now drain: the stream must end (EOF), well before 2000 events. */
	size_t total = 0;

	while (!closed && clock_monotonic_ns() < deadline) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t r;

		if (poll(&pfd, 1, 100) <= 0)
			continue;
		r = recv(fd, buf, 1 << 16, 0);
		if (r <= 0)
			closed = true;
		else
			total += (size_t)r;
	}
	assert_true(closed);
	assert_true(total < 2000u * 16384u);
	control_client_close(slow);
	free(big);
	free(buf);
}

static void test_srv_after_reply(void **state)
{
	struct control_client *c = srv_connect();
	uint64_t deadline = clock_monotonic_ns() + 5000ull * 1000000ull;

	(void)state;
	atomic_store(&fx.after_flag, 0);
	assert_int_equal(control_client_call(c, "after", NULL, NULL), 0);
	while (!atomic_load(&fx.after_flag) && clock_monotonic_ns() < deadline)
		usleep(1000);
	assert_int_equal(atomic_load(&fx.after_flag), 1);
	control_client_close(c);
}

/* ---- socket path handling ---- */

static void test_path_in_use(void **state)
{
	struct control_server *other = NULL;
	struct stat st;

	(void)state;
	assert_int_equal(control_server_create(fx.path, &other), -EADDRINUSE);
	assert_null(other);
	/* The failed attempt left the live socket alone. */
	assert_int_equal(stat(fx.path, &st), 0);
	srv_assert_healthy();
}

static void test_path_stale_and_not_socket(void **state)
{
	char path[HARNESS_PATH_BYTES];
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct control_server *srv = NULL;
	struct control_client *c = NULL;
	int fd;

	(void)state;
	/* A stale socket: bound, then its owner went away without unlinking. */
	assert_int_equal(harness_unique_path(path, sizeof(path), "stale"), 0);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	strcpy(addr.sun_path, path);
	assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
	close(fd);
	assert_int_equal(control_server_create(path, &srv), 0);
	assert_int_equal(control_server_start(srv), 0);
	assert_int_equal(control_client_connect(path, 5000, &c), 0);
	control_client_close(c);
	control_server_destroy(srv);

	/* A regular file is never replaced. */
	assert_int_equal(harness_unique_path(path, sizeof(path), "file"), 0);
	fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(control_server_create(path, &srv), -EEXIST);
	assert_int_equal(access(path, F_OK), 0);
	unlink(path);

	/* Too long for sun_path. */
	char longpath[200];

	memset(longpath, 'p', sizeof(longpath) - 1);
	longpath[0] = '/';
	longpath[sizeof(longpath) - 1] = '\0';
	assert_int_equal(control_server_create(longpath, &srv), -ENAMETOOLONG);

	/* Nobody there: the client says so (after retrying for its timeout). */
	assert_int_equal(harness_unique_path(path, sizeof(path), "absent"), 0);
	assert_int_equal(control_client_connect(path, 100, &c), -ENOENT);
	/* A server never started is destroyed cleanly. */
	assert_int_equal(control_server_create(path, &srv), 0);
	control_server_destroy(srv);
	assert_int_not_equal(access(path, F_OK), 0);
	control_server_destroy(NULL);
}

int main(void)
{
	const struct CMUnitTest proto_tests[] = {
		cmocka_unit_test(test_linebuf_lines),
		cmocka_unit_test(test_linebuf_byte_by_byte),
		cmocka_unit_test(test_linebuf_limit),
		cmocka_unit_test(test_malformed_json),
		cmocka_unit_test(test_nul_byte),
		cmocka_unit_test(test_too_deep),
		cmocka_unit_test(test_not_an_object),
		cmocka_unit_test(test_duplicate_members),
		cmocka_unit_test(test_integer_range),
		cmocka_unit_test(test_utf8_strict),
		cmocka_unit_test(test_reply_utf8),
		cmocka_unit_test(test_utf8_helpers),
		cmocka_unit_test(test_bad_execute),
		cmocka_unit_test(test_unknown_command),
		cmocka_unit_test(test_bad_arguments),
		cmocka_unit_test(test_good_arguments),
		cmocka_unit_test(test_check_args_direct),
		cmocka_unit_test(test_id_echo),
		cmocka_unit_test(test_handler_errors),
		cmocka_unit_test(test_blank_and_after),
		cmocka_unit_test(test_format),
		cmocka_unit_test(test_negotiation),
		cmocka_unit_test(test_error_shape),
		cmocka_unit_test(test_command_names),
	};
	const struct CMUnitTest server_tests[] = {
		cmocka_unit_test(test_srv_basic),
		cmocka_unit_test(test_srv_negotiation),
		cmocka_unit_test(test_srv_query_version),
		cmocka_unit_test(test_srv_register),
		cmocka_unit_test(test_srv_bad_lines),
		cmocka_unit_test(test_srv_oversized_line),
		cmocka_unit_test(test_srv_exact_limit_line),
		cmocka_unit_test(test_srv_disconnect_mid_line),
		cmocka_unit_test(test_srv_half_close),
		cmocka_unit_test(test_srv_too_many_clients),
		cmocka_unit_test(test_srv_events),
		cmocka_unit_test(test_srv_slow_reader_dropped),
		cmocka_unit_test(test_srv_after_reply),
		cmocka_unit_test(test_path_in_use),
		cmocka_unit_test(test_path_stale_and_not_socket),
	};
	int failed;

	failed = cmocka_run_group_tests_name("control_proto", proto_tests, NULL, NULL);
	failed += cmocka_run_group_tests_name("control_server", server_tests,
					      srv_setup, srv_teardown);
	return failed ? 1 : 0;
}
