/*
 * bench/scale: how precopy, postcopy and CPR scale with guest RAM, on dense
 * guests (every page written) and on sparse ones (a large RAM of which a
 * fixed amount is touched), with a plot of the pause and the total time
 * against RAM size.
 *
 *   scale [--sizes SIZES] [--sparse-from SIZE] [--touched SIZE] [--modes LIST]
 *         [--runs N] [--rate N] [--plot PNG] [--data FILE]
 *
 *   --sizes SIZES        guest RAM sizes (default 256M,1G,4G,8G,16G,64G)
 *   --sparse-from SIZE   sizes from this one on are sparse (default 16G)
 *   --touched SIZE       what a sparse guest touches (default 2G)
 *   --modes LIST         precopy, postcopy (pure postcopy with the urgent
 *                        channel), cpr (CPR transfer) (default all)
 *   --runs N             runs per (size, mode) (default 3)
 *   --rate N             the dirtier's page writes per second per vCPU after
 *                        its first pass (default 5000: the moderate dirtier)
 *   --plot PNG           write the plot there (gnuplot; default none)
 *   --data FILE          the plot's data, one line per size (default: next
 *                        to the PNG, .dat)
 *   --replot JSONL       run nothing: the medians and the plot from the run
 *                        lines of earlier outputs (repeatable: sizes measured
 *                        at different times go into one plot)
 *
 * The guest has 2 vCPUs running the dirtier with fill=1: each writes its
 * working set once as fast as it can (so that every page of it holds data
 * before the migration), then at --rate.  Its working set is the guest's
 * RAM on a dense guest and --touched on a sparse one (half per vCPU; the
 * rest of RAM is never written: memfd holes).  Each run is one
 * `build/bench/precopy`, `postcopy --modes pure` or `cpr --updates 1` (in
 * the directory this program runs from) on loopback with that workload;
 * their run lines come out here as they are, with "scale_mode",
 * "scale_run", "touched_bytes" and "sparse" added.  The runs are
 * interleaved: run 0 of every (size, mode), then run 1, and so on, so a
 * change in the machine's load spreads over all of them.  Then one median
 * line per (size, mode): "downtime_ms", "total_time_ms", "guest_lost_ms".
 *
 * The machine must hold both VMMs' memory for a dense guest (both on this
 * host: 8 GiB dense needs 16 GiB plus the page cache); sparse guests need
 * what they touch, twice.  Exit status 0 (failed runs have "error"), 1 when
 * the benchmark cannot work, 2 usage, 77 without /dev/kvm.
 */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "util/size.h"

#include "bench.h"

enum scale_mode { SCALE_PRECOPY, SCALE_POSTCOPY, SCALE_CPR, SCALE_NMODES };
static const char *const scale_mode_names[SCALE_NMODES] = { "precopy", "postcopy", "cpr" };

struct scale_opts {
	uint64_t sizes[BENCH_MAX_SIZES];
	unsigned nsizes, runs;
	uint64_t sparse_from, touched, rate;
	bool mode_on[SCALE_NMODES];
	const char *plot, *data;
	const char *replot[BENCH_MAX_SIZES];   /* --replot files, instead of running */
	unsigned nreplot;
	uint64_t replot_touched[BENCH_MAX_SIZES];  /* --replot: each size's, from its lines */
	char bench_dir[PATH_MAX];
};

/* Per (size, mode): the completed runs' figures (NAN: unknown). */
struct scale_cell {
	double downtime_ms[BENCH_MAX_RUNS], total_ms[BENCH_MAX_RUNS], lost_ms[BENCH_MAX_RUNS];
	unsigned n;
	unsigned last_run_counted;   /* the run (+1) whose figures came last, 0 none */
	char first_error[256];
};

static uint64_t scale_touched(const struct scale_opts *o, uint64_t size)
{
	for (unsigned s = 0; o->nreplot && s < o->nsizes; s++)
		if (o->sizes[s] == size && o->replot_touched[s])
			return o->replot_touched[s];
	return size >= o->sparse_from && o->touched < size ? o->touched : size;
}

