/*
 * A TCP relay on 127.0.0.1, a stand-in for the network path between two
 * VMMs that tests can break: cut every connection (the link fails and comes
 * back: the relay keeps listening), or throttle what it reads from the
 * connecting side (a destination whose socket read stalls).  One thread;
 * see harness.h.
 */
#include "harness/internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/log.h"

#define RELAY_MAX_PAIRS 16
#define RELAY_BUF_BYTES 65536
#define RELAY_TICK_MS 10           /* how often a throttled relay refills its budget */

enum relay_cmd { RELAY_CMD_NONE, RELAY_CMD_CUT, RELAY_CMD_STOP };

struct harness_relay {
	int listen_fd;
	int ctl_fd;                        /* eventfd: a command is in @cmd */
	int up_port;
	int port;
	pthread_t thread;
	_Atomic int cmd;                   /* enum relay_cmd, consumed by the thread */
	_Atomic uint64_t forward_bps;      /* UINT64_MAX: unlimited; 0: stop reading */
	_Atomic unsigned accepted, cuts;
	/* Owned by the thread: [2i] accepted (the source), [2i+1] upstream. */
	int fds[2 * RELAY_MAX_PAIRS];
	int nfds;
	uint64_t budget;                   /* bytes the source side may still send this tick */
	uint64_t tick_ns;
};

static void relay_close_pair(struct harness_relay *r, int i)
{
	int k = i & ~1;

	shutdown(r->fds[k], SHUT_RDWR);
	shutdown(r->fds[k + 1], SHUT_RDWR);
	close(r->fds[k]);
	close(r->fds[k + 1]);
	r->fds[k] = r->fds[r->nfds - 2];
	r->fds[k + 1] = r->fds[r->nfds - 1];
	r->nfds -= 2;
}

