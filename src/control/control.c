/*
 * The control socket server: one thread polling a listening UNIX socket,
 * up to CONTROL_MAX_CLIENTS non-blocking clients and an eventfd.
 *
 * The eventfd both wakes the thread for queued events and tells it to stop:
 *
 *   vCPU thread            control thread                 main thread
 *   emit_event(STOP)
 *     format line
 *     lock; enqueue; unlock
 *     write(eventfd) ----> poll wakes; read(eventfd)
 *                          lock; take queue; unlock
 *                          append line to every client
 *                                                          destroy():
 *                          poll wakes  <------------------   stopping = 1
 *                          drain events, flush (bounded)     write(eventfd)
 *                          close clients; exit ----------->  join
 *
 * Only the control thread touches clients[]; the mutex covers the event
 * queue and the command count.
 */
#include "control/control.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <json-c/json.h>

#include "util/log.h"

/* Stop reading from a client while this much of its output is unsent. */
#define CONTROL_CLIENT_READ_PAUSE_BYTES (256u * 1024u)
/* A client being closed gets this long to take its last reply. */
#define CONTROL_CLOSE_GRACE_NS (2000ull * 1000 * 1000)
/* destroy() lets pending output drain for at most this long. */
#define CONTROL_FINAL_FLUSH_NS (500ull * 1000 * 1000)
#define CONTROL_READ_CHUNK_BYTES 16384

struct control_event {
	struct control_event *next;
	size_t len_bytes;
	char line[];
};

struct control_conn {
	int fd;                      /* -1: slot free */
	unsigned serial;             /* for log messages */
	struct control_linebuf in;
	struct control_session session; /* negotiating until qmp_capabilities */
	char *out;                   /* unsent bytes are out[out_off, out_len) */
	size_t out_len, out_off, out_cap;
	bool closing;                /* flush output, discard input, then close */
	bool eof;                    /* the peer sent EOF: no more reading */
	uint64_t close_deadline_ns;
};

struct control_server {
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int listen_fd;               /* owned */
	int event_fd;                /* owned */
	dev_t sock_dev;              /* identity of the socket file we bound, */
	ino_t sock_ino;              /* so destroy unlinks only our own      */
	pthread_t thread;
	bool thread_started;         /* main thread only */
	atomic_bool stopping;

	pthread_mutex_t lock;
	/* Entries below ncommands are immutable once published (under lock). */
	struct control_command commands[CONTROL_MAX_COMMANDS];
	size_t ncommands;            /* lock */
	struct control_event *ev_head, *ev_tail; /* lock */
	size_t ev_count;             /* lock */
	uint64_t ev_dropped;         /* lock */

	/* Control thread only (after start). */
	struct control_conn clients[CONTROL_MAX_CLIENTS];
	unsigned next_serial;
	uint64_t refusal_logged_ns;  /* rate limit for "too many clients" */
	char *greeting;
	size_t greeting_len;
};

const char *control_server_path(const struct control_server *srv)
{
	return srv->path;
}

/* ---- the server's own commands ---- */

/* Append {"name": @name} to @list.  0 or -ENOMEM. */
static int control_list_add_name(struct json_object *list, const char *name)
{
	struct json_object *o = json_object_new_object();
	struct json_object *s = json_object_new_string(name);

	if (!o || !s || json_object_object_add(o, "name", s) < 0) {
		json_object_put(s);
		json_object_put(o);
		return -ENOMEM;
	}
	if (json_object_array_add(list, o) < 0) {
		json_object_put(o);
		return -ENOMEM;
	}
	return 0;
}

static int control_cmd_query_commands(void *opaque, struct json_object *args,
				      struct json_object **ret, char *errbuf, size_t errlen)
{
	struct control_server *srv = opaque;
	struct json_object *list = json_object_new_array();
	size_t n;
	int rc;

