#include "migration/cpr.h"
#include "migration/internal.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "migration/channel.h"
#include "migration/format.h"
#include "util/log.h"

/* Little-endian field access; messages are small fixed layouts. */
static void cpr_put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void cpr_put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t cpr_get32(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint64_t cpr_get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

void cpr_state_close(struct cpr_state *st)
{
	for (unsigned i = 0; i < CPR_MAX_FDS; i++) {
		if (st->fds[i].fd >= 0)
			close(st->fds[i].fd);
		st->fds[i].fd = -1;
	}
}

struct cpr_fd *cpr_state_find(struct cpr_state *st, uint32_t kind, const char *name)
{
	for (unsigned i = 0; i < st->nfds; i++)
		if (st->fds[i].kind == kind && !strcmp(st->fds[i].name, name))
			return &st->fds[i];
	return NULL;
}

int cpr_state_add(struct cpr_state *st, uint32_t kind, const char *name, uint32_t flags,
		  uint64_t gpa, uint64_t bytes, int fd, char *err, size_t errlen)
{
	struct cpr_fd *f;

	if (st->nfds >= CPR_MAX_FDS) {
		snprintf(err, errlen, "more than %u fds to hand over", CPR_MAX_FDS);
		return -ENOSPC;
	}
	f = &st->fds[st->nfds++];
	f->kind = kind;
	f->flags = flags;
	snprintf(f->name, sizeof(f->name), "%s", name);
	f->gpa = gpa;
	f->bytes = bytes;
	f->fd = fd;
	return 0;
}

const char *cpr_fd_kind_name(uint32_t kind)
{
	return kind == CPR_FD_RAM ? "ram" : kind == CPR_FD_DISK ? "disk" : "unknown";
}

uint32_t cpr_state_version(const struct cpr_state *st)
{
	for (unsigned i = 0; i < st->nfds; i++)
		if (st->fds[i].kind != CPR_FD_RAM)
			return 2;
	return 1;
}

/* ---- receiving: the state machine ---- */

void cpr_rx_init(struct cpr_rx *rx, struct cpr_state *st)
{
	memset(st, 0, sizeof(*st));
	for (unsigned i = 0; i < CPR_MAX_FDS; i++)
		st->fds[i].fd = -1;
	rx->st = st;
	rx->state = 0;
}

#define CPR_DISK_SECTOR_BYTES 512u /* a disk's size is a multiple of it */
#define CPR_FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -EBADMSG; } while (0)

static int cpr_rx_hello(struct cpr_rx *rx, const uint8_t *msg, size_t len, char *err,
			size_t errlen)
{
	struct cpr_state *st = rx->st;
	uint64_t magic;
	uint32_t version, nfds, nvcpus;

	if (len != CPR_HELLO_BYTES)
		CPR_FAIL("cpr HELLO of %zu bytes, expected %u", len, CPR_HELLO_BYTES);
	magic = cpr_get64(msg);
	version = cpr_get32(msg + 12);
	nfds = cpr_get32(msg + 16);
	nvcpus = cpr_get32(msg + 20);
	if (magic != CPR_MAGIC)
		CPR_FAIL("not a vmferry cpr channel (magic %#llx)", (unsigned long long)magic);
	if (version < CPR_VERSION_MIN || version > CPR_VERSION)
		CPR_FAIL("cpr channel version %u, this build reads versions %u..%u", version,
			 CPR_VERSION_MIN, CPR_VERSION);
	if (nfds == 0 || nfds > CPR_MAX_FDS)
		CPR_FAIL("cpr HELLO announces %u fds (1..%u allowed)", nfds, CPR_MAX_FDS);
	if (nvcpus == 0 || nvcpus > MIG_MAX_VCPUS)
		CPR_FAIL("cpr HELLO announces %u vCPUs (1..%u allowed)", nvcpus, MIG_MAX_VCPUS);
	st->version = version;
	st->nfds = nfds;
	st->nvcpus = nvcpus;
	memcpy(st->token, msg + 24, CPR_TOKEN_BYTES);
	rx->state = 1;
	return 0;
}

static int cpr_rx_fd(struct cpr_rx *rx, const uint8_t *msg, size_t len, const int *fds,
		     unsigned nfds, char *err, size_t errlen)
{
	struct cpr_state *st = rx->st;
	unsigned have = 0;
	struct cpr_fd *f;
	uint32_t index, kind, flags;
	uint64_t gpa, bytes;
	size_t namelen;

	while (have < st->nfds && st->fds[have].fd >= 0)
		have++;
	if (len != CPR_FD_BYTES)
		CPR_FAIL("cpr FD message of %zu bytes, expected %u", len, CPR_FD_BYTES);
	if (nfds != 1)
		CPR_FAIL("cpr FD message %u carries %u file descriptors, expected exactly 1", have,
			 nfds);
	index = cpr_get32(msg + 4);
	kind = cpr_get32(msg + 8);
	flags = cpr_get32(msg + 12);
	gpa = cpr_get64(msg + 16);
	bytes = cpr_get64(msg + 24);
	if (index != have)
		CPR_FAIL("cpr FD message with index %u, expected %u", index, have);
	if (have >= st->nfds)
		CPR_FAIL("cpr FD message beyond the %u announced", st->nfds);
	if (kind != CPR_FD_RAM && (kind != CPR_FD_DISK || st->version < 2))
		CPR_FAIL("cpr fd %u: unknown kind %u (channel version %u)", index, kind,
			 st->version);
	if (flags & ~(kind == CPR_FD_DISK ? CPR_FD_F_READONLY : 0u))
		CPR_FAIL("cpr fd %u: unknown flags %#x for a %s fd", index, flags,
			 cpr_fd_kind_name(kind));
	namelen = strnlen((const char *)msg + 32, CPR_NAME_BYTES);
	if (namelen == 0 || namelen == CPR_NAME_BYTES)
		CPR_FAIL("cpr fd %u: name is empty or not terminated", index);
	for (size_t i = namelen; i < CPR_NAME_BYTES; i++)
		if (msg[32 + i])
			CPR_FAIL("cpr fd %u: bytes after the name's end", index);
	if (kind == CPR_FD_RAM ? (bytes == 0 || bytes % MIG_PAGE_BYTES || gpa % MIG_PAGE_BYTES ||
				  gpa + bytes < gpa)
			       : (bytes == 0 || bytes % CPR_DISK_SECTOR_BYTES || gpa))
		CPR_FAIL("cpr fd %u (%.*s): bad geometry (gpa %#llx, %llu bytes)", index,
			 (int)namelen, (const char *)msg + 32, (unsigned long long)gpa,
			 (unsigned long long)bytes);
	for (unsigned i = 0; i < have; i++)
		if (!strncmp(st->fds[i].name, (const char *)msg + 32, CPR_NAME_BYTES) &&
		    st->fds[i].kind == kind)
			CPR_FAIL("cpr fd name %.*s given twice", (int)namelen, (const char *)msg + 32);
	if (fds[0] < 0)
		CPR_FAIL("cpr fd %u: invalid descriptor", index);
	f = &st->fds[have];
	f->kind = kind;
	f->flags = flags;
	memcpy(f->name, msg + 32, namelen);
	f->name[namelen] = 0;
	f->gpa = gpa;
	f->bytes = bytes;
	f->fd = fds[0];
	return 0;
}

int cpr_rx_message(struct cpr_rx *rx, const uint8_t *msg, size_t len, const int *fds,
		   unsigned nfds, bool ctrunc, char *err, size_t errlen)
{
	uint32_t type;
	int r;

	if (ctrunc)
		CPR_FAIL("cpr message arrived with more file descriptors than allowed (truncated)");
	if (rx->state == 2)
		CPR_FAIL("cpr message after DONE");
	/* HELLO starts with the magic; the type follows it. */
	if (rx->state == 0) {
		if (len < 12 || cpr_get32(msg + 8) != CPR_MSG_HELLO)
			CPR_FAIL("cpr channel must start with HELLO (%zu bytes received)", len);
		if (nfds)
			CPR_FAIL("cpr HELLO carries %u file descriptors, expected none", nfds);
		return cpr_rx_hello(rx, msg, len, err, errlen);
	}
	if (len < 4)
		CPR_FAIL("cpr message of %zu bytes", len);
	type = cpr_get32(msg);
	switch (type) {
	case CPR_MSG_FD:
		r = cpr_rx_fd(rx, msg, len, fds, nfds, err, errlen);
		return r;
	case CPR_MSG_DONE: {
		unsigned have = 0;

		while (have < rx->st->nfds && rx->st->fds[have].fd >= 0)
			have++;
		if (len != CPR_DONE_BYTES)
			CPR_FAIL("cpr DONE of %zu bytes, expected %u", len, CPR_DONE_BYTES);
		if (nfds)
			CPR_FAIL("cpr DONE carries %u file descriptors, expected none", nfds);
		if (cpr_get32(msg + 4) != rx->st->nfds || cpr_get64(msg + 8))
			CPR_FAIL("cpr DONE says %u fds, HELLO announced %u", cpr_get32(msg + 4),
				 rx->st->nfds);
		if (have != rx->st->nfds)
			CPR_FAIL("cpr DONE after %u of %u fds", have, rx->st->nfds);
		rx->state = 2;
		return 1;
	}
	default:
		CPR_FAIL("cpr message type %u unexpected here", type);
	}
}

int cpr_parse_ack(const uint8_t *msg, size_t len, int *status, char *text, size_t textlen,
		  char *err, size_t errlen)
{
	uint32_t tlen;
	int32_t s;

	if (len < CPR_ACK_HEADER_BYTES || cpr_get32(msg) != CPR_MSG_ACK)
		CPR_FAIL("expected a cpr ACK (%zu bytes received)", len);
	s = (int32_t)cpr_get32(msg + 4);
	tlen = cpr_get32(msg + 8);
	if (cpr_get32(msg + 12) || tlen > CPR_TEXT_MAX || len != CPR_ACK_HEADER_BYTES + tlen)
		CPR_FAIL("cpr ACK: %u bytes of text in a %zu-byte message", tlen, len);
	if (s > 0 || s < -4095)
		CPR_FAIL("cpr ACK: status %d is not 0 or -errno", s);
	if (memchr(msg + CPR_ACK_HEADER_BYTES, 0, tlen))
		CPR_FAIL("cpr ACK: NUL in text");
	*status = s;
	snprintf(text, textlen, "%.*s", (int)tlen, (const char *)msg + CPR_ACK_HEADER_BYTES);
	return 0;
}

/* ---- sockets ---- */

static int cpr_channel_path(const struct channel_uri *cu, struct sockaddr_un *sa, char *err,
			    size_t errlen)
{
	if (cu->kind != CHANNEL_UNIX) {
		snprintf(err, errlen, "the cpr channel must be a UNIX socket (unix:PATH): it carries "
			 "file descriptors, which only a UNIX socket can pass");
		return -EINVAL;
	}
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	snprintf(sa->sun_path, sizeof(sa->sun_path), "%s", cu->path);
	return 0;
}

static int cpr_uri_path(const char *uri, struct sockaddr_un *sa, char *err, size_t errlen)
{
	struct channel_uri cu;
	int r = channel_uri_parse(uri, &cu, err, errlen);

	return r ? r : cpr_channel_path(&cu, sa, err, errlen);
}

int cpr_listen(const char *uri, char *err, size_t errlen)
{
	struct sockaddr_un sa;
	struct stat stt;
	int fd, r = cpr_uri_path(uri, &sa, err, errlen);

	if (r)
		return r;
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		r = -errno;
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return r;
	}
	if (stat(sa.sun_path, &stt) == 0 && S_ISSOCK(stt.st_mode))
		unlink(sa.sun_path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1) < 0) {
		r = -errno;
		snprintf(err, errlen, "cannot listen on %s: %s", uri, strerror(errno));
		close(fd);
		return r;
	}
	return fd;
}

