/*
 * The chaos campaign's verdict: wait until both sides of the migration
 * settle, classify what they show as one of the documented outcomes
 * (docs/migration.md and docs/cpr.md, failure tables), and check the guest
 * wherever the documentation says it survives: memory verified from a dump
 * (every pattern page of the dirtier), and the guest still making progress,
 * where it keeps checking every page it overwrites.  See chaos.h.
 */
#include "chaos/internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "control/client.h"
#include "util/log.h"

#define CHAOS_POLL_MS 50
#define CHAOS_SETTLE_MS 60000u      /* a side still not settled after this: a hang */
#define CHAOS_PROGRESS_MS 15000     /* a running guest writes more within this */
#define CHAOS_CALL_TIMEOUT_MS 10000
#define CHAOS_EXIT_GUEST_PANIC 3    /* `vmferry run`'s status for a guest panic */

/* What one side shows. */
struct chaos_side {
	bool alive;
	int exit_status;        /* when dead */
	bool known;             /* the queries answered */
	char mig[24];           /* query-migrate status */
	char run[24];           /* query-status status */
	char err[400];          /* query-migrate error-desc */
	int64_t pauses;         /* postcopy-pauses */
};

static bool chaos_is(const char *a, const char *b)
{
	return strcmp(a, b) == 0;
}

static void chaos_look(struct chaos_ctx *c, int side, struct chaos_side *s)
{
	struct harness_vm *vm = &c->vm[side];
	struct json_object *q = NULL;
	int rc = harness_wait_exit(vm, 0);

	memset(s, 0, sizeof(*s));
	if (rc != -ETIMEDOUT) {
		s->exit_status = rc;
		return;
	}
	s->alive = true;
	/* A CPR new process serves its socket once it holds guest RAM (not
	 * harness_connect(): that kills a child it cannot reach). */
	if (!vm->client && control_client_connect(vm->sock_path, 100, &vm->client)) {
		vm->client = NULL;
		return;
	}
	control_client_set_timeout(vm->client, CHAOS_CALL_TIMEOUT_MS);
	if (harness_call(vm, "query-migrate", NULL, &q))
		return;
	snprintf(s->mig, sizeof(s->mig), "%s", harness_json_str(q, "status"));
	snprintf(s->err, sizeof(s->err), "%s", harness_json_str(q, "error-desc"));
	s->pauses = harness_json_int(q, "postcopy-pauses");
	json_object_put(q);
	q = NULL;
	if (harness_call(vm, "query-status", NULL, &q))
		return;
	snprintf(s->run, sizeof(s->run), "%s", harness_json_str(q, "status"));
	json_object_put(q);
	s->known = true;
}

static bool chaos_paused_pc(const struct chaos_side *s)
{
	return s->alive && chaos_is(s->mig, "postcopy-paused");
}

static bool chaos_dst_runs(const struct chaos_side *d)
{
	return d->alive && chaos_is(d->mig, "completed") && chaos_is(d->run, "running");
}

/* Settled: nothing more will happen without an operator. */
static bool chaos_settled(struct chaos_ctx *c, const struct chaos_side *s,
			  const struct chaos_side *d, uint64_t waited_ms)
{
	/* Automatic recovery gets its time (plus the I/O timeout to notice). */
	uint64_t auto_ms = c->recover_auto ? c->cfg->recover_timeout_s * 1000ull +
					     c->cfg->io_timeout_ms + 3000 : 0;
	/* A side left waiting for a peer that is gone gives up within this. */
	uint64_t grace_ms = 2ull * c->cfg->io_timeout_ms + 3000;
	bool src_done, dst_done;

	if ((s->alive && !s->known) || (d->alive && !d->known && d->mig[0]))
		return false;
	src_done = !s->alive || chaos_is(s->mig, "completed") || chaos_is(s->mig, "failed") ||
		   chaos_is(s->mig, "cancelled") || (chaos_paused_pc(s) && waited_ms >= auto_ms);
	dst_done = !d->alive || chaos_dst_runs(d) || (chaos_paused_pc(d) && waited_ms >= auto_ms);
	if (src_done && !dst_done && waited_ms >= grace_ms)
		dst_done = true;    /* still waiting: classified as such */
	return src_done && dst_done;
}

/* Poll both sides until they settle; false on a hang (failure recorded). */
static bool chaos_wait_settled(struct chaos_ctx *c, struct chaos_side *s, struct chaos_side *d)
{
	uint64_t t0 = c->fault_end_ns;

	for (;;) {
		uint64_t waited_ms = (clock_monotonic_ns() - t0) / 1000000ull;

		chaos_look(c, CHAOS_SRC, s);
		chaos_look(c, CHAOS_DST, d);
		if (chaos_settled(c, s, d, waited_ms))
			return true;
		if (waited_ms > CHAOS_SETTLE_MS) {
			chaos_fail(c, "hang: not settled %u s after the fault (source %s/%s "
				   "'%s', destination %s/%s '%s')", CHAOS_SETTLE_MS / 1000,
				   s->alive ? s->mig : "dead", s->run, s->err,
				   d->alive ? d->mig : "dead", d->run, d->err);
			return false;
		}
		harness_nap_ms(CHAOS_POLL_MS);
	}
}

