/*
 * bench/bench.h: what the benchmarks share on top of the VMM harness
 * (harness/harness.h: the temporary directory, the VMMs, their control
 * calls, the namespaces and the cleanup at exit and on signals): the
 * transports, the link probes (bench/link.c), the VMMs' errors into a run's
 * result, the source's final figures, the check of the destination, JSON
 * output with medians, and the options every benchmark takes.
 *
 * Compiled once with bench/wire.c into build/libbench.a; every other .c
 * file in bench/ is a program that links it.  A program's main() calls
 * harness_init(NAME, NAME_KEEP, false) first (errors go into the JSON, not
 * to stderr) and harness_cleanup_on_exit() before it starts anything.
 * Everything runs on the main thread, except the short-lived threads of the
 * link probes and of bench_socket_in().
 */
#ifndef VMFERRY_BENCH_BENCH_H
#define VMFERRY_BENCH_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "harness/harness.h"
#include "wire.h"

struct json_object;

#define BENCH_MAX_SIZES        8
#define BENCH_MAX_RUNS         32
#define BENCH_PAGE_BYTES       4096ull
#define BENCH_VETH_RATE_BPS    1000000000ull   /* bits/s */
#define BENCH_CONNECT_MS       10000
#define BENCH_READY_MS         60000           /* source vCPUs all "running" */
/*
 * ... for a guest of @mem_bytes: BENCH_READY_MS and 15 s per GiB (a first
 * pass over a large working set on a loaded nested host).
 */
#define BENCH_READY_MS_FOR(mem_bytes) (BENCH_READY_MS + 15000 * (int)((mem_bytes) >> 30))
#define BENCH_POLL_MS          20

enum bench_transport { BENCH_LOOPBACK, BENCH_VETH, BENCH_WIRE, BENCH_UNIX, BENCH_TRANSPORT__COUNT };

/* Whether @t runs between two network namespaces (else on this host's own). */
static inline bool bench_transport_netns(int t)
{
	return t == BENCH_VETH || t == BENCH_WIRE;
}
/*
 * The destination's --incoming for @t: tcp:@host_addr:0, or for BENCH_UNIX a
 * fresh socket path in the harness's directory (its link probe is TCP
 * loopback's: the kernel copies the bytes in both).
 */
void bench_listen_uri(enum bench_transport t, const char *host_addr, char *buf, size_t len);

/* Indexed by enum bench_transport: the name in the output, the one in --transports. */
extern const char *const bench_transport_names[BENCH_TRANSPORT__COUNT];
extern const char *const bench_transport_opts[BENCH_TRANSPORT__COUNT];

#define BENCH_GUEST_RATE_MS    300     /* window of the guest's full-speed rate */

/*
 * The guest's work (query-workload's passes + writes summed over the vCPUs,
 * kept in guest RAM: the destination's count goes on from the source's), for
 * workloads that count it.  rate_per_s 0: unknown, and so is all of it;
 * t1_ns 0: no sample at the end.  Figures derived from it are NaN (null in
 * the JSON) when unknown, never made up.
 */
struct bench_guest {
	double rate_per_s;          /* at full speed, before `migrate` */
	uint64_t p0, t0_ns;         /* source, just before `migrate` */
	uint64_t p1, t1_ns;         /* destination, once it completed */
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
	char breakdown[768];             /* the source's downtime-breakdown (JSON), or "" */
	struct bench_guest guest;        /* the guest's work, where the workload counts it */
};

/* ---- the two simulated hosts ---- */

/* Namespaces hosts.ns[0] (source) and hosts.ns[1] (destination), and their link. */
struct bench_netns {
	struct harness_netns hosts;
	char shaper[8];          /* "netem", "tbf" or "wire" (bench/wire.h) */
	unsigned delay_us;       /* added per direction (netem or wire) */
	struct wire wire;        /* the user-space link, for BENCH_WIRE */
};

/*
 * Both directions at 1 Gbit/s.  BENCH_VETH: a veth pair under netem, each
 * direction delayed by @delay_us (tbf over pfifo_fast where netem is not
 * built in, which cannot delay: n->delay_us says what was applied).
 * BENCH_WIRE: TUN devices joined by bench/wire.h's user-space link, rate
 * and delay.  0 or -errno with a message on stderr; partial state is
 * removed.  bench_netns_finish() when done with it.
 */
int bench_netns_create(struct bench_netns *n, enum bench_transport kind, unsigned delay_us);
/* Stop the wire (if any) and delete the namespaces.  Not signal-safe. */
void bench_netns_finish(struct bench_netns *n);

/* ---- the link probes (bench/link.c) ---- */

/* A TCP socket that lives in namespace @ns (NULL: ours).  fd or -errno. */
int bench_socket_in(const char *ns);

