/*
 * virtio-blk with a shared disk: the diskwriter (2 vCPUs, one queue each)
 * writing records to one disk file that source and destination both open.
 * For precopy, pure postcopy, hybrid, pure postcopy with the link cut and
 * recovered, and CPR (the disk's open file lent
 * over the cpr channel: it works with the path renamed away, and a new
 * process given another disk refuses): after the move the
 * destination's RAM dump and the disk verify together (`vmferry verify disk
 * IMAGE DUMP`: every acknowledged record present and intact, no hole) and
 * the guest's acknowledged sequence numbers keep advancing there.  A failed
 * migration - a destination without the disk refusing the stream, a
 * destination killed mid-way - leaves the source writing with every
 * acknowledged record intact.  Also --disk's errors.  Skips (77) without KVM.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "lib/migtest.h"
#include "harness/harness.h"

#define DK_MEM "64M"
#define DK_VCPUS "2"
#define DK_GUEST "diskwriter,rate=400"
#define DK_DISK_BYTES (32ll << 20)
/*
 * Hybrid: the diskwriter dirties so little RAM that precopy would converge
 * at once; a tiny downtime limit over a slow link keeps it from stopping,
 * so the switch comes after the first pass.
 */
/*
 * Hybrid: postcopy after the first pass, decided by the source itself (a
 * test that asked for it once the pass ended could come too late on a
 * loaded host: the migration had already begun its stop).
 */
#define DK_BANDWIDTH "{\"max-bandwidth\": 1000000, \"downtime-limit\": 1, " \
		     "\"postcopy-after-passes\": 1}"
#define DK_BANDWIDTH_SLOW "{\"max-bandwidth\": 5000000}"

struct dk {
	char path[HARNESS_PATH_BYTES];
	char arg[HARNESS_PATH_BYTES + 8];     /* file=PATH */
	char arg_nopoll[HARNESS_PATH_BYTES + 24]; /* file=PATH,poll-us=0 */
	const char *opts[4];                  /* --disk file=PATH [--postcopy] */
	const char *opts_postcopy[4];
	const char *opts_nopoll[3];           /* --disk file=PATH,poll-us=0 */
};

static void dk_make(struct dk *d)
{
	int fd;

	assert_int_equal(harness_unique_path(d->path, sizeof(d->path), "disk"), 0);
	fd = open(d->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, DK_DISK_BYTES), 0);
	close(fd);
	snprintf(d->arg, sizeof(d->arg), "file=%s", d->path);
	snprintf(d->arg_nopoll, sizeof(d->arg_nopoll), "file=%s,poll-us=0", d->path);
	d->opts_nopoll[0] = "--disk";
	d->opts_nopoll[1] = d->arg_nopoll;
	d->opts_nopoll[2] = NULL;
	d->opts[0] = d->opts_postcopy[0] = "--disk";
	d->opts[1] = d->opts_postcopy[1] = d->arg;
	d->opts[2] = NULL;
	d->opts_postcopy[2] = "--postcopy";
	d->opts_postcopy[3] = NULL;
}

/* Completed, in postcopy when @postcopy (after at least one pass when @hybrid). */
static void dk_expect_completed(struct harness_vm *src, bool postcopy, bool hybrid)
{
	struct json_object *q = migtest_wait_migration(src);
	int64_t pc = harness_json_int(q, "postcopy-pages-pushed") +
		     harness_json_int(q, "postcopy-pages-requested");

	if (strcmp(harness_json_str(q, "status"), "completed"))
		fail_msg("migration %s: %s", harness_json_str(q, "status"),
			 harness_json_str(q, "error-desc"));
	fprintf(stderr, "migration: downtime %.3f ms, %lld passes, %lld postcopy pages\n",
		harness_json_double(q, "downtime", -1), (long long)harness_json_int(q, "passes"),
		(long long)pc);
	if (postcopy)
		assert_true(pc > 0);
	if (hybrid)
		assert_true(harness_json_int(q, "passes") >= 1);
	json_object_put(q);
}

enum dk_mode { DK_PRECOPY = 1, DK_HYBRID, DK_POSTCOPY };

