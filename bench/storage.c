/*
 * bench/storage: virtio-blk's own speed against the host's, and migration
 * of a guest with disks in every mode.
 *
 *   storage [--parts LIST] [--cases LIST] [--duration MS] [--device-disk SIZE]
 *           [--mem SIZES] [--workloads LIST] [--modes LIST] [--disks LIST]
 *           [--disk-size SIZE] [--transports LIST] [--runs N] [--vcpus N]
 *           [--convergence-timeout S] [--timeout S] [--probe-bytes SIZE] [--quick]
 *
 *   --parts LIST        device, migration (default both)
 *   --cases LIST        device cases (default all): randread-4k-qd1,
 *                       randwrite-4k-qd1, randread-4k-deep, randwrite-4k-deep
 *                       (every vCPU a job, each with VMF_BLK_MAX_INFLIGHT
 *                       requests in flight: as deep as the guest driver goes),
 *                       seqread-1m, seqwrite-1m
 *   --duration MS       how long each device measurement counts (default 3000)
 *   --device-disk SIZE  the device cases' disk, all data (default 256M)
 *   --mem SIZES         migration: guest RAM (default 1G)
 *   --workloads LIST    migration: moderate (diskwriter,rate=200,fill=1: 2 x
 *                       100 KiB/s), saturating (diskwriter,rate=0,fill=1); fill=1
 *                       writes the guest's RAM first, so RAM moves as a real
 *                       guest's would; idle (idle,fill=1: no disk traffic)
 *                       (default moderate,saturating)
 *   --modes LIST        migration: precopy, postcopy (pure: migrate-start-postcopy
 *                       first) (default both)
 *   --disks LIST        migration: shared (both sides open the same files),
 *                       storage (the destination starts with new empty files
 *                       and --disk ...,incoming=on, the source migrates with
 *                       "storage": true; reported "unsupported" by a VMM
 *                       that refuses either), none (no disk at all: only with
 *                       the idle workload) (default shared,storage)
 *   --disk-size SIZE    migration: the data disk, half full (default 4G)
 *   --max-bandwidth SIZE migration: the source's max-bandwidth in bytes/s
 *                       (default 0: unlimited); a slow postcopy push leaves the
 *                       guest blocks to ask for, for the block-request latencies
 *   --transports LIST   loopback, veth, wire (bench/precopy) (default loopback)
 *   --runs N            runs per combination (default 5)
 *   --quick             smoke: device cases randread-4k-qd1 and seqwrite-1m for
 *                       1 s, migration 256M with a 256M data disk, loopback,
 *                       1 run (modes, disks and workloads as given)
 *   the rest as bench/precopy
 *
 * Device (part a).  For each case and run: the guest - `vmferry run --guest
 * diskbench,...` on the device disk, 256 MiB, --vcpus - counts the requests
 * it completes (query-workload "writes"); the host samples that count
 * --duration apart on its own clock after a 300 ms warm-up.  fio then does
 * the same on the same file (ioengine io_uring, buffered as the VMM's
 * io_uring is, the same block size, depth per job, jobs and per-job
 * regions, --duration).  Even runs measure the guest first, odd runs fio
 * first; each run's ratio compares the two measured in it.  The file is
 * read through once before each measurement, so both start from a warm
 * page cache.
 *
 * Migration (part b).  The guest has two disks: disk0 its diskwriter's
 * (256 MiB, the records `vmferry verify disk` checks), disk1 a data disk of
 * --disk-size half full (every other 64 MiB extent written, the rest
 * holes) that it does not touch - the diskwriter's disk must hold only its
 * records, so the bulk data lives beside it.  Per run: measure the link,
 * start the destination (shared: the same files; storage: new sparse files
 * of the same sizes, incoming=on), the source, wait for the writers, count
 * the guest's write rate for 1 s, migrate, poll to the end, count the
 * rate during the migration (acknowledged records from the start on the
 * source to the end on the destination, over the total time) and for 1 s
 * after, then stop the destination, dump its RAM and verify disk0 against
 * it (`vmferry verify disk`), compare disk1 with the source's (storage),
 * and let the guest go on.
 *
 *   disk_data_bytes = bytes the disks hold that must move: 0 with shared
 *     disks, else the allocated bytes of both disks at the start
 *   bound_ms = (ram_sent_bytes + disk_data_bytes) / link bandwidth
 *   ratio_total_to_bound = total_time_ms / bound_ms
 *   block_request_p50_us / p99_us: from query-migrate's "disk" object
 *     ("request-latency-p50-us", "request-latency-p99-us"), the
 *     destination's unless it says 0, null without one; both sides' objects
 *     are copied ("disk_migration", "disk_migration_destination"), and the
 *     destination's downtime-breakdown ("downtime_breakdown_destination")
 *   disk_quiesce_us: the longest a source disk took to drain at the stop
 *     (query-block "pause_last_ns"): the device's own share of the pause
 *   writes_per_s_before / during / after: records acknowledged per second
 *
 * Output, stdout: one JSON object per run ("type": "run"), then one per
 * combination with medians ("type": "median").  Exit status: 0 (even when
 * runs fail; see the JSON), 1 when the benchmark cannot work, 2 usage, 77
 * without /dev/kvm.  Cleanup as bench/precopy (STORAGE_KEEP=1 keeps the
 * temporary directory).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "util/log.h"
#include "util/size.h"

#include "bench.h"

#define SB_DEVICE_MEM        "256M"
#define SB_WARMUP_MS         300
#define SB_RATE_WINDOW_MS    1000
#define SB_WRITER_DISK_BYTES (256ull << 20)
#define SB_EXTENT_BYTES      (64ull << 20)
#define SB_IO_BYTES          (1u << 20)
#define SB_MAX_INFLIGHT      5u /* the guest SDK's VMF_BLK_MAX_INFLIGHT */
#define SB_REC_BYTES         512u
/*
 * fio's I/O path, the VMM's: io_uring on the page cache (the disk is opened
 * without O_DIRECT).  fio runs with --invalidate=0: by default it drops the
 * file's pages from the page cache before it starts, which made its reads
 * come from the disk while the guest's came from the warm cache.
 */
#define SB_FIO_ENGINE        "io_uring"
#define SB_FIO_DIRECT        0

/* ---- the device cases ---- */

struct sb_case {
	const char *name;
	unsigned mode;          /* diskbench mode= */
	uint64_t bs;
	bool deep;              /* every vCPU a job, SB_MAX_INFLIGHT each; else 1 job at depth 1 */
	const char *fio_rw;
};

