/*
 * The control socket against a real VM: boots the incrementer guest, then
 * throws every kind of bad input at the socket and checks after each that
 * the VM still answers "running" and the guest keeps making passes; checks
 * the QMP greeting, negotiation and error shape; drives
 * stop/cont (events, 1000 round trips, memory still consistent), the
 * queries, the `vmferry ctl` CLI, a second VMM on the same path, and quit.
 *
 * Skips (exit 77) without /dev/kvm.  Needs build/vmferry (or $VMFERRY_BIN).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "control/client.h"
#include "control/control.h"
#include "harness/harness.h"
#include "util/log.h"
#include "verify/verify.h"
#include "vmferry/guest_abi.h"

#define TEST_TIMEOUT_MS 10000
#define TEST_NVCPUS 2

static struct harness_vm vm = { .pid = -1 };

static const char *get_str(struct json_object *o, const char *k1, const char *k2)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, k1, &v))
		return NULL;
	if (k2 && !json_object_object_get_ex(v, k2, &v))
		return NULL;
	return json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

static void nap_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static const char *status_of(void)
{
	static char buf[32];
	struct json_object *ret = NULL;
	const char *s;

	if (harness_call(&vm, "query-status", NULL, &ret) < 0)
		return "(no answer)";
	s = get_str(ret, "status", NULL);
	snprintf(buf, sizeof(buf), "%s", s ? s : "(none)");
	json_object_put(ret);
	return buf;
}

/* The VM answers "running" and the guest keeps making passes. */
static void assert_healthy(void)
{
	uint64_t passes = 0;

	assert_string_equal(status_of(), "running");
	assert_int_equal(harness_workload_passes(&vm, &passes), 0);
	assert_int_equal(harness_wait_passes(&vm, passes + 2, TEST_TIMEOUT_MS), 0);
}

static struct control_client *connect_new(void)
{
	struct control_client *c = NULL;

	assert_int_equal(control_client_connect(vm.sock_path, TEST_TIMEOUT_MS, &c), 0);
	control_client_set_timeout(c, TEST_TIMEOUT_MS);
	return c;
}

/* Drop queued and in-flight events so later waits see only new ones. */
static void drain_events(struct control_client *c)
{
	while (control_client_wait_event(c, NULL, 0, NULL) == 0)
		;
}

/* Read until EOF (bounded); returns bytes read. */
static size_t read_to_eof(int fd, char *buf, size_t cap)
{
	uint64_t deadline = clock_monotonic_ns() + TEST_TIMEOUT_MS * 1000000ull;
	size_t n = 0;

	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t r;

		if (clock_monotonic_ns() >= deadline)
			fail_msg("no EOF from the server within %d ms", TEST_TIMEOUT_MS);
		if (poll(&pfd, 1, 100) <= 0)
			continue;
		r = recv(fd, buf + n, cap - n - 1, 0);
		if (r == 0 || (r < 0 && errno == ECONNRESET))
			break;
		assert_true(r > 0);
		n += (size_t)r;
		assert_true(n < cap - 1);
	}
	buf[n] = '\0';
	return n;
}

static int group_setup(void **state)
{
	char vcpus[8];
	const char *args[] = { "--guest", "incrementer", "--mem", "64M", "--vcpus", vcpus, NULL };

	(void)state;
	snprintf(vcpus, sizeof(vcpus), "%d", TEST_NVCPUS);
	if (harness_spawn(&vm, args) < 0)
		return -1;
	control_client_set_timeout(vm.client, TEST_TIMEOUT_MS);
	return harness_wait_passes(&vm, 1, TEST_TIMEOUT_MS) < 0 ? -1 : 0;
}

static int group_teardown(void **state)
{
	(void)state;
	if (vm.pid >= 0)
		harness_vm_kill(&vm);
	return 0;
}

static void test_boot(void **state)
{
	struct json_object *ret = NULL, *v;

	(void)state;
	assert_int_equal(harness_call(&vm, "query-status", NULL, &ret), 0);
	assert_string_equal(get_str(ret, "status", NULL), "running");
	assert_true(json_object_object_get_ex(ret, "running", &v));
	assert_true(json_object_get_boolean(v));
	json_object_put(ret);
	assert_healthy();
}

