#include "control/control_proto.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "control/control_json.h"
#include "util/version.h"

/* Most bytes of a client's name (command, member) echoed in an error. */
#define CONTROL_ECHO_BYTES 64

/* ---- line framing ---- */

void control_linebuf_init(struct control_linebuf *lb, size_t max_line_bytes)
{
	memset(lb, 0, sizeof(*lb));
	lb->max_line_bytes = max_line_bytes;
}

void control_linebuf_free(struct control_linebuf *lb)
{
	free(lb->buf);
	lb->buf = NULL;
	lb->len_bytes = lb->cap_bytes = lb->start = lb->scan = 0;
}

int control_linebuf_append(struct control_linebuf *lb, const void *data, size_t n)
{
	size_t need;

	/* Drop the lines already handed out before growing. */
	if (lb->start > 0) {
		memmove(lb->buf, lb->buf + lb->start, lb->len_bytes - lb->start);
		lb->len_bytes -= lb->start;
		lb->scan -= lb->start;
		lb->start = 0;
	}
	if (n > SIZE_MAX - lb->len_bytes - 1)
		return -ENOMEM;
	need = lb->len_bytes + n + 1; /* +1: room to NUL-terminate a line */
	if (need > lb->cap_bytes) {
		size_t cap = lb->cap_bytes ? lb->cap_bytes : 4096;
		char *p;

		while (cap < need)
			cap = cap > SIZE_MAX / 2 ? need : cap * 2;
		p = realloc(lb->buf, cap);
		if (!p)
			return -ENOMEM;
		lb->buf = p;
		lb->cap_bytes = cap;
	}
	if (n)
		memcpy(lb->buf + lb->len_bytes, data, n);
	lb->len_bytes += n;
	return 0;
}

int control_linebuf_next(struct control_linebuf *lb, char **line, size_t *len_bytes)
{
	char *nl;
	size_t pos, n;

	if (!lb->buf || lb->scan >= lb->len_bytes) {
		if (lb->len_bytes - lb->start > lb->max_line_bytes)
			return -EMSGSIZE;
		return 0;
	}
	/* Search only the new bytes: a line trickling in byte by byte stays O(n). */
	nl = memchr(lb->buf + lb->scan, '\n', lb->len_bytes - lb->scan);
	if (!nl) {
		lb->scan = lb->len_bytes;
		if (lb->len_bytes - lb->start > lb->max_line_bytes)
			return -EMSGSIZE;
		return 0;
	}
	pos = (size_t)(nl - lb->buf);
	n = pos - lb->start;
	if (n > lb->max_line_bytes)
		return -EMSGSIZE;
	*nl = '\0';
	if (n > 0 && lb->buf[pos - 1] == '\r')
		lb->buf[pos - 1] = '\0', n--;
	*line = lb->buf + lb->start;
	*len_bytes = n;
	lb->start = pos + 1;
	lb->scan = lb->start;
	return 1;
}

size_t control_linebuf_pending(const struct control_linebuf *lb)
{
	return lb->len_bytes - lb->start;
}

/* ---- commands ---- */

const char *control_arg_type_name(enum control_arg_type type)
{
	switch (type) {
	case CONTROL_ARG_STRING: return "string";
	case CONTROL_ARG_INT:    return "integer";
	case CONTROL_ARG_NUMBER: return "number";
	case CONTROL_ARG_BOOL:   return "boolean";
	case CONTROL_ARG_OBJECT: return "object";
	case CONTROL_ARG_ARRAY:  return "array";
	case CONTROL_ARG_ANY:    return "any";
	}
	return "invalid";
}

bool control_command_name_ok(const char *name)
{
	size_t n;

	if (!name || !(name[0] >= 'a' && name[0] <= 'z'))
		return false;
	for (n = 0; name[n]; n++) {
		char c = name[n];

		if (n >= CONTROL_COMMAND_NAME_MAX_BYTES)
			return false;
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
			return false;
	}
	return true;
}

static void control_error_set(struct control_error *err, const char *cls,
			      const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void control_error_set(struct control_error *err, const char *cls,
			      const char *fmt, ...)
{
	va_list ap;

	err->cls = cls;
	va_start(ap, fmt);
	vsnprintf(err->desc, sizeof(err->desc), fmt, ap);
	va_end(ap);
}

static const char *control_json_type_name(struct json_object *v)
{
	return v ? json_type_to_name(json_object_get_type(v)) : "null";
}

/* ---- requests ---- */

void control_request_release(struct control_request *req)
{
	json_object_put(req->root);
	memset(req, 0, sizeof(*req));
}

static bool control_is_blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
			return false;
	return true;
}

