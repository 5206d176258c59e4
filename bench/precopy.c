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
 *                        1 Gbit/s: "veth-1gbit"; needs root), wire (the same
 *                        namespaces joined by TUN devices and bench/wire.h's
 *                        user-space 1 Gbit/s link, no added delay:
 *                        "wire-1gbit"; needs root), unix (a UNIX socket on this
 *                        host: "unix-socket"; its link probe is loopback's)
 *                        (default loopback)
 *   --runs N             runs per combination (default 3)
 *   --vcpus N            guest vCPUs (default 2)
 *   --downtime-limit MS  migrate-set-parameters downtime-limit (default: the VMM's)
 *   --convergence-timeout S  give up on precopy after S s (default 30; 0 = never)
 *   --auto-converge      enable the auto-converge capability
 *   --timeout S          cancel a migration still running after S s (default 300)
 *   --probe-bytes SIZE   bytes of each link bandwidth probe (default 512M; the
 *                        link is the median of 3 probes)
 *   --guest SPEC         run this --guest spec alone instead of the workloads,
 *                        named "guest", its work counted as the dirtier's
 *                        (bench/scale: dirtier,wss=...,rate=...,fill=1)
 *   --quick              smoke: 256M, loopback, 1 run (workloads as given)
 *   --stream-crc         the source with the stream-crc capability (CRCs)
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
 * is checked for what its fill wrote).
 *
 * Output, stdout: one JSON object per run ("type": "run"), then one per
 * combination with medians over its completed runs ("type": "median").  A
 * migration that fails still gets its line, with "error".  The VMMs' own
 * logs go to files in a temporary directory (their tail is copied to stderr
 * when a run fails).  Exit status: 0 (even when runs fail; see the JSON),
 * 1 when the benchmark itself cannot work, 2 usage, 77 without /dev/kvm.
 *
 * What the migration costs the guest, for the workloads that count their
 * work (moderate, heavy, incrementer; null for idle and wherever a sample
 * failed), as bench/postcopy measures it (bench.h, struct bench_guest):
 * guest_full_rate_per_s over the 300 ms before `migrate`,
 * guest_speed_during_migration (a fraction of it) and guest_lost_ms (the
 * full-speed milliseconds of work the guest lost from `migrate` until the
 * bench saw the migration completed); medians over "guest_measured_runs".
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
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "control/client.h"
#include "util/log.h"
#include "util/size.h"

#include "bench.h"

static struct bench_workload {
	const char *name;
	const char *spec;       /* --guest */
	bool progress;          /* query-workload's passes + writes count its work */
} bench_workloads[] = {
	/*
	 * Memory that holds data but is never written again: the bandwidth
	 * case.  Its passes count seconds asleep, not work.
	 */
	{ "idle", "idle,fill=1", false },
	/* 2 x 5000 pages/s = 41 MB/s: a third of a 1 Gbit link. */
	{ "moderate", "dirtier,wss=64M,rate=5000", true },
	{ "heavy", "dirtier,rate=0", true },
	{ "incrementer", "incrementer", true },
	/* --guest SPEC: the only one then (its spec filled in by main()). */
	{ BENCH_GUEST_WORKLOAD, NULL, true },
};
#define BENCH_NWORKLOADS (sizeof(bench_workloads) / sizeof(bench_workloads[0]))

struct bench_opts {
	struct bench_common_opts c;
	uint64_t downtime_limit_ms;      /* 0: leave the VMM's default */
	bool auto_converge;
};

/* Set parameters and capabilities from the options. */
static int bench_set_params(const struct bench_opts *o, struct harness_vm *src,
			    struct bench_result *r)
{
	struct json_object *p = json_object_new_object(), *q = NULL;
	int rc;

	if (o->downtime_limit_ms)
		json_object_object_add(p, "downtime-limit", json_object_new_int64((int64_t)o->downtime_limit_ms));
	json_object_object_add(p, "convergence-timeout",
			       json_object_new_int64((int64_t)o->c.convergence_timeout_s));
	rc = bench_call(src, "migrate-set-parameters", p, NULL, r);
	json_object_put(p);
	if (rc)
		return rc;
	if (o->c.stream_crc && bench_vm_error(src, harness_set_capability(src, "stream-crc", true), r))
		return -EIO;
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
		r->downtime_limit_ms = harness_json_u64(q, "downtime-limit");
	json_object_put(q);
	return rc;
}

/* One migration; the result in *r (r->error set when it did not complete). */
static void bench_one(const struct bench_opts *o, enum bench_transport t, struct bench_netns *n,
		      uint64_t mem_bytes, const struct bench_workload *w, struct bench_result *r)
{
	struct harness_vm src = { .pid = -1 }, dst = { .pid = -1 };
	char mem[32], vcpus[16], listen_uri[HARNESS_PATH_BYTES + 8], uri[HARNESS_PATH_BYTES + 8];
	const char *dst_args[] = { "--mem", mem, "--vcpus", vcpus, "--incoming", listen_uri, NULL };
	const char *src_args[] = { "--mem", mem, "--vcpus", vcpus, "--guest", w->spec, NULL };
	const char *host_addr = bench_transport_netns(t) ? n->hosts.addr[1] : "127.0.0.1";
	struct bench_netns *ns = bench_transport_netns(t) ? n : NULL;
	struct json_object *args, *q = NULL;
	int rc;

	memset(r, 0, sizeof(*r));
	r->downtime_ms = -1;
	snprintf(mem, sizeof(mem), "%lluM", (unsigned long long)(mem_bytes >> 20));
	snprintf(vcpus, sizeof(vcpus), "%u", o->c.vcpus);
	bench_listen_uri(t, host_addr, listen_uri, sizeof(listen_uri));

	/* The link first, with no VM competing for the CPUs. */
	rc = bench_link_bandwidth(ns ? ns->hosts.ns[0] : NULL, ns ? ns->hosts.ns[1] : NULL, host_addr,
				  o->c.probe_bytes, 0, &r->link_bps);
	if (rc) {
		snprintf(r->error, sizeof(r->error), "link bandwidth probe: %s", strerror(-rc));
		return;
	}
	if (bench_vm_start(o->c.bin, ns, 1, "dst", dst_args, &dst, r) ||
	    bench_incoming_uri(&dst, uri, sizeof(uri), r) ||
	    bench_vm_start(o->c.bin, ns, 0, "src", src_args, &src, r))
		goto out;
	if (bench_wait_running(&src, mem_bytes, r) || bench_set_params(o, &src, r))
		goto out;
	if (w->progress)
		bench_guest_rate(&src, &r->guest);
	args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string(uri));
	rc = bench_call(&src, "migrate", args, NULL, r);
	json_object_put(args);
	if (rc || bench_wait_migration(o->c.timeout_s, &src, &q, r))
		goto out;
	bench_copy_stats(q, r);
	json_object_put(q);
	if (r->completed) {
		/*
		 * At once: the destination ran the guest before the source said
		 * completed; at full speed since, which adds nothing to
		 * guest_lost_ms.
		 */
		bench_guest_close(&dst, &r->guest);
		bench_verify_destination(&dst, w->name, r);
	}
out:
	if (r->error[0]) {
		harness_vm_log_tail(&src, "source");
		harness_vm_log_tail(&dst, "destination");
	}
	harness_vm_quit(&src);
	harness_vm_quit(&dst);
	unlink(src.log_path);
	unlink(dst.log_path);
}