/*
 * The link's bandwidth: the median of 3 TCP streams of @bytes from
 * namespace @src_ns to a listener on @addr in @dst_ns (NULLs: ours), timed
 * at the receiver.  Single probes on these shared 2-core machines ranged
 * from 1.3 to 3.9 GB/s within minutes (other load slows one down; sender
 * and receiver sharing a core speeds one up), moving a run's bound 3x.
 * @ram_bytes 0: from and into one cache-hot 1 MiB buffer (the link at its
 * best); else memory to memory through memfd buffers of that size (at most
 * 4 GiB), made once for the three and walked through in 256 KiB sends and
 * receives, as a migration moves guest RAM.  Bytes per second in *bps; 0
 * or -errno.
 */
int bench_link_bandwidth(const char *src_ns, const char *dst_ns, const char *addr,
			 uint64_t bytes, uint64_t ram_bytes, double *bps);

/*
 * The link's round trip with nothing else on it: 200 one-byte TCP
 * ping-pongs from namespace @src_ns to @addr in @dst_ns (NULLs: ours),
 * median in *us.  0 or -errno.
 */
int bench_link_rtt(const char *src_ns, const char *dst_ns, const char *addr, double *us);

/* ---- the VMMs: the harness, with its errors into r->error ---- */

/*
 * Start `[ip netns exec NS] vmferry run --control SOCK --console /dev/null
 * ARGS...` (@n NULL: in our namespace; @side: 0 source, 1 destination) with
 * stdout and stderr into vm->log_path, named @name.  Not connected yet:
 * bench_vm_connect().  0 or -errno with r->error set.
 */
int bench_vm_spawn(const char *bin, const struct bench_netns *n, int side, const char *name,
		   const char *const args[], struct harness_vm *vm, struct bench_result *r);
/* Connect within BENCH_CONNECT_MS, or notice its death.  0 or -errno with r->error. */
int bench_vm_connect(struct harness_vm *vm, struct bench_result *r);
/* bench_vm_spawn() and bench_vm_connect(). */
int bench_vm_start(const char *bin, const struct bench_netns *n, int side, const char *name,
		   const char *const args[], struct harness_vm *vm, struct bench_result *r);

/* @rc of a harness call on @vm; when it failed, vm->error into r->error. */
int bench_vm_error(const struct harness_vm *vm, int rc, struct bench_result *r);

/* harness_call(); 0 or -errno with r->error set. */
int bench_call(struct harness_vm *vm, const char *cmd, struct json_object *args,
	       struct json_object **ret, struct bench_result *r);

/*
 * query-workload: true in *running when every vCPU is in phase "running"
 * and has completed at least one pass over its memory; the sum of passes
 * and writes over the vCPUs in *progress.  0 or -errno with r->error.
 */
int bench_workload(struct harness_vm *vm, bool *running, uint64_t *progress,
		   struct bench_result *r);

/*
 * Poll bench_workload on the source @src until its guest runs, for at most
 * BENCH_READY_MS_FOR(@mem_bytes).  0, or -errno with r->error.
 */
int bench_wait_running(struct harness_vm *src, uint64_t mem_bytes, struct bench_result *r);

/* harness_incoming_uri() within BENCH_CONNECT_MS; 0 or -errno with r->error. */
int bench_incoming_uri(struct harness_vm *dst, char *uri, size_t len, struct bench_result *r);

/*
 * Poll until a final status, every BENCH_POLL_MS; after @timeout_s,
 * migrate-cancel and wait a minute more.  The final reply in *out (caller
 * owns); 0 or -errno with r->error.
 */
int bench_wait_migration(uint64_t timeout_s, struct harness_vm *src, struct json_object **out,
			 struct bench_result *r);

/*
 * After a completed migration: the destination runs, its @workload moves
 * on, and its memory verifies.  Sets r->verified / r->verify_error.
 */
void bench_verify_destination(struct harness_vm *dst, const char *workload,
			      struct bench_result *r);

/* The source's final query-migrate @q into @r (r->error when not completed). */
void bench_copy_stats(struct json_object *q, struct bench_result *r);

/* ---- what a migration costs the guest ---- */

/*
 * The guest's progress on @vm in *progress, and in *at_ns the middle of the
 * query's round trip.  Both untouched on failure.  A failed sample costs a
 * run its guest figures, not the run: 0 or -errno, with a message on stderr
 * naming @side.
 */
int bench_guest_sample(struct harness_vm *vm, const char *side, uint64_t *progress,
		       uint64_t *at_ns);
/*
 * The guest's full speed, measured last thing before `migrate` so that it
 * sees the machine as the migration will: two samples BENCH_GUEST_RATE_MS
 * apart on @src.  The second one opens the migration's account (p0, t0_ns).
 * Resets *g first.
 */
