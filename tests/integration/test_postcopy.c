/*
 * Postcopy and hybrid migration under real KVM: pure postcopy, hybrid after
 * one pass, a non-converging dirtier switched automatically, a destination
 * that refuses or dies before running (the source resumes), a source killed
 * during postcopy (the destination pauses and says so, in bounded time), bad
 * requests.  Every migration verifies guest memory on the destination and
 * that the guest keeps running.  Skips (77) without KVM.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "lib/migtest.h"
#include "migration/migration.h"
#include "harness/harness.h"
#include "control/client.h"
#include "util/log.h"

static int set_postcopy_cap(struct harness_vm *vm, bool on)
{
	return harness_set_capability(vm, "postcopy-ram", on);
}

/*
 * Source with @guest, destination with postcopy enabled on both sides, in
 * userfaultfd mode @uffd_mode ("minor", the default, or "missing"; checked
 * in the destination's query-migrate).
 */
static void setup_pair_mode(struct harness_vm *src, struct harness_vm *dst, const char *mem,
			    const char *vcpus, const char *guest, const char *uffd_mode,
			    char *uri, size_t len)
{
	struct json_object *q = NULL;

	migtest_spawn(src, mem, vcpus, guest, NULL);
	assert_int_equal(harness_wait_passes(src, 1, 30000), 0);
	if (!strcmp(uffd_mode, "missing"))
		setenv("VMFERRY_POSTCOPY_UFFD", "missing", 1);
	migtest_spawn_incoming(dst, mem, vcpus, true, uri, len);
	unsetenv("VMFERRY_POSTCOPY_UFFD");
	assert_int_equal(set_postcopy_cap(src, true), 0);
	assert_int_equal(set_postcopy_cap(dst, true), 0);
	assert_int_equal(harness_call(dst, "query-migrate", NULL, &q), 0);
	assert_string_equal(harness_json_str(q, "postcopy-uffd-mode"), uffd_mode);
	json_object_put(q);
}

static void setup_pair(struct harness_vm *src, struct harness_vm *dst, const char *mem,
		       const char *vcpus, const char *guest, char *uri, size_t len)
{
	setup_pair_mode(src, dst, mem, vcpus, guest, "minor", uri, len);
}

static void expect_completed_postcopy(struct harness_vm *src, struct harness_vm *dst, bool pure)
{
	struct json_object *q = migtest_wait_migration(src);

	if (strcmp(harness_json_str(q, "status"), "completed"))
		fail_msg("postcopy: %s: %s", harness_json_str(q, "status"),
			 harness_json_str(q, "error-desc"));
	migtest_expect_postcopy_accounting(q, pure);
	json_object_put(q);
	migtest_expect_status(src, "postmigrate");
	/* The destination finishes just after it told the source. */
	migtest_wait_migration_status(dst, "completed");
	q = NULL;
	assert_int_equal(harness_call(dst, "query-migrate", NULL, &q), 0);
	assert_true(harness_json_int(q, "postcopy-faults") >= harness_json_int(q, "postcopy-requests"));
	json_object_put(q);
	migtest_expect_guest_alive_and_verified(dst);
}

static void test_pure_postcopy(void **state)
{
	static const char *const vcpus[] = { "1", "2", "2" };
	static const char *const modes[] = { "minor", "minor", "missing" };

	(void)state;
	for (size_t i = 0; i < 3; i++) {
		struct harness_vm src, dst;
		char uri[HARNESS_PATH_BYTES + 8];

		setup_pair_mode(&src, &dst, "64M", vcpus[i], "incrementer", modes[i], uri,
				sizeof(uri));
		assert_true(migtest_guest_ram_allocated(&src) > 0);
		assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
		assert_int_equal(harness_migrate(&src, uri), 0);
		expect_completed_postcopy(&src, &dst, true);
		/* release-ram: the source gives guest RAM back to the host. */
		migtest_expect_guest_ram_released(&src, 10000);
		assert_int_equal(harness_vm_quit(&src), 0);
		assert_int_equal(harness_vm_quit(&dst), 0);
	}
}

/*
 * A sparse guest, pure postcopy (lazy minor mode): 4 GiB of which the
 * dirtier touched 2 x 16 MiB.  The holes cross as zero runs, never read on
 * the source (reading a memfd hole allocates it) and never allocated on the
 * destination; the guest's memory verifies.
 */
