/*
 * The VMM harness the tests and the benchmarks share (build/libharness.a):
 * KVM detection, unique temporary paths, spawning `vmferry run` with a
 * control socket, control calls, bounded waits, checking guest memory with
 * the workload verifiers, the VMM's threads, and two simulated hosts
 * (network namespaces) with a janitor.
 *
 * Every wait is bounded; every process started is reaped.  Single-threaded
 * use (one program's main thread).
 */
#ifndef VMFERRY_HARNESS_H
#define VMFERRY_HARNESS_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct control_client;
struct json_object;

#define HARNESS_PATH_BYTES 108 /* fits sockaddr_un.sun_path */
#define HARNESS_SKIP 77        /* exit status of a skipped test */

struct harness_vm {
	pid_t pid;                           /* -1 once reaped */
	int exit_status;                     /* see harness_wait_exit(); valid once reaped */
	char name[16];                       /* harness_vm_opts.name: in messages and file names */
	char sock_path[HARNESS_PATH_BYTES];
	char console_path[HARNESS_PATH_BYTES];
	char log_path[HARNESS_PATH_BYTES];   /* "" unless harness_vm_opts.log */
	struct control_client *client;       /* owned; NULL once closed */
	char error[256];                     /* the last failure on this VM, in words */
};

/* ---- the program ---- */

/*
 * Name the program: @prog prefixes messages and the temporary directory
 * (/tmp/vmferry-<prog>.XXXXXX); the directory is kept at exit when the
 * variable @keep_env is set; a failure on a VM goes to stderr as well as
 * to vm->error when @print_errors.  Before any other harness call, or not
 * at all: the tests run with "test", "VMTEST_KEEP" and true.
 */
void harness_init(const char *prog, const char *keep_env, bool print_errors);
const char *harness_prog(void);

/*
 * This process's temporary directory (VMM sockets, consoles, logs, memory
 * dumps), made on first use and removed at exit (see harness_init); NULL
 * when it cannot be made (said on stderr).
 */
const char *harness_dir(void);

/*
 * Kill the VMMs still running, delete the namespaces still there (see
 * harness_netns_create) and remove the temporary directory.  Idempotent
 * and async-signal-safe (but for getenv).
 */
void harness_cleanup(void);
/*
 * Make the temporary directory now, and run harness_cleanup() at exit and
 * on SIGINT, SIGTERM and SIGHUP; SIGPIPE ignored.  Main thread, once.  0 or
 * -errno.
 */
int harness_cleanup_on_exit(void);

/*
 * 1 if /dev/kvm opens read-write; else prints
 * "SKIP: /dev/kvm not available: <reason>" on stderr and returns 0.
 */
int harness_kvm_available(void);

/*
 * A fresh path "<dir>/<tag>-<n>" in harness_dir().  The file does not
 * exist yet.  0, -ENAMETOOLONG, or -EIO without a directory.
 */
int harness_unique_path(char *buf, size_t len, const char *tag);

/* The vmferry binary: $VMFERRY_BIN, else "build/vmferry". */
const char *harness_binary(void);

/* Sleep @ms milliseconds, through signals. */
void harness_nap_ms(unsigned ms);

/* ---- child processes ---- */

/*
 * fork + exec @argv[0] with @argv (looked up in PATH when @search_path, else
 * a path as is), stdin/stdout/stderr from the given fds (-1: inherit, except
 * stdin which becomes /dev/null).  The child dies with us (PDEATHSIG), so a
 * crashed program leaves no VM; `ip netns exec` execs its command in the
 * same process, so that holds through it too.  The pid, or -1 with errno.
 */
pid_t harness_fork_exec(const char *const argv[], bool search_path, int in_fd, int out_fd,
			int err_fd);
/* Reap @pid within @timeout_ms: decoded status (proc_decode_status) in the
 * return value and the raw one in *raw, or -ETIMEDOUT (still running). */
int harness_reap(pid_t pid, int timeout_ms, int *raw);
/* SIGKILL and reap (a killed child goes promptly): the decoded status. */
int harness_kill_reap(pid_t pid);

/* ---- the VMM ---- */

/* How harness_spawn_start() starts a VMM; zeroes are the defaults. */
struct harness_vm_opts {
	const char *bin;                /* the vmferry binary; NULL: harness_binary() */
	const char *const *prefix;      /* a command before it (see harness_spawn_prefixed) */
	const char *name;               /* in messages and file names; NULL: "vm" */
	bool log;                       /* stdout and stderr into vm->log_path */
	bool no_console;                /* --console /dev/null */
};