int cpr_accept(int listen_fd, int timeout_ms)
{
	struct pollfd pfd = { .fd = listen_fd, .events = POLLIN };
	int r, fd;

	do {
		r = poll(&pfd, 1, timeout_ms);
	} while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	if (r == 0)
		return -ETIMEDOUT;
	fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int cpr_connect(const char *uri, int timeout_ms, int cancel_fd, char *err, size_t errlen)
{
	struct channel ch;
	int r = channel_parse(uri, &ch, err, errlen);

	return r ? r : cpr_connect_channel(&ch, timeout_ms, cancel_fd, err, errlen);
}

int cpr_connect_channel(const struct channel *ch, int timeout_ms, int cancel_fd, char *err,
			size_t errlen)
{
	uint64_t deadline = clock_monotonic_ns() + (uint64_t)timeout_ms * 1000000ull;
	const char *uri = ch->uri;
	int backoff_ms = 1;
	struct sockaddr_un sa;
	int r = cpr_channel_path(&ch->cu, &sa, err, errlen);

	if (r)
		return r;
	for (;;) {
		int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		struct pollfd pfd = { .fd = cancel_fd, .events = POLLIN };

		if (fd < 0) {
			r = -errno;
			snprintf(err, errlen, "socket: %s", strerror(errno));
			return r;
		}
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return fd;
		r = -errno;
		close(fd);
		/* The new process may not listen yet: it is starting up. */
		if ((r != -ENOENT && r != -ECONNREFUSED) || clock_monotonic_ns() >= deadline) {
			snprintf(err, errlen, "cannot connect the cpr channel to %s: %s", uri,
				 strerror(-r));
			return r;
		}
		if (poll(&pfd, cancel_fd >= 0 ? 1 : 0, backoff_ms) > 0) {
			snprintf(err, errlen, "cancelled");
			return -ECANCELED;
		}
		if (backoff_ms < 50)
			backoff_ms *= 2;
	}
}

int cpr_peer_pid(int sock)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return -errno;
	return cred.pid > 0 ? cred.pid : -ESRCH;
}

