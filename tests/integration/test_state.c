/*
 * The state interface (src/migration/state.h) proven with a state the
 * engine knows nothing of: `run --test-state` adds a counter and a 512 KiB
 * blob (src/devices/test_state.c) that migrates in section parts while the
 * guest runs and in a section at the stop.  For precopy, hybrid, pure
 * postcopy, postcopy with a cut and recovery, and CPR: the destination
 * holds the source's counter and blob (checksum), the guest's memory
 * verifies and the guest keeps running.  A destination without the state
 * refuses the stream, and the source keeps its guest and its state.
 * Skips (77) without KVM.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "lib/migtest.h"
#include "harness/harness.h"

#define TS_MEM "64M"
#define TS_VCPUS "2"
/* Hybrid: slow enough that the switch comes after the first pass. */
#define TS_BANDWIDTH "{\"max-bandwidth\": 100000000}"
/* Recovery: slower still, so that the cut lands while pages are pushed. */
#define TS_BANDWIDTH_SLOW "{\"max-bandwidth\": 20000000}"

static const char *const ts_opt[] = { "--test-state", NULL };
static const char *const ts_opt_postcopy[] = { "--test-state", "--postcopy", NULL };

struct ts_view {
	int64_t counter, parts_loaded, sections_loaded;
	char checksum[24];
	char last_end[32];
};

static void ts_query(struct harness_vm *vm, struct ts_view *v)
{
	struct json_object *q = NULL;

	assert_int_equal(harness_call(vm, "query-test-state", NULL, &q), 0);
	v->counter = harness_json_int(q, "counter");
	v->parts_loaded = harness_json_int(q, "parts-loaded");
	v->sections_loaded = harness_json_int(q, "sections-loaded");
	snprintf(v->checksum, sizeof(v->checksum), "%s", harness_json_str(q, "checksum"));
	snprintf(v->last_end, sizeof(v->last_end), "%s", harness_json_str(q, "last-end"));
	json_object_put(q);
}

/* test-state-bump by @n: 0, or -EREMOTEIO when the state moved already. */
static int ts_bump(struct harness_vm *vm, int n)
{
	struct json_object *args = json_object_new_object();
	int r;

	json_object_object_add(args, "n", json_object_new_int(n));
	r = harness_call(vm, "test-state-bump", args, NULL);
	json_object_put(args);
	return r;
}

/* Bump the source while its migration runs, until the state moves; how many took. */
static int ts_bump_until_moved(struct harness_vm *src)
{
	int taken = 0;

	/* 50 changes a second: a device busy enough that a pass finds work,
	 * not so busy that precopy cannot converge. */
	for (int i = 0; i < 3000; i++) {
		int r = ts_bump(src, 1);

		if (r == -EREMOTEIO)
			return taken;
		assert_int_equal(r, 0);
		taken++;
		harness_nap_ms(20);
	}
	fail_msg("the test state never moved");
	return taken;
}

/* The destination holds what the source had; both saw the migration end. */
static void ts_expect_moved(const struct ts_view *src, struct harness_vm *dst, bool parts)
{
	struct ts_view d;

	ts_query(dst, &d);
	assert_int_equal(d.counter, src->counter);
	assert_string_equal(d.checksum, src->checksum);
	assert_int_equal(d.sections_loaded, 1);
	if (parts)
		assert_true(d.parts_loaded >= 2); /* pass 1 sends two chunks */
	else
		assert_int_equal(d.parts_loaded, 0);
	assert_string_equal(d.last_end, "completed-destination");
	fprintf(stderr, "test state: counter %lld, checksum %s, %lld parts\n",
		(long long)d.counter, d.checksum, (long long)d.parts_loaded);
}

/* No number in @text has more than 3 decimals (query-migrate's times). */
static void ts_expect_3_decimals(const char *text)
{
	for (const char *p = strchr(text, '.'); p; p = strchr(p + 1, '.')) {
		size_t digits = strspn(p + 1, "0123456789");

		if (p > text && p[-1] >= '0' && p[-1] <= '9' && digits > 3)
			fail_msg("a number with %zu decimals in %s", digits, text);
	}
}

static void ts_expect_completed(struct harness_vm *src)
{
	struct json_object *q = migtest_wait_migration(src);

	if (strcmp(harness_json_str(q, "status"), "completed"))
		fail_msg("migration %s: %s", harness_json_str(q, "status"),
			 harness_json_str(q, "error-desc"));
	ts_expect_3_decimals(json_object_to_json_string(q));
	json_object_put(q);
}

/* Pages the source pushed in postcopy so far. */
static int64_t ts_pushed(struct harness_vm *src)
{
	struct json_object *q = NULL;
	int64_t n;

	assert_int_equal(harness_call(src, "query-migrate", NULL, &q), 0);
	n = harness_json_int(q, "postcopy-pages-pushed");
	json_object_put(q);
	return n;
}

