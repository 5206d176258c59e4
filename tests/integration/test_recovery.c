/*
 * Postcopy recovery under real KVM (docs/migration.md, "Postcopy recovery").
 * One 256 MiB incrementer guest per test, its background push throttled
 * with max-bandwidth so that postcopy is still running at each cut:
 *
 * - test_recover_unix: over a UNIX socket, cut three times (migrate-pause on
 *   the source, on the destination, on both), with the bad requests of each
 *   state tried on the way (wrong state, missing or invalid URI, resume to
 *   nobody, cancel), each recovered on a fresh socket;
 * - test_recover_netns_link_down: two network namespaces joined by a veth;
 *   cut by migrate-pause, by the link going silent with nobody told (both
 *   sides notice within the I/O timeout, shortened to 3 s, and give the
 *   same reason), then twice by the veth going down with data in flight
 *   (both sides told with migrate-pause), each recovered after the link is
 *   up again.
 *
 * Each migration must complete with every page there (the incrementer's
 * check on the destination) and the guest must keep running.  Skips (77)
 * without KVM; the netns test skips without root or netns.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <json-c/json.h>

#include "lib/migtest.h"
#include "migration/migration.h"
#include "harness/harness.h"
#include "util/log.h"

#define REC_MEM "256M"
#define REC_VCPUS "2"
#define REC_BANDWIDTH "{\"max-bandwidth\": 40000000}"
#define REC_SILENCE_MS "3000"  /* VMFERRY_IO_TIMEOUT_MS in the netns test */

enum { HOST_A, HOST_B };

static struct harness_netns rec_hosts;
static bool rec_netns_ok;
static struct harness_vm rec_src = { .pid = -1 }, rec_dst = { .pid = -1 };

static int rec_teardown(void **state)
{
	(void)state;
	harness_vm_kill(&rec_src);
	harness_vm_kill(&rec_dst);
	return 0;
}

/* @cmd with {"uri": @uri} (and "resume": true when @resume); 0 or the call's error. */
static int call_uri(struct harness_vm *vm, const char *cmd, const char *uri, bool resume,
		    struct json_object **ret)
{
	struct json_object *args = json_object_new_object();
	int r;

	if (uri)
		json_object_object_add(args, "uri", json_object_new_string(uri));
	if (resume)
		json_object_object_add(args, "resume", json_object_new_boolean(true));
	r = harness_call(vm, cmd, args, ret);
	json_object_put(args);
	return r;
}

/* Both sides postcopy-active, and the push made progress since @since bytes. */
static void wait_active_with_progress(int64_t since)
{
	migtest_wait_migration_status(&rec_src, "postcopy-active");
	migtest_wait_migration_status(&rec_dst, "postcopy-active");
	for (int i = 0; i < 2000 && migtest_query_int(&rec_src, "transferred") < since + (4 << 20); i++)
		harness_nap_ms(5);
}

/* migrate-recover on the destination at @listen; the address it really listens on. */
static void recover(const char *listen, char *uri, size_t len)
{
	struct json_object *ret = NULL;

	assert_int_equal(call_uri(&rec_dst, "migrate-recover", listen, false, &ret), 0);
	snprintf(uri, len, "%s", harness_json_str(ret, "uri"));
	json_object_put(ret);
	assert_true(uri[0]);
}

static void wait_both_paused(void)
{
	migtest_wait_migration_status(&rec_src, "postcopy-paused");
	migtest_wait_migration_status(&rec_dst, "postcopy-paused");
}

/*
 * The destination's vCPU threads are @nicer than the VMM's control thread
 * (postcopy-vcpu-nice: while the push runs, never while paused or after).
 * The setting comes before the status the caller waited for.
 */
static void expect_dst_vcpus_nicer_by(int nicer)
{
	int vmin, vmax, cmin, cmax;

	assert_int_equal(harness_threads_nice(&rec_dst, "vcpu", &vmin, &vmax), atoi(REC_VCPUS));
	assert_int_equal(harness_threads_nice(&rec_dst, "control", &cmin, &cmax), 1);
	assert_int_equal(vmin, vmax);
	assert_int_equal(vmin - cmin, nicer);
	/* SCHED_IDLE is postcopy-vcpu-nice 20 only */
	assert_int_equal(harness_threads_with_policy(&rec_dst, "vcpu", SCHED_IDLE), 0);
}

