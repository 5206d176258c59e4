/*
 * In-place live update (CPR transfer) between vmferry processes on this
 * host, under real KVM: 100 updates in a row on one guest, a new process
 * dying at each step (the guest must keep running in the old one), an
 * update from "an older build" (a version-1 VM section), and bad input:
 * a non-UNIX cpr channel, missing or extra channels, wrong sizes, a
 * normal stream into a process waiting for a live update.  Every update
 * verifies guest memory (incrementer) and that the guest keeps running.
 * Skips (77) without KVM.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "lib/migtest.h"
#include "harness/harness.h"

#define CPR_MEM "64M"

static int64_t cpr_moves(struct harness_vm *vm)
{
	struct json_object *q = NULL;
	int64_t moves;

	assert_int_equal(harness_call(vm, "query-status", NULL, &q), 0);
	moves = harness_json_int(q, "moves");
	json_object_put(q);
	return moves;
}

/*
 * One successful update of @old into a new process, which replaces *@old.
 * Checks: the old process exits 0, the new one runs the guest with the
 * move counted, guest memory verifies, the guest makes progress.
 */
static void cpr_update(struct harness_vm *old, bool full_check)
{
	struct migtest_cpr_target t;
	struct json_object *q = NULL;
	int64_t moves = cpr_moves(old);
	uint64_t p0 = 0;
	int rc;

	assert_int_equal(harness_workload_passes(old, &p0), 0);
	migtest_cpr_spawn_new(&t, NULL, NULL);
	assert_int_equal(harness_set_params(old, "{\"mode\": \"cpr-transfer\"}"), 0);
	assert_int_equal(harness_migrate_channels(old, t.main_uri, t.cpr_uri), 0);
	rc = harness_wait_exit(old, MIG_TIMEOUT_MS);
	if (rc != 0)
		fail_msg("the old process ended with status %d instead of 0", rc);
	assert_int_equal(harness_connect(&t.vm, 10000), 0);
	migtest_wait_migration_status(&t.vm, "completed");
	assert_int_equal(harness_call(&t.vm, "query-migrate", NULL, &q), 0);
	assert_string_equal(harness_json_str(q, "mode"), "cpr-transfer");
	assert_int_equal(harness_json_int(q, "normal-pages"), 0); /* no RAM copied */
	json_object_put(q);
	assert_int_equal(cpr_moves(&t.vm), moves + 1);
	migtest_expect_status(&t.vm, "running");
	assert_int_equal(harness_realtime_threads(&t.vm), 0);
	assert_int_equal(harness_verify_incrementer(&t.vm), 0);
	/* The guest goes on where it was. */
	assert_int_equal(harness_wait_passes(&t.vm, p0 + 1, 30000), 0);
	if (full_check)
		migtest_expect_guest_alive_and_verified(&t.vm);
	*old = t.vm;
}

static void test_hundred_updates(void **state)
{
	/* Under the sanitizers every process is several times slower. */
	int n = getenv("VMFERRY_SANITIZED") ? 10 : 100;
	struct harness_vm vm;

	(void)state;
	migtest_spawn(&vm, CPR_MEM, "2", "incrementer", NULL);
	assert_int_equal(harness_wait_passes(&vm, 1, 30000), 0);
	for (int i = 0; i < n; i++)
		cpr_update(&vm, i == n - 1);
	assert_int_equal(cpr_moves(&vm), n);
	assert_int_equal(harness_vm_quit(&vm), 0);
}

/*
 * The new process dies at @fault: the old one reports the failure, the
 * guest keeps running there, verified, and a later update still works.
 */