/* Parse exactly one JSON value filling the whole of @line.  0 or -EBADMSG. */
static int control_parse_json(const char *line, size_t len, struct json_object **out,
			      struct control_error *err)
{
	struct json_tokener *tok;
	struct json_object *obj;
	enum json_tokener_error jerr;
	size_t end;

	*out = NULL;
	if (len > INT_MAX - 1) {
		control_error_set(err, CONTROL_ERR_GENERIC, "request line too long");
		return -EBADMSG;
	}
	/* json-c would stop at a NUL and accept what came before it. */
	if (memchr(line, '\0', len)) {
		control_error_set(err, CONTROL_ERR_GENERIC,
				  "malformed JSON: NUL byte at offset %zu",
				  (size_t)((const char *)memchr(line, '\0', len) - line));
		return -EBADMSG;
	}
	tok = json_tokener_new_ex(CONTROL_JSON_MAX_DEPTH);
	if (!tok) {
		control_error_set(err, CONTROL_ERR_GENERIC, "out of memory");
		return -EBADMSG;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	obj = json_tokener_parse_ex(tok, line, (int)len);
	jerr = json_tokener_get_error(tok);
	end = json_tokener_get_parse_end(tok);
	if (jerr == json_tokener_continue) {
		/* The line is complete: a NUL ends a bare number or literal. */
		obj = json_tokener_parse_ex(tok, "", 1);
		jerr = json_tokener_get_error(tok);
		if (jerr != json_tokener_success)
			end = len;
	}
	json_tokener_free(tok);
	if (jerr != json_tokener_success) {
		json_object_put(obj);
		control_error_set(err, CONTROL_ERR_GENERIC, "malformed JSON: %s at offset %zu",
				  json_tokener_error_desc(jerr), end);
		return -EBADMSG;
	}
	if (jerr == json_tokener_success && end < len && !control_is_blank(line + end, len - end)) {
		json_object_put(obj);
		control_error_set(err, CONTROL_ERR_GENERIC,
				  "malformed JSON: trailing characters at offset %zu", end);
		return -EBADMSG;
	}
	/* What json-c lets through: duplicate names, big integers, loose UTF-8. */
	if (control_json_check(line, end < len ? end : len, CONTROL_JSON_MAX_DEPTH,
			       err->desc, sizeof(err->desc)) < 0) {
		json_object_put(obj);
		err->cls = CONTROL_ERR_GENERIC;
		return -EBADMSG;
	}
	*out = obj;
	return 0;
}

int control_proto_parse_request(const char *line, size_t len_bytes,
				struct control_request *req, struct control_error *err)
{
	struct json_object *root, *execute = NULL, *args = NULL;
	bool has_execute = false, has_args = false;
	int rc;

	memset(req, 0, sizeof(*req));
	rc = control_parse_json(line, len_bytes, &root, err);
	if (rc < 0)
		return rc;
	if (!json_object_is_type(root, json_type_object)) {
		control_error_set(err, CONTROL_ERR_GENERIC,
				  "request must be a JSON object, not %s",
				  control_json_type_name(root));
		json_object_put(root);
		return -EBADMSG;
	}
	req->root = root;
	/* Find the id first so that every later error can echo it. */
	req->has_id = json_object_object_get_ex(root, "id", &req->id);

