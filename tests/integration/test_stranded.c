/*
 * A guest the source stopped and then heard nothing about (docs/migration.md
 * and docs/cpr.md, failure tables), under real KVM, against our own peer
 * that takes everything and goes silent (tools/silent_peer.c):
 *
 * - test_precopy_silent_tcp: a precopy destination reads the whole stream,
 *   END included, and never answers.  The source keeps the guest paused
 *   (finish-migrate) and says how to resume it; cont, stop, migrate-cancel
 *   and migrate refuse with that command; `cont {"force": true}` resumes
 *   it; the guest verifies (incrementer), runs on and migrates again.
 * - test_precopy_peer_dies_after_stop: the same peer is killed while the
 *   source waits for RUNNING: a closed connection is no answer, so the
 *   source resumes the guest by itself.
 * - test_cpr_silent_new_process: a live update's new process takes the
 *   fds, answers ACK and goes silent.  The force is refused while it lives
 *   (it maps the same RAM); once it is killed the force resumes the guest,
 *   which verifies, runs on and updates again.
 * - test_postcopy_destination_killed: the destination dies during
 *   postcopy.  The source pauses and says the guest is lost if that
 *   process died, and how to tell; `cont {"force": true}` is refused (the
 *   destination ran the guest); `vmferry migrate --resume` says the same.
 * - test_cpr_main_never_connects: an old process hands over the fds and
 *   never connects the main channel: the new process gives up within its
 *   bound, exits 1 with the reason, holding nothing.
 *
 * Silence is made short with VMFERRY_IO_TIMEOUT_MS (and the new process's
 * bound with VMFERRY_CPR_MAIN_WAIT_MS).  Every wait is bounded; every
 * process is reaped.  Skips (77) without KVM.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <json-c/json.h>

#include "lib/migtest.h"
#include "harness/harness.h"
#include "util/log.h"

#define ST_MEM "64M"
#define ST_SILENCE_MS "3000"   /* VMFERRY_IO_TIMEOUT_MS for the source (margin for sanitizers) */
#define ST_FORCE "cont {\"force\": true}"

/* The silent peer, started by peer_start(). */
struct peer {
	pid_t pid;
	char uri[HARNESS_PATH_BYTES + 64]; /* from its "ready"/"acked" line */
};

static struct peer st_peer = { .pid = -1 };
static struct harness_vm st_src = { .pid = -1 }, st_dst = { .pid = -1 };

static int st_teardown(void **state)
{
	(void)state;
	if (st_peer.pid > 0)
		harness_kill_reap(st_peer.pid);
	st_peer.pid = -1;
	harness_vm_kill(&st_src);
	harness_vm_kill(&st_dst);
	return 0;
}

/* build/tools/silent_peer beside the vmferry binary under test. */
static void peer_path(char *buf, size_t len)
{
	char bin[HARNESS_PATH_BYTES * 2];

	snprintf(bin, sizeof(bin), "%s", harness_binary());
	snprintf(buf, len, "%s/tools/silent_peer", dirname(bin));
}

/*
 * Start `silent_peer @mode @a [@b]` and wait (bounded) for its first line,
 * "ready URI" or "acked STATUS ...": the rest of it in p->uri.
 */
static void peer_start(struct peer *p, const char *mode, const char *a, const char *b)
{
	char path[HARNESS_PATH_BYTES * 2], line[sizeof(p->uri) + 16];
	const char *argv[] = { path, mode, a, b, NULL };
	size_t n = 0;
	int fds[2];

	peer_path(path, sizeof(path));
	assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
	p->pid = harness_fork_exec(argv, false, -1, fds[1], -1);
	close(fds[1]);
	assert_true(p->pid > 0);
	while (n < sizeof(line) - 1 && (n == 0 || line[n - 1] != '\n')) {
		struct pollfd pfd = { .fd = fds[0], .events = POLLIN };
		ssize_t r;

		if (poll(&pfd, 1, 30000) != 1)
			fail_msg("silent_peer %s: no line within 30 s", mode);
		r = read(fds[0], line + n, sizeof(line) - 1 - n);
		if (r <= 0)
			fail_msg("silent_peer %s exited before it was ready", mode);
		n += (size_t)r;
	}
	close(fds[0]);
	line[n - 1] = 0;
	fprintf(stderr, "silent_peer %s: %s\n", mode, line);
	assert_non_null(strchr(line, ' '));
	snprintf(p->uri, sizeof(p->uri), "%s", strchr(line, ' ') + 1);
}

