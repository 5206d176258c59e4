/*
 * bench/precopy: precopy live migration, next to the link it runs over.
 *
 *   precopy [--mem SIZES] [--workloads LIST] [--transports LIST] [--runs N]
 *           [--vcpus N] [--downtime-limit MS] [--convergence-timeout S]
 *           [--auto-converge] [--timeout S] [--probe-bytes SIZE] [--quick]
 *
 *   --mem SIZES          guest RAM sizes, comma separated (default 256M,1G; 4G works)
 *   --workloads LIST     idle (idle,fill=1), moderate (dirtier,wss=64M,rate=5000),
 *                        heavy (dirtier,rate=0), incrementer
 *                        (default idle,moderate,heavy,incrementer)
 *   --transports LIST    loopback (TCP on 127.0.0.1: "loopback-tcp"), veth (two
 *                        network namespaces joined by a veth pair shaped to
 *                        1 Gbit/s: "veth-1gbit"; needs root)  (default loopback)
 *   --runs N             runs per combination (default 3)
 *   --vcpus N            guest vCPUs (default 2)
 *   --downtime-limit MS  migrate-set-parameters downtime-limit (default: the VMM's)
 *   --convergence-timeout S  give up on precopy after S s (default 30; 0 = never)
 *   --auto-converge      enable the auto-converge capability
 *   --timeout S          cancel a migration still running after S s (default 300)
 *   --probe-bytes SIZE   bytes of the link bandwidth probe (default 512M)
 *   --quick              smoke: 256M, loopback, 1 run (workloads as given)
 *
 * Per run: measure the link (one TCP stream of --probe-bytes between two
 * threads of this process, over the same path the migration takes, with no
 * VM running), start a destination `vmferry run --incoming`, start a source
 * with the workload and wait until every vCPU runs its loop and has been
 * once over its memory (query-workload: phase "running", passes >= 1; the
 * dirtier touches its pages for the first time slowly in a nested VM, and
 * a migration started earlier would send zero pages it is about to write),
 * migrate, poll
 * query-migrate, then check on the destination that the guest runs, makes
 * progress, and that its memory verifies (verify_guest_file; the idle guest
 * has no verifier: "verified" is false with "verify_error" saying so).
 *
 * Output, stdout: one JSON object per run ("type": "run"), then one per
 * combination with medians over its completed runs ("type": "median").  A
 * migration that fails still gets its line, with "error".  The VMMs' own
 * logs go to files in a temporary directory (their tail is copied to stderr
 * when a run fails).  Exit status: 0 (even when runs fail; see the JSON),
 * 1 when the benchmark itself cannot work, 2 usage, 77 without /dev/kvm.
 *
 * bound_ms = ram_sent_bytes / link bandwidth: the time the RAM payload needs
 * at the rate this run measured; ratio_total_to_bound = total_time_ms /
 * bound_ms.  Absolute times on shared machines are noisy; ratios measured in
 * the same run are what to compare.
 *
 * Cleanup: the VMMs die with this process (PDEATHSIG; `ip netns exec` execs
 * the VMM in place); the namespaces and the temporary directory are removed
 * at exit, on SIGINT/SIGTERM too (PRECOPY_KEEP=1 keeps the directory with
 * the VMM logs).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <math.h>

#include "control/client.h"
#include "util/log.h"
#include "util/size.h"
#include "verify/verify.h"

#define BENCH_MAX_SIZES        8
#define BENCH_MAX_RUNS         32
#define BENCH_PAGE_BYTES       4096ull
#define BENCH_VETH_RATE_BPS    1000000000ull   /* bits/s */
#define BENCH_CMD_TIMEOUT_MS   10000
#define BENCH_CONNECT_MS       10000
#define BENCH_READY_MS         60000           /* source vCPUs all "running" */
#define BENCH_PROGRESS_MS      5000            /* destination guest moves on */
#define BENCH_POLL_MS          20
#define BENCH_PROBE_IO_S       60              /* per read/write of the probe */
#define BENCH_LOG_TAIL_BYTES   2048

enum bench_transport { BENCH_LOOPBACK, BENCH_VETH, BENCH_TRANSPORT__COUNT };

static const char *const bench_transport_names[] = { "loopback-tcp", "veth-1gbit" };
static const char *const bench_transport_opts[] = { "loopback", "veth" };

static const struct bench_workload {
	const char *name;
	const char *spec;       /* --guest */
} bench_workloads[] = {
	/* Memory that holds data but is never written again: the bandwidth case. */
	{ "idle", "idle,fill=1" },
	/* 2 x 5000 pages/s = 41 MB/s: a third of a 1 Gbit link. */
	{ "moderate", "dirtier,wss=64M,rate=5000" },
	{ "heavy", "dirtier,rate=0" },
	{ "incrementer", "incrementer" },
};
#define BENCH_NWORKLOADS (sizeof(bench_workloads) / sizeof(bench_workloads[0]))