static const struct sb_case sb_cases[] = {
	{ "randread-4k-qd1", 1, 4096, false, "randread" },
	{ "randwrite-4k-qd1", 2, 4096, false, "randwrite" },
	{ "randread-4k-deep", 1, 4096, true, "randread" },
	{ "randwrite-4k-deep", 2, 4096, true, "randwrite" },
	{ "seqread-1m", 3, 1u << 20, false, "read" },
	{ "seqwrite-1m", 4, 1u << 20, false, "write" },
};
#define SB_NCASES (sizeof(sb_cases) / sizeof(sb_cases[0]))

static const struct sb_workload {
	const char *name;
	const char *spec;
} sb_workloads[] = {
	/* fill=1: RAM that holds data, as a real guest's does, so RAM moves too. */
	{ "moderate", "diskwriter,rate=200,fill=1" },
	{ "saturating", "diskwriter,rate=0,fill=1" },
	/* No disk traffic: with --disks none, the pause without any disk. */
	{ "idle", "idle,fill=1" },
};
#define SB_NWORKLOADS (sizeof(sb_workloads) / sizeof(sb_workloads[0]))

enum sb_mode { SB_PRECOPY, SB_POSTCOPY, SB_MODE__COUNT };
static const char *const sb_mode_names[SB_MODE__COUNT] = { "precopy", "postcopy" };
enum sb_disks { SB_SHARED, SB_STORAGE, SB_NODISK, SB_DISKS__COUNT };
static const char *const sb_disks_names[SB_DISKS__COUNT] = { "shared", "storage", "none" };
enum sb_part { SB_PART_DEVICE, SB_PART_MIGRATION, SB_PART__COUNT };
static const char *const sb_part_names[SB_PART__COUNT] = { "device", "migration" };

struct sb_opts {
	struct bench_common_opts c;
	bool part_on[SB_PART__COUNT];
	bool case_on[SB_NCASES];
	bool mode_on[SB_MODE__COUNT];
	bool disks_on[SB_DISKS__COUNT];
	uint64_t duration_ms;
	uint64_t device_disk_bytes;
	uint64_t disk_bytes;
	uint64_t max_bandwidth;      /* bytes/s, 0: unlimited */
};

/* ---- files ---- */

/*
 * A file of @bytes at @path (replaced): all data when @every is 1, every
 * other SB_EXTENT_BYTES extent when 2 (half full; the rest holes), none
 * when 0.  The data varies per MiB.  0 or -errno with @err.
 */
static int sb_make_file(const char *path, uint64_t bytes, unsigned every, char *err, size_t errlen)
{
	static uint64_t buf[SB_IO_BYTES / 8];
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600), r = 0;

	if (fd < 0 || ftruncate(fd, (off_t)bytes) < 0) {
		r = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		goto out;
	}
	for (uint64_t off = 0; every && off < bytes; off += SB_IO_BYTES) {
		if ((off / SB_EXTENT_BYTES) % every)
			continue;
		for (size_t i = 0; i < SB_IO_BYTES / 8; i++)
			buf[i] = (off + i * 8) * 0x9e3779b97f4a7c15ull | 1;
		if (pwrite(fd, buf, SB_IO_BYTES, (off_t)off) != (ssize_t)SB_IO_BYTES) {
			r = -EIO;
			snprintf(err, errlen, "writing %s: %s", path, strerror(errno));
			break;
		}
	}
out:
	if (fd >= 0)
		close(fd);
	return r;
}