static void test_bad_lines(void **state)
{
	static const struct {
		const char *line;
		const char *cls;
		const char *needle;
	} cases[] = {
		{ "{\"execute\": \"query-status\"\n", CONTROL_ERR_GENERIC, "malformed JSON" },
		{ "this is not json\n", CONTROL_ERR_GENERIC, "malformed JSON" },
		{ "\xff\xfe\x01\n", CONTROL_ERR_GENERIC, "malformed JSON" },
		{ "[\"stop\"]\n", CONTROL_ERR_GENERIC, "must be a JSON object" },
		{ "42\n", CONTROL_ERR_GENERIC, "must be a JSON object" },
		{ "{\"arguments\": {}}\n", CONTROL_ERR_GENERIC, "'execute'" },
		{ "{\"execute\": [\"stop\"]}\n", CONTROL_ERR_GENERIC, "'execute' must be a string" },
		{ "{\"execute\": \"stop-the-world\"}\n", CONTROL_ERR_COMMAND_NOT_FOUND, "stop-the-world" },
		{ "{\"execute\": \"dump-guest-memory\", \"arguments\": {\"file\": 5}}\n",
		  CONTROL_ERR_INVALID_ARGUMENT, "'file'" },
		{ "{\"execute\": \"dump-guest-memory\", \"arguments\": {}}\n",
		  CONTROL_ERR_INVALID_ARGUMENT, "'file'" },
		{ "{\"execute\": \"dump-guest-memory\", \"arguments\": {\"file\": \"\"}}\n",
		  CONTROL_ERR_INVALID_ARGUMENT, "'file'" },
		{ "{\"execute\": \"query-status\", \"arguments\": {\"verbose\": true}}\n",
		  CONTROL_ERR_INVALID_ARGUMENT, "'verbose'" },
		{ "{\"execute\": \"stop\", \"arguments\": \"now\"}\n",
		  CONTROL_ERR_INVALID_ARGUMENT, "'arguments'" },
		{ "{\"execute\": \"dump-guest-memory\", \"arguments\": "
		  "{\"file\": \"/nonexistent-dir/vmferry/dump\"}}\n",
		  CONTROL_ERR_GENERIC, "cannot dump" },
		/* QMP's spelling, where it asks for what we do not do. */
		{ "{\"execute\": \"dump-guest-memory\", \"arguments\": "
		  "{\"paging\": true, \"protocol\": \"file:/tmp/x\"}}\n",
		  CONTROL_ERR_GENERIC, "paging is not supported" },
		{ "{\"execute\": \"dump-guest-memory\", \"arguments\": "
		  "{\"paging\": false, \"protocol\": \"fd:dumpfd\"}}\n",
		  CONTROL_ERR_GENERIC, "'fd:'" },
		{ "{\"execute\": \"dump-guest-memory\", \"arguments\": "
		  "{\"paging\": false, \"protocol\": \"/tmp/x\"}}\n",
		  CONTROL_ERR_INVALID_ARGUMENT, "'protocol'" },
		{ "{\"execute\": \"dump-guest-memory\", \"arguments\": "
		  "{\"file\": \"/tmp/x\", \"protocol\": \"file:/tmp/x\"}}\n",
		  CONTROL_ERR_INVALID_ARGUMENT, "not both" },
		{ "{\"execute\": \"dump-guest-memory\", \"arguments\": "
		  "{\"protocol\": \"file:/tmp/x\", \"format\": \"elf\"}}\n",
		  CONTROL_ERR_GENERIC, "'format' is not supported" },
	};
	struct control_client *c = connect_new();

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct json_object *reply = NULL;
		const char *desc;

		assert_int_equal(control_client_send_raw(c, cases[i].line, strlen(cases[i].line)), 0);
		assert_int_equal(control_client_read_reply(c, TEST_TIMEOUT_MS, &reply), -EREMOTEIO);
		assert_string_equal(control_reply_error_class(reply), cases[i].cls);
		desc = control_reply_error_desc(reply);
		if (!desc || !strstr(desc, cases[i].needle))
			fail_msg("case %zu: desc '%s' lacks '%s'", i, desc ? desc : "(null)",
				 cases[i].needle);
		json_object_put(reply);
		assert_healthy();
	}
	control_client_close(c);
}

