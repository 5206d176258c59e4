/*
 * The command-line front-ends under real KVM: `vmferry migrate` run as a
 * child process (its exit status, the one JSON object on stdout, its
 * messages on stderr) for precopy, pure postcopy into a destination started
 * with `vmferry run --incoming URI --postcopy`, hybrid with a dirtier that
 * does not converge, and a live update; its usage errors (exit 2), a
 * destination nobody listens on and one without --postcopy (exit 1, the
 * guest runs on at the source); options that apply to one run only;
 * `vmferry run --postcopy` misused.  Every
 * migration verifies guest memory where the guest ends up and that it keeps
 * running.  Skips (77) without KVM.
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

#include <json-c/json.h>

#include "lib/migtest.h"
#include "harness/harness.h"

#define CLI_MEM "64M"
#define CLI_ARGS_MAX 24

static const char *const cli_postcopy_dst[] = { "--postcopy", NULL };

/*
 * Run `vmferry migrate --control SOCK @opts... @uri` (@opts NULL-terminated,
 * may be NULL; @uri NULL to leave it out), bounded by MIG_TIMEOUT_MS.
 */
static void cli_migrate(const char *sock, const char *const opts[], const char *uri,
			struct harness_result *res)
{
	const char *args[CLI_ARGS_MAX] = { "migrate", "--control", sock };
	size_t n = 3;

	for (size_t i = 0; opts && opts[i]; i++) {
		assert_true(n < CLI_ARGS_MAX - 2);
		args[n++] = opts[i];
	}
	if (uri)
		args[n++] = uri;
	args[n] = NULL;
	assert_int_equal(harness_run(args, NULL, MIG_TIMEOUT_MS, res), 0);
}

/* stdout of a run that got as far as migrating: one JSON object on one line (caller owns). */
static struct json_object *cli_final_json(const struct harness_result *res)
{
	const char *nl = strchr(res->out, '\n');
	struct json_object *q;

	if (!nl || nl[1])
		fail_msg("stdout is not one line: '%s'", res->out);
	q = json_tokener_parse(res->out);
	if (!q || !json_object_is_type(q, json_type_object))
		fail_msg("stdout is not a JSON object: '%s'", res->out);
	return q;
}

/* The run completed: exit 0, "completed" on stdout; the JSON (caller owns). */
static struct json_object *cli_expect_completed(const struct harness_result *res)
{
	struct json_object *q;

	if (res->status != 0)
		fail_msg("vmferry migrate exited %d; stderr: %s", res->status, res->err);
	q = cli_final_json(res);
	assert_string_equal(harness_json_str(q, "status"), "completed");
	assert_string_equal(harness_json_str(q, "role"), "source");
	return q;
}

/* The run failed after starting: exit 1, "failed" on stdout, @why on stderr. */
static void cli_expect_failed(const struct harness_result *res, const char *why)
{
	struct json_object *q;

	if (res->status != 1)
		fail_msg("vmferry migrate exited %d instead of 1; stderr: %s", res->status, res->err);
	q = cli_final_json(res);
	assert_string_equal(harness_json_str(q, "status"), "failed");
	json_object_put(q);
	if (!strstr(res->err, why))
		fail_msg("stderr lacks '%s': %s", why, res->err);
}

/* Exit 2, nothing on stdout, @why on stderr. */
static void cli_expect_usage_error(const struct harness_result *res, const char *why)
{
	if (res->status != 2)
		fail_msg("exit %d instead of 2; stderr: %s", res->status, res->err);
	assert_string_equal(res->out, "");
	if (!strstr(res->err, why))
		fail_msg("stderr lacks '%s': %s", why, res->err);
}

/* The guest moved: the source is done with it, the destination runs it, verified. */
static void cli_expect_moved(struct harness_vm *src, struct harness_vm *dst)
{
	migtest_expect_status(src, "postmigrate");
	migtest_wait_migration_status(dst, "completed");
	migtest_expect_guest_alive_and_verified(dst);
	assert_int_equal(harness_vm_quit(src), 0);
	assert_int_equal(harness_vm_quit(dst), 0);
}