static uint64_t sb_allocated(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

/* Read @path through once (a warm page cache for what follows). */
static void sb_read_through(const char *path)
{
	static char buf[SB_IO_BYTES];
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	while (fd >= 0 && read(fd, buf, sizeof(buf)) > 0)
		;
	if (fd >= 0)
		close(fd);
}

/* 0 when @a and @b hold the same bytes, else -EBADMSG (or -errno) with @err. */
static int sb_same_data(const char *a, const char *b, char *err, size_t errlen)
{
	static char x[SB_IO_BYTES], y[SB_IO_BYTES];
	int fa = open(a, O_RDONLY | O_CLOEXEC), fb = open(b, O_RDONLY | O_CLOEXEC), r = 0;
	uint64_t off = 0;

	if (fa < 0 || fb < 0) {
		r = -errno;
		snprintf(err, errlen, "cannot open the data disks: %s", strerror(errno));
	}
	while (!r) {
		ssize_t n = read(fa, x, sizeof(x)), m = read(fb, y, sizeof(y));

		if (n != m || n < 0 || memcmp(x, y, (size_t)n)) {
			r = -EBADMSG;
			snprintf(err, errlen, "the destination's data disk differs from the source's "
				 "in the MiB at %llu", (unsigned long long)(off >> 20));
		}
		if (n <= 0)
			break;
		off += (uint64_t)n;
	}
	if (fa >= 0)
		close(fa);
	if (fb >= 0)
		close(fb);
	return r;
}

/* ---- part (a): the device against fio ---- */

struct sb_dev_result {
	bool ok;
	char error[256];
	double guest_iops, host_iops;
};

/* query-workload's summed "writes" (diskbench: requests completed) into *@n. */
static int sb_writes(struct harness_vm *vm, uint64_t *n, struct bench_result *r)
{
	struct json_object *q = NULL;
	int rc = bench_call(vm, "query-workload", NULL, &q, r);

	if (!rc)
		*n = harness_json_u64(q, "writes");
	json_object_put(q);
	return rc;
}

/* Requests per second the guest completes in @o->duration_ms, after it started and warmed up. */
static int sb_guest_iops(const struct sb_opts *o, const struct sb_case *c, const char *disk,
			 double *iops, char *err, size_t errlen)
{
	struct harness_vm vm = { .pid = -1 };
	struct bench_result r = { 0 };
	char vcpus[16], guest[128], diskarg[HARNESS_PATH_BYTES + 8];
	const char *args[] = { "--mem", SB_DEVICE_MEM, "--vcpus", vcpus, "--guest", guest,
			       "--disk", diskarg, NULL };
	uint64_t n0 = 0, n1 = 0, t0, t1, deadline;
	int rc;

	snprintf(vcpus, sizeof(vcpus), "%u", o->c.vcpus);
	snprintf(guest, sizeof(guest), "diskbench,mode=%u,bs=%llu,depth=%u,jobs=%u", c->mode,
		 (unsigned long long)c->bs, c->deep ? SB_MAX_INFLIGHT : 1u,
		 c->deep ? o->c.vcpus : 1u);
	snprintf(diskarg, sizeof(diskarg), "file=%s", disk);
	rc = bench_vm_start(o->c.bin, NULL, 0, "dev", args, &vm, &r);
	deadline = clock_monotonic_ns() + BENCH_READY_MS * 1000000ull;
	while (!rc && n0 == 0 && clock_monotonic_ns() < deadline) {
		harness_nap_ms(10);
		rc = sb_writes(&vm, &n0, &r);
	}
	if (!rc && n0 == 0)
		snprintf(r.error, sizeof(r.error), "the guest completed no request in %d ms",
			 BENCH_READY_MS);
	if (!rc && !r.error[0]) {
		harness_nap_ms(SB_WARMUP_MS);
		t0 = clock_monotonic_ns();
		rc = sb_writes(&vm, &n0, &r);
		harness_nap_ms((unsigned)o->duration_ms);
		t1 = clock_monotonic_ns();
		if (!rc)
			rc = sb_writes(&vm, &n1, &r);
		if (!rc)
			*iops = (double)(n1 - n0) / ((double)(t1 - t0) / 1e9);
	}
	if (r.error[0]) {
		snprintf(err, errlen, "guest: %.200s", r.error);
		harness_vm_log_tail(&vm, "guest");
	}
	harness_vm_quit(&vm);
	unlink(vm.log_path);
	return r.error[0] ? -EIO : 0;
}

/* fio's requests per second on @disk with @c's parameters.  0 or -errno with @err. */
static int sb_fio_iops(const struct sb_opts *o, const struct sb_case *c, const char *disk,
		       double *iops, char *err, size_t errlen)
{
	unsigned jobs = c->deep ? o->c.vcpus : 1u;
	uint64_t region = o->device_disk_bytes / jobs / c->bs * c->bs;
	char cmd[HARNESS_PATH_BYTES + 512], out[1 << 16];
	struct json_object *j = NULL, *job;
	size_t n = 0;
	FILE *p;
	int status;

	snprintf(cmd, sizeof(cmd),
		 "fio --name=storage --filename='%s' --rw=%s --bs=%llu --iodepth=%u "
		 "--numjobs=%u --size=%llu --offset_increment=%llu --ioengine=" SB_FIO_ENGINE
		 " --direct=%d --invalidate=0 --time_based --ramp_time=%ums --runtime=%llums --group_reporting "
		 "--output-format=json 2>&1", disk, c->fio_rw, (unsigned long long)c->bs,
		 c->deep ? SB_MAX_INFLIGHT : 1u, jobs, (unsigned long long)region,
		 (unsigned long long)region, SB_FIO_DIRECT, SB_WARMUP_MS,
		 (unsigned long long)o->duration_ms);
	p = popen(cmd, "r");
	if (!p) {
		snprintf(err, errlen, "fio: %s", strerror(errno));
		return -errno;
	}
	while (n < sizeof(out) - 1) {
		size_t k = fread(out + n, 1, sizeof(out) - 1 - n, p);

		if (k == 0)
			break;
		n += k;
	}
	out[n] = 0;
	status = pclose(p);
	j = status == 0 ? json_tokener_parse(strchr(out, '{') ? strchr(out, '{') : out) : NULL;
	job = j ? json_object_array_get_idx(json_object_object_get(j, "jobs"), 0) : NULL;
	if (!job) {
		snprintf(err, errlen, "fio (status %d; is the Debian package fio installed?): %.160s",
			 status, out);
		json_object_put(j);
		return -EIO;
	}
	*iops = harness_json_double(json_object_object_get(job, "read"), "iops", 0) +
		harness_json_double(json_object_object_get(job, "write"), "iops", 0);
	json_object_put(j);
	return 0;
}

/* One run of one case: guest and host, in the order @host_first says. */
static void sb_device_run(const struct sb_opts *o, const struct sb_case *c, const char *disk,
			  bool host_first, struct sb_dev_result *r)
{
	int rc = 0;

	memset(r, 0, sizeof(*r));
	for (int k = 0; k < 2 && !rc; k++) {
		bool host = (k == 0) == host_first;

		sb_read_through(disk);
		rc = host ? sb_fio_iops(o, c, disk, &r->host_iops, r->error, sizeof(r->error))
			  : sb_guest_iops(o, c, disk, &r->guest_iops, r->error, sizeof(r->error));
	}
	r->ok = rc == 0;
}

static struct json_object *sb_device_line(const char *type, const struct sb_opts *o,
					  const struct sb_case *c)
{
	struct json_object *l = json_object_new_object();

	json_object_object_add(l, "bench", json_object_new_string("storage"));
	json_object_object_add(l, "type", json_object_new_string(type));
	json_object_object_add(l, "part", json_object_new_string("device"));
	json_object_object_add(l, "case", json_object_new_string(c->name));
	bench_json_u64(l, "block_bytes", c->bs);
	bench_json_u64(l, "jobs", c->deep ? o->c.vcpus : 1u);
	bench_json_u64(l, "depth_per_job", c->deep ? SB_MAX_INFLIGHT : 1u);
	bench_json_u64(l, "disk_bytes", o->device_disk_bytes);
	bench_json_u64(l, "duration_ms", o->duration_ms);
	/* fio's settings beside the guest's, so that a reader can check they match. */
	json_object_object_add(l, "fio_rw", json_object_new_string(c->fio_rw));
	json_object_object_add(l, "fio_ioengine", json_object_new_string(SB_FIO_ENGINE));
	bench_json_u64(l, "fio_direct", SB_FIO_DIRECT);
	bench_json_u64(l, "fio_invalidate", 0);
	bench_json_u64(l, "fio_iodepth", c->deep ? SB_MAX_INFLIGHT : 1u);
	bench_json_u64(l, "fio_numjobs", c->deep ? o->c.vcpus : 1u);
	return l;
}

static void sb_device_print_run(const struct sb_opts *o, const struct sb_case *c, unsigned run,
				bool host_first, const struct sb_dev_result *r)
{
	struct json_object *l = sb_device_line("run", o, c);

	bench_json_u64(l, "run", run);
	json_object_object_add(l, "first", json_object_new_string(host_first ? "host" : "guest"));
	if (r->ok) {
		bench_json_num(l, "guest_iops", r->guest_iops, 0);
		bench_json_num(l, "guest_bytes_per_s", r->guest_iops * (double)c->bs, 0);
		bench_json_num(l, "host_iops", r->host_iops, 0);
		bench_json_num(l, "host_bytes_per_s", r->host_iops * (double)c->bs, 0);
		bench_json_num(l, "ratio_guest_to_host", r->guest_iops / r->host_iops, 3);
	} else {
		json_object_object_add(l, "error", json_object_new_string(r->error));
	}
	bench_print(l);
}

static void sb_device_print_median(const struct sb_opts *o, const struct sb_case *c,
				   const struct sb_dev_result *rs, unsigned nruns)
{
	struct json_object *l = sb_device_line("median", o, c);
	double g[BENCH_MAX_RUNS], h[BENCH_MAX_RUNS], q[BENCH_MAX_RUNS];
	unsigned k = 0;

	for (unsigned i = 0; i < nruns; i++) {
		if (!rs[i].ok)
			continue;
		g[k] = rs[i].guest_iops;
		h[k] = rs[i].host_iops;
		q[k++] = rs[i].guest_iops / rs[i].host_iops;
	}
	bench_json_u64(l, "runs", nruns);
	bench_json_u64(l, "completed", k);
	bench_json_num(l, "guest_iops", bench_median(g, k), 0);
	bench_json_num(l, "guest_bytes_per_s", bench_median(g, k) * (double)c->bs, 0);
	bench_json_num(l, "host_iops", bench_median(h, k), 0);
	bench_json_num(l, "host_bytes_per_s", bench_median(h, k) * (double)c->bs, 0);
	bench_json_num(l, "ratio_guest_to_host", bench_median(q, k), 3);
	bench_print(l);
}

/* Part (a): every case, the runs interleaved (guest first on even runs, fio first on odd). */
static int sb_device_part(const struct sb_opts *o)
{
	static struct sb_dev_result rs[SB_NCASES][BENCH_MAX_RUNS];
	char disk[HARNESS_PATH_BYTES], err[256];

	if (harness_unique_path(disk, sizeof(disk), "device-disk") ||
	    sb_make_file(disk, o->device_disk_bytes, 1, err, sizeof(err))) {
		fprintf(stderr, "storage: the device disk: %s\n", err);
		return -EIO;
	}
	for (unsigned i = 0; i < o->c.runs; i++)
		for (size_t c = 0; c < SB_NCASES; c++) {
			if (!o->case_on[c])
				continue;
			sb_device_run(o, &sb_cases[c], disk, i % 2, &rs[c][i]);
			sb_device_print_run(o, &sb_cases[c], i, i % 2, &rs[c][i]);
		}
	for (size_t c = 0; c < SB_NCASES; c++)
		if (o->case_on[c])
			sb_device_print_median(o, &sb_cases[c], rs[c], o->c.runs);
	unlink(disk);
	return 0;
}

/* ---- part (b): migration with disks ---- */

struct sb_mig_result {
	struct bench_result b;
	bool unsupported;            /* the VMM refused storage migration */
	uint64_t disk_data_bytes;
	double before_wps, during_wps, after_wps;
	double p50_us, p99_us;       /* NaN: not reported */
	double quiesce_us;           /* the source's disks' drain in the stop (query-block), NaN */
	char disk_obj[512];          /* the source's query-migrate "disk", JSON text, or "" */
	char disk_obj_dst[512];      /* the destination's */
	char breakdown_dst[512];     /* the destination's downtime-breakdown, JSON text, or "" */
};

struct sb_run {
	const struct sb_opts *o;
	enum bench_transport t;
	struct bench_netns *n;
	uint64_t mem_bytes;
	const struct sb_workload *w;
	enum sb_mode mode;
	enum sb_disks disks;
	const char *data_disk;        /* the source's data disk, made once */
	char src_w[HARNESS_PATH_BYTES], dst_w[HARNESS_PATH_BYTES], dst_d[HARNESS_PATH_BYTES];
	struct harness_vm src, dst;
	struct sb_mig_result *r;
};

/* Records per second the guest acknowledges over SB_RATE_WINDOW_MS.  0 or -errno. */
static int sb_write_rate(struct harness_vm *vm, double *wps, struct bench_result *r)
{
	uint64_t n0 = 0, n1 = 0, t0 = clock_monotonic_ns(), t1;
	int rc = sb_writes(vm, &n0, r);

	if (rc)
		return rc;
	harness_nap_ms(SB_RATE_WINDOW_MS);
	t1 = clock_monotonic_ns();
	rc = sb_writes(vm, &n1, r);
	if (!rc)
		*wps = (double)(n1 - n0) / ((double)(t1 - t0) / 1e9);
	return rc;
}

/* The last line of @vm's log that names --disk into @out (why a VMM refused to start). */
static void sb_log_disk_line(const struct harness_vm *vm, char *out, size_t len)
{
	char buf[2048] = "";
	FILE *f = fopen(vm->log_path, "r");
	char *nl;

	snprintf(out, len, "(see its log)");
	if (!f)
		return;
	while (fgets(buf, sizeof(buf), f))
		if (strstr(buf, "--disk"))
			snprintf(out, len, "%s", buf);
	fclose(f);
	nl = strchr(out, '\n');
	if (nl)
		*nl = 0;
}

/* Start the destination: the same files (shared) or new empty ones with incoming=on. */
static int sb_start_destination(struct sb_run *s, char *uri, size_t urilen)
{
	struct sb_mig_result *r = s->r;
	bool storage = s->disks == SB_STORAGE;
	char mem[32], vcpus[16], listen_uri[64], w[HARNESS_PATH_BYTES + 32],
	     d[HARNESS_PATH_BYTES + 32], why[256];
	const char *args[16] = { "--mem", mem, "--vcpus", vcpus, "--incoming", listen_uri,
				 "--disk", w, "--disk", d };
	size_t n = s->disks == SB_NODISK ? 6 : 10;

	snprintf(mem, sizeof(mem), "%lluM", (unsigned long long)(s->mem_bytes >> 20));
	snprintf(vcpus, sizeof(vcpus), "%u", s->o->c.vcpus);
	snprintf(listen_uri, sizeof(listen_uri), "tcp:%s:0",
		 s->t != BENCH_LOOPBACK ? s->n->hosts.addr[1] : "127.0.0.1");
	snprintf(w, sizeof(w), "file=%s%s", storage ? s->dst_w : s->src_w,
		 storage ? ",incoming=on" : "");
	snprintf(d, sizeof(d), "file=%s%s", storage ? s->dst_d : s->data_disk,
		 storage ? ",incoming=on" : "");
	if (s->mode == SB_POSTCOPY)
		args[n++] = "--postcopy";
	args[n] = NULL;
	if (!bench_vm_start(s->o->c.bin, s->t != BENCH_LOOPBACK ? s->n : NULL, 1, "dst", args,
			    &s->dst, &r->b) &&
	    !bench_incoming_uri(&s->dst, uri, urilen, &r->b))
		return 0;
	if (storage && harness_wait_exit(&s->dst, 2000) >= 0) {
		sb_log_disk_line(&s->dst, why, sizeof(why));
		r->unsupported = true;
		snprintf(r->b.error, sizeof(r->b.error), "storage migration unsupported: the "
			 "destination refused --disk ...,incoming=on: %.160s", why);
	}
	return -EIO;
}

static int sb_start_source(struct sb_run *s)
{
	char mem[32], vcpus[16], w[HARNESS_PATH_BYTES + 8], d[HARNESS_PATH_BYTES + 8];
	const char *args[] = { "--mem", mem, "--vcpus", vcpus, "--guest", s->w->spec,
			       s->disks == SB_NODISK ? NULL : "--disk", w, "--disk", d, NULL };
	uint64_t deadline, progress;
	bool running = false;

	snprintf(mem, sizeof(mem), "%lluM", (unsigned long long)(s->mem_bytes >> 20));
	snprintf(vcpus, sizeof(vcpus), "%u", s->o->c.vcpus);
	snprintf(w, sizeof(w), "file=%s", s->src_w);
	snprintf(d, sizeof(d), "file=%s", s->data_disk);
	if (bench_vm_start(s->o->c.bin, s->t != BENCH_LOOPBACK ? s->n : NULL, 0, "src", args,
			   &s->src, &s->r->b))
		return -EIO;
	deadline = clock_monotonic_ns() + BENCH_READY_MS * 1000000ull;
	while (!running && clock_monotonic_ns() < deadline) {
		if (bench_workload(&s->src, &running, &progress, &s->r->b))
			return -EIO;
		if (!running)
			harness_nap_ms(10);
	}
	if (!running) {
		snprintf(s->r->b.error, sizeof(s->r->b.error), "source guest not writing after %d ms",
			 BENCH_READY_MS);
		return -EIO;
	}
	return 0;
}

/* Parameters, the postcopy switch, migrate (with "storage" for storage).  0 or -errno. */
static int sb_start_migration(struct sb_run *s, const char *uri)
{
	struct sb_mig_result *r = s->r;
	struct json_object *p = json_object_new_object();
	int rc;

	json_object_object_add(p, "convergence-timeout",
			       json_object_new_int64((int64_t)s->o->c.convergence_timeout_s));
	json_object_object_add(p, "max-bandwidth",
			       json_object_new_int64((int64_t)s->o->max_bandwidth));
	rc = bench_call(&s->src, "migrate-set-parameters", p, NULL, &r->b);
	json_object_put(p);
	if (!rc && s->mode == SB_POSTCOPY) {
		rc = bench_vm_error(&s->src, harness_set_capability(&s->src, "postcopy-ram", true),
				    &r->b);
		if (!rc)
			rc = bench_call(&s->src, "migrate-start-postcopy", NULL, NULL, &r->b);
	}
	if (rc)
		return rc;
	p = json_object_new_object();
	json_object_object_add(p, "uri", json_object_new_string(uri));
	if (s->disks == SB_STORAGE)
		json_object_object_add(p, "storage", json_object_new_boolean(true));
	rc = bench_call(&s->src, "migrate", p, NULL, &r->b);
	json_object_put(p);
	if (rc && s->disks == SB_STORAGE) {
		char why[200];

		snprintf(why, sizeof(why), "%.190s", r->b.error);
		r->unsupported = true;
		snprintf(r->b.error, sizeof(r->b.error), "storage migration unsupported: migrate "
			 "with \"storage\": %s", why);
	}
	return rc;
}

/*
 * query-migrate's "disk" object, if the VMM reports one, into @text; the
 * block-request latencies from it unless known already (the destination's
 * are read first: its guest waits for the blocks).
 */
static void sb_copy_disk_stats(struct json_object *q, struct sb_mig_result *r, char *text,
			       size_t len)
{
	struct json_object *d;

	if (!json_object_object_get_ex(q, "disk", &d) || !json_object_is_type(d, json_type_object))
		return;
	snprintf(text, len, "%s", json_object_to_json_string_ext(d, JSON_C_TO_STRING_PLAIN));
	if (isnan(r->p50_us) || r->p50_us == 0) {
		r->p50_us = harness_json_double(d, "request-latency-p50-us", NAN);
		r->p99_us = harness_json_double(d, "request-latency-p99-us", NAN);
	}
}

/* The longest time a source disk took to quiesce at the last pause (query-block), or NaN. */
static double sb_quiesce_us(struct harness_vm *src)
{
	struct json_object *q = NULL;
	double us = NAN;

	if (harness_call(src, "query-block", NULL, &q) == 0)
		for (size_t i = 0; i < json_object_array_length(q); i++) {
			struct json_object *st = json_object_object_get(
				json_object_array_get_idx(q, i), "stats");
			double v = (double)harness_json_u64(st, "pause_last_ns") / 1e3;

			us = isnan(us) || v > us ? v : us;
		}
	json_object_put(q);
	return us;
}

/*
 * On the destination after the move: stop, dump RAM, verify the writer's
 * disk against it, resume; the data disk equal to the source's (storage).
 */
static void sb_verify_disks(struct sb_run *s)
{
	struct sb_mig_result *r = s->r;
	char dump[HARNESS_PATH_BYTES];
	const char *w = s->disks == SB_STORAGE ? s->dst_w : s->src_w;
	const char *args[] = { "verify", "disk", w, dump, NULL };
	struct json_object *a = json_object_new_object();
	struct harness_result res = { 0 };
	int rc;

	harness_unique_path(dump, sizeof(dump), "dump");
	json_object_object_add(a, "file", json_object_new_string(dump));
	rc = harness_call(&s->dst, "stop", NULL, NULL);
	if (!rc)
		rc = harness_call(&s->dst, "dump-guest-memory", a, NULL);
	json_object_put(a);
	if (!rc)
		rc = harness_run(args, NULL, 120000, &res);
	if (rc || res.status != 0)
		snprintf(r->b.verify_error, sizeof(r->b.verify_error), "verify disk: %.200s",
			 rc ? s->dst.error : res.err);
	else if (s->disks == SB_STORAGE)
		sb_same_data(s->data_disk, s->dst_d, r->b.verify_error, sizeof(r->b.verify_error));
	harness_result_free(&res);
	unlink(dump);
	if (harness_call(&s->dst, "cont", NULL, NULL) && !r->b.verify_error[0])
		snprintf(r->b.verify_error, sizeof(r->b.verify_error), "cont: %.200s",
			 s->dst.error);
	r->b.verified = !r->b.verify_error[0];
}

static bool sb_diskwriter(const struct sb_workload *w)
{
	return !strncmp(w->spec, "diskwriter", 10);
}

/* Both sides' final "disk" objects (the source's, complete by now, read again). */
static void sb_disk_stats(struct sb_run *s)
{
	struct sb_mig_result *r = s->r;
	struct json_object *q = NULL;

	if (harness_call(&s->dst, "query-migrate", NULL, &q) == 0) {
		sb_copy_disk_stats(q, r, r->disk_obj_dst, sizeof(r->disk_obj_dst));
		bench_breakdown_text(q, r->breakdown_dst, sizeof(r->breakdown_dst));
	}
	json_object_put(q);
	q = NULL;
	if (harness_call(&s->src, "query-migrate", NULL, &q) == 0)
		sb_copy_disk_stats(q, r, r->disk_obj, sizeof(r->disk_obj));
	json_object_put(q);
}

/* The move itself, from migrate to the guest's rates and checks after it. */
static void sb_migrate(struct sb_run *s, const char *uri)
{
	struct sb_mig_result *r = s->r;
	struct json_object *q = NULL;
	uint64_t n0 = 0, n1 = 0, t0, t1;

	if (sb_write_rate(&s->src, &r->before_wps, &r->b) || sb_start_migration(s, uri))
		return;
	t0 = clock_monotonic_ns();
	if (sb_writes(&s->src, &n0, &r->b) ||
	    bench_wait_migration(s->o->c.timeout_s, &s->src, &q, &r->b))
		return;
	bench_copy_stats(q, &r->b);
	bench_breakdown_text(q, r->b.breakdown, sizeof(r->b.breakdown));
	json_object_put(q);
	r->quiesce_us = s->disks == SB_NODISK ? NAN : sb_quiesce_us(&s->src);
	if (!r->b.completed ||
	    harness_wait_migrate_status(&s->dst, "completed", 60000, BENCH_POLL_MS) ||
	    sb_writes(&s->dst, &n1, &r->b))
		return;
	sb_disk_stats(s);
	t1 = clock_monotonic_ns();
	r->during_wps = (double)(n1 - n0) / ((double)(t1 - t0) / 1e9);
	if (sb_write_rate(&s->dst, &r->after_wps, &r->b))
		return;
	if (!sb_diskwriter(s->w))
		bench_verify_destination(&s->dst, s->w->name, &r->b);
	else if (r->after_wps > 0)
		sb_verify_disks(s);
	else
		snprintf(r->b.verify_error, sizeof(r->b.verify_error),
			 "the guest wrote nothing on the destination");
}

static void sb_migration_run(struct sb_run *s)
{
	struct sb_mig_result *r = s->r;
	bool storage = s->disks == SB_STORAGE;
	const char *addr = s->t != BENCH_LOOPBACK ? s->n->hosts.addr[1] : "127.0.0.1";
	char uri[96], err[256] = "";
	int rc;

	memset(r, 0, sizeof(*r));
	r->b.downtime_ms = -1;
	r->p50_us = r->p99_us = r->quiesce_us = NAN;
	s->src = s->dst = (struct harness_vm){ .pid = -1 };
	rc = bench_link_bandwidth(s->t != BENCH_LOOPBACK ? s->n->hosts.ns[0] : NULL,
				  s->t != BENCH_LOOPBACK ? s->n->hosts.ns[1] : NULL, addr,
				  s->o->c.probe_bytes, 0, &r->b.link_bps);
	if (rc) {
		snprintf(r->b.error, sizeof(r->b.error), "link bandwidth probe: %s", strerror(-rc));
		return;
	}
	if (harness_unique_path(s->src_w, sizeof(s->src_w), "writer") ||
	    harness_unique_path(s->dst_w, sizeof(s->dst_w), "writer-dst") ||
	    harness_unique_path(s->dst_d, sizeof(s->dst_d), "data-dst") ||
	    sb_make_file(s->src_w, SB_WRITER_DISK_BYTES, 0, err, sizeof(err)) ||
	    (storage && (sb_make_file(s->dst_w, SB_WRITER_DISK_BYTES, 0, err, sizeof(err)) ||
			 sb_make_file(s->dst_d, s->o->disk_bytes, 0, err, sizeof(err))))) {
		snprintf(r->b.error, sizeof(r->b.error), "disk files: %s", err);
		goto out;
	}
	if (!sb_start_destination(s, uri, sizeof(uri)) && !sb_start_source(s)) {
		r->disk_data_bytes = storage ? sb_allocated(s->src_w) + sb_allocated(s->data_disk) : 0;
		sb_migrate(s, uri);
	}
out:
	if (r->b.error[0] && !r->unsupported) {
		harness_vm_log_tail(&s->src, "source");
		harness_vm_log_tail(&s->dst, "destination");
	}
	harness_vm_quit(&s->src);
	harness_vm_quit(&s->dst);
	unlink(s->src.log_path);
	unlink(s->dst.log_path);
	unlink(s->src_w);
	unlink(s->dst_w);
	unlink(s->dst_d);
}

/* ---- part (b): output ---- */

static double sb_bound_ms(const struct sb_mig_result *r)
{
	double bytes = (double)r->b.normal_pages * BENCH_PAGE_BYTES + (double)r->disk_data_bytes;

	return r->b.link_bps > 0 ? bytes / r->b.link_bps * 1000.0 : NAN;
}

static struct json_object *sb_mig_line(const char *type, const struct sb_run *s)
{
	struct json_object *l = json_object_new_object();

	json_object_object_add(l, "bench", json_object_new_string("storage"));
	json_object_object_add(l, "type", json_object_new_string(type));
	json_object_object_add(l, "part", json_object_new_string("migration"));
	json_object_object_add(l, "transport", json_object_new_string(bench_transport_names[s->t]));
	if (s->t != BENCH_LOOPBACK && s->n->shaper[0])
		json_object_object_add(l, "shaper", json_object_new_string(s->n->shaper));
	json_object_object_add(l, "mode", json_object_new_string(sb_mode_names[s->mode]));
	json_object_object_add(l, "disks", json_object_new_string(sb_disks_names[s->disks]));
	json_object_object_add(l, "workload", json_object_new_string(s->w->name));
	json_object_object_add(l, "guest", json_object_new_string(s->w->spec));
	bench_json_u64(l, "guest_ram_bytes", s->mem_bytes);
	bench_json_u64(l, "data_disk_bytes", s->o->disk_bytes);
	bench_json_u64(l, "writer_disk_bytes", SB_WRITER_DISK_BYTES);
	bench_json_u64(l, "vcpus", s->o->c.vcpus);
	return l;
}

static void sb_mig_print_run(const struct sb_run *s, unsigned run)
{
	const struct sb_mig_result *r = s->r;
	struct json_object *l = sb_mig_line("run", s), *d;
	double bound = sb_bound_ms(r);

	bench_json_u64(l, "run", run);
	json_object_object_add(l, "status", json_object_new_string(
		r->unsupported ? "unsupported" : r->b.status[0] ? r->b.status : "error"));
	if (r->b.status[0]) {
		bench_json_num(l, "total_time_ms", r->b.total_ms, 3);
		bench_json_num(l, "downtime_ms", r->b.downtime_ms >= 0 ? r->b.downtime_ms : NAN, 3);
		bench_json_breakdown(l, r->b.breakdown);
		d = r->breakdown_dst[0] ? json_tokener_parse(r->breakdown_dst) : NULL;
		if (d)
			json_object_object_add(l, "downtime_breakdown_destination", d);
		bench_json_u64(l, "ram_sent_bytes", r->b.normal_pages * BENCH_PAGE_BYTES);
		bench_json_u64(l, "disk_data_bytes", r->disk_data_bytes);
		bench_json_u64(l, "bytes_on_wire", r->b.wire_bytes);
		bench_json_num(l, "bound_ms", bound, 3);
		bench_json_num(l, "ratio_total_to_bound", r->b.total_ms / bound, 3);
		bench_json_num(l, "block_request_p50_us", r->p50_us, 3);
		bench_json_num(l, "block_request_p99_us", r->p99_us, 3);
		bench_json_num(l, "disk_quiesce_us", r->quiesce_us, 1);
		d = r->disk_obj[0] ? json_tokener_parse(r->disk_obj) : NULL;
		if (d)
			json_object_object_add(l, "disk_migration", d);
		d = r->disk_obj_dst[0] ? json_tokener_parse(r->disk_obj_dst) : NULL;
		if (d)
			json_object_object_add(l, "disk_migration_destination", d);
		bench_json_num(l, "writes_per_s_before", r->before_wps, 1);
		bench_json_num(l, "writes_per_s_during", r->during_wps, 1);
		bench_json_num(l, "writes_per_s_after", r->after_wps, 1);
		bench_json_num(l, "write_bytes_per_s_before", r->before_wps * SB_REC_BYTES, 0);
	}
	bench_json_num(l, "link_bandwidth_bytes_per_s", r->b.link_bps, 0);
	json_object_object_add(l, "verified", json_object_new_boolean(r->b.verified));
	if (r->b.completed && !r->b.verified)
		json_object_object_add(l, "verify_error", json_object_new_string(r->b.verify_error));
	if (r->b.error[0])
		json_object_object_add(l, "error", json_object_new_string(r->b.error));
	bench_print(l);
}

static void sb_mig_print_median(const struct sb_run *s, const struct sb_mig_result *rs,
				unsigned nruns)
{
	struct json_object *l = sb_mig_line("median", s);
	double v[BENCH_MAX_RUNS];
	unsigned ok = 0, verified = 0, unsupported = 0, k;

	for (unsigned i = 0; i < nruns; i++) {
		ok += rs[i].b.completed;
		verified += rs[i].b.verified;
		unsupported += rs[i].unsupported;
	}
	bench_json_u64(l, "runs", nruns);
	bench_json_u64(l, "completed", ok);
	bench_json_u64(l, "verified_runs", verified);
	bench_json_u64(l, "unsupported_runs", unsupported);
#define SB_MEDIAN(key, expr, decimals) do { \
		k = 0; \
		for (unsigned i = 0; i < nruns; i++) { \
			const struct sb_mig_result *r = &rs[i]; \
			if (r->b.completed && !isnan(expr)) \
				v[k++] = (expr); \
		} \
		bench_json_num(l, key, bench_median(v, k), decimals); \
	} while (0)
	SB_MEDIAN("total_time_ms", r->b.total_ms, 3);
	SB_MEDIAN("downtime_ms", r->b.downtime_ms, 3);
	SB_MEDIAN("bound_ms", sb_bound_ms(r), 3);
	SB_MEDIAN("ratio_total_to_bound", r->b.total_ms / sb_bound_ms(r), 3);
	SB_MEDIAN("block_request_p50_us", r->p50_us, 3);
	SB_MEDIAN("block_request_p99_us", r->p99_us, 3);
	SB_MEDIAN("disk_quiesce_us", r->quiesce_us, 1);
	SB_MEDIAN("writes_per_s_before", r->before_wps, 1);
	SB_MEDIAN("writes_per_s_during", r->during_wps, 1);
	SB_MEDIAN("writes_per_s_after", r->after_wps, 1);
	SB_MEDIAN("link_bandwidth_bytes_per_s", r->b.link_bps, 0);
#undef SB_MEDIAN
	bench_print(l);
}