/* The command line of one run of @mode on a guest of @size. */
static void scale_command(const struct scale_opts *o, enum scale_mode mode, uint64_t size,
			  char *cmd, size_t len)
{
	unsigned long long mib = (unsigned long long)(size >> 20);
	unsigned long long wss = (unsigned long long)(scale_touched(o, size) / 2);

	switch (mode) {
	case SCALE_PRECOPY:
	case SCALE_POSTCOPY:
		snprintf(cmd, len, "'%s/%s' --mem %lluM --runs 1 --vcpus 2 --transports loopback "
			 "%s--guest dirtier,wss=%llu,rate=%llu,fill=1",
			 o->bench_dir, mode == SCALE_PRECOPY ? "precopy" : "postcopy", mib,
			 mode == SCALE_POSTCOPY ? "--modes pure " : "", wss,
			 (unsigned long long)o->rate);
		break;
	default:
		/* CPR's dirtier runs at full speed (it needs no convergence). */
		snprintf(cmd, len, "'%s/cpr' --mem %lluM --updates 1 --vcpus 2 --wss %llu "
			 "--copy-max 0", o->bench_dir, mib, wss);
		break;
	}
}

/*
 * An annotated run line (or bench/cpr's verdict, "cpr-verified") into @c:
 * its figures when it completed and verified, else its error.
 */
static void scale_account(struct json_object *obj, enum scale_mode mode, unsigned run,
			  struct scale_cell *c)
{
	struct json_object *v;

	if (!strcmp(harness_json_str(obj, "type"), "cpr-verified")) {
		/* bench/cpr verifies the guest once, after its updates. */
		if (!json_object_object_get_ex(obj, "verified", &v) || !json_object_get_boolean(v)) {
			c->n -= c->n && c->last_run_counted == run + 1;
			if (!c->first_error[0])
				snprintf(c->first_error, sizeof(c->first_error), "cpr: not verified: %s",
					 harness_json_str(obj, "verify_error"));
		}
		return;
	}
	if (!strcmp(harness_json_str(obj, "status"), "completed") &&
	    (mode == SCALE_CPR ||
	     (json_object_object_get_ex(obj, "verified", &v) && json_object_get_boolean(v))) &&
	    c->n < BENCH_MAX_RUNS) {
		c->last_run_counted = run + 1;
		c->downtime_ms[c->n] = harness_json_double(obj, "downtime_ms", NAN);
		c->total_ms[c->n] = harness_json_double(obj, "total_time_ms", NAN);
		c->lost_ms[c->n] = harness_json_double(obj, "guest_lost_ms", NAN);
		c->n++;
	} else if (!c->first_error[0]) {
		const char *e = harness_json_str(obj, "error");

		snprintf(c->first_error, sizeof(c->first_error), "%s",
			 *e ? e : *harness_json_str(obj, "verify_error") ?
			 harness_json_str(obj, "verify_error") : "not verified");
	}
}

/* A child's line: re-emitted with our fields when it is a run, and accounted. */
static void scale_take_line(const struct scale_opts *o, enum scale_mode mode, uint64_t size,
			    unsigned run, const char *line, struct scale_cell *c)
{
	struct json_object *obj = json_tokener_parse(line), *out, *v;
	const char *kind;

	if (!obj)
		return;
	kind = harness_json_str(obj, mode == SCALE_CPR ? "line" : "type");
	if (mode == SCALE_CPR && !strcmp(kind, "median")) {
		out = json_object_new_object();
		json_object_object_add(out, "bench", json_object_new_string("scale"));
		json_object_object_add(out, "type", json_object_new_string("cpr-verified"));
		json_object_object_add(out, "scale_mode", json_object_new_string("cpr"));
		bench_json_u64(out, "scale_run", run);
		bench_json_u64(out, "guest_ram_bytes", size);
		json_object_object_add(out, "verified", json_object_new_boolean(
			json_object_object_get_ex(obj, "verified", &v) && json_object_get_boolean(v)));
		json_object_object_add(out, "verify_error",
				       json_object_new_string(harness_json_str(obj, "verify_error")));
		scale_account(out, mode, run, c);
		bench_print(out);
	} else if (!strcmp(kind, mode == SCALE_CPR ? "update" : "run")) {
		json_object_object_add(obj, "scale_mode", json_object_new_string(scale_mode_names[mode]));
		bench_json_u64(obj, "scale_run", run);
		bench_json_u64(obj, "touched_bytes", scale_touched(o, size));
		json_object_object_add(obj, "sparse", json_object_new_boolean(scale_touched(o, size) < size));
		scale_account(obj, mode, run, c);
		bench_print(obj);
		return;
	}
	json_object_put(obj);
}