static void cli_spawn_source(struct harness_vm *src, const char *guest)
{
	migtest_spawn(src, CLI_MEM, "2", guest, NULL);
	assert_int_equal(harness_wait_passes(src, 1, 30000), 0);
}

/*
 * A plain `vmferry migrate` of @src to a new destination over UNIX: precopy,
 * completed, the guest verified there; both VMMs quit.
 */
static void cli_precopy_to_new_destination(struct harness_vm *src)
{
	struct harness_vm dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct harness_result res;
	struct json_object *q;

	migtest_spawn_incoming(&dst, CLI_MEM, "2", true, uri, sizeof(uri));
	cli_migrate(src->sock_path, NULL, uri, &res);
	q = cli_expect_completed(&res);
	assert_string_equal(harness_json_str(q, "mode"), "normal");
	assert_true(harness_json_int(q, "passes") >= 1);
	assert_int_equal(harness_json_int(q, "postcopy-pages-pushed"), -1); /* precopy only */
	json_object_put(q);
	harness_result_free(&res);
	cli_expect_moved(src, &dst);
}

static void test_precopy_unix(void **state)
{
	struct harness_vm src;

	(void)state;
	cli_spawn_source(&src, "incrementer");
	cli_precopy_to_new_destination(&src);
}

/*
 * `vmferry migrate --postcopy` of @src to @uri, where @dst waits (started
 * with --postcopy): pure postcopy, completed, the guest verified there;
 * both VMMs quit.  Without @preempt, the urgent channel is off and every
 * page comes through the main stream capped at 32 MiB/s: postcopy lasts
 * 2 s at the least (62 MiB the incrementer wrote), so the progress line,
 * shown every 100 ms, must have shown it.
 */
static void cli_pure_postcopy(struct harness_vm *src, struct harness_vm *dst, const char *uri,
			      bool preempt)
{
	const char *const urgent[] = { "--postcopy", NULL };
	const char *const capped[] = { "--postcopy", "--no-postcopy-preempt", "--max-bandwidth",
				       "32M", NULL };
	struct harness_result res;
	struct json_object *q;

	cli_migrate(src->sock_path, preempt ? urgent : capped, uri, &res);
	q = cli_expect_completed(&res);
	assert_int_equal(harness_json_int(q, "passes"), 0); /* switched before the first */
	migtest_expect_postcopy_accounting(q, true);
	/* Times are printed to the microsecond, not with every binary digit. */
	for (const char *p = strchr(res.out, '.'); p; p = strchr(p + 1, '.'))
		if (strspn(p + 1, "0123456789") > 3)
			fail_msg("a number with more than 3 decimals: %.40s", p);
	if (!preempt) {
		/* Nothing went on an urgent channel. */
		assert_int_equal(harness_json_int(q, "postcopy-pages-requested"), 0);
		if (!strstr(res.err, "not yet there; pages pushed "))
			fail_msg("no postcopy progress line on stderr: %s", res.err);
	}
	json_object_put(q);
	harness_result_free(&res);
	cli_expect_moved(src, dst);
}

static void test_pure_postcopy(void **state)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct json_object *q = NULL;

	static const char *const dst_opts[] = { "--postcopy", "--postcopy-vcpu-nice", "3", NULL };

	(void)state;
	cli_spawn_source(&src, "incrementer");
	migtest_spawn_incoming_extra(&dst, CLI_MEM, "2", true, dst_opts, uri, sizeof(uri));
	/* --postcopy did what migrate-set-capabilities would: on, RAM prepared. */
	assert_int_equal(harness_call(&dst, "query-migrate", NULL, &q), 0);
	assert_string_equal(harness_json_str(q, "postcopy-uffd-mode"), "minor");
	json_object_put(q);
	assert_int_equal(harness_call(&dst, "query-migrate-parameters", NULL, &q), 0);
	assert_int_equal(harness_json_int(q, "postcopy-vcpu-nice"), 3);
	json_object_put(q);
	cli_pure_postcopy(&src, &dst, uri, false);
}

