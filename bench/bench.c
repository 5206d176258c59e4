/* What the migration benchmarks share; see bench.h. */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "control/client.h"
#include "util/log.h"
#include "util/proc.h"
#include "util/size.h"
#include "verify/verify.h"

const char *const bench_transport_names[BENCH_TRANSPORT__COUNT] = { "loopback-tcp", "veth-1gbit", "wire-1gbit" };
const char *const bench_transport_opts[BENCH_TRANSPORT__COUNT] = { "loopback", "veth", "wire" };

/*
 * What the signal handler must undo.  File scope because a handler can reach
 * nothing else; written by the main thread only.
 */
volatile pid_t bench_children[2] = { -1, -1 };
static struct bench_netns *volatile bench_live_netns;
char bench_dir[64];
static const char *bench_rm_argv[4];

/* Set by main() before bench_setup(). */
const char *bench_prog = "bench";      /* prefix of our messages */
const char *bench_keep_env;            /* set in the environment: keep bench_dir */

/* The user-space wire's queue per band: 20 ms at the rate, as tbf's latency below. */
#define BENCH_WIRE_LIMIT_BYTES (BENCH_VETH_RATE_BPS / 8 / 50)

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

#define BENCH_PROBE_HOT_BYTES (1u << 20)
#define BENCH_PROBE_RAM_IO    (256u * 1024u) /* the VMM's send slice and fill */
#define BENCH_PROBE_RAM_MAX   (4ull << 30)

#define BENCH_PROBE_TRIES 3

#define BENCH_RTT_ROUNDS 200

struct bench_rtt_echo {
	int lfd;
	int err;
};

/* Run @argv (argv[0] a path), quietly; exit status or -errno.  Signal-safe. */
static int bench_cmd(const char *const argv[], bool quiet)
{
	return proc_run(argv, quiet, BENCH_CMD_TIMEOUT_MS);
}

/* Delete the namespaces (the veth goes with them).  Signal-safe, idempotent. */
static void bench_netns_destroy(struct bench_netns *n)
{
	for (int i = 0; i < 2; i++) {
		if (!n->created[i])
			continue;
		n->created[i] = 0;
		bench_cmd(n->del_argv[i], true);
	}
	if (n->janitor_pid > 0) {
		pid_t pid = n->janitor_pid;

		n->janitor_pid = 0;
		/* It retries the deletes. */
		proc_janitor_finish(n->janitor_fd, pid, 2 * BENCH_CMD_TIMEOUT_MS + 1000);
	}
}

/* The janitor (proc_janitor_start) deletes the namespaces if we die unseen. */
static void bench_janitor_start(struct bench_netns *n)
{
	const char *const *const cmds[2] = { n->del_argv[0], n->del_argv[1] };
	pid_t pid;
	int fd = proc_janitor_start(cmds, 2, BENCH_CMD_TIMEOUT_MS, &pid);

	if (fd < 0)
		return;
	n->janitor_fd = fd;
	n->janitor_pid = pid;
}

static void bench_cleanup(void)
{
	for (int i = 0; i < 2; i++) {
		pid_t pid = bench_children[i];

		if (pid > 0) {
			kill(pid, SIGKILL);
			proc_reap(pid, 1000);
			bench_children[i] = -1;
		}
	}
	if (bench_live_netns)
		bench_netns_destroy(bench_live_netns);
	if (bench_dir[0] && !(bench_keep_env && getenv(bench_keep_env))) {
		bench_cmd(bench_rm_argv, true);
		bench_dir[0] = '\0';
	}
}

static void bench_on_signal(int sig)
{
	bench_cleanup();
	signal(sig, SIG_DFL);
	raise(sig);
}

/* `ip ARGS... NULL`; 0 when it exits 0. */
static int bench_ip(const struct bench_netns *n, bool quiet, const char *first, ...)
{
	const char *argv[24];
	size_t k = 0;
	va_list ap;

	argv[k++] = n->ip_path;
	argv[k++] = first;
	va_start(ap, first);
	while (k < sizeof(argv) / sizeof(argv[0]) - 1 && (argv[k] = va_arg(ap, const char *)))
		k++;
	va_end(ap);
	argv[k] = NULL;
	return bench_cmd(argv, quiet) == 0 ? 0 : -EIO;
}

