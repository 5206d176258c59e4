/*
 * bench/bench.h: what the migration benchmarks (bench/precopy,
 * bench/postcopy) share: child processes and their cleanup on exit and on
 * signals, two network namespaces joined by a shaped veth pair or by
 * bench/wire.h's user-space link (with a janitor that removes them if we
 * die unseen), the link bandwidth probe,
 * the VMMs and their control calls, the source's final figures, the check
 * of the destination, and JSON output with medians.
 *
 * Compiled once (bench/bench.c) into build/libbench.a with bench/wire.c;
 * every program in bench/ but these two links it.  A program's main() sets bench_prog (the prefix of messages) and bench_keep_env (the
 * variable that, when set, keeps the temporary directory and its VMM logs),
 * then calls bench_setup() before anything else here.  Everything runs on
 * the main thread, except the short-lived threads of the bandwidth probe
 * and of bench_socket_in().
 */
#ifndef VMFERRY_BENCH_BENCH_H
#define VMFERRY_BENCH_BENCH_H

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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
#include "util/proc.h"
#include "util/size.h"
#include "verify/verify.h"

#include "wire.h"

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

enum bench_transport { BENCH_LOOPBACK, BENCH_VETH, BENCH_WIRE, BENCH_TRANSPORT__COUNT };

/* Indexed by enum bench_transport: the name in the output, the one in --transports. */
extern const char *const bench_transport_names[BENCH_TRANSPORT__COUNT];
extern const char *const bench_transport_opts[BENCH_TRANSPORT__COUNT];


/* Two simulated hosts: namespaces ns[0] (source) and ns[1] (destination). */
struct bench_netns {
	char ns[2][32];
	char veth[2][16];
	char addr[2][16];
	char ip_path[32];
	const char *del_argv[2][5];
	volatile sig_atomic_t created[2];
	char shaper[8];          /* "netem", "tbf" or "wire" (bench/wire.h) */
	unsigned delay_us;       /* added per direction (netem or wire) */
	struct wire wire;        /* the user-space link, for BENCH_WIRE */
	pid_t janitor_pid;       /* > 0 while the janitor runs */
	int janitor_fd;          /* its pipe's write end, while janitor_pid > 0 */
};

/* One migration: the source's final query-migrate and the destination check. */
struct bench_result {
	bool completed, verified;
	char status[16];
	char error[256];
	char verify_error[256];
	double link_bps;                 /* bytes/s, 0 unknown */
	double ram_link_bps;             /* the same, memory to memory; 0 unknown */
	double link_rtt_us;              /* median round trip, idle link; 0 unknown */
	double total_ms, downtime_ms, setup_ms;
	uint64_t wire_bytes, normal_pages, zero_pages, passes;
	uint64_t expected_downtime_ms, downtime_limit_ms, throughput_bps, throttle_max;
	uint64_t dirty_pages_rate;
};


/* ---- the two simulated hosts ---- */

/*
 * Namespaces "vmfb-<pid>-a/b" with addresses 10.199.X.1 and 10.199.X.2, both
 * directions shaped to 1 Gbit/s.  BENCH_VETH: a veth pair under netem, each
 * direction delayed by @delay_us (tbf where netem is not built in, which
 * cannot delay: n->delay_us says what was applied).  BENCH_WIRE: TUN devices
 * joined by bench/wire.h's user-space link, rate and delay.  0 or -errno
 * with a message on stderr; partial state is removed.  bench_netns_finish()
 * when done with it.
 */
int bench_netns_create(struct bench_netns *n, enum bench_transport kind,
		       unsigned delay_us);

/* Stop the wire (if any) and delete the namespaces.  Not signal-safe. */
void bench_netns_finish(struct bench_netns *n);

/* ---- link bandwidth probe ---- */

/* A TCP socket that lives in namespace @ns (NULL: ours).  fd or -errno. */
int bench_socket_in(const char *ns);

/*
 * The link's bandwidth: the median of BENCH_PROBE_TRIES streams of @bytes
 * (bench_link_probe_once).  Single probes on these shared 2-core machines
 * ranged from 1.3 to 3.9 GB/s within minutes (other load slows one down;
 * sender and receiver sharing a core speeds one up), moving a run's bound 3x.
 * @ram_bytes 0: the cache-hot probe; else memory to memory through buffers
 * of that size (at most BENCH_PROBE_RAM_MAX), made once for the three.
 */
