/*
 * bench/cpr: in-place live update (CPR transfer).  For each guest RAM size,
 * one guest is handed from process to process --updates times; each update
 * prints one JSON line with the guest pause (last old-vCPU stop to first
 * new-vCPU run, both on CLOCK_MONOTONIC of this host), the total time of
 * the update as the old process measured it (migrate command to the new
 * process running; the new process is already up and listening, as an
 * operator would start it first), and the bytes on the main channel.  Then a
 * median line per size, and - for sizes up to --copy-max - one ordinary
 * precopy migration of the same guest over a UNIX socket on this host, the
 * alternative that copies RAM, for the ratio in the same run.
 *
 * The guest is the dirtier with a working set of --wss per vCPU, so that a
 * 16 GiB guest costs only what it touches; it keeps writing at full speed
 * through every update.  After the last update the guest must make
 * progress and its memory must verify.
 *
 * Each update also says what it cost the guest, as bench/precopy does
 * (bench.h, struct bench_guest): the dirtier's full rate over the 300 ms
 * before the first update (after one the guest is slow a while), and
 * guest_lost_ms, the full-speed milliseconds of work it lost from the
 * migrate command until it runs at 80 % of that rate again on the new
 * process (over 100 ms; at most 20 s): the new process maps guest memory
 * afresh, and each page the guest touches again costs a second-level fault.
 * guest_recovered_ms says when that was, from the migrate command.
 *
 *   build/bench/cpr [--mem 1G,16G] [--updates 5] [--vcpus 2] [--wss 64M]
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "control/client.h"
#include "util/log.h"
#include "util/size.h"

#include "bench.h"

#define CPR_RECOVER_MS 20000   /* the guest back at full speed after an update */

struct cpr_opts {
	const char *bin;
	uint64_t mem_bytes[BENCH_MAX_SIZES];
	unsigned nmem, updates, vcpus;
	uint64_t wss_bytes, copy_max_bytes;
};

struct cpr_run {
	bool ok;
	double total_ms, downtime_ms, setup_ms;
	uint64_t wire_bytes;
	char error[256];
	char breakdown[768];         /* the old process's downtime-breakdown (JSON) */
	struct bench_guest guest;    /* the dirtier's work across the update */
};

static void cpr_usage(FILE *f)
{
	fprintf(f,
		"usage: cpr [OPTIONS]\n"
		"  --mem SIZES      guest RAM sizes, comma-separated (default 1G,16G)\n"
		"  --updates N      updates in a row per size (default 5, at most %d)\n"
		"  --vcpus N        vCPUs (default 2)\n"
		"  --wss SIZE       dirtier working set per vCPU (default 64M)\n"
		"  --copy-max SIZE  also time a precopy migration for sizes up to this (default 4G)\n"
		"Prints one JSON object per update, a median line per size and a precopy line.\n",
		BENCH_MAX_RUNS);
}

static struct json_object *cpr_line(const char *kind, const struct cpr_opts *o, uint64_t mem)
{
	struct json_object *obj = json_object_new_object();

	json_object_object_add(obj, "bench", json_object_new_string("cpr"));
	json_object_object_add(obj, "line", json_object_new_string(kind));
	bench_json_u64(obj, "guest_ram_bytes", mem);
	bench_json_u64(obj, "vcpus", o->vcpus);
	json_object_object_add(obj, "workload", json_object_new_string("dirtier"));
	bench_json_u64(obj, "wss_bytes_per_vcpu", o->wss_bytes);
	return obj;
}

/*
 * Wait for the MIGRATION event that ends the update on the old process: it
 * carries the old side's figures (the old process exits right after).
 */
static int cpr_wait_end(struct harness_vm *old, struct json_object **data, struct bench_result *r)
{
	uint64_t deadline = clock_monotonic_ns() + 120000000000ull;

	while (clock_monotonic_ns() < deadline) {
		struct json_object *ev = NULL, *d;
		const char *st;
		int rc = control_client_wait_event(old->client, "MIGRATION", 1000, &ev);

		if (rc == -ETIMEDOUT)
			continue;
		if (rc) {
			snprintf(r->error, sizeof(r->error), "old VMM: %s before the update ended",
				 strerror(-rc));
			return rc;
		}
		if (json_object_object_get_ex(ev, "data", &d)) {
			st = harness_json_str(d, "status");
			if (!strcmp(st, "completed") || !strcmp(st, "failed") || !strcmp(st, "cancelled")) {
				*data = json_object_get(d);
				json_object_put(ev);
				return 0;
			}
		}
		json_object_put(ev);
	}
	snprintf(r->error, sizeof(r->error), "the update did not end within 120 s");
	return -ETIMEDOUT;
}