/* A source VMM running the incrementer, with the short silence bound. */
static void spawn_source(struct harness_vm *vm)
{
	setenv("VMFERRY_IO_TIMEOUT_MS", ST_SILENCE_MS, 1);
	migtest_spawn(vm, ST_MEM, "1", "incrementer", NULL);
	unsetenv("VMFERRY_IO_TIMEOUT_MS");
	assert_int_equal(harness_wait_passes(vm, 1, 30000), 0);
}

/* @cmd with the JSON @args fails, and its error contains @want. */
static void expect_refused(struct harness_vm *vm, const char *cmd, const char *args,
			   const char *want)
{
	struct json_object *a = args ? json_tokener_parse(args) : NULL;

	assert_true(!args || a);
	assert_int_equal(harness_call(vm, cmd, a, NULL), -EREMOTEIO);
	json_object_put(a);
	fprintf(stderr, "%s refused: %s\n", cmd, vm->error);
	if (!strstr(vm->error, want))
		fail_msg("%s: '%s' lacks '%s'", cmd, vm->error, want);
}

/*
 * The migration failed with the guest kept paused; error-desc holds @want.
 * @migrate: arguments of a migrate that would start another one.
 */
static void expect_kept_paused(struct harness_vm *vm, const char *want, const char *migrate)
{
	struct json_object *q = migtest_wait_migration(vm);

	fprintf(stderr, "kept paused: %s\n", harness_json_str(q, "error-desc"));
	assert_string_equal(harness_json_str(q, "status"), "failed");
	assert_non_null(strstr(harness_json_str(q, "error-desc"), ST_FORCE));
	assert_non_null(strstr(harness_json_str(q, "error-desc"), want));
	json_object_put(q);
	migtest_expect_status(vm, "finish-migrate");
	/* Every other way out says which one works. */
	expect_refused(vm, "cont", NULL, ST_FORCE);
	expect_refused(vm, "stop", NULL, ST_FORCE);
	expect_refused(vm, "migrate-cancel", NULL, ST_FORCE);
	expect_refused(vm, "migrate", migrate, ST_FORCE);
	migtest_expect_status(vm, "finish-migrate");
}

static int force_cont(struct harness_vm *vm)
{
	struct json_object *a = json_tokener_parse("{\"force\": true}");
	int r = harness_call(vm, "cont", a, NULL);

	json_object_put(a);
	return r;
}

static void test_precopy_silent_tcp(void **state)
{
	char uri[128];

	(void)state;
	spawn_source(&st_src);
	/* Where nothing is kept, the force is a plain cont. */
	assert_int_equal(force_cont(&st_src), 0);
	peer_start(&st_peer, "main", "tcp:127.0.0.1:0", NULL);
	assert_int_equal(harness_migrate(&st_src, st_peer.uri), 0);
	expect_kept_paused(&st_src, "peer silent for " ST_SILENCE_MS " ms",
			   "{\"uri\": \"unix:/nonexistent/x\"}");

	/* The operator knows the destination never ran it. */
	assert_int_equal(force_cont(&st_src), 0);
	migtest_expect_guest_alive_and_verified(&st_src);
	assert_int_equal(harness_kill_reap(st_peer.pid), 128 + SIGKILL);
	st_peer.pid = -1;

	/* And it moves on to a real destination. */
	migtest_spawn_incoming(&st_dst, ST_MEM, "1", false, uri, sizeof(uri));
	assert_int_equal(harness_migrate(&st_src, uri), 0);
	migtest_wait_migration_status(&st_src, "completed");
	migtest_wait_migration_status(&st_dst, "completed");
	migtest_expect_guest_alive_and_verified(&st_dst);
	/* The source's copy is the destination's now: no force brings it back. */
	expect_refused(&st_src, "cont", "{\"force\": true}", "must never run here again");
	assert_int_equal(harness_vm_quit(&st_dst), 0);
	assert_int_equal(harness_vm_quit(&st_src), 0);
}

/*
 * The peer dies while the source waits for RUNNING after the stop: a
 * closed connection is no answer, the destination never ran the guest,
 * so the source resumes it at once (no force needed).
 */