/*
 * Combination @c (disks c / SB_MODE__COUNT, mode c % SB_MODE__COUNT) into
 * @s with its result at @r, when it runs: chosen, and a diskwriter only
 * with disks.  False when it does not.
 */
static bool sb_pick(struct sb_run *s, int c, struct sb_mig_result *r)
{
	int d = c / SB_MODE__COUNT, md = c % SB_MODE__COUNT;

	if (!s->o->disks_on[d] || !s->o->mode_on[md] || (d == SB_NODISK && sb_diskwriter(s->w)))
		return false;
	s->disks = (enum sb_disks)d;
	s->mode = (enum sb_mode)md;
	s->r = r;
	return true;
}

/*
 * Part (b) over one transport: for each size, workload, run index, disks
 * kind and mode in turn (so that every combination sees the same load),
 * then the medians.
 */
static void sb_migration_transport(const struct sb_opts *o, enum bench_transport t,
				   struct bench_netns *n, const char *data_disk)
{
	static struct sb_mig_result rs[SB_DISKS__COUNT][SB_MODE__COUNT][BENCH_MAX_RUNS];
	struct sb_run s = { .o = o, .t = t, .n = n, .data_disk = data_disk };

	for (unsigned m = 0; m < o->c.nmem; m++) {
		s.mem_bytes = o->c.mem_bytes[m];
		for (size_t w = 0; w < SB_NWORKLOADS; w++) {
			if (!o->c.workload_on[w])
				continue;
			s.w = &sb_workloads[w];
			for (unsigned i = 0; i < o->c.runs; i++)
				for (int c = 0; c < SB_DISKS__COUNT * SB_MODE__COUNT; c++)
					if (sb_pick(&s, c, &rs[c / SB_MODE__COUNT][c % SB_MODE__COUNT][i])) {
						sb_migration_run(&s);
						sb_mig_print_run(&s, i);
					}
			for (int c = 0; c < SB_DISKS__COUNT * SB_MODE__COUNT; c++)
				if (sb_pick(&s, c, rs[c / SB_MODE__COUNT][c % SB_MODE__COUNT]))
					sb_mig_print_median(&s, s.r, o->c.runs);
		}
	}
}

