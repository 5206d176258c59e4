/*
 * Storage migration of a disk only the source has (`migrate --storage` to a
 * destination started with `--disk file=NEW,incoming=on`), by precopy, pure
 * postcopy, hybrid and postcopy with a cut and recovery: the diskwriter
 * (2 vCPUs) writing records to the first 16 MiB of a 64 MiB sparse disk
 * whose rest holds known data and holes.  After the move, on the
 * destination: `vmferry verify disk NEW DUMP` (every acknowledged record
 * intact, RAM agreeing), the data beyond the records byte-identical to the
 * source's, its holes still holes (no data bytes sent for them), and the
 * guest writing on.  A failed storage migration - wrong size, a destination
 * without incoming=on or a source without --storage, ENOSPC on the
 * destination (a tiny tmpfs), a cancel, a destination killed - leaves the
 * source writing with every acknowledged record intact; a destination
 * that cannot make the disk durable once the guest runs there, or never
 * says, leaves the guest there and tells to keep the source's disk.  Also
 * the option errors.  Skips (77) without KVM.
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
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "lib/migtest.h"
#include "harness/harness.h"

#define ST_MEM "64M"
#define ST_VCPUS "2"
#define ST_SPAN (16ll << 20)   /* the diskwriter's records: span=16 (MiB) */
#define ST_GUEST "diskwriter,rate=400,span=16"
#define ST_GUEST_BUSY "diskwriter,rate=0,span=16"
#define ST_DISK_BYTES (64ll << 20)
#define ST_SLOW "{\"max-bandwidth\": 2000000}"
#define ST_BUSY_LINK "{\"max-bandwidth\": 20000000}"
/* Pure postcopy: a push this slow leaves the guest blocks to ask for. */
#define ST_CRAWL "{\"max-bandwidth\": 100000}"
/*
 * Hybrid: postcopy after pass 1 unless it converged, and with 1 ms at
 * 4 MB/s (4 KiB) it does not: the diskwriter dirties more pages than that
 * during a pass of seconds.
 */
#define ST_HYBRID_LINK "{\"max-bandwidth\": 4000000, \"downtime-limit\": 1, " \
		       "\"postcopy-after-passes\": 1}"

/* The source's data beyond the records; the rest of the disk is holes. */
static const struct { long long off, len; } st_data[] = {
	{ 20ll << 20, 8ll << 20 },
	{ (40ll << 20) + 4096, 100 << 10 },
	{ 63ll << 20, 1ll << 20 },
};
#define ST_DATA_BYTES ((8ll << 20) + (100 << 10) + (1ll << 20))
/* Garbage on the destination's file where the source has a hole. */
#define ST_GARBAGE_OFF (32ll << 20)
#define ST_GARBAGE_LEN (1ll << 20)

struct st {
	char src[HARNESS_PATH_BYTES], dst[HARNESS_PATH_BYTES + 16];
	char src_arg[HARNESS_PATH_BYTES + 8], dst_arg[HARNESS_PATH_BYTES + 40];
	const char *src_opts[3], *dst_opts[4];  /* dst: [--postcopy] */
	char mnt[HARNESS_PATH_BYTES];          /* a tmpfs for NEW, or "" */
};

static struct st st_cur; /* for the teardown: unmount what a failed test left */

/* Byte @off of the source's known data. */
static uint8_t st_byte(long long off)
{
	uint64_t x = (uint64_t)off * 0x9e3779b97f4a7c15ull;

	return (uint8_t)(x >> 56 ^ x >> 29);
}

static void st_write_file(const char *path, long long bytes, bool prefill, bool garbage)
{
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	static uint8_t buf[1 << 20];

	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, bytes), 0);
	for (size_t i = 0; prefill && i < sizeof(st_data) / sizeof(st_data[0]); i++) {
		for (long long at = 0; at < st_data[i].len; at += (long long)sizeof(buf)) {
			long long n = st_data[i].len - at < (long long)sizeof(buf)
				      ? st_data[i].len - at : (long long)sizeof(buf);

			for (long long k = 0; k < n; k++)
				buf[k] = st_byte(st_data[i].off + at + k);
			assert_int_equal(pwrite(fd, buf, (size_t)n, st_data[i].off + at), n);
		}
	}
	if (garbage) {
		memset(buf, 0xee, sizeof(buf));
		assert_int_equal(pwrite(fd, buf, ST_GARBAGE_LEN, ST_GARBAGE_OFF), ST_GARBAGE_LEN);
	}
	close(fd);
}