static void test_hybrid_dirtier(void **state)
{
	/* The non-converging setup of test_postcopy's dirtier test, quiet. */
	const char *const opts[] = { "--downtime-limit", "10", "--max-bandwidth", "30000000",
				     "--postcopy-after-passes", "1", "--quiet", NULL };
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct harness_result res;
	struct json_object *q;

	(void)state;
	cli_spawn_source(&src, "dirtier,wss=16M,rate=0");
	migtest_spawn_incoming_extra(&dst, CLI_MEM, "2", true, cli_postcopy_dst, uri, sizeof(uri));
	cli_migrate(src.sock_path, opts, uri, &res);
	q = cli_expect_completed(&res);
	assert_true(harness_json_int(q, "passes") >= 1);
	migtest_expect_postcopy_accounting(q, false);
	json_object_put(q);
	assert_string_equal(res.err, ""); /* --quiet */
	harness_result_free(&res);
	cli_expect_moved(&src, &dst);
}

static void test_cpr(void **state)
{
	struct harness_vm old;
	struct migtest_cpr_target t;
	struct harness_result res;
	struct json_object *q;
	const char *opts[] = { "--cpr", NULL, NULL };
	int rc;

	(void)state;
	cli_spawn_source(&old, "incrementer");
	migtest_cpr_spawn_new(&t, NULL, NULL);
	opts[1] = t.cpr_uri;
	cli_migrate(old.sock_path, opts, t.main_uri, &res);
	/* The figures of the old process's last MIGRATION event. */
	q = cli_expect_completed(&res);
	assert_string_equal(harness_json_str(q, "mode"), "cpr-transfer");
	json_object_put(q);
	harness_result_free(&res);
	rc = harness_wait_exit(&old, MIG_TIMEOUT_MS);
	if (rc != 0)
		fail_msg("the old process ended with status %d instead of 0", rc);
	assert_int_equal(harness_connect(&t.vm, 10000), 0);
	migtest_wait_migration_status(&t.vm, "completed");
	migtest_expect_guest_alive_and_verified(&t.vm);
	assert_int_equal(harness_vm_quit(&t.vm), 0);
}

