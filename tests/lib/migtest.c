/* Migration test helpers; see migtest.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "lib/migtest.h"

void migtest_set_sun_path(struct sockaddr_un *sa, const char *path)
{
	size_t n = strnlen(path, sizeof(sa->sun_path) - 1);

	memcpy(sa->sun_path, path, n);
	sa->sun_path[n] = 0;
}

void migtest_spawn_extra(struct harness_vm *vm, const char *mem, const char *vcpus,
			 const char *guest, const char *incoming, const char *const extra[])
{
	const char *args[16] = { "--mem", mem, "--vcpus", vcpus,
				 guest ? "--guest" : "--incoming", guest ? guest : incoming };
	size_t n = 6;

	for (size_t i = 0; extra && extra[i]; i++) {
		assert_true(n < sizeof(args) / sizeof(args[0]) - 1);
		args[n++] = extra[i];
	}
	args[n] = NULL;
	assert_int_equal(harness_spawn(vm, args), 0);
}

void migtest_spawn(struct harness_vm *vm, const char *mem, const char *vcpus, const char *guest,
		   const char *incoming)
{
	migtest_spawn_extra(vm, mem, vcpus, guest, incoming, NULL);
}

void migtest_incoming_uri(struct harness_vm *dst, char *uri, size_t len)
{
	assert_int_equal(harness_incoming_uri(dst, uri, len, MIG_TIMEOUT_MS), 0);
}

void migtest_spawn_incoming_extra(struct harness_vm *dst, const char *mem, const char *vcpus,
				  bool unix_sock, const char *const extra[], char *uri, size_t len)
{
	char listen_uri[HARNESS_PATH_BYTES + 8];

	if (unix_sock) {
		char path[HARNESS_PATH_BYTES];

		assert_int_equal(harness_unique_path(path, sizeof(path), "mig"), 0);
		snprintf(listen_uri, sizeof(listen_uri), "unix:%s", path);
	} else {
		snprintf(listen_uri, sizeof(listen_uri), "tcp:127.0.0.1:0");
	}
	migtest_spawn_extra(dst, mem, vcpus, NULL, listen_uri, extra);
	migtest_incoming_uri(dst, uri, len);
}

void migtest_spawn_incoming(struct harness_vm *dst, const char *mem, const char *vcpus,
			    bool unix_sock, char *uri, size_t len)
{
	migtest_spawn_incoming_extra(dst, mem, vcpus, unix_sock, NULL, uri, len);
}

void migtest_cpr_spawn_new(struct migtest_cpr_target *t, const char *fault,
			   const char *const extra[])
{
	char mp[HARNESS_PATH_BYTES], cp[HARNESS_PATH_BYTES];
	const char *args[16] = { "--incoming", t->main_uri, "--incoming-cpr", t->cpr_uri };
	size_t n = 4;

	assert_int_equal(harness_unique_path(mp, sizeof(mp), "main"), 0);
	assert_int_equal(harness_unique_path(cp, sizeof(cp), "cpr"), 0);
	snprintf(t->main_uri, sizeof(t->main_uri), "unix:%s", mp);
	snprintf(t->cpr_uri, sizeof(t->cpr_uri), "unix:%s", cp);
	for (size_t i = 0; extra && extra[i] && n < 15; i++)
		args[n++] = extra[i];
	args[n] = NULL;
	if (fault)
		setenv("VMFERRY_CPR_FAULT", fault, 1);
	assert_int_equal(harness_spawn_start(&t->vm, NULL, args), 0);
	unsetenv("VMFERRY_CPR_FAULT");
}

void migtest_cpr_update(struct harness_vm *old, struct migtest_cpr_target *t,
			const char *const extra[])
{
	int rc;

	migtest_cpr_spawn_new(t, NULL, extra);
	assert_int_equal(harness_set_params(old, "{\"mode\": \"cpr-transfer\"}"), 0);
	assert_int_equal(harness_migrate_channels(old, t->main_uri, t->cpr_uri), 0);
	rc = harness_wait_exit(old, MIG_TIMEOUT_MS);
	if (rc != 0)
		fail_msg("the old process ended with status %d instead of 0", rc);
	assert_int_equal(harness_connect(&t->vm, 10000), 0);
	migtest_wait_migration_status(&t->vm, "completed");
}

int64_t migtest_query_int(struct harness_vm *vm, const char *key)
{
	struct json_object *q = NULL;
	int64_t v;

	assert_int_equal(harness_call(vm, "query-migrate", NULL, &q), 0);
	v = harness_json_int(q, key);
	json_object_put(q);
	return v;
}

struct json_object *migtest_wait_migration(struct harness_vm *src)
{
	struct json_object *q = NULL;

	assert_int_equal(harness_wait_migration(src, MIG_TIMEOUT_MS, 10, &q), 0);
	return q;
}

void migtest_expect_status(struct harness_vm *vm, const char *status)
{
	struct json_object *s = NULL;

	assert_int_equal(harness_call(vm, "query-status", NULL, &s), 0);
	if (strcmp(harness_json_str(s, "status"), status))
		fail_msg("VM status %s, expected %s", harness_json_str(s, "status"), status);
	json_object_put(s);
}

/* The guest runs and its memory is right, twice, with progress between. */
void migtest_expect_guest_alive_and_verified(struct harness_vm *vm)
{
	uint64_t p0 = 0, p1 = 0;

	migtest_expect_status(vm, "running");
	/* The guest must not run real-time: it would starve the host. */
	assert_int_equal(harness_realtime_threads(vm), 0);
	assert_int_equal(harness_verify_memory(vm), 0);
	assert_int_equal(harness_workload_passes(vm, &p0), 0);
	assert_int_equal(harness_wait_passes(vm, p0 + 2, 30000), 0);
	assert_int_equal(harness_verify_memory(vm), 0);
	assert_int_equal(harness_workload_passes(vm, &p1), 0);
	assert_true(p1 >= p0 + 2);
}