	json_object_object_foreach(root, key, val) {
		if (strcmp(key, "execute") == 0) {
			has_execute = true;
			execute = val;
		} else if (strcmp(key, "arguments") == 0) {
			has_args = true;
			args = val;
		} else if (strcmp(key, "id") != 0) {
			control_error_set(err, CONTROL_ERR_GENERIC,
					  "unexpected member '%.*s' in request",
					  control_json_utf8_cut(key, CONTROL_ECHO_BYTES), key);
			return -EBADMSG;
		}
	}
	if (!has_execute) {
		control_error_set(err, CONTROL_ERR_GENERIC,
				  "request has no 'execute' member");
		return -EBADMSG;
	}
	if (!json_object_is_type(execute, json_type_string)) {
		control_error_set(err, CONTROL_ERR_GENERIC,
				  "'execute' must be a string, not %s",
				  control_json_type_name(execute));
		return -EBADMSG;
	}
	if (has_args && !json_object_is_type(args, json_type_object)) {
		control_error_set(err, CONTROL_ERR_INVALID_ARGUMENT,
				  "'arguments' must be an object, not %s",
				  control_json_type_name(args));
		return -EBADMSG;
	}
	req->execute = json_object_get_string(execute);
	req->args = args;
	return 0;
}

static bool control_arg_type_ok(enum control_arg_type type, struct json_object *v)
{
	switch (type) {
	case CONTROL_ARG_STRING: return json_object_is_type(v, json_type_string);
	case CONTROL_ARG_INT:    return json_object_is_type(v, json_type_int);
	case CONTROL_ARG_NUMBER: return json_object_is_type(v, json_type_int) ||
					json_object_is_type(v, json_type_double);
	case CONTROL_ARG_BOOL:   return json_object_is_type(v, json_type_boolean);
	case CONTROL_ARG_OBJECT: return json_object_is_type(v, json_type_object);
	case CONTROL_ARG_ARRAY:  return json_object_is_type(v, json_type_array);
	case CONTROL_ARG_ANY:    return true;
	}
	return false;
}

int control_proto_check_args(const struct control_arg_spec *spec,
			     struct json_object *args, struct control_error *err)
{
	if (args && !json_object_is_type(args, json_type_object)) {
		control_error_set(err, CONTROL_ERR_INVALID_ARGUMENT,
				  "'arguments' must be an object, not %s",
				  control_json_type_name(args));
		return -EINVAL;
	}
	if (args) {
		json_object_object_foreach(args, key, val) {
			const struct control_arg_spec *s = NULL;

			for (const struct control_arg_spec *p = spec; p && p->name; p++)
				if (strcmp(p->name, key) == 0) {
					s = p;
					break;
				}
			if (!s) {
				control_error_set(err, CONTROL_ERR_INVALID_ARGUMENT,
						  "unknown argument '%.*s'",
						  control_json_utf8_cut(key, CONTROL_ECHO_BYTES), key);
				return -EINVAL;
			}
			if (!control_arg_type_ok(s->type, val)) {
				control_error_set(err, CONTROL_ERR_INVALID_ARGUMENT,
						  "argument '%s' must be of type %s, not %s",
						  s->name, control_arg_type_name(s->type),
						  control_json_type_name(val));
				return -EINVAL;
			}
		}
	}
	for (const struct control_arg_spec *p = spec; p && p->name; p++) {
		if (p->required && !(args && json_object_object_get_ex(args, p->name, NULL))) {
			control_error_set(err, CONTROL_ERR_INVALID_ARGUMENT,
					  "missing required argument '%s' (%s)",
					  p->name, control_arg_type_name(p->type));
			return -EINVAL;
		}
	}
	return 0;
}

/* ---- formatting ---- */

/*
 * Serialise @obj as one line plus '\n'; consumes the reference to @obj.
 * json-c escapes control characters but copies bytes >= 0x80 as they are,
 * so a handler's text that is not UTF-8 (a peer's error string, a file name)
 * would make the line invalid: such bytes become U+FFFD.
 */
static char *control_line_from(struct json_object *obj, size_t *len_bytes)
{
	const char *s;
	size_t n = 0;
	char *line = NULL, *clean = NULL;

	if (!obj)
		return NULL;
	s = json_object_to_json_string_length(obj, JSON_C_TO_STRING_PLAIN |
					      JSON_C_TO_STRING_NOSLASHESCAPE, &n);
	if (s && !control_json_utf8_valid(s, n)) {
		clean = control_json_utf8_sanitize(s, n, &n);
		s = clean;
	}
	if (s) {
		line = malloc(n + 2);
		if (line) {
			memcpy(line, s, n);
			line[n] = '\n';
			line[n + 1] = '\0';
			if (len_bytes)
				*len_bytes = n + 1;
		}
	}
	free(clean);
	json_object_put(obj);
	return line;
}

/* json_object_object_add that reports failure and frees @val on it. */
static int control_obj_add(struct json_object *obj, const char *key, struct json_object *val)
{
	if (json_object_object_add(obj, key, val) < 0) {
		json_object_put(val);
		return -ENOMEM;
	}
	return 0;
}

/* Add @val, which must not be NULL unless @null_ok (JSON null). */
static int control_obj_add_new(struct json_object *obj, const char *key,
			       struct json_object *val, bool null_ok)
{
	if (!val && !null_ok)
		return -ENOMEM;
	return control_obj_add(obj, key, val);
}

char *control_proto_format_return(struct json_object *ret, struct json_object *id,
				  bool has_id, size_t *len_bytes)
{
	struct json_object *root = json_object_new_object();

	if (!root)
		return NULL;
	if (control_obj_add_new(root, "return",
				ret ? json_object_get(ret) : json_object_new_object(), false) < 0)
		goto fail;
	if (has_id && control_obj_add_new(root, "id", json_object_get(id), true) < 0)
		goto fail;
	return control_line_from(root, len_bytes);
fail:
	json_object_put(root);
	return NULL;
}

char *control_proto_format_error(const char *cls, const char *desc,
				 struct json_object *id, bool has_id, size_t *len_bytes)
{
	struct json_object *root = json_object_new_object(), *e = json_object_new_object();

