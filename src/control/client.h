/*
 * Control socket client: a small library for tests and CLI commands, and
 * the `vmferry ctl` subcommand built on it.
 *
 * Every read is bounded in time (poll with a deadline), so a dead or silent
 * server yields -ETIMEDOUT, never a hang.  A client is used by one thread at
 * a time.
 */
#ifndef VMFERRY_CONTROL_CLIENT_H
#define VMFERRY_CONTROL_CLIENT_H

#include <stddef.h>

struct control_client;
struct json_object;

/* Events kept while waiting for replies; older ones are dropped first. */
#define CONTROL_CLIENT_EVENT_QUEUE_MAX 64
/* Longest line accepted from the server. */
#define CONTROL_CLIENT_LINE_MAX_BYTES (4u * 1024u * 1024u)
/* Default bound on each call; see control_client_set_timeout(). */
#define CONTROL_CLIENT_DEFAULT_TIMEOUT_MS 30000

/*
 * Connect to @path, read the QMP greeting and negotiate capabilities
 * (qmp_capabilities, enabling none), all within @timeout_ms.  While @path
 * is absent or refuses connections (a VMM still starting, or all client
 * slots taken) it retries every 20 ms until the time is up, then returns
 * that error: -ENOENT or -ECONNREFUSED.  Otherwise 0, -ETIMEDOUT, -EPROTO
 * when the greeting is not QMP's or negotiation is refused, other -errno.
 * Caller owns *out.
 */
int control_client_connect(const char *path, int timeout_ms, struct control_client **out);

/*
 * One attempt: no retrying while @path is absent or refuses (a user's
 * command, which should say so at once).  Otherwise as above.
 */
int control_client_connect_now(const char *path, int timeout_ms, struct control_client **out);

/*
 * Words for an error @rc (-errno) of the calls above, with a hint where
 * the cause is usually the same (-ENOENT: no VMM there; -EACCES: owner
 * only).  Returns @buf.
 */
const char *control_client_strerror(int rc, char *buf, size_t len);

/*
 * One attempt, stopping after the greeting: the session is still in
 * capabilities negotiation (for tests of it).  Errors as above.
 */
int control_client_connect_raw(const char *path, int timeout_ms, struct control_client **out);

/* The greeting the server sent (borrowed from @c). */
struct json_object *control_client_greeting(const struct control_client *c);

/* Bound on each later call / read (milliseconds, > 0). */
void control_client_set_timeout(struct control_client *c, int timeout_ms);

/*
 * Execute @command with @args (an object or NULL; borrowed) and wait for the
 * reply with the matching id; events read meanwhile are queued.  Stores the
 * whole reply object in *reply (caller owns; may be NULL to discard).
 * Returns 0 for a "return" reply, -EREMOTEIO for an "error" reply (*reply
 * holds it), -ETIMEDOUT, -ECONNRESET when the server closed, -EPROTO for a
 * reply that is not a JSON object, other -errno.
 */
int control_client_call(struct control_client *c, const char *command,
			struct json_object *args, struct json_object **reply);

/*
 * Wait up to @timeout_ms for event @event (NULL: any), looking at the queue
 * first.  Replies read meanwhile are dropped.  0 with *out (caller owns; may
 * be NULL), -ETIMEDOUT, -ECONNRESET, -EPROTO.
 */
int control_client_wait_event(struct control_client *c, const char *event,
			      int timeout_ms, struct json_object **out);

/* Raw access, for tests that speak bad protocol on purpose. */
int control_client_send_raw(struct control_client *c, const void *buf, size_t len);
/*
 * Next non-event message within @timeout_ms (events are queued).  0 for a
 * "return" message, -EREMOTEIO for an "error" one (both stored in *out,
 * caller owns), -ETIMEDOUT, -ECONNRESET (EOF), -EPROTO (not a JSON object).
 */
int control_client_read_reply(struct control_client *c, int timeout_ms,
			      struct json_object **out);
/* The socket (owned by the client). */
int control_client_fd(const struct control_client *c);

/* Close and free; NULL is fine. */
void control_client_close(struct control_client *c);

/*
 * Helpers on a reply object: the "return" member, and the error's "desc" /
 * "class" (NULL when absent).  Borrowed from @reply.
 */
struct json_object *control_reply_return(struct json_object *reply);
const char *control_reply_error_desc(struct json_object *reply);
const char *control_reply_error_class(struct json_object *reply);

/*
 * `vmferry ctl`: argv[0] is "ctl".
 *   vmferry ctl [--timeout SECONDS] [--wait] PATH COMMAND [JSON-ARGS]
 *   vmferry ctl [--timeout SECONDS] [--wait] PATH -
 * Exit status 0 (success), 1 (command failed or no connection), 2 (usage).
 */
int control_client_main(int argc, char **argv);

#endif