/* A side that died: only by our SIGKILL, or the destination's failure exit. */
static int chaos_check_deaths(struct chaos_ctx *c, const struct chaos_side *s,
			      const struct chaos_side *d)
{
	const struct chaos_side *sides[2] = { s, d };

	for (int i = 0; i < 2; i++) {
		int st = sides[i]->exit_status;

		if (sides[i]->alive || (c->killed[i] && st == 128 + SIGKILL))
			continue;
		if (st == CHAOS_EXIT_GUEST_PANIC)
			return chaos_fail(c, "the guest panicked on the %s (a bad page: see its "
					  "console %s)", i ? "destination" : "source",
					  c->vm[i].console_path);
		if (i == CHAOS_DST && st == 1)
			continue;    /* a failed destination exits 1 */
		if (i == CHAOS_SRC && c->res->mode == CHAOS_CPR && st == 0)
			continue;    /* the old process hands over and exits 0 */
		return chaos_fail(c, "the %s VMM ended with status %d", i ? "destination" : "source",
				  st);
	}
	return 0;
}

/* Running here, memory verified, and still writing (checking) pages. */
static int chaos_verify_runs(struct chaos_ctx *c, int side)
{
	struct harness_vm *vm = &c->vm[side];
	const char *who = side ? "destination" : "source";
	struct harness_workload w0, w1;
	uint64_t deadline = clock_monotonic_ns() + CHAOS_PROGRESS_MS * 1000000ull;
	int rc = harness_verify_memory(vm);

	if (rc)
		return chaos_fail(c, "the %s's memory does not verify: %s", who, vm->error);
	if (harness_workload(vm, &w0))
		return chaos_fail(c, "query-workload on the %s: %s", who, vm->error);
	do {
		if (harness_workload(vm, &w1))
			return chaos_fail(c, "query-workload on the %s: %s", who, vm->error);
		if (w1.running && w1.progress > w0.progress + 1000)
			return 0;
		harness_nap_ms(CHAOS_POLL_MS);
	} while (clock_monotonic_ns() < deadline);
	return chaos_fail(c, "the guest on the %s makes no progress (%llu writes and passes "
			  "in %d ms)", who, (unsigned long long)(w1.progress - w0.progress),
			  CHAOS_PROGRESS_MS);
}

/* @cmd with @args_json must be refused on @side. */
static int chaos_expect_refused(struct chaos_ctx *c, int side, const char *cmd,
				const char *args_json)
{
	struct json_object *args = args_json ? json_tokener_parse(args_json) : NULL;
	int rc = harness_call(&c->vm[side], cmd, args, NULL);

	json_object_put(args);
	if (rc != -EREMOTEIO)
		return chaos_fail(c, "%s %s on the %s was not refused (%d)", cmd,
				  args_json ? args_json : "", side ? "destination" : "source", rc);
	return 0;
}

/* The destination runs the guest: classify by how it got there. */
static int chaos_dst_got_it(struct chaos_ctx *c, const struct chaos_side *s,
			    const struct chaos_side *d)
{
	struct chaos_result *r = c->res;

	if (s->alive && chaos_is(s->run, "running"))
		return chaos_fail(c, "two copies run: source %s, destination %s", s->mig, d->mig);
	if (s->alive && chaos_is(s->mig, "failed")) {
		/* Silence after END: kept paused; the destination did run it. */
		if (!chaos_is(s->run, "finish-migrate") || !strstr(s->err, "force"))
			return chaos_fail(c, "source failed in %s without keeping it paused: %s",
					  s->run, s->err);
		r->outcome = CHAOS_KEPT_PAUSED_DST_RUNS;
		if (chaos_expect_refused(c, CHAOS_SRC, "cont", NULL))
			return -1;
	} else if (c->recovered_by_hand) {
		r->outcome = CHAOS_RECOVERED_MANUAL;
	} else if (d->pauses > 0) {
		r->outcome = CHAOS_RECOVERED_AUTO;
	} else {
		r->outcome = r->injected ? CHAOS_COMPLETED : CHAOS_NOT_INJECTED;
	}
	if (d->pauses > 0)
		chaos_note(c, "%lld postcopy pause(s)", (long long)d->pauses);
	return chaos_verify_runs(c, CHAOS_DST);
}

/* The source kept the guest paused and the destination is gone: the operator's force. */
static int chaos_force_on_source(struct chaos_ctx *c, const struct chaos_side *s)
{
	struct json_object *args = json_tokener_parse("{\"force\": true}");
	int rc;

	chaos_note(c, "kept paused: %.200s", s->err);
	harness_vm_kill(&c->vm[CHAOS_DST]);  /* the operator ends it first (docs/cpr.md) */
	rc = harness_call(&c->vm[CHAOS_SRC], "cont", args, NULL);
	json_object_put(args);
	if (rc)
		return chaos_fail(c, "cont {\"force\": true} refused with the destination gone: %s",
				  c->vm[CHAOS_SRC].error);
	c->res->outcome = CHAOS_KEPT_PAUSED_FORCED;
	return chaos_verify_runs(c, CHAOS_SRC);
}