static void dk_migrate(enum dk_mode mode)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	bool postcopy = mode != DK_PRECOPY;
	struct dk d;

	dk_make(&d);
	/* Precopy: the source's disk thread never polls (every request a kick),
	 * the destination's does (the default). */
	migtest_spawn_extra(&src, DK_MEM, DK_VCPUS, DK_GUEST, NULL,
			    mode == DK_PRECOPY ? d.opts_nopoll : d.opts);
	migtest_spawn_incoming_extra(&dst, DK_MEM, DK_VCPUS, true,
				     postcopy ? d.opts_postcopy : d.opts, uri, sizeof(uri));
	assert_int_equal(harness_wait_passes(&src, 2, 30000), 0);
	if (mode == DK_HYBRID)
		assert_int_equal(harness_set_params(&src, DK_BANDWIDTH), 0);
	if (postcopy)
		assert_int_equal(harness_set_capability(&src, "postcopy-ram", true), 0);
	if (mode == DK_POSTCOPY)
		assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
	assert_int_equal(harness_migrate(&src, uri), 0);
	dk_expect_completed(&src, postcopy, mode == DK_HYBRID);
	migtest_wait_migration_status(&dst, "completed");
	migtest_disk_expect_alive(&dst, d.path);
	assert_int_equal(harness_vm_quit(&src), 0);
	assert_int_equal(harness_vm_quit(&dst), 0);
	unlink(d.path);
}

static void test_precopy(void **state) { (void)state; dk_migrate(DK_PRECOPY); }
static void test_hybrid(void **state) { (void)state; dk_migrate(DK_HYBRID); }
static void test_postcopy(void **state) { (void)state; dk_migrate(DK_POSTCOPY); }

/* A live update: the new process opens the same disk and goes on writing. */
static void test_cpr(void **state)
{
	struct harness_vm old;
	struct migtest_cpr_target t;
	struct dk d;

	(void)state;
	dk_make(&d);
	migtest_spawn_extra(&old, DK_MEM, DK_VCPUS, DK_GUEST, NULL, d.opts);
	assert_int_equal(harness_wait_passes(&old, 2, 30000), 0);
	migtest_cpr_update(&old, &t, d.opts);
	migtest_disk_expect_alive(&t.vm, d.path);
	assert_int_equal(harness_vm_quit(&t.vm), 0);
	unlink(d.path);
}

/*
 * Nothing reopened: the disk file is renamed away while the old process
 * writes to it, so --disk file=PATH names nothing on the new process and
 * only the lent fd can carry the disk over.  The moved file verifies with
 * the new process's RAM, and the guest keeps writing into it.
 */
static void test_cpr_disk_renamed(void **state)
{
	struct harness_vm old;
	struct migtest_cpr_target t;
	struct json_object *q = NULL;
	char moved[HARNESS_PATH_BYTES];
	struct dk d;

	(void)state;
	dk_make(&d);
	migtest_spawn_extra(&old, DK_MEM, DK_VCPUS, DK_GUEST, NULL, d.opts);
	assert_int_equal(harness_wait_passes(&old, 2, 30000), 0);
	assert_int_equal(harness_unique_path(moved, sizeof(moved), "moved"), 0);
	assert_int_equal(rename(d.path, moved), 0);
	migtest_disk_expect_writing(&old, 20);
	migtest_cpr_update(&old, &t, d.opts);
	assert_int_equal(access(d.path, F_OK), -1); /* nobody recreated it */
	assert_int_equal(harness_call(&t.vm, "query-block", NULL, &q), 0);
	assert_int_equal(json_object_array_length(q), 1);
	assert_int_equal(harness_json_int(json_object_array_get_idx(q, 0), "size"), DK_DISK_BYTES);
	json_object_put(q);
	memcpy(d.path, moved, sizeof(d.path));
	migtest_disk_expect_alive(&t.vm, d.path);
	assert_int_equal(harness_vm_quit(&t.vm), 0);
	unlink(d.path);
}