/* Mount a tmpfs of @bytes at a unique directory (for NEW). */
static void st_mount(struct st *s, const char *size)
{
	char opts[64];

	assert_int_equal(harness_unique_path(s->mnt, sizeof(s->mnt), "mnt"), 0);
	assert_int_equal(mkdir(s->mnt, 0700), 0);
	snprintf(opts, sizeof(opts), "size=%s", size);
	if (mount("tmpfs", s->mnt, "tmpfs", 0, opts) < 0) {
		rmdir(s->mnt);
		s->mnt[0] = 0;
		skip(); /* not allowed here (no CAP_SYS_ADMIN) */
	}
}

static void st_unmount(struct st *s)
{
	if (!s->mnt[0])
		return;
	if (umount2(s->mnt, MNT_DETACH) < 0)
		fprintf(stderr, "umount %s: %s\n", s->mnt, strerror(errno));
	rmdir(s->mnt);
	s->mnt[0] = 0;
}

static int st_teardown(void **state)
{
	(void)state;
	st_unmount(&st_cur);
	return 0;
}

/*
 * The source disk (data + holes) and the destination's NEW of @dst_bytes
 * (garbage where the source has a hole; on the tmpfs when mounted), with
 * incoming=on when @incoming.
 */
static void st_make(struct st *s, long long dst_bytes, bool incoming)
{
	assert_int_equal(harness_unique_path(s->src, sizeof(s->src), "disk"), 0);
	if (s->mnt[0])
		snprintf(s->dst, sizeof(s->dst), "%s/new", s->mnt);
	else
		assert_int_equal(harness_unique_path(s->dst, sizeof(s->dst), "new"), 0);
	st_write_file(s->src, ST_DISK_BYTES, true, false);
	st_write_file(s->dst, dst_bytes, false,
		      !s->mnt[0] && dst_bytes >= ST_GARBAGE_OFF + ST_GARBAGE_LEN);
	snprintf(s->src_arg, sizeof(s->src_arg), "file=%s", s->src);
	snprintf(s->dst_arg, sizeof(s->dst_arg), "file=%s%s", s->dst, incoming ? ",incoming=on" : "");
	s->src_opts[0] = s->dst_opts[0] = "--disk";
	s->src_opts[1] = s->src_arg;
	s->dst_opts[1] = s->dst_arg;
	s->src_opts[2] = s->dst_opts[2] = s->dst_opts[3] = NULL;
}

static void st_remove(struct st *s)
{
	unlink(s->src);
	unlink(s->dst);
	st_unmount(s);
}

/* migrate to @uri with "storage": @storage.  0 or the harness_call error. */
static int st_migrate(struct harness_vm *src, const char *uri, bool storage)
{
	struct json_object *args = json_object_new_object();
	int r;

	json_object_object_add(args, "uri", json_object_new_string(uri));
	json_object_object_add(args, "storage", json_object_new_boolean(storage));
	r = harness_call(src, "migrate", args, NULL);
	json_object_put(args);
	return r;
}

/* [@from, @to) of both files is byte-identical. */
static void st_expect_same(const char *a, const char *b, long long from, long long to)
{
	static uint8_t x[1 << 20], y[1 << 20];
	int fa = open(a, O_RDONLY | O_CLOEXEC), fb = open(b, O_RDONLY | O_CLOEXEC);

	assert_true(fa >= 0 && fb >= 0);
	for (long long off = from; off < to; off += sizeof(x)) {
		assert_int_equal(pread(fa, x, sizeof(x), off), sizeof(x));
		assert_int_equal(pread(fb, y, sizeof(y), off), sizeof(y));
		if (memcmp(x, y, sizeof(x)))
			fail_msg("%s and %s differ in the MiB at %lld", a, b, off);
	}
	close(fa);
	close(fb);
}

