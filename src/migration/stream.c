#include "migration/stream.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "util/log.h"

int stream_init(struct stream *s, int fd, int timeout_ms)
{
	int flags;

	memset(s, 0, sizeof(*s));
	s->fd = fd;
	s->timeout_ms = timeout_ms;
	s->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (s->cancel_fd < 0)
		return -errno;
	s->buf = malloc(STREAM_FILL_BYTES);
	s->wbuf = malloc(STREAM_BUF_BYTES);
	if (!s->buf || !s->wbuf) {
		free(s->buf);
		free(s->wbuf);
		s->buf = s->wbuf = NULL;
		close(s->cancel_fd);
		s->cancel_fd = -1;
		return -ENOMEM;
	}
	flags = fcntl(fd, F_GETFL);
	if (flags >= 0)
		fcntl(fd, F_SETFL, flags | O_NONBLOCK);
	{
		int proto = 0;
		socklen_t plen = sizeof(proto);

		/* TCP's poll honours SO_RCVLOWAT; a UNIX socket's does not. */
		s->lowat = getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &plen) == 0 &&
			   proto == IPPROTO_TCP;
	}
	{
		const char *copy = getenv("VMFERRY_SEND_COPY");

		s->copy_send = copy && *copy && strcmp(copy, "0");
	}
	return 0;
}

void stream_init_mem(struct stream *s, const void *data, size_t len)
{
	memset(s, 0, sizeof(*s));
	s->fd = -1;
	s->cancel_fd = -1;
	s->buf = (uint8_t *)data; /* read-only use: never written through */
	s->len = len;
}

void stream_release(struct stream *s)
{
	if (s->fd >= 0 || s->cancel_fd >= 0)
		free(s->buf);
	free(s->wbuf);
	s->buf = s->wbuf = NULL;
	if (s->cancel_fd >= 0)
		close(s->cancel_fd);
	s->cancel_fd = -1;
}

void stream_cancel(struct stream *s)
{
	uint64_t one = 1;

	if (s->cancel_fd >= 0 && write(s->cancel_fd, &one, sizeof(one)) < 0)
		log_debug("stream: cancel write failed: %s", strerror(errno));
}

int stream_fail(struct stream *s, int err, const char *fmt, ...)
{
	va_list ap;

	if (s->err)
		return s->err;
	s->err = err ? err : -EIO;
	va_start(ap, fmt);
	vsnprintf(s->errmsg, sizeof(s->errmsg), fmt, ap);
	va_end(ap);
	return s->err;
}