static void test_pure_postcopy_sparse(void **state)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	int64_t src_bytes;

	(void)state;
	setup_pair(&src, &dst, "4G", "2", "dirtier,wss=16M,rate=2000,fill=1", uri, sizeof(uri));
	src_bytes = migtest_guest_ram_allocated(&src);
	assert_true(src_bytes > 0 && src_bytes < (128ll << 20));
	assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
	assert_int_equal(harness_migrate(&src, uri), 0);
	expect_completed_postcopy(&src, &dst, true);
	/* What the guest touched, the look-ahead of the preallocation, little more. */
	assert_true(migtest_guest_ram_allocated(&dst) < (256ll << 20));
	assert_int_equal(harness_vm_quit(&src), 0);
	assert_int_equal(harness_vm_quit(&dst), 0);
}

/*
 * `stop` and `cont` on the destination while postcopy pages still arrive:
 * the vCPUs (in SCHED_IDLE there, postcopy-vcpu-nice's default) park at
 * once, the stream goes on, and the guest resumes and verifies after.
 */
static void test_stop_cont_during_postcopy(void **state)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	uint64_t t0, stop_ns;

	(void)state;
	setup_pair(&src, &dst, "64M", "2", "incrementer", uri, sizeof(uri));
	/* ~2 s of postcopy, so the stop lands while pages arrive */
	assert_int_equal(harness_set_params(&src, "{\"max-bandwidth\": 32000000}"), 0);
	assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
	assert_int_equal(harness_migrate(&src, uri), 0);
	migtest_wait_migration_status(&dst, "postcopy-active");
	assert_int_equal(harness_threads_with_policy(&dst, "vcpu", SCHED_IDLE), 2);
	t0 = clock_monotonic_ns();
	assert_int_equal(harness_call(&dst, "stop", NULL, NULL), 0);
	stop_ns = clock_monotonic_ns() - t0;
	fprintf(stderr, "postcopy: stop on the destination took %.1f ms\n", (double)stop_ns / 1e6);
	assert_true(stop_ns < 5000000000ull); /* parked, not starved */
	migtest_expect_status(&dst, "paused");
	{
		struct json_object *q = NULL;

		/* the pages go on arriving meanwhile */
		assert_int_equal(harness_call(&dst, "query-migrate", NULL, &q), 0);
		assert_string_equal(harness_json_str(q, "status"), "postcopy-active");
		json_object_put(q);
	}
	assert_int_equal(harness_call(&dst, "cont", NULL, NULL), 0);
	migtest_expect_status(&dst, "running");
	expect_completed_postcopy(&src, &dst, true);
	assert_int_equal(harness_threads_with_policy(&dst, "vcpu", SCHED_IDLE), 0);
	assert_int_equal(harness_vm_quit(&src), 0);
	assert_int_equal(harness_vm_quit(&dst), 0);
}

static void test_hybrid_after_one_pass(void **state)
{
	static const char *const modes[] = { "minor", "missing" };

	(void)state;
	for (size_t i = 0; i < 2; i++) {
		struct harness_vm src, dst;
		char uri[HARNESS_PATH_BYTES + 8];

		/* Discards unmap (minor) or punch (missing) pages received in precopy. */
		setup_pair_mode(&src, &dst, "64M", "2", "incrementer", modes[i], uri, sizeof(uri));
		/* Precopy that cannot finish by itself; switch after the first pass. */
		assert_int_equal(harness_set_params(&src, "{\"downtime-limit\": 1, "
						    "\"postcopy-after-passes\": 1}"), 0);
		assert_int_equal(harness_migrate(&src, uri), 0);
		expect_completed_postcopy(&src, &dst, false);
		assert_int_equal(harness_vm_quit(&src), 0);
		assert_int_equal(harness_vm_quit(&dst), 0);
	}
}

/*
 * Without the urgent channel (postcopy-preempt off) every request is answered
 * by the background push, which must serve each one, not only the latest:
 * two vCPUs of the dirtier fault in their own halves of RAM, often within
 * one push chunk of each other.  With the push capped at 16 MB/s a request
 * it overlooked would wait for the sweep to come round (up to 4 s over
 * 64 MiB; seen: requests waiting seconds); served, it waits at most about
 * one 4 MiB chunk (250 ms there).
 */
