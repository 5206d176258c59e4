/*
 * The chaos campaign, short (CI) version: a fixed list of migrations that
 * covers every mode (precopy, hybrid, postcopy, CPR) and every fault kind
 * (kill and SIGSTOP of either side, link down, packet drop, a relay cut, a
 * slow reader), each at a moment drawn from the seed (VMFERRY_CHAOS_SEED,
 * default fixed, printed), each outcome one of the documented ones with the
 * guest verified where it survives (tests/chaos/).  The long version is
 * `make chaos` (docs/reliability.md).
 *
 * Also what the campaign stands on: the checking guest catches a corrupted
 * page itself, and the findings the campaign made (each a test that failed
 * before its fix).
 *
 * Link faults need root, network namespaces and nft; without them those
 * runs are left out (said on stderr).  Skips (77) without KVM.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "chaos/chaos.h"
#include "lib/migtest.h"

#define CHAOS_TEST_SEED 20261207ull

static struct harness_netns chaos_hosts;
static bool chaos_hosts_ok;
static struct harness_vm t_src = { .pid = -1 }, t_dst = { .pid = -1 };

static int chaos_teardown(void **state)
{
	(void)state;
	harness_vm_kill(&t_src);
	harness_vm_kill(&t_dst);
	return 0;
}

/*
 * The guest checks every page before it overwrites it: one flipped bit in
 * the middle of a page (behind its back, through the memfd) panics it with
 * the page named on its console, within a pass.
 */
static void test_guest_catches_corruption(void **state)
{
	struct json_object *w = NULL;
	uint64_t gpa, word;
	char console[4096] = "";
	int fd, rc;
	FILE *f;

	(void)state;
	migtest_spawn(&t_src, "64M", "2", "dirtier,check=1,wss=1M,rate=5000", NULL);
	assert_int_equal(harness_wait_passes(&t_src, 2, 30000), 0);
	assert_int_equal(harness_call(&t_src, "query-workload", NULL, &w), 0);
	gpa = json_object_get_uint64(json_object_object_get(
		json_object_array_get_idx(json_object_object_get(w, "vcpus"), 1), "gpa"));
	json_object_put(w);
	/* page 37 of vCPU 1's working set, word 300 */
	gpa += 37 * 4096 + 300 * 8;
	fd = migtest_guest_ram_open(&t_src, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &word, sizeof(word), (off_t)gpa), (ssize_t)sizeof(word));
	word ^= 1ull << 17;
	assert_int_equal(pwrite(fd, &word, sizeof(word), (off_t)gpa), (ssize_t)sizeof(word));
	close(fd);
	rc = harness_wait_exit(&t_src, 10000);
	assert_int_equal(rc, 3); /* `vmferry run`: the guest panicked */
	f = fopen(t_src.console_path, "r");
	assert_non_null(f);
	console[fread(console, 1, sizeof(console) - 1, f)] = 0;
	fclose(f);
	/* vCPU 0's pass dots may land inside vCPU 1's message: drop them */
	for (char *r = console, *to = console;; r++) {
		if (*r != '.')
			*to++ = *r;
		if (!*r)
			break;
	}
	if (!strstr(console, "dirtier: vcpu 1 page 37 word 300 holds"))
		fail_msg("console lacks the bad page: %s", console);
}

/*
 * Finding 1 of the campaign: with postcopy-recover-timeout set and the
 * destination killed, the source's error-desc after automatic recovery gave
 * up said only "resume by hand", dropping that the guest is lost if the
 * destination's process died; it must keep saying so, and refuse the force.
 */
static void test_auto_recovery_dead_destination(void **state)
{
	char uri[HARNESS_PATH_BYTES + 8];
	struct json_object *q = NULL, *force;
	const char *desc;
	int i;

	(void)state;
	migtest_spawn(&t_src, "64M", "2", "dirtier,check=1,wss=16M,rate=2000", NULL);
	assert_int_equal(harness_wait_passes(&t_src, 1, 30000), 0);
	migtest_spawn_incoming(&t_dst, "64M", "2", false, uri, sizeof(uri));
	assert_int_equal(harness_set_capability(&t_src, "postcopy-ram", true), 0);
	assert_int_equal(harness_set_capability(&t_dst, "postcopy-ram", true), 0);
	assert_int_equal(harness_set_params(&t_src, "{\"max-bandwidth\": 10000000, "
					    "\"postcopy-recover-timeout\": 1}"), 0);
	assert_int_equal(harness_set_params(&t_dst, "{\"postcopy-recover-timeout\": 1}"), 0);
	assert_int_equal(harness_call(&t_src, "migrate-start-postcopy", NULL, NULL), 0);
	assert_int_equal(harness_migrate(&t_src, uri), 0);
	migtest_wait_migration_status(&t_dst, "postcopy-active");
	assert_int_equal(harness_vm_kill(&t_dst), 128 + SIGKILL);
	for (i = 0; i < 600; i++) {
		assert_int_equal(harness_call(&t_src, "query-migrate", NULL, &q), 0);
		if (strstr(harness_json_str(q, "error-desc"), "gave up"))
			break;
		json_object_put(q);
		q = NULL;
		harness_nap_ms(20);
	}
	assert_non_null(q);
	desc = harness_json_str(q, "error-desc");
	fprintf(stderr, "auto recovery, destination dead: %s\n", desc);
	assert_string_equal(harness_json_str(q, "status"), "postcopy-paused");
	if (!strstr(desc, "guest is lost"))
		fail_msg("error-desc does not say the guest may be lost: %s", desc);
	json_object_put(q);
	force = json_tokener_parse("{\"force\": true}");
	assert_int_equal(harness_call(&t_src, "cont", force, NULL), -EREMOTEIO);
	json_object_put(force);
}

