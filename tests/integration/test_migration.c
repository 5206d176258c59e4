/*
 * Precopy live migration between two vmferry processes, under real KVM:
 * transports x vCPUs, ping-pong, convergence (timeout and auto-converge),
 * cancel, a destination killed mid-way, a connection cut mid-way, bad
 * parameters, mismatching destinations, corrupted and truncated streams.
 * Every migration verifies guest memory on the side that runs the guest
 * afterwards and that the guest keeps running.  Skips (77) without KVM.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "control/client.h"
#include "lib/migtest.h"
#include "harness/harness.h"
#include "util/log.h"


/* Wait until the migration reached at least @passes passes (or finished). */
static void wait_passes_sent(struct harness_vm *src, int64_t passes)
{
	for (int i = 0; i < MIG_TIMEOUT_MS / 5; i++) {
		struct json_object *q = NULL;
		int64_t p;
		bool active;

		assert_int_equal(harness_call(src, "query-migrate", NULL, &q), 0);
		p = harness_json_int(q, "passes");
		active = !strcmp(harness_json_str(q, "status"), "active");
		json_object_put(q);
		if (p >= passes || !active)
			return;
		harness_nap_ms(5);
	}
	fail_msg("migration made no progress");
}

/*
 * The source's downtime-breakdown names every phase of the pause, and on
 * one host (one clock) its parts add up to the measured downtime.
 */
static void expect_breakdown(struct json_object *q)
{
	static const char *const keys[] = { "vcpu-stop", "state-ram", "state-vm", "state-cpu",
					    "send", "destination" };
	struct json_object *bd;
	double sum = 0, downtime = harness_json_double(q, "downtime", -1);

	assert_true(downtime > 0);
	assert_true(json_object_object_get_ex(q, "downtime-breakdown", &bd));
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		double v = harness_json_double(bd, keys[i], -1);

		if (v < 0)
			fail_msg("downtime-breakdown lacks %s: %s", keys[i], json_object_to_json_string(bd));
		sum += v;
	}
	if (!strcmp(harness_json_str(q, "downtime-measured"), "source-vcpu-stop-to-destination-vcpu-run") &&
	    (sum < downtime - 0.05 || sum > downtime + 0.05))
		fail_msg("the breakdown adds up to %.3f ms, the downtime is %.3f ms: %s", sum, downtime,
			 json_object_to_json_string(bd));
}

/* One full migration src -> new destination; returns the destination. */
static void migrate_once(struct harness_vm *src, struct harness_vm *dst, const char *mem,
			 const char *vcpus, bool unix_sock)
{
	char uri[HARNESS_PATH_BYTES + 32];
	struct json_object *q;

	migtest_spawn_incoming(dst, mem, vcpus, unix_sock, uri, sizeof(uri));
	migtest_expect_status(dst, "inmigrate");
	assert_int_equal(harness_migrate(src, uri), 0);
	q = migtest_wait_migration(src);
	if (strcmp(harness_json_str(q, "status"), "completed"))
		fail_msg("migration %s: %s", harness_json_str(q, "status"), harness_json_str(q, "error-desc"));
	expect_breakdown(q); /* the downtime > 0 too */
	json_object_put(q);
	migtest_expect_status(src, "postmigrate");
	/* The old side refuses to run the guest a second time. */
	assert_int_equal(harness_call(src, "cont", NULL, NULL), -EREMOTEIO);
	/* The destination closes its connections after telling the source it
	 * runs, so its own status may trail the source's by a moment. */
	migtest_wait_migration_status(dst, "completed");
}