/*
 * From an older build, which lent RAM only (cpr channel version 1: the
 * test hook VMFERRY_CPR_LEND_NO_DISKS=1 makes the old process behave so):
 * the new process opens its --disk path, as before disks were lent.
 */
static void test_cpr_from_older_build(void **state)
{
	struct harness_vm old;
	struct migtest_cpr_target t;
	struct dk d;

	(void)state;
	dk_make(&d);
	setenv("VMFERRY_CPR_LEND_NO_DISKS", "1", 1);
	migtest_spawn_extra(&old, DK_MEM, DK_VCPUS, DK_GUEST, NULL, d.opts);
	unsetenv("VMFERRY_CPR_LEND_NO_DISKS");
	assert_int_equal(harness_wait_passes(&old, 2, 30000), 0);
	migtest_cpr_update(&old, &t, d.opts);
	migtest_disk_expect_alive(&t.vm, d.path);
	assert_int_equal(harness_vm_quit(&t.vm), 0);
	unlink(d.path);
}

/*
 * A new process whose --disk does not match the lent disk refuses the
 * update before it builds anything on it, with @want in the old process's
 * error; the guest writes on in the old process, verified.
 */
static void dk_cpr_refused(const char *const new_opts[], const char *want, const struct dk *d,
			   struct harness_vm *old)
{
	struct migtest_cpr_target t;
	struct json_object *q;

	migtest_cpr_spawn_new(&t, NULL, new_opts);
	assert_int_equal(harness_set_params(old, "{\"mode\": \"cpr-transfer\"}"), 0);
	assert_int_equal(harness_migrate_channels(old, t.main_uri, t.cpr_uri), 0);
	q = migtest_wait_migration(old);
	assert_string_equal(harness_json_str(q, "status"), "failed");
	fprintf(stderr, "refused update: %s\n", harness_json_str(q, "error-desc"));
	if (!strstr(harness_json_str(q, "error-desc"), want))
		fail_msg("expected \"%s\" in: %s", want, harness_json_str(q, "error-desc"));
	json_object_put(q);
	assert_int_equal(harness_wait_exit(&t.vm, 10000), 1);
	migtest_disk_expect_alive(old, d->path);
}

static void test_cpr_disk_mismatch(void **state)
{
	struct harness_vm old;
	struct dk d, other;
	char ro[HARNESS_PATH_BYTES + 24];
	const char *other_opts[] = { "--disk", other.arg, NULL };
	const char *ro_opts[] = { "--disk", ro, NULL };

	(void)state;
	dk_make(&d);
	dk_make(&other); /* the same size, another file */
	snprintf(ro, sizeof(ro), "%s,readonly=on", d.arg);
	migtest_spawn_extra(&old, DK_MEM, DK_VCPUS, DK_GUEST, NULL, d.opts);
	assert_int_equal(harness_wait_passes(&old, 2, 30000), 0);
	dk_cpr_refused(other_opts, "is not the file the old process has open", &d, &old);
	dk_cpr_refused(ro_opts, "the old process has it open read-write, --disk here says "
		       "readonly=on", &d, &old);
	dk_cpr_refused(NULL, "lent the disk fd disk0, which nothing in this process takes", &d,
		       &old);
	/* Two disks here, one there. */
	{
		const char *two[] = { "--disk", d.arg, "--disk", other.arg, NULL };

		dk_cpr_refused(two, "disk1: the old process lent no such disk", &d, &old);
	}
	assert_int_equal(harness_vm_quit(&old), 0);
	unlink(d.path);
	unlink(other.path);
}

/*
 * Postcopy recovery with a disk: the diskwriter fills its RAM first
 * (fill=1: mostly zero pages would let postcopy end before any cut), the
 * migration goes pure postcopy through a relay throttled to DK_CUT_BANDWIDTH,
 * and the relay cuts every connection at once mid-postcopy.  Both sides
 * pause and come back by themselves (postcopy-recover-timeout); the guest's
 * disk requests meanwhile wait on pages like its other accesses.  The
 * migration completes after the cut, and RAM and disk verify on the
 * destination, where the guest keeps writing.
 */