/*
 * Close @g's account on the new process once the guest is back at (80 % of)
 * its full speed over a 100 ms window, or after CPR_RECOVER_MS: the new
 * process maps the guest's memory afresh, and the guest's first touch of
 * each page after the update costs it a second-level fault - a slowdown
 * after the pause that is work lost all the same.
 */
static void cpr_guest_close(struct harness_vm *vm, struct bench_guest *g)
{
	uint64_t deadline = clock_monotonic_ns() + CPR_RECOVER_MS * 1000000ull;
	uint64_t pa, ta;

	if (g->rate_per_s <= 0 || bench_guest_sample(vm, "new", &pa, &ta))
		return;
	while (clock_monotonic_ns() < deadline) {
		harness_nap_ms(100);
		if (bench_guest_sample(vm, "new", &g->p1, &g->t1_ns) || g->p1 < pa) {
			g->t1_ns = 0;
			return;
		}
		if ((double)(g->p1 - pa) * 1e9 / (double)(g->t1_ns - ta) >= 0.8 * g->rate_per_s)
			return;
		pa = g->p1;
		ta = g->t1_ns;
	}
}

/*
 * Update *@old into a new VMM, which becomes *@old.  @full_rate_per_s: the
 * guest's work per second at full speed (0: unknown).
 */
static void cpr_update(const struct cpr_opts *o, struct harness_vm *old, unsigned n,
		       double full_rate_per_s, struct cpr_run *out)
{
	struct bench_result r = { 0 };
	struct harness_vm nv = { .pid = -1 };
	struct json_object *args, *end = NULL, *q = NULL;
	char name[32], main_uri[160], cpr_uri[160];
	const char *nargs[8];
	bool running = false;
	uint64_t p0 = 0, p1 = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	snprintf(name, sizeof(name), "vmm-%u", n);
	snprintf(main_uri, sizeof(main_uri), "unix:%s/main-%u.sock", harness_dir(), n);
	snprintf(cpr_uri, sizeof(cpr_uri), "unix:%s/cpr-%u.sock", harness_dir(), n);
	nargs[0] = "--incoming";
	nargs[1] = main_uri;
	nargs[2] = "--incoming-cpr";
	nargs[3] = cpr_uri;
	nargs[4] = NULL;
	if (bench_vm_spawn(o->bin, NULL, 0, name, nargs, &nv, &r))
		goto fail;
	/* An operator starts the new process first: time the update, not its exec. */
	for (int i = 0; i < BENCH_CONNECT_MS && access(cpr_uri + strlen("unix:"), F_OK); i++)
		harness_nap_ms(1);
	args = json_tokener_parse("{\"mode\": \"cpr-transfer\"}");
	rc = bench_call(old, "migrate-set-parameters", args, NULL, &r);
	json_object_put(args);
	if (rc)
		goto fail;
	out->guest.rate_per_s = full_rate_per_s;
	if (full_rate_per_s > 0 &&
	    bench_guest_sample(old, "old", &out->guest.p0, &out->guest.t0_ns))
		out->guest.rate_per_s = 0;
	rc = bench_vm_error(old, harness_migrate_channels(old, main_uri, cpr_uri), &r);
	if (rc || cpr_wait_end(old, &end, &r))
		goto fail;
	if (strcmp(harness_json_str(end, "status"), "completed")) {
		snprintf(r.error, sizeof(r.error), "update %s: %s", harness_json_str(end, "status"),
			 harness_json_str(end, "error-desc"));
		goto fail;
	}
	out->total_ms = harness_json_double(end, "total-time", 0);
	out->setup_ms = harness_json_double(end, "setup-time", 0);
	out->downtime_ms = harness_json_double(end, "downtime", 0);
	bench_breakdown_text(end, out->breakdown, sizeof(out->breakdown));
	out->wire_bytes = harness_json_u64(end, "transferred");
	/* The old process ends by itself, cleanly. */
	control_client_close(old->client);
	old->client = NULL;
	rc = harness_wait_exit(old, 10000);
	if (rc == -ETIMEDOUT)
		harness_vm_kill(old);
	if (rc != 0) {
		snprintf(r.error, sizeof(r.error), "the old VMM exited with status %d", rc);
		goto fail;
	}
	if (bench_vm_connect(&nv, &r))
		goto fail;
	*old = nv;
	nv.pid = -1;
	cpr_guest_close(old, &out->guest);
	/* The guest runs on in the new process. */
	if (bench_workload(old, &running, &p0, &r) || !running) {
		snprintf(r.error, sizeof(r.error), "the guest does not run after the update");
		goto fail;
	}
	for (int i = 0; i < 500 && p1 <= p0; i++) {
		harness_nap_ms(10);
		if (bench_workload(old, &running, &p1, &r))
			goto fail;
	}
	if (p1 <= p0) {
		snprintf(r.error, sizeof(r.error), "the guest made no progress after the update");
		goto fail;
	}
	out->ok = true;
	json_object_put(end);
	json_object_put(q);
	return;
fail:
	snprintf(out->error, sizeof(out->error), "%s", r.error);
	json_object_put(end);
	json_object_put(q);
	if (nv.pid > 0)
		harness_vm_quit(&nv);
}

