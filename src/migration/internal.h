/*
 * The migration module's internals, shared by its files (not an API):
 *   migration.c        the struct, status table, lifecycle, the public API
 *   commands.c         control commands, parameters, query-migrate
 *   source.c           the source's migration thread: precopy and switch-over
 *   source_ram.c       the source: RAM pages into the stream, dirty passes
 *   source_postcopy.c  the source after the switch: push, return path,
 *                      release-ram, pause and resume
 *   destination.c      the incoming side: load thread, urgent thread,
 *                      postcopy recovery
 *   destination_ram.c  the incoming side's RAM: preallocation, pages that
 *                      failed their CRC
 *   cpr.c              the cpr channel, and the source's live update
 */
#ifndef VMFERRY_MIGRATION_INTERNAL_H
#define VMFERRY_MIGRATION_INTERNAL_H

#include "migration/migration.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netdb.h>
#include <linux/sockios.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <poll.h>

#include <json-c/json.h>

#include "control/control.h"
#include "migration/channel.h"
#include "migration/cpr.h"
#include "migration/format.h"
#include "migration/load.h"
#include "migration/postcopy.h"
#include "migration/state.h"
#include "migration/stream.h"
#include "migration/vmstate.h"
#include "util/log.h"

#define MIG_WINDOW_PAGES 512u          /* pages cleared + sent together (2 MiB) */
#define MIG_CONNECT_TIMEOUT_MS 10000
/*
 * How long a peer may stay silent (a read or write on a migration channel,
 * the source's wait for RUNNING after END) before the link counts as
 * broken: 30 s, or VMFERRY_IO_TIMEOUT_MS (100..3600000; tests shorten it).
 */
#define MIG_IO_TIMEOUT_DEFAULT_MS 30000
#define MIG_IO_TIMEOUT_MS mig_io_timeout_ms()
#define MIG_RP_TIMEOUT_MS mig_io_timeout_ms()
/*
 * Completion closes the urgent channel: the source ends it with END once it
 * read COMPLETE on the return path.  Two separate connections do not keep
 * each other's order, so each side waits this long for the other's part of
 * the close before it calls what it saw a broken connection.
 */
#define MIG_URGENT_CLOSE_MS 2000
#define MIG_ERROR_BYTES 512
#define MIG_DOWNTIME_GOOD_MS 2     /* below this, another pass is not worth it */
#define MIG_EXTRA_PASSES_MAX 5     /* passes after the limit was first met */
#define MIG_DRAIN_MAX_MS 5000      /* longest wait for the send queue to drain */
#define MIG_CPR_ACK_TIMEOUT_MS 30000  /* the new process creates its VM */
#define MIG_CPR_PEER_EXIT_MS 5000     /* a failed new process has this long to exit */
#define MIG_CPR_CONNECT_WAIT_MS 2000  /* for a new process that does not listen yet */
/*
 * The new process of a live update, once it holds the guest's fds and
 * answered ACK, gives up when the old one has not connected the main
 * channel within this long (VMFERRY_CPR_MAIN_WAIT_MS overrides it, for
 * tests): the old process connects right after the ACK, and gives up itself
 * after MIG_CONNECT_TIMEOUT_MS.
 */
#define MIG_CPR_MAIN_WAIT_DEFAULT_MS 15000
/*
 * Postcopy: the source asks for an acknowledgement (PING) after this many
 * pages pushed, and gives a page's memory back only once acknowledged, so a
 * page lost in flight when a channel breaks is still here to be re-sent.
 */
#define MIG_ACK_PAGES 1024u
#define MIG_REQ_RING 256u /* requests the background push can be behind by */
/* In a req_ring entry: a PAGE_RESEND (send it even if the push took it). */
#define MIG_REQ_RESEND (1ull << 63)

/*
 * Where a migration's pause went, in ns (query-migrate's
 * downtime-breakdown).  Filled by the thread that owns the migration and
 * published with mig_set_breakdown.
 */