/* The veth pair, shaped with netem (rate and @delay_us) or tbf (rate only). */
static int bench_netns_veth(struct bench_netns *n, unsigned delay_us, char cidr[2][24])
{
	char rate[32], burst[32], delay[32];

	/* Both ends are born in their namespaces: nothing is left behind in ours. */
	if (bench_ip(n, false, "link", "add", n->veth[0], "netns", n->ns[0], "type", "veth",
		     "peer", "name", n->veth[1], "netns", n->ns[1], NULL) < 0)
		return -EIO;
	snprintf(rate, sizeof(rate), "%llubit", (unsigned long long)BENCH_VETH_RATE_BPS);
	/* tbf: a burst of 4 ms at the rate. */
	snprintf(burst, sizeof(burst), "%llub", (unsigned long long)(BENCH_VETH_RATE_BPS / 8 / 250));
	snprintf(delay, sizeof(delay), "%uus", delay_us);
	snprintf(n->shaper, sizeof(n->shaper), "netem");
	for (int i = 0; i < 2; i++) {
		if (bench_ip(n, false, "-n", n->ns[i], "addr", "add", cidr[i], "dev", n->veth[i], NULL) ||
		    bench_ip(n, false, "-n", n->ns[i], "link", "set", n->veth[i], "up", NULL))
			return -EIO;
		/* A NULL in place of "delay" ends the argument list there. */
		if (!strcmp(n->shaper, "netem") &&
		    bench_ip(n, true, "netns", "exec", n->ns[i], "tc", "qdisc", "replace", "dev",
			     n->veth[i], "root", "netem", "rate", rate, delay_us ? "delay" : NULL,
			     delay, NULL) == 0) {
			n->delay_us = delay_us;
			continue;
		}
		n->delay_us = 0;
		if (!strcmp(n->shaper, "netem") && i == 0)
			fprintf(stderr, "%s: netem is not available; shaping the veth with tbf%s\n",
				bench_prog, delay_us ? ", without the added delay" : "");
		snprintf(n->shaper, sizeof(n->shaper), "tbf");
		/*
		 * Under the rate limit, the queue a host's NIC has: pfifo_fast (this
		 * kernel's default qdisc; it has no fq or fq_codel), whose bands let
		 * low-delay packets pass the bulk stream's.  tbf alone queues in one
		 * FIFO, which no real host does.
		 */
		if (bench_ip(n, false, "netns", "exec", n->ns[i], "tc", "qdisc", "replace", "dev",
			     n->veth[i], "root", "handle", "1:", "tbf", "rate", rate, "burst", burst,
			     "latency", "20ms", NULL) < 0 ||
		    bench_ip(n, false, "netns", "exec", n->ns[i], "tc", "qdisc", "add", "dev",
			     n->veth[i], "parent", "1:1", "pfifo_fast", NULL) < 0)
			return -EIO;
	}
	return 0;
}

/* A TUN device in each namespace, point to point, joined by bench/wire.h. */
static int bench_netns_wire(struct bench_netns *n, unsigned delay_us)
{
	char mtu[16], peer[2][24], ns_path[2][64];
	const char *paths[2] = { ns_path[0], ns_path[1] };
	const char *names[2] = { n->veth[0], n->veth[1] };
	int r;

	snprintf(mtu, sizeof(mtu), "%u", WIRE_MTU);
	for (int i = 0; i < 2; i++) {
		snprintf(peer[i], sizeof(peer[i]), "%.15s/32", n->addr[1 - i]);
		snprintf(ns_path[i], sizeof(ns_path[i]), "/var/run/netns/%s", n->ns[i]);
		if (bench_ip(n, false, "-n", n->ns[i], "tuntap", "add", "dev", n->veth[i], "mode", "tun",
			     NULL) ||
		    bench_ip(n, false, "-n", n->ns[i], "addr", "add", n->addr[i], "peer", peer[i], "dev",
			     n->veth[i], NULL) ||
		    bench_ip(n, false, "-n", n->ns[i], "link", "set", n->veth[i], "mtu", mtu, "up", NULL))
			return -EIO;
	}
	r = wire_start(&n->wire, paths, names, BENCH_VETH_RATE_BPS, (uint64_t)delay_us * 1000,
		       BENCH_WIRE_LIMIT_BYTES);
	if (r) {
		fprintf(stderr, "%s: the user-space wire: %s\n", bench_prog, strerror(-r));
		return r;
	}
	snprintf(n->shaper, sizeof(n->shaper), "wire");
	n->delay_us = delay_us;
	return 0;
}

