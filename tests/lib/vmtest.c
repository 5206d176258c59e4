#include "lib/vmtest.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "control/client.h"
#include "util/log.h"
#include "util/proc.h"
#include "verify/verify.h"

#define VMTEST_CONNECT_TIMEOUT_MS 10000
#define VMTEST_QUIT_TIMEOUT_MS 10000
#define VMTEST_CAPTURE_MAX_BYTES (1024 * 1024)

static char vmtest_dir[64];
static unsigned vmtest_counter;

static void vmtest_nap_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int vmtest_kvm_available(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0) {
		fprintf(stderr, "SKIP: /dev/kvm not available: %s\n", strerror(errno));
		return 0;
	}
	close(fd);
	return 1;
}

static void vmtest_cleanup_dir(void)
{
	DIR *d;
	struct dirent *e;

	if (!vmtest_dir[0] || getenv("VMTEST_KEEP"))
		return;
	d = opendir(vmtest_dir);
	if (!d)
		return;
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			unlinkat(dirfd(d), e->d_name, 0);
	closedir(d);
	rmdir(vmtest_dir);
}

int vmtest_unique_path(char *buf, size_t len, const char *tag)
{
	int n;

	if (!vmtest_dir[0]) {
		snprintf(vmtest_dir, sizeof(vmtest_dir), "/tmp/vmferry-test-XXXXXX");
		if (!mkdtemp(vmtest_dir)) {
			int rc = -errno;

			fprintf(stderr, "vmtest: mkdtemp: %s\n", strerror(-rc));
			vmtest_dir[0] = '\0';
			return rc;
		}
		atexit(vmtest_cleanup_dir);
	}
	n = snprintf(buf, len, "%s/%s-%u", vmtest_dir, tag, ++vmtest_counter);
	if (n < 0 || (size_t)n >= len)
		return -ENAMETOOLONG;
	return 0;
}

const char *vmtest_binary(void)
{
	const char *bin = getenv("VMFERRY_BIN");

	return bin && *bin ? bin : "build/vmferry";
}

/* Reap @pid within @timeout_ms: decoded status, or -ETIMEDOUT. */
static int vmtest_reap(pid_t pid, int timeout_ms, int *raw)
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
		vmtest_nap_ms(5);
	}
}