	if (!root || !e)
		goto fail;
	if (control_obj_add_new(e, "class", json_object_new_string(cls), false) < 0 ||
	    control_obj_add_new(e, "desc", json_object_new_string(desc), false) < 0)
		goto fail;
	if (control_obj_add(root, "error", e) < 0) {
		e = NULL;
		goto fail;
	}
	e = NULL;
	if (has_id && control_obj_add_new(root, "id", json_object_get(id), true) < 0)
		goto fail;
	return control_line_from(root, len_bytes);
fail:
	json_object_put(e);
	json_object_put(root);
	return NULL;
}

char *control_proto_format_event(const char *event, struct json_object *data,
				 uint64_t realtime_ns, size_t *len_bytes)
{
	struct json_object *root = json_object_new_object(), *ts = json_object_new_object();

	if (!root || !ts)
		goto fail;
	if (control_obj_add_new(ts, "seconds",
				json_object_new_int64((int64_t)(realtime_ns / 1000000000ull)), false) < 0 ||
	    control_obj_add_new(ts, "microseconds",
				json_object_new_int64((int64_t)(realtime_ns % 1000000000ull / 1000u)), false) < 0)
		goto fail;
	if (control_obj_add_new(root, "event", json_object_new_string(event), false) < 0)
		goto fail;
	if (control_obj_add(root, "timestamp", ts) < 0) {
		ts = NULL;
		goto fail;
	}
	ts = NULL;
	if (control_obj_add_new(root, "data",
				data ? json_object_get(data) : json_object_new_object(), false) < 0)
		goto fail;
	return control_line_from(root, len_bytes);
fail:
	json_object_put(ts);
	json_object_put(root);
	return NULL;
}

struct json_object *control_proto_version_object(void)
{
	struct json_object *root = json_object_new_object();
	struct json_object *triple = json_object_new_object();

	if (!root || !triple)
		goto fail;
	if (control_obj_add_new(triple, "micro", json_object_new_int(0), false) < 0 ||
	    control_obj_add_new(triple, "minor", json_object_new_int(0), false) < 0 ||
	    control_obj_add_new(triple, "major", json_object_new_int(0), false) < 0)
		goto fail;
	if (control_obj_add(root, "qemu", triple) < 0) {
		triple = NULL;
		goto fail;
	}
	triple = NULL;
	if (control_obj_add_new(root, "package",
				json_object_new_string("vmferry " VMFERRY_VERSION), false) < 0)
		goto fail;
	return root;
fail:
	json_object_put(triple);
	json_object_put(root);
	return NULL;
}

char *control_proto_format_greeting(size_t *len_bytes)
{
	struct json_object *root = json_object_new_object();
	struct json_object *inner = json_object_new_object();

	if (!root || !inner)
		goto fail;
	if (control_obj_add_new(inner, "version", control_proto_version_object(), false) < 0 ||
	    control_obj_add_new(inner, "capabilities", json_object_new_array(), false) < 0)
		goto fail;
	if (control_obj_add(root, "QMP", inner) < 0) {
		inner = NULL;
		goto fail;
	}
	return control_line_from(root, len_bytes);
fail:
	json_object_put(inner);
	json_object_put(root);
	return NULL;
}

/* ---- dispatch ---- */

static const struct control_command *control_find(const struct control_command *cmds,
						  size_t ncmds, const char *name)
{
	for (size_t i = 0; i < ncmds; i++)
		if (strcmp(cmds[i].name, name) == 0)
			return &cmds[i];
	return NULL;
}

static const struct control_arg_spec control_qmp_capabilities_args[] = {
	{ "enable", CONTROL_ARG_ARRAY, false },
	{ NULL, 0, false },
};

/*
 * qmp_capabilities: ends negotiation.  We offer no capability, so asking to
 * enable any is an error and leaves the session negotiating.  0 or -EINVAL
 * with @err filled.
 */
static int control_qmp_capabilities(struct control_session *session,
				    struct json_object *args, struct control_error *err)
{
	struct json_object *enable = NULL;