int bench_netns_create(struct bench_netns *n, enum bench_transport kind,
		       unsigned delay_us)
{
	static const char *const ip_paths[] = { "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip" };
	unsigned pid = (unsigned)getpid(), subnet = pid % 254 + 1;
	char cidr[2][24];

	memset(n, 0, sizeof(*n));
	for (int i = 0; i < 2; i++) {
		snprintf(n->ns[i], sizeof(n->ns[i]), "vmfb-%u-%c", pid, 'a' + i);
		snprintf(n->veth[i], sizeof(n->veth[i]), "vfb%c%u", 'a' + i, pid);
		snprintf(n->addr[i], sizeof(n->addr[i]), "10.199.%u.%d", subnet, i + 1);
		snprintf(cidr[i], sizeof(cidr[i]), "%.15s/24", n->addr[i]);
		n->del_argv[i][1] = "netns";
		n->del_argv[i][2] = "del";
		n->del_argv[i][3] = n->ns[i];
		n->del_argv[i][4] = NULL;
	}
	for (size_t i = 0; i < sizeof(ip_paths) / sizeof(ip_paths[0]) && !n->ip_path[0]; i++)
		if (access(ip_paths[i], X_OK) == 0)
			snprintf(n->ip_path, sizeof(n->ip_path), "%s", ip_paths[i]);
	if (!n->ip_path[0]) {
		fprintf(stderr, "%s: no ip binary (iproute2) found\n", bench_prog);
		return -ENOENT;
	}
	n->del_argv[0][0] = n->del_argv[1][0] = n->ip_path;
	bench_live_netns = n;
	bench_janitor_start(n);
	for (int i = 0; i < 2; i++) {
		if (bench_ip(n, false, "netns", "add", n->ns[i], NULL) < 0) {
			fprintf(stderr, "%s: ip netns add %s failed (root needed)\n", bench_prog, n->ns[i]);
			goto fail;
		}
		n->created[i] = 1;
		if (bench_ip(n, false, "-n", n->ns[i], "link", "set", "lo", "up", NULL))
			goto fail;
	}
	if ((kind == BENCH_WIRE ? bench_netns_wire(n, delay_us) : bench_netns_veth(n, delay_us, cidr)))
		goto fail;
	return 0;
fail:
	wire_stop(&n->wire);
	bench_netns_destroy(n);
	bench_live_netns = NULL;
	return -EIO;
}

void bench_netns_finish(struct bench_netns *n)
{
	wire_stop(&n->wire);
	bench_netns_destroy(n);
	if (bench_live_netns == n)
		bench_live_netns = NULL;
}

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

static int bench_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
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

int bench_vmm_spawn(const char *bin, const struct bench_netns *n, int side,
		     const char *name, const char *const args[], struct bench_vmm *vm,
		     struct bench_result *r)
{
	const char *argv[32];
	size_t k = 0;
	pid_t parent = getpid();
	int rc;

	vm->pid = -1;
	vm->c = NULL;
	snprintf(vm->sock, sizeof(vm->sock), "%s/%s.sock", bench_dir, name);
	snprintf(vm->log, sizeof(vm->log), "%s/%s.log", bench_dir, name);
	unlink(vm->sock);
	if (n) {
		argv[k++] = n->ip_path;
		argv[k++] = "netns";
		argv[k++] = "exec";
		argv[k++] = n->ns[side];
	}
	argv[k++] = bin;
	argv[k++] = "run";
	argv[k++] = "--control";
	argv[k++] = vm->sock;
	argv[k++] = "--console";
	argv[k++] = "/dev/null";
	for (size_t i = 0; args[i] && k < sizeof(argv) / sizeof(argv[0]) - 1; i++)
		argv[k++] = args[i];
	argv[k] = NULL;

