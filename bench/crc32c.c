/*
 * bench/crc32c: the stream's CRC-32C on this machine, per core, and what
 * it costs the migration stream's data path.
 *
 *   crc32c [--mib N] [--runs N] [--pipeline-mib N]
 *
 * Per run, one JSON line per implementation ("hw": the SSE4.2 instruction,
 * three lanes per page, when the CPU has it; "table": the portable one)
 * with the throughput in GiB/s of CRCs over 4 KiB pages, as the source and
 * the destination compute them: N MiB (default 64) of pseudo-random pages,
 * in memory and warmed once, then timed (thread CPU time and wall time, on
 * one thread).  A last line per implementation has the medians.
 *
 * Then the pipeline ("type": "pipeline"): the stream a precopy pass is,
 * without VMs - a writer thread sends --pipeline-mib MiB (default 512) of a
 * memfd as RAM records with sendfile (stream_put_file) after their heads,
 * a reader thread parses them with mig_load into memory and checks each
 * page's CRC as a destination does - over a TCP loopback connection and a
 * UNIX socket, stream version 2 (CRCs) and 1 (none) interleaved, --runs
 * times each; GiB/s from the writer's start to the reader's END.  Medians
 * last ("type": "pipeline-median", with the ratio on/off).  Exit 0, 1 when
 * a run fails, 2 on usage errors.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <json-c/json.h>

#include "migration/channel.h"
#include "migration/load.h"
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


/* ---- the pipeline ---- */

struct pipe_run {
	uint32_t version;
	int wfd, rfd;
	int memfd;
	uint8_t *src, *dst;   /* the memfd's mapping, the reader's memory */
	size_t bytes;
	int werr, rerr;
	uint64_t wcpu_ns, rcpu_ns; /* each thread's CPU time */
	char err[256];
};

/* The figures of one pipeline run (or medians): GiB/s, CPU ms of each side per GiB. */
struct pipe_fig {
	double gibs, wcpu_ms_per_gib, rcpu_ms_per_gib;
};

static void *pipe_writer(void *arg)
{
	struct pipe_run *p = arg;
	struct mig_header h = { .version = p->version, .page_bytes = MIG_PAGE_BYTES, .nvcpus = 1,
				.nblocks = 1 };
	struct stream s;
	uint64_t npages = p->bytes / MIG_PAGE_BYTES;

	snprintf(h.blocks[0].name, sizeof(h.blocks[0].name), "ram0");
	h.blocks[0].bytes = p->bytes;
	if (stream_init(&s, p->wfd, 30000)) {
		p->werr = -1;
		return NULL;
	}
	mig_save_header(&s, &h);
	for (uint64_t first = 0; first < npages && !stream_error(&s); first += MIG_RUN_MAX_PAGES) {
		uint32_t n = (uint32_t)(npages - first < MIG_RUN_MAX_PAGES ? npages - first
									 : MIG_RUN_MAX_PAGES);

		mig_save_ram_head(&s, p->version, 0, false, n, first, p->src + first * MIG_PAGE_BYTES);
		stream_put_file(&s, p->memfd, first * MIG_PAGE_BYTES, p->src + first * MIG_PAGE_BYTES,
				(size_t)n * MIG_PAGE_BYTES);
	}
	stream_put_u8(&s, MIG_REC_END);
	p->werr = stream_flush(&s);
	stream_release(&s);
	p->wcpu_ns = clock_thread_cpu_ns();
	return NULL;
}

/* As the destination's precopy path: into memory, then each page checked. */
static int pipe_ram(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages,
		    bool zero, const uint32_t *page_crcs, struct stream *s, char *err, size_t errlen)
{
	struct pipe_run *p = opaque;
	uint8_t bad[MIG_RUN_MAX_PAGES];

	(void)block;
	if (!zero && mig_get_pages_checked(s, p->dst + first_page * MIG_PAGE_BYTES, npages,
					   page_crcs, bad)) {
		snprintf(err, errlen, "a page of %llu+%u failed its CRC",
			 (unsigned long long)first_page, npages);
		return -EILSEQ;
	}
	return 0;
}

static void *pipe_reader(void *arg)
{
	static const struct mig_section_kind kinds[] = { { 100, "none", 1, false } };
	struct pipe_run *p = arg;
	const struct mig_load_ops ops = { .section_kinds = kinds, .nsection_kinds = 1,
					  .ram = pipe_ram };
	struct mig_load_stats st;
	struct stream s;

	if (stream_init(&s, p->rfd, 30000)) {
		p->rerr = -1;
		return NULL;
	}
	p->rerr = mig_load(&s, &ops, p, &st, p->err, sizeof(p->err));
	stream_release(&s);
	p->rcpu_ns = clock_thread_cpu_ns();
	return NULL;
}

/* A connected pair: [0] writes, [1] reads.  0 or -1. */
static int pipe_connect(bool tcp, int fd[2])
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int l;

	if (!tcp)
		return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fd);
	l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa)) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&sa, &len)) {
		if (l >= 0)
			close(l);
		return -1;
	}
	fd[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd[0] < 0 || connect(fd[0], (struct sockaddr *)&sa, sizeof(sa))) {
		close(l);
		return -1;
	}
	fd[1] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	close(l);
	if (fd[1] < 0)
		return -1;
	channel_tune(fd[0]);
	channel_tune(fd[1]);
	return 0;
}