static void cpr_expect_failed_update(const char *fault)
{
	struct harness_vm old;
	struct migtest_cpr_target t;
	struct json_object *q;

	migtest_spawn(&old, CPR_MEM, "1", "incrementer", NULL);
	assert_int_equal(harness_wait_passes(&old, 1, 30000), 0);
	migtest_cpr_spawn_new(&t, fault, NULL);
	assert_int_equal(harness_set_params(&old, "{\"mode\": \"cpr-transfer\"}"), 0);
	assert_int_equal(harness_migrate_channels(&old, t.main_uri, t.cpr_uri), 0);
	q = migtest_wait_migration(&old);
	assert_string_equal(harness_json_str(q, "status"), "failed");
	fprintf(stderr, "update with the new process dying at %s: %s\n", fault,
		harness_json_str(q, "error-desc"));
	assert_true(harness_json_str(q, "error-desc")[0]);
	json_object_put(q);
	assert_int_equal(harness_wait_exit(&t.vm, 10000), 128 + SIGKILL);
	migtest_expect_guest_alive_and_verified(&old);
	cpr_update(&old, true);
	assert_int_equal(harness_vm_quit(&old), 0);
}

static void test_new_dies_before_fds(void **state)
{
	(void)state;
	cpr_expect_failed_update("before-fds");
}

static void test_new_dies_after_map(void **state)
{
	(void)state;
	cpr_expect_failed_update("after-map");
}

static void test_new_dies_before_run(void **state)
{
	(void)state;
	cpr_expect_failed_update("before-run");
}

/* A source writing the version-1 VM section, as an older build does. */
static void test_update_from_older_build(void **state)
{
	struct harness_vm vm;

	(void)state;
	setenv("VMFERRY_EMIT_VM_SECTION_VERSION", "1", 1);
	migtest_spawn(&vm, CPR_MEM, "1", "incrementer", NULL);
	unsetenv("VMFERRY_EMIT_VM_SECTION_VERSION");
	assert_int_equal(harness_wait_passes(&vm, 1, 30000), 0);
	cpr_update(&vm, true);
	/* Version 1 carries no move count: the new process starts over at 1. */
	assert_int_equal(cpr_moves(&vm), 1);
	cpr_update(&vm, false);
	assert_int_equal(cpr_moves(&vm), 2);
	assert_int_equal(harness_vm_quit(&vm), 0);
}

static void expect_call_error(struct harness_vm *vm, const char *cmd, const char *json)
{
	struct json_object *args = json ? json_tokener_parse(json) : NULL;

	assert_true(!json || args);
	assert_int_equal(harness_call(vm, cmd, args, NULL), -EREMOTEIO);
	json_object_put(args);
}