/* postcopy-vcpu-nice 20: every vCPU thread in SCHED_IDLE, its nice untouched. */
static void expect_dst_vcpus_idle(void)
{
	int vmin, vmax, cmin, cmax;

	assert_int_equal(harness_threads_with_policy(&rec_dst, "vcpu", SCHED_IDLE), atoi(REC_VCPUS));
	assert_int_equal(harness_threads_nice(&rec_dst, "vcpu", &vmin, &vmax), atoi(REC_VCPUS));
	assert_int_equal(harness_threads_nice(&rec_dst, "control", &cmin, &cmax), 1);
	assert_int_equal(vmin, cmin);
	assert_int_equal(vmax, cmin);
}

/*
 * The destination's page-path threads (pc-fault, pc-urgent) end up with
 * @want of them real-time: none while its vCPUs run nicer (the urgent
 * thread then with a 100 µs slice), both while they run at full priority.
 * The VMM sets both when the vCPUs' priority changes (at the start, a pause,
 * a resume), whether or not pages are still faulted on; the check polls,
 * bounded, for that.
 */
static void expect_dst_pagepath_realtime(int want)
{
	int lo, hi, rt = -1;

	for (int i = 0; i < 2000 && rt != want; i++) {
		if (i)
			harness_nap_ms(5);
		assert_int_equal(harness_threads_nice(&rec_dst, "pc-", &lo, &hi), 2);
		rt = harness_realtime_threads_named(&rec_dst, "pc-");
	}
	assert_int_equal(rt, want);
	if (!want) {
		/*
		 * The urgent thread asks for a 100 µs slice (Linux 6.12+), right
		 * after it leaves the real-time class (which resets the slice):
		 * poll, bounded, for that second step.
		 */
		int64_t slice = harness_thread_slice_ns(&rec_dst, "pc-urgent");

		for (int i = 0; i < 400 && slice != 100000 && slice != -ENODATA; i++) {
			harness_nap_ms(5);
			slice = harness_thread_slice_ns(&rec_dst, "pc-urgent");
		}

		struct utsname u;
		int major = 0, minor = 0;

		uname(&u);
		sscanf(u.release, "%d.%d", &major, &minor);
		if (slice == -ENODATA || major < 6 || (major == 6 && minor < 12))
			fprintf(stderr, "recovery: kernel %s takes or shows no slice; not checked\n",
				u.release);
		else
			assert_int_equal(slice, 100000);
	}
}

/* Resume to @uri and time it: both sides postcopy-active again. */
static void resume(const char *uri)
{
	uint64_t t0 = clock_monotonic_ns();

	assert_int_equal(call_uri(&rec_src, "migrate", uri, true, NULL), 0);
	migtest_wait_migration_status(&rec_src, "postcopy-active");
	migtest_wait_migration_status(&rec_dst, "postcopy-active");
	fprintf(stderr, "recovery: resumed in %.1f ms\n", (double)(clock_monotonic_ns() - t0) / 1e6);
}

static void start_postcopy(const char *uri)
{
	assert_int_equal(harness_set_capability(&rec_src, "postcopy-ram", true), 0);
	assert_int_equal(harness_set_capability(&rec_dst, "postcopy-ram", true), 0);
	assert_int_equal(harness_set_params(&rec_src, REC_BANDWIDTH), 0);
	assert_int_equal(harness_call(&rec_src, "migrate-start-postcopy", NULL, NULL), 0);
	assert_int_equal(harness_migrate(&rec_src, uri), 0);
}

/*
 * dump-guest-memory where guest RAM is not whole (still arriving, or given
 * away): refused at once with a reason, and no file left behind.
 */