/* One run: the child's lines, re-emitted. */
static void scale_run(const struct scale_opts *o, enum scale_mode mode, uint64_t size,
		      unsigned run, struct scale_cell *c)
{
	char cmd[PATH_MAX + 256], line[16384];
	FILE *f;
	int status;

	scale_command(o, mode, size, cmd, sizeof(cmd));
	fprintf(stderr, "scale: %s\n", cmd);
	f = popen(cmd, "r");
	if (!f) {
		snprintf(c->first_error, sizeof(c->first_error), "popen: %s", strerror(errno));
		return;
	}
	while (fgets(line, sizeof(line), f))
		scale_take_line(o, mode, size, run, line, c);
	status = pclose(f);
	if (status && !c->first_error[0])
		snprintf(c->first_error, sizeof(c->first_error), "%s exited with status %d",
			 scale_mode_names[mode], status);
}

/* The median of the known values of @v[0..n); NAN when none. */
static double scale_median(const double *v, unsigned n)
{
	double k[BENCH_MAX_RUNS];
	unsigned m = 0;

	for (unsigned i = 0; i < n; i++)
		if (!isnan(v[i]))
			k[m++] = v[i];
	return bench_median(k, m);
}

static void scale_print_median(const struct scale_opts *o, enum scale_mode mode, uint64_t size,
			       const struct scale_cell *c)
{
	struct json_object *obj = json_object_new_object();

	json_object_object_add(obj, "bench", json_object_new_string("scale"));
	json_object_object_add(obj, "type", json_object_new_string("median"));
	json_object_object_add(obj, "scale_mode", json_object_new_string(scale_mode_names[mode]));
	bench_json_u64(obj, "guest_ram_bytes", size);
	bench_json_u64(obj, "touched_bytes", scale_touched(o, size));
	json_object_object_add(obj, "sparse", json_object_new_boolean(scale_touched(o, size) < size));
	bench_json_u64(obj, "runs", o->runs);
	bench_json_u64(obj, "verified_runs", c->n);
	bench_json_num(obj, "downtime_ms", scale_median(c->downtime_ms, c->n), 3);
	bench_json_num(obj, "total_time_ms", scale_median(c->total_ms, c->n), 3);
	bench_json_num(obj, "guest_lost_ms", scale_median(c->lost_ms, c->n), 1);
	if (c->first_error[0])
		json_object_object_add(obj, "first_error", json_object_new_string(c->first_error));
	bench_print(obj);
}

/*
 * The data file (size in GiB, then pause and total medians per mode, NaN
 * unknown) and the PNG from it.  0 or -1 with a message.
 */
static int scale_plot(const struct scale_opts *o, struct scale_cell *cells)
{
	char data[PATH_MAX];
	FILE *f, *g;

	if (o->data)
		snprintf(data, sizeof(data), "%s", o->data);
	else
		snprintf(data, sizeof(data), "%.*s.dat",
			 (int)(strlen(o->plot) - (strstr(o->plot, ".png") ? 4 : 0)), o->plot);
	f = fopen(data, "w");
	if (!f) {
		fprintf(stderr, "scale: %s: %s\n", data, strerror(errno));
		return -1;
	}
	fprintf(f, "# ram_gib sparse pause_ms(precopy postcopy cpr) total_ms(precopy postcopy cpr)\n");
	for (unsigned s = 0; s < o->nsizes; s++) {
		struct scale_cell *c = &cells[s * SCALE_NMODES];

		fprintf(f, "%g %d", (double)o->sizes[s] / (1 << 30),
			scale_touched(o, o->sizes[s]) < o->sizes[s]);
		for (int m = 0; m < SCALE_NMODES; m++)
			fprintf(f, " %.3f", scale_median(c[m].downtime_ms, c[m].n));
		for (int m = 0; m < SCALE_NMODES; m++)
			fprintf(f, " %.3f", scale_median(c[m].total_ms, c[m].n));
		fprintf(f, "\n");
	}
	fclose(f);
	g = popen("gnuplot", "w");
	if (!g) {
		fprintf(stderr, "scale: gnuplot: %s\n", strerror(errno));
		return -1;
	}
	fprintf(g,
		"set terminal pngcairo size 1100,480 font ',10'\n"
		"set output '%s'\n"
		"set datafile missing 'nan'\n"
		"set logscale x 2\nset logscale y 10\nset grid\nset key top left\n"
		"set xlabel 'guest RAM (GiB; from %g GiB sparse, %g GiB touched)'\n"
		"set multiplot layout 1,2 title 'vmferry on one host, loopback TCP, medians of %u'\n"
		"set ylabel 'guest pause (ms)'\n"
		"set arrow 1 from graph 0, first 1 to graph 1, first 1 nohead dt 2 lc 'gray'\n"
		"plot '%s' u 1:3 w lp t 'precopy', '' u 1:4 w lp t 'postcopy', '' u 1:5 w lp t 'cpr'\n"
		"set ylabel 'total time (ms)'\n"
		"unset arrow 1\n"
		"plot '%s' u 1:6 w lp t 'precopy', '' u 1:7 w lp t 'postcopy', '' u 1:8 w lp t 'cpr'\n"
		"unset multiplot\n",
		o->plot, (double)o->sparse_from / (1 << 30), (double)o->touched / (1 << 30), o->runs,
		data, data);
	if (pclose(g)) {
		fprintf(stderr, "scale: gnuplot failed\n");
		return -1;
	}
	fprintf(stderr, "scale: plot in %s, data in %s\n", o->plot, data);
	return 0;
}