static void test_requests_without_urgent_channel(void **state)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct json_object *q = NULL;
	double max_us;

	(void)state;
	setup_pair(&src, &dst, "64M", "2", "dirtier", uri, sizeof(uri));
	assert_int_equal(harness_set_capability(&src, "postcopy-preempt", false), 0);
	assert_int_equal(harness_set_params(&src, "{\"max-bandwidth\": 16000000}"), 0);
	assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
	assert_int_equal(harness_migrate(&src, uri), 0);
	expect_completed_postcopy(&src, &dst, true);
	assert_int_equal(harness_call(&dst, "query-migrate", NULL, &q), 0);
	max_us = json_object_get_double(json_object_object_get(q, "fault-latency-max-us"));
	fprintf(stderr, "no urgent channel: %" PRId64 " requests, max latency %.1f ms\n",
		harness_json_int(q, "postcopy-requests"), max_us / 1e3);
	assert_true(harness_json_int(q, "postcopy-requests") >= 2);
	if (max_us > 1500e3)
		fail_msg("a request waited %.0f ms: the push overlooked it", max_us / 1e3);
	json_object_put(q);
	assert_int_equal(harness_vm_quit(&src), 0);
	assert_int_equal(harness_vm_quit(&dst), 0);
}

/*
 * The destination closes the urgent channel before it sends COMPLETE, as a
 * network may reorder the two connections: the source still completes
 * (seen once under load: it paused the finished migration instead).
 */
static void test_complete_after_urgent_close(void **state)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];

	(void)state;
	migtest_spawn(&src, "64M", "2", "incrementer", NULL);
	assert_int_equal(harness_wait_passes(&src, 1, 30000), 0);
	setenv("VMFERRY_DST_FAULT", "urgent-closed-first", 1);
	migtest_spawn_incoming(&dst, "64M", "2", true, uri, sizeof(uri));
	unsetenv("VMFERRY_DST_FAULT");
	assert_int_equal(set_postcopy_cap(&src, true), 0);
	assert_int_equal(set_postcopy_cap(&dst, true), 0);
	assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
	assert_int_equal(harness_migrate(&src, uri), 0);
	expect_completed_postcopy(&src, &dst, true);
	assert_int_equal(harness_vm_quit(&src), 0);
	assert_int_equal(harness_vm_quit(&dst), 0);
}

static void test_dirtier_switches_automatically(void **state)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct json_object *q;

	(void)state;
	setup_pair(&src, &dst, "64M", "2", "dirtier,wss=16M,rate=0", uri, sizeof(uri));
	/* The same non-converging setup as the precopy timeout test. */
	assert_int_equal(harness_set_params(&src, "{\"downtime-limit\": 10, \"max-bandwidth\": 30000000, "
					    "\"postcopy-after-passes\": 2}"), 0);
	assert_int_equal(harness_migrate(&src, uri), 0);
	q = migtest_wait_migration(&src);
	if (strcmp(harness_json_str(q, "status"), "completed"))
		fail_msg("%s: %s", harness_json_str(q, "status"), harness_json_str(q, "error-desc"));
	assert_true(harness_json_int(q, "passes") >= 2);
	migtest_expect_postcopy_accounting(q, false);
	json_object_put(q);
	/* Its page-fault threads (real-time at times) end with its side of the migration. */
	migtest_wait_migration_status(&dst, "completed");
	migtest_expect_guest_alive_and_verified(&dst);
	assert_int_equal(harness_vm_quit(&src), 0);
	assert_int_equal(harness_vm_quit(&dst), 0);
}

/* The destination refuses postcopy: the source resumes and is intact. */
static void test_destination_refuses(void **state)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct json_object *q;

	(void)state;
	setup_pair(&src, &dst, "64M", "2", "incrementer", uri, sizeof(uri));
	assert_int_equal(set_postcopy_cap(&dst, false), 0);
	assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
	assert_int_equal(harness_migrate(&src, uri), 0);
	q = migtest_wait_migration(&src);
	assert_string_equal(harness_json_str(q, "status"), "failed");
	assert_non_null(strstr(harness_json_str(q, "error-desc"), "postcopy"));
	json_object_put(q);
	assert_int_equal(harness_wait_exit(&dst, 20000), 1);
	migtest_expect_guest_alive_and_verified(&src);
	assert_int_equal(harness_vm_quit(&src), 0);
}

/* The destination dies during precopy with postcopy advised. */
static void test_destination_dies_before_run(void **state)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct json_object *q;

	(void)state;
	setup_pair(&src, &dst, "64M", "2", "incrementer", uri, sizeof(uri));
	assert_int_equal(harness_set_params(&src, "{\"max-bandwidth\": 20000000}"), 0);
	assert_int_equal(harness_migrate(&src, uri), 0);
	for (int i = 0; i < 2000; i++) {
		q = NULL;
		assert_int_equal(harness_call(&src, "query-migrate", NULL, &q), 0);
		if (harness_json_int(q, "transferred") > (2 << 20)) {
			json_object_put(q);
			break;
		}
		json_object_put(q);
		harness_nap_ms(5);
	}
	harness_vm_kill(&dst);
	q = migtest_wait_migration(&src);
	assert_string_equal(harness_json_str(q, "status"), "failed");
	json_object_put(q);
	migtest_expect_guest_alive_and_verified(&src);
	assert_int_equal(harness_vm_quit(&src), 0);
}