static void test_precopy_peer_dies_after_stop(void **state)
{
	struct json_object *q = NULL;
	bool stopped = false;

	(void)state;
	/* The default silence bound (30 s): the window to kill it in. */
	migtest_spawn(&st_src, ST_MEM, "1", "incrementer", NULL);
	assert_int_equal(harness_wait_passes(&st_src, 1, 30000), 0);
	peer_start(&st_peer, "main", "tcp:127.0.0.1:0", NULL);
	assert_int_equal(harness_migrate(&st_src, st_peer.uri), 0);
	for (int i = 0; i < 20000 && !stopped; i++) {
		assert_int_equal(harness_call(&st_src, "query-status", NULL, &q), 0);
		stopped = !strcmp(harness_json_str(q, "status"), "finish-migrate");
		json_object_put(q);
		if (!stopped)
			harness_nap_ms(1);
	}
	assert_true(stopped);
	assert_int_equal(harness_kill_reap(st_peer.pid), 128 + SIGKILL);
	st_peer.pid = -1;
	q = migtest_wait_migration(&st_src);
	fprintf(stderr, "peer died after the stop: %s\n", harness_json_str(q, "error-desc"));
	assert_string_equal(harness_json_str(q, "status"), "failed");
	assert_null(strstr(harness_json_str(q, "error-desc"), "kept paused"));
	json_object_put(q);
	migtest_expect_guest_alive_and_verified(&st_src);
	assert_int_equal(harness_vm_quit(&st_src), 0);
}

static void test_cpr_silent_new_process(void **state)
{
	struct migtest_cpr_target t;
	char cp[HARNESS_PATH_BYTES], mp[HARNESS_PATH_BYTES];
	char cpr_uri[HARNESS_PATH_BYTES + 8], main_uri[HARNESS_PATH_BYTES + 8], pidtext[32];
	int rc;

	(void)state;
	spawn_source(&st_src);
	assert_int_equal(harness_unique_path(cp, sizeof(cp), "cpr"), 0);
	assert_int_equal(harness_unique_path(mp, sizeof(mp), "main"), 0);
	snprintf(cpr_uri, sizeof(cpr_uri), "unix:%s", cp);
	snprintf(main_uri, sizeof(main_uri), "unix:%s", mp);
	peer_start(&st_peer, "cpr", cpr_uri, main_uri);
	assert_int_equal(harness_set_params(&st_src, "{\"mode\": \"cpr-transfer\"}"), 0);
	assert_int_equal(harness_migrate_channels(&st_src, main_uri, cpr_uri), 0);
	snprintf(pidtext, sizeof(pidtext), "kill -9 %d", (int)st_peer.pid);
	expect_kept_paused(&st_src, pidtext, "{\"channels\": [{\"type\": \"main\", \"uri\": "
			   "\"unix:/nonexistent/m\"}, {\"type\": \"cpr\", \"uri\": "
			   "\"unix:/nonexistent/c\"}]}");

	/* It still maps the guest's RAM: the force waits for it to go. */
	expect_refused(&st_src, "cont", "{\"force\": true}", "still alive");
	migtest_expect_status(&st_src, "finish-migrate");
	assert_int_equal(harness_kill_reap(st_peer.pid), 128 + SIGKILL);
	st_peer.pid = -1;
	assert_int_equal(force_cont(&st_src), 0);
	migtest_expect_guest_alive_and_verified(&st_src);

	/* A real update still works afterwards. */
	assert_int_equal(harness_set_params(&st_src, "{\"mode\": \"cpr-transfer\"}"), 0);
	migtest_cpr_spawn_new(&t, NULL, NULL);
	assert_int_equal(harness_migrate_channels(&st_src, t.main_uri, t.cpr_uri), 0);
	rc = harness_wait_exit(&st_src, MIG_TIMEOUT_MS);
	if (rc != 0)
		fail_msg("the old process ended with status %d instead of 0", rc);
	st_dst = t.vm;
	assert_int_equal(harness_connect(&st_dst, 10000), 0);
	migtest_wait_migration_status(&st_dst, "completed");
	migtest_expect_guest_alive_and_verified(&st_dst);
	assert_int_equal(harness_vm_quit(&st_dst), 0);
}