	if (session->negotiated) {
		control_error_set(err, CONTROL_ERR_COMMAND_NOT_FOUND,
				  "Capabilities negotiation is already complete, command ignored");
		return -EINVAL;
	}
	if (control_proto_check_args(control_qmp_capabilities_args, args, err) < 0)
		return -EINVAL;
	if (args && json_object_object_get_ex(args, "enable", &enable) &&
	    json_object_array_length(enable) > 0) {
		struct json_object *cap = json_object_array_get_idx(enable, 0);

		if (!json_object_is_type(cap, json_type_string))
			control_error_set(err, CONTROL_ERR_INVALID_ARGUMENT,
					  "argument 'enable' must list capability names (strings)");
		else
			control_error_set(err, CONTROL_ERR_GENERIC,
					  "capability '%.*s' is not offered (the greeting lists none)",
					  control_json_utf8_cut(json_object_get_string(cap),
								CONTROL_ECHO_BYTES),
					  json_object_get_string(cap));
		return -EINVAL;
	}
	session->negotiated = true;
	return 0;
}

int control_proto_dispatch(const struct control_command *cmds, size_t ncmds,
			   struct control_session *session,
			   const char *line, size_t len_bytes,
			   struct control_dispatch *res)
{
	struct control_request req;
	struct control_error err = { .cls = CONTROL_ERR_GENERIC };
	const struct control_command *cmd;
	struct json_object *args = NULL, *ret = NULL;
	char errbuf[CONTROL_ERROR_DESC_BYTES];
	int rc;

	memset(res, 0, sizeof(*res));
	if (control_is_blank(line, len_bytes))
		return 0; /* lets people type at the socket with socat */

	rc = control_proto_parse_request(line, len_bytes, &req, &err);
	if (rc < 0)
		goto error_reply;

	if (strcmp(req.execute, CONTROL_CMD_QMP_CAPABILITIES) == 0) {
		if (control_qmp_capabilities(session, req.args, &err) < 0)
			goto error_reply;
		goto return_reply;
	}
	if (!session->negotiated) {
		/* As QEMU says it: clients match on the class and this text. */
		control_error_set(&err, CONTROL_ERR_COMMAND_NOT_FOUND,
				  "Expecting capabilities negotiation with '"
				  CONTROL_CMD_QMP_CAPABILITIES "' before command '%.*s'",
				  control_json_utf8_cut(req.execute, CONTROL_ECHO_BYTES), req.execute);
		goto error_reply;
	}
	cmd = control_find(cmds, ncmds, req.execute);
	if (!cmd) {
		control_error_set(&err, CONTROL_ERR_COMMAND_NOT_FOUND,
				  "The command %.*s has not been found",
				  control_json_utf8_cut(req.execute, CONTROL_ECHO_BYTES), req.execute);
		goto error_reply;
	}
	if (control_proto_check_args(cmd->args, req.args, &err) < 0)
		goto error_reply;

	args = req.args ? json_object_get(req.args) : json_object_new_object();
	if (!args) {
		control_error_set(&err, CONTROL_ERR_GENERIC, "out of memory");
		goto error_reply;
	}
	errbuf[0] = '\0';
	rc = cmd->fn(cmd->opaque, args, &ret, errbuf, sizeof(errbuf));
	json_object_put(args);
	if (rc < 0) {
		json_object_put(ret);
		err.cls = rc == -EINVAL ? CONTROL_ERR_INVALID_ARGUMENT : CONTROL_ERR_GENERIC;
		if (errbuf[0]) {
			errbuf[sizeof(errbuf) - 1] = '\0';
			snprintf(err.desc, sizeof(err.desc), "%s", errbuf);
		} else {
			char sbuf[128];

			snprintf(err.desc, sizeof(err.desc), "%s failed: %s", cmd->name,
				 strerror_r(-rc, sbuf, sizeof(sbuf)));
		}
		goto error_reply;
	}
	res->after = cmd->after_reply ? cmd : NULL;
return_reply:
	res->reply = control_proto_format_return(ret, req.id, req.has_id,
						 &res->reply_len_bytes);
	json_object_put(ret);
	if (!res->reply) {
		res->after = NULL;
		control_error_set(&err, CONTROL_ERR_GENERIC, "out of memory formatting the reply");
		goto error_reply;
	}
	control_request_release(&req);
	return 0;

error_reply:
	res->reply = control_proto_format_error(err.cls, err.desc, req.id, req.has_id,
						&res->reply_len_bytes);
	control_request_release(&req);
	return res->reply ? 0 : -ENOMEM;
}