static int cpr_sendmsg(int sock, const uint8_t *buf, size_t len, int fd)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (fd >= 0) {
		struct cmsghdr *c;

		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = sizeof(ctl.buf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	do {
		n = sendmsg(sock, &mh, MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EMSGSIZE;
}

int cpr_send(int sock, const struct cpr_state *st, char *err, size_t errlen)
{
	uint8_t m[CPR_FD_BYTES];
	int r;

	memset(m, 0, sizeof(m));
	cpr_put64(m, CPR_MAGIC);
	cpr_put32(m + 8, CPR_MSG_HELLO);
	cpr_put32(m + 12, cpr_state_version(st));
	cpr_put32(m + 16, st->nfds);
	cpr_put32(m + 20, st->nvcpus);
	memcpy(m + 24, st->token, CPR_TOKEN_BYTES);
	r = cpr_sendmsg(sock, m, CPR_HELLO_BYTES, -1);
	for (unsigned i = 0; !r && i < st->nfds; i++) {
		const struct cpr_fd *f = &st->fds[i];

		memset(m, 0, sizeof(m));
		cpr_put32(m, CPR_MSG_FD);
		cpr_put32(m + 4, i);
		cpr_put32(m + 8, f->kind);
		cpr_put32(m + 12, f->flags);
		cpr_put64(m + 16, f->gpa);
		cpr_put64(m + 24, f->bytes);
		snprintf((char *)m + 32, CPR_NAME_BYTES, "%s", f->name);
		r = cpr_sendmsg(sock, m, CPR_FD_BYTES, f->fd);
	}
	if (!r) {
		memset(m, 0, sizeof(m));
		cpr_put32(m, CPR_MSG_DONE);
		cpr_put32(m + 4, st->nfds);
		r = cpr_sendmsg(sock, m, CPR_DONE_BYTES, -1);
	}
	if (r)
		snprintf(err, errlen, "sending on the cpr channel failed: %s", strerror(-r));
	return r;
}

/*
 * One message with its fds.  Returns its length, 0 at EOF, or -errno.  Any
 * fds beyond @maxfds make the kernel set MSG_CTRUNC (*ctrunc).
 */
static ssize_t cpr_recvmsg(int sock, int timeout_ms, int cancel_fd, uint8_t *buf, size_t len,
			   int *fds, unsigned maxfds, unsigned *nfds, bool *ctrunc, bool *trunc)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * 4)];
	} ctl;
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct pollfd pfd[2] = { { .fd = sock, .events = POLLIN }, { .fd = cancel_fd, .events = POLLIN } };
	ssize_t n;
	int r;

	*nfds = 0;
	do {
		r = poll(pfd, cancel_fd >= 0 ? 2 : 1, timeout_ms);
	} while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	if (r == 0)
		return -ETIMEDOUT;
	if (cancel_fd >= 0 && (pfd[1].revents & POLLIN))
		return -ECANCELED;
	mh.msg_control = ctl.buf;
	mh.msg_controllen = sizeof(ctl.buf);
	do {
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		size_t k;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (*nfds < maxfds)
				fds[(*nfds)++] = fd;
			else
				close(fd);
		}
	}
	*ctrunc = mh.msg_flags & MSG_CTRUNC;
	*trunc = mh.msg_flags & MSG_TRUNC;
	return n;
}

