/* Logging to stderr with a level and a monotonic timestamp.  Any thread. */
#ifndef VMFERRY_UTIL_LOG_H
#define VMFERRY_UTIL_LOG_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

enum log_level { LOG_ERROR = 1, LOG_WARN, LOG_INFO, LOG_DEBUG };

/*
 * Every message starts with "PREFIX: LEVEL: "; the prefix is "vmferry"
 * until set (main sets "vmferry SUBCOMMAND", the convention for all its
 * messages).  @prefix must stay valid; set it before starting threads.
 */
void log_set_prefix(const char *prefix);

/* Messages above this level are dropped; default LOG_INFO, VMFERRY_LOG env. */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
void log_msg(enum log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/*
 * Raise the calling thread's scheduling priority (nice -@boost) for threads
 * on a latency path (postcopy page requests).  Best effort: without
 * CAP_SYS_NICE it silently stays as it is.
 */
void thread_boost_priority(int boost);
/*
 * Make the calling thread latency-critical (SCHED_FIFO, lowest real-time
 * priority; needs CAP_SYS_NICE, else a nice boost of 10): for threads on a
 * page-fault path that a vCPU waits for.
 */
void thread_make_latency_critical(void);
/*
 * The same switched on or off for the calling thread: off puts it back to
 * the normal policy at nice 0.  The destination's page-path threads follow
 * the vCPUs: real-time only while the vCPUs run at full priority (see
 * docs/migration.md).
 */
void thread_set_latency_critical(bool on);
/* The same for thread @tid of this process (a kernel thread id, gettid). */
void thread_set_latency_critical_of(pid_t tid, bool on);
/*
 * Put the calling thread in the normal policy at nice 0 with a scheduler
 * slice of @slice_ns (EEVDF's request size, Linux 6.12+; older kernels take
 * and ignore it): a thread that wakes with a short slice gets an early
 * deadline and runs before threads with the default one.  0 or -errno.
 */
int thread_set_short_slice(uint64_t slice_ns);
/* The same for thread @tid of this process (0: the calling thread). */
int thread_set_short_slice_of(pid_t tid, uint64_t slice_ns);
/*
 * Whether this process may set a thread back to nice @nice once it has made
 * it nicer: always with CAP_SYS_NICE, else only down to 20 - RLIMIT_NICE.
 * Lowering a priority is allowed to anyone, raising it again is not, so
 * whoever lowers one for a while asks this first.
 */
bool thread_nice_reversible(int nice);
/* The rule behind it, for a given capability and RLIMIT_NICE. */
bool nice_reversible_with(bool cap_sys_nice, uint64_t rlimit_nice, int nice);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t clock_monotonic_ns(void);
/* CPU time the calling thread has used, in nanoseconds. */
uint64_t clock_thread_cpu_ns(void);
/* CLOCK_REALTIME in nanoseconds. */
uint64_t clock_realtime_ns(void);

#endif