static void relay_accept(struct harness_relay *r)
{
	struct sockaddr_in up = { .sin_family = AF_INET, .sin_port = htons((uint16_t)r->up_port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int c = accept4(r->listen_fd, NULL, NULL, SOCK_CLOEXEC), u;

	if (c < 0)
		return;
	u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (u < 0 || r->nfds + 2 > 2 * RELAY_MAX_PAIRS ||
	    connect(u, (struct sockaddr *)&up, sizeof(up)) < 0) {
		/* Nobody listens upstream: the connecting side sees it closed. */
		close(c);
		if (u >= 0)
			close(u);
		return;
	}
	r->fds[r->nfds++] = c;
	r->fds[r->nfds++] = u;
	atomic_fetch_add(&r->accepted, 1);
}

/* Refill the forward budget every tick from forward_bps. */
static void relay_refill(struct harness_relay *r)
{
	uint64_t bps = atomic_load(&r->forward_bps), now = clock_monotonic_ns();

	if (bps == UINT64_MAX) {
		r->budget = UINT64_MAX;
		return;
	}
	if (now - r->tick_ns >= RELAY_TICK_MS * 1000000ull) {
		r->tick_ns = now;
		r->budget = bps / (1000 / RELAY_TICK_MS);
	}
}

/* Move what fd @i has to its partner; false when the pair must close. */
static bool relay_forward(struct harness_relay *r, int i, char *buf)
{
	size_t want = RELAY_BUF_BYTES;
	ssize_t got;

	if (!(i & 1)) {                    /* from the source: throttled */
		if (r->budget == 0)
			return false;      /* hung up while stalled */
		if (r->budget < want)
			want = (size_t)r->budget;
	}
	got = read(r->fds[i], buf, want);
	if (got <= 0)
		return false;
	if (!(i & 1) && r->budget != UINT64_MAX)
		r->budget -= (uint64_t)got;
	for (ssize_t off = 0; off < got;) {
		ssize_t w = write(r->fds[i ^ 1], buf + off, (size_t)(got - off));

		if (w <= 0)
			return false;
		off += w;
	}
	return true;
}

/* Handle a command; false to stop. */
static bool relay_command(struct harness_relay *r)
{
	uint64_t v;

	if (read(r->ctl_fd, &v, sizeof(v)) != sizeof(v))
		return true;
	switch (atomic_exchange(&r->cmd, RELAY_CMD_NONE)) {
	case RELAY_CMD_STOP:
		return false;
	case RELAY_CMD_CUT:
		while (r->nfds)
			relay_close_pair(r, 0);
		atomic_fetch_add(&r->cuts, 1);
		return true;
	default:
		return true;
	}
}

static void *relay_thread(void *arg)
{
	struct harness_relay *r = arg;
	char *buf = malloc(RELAY_BUF_BYTES);

	while (buf) {
		struct pollfd p[2 + 2 * RELAY_MAX_PAIRS];
		int n = r->nfds, timeout_ms;

		relay_refill(r);
		timeout_ms = r->budget == UINT64_MAX ? -1 : RELAY_TICK_MS;
		p[0] = (struct pollfd){ .fd = r->listen_fd, .events = POLLIN };
		p[1] = (struct pollfd){ .fd = r->ctl_fd, .events = POLLIN };
		for (int i = 0; i < n; i++) {
			bool reading = (i & 1) || r->budget > 0;

			p[2 + i] = (struct pollfd){ .fd = r->fds[i], .events = reading ? POLLIN : 0 };
		}
		if (poll(p, (nfds_t)(2 + n), timeout_ms) < 0)
			continue;
		if (p[1].revents) {
			if (!relay_command(r))
				break;
			continue;
		}
		if (p[0].revents)
			relay_accept(r);
		for (int i = n - 1; i >= 0; i--) {
			if (i >= r->nfds || !p[2 + i].revents)
				continue;
			/* A stalled source side is not read, but a hang-up still ends it. */
			if (!(i & 1) && r->budget == 0 && !(p[2 + i].revents & (POLLHUP | POLLERR)))
				continue;
			if (!relay_forward(r, i, buf))
				relay_close_pair(r, i);
		}
	}
	while (r->nfds)
		relay_close_pair(r, 0);
	free(buf);
	return NULL;
}

int harness_relay_start(int up_port, struct harness_relay **out)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	struct harness_relay *r = calloc(1, sizeof(*r));
	int rc;

	*out = NULL;
	if (!r)
		return -ENOMEM;
	r->up_port = up_port;
	r->forward_bps = UINT64_MAX;
	r->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	r->ctl_fd = eventfd(0, EFD_CLOEXEC);
	if (r->listen_fd < 0 || r->ctl_fd < 0 || bind(r->listen_fd, (struct sockaddr *)&a, len) ||
	    listen(r->listen_fd, 16) || getsockname(r->listen_fd, (struct sockaddr *)&a, &len)) {
		rc = -errno;
		goto fail;
	}
	r->port = ntohs(a.sin_port);
	rc = -pthread_create(&r->thread, NULL, relay_thread, r);
	if (rc)
		goto fail;
	*out = r;
	return 0;
fail:
	if (r->listen_fd >= 0)
		close(r->listen_fd);
	if (r->ctl_fd >= 0)
		close(r->ctl_fd);
	free(r);
	return rc;
}

int harness_relay_port(const struct harness_relay *r)
{
	return r->port;
}

static void relay_send(struct harness_relay *r, enum relay_cmd cmd)
{
	uint64_t one = 1;

	atomic_store(&r->cmd, cmd);
	if (write(r->ctl_fd, &one, sizeof(one)) != sizeof(one))
		harness_say("relay: cannot signal its thread: %s", strerror(errno));
}

void harness_relay_cut(struct harness_relay *r)
{
	relay_send(r, RELAY_CMD_CUT);
}

void harness_relay_throttle(struct harness_relay *r, uint64_t bytes_per_s)
{
	atomic_store(&r->forward_bps, bytes_per_s);
	relay_send(r, RELAY_CMD_NONE);     /* wake it to look */
}

unsigned harness_relay_accepted(const struct harness_relay *r)
{
	return atomic_load(&r->accepted);
}

unsigned harness_relay_cuts(const struct harness_relay *r)
{
	return atomic_load(&r->cuts);
}

void harness_relay_stop(struct harness_relay *r)
{
	if (!r)
		return;
	relay_send(r, RELAY_CMD_STOP);
	pthread_join(r->thread, NULL);
	close(r->listen_fd);
	close(r->ctl_fd);
	free(r);
}