void migtest_wait_migration_status(struct harness_vm *vm, const char *status)
{
	assert_int_equal(harness_wait_migrate_status(vm, status, MIG_TIMEOUT_MS, 5), 0);
}

int migtest_guest_ram_open(struct harness_vm *vm, int flags)
{
	char dir[64], path[352], link[256];
	struct dirent *e;
	int fd = -1;
	DIR *d;

	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)vm->pid);
	d = opendir(dir);
	if (!d)
		return -1;
	while (fd < 0 && (e = readdir(d)) != NULL) {
		ssize_t n;

		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		n = readlink(path, link, sizeof(link) - 1);
		if (n <= 0)
			continue;
		link[n] = 0;
		if (!strncmp(link, "/memfd:ram0", 11))
			fd = open(path, flags | O_CLOEXEC);
	}
	closedir(d);
	return fd;
}

int64_t migtest_guest_ram_allocated(struct harness_vm *vm)
{
	int fd = migtest_guest_ram_open(vm, O_RDONLY);
	struct stat st;
	int64_t bytes = -1;

	if (fd < 0)
		return -1;
	if (fstat(fd, &st) == 0)
		bytes = (int64_t)st.st_blocks * 512;
	close(fd);
	return bytes;
}

void migtest_expect_guest_ram_released(struct harness_vm *vm, long timeout_ms)
{
	int64_t bytes = migtest_guest_ram_allocated(vm);

	for (long waited = 0; bytes > 0 && waited < timeout_ms; waited += 5) {
		harness_nap_ms(5);
		bytes = migtest_guest_ram_allocated(vm);
	}
	if (bytes != 0)
		fail_msg("the source still holds %lld bytes of guest RAM (release-ram)",
			 (long long)bytes);
}

int migtest_run(const char *name, const struct CMUnitTest *tests, size_t n)
{
	if (!harness_kvm_available())
		return HARNESS_SKIP;
	signal(SIGPIPE, SIG_IGN);
	if (getenv("VMFERRY_TEST_FILTER"))
		cmocka_set_test_filter(getenv("VMFERRY_TEST_FILTER"));
	return _cmocka_run_group_tests(name, tests, n, NULL, NULL);
}