struct bench_opts {
	uint64_t mem_bytes[BENCH_MAX_SIZES];
	unsigned nmem;
	bool workload_on[BENCH_NWORKLOADS];
	bool transport_on[BENCH_TRANSPORT__COUNT];
	unsigned runs;
	unsigned vcpus;
	uint64_t downtime_limit_ms;      /* 0: leave the VMM's default */
	uint64_t convergence_timeout_s;
	bool auto_converge;
	uint64_t timeout_s;
	uint64_t probe_bytes;
	const char *bin;
};

/* Two simulated hosts: namespaces ns[0] (source) and ns[1] (destination). */
struct bench_netns {
	char ns[2][32];
	char veth[2][16];
	char addr[2][16];
	char ip_path[32];
	const char *del_argv[2][5];
	volatile sig_atomic_t created[2];
	char shaper[8];          /* "netem" or "tbf" */
	pid_t janitor_pid;       /* > 0 while the janitor runs */
	int janitor_fd;          /* its pipe's write end, while janitor_pid > 0 */
};

struct bench_result {
	bool completed, verified;
	char status[16];
	char error[256];
	char verify_error[256];
	double link_bps;                 /* bytes/s, 0 unknown */
	double total_ms, downtime_ms, setup_ms;
	uint64_t wire_bytes, normal_pages, zero_pages, passes;
	uint64_t expected_downtime_ms, downtime_limit_ms, throughput_bps, throttle_max;
	uint64_t dirty_pages_rate;
};

/*
 * What the signal handler must undo.  File scope because a handler can reach
 * nothing else; written by the main thread only.
 */
static volatile pid_t bench_children[2] = { -1, -1 };
static struct bench_netns *volatile bench_live_netns;
static char bench_dir[64];
static const char *bench_rm_argv[4];

/* ---- processes (the async-signal-safe part) ---- */

static int bench_decode_status(int raw)
{
	if (WIFEXITED(raw))
		return WEXITSTATUS(raw);
	if (WIFSIGNALED(raw))
		return 128 + WTERMSIG(raw);
	return -EINVAL;
}

/* Reap @pid within @timeout_ms, else SIGKILL it and reap.  Signal-safe. */
static int bench_reap(pid_t pid, int timeout_ms)
{
	struct timespec tick = { 0, 1000000L };
	int raw = 0;

	for (int waited_ms = 0;; waited_ms++) {
		pid_t r = waitpid(pid, &raw, WNOHANG);

		if (r == pid)
			return bench_decode_status(raw);
		if (r < 0 && errno != EINTR)
			return -errno;
		if (waited_ms >= timeout_ms)
			break;
		nanosleep(&tick, NULL);
	}
	kill(pid, SIGKILL);
	while (waitpid(pid, &raw, 0) < 0 && errno == EINTR)
		;
	return -ETIMEDOUT;
}

/* Run @argv (argv[0] a path), quietly; exit status or -errno.  Signal-safe. */
static int bench_cmd(const char *const argv[], bool quiet)
{
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		int null_fd = open("/dev/null", O_RDWR);

		if (null_fd >= 0) {
			dup2(null_fd, 0);
			dup2(null_fd, 1);
			if (quiet)
				dup2(null_fd, 2);
		}
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	return bench_reap(pid, BENCH_CMD_TIMEOUT_MS);
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
		close(n->janitor_fd);
		bench_reap(pid, 2 * BENCH_CMD_TIMEOUT_MS + 1000); /* it retries the deletes */
	}
}

/*
 * The janitor: a child in its own session (a terminal's Ctrl-C spares it)
 * that blocks on a pipe whose only write end we hold (close-on-exec: no VMM
 * inherits it) and deletes the namespaces when the read ends, i.e. when we
 * closed it or died in a way no handler sees (SIGKILL, a sanitizer abort).
 */
static void bench_janitor_start(struct bench_netns *n)
{
	int fds[2];
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC) < 0)
		return;
	pid = fork();
	if (pid < 0) {
		close(fds[0]);
		close(fds[1]);
		return;
	}
	if (pid == 0) {
		int null_fd = open("/dev/null", O_RDWR);
		char byte;

		close(fds[1]);
		setsid();
		signal(SIGINT, SIG_IGN);
		signal(SIGTERM, SIG_IGN);
		signal(SIGHUP, SIG_IGN);
		if (null_fd >= 0) {
			dup2(null_fd, 0);
			dup2(null_fd, 1);
			dup2(null_fd, 2);
		}
		while (read(fds[0], &byte, 1) < 0 && errno == EINTR)
			;
		for (int i = 0; i < 2; i++)
			bench_cmd(n->del_argv[i], true);
		_exit(0);
	}
	close(fds[0]);
	n->janitor_fd = fds[1];
	n->janitor_pid = pid;
}

