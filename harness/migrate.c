/* Driving a migration through the control socket and waiting for it; see harness.h. */
#include "harness/internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <json-c/json.h>

#include "util/log.h"

int harness_set_capability(struct harness_vm *vm, const char *name, bool on)
{
	struct json_object *args = json_object_new_object(), *arr = json_object_new_array();
	struct json_object *cap = json_object_new_object();
	int r;

	json_object_object_add(cap, "capability", json_object_new_string(name));
	json_object_object_add(cap, "state", json_object_new_boolean(on));
	json_object_array_add(arr, cap);
	json_object_object_add(args, "capabilities", arr);
	r = harness_call(vm, "migrate-set-capabilities", args, NULL);
	json_object_put(args);
	return r;
}

int harness_set_params(struct harness_vm *vm, const char *json)
{
	struct json_object *args = json_tokener_parse(json);
	int r = harness_call(vm, "migrate-set-parameters", args, NULL);

	json_object_put(args);
	return r;
}

int harness_migrate(struct harness_vm *src, const char *uri)
{
	struct json_object *args = json_object_new_object();
	int r;

	json_object_object_add(args, "uri", json_object_new_string(uri));
	r = harness_call(src, "migrate", args, NULL);
	json_object_put(args);
	return r;
}

int harness_migrate_channels(struct harness_vm *old, const char *main_uri, const char *cpr_uri)
{
	struct json_object *args = json_object_new_object(), *chans = json_object_new_array();
	struct json_object *c;
	int r;

	c = json_object_new_object();
	json_object_object_add(c, "type", json_object_new_string("main"));
	json_object_object_add(c, "uri", json_object_new_string(main_uri));
	json_object_array_add(chans, c);
	if (cpr_uri) {
		c = json_object_new_object();
		json_object_object_add(c, "type", json_object_new_string("cpr"));
		json_object_object_add(c, "uri", json_object_new_string(cpr_uri));
		json_object_array_add(chans, c);
	}
	json_object_object_add(args, "channels", chans);
	r = harness_call(old, "migrate", args, NULL);
	json_object_put(args);
	return r;
}

int harness_incoming_uri(struct harness_vm *dst, char *uri, size_t len, int timeout_ms)
{
	uint64_t deadline = clock_monotonic_ns() + (uint64_t)timeout_ms * 1000000ull;

	for (;;) {
		struct json_object *q = NULL;
		size_t ulen;
		int rc = harness_call(dst, "query-migrate", NULL, &q);

		if (rc)
			return rc;
		snprintf(uri, len, "%s", harness_json_str(q, "uri"));
		json_object_put(q);
		ulen = strlen(uri);
		if (ulen > 2 && strcmp(uri + ulen - 2, ":0"))
			return 0;
		if (clock_monotonic_ns() >= deadline)
			break;
		harness_nap_ms(5);
	}
	harness_vm_fail(dst, "the destination did not start listening (uri \"%s\")", uri);
	return -ETIMEDOUT;
}

/* Whether @status is one of the NULL-terminated @want. */
static bool harness_status_in(const char *status, const char *const want[])
{
	for (size_t i = 0; want[i]; i++)
		if (!strcmp(status, want[i]))
			return true;
	return false;
}

/* Poll query-migrate until its status is in @want; the reply in *reply (may be NULL). */
static int harness_wait_status_in(struct harness_vm *vm, const char *const want[], int timeout_ms,
				  int poll_ms, struct json_object **reply)
{
	uint64_t deadline = clock_monotonic_ns() + (uint64_t)timeout_ms * 1000000ull;
	char last[32] = "";

	for (;;) {
		struct json_object *q = NULL;
		int rc = harness_call(vm, "query-migrate", NULL, &q);

		if (rc)
			return rc;
		snprintf(last, sizeof(last), "%s", harness_json_str(q, "status"));
		if (harness_status_in(last, want)) {
			if (reply)
				*reply = q;
			else
				json_object_put(q);
			return 0;
		}
		json_object_put(q);
		if (clock_monotonic_ns() >= deadline)
			break;
		harness_nap_ms((unsigned)poll_ms);
	}
	harness_vm_fail(vm, "migration status still %s after %d ms (waiting for %s%s)", last,
			timeout_ms, want[0], want[1] ? ", ..." : "");
	return -ETIMEDOUT;
}

int harness_wait_migration(struct harness_vm *src, int timeout_ms, int poll_ms,
			   struct json_object **reply)
{
	static const char *const final[] = { "completed", "failed", "cancelled", NULL };

	*reply = NULL;
	return harness_wait_status_in(src, final, timeout_ms, poll_ms, reply);
}

int harness_wait_migrate_status(struct harness_vm *vm, const char *status, int timeout_ms,
				int poll_ms)
{
	const char *const want[] = { status, NULL };

	return harness_wait_status_in(vm, want, timeout_ms, poll_ms, NULL);
}