enum ts_mode { TS_PRECOPY = 1, TS_HYBRID, TS_POSTCOPY, TS_RECOVERY };

static void ts_migrate(enum ts_mode mode)
{
	struct harness_vm src, dst;
	struct ts_view s;
	char uri[HARNESS_PATH_BYTES + 8];
	bool postcopy = mode != TS_PRECOPY;

	migtest_spawn_extra(&src, TS_MEM, TS_VCPUS, "incrementer", NULL, ts_opt);
	migtest_spawn_incoming_extra(&dst, TS_MEM, TS_VCPUS, true,
				     postcopy ? ts_opt_postcopy : ts_opt, uri, sizeof(uri));
	assert_int_equal(harness_wait_passes(&src, 1, 30000), 0);
	assert_int_equal(ts_bump(&src, 5), 0);
	/* Precopy at full speed converges; the postcopy modes move slower. */
	if (mode != TS_PRECOPY)
		assert_int_equal(harness_set_params(&src, mode == TS_RECOVERY ? TS_BANDWIDTH_SLOW
									      : TS_BANDWIDTH), 0);
	if (postcopy)
		assert_int_equal(harness_set_capability(&src, "postcopy-ram", true), 0);
	if (mode == TS_POSTCOPY || mode == TS_RECOVERY)
		assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
	assert_int_equal(harness_migrate(&src, uri), 0);
	if (mode == TS_HYBRID) {
		struct json_object *q = NULL;

		for (int i = 0; i < 20000; i++) {
			assert_int_equal(harness_call(&src, "query-migrate", NULL, &q), 0);
			if (harness_json_int(q, "passes") >= 1)
				break;
			json_object_put(q);
			q = NULL;
			harness_nap_ms(1);
		}
		json_object_put(q);
		assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
	}
	ts_bump_until_moved(&src);
	if (mode == TS_RECOVERY) {
		struct json_object *ret = NULL, *args;
		char listen[HARNESS_PATH_BYTES + 8], path[HARNESS_PATH_BYTES];

		/* Both sides past RUN and RUNNING: a cut before the source heard
		 * RUNNING is not recoverable (docs/migration.md). */
		migtest_wait_migration_status(&src, "postcopy-active");
		migtest_wait_migration_status(&dst, "postcopy-active");
		for (int i = 0; i < 2000 && ts_pushed(&src) < 256; i++)
			harness_nap_ms(2);
		assert_int_equal(harness_call(&src, "migrate-pause", NULL, NULL), 0);
		migtest_wait_migration_status(&src, "postcopy-paused");
		migtest_wait_migration_status(&dst, "postcopy-paused");
		assert_int_equal(harness_unique_path(path, sizeof(path), "tsrec"), 0);
		snprintf(listen, sizeof(listen), "unix:%s", path);
		args = json_object_new_object();
		json_object_object_add(args, "uri", json_object_new_string(listen));
		assert_int_equal(harness_call(&dst, "migrate-recover", args, &ret), 0);
		json_object_put(ret);
		json_object_object_add(args, "resume", json_object_new_boolean(true));
		assert_int_equal(harness_call(&src, "migrate", args, NULL), 0);
		json_object_put(args);
	}
	ts_expect_completed(&src);
	ts_query(&src, &s);
	assert_string_equal(s.last_end, "completed-source");
	migtest_wait_migration_status(&dst, "completed");
	ts_expect_moved(&s, &dst, mode == TS_PRECOPY || mode == TS_HYBRID);
	migtest_expect_guest_alive_and_verified(&dst);
	assert_int_equal(harness_vm_quit(&src), 0);
	assert_int_equal(harness_vm_quit(&dst), 0);
}

static void test_precopy(void **state) { (void)state; ts_migrate(TS_PRECOPY); }
static void test_hybrid(void **state) { (void)state; ts_migrate(TS_HYBRID); }
static void test_postcopy(void **state) { (void)state; ts_migrate(TS_POSTCOPY); }
static void test_recovery(void **state) { (void)state; ts_migrate(TS_RECOVERY); }

/* A live update: the new process holds the old one's state. */
static void test_cpr(void **state)
{
	struct harness_vm old;
	struct migtest_cpr_target t;
	struct ts_view s;

	(void)state;
	migtest_spawn_extra(&old, TS_MEM, TS_VCPUS, "incrementer", NULL, ts_opt);
	assert_int_equal(harness_wait_passes(&old, 1, 30000), 0);
	assert_int_equal(ts_bump(&old, 7), 0);
	ts_query(&old, &s);
	migtest_cpr_update(&old, &t, ts_opt);
	ts_expect_moved(&s, &t.vm, false);
	migtest_expect_guest_alive_and_verified(&t.vm);
	assert_int_equal(harness_vm_quit(&t.vm), 0);
}

