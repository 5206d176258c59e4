/*
 * Unit tests of `vmferry verify disk` (src/verify/verify_disk.c): synthetic
 * disk images written the way the diskwriter writes them (records in a ring
 * of 512-byte slots per writer, docs/guest-abi.md "diskwriter"), with and
 * without the boot info of a RAM dump taken at the same stop.  Good images
 * pass - partly filled, wrapped around, one request in flight - and every
 * kind of damage is caught with its message and the writer and slot it is
 * in: a torn record, a wrong checksum, garbage, a record in the wrong slot
 * or region, a hole or a stale record below the newest one, records newer
 * than the dump acknowledges, a dump that disagrees.  The command itself
 * too, over files: its exit status and its usage errors.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "verify/verify.h"
#include "vmferry/guest_abi.h"

#define TD_MAGIC 0x3130434552464d56ull /* "VMFREC01" */
#define TD_REC 512u
#define TD_REGION 4096u                 /* per writer: 8 slots */
#define TD_SLOTS (TD_REGION / TD_REC)

struct td {
	unsigned writers;
	uint64_t bytes;
	uint8_t *disk;
	struct vmf_boot_info bi;
};

static uint64_t td_fnv(const uint8_t *p, uint32_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (uint32_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static uint64_t *td_slot(struct td *t, unsigned w, uint64_t k)
{
	return (uint64_t *)(t->disk + w * TD_REGION + k * TD_REC);
}

/* Record @seq of writer @w (as the diskwriter builds it) into @rec. */
static void td_record(const struct td *t, unsigned w, uint64_t seq, uint64_t *rec)
{
	rec[0] = TD_MAGIC;
	rec[1] = (uint64_t)w | (uint64_t)t->writers << 32;
	rec[2] = seq;
	rec[3] = TD_SLOTS;
	for (unsigned i = 4; i < TD_REC / 8 - 1; i++)
		rec[i] = seq * 0x9e3779b97f4a7c15ull ^ (uint64_t)i << 8 ^ w;
	rec[TD_REC / 8 - 1] = td_fnv((const uint8_t *)rec, TD_REC - 8);
}

/* Writer @w wrote records 1..@n into its ring; the dump acknowledged @acked. */
static void td_write(struct td *t, unsigned w, uint64_t n, uint64_t acked)
{
	for (uint64_t s = 1; s <= n; s++)
		td_record(t, w, s, td_slot(t, w, (s - 1) % TD_SLOTS));
	t->bi.stats[w].writes = acked;
}

/* A disk of @writers regions (and @extra bytes that belong to none), all zero. */
static void td_init(struct td *t, unsigned writers, uint64_t extra)
{
	memset(t, 0, sizeof(*t));
	t->writers = writers;
	t->bytes = (uint64_t)writers * TD_REGION + extra;
	t->disk = calloc(1, t->bytes);
	assert_non_null(t->disk);
	t->bi.magic = VMF_BOOT_MAGIC;
	t->bi.abi_version = VMF_ABI_VERSION;
	t->bi.nvcpus = writers;
	snprintf(t->bi.workload, sizeof(t->bi.workload), "diskwriter");
}

static void td_free(struct td *t)
{
	free(t->disk);
}

static struct json_object *td_vcpu(struct json_object *v, unsigned w)
{
	struct json_object *arr = json_object_object_get(v, "vcpus");

	assert_non_null(arr);
	assert_true(w < json_object_array_length(arr));
	return json_object_array_get_idx(arr, w);
}

static int64_t td_int(struct json_object *o, const char *key)
{
	struct json_object *x = json_object_object_get(o, key);

	assert_non_null(x);
	return json_object_get_int64(x);
}

/* Verifies (with the dump when @dump); writer 0's newest record is @newest0. */
static void td_expect_ok(struct td *t, bool dump, int64_t newest0)
{
	struct json_object *v = NULL;
	int r = verify_disk_image(t->disk, t->bytes, dump ? &t->bi : NULL, &v);

	assert_non_null(v);
	if (r != 0)
		fail_msg("expected a good image: %s", json_object_to_json_string(v));
	assert_true(json_object_get_boolean(json_object_object_get(v, "ok")));
	assert_int_equal(td_int(v, "writers"), t->writers);
	assert_int_equal(td_int(td_vcpu(v, 0), "newest"), newest0);
	assert_int_equal(td_int(td_vcpu(v, 0), "slots"), TD_SLOTS);
	if (dump)
		assert_int_equal(td_int(td_vcpu(v, 0), "acked"), t->bi.stats[0].writes);
	json_object_put(v);
}

/*
 * Broken: -EBADMSG, @needle in the error, writer @w's verdict saying so
 * (w < 0: a whole-image error) at @slot (< 0: no slot named).
 */
static void td_expect_bad(struct td *t, bool dump, const char *needle, int w, int64_t slot)
{
	struct json_object *v = NULL, *o;
	int r = verify_disk_image(t->disk, t->bytes, dump ? &t->bi : NULL, &v);
	const char *err;

	assert_non_null(v);
	err = json_object_get_string(json_object_object_get(v, "error"));
	if (r != -EBADMSG || !err || !strstr(err, needle))
		fail_msg("expected \"%s\", got %d: %s", needle, r, json_object_to_json_string(v));
	assert_false(json_object_get_boolean(json_object_object_get(v, "ok")));
	if (w >= 0) {
		o = td_vcpu(v, (unsigned)w);
		assert_false(json_object_get_boolean(json_object_object_get(o, "ok")));
		assert_non_null(strstr(json_object_get_string(json_object_object_get(o, "error")),
				       needle));
		if (slot >= 0)
			assert_int_equal(td_int(o, "bad_slot"), slot);
		else
			assert_null(json_object_object_get(o, "bad_slot"));
	}
	json_object_put(v);
}

/* ---- good images ---- */

static void test_ok_partial_ring(void **state)
{
	struct td t;

	(void)state;
	td_init(&t, 2, 0);
	td_write(&t, 0, 5, 5);
	td_write(&t, 1, 3, 3);
	td_expect_ok(&t, true, 5);
	td_expect_ok(&t, false, 5);
	td_free(&t);
}

static void test_ok_wrapped_and_in_flight(void **state)
{
	struct td t;

	(void)state;
	td_init(&t, 2, 1024); /* a tail beyond the regions is nobody's */
	td_write(&t, 0, 3 * TD_SLOTS + 3, 3 * TD_SLOTS + 2); /* the last one still in flight */
	td_write(&t, 1, TD_SLOTS, TD_SLOTS);                 /* exactly one lap */
	memset(t.disk + 2 * TD_REGION, 0xee, 1024);
	td_expect_ok(&t, true, 3 * TD_SLOTS + 3);
	td_expect_ok(&t, false, 3 * TD_SLOTS + 3);
	td_free(&t);
}

static void test_ok_nothing_written(void **state)
{
	struct td t;

	(void)state;
	td_init(&t, 2, 0);
	t.bi.stats[1].writes = 0;
	td_expect_ok(&t, true, 0);
	td_free(&t);
}

/* ---- damaged records ---- */

static void test_bad_torn_record(void **state)
{
	struct td t;
	uint64_t newer[TD_REC / 8];

	(void)state;
	td_init(&t, 2, 0);
	td_write(&t, 0, TD_SLOTS + 2, TD_SLOTS + 2);
	/* Writer 1's record 9 half written over record 1, which it replaces. */
	td_write(&t, 1, TD_SLOTS, TD_SLOTS);
	td_record(&t, 1, TD_SLOTS + 1, newer);
	memcpy(td_slot(&t, 1, 0), newer, TD_REC / 2);
	t.bi.stats[1].writes = TD_SLOTS;
	td_expect_bad(&t, true, "checksum is wrong (torn or corrupted)", 1, 0);
	td_expect_bad(&t, false, "checksum is wrong", 1, 0);
	td_free(&t);
}

static void test_bad_checksum(void **state)
{
	struct td t;

	(void)state;
	td_init(&t, 2, 0);
	td_write(&t, 0, 6, 6);
	td_write(&t, 1, 6, 6);
	td_slot(&t, 0, 4)[TD_REC / 8 - 1] ^= 1;
	td_expect_bad(&t, true, "a record's checksum is wrong", 0, 4);
	/* A flipped payload bit, the checksum left alone, is caught the same way. */
	td_slot(&t, 0, 4)[TD_REC / 8 - 1] ^= 1;
	td_slot(&t, 0, 4)[20] ^= 1ull << 40;
	td_expect_bad(&t, true, "a record's checksum is wrong", 0, 4);
	td_free(&t);
}

static void test_bad_garbage_slot(void **state)
{
	struct td t;

	(void)state;
	td_init(&t, 2, 0);
	td_write(&t, 0, 4, 4);
	td_write(&t, 1, 4, 4);
	memset(td_slot(&t, 1, 6), 0x5a, 16);
	td_expect_bad(&t, true, "neither a record nor zeros", 1, 6);
	td_free(&t);
}

static void test_bad_wrong_slot_and_writer(void **state)
{
	struct td t;

	(void)state;
	td_init(&t, 2, 0);
	td_write(&t, 0, 4, 4);
	td_write(&t, 1, 4, 4);
	/* Record 2 of writer 0 written into slot 5 (it belongs in slot 1). */
	td_record(&t, 0, 2, td_slot(&t, 0, 5));
	td_expect_bad(&t, true, "a record in the wrong slot", 0, 5);
	memset(td_slot(&t, 0, 5), 0, TD_REC);
	/* Writer 1's record 3 in writer 0's slot 2. */
	td_record(&t, 1, 3, td_slot(&t, 0, 2));
	td_expect_bad(&t, true, "a record of another writer or another disk layout", 0, 2);
	td_free(&t);
}

/* ---- holes and order ---- */

static void test_bad_hole_below_newest(void **state)
{
	struct td t;

	(void)state;
	td_init(&t, 2, 0);
	td_write(&t, 0, 6, 6);
	td_write(&t, 1, 6, 6);
	memset(td_slot(&t, 1, 2), 0, TD_REC); /* record 3 lost, 4..6 there */
	td_expect_bad(&t, true, "a hole below the newest record", 1, 2);
	td_expect_bad(&t, false, "a hole below the newest record", 1, 2);
	td_free(&t);
}

static void test_bad_stale_below_newest(void **state)
{
	struct td t;

	(void)state;
	td_init(&t, 2, 0);
	td_write(&t, 0, TD_SLOTS + 4, TD_SLOTS + 4);
	td_write(&t, 1, 2, 2);
	/* Record 10 of slot 1 lost: the first lap's record 2 is still there. */
	td_record(&t, 0, 2, td_slot(&t, 0, 1));
	td_expect_bad(&t, true, "a stale record below the newest one", 0, 1);
	td_free(&t);
}

/* ---- the dump against the disk ---- */

static void test_bad_newer_than_acknowledged(void **state)
{
	struct td t;

	(void)state;
	td_init(&t, 2, 0);
	td_write(&t, 0, 7, 5); /* 7 on disk, 5 acknowledged: 6 and 7 never sent */
	td_write(&t, 1, 3, 3);
	td_expect_bad(&t, true, "the disk holds records the guest never sent", 0, -1);
	/* Without the dump the disk alone is consistent. */
	td_expect_ok(&t, false, 7);
	td_free(&t);
}

static void test_bad_acknowledged_missing(void **state)
{
	struct td t;

	(void)state;
	td_init(&t, 2, 0);
	td_write(&t, 0, 3, 3);
	td_write(&t, 1, 4, 6); /* acknowledged 5 and 6 are not on the disk */
	td_expect_bad(&t, true, "an acknowledged record is missing from the disk", 1, -1);
	td_free(&t);
}

static void test_bad_dump_of_another_guest(void **state)
{
	struct td t;

	(void)state;
	td_init(&t, 2, 0);
	td_write(&t, 0, 3, 3);
	td_write(&t, 1, 3, 3);
	snprintf(t.bi.workload, sizeof(t.bi.workload), "incrementer");
	td_expect_bad(&t, true, "the dump is not of a diskwriter guest", -1, -1);
	snprintf(t.bi.workload, sizeof(t.bi.workload), "diskwriter");
	t.bi.magic ^= 1;
	td_expect_bad(&t, true, "the dump is not of a diskwriter guest", -1, -1);
	t.bi.magic ^= 1;
	t.bi.abi_version++;
	td_expect_bad(&t, true, "the dump is not of a diskwriter guest", -1, -1);
	t.bi.abi_version--;
	t.bi.nvcpus = 0;
	td_expect_bad(&t, true, "the dump is not of a diskwriter guest", -1, -1);
	/* A dump of one writer reads a two-writer disk as one region: writer 1's records misfit. */
	t.bi.nvcpus = 1;
	td_expect_bad(&t, true, "another writer or another disk layout", 0, 0);
	td_free(&t);
}

static void test_bad_writer_count_without_dump(void **state)
{
	struct td t;

	(void)state;
	td_init(&t, 2, 0);
	td_write(&t, 0, 2, 2);
	td_slot(&t, 0, 0)[1] = (uint64_t)9 << 32; /* nine writers: more than exist */
	td_expect_bad(&t, false, "an impossible number of writers", -1, -1);
	td_slot(&t, 0, 0)[1] = 0;
	td_expect_bad(&t, false, "an impossible number of writers", -1, -1);
	td_free(&t);
}

/* A disk smaller than 4 KiB per writer (empty, too): no region to check, said so. */
static void test_bad_disk_too_small(void **state)
{
	struct json_object *v = NULL;
	struct td t;

	(void)state;
	td_init(&t, 2, 0);
	assert_int_equal(verify_disk_image(t.disk, TD_REGION, &t.bi, &v), -EBADMSG);
	assert_non_null(strstr(json_object_get_string(json_object_object_get(v, "error")),
			       "the disk is too small for its writers"));
	json_object_put(v);
	assert_int_equal(verify_disk_image(NULL, 0, &t.bi, &v), -EBADMSG);
	json_object_put(v);
	td_free(&t);
}

/* ---- the command over files ---- */

static void td_file(char *path, size_t len, const void *data, size_t bytes, off_t at)
{
	int fd;

	snprintf(path, len, "/tmp/vmferry-test-verify-disk.XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, data, bytes, at), (ssize_t)bytes);
	close(fd);
}

static int td_main(const char *a, const char *b)
{
	char *argv[3] = { (char *)a, (char *)b, NULL };
	int r;

	fflush(stdout);
	r = verify_disk_main(b ? 2 : (a ? 1 : 0), argv, JSON_C_TO_STRING_PLAIN);
	fflush(stdout);
	return r;
}

static void test_command(void **state)
{
	char image[64], dump[64], tiny[64];
	struct td t;

	(void)state;
	td_init(&t, 2, 0);
	td_write(&t, 0, 5, 5);
	td_write(&t, 1, 5, 5);
	td_file(image, sizeof(image), t.disk, t.bytes, 0);
	td_file(dump, sizeof(dump), &t.bi, sizeof(t.bi), VMF_BOOT_INFO_GPA);
	td_file(tiny, sizeof(tiny), "x", 1, 0);
	assert_int_equal(td_main(image, dump), VERIFY_EXIT_OK);
	assert_int_equal(td_main(image, NULL), VERIFY_EXIT_OK);
	/* A dump that acknowledges more than the disk holds. */
	t.bi.stats[1].writes = 7;
	unlink(dump);
	td_file(dump, sizeof(dump), &t.bi, sizeof(t.bi), VMF_BOOT_INFO_GPA);
	assert_int_equal(td_main(image, dump), VERIFY_EXIT_BROKEN);
	/* A dump too short for a boot info, a missing image, no arguments. */
	assert_int_equal(td_main(image, tiny), VERIFY_EXIT_ERROR);
	assert_int_equal(td_main("/nonexistent/disk.img", NULL), VERIFY_EXIT_ERROR);
	assert_int_equal(td_main(NULL, NULL), VERIFY_EXIT_ERROR);
	unlink(image);
	unlink(dump);
	unlink(tiny);
	td_free(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ok_partial_ring),
		cmocka_unit_test(test_ok_wrapped_and_in_flight),
		cmocka_unit_test(test_ok_nothing_written),
		cmocka_unit_test(test_bad_torn_record),
		cmocka_unit_test(test_bad_checksum),
		cmocka_unit_test(test_bad_garbage_slot),
		cmocka_unit_test(test_bad_wrong_slot_and_writer),
		cmocka_unit_test(test_bad_hole_below_newest),
		cmocka_unit_test(test_bad_stale_below_newest),
		cmocka_unit_test(test_bad_newer_than_acknowledged),
		cmocka_unit_test(test_bad_acknowledged_missing),
		cmocka_unit_test(test_bad_dump_of_another_guest),
		cmocka_unit_test(test_bad_writer_count_without_dump),
		cmocka_unit_test(test_bad_disk_too_small),
		cmocka_unit_test(test_command),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