/* ---- output ---- */

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
	if (bench_transport_netns(t) && n && n->shaper[0])
		json_object_object_add(o, "shaper", json_object_new_string(n->shaper));
	json_object_object_add(o, "workload", json_object_new_string(w->name));
	json_object_object_add(o, "guest", json_object_new_string(w->spec));
	bench_json_u64(o, "guest_ram_bytes", mem_bytes);
	bench_json_u64(o, "vcpus", vcpus);
	return o;
}

static void bench_print_run(enum bench_transport t, const struct bench_netns *n,
			    uint64_t mem_bytes, const struct bench_workload *w, unsigned vcpus,
			    unsigned run, const struct bench_result *r)
{
	struct json_object *o = bench_line("run", t, n, mem_bytes, w, vcpus);
	double bound = bench_bound_ms(r);

	bench_json_u64(o, "run", run);
	json_object_object_add(o, "status", json_object_new_string(r->status[0] ? r->status : "error"));
	if (r->status[0]) {
		bench_json_num(o, "total_time_ms", r->total_ms, 3);
		bench_json_num(o, "downtime_ms", r->downtime_ms >= 0 ? r->downtime_ms : NAN, 3);
		bench_json_breakdown(o, r->breakdown);
		bench_json_num(o, "setup_time_ms", r->setup_ms, 3);
		bench_json_u64(o, "downtime_limit_ms", r->downtime_limit_ms);
		bench_json_u64(o, "expected_downtime_ms", r->expected_downtime_ms);
		bench_json_u64(o, "bytes_on_wire", r->wire_bytes);
		bench_json_u64(o, "pages_sent", r->normal_pages + r->zero_pages);
		bench_json_u64(o, "normal_pages", r->normal_pages);
		bench_json_u64(o, "zero_pages", r->zero_pages);
		bench_json_u64(o, "passes", r->passes);
		bench_json_u64(o, "ram_sent_bytes", r->normal_pages * BENCH_PAGE_BYTES);
	}
	bench_json_num(o, "link_bandwidth_bytes_per_s", r->link_bps, 0);
	if (r->status[0]) {
		bench_json_num(o, "bound_ms", bound, 3);
		bench_json_num(o, "ratio_total_to_bound", bound > 0 ? r->total_ms / bound : NAN, 3);
		bench_json_num(o, "wire_bytes_per_s",
			     r->total_ms > 0 ? (double)r->wire_bytes / r->total_ms * 1000.0 : 0, 0);
		bench_json_u64(o, "engine_throughput_bytes_per_s", r->throughput_bps);
		bench_json_u64(o, "dirty_pages_rate", r->dirty_pages_rate);
		bench_json_u64(o, "cpu_throttle_max", r->throttle_max);
		bench_json_guest(o, &r->guest);
	}
	json_object_object_add(o, "verified", json_object_new_boolean(r->verified));
	if (r->completed && !r->verified)
		json_object_object_add(o, "verify_error", json_object_new_string(r->verify_error));
	if (r->error[0])
		json_object_object_add(o, "error", json_object_new_string(r->error));
	bench_print(o);
}

