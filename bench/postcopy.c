/*
 * bench/postcopy: postcopy migration with and without the urgent channel,
 * hybrid, and precopy on the same workload, next to the link they run over.
 *
 *   postcopy [--mem SIZES] [--workloads LIST] [--modes LIST] [--transports LIST]
 *            [--runs N] [--vcpus N] [--convergence-timeout S] [--timeout S]
 *            [--probe-bytes SIZE] [--dest-ready] [--quick]
 *
 *   --mem SIZES          guest RAM sizes, comma separated (default 256M,1G)
 *   --workloads LIST     incrementer, heavy (dirtier,rate=0), idle (idle,fill=1:
 *                        every page has data, the vCPUs do not run)
 *                        (default all three)
 *   --modes LIST         pure (postcopy-pure, postcopy-preempt on: requested
 *                        pages on the urgent channel), pure-nopreempt
 *                        (postcopy-pure, preempt off: a request only makes the
 *                        background stream jump to the page, behind what is
 *                        already queued), hybrid (postcopy-after-passes 1,
 *                        preempt on), pure-missing and hybrid-missing (the
 *                        same with the destination in userfaultfd missing
 *                        mode instead of minor mode), pure-vcpu-nice0 (pure
 *                        with the destination's postcopy-vcpu-nice 0: its
 *                        vCPUs compete with the migration threads as equals),
 *                        pure-vcpu-nice10 and pure-vcpu-nice19 (the defaults
 *                        before 20, SCHED_IDLE, from the sixth session),
 *                        pure-eager-map (the destination maps every page as
 *                        it arrives, as before the seventh session, instead
 *                        of when first touched), pure-copy-send (the source
 *                        copies pages into the socket instead of sendfile),
 *                        precopy (default all).  Every other mode keeps the
 *                        VMM's default, reported as "vcpu_nice".
 *   --transports LIST    loopback ("loopback-tcp"), veth (two network
 *                        namespaces joined by a veth pair shaped to 1 Gbit/s,
 *                        each direction delayed by 0.5 ms where netem exists:
 *                        "veth-1gbit"; needs root), wire (the same namespaces
 *                        joined by TUN devices and bench/wire.h's user-space
 *                        link: 1 Gbit/s and 0.5 ms each way whatever the
 *                        kernel has, jumbo frames: "wire-1gbit"; needs root),
 *                        unix (a UNIX socket on this host: "unix-socket"; its
 *                        link probe is loopback's) (default loopback,veth)
 *   --runs N             runs per combination (default 3)
 *   --vcpus N            guest vCPUs (default 2)
 *   --convergence-timeout S  migrate-set-parameters convergence-timeout, every
 *                        mode (default 30; 0 = never): precopy of a workload
 *                        that outruns the link fails after S s instead of
 *                        running until --timeout.  Nothing else is set: the
 *                        VMM's defaults otherwise.
 *   --timeout S          cancel a migration still running after S s (default 300)
 *   --probe-bytes SIZE   bytes of each cache-hot link bandwidth probe (default
 *                        512M; the link is the median of 3 probes); the
 *                        memory-to-memory probe moves the guest's RAM size
 *   --dest-ready         start the destination with --prealloc and, before
 *                        migrating, wait until it has preallocated its RAM
 *                        (as when it was started well ahead; minor mode
 *                        keeps that memory)
 *   --guest SPEC         run this --guest spec alone instead of the workloads,
 *                        named "guest", its work counted as the dirtier's
 *                        (bench/scale: dirtier,wss=...,rate=...,fill=1)
 *   --quick              smoke: 256M, loopback, 1 run (modes and workloads as given)
 *   --stream-crc         the source with the stream-crc capability (CRCs)
 *
 * Per run, as bench/precopy: measure the link with no VM running, start a
 * destination `vmferry run --incoming`, start a source with the workload and
 * wait until every vCPU runs and has been once over its memory, set the
 * mode's capabilities (postcopy-ram on both sides, postcopy-preempt on the
 * source) and parameters, `migrate-start-postcopy` first for pure postcopy,
 * migrate, poll the source's query-migrate to a final status, then the
 * destination's until it too says "completed" (its page-fault figures are
 * final only then), and check there that the guest runs, makes progress
 * and that its memory verifies (verify_guest_file).  For each run index the
 * modes run one after the other, so every mode sees the same machine load.
 *
 * Output, stdout: one JSON object per run ("type": "run"), and once the runs
 * of a (transport, size, workload) are done, one per mode with medians over
 * its completed runs ("type": "median", with "first_error" when a run
 * failed).  A failed run still gets its line, with "error".
 * "postcopy_switched" says whether the migration went to postcopy (a hybrid
 * whose first pass converged finishes as precopy); when it did not, the
 * postcopy figures (fault latencies, vcpu_blocked_ms, page_requests) are
 * null, and medians of those are over the runs that switched
 * ("postcopy_runs").
 *
 *   bytes_on_wire = the source's "transferred" (today its main channel only:
 *     pages answered on the urgent channel are not in it)
 *   bytes_per_guest_page = bytes_on_wire / (guest_ram_bytes / 4096)
 *   wire_bytes_per_guest_byte = bytes_on_wire / guest_ram_bytes (1.0: each
 *     page crossed once with its data)
 *   bound_ms = normal_pages * 4096 / link bandwidth: the time the RAM that
 *     crossed as data needs at the rate this run measured
 *   ratio_total_to_bound = total_time_ms / bound_ms
 *   link_rtt_us = the median of 200 one-byte TCP ping-pongs over the idle
 *     link, measured after the bandwidth probes (the floor under any page
 *     request's latency)
 *   ram_link_bandwidth_bytes_per_s, ram_bound_ms, ratio_total_to_ram_bound:
 *     the same against a second probe that moves the guest's RAM size
 *     memory to memory (a memfd written before, sent in 256 KiB slices,
 *     received into a preallocated memfd: the data path of a migration
 *     without its protocol).  The first probe sends one cache-hot 1 MiB
 *     buffer again and again; on loopback, where the "link" is the CPU
 *     copying, that is faster than any stream of cold guest memory can go
 *     (an idle guest's precopy, a bare stream, took 1.4x it), so this one
 *     is the bound a migration could actually meet.
 *
 * What the migration costs the guest, for workloads that count their work
 * (incrementer, heavy: query-workload's passes + writes summed over the
 * vCPUs; null for idle, and wherever a sample failed):
 *   guest_full_rate_per_s = the work per second over the 300 ms that end
 *     just before `migrate` is sent, where the account below opens
 *   guest_speed_during_migration = the work from there until the bench sees
 *     the destination completed (read there at once), per second, as a
 *     fraction of the full rate (noise can put it a little above 1)
 *   guest_lost_ms = that window's wall time less the time its work takes at
 *     the full rate: the guest's loss in full-speed milliseconds.  Unlike
 *     the fraction, it does not depend on how late the bench closes the
 *     account (the guest runs at full speed meanwhile): the one to compare
 * The medians of the latter two are over "guest_measured_runs".
 *
 * CPU time (user + system, from /proc, 10 ms ticks), from just before
 * `migrate` to the end:
 *   src_cpu_ms = the source VMM until its query-migrate says completed
 *   dst_cpu_ms = the destination VMM until the bench sees it completed
 *     (its guest's vCPUs included)
 *   dst_vcpu_cpu_ms = of that, its vCPU threads ("vcpu*")
 * On a machine whose cores the two VMMs share (loopback on the 2-core
 * bench hosts) these say what each byte costs, which the totals hide when
 * the machine is noisy.
 *
 * Exit status: 0 (even when runs fail; see the JSON), 1 when the benchmark
 * itself cannot work, 2 usage, 77 without /dev/kvm.  Cleanup as in
 * bench/precopy (bench.h); POSTCOPY_KEEP=1 keeps the temporary
 * directory with the last run's VMM logs (a failed run's tails go to stderr).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

#define BENCH_VETH_DELAY_US    500     /* per direction, netem or wire */
#define BENCH_DST_DONE_MS      30000   /* destination "completed" after the source */