int bench_link_bandwidth(const char *src_ns, const char *dst_ns, const char *addr,
			 uint64_t bytes, uint64_t ram_bytes, double *bps);

/* ---- round-trip probe ---- */

/*
 * The link's round trip with nothing else on it: BENCH_RTT_ROUNDS one-byte
 * TCP ping-pongs from namespace @src_ns to @addr in @dst_ns (NULLs: ours),
 * median in *us.  0 or -errno.
 */
int bench_link_rtt(const char *src_ns, const char *dst_ns, const char *addr, double *us);

/*
 * What the signal handler must undo (bench.c): the VMMs' pids by slot, and
 * the temporary directory.  Written by the main thread only.
 */
extern volatile pid_t bench_children[2];
extern char bench_dir[64];

/* Set by main() before bench_setup(). */
extern const char *bench_prog;     /* prefix of our messages ("bench") */
extern const char *bench_keep_env; /* set in the environment: keep bench_dir */

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
 * ARGS...` with stdout and stderr into its log file (not connected yet: see
 * bench_vmm_connect).  0 or -errno with @r->error set.
 */
int bench_vmm_spawn(const char *bin, const struct bench_netns *n, int side,
		     const char *name, const char *const args[], struct bench_vmm *vm,
		     struct bench_result *r);

/* Connect to a spawned VMM's control socket, or notice its death.  0 or -errno. */
int bench_vmm_connect(struct bench_vmm *vm, const char *name, struct bench_result *r);

/* bench_vmm_spawn() and bench_vmm_connect(). */
int bench_vmm_start(const char *bin, const struct bench_netns *n, int side,
		     const char *name, const char *const args[], struct bench_vmm *vm,
		     struct bench_result *r);

/* quit (or kill), reap; the exit status, -ETIMEDOUT when it had to be killed. */
int bench_vmm_stop(struct bench_vmm *vm);

/* The last bytes of a VMM's log, to stderr. */
void bench_vmm_log_tail(const struct bench_vmm *vm, const char *name);

/* @cmd's "return" in *ret (caller owns; may be NULL).  0 or -errno with @r->error. */
int bench_call(struct bench_vmm *vm, const char *cmd, struct json_object *args,
	       struct json_object **ret, struct bench_result *r);

const char *json_str_at(struct json_object *o, const char *key);

double json_num_at(struct json_object *o, const char *key);

uint64_t json_u64_at(struct json_object *o, const char *key);

void bench_nap_ms(unsigned ms);

/*
 * query-workload: true in *running when every vCPU is in phase "running"
 * and has completed at least one pass over its memory; the sum of passes
 * and writes over the vCPUs in *progress.  0 or -errno.
 */
int bench_workload(struct bench_vmm *vm, bool *running, uint64_t *progress,
		   struct bench_result *r);

/*
 * The destination's listening URI with its real port.  Polled (bounded):
 * VMMs before 2318e44 answered on the control socket before binding.
 */
int bench_incoming_uri(struct bench_vmm *dst, char *uri, size_t len,
		       struct bench_result *r);

/* Poll until a final status, cancelling after --timeout; the final reply. */
int bench_wait_migration(uint64_t timeout_s, struct bench_vmm *src,
			 struct json_object **out, struct bench_result *r);

/*
 * After a completed migration: the destination runs, its workload moves on,
 * and its memory verifies.  Sets r->verified / r->verify_error.
 */
void bench_verify_destination(struct bench_vmm *dst, const char *workload,
			      struct bench_result *r);

void bench_copy_stats(struct json_object *q, struct bench_result *r);

/* ---- output ---- */

void json_add_num(struct json_object *o, const char *key, double v, int decimals);

void json_add_u64(struct json_object *o, const char *key, uint64_t v);

void bench_print(struct json_object *o);

int cmp_double(const void *a, const void *b);

double median(double *v, unsigned n);

/* Comma-separated names -> flags in @on (indexed like @names). */
int bench_parse_names(const char *text, const char *const *names, size_t nnames,
		      bool *on);

int bench_parse_sizes(const char *text, uint64_t *sizes, unsigned *nsizes);

/* ---- set-up ---- */

/*
 * The temporary directory /tmp/vmferry-<bench_prog>.XXXXXX (VMM sockets,
 * logs, memory dumps), and the cleanup at exit and on SIGINT, SIGTERM and
 * SIGHUP; SIGPIPE ignored.  Main thread, once.  0 or -errno (with a
 * message).
 */
int bench_setup(void);

#endif