/* The first line is QMP's greeting, carrying vmferry's version. */
static void test_qmp_greeting(void **state)
{
	struct control_client *c = NULL;
	struct json_object *g, *qmp, *version, *v;
	const char *package;

	(void)state;
	assert_int_equal(control_client_connect_raw(vm.sock_path, TEST_TIMEOUT_MS, &c), 0);
	g = control_client_greeting(c);
	assert_int_equal(json_object_object_length(g), 1);
	assert_true(json_object_object_get_ex(g, "QMP", &qmp));
	assert_true(json_object_object_get_ex(qmp, "capabilities", &v));
	assert_true(json_object_is_type(v, json_type_array));
	assert_int_equal(json_object_array_length(v), 0);
	assert_true(json_object_object_get_ex(qmp, "version", &version));
	assert_true(json_object_object_get_ex(version, "qemu", &v));
	assert_true(json_object_object_get_ex(v, "major", NULL));
	assert_true(json_object_object_get_ex(v, "minor", NULL));
	assert_true(json_object_object_get_ex(v, "micro", NULL));
	package = get_str(version, "package", NULL);
	assert_non_null(package);
	assert_true(strncmp(package, "vmferry ", 8) == 0);
	control_client_close(c);
}

/* Nothing runs before qmp_capabilities; it works once; then commands do. */
static void test_qmp_negotiation(void **state)
{
	static const char *const early[] = {
		"{\"execute\": \"stop\", \"id\": 1}\n",
		"{\"execute\": \"quit\"}\n",
		"{\"execute\": \"query-status\"}\n",
		"{\"execute\": \"no-such-command\"}\n",
	};
	struct control_client *c = NULL;
	struct json_object *reply = NULL;

	(void)state;
	assert_int_equal(control_client_connect_raw(vm.sock_path, TEST_TIMEOUT_MS, &c), 0);
	control_client_set_timeout(c, TEST_TIMEOUT_MS);
	for (size_t i = 0; i < sizeof(early) / sizeof(early[0]); i++) {
		assert_int_equal(control_client_send_raw(c, early[i], strlen(early[i])), 0);
		assert_int_equal(control_client_read_reply(c, TEST_TIMEOUT_MS, &reply), -EREMOTEIO);
		assert_string_equal(control_reply_error_class(reply), CONTROL_ERR_COMMAND_NOT_FOUND);
		assert_non_null(strstr(control_reply_error_desc(reply),
				       "Expecting capabilities negotiation with 'qmp_capabilities'"));
		json_object_put(reply);
	}
	/* Neither the stop nor the quit reached the VM. */
	assert_healthy();

	assert_int_equal(control_client_call(c, "qmp_capabilities", NULL, &reply), 0);
	json_object_put(reply);
	assert_int_equal(control_client_call(c, "qmp_capabilities", NULL, &reply), -EREMOTEIO);
	assert_string_equal(control_reply_error_class(reply), CONTROL_ERR_COMMAND_NOT_FOUND);
	assert_non_null(strstr(control_reply_error_desc(reply), "already complete"));
	json_object_put(reply);
	assert_int_equal(control_client_call(c, "query-status", NULL, &reply), 0);
	assert_string_equal(get_str(control_reply_return(reply), "status", NULL), "running");
	json_object_put(reply);
	control_client_close(c);
}

/* Errors look like QMP's: {"error": {"class", "desc"}, "id"}, nothing else. */
static void test_qmp_error_shape(void **state)
{
	const char *line = "{\"execute\": \"cont-the-world\", \"id\": {\"tag\": [1, \"a\"]}}\n";
	struct control_client *c = connect_new();
	struct json_object *reply = NULL, *e, *id, *want = json_tokener_parse("{\"tag\": [1, \"a\"]}");

	(void)state;
	assert_int_equal(control_client_send_raw(c, line, strlen(line)), 0);
	assert_int_equal(control_client_read_reply(c, TEST_TIMEOUT_MS, &reply), -EREMOTEIO);
	assert_int_equal(json_object_object_length(reply), 2);
	assert_true(json_object_object_get_ex(reply, "error", &e));
	assert_int_equal(json_object_object_length(e), 2);
	assert_string_equal(get_str(e, "class", NULL), CONTROL_ERR_COMMAND_NOT_FOUND);
	assert_non_null(strstr(get_str(e, "desc", NULL), "cont-the-world"));
	assert_true(json_object_object_get_ex(reply, "id", &id));
	assert_true(json_object_equal(id, want));
	json_object_put(reply);
	json_object_put(want);
	control_client_close(c);
}

