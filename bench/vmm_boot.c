/*
 * bench/vmm_boot: how fast vmferry starts a guest and how fast the guest runs.
 *
 * Per run, one JSON line: VMM start (fork) to first guest instruction and to
 * first console byte; incrementer page writes per second per vCPU, next to
 * the same loop run natively by this process on the same number of threads
 * in the same run (the ratio is the point: CPL3 guests run natively); the
 * VMM's resident memory beyond guest RAM.  A last line summarises medians.
 *
 *   vmm_boot [--mem SIZE] [--vcpus N] [--runs N] [--seconds S] [--demo]
 *
 * --demo: one run that prints live figures every second, then stops the
 * guest, dumps and verifies its memory, and continues it (the README's main
 * job until precopy lands).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "control/client.h"
#include "util/log.h"
#include "util/proc.h"
#include "util/size.h"
#include "verify/verify.h"
#include "vmferry/guest_abi.h"

#include "bench.h"

#define BENCH_MAX_VCPUS 8

struct bench_opts {
	uint64_t mem_bytes;
	unsigned nvcpus;
	unsigned runs;
	unsigned seconds;
	bool demo;
	const char *bin;
};

struct bench_run {
	double first_insn_ms, first_console_ms;
	double writes_per_s[BENCH_MAX_VCPUS];
	double native_per_s[BENCH_MAX_VCPUS];
	double ratio;
	uint64_t rss_anon_kib, rss_file_kib, rss_shmem_kib;
};

static struct json_object *boot_call(struct control_client *c, const char *cmd,
				      struct json_object *args)
{
	struct json_object *reply = NULL, *ret = NULL;

	if (control_client_call(c, cmd, args, &reply) != 0 || !reply) {
		fprintf(stderr, "vmm_boot: %s: no reply\n", cmd);
		exit(1);
	}
	if (!json_object_object_get_ex(reply, "return", &ret)) {
		fprintf(stderr, "vmm_boot: %s failed: %s\n", cmd, json_object_to_json_string(reply));
		exit(1);
	}
	json_object_get(ret);
	json_object_put(reply);
	return ret;
}

/* Per-vCPU writes and the guest clock; returns false until all vCPUs run. */
static bool bench_sample(struct control_client *c, unsigned n, uint64_t *writes, uint64_t *clock_ns)
{
	struct json_object *w = boot_call(c, "query-workload", NULL), *arr, *v, *x;
	bool running = true;

	json_object_object_get_ex(w, "vcpus", &arr);
	for (unsigned i = 0; i < n; i++) {
		v = json_object_array_get_idx(arr, i);
		json_object_object_get_ex(v, "phase", &x);
		running &= !strcmp(json_object_get_string(x), "running");
		writes[i] = harness_json_u64(v, "writes");
	}
	*clock_ns = harness_json_u64(w, "guest-clock-ns");
	json_object_put(w);
	return running;
}

static void bench_rss(pid_t pid, struct bench_run *r)
{
	char path[64], line[256];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long v;

		if (sscanf(line, "RssAnon: %llu", &v) == 1)
			r->rss_anon_kib = v;
		else if (sscanf(line, "RssFile: %llu", &v) == 1)
			r->rss_file_kib = v;
		else if (sscanf(line, "RssShmem: %llu", &v) == 1)
			r->rss_shmem_kib = v;
	}
	fclose(f);
}

/* ---- the same loop natively ---- */

struct native_arg {
	volatile uint8_t *base;
	uint64_t npages;
	uint64_t deadline_ns;
	uint64_t writes;
	double per_s;
};

static void *native_thread(void *p)
{
	struct native_arg *a = p;
	uint64_t t0 = clock_monotonic_ns(), t;

	for (uint64_t i = 0; i < a->npages; i++)
		a->base[i * VMF_PAGE_BYTES] = 0;
	t0 = clock_monotonic_ns();
	do {
		for (uint64_t i = 0; i < a->npages; i++)
			a->base[i * VMF_PAGE_BYTES]++;
		a->writes += a->npages;
		t = clock_monotonic_ns();
	} while (t < a->deadline_ns);
	a->per_s = (double)a->writes * 1e9 / (double)(t - t0);
	return NULL;
}

