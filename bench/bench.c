/* What the benchmarks share on top of the harness; see bench.h. */
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "util/log.h"
#include "util/size.h"

#define BENCH_PROGRESS_MS      5000            /* destination guest moves on */
/* The user-space wire's queue per band: 20 ms at the rate, as tbf's latency. */
#define BENCH_WIRE_LIMIT_BYTES (BENCH_VETH_RATE_BPS / 8 / 50)

_Static_assert(HARNESS_TUN_MTU <= WIRE_MTU, "the wire carries the TUN devices' packets");

const char *const bench_transport_names[BENCH_TRANSPORT__COUNT] = { "loopback-tcp", "veth-1gbit",
								    "wire-1gbit", "unix-socket" };
const char *const bench_transport_opts[BENCH_TRANSPORT__COUNT] = { "loopback", "veth", "wire",
								   "unix" };

void bench_listen_uri(enum bench_transport t, const char *host_addr, char *buf, size_t len)
{
	char path[HARNESS_PATH_BYTES];

	if (t == BENCH_UNIX && harness_unique_path(path, sizeof(path), "mig") == 0)
		snprintf(buf, len, "unix:%s", path);
	else
		snprintf(buf, len, "tcp:%s:0", host_addr);
}

/* ---- the two simulated hosts ---- */

/* The user-space wire between the TUN devices of @n's namespaces. */
static int bench_netns_wire(struct bench_netns *n, unsigned delay_us)
{
	char ns_path[2][64];
	const char *paths[2] = { ns_path[0], ns_path[1] };
	const char *names[2] = { n->hosts.dev[0], n->hosts.dev[1] };
	int r;

	for (int i = 0; i < 2; i++)
		snprintf(ns_path[i], sizeof(ns_path[i]), "/var/run/netns/%s", n->hosts.ns[i]);
	r = wire_start(&n->wire, paths, names, BENCH_VETH_RATE_BPS, (uint64_t)delay_us * 1000,
		       BENCH_WIRE_LIMIT_BYTES);
	if (r) {
		fprintf(stderr, "%s: the user-space wire: %s\n", harness_prog(), strerror(-r));
		return r;
	}
	snprintf(n->shaper, sizeof(n->shaper), "wire");
	n->delay_us = delay_us;
	return 0;
}

int bench_netns_create(struct bench_netns *n, enum bench_transport kind, unsigned delay_us)
{
	int rc;

	memset(n, 0, sizeof(*n));
	rc = harness_netns_create(&n->hosts, 'b', kind == BENCH_WIRE ? HARNESS_LINK_TUN
								  : HARNESS_LINK_VETH);
	if (rc == -EPERM)
		fprintf(stderr, "%s: ip netns add %s failed (root needed)\n", harness_prog(),
			n->hosts.ns[0]);
	if (rc)
		return rc;
	if (kind == BENCH_WIRE)
		rc = bench_netns_wire(n, delay_us);
	else
		rc = harness_netns_shape(&n->hosts, BENCH_VETH_RATE_BPS, delay_us, true, n->shaper,
					 sizeof(n->shaper));
	if (rc) {
		bench_netns_finish(n);
		return -EIO;
	}
	if (kind != BENCH_WIRE)
		n->delay_us = strcmp(n->shaper, "netem") ? 0 : delay_us;
	return 0;
}

void bench_netns_finish(struct bench_netns *n)
{
	wire_stop(&n->wire);
	harness_netns_destroy(&n->hosts);
}

/* ---- the VMMs ---- */

int bench_vm_error(const struct harness_vm *vm, int rc, struct bench_result *r)
{
	if (rc)
		snprintf(r->error, sizeof(r->error), "%s", vm->error);
	return rc;
}

int bench_vm_spawn(const char *bin, const struct bench_netns *n, int side, const char *name,
		   const char *const args[], struct harness_vm *vm, struct bench_result *r)
{
	const char *prefix[5];
	struct harness_vm_opts o = { .bin = bin, .name = name, .log = true, .no_console = true };

	if (n) {
		harness_netns_prefix(&n->hosts, side, prefix);
		o.prefix = prefix;
	}
	return bench_vm_error(vm, harness_spawn_start(vm, &o, args), r);
}

int bench_vm_connect(struct harness_vm *vm, struct bench_result *r)
{
	return bench_vm_error(vm, harness_connect(vm, BENCH_CONNECT_MS), r);
}

int bench_vm_start(const char *bin, const struct bench_netns *n, int side, const char *name,
		   const char *const args[], struct harness_vm *vm, struct bench_result *r)
{
	int rc = bench_vm_spawn(bin, n, side, name, args, vm, r);

	return rc ? rc : bench_vm_connect(vm, r);
}

