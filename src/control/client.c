#include "control/client.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "control/control_json.h"
#include "control/control_proto.h"
#include "util/log.h"

#define CONTROL_CLIENT_RETRY_NS (20ull * 1000 * 1000)

struct control_client {
	int fd;                       /* owned */
	int timeout_ms;               /* bound on each call */
	int64_t next_id;
	struct json_object *greeting; /* owned: the server's first line */
	struct control_linebuf in;
	/* Ring of events read while waiting for something else. */
	struct json_object *events[CONTROL_CLIENT_EVENT_QUEUE_MAX];
	size_t ev_first, ev_count;
};

static uint64_t control_client_deadline(int timeout_ms)
{
	return clock_monotonic_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000ull;
}

/* Milliseconds left until @deadline_ns for poll(), rounded up; 0 if past. */
static int control_client_left_ms(uint64_t deadline_ns)
{
	uint64_t now = clock_monotonic_ns();
	uint64_t ms;

	if (now >= deadline_ns)
		return 0;
	ms = (deadline_ns - now + 999999) / 1000000;
	return ms > INT_MAX ? INT_MAX : (int)ms;
}

static void control_client_nap(uint64_t ns)
{
	struct timespec ts = { .tv_sec = (time_t)(ns / 1000000000ull),
			       .tv_nsec = (long)(ns % 1000000000ull) };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int control_client_fd(const struct control_client *c)
{
	return c->fd;
}

void control_client_set_timeout(struct control_client *c, int timeout_ms)
{
	if (timeout_ms > 0)
		c->timeout_ms = timeout_ms;
}

void control_client_close(struct control_client *c)
{
	if (!c)
		return;
	if (c->fd >= 0)
		close(c->fd);
	control_linebuf_free(&c->in);
	json_object_put(c->greeting);
	for (size_t i = 0; i < c->ev_count; i++)
		json_object_put(c->events[(c->ev_first + i) % CONTROL_CLIENT_EVENT_QUEUE_MAX]);
	free(c);
}

static void control_client_queue_event(struct control_client *c, struct json_object *ev)
{
	if (c->ev_count == CONTROL_CLIENT_EVENT_QUEUE_MAX) {
		json_object_put(c->events[c->ev_first]);
		c->ev_first = (c->ev_first + 1) % CONTROL_CLIENT_EVENT_QUEUE_MAX;
		c->ev_count--;
	}
	c->events[(c->ev_first + c->ev_count) % CONTROL_CLIENT_EVENT_QUEUE_MAX] = ev;
	c->ev_count++;
}

/*
 * Next JSON object from the server before @deadline_ns.  0 with *out
 * (caller owns), -ETIMEDOUT, -ECONNRESET (EOF or reset), -EPROTO.
 */
static int control_client_read_obj(struct control_client *c, uint64_t deadline_ns,
				   struct json_object **out)
{
	char chunk[16384];
	char *line;
	size_t len;
	int rc;

	*out = NULL;
	for (;;) {
		rc = control_linebuf_next(&c->in, &line, &len);
		if (rc < 0)
			return -EPROTO;
		if (rc > 0) {
			struct json_object *obj;
			enum json_tokener_error jerr;

			if (len == 0)
				continue;
			obj = json_tokener_parse_verbose(line, &jerr);
			if (!json_object_is_type(obj, json_type_object)) {
				json_object_put(obj);
				return -EPROTO;
			}
			*out = obj;
			return 0;
		}

		struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
		int left = control_client_left_ms(deadline_ns);

		rc = poll(&pfd, 1, left);
		if (rc < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (rc == 0)
			return -ETIMEDOUT;
		ssize_t n = recv(c->fd, chunk, sizeof(chunk), MSG_DONTWAIT);

		if (n == 0)
			return -ECONNRESET;
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
				continue;
			return errno == EPIPE ? -ECONNRESET : -errno;
		}
		if (control_linebuf_append(&c->in, chunk, (size_t)n) < 0)
			return -ENOMEM;
	}
}

static bool control_client_is_event(struct json_object *obj)
{
	return json_object_object_get_ex(obj, "event", NULL);
}

static int control_client_reply_rc(struct json_object *obj)
{
	if (json_object_object_get_ex(obj, "return", NULL))
		return 0;
	if (json_object_object_get_ex(obj, "error", NULL))
		return -EREMOTEIO;
	return -EPROTO;
}

static int control_client_send_all(struct control_client *c, const char *buf, size_t len,
				   uint64_t deadline_ns)
{
	while (len > 0) {
		ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
				int rc = poll(&pfd, 1, control_client_left_ms(deadline_ns));

				if (rc == 0)
					return -ETIMEDOUT;
				if (rc < 0 && errno != EINTR)
					return -errno;
				continue;
			}
			return errno == EPIPE ? -ECONNRESET : -errno;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

int control_client_send_raw(struct control_client *c, const void *buf, size_t len)
{
	return control_client_send_all(c, buf, len, control_client_deadline(c->timeout_ms));
}

/* A QMP greeting: {"QMP": {"version": {...}, "capabilities": [...]}}. */
static int control_client_check_greeting(struct json_object *g)
{
	struct json_object *inner, *v;

	if (!json_object_object_get_ex(g, "QMP", &inner) ||
	    !json_object_is_type(inner, json_type_object) ||
	    !json_object_object_get_ex(inner, "version", &v) ||
	    !json_object_is_type(v, json_type_object) ||
	    !json_object_object_get_ex(inner, "capabilities", &v) ||
	    !json_object_is_type(v, json_type_array))
		return -EPROTO;
	return 0;
}

/*
 * Leave capabilities negotiation, enabling nothing, before @deadline_ns.
 * 0, -EPROTO when the server refuses, or a transport error.
 */
static int control_client_negotiate(struct control_client *c, uint64_t deadline_ns)
{
	int saved = c->timeout_ms, left = control_client_left_ms(deadline_ns);
	struct json_object *reply = NULL;
	int rc;

	c->timeout_ms = left > 0 ? left : 1;
	rc = control_client_call(c, CONTROL_CMD_QMP_CAPABILITIES, NULL, &reply);
	c->timeout_ms = saved;
	if (rc == -EREMOTEIO) {
		log_debug("control: qmp_capabilities refused: %s",
			  control_reply_error_desc(reply) ? control_reply_error_desc(reply) : "?");
		rc = -EPROTO;
	}
	json_object_put(reply);
	return rc;
}

/*
 * One connection attempt; -ENOENT / -ECONNREFUSED when nobody serves @path.
 * With @negotiate, the session is in command mode on success.
 */
static int control_client_connect_once(const char *path, int timeout_ms, bool negotiate,
				       struct control_client **out)
{
	uint64_t deadline = control_client_deadline(timeout_ms);
	struct control_client *c;
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct json_object *greeting = NULL;
	int rc;

	*out = NULL;
	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	memcpy(addr.sun_path, path, strlen(path) + 1);
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->timeout_ms = CONTROL_CLIENT_DEFAULT_TIMEOUT_MS;
	c->next_id = 1;
	control_linebuf_init(&c->in, CONTROL_CLIENT_LINE_MAX_BYTES);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (c->fd < 0) {
		rc = -errno;
		goto err;
	}
	/* A full backlog says EAGAIN on a non-blocking UNIX connect: retry. */
	while (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		rc = -errno;
		if (rc == -EINTR)
			continue;
		if (rc == -ECONNREFUSED) {
			struct stat st;

			/* A file or directory there refuses too: say what it is. */
			if (stat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
				rc = -ENOTSOCK;
		}
		if (rc != -EAGAIN)
			goto err;
		if (clock_monotonic_ns() >= deadline) {
			rc = -ETIMEDOUT;
			goto err;
		}
		control_client_nap(CONTROL_CLIENT_RETRY_NS);
	}
	for (;;) {
		rc = control_client_read_obj(c, deadline, &greeting);
		if (rc < 0)
			goto err;
		if (!control_client_is_event(greeting))
			break;
		json_object_put(greeting); /* QMP sends none before it; harmless */
		greeting = NULL;
	}
	rc = control_client_check_greeting(greeting);
	if (rc == -EPROTO && control_client_reply_rc(greeting) == -EREMOTEIO) {
		/* e.g. "too many clients": refused by a real server. */
		log_debug("control: %s: %s", path, control_reply_error_desc(greeting));
		rc = -ECONNREFUSED;
	}
	c->greeting = greeting;
	if (rc == 0 && negotiate)
		rc = control_client_negotiate(c, deadline);
	if (rc < 0)
		goto err;
	*out = c;
	return 0;
err:
	control_client_close(c);
	return rc;
}

int control_client_connect_now(const char *path, int timeout_ms, struct control_client **out)
{
	return control_client_connect_once(path, timeout_ms, true, out);
}

const char *control_client_strerror(int rc, char *buf, size_t len)
{
	char sbuf[128];

	switch (rc) {
	case -ETIMEDOUT:
		snprintf(buf, len, "timed out waiting for the VMM");
		break;
	case -ECONNRESET:
		snprintf(buf, len, "the VMM closed the connection");
		break;
	case -EPROTO:
		snprintf(buf, len, "not a QMP control socket (bad greeting or reply)");
		break;
	case -ENOENT:
		snprintf(buf, len, "No such file or directory (is a VMM running with "
			 "--control at this path?)");
		break;
	case -ECONNREFUSED:
		snprintf(buf, len, "Connection refused (no VMM listens there any more, or all "
			 "its client slots are taken)");
		break;
	case -EACCES:
		snprintf(buf, len, "Permission denied (the socket is for its owner only)");
		break;
	case -ENOTSOCK:
		snprintf(buf, len, "not a socket (a VMM's --control PATH is one)");
		break;
	default:
		snprintf(buf, len, "%s", strerror_r(-rc, sbuf, sizeof(sbuf)));
	}
	return buf;
}

int control_client_connect_raw(const char *path, int timeout_ms, struct control_client **out)
{
	return control_client_connect_once(path, timeout_ms, false, out);
}

struct json_object *control_client_greeting(const struct control_client *c)
{
	return c->greeting;
}

int control_client_connect(const char *path, int timeout_ms, struct control_client **out)
{
	uint64_t deadline = control_client_deadline(timeout_ms);
	int rc, refused = 0;

	for (;;) {
		rc = control_client_connect_once(path, control_client_left_ms(deadline), true, out);
		/*
		 * An attempt cut short by the deadline after refusals is one more
		 * refusal as far as the caller can tell: report what was seen.
		 */
		if (rc == -ETIMEDOUT && refused && clock_monotonic_ns() >= deadline)
			return refused;
		if (rc != -ENOENT && rc != -ECONNREFUSED)
			return rc;
		refused = rc;
		if (clock_monotonic_ns() + CONTROL_CLIENT_RETRY_NS >= deadline)
			return rc;
		control_client_nap(CONTROL_CLIENT_RETRY_NS);
	}
}

int control_client_read_reply(struct control_client *c, int timeout_ms,
			      struct json_object **out)
{
	uint64_t deadline = control_client_deadline(timeout_ms);
	struct json_object *obj;
	int rc;

	*out = NULL;
	for (;;) {
		rc = control_client_read_obj(c, deadline, &obj);
		if (rc < 0)
			return rc;
		if (control_client_is_event(obj)) {
			control_client_queue_event(c, obj);
			continue;
		}
		*out = obj;
		return control_client_reply_rc(obj);
	}
}

static bool control_client_id_is(struct json_object *obj, int64_t id)
{
	struct json_object *v;

	return json_object_object_get_ex(obj, "id", &v) &&
	       json_object_is_type(v, json_type_int) && json_object_get_int64(v) == id;
}

int control_client_call(struct control_client *c, const char *command,
			struct json_object *args, struct json_object **reply)
{
	uint64_t deadline = control_client_deadline(c->timeout_ms);
	struct json_object *req = json_object_new_object(), *obj;
	int64_t id = c->next_id++;
	const char *s;
	size_t n;
	char *line = NULL;
	int rc = -ENOMEM;

	if (reply)
		*reply = NULL;
	if (!req)
		return -ENOMEM;
	if (json_object_object_add(req, "execute", json_object_new_string(command)) < 0)
		goto out;
	if (args && json_object_object_add(req, "arguments", json_object_get(args)) < 0) {
		json_object_put(args);
		goto out;
	}
	if (json_object_object_add(req, "id", json_object_new_int64(id)) < 0)
		goto out;
	s = json_object_to_json_string_length(req, JSON_C_TO_STRING_PLAIN |
					      JSON_C_TO_STRING_NOSLASHESCAPE, &n);
	line = s ? malloc(n + 1) : NULL;
	if (!line)
		goto out;
	memcpy(line, s, n);
	line[n] = '\n';
	rc = control_client_send_all(c, line, n + 1, deadline);
	if (rc < 0)
		goto out;
	for (;;) {
		rc = control_client_read_obj(c, deadline, &obj);
		if (rc < 0)
			goto out;
		if (control_client_is_event(obj)) {
			control_client_queue_event(c, obj);
			continue;
		}
		if (!control_client_id_is(obj, id)) {
			/* A reply to something sent raw earlier: not ours. */
			json_object_put(obj);
			continue;
		}
		rc = control_client_reply_rc(obj);
		if (reply)
			*reply = obj;
		else
			json_object_put(obj);
		goto out;
	}
out:
	free(line);
	json_object_put(req);
	return rc;
}

static bool control_client_event_is(struct json_object *ev, const char *name)
{
	struct json_object *v;

	if (!name)
		return true;
	return json_object_object_get_ex(ev, "event", &v) &&
	       json_object_is_type(v, json_type_string) &&
	       strcmp(json_object_get_string(v), name) == 0;
}

int control_client_wait_event(struct control_client *c, const char *event,
			      int timeout_ms, struct json_object **out)
{
	uint64_t deadline = control_client_deadline(timeout_ms);
	struct json_object *obj;
	int rc;

	if (out)
		*out = NULL;
	for (size_t i = 0; i < c->ev_count; i++) {
		size_t slot = (c->ev_first + i) % CONTROL_CLIENT_EVENT_QUEUE_MAX;

		if (!control_client_event_is(c->events[slot], event))
			continue;
		obj = c->events[slot];
		/* Close the gap, keeping the order of the rest. */
		for (size_t j = i; j + 1 < c->ev_count; j++)
			c->events[(c->ev_first + j) % CONTROL_CLIENT_EVENT_QUEUE_MAX] =
				c->events[(c->ev_first + j + 1) % CONTROL_CLIENT_EVENT_QUEUE_MAX];
		c->ev_count--;
		if (out)
			*out = obj;
		else
			json_object_put(obj);
		return 0;
	}
	for (;;) {
		rc = control_client_read_obj(c, deadline, &obj);
		if (rc < 0)
			return rc;
		if (control_client_is_event(obj) && control_client_event_is(obj, event)) {
			if (out)
				*out = obj;
			else
				json_object_put(obj);
			return 0;
		}
		if (control_client_is_event(obj))
			control_client_queue_event(c, obj);
		else
			json_object_put(obj);
	}
}

struct json_object *control_reply_return(struct json_object *reply)
{
	struct json_object *v = NULL;

	json_object_object_get_ex(reply, "return", &v);
	return v;
}

static const char *control_reply_error_str(struct json_object *reply, const char *key)
{
	struct json_object *e, *v;

	if (!json_object_object_get_ex(reply, "error", &e) ||
	    !json_object_object_get_ex(e, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

const char *control_reply_error_desc(struct json_object *reply)
{
	return control_reply_error_str(reply, "desc");
}

const char *control_reply_error_class(struct json_object *reply)
{
	return control_reply_error_str(reply, "class");
}

/* ---- vmferry ctl ---- */

static void control_ctl_usage(FILE *f)
{
	fprintf(f,
		"usage: vmferry ctl [--timeout SECONDS] [--wait] PATH COMMAND [JSON-ARGS]\n"
		"       vmferry ctl [--timeout SECONDS] [--wait] PATH -\n"
		"\n"
		"Send one command to the control socket PATH and print the JSON it\n"
		"returns on stdout (exit 0), or the error on stderr (exit 1).\n"
		"JSON-ARGS is a JSON object, e.g. '{\"file\": \"/tmp/mem.img\"}'.\n"
		"\n"
		"With '-' as COMMAND, read commands from stdin, one per line\n"
		"(\"NAME [JSON-ARGS]\"; blank lines and lines starting with '#' are\n"
		"skipped), all on one connection, and print each whole reply object\n"
		"on its own line; exit 1 if any command failed.\n"
		"\n"
		"  --timeout SECONDS  bound on connecting and on each reply (default 10)\n"
		"  --wait             retry connecting until the socket accepts,\n"
		"                     within the timeout (a VMM that is starting)\n"
		"  -h, --help         show this help\n"
		"\n"
		"Exit status: 0 success, 1 command error or no connection, 2 usage error.\n");
}

static int control_ctl_usage_error(const char *fmt, const char *arg)
	__attribute__((format(printf, 1, 0)));

static int control_ctl_usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "vmferry ctl: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\nTry 'vmferry ctl --help'.\n");
	return 2;
}

/* Parse @text as a JSON object (NULL with *msg set on failure). */
static struct json_object *control_ctl_parse_args(const char *text, const char **msg)
{
	static char why[CONTROL_ERROR_DESC_BYTES]; /* for *msg: vmferry ctl is one thread */
	struct json_tokener *tok = json_tokener_new_ex(CONTROL_JSON_MAX_DEPTH);
	struct json_object *obj = NULL;
	size_t len = strlen(text);

	*msg = "out of memory";
	if (!tok)
		return NULL;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	obj = json_tokener_parse_ex(tok, text, (int)(len > INT_MAX ? INT_MAX : len));
	if (json_tokener_get_error(tok) == json_tokener_continue)
		obj = json_tokener_parse_ex(tok, "", 1);
	if (json_tokener_get_error(tok) != json_tokener_success) {
		*msg = json_tokener_error_desc(json_tokener_get_error(tok));
		json_object_put(obj);
		obj = NULL;
	} else if (json_tokener_get_parse_end(tok) < len &&
		   text[json_tokener_get_parse_end(tok) + strspn(text + json_tokener_get_parse_end(tok), " \t\r\n")] != '\0') {
		*msg = "trailing characters after the JSON object";
		json_object_put(obj);
		obj = NULL;
	} else if (!json_object_is_type(obj, json_type_object)) {
		*msg = "JSON-ARGS must be a JSON object";
		json_object_put(obj);
		obj = NULL;
	} else if (control_json_check(text, json_tokener_get_parse_end(tok),
				      CONTROL_JSON_MAX_DEPTH, why, sizeof(why)) < 0) {
		/* json-c would have sent the last of duplicates: refuse as the server does */
		*msg = why;
		json_object_put(obj);
		obj = NULL;
	}
	json_tokener_free(tok);
	return obj;
}

static void control_ctl_print(FILE *f, struct json_object *obj)
{
	const char *s = obj ? json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN |
							     JSON_C_TO_STRING_NOSLASHESCAPE)
			    : "null";

	fprintf(f, "%s\n", s);
	fflush(f);
}

static int control_ctl_transport_error(const char *path, int rc)
{
	char why[160];

	fprintf(stderr, "vmferry ctl: %s: %s\n", path, control_client_strerror(rc, why, sizeof(why)));
	return 1;
}

/* One local error line in stdin mode, so output stays one line per command. */
static void control_ctl_local_error(unsigned lineno, const char *cls, const char *desc)
{
	struct json_object *e = json_object_new_object(), *root = json_object_new_object();

	fprintf(stderr, "vmferry ctl: stdin line %u: %s\n", lineno, desc);
	if (e && root) {
		json_object_object_add(e, "class", json_object_new_string(cls));
		json_object_object_add(e, "desc", json_object_new_string(desc));
		json_object_object_add(root, "error", e);
		e = NULL;
		control_ctl_print(stdout, root);
	}
	json_object_put(e);
	json_object_put(root);
}

static int control_ctl_stdin(struct control_client *c, const char *path)
{
	char *buf = NULL;
	size_t cap = 0;
	ssize_t n;
	unsigned lineno = 0;
	int status = 0;

	while ((n = getline(&buf, &cap, stdin)) >= 0) {
		char *p = buf, *name, *rest;
		struct json_object *args = NULL, *reply = NULL;
		const char *msg;
		int rc;

		lineno++;
		while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
			buf[--n] = '\0';
		p += strspn(p, " \t");
		if (*p == '\0' || *p == '#')
			continue;
		name = p;
		p += strcspn(p, " \t");
		rest = p;
		if (*p)
			*rest++ = '\0';
		rest += strspn(rest, " \t");
		if (*rest) {
			args = control_ctl_parse_args(rest, &msg);
			if (!args) {
				control_ctl_local_error(lineno, CONTROL_ERR_INVALID_ARGUMENT, msg);
				status = 1;
				continue;
			}
		}
		rc = control_client_call(c, name, args, &reply);
		json_object_put(args);
		if (rc < 0 && rc != -EREMOTEIO) {
			json_object_put(reply);
			free(buf);
			return control_ctl_transport_error(path, rc);
		}
		if (rc < 0)
			status = 1;
		control_ctl_print(stdout, reply);
		json_object_put(reply);
	}
	free(buf);
	return status;
}

int control_client_main(int argc, char **argv)
{
	const char *pos[3];
	int npos = 0, timeout_ms = 10000;
	bool wait = false, opts_done = false;
	struct control_client *c = NULL;
	struct json_object *args = NULL, *reply = NULL;
	int rc, status;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!opts_done && (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)) {
			control_ctl_usage(stdout);
			return 0;
		} else if (!opts_done && strcmp(a, "--wait") == 0) {
			wait = true;
		} else if (!opts_done && (strcmp(a, "--timeout") == 0 ||
					  strncmp(a, "--timeout=", 10) == 0)) {
			const char *v = a[9] == '=' ? a + 10 : (i + 1 < argc ? argv[++i] : NULL);
			char *end;
			double sec;

			if (!v)
				return control_ctl_usage_error("%s needs a value", "--timeout");
			errno = 0;
			sec = strtod(v, &end);
			if (errno || end == v || *end || !isfinite(sec) || sec <= 0 || sec > 86400)
				return control_ctl_usage_error("bad --timeout '%s' (seconds, 0 < t <= 86400)", v);
			timeout_ms = (int)ceil(sec * 1000.0);
		} else if (!opts_done && strcmp(a, "--") == 0) {
			opts_done = true;
		} else if (!opts_done && a[0] == '-' && a[1] != '\0') {
			return control_ctl_usage_error("unknown option '%s'", a);
		} else {
			if (npos == 3)
				return control_ctl_usage_error("unexpected argument '%s'", a);
			pos[npos++] = a;
		}
	}
	if (npos < 2)
		return control_ctl_usage_error("%s", "need PATH and COMMAND");
	if (strcmp(pos[1], "-") == 0 && npos > 2)
		return control_ctl_usage_error("%s", "no JSON-ARGS with '-': arguments go on each stdin line");
	if (pos[1][0] == '\0')
		return control_ctl_usage_error("%s", "empty COMMAND");
	if (npos == 3) {
		const char *msg;

		args = control_ctl_parse_args(pos[2], &msg);
		if (!args) {
			fprintf(stderr, "vmferry ctl: bad JSON-ARGS: %s\n", msg);
			return 2;
		}
	}

	if (wait)
		rc = control_client_connect(pos[0], timeout_ms, &c);
	else
		rc = control_client_connect_now(pos[0], timeout_ms, &c);
	if (rc < 0) {
		json_object_put(args);
		return control_ctl_transport_error(pos[0], rc);
	}
	control_client_set_timeout(c, timeout_ms);

	if (strcmp(pos[1], "-") == 0) {
		status = control_ctl_stdin(c, pos[0]);
		control_client_close(c);
		return status;
	}
	rc = control_client_call(c, pos[1], args, &reply);
	if (rc == 0) {
		control_ctl_print(stdout, control_reply_return(reply));
		status = 0;
	} else if (rc == -EREMOTEIO) {
		const char *desc = control_reply_error_desc(reply);
		const char *cls = control_reply_error_class(reply);

		fprintf(stderr, "vmferry ctl: %s: %s (%s)\n", pos[1], desc ? desc : "error",
			cls ? cls : "?");
		status = 1;
	} else {
		status = control_ctl_transport_error(pos[0], rc);
	}
	json_object_put(reply);
	json_object_put(args);
	control_client_close(c);
	return status;
}