/* SIGKILL and reap (a killed child goes promptly). */
static int vmtest_kill_reap(pid_t pid)
{
	int raw = 0;

	kill(pid, SIGKILL);
	while (waitpid(pid, &raw, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return proc_decode_status(raw);
}

/*
 * fork + exec @argv[0] with @argv (looked up in PATH when @search_path, else
 * a path as is), stdin/stdout/stderr from the given fds (-1: inherit, except
 * stdin which becomes /dev/null).  The child dies with us (PDEATHSIG), so a
 * crashed test leaves no VM; `ip netns exec` execs its command in the same
 * process, so that holds through it too.
 */
static pid_t vmtest_fork_exec(const char *const argv[], bool search_path, int in_fd, int out_fd,
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
	fprintf(stderr, "vmtest: cannot exec %s: %s\n", argv[0], strerror(errno));
	_exit(127);
}

int vmtest_spawn(struct vmtest_vm *out, const char *const extra_args[])
{
	return vmtest_spawn_prefixed(out, NULL, extra_args);
}

int vmtest_spawn_start(struct vmtest_vm *out, const char *const prefix[],
		       const char *const extra_args[])
{
	const char *argv[64];
	size_t n = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	out->pid = -1;
	if (vmtest_unique_path(out->sock_path, sizeof(out->sock_path), "ctl") < 0 ||
	    vmtest_unique_path(out->console_path, sizeof(out->console_path), "console") < 0)
		return -ENAMETOOLONG;
	for (size_t i = 0; prefix && prefix[i]; i++) {
		if (n + 8 >= sizeof(argv) / sizeof(argv[0]))
			return -E2BIG;
		argv[n++] = prefix[i];
	}
	argv[n++] = vmtest_binary();
	argv[n++] = "run";
	argv[n++] = "--control";
	argv[n++] = out->sock_path;
	argv[n++] = "--console";
	argv[n++] = out->console_path;
	for (size_t i = 0; extra_args && extra_args[i]; i++) {
		if (n + 1 >= sizeof(argv) / sizeof(argv[0]))
			return -E2BIG;
		argv[n++] = extra_args[i];
	}
	argv[n] = NULL;

	out->pid = vmtest_fork_exec(argv, prefix && prefix[0], -1, -1, -1);
	if (out->pid < 0) {
		rc = -errno;
		out->pid = -1;
		return rc;
	}
	return 0;
}

int vmtest_connect(struct vmtest_vm *out, int timeout_ms)
{
	uint64_t deadline = clock_monotonic_ns() + (uint64_t)timeout_ms * 1000000ull;
	int rc, raw = 0;

	/* The socket appears once the VMM is up: wait for that, or its death. */
	for (;;) {
		pid_t r = waitpid(out->pid, &raw, WNOHANG);

		if (r == out->pid) {
			out->pid = -1;
			out->exit_status = proc_decode_status(raw);
			fprintf(stderr, "vmtest: vmferry exited during start-up with status %d\n",
				out->exit_status);
			return -ECHILD;
		}
		rc = control_client_connect(out->sock_path, 200, &out->client);
		if (rc == 0)
			return 0;
		/* -ETIMEDOUT: the socket is bound but the greeting is late (busy host). */
		if ((rc != -ENOENT && rc != -ECONNREFUSED && rc != -ETIMEDOUT) ||
		    clock_monotonic_ns() >= deadline)
			break;
		vmtest_nap_ms(10);
	}
	fprintf(stderr, "vmtest: cannot connect to %s: %s\n", out->sock_path, strerror(-rc));
	out->exit_status = vmtest_kill_reap(out->pid);
	out->pid = -1;
	return rc;
}

int vmtest_spawn_prefixed(struct vmtest_vm *out, const char *const prefix[],
			  const char *const extra_args[])
{
	int rc = vmtest_spawn_start(out, prefix, extra_args);

	return rc ? rc : vmtest_connect(out, VMTEST_CONNECT_TIMEOUT_MS);
}

int vmtest_wait_exit(struct vmtest_vm *vm, int timeout_ms)
{
	int raw = 0, rc;

	if (vm->pid < 0)
		return vm->exit_status;
	rc = vmtest_reap(vm->pid, timeout_ms, &raw);
	if (rc == -ETIMEDOUT)
		return rc;
	vm->pid = -1;
	vm->exit_status = rc;
	/* Nothing answers on the socket any more. */
	control_client_close(vm->client);
	vm->client = NULL;
	return rc;
}

int vmtest_vm_quit(struct vmtest_vm *vm)
{
	int rc;

	if (vm->client) {
		control_client_set_timeout(vm->client, 5000);
		rc = control_client_call(vm->client, "quit", NULL, NULL);
		if (rc < 0)
			fprintf(stderr, "vmtest: quit: %s\n", strerror(-rc));
		control_client_close(vm->client);
		vm->client = NULL;
	}
	if (vm->pid < 0)
		return vm->exit_status;
	rc = vmtest_wait_exit(vm, VMTEST_QUIT_TIMEOUT_MS);
	if (rc != -ETIMEDOUT)
		return rc;
	fprintf(stderr, "vmtest: vmferry did not exit within %d ms of quit; killing it\n",
		VMTEST_QUIT_TIMEOUT_MS);
	vm->exit_status = vmtest_kill_reap(vm->pid);
	vm->pid = -1;
	return -ETIMEDOUT;
}

int vmtest_vm_kill(struct vmtest_vm *vm)
{
	control_client_close(vm->client);
	vm->client = NULL;
	if (vm->pid < 0)
		return vm->exit_status;
	vm->exit_status = vmtest_kill_reap(vm->pid);
	vm->pid = -1;
	return vm->exit_status;
}

int vmtest_call(struct vmtest_vm *vm, const char *command, struct json_object *args,
		struct json_object **ret)
{
	struct json_object *reply = NULL;
	int rc;

	if (ret)
		*ret = NULL;
	if (!vm->client)
		return -ENOTCONN;
	rc = control_client_call(vm->client, command, args, &reply);
	if (rc == -EREMOTEIO)
		fprintf(stderr, "vmtest: %s: %s\n", command, control_reply_error_desc(reply));
	if (rc == 0 && ret)
		*ret = json_object_get(control_reply_return(reply));
	json_object_put(reply);
	return rc;
}

int vmtest_workload_passes(struct vmtest_vm *vm, uint64_t *min_passes)
{
	struct json_object *ret, *vcpus;
	size_t n;
	int rc;

	rc = vmtest_call(vm, "query-workload", NULL, &ret);
	if (rc < 0)
		return rc;
	rc = -EPROTO;
	if (!json_object_object_get_ex(ret, "vcpus", &vcpus) ||
	    !json_object_is_type(vcpus, json_type_array))
		goto out;
	n = json_object_array_length(vcpus);
	if (n == 0)
		goto out;
	rc = 0;
	*min_passes = UINT64_MAX;
	for (size_t i = 0; i < n; i++) {
		struct json_object *v = json_object_array_get_idx(vcpus, i), *phase, *passes;

		if (!json_object_object_get_ex(v, "phase", &phase) ||
		    !json_object_object_get_ex(v, "passes", &passes)) {
			rc = -EPROTO;
			goto out;
		}
		if (strcmp(json_object_get_string(phase), "running") != 0)
			rc = -EAGAIN;
		if (json_object_get_uint64(passes) < *min_passes)
			*min_passes = json_object_get_uint64(passes);
	}
out:
	json_object_put(ret);
	return rc;
}

int vmtest_wait_passes(struct vmtest_vm *vm, uint64_t passes, int timeout_ms)
{
	uint64_t deadline = clock_monotonic_ns() + (uint64_t)timeout_ms * 1000000ull;
	uint64_t have = 0;
	int rc;

	for (;;) {
		rc = vmtest_workload_passes(vm, &have);
		if (rc == 0 && have >= passes)
			return 0;
		if (rc < 0 && rc != -EAGAIN)
			return rc;
		if (clock_monotonic_ns() >= deadline)
			break;
		vmtest_nap_ms(2);
	}
	fprintf(stderr, "vmtest: wanted %llu passes within %d ms, have %llu%s\n",
		(unsigned long long)passes, timeout_ms, (unsigned long long)have,
		rc == -EAGAIN ? " (not every vCPU running)" : "");
	return -ETIMEDOUT;
}

/*
 * dump-guest-memory to a unique file, check it with @verify_file, unlink
 * it.  A broken or unverifiable verdict is printed on stderr.
 */
static int vmtest_verify_dump(struct vmtest_vm *vm,
			      int (*verify_file)(const char *, struct json_object **))
{
	char path[VMTEST_PATH_BYTES];
	struct json_object *args, *verdict = NULL;
	int rc;

	rc = vmtest_unique_path(path, sizeof(path), "dump");
	if (rc < 0)
		return rc;
	args = json_object_new_object();
	if (!args)
		return -ENOMEM;
	json_object_object_add(args, "file", json_object_new_string(path));
	rc = vmtest_call(vm, "dump-guest-memory", args, NULL);
	json_object_put(args);
	if (rc < 0)
		goto out;
	rc = verify_file(path, &verdict);
	if (rc == -EBADMSG || rc == -ENOTSUP)
		fprintf(stderr, "vmtest: guest memory is %s: %s\n",
			rc == -EBADMSG ? "broken" : "not verifiable",
			json_object_to_json_string_ext(verdict, JSON_C_TO_STRING_PLAIN));
	else if (rc < 0)
		fprintf(stderr, "vmtest: cannot verify %s: %s\n", path, strerror(-rc));
out:
	json_object_put(verdict);
	unlink(path);
	return rc;
}

int vmtest_verify_incrementer(struct vmtest_vm *vm)
{
	return vmtest_verify_dump(vm, verify_incrementer_file);
}

int vmtest_verify_memory(struct vmtest_vm *vm)
{
	return vmtest_verify_dump(vm, verify_guest_file);
}

/* Read up to VMTEST_CAPTURE_MAX_BYTES of @path into a new string. */
static char *vmtest_slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf = calloc(1, VMTEST_CAPTURE_MAX_BYTES + 1);
	size_t n = 0;

	if (f && buf)
		n = fread(buf, 1, VMTEST_CAPTURE_MAX_BYTES, f);
	if (buf)
		buf[n] = '\0';
	if (f)
		fclose(f);
	return buf;
}

int vmtest_run(const char *const args[], const char *stdin_text, int timeout_ms,
	       struct vmtest_result *res)
{
	char in_path[VMTEST_PATH_BYTES], out_path[VMTEST_PATH_BYTES], err_path[VMTEST_PATH_BYTES];
	const char *argv[64];
	size_t n = 0;
	int in_fd = -1, out_fd = -1, err_fd = -1, raw = 0, rc;
	pid_t pid;

	memset(res, 0, sizeof(*res));
	argv[n++] = vmtest_binary();
	for (size_t i = 0; args[i]; i++) {
		if (n + 1 >= sizeof(argv) / sizeof(argv[0]))
			return -E2BIG;
		argv[n++] = args[i];
	}
	argv[n] = NULL;
	if ((rc = vmtest_unique_path(in_path, sizeof(in_path), "stdin")) < 0 ||
	    (rc = vmtest_unique_path(out_path, sizeof(out_path), "stdout")) < 0 ||
	    (rc = vmtest_unique_path(err_path, sizeof(err_path), "stderr")) < 0)
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
	pid = vmtest_fork_exec(argv, false, in_fd, out_fd, err_fd);
	if (pid < 0) {
		rc = -errno;
		goto out;
	}
	rc = vmtest_reap(pid, timeout_ms, &raw);
	if (rc == -ETIMEDOUT) {
		fprintf(stderr, "vmtest: '%s %s' still running after %d ms; killing it\n",
			argv[0], argv[1] ? argv[1] : "", timeout_ms);
		vmtest_kill_reap(pid);
	}
	res->status = rc;
	res->out = vmtest_slurp(out_path);
	res->err = vmtest_slurp(err_path);
	rc = res->out && res->err ? 0 : -ENOMEM;
	if (rc < 0)
		vmtest_result_free(res);
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

void vmtest_result_free(struct vmtest_result *res)
{
	free(res->out);
	free(res->err);
	res->out = res->err = NULL;
}

/* ---- simulated hosts: network namespaces joined by a veth pair ---- */

int vmtest_cmd(const char *const argv[], bool quiet, int timeout_ms)
{
	return proc_run(argv, quiet, timeout_ms);
}

#define VMTEST_IP_TIMEOUT_MS 10000

/* `ip ARGS...` (NULL-terminated), quiet or not; 0 when it exits 0. */
static int vmtest_ip(const struct vmtest_netns_pair *p, bool quiet, const char *first, ...)
{
	const char *argv[24];
	size_t n = 0;
	va_list ap;

	argv[n++] = p->ip_path;
	argv[n++] = first;
	va_start(ap, first);
	while (n < sizeof(argv) / sizeof(argv[0]) - 1 && (argv[n] = va_arg(ap, const char *)))
		n++;
	va_end(ap);
	argv[n] = NULL;
	return vmtest_cmd(argv, quiet, VMTEST_IP_TIMEOUT_MS) == 0 ? 0 : -EIO;
}

/* The janitor (proc_janitor_start) deletes the namespaces if we die unseen. */
static void vmtest_janitor_start(struct vmtest_netns_pair *p)
{
	const char *const *const cmds[2] = { p->del_argv[0], p->del_argv[1] };
	pid_t pid;
	int fd = proc_janitor_start(cmds, 2, VMTEST_IP_TIMEOUT_MS, &pid);

	if (fd < 0)
		return;
	p->janitor_fd = fd;
	p->janitor_pid = pid;
}

int vmtest_netns_create(struct vmtest_netns_pair *p)
{
	static const char *const ip_paths[] = { "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip" };
	unsigned pid = (unsigned)getpid(), subnet = pid % 254 + 1;
	char cidr[2][24];

	memset(p, 0, sizeof(*p));
	for (int i = 0; i < 2; i++) {
		snprintf(p->ns[i], sizeof(p->ns[i]), "vmft-%u-%c", pid, 'a' + i);
		snprintf(p->veth[i], sizeof(p->veth[i]), "vft%c%u", 'a' + i, pid);
		snprintf(p->addr[i], sizeof(p->addr[i]), "10.199.%u.%d", subnet, i + 1);
		snprintf(cidr[i], sizeof(cidr[i]), "%s/24", p->addr[i]);
	}
	for (size_t i = 0; i < sizeof(ip_paths) / sizeof(ip_paths[0]) && !p->ip_path[0]; i++)
		if (access(ip_paths[i], X_OK) == 0)
			snprintf(p->ip_path, sizeof(p->ip_path), "%s", ip_paths[i]);
	if (!p->ip_path[0])
		return -ENOENT;
	for (int i = 0; i < 2; i++) {
		p->del_argv[i][0] = p->ip_path;
		p->del_argv[i][1] = "netns";
		p->del_argv[i][2] = "del";
		p->del_argv[i][3] = p->ns[i];
		p->del_argv[i][4] = NULL;
	}
	vmtest_janitor_start(p);
	for (int i = 0; i < 2; i++) {
		if (vmtest_ip(p, false, "netns", "add", p->ns[i], NULL) < 0) {
			vmtest_netns_destroy(p);
			return -EPERM;
		}
		p->created[i] = 1;
	}
	/* Both ends are born inside their namespaces: nothing is left in ours. */
	if (vmtest_ip(p, false, "link", "add", p->veth[0], "netns", p->ns[0], "type", "veth",
		      "peer", "name", p->veth[1], "netns", p->ns[1], NULL) < 0)
		goto fail;
	for (int i = 0; i < 2; i++)
		if (vmtest_ip(p, false, "-n", p->ns[i], "addr", "add", cidr[i], "dev", p->veth[i], NULL) ||
		    vmtest_ip(p, false, "-n", p->ns[i], "link", "set", "lo", "up", NULL) ||
		    vmtest_ip(p, false, "-n", p->ns[i], "link", "set", p->veth[i], "up", NULL))
			goto fail;
	return 0;
fail:
	fprintf(stderr, "vmtest: cannot set up the veth pair between %s and %s\n", p->ns[0], p->ns[1]);
	vmtest_netns_destroy(p);
	return -EIO;
}

int vmtest_netns_shape(const struct vmtest_netns_pair *p, uint64_t rate_bps, unsigned delay_us,
		       char *how, size_t howlen)
{
	char rate[32], delay[32], burst[32];
	/* tbf: a burst of ~4 ms at the rate (at least 64 KiB, above a GSO packet). */
	uint64_t burst_bytes = rate_bps / 8 / 250;
	bool netem = true;

	if (burst_bytes < 65536)
		burst_bytes = 65536;
	snprintf(rate, sizeof(rate), "%llubit", (unsigned long long)rate_bps);
	snprintf(delay, sizeof(delay), "%uus", delay_us);
	snprintf(burst, sizeof(burst), "%llub", (unsigned long long)burst_bytes);
	for (int i = 0; i < 2; i++) {
		if (netem && vmtest_ip(p, true, "netns", "exec", p->ns[i], "tc", "qdisc", "replace",
				       "dev", p->veth[i], "root", "netem", "rate", rate, "delay",
				       delay, NULL) == 0)
			continue;
		if (netem && i == 0)
			fprintf(stderr, "vmtest: netem is not available here; shaping with tbf "
				"(rate %s, no delay)\n", rate);
		netem = false;
		if (vmtest_ip(p, false, "netns", "exec", p->ns[i], "tc", "qdisc", "replace", "dev",
			      p->veth[i], "root", "tbf", "rate", rate, "burst", burst, "latency",
			      "20ms", NULL) < 0)
			return -EIO;
	}
	snprintf(how, howlen, "%s", netem ? "netem" : "tbf");
	return 0;
}

int vmtest_netns_unshape(const struct vmtest_netns_pair *p)
{
	int rc = 0;

	for (int i = 0; i < 2; i++)
		if (vmtest_ip(p, true, "netns", "exec", p->ns[i], "tc", "qdisc", "del", "dev",
			      p->veth[i], "root", NULL) < 0)
			rc = -EIO;
	return rc;
}

void vmtest_netns_destroy(struct vmtest_netns_pair *p)
{
	for (int i = 0; i < 2; i++) {
		if (!p->created[i])
			continue;
		p->created[i] = 0;
		vmtest_cmd(p->del_argv[i], true, VMTEST_IP_TIMEOUT_MS);
	}
	if (p->janitor_pid > 0) {
		pid_t pid = p->janitor_pid;

		p->janitor_pid = 0;
		/* It retries the (now failing) deletes, then exits. */
		proc_janitor_finish(p->janitor_fd, pid, 2 * VMTEST_IP_TIMEOUT_MS + 1000);
	}
}

void vmtest_netns_prefix(const struct vmtest_netns_pair *p, int side, const char *out[5])
{
	out[0] = p->ip_path;
	out[1] = "netns";
	out[2] = "exec";
	out[3] = p->ns[side];
	out[4] = NULL;
}

/*
 * Call @fn(@name, @fields, @opaque) for each thread of @vm's VMM, with its
 * command name and the stat fields after it (field 3, the state, first; the
 * name may hold spaces, so it is cut out by its parentheses).  The number of
 * threads seen, or -errno.
 */
static int vmtest_for_each_thread(struct vmtest_vm *vm,
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
static long long vmtest_stat_field(char *fields, int want)
{
	char *save = NULL;
	int field = 3;

	for (char *p = strtok_r(fields, " ", &save); p; p = strtok_r(NULL, " ", &save), field++)
		if (field == want)
			return atoll(p);
	return 0;
}

struct vmtest_rt_scan {
	const char *prefix;
	int n;
};

static void vmtest_count_realtime(int tid, const char *name, char *fields, void *opaque)
{
	(void)tid;
	struct vmtest_rt_scan *s = opaque;
	long long policy;

	if (strncmp(name, s->prefix, strlen(s->prefix)))
		return;
	policy = vmtest_stat_field(fields, 41);
	/* Real-time: SCHED_FIFO (1), SCHED_RR (2), SCHED_DEADLINE (6).
	 * SCHED_IDLE (5: release-ram's thread) starves nobody. */
	s->n += policy == 1 || policy == 2 || policy == 6;
}

struct vmtest_policy_scan {
	const char *prefix;
	int policy, n;
};

static void vmtest_count_policy(int tid, const char *name, char *fields, void *opaque)
{
	(void)tid;
	struct vmtest_policy_scan *s = opaque;

	if (!strncmp(name, s->prefix, strlen(s->prefix)) && vmtest_stat_field(fields, 41) == s->policy)
		s->n++;
}

int vmtest_threads_with_policy(struct vmtest_vm *vm, const char *prefix, int policy)
{
	struct vmtest_policy_scan s = { .prefix = prefix, .policy = policy };
	int r = vmtest_for_each_thread(vm, vmtest_count_policy, &s);

	return r < 0 ? r : s.n;
}

int vmtest_realtime_threads_named(struct vmtest_vm *vm, const char *prefix)
{
	struct vmtest_rt_scan s = { .prefix = prefix };
	int r = vmtest_for_each_thread(vm, vmtest_count_realtime, &s);

	return r < 0 ? r : s.n;
}

struct vmtest_slice_scan {
	int pid;
	const char *prefix;
	int64_t slice;
};

static void vmtest_scan_slice(int tid, const char *name, char *fields, void *opaque)
{
	struct vmtest_slice_scan *s = opaque;
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

int64_t vmtest_thread_slice_ns(struct vmtest_vm *vm, const char *prefix)
{
	struct vmtest_slice_scan s = { .pid = (int)vm->pid, .prefix = prefix, .slice = -ENOENT };
	int r = vmtest_for_each_thread(vm, vmtest_scan_slice, &s);

	return r < 0 ? r : s.slice;
}

int vmtest_realtime_threads(struct vmtest_vm *vm)
{
	return vmtest_realtime_threads_named(vm, "");
}

struct vmtest_nice_scan {
	const char *prefix;
	int count, min, max;
};

static void vmtest_scan_nice(int tid, const char *name, char *fields, void *opaque)
{
	(void)tid;
	struct vmtest_nice_scan *s = opaque;
	int nice;

	if (strncmp(name, s->prefix, strlen(s->prefix)))
		return;
	nice = (int)vmtest_stat_field(fields, 19);
	if (!s->count || nice < s->min)
		s->min = nice;
	if (!s->count || nice > s->max)
		s->max = nice;
	s->count++;
}

int vmtest_threads_nice(struct vmtest_vm *vm, const char *prefix, int *min, int *max)
{
	struct vmtest_nice_scan s = { .prefix = prefix };
	int r = vmtest_for_each_thread(vm, vmtest_scan_nice, &s);

	if (r < 0)
		return r;
	*min = s.min;
	*max = s.max;
	return s.count;
}
