#include "migration/channel.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "util/log.h"

int channel_parse(const char *text, struct channel *out, char *err, size_t errlen)
{
	int r = channel_uri_parse(text, &out->cu, err, errlen);

	if (r)
		return r;
	if (strlen(text) >= sizeof(out->uri)) {
		snprintf(err, errlen, "address of %zu bytes is too long", strlen(text));
		return -EINVAL;
	}
	snprintf(out->uri, sizeof(out->uri), "%s", text);
	return 0;
}

int channel_uri_parse(const char *text, struct channel_uri *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	if (!text)
		goto bad;
	if (!strncmp(text, "unix:", 5)) {
		size_t n = strlen(text + 5);

		if (n == 0 || n >= sizeof(out->path)) {
			snprintf(err, errlen, "unix socket path must be 1..%zu bytes",
				 sizeof(out->path) - 1);
			return -EINVAL;
		}
		out->kind = CHANNEL_UNIX;
		memcpy(out->path, text + 5, n + 1);
		return 0;
	}
	if (!strncmp(text, "tcp:", 4)) {
		const char *h = text + 4, *colon;
		size_t hlen;
		char *end;
		long port;

		if (*h == '[') {
			const char *rb = strchr(h, ']');

			if (!rb || rb[1] != ':')
				goto bad;
			h++;
			hlen = (size_t)(rb - h);
			colon = rb + 1;
		} else {
			colon = strrchr(h, ':');
			if (!colon)
				goto bad;
			hlen = (size_t)(colon - h);
		}
		if (hlen == 0 || hlen >= sizeof(out->host))
			goto bad;
		port = strtol(colon + 1, &end, 10);
		if (colon[1] == 0 || *end || port < 0 || port > 65535)
			goto bad;
		out->kind = CHANNEL_TCP;
		memcpy(out->host, h, hlen);
		out->host[hlen] = 0;
		snprintf(out->port, sizeof(out->port), "%ld", port);
		return 0;
	}
bad:
	snprintf(err, errlen, "'%s' is not a channel URI: use tcp:HOST:PORT or unix:PATH",
		 text ? text : "(null)");
	return -EINVAL;
}

void channel_tune(int fd)
{
	int one = 1, big = 8 << 20;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
}

void channel_mark_urgent(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int tos = IPTOS_LOWDELAY, prio = 6; /* TC_PRIO_INTERACTIVE */

	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return;
	if (ss.ss_family == AF_INET)
		setsockopt(fd, IPPROTO_IP, IP_TOS, &tos, sizeof(tos));
	else if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_TCLASS, &tos, sizeof(tos));
	else
		return;
	/* After the TOS, which would reset it. */
	setsockopt(fd, SOL_SOCKET, SO_PRIORITY, &prio, sizeof(prio));
}

static int channel_unix_addr(const struct channel_uri *uri, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	memcpy(sa->sun_path, uri->path, strlen(uri->path) + 1);
	return 0;
}

int channel_listen(const struct channel_uri *uri)
{
	int fd = -1, err;

	if (uri->kind == CHANNEL_UNIX) {
		struct sockaddr_un sa;
		struct stat st;

		channel_unix_addr(uri, &sa);
		if (lstat(uri->path, &st) == 0) {
			if (!S_ISSOCK(st.st_mode)) {
				log_error("migration: %s exists and is not a socket", uri->path);
				return -EEXIST;
			}
			unlink(uri->path);
		}
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -errno;
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0) {
			err = -errno;
			log_error("migration: cannot listen on unix:%s: %s", uri->path, strerror(errno));
			close(fd);
			return err;
		}
		return fd;
	} else {
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
		struct addrinfo *res, *ai;
		int one = 1, gai;

		gai = getaddrinfo(uri->host, uri->port, &hints, &res);
		if (gai) {
			log_error("migration: cannot resolve %s: %s", uri->host, gai_strerror(gai));
			return -EHOSTUNREACH;
		}
		err = -EADDRNOTAVAIL;
		for (ai = res; ai; ai = ai->ai_next) {
			fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
			if (fd < 0)
				continue;
			setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
			if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4) == 0)
				break;
			err = -errno;
			close(fd);
			fd = -1;
		}
		freeaddrinfo(res);
		if (fd < 0)
			log_error("migration: cannot listen on tcp:%s:%s: %s", uri->host, uri->port,
				  strerror(-err));
		return fd < 0 ? err : fd;
	}
}

int channel_accept(int listen_fd, int timeout_ms, int cancel_fd)
{
	struct pollfd pfd[2] = {
		{ .fd = listen_fd, .events = POLLIN },
		{ .fd = cancel_fd, .events = POLLIN },
	};
	int r, fd;

	for (;;) {
		r = poll(pfd, cancel_fd >= 0 ? 2 : 1, timeout_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		if (cancel_fd >= 0 && pfd[1].revents)
			return -ECANCELED;
		fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0 && (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED))
			continue;
		if (fd < 0)
			return -errno;
		channel_tune(fd);
		return fd;
	}
}

static int channel_connect_addr(int family, const struct sockaddr *sa, socklen_t len,
				int timeout_ms)
{
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	struct pollfd pfd;
	int soerr = 0, err;
	socklen_t sl = sizeof(soerr);

	if (fd < 0)
		return -errno;
	if (connect(fd, sa, len) == 0)
		goto ok;
	if (errno != EINPROGRESS && errno != EAGAIN) {
		err = -errno;
		close(fd);
		return err;
	}
	pfd = (struct pollfd){ .fd = fd, .events = POLLOUT };
	do {
		err = poll(&pfd, 1, timeout_ms);
	} while (err < 0 && errno == EINTR);
	if (err == 0) {
		close(fd);
		return -ETIMEDOUT;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr) {
		close(fd);
		return soerr ? -soerr : -EIO;
	}
ok:
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	channel_tune(fd);
	return fd;
}

int channel_connect(const struct channel_uri *uri, int timeout_ms)
{
	int fd;

	if (uri->kind == CHANNEL_UNIX) {
		struct sockaddr_un sa;

		channel_unix_addr(uri, &sa);
		fd = channel_connect_addr(AF_UNIX, (struct sockaddr *)&sa, sizeof(sa), timeout_ms);
		if (fd < 0)
			log_error("migration: cannot connect to unix:%s: %s", uri->path, strerror(-fd));
		return fd;
	} else {
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM };
		struct addrinfo *res, *ai;
		int gai;

		if (!strcmp(uri->port, "0")) {
			log_error("migration: cannot connect to port 0 (only listening picks a free port)");
			return -EINVAL;
		}
		gai = getaddrinfo(uri->host, uri->port, &hints, &res);
		if (gai) {
			log_error("migration: cannot resolve %s: %s", uri->host, gai_strerror(gai));
			return -EHOSTUNREACH;
		}
		fd = -ECONNREFUSED;
		for (ai = res; ai; ai = ai->ai_next) {
			fd = channel_connect_addr(ai->ai_family, ai->ai_addr, ai->ai_addrlen, timeout_ms);
			if (fd >= 0)
				break;
		}
		freeaddrinfo(res);
		if (fd < 0)
			log_error("migration: cannot connect to tcp:%s:%s: %s", uri->host, uri->port,
				  strerror(-fd));
		return fd;
	}
}