	vm->pid = fork();
	if (vm->pid < 0) {
		rc = -errno;
		snprintf(r->error, sizeof(r->error), "fork: %s", strerror(-rc));
		return rc;
	}
	if (vm->pid == 0) {
		int null_fd = open("/dev/null", O_RDONLY), log_fd;

		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
			_exit(127);
		log_fd = open(vm->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (null_fd >= 0)
			dup2(null_fd, 0);
		if (log_fd >= 0) {
			dup2(log_fd, 1);
			dup2(log_fd, 2);
		}
		execv(argv[0], (char *const *)argv);
		fprintf(stderr, "%s: cannot exec %s: %s\n", bench_prog, argv[0], strerror(errno));
		_exit(127);
	}
	bench_children[vm->slot] = vm->pid;
	return 0;
}

int bench_vmm_connect(struct bench_vmm *vm, const char *name, struct bench_result *r)
{
	uint64_t deadline = clock_monotonic_ns() + BENCH_CONNECT_MS * 1000000ull;
	int rc = -ETIMEDOUT;

	while (clock_monotonic_ns() < deadline) {
		int raw;

		if (waitpid(vm->pid, &raw, WNOHANG) == vm->pid) {
			snprintf(r->error, sizeof(r->error), "%s VMM exited during start-up (status %d)",
				 name, proc_decode_status(raw));
			vm->pid = -1;
			bench_children[vm->slot] = -1;
			return -ECHILD;
		}
		rc = control_client_connect(vm->sock, 200, &vm->c);
		if (rc == 0)
			return 0;
		if (rc != -ENOENT && rc != -ECONNREFUSED && rc != -ETIMEDOUT)
			break;
	}
	snprintf(r->error, sizeof(r->error), "cannot connect to the %s VMM: %s", name, strerror(-rc));
	return rc;
}

int bench_vmm_start(const char *bin, const struct bench_netns *n, int side,
		     const char *name, const char *const args[], struct bench_vmm *vm,
		     struct bench_result *r)
{
	int rc = bench_vmm_spawn(bin, n, side, name, args, vm, r);

	return rc ? rc : bench_vmm_connect(vm, name, r);
}

int bench_vmm_stop(struct bench_vmm *vm)
{
	int rc = 0;

	if (vm->c) {
		control_client_set_timeout(vm->c, 5000);
		control_client_call(vm->c, "quit", NULL, NULL);
		control_client_close(vm->c);
		vm->c = NULL;
	}
	if (vm->pid > 0) {
		rc = proc_reap(vm->pid, 10000);
		vm->pid = -1;
		bench_children[vm->slot] = -1;
	}
	unlink(vm->sock);
	return rc;
}

void bench_vmm_log_tail(const struct bench_vmm *vm, const char *name)
{
	char buf[BENCH_LOG_TAIL_BYTES + 1];
	FILE *f = fopen(vm->log, "r");
	size_t len;

	if (!f)
		return;
	if (fseek(f, -(long)BENCH_LOG_TAIL_BYTES, SEEK_END) < 0)
		rewind(f);
	len = fread(buf, 1, BENCH_LOG_TAIL_BYTES, f);
	buf[len] = '\0';
	fclose(f);
	fprintf(stderr, "%s: --- %s VMM log (tail) ---\n%s", bench_prog, name, buf);
}

int bench_call(struct bench_vmm *vm, const char *cmd, struct json_object *args,
	       struct json_object **ret, struct bench_result *r)
{
	struct json_object *reply = NULL;
	int rc = control_client_call(vm->c, cmd, args, &reply);

	if (ret)
		*ret = NULL;
	if (rc == -EREMOTEIO)
		snprintf(r->error, sizeof(r->error), "%s: %s", cmd, control_reply_error_desc(reply));
	else if (rc)
		snprintf(r->error, sizeof(r->error), "%s: %s", cmd, strerror(-rc));
	else if (ret)
		*ret = json_object_get(control_reply_return(reply));
	json_object_put(reply);
	return rc;
}

const char *json_str_at(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : "";
}

double json_num_at(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_double(v) : 0;
}

uint64_t json_u64_at(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_uint64(v) : 0;
}

void bench_nap_ms(unsigned ms)
{
	struct timespec t = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&t, &t) < 0 && errno == EINTR)
		;
}

int bench_workload(struct bench_vmm *vm, bool *running, uint64_t *progress,
		   struct bench_result *r)
{
	struct json_object *w = NULL, *vcpus;
	int rc = bench_call(vm, "query-workload", NULL, &w, r);

	if (rc)
		return rc;
	*running = false;
	*progress = 0;
	if (json_object_object_get_ex(w, "vcpus", &vcpus) &&
	    json_object_is_type(vcpus, json_type_array) && json_object_array_length(vcpus) > 0) {
		*running = true;
		for (size_t i = 0; i < json_object_array_length(vcpus); i++) {
			struct json_object *v = json_object_array_get_idx(vcpus, i);

			*running &= !strcmp(json_str_at(v, "phase"), "running") &&
				    json_u64_at(v, "passes") >= 1;
			*progress += json_u64_at(v, "passes") + json_u64_at(v, "writes");
		}
	}
	json_object_put(w);
	return 0;
}

