/*
 * The chaos campaign (tests/chaos): migrations of a guest whose every page
 * is checkable (the dirtier with check=1, which checks each page itself
 * before overwriting it and panics on a bad one), each with one fault at a
 * random moment, across precopy, hybrid, postcopy and CPR, each outcome
 * classified as one of the documented ones (docs/migration.md and
 * docs/cpr.md, failure tables) with the guest verified wherever the
 * documentation says it survives.  Anything else is a failure of the run.
 *
 * Used by the CI test (tests/integration/test_chaos.c, a few runs) and the
 * long campaign (tests/chaos/main.c, `make chaos`).  Runs one at a time on
 * the calling thread (which must be the harness's: harness.h); every wait
 * is bounded and every process started is reaped.
 */
#ifndef VMFERRY_TESTS_CHAOS_H
#define VMFERRY_TESTS_CHAOS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "harness/harness.h"

enum chaos_mode { CHAOS_PRECOPY, CHAOS_HYBRID, CHAOS_POSTCOPY, CHAOS_CPR, CHAOS_NMODES };

enum chaos_fault {
	CHAOS_KILL_SRC,     /* SIGKILL the source (CPR: the old process) */
	CHAOS_KILL_DST,     /* SIGKILL the destination (CPR: the new process) */
	CHAOS_STOP_SRC,     /* SIGSTOP the source for a while, then SIGCONT */
	CHAOS_STOP_DST,
	CHAOS_LINK_DOWN,    /* `ip link set down` on one end of the veth for a while */
	CHAOS_DROP,         /* nftables drops a share of one host's TCP packets for a while */
	CHAOS_CUT,          /* the relay closes every connection at once (and keeps listening) */
	CHAOS_SLOW_READER,  /* the relay stops reading the source's bytes for a while (or trickles) */
	CHAOS_NFAULTS
};

enum chaos_outcome {
	CHAOS_NOT_INJECTED,        /* the migration was over before the moment: completed, verified */
	CHAOS_COMPLETED,           /* completed despite the fault; destination verified, runs */
	CHAOS_FAILED_SOURCE_RUNS,  /* failed before the switch; source verified, runs */
	CHAOS_CPR_ROLLED_BACK,     /* CPR failed; the old process resumed, verified */
	CHAOS_RECOVERED_AUTO,      /* postcopy paused, resumed by postcopy-recover-timeout */
	CHAOS_RECOVERED_MANUAL,    /* postcopy paused, resumed by migrate-recover + resume */
	CHAOS_KEPT_PAUSED_DST_RUNS,/* precopy/CPR: source kept paused (silence after END), the
				    * destination ran it: verified there, source refuses cont */
	CHAOS_KEPT_PAUSED_FORCED,  /* ... the destination died: cont {"force"} on the source */
	CHAOS_LOST_SRC_DIED,       /* the source was killed before the guest ran elsewhere
				    * (or in postcopy): the guest died with it, as documented */
	CHAOS_LOST_DST_DIED,       /* postcopy destination killed: the source says it is lost */
	CHAOS_KILLED_AFTER_SWITCH, /* the destination ran the guest and was then killed */
	CHAOS_FAILURE,             /* anything else: a failure of the run */
	CHAOS_NOUTCOMES
};

struct chaos_config {
	uint64_t seed;
	unsigned fault_min_ms, fault_max_ms;  /* how long a stop / link fault lasts */
	unsigned io_timeout_ms;               /* VMFERRY_IO_TIMEOUT_MS for the VMMs */
	unsigned recover_timeout_s;           /* postcopy-recover-timeout when a run uses it */
	struct harness_netns *hosts;          /* two hosts for link faults; NULL: none */
	bool verbose;                         /* progress on stderr */
};

struct chaos_result {
	unsigned index;
	enum chaos_mode mode;
	enum chaos_fault fault;
	enum chaos_outcome outcome;
	bool injected;
	unsigned at_ms;            /* the moment, after the migrate command */
	unsigned lasted_ms;        /* how long the fault lasted (stops, links, stalls) */
	char detail[96];           /* topology and fault parameters */
	char why[640];             /* a failure, in words; or notes on the outcome */
	double secs;               /* the run's wall time */
};

const char *chaos_mode_name(enum chaos_mode m);
const char *chaos_fault_name(enum chaos_fault f);
const char *chaos_outcome_name(enum chaos_outcome o);

/* Whether @fault can be injected in @mode with the hosts @cfg has. */
bool chaos_fault_applies(const struct chaos_config *cfg, enum chaos_mode mode,
			 enum chaos_fault fault);

/*
 * Set the VMMs' environment (I/O timeout, CPR wait) from @cfg.  Once, before
 * the first run.
 */
void chaos_init(const struct chaos_config *cfg);

/*
 * One migration in @mode with @fault at a moment drawn from (seed, @index):
 * the same three give the same choices.  Fills *res; returns 0 when the
 * outcome is a documented one, -1 for CHAOS_FAILURE (logs kept: see why).
 */
int chaos_run_one(const struct chaos_config *cfg, unsigned index, enum chaos_mode mode,
		  enum chaos_fault fault, struct chaos_result *res);

/* A pseudo-random number for (@seed, @index, @salt): the campaign's one RNG. */
uint64_t chaos_random(uint64_t seed, unsigned index, unsigned salt);

/* One JSON line for @res on @out. */
void chaos_result_print(const struct chaos_result *res, uint64_t seed, FILE *out);

#endif