/* Refused before anything is asked of a VMM: no control socket is needed. */
static void test_usage_errors(void **state)
{
	static const char sock[] = "/nonexistent/vmferry-cli.sock";
	static const struct {
		const char *opts[8];
		const char *uri;
		const char *why;
	} cases[] = {
		{ { "--bogus", NULL }, "unix:/nonexistent/m", "unrecognized option '--bogus'" },
		{ { NULL }, NULL, "missing the destination URI" },
		{ { "--postcopy", "--cpr", "unix:/nonexistent/c", NULL }, "unix:/nonexistent/m",
		  "--cpr cannot be combined with postcopy" },
		{ { "--postcopy-after-passes", "2", "--cpr", "unix:/nonexistent/c", NULL },
		  "unix:/nonexistent/m", "--cpr cannot be combined with postcopy" },
		{ { "--postcopy-after-passes", "soon", NULL }, "unix:/nonexistent/m",
		  "--postcopy-after-passes: 'soon' is not a number" },
		{ { "--postcopy-after-passes", "0", NULL }, "unix:/nonexistent/m",
		  "--postcopy-after-passes: '0' is not a number" },
		{ { "--downtime-limit", "-5", NULL }, "unix:/nonexistent/m",
		  "--downtime-limit: '-5' is not a number" },
		{ { "--postcopy", "--postcopy-after-passes", "1", NULL }, "unix:/nonexistent/m",
		  "exclude each other" },
		{ { "--no-postcopy-preempt", NULL }, "unix:/nonexistent/m", "needs --postcopy" },
		{ { "--resume", "--postcopy", NULL }, "unix:/nonexistent/m", "--resume takes" },
		{ { "--resume", "--max-bandwidth", "1M", NULL }, "unix:/nonexistent/m",
		  "--resume takes" },
	};
	struct harness_result res;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cli_migrate(sock, cases[i].opts, cases[i].uri, &res);
		cli_expect_usage_error(&res, cases[i].why);
		harness_result_free(&res);
	}
	/* Two URIs. */
	{
		const char *const opts[] = { "unix:/nonexistent/a", NULL };

		cli_migrate(sock, opts, "unix:/nonexistent/b", &res);
		cli_expect_usage_error(&res, "unexpected 'unix:/nonexistent/b'");
		harness_result_free(&res);
	}
	/* No --control. */
	{
		const char *const args[] = { "migrate", "--postcopy", "unix:/nonexistent/m", NULL };

		assert_int_equal(harness_run(args, NULL, 10000, &res), 0);
		cli_expect_usage_error(&res, "--control PATH is required");
		harness_result_free(&res);
	}
	/* A control socket that cannot be reached: which path, and why, at once. */
	{
		const char *const opts[] = { NULL };

		cli_migrate(sock, opts, "unix:/nonexistent/m", &res);
		assert_int_equal(res.status, 1);
		if (!strstr(res.err, "vmferry migrate: cannot reach the control socket "
			    "/nonexistent/vmferry-cli.sock: No such file or directory"))
			fail_msg("stderr: %s", res.err);
		harness_result_free(&res);
	}
	/* run's usage errors: the same prefix and status as migrate's. */
	{
		const char *const args[] = { "run", "--bogus", NULL };

		assert_int_equal(harness_run(args, NULL, 10000, &res), 0);
		assert_int_equal(res.status, 2);
		assert_non_null(strstr(res.err, "vmferry run: unrecognized option '--bogus'"));
		harness_result_free(&res);
	}
	/* --help documents the new options. */
	{
		const char *const args[] = { "migrate", "--help", NULL };

		assert_int_equal(harness_run(args, NULL, 10000, &res), 0);
		assert_int_equal(res.status, 0);
		assert_non_null(strstr(res.out, "--postcopy-after-passes N"));
		harness_result_free(&res);
	}
}

/* Nobody listens: exit 1 with the VMM's reason; the guest runs on, intact. */
static void test_destination_not_listening(void **state)
{
	struct harness_vm src;
	char path[HARNESS_PATH_BYTES], uri[HARNESS_PATH_BYTES + 8];
	struct harness_result res;

	(void)state;
	cli_spawn_source(&src, "incrementer");
	assert_int_equal(harness_unique_path(path, sizeof(path), "nobody"), 0);
	snprintf(uri, sizeof(uri), "unix:%s", path);
	cli_migrate(src.sock_path, NULL, uri, &res);
	cli_expect_failed(&res, "cannot connect");
	harness_result_free(&res);
	migtest_expect_guest_alive_and_verified(&src);
	assert_int_equal(harness_vm_quit(&src), 0);
}

/* Capability @name's state on @vm (it must be listed once). */
static bool cli_cap_state(struct harness_vm *vm, const char *name)
{
	struct json_object *caps = NULL;
	bool state = false;

	assert_int_equal(harness_call(vm, "query-migrate-capabilities", NULL, &caps), 0);
	for (size_t i = 0, found = 0; i < json_object_array_length(caps); i++) {
		struct json_object *c = json_object_array_get_idx(caps, i), *st;

		if (strcmp(harness_json_str(c, "capability"), name))
			continue;
		assert_true(json_object_object_get_ex(c, "state", &st));
		state = json_object_get_boolean(st);
		assert_int_equal(++found, 1);
	}
	json_object_put(caps);
	return state;
}

/*
 * The settings `vmferry migrate` controls, as the source reports them:
 * query-migrate-parameters (caller owns), auto-converge's and stream-crc's
 * states (both set: true).
 */
static struct json_object *cli_settings_now(struct harness_vm *vm, bool *caps_on)
{
	struct json_object *params = NULL;
	bool ac = cli_cap_state(vm, "auto-converge"), crc = cli_cap_state(vm, "stream-crc");