/* NEW's holes: none of the source's holes (and the garbage) became data. */
static void st_expect_holes(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	off_t d;

	assert_true(fd >= 0);
	d = lseek(fd, 28ll << 20, SEEK_DATA);
	assert_true(fstat(fd, &st) == 0);
	close(fd);
	if (d < (40ll << 20))
		fail_msg("%s has data at %lld, in the source's hole 28..40 MiB", path, (long long)d);
	if ((long long)st.st_blocks * 512 > ST_SPAN + ST_DATA_BYTES + (4ll << 20))
		fail_msg("%s holds %lld bytes: holes were filled", path, (long long)st.st_blocks * 512);
}

/* The source's "disk" figures: data sent, holes free. */
static void st_expect_disk_figures(struct json_object *q, bool busy)
{
	struct json_object *d;
	int64_t sent;

	if (!json_object_object_get_ex(q, "disk", &d))
		fail_msg("query-migrate has no disk object");
	sent = harness_json_int(d, "transferred");
	fprintf(stderr, "disk: %lld bytes, %lld blocks, %lld zero blocks, %lld dirtied\n",
		(long long)sent, (long long)harness_json_int(d, "blocks-sent"),
		(long long)harness_json_int(d, "zero-blocks"),
		(long long)harness_json_int(d, "blocks-dirtied"));
	assert_true(sent >= ST_DATA_BYTES);
	assert_true(sent < ST_DISK_BYTES / 2); /* the holes cost no data bytes */
	assert_true(harness_json_int(d, "zero-blocks") > 0);
	assert_int_equal(harness_json_int(d, "remaining"), 0);
	if (busy)
		assert_true(harness_json_int(d, "blocks-dirtied") > 0);
}

/* query-block's disk 0 "id" on @vm (GET_ID's answer) into @out. */
static void st_disk_id(struct harness_vm *vm, char *out, size_t len)
{
	struct json_object *q = NULL;

	assert_int_equal(harness_call(vm, "query-block", NULL, &q), 0);
	snprintf(out, len, "%s", harness_json_str(json_object_array_get_idx(q, 0), "id"));
	json_object_put(q);
}

/* NEW received and settled, and answers GET_ID with the source disk's id. */
static void st_expect_incoming_block(struct harness_vm *src, struct harness_vm *dst)
{
	struct json_object *q = NULL, *b0;
	char src_id[64], dst_id[64];

	assert_int_equal(harness_call(dst, "query-block", NULL, &q), 0);
	b0 = json_object_array_get_idx(q, 0);
	assert_non_null(b0);
	assert_true(json_object_get_boolean(json_object_object_get(b0, "incoming")));
	assert_false(json_object_get_boolean(json_object_object_get(b0, "migrating")));
	json_object_put(q);
	st_disk_id(src, src_id, sizeof(src_id));
	st_disk_id(dst, dst_id, sizeof(dst_id));
	assert_true(strncmp(src_id, "disk", 4) == 0); /* the source file's name */
	assert_string_equal(dst_id, src_id);
}

enum st_mode { ST_PRECOPY = 1, ST_HYBRID, ST_POSTCOPY, ST_RECOVER };

/* @cmd {"uri": @uri[, "resume": true]}; 0 or the call's error.  The reply's "uri" into @out. */
static int st_call_uri(struct harness_vm *vm, const char *cmd, const char *uri, bool resume,
		       char *out, size_t outlen)
{
	struct json_object *args = json_object_new_object(), *ret = NULL;
	int r;

	json_object_object_add(args, "uri", json_object_new_string(uri));
	if (resume)
		json_object_object_add(args, "resume", json_object_new_boolean(true));
	r = harness_call(vm, cmd, args, out ? &ret : NULL);
	if (!r && out)
		snprintf(out, outlen, "%s", harness_json_str(ret, "uri"));
	json_object_put(ret);
	json_object_put(args);
	return r;
}

