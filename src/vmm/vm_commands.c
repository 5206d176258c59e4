/*
 * The VM's control commands: thin handlers over the vm_* functions, run
 * on the control thread.  Argument types were checked by the server against
 * each command's spec before a handler runs.
 */
#include "vmm/vm_commands.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <json-c/json.h>

#include "control/control.h"
#include "util/log.h"
#include "vmm/vm.h"

static const char *vm_cmd_runstate_phrase(enum vm_runstate state)
{
	switch (state) {
	case VM_RUNSTATE_SHUTDOWN:       return "guest has shut down";
	case VM_RUNSTATE_GUEST_PANICKED: return "guest has crashed";
	case VM_RUNSTATE_INTERNAL_ERROR: return "VM hit an internal error";
	default:                         return "VM is in a state that does not allow it";
	}
}

static int vm_cmd_json(struct json_object *obj, struct json_object **ret,
		       char *errbuf, size_t errlen)
{
	if (!obj) {
		snprintf(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
	*ret = obj;
	return 0;
}

static int vm_cmd_query_status(void *opaque, struct json_object *args,
			       struct json_object **ret, char *errbuf, size_t errlen)
{
	struct vm *vm = opaque;

	(void)args;
	return vm_cmd_json(vm_query_status(vm), ret, errbuf, errlen);
}

static int vm_cmd_query_vcpus(void *opaque, struct json_object *args,
			      struct json_object **ret, char *errbuf, size_t errlen)
{
	struct vm *vm = opaque;

	(void)args;
	return vm_cmd_json(vm_query_vcpus(vm), ret, errbuf, errlen);
}

static int vm_cmd_query_memory(void *opaque, struct json_object *args,
			       struct json_object **ret, char *errbuf, size_t errlen)
{
	struct vm *vm = opaque;

	(void)args;
	return vm_cmd_json(vm_query_memory(vm), ret, errbuf, errlen);
}

static int vm_cmd_query_workload(void *opaque, struct json_object *args,
				 struct json_object **ret, char *errbuf, size_t errlen)
{
	struct vm *vm = opaque;

	(void)args;
	return vm_cmd_json(vm_query_workload(vm), ret, errbuf, errlen);
}

/*
 * vm_stop/vm_cont say -EINVAL for a terminal state; that is not an argument
 * problem, so it is reported as -EPERM (GenericError) with the reason.
 */
static int vm_cmd_runstate_error(struct vm *vm, const char *what,
				 int rc, char *errbuf, size_t errlen)
{
	char sbuf[128];

	if (rc == -EINVAL) {
		enum vm_runstate state = vm_get_runstate(vm);

		snprintf(errbuf, errlen, "cannot %s: %s (state '%s')", what,
			 vm_cmd_runstate_phrase(state), vm_runstate_name(state));
		return -EPERM;
	}
	snprintf(errbuf, errlen, "cannot %s: %s", what, strerror_r(-rc, sbuf, sizeof(sbuf)));
	return rc;
}

/* stop/cont in a migration run state: why not, and what helps.  -EBUSY. */
static int vm_cmd_held(struct vm *vm, const char *what, char *errbuf, size_t errlen)
{
	char why[400];

	vm_migration_hold_reason(vm, why, sizeof(why));
	snprintf(errbuf, errlen, "cannot %s (state '%s'): %s", what,
		 vm_runstate_name(vm_get_runstate(vm)), why);
	return -EBUSY;
}

static int vm_cmd_stop(void *opaque, struct json_object *args,
		       struct json_object **ret, char *errbuf, size_t errlen)
{
	struct vm *vm = opaque;
	int rc;

	(void)args;
	(void)ret;
	rc = vm_stop(vm);
	if (rc == -EBUSY)
		return vm_cmd_held(vm, "stop", errbuf, errlen);
	return rc < 0 ? vm_cmd_runstate_error(vm, "stop", rc, errbuf, errlen) : 0;
}

static bool vm_cmd_arg_true(struct json_object *args, const char *name);

/*
 * cont; {"force": true} also resumes a guest a migration kept paused
 * because its destination went silent (vm_cont_force says when not).
 */
static int vm_cmd_cont(void *opaque, struct json_object *args,
		       struct json_object **ret, char *errbuf, size_t errlen)
{
	struct vm *vm = opaque;
	char why[400];
	int rc;

	(void)ret;
	if (vm_cmd_arg_true(args, "force")) {
		rc = vm_cont_force(vm, why, sizeof(why));
		if (rc == -EINVAL)
			return vm_cmd_runstate_error(vm, "cont", rc, errbuf, errlen);
		if (rc)
			snprintf(errbuf, errlen, "cannot cont {\"force\": true}: %s", why);
		return rc == -EBUSY ? -EBUSY : rc ? -EPERM : 0;
	}
	rc = vm_cont(vm);
	if (rc == -EBUSY)
		return vm_cmd_held(vm, "cont", errbuf, errlen);
	return rc < 0 ? vm_cmd_runstate_error(vm, "cont", rc, errbuf, errlen) : 0;
}

static int vm_cmd_quit(void *opaque, struct json_object *args,
		       struct json_object **ret, char *errbuf, size_t errlen)
{
	(void)opaque;
	(void)args;
	(void)ret;
	(void)errbuf;
	(void)errlen;
	return 0; /* the work happens in after_reply, once the reply is out */
}

static void vm_cmd_quit_after(void *opaque)
{
	struct vm *vm = opaque;

	log_info("quit requested on the control socket");
	vm_request_quit(vm);
}

static const char *vm_cmd_arg_str(struct json_object *args, const char *name)
{
	struct json_object *v = NULL;

	return json_object_object_get_ex(args, name, &v) ? json_object_get_string(v) : NULL;
}

static bool vm_cmd_arg_true(struct json_object *args, const char *name)
{
	struct json_object *v = NULL;

	return json_object_object_get_ex(args, name, &v) && json_object_get_boolean(v);
}

/*
 * The dump's path, from our "file" or from QMP's spelling ("protocol":
 * "file:PATH", "paging": false).  What QEMU would do differently (paging,
 * fd: protocol, detach, an ELF or kdump format) is refused, not ignored:
 * the caller would get something other than it asked for.  0, -EINVAL or
 * -ENOTSUP with @errbuf filled.
 */
static int vm_cmd_dump_path(struct json_object *args, const char **path,
			    char *errbuf, size_t errlen)
{
	const char *file = vm_cmd_arg_str(args, "file");
	const char *protocol = vm_cmd_arg_str(args, "protocol");
	const char *format = vm_cmd_arg_str(args, "format");

	*path = NULL;
	if (file && protocol) {
		snprintf(errbuf, errlen, "give either 'file' or 'protocol', not both");
		return -EINVAL;
	}
	if (protocol) {
		if (strncmp(protocol, "fd:", 3) == 0) {
			snprintf(errbuf, errlen, "protocol 'fd:' is not supported: use 'file:PATH'");
			return -ENOTSUP;
		}
		if (strncmp(protocol, "file:", 5) != 0) {
			snprintf(errbuf, errlen, "argument 'protocol' must be 'file:PATH'");
			return -EINVAL;
		}
		file = protocol + 5;
	}
	if (!file) {
		snprintf(errbuf, errlen, "missing argument 'file' (or QMP's 'protocol': 'file:PATH')");
		return -EINVAL;
	}
	if (!*file) {
		snprintf(errbuf, errlen, "argument '%s' must not be empty", protocol ? "protocol" : "file");
		return -EINVAL;
	}
	if (vm_cmd_arg_true(args, "paging") || vm_cmd_arg_true(args, "detach") || format) {
		snprintf(errbuf, errlen, "%s is not supported: the dump is a flat image of "
			 "guest-physical memory, written before the reply",
			 format ? "'format'" : vm_cmd_arg_true(args, "paging") ? "paging" : "detach");
		return -ENOTSUP;
	}
	*path = file;
	return 0;
}

static int vm_cmd_dump(void *opaque, struct json_object *args,
		       struct json_object **ret, char *errbuf, size_t errlen)
{
	struct vm *vm = opaque;
	const char *path;
	char sbuf[128];
	int rc;

	(void)ret;
	rc = vm_cmd_dump_path(args, &path, errbuf, errlen);
	if (rc < 0)
		return rc;
	rc = vm_dump_memory(vm, path);
	if (rc == -EBUSY || rc == -ENODATA) {
		snprintf(errbuf, errlen, "%s", rc == -EBUSY
			 ? "guest RAM is still arriving from the postcopy source: dump it once "
			   "the migration has completed"
			 : "guest RAM went to the migration's destination (postcopy gave it back "
			   "here): dump it there");
		return rc;
	}
	if (rc < 0) {
		snprintf(errbuf, errlen, "cannot dump guest memory to '%s': %s", path,
			 strerror_r(-rc, sbuf, sizeof(sbuf)));
		/* The argument was fine; whatever failed is not InvalidArgument. */
		return rc == -EINVAL ? -EIO : rc;
	}
	return 0;
}

/* Ours ("file") and QMP's spelling (the rest). */
static const struct control_arg_spec vm_cmd_dump_args[] = {
	{ "file", CONTROL_ARG_STRING, false },
	{ "protocol", CONTROL_ARG_STRING, false },
	{ "paging", CONTROL_ARG_BOOL, false },
	{ "detach", CONTROL_ARG_BOOL, false },
	{ "format", CONTROL_ARG_STRING, false },
	{ NULL, 0, false },
};

static const struct control_arg_spec vm_cmd_cont_args[] = {
	{ "force", CONTROL_ARG_BOOL, false },
	{ NULL, 0, false },
};

int vm_register_commands(struct vm *vm, struct control_server *srv)
{
	const struct control_command cmds[] = {
		{ "query-status", vm_cmd_query_status, vm, NULL, NULL },
		{ "stop", vm_cmd_stop, vm, NULL, NULL },
		{ "cont", vm_cmd_cont, vm, vm_cmd_cont_args, NULL },
		{ "quit", vm_cmd_quit, vm, NULL, vm_cmd_quit_after },
		{ "query-vcpus", vm_cmd_query_vcpus, vm, NULL, NULL },
		{ "query-memory", vm_cmd_query_memory, vm, NULL, NULL },
		{ "query-workload", vm_cmd_query_workload, vm, NULL, NULL },
		{ "dump-guest-memory", vm_cmd_dump, vm, vm_cmd_dump_args, NULL },
	};

	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		int rc = control_server_register(srv, &cmds[i]);

		if (rc)
			return rc;
	}
	return 0;
}
