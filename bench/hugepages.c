/*
 * bench/hugepages: what a hugetlbfs memfd (MFD_HUGETLB, 2 MiB pages) would
 * change for guest RAM, measured on the host without a VM: the cost of a
 * first touch (MADV_POPULATE_WRITE, as the destination's preallocation
 * does), and whether the calls the migration relies on work on it
 * (SEEK_DATA over holes, sendfile, a 4 KiB hole punch, MADV_DONTNEED of
 * 4 KiB).  One JSON line per (kind, run), then one median line per kind.
 *
 *   hugepages [--mem SIZE] [--runs N]
 *
 * The huge pages must be reserved (/proc/sys/vm/nr_hugepages, as root: the
 * setup script does not, it is the operator's memory); without them the
 * hugetlb lines say so in "error".  Exit 0, 2 usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "util/log.h"
#include "util/size.h"

#include "bench.h"

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004u
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* A memfd of @bytes, mapped; the fd or -errno (with *map set). */
static int hp_create(bool huge, uint64_t bytes, uint8_t **map)
{
	int fd = memfd_create("hp", MFD_CLOEXEC | (huge ? MFD_HUGETLB : 0));

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)bytes) < 0) {
		int err = -errno;

		close(fd);
		return err;
	}
	*map = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (*map == MAP_FAILED) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

/* What the migration needs of a memfd, on a populated one of @bytes. */
static void hp_probe_calls(struct json_object *o, int fd, uint8_t *map, uint64_t bytes)
{
	struct stat st0, st1;
	int sv[2];
	off_t off = 0;
	ssize_t n;

	/* The second half a hole again: does SEEK_DATA see it? */
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)bytes / 2,
		      (off_t)bytes / 2) == 0) {
		off_t d = lseek(fd, (off_t)bytes / 2, SEEK_DATA);

		json_object_object_add(o, "seek_data_skips_holes",
				       json_object_new_boolean(d < 0 && errno == ENXIO));
	}
	/* Does punching one 4 KiB page give memory back (st_blocks)? */
	if (fstat(fd, &st0) == 0 &&
	    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 4096) == 0 &&
	    fstat(fd, &st1) == 0)
		json_object_object_add(o, "punch_4k_frees",
				       json_object_new_boolean(st1.st_blocks < st0.st_blocks));
	json_object_object_add(o, "madv_dontneed_4k_ok",
			       json_object_new_boolean(madvise(map + 4096, 4096, MADV_DONTNEED) == 0));
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0) {
		n = sendfile(sv[0], fd, &off, 4096);
		json_object_object_add(o, "sendfile_ok", json_object_new_boolean(n == 4096));
		if (n < 0)
			json_object_object_add(o, "sendfile_error", json_object_new_string(strerror(errno)));
		close(sv[0]);
		close(sv[1]);
	}
}

/* One run of @kind; its first-touch time in *ms (NAN on failure). */
static void hp_run(bool huge, uint64_t bytes, unsigned run, double *ms)
{
	struct json_object *o = json_object_new_object();
	uint8_t *map = NULL;
	uint64_t t0;
	int fd = hp_create(huge, bytes, &map);

	*ms = NAN;
	json_object_object_add(o, "bench", json_object_new_string("hugepages"));
	json_object_object_add(o, "type", json_object_new_string("run"));
	json_object_object_add(o, "memfd", json_object_new_string(huge ? "hugetlb-2m" : "shmem-4k"));
	bench_json_u64(o, "bytes", bytes);
	bench_json_u64(o, "run", run);
	if (fd < 0) {
		json_object_object_add(o, "error", json_object_new_string(strerror(-fd)));
		bench_print(o);
		return;
	}
	t0 = clock_monotonic_ns();
	if (madvise(map, bytes, MADV_POPULATE_WRITE) < 0) {
		json_object_object_add(o, "error", json_object_new_string(
			errno == ENOMEM || errno == EFAULT ? "not enough huge pages reserved "
			"(/proc/sys/vm/nr_hugepages)" : strerror(errno)));
	} else {
		*ms = (double)(clock_monotonic_ns() - t0) / 1e6;
		bench_json_num(o, "first_touch_ms", *ms, 3);
		bench_json_num(o, "first_touch_ms_per_mib", *ms / (double)(bytes >> 20), 4);
		hp_probe_calls(o, fd, map, bytes);
	}
	munmap(map, bytes);
	close(fd);
	bench_print(o);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mem", required_argument, NULL, 'm' },
		{ "runs", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	uint64_t bytes = 512ull << 20, runs = 5;
	double ms[2][BENCH_MAX_RUNS];
	int opt;

	harness_init("hugepages", "HUGEPAGES_KEEP", false);
	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 'm':
			if (size_parse(optarg, &bytes) || !bytes || bytes % (2u << 20))
				goto usage;
			break;
		case 'r':
			if (size_parse_uint(optarg, 1, BENCH_MAX_RUNS, &runs))
				goto usage;
			break;
		case 'h':
			printf("usage: hugepages [--mem SIZE (whole 2 MiB)] [--runs N]\n");
			return 0;
		default:
			goto usage;
		}
	}
	if (optind != argc)
		goto usage;
	/* Interleaved: 4 KiB then 2 MiB pages, run by run. */
	for (unsigned i = 0; i < runs; i++)
		for (int huge = 0; huge < 2; huge++)
			hp_run(huge, bytes, i, &ms[huge][i]);
	for (int huge = 0; huge < 2; huge++) {
		struct json_object *o = json_object_new_object();
		double v[BENCH_MAX_RUNS];
		unsigned k = 0;

		for (unsigned i = 0; i < runs; i++)
			if (!isnan(ms[huge][i]))
				v[k++] = ms[huge][i];
		json_object_object_add(o, "bench", json_object_new_string("hugepages"));
		json_object_object_add(o, "type", json_object_new_string("median"));
		json_object_object_add(o, "memfd", json_object_new_string(huge ? "hugetlb-2m" : "shmem-4k"));
		bench_json_u64(o, "bytes", bytes);
		bench_json_u64(o, "measured_runs", k);
		bench_json_num(o, "first_touch_ms", bench_median(v, k), 3);
		bench_json_num(o, "first_touch_ms_per_mib", bench_median(v, k) / (double)(bytes >> 20), 4);
		bench_print(o);
	}
	return 0;
usage:
	fprintf(stderr, "usage: hugepages [--mem SIZE (whole 2 MiB)] [--runs N]\n");
	return 2;
}
