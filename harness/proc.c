/* Child processes: fork and exec, bounded reaping, captured runs; see harness.h. */
#include "harness/harness.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/log.h"
#include "util/proc.h"

#define HARNESS_CAPTURE_MAX_BYTES (1024 * 1024)

int harness_reap(pid_t pid, int timeout_ms, int *raw)
{
	uint64_t deadline = clock_monotonic_ns() + (uint64_t)timeout_ms * 1000000ull;

	for (;;) {
		pid_t r = waitpid(pid, raw, WNOHANG);

		if (r == pid)
			return proc_decode_status(*raw);
		if (r < 0 && errno != EINTR)
			return -errno;
		if (clock_monotonic_ns() >= deadline)
			return -ETIMEDOUT;
		harness_nap_ms(5);
	}
}

int harness_kill_reap(pid_t pid)
{
	int raw = 0;

	kill(pid, SIGKILL);
	while (waitpid(pid, &raw, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return proc_decode_status(raw);
}

pid_t harness_fork_exec(const char *const argv[], bool search_path, int in_fd, int out_fd,
			int err_fd)
{
	pid_t parent = getpid();
	pid_t pid = fork();

	if (pid != 0)
		return pid;
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
		_exit(127);
	if (in_fd < 0)
		in_fd = open("/dev/null", O_RDONLY);
	if (in_fd >= 0 && in_fd != 0)
		dup2(in_fd, 0);
	if (out_fd >= 0 && out_fd != 1)
		dup2(out_fd, 1);
	if (err_fd >= 0 && err_fd != 2)
		dup2(err_fd, 2);
	if (search_path)
		execvp(argv[0], (char *const *)argv);
	else
		execv(argv[0], (char *const *)argv);
	fprintf(stderr, "harness: cannot exec %s: %s\n", argv[0], strerror(errno));
	_exit(127);
}

/* Read up to HARNESS_CAPTURE_MAX_BYTES of @path into a new string. */
static char *harness_slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf = calloc(1, HARNESS_CAPTURE_MAX_BYTES + 1);
	size_t n = 0;

	if (f && buf)
		n = fread(buf, 1, HARNESS_CAPTURE_MAX_BYTES, f);
	if (buf)
		buf[n] = '\0';
	if (f)
		fclose(f);
	return buf;
}

int harness_run(const char *const args[], const char *stdin_text, int timeout_ms,
		struct harness_result *res)
{
	char in_path[HARNESS_PATH_BYTES], out_path[HARNESS_PATH_BYTES], err_path[HARNESS_PATH_BYTES];
	const char *argv[64];
	size_t n = 0;
	int in_fd = -1, out_fd = -1, err_fd = -1, raw = 0, rc;
	pid_t pid;

	memset(res, 0, sizeof(*res));
	argv[n++] = harness_binary();
	for (size_t i = 0; args[i]; i++) {
		if (n + 1 >= sizeof(argv) / sizeof(argv[0]))
			return -E2BIG;
		argv[n++] = args[i];
	}
	argv[n] = NULL;
	if ((rc = harness_unique_path(in_path, sizeof(in_path), "stdin")) < 0 ||
	    (rc = harness_unique_path(out_path, sizeof(out_path), "stdout")) < 0 ||
	    (rc = harness_unique_path(err_path, sizeof(err_path), "stderr")) < 0)
		return rc;
	if (stdin_text) {
		FILE *f = fopen(in_path, "w");

		if (!f)
			return -errno;
		fputs(stdin_text, f);
		if (fclose(f) != 0)
			return -EIO;
		in_fd = open(in_path, O_RDONLY | O_CLOEXEC);
	}
	out_fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	err_fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if ((stdin_text && in_fd < 0) || out_fd < 0 || err_fd < 0) {
		rc = -errno;
		goto out;
	}
	pid = harness_fork_exec(argv, false, in_fd, out_fd, err_fd);
	if (pid < 0) {
		rc = -errno;
		goto out;
	}
	rc = harness_reap(pid, timeout_ms, &raw);
	if (rc == -ETIMEDOUT) {
		fprintf(stderr, "harness: '%s %s' still running after %d ms; killing it\n",
			argv[0], argv[1] ? argv[1] : "", timeout_ms);
		harness_kill_reap(pid);
	}
	res->status = rc;
	res->out = harness_slurp(out_path);
	res->err = harness_slurp(err_path);
	rc = res->out && res->err ? 0 : -ENOMEM;
	if (rc < 0)
		harness_result_free(res);
out:
	if (in_fd >= 0)
		close(in_fd);
	if (out_fd >= 0)
		close(out_fd);
	if (err_fd >= 0)
		close(err_fd);
	unlink(in_path);
	unlink(out_path);
	unlink(err_path);
	return rc;
}

void harness_result_free(struct harness_result *res)
{
	free(res->out);
	free(res->err);
	res->out = res->err = NULL;
}

int harness_cmd(const char *const argv[], bool quiet, int timeout_ms)
{
	return proc_run(argv, quiet, timeout_ms);
}