/* Postcopy with a cut: pause it while blocks still move, recover, resume. */
static void st_cut_and_recover(struct harness_vm *src, struct harness_vm *dst)
{
	char listen[HARNESS_PATH_BYTES + 8], real[HARNESS_PATH_BYTES + 8];

	migtest_wait_migration_status(src, "postcopy-active");
	migtest_wait_migration_status(dst, "postcopy-active");
	assert_int_equal(harness_call(src, "migrate-pause", NULL, NULL), 0);
	migtest_wait_migration_status(src, "postcopy-paused");
	migtest_wait_migration_status(dst, "postcopy-paused");
	assert_int_equal(harness_unique_path(listen + 5, sizeof(listen) - 5, "rec"), 0);
	memcpy(listen, "unix:", 5);
	assert_int_equal(st_call_uri(dst, "migrate-recover", listen, false, real, sizeof(real)), 0);
	/* A slow link no more: the rest goes at full speed. */
	assert_int_equal(harness_set_params(src, "{\"max-bandwidth\": 0}"), 0);
	assert_int_equal(st_call_uri(src, "migrate", real, true, NULL, 0), 0);
}

/* The destination's "disk" figures: what arrived, and requests in postcopy. */
static void st_expect_dst_figures(struct harness_vm *dst, bool requests)
{
	struct json_object *q = NULL, *d;

	assert_int_equal(harness_call(dst, "query-migrate", NULL, &q), 0);
	if (!json_object_object_get_ex(q, "disk", &d))
		fail_msg("the destination's query-migrate has no disk object");
	fprintf(stderr, "destination disk: %lld bytes, %lld requests, p50 %lld us, p99 %lld us\n",
		(long long)harness_json_int(d, "transferred"),
		(long long)harness_json_int(d, "blocks-requested"),
		(long long)harness_json_int(d, "request-latency-p50-us"),
		(long long)harness_json_int(d, "request-latency-p99-us"));
	assert_true(harness_json_int(d, "transferred") >= ST_DATA_BYTES);
	assert_int_equal(harness_json_int(d, "migrating"), 0);
	if (requests)
		assert_true(harness_json_int(d, "blocks-requested") > 0);
	json_object_put(q);
}

/* query-migrate's disk.@key on @vm; 0 without a disk object. */
static int64_t st_disk_field(struct harness_vm *vm, const char *key)
{
	struct json_object *q = NULL, *d;
	int64_t n = 0;

	assert_int_equal(harness_call(vm, "query-migrate", NULL, &q), 0);
	if (json_object_object_get_ex(q, "disk", &d))
		n = harness_json_int(d, key);
	json_object_put(q);
	return n;
}

/* Wait (bounded, 30 s) until disk.@key is above 0 on @vm. */
static void st_wait_disk_field(struct harness_vm *vm, const char *key)
{
	for (int i = 0; i < 3000; i++) {
		if (st_disk_field(vm, key) > 0)
			return;
		harness_nap_ms(10);
	}
	fail_msg("query-migrate's disk.%s stayed 0 for 30 s", key);
}

