#include "lib/vmtest.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
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

static int vmtest_decode_status(int status)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return -EINVAL;
}

/* Reap @pid within @timeout_ms: decoded status, or -ETIMEDOUT. */
static int vmtest_reap(pid_t pid, int timeout_ms, int *raw)
{
	uint64_t deadline = clock_monotonic_ns() + (uint64_t)timeout_ms * 1000000ull;

	for (;;) {
		pid_t r = waitpid(pid, raw, WNOHANG);

		if (r == pid)
			return vmtest_decode_status(*raw);
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
	return vmtest_decode_status(raw);
}

/*
 * fork + exec vmferry with @argv (argv[0] unused), stdin/stdout/stderr from
 * the given fds (-1: inherit, except stdin which becomes /dev/null).
 * The child dies with us (PDEATHSIG), so a crashed test leaves no VM.
 */
static pid_t vmtest_fork_exec(const char *const argv[], int in_fd, int out_fd, int err_fd)
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
	execv(vmtest_binary(), (char *const *)argv);
	fprintf(stderr, "vmtest: cannot exec %s: %s\n", vmtest_binary(), strerror(errno));
	_exit(127);
}

int vmtest_spawn(struct vmtest_vm *out, const char *const extra_args[])
{
	const char *argv[64];
	size_t n = 0;
	uint64_t deadline;
	int rc, raw = 0;

	memset(out, 0, sizeof(*out));
	out->pid = -1;
	if (vmtest_unique_path(out->sock_path, sizeof(out->sock_path), "ctl") < 0 ||
	    vmtest_unique_path(out->console_path, sizeof(out->console_path), "console") < 0)
		return -ENAMETOOLONG;
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

	out->pid = vmtest_fork_exec(argv, -1, -1, -1);
	if (out->pid < 0) {
		rc = -errno;
		out->pid = -1;
		return rc;
	}
	/* The socket appears once the VMM is up: wait for that, or its death. */
	deadline = clock_monotonic_ns() + VMTEST_CONNECT_TIMEOUT_MS * 1000000ull;
	for (;;) {
		pid_t r = waitpid(out->pid, &raw, WNOHANG);

		if (r == out->pid) {
			out->pid = -1;
			out->exit_status = vmtest_decode_status(raw);
			fprintf(stderr, "vmtest: vmferry exited during start-up with status %d\n",
				out->exit_status);
			return -ECHILD;
		}
		rc = control_client_connect(out->sock_path, 200, &out->client);
		if (rc == 0)
			return 0;
		if ((rc != -ENOENT && rc != -ECONNREFUSED) || clock_monotonic_ns() >= deadline)
			break;
		vmtest_nap_ms(10);
	}
	fprintf(stderr, "vmtest: cannot connect to %s: %s\n", out->sock_path, strerror(-rc));
	out->exit_status = vmtest_kill_reap(out->pid);
	out->pid = -1;
	return rc;
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
	pid = vmtest_fork_exec(argv, in_fd, out_fd, err_fd);
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