/* The short campaign: every mode and every fault kind at least once. */
static void test_chaos_short(void **state)
{
	static const struct {
		enum chaos_mode mode;
		enum chaos_fault fault;
	} runs[] = {
		{ CHAOS_PRECOPY, CHAOS_KILL_DST },   { CHAOS_PRECOPY, CHAOS_STOP_SRC },
		{ CHAOS_PRECOPY, CHAOS_CUT },        { CHAOS_PRECOPY, CHAOS_DROP },
		{ CHAOS_HYBRID, CHAOS_KILL_SRC },    { CHAOS_HYBRID, CHAOS_STOP_DST },
		{ CHAOS_HYBRID, CHAOS_SLOW_READER }, { CHAOS_HYBRID, CHAOS_LINK_DOWN },
		{ CHAOS_POSTCOPY, CHAOS_KILL_DST },  { CHAOS_POSTCOPY, CHAOS_STOP_DST },
		{ CHAOS_POSTCOPY, CHAOS_CUT },       { CHAOS_POSTCOPY, CHAOS_LINK_DOWN },
		{ CHAOS_CPR, CHAOS_KILL_SRC },       { CHAOS_CPR, CHAOS_KILL_DST },
		{ CHAOS_CPR, CHAOS_STOP_DST },
	};
	struct chaos_config cfg = {
		.seed = CHAOS_TEST_SEED, .fault_min_ms = 500, .fault_max_ms = 1500,
		.io_timeout_ms = 1000, .recover_timeout_s = 4, .verbose = true,
		.hosts = chaos_hosts_ok ? &chaos_hosts : NULL,
	};
	/*
	 * Under a sanitizer (make check's second and third passes, 3-15x
	 * slower) one run per mode, each with a different fault: the whole
	 * table ran in the plain pass already.
	 */
	static const unsigned sanitized_runs[] = { 0, 6, 10, 12 };
	bool sanitized = getenv("VMFERRY_SANITIZED") != NULL;
	unsigned failures = 0;

	(void)state;
	if (getenv("VMFERRY_CHAOS_SEED"))
		cfg.seed = strtoull(getenv("VMFERRY_CHAOS_SEED"), NULL, 0);
	fprintf(stderr, "chaos: seed %llu (VMFERRY_CHAOS_SEED repeats it)\n",
		(unsigned long long)cfg.seed);
	chaos_init(&cfg);
	for (unsigned k = 0; k < (sanitized ? sizeof(sanitized_runs) / sizeof(sanitized_runs[0])
					    : sizeof(runs) / sizeof(runs[0])); k++) {
		unsigned i = sanitized ? sanitized_runs[k] : k;
		struct chaos_result r;

		if (!chaos_fault_applies(&cfg, runs[i].mode, runs[i].fault)) {
			fprintf(stderr, "chaos %u: %s %s left out (no namespaces or nft)\n", i,
				chaos_mode_name(runs[i].mode), chaos_fault_name(runs[i].fault));
			continue;
		}
		if (chaos_run_one(&cfg, i, runs[i].mode, runs[i].fault, &r))
			failures++;
		chaos_result_print(&r, cfg.seed, stderr);
	}
	unsetenv("VMFERRY_IO_TIMEOUT_MS");
	unsetenv("VMFERRY_CPR_MAIN_WAIT_MS");
	if (failures)
		fail_msg("%u run(s) ended in an undocumented state (seed %llu; logs kept in %s)",
			 failures, (unsigned long long)cfg.seed, harness_dir());
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_guest_catches_corruption, chaos_teardown),
		cmocka_unit_test_teardown(test_auto_recovery_dead_destination, chaos_teardown),
		cmocka_unit_test_teardown(test_chaos_short, chaos_teardown),
	};
	int rc;

	if (!harness_kvm_available())
		return HARNESS_SKIP;
	if (harness_cleanup_on_exit())
		return 1;
	if (geteuid() == 0 && access("/usr/sbin/nft", X_OK) == 0 &&
	    harness_netns_create(&chaos_hosts, 't', HARNESS_LINK_VETH) == 0)
		chaos_hosts_ok = true;
	else
		fprintf(stderr, "note: no network namespaces or nft: no link faults\n");
	rc = MIGTEST_RUN(tests);
	harness_netns_destroy(&chaos_hosts);
	return rc;
}