/*
 * --replot: pass 0 takes the sizes and modes that the files' annotated lines
 * have (replacing --sizes), pass 1 their figures into @cells (NULL in pass
 * 0).  0 or -1 with a message.
 */
static int scale_replot_pass(struct scale_opts *o, struct scale_cell *cells)
{
	char line[16384];

	for (unsigned i = 0; i < o->nreplot; i++) {
		FILE *f = fopen(o->replot[i], "r");

		if (!f) {
			fprintf(stderr, "scale: %s: %s\n", o->replot[i], strerror(errno));
			return -1;
		}
		while (fgets(line, sizeof(line), f)) {
			struct json_object *obj = json_tokener_parse(line), *v;
			uint64_t size;
			unsigned s = 0;
			int m = 0;

			if (!obj || !json_object_object_get_ex(obj, "scale_mode", &v) ||
			    !strcmp(harness_json_str(obj, "type"), "median")) {
				json_object_put(obj);
				continue;
			}
			while (m < SCALE_NMODES && strcmp(json_object_get_string(v), scale_mode_names[m]))
				m++;
			size = harness_json_u64(obj, "guest_ram_bytes");
			while (s < o->nsizes && o->sizes[s] != size)
				s++;
			if (m < SCALE_NMODES && !cells && s == o->nsizes && s < BENCH_MAX_SIZES)
				o->sizes[o->nsizes++] = size;
			if (m < SCALE_NMODES && !cells && s < o->nsizes &&
			    harness_json_u64(obj, "touched_bytes"))
				o->replot_touched[s] = harness_json_u64(obj, "touched_bytes");
			if (m < SCALE_NMODES && !cells &&
			    harness_json_u64(obj, "scale_run") + 1 > o->runs)
				o->runs = (unsigned)harness_json_u64(obj, "scale_run") + 1;
			if (m < SCALE_NMODES)
				o->mode_on[m] = true;
			if (m < SCALE_NMODES && cells && s < o->nsizes)
				scale_account(obj, (enum scale_mode)m,
					      (unsigned)harness_json_u64(obj, "scale_run"),
					      &cells[s * SCALE_NMODES + m]);
			json_object_put(obj);
		}
		fclose(f);
	}
	if (!cells) {
		for (unsigned a = 0; a < o->nsizes; a++)
			for (unsigned b = a + 1; b < o->nsizes; b++)
				if (o->sizes[b] < o->sizes[a]) {
					uint64_t t = o->sizes[a], u = o->replot_touched[a];

					o->sizes[a] = o->sizes[b];
					o->sizes[b] = t;
					o->replot_touched[a] = o->replot_touched[b];
					o->replot_touched[b] = u;
				}
	}
	return 0;
}

static void scale_usage(FILE *f)
{
	fprintf(f,
		"usage: scale [--sizes SIZES] [--sparse-from SIZE] [--touched SIZE] [--modes LIST]\n"
		"             [--runs N] [--rate N] [--plot PNG] [--data FILE] [--replot JSONL]...\n"
		"  SIZES: comma separated (default 256M,1G,4G,8G,16G,64G)\n"
		"  modes: precopy, postcopy, cpr (default: all)\n");
}

