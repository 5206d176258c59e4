/*
 * VM core under real KVM, in-process: boot, several vCPUs, stop/cont x1000
 * with the incrementer verified, guest exit codes, every crash kind, bad
 * configurations, events.  Skips (77) without /dev/kvm.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "harness/harness.h"
#include "verify/verify.h"
#include "vmm/vm.h"

struct events {
	pthread_mutex_t lock;
	char names[64][32];
	unsigned count;
};

static void events_record(void *opaque, const char *event, struct json_object *data)
{
	struct events *ev = opaque;

	(void)data;
	pthread_mutex_lock(&ev->lock);
	if (ev->count < 64)
		snprintf(ev->names[ev->count++], sizeof(ev->names[0]), "%s", event);
	pthread_mutex_unlock(&ev->lock);
}

static unsigned events_count(struct events *ev, const char *name)
{
	unsigned n = 0;

	pthread_mutex_lock(&ev->lock);
	for (unsigned i = 0; i < ev->count; i++)
		n += !strcmp(ev->names[i], name);
	pthread_mutex_unlock(&ev->lock);
	return n;
}

static struct vm *boot(const char *guest, uint64_t ram, unsigned nvcpus, struct events *ev)
{
	struct vm_config cfg = {
		.ram_bytes = ram, .nvcpus = nvcpus, .guest = guest,
		.console_path = "/dev/null",
	};
	struct vm *vm = NULL;

	assert_int_equal(vm_create(&cfg, &vm), 0);
	if (ev) {
		memset(ev, 0, sizeof(*ev));
		pthread_mutex_init(&ev->lock, NULL);
		vm_set_event_handler(vm, events_record, ev);
	}
	assert_int_equal(vm_start(vm), 0);
	return vm;
}

/* Smallest passes count over all vCPUs (0 until every vCPU runs its loop). */
static uint64_t min_passes(struct vm *vm)
{
	struct json_object *w = vm_query_workload(vm), *arr, *v, *x;
	uint64_t min = UINT64_MAX;

	/* Without vCPUs min would stay UINT64_MAX and every wait end at once. */
	assert_true(json_object_object_get_ex(w, "vcpus", &arr));
	assert_true(json_object_array_length(arr) > 0);
	for (size_t i = 0; i < json_object_array_length(arr); i++) {
		v = json_object_array_get_idx(arr, i);
		assert_true(json_object_object_get_ex(v, "phase", &x));
		if (strcmp(json_object_get_string(x), "running"))
			min = 0;
		assert_true(json_object_object_get_ex(v, "passes", &x));
		if ((uint64_t)json_object_get_int64(x) < min)
			min = (uint64_t)json_object_get_int64(x);
	}
	json_object_put(w);
	return min;
}

/* Wait (bounded) until every vCPU has done @passes more passes than now. */
static void wait_more_passes(struct vm *vm, uint64_t more)
{
	uint64_t target = min_passes(vm) + more;
	struct timespec tick = { 0, 1000000 };

	for (int i = 0; i < 30000; i++) {
		if (min_passes(vm) >= target)
			return;
		nanosleep(&tick, NULL);
	}
	fail_msg("guest made no progress within 30 s");
}

static void verify_now(struct vm *vm)
{
	struct ram_block *b = vm_ram_block(vm, 0);
	struct json_object *verdict = NULL;
	int err;

	assert_int_equal(vm_stop(vm), 0);
	err = verify_incrementer_image(b->host, b->bytes, &verdict);
	if (err)
		fail_msg("verifier: %s", json_object_to_json_string(verdict));
	json_object_put(verdict);
	assert_int_equal(vm_cont(vm), 0);
}