/*
 * A destination without the state refuses the stream by the section's id;
 * the source keeps its guest running and its state (it takes changes again).
 */
static void test_destination_without_it(void **state)
{
	struct harness_vm src, dst;
	struct json_object *q;
	struct ts_view before, after;
	char uri[HARNESS_PATH_BYTES + 8];

	(void)state;
	migtest_spawn_extra(&src, TS_MEM, TS_VCPUS, "incrementer", NULL, ts_opt);
	migtest_spawn_incoming(&dst, TS_MEM, TS_VCPUS, true, uri, sizeof(uri));
	assert_int_equal(harness_wait_passes(&src, 1, 30000), 0);
	assert_int_equal(ts_bump(&src, 3), 0);
	ts_query(&src, &before);
	assert_int_equal(harness_migrate(&src, uri), 0);
	q = migtest_wait_migration(&src);
	assert_string_equal(harness_json_str(q, "status"), "failed");
	fprintf(stderr, "without the state: %s\n", harness_json_str(q, "error-desc"));
	assert_non_null(strstr(harness_json_str(q, "error-desc"), "unknown section id 100"));
	json_object_put(q);
	assert_true(harness_wait_exit(&dst, 30000) != 0);
	ts_query(&src, &after);
	assert_string_equal(after.last_end, "failed-source");
	assert_string_equal(after.checksum, before.checksum);
	assert_int_equal(ts_bump(&src, 1), 0);
	migtest_expect_guest_alive_and_verified(&src);
	assert_int_equal(harness_vm_quit(&src), 0);
}

/*
 * The same in a live update: the new process refuses the state after the
 * stop (RP_ERROR); it never ran the guest, so the old process resumes it at
 * once, with its memory and its state intact.
 */
static void test_cpr_new_without_it(void **state)
{
	struct harness_vm old;
	struct migtest_cpr_target t;
	struct json_object *q;
	struct ts_view before, after;

	(void)state;
	migtest_spawn_extra(&old, TS_MEM, TS_VCPUS, "incrementer", NULL, ts_opt);
	assert_int_equal(harness_wait_passes(&old, 1, 30000), 0);
	assert_int_equal(ts_bump(&old, 2), 0);
	ts_query(&old, &before);
	migtest_cpr_spawn_new(&t, NULL, NULL);
	assert_int_equal(harness_set_params(&old, "{\"mode\": \"cpr-transfer\"}"), 0);
	assert_int_equal(harness_migrate_channels(&old, t.main_uri, t.cpr_uri), 0);
	q = migtest_wait_migration(&old);
	assert_string_equal(harness_json_str(q, "status"), "failed");
	fprintf(stderr, "cpr, new process without the state: %s\n", harness_json_str(q, "error-desc"));
	assert_non_null(strstr(harness_json_str(q, "error-desc"), "unknown section id 100"));
	assert_non_null(strstr(harness_json_str(q, "error-desc"), "the guest continues here"));
	json_object_put(q);
	assert_int_equal(harness_wait_exit(&t.vm, 30000), 1);
	ts_query(&old, &after);
	assert_string_equal(after.checksum, before.checksum);
	migtest_expect_guest_alive_and_verified(&old);
	assert_int_equal(harness_vm_quit(&old), 0);
}

/* A source without it: the destination misses a required section and says which. */
static void test_source_without_it(void **state)
{
	struct harness_vm src, dst;
	struct json_object *q;
	char uri[HARNESS_PATH_BYTES + 8];

	(void)state;
	migtest_spawn(&src, TS_MEM, TS_VCPUS, "incrementer", NULL);
	migtest_spawn_incoming_extra(&dst, TS_MEM, TS_VCPUS, true, ts_opt, uri, sizeof(uri));
	assert_int_equal(harness_wait_passes(&src, 1, 30000), 0);
	assert_int_equal(harness_migrate(&src, uri), 0);
	q = migtest_wait_migration(&src);
	assert_string_equal(harness_json_str(q, "status"), "failed");
	fprintf(stderr, "source without the state: %s\n", harness_json_str(q, "error-desc"));
	assert_non_null(strstr(harness_json_str(q, "error-desc"), "no test-state section 0"));
	json_object_put(q);
	assert_true(harness_wait_exit(&dst, 30000) != 0);
	migtest_expect_guest_alive_and_verified(&src);
	assert_int_equal(harness_vm_quit(&src), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_precopy),
		cmocka_unit_test(test_hybrid),
		cmocka_unit_test(test_postcopy),
		cmocka_unit_test(test_recovery),
		cmocka_unit_test(test_cpr),
		cmocka_unit_test(test_destination_without_it),
		cmocka_unit_test(test_cpr_new_without_it),
		cmocka_unit_test(test_source_without_it),
	};

	return MIGTEST_RUN(tests);
}