static struct bench_workload {
	const char *name;
	const char *spec;       /* --guest */
	bool progress;          /* query-workload's passes + writes count its work */
} bench_workloads[] = {
	{ "incrementer", "incrementer", true },
	{ "heavy", "dirtier,rate=0", true },
	/*
	 * Every page has data, the vCPUs do not run: the migration alone.  Its
	 * passes count seconds asleep, not work.
	 */
	{ "idle", "idle,fill=1", false },
	/* --guest SPEC: the only one then (its spec filled in by main()). */
	{ BENCH_GUEST_WORKLOAD, NULL, true },
};
#define BENCH_NWORKLOADS (sizeof(bench_workloads) / sizeof(bench_workloads[0]))

static const struct bench_mode {
	const char *opt;            /* in --modes */
	const char *name;           /* "mode" */
	bool postcopy_ram;          /* capability on both sides */
	bool preempt;               /* source capability postcopy-preempt */
	bool start_postcopy;        /* migrate-start-postcopy before migrate */
	uint64_t after_passes;      /* postcopy-after-passes, 0: not set */
	bool uffd_missing;          /* destination in userfaultfd missing mode
				     * (VMFERRY_POSTCOPY_UFFD=missing), not minor */
	int vcpu_nice;              /* destination's postcopy-vcpu-nice; -1: its default */
	bool eager_map;             /* destination maps every arriving page at once
				     * (VMFERRY_POSTCOPY_MAP=eager), not lazily */
	bool copy_send;             /* source copies pages into its sockets
				     * (VMFERRY_SEND_COPY=1), no sendfile */
} bench_modes[] = {
	{ "pure", "postcopy-pure", true, true, true, 0, false, -1, false, false },
	{ "pure-eager-map", "postcopy-pure", true, true, true, 0, false, -1, true, false },
	{ "pure-copy-send", "postcopy-pure", true, true, true, 0, false, -1, false, true },
	{ "pure-missing", "postcopy-pure", true, true, true, 0, true, -1, false, false },
	{ "pure-nopreempt", "postcopy-pure", true, false, true, 0, false, -1, false, false },
	{ "pure-vcpu-nice0", "postcopy-pure", true, true, true, 0, false, 0, false, false },
	{ "pure-vcpu-nice10", "postcopy-pure", true, true, true, 0, false, 10, false, false },
	{ "pure-vcpu-nice19", "postcopy-pure", true, true, true, 0, false, 19, false, false },
	{ "hybrid", "hybrid", true, true, false, 1, false, -1, false, false },
	{ "hybrid-missing", "hybrid", true, true, false, 1, true, -1, false, false },
	{ "precopy", "precopy", false, false, false, 0, false, -1, false, false },
};
/* The destination VMM's postcopy-vcpu-nice when a mode leaves it (-1: not read yet). */
static int bench_default_vcpu_nice = -1;
#define BENCH_NMODES (sizeof(bench_modes) / sizeof(bench_modes[0]))

struct bench_opts {
	struct bench_common_opts c;
	bool mode_on[BENCH_NMODES];
	bool dest_ready;         /* wait for the destination's preallocation first */
};

