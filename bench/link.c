/* The link probes: bandwidth and round trip between two namespaces; see bench.h. */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "util/log.h"

#define BENCH_PROBE_IO_S      60             /* per read/write of the probe */
#define BENCH_PROBE_HOT_BYTES (1u << 20)
#define BENCH_PROBE_RAM_IO    (256u * 1024u) /* the VMM's send slice and fill */
#define BENCH_PROBE_RAM_MAX   (4ull << 30)
#define BENCH_PROBE_TRIES     3
#define BENCH_RTT_ROUNDS      200

struct bench_ns_socket {
	const char *ns;
	int fd;
	int err;
};

struct bench_probe_sender {
	int fd;
	struct sockaddr_in to;
	uint64_t bytes;
	uint8_t *ram;     /* NULL: one cache-hot 1 MiB buffer */
	uint64_t ram_bytes;
	int err;
};

struct bench_rtt_echo {
	int lfd;
	int err;
};

/* setns() changes the calling thread only: a short-lived thread makes it. */
static void *bench_ns_socket_thread(void *arg)
{
	struct bench_ns_socket *r = arg;
	char path[96];
	int nsfd;

	snprintf(path, sizeof(path), "/var/run/netns/%s", r->ns);
	nsfd = open(path, O_RDONLY | O_CLOEXEC);
	if (nsfd < 0 || setns(nsfd, CLONE_NEWNET) < 0) {
		r->err = -errno;
		if (nsfd >= 0)
			close(nsfd);
		return NULL;
	}
	close(nsfd);
	r->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	r->err = r->fd < 0 ? -errno : 0;
	return NULL;
}

int bench_socket_in(const char *ns)
{
	struct bench_ns_socket r = { .ns = ns, .fd = -1 };
	pthread_t th;
	int err;

	if (!ns) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

		return fd < 0 ? -errno : fd;
	}
	err = pthread_create(&th, NULL, bench_ns_socket_thread, &r);
	if (err)
		return -err;
	pthread_join(th, NULL);
	return r.err ? r.err : r.fd;
}