/*
 * Start `vmferry run --control SOCK --console CONSOLE <extra_args...>`
 * (@extra_args NULL-terminated, may be NULL) and connect to its control
 * socket within 10 s.  0 with *out filled, or -errno (the child, if any, has
 * been killed and reaped; -ECHILD when it exited by itself).
 */
int harness_spawn(struct harness_vm *out, const char *const extra_args[]);

/*
 * harness_spawn() with the command line after @prefix (NULL-terminated, may
 * be NULL), e.g. {"ip", "netns", "exec", NS, NULL} to run the VMM in a
 * network namespace.  @prefix[0] is looked up in PATH; the prefix command
 * must exec the VMM in its own process (as `ip netns exec` does), since the
 * pid kept is the one forked.
 */
int harness_spawn_prefixed(struct harness_vm *out, const char *const prefix[],
			   const char *const extra_args[]);

/*
 * The two halves of harness_spawn_prefixed(): start the process as @opts
 * says (NULL: the defaults; not connected yet: a VMM with --incoming-cpr
 * serves its control socket only after the live update handed it guest
 * RAM), and connect within @timeout_ms (on failure the child is killed and
 * reaped).  0 or -errno, with vm->error set.
 */
int harness_spawn_start(struct harness_vm *out, const struct harness_vm_opts *opts,
			const char *const extra_args[]);
int harness_connect(struct harness_vm *out, int timeout_ms);

/*
 * Wait up to @timeout_ms for the child to exit, reap it and close its
 * control client.  Returns its
 * exit code, 128+N when killed by signal N, or -ETIMEDOUT (still running).
 * Also returns the saved status when already reaped.
 */
int harness_wait_exit(struct harness_vm *vm, int timeout_ms);

/*
 * Send quit, close the client, wait up to 10 s for the exit (SIGKILL after
 * that).  Returns the exit status as harness_wait_exit(), or -ETIMEDOUT when
 * it had to be killed.  Safe on an already reaped VM.
 */
int harness_vm_quit(struct harness_vm *vm);

/* SIGKILL, reap, close the client.  Returns the status as above. */
int harness_vm_kill(struct harness_vm *vm);

/* The last 2 KiB of @vm's log (harness_vm_opts.log) on stderr, headed by @label. */
void harness_vm_log_tail(const struct harness_vm *vm, const char *label);

/* What query-workload says about the guest's vCPUs. */
struct harness_workload {
	unsigned nvcpus;
	bool running;            /* every vCPU in phase "running" (false without vCPUs) */
	uint64_t min_passes;     /* the fewest passes over its memory of any vCPU */
	uint64_t progress;       /* passes + writes, summed over the vCPUs: grows while it runs */
};
/* query-workload into *w.  0, -EPROTO (a reply without vcpus, phase or passes), other -errno. */
int harness_workload(struct harness_vm *vm, struct harness_workload *w);

/*
 * From query-workload: the smallest "passes" over all vCPUs in *min_passes.
 * 0, -EAGAIN when some vCPU is not in phase "running" yet, other -errno.
 */
int harness_workload_passes(struct harness_vm *vm, uint64_t *min_passes);

/*
 * Poll query-workload (short sleeps between calls) until every vCPU is
 * "running" with passes >= @passes.  0, -ETIMEDOUT after @timeout_ms, or the
 * error of the query.
 */
int harness_wait_passes(struct harness_vm *vm, uint64_t passes, int timeout_ms);

/*
 * dump-guest-memory to a unique file, verify_incrementer_file() on it,
 * unlink it.  0 when consistent, -EBADMSG when broken (the verdict in
 * vm->error), other -errno.
 */
int harness_verify_incrementer(struct harness_vm *vm);

/*
 * Same with verify_guest_file(): checks whichever workload the guest runs
 * (incrementer or dirtier).  0 when consistent, -EBADMSG when broken,
 * -ENOTSUP when the workload has no verifier (the verdict in vm->error for
 * both), other -errno.
 */
int harness_verify_memory(struct harness_vm *vm);

/* ---- JSON replies: a member of @o, or a value that says it is absent ---- */

const char *harness_json_str(struct json_object *o, const char *key);   /* "" */
int64_t harness_json_int(struct json_object *o, const char *key);       /* -1 */
uint64_t harness_json_u64(struct json_object *o, const char *key);      /* 0 */
double harness_json_double(struct json_object *o, const char *key, double absent);