/* dump-guest-memory in QMP's spelling writes the same flat image. */
static void test_dump_qmp_spelling(void **state)
{
	char path[HARNESS_PATH_BYTES], protocol[HARNESS_PATH_BYTES + 8];
	struct json_object *args = json_object_new_object(), *verdict = NULL;
	struct stat st;

	(void)state;
	assert_int_equal(harness_unique_path(path, sizeof(path), "qmpdump"), 0);
	snprintf(protocol, sizeof(protocol), "file:%s", path);
	json_object_object_add(args, "paging", json_object_new_boolean(false));
	json_object_object_add(args, "protocol", json_object_new_string(protocol));
	json_object_object_add(args, "detach", json_object_new_boolean(false));
	assert_int_equal(harness_call(&vm, "stop", NULL, NULL), 0);
	assert_int_equal(harness_call(&vm, "dump-guest-memory", args, NULL), 0);
	assert_int_equal(harness_call(&vm, "cont", NULL, NULL), 0);
	json_object_put(args);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 64 << 20);
	assert_int_equal(verify_incrementer_file(path, &verdict), 0);
	json_object_put(verdict);
	unlink(path);
	assert_healthy();
}

static void test_oversized_line(void **state)
{
	size_t big = CONTROL_LINE_MAX_BYTES + 1000;
	char *line = malloc(big), *in = malloc(65536);
	struct control_client *c = connect_new();
	size_t n;

	(void)state;
	assert_non_null(line);
	assert_non_null(in);
	memcpy(line, "{\"execute\":\"stop\",\"id\":\"", 24);
	memset(line + 24, 'x', big - 24);
	assert_int_equal(control_client_send_raw(c, line, big), 0);
	n = read_to_eof(control_client_fd(c), in, 65536);
	assert_true(n > 0);
	assert_non_null(strstr(in, "\"error\""));
	assert_non_null(strstr(in, "longer than 65536"));
	control_client_close(c);
	free(line);
	free(in);
	/* Nothing of the line reached the VM: it was a "stop". */
	assert_healthy();
}

static void test_disconnect_mid_line(void **state)
{
	(void)state;
	for (int i = 0; i < 10; i++) {
		struct control_client *c = connect_new();
		const char *half = "{\"execute\": \"stop\", \"id\": 1";

		assert_int_equal(control_client_send_raw(c, half, strlen(half)), 0);
		control_client_close(c);
	}
	assert_healthy();
}

static void test_too_many_clients(void **state)
{
	/* vm.client holds one slot already. */
	struct control_client *c[CONTROL_MAX_CLIENTS - 1], *extra = NULL;

	(void)state;
	for (int i = 0; i < CONTROL_MAX_CLIENTS - 1; i++)
		c[i] = connect_new();
	assert_int_equal(control_client_connect(vm.sock_path, 300, &extra), -ECONNREFUSED);
	assert_null(extra);
	assert_healthy();
	for (int i = 0; i < CONTROL_MAX_CLIENTS - 1; i++) {
		assert_int_equal(control_client_call(c[i], "query-status", NULL, NULL), 0);
		control_client_close(c[i]);
	}
	/* The slots come back. */
	c[0] = connect_new();
	control_client_close(c[0]);
	assert_healthy();
}

static void test_stop_cont_events(void **state)
{
	struct control_client *watcher = connect_new();
	struct json_object *ev = NULL, *v;
	uint64_t p1 = 0, p2 = 0;

	(void)state;
	drain_events(vm.client);
	assert_int_equal(harness_call(&vm, "stop", NULL, NULL), 0);
	/* Both the caller and a bystander see STOP. */
	assert_int_equal(control_client_wait_event(vm.client, "STOP", TEST_TIMEOUT_MS, &ev), 0);
	assert_true(json_object_object_get_ex(ev, "timestamp", &v));
	assert_true(json_object_object_get_ex(v, "seconds", NULL));
	assert_true(json_object_object_get_ex(v, "microseconds", NULL));
	json_object_put(ev);
	assert_int_equal(control_client_wait_event(watcher, "STOP", TEST_TIMEOUT_MS, NULL), 0);
	assert_string_equal(status_of(), "paused");

	/* Paused means paused: no pass completes in a while. */
	assert_int_equal(harness_workload_passes(&vm, &p1), 0);
	nap_ms(200);
	assert_int_equal(harness_workload_passes(&vm, &p2), 0);
	assert_true(p1 == p2);

	/* stop while stopped is fine. */
	assert_int_equal(harness_call(&vm, "stop", NULL, NULL), 0);

	assert_int_equal(harness_call(&vm, "cont", NULL, NULL), 0);
	assert_int_equal(control_client_wait_event(vm.client, "RESUME", TEST_TIMEOUT_MS, NULL), 0);
	assert_int_equal(control_client_wait_event(watcher, "RESUME", TEST_TIMEOUT_MS, NULL), 0);
	control_client_close(watcher);
	assert_healthy();
}