	(void)args;
	pthread_mutex_lock(&srv->lock);
	n = srv->ncommands;
	pthread_mutex_unlock(&srv->lock);
	/* qmp_capabilities is the protocol's, handled before the table. */
	rc = list ? control_list_add_name(list, CONTROL_CMD_QMP_CAPABILITIES) : -ENOMEM;
	for (size_t i = 0; rc == 0 && i < n; i++)
		rc = control_list_add_name(list, srv->commands[i].name);
	if (rc < 0) {
		json_object_put(list);
		snprintf(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
	*ret = list;
	return 0;
}

static int control_cmd_query_version(void *opaque, struct json_object *args,
				     struct json_object **ret, char *errbuf, size_t errlen)
{
	(void)opaque;
	(void)args;
	*ret = control_proto_version_object();
	if (!*ret) {
		snprintf(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

static int control_register_builtins(struct control_server *srv)
{
	const struct control_command qc = {
		"query-commands", control_cmd_query_commands, srv, NULL, NULL,
	};
	const struct control_command qv = {
		"query-version", control_cmd_query_version, srv, NULL, NULL,
	};
	int rc = control_server_register(srv, &qc);

	return rc ? rc : control_server_register(srv, &qv);
}

int control_server_register(struct control_server *srv, const struct control_command *cmd)
{
	int rc = 0;

	if (!control_command_name_ok(cmd->name) || !cmd->fn) {
		log_error("control: refusing to register bad command '%s'",
			  cmd->name ? cmd->name : "(null)");
		return -EINVAL;
	}
	for (const struct control_arg_spec *a = cmd->args; a && a->name; a++)
		if (a->type < CONTROL_ARG_STRING || a->type > CONTROL_ARG_ANY) {
			log_error("control: command '%s' argument '%s' has a bad type",
				  cmd->name, a->name);
			return -EINVAL;
		}
	pthread_mutex_lock(&srv->lock);
	/* qmp_capabilities is answered by the protocol before the table. */
	if (strcmp(cmd->name, CONTROL_CMD_QMP_CAPABILITIES) == 0)
		rc = -EEXIST;
	for (size_t i = 0; i < srv->ncommands; i++)
		if (strcmp(srv->commands[i].name, cmd->name) == 0)
			rc = -EEXIST;
	if (rc == 0 && srv->ncommands == CONTROL_MAX_COMMANDS)
		rc = -ENOSPC;
	if (rc == 0)
		srv->commands[srv->ncommands++] = *cmd;
	pthread_mutex_unlock(&srv->lock);
	if (rc < 0)
		log_error("control: cannot register command '%s': %s", cmd->name,
			  rc == -EEXIST ? "name already taken" : "command table full");
	return rc;
}

/* ---- clients (control thread only) ---- */

static void control_conn_close(struct control_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	control_linebuf_free(&c->in);
	free(c->out);
	c->out = NULL;
	c->out_len = c->out_off = c->out_cap = 0;
	c->closing = false;
	c->eof = false;
}

static size_t control_conn_backlog(const struct control_conn *c)
{
	return c->out_len - c->out_off;
}

/* Queue bytes for @c; a client that lets output pile up is dropped.  0 or -errno. */
static int control_conn_queue(struct control_conn *c, const char *data, size_t n)
{
	if (c->fd < 0)
		return -EBADF;
	if (control_conn_backlog(c) + n > CONTROL_CLIENT_OUTPUT_MAX_BYTES) {
		log_warn("control client %u: more than %u bytes of unread output, disconnecting",
			 c->serial, CONTROL_CLIENT_OUTPUT_MAX_BYTES);
		control_conn_close(c);
		return -ENOBUFS;
	}
	if (c->out_off > 0 && c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	if (c->out_len + n > c->out_cap) {
		size_t keep = control_conn_backlog(c), cap;
		char *p;

		if (c->out_off > 0) {
			memmove(c->out, c->out + c->out_off, keep);
			c->out_off = 0;
			c->out_len = keep;
		}
		cap = c->out_cap ? c->out_cap : 4096;
		while (cap < c->out_len + n)
			cap *= 2;
		if (cap != c->out_cap) {
			p = realloc(c->out, cap);
			if (!p) {
				log_warn("control client %u: out of memory, disconnecting", c->serial);
				control_conn_close(c);
				return -ENOMEM;
			}
			c->out = p;
			c->out_cap = cap;
		}
	}
	memcpy(c->out + c->out_len, data, n);
	c->out_len += n;
	return 0;
}

/* Write what the socket takes now.  0, or -errno after closing @c. */
static int control_conn_flush(struct control_conn *c)
{
	while (c->fd >= 0 && control_conn_backlog(c) > 0) {
		ssize_t n = send(c->fd, c->out + c->out_off, control_conn_backlog(c),
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			log_debug("control client %u: send: %s", c->serial, strerror(errno));
			control_conn_close(c);
			return -EPIPE;
		}
		c->out_off += (size_t)n;
	}
	return c->fd >= 0 ? 0 : -EPIPE;
}

static void control_conn_start_close(struct control_conn *c)
{
	if (!c->closing) {
		c->closing = true;
		c->close_deadline_ns = clock_monotonic_ns() + CONTROL_CLOSE_GRACE_NS;
	}
}

static void control_conn_error(struct control_conn *c, const char *desc)
{
	size_t n;
	char *line = control_proto_format_error(CONTROL_ERR_GENERIC, desc, NULL, false, &n);

	if (line)
		control_conn_queue(c, line, n);
	free(line);
}

static void control_handle_line(struct control_server *srv, struct control_conn *c,
				const char *line, size_t len)
{
	struct control_dispatch res;
	size_t ncmds;

	pthread_mutex_lock(&srv->lock);
	ncmds = srv->ncommands;
	pthread_mutex_unlock(&srv->lock);

	if (control_proto_dispatch(srv->commands, ncmds, &c->session, line, len, &res) < 0) {
		log_warn("control client %u: out of memory, disconnecting", c->serial);
		control_conn_close(c);
		return;
	}
	if (res.reply && control_conn_queue(c, res.reply, res.reply_len_bytes) == 0 && res.after)
		control_conn_flush(c); /* e.g. quit: the reply goes out first */
	free(res.reply);
	if (res.after)
		res.after->after_reply(res.after->opaque);
}

static void control_conn_read(struct control_server *srv, struct control_conn *c)
{
	char chunk[CONTROL_READ_CHUNK_BYTES];
	ssize_t n;
	char *line;
	size_t len;
	int rc;

	n = recv(c->fd, chunk, sizeof(chunk), MSG_DONTWAIT);
	if (n < 0) {
		if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
			return;
		log_debug("control client %u: recv: %s", c->serial, strerror(errno));
		control_conn_close(c);
		return;
	}
	if (n == 0) {
		size_t pending = control_linebuf_pending(&c->in);

		/* A half-closed peer (echo ... | socat) still wants its replies. */
		if (pending && !c->closing)
			log_debug("control client %u: left mid-line, %zu bytes dropped",
				  c->serial, pending);
		c->eof = true;
		if (control_conn_backlog(c) == 0)
			control_conn_close(c);
		else
			control_conn_start_close(c);
		return;
	}
	if (c->closing)
		return; /* discard: keeps the peer's send from stalling meanwhile */
	if (control_linebuf_append(&c->in, chunk, (size_t)n) < 0) {
		log_warn("control client %u: out of memory, disconnecting", c->serial);
		control_conn_close(c);
		return;
	}
	while (c->fd >= 0 && !c->closing &&
	       (rc = control_linebuf_next(&c->in, &line, &len)) != 0) {
		if (rc == -EMSGSIZE) {
			char desc[128];

			snprintf(desc, sizeof(desc),
				 "request line longer than %u bytes; closing the connection",
				 CONTROL_LINE_MAX_BYTES);
			log_warn("control client %u: request line too long, disconnecting", c->serial);
			control_conn_error(c, desc);
			control_conn_start_close(c);
			break;
		}
		control_handle_line(srv, c, line, len);
	}
}

static void control_accept(struct control_server *srv)
{
	for (;;) {
		struct control_conn *c = NULL;
		int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				log_warn("control: accept: %s", strerror(errno));
			return;
		}
		for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++)
			if (srv->clients[i].fd < 0) {
				c = &srv->clients[i];
				break;
			}
		if (!c) {
			char desc[64];
			size_t n;
			char *line;

			snprintf(desc, sizeof(desc), "too many clients (at most %d)",
				 CONTROL_MAX_CLIENTS);
			line = control_proto_format_error(CONTROL_ERR_GENERIC, desc, NULL, false, &n);
			/* Best effort: a fresh socket buffer takes one short line. */
			if (line && send(fd, line, n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
				log_debug("control: could not tell a client there are too many");
			free(line);
			close(fd);
			/* Clients retry; once a second is enough to tell the story. */
			if (clock_monotonic_ns() - srv->refusal_logged_ns > 1000000000ull) {
				srv->refusal_logged_ns = clock_monotonic_ns();
				log_warn("control: refused a connection: %s", desc);
			}
			continue;
		}
		memset(c, 0, sizeof(*c));
		c->fd = fd;
		c->serial = ++srv->next_serial;
		control_linebuf_init(&c->in, CONTROL_LINE_MAX_BYTES);
		log_debug("control client %u connected", c->serial);
		if (control_conn_queue(c, srv->greeting, srv->greeting_len) == 0)
			control_conn_flush(c);
	}
}

/* Move queued events into every client's output. */
static void control_broadcast_events(struct control_server *srv)
{
	struct control_event *ev, *next;
	uint64_t dropped;

	pthread_mutex_lock(&srv->lock);
	ev = srv->ev_head;
	srv->ev_head = srv->ev_tail = NULL;
	srv->ev_count = 0;
	dropped = srv->ev_dropped;
	srv->ev_dropped = 0;
	pthread_mutex_unlock(&srv->lock);

	if (dropped)
		log_warn("control: dropped %llu events (queue full)", (unsigned long long)dropped);
	for (; ev; ev = next) {
		next = ev->next;
		for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++) {
			struct control_conn *c = &srv->clients[i];

			/* As QMP: no events while a client is still negotiating. */
			if (c->fd >= 0 && !c->closing && c->session.negotiated)
				control_conn_queue(c, ev->line, ev->len_bytes);
		}
		free(ev);
	}
	for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++)
		if (srv->clients[i].fd >= 0)
			control_conn_flush(&srv->clients[i]);
}

/* Give pending output a bounded moment, then close every client. */
static void control_final_flush(struct control_server *srv)
{
	uint64_t deadline = clock_monotonic_ns() + CONTROL_FINAL_FLUSH_NS;

	for (;;) {
		struct pollfd pfd[CONTROL_MAX_CLIENTS];
		nfds_t n = 0;
		uint64_t now = clock_monotonic_ns();

		for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++) {
			struct control_conn *c = &srv->clients[i];

			if (c->fd >= 0 && control_conn_flush(c) == 0 && control_conn_backlog(c) > 0) {
				pfd[n++] = (struct pollfd){ .fd = c->fd, .events = POLLOUT };
			}
		}
		if (n == 0 || now >= deadline)
			break;
		if (poll(pfd, n, (int)((deadline - now) / 1000000 + 1)) < 0 && errno != EINTR)
			break;
	}
	for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++)
		control_conn_close(&srv->clients[i]);
}

static void *control_thread(void *arg)
{
	struct control_server *srv = arg;

	for (;;) {
		struct pollfd pfd[2 + CONTROL_MAX_CLIENTS];
		struct control_conn *conn[2 + CONTROL_MAX_CLIENTS];
		nfds_t n = 0;
		int timeout_ms = -1;
		uint64_t now = clock_monotonic_ns();

		pfd[n] = (struct pollfd){ .fd = srv->event_fd, .events = POLLIN };
		conn[n++] = NULL;
		pfd[n] = (struct pollfd){ .fd = srv->listen_fd, .events = POLLIN };
		conn[n++] = NULL;
		for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++) {
			struct control_conn *c = &srv->clients[i];
			short events = 0;

			if (c->fd < 0)
				continue;
			if (c->closing) {
				if (control_conn_backlog(c) == 0 || now >= c->close_deadline_ns) {
					control_conn_close(c);
					continue;
				}
				uint64_t left_ms = (c->close_deadline_ns - now) / 1000000 + 1;

				if (timeout_ms < 0 || left_ms < (uint64_t)timeout_ms)
					timeout_ms = (int)left_ms;
			}
			if (!c->eof && control_conn_backlog(c) < CONTROL_CLIENT_READ_PAUSE_BYTES)
				events |= POLLIN;
			if (control_conn_backlog(c) > 0)
				events |= POLLOUT;
			pfd[n] = (struct pollfd){ .fd = c->fd, .events = events };
			conn[n++] = c;
		}

		if (poll(pfd, n, timeout_ms) < 0) {
			if (errno == EINTR)
				continue;
			log_error("control: poll: %s", strerror(errno));
			break;
		}
		if (pfd[0].revents & POLLIN) {
			uint64_t v;

			if (read(srv->event_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				log_warn("control: eventfd read: %s", strerror(errno));
			control_broadcast_events(srv);
			if (atomic_load(&srv->stopping))
				break;
		}
		for (nfds_t i = 2; i < n; i++) {
			struct control_conn *c = conn[i];

			if (c->fd != pfd[i].fd)
				continue; /* closed meanwhile */
			if (!c->eof && (pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
				control_conn_read(srv, c);
			/* On HUP/ERR the flush fails and closes: no spinning on it. */
			if (c->fd >= 0 && (pfd[i].revents & (POLLOUT | POLLHUP | POLLERR)))
				control_conn_flush(c);
		}
		if (pfd[1].revents & POLLIN)
			control_accept(srv);
	}
	control_final_flush(srv);
	return NULL;
}

/* ---- events ---- */

void control_server_emit_event(void *opaque, const char *event, struct json_object *data)
{
	struct control_server *srv = opaque;
	struct control_event *ev;
	uint64_t one = 1;
	size_t n;
	char *line;

	if (!srv || !event)
		return;
	line = control_proto_format_event(event, data, clock_realtime_ns(), &n);
	ev = line ? malloc(sizeof(*ev) + n) : NULL;
	if (!ev) {
		free(line);
		pthread_mutex_lock(&srv->lock);
		srv->ev_dropped++;
		pthread_mutex_unlock(&srv->lock);
		return;
	}
	ev->next = NULL;
	ev->len_bytes = n;
	memcpy(ev->line, line, n);
	free(line);

	pthread_mutex_lock(&srv->lock);
	if (srv->ev_count >= CONTROL_EVENT_QUEUE_MAX) {
		srv->ev_dropped++;
		free(ev);
		ev = NULL;
	} else {
		if (srv->ev_tail)
			srv->ev_tail->next = ev;
		else
			srv->ev_head = ev;
		srv->ev_tail = ev;
		srv->ev_count++;
	}
	pthread_mutex_unlock(&srv->lock);
	/* Never blocks: the counter would have to approach 2^64 first. */
	if (write(srv->event_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("control: eventfd write: %s", strerror(errno));
}

/* ---- lifecycle ---- */

static int control_fill_addr(const char *path, struct sockaddr_un *addr)
{
	memset(addr, 0, sizeof(*addr));
	addr->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(addr->sun_path))
		return -ENAMETOOLONG;
	memcpy(addr->sun_path, path, strlen(path) + 1);
	return 0;
}

/*
 * Decide whether @path may be bound: absent is fine; a socket nobody
 * listens on is stale and removed; a live socket or a non-socket is not.
 */
static int control_claim_path(const char *path, const struct sockaddr_un *addr)
{
	struct stat st;
	int fd, rc, err;

	if (lstat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		rc = -errno;
		log_error("cannot check control socket path %s: %s", path, strerror(-rc));
		return rc;
	}
	if (!S_ISSOCK(st.st_mode)) {
		log_error("control socket path %s exists and is not a socket; not replacing it",
			  path);
		return -EEXIST;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		rc = -errno;
		log_error("control: socket: %s", strerror(-rc));
		return rc;
	}
	rc = connect(fd, (const struct sockaddr *)addr, sizeof(*addr));
	err = errno;
	close(fd);
	/* EAGAIN: a listener whose backlog is full is still a listener. */
	if (rc == 0 || err == EAGAIN) {
		log_error("control socket %s is in use by another process", path);
		return -EADDRINUSE;
	}
	if (err != ECONNREFUSED) {
		log_error("cannot probe control socket %s: %s", path, strerror(err));
		return -err;
	}
	if (unlink(path) < 0 && errno != ENOENT) {
		rc = -errno;
		log_error("cannot remove stale control socket %s: %s", path, strerror(-rc));
		return rc;
	}
	log_info("removed stale control socket %s", path);
	return 0;
}

int control_server_create(const char *path, struct control_server **out)
{
	struct control_server *srv;
	struct sockaddr_un addr;
	struct stat st;
	int rc;

	*out = NULL;
	if (!path || !*path) {
		log_error("control socket path is empty");
		return -EINVAL;
	}
	if (control_fill_addr(path, &addr) < 0) {
		log_error("control socket path %s is too long (at most %zu bytes)", path,
			  sizeof(addr.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	srv = calloc(1, sizeof(*srv));
	if (!srv)
		return -ENOMEM;
	srv->listen_fd = -1;
	srv->event_fd = -1;
	memcpy(srv->path, addr.sun_path, sizeof(srv->path));
	atomic_init(&srv->stopping, false);
	for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++)
		srv->clients[i].fd = -1;
	rc = pthread_mutex_init(&srv->lock, NULL);
	if (rc) {
		free(srv);
		return -rc;
	}

	srv->greeting = control_proto_format_greeting(&srv->greeting_len);
	if (!srv->greeting) {
		rc = -ENOMEM;
		goto err_free;
	}
	srv->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (srv->event_fd < 0) {
		rc = -errno;
		log_error("control: eventfd: %s", strerror(-rc));
		goto err_free;
	}
	rc = control_claim_path(path, &addr);
	if (rc < 0)
		goto err_free;
	srv->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (srv->listen_fd < 0) {
		rc = -errno;
		log_error("control: socket: %s", strerror(-rc));
		goto err_free;
	}
	if (bind(srv->listen_fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		rc = -errno;
		if (rc == -EADDRINUSE) /* someone took it since control_claim_path */
			log_error("control socket %s is in use by another process", path);
		else
			log_error("cannot bind control socket %s: %s", path, strerror(-rc));
		goto err_free;
	}
	/*
	 * Whoever can connect can write files as us (dump-guest-memory), so
	 * owner only.  Before listen(), so nobody connects in between.
	 */
	if (chmod(path, 0600) < 0 || stat(path, &st) < 0) {
		rc = -errno;
		log_error("cannot set up control socket %s: %s", path, strerror(-rc));
		goto err_unlink;
	}
	srv->sock_dev = st.st_dev;
	srv->sock_ino = st.st_ino;
	if (listen(srv->listen_fd, CONTROL_MAX_CLIENTS) < 0) {
		rc = -errno;
		log_error("cannot listen on control socket %s: %s", path, strerror(-rc));
		goto err_unlink;
	}
	rc = control_register_builtins(srv);
	if (rc < 0)
		goto err_unlink;
	*out = srv;
	return 0;

err_unlink:
	unlink(path);
err_free:
	if (srv->listen_fd >= 0)
		close(srv->listen_fd);
	if (srv->event_fd >= 0)
		close(srv->event_fd);
	free(srv->greeting);
	pthread_mutex_destroy(&srv->lock);
	free(srv);
	return rc;
}

int control_server_start(struct control_server *srv)
{
	sigset_t all, old;
	int rc;

	if (srv->thread_started)
		return -EALREADY;
	/* The thread inherits a full mask: process signals belong to main. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&srv->thread, NULL, control_thread, srv);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc) {
		log_error("control: cannot start thread: %s", strerror(rc));
		return -rc;
	}
	pthread_setname_np(srv->thread, "control");
	srv->thread_started = true;
	return 0;
}

void control_server_destroy(struct control_server *srv)
{
	struct control_event *ev, *next;
	struct stat st;
	uint64_t one = 1;

	if (!srv)
		return;
	if (srv->thread_started) {
		atomic_store(&srv->stopping, true);
		if (write(srv->event_fd, &one, sizeof(one)) < 0)
			log_warn("control: eventfd write: %s", strerror(errno));
		pthread_join(srv->thread, NULL);
	} else {
		for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++)
			control_conn_close(&srv->clients[i]);
	}
	close(srv->listen_fd);
	close(srv->event_fd);
	/* Only our own socket: a successor may already have replaced the file. */
	if (stat(srv->path, &st) == 0 && st.st_dev == srv->sock_dev &&
	    st.st_ino == srv->sock_ino)
		unlink(srv->path);
	for (ev = srv->ev_head; ev; ev = next) {
		next = ev->next;
		free(ev);
	}
	free(srv->greeting);
	pthread_mutex_destroy(&srv->lock);
	free(srv);
}
