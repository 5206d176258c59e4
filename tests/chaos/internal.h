/* What the chaos campaign's files share (not the API; see chaos.h). */
#ifndef VMFERRY_TESTS_CHAOS_INTERNAL_H
#define VMFERRY_TESTS_CHAOS_INTERNAL_H

#include "chaos/chaos.h"

#define CHAOS_MEM "64M"
#define CHAOS_VCPUS "2"
/* 16 MiB of pattern pages per vCPU, rewritten every ~2 s (16 MB/s in all). */
#define CHAOS_GUEST "dirtier,check=1,wss=16M,rate=2000"

enum chaos_topo { CHAOS_TOPO_UNIX, CHAOS_TOPO_TCP, CHAOS_TOPO_RELAY, CHAOS_TOPO_NETNS };
enum { CHAOS_SRC, CHAOS_DST };

/* One run's state. */
struct chaos_ctx {
	const struct chaos_config *cfg;
	struct chaos_result *res;
	unsigned salt;                 /* next draw of chaos_random() */
	enum chaos_topo topo;
	struct harness_vm vm[2];       /* CHAOS_SRC, CHAOS_DST (CPR: old, new) */
	bool killed[2];                /* we sent SIGKILL */
	struct harness_relay *relay;
	char uri[HARNESS_PATH_BYTES + 16];     /* where the source migrates to */
	char cpr_uri[HARNESS_PATH_BYTES + 16];
	bool recover_auto;             /* postcopy-recover-timeout set on both sides */
	bool recovered_by_hand;
	int link_host;                 /* netns faults: the host whose link is hurt */
	bool link_down, nft_table;     /* to undo at teardown */
	uint64_t fault_end_ns;
};

/* A uniform draw in [lo, hi]. */
unsigned chaos_draw(struct chaos_ctx *c, unsigned lo, unsigned hi);
/* Record a failure (the first one is kept); returns -1. */
int chaos_fail(struct chaos_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append a note to res->why. */
void chaos_note(struct chaos_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * After the fault: wait (bounded) until both sides settle, classify the
 * outcome into c->res->outcome, and verify the guest wherever it must
 * survive (chaos_verdict.c).  0, or -1 after chaos_fail().
 */
int chaos_settle_and_classify(struct chaos_ctx *c);

/* migrate-recover on the destination and resume the source (chaos.c). */
int chaos_recover_by_hand(struct chaos_ctx *c);

#endif