static int sb_migration_part(const struct sb_opts *o)
{
	/* Static: the atexit handler reaches it after main() has returned. */
	static struct bench_netns netns;
	char data_disk[HARNESS_PATH_BYTES], err[256];

	if (harness_unique_path(data_disk, sizeof(data_disk), "data") ||
	    sb_make_file(data_disk, o->disk_bytes, 2, err, sizeof(err))) {
		fprintf(stderr, "storage: the data disk: %s\n", err);
		return -EIO;
	}
	for (int t = 0; t < BENCH_TRANSPORT__COUNT; t++) {
		if (!o->c.transport_on[t])
			continue;
		memset(&netns, 0, sizeof(netns));
		if (t != BENCH_LOOPBACK && bench_netns_create(&netns, (enum bench_transport)t, 0)) {
			fprintf(stderr, "storage: cannot create the network namespaces for %s\n",
				bench_transport_names[t]);
			continue;
		}
		sb_migration_transport(o, (enum bench_transport)t, &netns, data_disk);
		if (t != BENCH_LOOPBACK)
			bench_netns_finish(&netns);
	}
	unlink(data_disk);
	return 0;
}

/* ---- options ---- */

static void sb_usage(FILE *f)
{
	fprintf(f,
		"usage: storage [--parts LIST] [--cases LIST] [--duration MS] [--device-disk SIZE]\n"
		"               [--mem SIZES] [--workloads LIST] [--modes LIST] [--disks LIST]\n"
		"               [--disk-size SIZE] [--max-bandwidth SIZE] [--transports LIST]\n"
		"               [--runs N] [--vcpus N]\n"
		"               [--convergence-timeout S] [--timeout S] [--probe-bytes SIZE] [--quick]\n"
		"  parts: device, migration (default both)\n"
		"  cases: randread-4k-qd1, randwrite-4k-qd1, randread-4k-deep, randwrite-4k-deep,\n"
		"         seqread-1m, seqwrite-1m (default all)\n"
		"  workloads: moderate, saturating, idle (default moderate,saturating)\n"
		"  modes: precopy, postcopy (default both)\n"
		"  disks: shared, storage, none (default shared,storage)\n"
		"  transports: loopback, veth, wire (default loopback)\n");
}