/* One run: the source's figures (b) and the postcopy ones of both sides. */
struct bench_pc_result {
	struct bench_result b;
	bool switched;                           /* to postcopy: the fields below are valid */
	uint64_t pages_pushed, pages_requested;  /* source */
	uint64_t pages_resent;                   /* source: requested while in flight */
	uint64_t requests_served;                /* source: PAGE_REQs it answered */
	uint64_t page_requests, faults;          /* destination */
	double fault_p50_us, fault_p99_us, fault_max_us, vcpu_blocked_ms;
	/*
	 * CPU time (user + system, ms) from just before `migrate` to the end:
	 * the source's process until it completed, the destination's until the
	 * bench saw it complete, and of that its vCPU threads.  <0: unknown.
	 */
	double src_cpu_ms, dst_cpu_ms, dst_vcpu_cpu_ms;
};

/*
 * CPU time used so far by process @pid (its threads that exited included)
 * and by those of its threads named "vcpu*", in ms.  0 or -errno.
 */
static int bench_proc_cpu(pid_t pid, double *all_ms, double *vcpu_ms)
{
	char path[300], buf[512], *p;
	long hz = sysconf(_SC_CLK_TCK);
	unsigned long long ut, st;
	struct dirent *de;
	DIR *dir;
	int fd;
	ssize_t n;

	*all_ms = *vcpu_ms = 0;
	for (int pass = 0; pass < 2; pass++) {
		snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
		dir = pass ? opendir(path) : NULL;
		if (pass && !dir)
			return -errno;
		for (;;) {
			if (pass) {
				de = readdir(dir);
				if (!de)
					break;
				if (de->d_name[0] == '.')
					continue;
				snprintf(path, sizeof(path), "/proc/%d/task/%s/stat", (int)pid,
					 de->d_name);
			} else {
				snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
			}
			fd = open(path, O_RDONLY | O_CLOEXEC);
			n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
			if (fd >= 0)
				close(fd);
			if (n > 0) {
				buf[n] = 0;
				/* "pid (comm) state ppid ...": utime and stime are fields 14, 15. */
				p = strrchr(buf, ')');
				if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
						&ut, &st) == 2) {
					double ms = (double)(ut + st) * 1000.0 / (double)hz;

					if (!pass)
						*all_ms = ms;
					else if (!strncmp(strchr(buf, '(') + 1, "vcpu", 4))
						*vcpu_ms += ms;
				} else if (!pass) {
					return -EINVAL;
				}
			} else if (!pass) {
				return -ESRCH;
			}
			if (!pass)
				break;
		}
		if (dir)
			closedir(dir);
	}
	return 0;
}

/* ---- one migration ---- */

/* postcopy-ram on, and postcopy-preempt set to *@preempt unless NULL. */
static int bench_set_caps(struct harness_vm *vm, const bool *preempt, struct bench_result *r)
{
	int rc = harness_set_capability(vm, "postcopy-ram", true);

	if (!rc && preempt)
		rc = harness_set_capability(vm, "postcopy-preempt", *preempt);
	return bench_vm_error(vm, rc, r);
}

/* Capabilities and parameters of @mode on both sides, before `migrate`. */
static int bench_prepare(const struct bench_opts *o, const struct bench_mode *mode,
			 struct harness_vm *src, struct harness_vm *dst, struct bench_result *r)
{
	struct json_object *p = json_object_new_object(), *q = NULL;
	int rc;

	json_object_object_add(p, "convergence-timeout",
			       json_object_new_int64((int64_t)o->c.convergence_timeout_s));
	if (mode->after_passes)
		json_object_object_add(p, "postcopy-after-passes",
				       json_object_new_int64((int64_t)mode->after_passes));
	rc = bench_call(src, "migrate-set-parameters", p, NULL, r);
	json_object_put(p);
	if (rc)
		return rc;
	if (mode->postcopy_ram &&
	    (bench_set_caps(dst, NULL, r) || bench_set_caps(src, &mode->preempt, r)))
		return -EIO;
	if (o->c.stream_crc && bench_vm_error(src, harness_set_capability(src, "stream-crc", true), r))
		return -EIO;
	if (mode->postcopy_ram && mode->vcpu_nice >= 0) {
		p = json_object_new_object();
		json_object_object_add(p, "postcopy-vcpu-nice", json_object_new_int(mode->vcpu_nice));
		rc = bench_call(dst, "migrate-set-parameters", p, NULL, r);
		json_object_put(p);
		if (rc)
			return rc;
	} else if (mode->postcopy_ram && bench_default_vcpu_nice < 0 &&
		   bench_call(dst, "query-migrate-parameters", NULL, &q, r) == 0) {
		bench_default_vcpu_nice = (int)harness_json_u64(q, "postcopy-vcpu-nice");
		json_object_put(q);
		q = NULL;
	}
	if (mode->start_postcopy && bench_call(src, "migrate-start-postcopy", NULL, NULL, r))
		return -EIO;
	if (o->dest_ready) {
		/*
		 * As an operator would: the destination was started well ahead
		 * and has allocated its RAM (minor mode keeps it; missing mode
		 * gives it back for userfaultfd, so nothing to wait for there).
		 */
		uint64_t deadline = clock_monotonic_ns() + 60000000000ull;

		for (;;) {
			bool ready;

			rc = bench_call(dst, "query-migrate", NULL, &q, r);
			if (rc)
				return rc;
			ready = strcmp(harness_json_str(q, "postcopy-uffd-mode"), "minor") ||
				harness_json_u64(q, "prealloc-bytes") >= harness_json_u64(q, "total");
			json_object_put(q);
			q = NULL;
			if (ready || clock_monotonic_ns() > deadline)
				break;
			harness_nap_ms(BENCH_POLL_MS);
		}
	}
	rc = bench_call(src, "query-migrate-parameters", NULL, &q, r);
	if (rc == 0)
		r->downtime_limit_ms = harness_json_u64(q, "downtime-limit");
	json_object_put(q);
	return rc;
}