#define DK_CUT_MEM "128M"
#define DK_CUT_GUEST "diskwriter,rate=400,fill=1"
#define DK_CUT_BANDWIDTH "{\"max-bandwidth\": 20000000, \"postcopy-recover-timeout\": 60}"

static void test_postcopy_recovery(void **state)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8], via[64];
	struct harness_relay *relay = NULL;
	struct json_object *q;
	int dst_port = 0;
	struct dk d;

	(void)state;
	dk_make(&d);
	migtest_spawn_extra(&src, DK_CUT_MEM, DK_VCPUS, DK_CUT_GUEST, NULL, d.opts);
	migtest_spawn_incoming_extra(&dst, DK_CUT_MEM, DK_VCPUS, false, d.opts_postcopy, uri,
				     sizeof(uri));
	migtest_disk_expect_writing(&src, 20); /* filled, and writing */
	assert_int_equal(sscanf(strrchr(uri, ':') + 1, "%d", &dst_port), 1);
	assert_int_equal(harness_relay_start(dst_port, &relay), 0);
	snprintf(via, sizeof(via), "tcp:127.0.0.1:%d", harness_relay_port(relay));
	assert_int_equal(harness_set_params(&src, DK_CUT_BANDWIDTH), 0);
	assert_int_equal(harness_set_params(&dst, "{\"postcopy-recover-timeout\": 60}"), 0);
	assert_int_equal(harness_set_capability(&src, "postcopy-ram", true), 0);
	assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
	assert_int_equal(harness_migrate(&src, via), 0);
	migtest_wait_migration_status(&src, "postcopy-active");
	migtest_wait_migration_status(&dst, "postcopy-active");
	/* Some pages pushed, most still to come (128 MiB at 20 MB/s: about 6 s). */
	for (int i = 0; i < 2000 && migtest_query_int(&src, "transferred") < (8 << 20); i++)
		harness_nap_ms(5);
	q = NULL;
	assert_int_equal(harness_call(&src, "query-migrate", NULL, &q), 0);
	assert_string_equal(harness_json_str(q, "status"), "postcopy-active"); /* not over yet */
	json_object_put(q);
	harness_relay_cut(relay);
	for (int i = 0; i < 6000 && (migtest_query_int(&src, "postcopy-pauses") < 1 ||
				     migtest_query_int(&dst, "postcopy-pauses") < 1); i++)
		harness_nap_ms(5);
	assert_true(migtest_query_int(&src, "postcopy-pauses") >= 1);
	assert_true(migtest_query_int(&dst, "postcopy-pauses") >= 1);
	q = migtest_wait_migration(&src);
	if (strcmp(harness_json_str(q, "status"), "completed"))
		fail_msg("migration %s: %s", harness_json_str(q, "status"),
			 harness_json_str(q, "error-desc"));
	fprintf(stderr, "recovery with a disk: %lld pauses, %lld pages requested, %lld pushed\n",
		(long long)harness_json_int(q, "postcopy-pauses"),
		(long long)harness_json_int(q, "postcopy-pages-requested"),
		(long long)harness_json_int(q, "postcopy-pages-pushed"));
	json_object_put(q);
	migtest_wait_migration_status(&dst, "completed");
	harness_relay_stop(relay);
	migtest_disk_expect_alive(&dst, d.path);
	assert_int_equal(harness_vm_quit(&src), 0);
	assert_int_equal(harness_vm_quit(&dst), 0);
	unlink(d.path);
}

/* A disk and a source writing to it, @dst listening (@dst_disk: with the disk). */
static void dk_start_pair(struct dk *d, struct harness_vm *src, struct harness_vm *dst,
			  bool dst_disk, char *uri, size_t len)
{
	dk_make(d);
	migtest_spawn_extra(src, DK_MEM, DK_VCPUS, DK_GUEST, NULL, d->opts);
	migtest_spawn_incoming_extra(dst, DK_MEM, DK_VCPUS, true, dst_disk ? d->opts : NULL, uri,
				     len);
	assert_int_equal(harness_wait_passes(src, 2, 30000), 0);
}