int bench_call(struct harness_vm *vm, const char *cmd, struct json_object *args,
	       struct json_object **ret, struct bench_result *r)
{
	return bench_vm_error(vm, harness_call(vm, cmd, args, ret), r);
}

int bench_workload(struct harness_vm *vm, bool *running, uint64_t *progress,
		   struct bench_result *r)
{
	struct harness_workload w;
	int rc = bench_vm_error(vm, harness_workload(vm, &w), r);

	if (rc)
		return rc;
	*running = w.running && w.min_passes >= 1;
	*progress = w.progress;
	return 0;
}

int bench_wait_running(struct harness_vm *src, uint64_t mem_bytes, struct bench_result *r)
{
	uint64_t deadline = clock_monotonic_ns() + (uint64_t)BENCH_READY_MS_FOR(mem_bytes) * 1000000ull;
	uint64_t progress;
	bool running = false;
	int rc;

	while (!running && clock_monotonic_ns() < deadline) {
		rc = bench_workload(src, &running, &progress, r);
		if (rc)
			return rc;
		if (!running)
			harness_nap_ms(10);
	}
	if (!running) {
		snprintf(r->error, sizeof(r->error), "source guest not running after %d ms",
			 BENCH_READY_MS_FOR(mem_bytes));
		return -ETIMEDOUT;
	}
	return 0;
}

int bench_incoming_uri(struct harness_vm *dst, char *uri, size_t len, struct bench_result *r)
{
	return bench_vm_error(dst, harness_incoming_uri(dst, uri, len, BENCH_CONNECT_MS), r);
}

int bench_wait_migration(uint64_t timeout_s, struct harness_vm *src, struct json_object **out,
			 struct bench_result *r)
{
	int rc = harness_wait_migration(src, (int)(timeout_s * 1000), BENCH_POLL_MS, out);

	if (rc != -ETIMEDOUT)
		return bench_vm_error(src, rc, r);
	fprintf(stderr, "%s: migration still running after %llu s; cancelling\n", harness_prog(),
		(unsigned long long)timeout_s);
	if (bench_call(src, "migrate-cancel", NULL, NULL, r))
		return -EIO;
	rc = harness_wait_migration(src, 60000, BENCH_POLL_MS, out);
	if (rc == -ETIMEDOUT)
		snprintf(r->error, sizeof(r->error), "migration did not stop after migrate-cancel");
	return bench_vm_error(src, rc, r) ? rc : 0;
}

void bench_verify_destination(struct harness_vm *dst, const char *workload, struct bench_result *r)
{
	struct json_object *s = NULL;
	struct bench_result scratch = { 0 };
	uint64_t p0 = 0, p1 = 0, deadline;
	bool running = false, moved = false;
	int rc;

	if (bench_call(dst, "query-status", NULL, &s, &scratch)) {
		snprintf(r->verify_error, sizeof(r->verify_error), "%s", scratch.error);
		return;
	}
	if (strcmp(harness_json_str(s, "status"), "running")) {
		snprintf(r->verify_error, sizeof(r->verify_error), "destination status %s",
			 harness_json_str(s, "status"));
		json_object_put(s);
		return;
	}
	json_object_put(s);
	if (bench_workload(dst, &running, &p0, &scratch) || !running) {
		snprintf(r->verify_error, sizeof(r->verify_error), "destination workload not running%s%.200s",
			 scratch.error[0] ? ": " : "", scratch.error);
		return;
	}
	deadline = clock_monotonic_ns() + BENCH_PROGRESS_MS * 1000000ull;
	while (!moved && clock_monotonic_ns() < deadline) {
		harness_nap_ms(10);
		if (bench_workload(dst, &running, &p1, &scratch))
			break;
		moved = p1 > p0;
	}
	if (!moved) {
		snprintf(r->verify_error, sizeof(r->verify_error),
			 "destination guest made no progress in %d ms", BENCH_PROGRESS_MS);
		return;
	}
	rc = harness_verify_memory(dst);
	if (rc == 0)
		r->verified = true;
	else if (rc == -ENOTSUP)
		snprintf(r->verify_error, sizeof(r->verify_error),
			 "%s has no memory verifier (it runs and makes progress)", workload);
	else
		snprintf(r->verify_error, sizeof(r->verify_error), "%s", dst->error);
}