struct mig_breakdown {
	bool valid;
	/* source */
	uint64_t vcpu_stop_ns;               /* asking the vCPUs to stop until all parked */
	uint64_t state_ns[MIG_STATE_MAX];    /* each state's save at the stop (RAM: last pass) */
	uint64_t discard_ns;                 /* postcopy: the discard list (either side) */
	uint64_t send_ns;                    /* flushing END (precopy, CPR) or opening the
					      * channels and RUN (postcopy) */
	uint64_t wait_ns;                    /* from then to the destination's first vCPU run
					      * (one clock) or to RUNNING */
	/* destination (one clock with the source: receive) */
	uint64_t receive_ns;                 /* the source's stop to the stream's END or RUN */
	uint64_t load_ns;                    /* loading the sections */
	uint64_t uffd_ns;                    /* postcopy: putting RAM under userfaultfd */
	uint64_t start_ns;                   /* starting the vCPUs */
};

struct mig_dst;

/* A registered state (state.h). */
struct mig_state_reg {
	const struct mig_state_ops *ops;
	void *opaque;
};

/* What save callbacks write to: the engine's side of state.h's struct mig_save. */
struct mig_save {
	struct migration *m;
	struct mig_src *src;             /* the source's RAM and channels */
	struct stream *s;                /* the main channel */
	const struct mig_state_reg *cur; /* the state being called */
	struct mig_breakdown *bd;        /* save_complete: each state's time, or NULL */
};

struct migration {
	struct vm *vm;
	/* migratable states, registered before any migration (state.c) */
	struct mig_state_reg states[MIG_STATE_MAX];
	unsigned nstates;
	/* destination: the VM section, as its state loaded it (state_vm.c) */
	struct vmstate_vm in_vm;
	bool in_vm_loaded;
	bool ram_logging;          /* source: KVM logs dirty pages for this migration */
	vm_event_fn *event_fn;
	void *event_opaque;

	pthread_mutex_t lock;     /* protects what follows, unless atomic */
	enum mig_status status;
	struct mig_params params;
	char error[MIG_ERROR_BYTES];
	bool incoming;
	struct mig_dst *dst;      /* destination in postcopy: its connections, for
				   * mig_request (destination.c) */
	bool closing;             /* the VMM is going: no new migrations */
	bool thread_joinable;
	pthread_t thread;
	struct channel main_ch;   /* the main channel (source: its destination; destination:
				   * where it listens, port 0 resolved) */
	struct channel cpr_ch;    /* source, cpr-transfer: "unix:PATH" */
	struct channel incoming_ch; /* destination: where it first listened (port 0
				     * resolved); automatic recovery listens there again */
	bool cpr_incoming;        /* destination: RAM inherited over the cpr channel */
	uint8_t cpr_token[MIG_CPR_TOKEN_BYTES];
	struct stream *stream;    /* live stream, for cancel */
	struct stream *urgent_stream; /* destination: the urgent channel, for cancel */
	int listen_fd;            /* incoming */
	int cancel_fd;            /* eventfd: cancel an accept */
	atomic_bool cancel;
	/*
	 * Destination: whether the threads a faulting vCPU waits for (fault,
	 * urgent) run real-time.  Only while the vCPUs run at full priority:
	 * made nicer (postcopy-vcpu-nice) they leave those threads the CPU
	 * anyway, and the normal policy wakes a thread on its waker's CPU,
	 * where a real-time wake-up goes to another CPU, which is slow on
	 * nested KVM (page-request p50 ~150 -> 60-70 us).
	 */
	atomic_bool pagepath_rt;

	/* postcopy recovery (docs/migration.md), under lock */
	pthread_cond_t cond;      /* a resume or recover request, or closing */
	int conn_fd;              /* the main connection, for migrate-pause; -1 none */
	int urgent_conn_fd;       /* the urgent connection, likewise */
	bool pause_requested;     /* migrate-pause: the break is deliberate */
	bool resume_requested;    /* source: migrate {"resume": true} given ... */
	struct channel resume_ch; /* ... to this address */
	int recover_fd;           /* destination: migrate-recover's listening socket, -1 none */
	struct channel recover_ch;
	_Atomic uint64_t postcopy_pauses;
	_Atomic uint64_t resume_failures; /* source: resume attempts that failed */