/* A destination without the disk refuses the stream; the source writes on. */
static void test_destination_without_disk(void **state)
{
	struct harness_vm src, dst;
	struct json_object *q;
	char uri[HARNESS_PATH_BYTES + 8];
	struct dk d;

	(void)state;
	dk_start_pair(&d, &src, &dst, false, uri, sizeof(uri));
	assert_int_equal(harness_migrate(&src, uri), 0);
	q = migtest_wait_migration(&src);
	assert_string_equal(harness_json_str(q, "status"), "failed");
	fprintf(stderr, "without the disk: %s\n", harness_json_str(q, "error-desc"));
	assert_non_null(strstr(harness_json_str(q, "error-desc"), "unknown section id 10"));
	json_object_put(q);
	assert_true(harness_wait_exit(&dst, 30000) != 0);
	migtest_disk_expect_alive(&src, d.path);
	assert_int_equal(harness_vm_quit(&src), 0);
	unlink(d.path);
}

/* The destination dies during postcopy's precopy phase: the source writes on. */
static void test_destination_killed(void **state)
{
	struct harness_vm src, dst;
	struct json_object *q;
	char uri[HARNESS_PATH_BYTES + 8];
	struct dk d;

	(void)state;
	dk_start_pair(&d, &src, &dst, true, uri, sizeof(uri));
	assert_int_equal(harness_set_params(&src, DK_BANDWIDTH_SLOW), 0);
	assert_int_equal(harness_migrate(&src, uri), 0);
	migtest_wait_migration_status(&src, "active");
	harness_vm_kill(&dst);
	q = migtest_wait_migration(&src);
	assert_string_equal(harness_json_str(q, "status"), "failed");
	json_object_put(q);
	migtest_disk_expect_alive(&src, d.path);
	assert_int_equal(harness_vm_quit(&src), 0);
	unlink(d.path);
}

/* --disk's errors: said clearly, before any guest runs. */
static void test_disk_errors(void **state)
{
	static const struct { const char *spec, *want; int status; } cases[] = {
		{ "file=/nonexistent/disk.img", "cannot open /nonexistent/disk.img", 1 },
		{ "path=/tmp/x", "unknown key 'path'", 2 },
		{ "file=", "file= needs a path", 2 },
		{ "readonly=on", "file=PATH is required", 2 },
		{ "file=/tmp/x,readonly=maybe", "readonly=maybe: on or off", 2 },
		{ "file=/tmp/x,file=/tmp/y", "repeated key 'file'", 2 },
		{ "file=/tmp/x,poll-us=1001", "poll-us=1001: microseconds, 0 to 1000", 2 },
		{ "file=/tmp/x,poll-us=5ms", "poll-us=5ms: microseconds, 0 to 1000", 2 },
		{ "file=/tmp/x,poll-us=", "poll-us=: microseconds, 0 to 1000", 2 },
		{ "file=/tmp/x,poll-us=99999999999999999999", "microseconds, 0 to 1000", 2 },
		{ "file=/dev/null", "neither a regular file nor a block device", 1 },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *args[] = { "run", "--mem", "16M", "--disk", cases[i].spec, NULL };
		struct harness_result res;

		assert_int_equal(harness_run(args, NULL, 30000, &res), 0);
		if (res.status != cases[i].status || !strstr(res.err, cases[i].want))
			fail_msg("--disk %s: status %d, stderr %s", cases[i].spec, res.status,
				 res.err);
		harness_result_free(&res);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_disk_errors),
		cmocka_unit_test(test_precopy),
		cmocka_unit_test(test_postcopy),
		cmocka_unit_test(test_hybrid),
		cmocka_unit_test(test_postcopy_recovery),
		cmocka_unit_test(test_cpr),
		cmocka_unit_test(test_cpr_disk_renamed),
		cmocka_unit_test(test_cpr_disk_mismatch),
		cmocka_unit_test(test_cpr_from_older_build),
		cmocka_unit_test(test_destination_without_disk),
		cmocka_unit_test(test_destination_killed),
	};

	return MIGTEST_RUN(tests);
}