/* ---- migration ---- */

/* migrate-set-capabilities for one capability; 0 or the harness_call error. */
int harness_set_capability(struct harness_vm *vm, const char *name, bool on);
/* migrate-set-parameters with the JSON text @json; 0 or the harness_call error. */
int harness_set_params(struct harness_vm *vm, const char *json);
/* migrate to @uri; 0 or the harness_call error. */
int harness_migrate(struct harness_vm *src, const char *uri);
/* migrate with the channels main (@main_uri) and cpr (@cpr_uri, NULL: none); the same. */
int harness_migrate_channels(struct harness_vm *old, const char *main_uri, const char *cpr_uri);
/*
 * The destination's listening URI with its real port (not ":0"), polled
 * for up to @timeout_ms (VMMs before 2318e44 answered on the control socket
 * before binding).  0, -ETIMEDOUT, or the harness_call error.
 */
int harness_incoming_uri(struct harness_vm *dst, char *uri, size_t len, int timeout_ms);
/*
 * Poll query-migrate every @poll_ms until a final status (completed,
 * failed, cancelled); that reply in *reply (caller owns).  0, -ETIMEDOUT
 * after @timeout_ms, or the harness_call error.
 */
int harness_wait_migration(struct harness_vm *src, int timeout_ms, int poll_ms,
			   struct json_object **reply);
/* The same until the status is @status. */
int harness_wait_migrate_status(struct harness_vm *vm, const char *status, int timeout_ms,
				int poll_ms);

/*
 * Call @command (args borrowed, may be NULL) and return its "return" value
 * in *ret (caller owns; may be NULL to discard).  0, -EREMOTEIO (error reply,
 * its desc in vm->error), other -errno.
 */
int harness_call(struct harness_vm *vm, const char *command, struct json_object *args,
		 struct json_object **ret);

/*
 * How many threads of the VMM run with a real-time scheduling policy
 * (FIFO, RR, deadline): none may once a migration is over and the guest
 * just runs (page-fault threads are real-time only for the migration).
 * The count, or -errno.
 */
int harness_realtime_threads(struct harness_vm *vm);
/* The same among the threads whose name starts with @prefix. */
int harness_realtime_threads_named(struct harness_vm *vm, const char *prefix);
/* The scheduler slice (ns, /proc's se.slice) of the first thread whose name
 * starts with @prefix; -ENOENT without such a thread, -ENODATA when the
 * kernel does not show it, or -errno. */
int64_t harness_thread_slice_ns(struct harness_vm *vm, const char *prefix);
/* How many of the threads whose name starts with @prefix run in scheduling
 * @policy (SCHED_IDLE, ...), or -errno. */
int harness_threads_with_policy(struct harness_vm *vm, const char *prefix, int policy);
/*
 * The lowest and highest nice value among the VMM's threads whose name
 * starts with @prefix ("vcpu" for the vCPU threads).  The number of such
 * threads (0: *min and *max untouched), or -errno.
 */
int harness_threads_nice(struct harness_vm *vm, const char *prefix, int *min, int *max);

struct harness_result {
	int status;  /* exit code, 128+signal, or -ETIMEDOUT when killed */
	char *out;   /* stdout, NUL-terminated (at most 1 MiB kept) */
	char *err;   /* stderr, likewise */
};

/*
 * Run `vmferry <args...>` (@args NULL-terminated) with @stdin_text (may be
 * NULL: /dev/null) and capture its output, killing it after @timeout_ms.
 * 0 with *res filled (free with harness_result_free), or -errno.
 */
int harness_run(const char *const args[], const char *stdin_text, int timeout_ms,
		struct harness_result *res);
void harness_result_free(struct harness_result *res);

/* ---- a path that breaks: a TCP relay ---- */

/*
 * A TCP relay on 127.0.0.1 (its own thread): every connection to its port
 * is forwarded to 127.0.0.1:@up_port.  The stand-in for a network path a
 * test breaks on purpose.  0 with *out, or -errno.  Main thread.
 */
struct harness_relay;
int harness_relay_start(int up_port, struct harness_relay **out);
/* The port it listens on. */
int harness_relay_port(const struct harness_relay *r);
/* Close every forwarded connection at once, and keep listening (a link
 * that fails and comes back).  Asynchronous: harness_relay_cuts() counts
 * the cuts done. */