	/*
	 * Timings: written by the migration (or incoming) thread under lock,
	 * which query-migrate holds for one consistent snapshot (a new
	 * migration resets start and end together; downtime and its clock go
	 * together).  The writing thread reads its own values without it.
	 */
	uint64_t start_ns, setup_ns, end_ns;
	uint64_t downtime_ns;
	bool downtime_known;
	bool downtime_same_clock;
	uint64_t expected_downtime_ms;
	_Atomic uint64_t transferred;
	_Atomic uint64_t zero_pages, normal_pages;
	_Atomic uint64_t remaining_bytes;
	_Atomic uint64_t dirty_sync_count, dirty_pages_rate, passes;
	_Atomic uint64_t throughput_bps;
	_Atomic unsigned throttle_max;
	uint64_t total_bytes;
	atomic_bool postcopy_requested; /* migrate-start-postcopy */
	atomic_bool pc_prepared;        /* destination RAM ready for postcopy (set after
					 * the alias mapping, read by query-migrate) */
	/* source postcopy figures, counted live by the migration and return-path
	 * threads; reset when a migration starts (not when it resumes) */
	_Atomic uint64_t pages_pushed, pages_requested, postcopy_requests, pages_resent;
	/*
	 * CRC failures (stream version 2), reset when a migration starts.
	 * Destination: crc_suspects - precopy copies that failed the check
	 * (pages the guest wrote while they were sent do; they come again),
	 * crc_mismatches - damage that mattered (a record or postcopy page that
	 * failed, a page still suspect at the stop), crc_resends - postcopy
	 * pages asked for again.  Source: crc_resends - pages sent again.
	 */
	_Atomic uint64_t crc_suspects, crc_mismatches, crc_resends;
	struct postcopy_dst_stats pc_stats; /* destination, kept at the end; under lock */
	bool pc_stats_valid;
	struct mig_breakdown bd;           /* the last migration's pause, under lock */

	/* destination: background preallocation of guest RAM */
	pthread_t prealloc_thread;
	bool prealloc_joinable;
	bool prealloc_follow;           /* only ahead of the stream's data (set before the
					 * thread starts) */
	atomic_bool prealloc_stop;
	_Atomic uint64_t prealloc_ns, prealloc_bytes;
	/*
	 * Follow mode: the end of the furthest page data written so far (the
	 * load threads raise it), and the front the preallocation thread waits
	 * for (it sets it, under prealloc_lock, before it sleeps on
	 * prealloc_cond; whoever raises the front past it signals).
	 */
	_Atomic uint64_t prealloc_front, prealloc_want;
	pthread_mutex_t prealloc_lock;
	pthread_cond_t prealloc_cond;
};

/* ---- source: sending pages ---- */

/*
 * release-ram off the send path: the migration thread marks acknowledged
 * pages released and queues them; this thread gives their memory back.  A
 * hole punch costs about as much CPU as sending the page did, and it no
 * longer holds up the stream.
 */
struct mig_releaser {
	pthread_t thread;
	bool started;
	int fd;                    /* the RAM block's memfd */
	pthread_mutex_t lock;      /* protects the rest */
	pthread_cond_t cond;
	struct mig_range { uint64_t first, n; } *q;
	size_t len, cap;
	bool stop;                 /* punch what is queued, then exit */
	uint64_t ns, pages, cpu_ns; /* its cost, for the log */
	struct vm *vm;             /* detach its RAM from KVM before the first punch */
	uint64_t detach_ns;
};