int cpr_recv(int sock, int timeout_ms, struct cpr_state *st, char *err, size_t errlen)
{
	uint64_t deadline = clock_monotonic_ns() + (uint64_t)timeout_ms * 1000000ull;
	struct cpr_rx rx;
	uint8_t buf[CPR_MSG_MAX];
	int fds[4];

	cpr_rx_init(&rx, st);
	for (;;) {
		uint64_t now = clock_monotonic_ns();
		unsigned nfds;
		bool ctrunc, trunc;
		ssize_t n;
		int r;

		n = now >= deadline ? -ETIMEDOUT
				    : cpr_recvmsg(sock, (int)((deadline - now) / 1000000ull) + 1, -1, buf,
						  sizeof(buf), fds, 4, &nfds, &ctrunc, &trunc);
		if (n <= 0) {
			snprintf(err, errlen, "cpr channel: %s",
				 n == 0 ? "the old process closed it before DONE"
					: n == -ETIMEDOUT ? "timed out waiting for the file descriptors"
							  : strerror((int)-n));
			r = n == 0 ? -EPIPE : (int)n;
			cpr_state_close(st);
			return r;
		}
		r = trunc ? -EBADMSG : cpr_rx_message(&rx, buf, (size_t)n, fds, nfds, ctrunc, err, errlen);
		if (trunc)
			snprintf(err, errlen, "cpr message longer than %u bytes", CPR_MSG_MAX);
		if (r < 0) {
			for (unsigned i = 0; i < nfds; i++)
				close(fds[i]);
			cpr_state_close(st);
			return r;
		}
		if (r == 1)
			return 0;
	}
}