static void sb_defaults(struct sb_opts *o)
{
	bench_common_defaults(&o->c);
	o->c.mem_bytes[0] = 1ull << 30;
	o->c.nmem = 1;
	o->c.runs = 5;
	for (size_t i = 0; i < SB_PART__COUNT; i++)
		o->part_on[i] = true;
	for (size_t i = 0; i < SB_NCASES; i++)
		o->case_on[i] = true;
	for (size_t i = 0; i < SB_MODE__COUNT; i++)
		o->mode_on[i] = true;
	for (size_t i = 0; i < SB_DISKS__COUNT; i++)
		o->disks_on[i] = i != SB_NODISK;
	for (size_t i = 0; i < SB_NWORKLOADS; i++)
		o->c.workload_on[i] = sb_diskwriter(&sb_workloads[i]);
	o->duration_ms = 3000;
	o->device_disk_bytes = 256ull << 20;
	o->disk_bytes = 4ull << 30;
}

static void sb_quick(struct sb_opts *o)
{
	o->c.mem_bytes[0] = 256ull << 20;
	o->c.nmem = 1;
	o->c.runs = 1;
	o->c.transport_on[BENCH_LOOPBACK] = true;
	o->c.transport_on[BENCH_VETH] = o->c.transport_on[BENCH_WIRE] = false;
	for (size_t i = 0; i < SB_NCASES; i++)
		o->case_on[i] = !strcmp(sb_cases[i].name, "randread-4k-qd1") ||
				!strcmp(sb_cases[i].name, "seqwrite-1m");
	o->duration_ms = 1000;
	o->disk_bytes = 256ull << 20;
}