/* Wait for @events on the socket.  0 ready, or the stream error. */
static int stream_wait(struct stream *s, short events, int timeout_ms)
{
	struct pollfd pfd[2] = {
		{ .fd = s->fd, .events = events },
		{ .fd = s->cancel_fd, .events = POLLIN },
	};
	int r;

	for (;;) {
		r = poll(pfd, 2, timeout_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return stream_fail(s, -errno, "poll: %s", strerror(errno));
		if (r == 0)
			return stream_fail(s, -ETIMEDOUT, "peer silent for %d ms", timeout_ms);
		if (pfd[1].revents)
			return stream_fail(s, -ECANCELED, "cancelled");
		return 0;
	}
}

static void stream_rate_limit(struct stream *s, size_t n)
{
	uint64_t now, elapsed_ns, allowed_ns;

	if (!s->max_bytes_per_s)
		return;
	now = clock_monotonic_ns();
	if (!s->rate_start_ns || now - s->rate_start_ns > 1000000000ull) {
		s->rate_start_ns = now;
		s->rate_bytes = 0;
	}
	s->rate_bytes += n;
	elapsed_ns = now - s->rate_start_ns;
	allowed_ns = s->rate_bytes * 1000000000ull / s->max_bytes_per_s;
	if (allowed_ns > elapsed_ns) {
		uint64_t d = allowed_ns - elapsed_ns;
		struct timespec ts = { (time_t)(d / 1000000000ull), (long)(d % 1000000000ull) };

		nanosleep(&ts, NULL);
	}
}

/*
 * Bytes per sendmsg.  On a kernel without preemption a send is one stretch
 * no other thread can interrupt (over loopback it also runs the receiving
 * side's protocol work), so a thread a faulting vCPU waits for could wait
 * out a 4 MiB send; slices keep that wait short at no cost in throughput.
 */
#define STREAM_SEND_SLICE (256u * 1024u)

/* After a failed send: true when it is worth trying again (after waiting
 * for room, if that was what was missing; a failed wait is kept). */
static bool stream_send_again(struct stream *s)
{
	if (errno == EINTR)
		return true;
	if (errno != EAGAIN)
		return false;
	return stream_wait(s, POLLOUT, s->timeout_ms) == 0;
}

/* Send all of @iov_in; @flags are added to sendmsg's (MSG_MORE). */
static void stream_write_all(struct stream *s, const struct iovec *iov_in, int iovcnt, int flags)
{
	struct iovec iov[4];
	int cnt = iovcnt;
	size_t total = 0;

	memcpy(iov, iov_in, sizeof(iov[0]) * (size_t)iovcnt);
	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	stream_rate_limit(s, total);
	while (!s->err && cnt > 0) {
		struct iovec part[4];
		struct msghdr mh = { .msg_iov = part };
		size_t left = STREAM_SEND_SLICE;
		ssize_t w;

		for (int i = 0; i < cnt && left; i++) {
			part[i] = iov[i];
			if (part[i].iov_len > left)
				part[i].iov_len = left;
			left -= part[i].iov_len;
			mh.msg_iovlen++;
		}
		w = sendmsg(s->fd, &mh, MSG_NOSIGNAL | flags);

		if (w < 0) {
			if (stream_send_again(s) || s->err)
				continue;
			stream_fail(s, -errno, "send: %s", strerror(errno));
			return;
		}
		s->bytes += (uint64_t)w;
		while (cnt > 0 && (size_t)w >= iov[0].iov_len) {
			w -= (ssize_t)iov[0].iov_len;
			memmove(iov, iov + 1, sizeof(iov[0]) * (size_t)(cnt - 1));
			cnt--;
		}
		if (cnt > 0) {
			iov[0].iov_base = (uint8_t *)iov[0].iov_base + w;
			iov[0].iov_len -= (size_t)w;
		}
	}
}

int stream_flush(struct stream *s)
{
	if (s->err || s->wlen == 0)
		return s->err;
	if (s->fd < 0)
		return stream_fail(s, -EBADF, "write to a memory stream");
	{
		struct iovec iov = { s->wbuf, s->wlen };

		stream_write_all(s, &iov, 1, 0);
	}
	s->wlen = 0;
	return s->err;
}

void stream_put_bytes(struct stream *s, const void *p, size_t n)
{
	if (s->err)
		return;
	if (!s->wbuf) {
		stream_fail(s, -EBADF, "write to a memory stream");
		return;
	}
	if (n > STREAM_BUF_BYTES - s->wlen) {
		stream_flush(s);
		if (n > STREAM_BUF_BYTES) {
			stream_put_direct(s, p, n);
			return;
		}
	}
	if (s->err)
		return;
	memcpy(s->wbuf + s->wlen, p, n);
	s->wlen += n;
}

void stream_put_direct(struct stream *s, const void *p, size_t n)
{
	struct iovec iov[2];

	if (s->err)
		return;
	if (s->fd < 0) {
		stream_fail(s, -EBADF, "write to a memory stream");
		return;
	}
	iov[0] = (struct iovec){ s->wbuf, s->wlen };
	iov[1] = (struct iovec){ (void *)p, n };
	if (s->wlen)
		stream_write_all(s, iov, 2, 0);
	else
		stream_write_all(s, iov + 1, 1, 0);
	s->wlen = 0;
}

void stream_put_file(struct stream *s, int fd, uint64_t off, const void *p, size_t n)
{
	size_t done = 0;

	if (s->err)
		return;
	if (s->copy_send || fd < 0 || s->fd < 0) {
		stream_put_direct(s, p, n);
		return;
	}
	/* The header goes first, marked as more to come: it leaves with the pages. */
	if (s->wlen) {
		struct iovec iov = { s->wbuf, s->wlen };

		stream_write_all(s, &iov, 1, MSG_MORE);
		s->wlen = 0;
	}
	stream_rate_limit(s, n);
	while (!s->err && done < n) {
		off_t o = (off_t)(off + done);
		size_t len = n - done < STREAM_SEND_SLICE ? n - done : STREAM_SEND_SLICE;
		ssize_t w = sendfile(s->fd, fd, &o, len);

		if (w < 0) {
			if (stream_send_again(s) || s->err)
				continue;
			if (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP || errno == ESPIPE) {
				/* Not for this file or socket: copy, now and from now on. */
				log_debug("stream: sendfile refused (%s); sending copies", strerror(errno));
				s->copy_send = true;
				s->rate_bytes -= n - done < s->rate_bytes ? n - done : s->rate_bytes;
				stream_put_direct(s, (const uint8_t *)p + done, n - done);
				return;
			}
			stream_fail(s, -errno, "sendfile: %s", strerror(errno));
			return;
		}
		if (w == 0) {
			stream_fail(s, -EIO, "sendfile: the file ended at %llu",
				    (unsigned long long)(off + done));
			return;
		}
		s->bytes += (uint64_t)w;
		done += (size_t)w;
	}
}

void stream_put_u8(struct stream *s, uint8_t v) { stream_put_bytes(s, &v, 1); }
void stream_put_u16(struct stream *s, uint16_t v) { stream_put_bytes(s, &v, 2); }
void stream_put_u32(struct stream *s, uint32_t v) { stream_put_bytes(s, &v, 4); }
void stream_put_u64(struct stream *s, uint64_t v) { stream_put_bytes(s, &v, 8); }

/* Refill the read buffer with at least one byte.  0 or the error. */
static int stream_fill(struct stream *s)
{
	ssize_t r;

	if (s->fd < 0)
		return stream_fail(s, -EPIPE, "stream truncated");
	s->pos = s->len = 0;
	for (;;) {
		r = recv(s->fd, s->buf, STREAM_FILL_BYTES, 0);
		if (r > 0) {
			s->len = (size_t)r;
			s->bytes += (uint64_t)r;
			return 0;
		}
		if (r == 0)
			return stream_fail(s, -EPIPE, "peer closed the connection");
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return stream_fail(s, -errno, "recv: %s", strerror(errno));
		if (stream_wait(s, POLLIN, s->timeout_ms))
			return s->err;
	}
}

void stream_get_bytes(struct stream *s, void *p, size_t n)
{
	uint8_t *out = p;

	while (n > 0) {
		size_t take;

		if (s->err) {
			memset(out, 0, n);
			return;
		}
		if (s->pos == s->len) {
			/* Page-sized reads skip the buffer. */
			if (n >= STREAM_DIRECT_BYTES && s->fd >= 0) {
				ssize_t r = recv(s->fd, out, n, 0);

				if (r > 0) {
					s->bytes += (uint64_t)r;
					out += r;
					n -= (size_t)r;
					continue;
				}
				if (r == 0) {
					stream_fail(s, -EPIPE, "peer closed the connection");
					continue;
				}
				if (errno == EINTR)
					continue;
				if (errno != EAGAIN) {
					stream_fail(s, -errno, "recv: %s", strerror(errno));
					continue;
				}
				stream_wait(s, POLLIN, s->timeout_ms);
				continue;
			}
			if (stream_fill(s))
				continue;
		}
		take = s->len - s->pos < n ? s->len - s->pos : n;
		memcpy(out, s->buf + s->pos, take);
		s->pos += take;
		out += take;
		n -= take;
	}
}

uint8_t stream_get_u8(struct stream *s) { uint8_t v; stream_get_bytes(s, &v, 1); return v; }
uint16_t stream_get_u16(struct stream *s) { uint16_t v; stream_get_bytes(s, &v, 2); return v; }
uint32_t stream_get_u32(struct stream *s) { uint32_t v; stream_get_bytes(s, &v, 4); return v; }
uint64_t stream_get_u64(struct stream *s) { uint64_t v; stream_get_bytes(s, &v, 8); return v; }

bool stream_has_ready(struct stream *s, size_t n)
{
	return stream_buffered(s) >= n || stream_ready_bytes(s) >= n;
}

size_t stream_ready_bytes(struct stream *s)
{
	size_t n = s->len - s->pos;
	int queued = 0;

	if (!s->err && s->fd >= 0 && ioctl(s->fd, FIONREAD, &queued) == 0 && queued > 0)
		n += (size_t)queued;
	return n;
}

bool stream_wait_ready(struct stream *s, size_t n)
{
	size_t buffered = s->len - s->pos;
	int want, one = 1;

	if (stream_has_ready(s, n))
		return true;
	if (s->err || !s->lowat || n - buffered > INT_MAX)
		return false;
	want = (int)(n - buffered);
	if (setsockopt(s->fd, SOL_SOCKET, SO_RCVLOWAT, &want, sizeof(want)) < 0)
		return false;
	stream_wait(s, POLLIN, s->timeout_ms);
	/* Back to waking at any byte: the next read may be a short record. */
	if (setsockopt(s->fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one)) < 0)
		stream_fail(s, -errno, "SO_RCVLOWAT: %s", strerror(errno));
	return stream_has_ready(s, n);
}

int stream_wait_readable(struct stream *s, int timeout_ms)
{
	if (s->err)
		return s->err;
	if (s->pos < s->len)
		return 1;
	if (s->fd < 0)
		return stream_fail(s, -EPIPE, "stream truncated");
	{
		int saved = s->err, r;

		r = stream_wait(s, POLLIN, timeout_ms);
		if (r == -ETIMEDOUT) {
			s->err = saved; /* a quiet peer is not an error here */
			s->errmsg[0] = 0;
			return 0;
		}
		return r ? r : 1;
	}
}