static void test_stop_cont_1000(void **state)
{
	uint64_t before = 0, after = 0;

	(void)state;
	assert_int_equal(harness_workload_passes(&vm, &before), 0);
	for (int i = 0; i < 1000; i++) {
		if (harness_call(&vm, "stop", NULL, NULL) != 0)
			fail_msg("stop #%d failed", i);
		if (harness_call(&vm, "cont", NULL, NULL) != 0)
			fail_msg("cont #%d failed", i);
	}
	assert_string_equal(status_of(), "running");
	assert_int_equal(harness_verify_incrementer(&vm), 0);
	assert_int_equal(harness_workload_passes(&vm, &after), 0);
	assert_true(after >= before);
	assert_int_equal(harness_wait_passes(&vm, after + 2, TEST_TIMEOUT_MS), 0);
	/* And consistent while paused, too. */
	assert_int_equal(harness_call(&vm, "stop", NULL, NULL), 0);
	assert_int_equal(harness_verify_incrementer(&vm), 0);
	assert_int_equal(harness_call(&vm, "cont", NULL, NULL), 0);
	assert_healthy();
}

static void test_query_vcpus(void **state)
{
	struct json_object *ret = NULL;

	(void)state;
	assert_int_equal(harness_call(&vm, "query-vcpus", NULL, &ret), 0);
	assert_true(json_object_is_type(ret, json_type_array));
	assert_int_equal(json_object_array_length(ret), TEST_NVCPUS);
	for (size_t i = 0; i < json_object_array_length(ret); i++) {
		struct json_object *cpu = json_object_array_get_idx(ret, i), *rip, *rsp, *cr3;

		assert_true(json_object_object_get_ex(cpu, "rip", &rip));
		assert_true(json_object_object_get_ex(cpu, "rsp", &rsp));
		assert_true(json_object_object_get_ex(cpu, "cr3", &cr3));
		/* The guest runs its image, on its own stack, with our page tables. */
		assert_true(json_object_get_uint64(rip) >= VMF_IMAGE_GPA);
		assert_true(json_object_get_uint64(rip) < VMF_IMAGE_GPA + VMF_IMAGE_MAX_BYTES);
		assert_true(json_object_get_uint64(rsp) > VMF_STACKS_GPA);
		assert_true(json_object_get_uint64(rsp) <=
			    VMF_STACKS_GPA + VMF_MAX_VCPUS * VMF_STACK_BYTES);
		assert_int_equal(json_object_get_uint64(cr3), VMF_PAGE_TABLE_GPA);
	}
	json_object_put(ret);
	assert_int_equal(harness_call(&vm, "query-memory", NULL, &ret), 0);
	assert_true(json_object_object_get_ex(ret, "blocks", NULL));
	json_object_put(ret);
	assert_healthy();
}