/* An ordinary precopy migration of @src's guest over a UNIX socket; stops @src. */
static void cpr_copy_baseline(const struct cpr_opts *o, uint64_t mem, struct harness_vm *src)
{
	struct bench_result r = { 0 };
	struct harness_vm dst = { .pid = -1 };
	struct json_object *obj, *args, *q = NULL;
	char uri[160], mem_arg[32], vcpus_arg[16];
	const char *dargs[] = { "--mem", mem_arg, "--vcpus", vcpus_arg, "--incoming", uri, NULL };

	snprintf(uri, sizeof(uri), "unix:%s/copy.sock", harness_dir());
	snprintf(mem_arg, sizeof(mem_arg), "%lluM", (unsigned long long)(mem >> 20));
	snprintf(vcpus_arg, sizeof(vcpus_arg), "%u", o->vcpus);
	if (bench_vm_start(o->bin, NULL, 0, "copy-dst", dargs, &dst, &r))
		goto out;
	args = json_tokener_parse("{\"mode\": \"normal\"}");
	bench_call(src, "migrate-set-parameters", args, NULL, &r);
	json_object_put(args);
	args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string(uri));
	if (bench_call(src, "migrate", args, NULL, &r) == 0 &&
	    bench_wait_migration(600, src, &q, &r) == 0) {
		bench_copy_stats(q, &r);
		if (r.completed)
			bench_verify_destination(&dst, "dirtier", &r);
	}
	json_object_put(args);
out:
	obj = cpr_line("precopy-unix-socket", o, mem);
	json_object_object_add(obj, "mode", json_object_new_string("precopy"));
	json_object_object_add(obj, "status", json_object_new_string(r.status[0] ? r.status : "error"));
	bench_json_num(obj, "total_time_ms", r.total_ms, 3);
	bench_json_num(obj, "downtime_ms", r.downtime_ms >= 0 ? r.downtime_ms : NAN, 3);
	bench_json_u64(obj, "bytes_on_wire", r.wire_bytes);
	json_object_object_add(obj, "verified", json_object_new_boolean(r.verified));
	if (r.error[0])
		json_object_object_add(obj, "error", json_object_new_string(r.error));
	if (r.verify_error[0])
		json_object_object_add(obj, "verify_error", json_object_new_string(r.verify_error));
	bench_print(obj);
	json_object_put(q);
	harness_vm_quit(&dst);
	harness_vm_quit(src);
}

