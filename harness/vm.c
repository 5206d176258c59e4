/* A vmferry VMM under test: start, connect, call, stop, check; see harness.h. */
#include "harness/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <json-c/json.h>

#include "control/client.h"
#include "util/log.h"
#include "util/proc.h"
#include "verify/verify.h"

#define HARNESS_CONNECT_TIMEOUT_MS 10000
#define HARNESS_QUIT_TIMEOUT_MS 10000
#define HARNESS_LOG_TAIL_BYTES 2048

int harness_spawn(struct harness_vm *out, const char *const extra_args[])
{
	return harness_spawn_prefixed(out, NULL, extra_args);
}

/* "<dir>/<name>-<n>" plus @suffix into @buf; 0 or -ENAMETOOLONG. */
static int harness_vm_path(char *buf, size_t len, const char *base, const char *suffix)
{
	int n = snprintf(buf, len, "%s%s", base, suffix);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* The process's files: control socket, console, log (see harness_vm_opts). */
static int harness_vm_paths(struct harness_vm *out, const struct harness_vm_opts *o)
{
	char base[HARNESS_PATH_BYTES];
	int rc;

	snprintf(out->name, sizeof(out->name), "%s", o->name ? o->name : "vm");
	rc = harness_unique_path(base, sizeof(base) - 8, out->name);
	if (rc < 0)
		return rc;
	if (harness_vm_path(out->sock_path, sizeof(out->sock_path), base, ".sock") ||
	    harness_vm_path(out->console_path, sizeof(out->console_path),
			    o->no_console ? "/dev/null" : base, o->no_console ? "" : ".console") ||
	    (o->log && harness_vm_path(out->log_path, sizeof(out->log_path), base, ".log")))
		return -ENAMETOOLONG;
	return 0;
}

int harness_spawn_start(struct harness_vm *out, const struct harness_vm_opts *opts,
			const char *const extra_args[])
{
	static const struct harness_vm_opts defaults;
	const struct harness_vm_opts *o = opts ? opts : &defaults;
	const char *argv[64];
	size_t n = 0;
	int rc, log_fd = -1;

	memset(out, 0, sizeof(*out));
	out->pid = -1;
	rc = harness_vm_paths(out, o);
	if (rc < 0)
		return rc;
	for (size_t i = 0; o->prefix && o->prefix[i]; i++) {
		if (n + 8 >= sizeof(argv) / sizeof(argv[0]))
			return -E2BIG;
		argv[n++] = o->prefix[i];
	}
	argv[n++] = o->bin ? o->bin : harness_binary();
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

	if (o->log) {
		log_fd = open(out->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (log_fd < 0) {
			rc = -errno;
			harness_vm_fail(out, "%s: %s", out->log_path, strerror(-rc));
			return rc;
		}
	}
	out->pid = harness_fork_exec(argv, o->prefix && o->prefix[0], -1, log_fd, log_fd);
	rc = out->pid < 0 ? -errno : 0;
	if (log_fd >= 0)
		close(log_fd);
	if (rc) {
		out->pid = -1;
		harness_vm_fail(out, "fork: %s", strerror(-rc));
		return rc;
	}
	harness_child_add(out->pid);
	return 0;
}

/* @vm's process is gone with decoded status @status: forget it. */
static void harness_vm_reaped(struct harness_vm *vm, int status)
{
	harness_child_del(vm->pid);
	vm->pid = -1;
	vm->exit_status = status;
}

int harness_connect(struct harness_vm *out, int timeout_ms)
{
	uint64_t deadline = clock_monotonic_ns() + (uint64_t)timeout_ms * 1000000ull;
	int rc, raw = 0;

	/* The socket appears once the VMM is up: wait for that, or its death. */
	for (;;) {
		pid_t r = waitpid(out->pid, &raw, WNOHANG);

		if (r == out->pid) {
			harness_vm_reaped(out, proc_decode_status(raw));
			harness_vm_fail(out, "vmferry (%s) exited during start-up with status %d",
					out->name, out->exit_status);
			return -ECHILD;
		}
		rc = control_client_connect(out->sock_path, 200, &out->client);
		if (rc == 0)
			return 0;
		/* -ETIMEDOUT: the socket is bound but the greeting is late (busy host). */
		if ((rc != -ENOENT && rc != -ECONNREFUSED && rc != -ETIMEDOUT) ||
		    clock_monotonic_ns() >= deadline)
			break;
		harness_nap_ms(10);
	}
	harness_vm_fail(out, "cannot connect to %s: %s", out->sock_path, strerror(-rc));
	harness_vm_reaped(out, harness_kill_reap(out->pid));
	return rc;
}

int harness_spawn_prefixed(struct harness_vm *out, const char *const prefix[],
			   const char *const extra_args[])
{
	struct harness_vm_opts o = { .prefix = prefix };
	int rc = harness_spawn_start(out, &o, extra_args);

	return rc ? rc : harness_connect(out, HARNESS_CONNECT_TIMEOUT_MS);
}

int harness_wait_exit(struct harness_vm *vm, int timeout_ms)
{
	int raw = 0, rc;

	if (vm->pid < 0)
		return vm->exit_status;
	rc = harness_reap(vm->pid, timeout_ms, &raw);
	if (rc == -ETIMEDOUT)
		return rc;
	harness_vm_reaped(vm, rc);
	/* Nothing answers on the socket any more. */
	control_client_close(vm->client);
	vm->client = NULL;
	return rc;
}

int harness_vm_quit(struct harness_vm *vm)
{
	int rc;

	if (vm->client) {
		control_client_set_timeout(vm->client, 5000);
		rc = control_client_call(vm->client, "quit", NULL, NULL);
		if (rc < 0)
			harness_vm_fail(vm, "quit: %s", strerror(-rc));
		control_client_close(vm->client);
		vm->client = NULL;
	}
	if (vm->pid < 0)
		return vm->exit_status;
	rc = harness_wait_exit(vm, HARNESS_QUIT_TIMEOUT_MS);
	if (rc != -ETIMEDOUT)
		return rc;
	harness_vm_fail(vm, "vmferry (%s) did not exit within %d ms of quit; killing it", vm->name,
			HARNESS_QUIT_TIMEOUT_MS);
	harness_vm_reaped(vm, harness_kill_reap(vm->pid));
	return -ETIMEDOUT;
}

int harness_vm_kill(struct harness_vm *vm)
{
	control_client_close(vm->client);
	vm->client = NULL;
	if (vm->pid < 0)
		return vm->exit_status;
	harness_vm_reaped(vm, harness_kill_reap(vm->pid));
	return vm->exit_status;
}

void harness_vm_log_tail(const struct harness_vm *vm, const char *label)
{
	char buf[HARNESS_LOG_TAIL_BYTES + 1];
	FILE *f = vm->log_path[0] ? fopen(vm->log_path, "r") : NULL;
	size_t len;

	if (!f)
		return;
	if (fseek(f, -(long)HARNESS_LOG_TAIL_BYTES, SEEK_END) < 0)
		rewind(f);
	len = fread(buf, 1, HARNESS_LOG_TAIL_BYTES, f);
	buf[len] = '\0';
	fclose(f);
	fprintf(stderr, "%s: --- %s VMM log (tail) ---\n%s", harness_prog(), label, buf);
}

int harness_call(struct harness_vm *vm, const char *command, struct json_object *args,
		 struct json_object **ret)
{
	struct json_object *reply = NULL;
	int rc;

	if (ret)
		*ret = NULL;
	if (!vm->client) {
		harness_vm_fail(vm, "%s: not connected", command);
		return -ENOTCONN;
	}
	rc = control_client_call(vm->client, command, args, &reply);
	if (rc == -EREMOTEIO)
		harness_vm_fail(vm, "%s: %s", command, control_reply_error_desc(reply));
	else if (rc)
		harness_vm_fail(vm, "%s: %s", command, strerror(-rc));
	else if (ret)
		*ret = json_object_get(control_reply_return(reply));
	json_object_put(reply);
	return rc;
}

int harness_workload(struct harness_vm *vm, struct harness_workload *w)
{
	struct json_object *ret, *vcpus;
	size_t n;
	int rc;

	memset(w, 0, sizeof(*w));
	rc = harness_call(vm, "query-workload", NULL, &ret);
	if (rc < 0)
		return rc;
	rc = -EPROTO;
	if (!json_object_object_get_ex(ret, "vcpus", &vcpus) ||
	    !json_object_is_type(vcpus, json_type_array))
		goto out;
	n = json_object_array_length(vcpus);
	w->nvcpus = (unsigned)n;
	w->running = n > 0;
	w->min_passes = n ? UINT64_MAX : 0;
	for (size_t i = 0; i < n; i++) {
		struct json_object *v = json_object_array_get_idx(vcpus, i), *phase, *passes;
		uint64_t p;

		if (!json_object_object_get_ex(v, "phase", &phase) ||
		    !json_object_object_get_ex(v, "passes", &passes))
			goto out;
		p = json_object_get_uint64(passes);
		w->running &= !strcmp(json_object_get_string(phase), "running");
		if (p < w->min_passes)
			w->min_passes = p;
		w->progress += p + harness_json_u64(v, "writes");
	}
	rc = 0;
out:
	if (rc)
		harness_vm_fail(vm, "query-workload: unexpected reply");
	json_object_put(ret);
	return rc;
}

int harness_workload_passes(struct harness_vm *vm, uint64_t *min_passes)
{
	struct harness_workload w;
	int rc = harness_workload(vm, &w);

	if (rc < 0)
		return rc;
	if (!w.nvcpus)
		return -EPROTO;
	*min_passes = w.min_passes;
	return w.running ? 0 : -EAGAIN;
}

int harness_wait_passes(struct harness_vm *vm, uint64_t passes, int timeout_ms)
{
	uint64_t deadline = clock_monotonic_ns() + (uint64_t)timeout_ms * 1000000ull;
	uint64_t have = 0;
	int rc;

	for (;;) {
		rc = harness_workload_passes(vm, &have);
		if (rc == 0 && have >= passes)
			return 0;
		if (rc < 0 && rc != -EAGAIN)
			return rc;
		if (clock_monotonic_ns() >= deadline)
			break;
		harness_nap_ms(2);
	}
	harness_vm_fail(vm, "wanted %llu passes within %d ms, have %llu%s",
			(unsigned long long)passes, timeout_ms, (unsigned long long)have,
			rc == -EAGAIN ? " (not every vCPU running)" : "");
	return -ETIMEDOUT;
}

/*
 * dump-guest-memory to a unique file, check it with @verify_file, unlink
 * it.  A broken or unverifiable verdict goes to vm->error (and stderr).
 */
static int harness_verify_dump(struct harness_vm *vm,
			       int (*verify_file)(const char *, struct json_object **))
{
	char path[HARNESS_PATH_BYTES];
	struct json_object *args, *verdict = NULL;
	int rc;

	rc = harness_unique_path(path, sizeof(path), "dump");
	if (rc < 0)
		return rc;
	args = json_object_new_object();
	if (!args)
		return -ENOMEM;
	json_object_object_add(args, "file", json_object_new_string(path));
	rc = harness_call(vm, "dump-guest-memory", args, NULL);
	json_object_put(args);
	if (rc < 0)
		goto out;
	rc = verify_file(path, &verdict);
	if (rc == -EBADMSG || rc == -ENOTSUP)
		harness_vm_fail(vm, "guest memory is %s: %s",
				rc == -EBADMSG ? "broken" : "not verifiable",
				json_object_to_json_string_ext(verdict, JSON_C_TO_STRING_PLAIN));
	else if (rc < 0)
		harness_vm_fail(vm, "cannot verify %s: %s", path, strerror(-rc));
out:
	json_object_put(verdict);
	unlink(path);
	return rc;
}

int harness_verify_incrementer(struct harness_vm *vm)
{
	return harness_verify_dump(vm, verify_incrementer_file);
}

int harness_verify_memory(struct harness_vm *vm)
{
	return harness_verify_dump(vm, verify_guest_file);
}