void bench_copy_stats(struct json_object *q, struct bench_result *r)
{
	snprintf(r->status, sizeof(r->status), "%s", harness_json_str(q, "status"));
	r->completed = !strcmp(r->status, "completed");
	r->total_ms = harness_json_double(q, "total-time", 0);
	r->setup_ms = harness_json_double(q, "setup-time", 0);
	r->downtime_ms = harness_json_double(q, "downtime", -1);
	r->wire_bytes = harness_json_u64(q, "transferred");
	r->normal_pages = harness_json_u64(q, "normal-pages");
	r->zero_pages = harness_json_u64(q, "zero-pages");
	r->passes = harness_json_u64(q, "passes");
	r->expected_downtime_ms = harness_json_u64(q, "expected-downtime");
	r->throughput_bps = harness_json_u64(q, "throughput");
	r->throttle_max = harness_json_u64(q, "cpu-throttle-max");
	r->dirty_pages_rate = harness_json_u64(q, "dirty-pages-rate");
	bench_breakdown_text(q, r->breakdown, sizeof(r->breakdown));
	if (!r->completed)
		snprintf(r->error, sizeof(r->error), "migration %s: %s", r->status,
			 harness_json_str(q, "error-desc"));
}

/* ---- what a migration costs the guest ---- */

int bench_guest_sample(struct harness_vm *vm, const char *side, uint64_t *progress,
		       uint64_t *at_ns)
{
	struct bench_result scratch = { 0 };
	uint64_t before = clock_monotonic_ns(), p;
	bool running;
	int rc = bench_workload(vm, &running, &p, &scratch);

	if (rc) {
		fprintf(stderr, "%s: %s guest progress: %s\n", harness_prog(), side, scratch.error);
		return rc;
	}
	*progress = p;
	/* The VMM read the counters no further than half the round trip from it. */
	*at_ns = before + (clock_monotonic_ns() - before) / 2;
	return 0;
}

void bench_guest_rate(struct harness_vm *src, struct bench_guest *g)
{
	uint64_t pa, ta;

	memset(g, 0, sizeof(*g));
	if (bench_guest_sample(src, "source", &pa, &ta))
		return;
	harness_nap_ms(BENCH_GUEST_RATE_MS);
	if (bench_guest_sample(src, "source", &g->p0, &g->t0_ns))
		return;
	if (g->p0 >= pa && g->t0_ns > ta)
		g->rate_per_s = (double)(g->p0 - pa) * 1e9 / (double)(g->t0_ns - ta);
}

void bench_guest_close(struct harness_vm *dst, struct bench_guest *g)
{
	if (g->rate_per_s > 0)
		bench_guest_sample(dst, "destination", &g->p1, &g->t1_ns);
}

/* The account's work in *work and wall time in *elapsed_s; false when unknown. */
static bool bench_guest_window(const struct bench_guest *g, double *work, double *elapsed_s)
{
	if (g->rate_per_s <= 0 || !g->t1_ns || g->t1_ns <= g->t0_ns || g->p1 < g->p0)
		return false;
	*work = (double)(g->p1 - g->p0);
	*elapsed_s = (double)(g->t1_ns - g->t0_ns) / 1e9;
	return true;
}

double bench_guest_speed(const struct bench_guest *g)
{
	double work, elapsed_s;

	if (!bench_guest_window(g, &work, &elapsed_s))
		return NAN;
	return work / elapsed_s / g->rate_per_s;
}

double bench_guest_lost_ms(const struct bench_guest *g)
{
	double work, elapsed_s;

	if (!bench_guest_window(g, &work, &elapsed_s))
		return NAN;
	return (elapsed_s - work / g->rate_per_s) * 1e3;
}

void bench_json_guest(struct json_object *o, const struct bench_guest *g)
{
	bench_json_num(o, "guest_full_rate_per_s", g->rate_per_s > 0 ? g->rate_per_s : NAN, 0);
	bench_json_num(o, "guest_speed_during_migration", bench_guest_speed(g), 3);
	bench_json_num(o, "guest_lost_ms", bench_guest_lost_ms(g), 1);
}

void bench_common_defaults(struct bench_common_opts *c)
{
	const char *bin = getenv("VMFERRY_BIN");

	*c = (struct bench_common_opts){
		.mem_bytes = { 256ull << 20, 1ull << 30 }, .nmem = 2, .runs = 3, .vcpus = 2,
		.convergence_timeout_s = 30, .timeout_s = 300, .probe_bytes = 512ull << 20,
		.transport_on = { [BENCH_LOOPBACK] = true },
		.bin = bin && *bin ? bin : "build/vmferry",
	};
	for (size_t i = 0; i < BENCH_MAX_WORKLOADS; i++)
		c->workload_on[i] = true;
}