static void test_postcopy_destination_killed(void **state)
{
	char uri[HARNESS_PATH_BYTES + 8];
	const char *resume[] = { "migrate", "--control", st_src.sock_path, "--resume",
				 "unix:/nonexistent/recover", NULL };
	struct harness_result res;
	struct json_object *q = NULL;
	const char *desc;

	(void)state;
	setenv("VMFERRY_IO_TIMEOUT_MS", ST_SILENCE_MS, 1);
	migtest_spawn(&st_src, "256M", "2", "incrementer", NULL);
	unsetenv("VMFERRY_IO_TIMEOUT_MS");
	assert_int_equal(harness_wait_passes(&st_src, 1, 30000), 0);
	migtest_spawn_incoming(&st_dst, "256M", "2", true, uri, sizeof(uri));
	assert_int_equal(harness_set_capability(&st_src, "postcopy-ram", true), 0);
	assert_int_equal(harness_set_capability(&st_dst, "postcopy-ram", true), 0);
	/* Slow enough that the push still runs when the destination dies. */
	assert_int_equal(harness_set_params(&st_src, "{\"max-bandwidth\": 20000000}"), 0);
	assert_int_equal(harness_call(&st_src, "migrate-start-postcopy", NULL, NULL), 0);
	assert_int_equal(harness_migrate(&st_src, uri), 0);
	migtest_wait_migration_status(&st_src, "postcopy-active");
	migtest_wait_migration_status(&st_dst, "postcopy-active");
	assert_int_equal(harness_vm_kill(&st_dst), 128 + SIGKILL);

	migtest_wait_migration_status(&st_src, "postcopy-paused");
	assert_int_equal(harness_call(&st_src, "query-migrate", NULL, &q), 0);
	desc = harness_json_str(q, "error-desc");
	fprintf(stderr, "destination killed: %s\n", desc);
	/* What happened, and what it means: not "the guest runs there". */
	assert_true(strstr(desc, "reset") || strstr(desc, "closed") || strstr(desc, "EOF") ||
		    strstr(desc, "end of stream"));
	assert_non_null(strstr(desc, "if its process died the guest is lost"));
	assert_non_null(strstr(desc, "query-status"));
	json_object_put(q);
	migtest_expect_status(&st_src, "finish-migrate");
	expect_refused(&st_src, "cont", "{\"force\": true}", "ran on the destination");
	expect_refused(&st_src, "cont", NULL, "ran on the destination");

	/* The CLI says the same. */
	assert_int_equal(harness_run(resume, NULL, 60000, &res), 0);
	fprintf(stderr, "vmferry migrate --resume: %d: %s", res.status, res.err);
	assert_int_equal(res.status, 3);
	assert_non_null(strstr(res.err, "If the destination's process died, the guest is lost"));
	assert_null(strstr(res.err, "The guest runs on the destination"));
	harness_result_free(&res);
	assert_int_equal(harness_vm_kill(&st_src), 128 + SIGKILL);
}

static void test_cpr_main_never_connects(void **state)
{
	const struct harness_vm_opts opts = { .name = "new", .log = true };
	char cp[HARNESS_PATH_BYTES], mp[HARNESS_PATH_BYTES], log[8192] = "";
	char cpr_uri[HARNESS_PATH_BYTES + 8], main_uri[HARNESS_PATH_BYTES + 8];
	const char *args[] = { "--incoming", main_uri, "--incoming-cpr", cpr_uri, NULL };
	uint64_t t0;
	size_t n;
	FILE *f;
	int rc;

	(void)state;
	assert_int_equal(harness_unique_path(cp, sizeof(cp), "cpr"), 0);
	assert_int_equal(harness_unique_path(mp, sizeof(mp), "main"), 0);
	snprintf(cpr_uri, sizeof(cpr_uri), "unix:%s", cp);
	snprintf(main_uri, sizeof(main_uri), "unix:%s", mp);
	setenv("VMFERRY_CPR_MAIN_WAIT_MS", "1000", 1);
	assert_int_equal(harness_spawn_start(&st_dst, &opts, args), 0);
	unsetenv("VMFERRY_CPR_MAIN_WAIT_MS");
	peer_start(&st_peer, "cpr-old", cpr_uri, ST_MEM);
	assert_int_equal(strncmp(st_peer.uri, "0 ", 2), 0); /* ACK 0: it holds the fds */
	t0 = clock_monotonic_ns();
	rc = harness_wait_exit(&st_dst, 30000);
	fprintf(stderr, "new process gave up after %.0f ms with status %d\n",
		(double)(clock_monotonic_ns() - t0) / 1e6, rc);
	assert_int_equal(rc, 1);
	f = fopen(st_dst.log_path, "r");
	assert_non_null(f);
	n = fread(log, 1, sizeof(log) - 1, f);
	log[n] = 0;
	fclose(f);
	assert_non_null(strstr(log, "did not connect the main channel"));
	assert_non_null(strstr(log, "within 1000 ms"));
	assert_int_equal(harness_kill_reap(st_peer.pid), 128 + SIGKILL);
	st_peer.pid = -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_precopy_silent_tcp, st_teardown),
		cmocka_unit_test_teardown(test_precopy_peer_dies_after_stop, st_teardown),
		cmocka_unit_test_teardown(test_cpr_silent_new_process, st_teardown),
		cmocka_unit_test_teardown(test_postcopy_destination_killed, st_teardown),
		cmocka_unit_test_teardown(test_cpr_main_never_connects, st_teardown),
	};

	if (harness_cleanup_on_exit())
		return 1;
	return MIGTEST_RUN(tests);
}