static void bench_sock_timeouts(int fd)
{
	struct timeval tv = { BENCH_PROBE_IO_S, 0 };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/*
 * Where the probe's next @len bytes go to or come from: the hot buffer
 * again and again, or a walk through the RAM-sized buffer.
 */
static uint8_t *bench_probe_at(uint8_t *hot, uint8_t *ram, uint64_t ram_bytes,
			       uint64_t done, size_t *len)
{
	uint64_t off;

	if (!ram)
		return hot;
	off = done % ram_bytes;
	if (*len > ram_bytes - off)
		*len = (size_t)(ram_bytes - off);
	return ram + off;
}

static void *bench_probe_send_thread(void *arg)
{
	struct bench_probe_sender *s = arg;
	size_t chunk = s->ram ? BENCH_PROBE_RAM_IO : BENCH_PROBE_HOT_BYTES;
	uint8_t *buf = s->ram ? NULL : malloc(chunk);
	uint64_t sent = 0;

	if (!s->ram && !buf) {
		s->err = -ENOMEM;
		return NULL;
	}
	if (buf)
		memset(buf, 0x5a, chunk);
	bench_sock_timeouts(s->fd);
	if (connect(s->fd, (struct sockaddr *)&s->to, sizeof(s->to)) < 0) {
		s->err = -errno;
		free(buf);
		return NULL;
	}
	while (sent < s->bytes) {
		size_t len = s->bytes - sent < chunk ? (size_t)(s->bytes - sent) : chunk;
		uint8_t *at = bench_probe_at(buf, s->ram, s->ram_bytes, sent, &len);
		ssize_t w = send(s->fd, at, len, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			s->err = w < 0 ? -errno : -EPIPE;
			break;
		}
		sent += (uint64_t)w;
	}
	shutdown(s->fd, SHUT_WR);
	free(buf);
	return NULL;
}

/*
 * RAM-sized buffers for a probe shaped like a migration's data path: guest
 * RAM is a memfd, written before it is sent, and the destination's is
 * preallocated.  Both are filled here, before any timing.  NULL on failure.
 */
static uint8_t *bench_probe_ram(uint64_t bytes, int fill)
{
	int fd = memfd_create("vmferry-bench-probe", MFD_CLOEXEC);
	uint8_t *p = MAP_FAILED;

	if (fd < 0)
		return NULL;
	if (ftruncate(fd, (off_t)bytes) == 0)
		p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return NULL;
	memset(p, fill, bytes);
	return p;
}

/*
 * One TCP stream of @bytes from namespace @src_ns to a listener on @addr in
 * @dst_ns (NULLs: ours), timed at the receiver from accept to the last byte.
 * @ram_out NULL: sent from and received into one cache-hot 1 MiB buffer
 * (the link at its best).  Otherwise from @ram_out into @ram_in, both of
 * @ram_bytes (bench_probe_ram), walked through in 256 KiB sends and
 * receives: the bytes moved from memory to memory, as a migration moves
 * them.
 * Bytes per second in *bps; 0 or -errno.
 */
static int bench_link_probe_once(const char *src_ns, const char *dst_ns, const char *addr,
				 uint64_t bytes, uint8_t *ram_out, uint8_t *ram_in,
				 uint64_t ram_bytes, double *bps)
{
	struct bench_probe_sender s = { .fd = -1, .bytes = bytes, .ram = ram_out,
					.ram_bytes = ram_bytes };
	size_t io = ram_out ? BENCH_PROBE_RAM_IO : BENCH_PROBE_HOT_BYTES;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);
	struct pollfd pfd;
	pthread_t th;
	bool started = false;
	uint64_t got = 0, t0 = 0, t1 = 0;
	char *buf = NULL;
	int lfd, cfd = -1, err;

	*bps = 0;
	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
		return -EINVAL;
	lfd = bench_socket_in(dst_ns);
	if (lfd < 0)
		return lfd;
	if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 1) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0) {
		err = -errno;
		goto out;
	}
	s.fd = bench_socket_in(src_ns);
	if (s.fd < 0) {
		err = s.fd;
		goto out;
	}
	s.to = sa;
	if (!ram_out && !(buf = malloc(io))) {
		err = -ENOMEM;
		goto out;
	}
	err = -pthread_create(&th, NULL, bench_probe_send_thread, &s);
	if (err)
		goto out;
	started = true;
	pfd = (struct pollfd){ .fd = lfd, .events = POLLIN };
	if (poll(&pfd, 1, BENCH_CONNECT_MS) != 1 || (cfd = accept(lfd, NULL, NULL)) < 0) {
		err = -ETIMEDOUT;
		shutdown(s.fd, SHUT_RDWR); /* unblocks a connect or send */
		goto out;
	}
	bench_sock_timeouts(cfd);
	t0 = clock_monotonic_ns();
	while (got < bytes) {
		size_t len = bytes - got < io ? (size_t)(bytes - got) : io;
		ssize_t r = recv(cfd, bench_probe_at((uint8_t *)buf, ram_in, s.ram_bytes, got, &len),
				 len, 0);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			err = r < 0 ? -errno : -EPIPE;
			shutdown(s.fd, SHUT_RDWR);
			goto out;
		}
		got += (uint64_t)r;
	}
	t1 = clock_monotonic_ns();
	*bps = (double)got * 1e9 / (double)(t1 - t0);
	err = 0;
out:
	if (started) {
		pthread_join(th, NULL);
		if (!err && s.err)
			err = s.err;
	}
	if (cfd >= 0)
		close(cfd);
	if (s.fd >= 0)
		close(s.fd);
	close(lfd);
	free(buf);
	return err;
}

