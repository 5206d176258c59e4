/*
 * The control protocol without sockets: line framing, request parsing,
 * argument validation against a command's spec, dispatch to a handler and
 * formatting of replies, errors, events and the greeting.
 *
 * Everything here is pure (no I/O, no threads, no globals) so that it can be
 * unit-tested and fuzzed; the socket server (control.h) and the client
 * (client.h) are thin layers over it.  docs/control.md describes the wire
 * format for humans.
 *
 * Wire format: QEMU's QMP, one JSON object per '\n'-terminated line:
 *
 *   server -> client  {"QMP": {"version": {"qemu": {...}, "package": "vmferry X.Y.Z"},
 *                              "capabilities": []}}                       greeting
 *   client -> server  {"execute": "qmp_capabilities"}     negotiation, first
 *   client -> server  {"execute": "NAME", "arguments": {...}, "id": ANY}
 *   server -> client  {"return": ..., "id": ANY}
 *                     {"error": {"class": "...", "desc": "..."}, "id": ANY}
 *                     {"event": "NAME", "timestamp": {...}, "data": {...}}
 *
 * A session starts in capabilities negotiation: until qmp_capabilities
 * succeeds every other command is refused (CommandNotFound) and no event is
 * sent; afterwards qmp_capabilities itself is refused.
 */
#ifndef VMFERRY_CONTROL_PROTO_H
#define VMFERRY_CONTROL_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_object;

/* The one command that is valid, and only, during negotiation. */
#define CONTROL_CMD_QMP_CAPABILITIES "qmp_capabilities"

/* Longest request line the server accepts, '\n' not counted. */
#define CONTROL_LINE_MAX_BYTES (64u * 1024u)
/* Deepest JSON nesting accepted in a request (json-c tokener depth). */
#define CONTROL_JSON_MAX_DEPTH 32
/* Longest error description produced; longer ones are truncated. */
#define CONTROL_ERROR_DESC_BYTES 256

/* Error classes, as QMP names them. */
#define CONTROL_ERR_GENERIC "GenericError"
#define CONTROL_ERR_COMMAND_NOT_FOUND "CommandNotFound"
#define CONTROL_ERR_INVALID_ARGUMENT "InvalidArgument"

/* ---- line framing ---- */

/*
 * Splits a byte stream into '\n'-terminated lines of bounded length.  The
 * buffer holds at most one partial line plus the bytes of the last append,
 * so its size stays bounded by max_line_bytes + the largest append.
 * Not thread-safe; one per connection.
 */
struct control_linebuf {
	char *buf;             /* owned; NULL until the first append */
	size_t len_bytes;      /* bytes held, consumed ones included */
	size_t cap_bytes;
	size_t start;          /* first byte not yet returned as a line */
	size_t scan;           /* [start, scan) is known to hold no '\n' */
	size_t max_line_bytes;
};

void control_linebuf_init(struct control_linebuf *lb, size_t max_line_bytes);
void control_linebuf_free(struct control_linebuf *lb);

/* Copy @n bytes in.  0 or -ENOMEM. */
int control_linebuf_append(struct control_linebuf *lb, const void *data, size_t n);

/*
 * Take the next complete line.  Returns 1 and sets *line (NUL-terminated,
 * '\n' and a trailing '\r' removed; valid until the next call on @lb) and
 * *len_bytes; 0 when no complete line is buffered; -EMSGSIZE when a line
 * (complete or not) is longer than max_line_bytes — the stream is then out
 * of sync and the connection should be dropped.
 */
int control_linebuf_next(struct control_linebuf *lb, char **line, size_t *len_bytes);

/* Bytes of the unterminated tail (a client that leaves mid-line has some). */
size_t control_linebuf_pending(const struct control_linebuf *lb);

/* ---- commands ---- */

enum control_arg_type {
	CONTROL_ARG_STRING = 1, /* zero is invalid */
	CONTROL_ARG_INT,        /* JSON integer */
	CONTROL_ARG_NUMBER,     /* integer or floating point */
	CONTROL_ARG_BOOL,
	CONTROL_ARG_OBJECT,
	CONTROL_ARG_ARRAY,
	CONTROL_ARG_ANY,
};

/* "string", "integer", ... for messages; "invalid" for junk. */
const char *control_arg_type_name(enum control_arg_type type);

struct control_arg_spec {
	const char *name;           /* NULL ends a spec array */
	enum control_arg_type type;
	bool required;
};