struct mig_src {
	struct migration *m;
	struct mig_breakdown bd;   /* this migration's pause, published at the end */
	struct stream s;
	struct ram_block *block;
	bool storage;              /* migrate "storage": the disks' data moves too */
	uint64_t npages;
	uint64_t *bitmap;          /* dirty pages of the current pass */
	uint64_t bitmap_words;
	/* RAM as a migratable state (source_ram.c) */
	uint64_t ram_passes;       /* passes sent */
	uint64_t ram_dirty_pages;  /* at the last dirty-log sync */
	uint64_t ram_sync_ns;      /* when the log was last read (pass 1: its start) */
	/* postcopy */
	bool postcopy;             /* advised: the switch may come */
	bool release_ram;          /* postcopy phase: free pages once sent */
	bool preempt;              /* requested pages go on the urgent channel */
	uint64_t *sent_once;       /* pages the destination holds a copy of */
	uint64_t *predisc;         /* discarded before the stop (hybrid), or NULL */
	_Atomic uint64_t *pending; /* postcopy: pages still to send, either channel */
	_Atomic uint64_t pending_count;
	uint64_t *pc_discard;      /* postcopy: the discard set, made before the stop */
	bool pending_ready;        /* pure postcopy: pending filled before the stop */
	/*
	 * Requested pages, in order, for the background push: written by the
	 * return-path thread, read by the push.  Each faulting thread has at
	 * most one request out, so the ring never laps in practice; if it did,
	 * the push would skip to the newest MIG_REQ_RING.
	 */
	_Atomic uint64_t req_ring[MIG_REQ_RING]; /* page | MIG_REQ_RESEND */
	_Atomic uint64_t req_seq;  /* requests written so far */
	struct mig_releaser releaser; /* release-ram's hole punching */
	bool ram_detached;         /* guest RAM taken out of KVM (vm_detach_ram) */
	struct stream urgent;      /* written by the return-path thread only */
	int urgent_fd;
	uint64_t urgent_bytes;     /* sent on the urgent channel, for the figures */
	uint64_t earlier_bytes;    /* sent on main connections before a postcopy pause */
	struct stream rp;          /* return path, read by its thread */
	int rp_fd;
	int rp_result;             /* 0 = COMPLETE seen */
	char rp_error[MIG_ERROR_BYTES];
	bool rp_fatal;             /* the destination failed or broke the protocol */
	struct mig_rp_msg running;
	atomic_bool got_running;
	/* postcopy: release only what the destination acknowledged */
	struct mig_header header;  /* sent again when resuming */
	uint64_t *released;        /* pages given back to the host */
	struct mig_unacked *unacked; /* runs sent on the main channel, not yet acknowledged */
	size_t unacked_head, unacked_len, unacked_cap;
	uint32_t ping_id;          /* last PING sent in postcopy */
	_Atomic uint32_t ping_acked; /* last PONG received */
	uint64_t since_ping;       /* pages pushed since that PING */
	/* current run being built */
	uint64_t run_first;
	uint32_t run_len;
	bool run_zero;
};

/* Pages sent on the main channel before PING @ping, freed once it is answered. */
struct mig_unacked {
	uint64_t first;
	uint64_t n;
	uint32_t ping;
};