/*
 * After the source completed: poll the destination until it completes too
 * (it does once it holds every page and told the source), and take its
 * postcopy figures.  0 or -errno with r->b.error.
 */
static int bench_dst_done(struct harness_vm *dst, struct bench_pc_result *r)
{
	uint64_t deadline = clock_monotonic_ns() + BENCH_DST_DONE_MS * 1000000ull;
	char status[32] = "";

	while (clock_monotonic_ns() < deadline) {
		struct json_object *q = NULL;

		if (bench_call(dst, "query-migrate", NULL, &q, &r->b))
			return -EIO;
		snprintf(status, sizeof(status), "%s", harness_json_str(q, "status"));
		if (!strcmp(status, "completed")) {
			r->page_requests = harness_json_u64(q, "postcopy-requests");
			r->faults = harness_json_u64(q, "postcopy-faults");
			r->fault_p50_us = harness_json_double(q, "fault-latency-p50-us", 0);
			r->fault_p99_us = harness_json_double(q, "fault-latency-p99-us", 0);
			r->fault_max_us = harness_json_double(q, "fault-latency-max-us", 0);
			r->vcpu_blocked_ms = harness_json_double(q, "vcpu-blocked-time", 0);
			json_object_put(q);
			return 0;
		}
		if (!strcmp(status, "failed") || !strcmp(status, "cancelled")) {
			snprintf(r->b.error, sizeof(r->b.error), "destination %s: %.200s", status,
				 harness_json_str(q, "error-desc"));
			json_object_put(q);
			return -EIO;
		}
		json_object_put(q);
		harness_nap_ms(BENCH_POLL_MS);
	}
	snprintf(r->b.error, sizeof(r->b.error),
		 "destination still %s %d ms after the source completed", status, BENCH_DST_DONE_MS);
	return -ETIMEDOUT;
}

/*
 * Measure the link to @host_addr between @ns's hosts (NULL: this host)
 * before any VM competes for the CPUs: cache-hot bandwidth, bandwidth over
 * @mem_bytes, round trip.  0, or -errno with r->error.
 */
static int bench_probe_link(const struct bench_opts *o, const struct bench_netns *ns,
			    const char *host_addr, uint64_t mem_bytes, struct bench_result *r)
{
	const char *src_ns = ns ? ns->hosts.ns[0] : NULL, *dst_ns = ns ? ns->hosts.ns[1] : NULL;
	int rc;

	rc = bench_link_bandwidth(src_ns, dst_ns, host_addr, o->c.probe_bytes, 0, &r->link_bps);
	if (!rc)
		rc = bench_link_bandwidth(src_ns, dst_ns, host_addr, mem_bytes, mem_bytes,
					  &r->ram_link_bps);
	if (rc) {
		snprintf(r->error, sizeof(r->error), "link bandwidth probe: %s", strerror(-rc));
		return rc;
	}
	rc = bench_link_rtt(src_ns, dst_ns, host_addr, &r->link_rtt_us);
	if (rc)
		snprintf(r->error, sizeof(r->error), "link round-trip probe: %s", strerror(-rc));
	return rc;
}

/*
 * Start the destination with @dst_args (and @mode's userfaultfd and mapping
 * choices), take the URI it listens on into @uri, then the source with
 * @src_args (and @mode's send path).  0, or -errno with r->error.
 */
static int bench_start_vms(const struct bench_opts *o, const struct bench_netns *ns,
			   const struct bench_mode *mode, const char *const dst_args[],
			   const char *const src_args[], struct harness_vm *src, struct harness_vm *dst,
			   char *uri, size_t uri_len, struct bench_result *r)
{
	int rc;

	if (mode->uffd_missing)
		setenv("VMFERRY_POSTCOPY_UFFD", "missing", 1);
	if (mode->eager_map)
		setenv("VMFERRY_POSTCOPY_MAP", "eager", 1);
	rc = bench_vm_start(o->c.bin, ns, 1, "dst", dst_args, dst, r);
	unsetenv("VMFERRY_POSTCOPY_UFFD");
	unsetenv("VMFERRY_POSTCOPY_MAP");
	if (!rc)
		rc = bench_incoming_uri(dst, uri, uri_len, r);
	if (!rc && mode->copy_send)
		setenv("VMFERRY_SEND_COPY", "1", 1);
	if (!rc)
		rc = bench_vm_start(o->c.bin, ns, 0, "src", src_args, src, r);
	unsetenv("VMFERRY_SEND_COPY");
	return rc;
}

/*
 * Migrate from @src (its guest running) to @dst listening on @uri in @mode,
 * and take the figures into *pr: the source's, the destination's once it
 * completes too, the CPU time both spent, the guest's account; then verify
 * the destination's memory.  r->error says when it did not complete.
 */
static void bench_migrate(const struct bench_opts *o, const struct bench_workload *w,
			  const struct bench_mode *mode, struct harness_vm *src,
			  struct harness_vm *dst, const char *uri, struct bench_pc_result *pr)
{
	struct bench_result *r = &pr->b;
	struct json_object *args, *q = NULL;
	double src_cpu0 = -1, dst_cpu0 = 0, dst_vcpu0 = 0, cpu_unused;
	int rc;