static void bench_native(const struct bench_opts *o, struct bench_run *r)
{
	uint64_t per_bytes = ((o->mem_bytes - VMF_WORK_GPA) / o->nvcpus) & ~(VMF_PAGE_BYTES - 1);
	struct native_arg args[BENCH_MAX_VCPUS];
	pthread_t th[BENCH_MAX_VCPUS];
	uint8_t *mem = mmap(NULL, per_bytes * o->nvcpus, PROT_READ | PROT_WRITE,
			    MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED) {
		perror("vmm_boot: mmap");
		exit(1);
	}
	for (unsigned i = 0; i < o->nvcpus; i++) {
		args[i] = (struct native_arg){
			.base = mem + i * per_bytes, .npages = per_bytes / VMF_PAGE_BYTES,
			.deadline_ns = clock_monotonic_ns() + (uint64_t)o->seconds * 1000000000ull,
		};
		pthread_create(&th[i], NULL, native_thread, &args[i]);
	}
	for (unsigned i = 0; i < o->nvcpus; i++) {
		pthread_join(th[i], NULL);
		r->native_per_s[i] = args[i].per_s;
	}
	munmap(mem, per_bytes * o->nvcpus);
}

static int bench_one(const struct bench_opts *o, struct bench_run *r)
{
	char mem[32], vcpus[16], dump[HARNESS_PATH_BYTES];
	const char *args_run[] = { "--mem", mem, "--vcpus", vcpus, "--guest", "incrementer", NULL };
	struct harness_vm_opts vo = { .bin = o->bin, .name = "boot" };
	struct harness_vm vm;
	struct control_client *c;
	struct json_object *st, *boot, *args;
	uint64_t w0[BENCH_MAX_VCPUS], w1[BENCH_MAX_VCPUS], c0, c1, t0;

	memset(r, 0, sizeof(*r));
	snprintf(mem, sizeof(mem), "%lluM", (unsigned long long)(o->mem_bytes >> 20));
	snprintf(vcpus, sizeof(vcpus), "%u", o->nvcpus);
	if (harness_unique_path(dump, sizeof(dump), "dump") < 0)
		return -1;
	t0 = clock_monotonic_ns();
	if (harness_spawn_start(&vm, &vo, args_run) || harness_connect(&vm, 10000)) {
		fprintf(stderr, "vmm_boot: cannot reach the VMM's control socket: %s\n", vm.error);
		return -1;
	}
	c = vm.client;
	/* Wait (bounded) until every vCPU runs its loop. */
	for (int i = 0; !bench_sample(c, o->nvcpus, w0, &c0); i++) {
		if (i > 20000) {
			fprintf(stderr, "vmm_boot: guest did not start\n");
			exit(1);
		}
		usleep(1000);
	}
	st = boot_call(c, "query-status", NULL);
	json_object_object_get_ex(st, "boot", &boot);
	r->first_insn_ms = (double)(harness_json_u64(boot, "first-instruction-ns") - t0) / 1e6;
	r->first_console_ms = harness_json_u64(boot, "first-console-ns")
				      ? (double)(harness_json_u64(boot, "first-console-ns") - t0) / 1e6
				      : -1;
	json_object_put(st);

	for (unsigned s = 0; s < o->seconds; s++) {
		uint64_t wa[BENCH_MAX_VCPUS], ca;

		bench_sample(c, o->nvcpus, wa, &ca);
		sleep(1);
		bench_sample(c, o->nvcpus, w1, &c1);
		if (o->demo) {
			printf("  t=%us guest page writes/s:", s + 1);
			for (unsigned i = 0; i < o->nvcpus; i++)
				printf(" vcpu%u %.1fM", i, (double)(w1[i] - wa[i]) * 1e3 / (double)(c1 - ca));
			printf("\n");
			fflush(stdout);
		}
	}
	bench_sample(c, o->nvcpus, w1, &c1);
	for (unsigned i = 0; i < o->nvcpus; i++)
		r->writes_per_s[i] = (double)(w1[i] - w0[i]) * 1e9 / (double)(c1 - c0);
	bench_rss(vm.pid, r);

	if (o->demo) {
		struct json_object *verdict = NULL;
		int err;

		json_object_put(boot_call(c, "stop", NULL));
		args = json_object_new_object();
		json_object_object_add(args, "file", json_object_new_string(dump));
		json_object_put(boot_call(c, "dump-guest-memory", args));
		json_object_put(args);
		err = verify_incrementer_file(dump, &verdict);
		printf("  stopped, dumped, verified: %s\n",
		       err == 0 ? "incrementer memory consistent" : json_object_to_json_string(verdict));
		json_object_put(verdict);
		unlink(dump);
		json_object_put(boot_call(c, "cont", NULL));
		if (err)
			exit(1);
	}
	harness_vm_quit(&vm);
	unlink(vm.console_path);
	bench_native(o, r);
	r->ratio = 0;
	for (unsigned i = 0; i < o->nvcpus; i++)
		r->ratio += r->writes_per_s[i] / r->native_per_s[i] / o->nvcpus;
	return 0;
}