static void bench_print_median(enum bench_transport t, const struct bench_netns *n,
			       uint64_t mem_bytes, const struct bench_workload *w, unsigned vcpus,
			       const struct bench_result *rs, unsigned nruns)
{
	struct json_object *o = bench_line("median", t, n, mem_bytes, w, vcpus);
	double v[BENCH_MAX_RUNS];
	unsigned ok = 0, verified = 0, guest = 0, k;

	for (unsigned i = 0; i < nruns; i++) {
		ok += rs[i].completed;
		verified += rs[i].verified;
		guest += rs[i].completed && !isnan(bench_guest_lost_ms(&rs[i].guest));
	}
	bench_json_u64(o, "runs", nruns);
	bench_json_u64(o, "completed", ok);
	bench_json_u64(o, "verified_runs", verified);
	bench_json_u64(o, "guest_measured_runs", guest);
#define MEDIAN_FIELD(key, expr, decimals) do { \
		k = 0; \
		for (unsigned i = 0; i < nruns; i++) \
			if (rs[i].completed) { \
				const struct bench_result *r = &rs[i]; \
				v[k] = (expr); \
				k += !isnan(v[k]); \
			} \
		bench_json_num(o, key, bench_median(v, k), decimals); \
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
	MEDIAN_FIELD("guest_speed_during_migration", bench_guest_speed(&r->guest), 3);
	MEDIAN_FIELD("guest_lost_ms", bench_guest_lost_ms(&r->guest), 1);
#undef MEDIAN_FIELD
	bench_print(o);
}

/* ---- options ---- */

