/*
 * Precopy between two simulated hosts: network namespaces a and b joined by
 * a veth pair (harness_netns_create).  The destination VMM runs in b and
 * listens on b's address, the source runs the incrementer (64M, 2 vCPUs)
 * in a, so the stream can only cross the veth.  Once over a plain veth,
 * once with the veth shaped to 200 Mbit/s and 1 ms delay (netem; tbf with
 * the rate only where netem is not built in), where the migration must take
 * at least as long as the bytes need at that rate, still complete (with a
 * downtime limit the slow link can meet) and keep the pause under it.
 * Memory is verified on b and the guest must keep making passes there.
 *
 * Skips (77) when not root, without KVM, or when `ip netns add` fails.
 * Namespaces and VMs go away on every path: cmocka teardowns, and
 * harness_cleanup() at exit and on SIGINT/SIGTERM/SIGHUP (the VMMs also die
 * with us through PDEATHSIG).
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
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "harness/harness.h"
#include "lib/migtest.h"
#include "util/log.h"

#define NETNS_MIG_TIMEOUT_MS 120000
#define NETNS_MEM "64M"
#define NETNS_VCPUS "2"

enum { HOST_A, HOST_B };

/* File scope: the teardowns reach them (harness_cleanup() kills and deletes at exit). */
static struct harness_netns netns_hosts;
static struct harness_vm netns_src = { .pid = -1 }, netns_dst = { .pid = -1 };
static bool netns_shaped;

static int netns_setup(void **state)
{
	(void)state;
	netns_src = (struct harness_vm){ .pid = -1 };
	netns_dst = (struct harness_vm){ .pid = -1 };
	return 0;
}

static int netns_teardown(void **state)
{
	(void)state;
	harness_vm_kill(&netns_src);
	harness_vm_kill(&netns_dst);
	if (netns_shaped && harness_netns_unshape(&netns_hosts) == 0)
		netns_shaped = false;
	return 0;
}

static void spawn_on(struct harness_vm *vm, int host, const char *const args[])
{
	const char *prefix[5];

	harness_netns_prefix(&netns_hosts, host, prefix);
	assert_int_equal(harness_spawn_prefixed(vm, prefix, args), 0);
}

/*
 * The destination's listening URI into @uri: b's address and the port it
 * picked, which proves it bound inside b.  The listener is ready before the
 * control socket serves, so the first answer must be the final one.
 */
static void incoming_uri(struct harness_vm *dst, char *uri, size_t len)
{
	struct json_object *q = NULL;
	char prefix[48];

	snprintf(prefix, sizeof(prefix), "tcp:%s:", netns_hosts.addr[HOST_B]);
	assert_int_equal(harness_call(dst, "query-migrate", NULL, &q), 0);
	snprintf(uri, len, "%s", harness_json_str(q, "uri"));
	json_object_put(q);
	if (strncmp(uri, prefix, strlen(prefix)) || !strcmp(uri + strlen(prefix), "0"))
		fail_msg("the destination does not listen on %s<port> (uri \"%s\")", prefix, uri);
}

/* Poll query-migrate on @src until a final status (bounded); caller owns. */
static struct json_object *wait_migration(struct harness_vm *src)
{
	struct json_object *q = NULL;

	assert_int_equal(harness_wait_migration(src, NETNS_MIG_TIMEOUT_MS, 20, &q), 0);
	return q;
}

/*
 * Destination in b on b's veth address, incrementer source in a, migrate
 * a -> b with @params (JSON for migrate-set-parameters, or NULL).  Leaves
 * the destination running the guest, verified; returns the source's final
 * query-migrate (caller owns).
 */
static struct json_object *migrate_a_to_b(const char *params)
{
	char listen_uri[48], uri[64];
	const char *dst_args[] = { "--mem", NETNS_MEM, "--vcpus", NETNS_VCPUS, "--incoming",
				   listen_uri, NULL };
	const char *src_args[] = { "--mem", NETNS_MEM, "--vcpus", NETNS_VCPUS, "--guest",
				   "incrementer", NULL };
	struct json_object *q = NULL, *args;
	uint64_t p0 = 0, p1 = 0;

	snprintf(listen_uri, sizeof(listen_uri), "tcp:%s:0", netns_hosts.addr[HOST_B]);
	spawn_on(&netns_dst, HOST_B, dst_args);
	incoming_uri(&netns_dst, uri, sizeof(uri));
	migtest_expect_status(&netns_dst, "inmigrate");