static void expect_dump_refused(struct harness_vm *vm)
{
	char path[HARNESS_PATH_BYTES];
	struct json_object *args;
	uint64_t t0 = clock_monotonic_ns();

	assert_int_equal(harness_unique_path(path, sizeof(path), "dump"), 0);
	args = json_object_new_object();
	json_object_object_add(args, "file", json_object_new_string(path));
	assert_int_equal(harness_call(vm, "dump-guest-memory", args, NULL), -EREMOTEIO);
	json_object_put(args);
	assert_true(clock_monotonic_ns() - t0 < 2000000000ull);
	assert_int_equal(access(path, F_OK), -1);
}

/* Completed on both sides after @pauses pauses; memory verified; guest alive. */
static void expect_recovered(int64_t pauses)
{
	struct json_object *q = migtest_wait_migration(&rec_src);

	if (strcmp(harness_json_str(q, "status"), "completed"))
		fail_msg("migration %s: %s", harness_json_str(q, "status"), harness_json_str(q, "error-desc"));
	assert_int_equal(harness_json_int(q, "postcopy-pauses"), pauses);
	fprintf(stderr, "recovery: completed in %.0f ms with %lld pauses\n",
		json_object_get_double(json_object_object_get(q, "total-time")), (long long)pauses);
	json_object_put(q);
	migtest_expect_status(&rec_src, "postmigrate");
	migtest_wait_migration_status(&rec_dst, "completed");
	expect_dst_vcpus_nicer_by(0);
	assert_int_equal(migtest_query_int(&rec_dst, "postcopy-pauses"), pauses);
	expect_dump_refused(&rec_src); /* its RAM went to the destination */
	migtest_expect_guest_alive_and_verified(&rec_dst);
	assert_int_equal(harness_vm_quit(&rec_src), 0);
	assert_int_equal(harness_vm_quit(&rec_dst), 0);
}

/*
 * Automatic recovery (postcopy-recover-timeout): the path between the two
 * breaks twice with pages in flight (every connection through the relay
 * closed at once); both sides pause, and resume by themselves through the
 * relay, with no migrate-recover and no resume command; the migration
 * completes with every page there.
 */
static void test_recover_automatically(void **state)
{
	char uri[HARNESS_PATH_BYTES + 8], via[64];
	struct harness_relay *relay = NULL;
	int dst_port = 0;

	(void)state;
	migtest_spawn(&rec_src, REC_MEM, REC_VCPUS, "incrementer", NULL);
	assert_int_equal(harness_wait_passes(&rec_src, 1, 30000), 0);
	migtest_spawn_incoming(&rec_dst, REC_MEM, REC_VCPUS, false, uri, sizeof(uri));
	assert_int_equal(sscanf(strrchr(uri, ':') + 1, "%d", &dst_port), 1);
	assert_int_equal(harness_relay_start(dst_port, &relay), 0);
	snprintf(via, sizeof(via), "tcp:127.0.0.1:%d", harness_relay_port(relay));
	for (int i = 0; i < 2; i++) {
		struct harness_vm *vm = i ? &rec_dst : &rec_src;
		struct json_object *q = NULL;

		assert_int_equal(harness_set_params(vm, "{\"postcopy-recover-timeout\": 60}"), 0);
		assert_int_equal(harness_call(vm, "query-migrate-parameters", NULL, &q), 0);
		assert_int_equal(harness_json_int(q, "postcopy-recover-timeout"), 60);
		json_object_put(q);
	}
	start_postcopy(via);
	for (int cut = 1; cut <= 2; cut++) {
		int64_t since = migtest_query_int(&rec_src, "transferred");

		wait_active_with_progress(since);
		harness_relay_cut(relay);
		/* Both notice the break and pause, then come back on their own. */
		for (int i = 0; i < 6000 && (migtest_query_int(&rec_src, "postcopy-pauses") < cut ||
					     migtest_query_int(&rec_dst, "postcopy-pauses") < cut); i++)
			harness_nap_ms(5);
		assert_true(migtest_query_int(&rec_src, "postcopy-pauses") >= cut);
		assert_true(migtest_query_int(&rec_dst, "postcopy-pauses") >= cut);
		fprintf(stderr, "recovery: cut %d through the relay, %u connections so far\n", cut,
			harness_relay_accepted(relay));
	}
	expect_recovered(migtest_query_int(&rec_src, "postcopy-pauses"));
	harness_relay_stop(relay);
}