int cpr_send_ack(int sock, int status, const char *text)
{
	uint8_t m[CPR_MSG_MAX];
	size_t tlen = text ? strnlen(text, CPR_TEXT_MAX) : 0;

	memset(m, 0, CPR_ACK_HEADER_BYTES);
	cpr_put32(m, CPR_MSG_ACK);
	cpr_put32(m + 4, (uint32_t)status);
	cpr_put32(m + 8, (uint32_t)tlen);
	if (tlen)
		memcpy(m + CPR_ACK_HEADER_BYTES, text, tlen);
	return cpr_sendmsg(sock, m, CPR_ACK_HEADER_BYTES + tlen, -1);
}

int cpr_recv_ack(int sock, int timeout_ms, int cancel_fd, char *text, size_t textlen)
{
	uint8_t buf[CPR_MSG_MAX];
	int fds[4], status;
	unsigned nfds;
	bool ctrunc, trunc;
	char err[160];
	ssize_t n = cpr_recvmsg(sock, timeout_ms, cancel_fd, buf, sizeof(buf), fds, 4, &nfds,
				&ctrunc, &trunc);

	for (unsigned i = 0; n > 0 && i < nfds; i++)
		close(fds[i]);
	if (n == 0) {
		snprintf(text, textlen, "the new process closed the cpr channel without answering "
			 "(it exited or failed to start)");
		return -EPIPE;
	}
	if (n < 0) {
		snprintf(text, textlen, "%s", n == -ETIMEDOUT ? "no answer on the cpr channel"
					      : n == -ECANCELED ? "cancelled" : strerror((int)-n));
		return (int)n;
	}
	if (trunc || nfds || ctrunc) {
		snprintf(text, textlen, "malformed cpr ACK (%s)",
			 trunc ? "too long" : "carries file descriptors");
		return -EBADMSG;
	}
	if (cpr_parse_ack(buf, (size_t)n, &status, text, textlen, err, sizeof(err))) {
		snprintf(text, textlen, "%s", err);
		return -EBADMSG;
	}
	return status;
}

void cpr_fault_point(const char *point)
{
	const char *want = getenv("VMFERRY_CPR_FAULT");

	if (want && !strcmp(want, point)) {
		log_warn("VMFERRY_CPR_FAULT=%s: dying here", point);
		raise(SIGKILL);
	}
}

/* ---- source: CPR transfer (in-place live update) ---- */