	assert_int_equal(ac, crc); /* the tests set or leave both */
	*caps_on = ac;
	assert_int_equal(harness_call(vm, "query-migrate-parameters", NULL, &params), 0);
	return params;
}

/* @key is the same in @a and @b, which the test names in @what. */
static void cli_expect_same_param(struct json_object *a, struct json_object *b, const char *key,
				  const char *what)
{
	if (harness_json_int(a, key) != harness_json_int(b, key))
		fail_msg("%s: %s is %lld, not %lld", what, key, (long long)harness_json_int(a, key),
			 (long long)harness_json_int(b, key));
}

/*
 * Options apply to one run only: after a run with every tuning option (to a
 * destination nobody listens on, so it fails at once but has set them), a
 * plain run sets each back to the default of a fresh VMM, and completes.
 * Before, the second run kept the first's 50 MB/s cap and auto-converge.
 * (auto-converge and stream-crc are checked together.)
 */
static void test_options_do_not_persist(void **state)
{
	const char *const opts[] = { "--max-bandwidth", "50M", "--downtime-limit", "7",
				     "--convergence-timeout", "100", "--auto-converge",
				     "--stream-crc", NULL };
	struct json_object *fresh, *first, *second;
	struct harness_vm src, dst;
	char path[HARNESS_PATH_BYTES], uri[HARNESS_PATH_BYTES + 8];
	struct harness_result res;
	bool ac;

	(void)state;
	cli_spawn_source(&src, "incrementer");
	fresh = cli_settings_now(&src, &ac);
	assert_false(ac);
	assert_int_equal(harness_json_int(fresh, "max-bandwidth"), 0);
	assert_int_equal(harness_json_int(fresh, "downtime-limit"), 300); /* as --help says */
	assert_int_equal(harness_json_int(fresh, "convergence-timeout"), 0);

	assert_int_equal(harness_unique_path(path, sizeof(path), "nobody"), 0);
	snprintf(uri, sizeof(uri), "unix:%s", path);
	cli_migrate(src.sock_path, opts, uri, &res);
	cli_expect_failed(&res, "cannot connect");
	harness_result_free(&res);
	first = cli_settings_now(&src, &ac);
	assert_true(ac);
	assert_int_equal(harness_json_int(first, "max-bandwidth"), 50 * 1024 * 1024);
	assert_int_equal(harness_json_int(first, "downtime-limit"), 7);
	assert_int_equal(harness_json_int(first, "convergence-timeout"), 100);
	json_object_put(first);

	migtest_spawn_incoming(&dst, CLI_MEM, "2", true, uri, sizeof(uri));
	cli_migrate(src.sock_path, NULL, uri, &res);
	json_object_put(cli_expect_completed(&res));
	harness_result_free(&res);
	second = cli_settings_now(&src, &ac);
	assert_false(ac);
	cli_expect_same_param(second, fresh, "max-bandwidth", "after a plain run");
	cli_expect_same_param(second, fresh, "downtime-limit", "after a plain run");
	cli_expect_same_param(second, fresh, "convergence-timeout", "after a plain run");
	cli_expect_same_param(second, fresh, "postcopy-after-passes", "after a plain run");
	json_object_put(second);
	json_object_put(fresh);
	cli_expect_moved(&src, &dst);
}

/*
 * --postcopy to a destination started without it: exit 1 with the VMM's
 * reason, the destination exits 1, the guest runs on at the source.  A
 * plain `vmferry migrate` afterwards is precopy again (postcopy-ram does
 * not linger) and completes.
 */
static void test_postcopy_to_plain_destination(void **state)
{
	const char *const opts[] = { "--postcopy", NULL };
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct harness_result res;

	(void)state;
	cli_spawn_source(&src, "incrementer");
	migtest_spawn_incoming(&dst, CLI_MEM, "2", true, uri, sizeof(uri));
	cli_migrate(src.sock_path, opts, uri, &res);
	cli_expect_failed(&res, "enable the postcopy-ram capability on the destination");
	harness_result_free(&res);
	assert_int_equal(harness_wait_exit(&dst, 20000), 1);
	migtest_expect_guest_alive_and_verified(&src);
	cli_precopy_to_new_destination(&src);
}

