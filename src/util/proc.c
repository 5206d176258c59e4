#include "util/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int proc_decode_status(int raw)
{
	if (WIFEXITED(raw))
		return WEXITSTATUS(raw);
	if (WIFSIGNALED(raw))
		return 128 + WTERMSIG(raw);
	return -EINVAL;
}

int proc_reap(pid_t pid, int timeout_ms)
{
	struct timespec tick = { 0, 1000000L };
	int raw = 0;

	for (int waited_ms = 0;; waited_ms++) {
		pid_t r = waitpid(pid, &raw, WNOHANG);

		if (r == pid)
			return proc_decode_status(raw);
		if (r < 0 && errno != EINTR)
			return -errno;
		if (waited_ms >= timeout_ms)
			break;
		nanosleep(&tick, NULL);
	}
	kill(pid, SIGKILL);
	while (waitpid(pid, &raw, 0) < 0 && errno == EINTR)
		;
	return -ETIMEDOUT;
}

/* In a child: stdin and stdout (and stderr when @quiet) to /dev/null. */
static void proc_quiet_stdio(bool quiet)
{
	int null_fd = open("/dev/null", O_RDWR);

	if (null_fd < 0)
		return;
	dup2(null_fd, 0);
	dup2(null_fd, 1);
	if (quiet)
		dup2(null_fd, 2);
}

int proc_run(const char *const argv[], bool quiet, int timeout_ms)
{
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		proc_quiet_stdio(quiet);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	return proc_reap(pid, timeout_ms);
}

int proc_janitor_start(const char *const *const cmds[], size_t ncmds, int cmd_timeout_ms,
		       pid_t *pid)
{
	int fds[2], err;

	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	*pid = fork();
	if (*pid < 0) {
		err = -errno;
		close(fds[0]);
		close(fds[1]);
		return err;
	}
	if (*pid == 0) {
		char byte;

		close(fds[1]);
		setsid();
		signal(SIGINT, SIG_IGN);
		signal(SIGTERM, SIG_IGN);
		signal(SIGHUP, SIG_IGN);
		proc_quiet_stdio(true);
		while (read(fds[0], &byte, 1) < 0 && errno == EINTR)
			;
		for (size_t i = 0; i < ncmds; i++)
			proc_run(cmds[i], true, cmd_timeout_ms);
		_exit(0);
	}
	close(fds[0]);
	return fds[1];
}

void proc_janitor_finish(int fd, pid_t pid, int timeout_ms)
{
	close(fd);
	proc_reap(pid, timeout_ms);
}