static void test_matrix(void **state)
{
	static const struct {
		bool unix_sock;
		const char *vcpus;
	} cases[] = {
		{ false, "1" }, { false, "2" }, { true, "1" }, { true, "2" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct harness_vm src, dst;

		migtest_spawn(&src, "64M", cases[i].vcpus, "incrementer", NULL);
		assert_int_equal(harness_wait_passes(&src, 2, 30000), 0);
		migrate_once(&src, &dst, "64M", cases[i].vcpus, cases[i].unix_sock);
		migtest_expect_guest_alive_and_verified(&dst);
		assert_int_equal(harness_vm_quit(&src), 0);
		assert_int_equal(harness_vm_quit(&dst), 0);
	}
}

/*
 * A sparse guest: 4 GiB of which the dirtier touched 2 x 16 MiB.  The
 * destination allocates what arrives (its preallocation follows the
 * stream), not 4 GiB, and the guest's memory verifies.
 */
static void test_sparse_guest(void **state)
{
	struct harness_vm src, dst;

	(void)state;
	migtest_spawn(&src, "4G", "2", "dirtier,wss=16M,rate=2000,fill=1", NULL);
	assert_int_equal(harness_wait_passes(&src, 2, 30000), 0);
	assert_true(migtest_guest_ram_allocated(&src) < (128ll << 20));
	migrate_once(&src, &dst, "4G", "2", true);
	assert_true(migtest_guest_ram_allocated(&dst) < (256ll << 20));
	migtest_expect_guest_alive_and_verified(&dst);
	assert_int_equal(harness_vm_quit(&src), 0);
	assert_int_equal(harness_vm_quit(&dst), 0);
}

/* A channel in QMP's shape: {"channel-type": main, "addr": {...}}. */
static struct json_object *qmp_channel(const char *transport, const char *type,
				       const char *host, const char *port, const char *path)
{
	struct json_object *c = json_object_new_object(), *addr = json_object_new_object();

	json_object_object_add(addr, "transport", json_object_new_string(transport));
	json_object_object_add(addr, "type", json_object_new_string(type));
	if (host)
		json_object_object_add(addr, "host", json_object_new_string(host));
	if (port)
		json_object_object_add(addr, "port", json_object_new_string(port));
	if (path)
		json_object_object_add(addr, "path", json_object_new_string(path));
	json_object_object_add(c, "channel-type", json_object_new_string("main"));
	json_object_object_add(c, "addr", addr);
	return c;
}

/* migrate {"channels": [@chan], "detach": true}; 0 or the call's error. */
static int qmp_migrate(struct harness_vm *src, struct json_object *chan)
{
	struct json_object *args = json_object_new_object(), *chans = json_object_new_array();
	int r;

	json_object_array_add(chans, chan);
	json_object_object_add(args, "channels", chans);
	json_object_object_add(args, "detach", json_object_new_boolean(true));
	r = harness_call(src, "migrate", args, NULL);
	json_object_put(args);
	return r;
}

/*
 * QMP's spellings: channels as {"channel-type", "addr"} over TCP and a UNIX
 * socket, "detach" accepted, the "ram" object in query-migrate; transports
 * we do not have are refused by name.
 */
static void test_qmp_spellings(void **state)
{
	(void)state;
	for (int unix_sock = 0; unix_sock < 2; unix_sock++) {
		struct harness_vm src, dst;
		struct json_object *q, *ram;
		char uri[HARNESS_PATH_BYTES + 8], host[64] = "", port[16] = "";

		migtest_spawn(&src, "64M", "1", "incrementer", NULL);
		assert_int_equal(harness_wait_passes(&src, 1, 30000), 0);
		migtest_spawn_incoming(&dst, "64M", "1", unix_sock, uri, sizeof(uri));
		assert_int_equal(qmp_migrate(&src, qmp_channel("exec", "unix", NULL, NULL, "/x")),
				 -EREMOTEIO);
		assert_non_null(strstr(src.error, "transport 'exec' is not supported"));
		assert_int_equal(qmp_migrate(&src, qmp_channel("socket", "vsock", NULL, NULL, NULL)),
				 -EREMOTEIO);
		if (unix_sock) {
			assert_int_equal(qmp_migrate(&src, qmp_channel("socket", "unix", NULL, NULL,
								       uri + 5)), 0);
		} else {
			assert_int_equal(sscanf(uri, "tcp:%63[^:]:%15s", host, port), 2);
			assert_int_equal(qmp_migrate(&src, qmp_channel("socket", "inet", host, port,
								       NULL)), 0);
		}
		q = migtest_wait_migration(&src);
		if (strcmp(harness_json_str(q, "status"), "completed"))
			fail_msg("migration %s: %s", harness_json_str(q, "status"),
				 harness_json_str(q, "error-desc"));
		assert_true(json_object_object_get_ex(q, "ram", &ram));
		assert_int_equal(harness_json_int(ram, "total"), 64 << 20);
		assert_int_equal(harness_json_int(ram, "normal"), harness_json_int(q, "normal-pages"));
		assert_int_equal(harness_json_int(ram, "duplicate"), harness_json_int(q, "zero-pages"));
		assert_int_equal(harness_json_int(ram, "normal-bytes"),
				 harness_json_int(q, "normal-pages") * 4096);
		assert_int_equal(harness_json_int(ram, "page-size"), 4096);
		json_object_put(q);
		migtest_wait_migration_status(&dst, "completed");
		migtest_expect_guest_alive_and_verified(&dst);
		assert_int_equal(harness_vm_quit(&src), 0);
		assert_int_equal(harness_vm_quit(&dst), 0);
	}
}

/*
 * Ping-pong: one guest migrated back and forth, alternating TCP and UNIX
 * sockets, its memory verified after every hop.  20 hops in the suite;
 * VMFERRY_PINGPONG_HOPS=1000 is the long run (docs/reliability.md).
 */
static void test_ping_pong_20(void **state)
{
	const char *env = getenv("VMFERRY_PINGPONG_HOPS");
	int hops = env ? atoi(env) : 20;
	struct harness_vm a, b;
	uint64_t t0 = clock_monotonic_ns();

	(void)state;
	assert_true(hops >= 1);
	migtest_spawn(&a, "32M", "2", "incrementer", NULL);
	assert_int_equal(harness_wait_passes(&a, 2, 30000), 0);
	for (int hop = 0; hop < hops; hop++) {
		migrate_once(&a, &b, "32M", "2", hop % 2);
		assert_int_equal(harness_verify_memory(&b), 0);
		assert_int_equal(harness_vm_quit(&a), 0);
		a = b;
		if (hops > 20 && (hop + 1) % 100 == 0)
			fprintf(stderr, "ping-pong: %d hops verified, %.1f s\n", hop + 1,
				(double)(clock_monotonic_ns() - t0) / 1e9);
	}
	migtest_expect_guest_alive_and_verified(&a);
	assert_int_equal(harness_vm_quit(&a), 0);
}

/* A paused source stays paused on the destination. */
static void test_paused_guest(void **state)
{
	struct harness_vm src, dst;

	(void)state;
	migtest_spawn(&src, "32M", "1", "incrementer", NULL);
	assert_int_equal(harness_wait_passes(&src, 1, 30000), 0);
	assert_int_equal(harness_call(&src, "stop", NULL, NULL), 0);
	migrate_once(&src, &dst, "32M", "1", false);
	migtest_expect_status(&dst, "paused");
	assert_int_equal(harness_verify_memory(&dst), 0);
	assert_int_equal(harness_call(&dst, "cont", NULL, NULL), 0);
	migtest_expect_guest_alive_and_verified(&dst);
	assert_int_equal(harness_vm_quit(&src), 0);
	assert_int_equal(harness_vm_quit(&dst), 0);
}

/* The source after a failed migration: still running, verified, migratable. */
static void expect_source_survived(struct harness_vm *src, const char *mem, const char *vcpus)
{
	struct harness_vm dst;

	migtest_expect_guest_alive_and_verified(src);
	/* ... and it can migrate again. */
	assert_int_equal(harness_set_params(src, "{\"downtime-limit\": 300, \"convergence-timeout\": 0}"), 0);
	migrate_once(src, &dst, mem, vcpus, false);
	migtest_expect_guest_alive_and_verified(&dst);
	assert_int_equal(harness_vm_quit(&dst), 0);
}

static void test_no_convergence_times_out(void **state)
{
	struct harness_vm src, dst;
	char uri[64];
	struct json_object *q;

	(void)state;
	migtest_spawn(&src, "64M", "2", "dirtier,wss=16M,rate=0", NULL);
	assert_int_equal(harness_wait_passes(&src, 1, 30000), 0);
	/* A dirtier at full speed (hundreds of MB/s even under dirty logging)
	 * over a 30 MB/s link: never fits 10 ms, whatever the load here. */
	assert_int_equal(harness_set_params(&src, "{\"downtime-limit\": 10, \"convergence-timeout\": 3, "
				    "\"max-bandwidth\": 30000000}"), 0);
	migtest_spawn_incoming(&dst, "64M", "2", false, uri, sizeof(uri));
	assert_int_equal(harness_migrate(&src, uri), 0);
	q = migtest_wait_migration(&src);
	assert_string_equal(harness_json_str(q, "status"), "failed");
	assert_non_null(strstr(harness_json_str(q, "error-desc"), "did not converge"));
	assert_int_equal(harness_json_int(q, "cpu-throttle-max"), 0);
	json_object_put(q);
	/* The destination gives up cleanly with an error status. */
	assert_int_equal(harness_wait_exit(&dst, 20000), 1);
	assert_int_equal(harness_set_params(&src, "{\"max-bandwidth\": 0}"), 0);
	expect_source_survived(&src, "64M", "2");
	assert_int_equal(harness_vm_quit(&src), 0);
}

static void test_auto_converge(void **state)
{
	struct harness_vm src, dst;
	char uri[64];
	struct json_object *q, *caps;

	(void)state;
	migtest_spawn(&src, "64M", "2", "dirtier,wss=16M,rate=10000", NULL);
	assert_int_equal(harness_wait_passes(&src, 1, 30000), 0);
	/* Same as above, but the throttle brings the dirty rate under the link. */
	assert_int_equal(harness_set_params(&src, "{\"downtime-limit\": 10, \"convergence-timeout\": 60, "
				    "\"max-bandwidth\": 30000000}"), 0);
	caps = json_tokener_parse("{\"capabilities\": [{\"capability\": \"auto-converge\", \"state\": true}]}");
	assert_int_equal(harness_call(&src, "migrate-set-capabilities", caps, NULL), 0);
	json_object_put(caps);
	migtest_spawn_incoming(&dst, "64M", "2", false, uri, sizeof(uri));
	assert_int_equal(harness_migrate(&src, uri), 0);
	q = migtest_wait_migration(&src);
	if (strcmp(harness_json_str(q, "status"), "completed"))
		fail_msg("auto-converge: %s: %s", harness_json_str(q, "status"), harness_json_str(q, "error-desc"));
	assert_true(harness_json_int(q, "cpu-throttle-max") > 0);
	json_object_put(q);
	migtest_expect_guest_alive_and_verified(&dst);
	/* Throttling ends with the migration. */
	q = NULL;
	assert_int_equal(harness_call(&src, "query-migrate", NULL, &q), 0);
	assert_int_equal(harness_json_int(q, "cpu-throttle-percentage"), 0);
	json_object_put(q);
	assert_int_equal(harness_vm_quit(&src), 0);
	assert_int_equal(harness_vm_quit(&dst), 0);
}

/* A slow link (max-bandwidth) so that the migration is still running. */
static void start_slow_migration(struct harness_vm *src, struct harness_vm *dst)
{
	char uri[64];

	migtest_spawn(src, "64M", "2", "incrementer", NULL);
	assert_int_equal(harness_wait_passes(src, 1, 30000), 0);
	assert_int_equal(harness_set_params(src, "{\"max-bandwidth\": 20000000}"), 0);
	migtest_spawn_incoming(dst, "64M", "2", false, uri, sizeof(uri));
	assert_int_equal(harness_migrate(src, uri), 0);
	wait_passes_sent(src, 0);
	{
		struct json_object *q = NULL;

		/* Some bytes are on the way. */
		for (int i = 0; i < 1000; i++) {
			assert_int_equal(harness_call(src, "query-migrate", NULL, &q), 0);
			if (harness_json_int(q, "transferred") > (1 << 20))
				break;
			json_object_put(q);
			q = NULL;
			harness_nap_ms(5);
		}
		json_object_put(q);
	}
	assert_int_equal(harness_set_params(src, "{\"max-bandwidth\": 0}"), 0);
	assert_int_equal(harness_set_params(src, "{\"max-bandwidth\": 20000000}"), 0);
}

static void test_cancel(void **state)
{
	struct harness_vm src, dst;
	struct json_object *q;

	(void)state;
	start_slow_migration(&src, &dst);
	assert_int_equal(harness_call(&src, "migrate-cancel", NULL, NULL), 0);
	q = migtest_wait_migration(&src);
	assert_string_equal(harness_json_str(q, "status"), "cancelled");
	json_object_put(q);
	assert_int_equal(harness_wait_exit(&dst, 20000), 1);
	/* Cancelling nothing is an error, not a crash. */
	assert_int_equal(harness_call(&src, "migrate-cancel", NULL, NULL), -EREMOTEIO);
	assert_int_equal(harness_set_params(&src, "{\"max-bandwidth\": 0}"), 0);
	expect_source_survived(&src, "64M", "2");
	assert_int_equal(harness_vm_quit(&src), 0);
}

static void test_destination_killed(void **state)
{
	struct harness_vm src, dst;
	struct json_object *q;

	(void)state;
	start_slow_migration(&src, &dst);
	harness_vm_kill(&dst);
	q = migtest_wait_migration(&src);
	assert_string_equal(harness_json_str(q, "status"), "failed");
	assert_true(strlen(harness_json_str(q, "error-desc")) > 0);
	json_object_put(q);
	assert_int_equal(harness_set_params(&src, "{\"max-bandwidth\": 0}"), 0);
	expect_source_survived(&src, "64M", "2");
	assert_int_equal(harness_vm_quit(&src), 0);
}

/*
 * Connection cut: a proxy between source and destination that forwards a
 * few MiB and then closes both sides.
 */
struct proxy {
	int listen_fd;
	char path[HARNESS_PATH_BYTES];
	pid_t pid;
};

static void proxy_start(struct proxy *p, const char *target_uri, size_t cut_after_bytes)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char target[HARNESS_PATH_BYTES];

	assert_true(!strncmp(target_uri, "unix:", 5));
	snprintf(target, sizeof(target), "%.*s", (int)sizeof(target) - 1, target_uri + 5);
	assert_int_equal(harness_unique_path(p->path, sizeof(p->path), "proxy"), 0);
	migtest_set_sun_path(&sa, p->path);
	p->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(p->listen_fd >= 0);
	assert_int_equal(bind(p->listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(p->listen_fd, 1), 0);
	p->pid = fork();
	assert_true(p->pid >= 0);
	if (p->pid == 0) {
		struct sockaddr_un ta = { .sun_family = AF_UNIX };
		static char buf[65536];
		size_t moved = 0;
		int in = accept(p->listen_fd, NULL, NULL), out = socket(AF_UNIX, SOCK_STREAM, 0);

		alarm(60);
		migtest_set_sun_path(&ta, target);
		if (in < 0 || out < 0 || connect(out, (struct sockaddr *)&ta, sizeof(ta)) < 0)
			_exit(1);
		while (moved < cut_after_bytes) {
			ssize_t n = read(in, buf, sizeof(buf));

			if (n <= 0 || write(out, buf, (size_t)n) != n)
				break;
			moved += (size_t)n;
		}
		/* The cut: both directions go away at once. */
		shutdown(in, SHUT_RDWR);
		shutdown(out, SHUT_RDWR);
		_exit(0);
	}
	close(p->listen_fd);
}

static void test_connection_cut(void **state)
{
	struct harness_vm src, dst;
	struct proxy p;
	char uri[HARNESS_PATH_BYTES + 8], puri[HARNESS_PATH_BYTES + 8];
	struct json_object *q;
	int status;

	(void)state;
	migtest_spawn(&src, "64M", "2", "incrementer", NULL);
	assert_int_equal(harness_wait_passes(&src, 1, 30000), 0);
	migtest_spawn_incoming(&dst, "64M", "2", true, uri, sizeof(uri));
	proxy_start(&p, uri, 8u << 20);
	snprintf(puri, sizeof(puri), "unix:%s", p.path);
	assert_int_equal(harness_migrate(&src, puri), 0);
	q = migtest_wait_migration(&src);
	assert_string_equal(harness_json_str(q, "status"), "failed");
	json_object_put(q);
	assert_int_equal(waitpid(p.pid, &status, 0), p.pid);
	assert_int_equal(harness_wait_exit(&dst, 20000), 1);
	expect_source_survived(&src, "64M", "2");
	assert_int_equal(harness_vm_quit(&src), 0);
}

static void test_bad_requests(void **state)
{
	struct harness_vm src, dst;
	char uri[64];
	struct json_object *q;

	(void)state;
	migtest_spawn(&src, "32M", "1", "incrementer", NULL);
	assert_int_equal(harness_wait_passes(&src, 1, 30000), 0);
	assert_int_equal(harness_migrate(&src, "carrier-pigeon:somewhere"), -EREMOTEIO);
	assert_int_equal(harness_migrate(&src, "tcp:127.0.0.1:99999"), -EREMOTEIO);
	assert_int_equal(harness_set_params(&src, "{\"downtime-limit\": -5}"), -EREMOTEIO);
	assert_int_equal(harness_set_params(&src, "{\"downtime-limit\": \"fast\"}"), -EREMOTEIO);
	assert_int_equal(harness_set_params(&src, "{\"no-such-parameter\": 1}"), -EREMOTEIO);
	q = json_tokener_parse("{\"capabilities\": [{\"capability\": \"warp-drive\", \"state\": true}]}");
	assert_int_equal(harness_call(&src, "migrate-set-capabilities", q, NULL), -EREMOTEIO);
	json_object_put(q);
	/* Nobody listening: fails, guest runs on. */
	{
		char path[HARNESS_PATH_BYTES + 8], u[HARNESS_PATH_BYTES + 16];

		assert_int_equal(harness_unique_path(path, sizeof(path), "nobody"), 0);
		snprintf(u, sizeof(u), "unix:%s", path);
		assert_int_equal(harness_migrate(&src, u), 0);
		q = migtest_wait_migration(&src);
		assert_string_equal(harness_json_str(q, "status"), "failed");
		json_object_put(q);
	}
	/* Destination with the wrong RAM size refuses before loading anything. */
	migtest_spawn_incoming(&dst, "64M", "1", false, uri, sizeof(uri));
	assert_int_equal(harness_migrate(&src, uri), 0);
	q = migtest_wait_migration(&src);
	assert_string_equal(harness_json_str(q, "status"), "failed");
	json_object_put(q);
	assert_int_equal(harness_wait_exit(&dst, 20000), 1);
	/* Wrong vCPU count too. */
	migtest_spawn_incoming(&dst, "32M", "2", false, uri, sizeof(uri));
	assert_int_equal(harness_migrate(&src, uri), 0);
	q = migtest_wait_migration(&src);
	assert_string_equal(harness_json_str(q, "status"), "failed");
	assert_non_null(strstr(harness_json_str(q, "error-desc"), "vCPU"));
	json_object_put(q);
	assert_int_equal(harness_wait_exit(&dst, 20000), 1);
	/* The destination refuses stop/cont/migrate while waiting. */
	migtest_spawn_incoming(&dst, "32M", "1", false, uri, sizeof(uri));
	assert_int_equal(harness_call(&dst, "cont", NULL, NULL), -EREMOTEIO);
	assert_int_equal(harness_migrate(&dst, uri), -EREMOTEIO);
	assert_int_equal(harness_vm_quit(&dst), 0);
	expect_source_survived(&src, "32M", "1");
	assert_int_equal(harness_vm_quit(&src), 0);
}

/* Raw bytes to a destination: it must fail with an error status, not crash. */
static void feed_destination(const void *bytes, size_t len)
{
	struct harness_vm dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint8_t reply[1024];
	int fd;

	migtest_spawn_incoming(&dst, "8M", "1", true, uri, sizeof(uri));
	migtest_set_sun_path(&sa, uri + 5);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	/* The destination may stop reading at the first bad byte. */
	for (size_t off = 0; off < len;) {
		ssize_t n = write(fd, (const uint8_t *)bytes + off, len - off);

		if (n <= 0)
			break;
		off += (size_t)n;
	}
	shutdown(fd, SHUT_WR);
	/* An ERROR on the return path, or a plain close: never RUNNING. */
	if (read(fd, reply, sizeof(reply)) > 0)
		assert_int_equal(reply[0], 2);
	close(fd);
	assert_int_equal(harness_wait_exit(&dst, 20000), 1);
}

static void test_corrupt_streams(void **state)
{
	struct harness_vm src;
	uint8_t *stream = NULL;
	size_t len = 0;

	(void)state;
	/* Garbage and an empty stream. */
	feed_destination("hello, this is not a migration stream", 37);
	feed_destination("", 0);
	/* A real stream, captured through a recording proxy, then damaged. */
	{
		struct harness_vm dst;
		char uri[HARNESS_PATH_BYTES + 8];
		char path[HARNESS_PATH_BYTES];
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		struct json_object *q;
		int lfd, cfd;
		size_t cap = 0;
		uint8_t reply[64];

		migtest_spawn(&src, "8M", "1", "incrementer", NULL);
		assert_int_equal(harness_wait_passes(&src, 1, 30000), 0);
		/* Pause it so the stream is small and deterministic. */
		assert_int_equal(harness_call(&src, "stop", NULL, NULL), 0);
		assert_int_equal(harness_unique_path(path, sizeof(path), "rec"), 0);
		migtest_set_sun_path(&sa, path);
		lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
		assert_int_equal(listen(lfd, 1), 0);
		snprintf(uri, sizeof(uri), "unix:%s", path);
		assert_int_equal(harness_migrate(&src, uri), 0);
		cfd = accept(lfd, NULL, NULL);
		assert_true(cfd >= 0);
		/* Record until END (type 4) can have arrived: the source then waits
		 * for our reply, so read with a short poll-free deadline. */
		for (;;) {
			ssize_t n;
			struct timeval tv = { 1, 0 };

			setsockopt(cfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
			if (len + 65536 > cap) {
				cap = cap ? cap * 2 : 1 << 20;
				stream = realloc(stream, cap);
				assert_non_null(stream);
			}
			n = read(cfd, stream + len, 65536);
			if (n <= 0)
				break;
			len += (size_t)n;
		}
		/* Refuse on the return path: the source must resume (here: stay paused). */
		reply[0] = 2;
		reply[1] = 125; reply[2] = reply[3] = reply[4] = 0; /* ECANCELED */
		reply[5] = 4; reply[6] = 0;
		memcpy(reply + 7, "test", 4);
		assert_int_equal(write(cfd, reply, 11), 11);
		close(cfd);
		close(lfd);
		q = migtest_wait_migration(&src);
		assert_string_equal(harness_json_str(q, "status"), "failed");
		json_object_put(q);
		migtest_expect_status(&src, "paused");
		assert_true(len > 4096);
		/* The captured stream itself is good: a destination runs it. */
		migtest_spawn_incoming(&dst, "8M", "1", true, uri, sizeof(uri));
		{
			struct sockaddr_un da = { .sun_family = AF_UNIX };
			int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

			migtest_set_sun_path(&da, uri + 5);
			assert_int_equal(connect(fd, (struct sockaddr *)&da, sizeof(da)), 0);
			assert_int_equal(write(fd, stream, len), (ssize_t)len);
			assert_true(read(fd, reply, sizeof(reply)) > 0);
			assert_int_equal(reply[0], 1); /* RUNNING */
			close(fd);
		}
		migtest_expect_status(&dst, "paused"); /* the source was paused */
		assert_int_equal(harness_verify_memory(&dst), 0);
		assert_int_equal(harness_vm_quit(&dst), 0);
	}
	/* Truncated at several points, and bytes flipped in the header/records. */
	{
		size_t cuts[] = { 1, 8, 30, 100, 4096, len / 2, len - 1 };

		for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++)
			feed_destination(stream, cuts[i]);
	}
	{
		/* magic, version, page size, vCPUs, name length, block size, record */
		size_t flips[] = { 0, 9, 13, 17, 40, 60, 62 };

		for (size_t i = 0; i < sizeof(flips) / sizeof(flips[0]); i++) {
			uint8_t *bad = malloc(len);

			memcpy(bad, stream, len);
			bad[flips[i]] ^= 0x5a;
			feed_destination(bad, len);
			free(bad);
		}
	}
	free(stream);
	assert_int_equal(harness_call(&src, "cont", NULL, NULL), 0);
	migtest_expect_guest_alive_and_verified(&src);
	assert_int_equal(harness_vm_quit(&src), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_matrix),
		cmocka_unit_test(test_sparse_guest),
		cmocka_unit_test(test_qmp_spellings),
		cmocka_unit_test(test_paused_guest),
		cmocka_unit_test(test_ping_pong_20),
		cmocka_unit_test(test_no_convergence_times_out),
		cmocka_unit_test(test_auto_converge),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_destination_killed),
		cmocka_unit_test(test_connection_cut),
		cmocka_unit_test(test_bad_requests),
		cmocka_unit_test(test_corrupt_streams),
	};

	return MIGTEST_RUN(tests);
}
