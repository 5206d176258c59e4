/*
 * The program's name, its temporary directory, small waits, and the
 * cleanup at exit and on signals; see harness.h.
 */
#include "harness/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/proc.h"

#define HARNESS_MAX_CHILDREN 8
#define HARNESS_MAX_NETNS 2
#define HARNESS_RM_TIMEOUT_MS 10000
#define HARNESS_KILL_REAP_MS 1000

/* Set once by harness_init(), before anything else. */
static const char *harness_name = "test";
static const char *harness_keep_env = "VMTEST_KEEP";
static bool harness_quiet;

/*
 * What harness_cleanup() must undo.  File scope because a signal handler
 * can reach nothing else; written by the main thread only.
 */
static char harness_tmp[64];
static const char *harness_rm_argv[4];
static unsigned harness_counter;
static volatile pid_t harness_children[HARNESS_MAX_CHILDREN];  /* 0: free */
static struct harness_netns *volatile harness_live_netns[HARNESS_MAX_NETNS];

void harness_init(const char *prog, const char *keep_env, bool print_errors)
{
	harness_name = prog;
	harness_keep_env = keep_env;
	harness_quiet = !print_errors;
}

const char *harness_prog(void)
{
	return harness_name;
}

void harness_say(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", harness_name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

void harness_vm_fail(struct harness_vm *vm, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(vm->error, sizeof(vm->error), fmt, ap);
	va_end(ap);
	if (!harness_quiet)
		harness_say("%s", vm->error);
}

void harness_nap_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int harness_kvm_available(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0) {
		fprintf(stderr, "SKIP: /dev/kvm not available: %s\n", strerror(errno));
		return 0;
	}
	close(fd);
	return 1;
}

/* rm -rf the directory unless kept.  Async-signal-safe but for getenv. */
static void harness_remove_dir(void)
{
	if (!harness_tmp[0] || (harness_keep_env && getenv(harness_keep_env)))
		return;
	proc_run(harness_rm_argv, true, HARNESS_RM_TIMEOUT_MS);
	harness_tmp[0] = '\0';
}

const char *harness_dir(void)
{
	if (harness_tmp[0])
		return harness_tmp;
	snprintf(harness_tmp, sizeof(harness_tmp), "/tmp/vmferry-%.20s.XXXXXX", harness_name);
	if (!mkdtemp(harness_tmp)) {
		harness_say("mkdtemp: %s", strerror(errno));
		harness_tmp[0] = '\0';
		return NULL;
	}
	harness_rm_argv[0] = "/bin/rm";
	harness_rm_argv[1] = "-rf";
	harness_rm_argv[2] = harness_tmp;
	harness_rm_argv[3] = NULL;
	atexit(harness_remove_dir);
	return harness_tmp;
}

int harness_unique_path(char *buf, size_t len, const char *tag)
{
	const char *dir = harness_dir();
	int n;

	if (!dir)
		return -EIO;
	n = snprintf(buf, len, "%s/%s-%u", dir, tag, ++harness_counter);
	if (n < 0 || (size_t)n >= len)
		return -ENAMETOOLONG;
	return 0;
}

const char *harness_binary(void)
{
	const char *bin = getenv("VMFERRY_BIN");

	return bin && *bin ? bin : "build/vmferry";
}

/* ---- what harness_cleanup() undoes ---- */

void harness_child_add(pid_t pid)
{
	for (int i = 0; i < HARNESS_MAX_CHILDREN; i++)
		if (!harness_children[i]) {
			harness_children[i] = pid;
			return;
		}
}

void harness_child_del(pid_t pid)
{
	for (int i = 0; i < HARNESS_MAX_CHILDREN; i++)
		if (harness_children[i] == pid)
			harness_children[i] = 0;
}

void harness_netns_add(struct harness_netns *p)
{
	for (int i = 0; i < HARNESS_MAX_NETNS; i++)
		if (!harness_live_netns[i]) {
			harness_live_netns[i] = p;
			return;
		}
}

void harness_netns_del(struct harness_netns *p)
{
	for (int i = 0; i < HARNESS_MAX_NETNS; i++)
		if (harness_live_netns[i] == p)
			harness_live_netns[i] = NULL;
}

void harness_cleanup(void)
{
	for (int i = 0; i < HARNESS_MAX_CHILDREN; i++) {
		pid_t pid = harness_children[i];

		if (pid > 0) {
			kill(pid, SIGKILL);
			proc_reap(pid, HARNESS_KILL_REAP_MS);
			harness_children[i] = 0;
		}
	}
	for (int i = 0; i < HARNESS_MAX_NETNS; i++)
		if (harness_live_netns[i])
			harness_netns_destroy(harness_live_netns[i]);
	harness_remove_dir();
}

static void harness_on_signal(int sig)
{
	harness_cleanup();
	signal(sig, SIG_DFL);
	raise(sig);
}

int harness_cleanup_on_exit(void)
{
	if (!harness_dir())
		return -EIO;
	atexit(harness_cleanup);
	signal(SIGINT, harness_on_signal);
	signal(SIGTERM, harness_on_signal);
	signal(SIGHUP, harness_on_signal);
	signal(SIGPIPE, SIG_IGN);
	return 0;
}