static void test_incrementer_two_vcpus(void **state)
{
	struct events ev;
	struct vm *vm = boot("incrementer", 64ull << 20, 2, &ev);

	(void)state;
	wait_more_passes(vm, 3);
	verify_now(vm);
	wait_more_passes(vm, 2);   /* keeps running after */
	verify_now(vm);
	assert_int_equal(vm_get_runstate(vm), VM_RUNSTATE_RUNNING);
	assert_int_equal(events_count(&ev, "STOP"), 2);
	assert_int_equal(events_count(&ev, "RESUME"), 3); /* start + 2 conts */
	vm_request_quit(vm);
	assert_int_equal(vm_wait(vm), 0);
	vm_destroy(vm);
}

static void test_stop_cont_1000(void **state)
{
	struct vm *vm = boot("incrementer", 32ull << 20, 2, NULL);
	struct json_object *st, *x;

	(void)state;
	wait_more_passes(vm, 1);
	for (int i = 0; i < 1000; i++) {
		assert_int_equal(vm_stop(vm), 0);
		assert_int_equal(vm_get_runstate(vm), VM_RUNSTATE_PAUSED);
		assert_int_equal(vm_cont(vm), 0);
	}
	/* Idempotent requests are fine. */
	assert_int_equal(vm_cont(vm), 0);
	assert_int_equal(vm_stop(vm), 0);
	assert_int_equal(vm_stop(vm), 0);
	st = vm_query_status(vm);
	assert_true(json_object_object_get_ex(st, "status", &x));
	assert_string_equal(json_object_get_string(x), "paused");
	json_object_put(st);
	assert_int_equal(vm_cont(vm), 0);
	wait_more_passes(vm, 1);
	verify_now(vm);
	wait_more_passes(vm, 1);
	vm_request_quit(vm);
	assert_int_equal(vm_wait(vm), 0);
	vm_destroy(vm);
}

static void test_one_gib_two_vcpus(void **state)
{
	struct vm *vm = boot("incrementer", 1ull << 30, 2, NULL);

	(void)state;
	wait_more_passes(vm, 2);
	verify_now(vm);
	wait_more_passes(vm, 1);
	vm_request_quit(vm);
	vm_wait(vm);
	vm_destroy(vm);
}

static void test_guest_exit_code(void **state)
{
	struct events ev;
	struct vm *vm = boot("selftest,mode=0,code=42", 8ull << 20, 1, &ev);

	(void)state;
	assert_int_equal(vm_wait(vm), 42);
	vm_join_vcpus(vm); /* the event is sent after vm_wait can return */
	assert_int_equal(vm_get_runstate(vm), VM_RUNSTATE_SHUTDOWN);
	assert_int_equal(events_count(&ev, "SHUTDOWN"), 1);
	assert_int_equal(vm_stop(vm), -EINVAL);
	assert_int_equal(vm_cont(vm), -EINVAL);
	vm_destroy(vm);

	/* An unknown port is ignored, the guest goes on. */
	vm = boot("selftest,mode=5,code=7", 8ull << 20, 1, NULL);
	assert_int_equal(vm_wait(vm), 7);
	vm_destroy(vm);

	/* The guest clock moves and the sleep port returns. */
	vm = boot("selftest,mode=6,us=20000", 8ull << 20, 2, NULL);
	assert_int_equal(vm_wait(vm), 0);
	vm_destroy(vm);
}