static void boot_print(const struct bench_opts *o, const struct bench_run *r, const char *type)
{
	printf("{\"bench\":\"vmm_boot\",\"type\":\"%s\",\"mem_bytes\":%llu,\"vcpus\":%u,"
	       "\"start_to_first_instruction_ms\":%.2f,\"start_to_first_console_ms\":%.2f,"
	       "\"page_writes_per_sec_per_vcpu\":[",
	       type, (unsigned long long)o->mem_bytes, o->nvcpus, r->first_insn_ms,
	       r->first_console_ms);
	for (unsigned i = 0; i < o->nvcpus; i++)
		printf("%s%.0f", i ? "," : "", r->writes_per_s[i]);
	printf("],\"native_page_writes_per_sec_per_thread\":[");
	for (unsigned i = 0; i < o->nvcpus; i++)
		printf("%s%.0f", i ? "," : "", r->native_per_s[i]);
	printf("],\"ratio_to_native\":%.3f,\"vmm_rss_beyond_guest_ram_kib\":%llu,"
	       "\"guest_ram_resident_kib\":%llu}\n",
	       r->ratio, (unsigned long long)(r->rss_anon_kib + r->rss_file_kib),
	       (unsigned long long)r->rss_shmem_kib);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mem", required_argument, NULL, 'm' },
		{ "vcpus", required_argument, NULL, 'c' },
		{ "runs", required_argument, NULL, 'r' },
		{ "seconds", required_argument, NULL, 's' },
		{ "demo", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct bench_opts o = {
		.mem_bytes = 1ull << 30, .nvcpus = 2, .runs = 3, .seconds = 3,
	};
	struct bench_run runs[32], med;
	uint64_t v;
	int opt;

	harness_init("vmm_boot", "VMM_BOOT_KEEP", true);
	o.bin = harness_binary();
	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 'm':
			if (size_parse(optarg, &o.mem_bytes))
				goto usage;
			break;
		case 'c':
			if (size_parse_uint(optarg, 1, BENCH_MAX_VCPUS, &v))
				goto usage;
			o.nvcpus = (unsigned)v;
			break;
		case 'r':
			if (size_parse_uint(optarg, 1, 32, &v))
				goto usage;
			o.runs = (unsigned)v;
			break;
		case 's':
			if (size_parse_uint(optarg, 1, 600, &v))
				goto usage;
			o.seconds = (unsigned)v;
			break;
		case 'd':
			o.demo = true;
			o.runs = 1;
			o.seconds = 5;
			break;
		case 'h':
		default:
			goto usage;
		}
	}
	if (access("/dev/kvm", R_OK | W_OK) != 0) {
		fprintf(stderr, "vmm_boot: /dev/kvm not available: %s\n", strerror(errno));
		return 77;
	}
	if (harness_cleanup_on_exit())
		return 1;
	if (o.demo)
		printf("vmferry: booting the default guest (incrementer, %llu MiB, %u vCPUs) at CPL3\n",
		       (unsigned long long)(o.mem_bytes >> 20), o.nvcpus);
	for (unsigned i = 0; i < o.runs; i++) {
		if (bench_one(&o, &runs[i]))
			return 1;
		boot_print(&o, &runs[i], "run");
	}
	memset(&med, 0, sizeof(med));
	{
		double a[32];

#define MEDIAN_OF(field) do { for (unsigned i = 0; i < o.runs; i++) a[i] = runs[i].field; \
		med.field = bench_median(a, o.runs); } while (0)
		MEDIAN_OF(first_insn_ms);
		MEDIAN_OF(first_console_ms);
		MEDIAN_OF(ratio);
		MEDIAN_OF(rss_anon_kib);
		MEDIAN_OF(rss_file_kib);
		MEDIAN_OF(rss_shmem_kib);
		for (unsigned k = 0; k < o.nvcpus; k++) {
			MEDIAN_OF(writes_per_s[k]);
			MEDIAN_OF(native_per_s[k]);
		}
#undef MEDIAN_OF
	}
	if (o.runs > 1)
		boot_print(&o, &med, "median");
	return 0;
usage:
	fprintf(stderr, "usage: vmm_boot [--mem SIZE] [--vcpus N<=%d] [--runs N] [--seconds S] [--demo]\n",
		BENCH_MAX_VCPUS);
	return 2;
}
