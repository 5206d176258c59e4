/*
 * Migration channels: "tcp:HOST:PORT" and "unix:PATH" URIs, listening,
 * accepting and connecting with timeouts.  Every channel is a byte stream,
 * so the same code runs across hosts, namespaces and on one host.
 */
#ifndef VMFERRY_MIGRATION_CHANNEL_H
#define VMFERRY_MIGRATION_CHANNEL_H

#include <stdbool.h>
#include <sys/socket.h>

#define CHANNEL_HOST_BYTES 256
#define CHANNEL_PATH_BYTES 108

enum channel_kind { CHANNEL_TCP = 1, CHANNEL_UNIX };

struct channel_uri {
	enum channel_kind kind;
	char host[CHANNEL_HOST_BYTES]; /* tcp: host name or address ([v6] ok) */
	char port[8];                  /* tcp: decimal port */
	char path[CHANNEL_PATH_BYTES]; /* unix */
};

/*
 * Parse @text ("tcp:HOST:0" is accepted: listening on port 0 picks a free
 * port).  Returns 0, or -EINVAL with a message in @err (which says
 * what form is expected).
 */
int channel_uri_parse(const char *text, struct channel_uri *out, char *err, size_t errlen);

/* A channel's address: as the user wrote it, and parsed (once). */
#define CHANNEL_URI_BYTES (CHANNEL_HOST_BYTES + CHANNEL_PATH_BYTES)
struct channel {
	char uri[CHANNEL_URI_BYTES];
	struct channel_uri cu;
};

/* channel_uri_parse, keeping @text too.  0 or -EINVAL with @err. */
int channel_parse(const char *text, struct channel *out, char *err, size_t errlen);

/* Listen on @uri (unix: an existing stale socket file is replaced).  fd or -errno. */
int channel_listen(const struct channel_uri *uri);

/*
 * Accept one connection on @listen_fd, waiting at most @timeout_ms (-1
 * forever) and returning -ECANCELED as soon as @cancel_fd (may be -1) is
 * readable.  fd or -errno.
 */
int channel_accept(int listen_fd, int timeout_ms, int cancel_fd);

/* Connect to @uri within @timeout_ms.  fd or -errno (message logged). */
int channel_connect(const struct channel_uri *uri, int timeout_ms);

/* Socket options for bulk transfer (TCP_NODELAY, big buffers). */
void channel_tune(int fd);
/*
 * A latency-critical connection (postcopy's urgent channel): its packets
 * ask for low delay (IP TOS / IPv6 traffic class "low delay", socket
 * priority "interactive"), so a host queue with bands - pfifo_fast, the
 * default qdisc here, or prio - sends them ahead of the bulk stream's
 * queued packets instead of behind them.  No effect on UNIX sockets.
 */
void channel_mark_urgent(int fd);

#endif
