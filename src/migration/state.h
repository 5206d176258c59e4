/*
 * Migratable state: one interface for every piece of state that moves with
 * a guest - RAM, the vCPUs, the VM's own section, each device and disk.
 * Each registers once with the migration engine (migration_register_state)
 * and takes part in every phase through the callbacks below; the engine
 * knows phases and channels, never what a state is.  docs/architecture.md
 * has the phases, the threads and a diagram.
 *
 * On the wire a state owns one section id (docs/stream-format.md): a whole
 * section per instance at the stop, and optionally section parts while the
 * guest still runs.  A destination refuses a section id nobody registered.
 *
 * Versions: a state writes ops->version and loads min_version..version
 * (docs/cpr.md's policy: a build loads every older version it knows and
 * refuses newer ones); the engine checks the range before load() sees it.
 *
 * Callbacks: NULL means the state has no such phase, never "do the usual";
 * save_complete, save_cleanup and (with a section) load are required.
 */
#ifndef VMFERRY_MIGRATION_STATE_H
#define VMFERRY_MIGRATION_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct migration;
struct mig_save;
struct cpr_state;
struct stream;
struct json_object;

/* What the source knows about the stop, for save_complete. */
struct mig_save_info {
	bool cpr;          /* cpr-transfer: RAM and lent fds stay shared, nothing copied */
	bool postcopy;     /* the postcopy package: the destination runs right after it */
	bool was_running;  /* the guest ran when the vCPUs stopped */
	uint64_t stop_ns;  /* CLOCK_MONOTONIC when the vCPUs began to stop */
};

#define MIG_STATE_PER_VCPU 0u /* .instances: one section per vCPU */
#define MIG_STATE_MAX 32u     /* registrations per VM */

struct mig_state_ops {
	const char *name;       /* in messages and query-migrate */
	uint32_t section_id;    /* its sections' id on the wire; 0: it sends no section */
	uint32_t version;       /* written */
	uint32_t min_version;   /* the oldest it loads */
	uint32_t instances;     /* sections at the stop: 1..64, or MIG_STATE_PER_VCPU */
	bool required;          /* the destination may not run the guest without them */

	/*
	 * Source, on the migration thread, guest running.  save_setup: once,
	 * after the connection is up.  save_pending: bytes it still has to
	 * send before the stop into *@bytes (@sync: measure afresh, e.g. read a
	 * dirty log; false: the last figure), for the switch-over estimate.
	 * save_iterate: one bounded step (at most a pass over its data) of
	 * section parts or records.  All three or none.
	 */
	int (*save_setup)(void *opaque, struct mig_save *sv);
	int (*save_pending)(void *opaque, struct mig_save *sv, bool sync, uint64_t *bytes);
	int (*save_iterate)(void *opaque, struct mig_save *sv);
	/*
	 * Source, migration thread, vCPUs stopped: everything that is left, at
	 * least one section per instance (mig_save_section).  @info says
	 * whether this is a precopy stop, the postcopy package or a CPR.
	 */
	int (*save_complete)(void *opaque, struct mig_save *sv, const struct mig_save_info *info);
	/*
	 * Source, migration thread, at the end: @completed, or the migration
	 * failed or was cancelled and the guest runs on here - undo whatever
	 * setup started (dirty logging, throttles).  Required.
	 */
	void (*save_cleanup)(void *opaque, bool completed);
	/* Source, CPR: lend fds (cpr_state_add), still owned by the state. */
	int (*cpr_lend_fds)(void *opaque, struct cpr_state *cs, char *err, size_t errlen);
	/*
	 * Destination, CPR, main thread, before the new process answers the
	 * old one and before any vCPU runs: take the fds this state's
	 * cpr_lend_fds lent on the source (an entry taken is the state's: set
	 * its fd to -1) and check them against the local configuration.  0, or
	 * -errno with @err: the new process refuses the update and the old one
	 * keeps the guest.  A lent fd that no state takes is refused too.
	 */
	int (*cpr_take_fds)(void *opaque, struct cpr_state *cs, char *err, size_t errlen);

