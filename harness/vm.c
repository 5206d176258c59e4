/* A vmferry VMM under test: start, connect, call, stop, check; see harness.h. */
#include "harness/harness.h"

#include <errno.h>
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

int harness_spawn(struct harness_vm *out, const char *const extra_args[])
{
	return harness_spawn_prefixed(out, NULL, extra_args);
}

int harness_spawn_start(struct harness_vm *out, const char *const prefix[],
			const char *const extra_args[])
{
	const char *argv[64];
	size_t n = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	out->pid = -1;
	if (harness_unique_path(out->sock_path, sizeof(out->sock_path), "ctl") < 0 ||
	    harness_unique_path(out->console_path, sizeof(out->console_path), "console") < 0)
		return -ENAMETOOLONG;
	for (size_t i = 0; prefix && prefix[i]; i++) {
		if (n + 8 >= sizeof(argv) / sizeof(argv[0]))
			return -E2BIG;
		argv[n++] = prefix[i];
	}
	argv[n++] = harness_binary();
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

	out->pid = harness_fork_exec(argv, prefix && prefix[0], -1, -1, -1);
	if (out->pid < 0) {
		rc = -errno;
		out->pid = -1;
		return rc;
	}
	return 0;
}

int harness_connect(struct harness_vm *out, int timeout_ms)
{
	uint64_t deadline = clock_monotonic_ns() + (uint64_t)timeout_ms * 1000000ull;
	int rc, raw = 0;

	/* The socket appears once the VMM is up: wait for that, or its death. */
	for (;;) {
		pid_t r = waitpid(out->pid, &raw, WNOHANG);

		if (r == out->pid) {
			out->pid = -1;
			out->exit_status = proc_decode_status(raw);
			fprintf(stderr, "harness: vmferry exited during start-up with status %d\n",
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
		harness_nap_ms(10);
	}
	fprintf(stderr, "harness: cannot connect to %s: %s\n", out->sock_path, strerror(-rc));
	out->exit_status = harness_kill_reap(out->pid);
	out->pid = -1;
	return rc;
}

int harness_spawn_prefixed(struct harness_vm *out, const char *const prefix[],
			   const char *const extra_args[])
{
	int rc = harness_spawn_start(out, prefix, extra_args);

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
	vm->pid = -1;
	vm->exit_status = rc;
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
			fprintf(stderr, "harness: quit: %s\n", strerror(-rc));
		control_client_close(vm->client);
		vm->client = NULL;
	}
	if (vm->pid < 0)
		return vm->exit_status;
	rc = harness_wait_exit(vm, HARNESS_QUIT_TIMEOUT_MS);
	if (rc != -ETIMEDOUT)
		return rc;
	fprintf(stderr, "harness: vmferry did not exit within %d ms of quit; killing it\n",
		HARNESS_QUIT_TIMEOUT_MS);
	vm->exit_status = harness_kill_reap(vm->pid);
	vm->pid = -1;
	return -ETIMEDOUT;
}

int harness_vm_kill(struct harness_vm *vm)
{
	control_client_close(vm->client);
	vm->client = NULL;
	if (vm->pid < 0)
		return vm->exit_status;
	vm->exit_status = harness_kill_reap(vm->pid);
	vm->pid = -1;
	return vm->exit_status;
}

int harness_call(struct harness_vm *vm, const char *command, struct json_object *args,
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
		fprintf(stderr, "harness: %s: %s\n", command, control_reply_error_desc(reply));
	if (rc == 0 && ret)
		*ret = json_object_get(control_reply_return(reply));
	json_object_put(reply);
	return rc;
}

int harness_workload_passes(struct harness_vm *vm, uint64_t *min_passes)
{
	struct json_object *ret, *vcpus;
	size_t n;
	int rc;

	rc = harness_call(vm, "query-workload", NULL, &ret);
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
	fprintf(stderr, "harness: wanted %llu passes within %d ms, have %llu%s\n",
		(unsigned long long)passes, timeout_ms, (unsigned long long)have,
		rc == -EAGAIN ? " (not every vCPU running)" : "");
	return -ETIMEDOUT;
}

/*
 * dump-guest-memory to a unique file, check it with @verify_file, unlink
 * it.  A broken or unverifiable verdict is printed on stderr.
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
		fprintf(stderr, "harness: guest memory is %s: %s\n",
			rc == -EBADMSG ? "broken" : "not verifiable",
			json_object_to_json_string_ext(verdict, JSON_C_TO_STRING_PLAIN));
	else if (rc < 0)
		fprintf(stderr, "harness: cannot verify %s: %s\n", path, strerror(-rc));
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