static void bench_cleanup(void)
{
	for (int i = 0; i < 2; i++) {
		pid_t pid = bench_children[i];

		if (pid > 0) {
			kill(pid, SIGKILL);
			bench_reap(pid, 1000);
			bench_children[i] = -1;
		}
	}
	if (bench_live_netns)
		bench_netns_destroy(bench_live_netns);
	if (bench_dir[0] && !getenv("PRECOPY_KEEP")) {
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

/* ---- the two simulated hosts ---- */

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

/*
 * Namespaces "vmfb-<pid>-a/b", veth 10.199.X.1/24 <-> 10.199.X.2/24, both
 * directions shaped to 1 Gbit/s (netem; tbf where netem is not built in).
 * 0 or -errno with a message on stderr; partial state is removed.
 */
static int bench_netns_create(struct bench_netns *n)
{
	static const char *const ip_paths[] = { "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip" };
	unsigned pid = (unsigned)getpid(), subnet = pid % 254 + 1;
	char cidr[2][24], rate[32], burst[32];

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
		fprintf(stderr, "precopy: no ip binary (iproute2) found\n");
		return -ENOENT;
	}
	n->del_argv[0][0] = n->del_argv[1][0] = n->ip_path;
	bench_live_netns = n;
	bench_janitor_start(n);
	for (int i = 0; i < 2; i++) {
		if (bench_ip(n, false, "netns", "add", n->ns[i], NULL) < 0) {
			fprintf(stderr, "precopy: ip netns add %s failed (root needed)\n", n->ns[i]);
			goto fail;
		}
		n->created[i] = 1;
	}
	/* Both ends are born in their namespaces: nothing is left behind in ours. */
	if (bench_ip(n, false, "link", "add", n->veth[0], "netns", n->ns[0], "type", "veth",
		     "peer", "name", n->veth[1], "netns", n->ns[1], NULL) < 0)
		goto fail;
	snprintf(rate, sizeof(rate), "%llubit", (unsigned long long)BENCH_VETH_RATE_BPS);
	/* tbf: a burst of 4 ms at the rate. */
	snprintf(burst, sizeof(burst), "%llub", (unsigned long long)(BENCH_VETH_RATE_BPS / 8 / 250));
	snprintf(n->shaper, sizeof(n->shaper), "netem");
	for (int i = 0; i < 2; i++) {
		if (bench_ip(n, false, "-n", n->ns[i], "addr", "add", cidr[i], "dev", n->veth[i], NULL) ||
		    bench_ip(n, false, "-n", n->ns[i], "link", "set", "lo", "up", NULL) ||
		    bench_ip(n, false, "-n", n->ns[i], "link", "set", n->veth[i], "up", NULL))
			goto fail;
		if (!strcmp(n->shaper, "netem") &&
		    bench_ip(n, true, "netns", "exec", n->ns[i], "tc", "qdisc", "replace", "dev",
			     n->veth[i], "root", "netem", "rate", rate, NULL) == 0)
			continue;
		if (!strcmp(n->shaper, "netem") && i == 0)
			fprintf(stderr, "precopy: netem is not available; shaping the veth with tbf\n");
		snprintf(n->shaper, sizeof(n->shaper), "tbf");
		if (bench_ip(n, false, "netns", "exec", n->ns[i], "tc", "qdisc", "replace", "dev",
			     n->veth[i], "root", "tbf", "rate", rate, "burst", burst, "latency", "20ms",
			     NULL) < 0)
			goto fail;
	}
	return 0;
fail:
	bench_netns_destroy(n);
	bench_live_netns = NULL;
	return -EIO;
}

/* ---- link bandwidth probe ---- */

struct bench_ns_socket {
	const char *ns;
	int fd;
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

/* A TCP socket that lives in namespace @ns (NULL: ours).  fd or -errno. */
static int bench_socket_in(const char *ns)
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

struct bench_probe_sender {
	int fd;
	struct sockaddr_in to;
	uint64_t bytes;
	int err;
};

static void *bench_probe_send_thread(void *arg)
{
	struct bench_probe_sender *s = arg;
	static const size_t chunk = 1u << 20;
	char *buf = malloc(chunk);
	uint64_t sent = 0;

	if (!buf) {
		s->err = -ENOMEM;
		return NULL;
	}
	memset(buf, 0x5a, chunk);
	bench_sock_timeouts(s->fd);
	if (connect(s->fd, (struct sockaddr *)&s->to, sizeof(s->to)) < 0) {
		s->err = -errno;
		free(buf);
		return NULL;
	}
	while (sent < s->bytes) {
		size_t len = s->bytes - sent < chunk ? (size_t)(s->bytes - sent) : chunk;
		ssize_t w = send(s->fd, buf, len, MSG_NOSIGNAL);

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
 * One TCP stream of @bytes from namespace @src_ns to a listener on @addr in
 * @dst_ns (NULLs: ours), timed at the receiver from accept to the last byte.
 * Bytes per second in *bps; 0 or -errno.
 */
static int bench_link_bandwidth(const char *src_ns, const char *dst_ns, const char *addr,
				uint64_t bytes, double *bps)
{
	struct bench_probe_sender s = { .fd = -1, .bytes = bytes };
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
	buf = malloc(1u << 20);
	if (!buf) {
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
		ssize_t r = recv(cfd, buf, 1u << 20, 0);

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

/* ---- the VMMs ---- */

struct bench_vmm {
	pid_t pid;                   /* -1 when none */
	int slot;                    /* index in bench_children */
	char sock[128];
	char log[128];
	struct control_client *c;
};

/*
 * Start `[ip netns exec NS] vmferry run --control SOCK --console /dev/null
 * ARGS...` with stdout and stderr into its log file, and connect.  0 or
 * -errno with @r->error set.
 */
static int bench_vmm_start(const struct bench_opts *o, const struct bench_netns *n, int side,
			   const char *name, const char *const args[], struct bench_vmm *vm,
			   struct bench_result *r)
{
	const char *argv[32];
	size_t k = 0;
	pid_t parent = getpid();
	uint64_t deadline;
	int rc = -ETIMEDOUT;

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
	argv[k++] = o->bin;
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
		fprintf(stderr, "precopy: cannot exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	bench_children[vm->slot] = vm->pid;
	deadline = clock_monotonic_ns() + BENCH_CONNECT_MS * 1000000ull;
	while (clock_monotonic_ns() < deadline) {
		int raw;

		if (waitpid(vm->pid, &raw, WNOHANG) == vm->pid) {
			snprintf(r->error, sizeof(r->error), "%s VMM exited during start-up (status %d)",
				 name, bench_decode_status(raw));
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

/* quit (or kill), reap; the exit status, -ETIMEDOUT when it had to be killed. */
static int bench_vmm_stop(struct bench_vmm *vm)
{
	int rc = 0;

	if (vm->c) {
		control_client_set_timeout(vm->c, 5000);
		control_client_call(vm->c, "quit", NULL, NULL);
		control_client_close(vm->c);
		vm->c = NULL;
	}
	if (vm->pid > 0) {
		rc = bench_reap(vm->pid, 10000);
		vm->pid = -1;
		bench_children[vm->slot] = -1;
	}
	unlink(vm->sock);
	return rc;
}

/* The last bytes of a VMM's log, to stderr. */
static void bench_vmm_log_tail(const struct bench_vmm *vm, const char *name)
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
	fprintf(stderr, "precopy: --- %s VMM log (tail) ---\n%s", name, buf);
}

/* @cmd's "return" in *ret (caller owns; may be NULL).  0 or -errno with @r->error. */
static int bench_call(struct bench_vmm *vm, const char *cmd, struct json_object *args,
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

static const char *json_str_at(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : "";
}

static double json_num_at(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_double(v) : 0;
}

static uint64_t json_u64_at(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_uint64(v) : 0;
}

static void bench_nap_ms(unsigned ms)
{
	struct timespec t = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&t, &t) < 0 && errno == EINTR)
		;
}

/*
 * query-workload: true in *running when every vCPU is in phase "running"
 * and has completed at least one pass over its memory; the sum of passes
 * and writes over the vCPUs in *progress.  0 or -errno.
 */
static int bench_workload(struct bench_vmm *vm, bool *running, uint64_t *progress,
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

/*
 * The destination's listening URI with its real port.  Polled (bounded):
 * VMMs before 2318e44 answered on the control socket before binding.
 */
static int bench_incoming_uri(struct bench_vmm *dst, char *uri, size_t len, struct bench_result *r)
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

/* Set parameters and capabilities from the options. */
static int bench_set_params(const struct bench_opts *o, struct bench_vmm *src,
			    struct bench_result *r)
{
	struct json_object *p = json_object_new_object(), *q = NULL;
	int rc;

	if (o->downtime_limit_ms)
		json_object_object_add(p, "downtime-limit", json_object_new_int64((int64_t)o->downtime_limit_ms));
	json_object_object_add(p, "convergence-timeout",
			       json_object_new_int64((int64_t)o->convergence_timeout_s));
	rc = bench_call(src, "migrate-set-parameters", p, NULL, r);
	json_object_put(p);
	if (rc)
		return rc;
	if (o->auto_converge) {
		p = json_tokener_parse("{\"capabilities\": [{\"capability\": \"auto-converge\", "
				       "\"state\": true}]}");
		rc = bench_call(src, "migrate-set-capabilities", p, NULL, r);
		json_object_put(p);
		if (rc)
			return rc;
	}
	rc = bench_call(src, "query-migrate-parameters", NULL, &q, r);
	if (rc == 0)
		r->downtime_limit_ms = json_u64_at(q, "downtime-limit");
	json_object_put(q);
	return rc;
}

/* Poll until a final status, cancelling after --timeout; the final reply. */
static int bench_wait_migration(const struct bench_opts *o, struct bench_vmm *src,
				struct json_object **out, struct bench_result *r)
{
	uint64_t start = clock_monotonic_ns(), limit_ns = o->timeout_s * 1000000000ull;
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
			fprintf(stderr, "precopy: migration still running after %llu s; cancelling\n",
				(unsigned long long)o->timeout_s);
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

/*
 * After a completed migration: the destination runs, its workload moves on,
 * and its memory verifies.  Sets r->verified / r->verify_error.
 */
static void bench_verify_destination(struct bench_vmm *dst, const char *workload,
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

static void bench_copy_stats(struct json_object *q, struct bench_result *r)
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

/* One migration; the result in *r (r->error set when it did not complete). */
static void bench_one(const struct bench_opts *o, enum bench_transport t, struct bench_netns *n,
		      uint64_t mem_bytes, const struct bench_workload *w, struct bench_result *r)
{
	struct bench_vmm src = { .pid = -1, .slot = 0 }, dst = { .pid = -1, .slot = 1 };
	char mem[32], vcpus[16], listen_uri[64], uri[96];
	const char *dst_args[] = { "--mem", mem, "--vcpus", vcpus, "--incoming", listen_uri, NULL };
	const char *src_args[] = { "--mem", mem, "--vcpus", vcpus, "--guest", w->spec, NULL };
	const char *host_addr = t == BENCH_VETH ? n->addr[1] : "127.0.0.1";
	struct bench_netns *ns = t == BENCH_VETH ? n : NULL;
	struct json_object *args, *q = NULL;
	uint64_t deadline, progress;
	bool running = false;
	int rc;

	memset(r, 0, sizeof(*r));
	r->downtime_ms = -1;
	snprintf(mem, sizeof(mem), "%lluM", (unsigned long long)(mem_bytes >> 20));
	snprintf(vcpus, sizeof(vcpus), "%u", o->vcpus);
	snprintf(listen_uri, sizeof(listen_uri), "tcp:%s:0", host_addr);

	/* The link first, with no VM competing for the CPUs. */
	rc = bench_link_bandwidth(ns ? ns->ns[0] : NULL, ns ? ns->ns[1] : NULL, host_addr,
				  o->probe_bytes, &r->link_bps);
	if (rc) {
		snprintf(r->error, sizeof(r->error), "link bandwidth probe: %s", strerror(-rc));
		return;
	}
	if (bench_vmm_start(o, ns, 1, "dst", dst_args, &dst, r) ||
	    bench_incoming_uri(&dst, uri, sizeof(uri), r) ||
	    bench_vmm_start(o, ns, 0, "src", src_args, &src, r))
		goto out;
	deadline = clock_monotonic_ns() + BENCH_READY_MS * 1000000ull;
	while (!running && clock_monotonic_ns() < deadline) {
		if (bench_workload(&src, &running, &progress, r))
			goto out;
		if (!running)
			bench_nap_ms(10);
	}
	if (!running) {
		snprintf(r->error, sizeof(r->error), "source guest not running after %d ms",
			 BENCH_READY_MS);
		goto out;
	}
	if (bench_set_params(o, &src, r))
		goto out;
	args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string(uri));
	rc = bench_call(&src, "migrate", args, NULL, r);
	json_object_put(args);
	if (rc || bench_wait_migration(o, &src, &q, r))
		goto out;
	bench_copy_stats(q, r);
	json_object_put(q);
	if (r->completed)
		bench_verify_destination(&dst, w->name, r);
out:
	if (r->error[0]) {
		bench_vmm_log_tail(&src, "source");
		bench_vmm_log_tail(&dst, "destination");
	}
	bench_vmm_stop(&src);
	bench_vmm_stop(&dst);
	unlink(src.log);
	unlink(dst.log);
}

/* ---- output ---- */

static void json_add_num(struct json_object *o, const char *key, double v, int decimals)
{
	char text[64];

	if (isnan(v) || isinf(v)) {
		json_object_object_add(o, key, NULL);
		return;
	}
	snprintf(text, sizeof(text), "%.*f", decimals, v);
	json_object_object_add(o, key, json_object_new_double_s(v, text));
}

static void json_add_u64(struct json_object *o, const char *key, uint64_t v)
{
	json_object_object_add(o, key, json_object_new_uint64(v));
}

/* Fields derived from the measured link; shared by run and median lines. */
static double bench_bound_ms(const struct bench_result *r)
{
	return r->link_bps > 0 ? (double)r->normal_pages * BENCH_PAGE_BYTES / r->link_bps * 1000.0 : 0;
}

static struct json_object *bench_line(const char *type, enum bench_transport t,
				      const struct bench_netns *n, uint64_t mem_bytes,
				      const struct bench_workload *w, unsigned vcpus)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "bench", json_object_new_string("precopy"));
	json_object_object_add(o, "type", json_object_new_string(type));
	json_object_object_add(o, "mode", json_object_new_string("precopy"));
	json_object_object_add(o, "transport", json_object_new_string(bench_transport_names[t]));
	if (t == BENCH_VETH && n && n->shaper[0])
		json_object_object_add(o, "shaper", json_object_new_string(n->shaper));
	json_object_object_add(o, "workload", json_object_new_string(w->name));
	json_object_object_add(o, "guest", json_object_new_string(w->spec));
	json_add_u64(o, "guest_ram_bytes", mem_bytes);
	json_add_u64(o, "vcpus", vcpus);
	return o;
}

static void bench_print(struct json_object *o)
{
	printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	fflush(stdout);
	json_object_put(o);
}

static void bench_print_run(enum bench_transport t, const struct bench_netns *n,
			    uint64_t mem_bytes, const struct bench_workload *w, unsigned vcpus,
			    unsigned run, const struct bench_result *r)
{
	struct json_object *o = bench_line("run", t, n, mem_bytes, w, vcpus);
	double bound = bench_bound_ms(r);

	json_add_u64(o, "run", run);
	json_object_object_add(o, "status", json_object_new_string(r->status[0] ? r->status : "error"));
	if (r->status[0]) {
		json_add_num(o, "total_time_ms", r->total_ms, 3);
		json_add_num(o, "downtime_ms", r->downtime_ms >= 0 ? r->downtime_ms : NAN, 3);
		json_add_num(o, "setup_time_ms", r->setup_ms, 3);
		json_add_u64(o, "downtime_limit_ms", r->downtime_limit_ms);
		json_add_u64(o, "expected_downtime_ms", r->expected_downtime_ms);
		json_add_u64(o, "bytes_on_wire", r->wire_bytes);
		json_add_u64(o, "pages_sent", r->normal_pages + r->zero_pages);
		json_add_u64(o, "normal_pages", r->normal_pages);
		json_add_u64(o, "zero_pages", r->zero_pages);
		json_add_u64(o, "passes", r->passes);
		json_add_u64(o, "ram_sent_bytes", r->normal_pages * BENCH_PAGE_BYTES);
	}
	json_add_num(o, "link_bandwidth_bytes_per_s", r->link_bps, 0);
	if (r->status[0]) {
		json_add_num(o, "bound_ms", bound, 3);
		json_add_num(o, "ratio_total_to_bound", bound > 0 ? r->total_ms / bound : NAN, 3);
		json_add_num(o, "wire_bytes_per_s",
			     r->total_ms > 0 ? (double)r->wire_bytes / r->total_ms * 1000.0 : 0, 0);
		json_add_u64(o, "engine_throughput_bytes_per_s", r->throughput_bps);
		json_add_u64(o, "dirty_pages_rate", r->dirty_pages_rate);
		json_add_u64(o, "cpu_throttle_max", r->throttle_max);
	}
	json_object_object_add(o, "verified", json_object_new_boolean(r->verified));
	if (r->completed && !r->verified)
		json_object_object_add(o, "verify_error", json_object_new_string(r->verify_error));
	if (r->error[0])
		json_object_object_add(o, "error", json_object_new_string(r->error));
	bench_print(o);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double median(double *v, unsigned n)
{
	if (n == 0)
		return NAN;
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void bench_print_median(enum bench_transport t, const struct bench_netns *n,
			       uint64_t mem_bytes, const struct bench_workload *w, unsigned vcpus,
			       const struct bench_result *rs, unsigned nruns)
{
	struct json_object *o = bench_line("median", t, n, mem_bytes, w, vcpus);
	double v[BENCH_MAX_RUNS];
	unsigned ok = 0, verified = 0, k;

	for (unsigned i = 0; i < nruns; i++) {
		ok += rs[i].completed;
		verified += rs[i].verified;
	}
	json_add_u64(o, "runs", nruns);
	json_add_u64(o, "completed", ok);
	json_add_u64(o, "verified_runs", verified);
#define MEDIAN_FIELD(key, expr, decimals) do { \
		k = 0; \
		for (unsigned i = 0; i < nruns; i++) \
			if (rs[i].completed) { \
				const struct bench_result *r = &rs[i]; \
				v[k++] = (expr); \
			} \
		json_add_num(o, key, median(v, k), decimals); \
	} while (0)
	MEDIAN_FIELD("total_time_ms", r->total_ms, 3);
	MEDIAN_FIELD("downtime_ms", r->downtime_ms, 3);
	MEDIAN_FIELD("setup_time_ms", r->setup_ms, 3);
	MEDIAN_FIELD("bytes_on_wire", (double)r->wire_bytes, 0);
	MEDIAN_FIELD("normal_pages", (double)r->normal_pages, 0);
	MEDIAN_FIELD("zero_pages", (double)r->zero_pages, 0);
	MEDIAN_FIELD("passes", (double)r->passes, 1);
	MEDIAN_FIELD("ram_sent_bytes", (double)(r->normal_pages * BENCH_PAGE_BYTES), 0);
	MEDIAN_FIELD("link_bandwidth_bytes_per_s", r->link_bps, 0);
	MEDIAN_FIELD("bound_ms", bench_bound_ms(r), 3);
	MEDIAN_FIELD("ratio_total_to_bound", r->total_ms / bench_bound_ms(r), 3);
	MEDIAN_FIELD("wire_bytes_per_s", (double)r->wire_bytes / r->total_ms * 1000.0, 0);
#undef MEDIAN_FIELD
	bench_print(o);
}

/* ---- options ---- */

static void bench_usage(FILE *f)
{
	fprintf(f,
		"usage: precopy [--mem SIZES] [--workloads LIST] [--transports LIST] [--runs N]\n"
		"               [--vcpus N] [--downtime-limit MS] [--convergence-timeout S]\n"
		"               [--auto-converge] [--timeout S] [--probe-bytes SIZE] [--quick]\n"
		"  SIZES: comma separated, e.g. 256M,1G (default)\n"
		"  workloads: idle, moderate, heavy, incrementer (default: all)\n"
		"  transports: loopback, veth (default loopback)\n");
}

/* Comma-separated names -> flags in @on (indexed like @names). */
static int bench_parse_names(const char *text, const char *const *names, size_t nnames, bool *on)
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
			fprintf(stderr, "precopy: unknown name '%s'\n", tok);
			rc = -EINVAL;
			break;
		}
		on[i] = true;
	}
	free(copy);
	return rc;
}

static int bench_parse_sizes(const char *text, struct bench_opts *o)
{
	char *copy = strdup(text), *save = NULL;
	int rc = 0;

	if (!copy)
		return -ENOMEM;
	o->nmem = 0;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (o->nmem == BENCH_MAX_SIZES || size_parse(tok, &o->mem_bytes[o->nmem]) ||
		    o->mem_bytes[o->nmem] < (16ull << 20) || o->mem_bytes[o->nmem] % (1ull << 20)) {
			fprintf(stderr, "precopy: bad size '%s' (whole MiB, at least 16M)\n", tok);
			rc = -EINVAL;
			break;
		}
		o->nmem++;
	}
	free(copy);
	return rc ? rc : o->nmem ? 0 : -EINVAL;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mem", required_argument, NULL, 'm' },
		{ "workloads", required_argument, NULL, 'w' },
		{ "transports", required_argument, NULL, 't' },
		{ "runs", required_argument, NULL, 'r' },
		{ "vcpus", required_argument, NULL, 'c' },
		{ "downtime-limit", required_argument, NULL, 'd' },
		{ "convergence-timeout", required_argument, NULL, 'C' },
		{ "auto-converge", no_argument, NULL, 'a' },
		{ "timeout", required_argument, NULL, 'T' },
		{ "probe-bytes", required_argument, NULL, 'p' },
		{ "quick", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *workload_names[BENCH_NWORKLOADS];
	struct bench_opts o = {
		.mem_bytes = { 256ull << 20, 1ull << 30 }, .nmem = 2, .runs = 3, .vcpus = 2,
		.convergence_timeout_s = 30, .timeout_s = 300, .probe_bytes = 512ull << 20,
		.transport_on = { [BENCH_LOOPBACK] = true },
	};
	/* Static: the atexit handler reaches it after main() has returned. */
	static struct bench_netns netns;
	bool quick = false, netns_tried = false, netns_ok = false;
	struct bench_result *results;
	uint64_t v;
	int opt;

	for (size_t i = 0; i < BENCH_NWORKLOADS; i++) {
		workload_names[i] = bench_workloads[i].name;
		o.workload_on[i] = true;
	}
	o.bin = getenv("VMFERRY_BIN") && *getenv("VMFERRY_BIN") ? getenv("VMFERRY_BIN") : "build/vmferry";
	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 'm':
			if (bench_parse_sizes(optarg, &o))
				goto usage;
			break;
		case 'w':
			if (bench_parse_names(optarg, workload_names, BENCH_NWORKLOADS, o.workload_on))
				goto usage;
			break;
		case 't':
			if (bench_parse_names(optarg, bench_transport_opts, BENCH_TRANSPORT__COUNT,
					      o.transport_on))
				goto usage;
			break;
		case 'r':
			if (size_parse_uint(optarg, 1, BENCH_MAX_RUNS, &v))
				goto usage;
			o.runs = (unsigned)v;
			break;
		case 'c':
			if (size_parse_uint(optarg, 1, 64, &v))
				goto usage;
			o.vcpus = (unsigned)v;
			break;
		case 'd':
			if (size_parse_uint(optarg, 1, 2000000, &o.downtime_limit_ms))
				goto usage;
			break;
		case 'C':
			if (size_parse_uint(optarg, 0, 86400, &o.convergence_timeout_s))
				goto usage;
			break;
		case 'a':
			o.auto_converge = true;
			break;
		case 'T':
			if (size_parse_uint(optarg, 1, 86400, &o.timeout_s))
				goto usage;
			break;
		case 'p':
			if (size_parse(optarg, &o.probe_bytes) || o.probe_bytes < (1u << 20))
				goto usage;
			break;
		case 'q':
			quick = true;
			break;
		case 'h':
			bench_usage(stdout);
			return 0;
		default:
			goto usage;
		}
	}
	if (optind != argc)
		goto usage;
	if (quick) {
		o.mem_bytes[0] = 256ull << 20;
		o.nmem = 1;
		o.runs = 1;
		o.transport_on[BENCH_LOOPBACK] = true;
		o.transport_on[BENCH_VETH] = false;
	}
	if (access("/dev/kvm", R_OK | W_OK) != 0) {
		fprintf(stderr, "precopy: /dev/kvm not available: %s\n", strerror(errno));
		return 77;
	}
	snprintf(bench_dir, sizeof(bench_dir), "/tmp/vmferry-precopy.XXXXXX");
	if (!mkdtemp(bench_dir)) {
		perror("precopy: mkdtemp");
		return 1;
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
	memset(&netns, 0, sizeof(netns));

	results = calloc((size_t)BENCH_TRANSPORT__COUNT * o.nmem * BENCH_NWORKLOADS * o.runs,
			 sizeof(*results));
	if (!results) {
		perror("precopy");
		return 1;
	}
#define RESULT(t, m, w, i) (&results[(((size_t)(t) * o.nmem + (m)) * BENCH_NWORKLOADS + (w)) * o.runs + (i)])
	for (int t = 0; t < BENCH_TRANSPORT__COUNT; t++) {
		if (!o.transport_on[t])
			continue;
		if (t == BENCH_VETH && !netns_tried) {
			netns_tried = true;
			netns_ok = bench_netns_create(&netns) == 0;
		}
		for (unsigned m = 0; m < o.nmem; m++) {
			for (size_t w = 0; w < BENCH_NWORKLOADS; w++) {
				if (!o.workload_on[w])
					continue;
				for (unsigned i = 0; i < o.runs; i++) {
					struct bench_result *r = RESULT(t, m, w, i);

					if (t == BENCH_VETH && !netns_ok) {
						memset(r, 0, sizeof(*r));
						snprintf(r->error, sizeof(r->error),
							 "cannot create the network namespaces");
					} else {
						bench_one(&o, (enum bench_transport)t, &netns,
							  o.mem_bytes[m], &bench_workloads[w], r);
					}
					bench_print_run((enum bench_transport)t, &netns, o.mem_bytes[m],
							&bench_workloads[w], o.vcpus, i, r);
				}
			}
		}
	}
	for (int t = 0; t < BENCH_TRANSPORT__COUNT; t++)
		for (unsigned m = 0; o.transport_on[t] && m < o.nmem; m++)
			for (size_t w = 0; w < BENCH_NWORKLOADS; w++)
				if (o.workload_on[w])
					bench_print_median((enum bench_transport)t, &netns, o.mem_bytes[m],
							   &bench_workloads[w], o.vcpus,
							   RESULT(t, m, w, 0), o.runs);
#undef RESULT
	free(results);
	return 0;
usage:
	bench_usage(stderr);
	return 2;
}
