/*
 * The long chaos campaign (`make chaos`, scripts/chaos.sh): N migrations,
 * each in a mode and with a fault drawn from the seed, printed as one JSON
 * line each, then the outcome table (mode x fault -> outcome counts) as JSON
 * lines and a summary.  Exit 0 when every outcome was a documented one, 1
 * otherwise (the failed runs' logs are kept: see their lines), 2 for usage
 * errors, 77 without KVM.
 *
 *   chaos [--runs N] [--seed S] [--only I] [--mode M] [--fault F]
 *         [--fault-ms MIN-MAX] [--io-timeout-ms MS] [--quiet]
 *
 * --only I repeats run I of the seed alone (same mode, fault and moment).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chaos/chaos.h"
#include "util/log.h"

struct chaos_opts {
	unsigned runs;
	long only;                 /* -1: all */
	int mode, fault;           /* -1: drawn */
	struct chaos_config cfg;
};

static unsigned chaos_table[CHAOS_NMODES][CHAOS_NFAULTS][CHAOS_NOUTCOMES];

static void chaos_usage(FILE *out)
{
	fprintf(out, "usage: chaos [--runs N] [--seed S] [--only I] [--mode M] [--fault F]\n"
		     "             [--fault-ms MIN-MAX] [--io-timeout-ms MS] [--quiet]\n"
		     "  modes: precopy hybrid postcopy cpr; faults: kill-src kill-dst stop-src\n"
		     "  stop-dst link-down drop cut slow-reader (link faults need root)\n");
}

static int chaos_lookup(const char *name, const char *(*fn)(unsigned), unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (strcmp(fn(i), name) == 0)
			return (int)i;
	return -1;
}

static const char *chaos_mode_at(unsigned i) { return chaos_mode_name((enum chaos_mode)i); }
static const char *chaos_fault_at(unsigned i) { return chaos_fault_name((enum chaos_fault)i); }

static int chaos_parse(int argc, char **argv, struct chaos_opts *o)
{
	static const struct option longopts[] = {
		{ "runs", required_argument, NULL, 'n' }, { "seed", required_argument, NULL, 's' },
		{ "only", required_argument, NULL, 'o' }, { "mode", required_argument, NULL, 'm' },
		{ "fault", required_argument, NULL, 'f' },
		{ "fault-ms", required_argument, NULL, 'd' },
		{ "io-timeout-ms", required_argument, NULL, 't' },
		{ "quiet", no_argument, NULL, 'q' }, { "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'n': o->runs = (unsigned)strtoul(optarg, NULL, 0); break;
		case 's': o->cfg.seed = strtoull(optarg, NULL, 0); break;
		case 'o': o->only = strtol(optarg, NULL, 0); break;
		case 'm': o->mode = chaos_lookup(optarg, chaos_mode_at, CHAOS_NMODES);
			  if (o->mode < 0) return 2;
			  break;
		case 'f': o->fault = chaos_lookup(optarg, chaos_fault_at, CHAOS_NFAULTS);
			  if (o->fault < 0) return 2;
			  break;
		case 'd': if (sscanf(optarg, "%u-%u", &o->cfg.fault_min_ms, &o->cfg.fault_max_ms) != 2 ||
			      o->cfg.fault_min_ms > o->cfg.fault_max_ms)
				  return 2;
			  break;
		case 't': o->cfg.io_timeout_ms = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'q': o->cfg.verbose = false; break;
		case 'h': chaos_usage(stdout); exit(0);
		default: return 2;
		}
	}
	if (optind != argc || o->runs == 0 || o->cfg.io_timeout_ms < 100)
		return 2;
	return 0;
}

/* Run @i's mode and fault: given, or drawn from the seed among those that apply. */
static void chaos_choose(const struct chaos_opts *o, unsigned i, enum chaos_mode *m,
			 enum chaos_fault *f)
{
	for (unsigned salt = 1000;; salt++) {
		uint64_t r = chaos_random(o->cfg.seed, i, salt);

		*m = o->mode >= 0 ? (enum chaos_mode)o->mode : (enum chaos_mode)(r % CHAOS_NMODES);
		*f = o->fault >= 0 ? (enum chaos_fault)o->fault
				   : (enum chaos_fault)((r >> 16) % CHAOS_NFAULTS);
		if (chaos_fault_applies(&o->cfg, *m, *f) || (o->mode >= 0 && o->fault >= 0))
			return;
	}
}