static void bench_usage(FILE *f)
{
	fprintf(f,
		"usage: precopy [--mem SIZES] [--workloads LIST] [--transports LIST] [--runs N]\n"
		"               [--vcpus N] [--downtime-limit MS] [--convergence-timeout S]\n"
		"               [--auto-converge] [--timeout S] [--probe-bytes SIZE] [--guest SPEC] [--quick]\n"
		"               [--stream-crc]\n"
		"  SIZES: comma separated, e.g. 256M,1G (default)\n"
		"  workloads: idle, moderate, heavy, incrementer (default: all)\n"
		"  transports: loopback, veth, wire, unix (default loopback)\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		BENCH_COMMON_LONGOPTS,
		{ "downtime-limit", required_argument, NULL, 'd' },
		{ "auto-converge", no_argument, NULL, 'a' },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *workload_names[BENCH_NWORKLOADS];
	struct bench_opts o = { .downtime_limit_ms = 0 };
	/* Static: the atexit handler reaches it after main() has returned. */
	static struct bench_netns netns;
	bool netns_ok = false;
	struct bench_result *results;
	int opt, taken;

	_Static_assert(BENCH_NWORKLOADS <= BENCH_MAX_WORKLOADS, "workload list too long");
	for (size_t i = 0; i < BENCH_NWORKLOADS; i++)
		workload_names[i] = bench_workloads[i].name;
	harness_init("precopy", "PRECOPY_KEEP", false);
	bench_common_defaults(&o.c);
	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		taken = bench_common_option(opt, optarg, &o.c, workload_names, BENCH_NWORKLOADS);
		if (taken < 0)
			goto usage;
		if (taken > 0)
			continue;
		switch (opt) {
		case 'd':
			if (size_parse_uint(optarg, 1, 2000000, &o.downtime_limit_ms))
				goto usage;
			break;
		case 'a':
			o.auto_converge = true;
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
	/* The last workload is --guest's: on alone with it, never without. */
	for (size_t i = 0; o.c.guest_spec && i < BENCH_NWORKLOADS; i++)
		o.c.workload_on[i] = false;
	o.c.workload_on[BENCH_NWORKLOADS - 1] = o.c.guest_spec != NULL;
	bench_workloads[BENCH_NWORKLOADS - 1].spec = o.c.guest_spec;
	bench_common_apply_quick(&o.c);
	if (access("/dev/kvm", R_OK | W_OK) != 0) {
		fprintf(stderr, "precopy: /dev/kvm not available: %s\n", strerror(errno));
		return 77;
	}
	if (harness_cleanup_on_exit())
		return 1;
	memset(&netns, 0, sizeof(netns));

	results = calloc((size_t)BENCH_TRANSPORT__COUNT * o.c.nmem * BENCH_NWORKLOADS * o.c.runs,
			 sizeof(*results));
	if (!results) {
		perror("precopy");
		return 1;
	}
#define RESULT(t, m, w, i) (&results[(((size_t)(t) * o.c.nmem + (m)) * BENCH_NWORKLOADS + (w)) * o.c.runs + (i)])
	for (int t = 0; t < BENCH_TRANSPORT__COUNT; t++) {
		if (!o.c.transport_on[t])
			continue;
		if (bench_transport_netns(t))
			netns_ok = bench_netns_create(&netns, (enum bench_transport)t, 0) == 0;
		for (unsigned m = 0; m < o.c.nmem; m++) {
			for (size_t w = 0; w < BENCH_NWORKLOADS; w++) {
				if (!o.c.workload_on[w])
					continue;
				for (unsigned i = 0; i < o.c.runs; i++) {
					struct bench_result *r = RESULT(t, m, w, i);

					if (bench_transport_netns(t) && !netns_ok) {
						memset(r, 0, sizeof(*r));
						snprintf(r->error, sizeof(r->error),
							 "cannot create the network namespaces");
					} else {
						bench_one(&o, (enum bench_transport)t, &netns,
							  o.c.mem_bytes[m], &bench_workloads[w], r);
					}
					bench_print_run((enum bench_transport)t, &netns, o.c.mem_bytes[m],
							&bench_workloads[w], o.c.vcpus, i, r);
				}
			}
		}
		for (unsigned m = 0; m < o.c.nmem; m++)
			for (size_t w = 0; w < BENCH_NWORKLOADS; w++)
				if (o.c.workload_on[w])
					bench_print_median((enum bench_transport)t, &netns, o.c.mem_bytes[m],
							   &bench_workloads[w], o.c.vcpus,
							   RESULT(t, m, w, 0), o.c.runs);
		if (bench_transport_netns(t) && netns_ok)
			bench_netns_finish(&netns);
	}
#undef RESULT
	free(results);
	return 0;
usage:
	bench_usage(stderr);
	return 2;
}