/* A storage migration in @mode of a guest writing at @guest's rate. */
static void st_migrate_mode(enum st_mode mode, const char *guest, bool busy)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct json_object *q;
	struct st *s = &st_cur;
	bool postcopy = mode != ST_PRECOPY;

	memset(s, 0, sizeof(*s));
	st_make(s, ST_DISK_BYTES, true);
	if (postcopy)
		s->dst_opts[2] = "--postcopy";
	migtest_spawn_extra(&src, ST_MEM, ST_VCPUS, guest, NULL, s->src_opts);
	migtest_spawn_incoming_extra(&dst, ST_MEM, ST_VCPUS, true, s->dst_opts, uri, sizeof(uri));
	assert_int_equal(harness_wait_passes(&src, 2, 30000), 0);
	/* Busy: a slower link, so that the guest rewrites blocks already sent. */
	if (busy)
		assert_int_equal(harness_set_params(&src, ST_BUSY_LINK), 0);
	if (mode == ST_HYBRID)
		assert_int_equal(harness_set_params(&src, ST_HYBRID_LINK), 0);
	if (mode == ST_RECOVER)
		assert_int_equal(harness_set_params(&src, ST_SLOW), 0);
	if (mode == ST_POSTCOPY)
		assert_int_equal(harness_set_params(&src, ST_CRAWL), 0);
	if (postcopy)
		assert_int_equal(harness_set_capability(&src, "postcopy-ram", true), 0);
	if (mode == ST_POSTCOPY || mode == ST_RECOVER)
		assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
	assert_int_equal(st_migrate(&src, uri, true), 0);
	if (mode == ST_RECOVER)
		st_cut_and_recover(&src, &dst);
	if (mode == ST_POSTCOPY) {
		/* The push crawls until the guest asked for a block it lacked. */
		st_wait_disk_field(&dst, "blocks-requested");
		assert_int_equal(harness_set_params(&src, "{\"max-bandwidth\": 0}"), 0);
	}
	q = migtest_wait_migration(&src);
	if (strcmp(harness_json_str(q, "status"), "completed"))
		fail_msg("migration %s: %s", harness_json_str(q, "status"),
			 harness_json_str(q, "error-desc"));
	fprintf(stderr, "storage migration: downtime %.3f ms, %lld passes\n",
		harness_json_double(q, "downtime", -1), (long long)harness_json_int(q, "passes"));
	if (mode == ST_HYBRID) /* precopy first, then postcopy */
		assert_true(harness_json_int(q, "passes") >= 1 &&
			    harness_json_int(q, "postcopy-pages-pushed") +
			    harness_json_int(q, "postcopy-pages-requested") > 0);
	st_expect_disk_figures(q, busy);
	json_object_put(q);
	migtest_wait_migration_status(&dst, "completed");
	st_expect_incoming_block(&src, &dst);
	st_expect_dst_figures(&dst, mode == ST_POSTCOPY);
	/* The source is paused for good: its disk is what moved. */
	st_expect_same(s->src, s->dst, ST_SPAN, ST_DISK_BYTES);
	st_expect_holes(s->dst);
	migtest_disk_expect_alive(&dst, s->dst);
	assert_int_equal(harness_vm_quit(&src), 0);
	assert_int_equal(harness_vm_quit(&dst), 0);
	st_remove(s);
}

static void st_precopy(const char *guest, bool busy)
{
	st_migrate_mode(ST_PRECOPY, guest, busy);
}

static void test_hybrid(void **state) { (void)state; st_migrate_mode(ST_HYBRID, ST_GUEST, false); }
static void test_postcopy(void **state) { (void)state; st_migrate_mode(ST_POSTCOPY, ST_GUEST, false); }
static void test_postcopy_busy(void **state)
{
	(void)state;
	st_migrate_mode(ST_POSTCOPY, ST_GUEST_BUSY, false);
}
static void test_hybrid_busy(void **state)
{
	(void)state;
	st_migrate_mode(ST_HYBRID, ST_GUEST_BUSY, false);
}

static void test_postcopy_recover(void **state)
{
	(void)state;
	st_migrate_mode(ST_RECOVER, ST_GUEST, false);
}

static void test_precopy(void **state) { (void)state; st_precopy(ST_GUEST, false); }
static void test_precopy_busy(void **state) { (void)state; st_precopy(ST_GUEST_BUSY, true); }

/*
 * A pair whose migration fails: the source's error names @want, the
 * destination exits, and the source writes on with every record intact.
 * @dst_bytes, @incoming, @storage: as st_make and st_migrate.
 */