	/*
	 * Destination, on the load thread, before any vCPU runs.  load: one
	 * whole section (version already in range); load_part: one part sent
	 * by save_iterate.  0 or -errno with @err.
	 */
	int (*load)(void *opaque, uint32_t instance, uint32_t version, const uint8_t *data,
		    uint32_t len, char *err, size_t errlen);
	int (*load_part)(void *opaque, uint32_t instance, uint32_t version, const uint8_t *data,
			 uint32_t len, char *err, size_t errlen);
	/* Destination, load thread: every section is in; the vCPUs start next. */
	int (*load_complete)(void *opaque, char *err, size_t errlen);
	/*
	 * Precopy's data that must be durable on the destination before the
	 * source lets go of its own copy (a disk's blocks), made so outside
	 * the pause.  Destination, load thread, right after the guest started
	 * there and RUNNING went out: load_settle makes it durable; 1 it had
	 * work (the engine then sends COMPLETE), 0 none, or -errno with @err
	 * (ERROR instead; the guest runs on here).  Source, migration thread,
	 * after RUNNING: save_settles says whether load_settle will have work,
	 * so the source waits for COMPLETE before it calls the migration
	 * completed and releases what it kept.  Both or neither.
	 */
	bool (*save_settles)(void *opaque);
	int (*load_settle)(void *opaque, char *err, size_t errlen);
	/*
	 * Either side, once the migration is over: @source tells which side,
	 * @completed whether it moved.  Postcopy: after the last page.
	 */
	void (*migration_end)(void *opaque, bool source, bool completed);
	/*
	 * Postcopy of a state's data (all optional: a state without them has
	 * nothing left once the postcopy package is sent).  Source, migration
	 * thread, after the switch: save_push sends one bounded step of what
	 * the destination still lacks and says in *@left_bytes what remains
	 * (0: done; the engine ends the stream only then).  Source, return-path
	 * thread, concurrently: save_request answers the destination's request
	 * for [@offset, +@len) of @instance at once, with mig_save_part on @sv
	 * (the urgent channel).  Source, resuming a paused postcopy:
	 * save_resume gets what the destination holds of @instance (@nbits
	 * bits, LSB first; 0 bits: it receives nothing of it) and makes the
	 * rest pending again.
	 */
	int (*save_push)(void *opaque, struct mig_save *sv, uint64_t *left_bytes);
	int (*save_request)(void *opaque, struct mig_save *sv, uint32_t instance, uint64_t offset,
			    uint32_t len);
	int (*save_resume)(void *opaque, uint32_t instance, const uint8_t *bits, uint64_t nbits,
			   char *err, size_t errlen);
	/*
	 * Destination, postcopy: load_pending: bytes still to arrive (COMPLETE
	 * waits for 0; any thread).  load_received: what @instance holds, for a
	 * resume: *@bits (malloc'd, the caller frees; NULL with 0 bits when it
	 * receives nothing), *@nbits.  Both or neither with save_resume.
	 */
	uint64_t (*load_pending)(void *opaque);
	int (*load_received)(void *opaque, uint32_t instance, uint8_t **bits, uint64_t *nbits);
	/*
	 * Either side, control thread, at any time (query-migrate): add this
	 * state's figures to the reply object @reply.  Atomics only, it runs
	 * beside every phase.  Optional.
	 */
	void (*query)(void *opaque, struct json_object *reply);
};

/*
 * Register @ops (copied by pointer: it and @opaque outlive the migration
 * object) before any migration starts.  0, -EINVAL (a required callback
 * missing, a bad instance count, a section id 0 with a load), -EEXIST (its
 * section id is taken), -ENOSPC.  Main thread.
 */
int migration_register_state(struct migration *m, const struct mig_state_ops *ops, void *opaque);

/*
 * Inside save callbacks: write a whole section (save_complete) or a part
 * (save_iterate) of the calling state for @instance; at most
 * VMSTATE_SECTION_MAX_BYTES.  Errors stick to the stream (checked by the
 * engine); 0 or -EINVAL for a bad instance or length.
 */
int mig_save_section(struct mig_save *sv, uint32_t instance, const void *data, uint32_t len);
/* The same in format @version (older formats: compatibility tests). */
int mig_save_section_as(struct mig_save *sv, uint32_t instance, uint32_t version,
			const void *data, uint32_t len);
int mig_save_part(struct mig_save *sv, uint32_t instance, const void *data, uint32_t len);
/*
 * Destination, any thread, while postcopy runs: ask the source for
 * [@offset, +@len) of section @section_id's @instance (STATE_REQ; the
 * source's save_request answers with parts).  0, -ENOTCONN (no postcopy
 * connection now: the data still comes with the background push), -EINVAL
 * (@len 0 or above MIG_STATE_REQ_MAX_BYTES), or the write's error.
 */
int mig_request(struct migration *m, uint32_t section_id, uint32_t instance, uint64_t offset,
		uint32_t len);

/*
 * Whether this migration moves the disks' data too (`migrate` with
 * "storage": true, docs/devices.md "Storage migration"); false: a shared
 * disk.  Inside save callbacks.
 */
bool mig_save_storage(const struct mig_save *sv);
/* The stream being written, for a state that writes records of its own (RAM). */
struct stream *mig_save_stream(struct mig_save *sv);

#endif