	if (bench_prepare(o, mode, src, dst, r))
		return;
	args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string(uri));
	if (w->progress)
		bench_guest_rate(src, &pr->b.guest);
	if (bench_proc_cpu(src->pid, &src_cpu0, &cpu_unused) ||
	    bench_proc_cpu(dst->pid, &dst_cpu0, &dst_vcpu0))
		src_cpu0 = -1;
	rc = bench_call(src, "migrate", args, NULL, r);
	json_object_put(args);
	if (rc || bench_wait_migration(o->c.timeout_s, src, &q, r))
		return;
	if (src_cpu0 >= 0 && !bench_proc_cpu(src->pid, &pr->src_cpu_ms, &cpu_unused))
		pr->src_cpu_ms -= src_cpu0;
	bench_copy_stats(q, r);
	/*
	 * The source shows postcopy figures once it sent pages after the switch
	 * (the destination shows its own whenever postcopy was advised, even
	 * when a hybrid converged without switching).
	 */
	pr->switched = json_object_object_get_ex(q, "postcopy-pages-pushed", NULL);
	pr->pages_pushed = harness_json_u64(q, "postcopy-pages-pushed");
	pr->pages_requested = harness_json_u64(q, "postcopy-pages-requested");
	pr->pages_resent = harness_json_u64(q, "postcopy-pages-resent");
	pr->requests_served = harness_json_u64(q, "postcopy-requests");
	json_object_put(q);
	if (!r->completed)
		return;
	if (bench_dst_done(dst, pr)) {
		r->completed = false;
		snprintf(r->status, sizeof(r->status), "dst-failed");
		return;
	}
	if (src_cpu0 >= 0 && !bench_proc_cpu(dst->pid, &pr->dst_cpu_ms, &pr->dst_vcpu_cpu_ms)) {
		pr->dst_cpu_ms -= dst_cpu0;
		pr->dst_vcpu_cpu_ms -= dst_vcpu0;
	}
	/*
	 * At once: the account closes when the bench sees the end, up to two
	 * polls after it.  The guest runs on the destination meanwhile: at
	 * full speed that adds nothing to guest_lost_ms.
	 */
	bench_guest_close(dst, &pr->b.guest);
	bench_verify_destination(dst, w->name, r);
}

/* One migration; the result in *r (r->b.error set when it did not complete). */
static void bench_one(const struct bench_opts *o, enum bench_transport t, struct bench_netns *n,
		      uint64_t mem_bytes, const struct bench_workload *w,
		      const struct bench_mode *mode, struct bench_pc_result *pr)
{
	struct harness_vm src = { .pid = -1 }, dst = { .pid = -1 };
	char mem[32], vcpus[16], listen_uri[HARNESS_PATH_BYTES + 8], uri[HARNESS_PATH_BYTES + 8];
	/* --dest-ready: all of it up front, not just ahead of the stream. */
	const char *dst_args[] = { "--mem", mem, "--vcpus", vcpus, "--incoming", listen_uri,
				   o->dest_ready ? "--prealloc" : NULL, NULL };
	const char *src_args[] = { "--mem", mem, "--vcpus", vcpus, "--guest", w->spec, NULL };
	const char *host_addr = bench_transport_netns(t) ? n->hosts.addr[1] : "127.0.0.1";
	struct bench_netns *ns = bench_transport_netns(t) ? n : NULL;
	struct bench_result *r = &pr->b;

	memset(pr, 0, sizeof(*pr));
	pr->src_cpu_ms = pr->dst_cpu_ms = pr->dst_vcpu_cpu_ms = -1;
	r->downtime_ms = -1;
	snprintf(mem, sizeof(mem), "%lluM", (unsigned long long)(mem_bytes >> 20));
	snprintf(vcpus, sizeof(vcpus), "%u", o->c.vcpus);
	bench_listen_uri(t, host_addr, listen_uri, sizeof(listen_uri));

	if (bench_probe_link(o, ns, host_addr, mem_bytes, r))
		return;
	/* Pages the guest has not written yet would cross as zero flags only. */
	if (!bench_start_vms(o, ns, mode, dst_args, src_args, &src, &dst, uri, sizeof(uri), r) &&
	    !bench_wait_running(&src, mem_bytes, r))
		bench_migrate(o, w, mode, &src, &dst, uri, pr);
	if (r->error[0]) {
		harness_vm_log_tail(&src, "source");
		harness_vm_log_tail(&dst, "destination");
	}
	harness_vm_quit(&src);
	harness_vm_quit(&dst);
	if (!getenv("POSTCOPY_KEEP")) {
		unlink(src.log_path);
		unlink(dst.log_path);
	}
}

/* ---- output ---- */

static double bench_bound_ms(const struct bench_result *r, double bps)
{
	return bps > 0 ? (double)r->normal_pages * BENCH_PAGE_BYTES / bps * 1000.0 : 0;
}

static double bench_ratio(const struct bench_result *r, double bps)
{
	double bound = bench_bound_ms(r, bps);

	return bound > 0 ? r->total_ms / bound : NAN;
}

static double bench_per_page(const struct bench_result *r, uint64_t mem_bytes)
{
	return (double)r->wire_bytes / (double)(mem_bytes / BENCH_PAGE_BYTES);
}