int bench_link_bandwidth(const char *src_ns, const char *dst_ns, const char *addr,
			 uint64_t bytes, uint64_t ram_bytes, double *bps)
{
	double v[BENCH_PROBE_TRIES];
	uint8_t *out = NULL, *in = NULL;
	int err = 0;

	*bps = 0;
	if (ram_bytes) {
		ram_bytes = ram_bytes < BENCH_PROBE_RAM_MAX ? ram_bytes : BENCH_PROBE_RAM_MAX;
		out = bench_probe_ram(ram_bytes, 0x5a);
		in = bench_probe_ram(ram_bytes, 0);
		if (!out || !in)
			err = -ENOMEM;
	}
	for (int i = 0; i < BENCH_PROBE_TRIES && !err; i++) {
		err = bench_link_probe_once(src_ns, dst_ns, addr, bytes, out, in, ram_bytes, &v[i]);
		if (err)
			break;
		/* insertion sort as we go */
		for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
			double t = v[j];

			v[j] = v[j - 1];
			v[j - 1] = t;
		}
	}
	if (out)
		munmap(out, ram_bytes);
	if (in)
		munmap(in, ram_bytes);
	if (!err)
		*bps = v[BENCH_PROBE_TRIES / 2];
	return err;
}

static void *bench_rtt_echo_thread(void *arg)
{
	struct bench_rtt_echo *e = arg;
	struct pollfd pfd = { .fd = e->lfd, .events = POLLIN };
	int fd;
	char b;

	if (poll(&pfd, 1, BENCH_CONNECT_MS) != 1 || (fd = accept(e->lfd, NULL, NULL)) < 0) {
		e->err = -ETIMEDOUT;
		return NULL;
	}
	bench_sock_timeouts(fd);
	while (recv(fd, &b, 1, 0) == 1)
		if (send(fd, &b, 1, MSG_NOSIGNAL) != 1)
			break;
	close(fd);
	return NULL;
}

int bench_link_rtt(const char *src_ns, const char *dst_ns, const char *addr, double *us)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);
	struct bench_rtt_echo e = { .lfd = -1 };
	double v[BENCH_RTT_ROUNDS];
	pthread_t th;
	bool started = false;
	int fd = -1, one = 1, err = 0;

	*us = 0;
	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
		return -EINVAL;
	e.lfd = bench_socket_in(dst_ns);
	if (e.lfd < 0)
		return e.lfd;
	if (bind(e.lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(e.lfd, 1) < 0 ||
	    getsockname(e.lfd, (struct sockaddr *)&sa, &sl) < 0) {
		err = -errno;
		goto out;
	}
	fd = bench_socket_in(src_ns);
	if (fd < 0) {
		err = fd;
		goto out;
	}
	err = -pthread_create(&th, NULL, bench_rtt_echo_thread, &e);
	if (err)
		goto out;
	started = true;
	bench_sock_timeouts(fd);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		err = -errno;
		goto out;
	}
	for (int i = 0; i < BENCH_RTT_ROUNDS; i++) {
		struct timespec a, b;
		char c = 'p';

		clock_gettime(CLOCK_MONOTONIC, &a);
		if (send(fd, &c, 1, MSG_NOSIGNAL) != 1 || recv(fd, &c, 1, 0) != 1) {
			err = -EIO;
			goto out;
		}
		clock_gettime(CLOCK_MONOTONIC, &b);
		v[i] = (double)(b.tv_sec - a.tv_sec) * 1e6 + (double)(b.tv_nsec - a.tv_nsec) / 1e3;
	}
	qsort(v, BENCH_RTT_ROUNDS, sizeof(v[0]), bench_cmp_double);
	*us = v[BENCH_RTT_ROUNDS / 2];
out:
	if (fd >= 0)
		shutdown(fd, SHUT_RDWR); /* ends the echo thread's loop */
	if (started) {
		if (e.err == 0 && err)
			shutdown(e.lfd, SHUT_RDWR);
		pthread_join(th, NULL);
		if (!err)
			err = e.err;
	}
	if (fd >= 0)
		close(fd);
	close(e.lfd);
	return err;
}