int bench_incoming_uri(struct bench_vmm *dst, char *uri, size_t len,
		       struct bench_result *r)
{
	uint64_t deadline = clock_monotonic_ns() + BENCH_CONNECT_MS * 1000000ull;

	while (clock_monotonic_ns() < deadline) {
		struct json_object *q = NULL;
		size_t ulen;

		if (bench_call(dst, "query-migrate", NULL, &q, r))
			return -EIO;
		snprintf(uri, len, "%s", json_str_at(q, "uri"));
		json_object_put(q);
		ulen = strlen(uri);
		if (ulen > 2 && strcmp(uri + ulen - 2, ":0"))
			return 0;
		bench_nap_ms(5);
	}
	snprintf(r->error, sizeof(r->error), "the destination did not start listening");
	return -ETIMEDOUT;
}

int bench_wait_migration(uint64_t timeout_s, struct bench_vmm *src,
			 struct json_object **out, struct bench_result *r)
{
	uint64_t start = clock_monotonic_ns(), limit_ns = timeout_s * 1000000000ull;
	bool cancelled = false;

	for (;;) {
		struct json_object *q = NULL;
		const char *st;

		if (bench_call(src, "query-migrate", NULL, &q, r))
			return -EIO;
		st = json_str_at(q, "status");
		if (!strcmp(st, "completed") || !strcmp(st, "failed") || !strcmp(st, "cancelled")) {
			*out = q;
			return 0;
		}
		json_object_put(q);
		if (!cancelled && clock_monotonic_ns() - start > limit_ns) {
			fprintf(stderr, "%s: migration still running after %llu s; cancelling\n",
				bench_prog, (unsigned long long)timeout_s);
			if (bench_call(src, "migrate-cancel", NULL, NULL, r))
				return -EIO;
			cancelled = true;
		}
		if (cancelled && clock_monotonic_ns() - start > limit_ns + 60000000000ull) {
			snprintf(r->error, sizeof(r->error), "migration did not stop after migrate-cancel");
			return -ETIMEDOUT;
		}
		bench_nap_ms(BENCH_POLL_MS);
	}
}

void bench_verify_destination(struct bench_vmm *dst, const char *workload,
			      struct bench_result *r)
{
	struct json_object *s = NULL, *args, *verdict = NULL;
	struct bench_result scratch = { 0 };
	char dump[160];
	uint64_t p0 = 0, p1 = 0, deadline;
	bool running = false, moved = false;
	int rc;

	if (bench_call(dst, "query-status", NULL, &s, &scratch)) {
		snprintf(r->verify_error, sizeof(r->verify_error), "%s", scratch.error);
		return;
	}
	if (strcmp(json_str_at(s, "status"), "running")) {
		snprintf(r->verify_error, sizeof(r->verify_error), "destination status %s",
			 json_str_at(s, "status"));
		json_object_put(s);
		return;
	}
	json_object_put(s);
	if (bench_workload(dst, &running, &p0, &scratch) || !running) {
		snprintf(r->verify_error, sizeof(r->verify_error), "destination workload not running%s%.200s",
			 scratch.error[0] ? ": " : "", scratch.error);
		return;
	}
	deadline = clock_monotonic_ns() + BENCH_PROGRESS_MS * 1000000ull;
	while (!moved && clock_monotonic_ns() < deadline) {
		bench_nap_ms(10);
		if (bench_workload(dst, &running, &p1, &scratch))
			break;
		moved = p1 > p0;
	}
	if (!moved) {
		snprintf(r->verify_error, sizeof(r->verify_error),
			 "destination guest made no progress in %d ms", BENCH_PROGRESS_MS);
		return;
	}
	snprintf(dump, sizeof(dump), "%s/dump", bench_dir);
	args = json_object_new_object();
	json_object_object_add(args, "file", json_object_new_string(dump));
	rc = bench_call(dst, "dump-guest-memory", args, NULL, &scratch);
	json_object_put(args);
	if (rc) {
		snprintf(r->verify_error, sizeof(r->verify_error), "%s", scratch.error);
		unlink(dump);
		return;
	}
	rc = verify_guest_file(dump, &verdict);
	unlink(dump);
	if (rc == 0)
		r->verified = true;
	else if (rc == -ENOTSUP)
		snprintf(r->verify_error, sizeof(r->verify_error),
			 "%s has no memory verifier (it runs and makes progress)", workload);
	else
		snprintf(r->verify_error, sizeof(r->verify_error), "memory broken: %s",
			 verdict ? json_object_to_json_string_ext(verdict, JSON_C_TO_STRING_PLAIN)
				 : strerror(-rc));
	json_object_put(verdict);
}