static void unix_uri(char *uri, size_t len)
{
	char path[HARNESS_PATH_BYTES];

	assert_int_equal(harness_unique_path(path, sizeof(path), "recover"), 0);
	snprintf(uri, len, "unix:%s", path);
}

static void test_recover_unix(void **state)
{
	char uri[HARNESS_PATH_BYTES + 8], nobody[HARNESS_PATH_BYTES + 8];
	char listen[HARNESS_PATH_BYTES + 8], real[HARNESS_PATH_BYTES + 8];
	struct json_object *q = NULL;

	(void)state;
	migtest_spawn(&rec_src, REC_MEM, REC_VCPUS, "incrementer", NULL);
	assert_int_equal(harness_wait_passes(&rec_src, 1, 30000), 0);
	migtest_spawn_incoming(&rec_dst, REC_MEM, REC_VCPUS, true, uri, sizeof(uri));

	/* Before any postcopy: every recovery command is refused. */
	assert_int_equal(harness_call(&rec_src, "migrate-pause", NULL, NULL), -EREMOTEIO);
	assert_int_equal(harness_call(&rec_dst, "migrate-pause", NULL, NULL), -EREMOTEIO);
	assert_int_equal(call_uri(&rec_dst, "migrate-recover", "unix:/tmp/x", false, NULL), -EREMOTEIO);
	assert_int_equal(call_uri(&rec_src, "migrate", uri, true, NULL), -EREMOTEIO);
	migtest_expect_status(&rec_src, "running");

	expect_dst_vcpus_nicer_by(0);
	start_postcopy(uri);
	wait_active_with_progress(0);
	expect_dst_vcpus_idle(); /* the default, 20 */
	expect_dst_pagepath_realtime(0);
	assert_int_equal(harness_realtime_threads_named(&rec_src, "pc-return"), 1);
	/* Active: no recover, no resume, no cancel; a second pause is refused after. */
	assert_int_equal(call_uri(&rec_dst, "migrate-recover", "unix:/tmp/x", false, NULL), -EREMOTEIO);
	assert_int_equal(call_uri(&rec_src, "migrate", uri, true, NULL), -EREMOTEIO);
	assert_int_equal(harness_call(&rec_src, "migrate-cancel", NULL, NULL), -EREMOTEIO);

	/* Cut 1: migrate-pause on the source. */
	assert_int_equal(harness_call(&rec_src, "migrate-pause", NULL, NULL), 0);
	wait_both_paused();
	expect_dst_vcpus_nicer_by(0);
	/* takes effect at the resume */
	assert_int_equal(harness_set_params(&rec_dst, "{\"postcopy-vcpu-nice\": 7}"), 0);
	assert_int_equal(harness_call(&rec_src, "migrate-pause", NULL, NULL), -EREMOTEIO);
	assert_int_equal(harness_call(&rec_src, "migrate-cancel", NULL, NULL), -EREMOTEIO);
	/* wrong side, missing or invalid URI */
	assert_int_equal(call_uri(&rec_src, "migrate-recover", "unix:/tmp/x", false, NULL), -EREMOTEIO);
	assert_int_equal(call_uri(&rec_dst, "migrate", uri, true, NULL), -EREMOTEIO);
	assert_int_equal(harness_call(&rec_dst, "migrate-recover", NULL, NULL), -EREMOTEIO);
	assert_int_equal(call_uri(&rec_dst, "migrate-recover", "carrier-pigeon:1", false, NULL), -EREMOTEIO);
	assert_int_equal(call_uri(&rec_src, "migrate", "tcp:nohost", true, NULL), -EREMOTEIO);
	assert_int_equal(call_uri(&rec_src, "migrate", NULL, true, NULL), -EREMOTEIO);
	/* a migration that is not resumed is not a new one either */
	assert_int_equal(harness_migrate(&rec_src, uri), -EREMOTEIO);
	/* resume to an address nobody listens on: stays paused, says why */
	unix_uri(nobody, sizeof(nobody));
	assert_int_equal(call_uri(&rec_src, "migrate", nobody, true, NULL), 0);
	for (int i = 0; i < 2000; i++) {
		q = NULL;
		assert_int_equal(harness_call(&rec_src, "query-migrate", NULL, &q), 0);
		if (strstr(harness_json_str(q, "error-desc"), "failed"))
			break;
		json_object_put(q);
		q = NULL;
		harness_nap_ms(5);
	}
	assert_non_null(q);
	assert_string_equal(harness_json_str(q, "status"), "postcopy-paused");
	assert_non_null(strstr(harness_json_str(q, "error-desc"), nobody + 5));
	json_object_put(q);
	/* now properly */
	unix_uri(listen, sizeof(listen));
	recover(listen, real, sizeof(real));
	assert_string_equal(real, listen);
	assert_int_equal(call_uri(&rec_dst, "migrate-recover", listen, false, NULL), -EREMOTEIO);
	resume(real);
	expect_dst_vcpus_nicer_by(7);
	expect_dst_pagepath_realtime(0);

	/* Cut 2: migrate-pause on the destination. */
	wait_active_with_progress(migtest_query_int(&rec_src, "transferred"));
	assert_int_equal(harness_call(&rec_dst, "migrate-pause", NULL, NULL), 0);
	wait_both_paused();
	expect_dump_refused(&rec_dst);
	/* vCPUs at full priority from the resume: the page path real-time */
	assert_int_equal(harness_set_params(&rec_dst, "{\"postcopy-vcpu-nice\": 0}"), 0);
	unix_uri(listen, sizeof(listen));
	recover(listen, real, sizeof(real));
	resume(real);
	expect_dst_vcpus_nicer_by(0);
	expect_dst_pagepath_realtime(2);

	/* Cut 3: both sides at once. */
	wait_active_with_progress(migtest_query_int(&rec_src, "transferred"));
	assert_int_equal(harness_call(&rec_dst, "migrate-pause", NULL, NULL), 0);
	/* The source may have noticed the cut and paused already: then refused as such. */
	if (harness_call(&rec_src, "migrate-pause", NULL, NULL) != 0 &&
	    !strstr(rec_src.error, "(this one is postcopy-paused)"))
		fail_msg("migrate-pause on the source: %s", rec_src.error);
	wait_both_paused();
	expect_dst_vcpus_nicer_by(0);
	/* back to the default, SCHED_IDLE; the page path stays in the normal policy */
	assert_int_equal(harness_set_params(&rec_dst, "{\"postcopy-vcpu-nice\": 20}"), 0);
	unix_uri(listen, sizeof(listen));
	recover(listen, real, sizeof(real));
	resume(real);
	expect_dst_vcpus_idle();
	expect_dst_pagepath_realtime(0);

	expect_recovered(3);
}