/* One pass of the pipeline: GiB/s (and CPU in @f), or -1. */
static double pipe_once(struct pipe_run *p, bool tcp, struct pipe_fig *f)
{
	pthread_t w, r;
	int fd[2];
	uint64_t t0;

	if (pipe_connect(tcp, fd))
		return -1;
	p->wfd = fd[0];
	p->rfd = fd[1];
	p->werr = p->rerr = 0;
	t0 = clock_monotonic_ns();
	pthread_create(&r, NULL, pipe_reader, p);
	pthread_create(&w, NULL, pipe_writer, p);
	pthread_join(w, NULL);
	pthread_join(r, NULL);
	close(fd[0]);
	close(fd[1]);
	if (p->werr || p->rerr) {
		fprintf(stderr, "crc32c: pipeline failed: %s\n", p->err);
		return -1;
	}
	if (memcmp(p->src, p->dst, p->bytes)) {
		fprintf(stderr, "crc32c: pipeline: the pages differ\n");
		return -1;
	}
	f->gibs = (double)p->bytes / (1 << 30) / ((double)(clock_monotonic_ns() - t0) / 1e9);
	f->wcpu_ms_per_gib = (double)p->wcpu_ns / 1e6 / ((double)p->bytes / (1 << 30));
	f->rcpu_ms_per_gib = (double)p->rcpu_ns / 1e6 / ((double)p->bytes / (1 << 30));
	return f->gibs;
}

static void print_pipe(const char *type, const char *transport, uint32_t version,
		       const struct pipe_fig *f, double ratio, size_t mib)
{
	struct json_object *o = json_object_new_object();
	double gibs = f->gibs;

	json_object_object_add(o, "type", json_object_new_string(type));
	json_object_object_add(o, "transport", json_object_new_string(transport));
	json_object_object_add(o, "crc", json_object_new_string(version >= 2 ? "on" : "off"));
	json_object_object_add(o, "mib", json_object_new_uint64(mib));
	json_object_object_add(o, "gib_per_s", json_object_new_double(gibs));
	json_object_object_add(o, "writer_cpu_ms_per_gib", json_object_new_double(f->wcpu_ms_per_gib));
	json_object_object_add(o, "reader_cpu_ms_per_gib", json_object_new_double(f->rcpu_ms_per_gib));
	if (ratio > 0)
		json_object_object_add(o, "ratio_on_to_off", json_object_new_double(ratio));
	printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	fflush(stdout);
	json_object_put(o);
}

/* Both transports, versions 2 and 1 interleaved (the order alternating).  0 or 1. */
static int pipeline(size_t mib, size_t runs, const uint8_t *pattern)
{
	struct pipe_run p = { .bytes = mib << 20 };
	int rc = 0;

	p.memfd = memfd_create("bench-ram", MFD_CLOEXEC);
	if (p.memfd < 0 || ftruncate(p.memfd, (off_t)p.bytes))
		return 1;
	p.src = mmap(NULL, p.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, p.memfd, 0);
	p.dst = mmap(NULL, p.bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p.src == MAP_FAILED || p.dst == MAP_FAILED)
		return 1;
	for (size_t off = 0; off < p.bytes; off += 1 << 20)
		memcpy(p.src + off, pattern + off % (1 << 20), 1 << 20);
	memset(p.dst, 0, p.bytes); /* fault it in once: every run writes the same memory */
	for (int tcp = 1; tcp >= 0; tcp--) {
		const char *name = tcp ? "loopback-tcp" : "unix-socket";
		double g[2][3][100];
		struct pipe_fig f, m[2];

		for (size_t r = 0; r < runs; r++) {
			for (int k = 0; k < 2; k++) {
				int on = (int)(r % 2) ^ k ^ 1; /* on, off; then off, on; ... */

				p.version = on ? 2 : 1;
				if (pipe_once(&p, tcp, &f) < 0)
					rc = 1;
				g[on][0][r] = f.gibs;
				g[on][1][r] = f.wcpu_ms_per_gib;
				g[on][2][r] = f.rcpu_ms_per_gib;
				print_pipe("pipeline", name, p.version, &f, 0, mib);
			}
		}
		for (int on = 0; on < 2; on++) {
			for (int i = 0; i < 3; i++)
				qsort(g[on][i], runs, sizeof(double), cmp_double);
			m[on] = (struct pipe_fig){ g[on][0][runs / 2], g[on][1][runs / 2],
						   g[on][2][runs / 2] };
		}
		print_pipe("pipeline-median", name, 2, &m[1], m[1].gibs / m[0].gibs, mib);
		print_pipe("pipeline-median", name, 1, &m[0], 0, mib);
	}
	munmap(p.src, p.bytes);
	munmap(p.dst, p.bytes);
	close(p.memfd);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mib", required_argument, NULL, 'm' },
		{ "runs", required_argument, NULL, 'r' },
		{ "pipeline-mib", required_argument, NULL, 'p' },
		{ 0, 0, 0, 0 },
	};
	size_t mib = 64, runs = 5, pipe_mib = 512;
	uint8_t *buf;
	uint64_t seed = 1;
	uint32_t sink = 0;
	int c;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 'm' && atoi(optarg) > 0)
			mib = (size_t)atoi(optarg);
		else if (c == 'r' && atoi(optarg) > 0 && atoi(optarg) <= 100)
			runs = (size_t)atoi(optarg);
		else if (c == 'p' && atoi(optarg) >= 0)
			pipe_mib = (size_t)atoi(optarg);
		else {
			fprintf(stderr, "usage: crc32c [--mib N (at least 1)] [--runs N (1..100)] "
				"[--pipeline-mib N (0: none)]\n");
			return 2;
		}
	}
	buf = malloc(mib < 1 ? 1 << 20 : mib << 20);
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
	c = pipe_mib ? pipeline(pipe_mib, runs, buf) : 0;
	free(buf);
	if (sink == 0x12345678u) /* keeps the CRCs from being optimised away */
		printf("\n");
	return c;
}
