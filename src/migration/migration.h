/*
 * Live migration of one VM: the precopy source engine, the incoming
 * (destination) side, their parameters, statistics and control commands.
 *
 * Source: `migrate {"uri": ...}` starts a migration thread that copies RAM
 * while the guest runs (dirty logging), re-sends dirtied pages pass after
 * pass, and switches over when the remaining bytes fit the downtime limit at
 * the measured bandwidth: vCPUs stop, the last pages and every device
 * section go out, and the destination reports that it runs.  Any failure
 * before the destination runs leaves the guest running here.
 *
 * Destination: `vmferry run --incoming URI` listens, loads one stream, and
 * runs the guest.
 *
 * Threads: one migration thread (source) or incoming thread (destination)
 * owns the connection; the control thread reads statistics and may cancel
 * (which only flips a flag and cancels the stream).  docs/threads.md.
 */
#ifndef VMFERRY_MIGRATION_MIGRATION_H
#define VMFERRY_MIGRATION_MIGRATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmm/vm.h"

struct migration;
struct control_server;
struct json_object;

/* Migration status, a table in migration.c; zero is invalid. */
enum mig_status {
	MIG_STATUS_NONE = 1,
	MIG_STATUS_SETUP,
	MIG_STATUS_ACTIVE,
	MIG_STATUS_DEVICE,     /* source: vCPUs stopped, final pages + state */
	MIG_STATUS_COMPLETED,
	MIG_STATUS_FAILED,
	MIG_STATUS_CANCELLING,
	MIG_STATUS_CANCELLED,
	MIG_STATUS_POSTCOPY_ACTIVE, /* the destination runs; pages still move */
	MIG_STATUS_POSTCOPY_PAUSED, /* a channel broke in postcopy: both sides wait for
				     * migrate-recover (destination) and
				     * migrate {"resume": true} (source) */
	MIG_STATUS__COUNT,
};
const char *mig_status_name(enum mig_status s);
bool mig_status_transition_ok(enum mig_status from, enum mig_status to);

/* The `mode` parameter. */
enum mig_mode {
	MIG_MODE_NORMAL = 1,   /* copy RAM over the main channel */
	MIG_MODE_CPR_TRANSFER, /* live update on this host: hand the RAM memfds to a
				* new process over a cpr channel, copy no RAM */
};

/*
 * postcopy-vcpu-nice unless set: the SCHED_IDLE policy.  The destination's
 * vCPUs then run only on CPU time the threads bringing pages leave, so a
 * vCPU walking the pages it has delays them less and requests fewer pages
 * (1 GiB heavy pure postcopy: 341 requests against 1,502 at nice 19).
 */
#define MIG_POSTCOPY_VCPU_NICE_DEFAULT 20

/* downtime-limit unless set (ms); `vmferry migrate` sets it back each run. */
#define MIG_DOWNTIME_LIMIT_DEFAULT_MS 300

struct mig_params {
	enum mig_mode mode;             /* default normal */
	uint64_t downtime_limit_ms;     /* default 300 */
	uint64_t max_bandwidth;         /* bytes/s, 0 = unlimited */
	uint64_t convergence_timeout_s; /* 0 = none */
	bool auto_converge;             /* capability */
	bool postcopy_ram;              /* capability, needed on both sides */
	bool postcopy_preempt;          /* capability (default on): answer page
					 * requests on the urgent channel; off:
					 * the background stream jumps to them */
	bool stream_crc;                /* capability (default off): write stream
					 * version 2, with CRCs over every RAM and
					 * section record (docs/stream-format.md) */
	uint64_t postcopy_after_passes; /* switch when not converged after N; 0 = never */
	uint64_t postcopy_vcpu_nice;    /* destination: vCPUs this much nicer while
					 * postcopy pages arrive (0..19, 0 = off;
					 * 20 = SCHED_IDLE) */
	uint64_t postcopy_recover_timeout_s; /* a broken postcopy connection: both sides
					 * retry on their own for this long (0 = wait
					 * for migrate-recover and resume by hand) */
	bool storage;                   /* per run (migrate "storage"): the disks' data
					 * moves too; not a parameter of its own */
	uint32_t throttle_initial_pct;  /* 20 */
	uint32_t throttle_increment_pct;/* 10 */
};

/* A capability change: each member -1 (leave as it is), 0 (off) or 1 (on). */
struct mig_caps_update {
	int auto_converge;
	int postcopy_ram;
	int postcopy_preempt;
	int stream_crc;
};

/* Create the migration state for @vm (does not start anything). */
int migration_create(struct vm *vm, struct migration **out);
/*
 * Cancel any migration, join its thread and refuse new ones; queries still
 * work.  Main thread, before the control server goes.  NULL is fine.
 */