static struct json_object *bench_line(const char *type, enum bench_transport t,
				      const struct bench_netns *n, uint64_t mem_bytes,
				      const struct bench_workload *w, const struct bench_mode *mode,
				      const struct bench_opts *o)
{
	struct json_object *obj = json_object_new_object();

	json_object_object_add(obj, "bench", json_object_new_string("postcopy"));
	json_object_object_add(obj, "type", json_object_new_string(type));
	json_object_object_add(obj, "mode", json_object_new_string(mode->name));
	/* Precopy never uses the urgent channel: null, not false. */
	json_object_object_add(obj, "preempt",
			       mode->postcopy_ram ? json_object_new_boolean(mode->preempt) : NULL);
	if (mode->after_passes)
		bench_json_u64(obj, "postcopy_after_passes", mode->after_passes);
	if (mode->postcopy_ram) {
		int nice = mode->vcpu_nice >= 0 ? mode->vcpu_nice : bench_default_vcpu_nice;

		json_object_object_add(obj, "uffd_mode",
				       json_object_new_string(mode->uffd_missing ? "missing" : "minor"));
		json_object_object_add(obj, "map", mode->uffd_missing ? NULL :
				       json_object_new_string(mode->eager_map ? "eager" : "lazy"));
		json_object_object_add(obj, "vcpu_nice", nice >= 0 ? json_object_new_int(nice) : NULL);
	}
	json_object_object_add(obj, "send", json_object_new_string(mode->copy_send ? "copy" : "sendfile"));
	json_object_object_add(obj, "transport", json_object_new_string(bench_transport_names[t]));
	if (bench_transport_netns(t) && n && n->shaper[0]) {
		json_object_object_add(obj, "shaper", json_object_new_string(n->shaper));
		bench_json_num(obj, "link_delay_ms", n->delay_us / 1000.0, 3);
	}
	json_object_object_add(obj, "workload", json_object_new_string(w->name));
	json_object_object_add(obj, "guest", json_object_new_string(w->spec));
	bench_json_u64(obj, "guest_ram_bytes", mem_bytes);
	bench_json_u64(obj, "vcpus", o->c.vcpus);
	json_object_object_add(obj, "dest_ready", json_object_new_boolean(o->dest_ready));
	bench_json_u64(obj, "convergence_timeout_s", o->c.convergence_timeout_s);
	return obj;
}

static void bench_print_run(enum bench_transport t, const struct bench_netns *n,
			    uint64_t mem_bytes, const struct bench_workload *w,
			    const struct bench_mode *mode, const struct bench_opts *o, unsigned run,
			    const struct bench_pc_result *pr)
{
	struct json_object *obj = bench_line("run", t, n, mem_bytes, w, mode, o);
	const struct bench_result *r = &pr->b;
	bool pc = pr->switched;

	bench_json_u64(obj, "run", run);
	json_object_object_add(obj, "status",
			       json_object_new_string(r->status[0] ? r->status : "error"));
	if (r->status[0]) {
		bench_json_num(obj, "total_time_ms", r->total_ms, 3);
		bench_json_num(obj, "downtime_ms", r->downtime_ms >= 0 ? r->downtime_ms : NAN, 3);
		bench_json_breakdown(obj, r->breakdown);
		bench_json_num(obj, "setup_time_ms", r->setup_ms, 3);
		bench_json_u64(obj, "downtime_limit_ms", r->downtime_limit_ms);
		bench_json_u64(obj, "bytes_on_wire", r->wire_bytes);
		bench_json_u64(obj, "pages_sent", r->normal_pages + r->zero_pages);
		bench_json_u64(obj, "normal_pages", r->normal_pages);
		bench_json_u64(obj, "zero_pages", r->zero_pages);
		bench_json_u64(obj, "passes", r->passes);
		bench_json_u64(obj, "postcopy_pages_pushed", pr->pages_pushed);
		bench_json_u64(obj, "postcopy_pages_requested", pr->pages_requested);
		bench_json_u64(obj, "postcopy_pages_resent", pr->pages_resent);
		bench_json_u64(obj, "ram_sent_bytes", r->normal_pages * BENCH_PAGE_BYTES);
		bench_json_num(obj, "bytes_per_guest_page", bench_per_page(r, mem_bytes), 1);
		bench_json_num(obj, "wire_bytes_per_guest_byte",
			     (double)r->wire_bytes / (double)mem_bytes, 4);
	}
	bench_json_num(obj, "link_bandwidth_bytes_per_s", r->link_bps, 0);
	bench_json_num(obj, "ram_link_bandwidth_bytes_per_s", r->ram_link_bps, 0);
	bench_json_num(obj, "link_rtt_us", r->link_rtt_us, 1);
	if (r->status[0]) {
		bench_json_num(obj, "bound_ms", bench_bound_ms(r, r->link_bps), 3);
		bench_json_num(obj, "ratio_total_to_bound", bench_ratio(r, r->link_bps), 3);
		bench_json_num(obj, "ram_bound_ms", bench_bound_ms(r, r->ram_link_bps), 3);
		bench_json_num(obj, "ratio_total_to_ram_bound", bench_ratio(r, r->ram_link_bps), 3);
	}
	if (r->completed) {
		json_object_object_add(obj, "postcopy_switched", json_object_new_boolean(pc));
		bench_json_num(obj, "fault_latency_p50_us", pc ? pr->fault_p50_us : NAN, 1);
		bench_json_num(obj, "fault_latency_p99_us", pc ? pr->fault_p99_us : NAN, 1);
		bench_json_num(obj, "fault_latency_max_us", pc ? pr->fault_max_us : NAN, 1);
		bench_json_num(obj, "vcpu_blocked_ms", pc ? pr->vcpu_blocked_ms : NAN, 3);
		bench_json_num(obj, "page_requests", pc ? (double)pr->page_requests : NAN, 0);
		bench_json_num(obj, "postcopy_faults", pc ? (double)pr->faults : NAN, 0);
		bench_json_u64(obj, "page_requests_served", pr->requests_served);
		bench_json_num(obj, "src_cpu_ms", pr->src_cpu_ms >= 0 ? pr->src_cpu_ms : NAN, 0);
		bench_json_num(obj, "dst_cpu_ms", pr->dst_cpu_ms >= 0 ? pr->dst_cpu_ms : NAN, 0);
		bench_json_num(obj, "dst_vcpu_cpu_ms",
			     pr->dst_vcpu_cpu_ms >= 0 ? pr->dst_vcpu_cpu_ms : NAN, 0);
	}
	bench_json_guest(obj, &pr->b.guest);
	json_object_object_add(obj, "verified", json_object_new_boolean(r->verified));
	if (r->completed && !r->verified)
		json_object_object_add(obj, "verify_error", json_object_new_string(r->verify_error));
	if (r->error[0])
		json_object_object_add(obj, "error", json_object_new_string(r->error));
	bench_print(obj);
}