static void st_fail_mode(struct st *s, long long dst_bytes, bool incoming, bool storage,
			 bool postcopy, const char *want)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct json_object *q;

	st_make(s, dst_bytes, incoming);
	if (postcopy)
		s->dst_opts[2] = "--postcopy";
	migtest_spawn_extra(&src, ST_MEM, ST_VCPUS, ST_GUEST, NULL, s->src_opts);
	migtest_spawn_incoming_extra(&dst, ST_MEM, ST_VCPUS, true, s->dst_opts, uri, sizeof(uri));
	assert_int_equal(harness_wait_passes(&src, 2, 30000), 0);
	if (postcopy) { /* pure: the destination refuses before anything runs there */
		assert_int_equal(harness_set_capability(&src, "postcopy-ram", true), 0);
		assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
	}
	assert_int_equal(st_migrate(&src, uri, storage), 0);
	q = migtest_wait_migration(&src);
	fprintf(stderr, "failed as expected: %s\n", harness_json_str(q, "error-desc"));
	assert_string_equal(harness_json_str(q, "status"), "failed");
	if (!strstr(harness_json_str(q, "error-desc"), want))
		fail_msg("error '%s' does not say '%s'", harness_json_str(q, "error-desc"), want);
	json_object_put(q);
	assert_true(harness_wait_exit(&dst, 30000) != 0);
	migtest_disk_expect_alive(&src, s->src);
	assert_int_equal(harness_vm_quit(&src), 0);
	st_remove(s);
}

static void st_fail(struct st *s, long long dst_bytes, bool incoming, bool storage,
		    const char *want)
{
	st_fail_mode(s, dst_bytes, incoming, storage, false, want);
}

/* Pure postcopy to a destination whose disk is too small: refused before RUN. */
static void test_postcopy_wrong_size(void **state)
{
	(void)state;
	memset(&st_cur, 0, sizeof(st_cur));
	st_fail_mode(&st_cur, ST_DISK_BYTES / 2, true, true, true,
		     "an incoming disk must have the source's size");
}

static void test_wrong_size(void **state)
{
	(void)state;
	memset(&st_cur, 0, sizeof(st_cur));
	st_fail(&st_cur, ST_DISK_BYTES / 2, true, true, "an incoming disk must have the source's size");
}

static void test_not_incoming(void **state)
{
	(void)state;
	memset(&st_cur, 0, sizeof(st_cur));
	st_fail(&st_cur, ST_DISK_BYTES, false, true, "is not incoming=on");
}

static void test_no_storage(void **state)
{
	(void)state;
	memset(&st_cur, 0, sizeof(st_cur));
	st_fail(&st_cur, ST_DISK_BYTES, true, false, "incoming=on but the stream carries no blocks");
}

/* NEW on a 2 MiB tmpfs: the destination runs out of space mid-way. */
static void test_enospc(void **state)
{
	(void)state;
	memset(&st_cur, 0, sizeof(st_cur));
	st_mount(&st_cur, "2m");
	st_fail(&st_cur, ST_DISK_BYTES, true, true, "No space left on device");
}

/* Cancelled (@kill: the destination killed instead) while the disk's data moves. */
static void st_interrupt(bool kill)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct json_object *q;
	struct st *s = &st_cur;

	memset(s, 0, sizeof(*s));
	st_make(s, ST_DISK_BYTES, true);
	migtest_spawn_extra(&src, ST_MEM, ST_VCPUS, ST_GUEST, NULL, s->src_opts);
	migtest_spawn_incoming_extra(&dst, ST_MEM, ST_VCPUS, true, s->dst_opts, uri, sizeof(uri));
	assert_int_equal(harness_wait_passes(&src, 2, 30000), 0);
	assert_int_equal(harness_set_params(&src, ST_SLOW), 0);
	assert_int_equal(st_migrate(&src, uri, true), 0);
	st_wait_disk_field(&src, "transferred"); /* the disk's data moves */
	if (kill)
		harness_vm_kill(&dst);
	else
		assert_int_equal(harness_call(&src, "migrate-cancel", NULL, NULL), 0);
	q = migtest_wait_migration(&src);
	assert_string_equal(harness_json_str(q, "status"), kill ? "failed" : "cancelled");
	json_object_put(q);
	if (!kill)
		assert_true(harness_wait_exit(&dst, 30000) != 0);
	migtest_disk_expect_alive(&src, s->src);
	assert_int_equal(harness_vm_quit(&src), 0);
	st_remove(s);
}

