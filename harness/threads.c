/* The VMM's threads as /proc shows them; see harness.h. */
#include "harness/harness.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Call @fn(@name, @fields, @opaque) for each thread of @vm's VMM, with its
 * command name and the stat fields after it (field 3, the state, first; the
 * name may hold spaces, so it is cut out by its parentheses).  The number of
 * threads seen, or -errno.
 */
static int harness_for_each_thread(struct harness_vm *vm,
				   void (*fn)(int tid, const char *name, char *fields, void *opaque),
				   void *opaque)
{
	char path[64];
	struct dirent *e;
	DIR *d;
	int n = 0;

	if (vm->pid <= 0)
		return -ESRCH;
	snprintf(path, sizeof(path), "/proc/%d/task", (int)vm->pid);
	d = opendir(path);
	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		char stat_path[sizeof(path) + 280], buf[1024], *open_paren, *close_paren;
		FILE *f;
		size_t len;

		if (e->d_name[0] == '.')
			continue;
		snprintf(stat_path, sizeof(stat_path), "%s/%s/stat", path, e->d_name);
		f = fopen(stat_path, "r");
		if (!f)
			continue; /* the thread ended meanwhile */
		len = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[len] = 0;
		open_paren = strchr(buf, '(');
		close_paren = strrchr(buf, ')');
		if (!open_paren || !close_paren || close_paren < open_paren)
			continue;
		*close_paren = 0;
		fn(atoi(e->d_name), open_paren + 1, close_paren + 1, opaque);
		n++;
	}
	closedir(d);
	return n;
}

/* Stat field @want (1-based, as in proc(5)) of @fields (field 3 first); 0 if absent. */
static long long harness_stat_field(char *fields, int want)
{
	char *save = NULL;
	int field = 3;

	for (char *p = strtok_r(fields, " ", &save); p; p = strtok_r(NULL, " ", &save), field++)
		if (field == want)
			return atoll(p);
	return 0;
}

struct harness_rt_scan {
	const char *prefix;
	int n;
};

static void harness_count_realtime(int tid, const char *name, char *fields, void *opaque)
{
	(void)tid;
	struct harness_rt_scan *s = opaque;
	long long policy;

	if (strncmp(name, s->prefix, strlen(s->prefix)))
		return;
	policy = harness_stat_field(fields, 41);
	/* Real-time: SCHED_FIFO (1), SCHED_RR (2), SCHED_DEADLINE (6).
	 * SCHED_IDLE (5: release-ram's thread) starves nobody. */
	s->n += policy == 1 || policy == 2 || policy == 6;
}

struct harness_policy_scan {
	const char *prefix;
	int policy, n;
};

static void harness_count_policy(int tid, const char *name, char *fields, void *opaque)
{
	(void)tid;
	struct harness_policy_scan *s = opaque;

	if (!strncmp(name, s->prefix, strlen(s->prefix)) && harness_stat_field(fields, 41) == s->policy)
		s->n++;
}

int harness_threads_with_policy(struct harness_vm *vm, const char *prefix, int policy)
{
	struct harness_policy_scan s = { .prefix = prefix, .policy = policy };
	int r = harness_for_each_thread(vm, harness_count_policy, &s);

	return r < 0 ? r : s.n;
}

int harness_realtime_threads_named(struct harness_vm *vm, const char *prefix)
{
	struct harness_rt_scan s = { .prefix = prefix };
	int r = harness_for_each_thread(vm, harness_count_realtime, &s);

	return r < 0 ? r : s.n;
}

struct harness_slice_scan {
	int pid;
	const char *prefix;
	int64_t slice;
};

static void harness_scan_slice(int tid, const char *name, char *fields, void *opaque)
{
	struct harness_slice_scan *s = opaque;
	char path[96], line[256];
	FILE *f;

	(void)fields;
	if (s->slice != -ENOENT || strncmp(name, s->prefix, strlen(s->prefix)))
		return;
	snprintf(path, sizeof(path), "/proc/%d/task/%d/sched", s->pid, tid);
	f = fopen(path, "r");
	if (!f)
		return; /* the thread ended meanwhile */
	s->slice = -ENODATA; /* a kernel without the field */
	while (fgets(line, sizeof(line), f)) {
		long long v;

		if (!strncmp(line, "se.slice", 8) && sscanf(strchr(line, ':') + 1, "%lld", &v) == 1)
			s->slice = v;
	}
	fclose(f);
}

int64_t harness_thread_slice_ns(struct harness_vm *vm, const char *prefix)
{
	struct harness_slice_scan s = { .pid = (int)vm->pid, .prefix = prefix, .slice = -ENOENT };
	int r = harness_for_each_thread(vm, harness_scan_slice, &s);

	return r < 0 ? r : s.slice;
}

int harness_realtime_threads(struct harness_vm *vm)
{
	return harness_realtime_threads_named(vm, "");
}

struct harness_nice_scan {
	const char *prefix;
	int count, min, max;
};

static void harness_scan_nice(int tid, const char *name, char *fields, void *opaque)
{
	(void)tid;
	struct harness_nice_scan *s = opaque;
	int nice;

	if (strncmp(name, s->prefix, strlen(s->prefix)))
		return;
	nice = (int)harness_stat_field(fields, 19);
	if (!s->count || nice < s->min)
		s->min = nice;
	if (!s->count || nice > s->max)
		s->max = nice;
	s->count++;
}

int harness_threads_nice(struct harness_vm *vm, const char *prefix, int *min, int *max)
{
	struct harness_nice_scan s = { .prefix = prefix };
	int r = harness_for_each_thread(vm, harness_scan_nice, &s);

	if (r < 0)
		return r;
	*min = s.min;
	*max = s.max;
	return s.count;
}