static void test_bad_requests(void **state)
{
	struct harness_vm old;
	struct migtest_cpr_target t;
	struct harness_result res;
	const char *tcp_cpr[] = { "run", "--incoming", "unix:/nonexistent/x", "--incoming-cpr",
				  "tcp:127.0.0.1:0", NULL };
	const char *no_main[] = { "run", "--incoming-cpr", "unix:/tmp/x", NULL };

	(void)state;
	migtest_spawn(&old, CPR_MEM, "1", "incrementer", NULL);
	/* Past its setup, so the verification at the end can judge it. */
	assert_int_equal(harness_wait_passes(&old, 1, 30000), 0);
	/* A cpr channel without mode cpr-transfer, and the reverse. */
	assert_int_equal(harness_migrate_channels(&old, "unix:/nonexistent/main", "unix:/nonexistent/cpr"),
			 -EREMOTEIO);
	expect_call_error(&old, "migrate-set-parameters", "{\"mode\": \"copy-everything\"}");
	assert_int_equal(harness_set_params(&old, "{\"mode\": \"cpr-transfer\"}"), 0);
	assert_int_equal(harness_migrate_channels(&old, "unix:/nonexistent/main", NULL), -EREMOTEIO);
	expect_call_error(&old, "migrate", "{\"uri\": \"unix:/nonexistent/main\"}");
	/* The cpr channel must be a UNIX socket. */
	assert_int_equal(harness_migrate_channels(&old, "unix:/nonexistent/main", "tcp:127.0.0.1:1"), -EREMOTEIO);
	/* Malformed channel lists. */
	expect_call_error(&old, "migrate", "{}");
	expect_call_error(&old, "migrate", "{\"uri\": \"unix:/a\", \"channels\": []}");
	expect_call_error(&old, "migrate", "{\"channels\": []}");
	expect_call_error(&old, "migrate", "{\"channels\": [{\"type\": \"main\"}]}");
	expect_call_error(&old, "migrate", "{\"channels\": [{\"type\": \"side\", \"uri\": \"unix:/a\"}]}");
	expect_call_error(&old, "migrate", "{\"channels\": [{\"type\": \"main\", \"uri\": \"unix:/a\"}, "
			  "{\"type\": \"main\", \"uri\": \"unix:/b\"}]}");
	expect_call_error(&old, "migrate", "{\"channels\": [{\"type\": \"cpr\", \"uri\": \"unix:/a\"}]}");
	expect_call_error(&old, "migrate", "{\"channels\": [{\"type\": \"main\", \"uri\": \"unix:/a\", "
			  "\"x\": 1}]}");
	/* Nobody listens on the cpr channel: a clear failure, the guest runs on. */
	{
		char cp[HARNESS_PATH_BYTES], cpr_uri[HARNESS_PATH_BYTES + 8];
		struct json_object *q;

		assert_int_equal(harness_unique_path(cp, sizeof(cp), "nobody"), 0);
		snprintf(cpr_uri, sizeof(cpr_uri), "unix:%s", cp);
		assert_int_equal(harness_set_params(&old, "{\"mode\": \"cpr-transfer\"}"), 0);
		assert_int_equal(harness_migrate_channels(&old, "unix:/nonexistent/main", cpr_uri), 0);
		q = migtest_wait_migration(&old);
		assert_string_equal(harness_json_str(q, "status"), "failed");
		assert_non_null(strstr(harness_json_str(q, "error-desc"), "cpr channel"));
		json_object_put(q);
		migtest_expect_status(&old, "running");
	}
	/* The new process: a non-UNIX cpr uri, no main channel. */
	assert_int_equal(harness_run(tcp_cpr, NULL, 10000, &res), 0);
	assert_int_equal(res.status, 1);
	assert_non_null(strstr(res.err, "UNIX socket"));
	harness_result_free(&res);
	assert_int_equal(harness_run(no_main, NULL, 10000, &res), 0);
	assert_int_equal(res.status, 2); /* a usage error */
	assert_non_null(strstr(res.err, "vmferry run: --incoming-cpr needs --incoming"));
	harness_result_free(&res);
	/* A new process told a different size refuses, and the guest runs on. */
	{
		const char *extra[] = { "--mem", "128M", NULL };
		struct json_object *q;

		migtest_cpr_spawn_new(&t, NULL, extra);
		assert_int_equal(harness_migrate_channels(&old, t.main_uri, t.cpr_uri), 0);
		q = migtest_wait_migration(&old);
		assert_string_equal(harness_json_str(q, "status"), "failed");
		assert_non_null(strstr(harness_json_str(q, "error-desc"), "--mem"));
		json_object_put(q);
		assert_int_equal(harness_wait_exit(&t.vm, 10000), 1);
		migtest_expect_status(&old, "running");
	}
	/* A normal migration into a process waiting for a live update. */
	{
		struct json_object *q;

		migtest_cpr_spawn_new(&t, NULL, NULL);
		assert_int_equal(harness_set_params(&old, "{\"mode\": \"normal\"}"), 0);
		assert_int_equal(harness_migrate(&old, t.main_uri), 0);
		q = migtest_wait_migration(&old);
		assert_string_equal(harness_json_str(q, "status"), "failed");
		json_object_put(q);
		/* It never got its fds; nothing is listening on main. */
		assert_int_equal(harness_vm_kill(&t.vm), 128 + SIGKILL);
	}
	migtest_expect_guest_alive_and_verified(&old);
	assert_int_equal(harness_vm_quit(&old), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hundred_updates),
		cmocka_unit_test(test_new_dies_before_fds),
		cmocka_unit_test(test_new_dies_after_map),
		cmocka_unit_test(test_new_dies_before_run),
		cmocka_unit_test(test_update_from_older_build),
		cmocka_unit_test(test_bad_requests),
	};

	return MIGTEST_RUN(tests);
}
