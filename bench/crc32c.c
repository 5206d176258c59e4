/*
 * bench/crc32c: the stream's CRC-32C on this machine, per core.
 *
 *   crc32c [--mib N] [--runs N]
 *
 * Per run, one JSON line per implementation ("hw": the SSE4.2 instruction,
 * three lanes per page, when the CPU has it; "table": the portable one)
 * with the throughput in GiB/s of CRCs over 4 KiB pages, as the source and
 * the destination compute them: N MiB (default 64) of pseudo-random pages,
 * in memory and warmed once, then timed (thread CPU time and wall time, on
 * one thread).  A last line per implementation has the medians.  Exit 0,
 * 2 on usage errors.
 */
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "util/crc32c.h"
#include "util/log.h"

#define PAGE 4096u

typedef uint32_t crc_fn(uint32_t crc, const void *p, size_t n);

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* GiB/s of CRCs over every page of @buf, by wall time; CPU time in *cpu_gibs. */
static double bench_pages(crc_fn *fn, const uint8_t *buf, size_t bytes, double *cpu_gibs,
			  uint32_t *sink)
{
	uint64_t t0 = clock_monotonic_ns(), c0 = clock_thread_cpu_ns(), t1, c1;

	for (size_t off = 0; off < bytes; off += PAGE)
		*sink ^= fn(0, buf + off, PAGE);
	t1 = clock_monotonic_ns();
	c1 = clock_thread_cpu_ns();
	*cpu_gibs = (double)bytes / (1 << 30) / ((double)(c1 - c0) / 1e9);
	return (double)bytes / (1 << 30) / ((double)(t1 - t0) / 1e9);
}

static void print_line(const char *type, const char *impl, double gibs, double cpu_gibs,
		       size_t mib)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "type", json_object_new_string(type));
	json_object_object_add(o, "impl", json_object_new_string(impl));
	json_object_object_add(o, "mib", json_object_new_uint64(mib));
	json_object_object_add(o, "gib_per_s", json_object_new_double(gibs));
	json_object_object_add(o, "gib_per_cpu_s", json_object_new_double(cpu_gibs));
	printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mib", required_argument, NULL, 'm' },
		{ "runs", required_argument, NULL, 'r' },
		{ 0, 0, 0, 0 },
	};
	size_t mib = 64, runs = 5;
	uint8_t *buf;
	uint64_t seed = 1;
	uint32_t sink = 0;
	int c;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 'm' && atoi(optarg) > 0)
			mib = (size_t)atoi(optarg);
		else if (c == 'r' && atoi(optarg) > 0 && atoi(optarg) <= 100)
			runs = (size_t)atoi(optarg);
		else {
			fprintf(stderr, "usage: crc32c [--mib N] [--runs N (1..100)]\n");
			return 2;
		}
	}
	buf = malloc(mib << 20);
	if (!buf) {
		fprintf(stderr, "crc32c: no memory for %zu MiB\n", mib);
		return 1;
	}
	for (size_t i = 0; i < (mib << 20); i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		buf[i] = (uint8_t)(seed >> 56);
	}
	for (int impl = crc32c_hw_available() ? 0 : 1; impl < 2; impl++) {
		crc_fn *fn = impl ? crc32c_sw : crc32c_hw;
		const char *name = impl ? "table" : "hw";
		double wall[100], cpu[100], unused;

		bench_pages(fn, buf, mib << 20, &unused, &sink); /* warm */
		for (size_t r = 0; r < runs; r++) {
			wall[r] = bench_pages(fn, buf, mib << 20, &cpu[r], &sink);
			print_line("run", name, wall[r], cpu[r], mib);
		}
		qsort(wall, runs, sizeof(wall[0]), cmp_double);
		qsort(cpu, runs, sizeof(cpu[0]), cmp_double);
		print_line("median", name, wall[runs / 2], cpu[runs / 2], mib);
	}
	free(buf);
	return sink == 0x12345678u; /* keeps the CRCs from being optimised away */
}