/*
 * A command handler.  Called on the control thread with arguments already
 * checked against the command's spec (@args is an object, never NULL; a
 * borrowed reference).  On success returns 0 and may store a new JSON value
 * in *ret (ownership passes to the caller; left NULL it means {}).  On
 * failure returns -errno and writes a human description into @errbuf:
 * -EINVAL is reported as class InvalidArgument (the values are wrong), any
 * other -errno as GenericError.
 */
typedef int control_command_fn(void *opaque, struct json_object *args,
			       struct json_object **ret, char *errbuf, size_t errlen);

struct control_command {
	const char *name;                    /* static storage */
	control_command_fn *fn;
	void *opaque;                        /* passed to fn and after_reply */
	const struct control_arg_spec *args; /* NULL-name terminated; NULL = none */
	/*
	 * Optional: run once a successful reply has been handed to the socket
	 * (quit uses it so the client sees {"return": {}} before the VMM goes).
	 */
	void (*after_reply)(void *opaque);
};

/* Longest command name accepted by control_server_register(). */
#define CONTROL_COMMAND_NAME_MAX_BYTES 64

/* True when @name is a sane command name: [a-z0-9-], 1..64 bytes. */
bool control_command_name_ok(const char *name);

/* ---- requests ---- */

struct control_error {
	const char *cls;                      /* CONTROL_ERR_*, static */
	char desc[CONTROL_ERROR_DESC_BYTES];
};

struct control_request {
	struct json_object *root;    /* owned: the parsed line */
	const char *execute;         /* borrowed from root */
	struct json_object *args;    /* borrowed from root; NULL when absent */
	struct json_object *id;      /* borrowed from root; NULL for JSON null */
	bool has_id;                 /* the request had an "id" member */
};

/*
 * Parse one request line (@len_bytes bytes at @line, no '\n'; it need not be
 * NUL-terminated).  Returns 0 with *req filled (release it with
 * control_request_release), or -EBADMSG with @err filled; in both cases
 * req->root/req->id are set when the line was a JSON object, so an error
 * reply can echo the id — release *req either way.
 */
int control_proto_parse_request(const char *line, size_t len_bytes,
				struct control_request *req, struct control_error *err);
void control_request_release(struct control_request *req);

/*
 * Check @args (an object, or NULL for none) against @spec: every member must
 * be named in the spec with the right type, every required one present.
 * Returns 0, or -EINVAL with err (class InvalidArgument, desc naming the
 * argument).
 */
int control_proto_check_args(const struct control_arg_spec *spec,
			     struct json_object *args, struct control_error *err);

/* ---- formatting: each returns a malloc'd line ending in '\n', or NULL ---- */

/*
 * {"return": @ret, "id": @id}; @ret NULL means {}.  The "id" member is
 * written only when @has_id (then @id NULL is JSON null).  Borrowed refs.
 */
char *control_proto_format_return(struct json_object *ret, struct json_object *id,
				  bool has_id, size_t *len_bytes);
/* {"error": {"class": @cls, "desc": @desc}, "id": @id}, id as above. */
char *control_proto_format_error(const char *cls, const char *desc,
				 struct json_object *id, bool has_id,
				 size_t *len_bytes);
/* {"event": @event, "timestamp": {...}, "data": @data or {}} */
char *control_proto_format_event(const char *event, struct json_object *data,
				 uint64_t realtime_ns, size_t *len_bytes);
/* The greeting sent on connect (no capabilities offered). */
char *control_proto_format_greeting(size_t *len_bytes);
/*
 * QMP's version object, {"qemu": {"major": 0, "minor": 0, "micro": 0},
 * "package": "vmferry X.Y.Z"}: the triple is QEMU's and we are not QEMU,
 * so it is zero; vmferry's own version is in "package".  Caller owns the
 * result; NULL on allocation failure.
 */
struct json_object *control_proto_version_object(void);

/* ---- dispatch ---- */

/* One connection's protocol state. */
struct control_session {
	bool negotiated; /* qmp_capabilities succeeded: commands are accepted */
};

struct control_dispatch {
	char *reply;           /* malloc'd line; NULL when there is nothing to send */
	size_t reply_len_bytes;
	/* Non-NULL: call after->after_reply(after->opaque) once reply is sent. */
	const struct control_command *after;
};

/*
 * Handle one request line of @session against a table of @ncmds commands:
 * parse, handle qmp_capabilities or refuse anything else while negotiating,
 * look up, validate arguments, call the handler, format the reply.  A blank
 * line produces no reply.  Returns 0 (res->reply set, or NULL for a blank
 * line) or -ENOMEM when not even an error reply could be built.
 */
int control_proto_dispatch(const struct control_command *cmds, size_t ncmds,
			   struct control_session *session,
			   const char *line, size_t len_bytes,
			   struct control_dispatch *res);

#endif