/*
 * Precopy whose destination, the guest running there, cannot make the disk
 * durable (VMFERRY_DST_FAULT=settle-fails: an fdatasync error) or never
 * says whether it did (settle-silent: it ends the connection without):
 * the source's migration fails naming @want and telling to keep its disk,
 * its guest is the destination's for good (cont refused, forced too), and
 * the destination's guest writes on with every record intact.
 */
static void st_settle_fault(const char *fault, const char *want)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct json_object *q, *force;
	struct st *s = &st_cur;

	memset(s, 0, sizeof(*s));
	st_make(s, ST_DISK_BYTES, true);
	migtest_spawn_extra(&src, ST_MEM, ST_VCPUS, ST_GUEST, NULL, s->src_opts);
	setenv("VMFERRY_DST_FAULT", fault, 1);
	migtest_spawn_incoming_extra(&dst, ST_MEM, ST_VCPUS, true, s->dst_opts, uri, sizeof(uri));
	unsetenv("VMFERRY_DST_FAULT");
	assert_int_equal(harness_wait_passes(&src, 2, 30000), 0);
	assert_int_equal(st_migrate(&src, uri, true), 0);
	q = migtest_wait_migration(&src);
	fprintf(stderr, "failed as expected: %s\n", harness_json_str(q, "error-desc"));
	assert_string_equal(harness_json_str(q, "status"), "failed");
	if (!strstr(harness_json_str(q, "error-desc"), want) ||
	    !strstr(harness_json_str(q, "error-desc"), "keep this side's disk files"))
		fail_msg("error '%s' does not say '%s'", harness_json_str(q, "error-desc"), want);
	json_object_put(q);
	force = json_tokener_parse("{\"force\": true}");
	assert_int_equal(harness_call(&src, "cont", force, NULL), -EREMOTEIO);
	json_object_put(force);
	if (!strstr(src.error, "can never run here again"))
		fail_msg("forced cont refused with '%s'", src.error);
	migtest_wait_migration_status(&dst, "completed");
	st_expect_same(s->src, s->dst, ST_SPAN, ST_DISK_BYTES);
	migtest_disk_expect_alive(&dst, s->dst);
	assert_int_equal(harness_vm_quit(&src), 0);
	assert_int_equal(harness_vm_quit(&dst), 0);
	st_remove(s);
}

static void test_settle_fails(void **state)
{
	(void)state;
	st_settle_fault("settle-fails", "Input/output error");
}

static void test_settle_silent(void **state)
{
	(void)state;
	st_settle_fault("settle-silent", "did not confirm that the disks' data is durable");
}

static void test_cancel(void **state) { (void)state; st_interrupt(false); }
static void test_destination_killed(void **state) { (void)state; st_interrupt(true); }

/* Postcopy with storage but without the urgent channel: refused; the guest runs on. */
static void test_postcopy_without_preempt_refused(void **state)
{
	struct harness_vm src;
	struct st *s = &st_cur;

	(void)state;
	memset(s, 0, sizeof(*s));
	st_make(s, ST_DISK_BYTES, true);
	migtest_spawn_extra(&src, ST_MEM, ST_VCPUS, ST_GUEST, NULL, s->src_opts);
	assert_int_equal(harness_set_capability(&src, "postcopy-ram", true), 0);
	assert_int_equal(harness_set_capability(&src, "postcopy-preempt", false), 0);
	assert_int_equal(st_migrate(&src, "unix:/nonexistent/vmferry-storage", true), -EREMOTEIO);
	if (!strstr(src.error, "storage migration in postcopy needs the postcopy-preempt"))
		fail_msg("refusal: %s", src.error);
	migtest_expect_status(&src, "running");
	assert_int_equal(harness_vm_quit(&src), 0);
	st_remove(s);
}