/*
 * Pointed at a destination still waiting: refused before its capabilities
 * change (--postcopy stays on), and it still takes a postcopy migration
 * (with the urgent channel).
 */
static void test_refuses_waiting_destination(void **state)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct harness_result res;

	(void)state;
	migtest_spawn_incoming_extra(&dst, CLI_MEM, "2", true, cli_postcopy_dst, uri, sizeof(uri));
	cli_migrate(dst.sock_path, NULL, "unix:/nonexistent/m", &res);
	if (res.status != 1 || !strstr(res.err, "waiting for an incoming migration"))
		fail_msg("exit %d, stderr: %s", res.status, res.err);
	harness_result_free(&res);
	cli_spawn_source(&src, "incrementer");
	cli_pure_postcopy(&src, &dst, uri, true);
}

/* `vmferry @argv...` exits 2 (usage) saying @why on stderr. */
static void cli_expect_run_refused(const char *const *argv, const char *why)
{
	struct harness_result res;

	assert_int_equal(harness_run(argv, NULL, 10000, &res), 0);
	if (res.status != 2 || !strstr(res.err, why))
		fail_msg("%s %s: exit %d, stderr %s (wanted \"%s\")", argv[0], argv[1], res.status,
			 res.err, why);
	harness_result_free(&res);
}

static void test_run_postcopy_usage(void **state)
{
	const char *const alone[] = { "run", "--postcopy", NULL };
	const char *const cpr[] = { "run", "--postcopy", "--incoming", "unix:/nonexistent/m",
				    "--incoming-cpr", "unix:/nonexistent/c", NULL };
	const char *const no_postcopy[] = { "run", "--incoming", "unix:/nonexistent/m",
					    "--postcopy-vcpu-nice", "3", NULL };
	const char *const too_nice[] = { "run", "--incoming", "unix:/nonexistent/m", "--postcopy",
					 "--postcopy-vcpu-nice", "21", NULL };
	const char *const help[] = { "run", "--help", NULL };
	struct harness_result res;

	(void)state;
	cli_expect_run_refused(alone, "--postcopy needs --incoming URI");
	cli_expect_run_refused(cpr, "--postcopy does not apply to --incoming-cpr");
	cli_expect_run_refused(no_postcopy, "--postcopy-vcpu-nice needs --postcopy");
	cli_expect_run_refused(too_nice, "--postcopy-vcpu-nice: '21' is not a number in 0..20");
	assert_int_equal(harness_run(help, NULL, 10000, &res), 0);
	assert_int_equal(res.status, 0);
	assert_non_null(strstr(res.out, "--postcopy"));
	assert_non_null(strstr(res.out, "--postcopy-vcpu-nice N"));
	harness_result_free(&res);
}

/*
 * Guest RAM beyond the host's memory runs (a sparse guest touches less),
 * but --prealloc of all of it cannot: refused before anything starts.
 */
static void test_run_prealloc_too_big(void **state)
{
	const char *const args[] = { "run", "--mem", "62G", "--prealloc", NULL };
	long pages = sysconf(_SC_PHYS_PAGES);

	(void)state;
	if (pages <= 0 || (uint64_t)pages * 4096 >= (62ull << 30))
		skip();
	cli_expect_run_refused(args, "--prealloc: 63488 MiB of guest RAM does not fit in this "
				     "host's memory");
}

/*
 * A postcopy that pauses (migrate-pause): `vmferry migrate --resume` to a
 * destination that does not listen exits 3 (paused, with the way out on
 * stderr); after migrate-recover, --resume completes it, memory verified.
 * --resume where nothing is paused is refused.
 */