void bench_guest_rate(struct harness_vm *src, struct bench_guest *g);
/* Close the account on @dst (the guest runs there now); no-op when unknown. */
void bench_guest_close(struct harness_vm *dst, struct bench_guest *g);
/*
 * The guest's speed over the account, a fraction of its full speed (noise
 * can put it a little above 1); NaN unknown.
 */
double bench_guest_speed(const struct bench_guest *g);
/*
 * guest_lost_ms: the account's wall time less the time its work takes at
 * the full rate - the guest's loss in full-speed milliseconds.  It does not
 * depend on how late the bench closes the account (the guest runs at full
 * speed meanwhile).  NaN unknown.
 */
double bench_guest_lost_ms(const struct bench_guest *g);
/* guest_full_rate_per_s, guest_speed_during_migration, guest_lost_ms into @o. */
void bench_json_guest(struct json_object *o, const struct bench_guest *g);

/* ---- output ---- */

/* @v with @decimals as a JSON number under @key (null when NaN or infinite). */
void bench_json_num(struct json_object *o, const char *key, double v, int decimals);
void bench_json_u64(struct json_object *o, const char *key, uint64_t v);
/* @o as one line on stdout, flushed; drops the reference. */
void bench_print(struct json_object *o);
#define BENCH_MAX_WORKLOADS 8
/* The options precopy and postcopy share (--mem, --workloads, ...). */
struct bench_common_opts {
	uint64_t mem_bytes[BENCH_MAX_SIZES];
	unsigned nmem;
	bool workload_on[BENCH_MAX_WORKLOADS];
	bool transport_on[BENCH_TRANSPORT__COUNT];
	unsigned runs;
	unsigned vcpus;
	uint64_t convergence_timeout_s;
	uint64_t timeout_s;
	uint64_t probe_bytes;
	const char *bin;           /* VMFERRY_BIN, or build/vmferry */
	const char *guest_spec;    /* --guest: one workload of this spec, or NULL */
	bool quick;
	bool stream_crc;           /* the stream-crc capability on the source */
};
/* getopt_long entries for them (getopt values m w t r c C T p q g S). */
#define BENCH_COMMON_LONGOPTS \
	{ "mem", required_argument, NULL, 'm' }, \
	{ "workloads", required_argument, NULL, 'w' }, \
	{ "transports", required_argument, NULL, 't' }, \
	{ "runs", required_argument, NULL, 'r' }, \
	{ "vcpus", required_argument, NULL, 'c' }, \
	{ "convergence-timeout", required_argument, NULL, 'C' }, \
	{ "timeout", required_argument, NULL, 'T' }, \
	{ "probe-bytes", required_argument, NULL, 'p' }, \
	{ "quick", no_argument, NULL, 'q' }, \
	{ "guest", required_argument, NULL, 'g' }, \
	{ "stream-crc", no_argument, NULL, 'S' }
/*
 * The name of the workload --guest SPEC runs (instead of the program's
 * table), counting its work as the dirtier and the incrementer do.
 */
#define BENCH_GUEST_WORKLOAD "guest"
/* Defaults: 256 MiB and 1 GiB, 3 runs, 2 vCPUs, every workload, loopback. */
void bench_common_defaults(struct bench_common_opts *c);
/* --quick: one 256 MiB run on loopback only (when c->quick). */
void bench_common_apply_quick(struct bench_common_opts *c);
/*
 * One getopt result: 1 taken, 0 not a common option, -1 a bad value.
 * @workloads: the program's workload names (at most BENCH_MAX_WORKLOADS).
 */
int bench_common_option(int opt, const char *arg, struct bench_common_opts *c,
			const char *const *workloads, size_t nworkloads);

/* Copy @q's "downtime-breakdown" as JSON text into @out ("" when absent). */
void bench_breakdown_text(struct json_object *q, char *out, size_t len);
/* Add the breakdown @text (from bench_breakdown_text) to @o as "downtime_breakdown". */
void bench_json_breakdown(struct json_object *o, const char *text);

/* qsort() order of doubles. */
int bench_cmp_double(const void *a, const void *b);
/* The median of @v[0..n) (sorts @v); NaN when @n is 0. */
double bench_median(double *v, unsigned n);

/* ---- options ---- */

/* Comma-separated names -> flags in @on (indexed like @names).  0 or -EINVAL (said). */
int bench_parse_names(const char *text, const char *const *names, size_t nnames, bool *on);
/* Comma-separated sizes (whole MiB, at least 16M, at most BENCH_MAX_SIZES). */
int bench_parse_sizes(const char *text, uint64_t *sizes, unsigned *nsizes);

#endif
