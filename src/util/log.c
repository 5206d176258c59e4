#include "util/log.h"

#include <errno.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static _Atomic int log_level_current = 0; /* 0 = not yet read from env */

static const char *const log_level_names[] = {
	[LOG_ERROR] = "error", [LOG_WARN] = "warn",
	[LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

/* As printed; log_level_names are what VMFERRY_LOG takes. */
static const char *const log_level_words[] = {
	[LOG_ERROR] = "error", [LOG_WARN] = "warning",
	[LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

static const char *log_prefix = "vmferry";

void log_set_prefix(const char *prefix)
{
	log_prefix = prefix;
}

void log_set_level(enum log_level level)
{
	log_level_current = (int)level;
}

enum log_level log_get_level(void)
{
	int lvl = log_level_current;

	if (lvl == 0) {
		const char *env = getenv("VMFERRY_LOG");

		lvl = LOG_INFO;
		for (int i = LOG_ERROR; env && i <= LOG_DEBUG; i++)
			if (strcmp(env, log_level_names[i]) == 0)
				lvl = i;
		log_level_current = lvl;
	}
	return (enum log_level)lvl;
}

uint64_t clock_monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

bool nice_reversible_with(bool cap_sys_nice, uint64_t rlimit_nice, int nice)
{
	/* RLIMIT_NICE r allows nice values down to 20 - r (RLIM_INFINITY: any). */
	return cap_sys_nice || rlimit_nice >= 40 || 20 - (int)rlimit_nice <= nice;
}

bool thread_nice_reversible(int nice)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3];
	struct rlimit lim;
	bool cap;

	cap = syscall(SYS_capget, &hdr, caps) == 0 &&
	      (caps[CAP_TO_INDEX(CAP_SYS_NICE)].effective & CAP_TO_MASK(CAP_SYS_NICE));
	if (getrlimit(RLIMIT_NICE, &lim) < 0)
		lim.rlim_cur = 0;
	return nice_reversible_with(cap, lim.rlim_cur, nice);
}

uint64_t clock_thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t clock_realtime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	if ((int)level > (int)log_get_level())
		return;
	n = snprintf(line, sizeof(line), "%s: %s: ", log_prefix, log_level_words[level]);
	if (n < 0 || (size_t)n >= sizeof(line))
		n = 0;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	/* One fprintf per message so lines from threads do not interleave. */
	fprintf(stderr, "%s\n", line);
}

static void thread_boost_priority_of(pid_t tid, int boost)
{
	/* PRIO_PROCESS with a thread id applies to that thread alone on Linux. */
	if (setpriority(PRIO_PROCESS, (id_t)tid, -boost) < 0)
		log_debug("thread priority unchanged: %s", strerror(errno));
}

void thread_boost_priority(int boost)
{
	thread_boost_priority_of((pid_t)syscall(SYS_gettid), boost);
}

void thread_set_latency_critical(bool on)
{
	thread_set_latency_critical_of((pid_t)syscall(SYS_gettid), on);
}

void thread_set_latency_critical_of(pid_t tid, bool on)
{
	struct sched_param sp = { .sched_priority = on ? 1 : 0 };

	/*
	 * The lowest real-time priority: it runs as soon as it wakes instead
	 * of waiting for a time slice behind the bulk threads.  Each such
	 * thread handles one short message and blocks again; the kernel's
	 * real-time throttling bounds it should it ever spin.
	 */
	if (sched_setscheduler(tid, on ? SCHED_FIFO : SCHED_OTHER, &sp) != 0 || !on)
		thread_boost_priority_of(tid, on ? 10 : 0);
}

int thread_set_short_slice(uint64_t slice_ns)
{
	return thread_set_short_slice_of(0, slice_ns);
}

int thread_set_short_slice_of(pid_t tid, uint64_t slice_ns)
{
	/* struct sched_attr as the kernel takes it (glibc has no wrapper). */
	struct {
		uint32_t size, sched_policy;
		uint64_t sched_flags;
		int32_t sched_nice;
		uint32_t sched_priority;
		uint64_t sched_runtime, sched_deadline, sched_period;
	} attr = { .size = sizeof(attr), .sched_policy = SCHED_OTHER, .sched_runtime = slice_ns };

	return syscall(SYS_sched_setattr, tid, &attr, 0) < 0 ? -errno : 0;
}

void thread_make_latency_critical(void)
{
	thread_set_latency_critical(true);
}