static void test_resume_paused_postcopy(void **state)
{
	char uri[HARNESS_PATH_BYTES + 8], listen[HARNESS_PATH_BYTES + 8];
	char nobody[HARNESS_PATH_BYTES + 8], path[HARNESS_PATH_BYTES];
	const char *const resume_opts[] = { "--resume", NULL };
	struct json_object *args, *ret = NULL, *q;
	struct harness_vm src, dst;
	struct harness_result res;

	(void)state;
	cli_spawn_source(&src, "incrementer");
	migtest_spawn_incoming_extra(&dst, CLI_MEM, "2", true, cli_postcopy_dst, uri, sizeof(uri));
	cli_migrate(src.sock_path, resume_opts, uri, &res);
	if (res.status != 1 || !strstr(res.err, "nothing to resume"))
		fail_msg("--resume of a running guest: exit %d, stderr %s", res.status, res.err);
	harness_result_free(&res);

	/* Slow enough to pause on the way. */
	assert_int_equal(harness_set_capability(&src, "postcopy-ram", true), 0);
	assert_int_equal(harness_set_params(&src, "{\"max-bandwidth\": 8000000}"), 0);
	assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
	assert_int_equal(harness_migrate(&src, uri), 0);
	/* Both sides active (the destination told the source it runs the
	 * guest: a pause before that ends the destination, by design). */
	migtest_wait_migration_status(&src, "postcopy-active");
	migtest_wait_migration_status(&dst, "postcopy-active");
	for (int i = 0; i < 2000; i++) {
		q = NULL;
		assert_int_equal(harness_call(&src, "query-migrate", NULL, &q), 0);
		if (harness_json_int(q, "postcopy-pages-pushed") > 0) {
			json_object_put(q);
			break;
		}
		json_object_put(q);
		harness_nap_ms(5);
	}
	assert_int_equal(harness_call(&src, "migrate-pause", NULL, NULL), 0);
	migtest_wait_migration_status(&src, "postcopy-paused");
	migtest_wait_migration_status(&dst, "postcopy-paused");

	assert_int_equal(harness_unique_path(path, sizeof(path), "nobody"), 0);
	snprintf(nobody, sizeof(nobody), "unix:%s", path);
	cli_migrate(src.sock_path, resume_opts, nobody, &res);
	if (res.status != 3 || !strstr(res.err, "migrate-recover"))
		fail_msg("--resume to nobody: exit %d, stderr %s", res.status, res.err);
	q = cli_final_json(&res);
	assert_string_equal(harness_json_str(q, "status"), "postcopy-paused");
	assert_true(harness_json_int(q, "postcopy-resume-failures") >= 1);
	json_object_put(q);
	harness_result_free(&res);

	assert_int_equal(harness_unique_path(path, sizeof(path), "recover"), 0);
	snprintf(listen, sizeof(listen), "unix:%s", path);
	args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string(listen));
	assert_int_equal(harness_call(&dst, "migrate-recover", args, &ret), 0);
	json_object_put(args);
	json_object_put(ret);
	assert_int_equal(harness_set_params(&src, "{\"max-bandwidth\": 0}"), 0);
	cli_migrate(src.sock_path, resume_opts, listen, &res);
	q = cli_expect_completed(&res);
	assert_int_equal(harness_json_int(q, "postcopy-pauses"), 1);
	json_object_put(q);
	harness_result_free(&res);
	cli_expect_moved(&src, &dst);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_precopy_unix),
		cmocka_unit_test(test_pure_postcopy),
		cmocka_unit_test(test_hybrid_dirtier),
		cmocka_unit_test(test_cpr),
		cmocka_unit_test(test_usage_errors),
		cmocka_unit_test(test_destination_not_listening),
		cmocka_unit_test(test_options_do_not_persist),
		cmocka_unit_test(test_postcopy_to_plain_destination),
		cmocka_unit_test(test_refuses_waiting_destination),
		cmocka_unit_test(test_run_postcopy_usage),
		cmocka_unit_test(test_run_prealloc_too_big),
		cmocka_unit_test(test_resume_paused_postcopy),
	};

	return MIGTEST_RUN(tests);
}