	spawn_on(&netns_src, HOST_A, src_args);
	assert_int_equal(harness_wait_passes(&netns_src, 2, 30000), 0);
	if (params) {
		args = json_tokener_parse(params);
		assert_non_null(args);
		assert_int_equal(harness_call(&netns_src, "migrate-set-parameters", args, NULL), 0);
		json_object_put(args);
	}
	args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string(uri));
	assert_int_equal(harness_call(&netns_src, "migrate", args, NULL), 0);
	json_object_put(args);

	q = wait_migration(&netns_src);
	if (strcmp(harness_json_str(q, "status"), "completed"))
		fail_msg("migration %s: %s", harness_json_str(q, "status"),
			 harness_json_str(q, "error-desc"));
	fprintf(stderr, "netns: %s\n", json_object_to_json_string_ext(q, JSON_C_TO_STRING_PLAIN));
	assert_true(harness_json_double(q, "downtime", -1) > 0); /* present, and it did stop */
	/* At least the guest's non-zero memory crossed: 2 x ~31 MiB of pages. */
	assert_true(harness_json_double(q, "transferred", -1) > 60e6);
	migtest_expect_status(&netns_src, "postmigrate");

	/* On b: running, consistent, making passes, consistent again. */
	migtest_expect_status(&netns_dst, "running");
	assert_int_equal(harness_verify_memory(&netns_dst), 0);
	assert_int_equal(harness_workload_passes(&netns_dst, &p0), 0);
	assert_int_equal(harness_wait_passes(&netns_dst, p0 + 2, 30000), 0);
	assert_int_equal(harness_verify_memory(&netns_dst), 0);
	assert_int_equal(harness_workload_passes(&netns_dst, &p1), 0);
	assert_true(p1 >= p0 + 2);

	assert_int_equal(harness_vm_quit(&netns_src), 0);
	assert_int_equal(harness_vm_quit(&netns_dst), 0);
	return q;
}

static void test_veth(void **state)
{
	(void)state;
	json_object_put(migrate_a_to_b(NULL));
}

static void test_veth_shaped(void **state)
{
	const uint64_t rate_bps = 200000000ull;
	char how[16];
	struct json_object *q;
	double bound_ms;

	(void)state;
	assert_int_equal(harness_netns_shape(&netns_hosts, rate_bps, 1000, false, how, sizeof(how)), 0);
	netns_shaped = true;
	/*
	 * The incrementer rewrites its whole 62 MiB far faster than 25 MB/s, so
	 * the dirty set never shrinks below it: precopy completes only once the
	 * downtime limit admits sending it all at the link rate (~2.7 s).
	 */
	q = migrate_a_to_b("{\"downtime-limit\": 6000}");
	assert_true(harness_json_double(q, "downtime", -1) <= 6000);
	/* Shaping held: no faster than the bytes need at the rate. */
	bound_ms = harness_json_double(q, "transferred", -1) * 8.0 / (double)rate_bps * 1000.0;
	fprintf(stderr, "netns: shaped with %s: total %.0f ms, link bound %.0f ms\n", how,
		harness_json_double(q, "total-time", -1), bound_ms);
	assert_true(harness_json_double(q, "total-time", -1) >= 0.9 * bound_ms);
	json_object_put(q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_veth, netns_setup, netns_teardown),
		cmocka_unit_test_setup_teardown(test_veth_shaped, netns_setup, netns_teardown),
	};
	int rc;

	if (geteuid() != 0) {
		fprintf(stderr, "SKIP: network namespaces need root\n");
		return HARNESS_SKIP;
	}
	if (!harness_kvm_available())
		return HARNESS_SKIP;
	if (harness_cleanup_on_exit())
		return 1;
	rc = harness_netns_create(&netns_hosts, 't', HARNESS_LINK_VETH);
	if (rc == -EPERM || rc == -ENOENT) {
		fprintf(stderr, "SKIP: cannot create network namespaces (%s)\n",
			rc == -ENOENT ? "no ip binary" : "ip netns add failed");
		return HARNESS_SKIP;
	}
	if (rc < 0) {
		fprintf(stderr, "test_netns: cannot set up the veth pair: %s\n", strerror(-rc));
		return 1;
	}
	if (getenv("VMFERRY_TEST_FILTER"))
		cmocka_set_test_filter(getenv("VMFERRY_TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
