/* A TCP relay whose connections a test can cut at once; see relay.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/relay.h"

static void relay_close_pair(struct relay *r, int i)
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

static void relay_accept(struct relay *r)
{
	struct sockaddr_in up = { .sin_family = AF_INET, .sin_port = htons((uint16_t)r->dst_port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int c = accept4(r->listen_fd, NULL, NULL, SOCK_CLOEXEC), u;

	if (c < 0)
		return;
	u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (u < 0 || r->nfds + 2 > RELAY_MAX_FDS ||
	    connect(u, (struct sockaddr *)&up, sizeof(up)) < 0) {
		/* Nobody listens upstream (yet): the caller sees a refused resume. */
		fprintf(stderr, "relay: upstream port %d: %s\n", r->dst_port, strerror(errno));
		close(c);
		if (u >= 0)
			close(u);
		return;
	}
	r->fds[r->nfds++] = c;
	r->fds[r->nfds++] = u;
	atomic_fetch_add(&r->accepted, 1);
}

static void *relay_thread(void *arg)
{
	struct relay *r = arg;
	char buf[65536];

	for (;;) {
		struct pollfd p[2 + RELAY_MAX_FDS];
		int n = r->nfds;

		p[0] = (struct pollfd){ .fd = r->listen_fd, .events = POLLIN };
		p[1] = (struct pollfd){ .fd = r->ctl_fd, .events = POLLIN };
		for (int i = 0; i < n; i++)
			p[2 + i] = (struct pollfd){ .fd = r->fds[i], .events = POLLIN };
		if (poll(p, (nfds_t)(2 + n), -1) < 0)
			continue;
		if (p[1].revents) {
			uint64_t v = 0;

			if (read(r->ctl_fd, &v, sizeof(v)) == sizeof(v) && v >= RELAY_STOP)
				break;
			while (r->nfds)
				relay_close_pair(r, 0);
			atomic_fetch_add(&r->cuts, 1);
			continue;
		}
		if (p[0].revents)
			relay_accept(r);
		for (int i = n - 1; i >= 0; i--) {
			ssize_t got;

			if (!p[2 + i].revents || i >= r->nfds)
				continue;
			got = read(r->fds[i], buf, sizeof(buf));
			if (got <= 0 || write(r->fds[i ^ 1], buf, (size_t)got) != got)
				relay_close_pair(r, i);
		}
	}
	while (r->nfds)
		relay_close_pair(r, 0);
	return NULL;
}

void relay_start(struct relay *r, int dst_port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);

	memset(r, 0, sizeof(*r));
	r->dst_port = dst_port;
	r->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	r->ctl_fd = eventfd(0, EFD_CLOEXEC);
	assert_true(r->listen_fd >= 0 && r->ctl_fd >= 0);
	assert_int_equal(bind(r->listen_fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(r->listen_fd, 16), 0);
	assert_int_equal(getsockname(r->listen_fd, (struct sockaddr *)&a, &len), 0);
	r->port = ntohs(a.sin_port);
	assert_int_equal(pthread_create(&r->thread, NULL, relay_thread, r), 0);
}

static void relay_signal(struct relay *r, uint64_t v)
{
	assert_int_equal(write(r->ctl_fd, &v, sizeof(v)), (ssize_t)sizeof(v));
}

void relay_cut(struct relay *r)
{
	relay_signal(r, 1);
}

void relay_stop(struct relay *r)
{
	relay_signal(r, RELAY_STOP);
	pthread_join(r->thread, NULL);
	close(r->listen_fd);
	close(r->ctl_fd);
}