static void test_crashes_reported(void **state)
{
	static const struct {
		const char *guest;
		const char *reason;
	} cases[] = {
		{ "selftest,mode=1", "triple-fault" },
		{ "selftest,mode=2,code=0x99", "panic code 0x99" },
		{ "selftest,mode=3", "triple-fault" },
		{ "selftest,mode=4", "triple-fault" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct events ev;
		struct vm *vm = boot(cases[i].guest, 8ull << 20, 2, &ev);
		struct json_object *st, *x;

		assert_int_equal(vm_wait(vm), VM_EXIT_STATUS_CRASH);
		vm_join_vcpus(vm);
		assert_int_equal(vm_get_runstate(vm), VM_RUNSTATE_GUEST_PANICKED);
		assert_int_equal(events_count(&ev, "GUEST_PANICKED"), 1);
		st = vm_query_status(vm);
		assert_true(json_object_object_get_ex(st, "crash", &x));
		if (!strstr(json_object_get_string(x), cases[i].reason) ||
		    !strstr(json_object_get_string(x), "rip="))
			fail_msg("%s: crash report '%s'", cases[i].guest, json_object_get_string(x));
		json_object_put(st);
		/* Registers stay readable after the crash. */
		st = vm_query_vcpus(vm);
		assert_int_equal(json_object_array_length(st), 2);
		json_object_put(st);
		assert_int_equal(vm_cont(vm), -EINVAL);
		vm_destroy(vm);
	}
}

static void test_bad_configs(void **state)
{
	static const struct {
		uint64_t ram;
		unsigned nvcpus;
		const char *guest;
		const char *kvm;
		const char *console;
		int err;
	} cases[] = {
		{ 3ull << 20, 1, "idle", NULL, NULL, -EINVAL },     /* too small */
		{ 65ull << 20, 1, "idle", NULL, NULL, -EINVAL },    /* not 2 MiB multiple */
		{ 128ull << 30, 1, "idle", NULL, NULL, -E2BIG },    /* over the limit */
		{ 64ull << 20, 0, "idle", NULL, NULL, -EINVAL },
		{ 64ull << 20, 33, "idle", NULL, NULL, -EINVAL },
		{ 64ull << 20, 1, "nosuch", NULL, NULL, -ENOENT },
		{ 64ull << 20, 1, "idle", "/nonexistent/kvm", NULL, -ENOENT },
		{ 64ull << 20, 1, "idle", NULL, "/nonexistent/dir/console", -ENOENT },
	};
	long pages = sysconf(_SC_PHYS_PAGES);
	struct vm *vm;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct vm_config cfg = {
			.ram_bytes = cases[i].ram, .nvcpus = cases[i].nvcpus,
			.guest = cases[i].guest, .kvm_path = cases[i].kvm,
			.console_path = cases[i].console,
		};
		assert_int_equal(vm_create(&cfg, &vm), cases[i].err);
		assert_null(vm);
	}
	/*
	 * More than the host has (when the host has less than the limit): a
	 * warning, not an error - a sparse guest touches less, and RAM is
	 * allocated on first write (only --prealloc of it is refused, in
	 * `vmferry run`, test_cli).
	 */
	if (pages > 0 && (uint64_t)pages * 4096 < (62ull << 30)) {
		struct vm_config cfg = { .ram_bytes = 62ull << 30, .nvcpus = 1, .guest = "idle" };

		assert_int_equal(vm_create(&cfg, &vm), 0);
		assert_non_null(vm);
		vm_destroy(vm);
		vm = NULL;
	}
}

static void test_paused_start(void **state)
{
	struct vm_config cfg = {
		.ram_bytes = 8ull << 20, .nvcpus = 1, .guest = "incrementer",
		.console_path = "/dev/null", .start_paused = true,
	};
	struct vm *vm;

	(void)state;
	assert_int_equal(vm_create(&cfg, &vm), 0);
	assert_int_equal(vm_start(vm), 0);
	assert_int_equal(vm_get_runstate(vm), VM_RUNSTATE_PRELAUNCH);
	assert_int_equal(min_passes(vm), 0);
	assert_int_equal(vm_cont(vm), 0);
	wait_more_passes(vm, 1);
	vm_request_quit(vm);
	vm_wait(vm);
	vm_destroy(vm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_incrementer_two_vcpus),
		cmocka_unit_test(test_stop_cont_1000),
		cmocka_unit_test(test_one_gib_two_vcpus),
		cmocka_unit_test(test_guest_exit_code),
		cmocka_unit_test(test_crashes_reported),
		cmocka_unit_test(test_bad_configs),
		cmocka_unit_test(test_paused_start),
	};

	if (!harness_kvm_available())
		return 77;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