static void chaos_print_table(FILE *out)
{
	for (unsigned m = 0; m < CHAOS_NMODES; m++) {
		for (unsigned f = 0; f < CHAOS_NFAULTS; f++) {
			unsigned total = 0;

			for (unsigned k = 0; k < CHAOS_NOUTCOMES; k++)
				total += chaos_table[m][f][k];
			if (!total)
				continue;
			fprintf(out, "{\"table\": true, \"mode\": \"%s\", \"fault\": \"%s\", "
				"\"runs\": %u", chaos_mode_at(m), chaos_fault_at(f), total);
			for (unsigned k = 0; k < CHAOS_NOUTCOMES; k++)
				if (chaos_table[m][f][k])
					fprintf(out, ", \"%s\": %u",
						chaos_outcome_name((enum chaos_outcome)k),
						chaos_table[m][f][k]);
			fputs("}\n", out);
		}
	}
}

int main(int argc, char **argv)
{
	struct chaos_opts o = {
		.runs = 200, .only = -1, .mode = -1, .fault = -1,
		.cfg = { .seed = (uint64_t)time(NULL), .fault_min_ms = 1000, .fault_max_ms = 5000,
			 .io_timeout_ms = 4000, .recover_timeout_s = 10, .verbose = true },
	};
	static struct harness_netns hosts;
	unsigned failures = 0, done = 0, outcomes[CHAOS_NOUTCOMES] = { 0 };
	uint64_t t0;

	if (chaos_parse(argc, argv, &o)) {
		chaos_usage(stderr);
		return 2;
	}
	harness_init("chaos", "VMFERRY_CHAOS_KEEP", false);
	if (!harness_kvm_available())
		return 77;
	if (harness_cleanup_on_exit())
		return 1;
	if (geteuid() == 0 && access("/usr/sbin/nft", X_OK) == 0 &&
	    harness_netns_create(&hosts, 't', HARNESS_LINK_VETH) == 0)
		o.cfg.hosts = &hosts;
	else
		fprintf(stderr, "chaos: no network namespaces or nft: no link-down or drop faults\n");
	chaos_init(&o.cfg);
	fprintf(stderr, "chaos: seed %llu, %u runs (repeat: --seed %llu --only I)\n",
		(unsigned long long)o.cfg.seed, o.runs, (unsigned long long)o.cfg.seed);
	t0 = clock_monotonic_ns();
	for (unsigned i = 0; i < o.runs; i++) {
		struct chaos_result r;
		enum chaos_mode m;
		enum chaos_fault f;

		if (o.only >= 0 && i != (unsigned long)o.only)
			continue;
		chaos_choose(&o, i, &m, &f);
		if (chaos_run_one(&o.cfg, i, m, f, &r))
			failures++;
		chaos_table[m][f][r.outcome]++;
		outcomes[r.outcome]++;
		done++;
		chaos_result_print(&r, o.cfg.seed, stdout);
	}
	chaos_print_table(stdout);
	printf("{\"summary\": true, \"seed\": %llu, \"runs\": %u, \"failures\": %u, \"secs\": %.0f",
	       (unsigned long long)o.cfg.seed, done, failures,
	       (double)(clock_monotonic_ns() - t0) / 1e9);
	for (unsigned k = 0; k < CHAOS_NOUTCOMES; k++)
		if (outcomes[k])
			printf(", \"%s\": %u", chaos_outcome_name((enum chaos_outcome)k), outcomes[k]);
	printf("}\n");
	if (failures)
		fprintf(stderr, "chaos: %u failure(s); logs kept in %s\n", failures, harness_dir());
	harness_netns_destroy(&hosts);
	return failures ? 1 : 0;
}