/* 1 when the process behind @pidfd exits within @timeout_ms, else 0. */
static int mig_pidfd_exited(int pidfd, int timeout_ms)
{
	struct pollfd pfd = { .fd = pidfd, .events = POLLIN };
	int r;

	do {
		r = poll(&pfd, 1, timeout_ms);
	} while (r < 0 && errno == EINTR);
	return r > 0;
}

/* A live update in progress, on the old process's migration thread. */
struct mig_cpr_run {
	struct migration *m;
	struct mig_src src;
	struct cpr_state cs;
	char errbuf[MIG_ERROR_BYTES];
	int cfd, fd, pidfd, peer;
	uint64_t stop_ns;
	bool was_running;
	bool stopped;                /* stopped here, and may resume here */
	bool kept;                   /* stopped, and the new process may run it */
};

/*
 * The cpr channel: connect, watch the new process itself (not only its
 * sockets, see above), lend every state's fds, wait for its ACK.  0 or -1
 * with the error set.
 */
static int mig_cpr_handover(struct mig_cpr_run *run)
{
	struct migration *m = run->m;
	int err;

	run->cfd = cpr_connect_channel(&m->cpr_ch, MIG_CPR_CONNECT_WAIT_MS, m->cancel_fd,
				       run->errbuf, sizeof(run->errbuf));
	if (run->cfd < 0) {
		mig_set_error(m, "%s", run->errbuf);
		return -1;
	}
	run->peer = cpr_peer_pid(run->cfd);
	run->pidfd = run->peer > 0 ? (int)syscall(SYS_pidfd_open, run->peer, 0) : -1;
	if (run->pidfd < 0) {
		mig_set_error(m, "cannot watch the process behind %s (pid %d): %s", m->cpr_ch.uri,
			      run->peer, strerror(run->peer > 0 ? errno : -run->peer));
		return -1;
	}
	run->cs.nvcpus = vm_nvcpus(m->vm);
	if (getrandom(run->cs.token, sizeof(run->cs.token), 0) != (ssize_t)sizeof(run->cs.token)) {
		mig_set_error(m, "getrandom: %s", strerror(errno));
		return -1;
	}
	err = mig_states_cpr_lend(m, &run->cs, run->errbuf, sizeof(run->errbuf));
	if (!err)
		err = cpr_send(run->cfd, &run->cs, run->errbuf, sizeof(run->errbuf));
	if (!err)
		err = cpr_recv_ack(run->cfd, MIG_CPR_ACK_TIMEOUT_MS, m->cancel_fd, run->errbuf,
				   sizeof(run->errbuf));
	if (err) {
		mig_set_error(m, "the new process (pid %d) did not take the update: %s", run->peer,
			      run->errbuf);
		return -1;
	}
	return 0;
}

/*
 * The main channel: CPR(token), stop, every state's sections and END, then
 * the new process's word.  0 or -1 with the error set (run->stopped false
 * when the guest must stay paused).
 */
