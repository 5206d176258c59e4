/*
 * Unit tests: whether a nicer thread can be set back (thread_nice_reversible,
 * asked before a postcopy destination makes its vCPUs nicer): the rule for
 * every capability and RLIMIT_NICE, then the real process, in a child that
 * drops CAP_SYS_NICE so that the test process keeps it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <linux/capability.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/log.h"

static void test_rule(void **state)
{
	(void)state;
	/* RLIMIT_NICE 0 (the usual default): never back from nicer. */
	assert_false(nice_reversible_with(false, 0, 0));
	assert_false(nice_reversible_with(false, 0, 19));
	/* RLIMIT_NICE r allows down to 20 - r. */
	assert_true(nice_reversible_with(false, 10, 10));
	assert_false(nice_reversible_with(false, 10, 9));
	assert_true(nice_reversible_with(false, 20, 0));
	assert_true(nice_reversible_with(false, 40, -20));
	assert_true(nice_reversible_with(false, RLIM_INFINITY, -20));
	/* CAP_SYS_NICE: anything. */
	assert_true(nice_reversible_with(true, 0, -20));
}

/* This process, as it is, and without CAP_SYS_NICE. */
static void test_process(void **state)
{
	struct rlimit lim;
	pid_t pid;
	int status;

	(void)state;
	assert_int_equal(getrlimit(RLIMIT_NICE, &lim), 0);
	if (geteuid() == 0)
		assert_true(thread_nice_reversible(0));
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
		struct __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3];

		if (syscall(SYS_capget, &hdr, caps) != 0)
			_exit(10);
		caps[CAP_TO_INDEX(CAP_SYS_NICE)].effective &= ~CAP_TO_MASK(CAP_SYS_NICE);
		if (syscall(SYS_capset, &hdr, caps) != 0)
			_exit(11);
		_exit(thread_nice_reversible(0) == nice_reversible_with(false, lim.rlim_cur, 0) ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

/* This thread's scheduler slice from /proc (ns), or -1 where not shown. */
static long long own_slice(void)
{
	char path[64], line[256];
	long long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%d/sched", (int)syscall(SYS_gettid));
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, "se.slice", 8))
			sscanf(strchr(line, ':') + 1, "%lld", &v);
	fclose(f);
	return v;
}

static void *slice_thread(void *arg)
{
	long long *out = arg;

	out[0] = thread_set_short_slice(100000);
	out[1] = own_slice();
	return NULL;
}

/* A short slice is taken, in the normal policy (on a thread of its own). */
static void test_short_slice(void **state)
{
	long long got[2];
	pthread_t th;

	(void)state;
	assert_int_equal(pthread_create(&th, NULL, slice_thread, got), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(got[0], 0);
	{
		struct utsname u;
		int major = 0, minor = 0;

		uname(&u);
		sscanf(u.release, "%d.%d", &major, &minor);
		if (got[1] < 0 || major < 6 || (major == 6 && minor < 12)) {
			fprintf(stderr, "skipped the slice check: kernel %s takes no slice "
				"(Linux 6.12+) or does not show it\n", u.release);
			return;
		}
	}
	assert_int_equal(got[1], 100000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rule),
		cmocka_unit_test(test_process),
		cmocka_unit_test(test_short_slice),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