static void test_ctl_cli(void **state)
{
	const char *status_args[] = { "ctl", vm.sock_path, "query-status", NULL };
	const char *bad_cmd[] = { "ctl", vm.sock_path, "no-such-command", NULL };
	const char *bad_json[] = { "ctl", vm.sock_path, "query-status", "{not json", NULL };
	const char *no_args[] = { "ctl", NULL };
	const char *help[] = { "ctl", "--help", NULL };
	const char *absent[] = { "ctl", "--timeout", "0.2", "/nonexistent/vmferry.sock",
				 "query-status", NULL };
	const char *script[] = { "ctl", "--wait", vm.sock_path, "-", NULL };
	struct harness_result r;
	char *input;
	size_t lines = 0;

	(void)state;
	assert_int_equal(harness_run(status_args, NULL, TEST_TIMEOUT_MS, &r), 0);
	assert_int_equal(r.status, 0);
	assert_non_null(strstr(r.out, "\"status\":\"running\""));
	harness_result_free(&r);

	assert_int_equal(harness_run(bad_cmd, NULL, TEST_TIMEOUT_MS, &r), 0);
	assert_int_equal(r.status, 1);
	assert_non_null(strstr(r.err, "has not been found"));
	assert_string_equal(r.out, "");
	harness_result_free(&r);

	assert_int_equal(harness_run(bad_json, NULL, TEST_TIMEOUT_MS, &r), 0);
	assert_int_equal(r.status, 2);
	harness_result_free(&r);

	assert_int_equal(harness_run(no_args, NULL, TEST_TIMEOUT_MS, &r), 0);
	assert_int_equal(r.status, 2);
	assert_non_null(strstr(r.err, "--help"));
	harness_result_free(&r);

	assert_int_equal(harness_run(help, NULL, TEST_TIMEOUT_MS, &r), 0);
	assert_int_equal(r.status, 0);
	assert_non_null(strstr(r.out, "usage: vmferry ctl"));
	harness_result_free(&r);

	assert_int_equal(harness_run(absent, NULL, TEST_TIMEOUT_MS, &r), 0);
	assert_int_equal(r.status, 1);
	assert_non_null(strstr(r.err, "No such file"));
	harness_result_free(&r);

	/* Scripted: 200 stop/cont pairs on one connection, one reply per line. */
	input = malloc(200 * 12 + 64);
	assert_non_null(input);
	input[0] = '\0';
	for (int i = 0; i < 200; i++)
		strcat(input, "stop\ncont\n");
	strcat(input, "# a comment\n\nquery-status {}\nbogus\n");
	assert_int_equal(harness_run(script, input, 4 * TEST_TIMEOUT_MS, &r), 0);
	free(input);
	assert_int_equal(r.status, 1); /* "bogus" failed */
	for (const char *p = r.out; (p = strchr(p, '\n')) != NULL; p++)
		lines++;
	assert_int_equal(lines, 402);
	assert_non_null(strstr(r.out, "\"status\":\"running\""));
	assert_non_null(strstr(r.out, "CommandNotFound"));
	harness_result_free(&r);
	assert_healthy();
}

static void test_second_vmm_same_path(void **state)
{
	char console[HARNESS_PATH_BYTES];
	const char *args[] = { "run", "--control", vm.sock_path, "--console", console,
			       "--guest", "incrementer", "--mem", "64M", NULL };
	struct harness_result r;
	struct stat st;

	(void)state;
	assert_int_equal(harness_unique_path(console, sizeof(console), "console2"), 0);
	assert_int_equal(harness_run(args, NULL, TEST_TIMEOUT_MS, &r), 0);
	assert_true(r.status != 0 && r.status != -ETIMEDOUT);
	if (!strstr(r.err, "in use"))
		fail_msg("second VMM's stderr does not say 'in use': %s", r.err);
	harness_result_free(&r);
	/* The first VMM keeps its socket and its guest. */
	assert_int_equal(stat(vm.sock_path, &st), 0);
	assert_healthy();
}

static void test_quit(void **state)
{
	struct stat st;
	char path[HARNESS_PATH_BYTES];

	(void)state;
	snprintf(path, sizeof(path), "%s", vm.sock_path);
	assert_int_equal(harness_vm_quit(&vm), 0);
	/* The VMM removed its socket on the way out. */
	assert_int_not_equal(stat(path, &st), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_boot),
		cmocka_unit_test(test_bad_lines),
		cmocka_unit_test(test_qmp_greeting),
		cmocka_unit_test(test_qmp_negotiation),
		cmocka_unit_test(test_qmp_error_shape),
		cmocka_unit_test(test_dump_qmp_spelling),
		cmocka_unit_test(test_oversized_line),
		cmocka_unit_test(test_disconnect_mid_line),
		cmocka_unit_test(test_too_many_clients),
		cmocka_unit_test(test_stop_cont_events),
		cmocka_unit_test(test_stop_cont_1000),
		cmocka_unit_test(test_query_vcpus),
		cmocka_unit_test(test_ctl_cli),
		cmocka_unit_test(test_second_vmm_same_path),
		cmocka_unit_test(test_quit),
	};

	if (!harness_kvm_available())
		return HARNESS_SKIP;
	if (access(harness_binary(), X_OK) != 0) {
		fprintf(stderr, "test_control: %s is not an executable (set VMFERRY_BIN)\n",
			harness_binary());
		return 1;
	}
	return cmocka_run_group_tests_name("control", tests, group_setup, group_teardown) ? 1 : 0;
}
