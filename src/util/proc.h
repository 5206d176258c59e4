/*
 * Child processes for the benchmarks and the tests: run a command with a
 * bounded wait, and a janitor that runs clean-up commands once we are gone.
 * Everything here is async-signal-safe (fork, execv, waitpid, nanosleep),
 * so a signal handler may clean up with it.
 */
#ifndef VMFERRY_UTIL_PROC_H
#define VMFERRY_UTIL_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* A wait status as one number: the exit status, or 128 + the signal. */
int proc_decode_status(int raw);
/* Reap @pid within @timeout_ms, else SIGKILL it and reap: the decoded
 * status, -ETIMEDOUT (killed) or -errno. */
int proc_reap(pid_t pid, int timeout_ms);
/* Run @argv (argv[0] a path; stdin and stdout /dev/null, stderr too when
 * @quiet) within @timeout_ms: as proc_reap, -errno when it cannot fork. */
int proc_run(const char *const argv[], bool quiet, int timeout_ms);

/*
 * The janitor: a child in its own session (a terminal's Ctrl-C spares it)
 * that blocks on a pipe whose only write end we hold (close-on-exec: no
 * child of ours inherits it) and, when the read ends - we closed it, or we
 * died in a way no handler sees (SIGKILL, a sanitizer abort) - runs each of
 * the @ncmds commands @cmds (as proc_run, quietly), then exits.  The write
 * end, with the janitor's pid in *@pid; -errno when it cannot start.
 */
int proc_janitor_start(const char *const *const cmds[], size_t ncmds, int cmd_timeout_ms,
		       pid_t *pid);
/* Let the janitor run its commands now and reap it (it gets @timeout_ms). */
void proc_janitor_finish(int fd, pid_t pid, int timeout_ms);

#endif