static void cpr_one_size(const struct cpr_opts *o, uint64_t mem)
{
	struct bench_result r = { 0 };
	struct harness_vm vm = { .pid = -1 };
	struct cpr_run runs[BENCH_MAX_RUNS];
	struct bench_guest full;
	double tot[BENCH_MAX_RUNS], down[BENCH_MAX_RUNS], lost[BENCH_MAX_RUNS], max_down = 0;
	char mem_arg[32], vcpus_arg[16], guest[64];
	const char *args[] = { "--mem", mem_arg, "--vcpus", vcpus_arg, "--guest", guest, NULL };
	struct json_object *obj;
	unsigned nok = 0, nlost = 0;
	bool running = false;
	uint64_t progress;

	snprintf(mem_arg, sizeof(mem_arg), "%lluM", (unsigned long long)(mem >> 20));
	snprintf(vcpus_arg, sizeof(vcpus_arg), "%u", o->vcpus);
	snprintf(guest, sizeof(guest), "dirtier,wss=%llu", (unsigned long long)o->wss_bytes);
	if (bench_vm_start(o->bin, NULL, 0, "vmm-first", args, &vm, &r)) {
		fprintf(stderr, "cpr: %s\n", r.error);
		return;
	}
	for (int i = 0; i < BENCH_READY_MS_FOR(mem) / 10 && !running; i++) {
		if (bench_workload(&vm, &running, &progress, &r))
			break;
		harness_nap_ms(10);
	}
	/* Once, before the first update: afterwards the guest is slow a while. */
	bench_guest_rate(&vm, &full);
	for (unsigned i = 0; i < o->updates; i++) {
		struct cpr_run *c = &runs[i];

		cpr_update(o, &vm, i, full.rate_per_s, c);
		obj = cpr_line("update", o, mem);
		json_object_object_add(obj, "mode", json_object_new_string("cpr-transfer"));
		bench_json_u64(obj, "run", i);
		json_object_object_add(obj, "status", json_object_new_string(c->ok ? "completed" : "failed"));
		if (c->ok) {
			bench_json_num(obj, "total_time_ms", c->total_ms, 3);
			bench_json_num(obj, "downtime_ms", c->downtime_ms, 3);
			bench_json_breakdown(obj, c->breakdown);
			bench_json_num(obj, "setup_time_ms", c->setup_ms, 3);
			bench_json_u64(obj, "bytes_on_wire", c->wire_bytes);
			bench_json_u64(obj, "ram_bytes_copied", 0);
			bench_json_guest(obj, &c->guest);
			bench_json_num(obj, "guest_recovered_ms", c->guest.t1_ns > c->guest.t0_ns ?
				       (double)(c->guest.t1_ns - c->guest.t0_ns) / 1e6 : NAN, 1);
			lost[nlost] = bench_guest_lost_ms(&c->guest);
			nlost += !isnan(lost[nlost]);
			tot[nok] = c->total_ms;
			down[nok] = c->downtime_ms;
			if (c->downtime_ms > max_down)
				max_down = c->downtime_ms;
			nok++;
		} else {
			json_object_object_add(obj, "error", json_object_new_string(c->error));
		}
		bench_print(obj);
		if (!c->ok)
			break;
	}
	memset(&r, 0, sizeof(r));
	if (nok == o->updates)
		bench_verify_destination(&vm, "dirtier", &r);
	obj = cpr_line("median", o, mem);
	json_object_object_add(obj, "mode", json_object_new_string("cpr-transfer"));
	bench_json_u64(obj, "updates", nok);
	bench_json_num(obj, "total_time_ms", nok ? bench_median(tot, nok) : NAN, 3);
	bench_json_num(obj, "downtime_ms", nok ? bench_median(down, nok) : NAN, 3);
	bench_json_num(obj, "downtime_max_ms", nok ? max_down : NAN, 3);
	bench_json_u64(obj, "guest_measured_runs", nlost);
	bench_json_num(obj, "guest_lost_ms", bench_median(lost, nlost), 1);
	json_object_object_add(obj, "verified", json_object_new_boolean(r.verified));
	if (r.verify_error[0])
		json_object_object_add(obj, "verify_error", json_object_new_string(r.verify_error));
	bench_print(obj);
	if (vm.client && mem <= o->copy_max_bytes)
		cpr_copy_baseline(o, mem, &vm);
	else
		harness_vm_quit(&vm);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mem", required_argument, NULL, 'm' },
		{ "updates", required_argument, NULL, 'u' },
		{ "vcpus", required_argument, NULL, 'c' },
		{ "wss", required_argument, NULL, 'w' },
		{ "copy-max", required_argument, NULL, 'x' },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct cpr_opts o = {
		.mem_bytes = { 1ull << 30, 16ull << 30 }, .nmem = 2, .updates = 5, .vcpus = 2,
		.wss_bytes = 64ull << 20, .copy_max_bytes = 4ull << 30,
	};
	uint64_t v;
	int opt;

	harness_init("cpr", "CPR_KEEP", false);
	o.bin = getenv("VMFERRY_BIN") && *getenv("VMFERRY_BIN") ? getenv("VMFERRY_BIN") : "build/vmferry";
	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 'm':
			if (bench_parse_sizes(optarg, o.mem_bytes, &o.nmem))
				goto usage;
			break;
		case 'u':
			if (size_parse_uint(optarg, 1, BENCH_MAX_RUNS, &v))
				goto usage;
			o.updates = (unsigned)v;
			break;
		case 'c':
			if (size_parse_uint(optarg, 1, 32, &v))
				goto usage;
			o.vcpus = (unsigned)v;
			break;
		case 'w':
			if (size_parse(optarg, &o.wss_bytes) || !o.wss_bytes)
				goto usage;
			break;
		case 'x':
			if (size_parse(optarg, &o.copy_max_bytes))
				goto usage;
			break;
		case 'h':
			cpr_usage(stdout);
			return 0;
		default:
			goto usage;
		}
	}
	if (optind != argc)
		goto usage;
	if (access("/dev/kvm", R_OK | W_OK) != 0) {
		fprintf(stderr, "cpr: /dev/kvm not available: %s\n", strerror(errno));
		return 77;
	}
	if (harness_cleanup_on_exit())
		return 1;
	for (unsigned m = 0; m < o.nmem; m++)
		cpr_one_size(&o, o.mem_bytes[m]);
	return 0;
usage:
	cpr_usage(stderr);
	return 2;
}