/* Options into @o; 0, or 2 after a usage message (1 printed help: exit 0). */
static int scale_options(int argc, char **argv, struct scale_opts *o)
{
	static const struct option opts[] = {
		{ "sizes", required_argument, NULL, 's' },
		{ "sparse-from", required_argument, NULL, 'S' },
		{ "touched", required_argument, NULL, 't' },
		{ "modes", required_argument, NULL, 'm' },
		{ "runs", required_argument, NULL, 'r' },
		{ "rate", required_argument, NULL, 'R' },
		{ "plot", required_argument, NULL, 'p' },
		{ "data", required_argument, NULL, 'd' },
		{ "replot", required_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	uint64_t v;
	int opt;

	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 's':
			if (bench_parse_sizes(optarg, o->sizes, &o->nsizes))
				goto usage;
			break;
		case 'S':
			if (size_parse(optarg, &o->sparse_from))
				goto usage;
			break;
		case 't':
			if (size_parse(optarg, &o->touched) || o->touched < (2u << 20))
				goto usage;
			break;
		case 'm':
			if (bench_parse_names(optarg, scale_mode_names, SCALE_NMODES, o->mode_on))
				goto usage;
			break;
		case 'r':
			if (size_parse_uint(optarg, 1, BENCH_MAX_RUNS, &v))
				goto usage;
			o->runs = (unsigned)v;
			break;
		case 'R':
			if (size_parse_uint(optarg, 0, 1000000000, &o->rate))
				goto usage;
			break;
		case 'p':
			o->plot = optarg;
			break;
		case 'd':
			o->data = optarg;
			break;
		case 'P':
			if (o->nreplot == BENCH_MAX_SIZES)
				goto usage;
			o->replot[o->nreplot++] = optarg;
			break;
		case 'h':
			scale_usage(stdout);
			return 1;
		default:
			goto usage;
		}
	}
	if (optind == argc)
		return 0;
usage:
	scale_usage(stderr);
	return 2;
}

int main(int argc, char **argv)
{
	struct scale_opts o = {
		.sizes = { 256ull << 20, 1ull << 30, 4ull << 30, 8ull << 30, 16ull << 30, 64ull << 30 },
		.nsizes = 6, .runs = 3, .sparse_from = 16ull << 30, .touched = 2ull << 30,
		.rate = 5000, .mode_on = { true, true, true },
	};
	struct scale_cell *cells;
	char self[PATH_MAX];
	int rc;

	harness_init("scale", "SCALE_KEEP", false);
	rc = scale_options(argc, argv, &o);
	if (rc)
		return rc == 1 ? 0 : 2;
	if (!o.nreplot && access("/dev/kvm", R_OK | W_OK) != 0) {
		fprintf(stderr, "scale: /dev/kvm not available: %s\n", strerror(errno));
		return 77;
	}
	snprintf(self, sizeof(self), "%s", argv[0]);
	snprintf(o.bench_dir, sizeof(o.bench_dir), "%s", dirname(self));
	if (o.nreplot) {
		o.nsizes = 0;
		o.runs = 0;
		memset(o.mode_on, 0, sizeof(o.mode_on));
		if (scale_replot_pass(&o, NULL))
			return 1;
	}
	cells = calloc((size_t)o.nsizes * SCALE_NMODES, sizeof(*cells));
	if (!cells) {
		perror("scale");
		return 1;
	}
	if (o.nreplot && scale_replot_pass(&o, cells)) {
		free(cells);
		return 1;
	}
	for (unsigned r = 0; r < o.runs && !o.nreplot; r++)
		for (unsigned s = 0; s < o.nsizes; s++)
			for (int m = 0; m < SCALE_NMODES; m++)
				if (o.mode_on[m])
					scale_run(&o, (enum scale_mode)m, o.sizes[s], r,
						  &cells[s * SCALE_NMODES + m]);
	for (unsigned s = 0; s < o.nsizes; s++)
		for (int m = 0; m < SCALE_NMODES; m++)
			if (o.mode_on[m])
				scale_print_median(&o, (enum scale_mode)m, o.sizes[s],
						   &cells[s * SCALE_NMODES + m]);
	rc = o.plot && scale_plot(&o, cells) ? 1 : 0;
	free(cells);
	return rc;
}