static void bench_print_median(enum bench_transport t, const struct bench_netns *n,
			       uint64_t mem_bytes, const struct bench_workload *w,
			       const struct bench_mode *mode, const struct bench_opts *o,
			       const struct bench_pc_result *rs)
{
	struct json_object *obj = bench_line("median", t, n, mem_bytes, w, mode, o);
	double v[BENCH_MAX_RUNS];
	unsigned ok = 0, verified = 0, postcopy = 0, guest = 0, k;

	for (unsigned i = 0; i < o->c.runs; i++) {
		ok += rs[i].b.completed;
		verified += rs[i].b.verified;
		postcopy += rs[i].b.completed && rs[i].switched;
		guest += rs[i].b.completed && !isnan(bench_guest_speed(&rs[i].b.guest));
	}
	bench_json_u64(obj, "runs", o->c.runs);
	bench_json_u64(obj, "completed", ok);
	bench_json_u64(obj, "verified_runs", verified);
	bench_json_u64(obj, "postcopy_runs", postcopy);
	bench_json_u64(obj, "guest_measured_runs", guest);
	for (unsigned i = 0; i < o->c.runs; i++)
		if (rs[i].b.error[0]) {
			json_object_object_add(obj, "first_error",
					       json_object_new_string(rs[i].b.error));
			break;
		}
	/*
	 * Over the completed runs whose figure is known (NAN: null in the run's
	 * line); @pc: over those where the destination ran postcopy.
	 */
#define MEDIAN_FIELD(key, pc, expr, decimals) do { \
		k = 0; \
		for (unsigned i = 0; i < o->c.runs; i++) \
			if (rs[i].b.completed && (!(pc) || rs[i].switched)) { \
				const struct bench_pc_result *pr = &rs[i]; \
				const struct bench_result *r = &pr->b; \
				(void)pr; \
				(void)r; \
				v[k] = (expr); \
				k += !isnan(v[k]); \
			} \
		bench_json_num(obj, key, bench_median(v, k), decimals); \
	} while (0)
	MEDIAN_FIELD("total_time_ms", false, r->total_ms, 3);
	MEDIAN_FIELD("downtime_ms", false, r->downtime_ms, 3);
	MEDIAN_FIELD("setup_time_ms", false, r->setup_ms, 3);
	MEDIAN_FIELD("bytes_on_wire", false, (double)r->wire_bytes, 0);
	MEDIAN_FIELD("pages_sent", false, (double)(r->normal_pages + r->zero_pages), 0);
	MEDIAN_FIELD("normal_pages", false, (double)r->normal_pages, 0);
	MEDIAN_FIELD("zero_pages", false, (double)r->zero_pages, 0);
	MEDIAN_FIELD("passes", false, (double)r->passes, 1);
	MEDIAN_FIELD("postcopy_pages_pushed", false, (double)pr->pages_pushed, 0);
	MEDIAN_FIELD("postcopy_pages_requested", false, (double)pr->pages_requested, 0);
	MEDIAN_FIELD("postcopy_pages_resent", false, (double)pr->pages_resent, 0);
	MEDIAN_FIELD("bytes_per_guest_page", false, bench_per_page(r, mem_bytes), 1);
	MEDIAN_FIELD("wire_bytes_per_guest_byte", false, (double)r->wire_bytes / (double)mem_bytes, 4);
	MEDIAN_FIELD("link_bandwidth_bytes_per_s", false, r->link_bps, 0);
	MEDIAN_FIELD("bound_ms", false, bench_bound_ms(r, r->link_bps), 3);
	MEDIAN_FIELD("ratio_total_to_bound", false, bench_ratio(r, r->link_bps), 3);
	MEDIAN_FIELD("ram_link_bandwidth_bytes_per_s", false, r->ram_link_bps, 0);
	MEDIAN_FIELD("ram_bound_ms", false, bench_bound_ms(r, r->ram_link_bps), 3);
	MEDIAN_FIELD("ratio_total_to_ram_bound", false, bench_ratio(r, r->ram_link_bps), 3);
	MEDIAN_FIELD("link_rtt_us", false, r->link_rtt_us, 1);
	MEDIAN_FIELD("fault_latency_p50_us", true, pr->fault_p50_us, 1);
	MEDIAN_FIELD("fault_latency_p99_us", true, pr->fault_p99_us, 1);
	MEDIAN_FIELD("fault_latency_max_us", true, pr->fault_max_us, 1);
	MEDIAN_FIELD("vcpu_blocked_ms", true, pr->vcpu_blocked_ms, 3);
	MEDIAN_FIELD("page_requests", true, (double)pr->page_requests, 0);
	MEDIAN_FIELD("src_cpu_ms", false, pr->src_cpu_ms >= 0 ? pr->src_cpu_ms : NAN, 0);
	MEDIAN_FIELD("dst_cpu_ms", false, pr->dst_cpu_ms >= 0 ? pr->dst_cpu_ms : NAN, 0);
	MEDIAN_FIELD("dst_vcpu_cpu_ms", false,
		     pr->dst_vcpu_cpu_ms >= 0 ? pr->dst_vcpu_cpu_ms : NAN, 0);
	MEDIAN_FIELD("guest_speed_during_migration", false, bench_guest_speed(&pr->b.guest), 3);
	MEDIAN_FIELD("guest_lost_ms", false, bench_guest_lost_ms(&pr->b.guest), 1);