void harness_relay_cut(struct harness_relay *r);
/* Read what the connecting side sends at most @bytes_per_s (0: stop
 * reading it, so its socket fills; UINT64_MAX: unlimited, the default).
 * The other direction is never throttled. */
void harness_relay_throttle(struct harness_relay *r, uint64_t bytes_per_s);
unsigned harness_relay_accepted(const struct harness_relay *r);
unsigned harness_relay_cuts(const struct harness_relay *r);
/* Close everything, join the thread, free.  NULL is a no-op. */
void harness_relay_stop(struct harness_relay *r);

/* ---- two simulated hosts ---- */

/* How the two hosts are joined. */
enum harness_link {
	HARNESS_LINK_VETH,       /* a veth pair, 10.199.X.1/24 and 10.199.X.2/24 */
	HARNESS_LINK_TUN,        /* TUN devices, point to point, MTU HARNESS_TUN_MTU:
				  * a user-space program moves the packets (bench/wire.h) */
};
#define HARNESS_TUN_MTU 9000u    /* jumbo frames, as migration networks use */

/*
 * Network namespaces "vmf<tag>-<pid>-a" and "-b" (the tag says who made
 * them: 't' tests, 'b' benchmarks), with the addresses 10.199.X.1 in a and
 * 10.199.X.2 in b (X from the pid) on the link, links and loopback up.
 * Needs root and iproute2.
 */
struct harness_netns {
	char ns[2][32];
	char dev[2][16];         /* the link's device; dev[i] lives in ns[i] */
	char addr[2][16];        /* without the prefix length */
	char ip_path[32];        /* the ip binary, resolved once */
	const char *del_argv[2][5]; /* prebuilt `ip netns del`, for signal handlers */
	volatile sig_atomic_t created[2]; /* ns[i] exists (set/cleared by create/destroy) */
	pid_t janitor_pid;       /* > 0 while the janitor (see create) runs */
	int janitor_fd;          /* its pipe's write end; valid while janitor_pid > 0 */
};

/*
 * Create the two hosts joined by @link.  0; -EPERM when `ip netns add` fails (not root, no
 * netns support: callers skip); -ENOENT without an ip binary; -EIO when a
 * later step fails (whatever was made is removed again).  The names are
 * filled in before anything is created, so harness_netns_destroy() is always
 * safe on @p afterwards.
 *
 * A janitor process (its own session, so a terminal's Ctrl-C spares it)
 * waits on a pipe and deletes the namespaces when the pipe closes: also when
 * this process dies in a way no handler sees (SIGKILL, a sanitizer abort).
 * harness_cleanup() destroys it too, until harness_netns_destroy().
 */
int harness_netns_create(struct harness_netns *p, char tag, enum harness_link link);

/*
 * Shape both directions of the veth to @rate_bps bits/s with @delay_us
 * one-way delay, with netem; where netem is not built into the kernel,
 * with tbf (rate only: no delay), under which @bands puts a pfifo_fast (the
 * bands of a host's NIC queue).  Writes "netem" or "tbf" into @how.  0 or
 * -EIO.
 */
int harness_netns_shape(const struct harness_netns *p, uint64_t rate_bps, unsigned delay_us,
			bool bands, char *how, size_t howlen);
/* Remove the shaping again.  0 or -EIO. */
int harness_netns_unshape(const struct harness_netns *p);

/*
 * Delete both namespaces (the veth goes with them; processes still inside
 * keep theirs alive until they exit), then release and reap the janitor.
 * Idempotent, and async-signal-safe: only fork, execv, close, waitpid,
 * nanosleep, kill and _exit, each wait bounded, so a SIGINT/SIGTERM handler
 * or an atexit handler may call it.  Safe on a zeroed struct.
 */
void harness_netns_destroy(struct harness_netns *p);

/* {ip_path, "netns", "exec", ns[@side], NULL} for harness_spawn_prefixed(). */
void harness_netns_prefix(const struct harness_netns *p, int side, const char *out[5]);

/*
 * Run @argv (argv[0] a path) with stdin and stdout on /dev/null and stderr
 * on /dev/null too when @quiet; killed after @timeout_ms.  Its exit status
 * (128+N for signal N), -ETIMEDOUT, or -errno.  Async-signal-safe.
 */
int harness_cmd(const char *const argv[], bool quiet, int timeout_ms);

#endif