static void spawn_on(struct harness_vm *vm, int host, const char *const args[])
{
	const char *prefix[5];

	harness_netns_prefix(&rec_hosts, host, prefix);
	assert_int_equal(harness_spawn_prefixed(vm, prefix, args), 0);
}

/* `ip -n NS link set DEV up|down` for the veth end in @host. */
static void link_set(int host, const char *updown)
{
	const char *argv[] = { rec_hosts.ip_path, "-n", rec_hosts.ns[host], "link", "set",
			       rec_hosts.dev[host], updown, NULL };

	assert_int_equal(harness_cmd(argv, false, 10000), 0);
}

/*
 * With postcopy running: @host's veth end goes down with pages in flight,
 * @first then @second are told (migrate-pause), the link comes up again and
 * the migration resumes on a new connection to @listen.
 */
static void cut_link(int host, struct harness_vm *first, struct harness_vm *second,
		     const char *listen)
{
	char real[64];

	wait_active_with_progress(migtest_query_int(&rec_src, "transferred"));
	link_set(host, "down");
	assert_int_equal(harness_call(first, "migrate-pause", NULL, NULL), 0);
	assert_int_equal(harness_call(second, "migrate-pause", NULL, NULL), 0);
	wait_both_paused();
	link_set(host, "up");
	recover(listen, real, sizeof(real));
	resume(real);
}