#undef MEDIAN_FIELD
	bench_print(obj);
}

/* ---- options ---- */

static void bench_usage(FILE *f)
{
	fprintf(f,
		"usage: postcopy [--mem SIZES] [--workloads LIST] [--modes LIST] [--transports LIST]\n"
		"                [--runs N] [--vcpus N] [--convergence-timeout S] [--timeout S]\n"
		"                [--probe-bytes SIZE] [--dest-ready] [--guest SPEC] [--quick]\n"
		"                [--stream-crc]\n"
		"  SIZES: comma separated, e.g. 256M,1G (default)\n"
		"  workloads: incrementer, heavy, idle (default: all)\n"
		"  modes: pure, pure-missing, pure-nopreempt, pure-vcpu-nice0, pure-vcpu-nice10,\n"
		"         pure-vcpu-nice19, pure-eager-map, pure-copy-send, hybrid, hybrid-missing,\n"
		"         precopy (default: all)\n"
		"  transports: loopback, veth, wire, unix (default: loopback,veth)\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		BENCH_COMMON_LONGOPTS,
		{ "modes", required_argument, NULL, 'M' },
		{ "dest-ready", no_argument, NULL, 'R' },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *workload_names[BENCH_NWORKLOADS], *mode_names[BENCH_NMODES];
	struct bench_opts o = { .dest_ready = false };
	/* Static: the atexit handler reaches it after main() has returned. */
	static struct bench_netns netns;
	bool netns_ok = false;
	struct bench_pc_result *results;
	int opt, taken;

	_Static_assert(BENCH_NWORKLOADS <= BENCH_MAX_WORKLOADS, "workload list too long");
	harness_init("postcopy", "POSTCOPY_KEEP", false);
	bench_common_defaults(&o.c);
	o.c.transport_on[BENCH_VETH] = true;
	for (size_t i = 0; i < BENCH_NWORKLOADS; i++)
		workload_names[i] = bench_workloads[i].name;
	for (size_t i = 0; i < BENCH_NMODES; i++) {
		mode_names[i] = bench_modes[i].opt;
		o.mode_on[i] = true;
	}
	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		taken = bench_common_option(opt, optarg, &o.c, workload_names, BENCH_NWORKLOADS);
		if (taken < 0)
			goto usage;
		if (taken > 0)
			continue;
		switch (opt) {
		case 'M':
			if (bench_parse_names(optarg, mode_names, BENCH_NMODES, o.mode_on))
				goto usage;
			break;
		case 'R':
			o.dest_ready = true;
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
		fprintf(stderr, "postcopy: /dev/kvm not available: %s\n", strerror(errno));
		return 77;
	}
	if (harness_cleanup_on_exit())
		return 1;
	memset(&netns, 0, sizeof(netns));

	/* One (transport, size, workload) at a time: its modes x runs. */
	results = calloc((size_t)BENCH_NMODES * o.c.runs, sizeof(*results));
	if (!results) {
		perror("postcopy");
		return 1;
	}
	for (int t = 0; t < BENCH_TRANSPORT__COUNT; t++) {
		if (!o.c.transport_on[t])
			continue;
		if (bench_transport_netns(t))
			netns_ok = bench_netns_create(&netns, (enum bench_transport)t,
						      BENCH_VETH_DELAY_US) == 0;
		for (unsigned m = 0; m < o.c.nmem; m++) {
			for (size_t w = 0; w < BENCH_NWORKLOADS; w++) {
				if (!o.c.workload_on[w])
					continue;
				for (unsigned i = 0; i < o.c.runs; i++) {
					for (size_t d = 0; d < BENCH_NMODES; d++) {
						struct bench_pc_result *r = &results[d * o.c.runs + i];

						if (!o.mode_on[d])
							continue;
						if (bench_transport_netns(t) && !netns_ok) {
							memset(r, 0, sizeof(*r));
							snprintf(r->b.error, sizeof(r->b.error),
								 "cannot create the network namespaces");
						} else {
							bench_one(&o, (enum bench_transport)t, &netns,
								  o.c.mem_bytes[m], &bench_workloads[w],
								  &bench_modes[d], r);
						}
						bench_print_run((enum bench_transport)t, &netns,
								o.c.mem_bytes[m], &bench_workloads[w],
								&bench_modes[d], &o, i, r);
					}
				}
				for (size_t d = 0; d < BENCH_NMODES; d++)
					if (o.mode_on[d])
						bench_print_median((enum bench_transport)t, &netns,
								   o.c.mem_bytes[m], &bench_workloads[w],
								   &bench_modes[d], &o,
								   &results[d * o.c.runs]);
			}
		}
		if (bench_transport_netns(t) && netns_ok)
			bench_netns_finish(&netns);
	}
	free(results);
	return 0;
usage:
	bench_usage(stderr);
	return 2;
}