/* incoming=on's errors at start-up, and --storage's on the command line. */
static void test_option_errors(void **state)
{
	static const struct { const char *argv[10]; const char *want; int status; } cases[] = {
		{ { "run", "--mem", "16M", "--disk", "file=/tmp/x,incoming=on", NULL },
		  "it needs --incoming URI", 2 },
		{ { "run", "--mem", "16M", "--incoming", "unix:/tmp/vmferry-st-none", "--disk",
		    "file=/tmp/x,incoming=on,readonly=on", NULL }, "cannot be readonly=on", 2 },
		{ { "run", "--mem", "16M", "--incoming", "unix:/tmp/vmferry-st-none", "--disk",
		    "file=/tmp/x,incoming=maybe", NULL }, "incoming=maybe: on or off", 2 },
		{ { "run", "--mem", "16M", "--incoming", "unix:/tmp/vmferry-st-none", "--disk",
		    "file=/nonexistent/new.img,incoming=on", NULL },
		  "cannot open /nonexistent/new.img", 1 },
		{ { "migrate", "--control", "/tmp/x", "--storage", "--postcopy",
		    "--no-postcopy-preempt", "unix:/tmp/y", NULL },
		  "--storage with postcopy needs the urgent channel", 2 },
		{ { "migrate", "--control", "/tmp/x", "--storage", "--cpr", "unix:/tmp/z",
		    "unix:/tmp/y", NULL }, "--storage cannot be combined with --cpr", 2 },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct harness_result res;

		assert_int_equal(harness_run(cases[i].argv, NULL, 30000, &res), 0);
		if (res.status != cases[i].status || !strstr(res.err, cases[i].want))
			fail_msg("case %zu: status %d, stderr %s", i, res.status, res.err);
		harness_result_free(&res);
	}
}

/* A read-only NEW (a read-only tmpfs: root ignores file modes) is refused at start. */
static void test_read_only_new(void **state)
{
	struct st *s = &st_cur;
	char path[HARNESS_PATH_BYTES + 16], arg[HARNESS_PATH_BYTES + 40];
	const char *args[] = { "run", "--mem", "16M", "--incoming", "unix:/tmp/vmferry-st-none",
			       "--disk", arg, NULL };
	struct harness_result res;

	(void)state;
	memset(s, 0, sizeof(*s));
	st_mount(s, "1m");
	snprintf(path, sizeof(path), "%s/new", s->mnt);
	st_write_file(path, ST_DISK_BYTES, false, false);
	assert_int_equal(mount(NULL, s->mnt, NULL, MS_REMOUNT | MS_RDONLY, NULL), 0);
	snprintf(arg, sizeof(arg), "file=%s,incoming=on", path);
	assert_int_equal(harness_run(args, NULL, 30000, &res), 0);
	if (res.status != 1 || !strstr(res.err, "must be writable"))
		fail_msg("read-only NEW: status %d, stderr %s", res.status, res.err);
	harness_result_free(&res);
	st_unmount(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_option_errors),
		cmocka_unit_test_teardown(test_read_only_new, st_teardown),
		cmocka_unit_test_teardown(test_precopy, st_teardown),
		cmocka_unit_test_teardown(test_precopy_busy, st_teardown),
		cmocka_unit_test_teardown(test_wrong_size, st_teardown),
		cmocka_unit_test_teardown(test_not_incoming, st_teardown),
		cmocka_unit_test_teardown(test_no_storage, st_teardown),
		cmocka_unit_test_teardown(test_enospc, st_teardown),
		cmocka_unit_test_teardown(test_cancel, st_teardown),
		cmocka_unit_test_teardown(test_settle_fails, st_teardown),
		cmocka_unit_test_teardown(test_settle_silent, st_teardown),
		cmocka_unit_test_teardown(test_destination_killed, st_teardown),
		cmocka_unit_test_teardown(test_postcopy_without_preempt_refused, st_teardown),
		cmocka_unit_test_teardown(test_postcopy, st_teardown),
		cmocka_unit_test_teardown(test_postcopy_busy, st_teardown),
		cmocka_unit_test_teardown(test_hybrid, st_teardown),
		cmocka_unit_test_teardown(test_hybrid_busy, st_teardown),
		cmocka_unit_test_teardown(test_postcopy_wrong_size, st_teardown),
		cmocka_unit_test_teardown(test_postcopy_recover, st_teardown),
	};

	return MIGTEST_RUN(tests);
}