static int mig_cpr_switch(struct mig_cpr_run *run)
{
	struct migration *m = run->m;
	struct mig_save_info info = { .cpr = true };
	struct mig_rp_msg rp;
	int err;

	run->fd = mig_src_connect(&run->src);
	if (run->fd < 0)
		return -1;
	stream_put_u8(&run->src.s, MIG_REC_CPR);
	stream_put_bytes(&run->src.s, run->cs.token, sizeof(run->cs.token));
	mig_set_time(m, &m->setup_ns, clock_monotonic_ns() - m->start_ns);
	if (!mig_set_status(m, MIG_STATUS_ACTIVE) || !mig_set_status(m, MIG_STATUS_DEVICE))
		return -1; /* cancelled */
	if (vm_migration_stop(m->vm, &run->stop_ns, &run->was_running)) {
		mig_set_error(m, "cannot stop the guest for the update (state %s)",
			      vm_runstate_name(vm_get_runstate(m->vm)));
		return -1;
	}
	run->stopped = true;
	run->src.bd.vcpu_stop_ns = clock_monotonic_ns() - run->stop_ns;
	info.was_running = run->was_running;
	info.stop_ns = run->stop_ns;
	err = mig_send_state(&run->src, &info, true, run->errbuf, sizeof(run->errbuf));
	if (!err) {
		run->src.s.timeout_ms = MIG_RP_TIMEOUT_MS;
		err = mig_rp_read(&run->src.s, &rp, run->errbuf, sizeof(run->errbuf));
	}
	/* A refusal may close the channel while the state is still being
	 * sent: the send fails, and the refusal waits on the return path. */
	if ((!err && rp.type == MIG_RP_ERROR) ||
	    (err && !mig_rp_pending_error(&run->src, rp.text, sizeof(rp.text)))) {
		/* It refused the state: it never ran the guest. */
		mig_set_error(m, "the new process failed to load the state: %s; the guest "
			      "continues here", rp.text);
		return -1;
	}
	if (err || rp.type != MIG_RP_RUNNING) {
		if (mig_pidfd_exited(run->pidfd, MIG_CPR_PEER_EXIT_MS)) {
			mig_set_error(m, "the new process (pid %d) exited before running the guest (%s); "
				      "the guest continues here", run->peer,
				      err ? run->errbuf : "unexpected return-path message");
			return -1;
		}
		mig_set_error(m, "no word from the new process (pid %d) after the switch (%s) and it "
			      "is still alive, so it may be running the guest: kept paused here. If "
			      "it does not run the guest, end it (kill -9 %d), then resume the guest "
			      "here with cont {\"force\": true}", run->peer,
			      err ? run->errbuf : "unexpected return-path message", run->peer);
		run->stopped = false; /* two copies must never run over one RAM */
		run->kept = true;
		return -1;
	}
	{
		uint64_t end_ns = rp.same_clock && rp.first_run_ns >= run->stop_ns
				  ? rp.first_run_ns : clock_monotonic_ns();

		mig_set_downtime(m, end_ns - run->stop_ns, rp.same_clock);
		mig_breakdown_fit(&run->src.bd, run->stop_ns, end_ns);
	}
	mig_set_breakdown(m, &run->src.bd);
	atomic_store(&m->transferred, run->src.s.bytes);
	return 0;
}

static void mig_cpr_release(struct mig_cpr_run *run)
{
	mig_end_main_channel(run->m, &run->src.s, run->fd);
	if (run->cfd >= 0)
		close(run->cfd);
	if (run->pidfd >= 0)
		close(run->pidfd);
}

/*
 * Hand the guest to a new VMM process on this host.  Guest RAM is never
 * copied: its memfds go over the cpr channel, the main channel carries only
 * the device sections.  Until the new process says it runs the guest, this
 * one may resume it - but once the vCPUs stopped here, only if the new one
 * provably never ran it (it refused the state, or its process is gone):
 * both share the same RAM, so two running copies would corrupt it.
 *
 *   old process                          new process
 *   cpr: HELLO, FD ram0, DONE  ------->  create the VM over the memfd
 *                             <-------  ACK 0 (listening on main)
 *   main: header, CPR(token)  ------->
 *   stop vCPUs  (pause starts)
 *   main: sections, END       ------->  load state, run vCPUs (pause ends)
 *                             <-------  RP_RUNNING
 *   exit 0
 */
void mig_cpr_source(struct migration *m)
{
	struct mig_cpr_run run = {
		.m = m, .cfd = -1, .fd = -1, .pidfd = -1,
		.src = { .m = m, .block = vm_ram_block(m->vm, 0), .urgent_fd = -1, .rp_fd = -1 },
	};

	for (unsigned i = 0; i < CPR_MAX_FDS; i++)
		run.cs.fds[i].fd = -1;
	if (mig_cpr_handover(&run) || mig_cpr_switch(&run)) {
		if (atomic_load(&m->cancel))
			mig_set_error(m, "cancelled");
		if (run.stopped)
			vm_migration_abort(m->vm, run.was_running);
		else if (run.kept) /* cont {"force": true} once that process is gone */
			vm_migration_keep(m->vm, VM_KEPT_PEER_MAY_RUN, run.was_running, run.peer);
		mig_states_cleanup(m, false);
		mig_cpr_release(&run);
		mig_finish_failed(m);
		return;
	}
	vm_migration_complete(m->vm);
	mig_states_cleanup(m, true);
	mig_cpr_release(&run);
	mig_set_status(m, MIG_STATUS_COMPLETED);
	log_info("live update to pid %d completed: %.1f ms total, guest paused %.3f ms; exiting",
		 run.peer, (double)(m->end_ns - m->start_ns) / 1e6, (double)m->downtime_ns / 1e6);
	/* The guest lives in the new process now; this one's job is done. */
	vm_request_exit(m->vm, 0);
}