void bench_copy_stats(struct json_object *q, struct bench_result *r)
{
	snprintf(r->status, sizeof(r->status), "%s", json_str_at(q, "status"));
	r->completed = !strcmp(r->status, "completed");
	r->total_ms = json_num_at(q, "total-time");
	r->setup_ms = json_num_at(q, "setup-time");
	r->downtime_ms = json_object_object_get_ex(q, "downtime", NULL) ? json_num_at(q, "downtime") : -1;
	r->wire_bytes = json_u64_at(q, "transferred");
	r->normal_pages = json_u64_at(q, "normal-pages");
	r->zero_pages = json_u64_at(q, "zero-pages");
	r->passes = json_u64_at(q, "passes");
	r->expected_downtime_ms = json_u64_at(q, "expected-downtime");
	r->throughput_bps = json_u64_at(q, "throughput");
	r->throttle_max = json_u64_at(q, "cpu-throttle-max");
	r->dirty_pages_rate = json_u64_at(q, "dirty-pages-rate");
	if (!r->completed)
		snprintf(r->error, sizeof(r->error), "migration %s: %s", r->status,
			 json_str_at(q, "error-desc"));
}

void json_add_num(struct json_object *o, const char *key, double v, int decimals)
{
	char text[64];

	if (isnan(v) || isinf(v)) {
		json_object_object_add(o, key, NULL);
		return;
	}
	snprintf(text, sizeof(text), "%.*f", decimals, v);
	json_object_object_add(o, key, json_object_new_double_s(v, text));
}

void json_add_u64(struct json_object *o, const char *key, uint64_t v)
{
	json_object_object_add(o, key, json_object_new_uint64(v));
}

void bench_print(struct json_object *o)
{
	printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	fflush(stdout);
	json_object_put(o);
}

int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

double median(double *v, unsigned n)
{
	if (n == 0)
		return NAN;
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int bench_parse_names(const char *text, const char *const *names, size_t nnames,
		      bool *on)
{
	char *copy = strdup(text), *save = NULL;
	int rc = 0;

	if (!copy)
		return -ENOMEM;
	memset(on, 0, nnames * sizeof(*on));
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		size_t i;

		for (i = 0; i < nnames && strcmp(tok, names[i]); i++)
			;
		if (i == nnames) {
			fprintf(stderr, "%s: unknown name '%s'\n", bench_prog, tok);
			rc = -EINVAL;
			break;
		}
		on[i] = true;
	}
	free(copy);
	return rc;
}

int bench_parse_sizes(const char *text, uint64_t *sizes, unsigned *nsizes)
{
	char *copy = strdup(text), *save = NULL;
	int rc = 0;

	if (!copy)
		return -ENOMEM;
	*nsizes = 0;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (*nsizes == BENCH_MAX_SIZES || size_parse(tok, &sizes[*nsizes]) ||
		    sizes[*nsizes] < (16ull << 20) || sizes[*nsizes] % (1ull << 20)) {
			fprintf(stderr, "%s: bad size '%s' (whole MiB, at least 16M)\n", bench_prog, tok);
			rc = -EINVAL;
			break;
		}
		(*nsizes)++;
	}
	free(copy);
	return rc ? rc : *nsizes ? 0 : -EINVAL;
}

int bench_setup(void)
{
	snprintf(bench_dir, sizeof(bench_dir), "/tmp/vmferry-%.20s.XXXXXX", bench_prog);
	if (!mkdtemp(bench_dir)) {
		int err = -errno;

		fprintf(stderr, "%s: mkdtemp: %s\n", bench_prog, strerror(-err));
		bench_dir[0] = '\0';
		return err;
	}
	bench_rm_argv[0] = "/bin/rm";
	bench_rm_argv[1] = "-rf";
	bench_rm_argv[2] = bench_dir;
	bench_rm_argv[3] = NULL;
	atexit(bench_cleanup);
	signal(SIGINT, bench_on_signal);
	signal(SIGTERM, bench_on_signal);
	signal(SIGHUP, bench_on_signal);
	signal(SIGPIPE, SIG_IGN);
	return 0;
}