/*
 * The source's page accounting of a completed postcopy without a pause.
 * Every page pending at the switch is taken exactly once, by the push
 * (pushed) or by a request on the urgent channel (requested); a request for
 * a page already taken but not yet acknowledged sends it again (resent),
 * and every page sent counts once in normal-pages or zero-pages.  Pure
 * postcopy: every page of guest RAM was pending and nothing crossed before
 * the switch, so pushed + requested == the guest's pages and normal + zero
 * == pushed + requested + resent.  Hybrid: pass 1 sent every page before
 * the switch, so normal + zero >= the guest's pages + pushed + requested +
 * resent, and at least one page was left for postcopy.
 */
void migtest_expect_postcopy_accounting(struct json_object *q, bool pure)
{
	int64_t pushed = harness_json_int(q, "postcopy-pages-pushed");
	int64_t requested = harness_json_int(q, "postcopy-pages-requested");
	int64_t resent = harness_json_int(q, "postcopy-pages-resent");
	int64_t sent = harness_json_int(q, "normal-pages") + harness_json_int(q, "zero-pages");
	int64_t guest_pages = harness_json_int(q, "total") / 4096;

	/* harness_json_int gives -1 for a missing member */
	assert_true(pushed >= 0 && requested >= 0 && resent >= 0 && guest_pages > 0);
	if (pure && (pushed + requested != guest_pages || sent != pushed + requested + resent))
		fail_msg("pure postcopy: pushed %lld + requested %lld != %lld guest pages, or "
			 "normal+zero %lld != pushed + requested + resent %lld", (long long)pushed,
			 (long long)requested, (long long)guest_pages, (long long)sent,
			 (long long)(pushed + requested + resent));
	if (!pure && (pushed + requested < 1 || pushed + requested > guest_pages ||
		      sent < guest_pages + pushed + requested + resent))
		fail_msg("hybrid postcopy: pushed %lld + requested %lld not in 1..%lld, or "
			 "normal+zero %lld < pass 1's %lld pages + pushed + requested + resent",
			 (long long)pushed, (long long)requested, (long long)guest_pages,
			 (long long)sent, (long long)guest_pages);
}

/* ---- the diskwriter guest ---- */

int64_t migtest_disk_acked(struct harness_vm *vm)
{
	struct json_object *q = NULL;
	int64_t n;

	assert_int_equal(harness_call(vm, "query-workload", NULL, &q), 0);
	n = harness_json_int(q, "writes");
	json_object_put(q);
	return n;
}

void migtest_disk_expect_writing(struct harness_vm *vm, int64_t more)
{
	int64_t start = migtest_disk_acked(vm), now = start;

	for (int i = 0; i < 3000 && now < start + more; i++) {
		harness_nap_ms(10);
		now = migtest_disk_acked(vm);
	}
	if (now < start + more)
		fail_msg("the guest acknowledged %lld records in 30 s, expected %lld",
			 (long long)(now - start), (long long)more);
}

void migtest_disk_expect_verified(struct harness_vm *vm, const char *path)
{
	char dump[HARNESS_PATH_BYTES];
	const char *args[] = { "verify", "disk", path, dump, NULL };
	struct harness_result res;
	struct json_object *a = json_object_new_object();

	assert_int_equal(harness_unique_path(dump, sizeof(dump), "dump"), 0);
	json_object_object_add(a, "file", json_object_new_string(dump));
	assert_int_equal(harness_call(vm, "stop", NULL, NULL), 0);
	assert_int_equal(harness_call(vm, "dump-guest-memory", a, NULL), 0);
	json_object_put(a);
	assert_int_equal(harness_run(args, NULL, 30000, &res), 0);
	if (res.status != 0)
		fail_msg("verify disk %s: status %d: %s %s", path, res.status, res.out, res.err);
	fprintf(stderr, "verify disk: %s", res.out);
	harness_result_free(&res);
	unlink(dump);
	assert_int_equal(harness_call(vm, "cont", NULL, NULL), 0);
}

void migtest_disk_expect_alive(struct harness_vm *vm, const char *path)
{
	migtest_expect_status(vm, "running");
	migtest_disk_expect_verified(vm, path);
	migtest_disk_expect_writing(vm, 50);
	migtest_disk_expect_verified(vm, path);
}