int bench_common_option(int opt, const char *arg, struct bench_common_opts *c,
			const char *const *workloads, size_t nworkloads)
{
	uint64_t v;

	switch (opt) {
	case 'm':
		return bench_parse_sizes(arg, c->mem_bytes, &c->nmem) ? -1 : 1;
	case 'w':
		return bench_parse_names(arg, workloads, nworkloads, c->workload_on) ? -1 : 1;
	case 't':
		return bench_parse_names(arg, bench_transport_opts, BENCH_TRANSPORT__COUNT,
					 c->transport_on) ? -1 : 1;
	case 'r':
		if (size_parse_uint(arg, 1, BENCH_MAX_RUNS, &v))
			return -1;
		c->runs = (unsigned)v;
		return 1;
	case 'c':
		if (size_parse_uint(arg, 1, 64, &v))
			return -1;
		c->vcpus = (unsigned)v;
		return 1;
	case 'C':
		return size_parse_uint(arg, 0, 86400, &c->convergence_timeout_s) ? -1 : 1;
	case 'T':
		return size_parse_uint(arg, 1, 86400, &c->timeout_s) ? -1 : 1;
	case 'p':
		return size_parse(arg, &c->probe_bytes) || c->probe_bytes < (1u << 20) ? -1 : 1;
	case 'q':
		c->quick = true;
		return 1;
	case 'g':
		if (!*arg)
			return -1;
		c->guest_spec = arg;
		return 1;
	case 'S':
		c->stream_crc = true;
		return 1;
	default:
		return 0;
	}
}

void bench_breakdown_text(struct json_object *q, char *out, size_t len)
{
	struct json_object *bd;

	out[0] = 0;
	if (json_object_object_get_ex(q, "downtime-breakdown", &bd))
		snprintf(out, len, "%s", json_object_to_json_string_ext(bd, JSON_C_TO_STRING_PLAIN));
}

void bench_json_breakdown(struct json_object *o, const char *text)
{
	struct json_object *bd = text[0] ? json_tokener_parse(text) : NULL;

	if (bd)
		json_object_object_add(o, "downtime_breakdown", bd);
}

/* ---- output and options ---- */

int bench_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

void bench_json_num(struct json_object *o, const char *key, double v, int decimals)
{
	char text[64];

	if (isnan(v) || isinf(v)) {
		json_object_object_add(o, key, NULL);
		return;
	}
	snprintf(text, sizeof(text), "%.*f", decimals, v);
	json_object_object_add(o, key, json_object_new_double_s(v, text));
}

void bench_json_u64(struct json_object *o, const char *key, uint64_t v)
{
	json_object_object_add(o, key, json_object_new_uint64(v));
}

void bench_print(struct json_object *o)
{
	printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	fflush(stdout);
	json_object_put(o);
}

double bench_median(double *v, unsigned n)
{
	if (n == 0)
		return NAN;
	qsort(v, n, sizeof(*v), bench_cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int bench_parse_names(const char *text, const char *const *names, size_t nnames,
		      bool *on)
{
	char *copy = strdup(text), *save = NULL;
	int rc = 0;

	if (!copy)
		return -ENOMEM;
	memset(on, 0, nnames * sizeof(*on));
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		size_t i;

		for (i = 0; i < nnames && strcmp(tok, names[i]); i++)
			;
		if (i == nnames) {
			fprintf(stderr, "%s: unknown name '%s'\n", harness_prog(), tok);
			rc = -EINVAL;
			break;
		}
		on[i] = true;
	}
	free(copy);
	return rc;
}

int bench_parse_sizes(const char *text, uint64_t *sizes, unsigned *nsizes)
{
	char *copy = strdup(text), *save = NULL;
	int rc = 0;

	if (!copy)
		return -ENOMEM;
	*nsizes = 0;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (*nsizes == BENCH_MAX_SIZES || size_parse(tok, &sizes[*nsizes]) ||
		    sizes[*nsizes] < (16ull << 20) || sizes[*nsizes] % (1ull << 20)) {
			fprintf(stderr, "%s: bad size '%s' (whole MiB, at least 16M)\n", harness_prog(), tok);
			rc = -EINVAL;
			break;
		}
		(*nsizes)++;
	}
	free(copy);
	return rc ? rc : *nsizes ? 0 : -EINVAL;
}

void bench_common_apply_quick(struct bench_common_opts *c)
{
	if (!c->quick)
		return;
	c->mem_bytes[0] = 256ull << 20;
	c->nmem = 1;
	c->runs = 1;
	for (int t = 0; t < BENCH_TRANSPORT__COUNT; t++)
		c->transport_on[t] = t == BENCH_LOOPBACK;
}