/* migration.c */
int mig_io_timeout_ms(void);
int mig_env_ms(const char *name, int dflt);
const char *mig_mode_name(enum mig_mode mode);
bool mig_status_finished(enum mig_status s);
void mig_emit(struct migration *m, const char *event, struct json_object *data);
bool mig_set_status(struct migration *m, enum mig_status to);
void mig_set_error(struct migration *m, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void mig_replace_error(struct migration *m, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void mig_set_time(struct migration *m, uint64_t *field, uint64_t value);
/*
 * Either side, at a run's end: note the end time, unpublish the stream (no
 * command reaches it any more) and release and close the main channel
 * (@fd < 0: never opened).
 */
void mig_end_main_channel(struct migration *m, struct stream *s, int fd);
void mig_set_downtime(struct migration *m, uint64_t downtime_ns, bool same_clock);
void mig_set_breakdown(struct migration *m, const struct mig_breakdown *bd);
void mig_breakdown_fit(struct mig_breakdown *bd, uint64_t stop_ns, uint64_t end_ns);
void mig_publish_conns(struct migration *m, int conn_fd, int urgent_fd);
void mig_dst_vcpu_nice(struct migration *m, bool on);
/* Destination: m->pagepath_rt changed; the page path's threads take it now.  Any thread. */
void mig_dst_pagepath_policy_changed(struct migration *m);
void mig_enter_paused(struct migration *m, const char *reason);
void mig_leave_paused(struct migration *m);
void mig_finish_failed(struct migration *m);
uint64_t mig_auto_recover_deadline(struct migration *m, bool deliberate);
bool mig_wait_cond_ms(struct migration *m, unsigned ms);

/* source.c */
int mig_rp_pending_error(struct mig_src *src, char *out, size_t len);
int mig_send_state(struct mig_src *src, const struct mig_save_info *info, bool end, char *err,
		   size_t errlen);
int mig_src_connect(struct mig_src *src);
void *mig_source_thread(void *arg);

/* source_ram.c */
bool mig_page_is_zero(const uint8_t *p);
void mig_flush_run(struct mig_src *src);
void mig_add_page(struct mig_src *src, uint64_t page, bool zero);
/*
 * Before the postcopy stop (migration thread): allocate and fault in the
 * bitmaps the switch fills inside the pause; with no pass sent (pure
 * postcopy) every page is pending, so fill them now.  0 or -ENOMEM.
 */
int mig_postcopy_prepare(struct mig_src *src);
/* Zero runs for pages [@first, @first + @n), as few records as fit (memfd holes). */
void mig_add_zero_span(struct mig_src *src, uint64_t first, uint64_t n);
/* Set bits [@first, @first + @n) of @bits, a word at a time where it can. */
void mig_bits_set(uint64_t *bits, uint64_t first, uint64_t n);
int mig_first_pass(struct mig_src *src);
uint64_t mig_popcount(const uint64_t *bits, uint64_t words);
int mig_dirty_pass(struct mig_src *src, bool protect);

/* source_postcopy.c */
void mig_releaser_join(struct mig_src *src);
void mig_unacked_add(struct mig_src *src, uint64_t first, uint64_t n);
int mig_ping_wait(struct mig_src *src, const char *what, char *err, size_t errlen);
int mig_prediscard(struct mig_src *src, char *err, size_t errlen);
int mig_src_open_urgent(struct mig_src *src);
void mig_src_close_side_channels(struct mig_src *src);
int mig_postcopy(struct mig_src *src, bool was_running, uint64_t stop_ns, int *fdp);

/* destination.c */
void *mig_incoming_thread(void *arg);

/* destination_ram.c: preallocation */
void mig_prealloc_join(struct migration *m);
int mig_pc_prepare(struct migration *m);
void *mig_prealloc_thread(void *arg);
/*
 * Destination load threads: page data reached byte @end of guest RAM; in
 * follow mode the preallocation moves on ahead of it.
 */
void mig_prealloc_front(struct migration *m, uint64_t end);
void mig_pc_prepare_waiting(struct migration *m);

/*
 * destination_ram.c: pages whose copy failed its CRC (stream version 2).
 * Precopy (load thread only): such a page is suspect until a good copy
 * arrives - the source sent it while the guest wrote it, so it is dirty
 * and comes again - and one still suspect at the stop fails the migration.
 * Postcopy (load and urgent threads): it is not placed but asked for again
 * (PAGE_RESEND); a second bad copy fails loudly.
 */
struct mig_crc_dst {
	uint64_t *suspect[MIG_MAX_BLOCKS]; /* precopy, load thread: a bitmap per block */
	uint64_t nsuspect;
	uint32_t last_pass;              /* the pass of the last failure, for the error */
	_Atomic uint64_t *retry;         /* postcopy, block 0: ever failed (bitmap) */
	_Atomic uint64_t *waiting;       /* postcopy: asked for again, not here yet */
	_Atomic uint64_t nwaiting;
};
/* Postcopy's bitmaps for a block of @npages.  0 or -ENOMEM. */
int mig_crc_dst_init(struct mig_crc_dst *c, uint64_t npages);
void mig_crc_dst_release(struct mig_crc_dst *c);
/*
 * Precopy: @npages pages at @first of @block (of @block_pages) arrived;
 * bad[i] says page i failed its CRC (@bad NULL: none did) - it becomes
 * suspect, the others stop being.  0 or -ENOMEM.
 */
int mig_crc_precopy_pages(struct migration *m, struct mig_crc_dst *c, uint32_t block,
			  uint64_t block_pages, uint64_t first, uint32_t npages, const uint8_t *bad,
			  char *err, size_t errlen);
/* Precopy: the pages will not be used (discarded for postcopy to fetch). */
void mig_crc_precopy_forget(struct mig_crc_dst *c, uint32_t block, uint64_t first, uint64_t n);
/*
 * At the stop (@when: "the end", "postcopy's start"): 0, or -EBADMSG with
 * the error if any page is still suspect (counted in m->crc_mismatches).
 */
int mig_crc_precopy_verdict(struct migration *m, const struct mig_crc_dst *c,
			    const struct mig_header *h, const char *when, char *err, size_t errlen);
/*
 * Postcopy: page @page's copy failed its CRC: 0 (first time: ask for it
 * again) or -EBADMSG with the error (it failed before).  Any thread.
 */
int mig_crc_retry_mark(struct mig_crc_dst *c, uint64_t page, char *err, size_t errlen);
/* Good copies of [first, first + n) arrived: true when that was the last
 * page asked for again.  Any thread. */
bool mig_crc_retry_done(struct mig_crc_dst *c, uint64_t first, uint64_t n);
/* Postcopy resumed (nothing places pages): every page gets a fresh chance. */
void mig_crc_retry_reset(struct mig_crc_dst *c, uint64_t npages);

/* state.c: the engine's walks over the registered states */
int mig_states_setup(struct mig_save *sv, char *err, size_t errlen);
int mig_states_pending(struct mig_save *sv, bool sync, uint64_t *bytes, char *err, size_t errlen);
int mig_states_iterate(struct mig_save *sv, char *err, size_t errlen);
int mig_states_complete(struct mig_save *sv, const struct mig_save_info *info, char *err,
			size_t errlen);
void mig_states_cleanup(struct migration *m, bool completed);
int mig_states_cpr_lend(struct migration *m, struct cpr_state *cs, char *err, size_t errlen);
/* Destination: every state's cpr_take_fds, then refuse any fd left untaken.  0 or -errno. */
int mig_states_cpr_take(struct migration *m, struct cpr_state *cs, char *err, size_t errlen);
size_t mig_states_section_kinds(struct migration *m, struct mig_section_kind *kinds);
int mig_states_load(struct migration *m, uint32_t id, uint32_t instance, uint32_t version,
		    bool part, const uint8_t *data, uint32_t len, char *err, size_t errlen);
int mig_states_load_complete(struct migration *m, char *err, size_t errlen);
/*
 * Precopy, after the guest started on the destination (state.h,
 * load_settle): 1 some state made data durable (send COMPLETE), 0 none,
 * -errno with @err.  Source: whether any state's destination will (wait
 * for COMPLETE).
 */
int mig_states_load_settle(struct migration *m, char *err, size_t errlen);
bool mig_states_save_settles(struct migration *m);
void mig_states_end(struct migration *m, bool source, bool completed);
void mig_states_query(struct migration *m, struct json_object *reply);
/* postcopy of states' data (state.h's save_push ... load_received) */
int mig_states_push(struct mig_save *sv, uint64_t *left_bytes, char *err, size_t errlen);
int mig_states_request(struct mig_save *sv, const struct mig_rp_msg *msg, char *err,
		       size_t errlen);
unsigned mig_states_bitmaps(struct migration *m);
/* Return-path thread: a STATE_REQ, answered by its state on the urgent channel. */
void mig_states_serve_request(struct mig_src *src, const struct mig_rp_msg *msg);
/* Source, resuming: read and apply every state's STATE_BITMAP.  0 or -errno, @why. */
int mig_states_read_bitmaps(struct mig_src *src, char *why, size_t whylen);
int mig_states_apply_bitmap(struct migration *m, unsigned k, const struct mig_rp_msg *msg,
			    char *err, size_t errlen);
int mig_states_send_bitmaps(struct migration *m, struct stream *s);
uint64_t mig_states_load_pending(struct migration *m);

/* state_vm.c, source_ram.c: the engine's own states */
int mig_register_vm_states(struct migration *m);
int mig_register_ram_state(struct migration *m);

/* cpr.c */
void mig_cpr_source(struct migration *m);

#endif