/* Postcopy paused on the source while the destination is dead. */
static int chaos_lost_dst(struct chaos_ctx *c, const struct chaos_side *s)
{
	if (!c->killed[CHAOS_DST])
		return chaos_fail(c, "source paused in postcopy, destination died by itself");
	if (!strstr(s->err, "guest is lost"))
		return chaos_fail(c, "the source does not say the guest may be lost: %s", s->err);
	c->res->outcome = CHAOS_LOST_DST_DIED;
	return chaos_expect_refused(c, CHAOS_SRC, "cont", "{\"force\": true}");
}

/* Classify the settled state of a run whose destination does not run the guest. */
static int chaos_dst_without_it(struct chaos_ctx *c, const struct chaos_side *s,
				const struct chaos_side *d)
{
	bool cpr = c->res->mode == CHAOS_CPR;

	if (!s->alive) {
		/* The source is killed: the guest goes with it, unless it ran elsewhere. */
		if (chaos_paused_pc(d)) {
			/* Postcopy: it runs until a vCPU touches a page that never comes. */
			if (!strstr(d->err, "source"))
				return chaos_fail(c, "destination paused without naming the source:"
						  " %s", d->err);
		} else if (d->alive && (chaos_is(d->mig, "active") || chaos_is(d->mig, "device"))) {
			/* It had the stream: a dead source is an EOF or a silence. */
			return chaos_fail(c, "the destination still loads from a dead source (%s)",
					  d->mig);
		} else if (d->alive && chaos_is(d->run, "running"))
			return chaos_fail(c, "the destination runs a guest it did not complete");
		c->res->outcome = CHAOS_LOST_SRC_DIED;
		return 0;
	}
	if (chaos_is(s->run, "running") && (chaos_is(s->mig, "failed") ||
					    chaos_is(s->mig, "cancelled"))) {
		if (d->alive && chaos_is(d->run, "running"))
			return chaos_fail(c, "two copies run");
		chaos_note(c, "%.200s", s->err);
		c->res->outcome = cpr ? CHAOS_CPR_ROLLED_BACK : CHAOS_FAILED_SOURCE_RUNS;
		return chaos_verify_runs(c, CHAOS_SRC);
	}
	if (chaos_paused_pc(s) && !d->alive)
		return chaos_lost_dst(c, s);
	if (chaos_is(s->mig, "failed") && chaos_is(s->run, "finish-migrate") && !d->alive)
		return chaos_force_on_source(c, s);
	if (chaos_is(s->mig, "failed") && cpr && chaos_is(s->run, "finish-migrate"))
		return chaos_force_on_source(c, s);  /* the new process never ran it */
	if (chaos_is(s->mig, "completed") && !d->alive && c->killed[CHAOS_DST]) {
		c->res->outcome = CHAOS_KILLED_AFTER_SWITCH;
		return 0;
	}
	return chaos_fail(c, "undocumented state: source %s/%s '%s', destination %s/%s '%s'",
			  s->mig, s->run, s->err, d->alive ? d->mig : "dead", d->run, d->err);
}

/* Both paused in postcopy: recover by hand when nothing did by itself. */
static int chaos_both_paused(struct chaos_ctx *c, struct chaos_side *s, struct chaos_side *d)
{
	if (c->recover_auto && c->res->lasted_ms + c->cfg->io_timeout_ms <
				       c->cfg->recover_timeout_s * 1000u)
		return chaos_fail(c, "automatic recovery did not resume within %u s: %s",
				  c->cfg->recover_timeout_s, s->err);
	uint64_t deadline;

	if (chaos_recover_by_hand(c))
		return -1;
	/* The resume runs on: wait for its end (it may pause again: a failure). */
	deadline = clock_monotonic_ns() + CHAOS_SETTLE_MS * 1000000ull;
	do {
		harness_nap_ms(CHAOS_POLL_MS);
		chaos_look(c, CHAOS_SRC, s);
		chaos_look(c, CHAOS_DST, d);
		if (chaos_dst_runs(d) && (!s->alive || !chaos_is(s->mig, "postcopy-active")))
			return 0;
	} while (clock_monotonic_ns() < deadline && s->alive && d->alive &&
		 !chaos_is(s->mig, "failed"));
	return chaos_fail(c, "after migrate-recover and resume: source %s '%s', "
			  "destination %s '%s'", s->alive ? s->mig : "dead", s->err,
			  d->alive ? d->mig : "dead", d->err);
}

int chaos_settle_and_classify(struct chaos_ctx *c)
{
	struct chaos_side s, d;

	if (!chaos_wait_settled(c, &s, &d))
		return -1;
	if (chaos_paused_pc(&s) && chaos_paused_pc(&d) && chaos_both_paused(c, &s, &d))
		return -1;
	if (chaos_check_deaths(c, &s, &d))
		return -1;
	if (chaos_dst_runs(&d))
		return chaos_dst_got_it(c, &s, &d);
	return chaos_dst_without_it(c, &s, &d);
}