/*
 * The source dies during postcopy: the destination pauses (the guest keeps
 * running, blocked only on missing pages), says so with an event and in
 * query-migrate within bounded time, and waits for migrate-recover.
 */
static void test_source_killed_during_postcopy(void **state)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct json_object *q = NULL, *ev = NULL, *reason;
	uint64_t t0;

	(void)state;
	setup_pair(&src, &dst, "256M", "2", "incrementer", uri, sizeof(uri));
	/* A slow background push keeps postcopy going long enough. */
	assert_int_equal(harness_set_params(&src, "{\"max-bandwidth\": 20000000}"), 0);
	assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
	assert_int_equal(harness_migrate(&src, uri), 0);
	migtest_wait_migration_status(&dst, "postcopy-active");
	t0 = clock_monotonic_ns();
	harness_vm_kill(&src);
	/* Bounded: the dead peer is noticed and reported, never a silent hang. */
	assert_int_equal(control_client_wait_event(dst.client, "MIGRATION_PAUSED", 10000, &ev), 0);
	fprintf(stderr, "source killed: destination paused after %.1f ms\n",
		(double)(clock_monotonic_ns() - t0) / 1e6);
	assert_true(json_object_object_get_ex(ev, "data", &reason));
	assert_non_null(strstr(harness_json_str(reason, "reason"), "connection to the source broke"));
	json_object_put(ev);
	assert_int_equal(harness_call(&dst, "query-migrate", NULL, &q), 0);
	assert_string_equal(harness_json_str(q, "status"), "postcopy-paused");
	assert_non_null(strstr(harness_json_str(q, "error-desc"), "connection to the source broke"));
	json_object_put(q);
	/* The guest is alive (its vCPUs run; those on missing pages wait). */
	migtest_expect_status(&dst, "running");
	assert_int_equal(harness_vm_kill(&dst), 128 + SIGKILL);
}

static void test_bad_requests(void **state)
{
	struct harness_vm src;

	(void)state;
	migtest_spawn(&src, "32M", "1", "incrementer", NULL);
	assert_int_equal(harness_wait_passes(&src, 1, 30000), 0);
	/* Without the capability. */
	assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), -EREMOTEIO);
	assert_int_equal(harness_set_params(&src, "{\"postcopy-after-passes\": -1}"), -EREMOTEIO);
	assert_int_equal(harness_set_params(&src, "{\"postcopy-after-passes\": \"soon\"}"), -EREMOTEIO);
	assert_int_equal(harness_set_params(&src, "{\"postcopy-vcpu-nice\": 21}"), -EREMOTEIO);
	assert_int_equal(harness_set_params(&src, "{\"postcopy-vcpu-nice\": -1}"), -EREMOTEIO);
	assert_int_equal(harness_set_params(&src, "{\"postcopy-vcpu-nice\": \"low\"}"), -EREMOTEIO);
	{
		struct json_object *q = NULL;

		assert_int_equal(harness_call(&src, "query-migrate-parameters", NULL, &q), 0);
		assert_int_equal(harness_json_int(q, "postcopy-vcpu-nice"), MIG_POSTCOPY_VCPU_NICE_DEFAULT);
		json_object_put(q);
		assert_int_equal(harness_set_params(&src, "{\"postcopy-vcpu-nice\": 0}"), 0);
		assert_int_equal(harness_call(&src, "query-migrate-parameters", NULL, &q), 0);
		assert_int_equal(harness_json_int(q, "postcopy-vcpu-nice"), 0);
		json_object_put(q);
	}
	assert_int_equal(set_postcopy_cap(&src, true), 0);
	assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
	migtest_expect_guest_alive_and_verified(&src);
	assert_int_equal(harness_vm_quit(&src), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pure_postcopy),
		cmocka_unit_test(test_pure_postcopy_sparse),
		cmocka_unit_test(test_stop_cont_during_postcopy),
		cmocka_unit_test(test_hybrid_after_one_pass),
		cmocka_unit_test(test_complete_after_urgent_close),
		cmocka_unit_test(test_requests_without_urgent_channel),
		cmocka_unit_test(test_dirtier_switches_automatically),
		cmocka_unit_test(test_destination_refuses),
		cmocka_unit_test(test_destination_dies_before_run),
		cmocka_unit_test(test_source_killed_during_postcopy),
		cmocka_unit_test(test_bad_requests),
	};

	return MIGTEST_RUN(tests);
}