/*
 * With postcopy running, @host's veth end goes down and nobody is told:
 * both sides notice the silence within the I/O timeout and give the same
 * reason (not "cancelled" on one side); the link comes up again and the
 * migration resumes on a new connection to @listen.
 */
static void silent_link(int host, const char *listen)
{
	const char *want = "peer silent for " REC_SILENCE_MS " ms";
	struct harness_vm *side[] = { &rec_src, &rec_dst };
	char real[64];

	wait_active_with_progress(migtest_query_int(&rec_src, "transferred"));
	link_set(host, "down");
	wait_both_paused();
	for (int i = 0; i < 2; i++) {
		struct json_object *q = NULL;

		assert_int_equal(harness_call(side[i], "query-migrate", NULL, &q), 0);
		fprintf(stderr, "silent link, %s: %s\n", harness_json_str(q, "role"),
			harness_json_str(q, "error-desc"));
		if (!strstr(harness_json_str(q, "error-desc"), want))
			fail_msg("%s: '%s' lacks '%s'", harness_json_str(q, "role"),
				 harness_json_str(q, "error-desc"), want);
		json_object_put(q);
	}
	link_set(host, "up");
	recover(listen, real, sizeof(real));
	resume(real);
}

static void test_recover_netns_link_down(void **state)
{
	char listen[48], uri[64], real[64];
	const char *dst_args[] = { "--mem", REC_MEM, "--vcpus", REC_VCPUS, "--incoming", listen, NULL };
	const char *src_args[] = { "--mem", REC_MEM, "--vcpus", REC_VCPUS, "--guest", "incrementer",
				   NULL };

	(void)state;
	if (!rec_netns_ok)
		skip();
	snprintf(listen, sizeof(listen), "tcp:%s:0", rec_hosts.addr[HOST_B]);
	/* A silent link is noticed after this long (cut 2). */
	setenv("VMFERRY_IO_TIMEOUT_MS", REC_SILENCE_MS, 1);
	spawn_on(&rec_dst, HOST_B, dst_args);
	migtest_incoming_uri(&rec_dst, uri, sizeof(uri));
	spawn_on(&rec_src, HOST_A, src_args);
	unsetenv("VMFERRY_IO_TIMEOUT_MS");
	assert_int_equal(harness_wait_passes(&rec_src, 1, 30000), 0);
	start_postcopy(uri);

	/* Cut 1: migrate-pause on the source, over TCP. */
	wait_active_with_progress(0);
	assert_int_equal(harness_call(&rec_src, "migrate-pause", NULL, NULL), 0);
	wait_both_paused();
	recover(listen, real, sizeof(real));
	resume(real);

	/* Cut 2: the link goes silent, nobody is told. */
	silent_link(HOST_A, listen);
	/* Cut 3: the link goes down with pages in flight. */
	cut_link(HOST_A, &rec_src, &rec_dst, listen);
	/* Cut 4: down again at the other end, the destination told first. */
	cut_link(HOST_B, &rec_dst, &rec_src, listen);

	expect_recovered(4);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_recover_unix, rec_teardown),
		cmocka_unit_test_teardown(test_recover_netns_link_down, rec_teardown),
		cmocka_unit_test_teardown(test_recover_automatically, rec_teardown),
	};

	if (!harness_kvm_available())
		return HARNESS_SKIP;
	if (harness_cleanup_on_exit())
		return 1;
	if (geteuid() == 0 && harness_netns_create(&rec_hosts, 't', HARNESS_LINK_VETH) == 0)
		rec_netns_ok = true;
	else
		fprintf(stderr, "note: no network namespaces; the link-down test skips\n");
	if (getenv("VMFERRY_TEST_FILTER"))
		cmocka_set_test_filter(getenv("VMFERRY_TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