/* One option of this program's own.  1 taken, -1 a bad value. */
static int sb_option(int opt, const char *arg, struct sb_opts *o)
{
	const char *cases[SB_NCASES];

	for (size_t i = 0; i < SB_NCASES; i++)
		cases[i] = sb_cases[i].name;
	switch (opt) {
	case 'P': return bench_parse_names(arg, sb_part_names, SB_PART__COUNT, o->part_on) ? -1 : 1;
	case 'K': return bench_parse_names(arg, cases, SB_NCASES, o->case_on) ? -1 : 1;
	case 'M': return bench_parse_names(arg, sb_mode_names, SB_MODE__COUNT, o->mode_on) ? -1 : 1;
	case 'k':
		return bench_parse_names(arg, sb_disks_names, SB_DISKS__COUNT, o->disks_on) ? -1 : 1;
	case 'D': return size_parse_uint(arg, 100, 600000, &o->duration_ms) ? -1 : 1;
	case 'E': /* not 'S': --stream-crc's, a common option */
		return size_parse(arg, &o->device_disk_bytes) || o->device_disk_bytes < (16u << 20) ||
		       o->device_disk_bytes % (1u << 20) ? -1 : 1;
	case 'Z':
		return size_parse(arg, &o->disk_bytes) || o->disk_bytes < SB_EXTENT_BYTES ||
		       o->disk_bytes % (1u << 20) ? -1 : 1;
	case 'B': return size_parse(arg, &o->max_bandwidth) || o->max_bandwidth > INT64_MAX ? -1 : 1;
	default: return -1;
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		BENCH_COMMON_LONGOPTS,
		{ "parts", required_argument, NULL, 'P' },
		{ "cases", required_argument, NULL, 'K' },
		{ "modes", required_argument, NULL, 'M' },
		{ "disks", required_argument, NULL, 'k' },
		{ "duration", required_argument, NULL, 'D' },
		{ "device-disk", required_argument, NULL, 'E' },
		{ "disk-size", required_argument, NULL, 'Z' },
		{ "max-bandwidth", required_argument, NULL, 'B' },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *workload_names[SB_NWORKLOADS];
	struct sb_opts o;
	int opt, taken, rc = 0;

	for (size_t i = 0; i < SB_NWORKLOADS; i++)
		workload_names[i] = sb_workloads[i].name;
	harness_init("storage", "STORAGE_KEEP", false);
	sb_defaults(&o);
	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (opt == 'h') {
			sb_usage(stdout);
			return 0;
		}
		taken = bench_common_option(opt, optarg, &o.c, workload_names, SB_NWORKLOADS);
		if (taken == 0)
			taken = sb_option(opt, optarg, &o);
		if (taken < 0)
			goto usage;
	}
	if (optind != argc || o.c.vcpus > 8)
		goto usage;
	if (o.c.quick)
		sb_quick(&o);
	if (access("/dev/kvm", R_OK | W_OK) != 0) {
		fprintf(stderr, "storage: /dev/kvm not available: %s\n", strerror(errno));
		return 77;
	}
	if (harness_cleanup_on_exit())
		return 1;
	if (o.part_on[SB_PART_DEVICE])
		rc = sb_device_part(&o);
	if (!rc && o.part_on[SB_PART_MIGRATION])
		rc = sb_migration_part(&o);
	return rc ? 1 : 0;
usage:
	sb_usage(stderr);
	return 2;
}