void migration_shutdown(struct migration *m);
/* Free (after migration_shutdown and after the control server is gone). */
void migration_destroy(struct migration *m);
void migration_set_event_handler(struct migration *m, vm_event_fn *fn, void *opaque);

/*
 * What migrate-set-capabilities does, in process: apply @u, refused
 * (-EBUSY, nothing changed, reason in @err) during a migration, except on a
 * destination still waiting for its stream.  Turning postcopy-ram on there
 * gets guest RAM ready for userfaultfd at once.  Before
 * migration_incoming_start() it takes effect when that starts listening
 * (`vmferry run --incoming URI --postcopy`).  0 or -EBUSY.  Main or
 * control thread.
 */
int migration_set_capabilities(struct migration *m, const struct mig_caps_update *u,
			       char *err, size_t errlen);
/* postcopy-vcpu-nice (0..20; see struct mig_params), as the parameter.  0 or -EINVAL. */
int migration_set_postcopy_vcpu_nice(struct migration *m, unsigned nice);

/* Register migrate, migrate-cancel, migrate-set-parameters, ... */
int migration_register_commands(struct migration *m, struct control_server *srv);

/* Start an outgoing migration.  0, or -errno with a reason in @err. */
int migration_start(struct migration *m, const char *uri, char *err, size_t errlen);
/*
 * The same with the cpr channel (@cpr_uri "unix:PATH", NULL when none),
 * which mode cpr-transfer needs and mode normal refuses.  On completion of
 * a cpr-transfer the VMM exits with status 0: the guest runs in the new
 * process.
 */
int migration_start_channels(struct migration *m, const char *uri, const char *cpr_uri,
			     char *err, size_t errlen);
/*
 * The same, and with @storage the disks' data moves too (storage migration,
 * docs/devices.md): refused with postcopy-ram (not supported yet) and with
 * mode cpr-transfer.
 */
int migration_start_storage(struct migration *m, const char *uri, const char *cpr_uri,
			    bool storage, char *err, size_t errlen);
/*
 * Switch the outgoing migration to postcopy at the next opportunity; before
 * `migrate` it makes the next migration pure postcopy.  Needs the
 * postcopy-ram capability.  0 or -errno with @err.
 */
int migration_start_postcopy(struct migration *m, char *err, size_t errlen);
/*
 * Postcopy recovery.  migration_pause: break the connections of a migration
 * in postcopy-active (either side) so both sides enter postcopy-paused.
 * migration_recover (destination, postcopy-paused): listen on @uri for the
 * source to resume.  migration_resume (source, postcopy-paused): connect to
 * the destination's recovery address @uri and continue.  All three return at
 * once (the migration thread does the work; query-migrate and the
 * MIGRATION events show the outcome): 0, or -errno with a reason in @err.
 * Control thread.
 */
int migration_pause(struct migration *m, char *err, size_t errlen);
int migration_recover(struct migration *m, const char *uri, char *err, size_t errlen);
int migration_resume(struct migration *m, const char *uri, char *err, size_t errlen);
/* Cancel an outgoing migration (asynchronous).  0 or -EINVAL if none;
 * -EBUSY in postcopy (the guest runs on the destination). */
int migration_cancel(struct migration *m, char *err, size_t errlen);
/* How a destination faults in guest RAM before the stream writes it. */
enum mig_prealloc {
	MIG_PREALLOC_NONE,      /* not at all: each page as it is first written */
	/*
	 * In the background, ahead of the stream's page data only (which comes
	 * in address order in a first pass): memory the source never wrote
	 * (memfd holes, sent as nothing or as zero runs) is never allocated,
	 * so a sparse guest costs what it touched, not the RAM it was given.
	 */
	MIG_PREALLOC_FOLLOW,
	MIG_PREALLOC_ALL,       /* every page, in the background, from the start */
};

/*
 * Listen on @uri and load the first stream that arrives (destination).
 * @prealloc: fault in guest RAM in a background thread, so the stream does
 * not pay a page fault per page (query-migrate shows how long it took).
 * 0, or -errno with a reason in @err.
 */
int migration_incoming_start(struct migration *m, const char *uri, enum mig_prealloc prealloc,
			     char *err, size_t errlen);

/*
 * CPR transfer, destination: guest RAM was inherited over the cpr channel
 * (@cs, its RAM fds already taken); every registered state takes the fds
 * it lent on the source (cpr_take_fds), and any fd left over is refused.
 * The main stream must then be a cpr-transfer stream with @cs's token.
 * Call after every state registered, before migration_incoming_start()
 * (main thread).  0, or -errno with @err (answer the old process with it;
 * fds still in @cs stay the caller's to close).
 */
struct cpr_state;
int migration_incoming_take_cpr(struct migration *m, struct cpr_state *cs, char *err,
				size_t errlen);

enum mig_status migration_get_status(struct migration *m);
/* query-migrate's reply; the caller owns it. */
struct json_object *migration_query(struct migration *m);

#endif
