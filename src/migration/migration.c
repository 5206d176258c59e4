/*
 * Precopy source engine and incoming side.  See migration.h.
 *
 * Dirty tracking uses KVM's manual-protect dirty log: KVM_GET_DIRTY_LOG
 * only reads the log; a page is write-protected again (its next write
 * logged) by KVM_CLEAR_DIRTY_LOG, which we issue for a window of pages just
 * before sending them.  So a write that lands after the clear is in the
 * next pass, and one that lands before it is sent now:
 *
 *   migration thread        vCPU
 *   ----------------        ----
 *   GET log (page p dirty)
 *                           writes p   (not logged: p still writable)
 *   CLEAR window with p     -> p write-protected
 *   send p                  (sends the newer content)
 *                           writes p   -> logged, sent next pass
 */
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
#include "migration/stream.h"
#include "migration/vmstate.h"
#include "util/log.h"

#define MIG_WINDOW_PAGES 512u          /* pages cleared + sent together (2 MiB) */
#define MIG_CONNECT_TIMEOUT_MS 10000
#define MIG_IO_TIMEOUT_MS 30000
#define MIG_RP_TIMEOUT_MS 30000
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
 * Postcopy: the source asks for an acknowledgement (PING) after this many
 * pages pushed, and gives a page's memory back only once acknowledged, so a
 * page lost in flight when a channel breaks is still here to be re-sent.
 */
#define MIG_ACK_PAGES 1024u
#define MIG_REQ_RING 256u /* requests the background push can be behind by */

struct migration {
	struct vm *vm;
	vm_event_fn *event_fn;
	void *event_opaque;

	pthread_mutex_t lock;     /* protects what follows, unless atomic */
	enum mig_status status;
	struct mig_params params;
	char error[MIG_ERROR_BYTES];
	bool incoming;
	bool closing;             /* the VMM is going: no new migrations */
	bool thread_joinable;
	pthread_t thread;
	char uri[CHANNEL_HOST_BYTES + CHANNEL_PATH_BYTES];
	struct channel_uri curi;
	char cpr_uri[CHANNEL_PATH_BYTES + 8]; /* source, cpr-transfer: "unix:PATH" */
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
	 * anyway, and the normal policy wakes them next to the vCPU or thread
	 * that woke them, which halved the page-request median on the bench
	 * (real-time wakes go to another CPU, costly on these nested hosts).
	 */
	atomic_bool pagepath_rt;

	/* postcopy recovery (docs/migration.md), under lock */
	pthread_cond_t cond;      /* a resume or recover request, or closing */
	int conn_fd;              /* the main connection, for migrate-pause; -1 none */
	int urgent_conn_fd;       /* the urgent connection, likewise */
	bool pause_requested;     /* migrate-pause: the break is deliberate */
	bool resume_requested;    /* source: migrate {"resume": true} given ... */
	struct channel_uri resume_curi; /* ... to this address */
	char resume_uri[CHANNEL_HOST_BYTES + CHANNEL_PATH_BYTES];
	int recover_fd;           /* destination: migrate-recover's listening socket, -1 none */
	struct channel_uri recover_curi;
	char recover_uri[CHANNEL_HOST_BYTES + CHANNEL_PATH_BYTES];
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
	struct postcopy_dst_stats pc_stats; /* destination, kept at the end; under lock */
	bool pc_stats_valid;

	/* destination: background preallocation of guest RAM */
	pthread_t prealloc_thread;
	bool prealloc_joinable;
	atomic_bool prealloc_stop;
	_Atomic uint64_t prealloc_ns, prealloc_bytes;
};

/* ---- status table ---- */

static const char *const mig_status_names[MIG_STATUS__COUNT] = {
	[MIG_STATUS_NONE] = "none", [MIG_STATUS_SETUP] = "setup",
	[MIG_STATUS_ACTIVE] = "active", [MIG_STATUS_DEVICE] = "device",
	[MIG_STATUS_COMPLETED] = "completed", [MIG_STATUS_FAILED] = "failed",
	[MIG_STATUS_CANCELLING] = "cancelling", [MIG_STATUS_CANCELLED] = "cancelled",
	[MIG_STATUS_POSTCOPY_ACTIVE] = "postcopy-active",
	[MIG_STATUS_POSTCOPY_PAUSED] = "postcopy-paused",
};

static const bool mig_status_allowed[MIG_STATUS__COUNT][MIG_STATUS__COUNT] = {
	[MIG_STATUS_NONE] = { [MIG_STATUS_SETUP] = true },
	[MIG_STATUS_SETUP] = {
		[MIG_STATUS_ACTIVE] = true, [MIG_STATUS_FAILED] = true,
		[MIG_STATUS_CANCELLING] = true,
	},
	[MIG_STATUS_ACTIVE] = {
		[MIG_STATUS_DEVICE] = true, [MIG_STATUS_COMPLETED] = true,
		[MIG_STATUS_POSTCOPY_ACTIVE] = true, /* destination side */
		[MIG_STATUS_FAILED] = true, [MIG_STATUS_CANCELLING] = true,
	},
	[MIG_STATUS_DEVICE] = {
		[MIG_STATUS_COMPLETED] = true, [MIG_STATUS_FAILED] = true,
		[MIG_STATUS_CANCELLING] = true, [MIG_STATUS_POSTCOPY_ACTIVE] = true,
	},
	/* once the destination runs there is no cancelling: only the end, or a
	 * pause when a channel breaks (postcopy recovery) */
	[MIG_STATUS_POSTCOPY_ACTIVE] = {
		[MIG_STATUS_COMPLETED] = true, [MIG_STATUS_FAILED] = true,
		[MIG_STATUS_POSTCOPY_PAUSED] = true,
	},
	/* resumed on a new connection; failed only when the VMM goes or the peer
	 * reports an unrecoverable error */
	[MIG_STATUS_POSTCOPY_PAUSED] = {
		[MIG_STATUS_POSTCOPY_ACTIVE] = true, [MIG_STATUS_FAILED] = true,
	},
	[MIG_STATUS_CANCELLING] = {
		[MIG_STATUS_CANCELLED] = true, [MIG_STATUS_FAILED] = true,
		[MIG_STATUS_COMPLETED] = true, /* the destination already ran */
	},
	/* a finished migration may be followed by a new one */
	[MIG_STATUS_COMPLETED] = { [MIG_STATUS_SETUP] = true },
	[MIG_STATUS_FAILED] = { [MIG_STATUS_SETUP] = true },
	[MIG_STATUS_CANCELLED] = { [MIG_STATUS_SETUP] = true },
};

const char *mig_status_name(enum mig_status s)
{
	if ((int)s <= 0 || s >= MIG_STATUS__COUNT)
		return "invalid";
	return mig_status_names[s];
}

bool mig_status_transition_ok(enum mig_status from, enum mig_status to)
{
	if ((int)from <= 0 || from >= MIG_STATUS__COUNT || (int)to <= 0 || to >= MIG_STATUS__COUNT)
		return false;
	return mig_status_allowed[from][to];
}

static const char *mig_mode_name(enum mig_mode mode)
{
	return mode == MIG_MODE_CPR_TRANSFER ? "cpr-transfer" : "normal";
}

static bool mig_status_finished(enum mig_status s)
{
	return s == MIG_STATUS_NONE || s == MIG_STATUS_COMPLETED || s == MIG_STATUS_FAILED ||
	       s == MIG_STATUS_CANCELLED;
}

static void mig_emit(struct migration *m, const char *event, struct json_object *data)
{
	if (m->event_fn)
		m->event_fn(m->event_opaque, event, data);
	json_object_put(data);
}

/* Move to @to if the table allows it; emits MIGRATION.  Returns true if moved. */
static bool mig_set_status(struct migration *m, enum mig_status to)
{
	struct json_object *data;
	bool ok;

	pthread_mutex_lock(&m->lock);
	ok = mig_status_transition_ok(m->status, to);
	if (ok)
		m->status = to;
	pthread_mutex_unlock(&m->lock);
	if (!ok)
		return false;
	/*
	 * The end carries every figure: after a live update the old process
	 * exits at once, and this event is the last thing its clients get.
	 */
	if (to == MIG_STATUS_COMPLETED || to == MIG_STATUS_FAILED) {
		data = migration_query(m);
	} else {
		data = json_object_new_object();
		json_object_object_add(data, "status", json_object_new_string(mig_status_name(to)));
	}
	mig_emit(m, "MIGRATION", data);
	return true;
}

/* Keep the first error of this migration. */
static void mig_set_error(struct migration *m, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void mig_set_error(struct migration *m, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&m->lock);
	if (!m->error[0]) {
		va_start(ap, fmt);
		vsnprintf(m->error, sizeof(m->error), fmt, ap);
		va_end(ap);
		log_error("migration: %s", m->error);
	}
	pthread_mutex_unlock(&m->lock);
}

/* A postcopy pause replaces whatever error an earlier pause left. */
static void mig_replace_error(struct migration *m, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void mig_replace_error(struct migration *m, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&m->lock);
	va_start(ap, fmt);
	vsnprintf(m->error, sizeof(m->error), fmt, ap);
	va_end(ap);
	log_error("migration: %s", m->error);
	pthread_mutex_unlock(&m->lock);
}

/* Record one timing (start, setup, end, expected downtime) for query-migrate. */
static void mig_set_time(struct migration *m, uint64_t *field, uint64_t value)
{
	pthread_mutex_lock(&m->lock);
	*field = value;
	pthread_mutex_unlock(&m->lock);
}

/* Record the measured downtime and which clocks measured it. */
static void mig_set_downtime(struct migration *m, uint64_t downtime_ns, bool same_clock)
{
	pthread_mutex_lock(&m->lock);
	m->downtime_ns = downtime_ns;
	m->downtime_same_clock = same_clock;
	m->downtime_known = true;
	pthread_mutex_unlock(&m->lock);
}

/* Publish the connections migrate-pause may shut down (-1: none). */
static void mig_publish_conns(struct migration *m, int conn_fd, int urgent_fd)
{
	pthread_mutex_lock(&m->lock);
	m->conn_fd = conn_fd;
	m->urgent_conn_fd = urgent_fd;
	pthread_mutex_unlock(&m->lock);
}

/*
 * Postcopy destination: lower the vCPUs' priority by postcopy-vcpu-nice
 * (20, the default: the SCHED_IDLE policy; against nice 19, 1 GiB heavy
 * pure postcopy on loopback, 14 alternating pairs: medians 574 vs 669 ms,
 * 341 vs 1502 requests, a quarter of the vCPU CPU; README, sixth session)
 * while the background stream brings pages (@on), or put it back.  Where
 * vCPUs share cores with the migration threads, a vCPU that spins on the
 * pages it has takes the CPU the stream needs to bring the rest, and every
 * page it then faults on costs a request that needs more CPU than the page
 * in the stream: the whole guest is back at full speed sooner this way.
 * Where they do not share cores, it changes nothing.
 */
static void mig_dst_vcpu_nice(struct migration *m, bool on)
{
	int nice = 0, r;

	if (on) {
		pthread_mutex_lock(&m->lock);
		nice = (int)m->params.postcopy_vcpu_nice;
		pthread_mutex_unlock(&m->lock);
	}
	r = vm_set_vcpu_nice(m->vm, nice);
	atomic_store(&m->pagepath_rt, !(nice > 0 && r == 0));
	if (r == -EPERM)
		log_info("postcopy: vCPU priority left alone: lowering it could not be undone "
			 "without CAP_SYS_NICE or RLIMIT_NICE");
	else if (r)
		log_warn("postcopy: cannot set the vCPUs' priority: %s", strerror(-r));
}

/*
 * Enter postcopy-paused: emits MIGRATION (status) and MIGRATION_PAUSED with
 * the reason, which query-migrate shows as error-desc until resumed.
 */
static void mig_enter_paused(struct migration *m, const char *reason)
{
	struct json_object *data = json_object_new_object();

	mig_replace_error(m, "postcopy paused: %s", reason);
	pthread_mutex_lock(&m->lock);
	m->pause_requested = false;
	pthread_mutex_unlock(&m->lock);
	atomic_fetch_add(&m->postcopy_pauses, 1);
	if (m->incoming) /* no stream to make room for; the guest may run long */
		mig_dst_vcpu_nice(m, false);
	mig_set_status(m, MIG_STATUS_POSTCOPY_PAUSED);
	json_object_object_add(data, "role", json_object_new_string(m->incoming ? "destination"
										   : "source"));
	json_object_object_add(data, "reason", json_object_new_string(reason));
	mig_emit(m, "MIGRATION_PAUSED", data);
}

/* Back to postcopy-active on new connections. */
static void mig_leave_paused(struct migration *m)
{
	pthread_mutex_lock(&m->lock);
	m->error[0] = 0;
	pthread_mutex_unlock(&m->lock);
	if (m->incoming)
		mig_dst_vcpu_nice(m, true);
	mig_set_status(m, MIG_STATUS_POSTCOPY_ACTIVE);
	log_info("migration: postcopy resumed");
}

/* Finish a failed or cancelled run. */
static void mig_finish_failed(struct migration *m)
{
	if (atomic_load(&m->cancel) && mig_set_status(m, MIG_STATUS_CANCELLED))
		return;
	if (!mig_set_status(m, MIG_STATUS_FAILED)) {
		/* cancelling -> failed is allowed too; nothing else remains */
		log_debug("migration: already finished");
	}
}

/* ---- lifecycle ---- */

int migration_create(struct vm *vm, struct migration **out)
{
	struct migration *m = calloc(1, sizeof(*m));

	if (!m)
		return -ENOMEM;
	m->vm = vm;
	m->status = MIG_STATUS_NONE;
	m->params = (struct mig_params){
		.downtime_limit_ms = 300,
		.throttle_initial_pct = 20,
		.throttle_increment_pct = 10,
		.postcopy_preempt = true,
		.postcopy_vcpu_nice = MIG_POSTCOPY_VCPU_NICE_DEFAULT,
		.mode = MIG_MODE_NORMAL,
	};
	m->listen_fd = -1;
	m->conn_fd = m->urgent_conn_fd = m->recover_fd = -1;
	atomic_init(&m->pagepath_rt, true);
	m->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (m->cancel_fd < 0) {
		free(m);
		return -errno;
	}
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->cond, NULL);
	*out = m;
	return 0;
}

void migration_set_event_handler(struct migration *m, vm_event_fn *fn, void *opaque)
{
	m->event_fn = fn;
	m->event_opaque = opaque;
}

static void mig_request_cancel(struct migration *m)
{
	uint64_t one = 1;

	atomic_store(&m->cancel, true);
	pthread_mutex_lock(&m->lock);
	if (m->stream)
		stream_cancel(m->stream);
	pthread_mutex_unlock(&m->lock);
	if (write(m->cancel_fd, &one, sizeof(one)) < 0)
		log_debug("migration: cancel eventfd: %s", strerror(errno));
}

static void mig_prealloc_join(struct migration *m);
static int mig_pc_prepare(struct migration *m);

void migration_shutdown(struct migration *m)
{
	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	m->closing = true;
	pthread_cond_broadcast(&m->cond); /* a paused migration stops waiting */
	pthread_mutex_unlock(&m->lock);
	mig_request_cancel(m);
	if (m->thread_joinable)
		pthread_join(m->thread, NULL);
	m->thread_joinable = false;
	mig_prealloc_join(m);
}

void migration_destroy(struct migration *m)
{
	if (!m)
		return;
	migration_shutdown(m);
	if (m->listen_fd >= 0)
		close(m->listen_fd);
	if (m->curi.kind == CHANNEL_UNIX && m->incoming)
		unlink(m->curi.path);
	if (m->recover_fd >= 0)
		close(m->recover_fd);
	close(m->cancel_fd);
	pthread_cond_destroy(&m->cond);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

enum mig_status migration_get_status(struct migration *m)
{
	enum mig_status s;

	pthread_mutex_lock(&m->lock);
	s = m->status;
	pthread_mutex_unlock(&m->lock);
	return s;
}

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
	struct stream s;
	struct ram_block *block;
	uint64_t npages;
	uint64_t *bitmap;          /* dirty pages of the current pass */
	uint64_t bitmap_words;
	/* postcopy */
	bool postcopy;             /* advised: the switch may come */
	bool release_ram;          /* postcopy phase: free pages once sent */
	bool preempt;              /* requested pages go on the urgent channel */
	uint64_t *sent_once;       /* pages the destination holds a copy of */
	uint64_t *predisc;         /* discarded before the stop (hybrid), or NULL */
	_Atomic uint64_t *pending; /* postcopy: pages still to send, either channel */
	_Atomic uint64_t pending_count;
	/*
	 * Requested pages, in order, for the background push: written by the
	 * return-path thread, read by the push.  Each faulting thread has at
	 * most one request out, so the ring never laps in practice; if it did,
	 * the push would skip to the newest MIG_REQ_RING.
	 */
	_Atomic uint64_t req_ring[MIG_REQ_RING];
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

static void mig_punch(int fd, uint64_t first, uint64_t n)
{
	fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(first * MIG_PAGE_BYTES),
		  (off_t)(n * MIG_PAGE_BYTES));
}

static void *mig_releaser_thread(void *arg)
{
	struct mig_releaser *r = arg;
	struct mig_range *batch = NULL;
	size_t batch_cap = 0;
	struct sched_param idle = { 0 };

	/* Housekeeping: it runs on CPU time the stream and the guest leave. */
	pthread_setschedparam(pthread_self(), SCHED_IDLE, &idle);
	pthread_mutex_lock(&r->lock);
	for (;;) {
		struct mig_range *q;
		size_t n, qcap;
		uint64_t t0, pages = 0;

		while (!r->len && !r->stop)
			pthread_cond_wait(&r->cond, &r->lock);
		if (!r->len)
			break;
		/* Take the whole queue; the migration thread fills the other one. */
		q = r->q, qcap = r->cap, n = r->len;
		r->q = batch, r->cap = batch_cap, r->len = 0;
		batch = q, batch_cap = qcap;
		pthread_mutex_unlock(&r->lock);
		t0 = clock_monotonic_ns();
		if (r->vm) {
			/*
			 * The first punch: take guest RAM out of KVM first, in one go
			 * (punching pages KVM maps costs an invalidation each).  The
			 * guest runs on the destination by now (every queued range was
			 * acknowledged).  Dropping a memslot that maps a whole busy
			 * guest took 18-42 ms here; on the push's thread it stalled the
			 * stream right after the switch.  At normal priority: it holds
			 * the VM's lock.
			 */
			struct sched_param normal = { 0 };

			pthread_setschedparam(pthread_self(), SCHED_OTHER, &normal);
			if (vm_detach_ram(r->vm))
				log_debug("postcopy: guest RAM stays attached to KVM");
			r->vm = NULL;
			r->detach_ns = clock_monotonic_ns() - t0;
			pthread_mutex_lock(&r->lock);
			if (!r->stop) /* else the finishing side wants it at normal priority */
				pthread_setschedparam(pthread_self(), SCHED_IDLE, &idle);
			pthread_mutex_unlock(&r->lock);
		}
		for (size_t i = 0; i < n; i++) {
			mig_punch(r->fd, batch[i].first, batch[i].n);
			pages += batch[i].n;
		}
		pthread_mutex_lock(&r->lock);
		r->ns += clock_monotonic_ns() - t0;
		r->pages += pages;
	}
	r->cpu_ns = clock_thread_cpu_ns();
	pthread_mutex_unlock(&r->lock);
	free(batch);
	return NULL;
}

/* Start the thread; without it, mig_release punches inline. */
static void mig_releaser_start(struct mig_src *src)
{
	struct mig_releaser *r = &src->releaser;

	r->fd = src->block->fd;
	r->vm = src->m->vm;
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
	r->started = pthread_create(&r->thread, NULL, mig_releaser_thread, r) == 0;
	if (!r->started) {
		pthread_mutex_destroy(&r->lock);
		pthread_cond_destroy(&r->cond);
	}
}

/*
 * Queue a range (merged with the last one when they touch).  False: no room,
 * or the releaser holds the lock - at SCHED_IDLE it may sit on it for long
 * on a busy host, and the push must never wait for it: the caller punches.
 */
static bool mig_releaser_queue(struct mig_releaser *r, uint64_t first, uint64_t n)
{
	bool ok = true;

	if (pthread_mutex_trylock(&r->lock))
		return false;
	if (r->len && r->q[r->len - 1].first + r->q[r->len - 1].n == first) {
		r->q[r->len - 1].n += n;
	} else {
		if (r->len == r->cap) {
			size_t cap = r->cap ? r->cap * 2 : 64;
			struct mig_range *q = realloc(r->q, cap * sizeof(*q));

			if (q)
				r->q = q, r->cap = cap;
		}
		if (r->len < r->cap)
			r->q[r->len++] = (struct mig_range){ first, n };
		else
			ok = false;
	}
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
	return ok;
}

/*
 * No more releases: with @all, the whole block goes back (every page is on
 * the destination) instead of what is queued.  The thread finishes in the
 * background; mig_releaser_join waits for it.
 */
static void mig_releaser_finish(struct mig_src *src, bool all)
{
	struct mig_releaser *r = &src->releaser;

	if (!r->started) {
		if (all)
			mig_punch(src->block->fd, 0, src->npages);
		return;
	}
	/*
	 * Back to a normal thread first: someone will wait for it (the lock
	 * below, the join), and at SCHED_IDLE on a busy host that took seconds
	 * (a quit timed out under load).
	 */
	{
		struct sched_param normal = { 0 };

		pthread_setschedparam(r->thread, SCHED_OTHER, &normal);
	}
	pthread_mutex_lock(&r->lock);
	if (all && !r->cap && (r->q = malloc(sizeof(*r->q))) != NULL)
		r->cap = 1;
	if (all && r->cap) {
		r->q[0] = (struct mig_range){ 0, src->npages };
		r->len = 1;
		all = false; /* queued */
	}
	r->stop = true;
	{
		/* Again, now that it cannot go back to idle (after a detach). */
		struct sched_param normal = { 0 };

		pthread_setschedparam(r->thread, SCHED_OTHER, &normal);
	}
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
	if (all)
		mig_punch(src->block->fd, 0, src->npages);
}

static void mig_releaser_join(struct mig_src *src)
{
	struct mig_releaser *r = &src->releaser;

	if (!r->started)
		return;
	mig_releaser_finish(src, false);
	pthread_join(r->thread, NULL);
	log_debug("postcopy: release-ram gave back %" PRIu64 " pages in %.1f ms in its own "
		  "thread (%.1f ms of CPU; taking RAM out of KVM %.1f ms)", r->pages,
		  (double)r->ns / 1e6, (double)r->cpu_ns / 1e6, (double)r->detach_ns / 1e6);
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->cond);
	free(r->q);
	memset(r, 0, sizeof(*r));
}

/*
 * The destination acknowledged these pages: they are given back (by the
 * releaser thread) and never sent again.
 */
static void mig_release(struct mig_src *src, uint64_t first, uint64_t n)
{
	/* Atomic: the return-path thread reads it (mig_rp_serve_request). */
	for (uint64_t p = first; p < first + n; p++)
		__atomic_fetch_or(&src->released[p / 64], 1ull << (p % 64), __ATOMIC_RELAXED);
	if (!src->releaser.started || !mig_releaser_queue(&src->releaser, first, n))
		mig_punch(src->block->fd, first, n);
}

/* Given back already, so acknowledged: the destination holds it.  Any thread. */
static bool mig_released(struct mig_src *src, uint64_t p)
{
	return src->released &&
	       (__atomic_load_n(&src->released[p / 64], __ATOMIC_RELAXED) & (1ull << (p % 64)));
}

/* Remember a run sent on the main channel until the destination acknowledges it. */
static void mig_unacked_add(struct mig_src *src, uint64_t first, uint64_t n)
{
	if (src->unacked_len == src->unacked_cap && src->unacked_head) {
		/* reuse the acknowledged front first */
		memmove(src->unacked, src->unacked + src->unacked_head,
			(src->unacked_len - src->unacked_head) * sizeof(*src->unacked));
		src->unacked_len -= src->unacked_head;
		src->unacked_head = 0;
	}
	if (src->unacked_len == src->unacked_cap) {
		size_t cap = src->unacked_cap ? src->unacked_cap * 2 : 256;
		struct mig_unacked *u = realloc(src->unacked, cap * sizeof(*u));

		if (!u)
			return; /* never released then: costs memory, never data */
		src->unacked = u;
		src->unacked_cap = cap;
	}
	src->unacked[src->unacked_len++] =
		(struct mig_unacked){ .first = first, .n = n, .ping = src->ping_id + 1 };
}

/* Give back the runs every PING up to the last PONG covered. */
static void mig_release_acked(struct mig_src *src)
{
	/*
	 * An acknowledgement means the destination runs the guest (it sends
	 * RUNNING first): from now on pages only leave this host.
	 */
	if (!src->ram_detached && !src->releaser.started && atomic_load(&src->got_running)) {
		src->ram_detached = true;
		if (vm_detach_ram(src->m->vm))
			log_debug("postcopy: guest RAM stays attached to KVM");
	}
	uint32_t acked = atomic_load(&src->ping_acked);

	while (src->unacked_head < src->unacked_len &&
	       src->unacked[src->unacked_head].ping <= acked) {
		mig_release(src, src->unacked[src->unacked_head].first,
			    src->unacked[src->unacked_head].n);
		src->unacked_head++;
	}
	if (src->unacked_head == src->unacked_len)
		src->unacked_head = src->unacked_len = 0;
}

static bool mig_page_is_zero(const uint8_t *p)
{
	const uint64_t *q = (const uint64_t *)p;

	for (size_t i = 0; i < MIG_PAGE_BYTES / 8; i += 4)
		if (q[i] | q[i + 1] | q[i + 2] | q[i + 3])
			return false;
	return true;
}

static void mig_flush_run(struct mig_src *src)
{
	struct migration *m = src->m;

	if (!src->run_len)
		return;
	stream_put_u8(&src->s, MIG_REC_RAM);
	stream_put_u8(&src->s, 0);
	stream_put_u8(&src->s, src->run_zero ? MIG_RAM_FLAG_ZERO : 0);
	stream_put_u16(&src->s, 0);
	stream_put_u32(&src->s, src->run_len);
	stream_put_u64(&src->s, src->run_first);
	if (src->run_zero) {
		atomic_fetch_add(&m->zero_pages, src->run_len);
	} else {
		stream_put_file(&src->s, src->block->fd, src->run_first * MIG_PAGE_BYTES,
				src->block->host + src->run_first * MIG_PAGE_BYTES,
				(size_t)src->run_len * MIG_PAGE_BYTES);
		atomic_fetch_add(&m->normal_pages, src->run_len);
	}
	if (src->release_ram && !stream_error(&src->s)) {
		/*
		 * Postcopy: the source's vCPUs never run again, so the memory can
		 * go back to the host - but only once the destination confirms it
		 * placed the pages (PONG to the next PING): a page sent into a
		 * connection that then breaks is lost in flight and must be sent
		 * again after recovery.  A PONG also implies RUNNING came first, so
		 * a destination that fails before running leaves the guest intact.
		 */
		mig_unacked_add(src, src->run_first, src->run_len);
		src->since_ping += src->run_len;
	}
	atomic_store(&m->transferred, src->earlier_bytes + src->s.bytes + src->s.wlen);
	src->run_len = 0;
}

static void mig_add_page(struct mig_src *src, uint64_t page, bool zero)
{
	if (src->sent_once)
		src->sent_once[page / 64] |= 1ull << (page % 64);
	if (src->run_len && (src->run_zero != zero || src->run_first + src->run_len != page ||
			     (!zero && src->run_len >= MIG_RUN_MAX_PAGES) ||
			     src->run_len == UINT32_MAX))
		mig_flush_run(src);
	if (!src->run_len) {
		src->run_first = page;
		src->run_zero = zero;
	}
	src->run_len++;
}

/* Send the pages of [first, first+n) set in @bits (NULL: all). */
static void mig_send_pages(struct mig_src *src, uint64_t first, uint64_t n, const uint64_t *bits)
{
	for (uint64_t p = first; p < first + n; p++) {
		if (bits && !(bits[(p - first) / 64] & (1ull << ((p - first) % 64)))) {
			mig_flush_run(src);
			continue;
		}
		mig_add_page(src, p, mig_page_is_zero(src->block->host + p * MIG_PAGE_BYTES));
	}
	mig_flush_run(src);
}

static const uint64_t mig_all_ones[MIG_WINDOW_PAGES / 64] = {
	~0ull, ~0ull, ~0ull, ~0ull, ~0ull, ~0ull, ~0ull, ~0ull,
};

/* Pass 1: every page.  Holes of the memfd are zero here and there: skipped. */
static int mig_first_pass(struct mig_src *src)
{
	struct migration *m = src->m;
	int fd = src->block->fd;

	for (uint64_t w = 0; w < src->npages; w += MIG_WINDOW_PAGES) {
		uint64_t n = src->npages - w < MIG_WINDOW_PAGES ? src->npages - w : MIG_WINDOW_PAGES;
		off_t data;
		int err;

		if (atomic_load(&m->cancel))
			return -ECANCELED;
		err = vm_dirty_log_clear(m->vm, 0, w, (uint32_t)n, mig_all_ones);
		if (err)
			return err;
		data = lseek(fd, (off_t)(w * MIG_PAGE_BYTES), SEEK_DATA);
		if (data < 0 || (uint64_t)data >= (w + n) * MIG_PAGE_BYTES) {
			/*
			 * A hole: zero on both sides (the destination's RAM is new).
			 * With postcopy the destination must know these pages are
			 * here, so a zero run (a few bytes) says so.
			 */
			if (src->postcopy) {
				for (uint64_t p = w; p < w + n; p++)
					mig_add_page(src, p, true);
				mig_flush_run(src);
			} else {
				atomic_fetch_add(&m->zero_pages, n);
			}
		} else {
			mig_send_pages(src, w, n, NULL);
		}
		atomic_store(&m->remaining_bytes, (src->npages - w - n) * MIG_PAGE_BYTES);
		if (stream_error(&src->s))
			return stream_error(&src->s);
	}
	return 0;
}

static uint64_t mig_popcount(const uint64_t *bits, uint64_t words)
{
	uint64_t n = 0;

	for (uint64_t i = 0; i < words; i++)
		n += (uint64_t)__builtin_popcountll(bits[i]);
	return n;
}

/* A later pass: the pages in src->bitmap.  @protect: re-arm logging first. */
static int mig_dirty_pass(struct mig_src *src, bool protect)
{
	struct migration *m = src->m;
	const uint64_t wwords = MIG_WINDOW_PAGES / 64;

	for (uint64_t w = 0; w < src->npages; w += MIG_WINDOW_PAGES) {
		uint64_t n = src->npages - w < MIG_WINDOW_PAGES ? src->npages - w : MIG_WINDOW_PAGES;
		const uint64_t *bits = &src->bitmap[w / 64];
		bool any = false;

		for (uint64_t i = 0; i < wwords && w / 64 + i < src->bitmap_words; i++)
			any |= bits[i] != 0;
		if (!any)
			continue;
		if (atomic_load(&m->cancel))
			return -ECANCELED;
		if (protect) {
			int err = vm_dirty_log_clear(m->vm, 0, w, (uint32_t)n, bits);

			if (err)
				return err;
		}
		mig_send_pages(src, w, n, bits);
		if (stream_error(&src->s))
			return stream_error(&src->s);
	}
	return 0;
}

/*
 * The VM section's format version.  VMFERRY_EMIT_VM_SECTION_VERSION makes
 * this build write an older one, as an older build would: the
 * compatibility tests migrate from "an older build" that way.
 */
static uint32_t mig_vm_section_version(void)
{
	const char *e = getenv("VMFERRY_EMIT_VM_SECTION_VERSION");
	unsigned long v = e ? strtoul(e, NULL, 10) : 0;

	return v >= VMSTATE_VM_VERSION_MIN && v <= VMSTATE_VM_VERSION ? (uint32_t)v
								     : VMSTATE_VM_VERSION;
}

static int mig_send_sections(struct mig_src *src, bool was_running, uint64_t stop_ns, bool end)
{
	struct migration *m = src->m;
	struct vmstate_buf b = { 0 };
	int err;

	uint32_t vm_version = mig_vm_section_version();

	vmstate_vm_save(m->vm, was_running, stop_ns, vm_moves_get(m->vm), vm_version, &b);
	if (b.err)
		return b.err;
	stream_put_u8(&src->s, MIG_REC_SECTION);
	stream_put_u32(&src->s, VMSTATE_SECTION_VM);
	stream_put_u32(&src->s, 0);
	stream_put_u32(&src->s, vm_version);
	stream_put_u32(&src->s, (uint32_t)b.len);
	stream_put_bytes(&src->s, b.data, b.len);
	for (unsigned i = 0; i < vm_nvcpus(m->vm); i++) {
		b.len = 0;
		err = vmstate_cpu_save(m->vm, i, &b);
		if (err) {
			vmstate_buf_free(&b);
			return err;
		}
		stream_put_u8(&src->s, MIG_REC_SECTION);
		stream_put_u32(&src->s, VMSTATE_SECTION_CPU);
		stream_put_u32(&src->s, i);
		stream_put_u32(&src->s, VMSTATE_CPU_VERSION);
		stream_put_u32(&src->s, (uint32_t)b.len);
		stream_put_bytes(&src->s, b.data, b.len);
	}
	vmstate_buf_free(&b);
	if (end)
		stream_put_u8(&src->s, MIG_REC_END);
	return stream_flush(&src->s);
}

static void mig_emit_pass(struct migration *m, uint64_t pass)
{
	struct json_object *d = json_object_new_object();

	json_object_object_add(d, "pass", json_object_new_uint64(pass));
	mig_emit(m, "MIGRATION_PASS", d);
}

/*
 * Converged?  Updates the expected downtime.  @bw: bytes per second.
 */
static bool mig_converged(struct migration *m, uint64_t dirty_pages, double bw,
			  struct mig_params *p)
{
	double remaining = (double)dirty_pages * MIG_PAGE_BYTES;
	double expect_ms = bw > 0 ? remaining * 1000.0 / bw : 1e9;

	mig_set_time(m, &m->expected_downtime_ms, (uint64_t)expect_ms);
	atomic_store(&m->remaining_bytes, (uint64_t)remaining);
	return expect_ms <= (double)p->downtime_limit_ms;
}

/*
 * After a failed send: did the destination say why on the return path?
 * (It reports a refused header or a bad record, then closes.)  0 and the
 * text in @out when it did.
 */
static int mig_rp_pending_error(struct mig_src *src, char *out, size_t len)
{
	struct stream rs;
	struct mig_rp_msg msg;
	char err[128];
	int r;

	if (stream_init(&rs, src->s.fd, 200))
		return -ENOMEM;
	r = mig_rp_read(&rs, &msg, err, sizeof(err));
	stream_release(&rs);
	if (r || msg.type != MIG_RP_ERROR)
		return -ENOENT;
	snprintf(out, len, "%.*s", (int)(len - 1), msg.text);
	return 0;
}

/*
 * Wait (bounded) until the socket's send queue - bytes not yet acknowledged
 * by the peer - is nearly empty.  Megabytes can sit in socket buffers and a
 * shaped link's queue; whatever is there when the vCPUs stop is pause.
 */
static void mig_wait_drained(struct mig_src *src)
{
	const int low_bytes = 64 * 1024;
	uint64_t deadline = clock_monotonic_ns() + MIG_DRAIN_MAX_MS * 1000000ull;

	if (stream_flush(&src->s))
		return;
	while (clock_monotonic_ns() < deadline && !atomic_load(&src->m->cancel)) {
		int queued = 0;
		struct timespec tick = { 0, 200 * 1000 };

		if (ioctl(src->s.fd, SIOCOUTQ, &queued) < 0 || queued <= low_bytes)
			return;
		nanosleep(&tick, NULL);
	}
}

/* ---- source: postcopy ---- */

static int mig_rp_pending_error(struct mig_src *src, char *out, size_t len);

static bool mig_pending_take(struct mig_src *src, uint64_t p)
{
	uint64_t bit = 1ull << (p % 64);

	if (!(atomic_fetch_and(&src->pending[p / 64], ~bit) & bit))
		return false;
	atomic_fetch_sub(&src->pending_count, 1);
	return true;
}

/* Return-path thread: answers page requests on the urgent channel at once. */
static void mig_rp_serve_request(struct mig_src *src, const struct mig_rp_msg *msg)
{
	uint64_t end = msg->first_page + msg->npages;

	atomic_fetch_add(&src->m->postcopy_requests, 1);
	if (msg->block != 0 || msg->first_page >= src->npages || end > src->npages) {
		snprintf(src->rp_error, sizeof(src->rp_error),
			 "destination asked for pages %" PRIu64 "+%u outside block %u",
			 msg->first_page, msg->npages, msg->block);
		src->rp_result = -EBADMSG;
		return;
	}
	{
		uint64_t seq = atomic_load_explicit(&src->req_seq, memory_order_relaxed);

		atomic_store_explicit(&src->req_ring[seq % MIG_REQ_RING], msg->first_page,
				      memory_order_relaxed);
		atomic_store_explicit(&src->req_seq, seq + 1, memory_order_release);
	}
	if (!src->preempt)
		return; /* the background stream jumps there (behind what it queued) */
	for (uint64_t p = msg->first_page; p < end; p++) {
		const uint8_t *page = src->block->host + p * MIG_PAGE_BYTES;
		bool zero;

		/*
		 * Taken by the push already.  Acknowledged (released): the
		 * destination holds it and the request crossed its arrival.
		 * Otherwise it may sit behind megabytes queued on the main
		 * channel: a copy here overtakes it, and the destination keeps
		 * whichever lands first (it never places a page twice).  The
		 * guest is stopped here, so both copies are the same.
		 */
		if (mig_pending_take(src, p))
			atomic_fetch_add(&src->m->pages_requested, 1);
		else if (mig_released(src, p))
			continue;
		else
			atomic_fetch_add(&src->m->pages_resent, 1);
		zero = mig_page_is_zero(page);
		stream_put_u8(&src->urgent, MIG_REC_RAM);
		stream_put_u8(&src->urgent, 0);
		stream_put_u8(&src->urgent, zero ? MIG_RAM_FLAG_ZERO : 0);
		stream_put_u16(&src->urgent, 0);
		stream_put_u32(&src->urgent, 1);
		stream_put_u64(&src->urgent, p);
		if (!zero)
			stream_put_bytes(&src->urgent, page, MIG_PAGE_BYTES);
		if (!zero)
			atomic_fetch_add(&src->m->normal_pages, 1);
		else
			atomic_fetch_add(&src->m->zero_pages, 1);
	}
	stream_flush(&src->urgent);
}

/*
 * Which input the return-path thread reads next: the urgent channel when a
 * page request is there (buffered or in the socket), else the return path
 * when it has bytes, else whichever becomes readable first.  A cancel of
 * the return path wakes the wait, and its read then fails.
 */
static struct stream *mig_rp_next_input(struct mig_src *src, uint64_t urgent_down_ns)
{
	struct pollfd pfd[3] = {
		{ .fd = src->urgent_fd, .events = POLLIN },
		{ .fd = src->rp.fd, .events = POLLIN },
		{ .fd = src->rp.cancel_fd, .events = POLLIN },
	};

	if (urgent_down_ns) {
		/* Only the return path, for what is left of the grace. */
		uint64_t end = urgent_down_ns + MIG_URGENT_CLOSE_MS * 1000000ull, now;

		while (!stream_buffered(&src->rp) && (now = clock_monotonic_ns()) < end) {
			int n = poll(pfd + 1, 2, (int)((end - now + 999999) / 1000000));

			if (n > 0)
				return &src->rp;
			if (n < 0 && errno != EINTR)
				return &src->rp;
		}
		return stream_buffered(&src->rp) ? &src->rp : NULL;
	}
	if (src->urgent_fd < 0 || stream_error(&src->urgent))
		return &src->rp;
	if (stream_buffered(&src->urgent))
		return &src->urgent;
	if (stream_buffered(&src->rp))
		return &src->rp;
	for (;;) {
		if (poll(pfd, 3, -1) < 0 && errno != EINTR)
			return &src->rp;
		if (pfd[0].revents)
			return &src->urgent; /* a request, or its read tells what broke */
		if (pfd[1].revents || pfd[2].revents)
			return &src->rp;
	}
}

static void *mig_rp_thread(void *arg)
{
	struct mig_src *src = arg;
	struct mig_rp_msg msg;
	char err[256], urgent_err[256] = "";
	uint64_t urgent_down_ns = 0;
	int urgent_r = 0;

	/* A faulting vCPU waits for this thread: it must not queue behind the
	 * background push for a CPU. */
	pthread_setname_np(pthread_self(), "pc-return");
	thread_make_latency_critical();
	for (;;) {
		struct stream *from = mig_rp_next_input(src, urgent_down_ns);
		int r;

		if (!from) {
			/* The urgent channel closed and no COMPLETE followed. */
			snprintf(src->rp_error, sizeof(src->rp_error), "urgent channel: %s", urgent_err);
			src->rp_result = urgent_r;
			break;
		}
		r = mig_rp_read(from, &msg, err, sizeof(err));
		if (from == &src->urgent) {
			/* Page requests only, sent back on the urgent channel. */
			if (!r && msg.type != MIG_RP_PAGE_REQ) {
				mig_rp_msg_release(&msg);
				snprintf(err, sizeof(err), "message type %u (only page requests "
					 "come back on it)", msg.type);
				r = -EBADMSG;
			}
			if (r && r != -EBADMSG && !urgent_down_ns) {
				/*
				 * Closed or broken.  A destination that completed closes
				 * it too, and its COMPLETE on the return path may still
				 * be on the way: read that alone for a while.
				 */
				urgent_down_ns = clock_monotonic_ns();
				urgent_r = r;
				snprintf(urgent_err, sizeof(urgent_err), "%s", err);
				continue;
			}
			if (r) {
				snprintf(src->rp_error, sizeof(src->rp_error), "urgent channel: %s", err);
				src->rp_result = r;
				src->rp_fatal = r == -EBADMSG;
				break;
			}
			mig_rp_serve_request(src, &msg);
			if (src->rp_result) {
				src->rp_fatal = true;
				break;
			}
			continue;
		}
		if (r) {
			snprintf(src->rp_error, sizeof(src->rp_error), "return path: %s", err);
			src->rp_result = r;
			src->rp_fatal = r == -EBADMSG; /* malformed, not merely broken */
			break;
		}
		if (msg.type == MIG_RP_PONG) {
			atomic_store(&src->ping_acked, msg.id);
		} else if (msg.type == MIG_RP_RUNNING) {
			src->running = msg;
			atomic_store(&src->got_running, true);
		} else if (msg.type == MIG_RP_PAGE_REQ) {
			mig_rp_serve_request(src, &msg);
			if (src->rp_result) {
				src->rp_fatal = true;
				break;
			}
		} else if (msg.type == MIG_RP_COMPLETE) {
			src->rp_result = 0;
			break;
		} else if (msg.type == MIG_RP_ERROR) {
			snprintf(src->rp_error, sizeof(src->rp_error), "destination failed: %.400s", msg.text);
			src->rp_result = msg.err ? msg.err : -EIO;
			src->rp_fatal = true;
			break;
		} else {
			mig_rp_msg_release(&msg);
			snprintf(src->rp_error, sizeof(src->rp_error),
				 "return path: unexpected message type %u during postcopy", msg.type);
			src->rp_result = -EPROTO;
			src->rp_fatal = true;
			break;
		}
		if (stream_error(&src->urgent) && !urgent_down_ns) {
			snprintf(src->rp_error, sizeof(src->rp_error), "urgent channel: %s",
				 src->urgent.errmsg);
			src->rp_result = stream_error(&src->urgent);
			break;
		}
	}
	if (!src->rp_result) {
		stream_put_u8(&src->urgent, MIG_REC_END);
		stream_flush(&src->urgent);
	}
	/* Whatever happened, the background sender must not wait for us. */
	stream_cancel(&src->s);
	log_debug("postcopy: the return-path thread used %.1f ms of CPU", clock_thread_cpu_ns() / 1e6);
	return NULL;
}

/*
 * Background push after the switch: pages the destination has not got, in an
 * order that follows its faults (CRIU's lazy-pages idea): after a request,
 * start right behind the faulting page with a small chunk and double it while
 * no new request comes.  A chunk only says when to look for a new fault:
 * contiguous chunks go out as one RAM record (up to MIG_RUN_MAX_PAGES), a
 * jump ends the record.  Sending each chunk as its own record (16 pages
 * after every request, thousands of requests) cost the 1 GiB heavy pure
 * postcopy ~15% of its total on the bench (median of 6 interleaved: 777 vs
 * 660 ms) at the same page-request latency.
 */
static int mig_postcopy_push(struct mig_src *src)
{
	uint64_t cursor = 0, chunk = 16;
	uint64_t seen = atomic_load_explicit(&src->req_seq, memory_order_acquire);

	while (atomic_load(&src->pending_count) > 0) {
		uint64_t seq = atomic_load_explicit(&src->req_seq, memory_order_acquire), end;

		atomic_store(&src->m->remaining_bytes, atomic_load(&src->pending_count) * MIG_PAGE_BYTES);

		/*
		 * Every request since the last look: its page first, if the urgent
		 * channel did not take it (without postcopy-preempt this is how a
		 * request is answered), then carry on right behind the latest.
		 */
		if (seq - seen > MIG_REQ_RING)
			seen = seq - MIG_REQ_RING;
		if (seen != seq) {
			for (; seen != seq; seen++) {
				uint64_t p = atomic_load_explicit(&src->req_ring[seen % MIG_REQ_RING],
								  memory_order_relaxed);

				if (p < src->npages && mig_pending_take(src, p)) {
					mig_add_page(src, p, mig_page_is_zero(src->block->host + p * MIG_PAGE_BYTES));
					atomic_fetch_add(&src->m->pages_pushed, 1);
				}
				cursor = p + 1 < src->npages ? p + 1 : 0;
			}
			chunk = 16;
		} else if (chunk < MIG_RUN_MAX_PAGES) {
			chunk *= 2;
		}
		end = cursor + chunk < src->npages ? cursor + chunk : src->npages;
		for (uint64_t p = cursor; p < end; p++) {
			if (!mig_pending_take(src, p)) {
				mig_flush_run(src);
				continue;
			}
			mig_add_page(src, p, mig_page_is_zero(src->block->host + p * MIG_PAGE_BYTES));
			atomic_fetch_add(&src->m->pages_pushed, 1);
		}
		if (src->since_ping >= MIG_ACK_PAGES) {
			stream_put_u8(&src->s, MIG_REC_PING);
			stream_put_u32(&src->s, ++src->ping_id);
			src->since_ping = 0;
		}
		mig_release_acked(src);
		if (stream_error(&src->s)) {
			src->run_len = 0; /* pending again once a resume reads the bitmap */
			return stream_error(&src->s);
		}
		cursor = end == src->npages ? 0 : end;
	}
	atomic_store(&src->m->remaining_bytes, 0);
	mig_flush_run(src);
	stream_put_u8(&src->s, MIG_REC_END);
	return stream_flush(&src->s);
}

static void mig_send_discards(struct mig_src *src, const uint64_t *discard)
{
	uint64_t runs_first[256];
	uint32_t runs_n[256];
	uint32_t nruns = 0;

	for (uint64_t p = 0; p <= src->npages; p++) {
		bool bit = p < src->npages && (discard[p / 64] & (1ull << (p % 64)));

		if (bit && nruns && runs_first[nruns - 1] + runs_n[nruns - 1] == p) {
			runs_n[nruns - 1]++;
			continue;
		}
		if ((bit && nruns == 256) || (p == src->npages && nruns)) {
			stream_put_u8(&src->s, MIG_REC_POSTCOPY_DISCARD);
			stream_put_u8(&src->s, 0);
			stream_put_u32(&src->s, nruns);
			for (uint32_t i = 0; i < nruns; i++) {
				stream_put_u64(&src->s, runs_first[i]);
				stream_put_u32(&src->s, runs_n[i]);
			}
			nruns = 0;
		}
		if (bit) {
			runs_first[nruns] = p;
			runs_n[nruns++] = 1;
		}
	}
}

/*
 * Hybrid switch, guest still running: send discards for every page dirtied
 * since it was sent, then PING and wait for the PONG that says the
 * destination has dropped them.  0, or -errno with a reason in @err.
 */
/*
 * Before the stop: PING (id 1) and wait for its PONG, so that whatever the
 * destination does with the records before it (@what) stays out of the
 * pause.  0 or -errno with @err.
 */
static int mig_ping_wait(struct mig_src *src, const char *what, char *err, size_t errlen)
{
	struct mig_rp_msg msg;
	char why[256];
	int r;

	stream_put_u8(&src->s, MIG_REC_PING);
	stream_put_u32(&src->s, 1);
	if (stream_flush(&src->s)) {
		/* A destination that refuses (postcopy-ram off there) said why, then
		 * closed: its reason, not our broken pipe. */
		if (!mig_rp_pending_error(src, why, sizeof(why)))
			snprintf(err, errlen, "destination refused the migration: %s", why);
		else
			snprintf(err, errlen, "sending %s failed: %s", what, src->s.errmsg);
		return stream_error(&src->s);
	}
	r = mig_rp_read(&src->s, &msg, why, sizeof(why));
	if (!r && msg.type == MIG_RP_PONG && msg.id == 1)
		return 0;
	snprintf(err, errlen, "destination did not confirm %s: %.300s", what,
		 r ? why : msg.type == MIG_RP_ERROR ? msg.text : "unexpected return-path message");
	return r ? r : -EPROTO;
}

static int mig_prediscard(struct mig_src *src, char *err, size_t errlen)
{
	int r;

	src->predisc = calloc(src->bitmap_words, sizeof(uint64_t));
	if (!src->predisc) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	r = vm_dirty_log_get(src->m->vm, 0, src->predisc);
	if (r) {
		snprintf(err, errlen, "reading the dirty log failed: %s", strerror(-r));
		return r;
	}
	for (uint64_t w = 0; w < src->bitmap_words; w++)
		src->predisc[w] &= src->sent_once[w];
	mig_send_discards(src, src->predisc);
	return mig_ping_wait(src, "the discards", err, errlen);
}

/* Open the urgent channel to m->curi and start it with its magic.  0 or -errno. */
static int mig_src_open_urgent(struct mig_src *src)
{
	src->urgent_fd = channel_connect(&src->m->curi, MIG_CONNECT_TIMEOUT_MS);
	if (src->urgent_fd < 0 || stream_init(&src->urgent, src->urgent_fd, MIG_IO_TIMEOUT_MS)) {
		if (src->urgent_fd >= 0)
			close(src->urgent_fd);
		src->urgent_fd = -1;
		return -ECONNREFUSED;
	}
	channel_mark_urgent(src->urgent_fd);
	stream_put_u64(&src->urgent, MIG_URGENT_MAGIC_REQ);
	return stream_flush(&src->urgent);
}

/* The return path reads a dup of the main connection @fd.  0 or -errno. */
static int mig_src_open_rp(struct mig_src *src, int fd)
{
	src->rp_fd = dup(fd);
	if (src->rp_fd < 0)
		return -errno;
	if (stream_init(&src->rp, src->rp_fd, -1)) {
		close(src->rp_fd);
		src->rp_fd = -1;
		return -ENOMEM;
	}
	src->rp_result = 0;
	src->rp_fatal = false;
	src->rp_error[0] = 0;
	return 0;
}

static void mig_src_close_side_channels(struct mig_src *src)
{
	if (src->rp_fd >= 0) {
		stream_release(&src->rp);
		close(src->rp_fd);
		src->rp_fd = -1;
	}
	if (src->urgent_fd >= 0) {
		src->urgent_bytes += src->urgent.bytes;
		stream_release(&src->urgent);
		close(src->urgent_fd);
		src->urgent_fd = -1;
	}
}

/*
 * Serve the destination on the current connections until it holds every
 * page: push the rest, then wait (bounded) for COMPLETE.  Joins the
 * return-path thread.  0 when complete; otherwise the error, with
 * src->rp_fatal set when the destination failed or broke the protocol.
 */
static int mig_postcopy_serve(struct mig_src *src, pthread_t rp_thread)
{
	struct timespec until;
	int err = mig_postcopy_push(src);

	if (err) {
		stream_cancel(&src->rp);
		pthread_join(rp_thread, NULL);
		return src->rp_fatal ? src->rp_result : err;
	}
	/* The destination answers COMPLETE once it holds every page. */
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += MIG_RP_TIMEOUT_MS / 1000;
	if (pthread_timedjoin_np(rp_thread, NULL, &until)) {
		stream_cancel(&src->rp);
		pthread_join(rp_thread, NULL);
		if (!src->rp_error[0])
			snprintf(src->rp_error, sizeof(src->rp_error),
				 "the destination did not confirm it has every page");
		if (!src->rp_result)
			src->rp_result = -ETIMEDOUT;
	}
	return src->rp_result;
}

/*
 * The destination's RECEIVED bitmap, on a resumed connection: every page it
 * lacks is pending again (lost in flight, or never sent); what it holds may
 * go back to the host.  A page the destination lacks that was given back
 * here would be lost for good: that is refused (it cannot happen unless the
 * destination is another one).  0 or -EPROTO with @why.
 */
static int mig_src_apply_received(struct mig_src *src, const struct mig_rp_msg *msg, char *why,
				  size_t whylen)
{
	uint64_t count = 0, run = 0;

	if (msg->type != MIG_RP_RECV_BITMAP || msg->block != 0 || msg->bitmap_pages != src->npages) {
		snprintf(why, whylen, "expected the received bitmap of block 0 (%" PRIu64 " pages), "
			 "got message type %u (block %u, %" PRIu64 " pages)", src->npages, msg->type,
			 msg->block, msg->bitmap_pages);
		return -EPROTO;
	}
	for (uint64_t p = 0; p < src->npages; p++) {
		bool have = msg->bitmap[p / 8] & (1u << (p % 8));
		bool gone = src->released[p / 64] & (1ull << (p % 64));

		if (!have && gone) {
			snprintf(why, whylen, "the destination lacks page %" PRIu64 ", which it had "
				 "acknowledged (another destination?)", p);
			return -EPROTO;
		}
	}
	for (uint64_t w = 0; w < src->bitmap_words; w++)
		atomic_store(&src->pending[w], 0);
	for (uint64_t p = 0; p <= src->npages; p++) {
		bool have = p < src->npages && (msg->bitmap[p / 8] & (1u << (p % 8)));
		bool fresh = have && !(src->released[p / 64] & (1ull << (p % 64)));

		if (p < src->npages && !have) {
			atomic_fetch_or(&src->pending[p / 64], 1ull << (p % 64));
			count++;
		}
		/* Held there and not yet released here: release in runs. */
		if (fresh) {
			run++;
		} else if (run) {
			mig_release(src, p - run, run);
			run = 0;
		}
	}
	atomic_store(&src->pending_count, count);
	src->unacked_head = src->unacked_len = 0; /* the bitmap settled all of them */
	src->run_len = 0; /* a run taken and never sent is pending again */
	src->since_ping = 0;
	log_info("postcopy: the destination holds %" PRIu64 " of %" PRIu64 " pages; %" PRIu64
		 " to send", src->npages - count, src->npages, count);
	return 0;
}

/*
 * Resume a paused postcopy on m->curi: connect, send the header and RESUME,
 * read the destination's RECEIVED bitmap, open the urgent channel and the
 * return path.  On success *fdp is the new main connection and the
 * return-path thread runs.  0 or -errno with @why.
 */
static int mig_src_resume(struct mig_src *src, int *fdp, pthread_t *rp_thread, char *why,
			  size_t whylen)
{
	struct migration *m = src->m;
	struct mig_rp_msg msg = { 0 };
	char err[256];
	int fd, r;

	fd = channel_connect(&m->curi, MIG_CONNECT_TIMEOUT_MS);
	if (fd < 0) {
		snprintf(why, whylen, "cannot connect to %s: %s", m->uri, strerror(-fd));
		return fd;
	}
	r = stream_init(&src->s, fd, MIG_IO_TIMEOUT_MS);
	if (r) {
		close(fd);
		snprintf(why, whylen, "stream setup: %s", strerror(-r));
		return r;
	}
	pthread_mutex_lock(&m->lock);
	src->s.max_bytes_per_s = m->params.max_bandwidth;
	m->stream = &src->s;
	pthread_mutex_unlock(&m->lock);
	*fdp = fd;
	mig_publish_conns(m, fd, -1);
	mig_save_header(&src->s, &src->header);
	stream_put_u8(&src->s, MIG_REC_POSTCOPY_RESUME);
	if (stream_flush(&src->s)) {
		snprintf(why, whylen, "sending resume: %s", src->s.errmsg);
		return stream_error(&src->s);
	}
	r = mig_rp_read(&src->s, &msg, err, sizeof(err));
	if (r) {
		snprintf(why, whylen, "no received bitmap from the destination: %s", err);
		return r;
	}
	if (msg.type == MIG_RP_ERROR) {
		snprintf(why, whylen, "the destination refused to resume: %.400s", msg.text);
		return -EPROTO;
	}
	r = mig_src_apply_received(src, &msg, why, whylen);
	mig_rp_msg_release(&msg);
	if (r)
		return r;
	r = mig_src_open_urgent(src);
	if (r) {
		snprintf(why, whylen, "cannot open the urgent channel to %s", m->uri);
		return r;
	}
	r = mig_src_open_rp(src, fd);
	if (!r)
		r = -pthread_create(rp_thread, NULL, mig_rp_thread, src);
	if (r) {
		snprintf(why, whylen, "cannot start the return path: %s", strerror(-r));
		return r;
	}
	mig_publish_conns(m, fd, src->urgent_fd);
	return 0;
}

/* Drop the broken connections of a paused postcopy (the thread is joined). */
static void mig_src_drop_conns(struct mig_src *src, int *fdp)
{
	struct migration *m = src->m;

	mig_publish_conns(m, -1, -1);
	mig_src_close_side_channels(src);
	pthread_mutex_lock(&m->lock);
	m->stream = NULL;
	pthread_mutex_unlock(&m->lock);
	if (*fdp >= 0) {
		src->earlier_bytes += src->s.bytes;
		stream_release(&src->s);
		close(*fdp);
		*fdp = -1;
	}
}

/*
 * Postcopy-paused on the source: wait for `migrate {"resume": true}` and
 * resume; a failed attempt stays paused (error-desc says why) and waits for
 * the next.  0 resumed (the return-path thread runs), -ECANCELED when the
 * VMM goes.
 */
static int mig_src_paused(struct mig_src *src, int *fdp, pthread_t *rp_thread)
{
	struct migration *m = src->m;
	char why[MIG_ERROR_BYTES];

	for (;;) {
		int r;

		pthread_mutex_lock(&m->lock);
		while (!m->resume_requested && !m->closing)
			pthread_cond_wait(&m->cond, &m->lock);
		if (m->closing) {
			pthread_mutex_unlock(&m->lock);
			return -ECANCELED;
		}
		m->resume_requested = false;
		m->curi = m->resume_curi;
		snprintf(m->uri, sizeof(m->uri), "%s", m->resume_uri);
		pthread_mutex_unlock(&m->lock);
		log_info("postcopy: resuming to %s", m->uri);
		r = mig_src_resume(src, fdp, rp_thread, why, sizeof(why));
		if (!r)
			return 0;
		mig_src_drop_conns(src, fdp);
		mig_replace_error(m, "postcopy paused: resuming to %s failed: %s", m->uri, why);
		atomic_fetch_add(&m->resume_failures, 1);
	}
}

/*
 * Switch to postcopy: the vCPUs are stopped and the final dirty log is in
 * src->bitmap.  Sends discards, state and RUN; serves the destination until
 * it has every page, pausing when a channel breaks and resuming on request
 * (postcopy recovery).  Returns 0 when complete, -EAGAIN when the destination
 * failed before running the guest (the caller resumes it here), other -errno
 * when the guest's state is split between the two sides.  *fdp is the main
 * connection, replaced on resume.
 */
static int mig_postcopy(struct mig_src *src, bool was_running, uint64_t stop_ns, int *fdp)
{
	struct migration *m = src->m;
	pthread_t rp_thread;
	uint64_t *discard = calloc(src->bitmap_words, sizeof(uint64_t));
	int err = 0;

	src->pending = calloc(src->bitmap_words, sizeof(uint64_t));
	src->released = calloc(src->bitmap_words, sizeof(uint64_t));
	src->ping_id = 1; /* 1 was the hybrid pre-discard's */
	if (!discard || !src->pending || !src->released) {
		free(discard);
		mig_set_error(m, "out of memory");
		err = -EAGAIN;
		goto out;
	}
	/* pending = never sent, or dirtied since sent; discard = the latter */
	for (uint64_t w = 0; w < src->bitmap_words; w++) {
		uint64_t valid = w * 64 + 64 <= src->npages ? ~0ull
				 : (1ull << (src->npages % 64)) - 1;
		uint64_t pend = (~src->sent_once[w] | src->bitmap[w]) & valid;

		discard[w] = src->sent_once[w] & src->bitmap[w] & valid;
		if (src->predisc) {
			/* Discarded while the guest still ran: pending, not again. */
			pend |= src->predisc[w] & valid;
			discard[w] &= ~src->predisc[w];
		}
		atomic_store(&src->pending[w], pend);
		atomic_fetch_add(&src->pending_count, (uint64_t)__builtin_popcountll(pend));
	}
	log_debug("postcopy: %" PRIu64 " pages pending, %.3f ms after the stop",
		  atomic_load(&src->pending_count), (double)(clock_monotonic_ns() - stop_ns) / 1e6);
	mig_send_discards(src, discard);
	free(discard);
	err = mig_send_sections(src, was_running, stop_ns, false);
	if (err) {
		char why[MIG_ERROR_BYTES];

		if (!mig_rp_pending_error(src, why, sizeof(why)))
			mig_set_error(m, "destination refused the migration: %s", why);
		else
			mig_set_error(m, "sending the device state failed: %s", src->s.errmsg);
		err = -EAGAIN;
		goto out;
	}
	/* Open since the advise; else now, so the destination can be answered at once. */
	if (src->urgent_fd < 0 && mig_src_open_urgent(src)) {
		char why[MIG_ERROR_BYTES];

		if (!mig_rp_pending_error(src, why, sizeof(why)))
			mig_set_error(m, "destination refused the migration: %s", why);
		else
			mig_set_error(m, "cannot open the urgent channel to %s", m->uri);
		err = -EAGAIN;
		goto out;
	}
	if (mig_src_open_rp(src, *fdp)) {
		mig_set_error(m, "cannot set up the return path");
		err = -EAGAIN;
		goto out;
	}
	log_debug("postcopy: urgent channel open, %.3f ms after the stop",
		  (double)(clock_monotonic_ns() - stop_ns) / 1e6);
	stream_put_u8(&src->s, MIG_REC_POSTCOPY_RUN);
	if (stream_flush(&src->s)) {
		char why[MIG_ERROR_BYTES];

		if (!mig_rp_pending_error(src, why, sizeof(why)))
			mig_set_error(m, "destination refused the migration: %s", why);
		else
			mig_set_error(m, "sending run failed: %s", src->s.errmsg);
		err = -EAGAIN;
		goto out;
	}
	if (pthread_create(&rp_thread, NULL, mig_rp_thread, src)) {
		mig_set_error(m, "cannot start the return-path thread");
		err = -EAGAIN;
		goto out;
	}
	mig_publish_conns(m, *fdp, src->urgent_fd);
	mig_set_status(m, MIG_STATUS_POSTCOPY_ACTIVE);
	mig_releaser_start(src);
	src->release_ram = true;
	for (;;) {
		bool ran, deliberate;

		err = mig_postcopy_serve(src, rp_thread);
		if (!err)
			break;
		ran = atomic_load(&src->got_running);
		pthread_mutex_lock(&m->lock);
		deliberate = m->pause_requested;
		pthread_mutex_unlock(&m->lock);
		/*
		 * The destination closed without saying RUNNING: it never ran the
		 * guest (it sends RUNNING before anything else once it does, and
		 * exits instead when it cannot), so the guest resumes here.
		 */
		if (!ran && !deliberate && !src->rp_fatal &&
		    (src->rp_result == -EPIPE || src->rp_result == -ECONNRESET)) {
			mig_set_error(m, "%s", src->rp_error[0] ? src->rp_error : "postcopy failed");
			err = -EAGAIN;
			goto out;
		}
		if (src->rp_fatal || atomic_load(&m->cancel)) {
			mig_set_error(m, "%s%s", src->rp_error[0] ? src->rp_error : "postcopy failed",
				      ran ? "; the guest ran on the destination, so its state is split "
					    "and it cannot resume here" : "");
			err = !ran ? -EAGAIN : src->rp_result ? src->rp_result : -EIO;
			goto out;
		}
		/* A channel broke: keep every unacknowledged page and wait. */
		{
			char reason[MIG_ERROR_BYTES];

			snprintf(reason, sizeof(reason), "%s",
				 deliberate ? "migrate-pause"
				 : src->rp_error[0] ? src->rp_error
				 : stream_error(&src->s) ? src->s.errmsg : strerror(-err));
			mig_src_drop_conns(src, fdp);
			mig_enter_paused(m, reason);
		}
		err = mig_src_paused(src, fdp, &rp_thread);
		if (err) {
			mig_set_error(m, "the VMM is shutting down during a paused postcopy; the guest "
				      "stays with the destination");
			goto out;
		}
		mig_leave_paused(m);
	}
	err = 0;
	/* Every page is on the destination: the rest of RAM goes back too. */
	mig_releaser_finish(src, true);
	mig_set_downtime(m, src->running.same_clock && src->running.first_run_ns >= stop_ns
			    ? src->running.first_run_ns - stop_ns : 0,
			 src->running.same_clock);
out:
	mig_releaser_finish(src, false); /* no-op after success */
	mig_publish_conns(m, -1, -1);
	mig_src_close_side_channels(src);
	free((void *)src->pending);
	src->pending = NULL;
	free(src->released);
	src->released = NULL;
	free(src->unacked);
	src->unacked = NULL;
	return err;
}

/*
 * Connect the main channel, set up its stream (published for cancel) and
 * queue the header.  The fd, or -1 with the migration's error set.
 */
static int mig_src_connect(struct mig_src *src)
{
	struct migration *m = src->m;
	struct mig_header h = { .version = MIG_VERSION, .page_bytes = MIG_PAGE_BYTES };
	int fd = channel_connect(&m->curi, MIG_CONNECT_TIMEOUT_MS), err;

	if (fd < 0) {
		mig_set_error(m, "cannot connect to %s: %s", m->uri, strerror(-fd));
		return -1;
	}
	err = stream_init(&src->s, fd, MIG_IO_TIMEOUT_MS);
	if (err) {
		mig_set_error(m, "stream setup: %s", strerror(-err));
		close(fd);
		return -1;
	}
	pthread_mutex_lock(&m->lock);
	m->stream = &src->s;
	pthread_mutex_unlock(&m->lock);
	h.nvcpus = vm_nvcpus(m->vm);
	h.nblocks = 1;
	mig_boot_id(h.boot_id);
	snprintf(h.blocks[0].name, sizeof(h.blocks[0].name), "%s", src->block->name);
	h.blocks[0].gpa = src->block->gpa;
	h.blocks[0].bytes = src->block->bytes;
	src->header = h; /* a resumed postcopy sends it again */
	mig_save_header(&src->s, &h);
	return fd;
}

/* ---- source: CPR transfer (in-place live update) ---- */

/* 1 when the process behind @pidfd exits within @timeout_ms, else 0. */
static int mig_pidfd_exited(int pidfd, int timeout_ms)
{
	struct pollfd pfd = { .fd = pidfd, .events = POLLIN };
	int r;

	do {
		r = poll(&pfd, 1, timeout_ms);
	} while (r < 0 && errno == EINTR);
	return r > 0;
}

/*
 * Hand the guest to a new VMM process on this host.  Guest RAM is never
 * copied: its memfds go over the cpr channel, the main channel carries only
 * the device sections.  Until the new process says it runs the guest, this
 * one may resume it - but once the vCPUs stopped here, only if the new one
 * provably never ran it (it refused the state, or its process is gone):
 * both share the same RAM, so two running copies would corrupt it.
 *
 *   old process                          new process
 *   cpr: HELLO, FD ram0, DONE  ------->  create the VM over the memfd
 *                             <-------  ACK 0 (listening on main)
 *   main: header, CPR(token)  ------->
 *   stop vCPUs  (pause starts)
 *   main: sections, END       ------->  load state, run vCPUs (pause ends)
 *                             <-------  RP_RUNNING
 *   exit 0
 */
static void mig_cpr_source(struct migration *m)
{
	struct vm *vm = m->vm;
	struct ram_block *rb = vm_ram_block(vm, 0);
	struct mig_src src = { .m = m, .block = rb };
	struct cpr_state cs;
	struct mig_rp_msg rp;
	char errbuf[MIG_ERROR_BYTES];
	uint64_t stop_ns = 0;
	bool was_running = false, stopped = false;
	int cfd = -1, fd = -1, pidfd = -1, peer, err;

	memset(&cs, 0, sizeof(cs));
	for (unsigned i = 0; i < CPR_MAX_FDS; i++)
		cs.fds[i].fd = -1;
	cfd = cpr_connect(m->cpr_uri, MIG_CPR_CONNECT_WAIT_MS, m->cancel_fd, errbuf, sizeof(errbuf));
	if (cfd < 0) {
		mig_set_error(m, "%s", errbuf);
		goto fail;
	}
	/* Watch the new process itself, not only its sockets (see above). */
	peer = cpr_peer_pid(cfd);
	pidfd = peer > 0 ? (int)syscall(SYS_pidfd_open, peer, 0) : -1;
	if (pidfd < 0) {
		mig_set_error(m, "cannot watch the process behind %s (pid %d): %s", m->cpr_uri, peer,
			      strerror(peer > 0 ? errno : -peer));
		goto fail;
	}
	cs.nvcpus = vm_nvcpus(vm);
	if (getrandom(cs.token, sizeof(cs.token), 0) != (ssize_t)sizeof(cs.token)) {
		mig_set_error(m, "getrandom: %s", strerror(errno));
		goto fail;
	}
	cs.nfds = 1;
	cs.fds[0].kind = CPR_FD_RAM;
	snprintf(cs.fds[0].name, sizeof(cs.fds[0].name), "%s", rb->name);
	cs.fds[0].gpa = rb->gpa;
	cs.fds[0].bytes = rb->bytes;
	cs.fds[0].fd = rb->fd; /* lent, not given: the block keeps it */
	err = cpr_send(cfd, &cs, errbuf, sizeof(errbuf));
	if (!err)
		err = cpr_recv_ack(cfd, MIG_CPR_ACK_TIMEOUT_MS, m->cancel_fd, errbuf, sizeof(errbuf));
	if (err) {
		mig_set_error(m, "the new process (pid %d) did not take the update: %s", peer, errbuf);
		goto fail;
	}

	fd = mig_src_connect(&src);
	if (fd < 0)
		goto fail;
	stream_put_u8(&src.s, MIG_REC_CPR);
	stream_put_bytes(&src.s, cs.token, sizeof(cs.token));
	mig_set_time(m, &m->setup_ns, clock_monotonic_ns() - m->start_ns);
	if (!mig_set_status(m, MIG_STATUS_ACTIVE) || !mig_set_status(m, MIG_STATUS_DEVICE))
		goto fail; /* cancelled */
	if (vm_migration_stop(vm, &stop_ns, &was_running)) {
		mig_set_error(m, "cannot stop the guest for the update (state %s)",
			      vm_runstate_name(vm_get_runstate(vm)));
		goto fail;
	}
	stopped = true;
	err = mig_send_sections(&src, was_running, stop_ns, true);
	if (!err) {
		src.s.timeout_ms = MIG_RP_TIMEOUT_MS;
		err = mig_rp_read(&src.s, &rp, errbuf, sizeof(errbuf));
	} else {
		snprintf(errbuf, sizeof(errbuf), "%s", src.s.errmsg[0] ? src.s.errmsg : strerror(-err));
	}
	if (!err && rp.type == MIG_RP_ERROR) {
		/* It refused the state: it never ran the guest. */
		mig_set_error(m, "the new process failed to load the state: %s; the guest "
			      "continues here", rp.text);
		goto fail;
	}
	if (err || rp.type != MIG_RP_RUNNING) {
		if (mig_pidfd_exited(pidfd, MIG_CPR_PEER_EXIT_MS)) {
			mig_set_error(m, "the new process (pid %d) exited before running the guest (%s); "
				      "the guest continues here", peer,
				      err ? errbuf : "unexpected return-path message");
			goto fail;
		}
		mig_set_error(m, "no word from the new process (pid %d) after the switch (%s) and it "
			      "is still alive, so it may be running the guest: kept paused here; "
			      "if it is not, stop it and 'cont' here", peer,
			      err ? errbuf : "unexpected return-path message");
		stopped = false; /* two copies must never run over one RAM */
		goto fail;
	}
	mig_set_downtime(m, rp.same_clock && rp.first_run_ns >= stop_ns
			    ? rp.first_run_ns - stop_ns : clock_monotonic_ns() - stop_ns,
			 rp.same_clock);
	atomic_store(&m->transferred, src.s.bytes);
	vm_migration_complete(vm);
	mig_set_time(m, &m->end_ns, clock_monotonic_ns());
	pthread_mutex_lock(&m->lock);
	m->stream = NULL;
	pthread_mutex_unlock(&m->lock);
	stream_release(&src.s);
	close(fd);
	close(cfd);
	close(pidfd);
	mig_set_status(m, MIG_STATUS_COMPLETED);
	log_info("live update to pid %d completed: %.1f ms total, guest paused %.3f ms; exiting",
		 peer, (double)(m->end_ns - m->start_ns) / 1e6, (double)m->downtime_ns / 1e6);
	/* The guest lives in the new process now; this one's job is done. */
	vm_request_exit(vm, 0);
	return;
fail:
	if (atomic_load(&m->cancel))
		mig_set_error(m, "cancelled");
	if (stopped)
		vm_migration_abort(vm, was_running);
	mig_set_time(m, &m->end_ns, clock_monotonic_ns());
	pthread_mutex_lock(&m->lock);
	m->stream = NULL;
	pthread_mutex_unlock(&m->lock);
	if (fd >= 0) {
		stream_release(&src.s);
		close(fd);
	}
	if (cfd >= 0)
		close(cfd);
	if (pidfd >= 0)
		close(pidfd);
	mig_finish_failed(m);
}

static void *mig_source_thread(void *arg)
{
	struct migration *m = arg;
	struct vm *vm = m->vm;
	struct mig_src src = { .m = m, .block = vm_ram_block(vm, 0), .urgent_fd = -1, .rp_fd = -1 };
	struct mig_params p;
	struct mig_rp_msg rp;
	char errbuf[MIG_ERROR_BYTES];
	uint64_t stop_ns = 0, pass_start, pass_bytes, last_sync_ns;
	double bw = 0;
	bool was_running = false, stopped = false, end_sent = false, logging = false;
	unsigned hot_syncs = 0, extra_passes = 0;
	uint64_t prev_dirty = UINT64_MAX;
	int fd = -1, err;

	pthread_mutex_lock(&m->lock);
	p = m->params;
	pthread_mutex_unlock(&m->lock);
	if (p.mode == MIG_MODE_CPR_TRANSFER) {
		mig_cpr_source(m);
		return NULL;
	}

	src.npages = src.block->bytes / MIG_PAGE_BYTES;
	src.bitmap_words = (src.npages + 63) / 64;
	src.bitmap = calloc(src.bitmap_words + MIG_WINDOW_PAGES / 64, sizeof(uint64_t));
	if (!src.bitmap) {
		mig_set_error(m, "out of memory");
		goto fail;
	}
	fd = mig_src_connect(&src);
	if (fd < 0)
		goto fail;
	src.s.max_bytes_per_s = p.max_bandwidth;
	if (atomic_load(&m->cancel))
		goto fail;
	if (p.postcopy_ram) {
		src.postcopy = true;
		src.preempt = p.postcopy_preempt;
		src.sent_once = calloc(src.bitmap_words, sizeof(uint64_t));
		if (!src.sent_once) {
			mig_set_error(m, "out of memory");
			goto fail;
		}
		stream_put_u8(&src.s, MIG_REC_POSTCOPY_ADVISE);
		/* The urgent channel now, not inside the pause at the switch. */
		if (stream_flush(&src.s) || mig_src_open_urgent(&src)) {
			err = -ECONNREFUSED;
			goto stream_fail;
		}
	}
	err = vm_dirty_log_start(vm);
	if (err) {
		mig_set_error(m, "cannot start dirty logging: %s", strerror(-err));
		goto fail;
	}
	logging = true;
	mig_set_time(m, &m->setup_ns, clock_monotonic_ns() - m->start_ns);
	if (!mig_set_status(m, MIG_STATUS_ACTIVE))
		goto fail; /* cancelled */

	/* Pure postcopy: switch before the first pass. */
	if (src.postcopy && atomic_load(&m->postcopy_requested)) {
		memset(src.bitmap, 0xff, src.bitmap_words * sizeof(uint64_t));
		goto postcopy_switch;
	}

	/* Pass 1 */
	pass_start = clock_monotonic_ns();
	pass_bytes = src.s.bytes;
	err = mig_first_pass(&src);
	if (err)
		goto stream_fail;
	atomic_store(&m->passes, 1);
	stream_put_u8(&src.s, MIG_REC_PASS_END);
	stream_put_u32(&src.s, 1);
	if (stream_flush(&src.s))
		goto stream_fail;
	mig_emit_pass(m, 1);
	mig_wait_drained(&src);
	bw = (double)(src.s.bytes - pass_bytes) * 1e9 / (double)(clock_monotonic_ns() - pass_start + 1);
	log_debug("migration: pass 1: %" PRIu64 " bytes in %.1f ms (%.0f MB/s)",
		  src.s.bytes - pass_bytes, (double)(clock_monotonic_ns() - pass_start) / 1e6, bw / 1e6);
	atomic_store(&m->throughput_bps, (uint64_t)bw);
	last_sync_ns = pass_start;

	/* Passes 2..n until the rest fits the downtime limit */
	for (;;) {
		uint64_t dirty, now;

		memset(src.bitmap, 0, src.bitmap_words * sizeof(uint64_t));
		err = vm_dirty_log_get(vm, 0, src.bitmap);
		if (err) {
			mig_set_error(m, "reading the dirty log failed: %s", strerror(-err));
			goto fail;
		}
		now = clock_monotonic_ns();
		dirty = mig_popcount(src.bitmap, src.bitmap_words);
		atomic_fetch_add(&m->dirty_sync_count, 1);
		atomic_store(&m->dirty_pages_rate,
			     (uint64_t)((double)dirty * 1e9 / (double)(now - last_sync_ns + 1)));
		last_sync_ns = now;
		pthread_mutex_lock(&m->lock);
		p = m->params; /* parameters may change while we run */
		pthread_mutex_unlock(&m->lock);
		src.s.max_bytes_per_s = p.max_bandwidth;
		if (src.postcopy && (atomic_load(&m->postcopy_requested) ||
				     (p.postcopy_after_passes &&
				      atomic_load(&m->passes) >= p.postcopy_after_passes &&
				      !mig_converged(m, dirty, bw, &p))))
			goto postcopy_switch;
		/*
		 * The limit is what the user accepts, not a target: while another
		 * pass still shrinks the dirty set by a quarter or more, it costs
		 * less than the pause it saves would and buys a shorter pause.
		 */
		if (mig_converged(m, dirty, bw, &p) &&
		    (m->expected_downtime_ms <= MIG_DOWNTIME_GOOD_MS || dirty * 4 > prev_dirty * 3 ||
		     extra_passes >= MIG_EXTRA_PASSES_MAX))
			break;
		if (mig_converged(m, dirty, bw, &p))
			extra_passes++;
		prev_dirty = dirty;
		if (p.convergence_timeout_s &&
		    now - m->start_ns > p.convergence_timeout_s * 1000000000ull) {
			mig_set_error(m, "precopy did not converge within %" PRIu64 " s: %" PRIu64
				      " MiB still dirty at %" PRIu64 " MiB/s (expected downtime %" PRIu64
				      " ms > limit %" PRIu64 " ms); %s",
				      p.convergence_timeout_s, dirty * MIG_PAGE_BYTES >> 20,
				      (uint64_t)bw >> 20, m->expected_downtime_ms, p.downtime_limit_ms,
				      p.auto_converge ? "raise downtime-limit or convergence-timeout, or "
							"switch to postcopy"
						      : "enable auto-converge or postcopy, or raise downtime-limit");
			goto fail;
		}
		/* auto-converge: the guest dirties more than half of what we send */
		if (p.auto_converge) {
			uint64_t last_pass_bytes = src.s.bytes - pass_bytes;

			if (dirty * MIG_PAGE_BYTES > last_pass_bytes / 2)
				hot_syncs++;
			if (hot_syncs >= 2) {
				unsigned t = vm_get_throttle(vm);

				t = t ? t + p.throttle_increment_pct : p.throttle_initial_pct;
				t = t > 99 ? 99 : t;
				vm_set_throttle(vm, t);
				if (t > atomic_load(&m->throttle_max))
					atomic_store(&m->throttle_max, t);
				hot_syncs = 0;
			}
		}
		pass_start = clock_monotonic_ns();
		pass_bytes = src.s.bytes;
		err = mig_dirty_pass(&src, true);
		if (err)
			goto stream_fail;
		atomic_fetch_add(&m->passes, 1);
		stream_put_u8(&src.s, MIG_REC_PASS_END);
		stream_put_u32(&src.s, (uint32_t)atomic_load(&m->passes));
		if (stream_flush(&src.s))
			goto stream_fail;
		mig_emit_pass(m, atomic_load(&m->passes));
		/* The next dirty sync sees what the guest did while this pass was
		 * really on the wire, not still in socket buffers. */
		mig_wait_drained(&src);
		{
			uint64_t sent = src.s.bytes - pass_bytes;
			double t = (double)(clock_monotonic_ns() - pass_start + 1);

			/* Small passes say more about overhead than about the link. */
			if (sent >= (1u << 20))
				bw = (double)sent * 1e9 / t;
			log_debug("migration: pass %" PRIu64 ": %" PRIu64 " dirty pages, %" PRIu64
				  " bytes in %.1f ms", atomic_load(&m->passes), dirty, sent, t / 1e6);
			atomic_store(&m->throughput_bps, (uint64_t)bw);
		}
	}

	if (0) {
postcopy_switch:
		mig_wait_drained(&src);
		if (atomic_load(&m->passes)) {
			/*
			 * Hybrid: most pages the destination must drop are known
			 * already.  Discard them while the guest still runs here and
			 * wait until the destination has (PING/PONG): dropping
			 * hundreds of MiB takes it tens of milliseconds, which would
			 * otherwise land inside the pause.  Only what the guest
			 * dirties from now to the stop is discarded in the pause.
			 */
			err = mig_prediscard(&src, errbuf, sizeof(errbuf));
		} else {
			/* Pure postcopy: the destination's setup for the advise
			 * (allocations, threads) must not land in the pause. */
			err = mig_ping_wait(&src, "the postcopy setup", errbuf, sizeof(errbuf));
		}
		if (err) {
			mig_set_error(m, "%s", errbuf);
			goto fail;
		}
		if (!mig_set_status(m, MIG_STATUS_DEVICE))
			goto fail;
		err = vm_migration_stop(vm, &stop_ns, &was_running);
		if (err) {
			mig_set_error(m, "cannot stop the guest for switch-over (state %s)",
				      vm_runstate_name(vm_get_runstate(vm)));
			goto fail;
		}
		stopped = true;
		{
			/* Pure postcopy keeps the all-ones bitmap: every page pending. */
			uint64_t *final = calloc(src.bitmap_words, sizeof(uint64_t));

			err = final ? vm_dirty_log_get(vm, 0, final) : -ENOMEM;
			for (uint64_t w = 0; !err && w < src.bitmap_words; w++)
				src.bitmap[w] = atomic_load(&m->passes) ? final[w] : ~0ull;
			free(final);
		}
		if (err) {
			mig_set_error(m, "reading the dirty log failed: %s", strerror(-err));
			goto fail;
		}
		err = mig_postcopy(&src, was_running, stop_ns, &fd);
		if (err == -EAGAIN)
			goto fail; /* the destination never ran: resume here */
		if (err) {
			stopped = false; /* the guest ran there: never run it here too */
			goto fail;
		}
		goto completed;
	}

	/* Switch-over: first let the link drain what earlier passes queued,
	 * while the guest still runs, so the pause pays only for the rest. */
	mig_wait_drained(&src);

	/* Switch-over */
	if (!mig_set_status(m, MIG_STATUS_DEVICE))
		goto fail;
	err = vm_migration_stop(vm, &stop_ns, &was_running);
	if (err) {
		mig_set_error(m, "cannot stop the guest for switch-over (state %s)",
			      vm_runstate_name(vm_get_runstate(vm)));
		goto fail;
	}
	stopped = true;
	memset(src.bitmap, 0, src.bitmap_words * sizeof(uint64_t));
	err = vm_dirty_log_get(vm, 0, src.bitmap);
	if (err) {
		mig_set_error(m, "reading the dirty log failed: %s", strerror(-err));
		goto fail;
	}
	err = mig_dirty_pass(&src, false);
	if (err)
		goto stream_fail;
	if (src.urgent_fd >= 0) {
		/* Postcopy was possible but not needed: end the urgent channel. */
		stream_put_u8(&src.urgent, MIG_REC_END);
		stream_flush(&src.urgent);
		mig_src_close_side_channels(&src);
	}
	err = mig_send_sections(&src, was_running, stop_ns, true);
	if (err)
		goto stream_fail;
	end_sent = true;
	atomic_store(&m->transferred, src.s.bytes + src.urgent_bytes);
	atomic_store(&m->remaining_bytes, 0);

	/* Wait for the destination to run the guest. */
	src.s.timeout_ms = MIG_RP_TIMEOUT_MS;
	err = mig_rp_read(&src.s, &rp, errbuf, sizeof(errbuf));
	if (err) {
		if (err == -EPIPE || err == -ECONNRESET) {
			/* The destination closed without running: it is gone. */
			mig_set_error(m, "destination closed the connection before running the guest");
			goto fail;
		}
		mig_set_error(m, "no word from the destination after switch-over (%s); the guest is "
			      "kept paused here because the destination may be running it",
			      errbuf);
		stopped = false; /* do not resume: two copies must never run */
		goto fail;
	}
	if (rp.type != MIG_RP_RUNNING) {
		mig_set_error(m, "destination failed to load the state: %s",
			      rp.type == MIG_RP_ERROR ? rp.text : "unexpected return-path message");
		goto fail;
	}
	{
		uint64_t now = clock_monotonic_ns();

		mig_set_downtime(m, rp.same_clock && rp.first_run_ns >= stop_ns
				    ? rp.first_run_ns - stop_ns : now - stop_ns,
				 rp.same_clock);
	}
completed:
	atomic_store(&m->postcopy_requested, false);
	vm_migration_complete(vm);
	vm_set_throttle(vm, 0);
	vm_dirty_log_stop(vm);
	mig_set_time(m, &m->end_ns, clock_monotonic_ns());
	free(src.sent_once);
	free(src.predisc);
	pthread_mutex_lock(&m->lock);
	m->stream = NULL;
	pthread_mutex_unlock(&m->lock);
	if (fd >= 0) {
		stream_release(&src.s);
		close(fd);
	}
	free(src.bitmap);
	if (!mig_set_status(m, MIG_STATUS_COMPLETED))
		log_debug("migration: completed after a late cancel");
	log_info("migration to %s completed: %.1f ms total, downtime %.3f ms",
		 m->uri, (double)(m->end_ns - m->start_ns) / 1e6, (double)m->downtime_ns / 1e6);
	log_debug("migration: the migration thread used %.1f ms of CPU", clock_thread_cpu_ns() / 1e6);
	mig_releaser_join(&src); /* completed: the rest of release-ram is housekeeping */
	return NULL;

stream_fail:
	if (atomic_load(&m->cancel))
		mig_set_error(m, "cancelled");
	else if (!mig_rp_pending_error(&src, errbuf, sizeof(errbuf)))
		mig_set_error(m, "destination refused the migration: %s", errbuf);
	else
		mig_set_error(m, "sending to %s failed: %s", m->uri,
			      src.s.errmsg[0] ? src.s.errmsg : strerror(-err));
fail:
	if (atomic_load(&m->cancel))
		mig_set_error(m, "cancelled");
	vm_set_throttle(vm, 0);
	if (logging)
		vm_dirty_log_stop(vm);
	if (stopped)
		vm_migration_abort(vm, was_running);
	(void)end_sent;
	mig_set_time(m, &m->end_ns, clock_monotonic_ns());
	pthread_mutex_lock(&m->lock);
	m->stream = NULL;
	pthread_mutex_unlock(&m->lock);
	if (fd >= 0) {
		stream_release(&src.s);
		close(fd);
	}
	mig_src_close_side_channels(&src);
	free(src.bitmap);
	free(src.sent_once);
	free(src.predisc);
	atomic_store(&m->postcopy_requested, false);
	mig_releaser_join(&src);
	mig_finish_failed(m);
	return NULL;
}

static void mig_reset_stats(struct migration *m)
{
	pthread_mutex_lock(&m->lock);
	m->start_ns = clock_monotonic_ns();
	m->setup_ns = m->end_ns = m->downtime_ns = 0;
	m->downtime_known = m->downtime_same_clock = false;
	m->expected_downtime_ms = 0;
	m->error[0] = 0;
	pthread_mutex_unlock(&m->lock);
	atomic_store(&m->transferred, 0);
	atomic_store(&m->zero_pages, 0);
	atomic_store(&m->normal_pages, 0);
	atomic_store(&m->remaining_bytes, 0);
	atomic_store(&m->dirty_sync_count, 0);
	atomic_store(&m->dirty_pages_rate, 0);
	atomic_store(&m->passes, 0);
	atomic_store(&m->throughput_bps, 0);
	atomic_store(&m->throttle_max, 0);
	atomic_store(&m->pages_pushed, 0);
	atomic_store(&m->pages_requested, 0);
	atomic_store(&m->pages_resent, 0);
	atomic_store(&m->postcopy_requests, 0);
	atomic_store(&m->postcopy_pauses, 0);
	atomic_store(&m->resume_failures, 0);
	atomic_store(&m->cancel, false);
	{
		uint64_t v;

		while (read(m->cancel_fd, &v, sizeof(v)) > 0)
			;
	}
}

int migration_resume(struct migration *m, const char *uri, char *err, size_t errlen)
{
	struct channel_uri cu;
	int r;

	if (!uri) {
		snprintf(err, errlen, "resume needs the destination's recovery address in \"uri\"");
		return -EINVAL;
	}
	r = channel_uri_parse(uri, &cu, err, errlen);
	if (r)
		return r;
	pthread_mutex_lock(&m->lock);
	if (m->incoming || m->status != MIG_STATUS_POSTCOPY_PAUSED) {
		snprintf(err, errlen, "resume needs an outgoing migration in postcopy-paused (this "
			 "one is %s%s)", m->incoming ? "incoming, " : "", mig_status_name(m->status));
		r = -EINVAL;
	} else if (m->resume_requested) {
		snprintf(err, errlen, "already resuming to %s", m->resume_uri);
		r = -EBUSY;
	} else {
		m->resume_curi = cu;
		snprintf(m->resume_uri, sizeof(m->resume_uri), "%s", uri);
		m->resume_requested = true;
		pthread_cond_broadcast(&m->cond);
	}
	pthread_mutex_unlock(&m->lock);
	return r;
}

int migration_pause(struct migration *m, char *err, size_t errlen)
{
	int r = 0;

	pthread_mutex_lock(&m->lock);
	if (m->status != MIG_STATUS_POSTCOPY_ACTIVE || m->conn_fd < 0) {
		snprintf(err, errlen, "migrate-pause needs a migration in postcopy-active (this one "
			 "is %s)", mig_status_name(m->status));
		r = -EINVAL;
	} else {
		/* The owners notice the dead sockets and pause; they close them. */
		m->pause_requested = true;
		shutdown(m->conn_fd, SHUT_RDWR);
		if (m->urgent_conn_fd >= 0)
			shutdown(m->urgent_conn_fd, SHUT_RDWR);
		log_info("migration: migrate-pause: connections shut down");
	}
	pthread_mutex_unlock(&m->lock);
	return r;
}

int migration_start(struct migration *m, const char *uri, char *err, size_t errlen)
{
	return migration_start_channels(m, uri, NULL, err, errlen);
}

int migration_start_channels(struct migration *m, const char *uri, const char *cpr_uri,
			     char *err, size_t errlen)
{
	enum vm_runstate rs = vm_get_runstate(m->vm);
	struct channel_uri cu, cpr_cu;
	struct mig_params p;
	int r;

	r = channel_uri_parse(uri, &cu, err, errlen);
	if (r)
		return r;
	pthread_mutex_lock(&m->lock);
	p = m->params;
	pthread_mutex_unlock(&m->lock);
	if (p.mode == MIG_MODE_CPR_TRANSFER) {
		if (!cpr_uri) {
			snprintf(err, errlen, "mode cpr-transfer needs a cpr channel: migrate "
				 "{\"channels\": [{\"type\": \"main\", \"uri\": URI}, "
				 "{\"type\": \"cpr\", \"uri\": \"unix:PATH\"}]}");
			return -EINVAL;
		}
		r = channel_uri_parse(cpr_uri, &cpr_cu, err, errlen);
		if (r)
			return r;
		if (cpr_cu.kind != CHANNEL_UNIX) {
			snprintf(err, errlen, "the cpr channel must be a UNIX socket (unix:PATH): it "
				 "carries file descriptors");
			return -EINVAL;
		}
		if (p.postcopy_ram) {
			snprintf(err, errlen, "cpr-transfer moves no RAM: disable the postcopy-ram "
				 "capability");
			return -EINVAL;
		}
	} else if (cpr_uri) {
		snprintf(err, errlen, "a cpr channel needs mode cpr-transfer "
			 "(migrate-set-parameters {\"mode\": \"cpr-transfer\"})");
		return -EINVAL;
	}
	if (m->incoming && migration_get_status(m) != MIG_STATUS_COMPLETED) {
		snprintf(err, errlen, "this VM is waiting for an incoming migration");
		return -EBUSY;
	}
	if (migration_get_status(m) == MIG_STATUS_POSTCOPY_PAUSED) {
		snprintf(err, errlen, "a postcopy migration is paused: resume it with migrate "
			 "{\"uri\": URI, \"resume\": true}");
		return -EBUSY;
	}
	if (rs != VM_RUNSTATE_RUNNING && rs != VM_RUNSTATE_PAUSED) {
		snprintf(err, errlen, "cannot migrate a guest in state %s", vm_runstate_name(rs));
		return -EINVAL;
	}
	pthread_mutex_lock(&m->lock);
	if (m->closing) {
		pthread_mutex_unlock(&m->lock);
		snprintf(err, errlen, "the VMM is shutting down");
		return -ESHUTDOWN;
	}
	if (!mig_status_finished(m->status)) {
		pthread_mutex_unlock(&m->lock);
		snprintf(err, errlen, "a migration is already in progress (%s)",
			 mig_status_name(m->status));
		return -EBUSY;
	}
	pthread_mutex_unlock(&m->lock);
	if (m->thread_joinable) {
		pthread_join(m->thread, NULL);
		m->thread_joinable = false;
	}
	mig_reset_stats(m);
	m->incoming = false; /* a guest that arrived here may move on */
	m->curi = cu;
	snprintf(m->uri, sizeof(m->uri), "%s", uri);
	snprintf(m->cpr_uri, sizeof(m->cpr_uri), "%s", cpr_uri ? cpr_uri : "");
	m->total_bytes = vm_ram_block(m->vm, 0)->bytes;
	mig_set_status(m, MIG_STATUS_SETUP);
	r = -pthread_create(&m->thread, NULL, mig_source_thread, m);
	if (r) {
		snprintf(err, errlen, "cannot start the migration thread: %s", strerror(-r));
		mig_set_status(m, MIG_STATUS_FAILED);
		return r;
	}
	m->thread_joinable = true;
	return 0;
}

int migration_start_postcopy(struct migration *m, char *err, size_t errlen)
{
	enum mig_status st;

	pthread_mutex_lock(&m->lock);
	st = m->status;
	if (!m->params.postcopy_ram) {
		pthread_mutex_unlock(&m->lock);
		snprintf(err, errlen, "enable the postcopy-ram capability first");
		return -EINVAL;
	}
	if (m->incoming || (!mig_status_finished(st) && st != MIG_STATUS_SETUP &&
			    st != MIG_STATUS_ACTIVE)) {
		pthread_mutex_unlock(&m->lock);
		snprintf(err, errlen, "postcopy cannot start now (%s)", mig_status_name(st));
		return -EBUSY;
	}
	pthread_mutex_unlock(&m->lock);
	/* Before `migrate` this makes the next migration pure postcopy. */
	atomic_store(&m->postcopy_requested, true);
	return 0;
}

int migration_cancel(struct migration *m, char *err, size_t errlen)
{
	pthread_mutex_lock(&m->lock);
	if (m->incoming || mig_status_finished(m->status)) {
		pthread_mutex_unlock(&m->lock);
		snprintf(err, errlen, "no outgoing migration is in progress");
		return -EINVAL;
	}
	if (m->status == MIG_STATUS_POSTCOPY_ACTIVE || m->status == MIG_STATUS_POSTCOPY_PAUSED) {
		pthread_mutex_unlock(&m->lock);
		snprintf(err, errlen, "the guest runs on the destination (%s): a postcopy migration "
			 "cannot be cancelled; migrate-pause breaks its connection, "
			 "migrate {\"resume\": true} resumes it", mig_status_name(m->status));
		return -EBUSY;
	}
	pthread_mutex_unlock(&m->lock);
	mig_set_status(m, MIG_STATUS_CANCELLING);
	mig_request_cancel(m);
	return 0;
}

/* ---- destination ---- */

struct mig_dst {
	struct migration *m;
	struct vmstate_vm vmsec;
	uint8_t src_boot_id[MIG_BOOT_ID_BYTES];
	struct mig_header header;
	bool have_vm;
	bool cpr_seen;               /* the stream's CPR record matched our token */
	/* postcopy */
	struct postcopy_dst *pd;
	struct stream rp;            /* return-path writes, under rp_lock */
	int rp_fd;
	bool rp_connected;           /* under rp_lock: false while postcopy is paused */
	struct stream req;           /* page requests back on the urgent channel, under
				      * rp_lock; usable while req_ready */
	bool req_ready;
	bool run_unconfirmed;        /* the guest ran but RUNNING could not be sent */
	pthread_mutex_t rp_lock;
	pthread_t urgent_thread;
	bool urgent_started;
	atomic_bool urgent_failed;
	uint64_t first_run_ns;
	_Atomic uint64_t run_at_ns;  /* when RUN was handled: RAM is under userfaultfd */
	uint64_t discard_ns, discard_pages; /* load thread: discarding since the last PING
					     * (the pre-discard's), for the log */
	uint64_t sections_ns;        /* load thread: time spent loading device state */
	atomic_bool closing;         /* mig_dst_finish runs: the urgent thread must go */
};

/* Each reader of RAM records: the load thread and the urgent thread. */
struct mig_dst_chan {
	struct mig_dst *d;
	uint8_t *bounce;             /* MIG_RUN_MAX_PAGES pages, for UFFDIO_COPY */
	struct stream *s;            /* the stream being read, for mig_dst_fill */
};

/* Postcopy minor mode: pages placed per piece of a RAM record (256 KiB). */
#define MIG_FILL_PAGES 64u

static int mig_dst_header(void *opaque, const struct mig_header *h, char *err, size_t errlen)
{
	struct mig_dst *d = ((struct mig_dst_chan *)opaque)->d;
	struct vm *vm = d->m->vm;

	memcpy(d->src_boot_id, h->boot_id, MIG_BOOT_ID_BYTES);
	d->header = *h;
	if (h->nvcpus != vm_nvcpus(vm)) {
		snprintf(err, errlen, "the source has %u vCPUs, this VM %u: start the destination "
			 "with --vcpus %u", h->nvcpus, vm_nvcpus(vm), h->nvcpus);
		return -EBADMSG;
	}
	if (h->nblocks != vm_ram_block_count(vm)) {
		snprintf(err, errlen, "the source has %u RAM blocks, this VM %zu", h->nblocks,
			 vm_ram_block_count(vm));
		return -EBADMSG;
	}
	for (uint32_t i = 0; i < h->nblocks; i++) {
		const struct mig_block_desc *b = &h->blocks[i];
		const struct ram_block *mine = vm_ram_block(vm, i);

		if (strcmp(b->name, mine->name) || b->gpa != mine->gpa || b->bytes != mine->bytes) {
			snprintf(err, errlen, "the source's RAM block %s is %" PRIu64 " MiB at %#" PRIx64
				 ", this VM's %s is %" PRIu64 " MiB at %#" PRIx64
				 ": start the destination with --mem %" PRIu64 "M",
				 b->name, b->bytes >> 20, b->gpa, mine->name, mine->bytes >> 20,
				 mine->gpa, b->bytes >> 20);
			return -EBADMSG;
		}
	}
	return 0;
}

/* postcopy_fill_fn: the next pages of the record, into guest memory or dropped. */
static int mig_dst_fill(void *opaque, uint8_t *dst, uint64_t npages)
{
	struct mig_dst_chan *c = opaque;

	stream_get_bytes(c->s, dst ? dst : c->bounce, npages * MIG_PAGE_BYTES);
	return stream_error(c->s);
}

/*
 * Postcopy in minor mode, a record of data pages: in pieces of
 * MIG_FILL_PAGES, read straight into guest memory when the piece is already
 * in the socket (the pages are claimed for the length of one copy), else
 * through the bounce buffer (claimed only once the piece is here).  0, or
 * an error (a stream error is left for the caller to report).
 */
static int mig_dst_ram_minor(struct mig_dst_chan *c, uint64_t first_page, uint32_t npages,
			     struct stream *s)
{
	struct postcopy_dst *pd = c->d->pd;

	c->s = s;
	for (uint32_t done = 0, k; done < npages; done += k) {
		size_t len;
		int r;

		k = npages - done < MIG_FILL_PAGES ? npages - done : MIG_FILL_PAGES;
		len = (size_t)k * MIG_PAGE_BYTES;
		if (stream_wait_ready(s, len)) {
			r = postcopy_dst_fill(pd, first_page + done, k, mig_dst_fill, c);
		} else {
			stream_get_bytes(s, c->bounce, len);
			if (stream_error(s))
				return stream_error(s);
			r = postcopy_dst_place(pd, first_page + done, k, c->bounce);
		}
		if (r)
			return r;
	}
	return 0;
}

static int mig_dst_ram(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages,
		       bool zero, struct stream *s, char *err, size_t errlen)
{
	struct mig_dst_chan *c = opaque;
	struct mig_dst *d = c->d;
	/* The header callback checked that the block matches ours. */
	struct ram_block *rb = vm_ram_block(d->m->vm, block);
	uint64_t off = first_page * MIG_PAGE_BYTES, len = (uint64_t)npages * MIG_PAGE_BYTES;
	int r;

	if (d->pd && atomic_load(&d->run_at_ns) && !zero && postcopy_dst_minor(d->pd)) {
		r = mig_dst_ram_minor(c, first_page, npages, s);
		if (r && !stream_error(s)) {
			snprintf(err, errlen, "placing pages %" PRIu64 "+%u failed: %s", first_page,
				 npages, strerror(-r));
			return r;
		}
	} else if (d->pd && atomic_load(&d->run_at_ns)) {
		/* Postcopy: guest RAM is under userfaultfd; place atomically. */
		if (!zero)
			stream_get_bytes(s, c->bounce, len);
		if (stream_error(s))
			return 0; /* the caller reports the stream error */
		r = postcopy_dst_place(d->pd, first_page, npages, zero ? NULL : c->bounce);
		if (r) {
			snprintf(err, errlen, "placing pages %" PRIu64 "+%u failed: %s", first_page,
				 npages, strerror(-r));
			return r;
		}
	} else if (zero) {
		/* Free and zero them: nothing is read, nothing allocated. */
		if (fallocate(rb->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)off, (off_t)len) < 0) {
			memset(rb->host + off, 0, len);
		}
		if (d->pd)
			postcopy_dst_mark_received(d->pd, first_page, npages);
	} else {
		stream_get_bytes(s, rb->host + off, len);
		if (d->pd)
			postcopy_dst_mark_received(d->pd, first_page, npages);
	}
	atomic_fetch_add(&d->m->transferred, zero ? 16 : 16 + len);
	return 0;
}

static int mig_dst_cpr(void *opaque, const uint8_t *token, char *err, size_t errlen)
{
	struct mig_dst *d = ((struct mig_dst_chan *)opaque)->d;
	struct migration *m = d->m;

	if (!m->cpr_incoming) {
		snprintf(err, errlen, "the source does a cpr-transfer live update: start this process "
			 "with --incoming-cpr unix:PATH as well");
		return -EBADMSG;
	}
	if (memcmp(token, m->cpr_token, MIG_CPR_TOKEN_BYTES)) {
		snprintf(err, errlen, "this stream belongs to another live update than the memory "
			 "received on the cpr channel");
		return -EBADMSG;
	}
	d->cpr_seen = true;
	return 0;
}

static int mig_dst_section(void *opaque, uint32_t id, uint32_t instance, uint32_t version,
			   const uint8_t *data, uint32_t len, char *err, size_t errlen)
{
	struct mig_dst *d = ((struct mig_dst_chan *)opaque)->d;

	if (d->m->cpr_incoming && !d->cpr_seen) {
		snprintf(err, errlen, "guest RAM came over the cpr channel, but this is a normal "
			 "migration stream: set mode cpr-transfer on the source");
		return -EBADMSG;
	}
	if (id == VMSTATE_SECTION_VM) {
		d->have_vm = true;
		return vmstate_vm_parse(data, len, version, &d->vmsec, err, errlen);
	}
	if (version != VMSTATE_CPU_VERSION) {
		snprintf(err, errlen, "cpu section version %u, this build reads %u", version,
			 VMSTATE_CPU_VERSION);
		return -EBADMSG;
	}
	{
		uint64_t t0 = clock_monotonic_ns();
		int r = vmstate_cpu_load(d->m->vm, instance, data, len, err, errlen);

		d->sections_ns += clock_monotonic_ns() - t0;
		return r;
	}
}

static int mig_dst_pass_end(void *opaque, uint32_t pass)
{
	struct mig_dst *d = ((struct mig_dst_chan *)opaque)->d;

	atomic_store(&d->m->passes, pass);
	return 0;
}

/* Fault thread: ask the source for a page on the return path. */
static int mig_dst_request(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages)
{
	struct mig_dst *d = opaque;
	int r = 0;

	/* While paused the request is only recorded (the requested bitmap): it
	 * is sent again when the migration resumes. */
	pthread_mutex_lock(&d->rp_lock);
	if (d->rp_connected) {
		/* The urgent connection when the source reads it: the main one's
		 * socket is held by the bulk stream's send and receive. */
		struct stream *to = d->req_ready ? &d->req : &d->rp;

		mig_rp_send_page_req(to, (uint8_t)block, first_page, npages);
		r = stream_error(to);
	}
	pthread_mutex_unlock(&d->rp_lock);
	return r;
}

/* Urgent thread: page requests may go back on connection @fd now. */
static void mig_dst_req_open(struct mig_dst *d, int fd)
{
	int dupfd = dup(fd);

	pthread_mutex_lock(&d->rp_lock);
	if (dupfd >= 0 && stream_init(&d->req, dupfd, MIG_IO_TIMEOUT_MS) == 0)
		d->req_ready = true;
	else if (dupfd >= 0)
		close(dupfd);
	pthread_mutex_unlock(&d->rp_lock);
	if (!d->req_ready)
		log_warn("postcopy: page requests stay on the return path (no memory)");
}

/* Urgent thread, ending: requests go back to the return path. */
static void mig_dst_req_close(struct mig_dst *d)
{
	pthread_mutex_lock(&d->rp_lock);
	if (d->req_ready) {
		int fd = d->req.fd;

		d->req_ready = false;
		stream_release(&d->req);
		close(fd);
	}
	pthread_mutex_unlock(&d->rp_lock);
}

/* Resume: repeat one outstanding request (the caller holds rp_lock). */
static int mig_dst_rerequest_locked(void *opaque, uint32_t block, uint64_t first_page,
				    uint32_t npages)
{
	struct mig_dst *d = opaque;

	mig_rp_send_page_req(&d->rp, (uint8_t)block, first_page, npages);
	return stream_error(&d->rp);
}

static void mig_dst_rp_running(struct mig_dst *d, uint64_t first_run_ns, bool same_clock,
			       uint64_t load_ns)
{
	pthread_mutex_lock(&d->rp_lock);
	mig_rp_send_running(&d->rp, first_run_ns, same_clock, load_ns);
	pthread_mutex_unlock(&d->rp_lock);
}

static void mig_dst_rp_error(struct mig_dst *d, int err, const char *text)
{
	pthread_mutex_lock(&d->rp_lock);
	if (d->rp_connected && !stream_error(&d->rp))
		mig_rp_send_error(&d->rp, err, text);
	pthread_mutex_unlock(&d->rp_lock);
}

/*
 * Urgent thread: its channel broke.  Before RUN that fails the migration;
 * after it, the main channel is cancelled too, so that the load thread
 * pauses the migration (postcopy recovery) rather than carrying on half
 * connected.
 */
static void mig_dst_urgent_broke(struct mig_dst *d, const char *why)
{
	struct migration *m = d->m;

	if (!atomic_load(&d->run_at_ns)) {
		mig_set_error(m, "postcopy: %s", why);
		return;
	}
	log_warn("postcopy urgent channel: %s", why);
	pthread_mutex_lock(&m->lock);
	if (m->stream)
		stream_cancel(m->stream);
	pthread_mutex_unlock(&m->lock);
}

/*
 * The urgent thread's scheduling: real-time while the destination's vCPUs
 * run at full priority (@rt, like the fault thread); while they run nicer,
 * the normal policy with a short slice, so that a requested page is placed
 * as soon as it lands rather than after the receive thread's or the push's
 * time slice (100 µs: the shortest the kernel takes).  Seventh session,
 * 1 GiB heavy pure on loopback, 3-way rounds of 8 (two batches), medians:
 * the short slice p50 57/58 µs, p99 186/166 µs, runs with a request over
 * 1 ms 2 of 16; real-time 94/82 µs, 465/309 µs, 2 of 16 (a real-time
 * wake-up crosses CPUs); the plain normal policy 60 µs, 155 µs, 3 of 8,
 * and 11 of 16 runs in an earlier A/B.
 * Kernels before 6.12 ignore the slice: plain normal policy there.
 */
#define MIG_URGENT_SLICE_NS 100000ull

static void mig_urgent_policy(bool rt)
{
	thread_set_latency_critical(rt);
	if (!rt && thread_set_short_slice(MIG_URGENT_SLICE_NS))
		log_debug("postcopy: the urgent thread keeps the default time slice");
}

/* Urgent thread: requested pages, straight into guest RAM. */
static void *mig_urgent_thread(void *arg)
{
	struct mig_dst *d = arg;
	struct migration *m = d->m;
	static const struct mig_load_ops ops = { .ram = mig_dst_ram };
	struct mig_dst_chan c = { .d = d, .bounce = malloc((size_t)MIG_RUN_MAX_PAGES * MIG_PAGE_BYTES) };
	struct stream s;
	char err[256];
	bool requests_here = false, rt;
	int fd, r;

	pthread_setname_np(pthread_self(), "pc-urgent");
	rt = atomic_load(&m->pagepath_rt);
	mig_urgent_policy(rt);
	fd = channel_accept(m->listen_fd, MIG_IO_TIMEOUT_MS, m->cancel_fd);
	if (fd < 0 || !c.bounce || stream_init(&s, fd, -1)) {
		if (fd != -ECANCELED) {
			snprintf(err, sizeof(err), "the source did not open the urgent channel (%s)",
				 strerror(fd < 0 ? -fd : ENOMEM));
			mig_dst_urgent_broke(d, err);
		}
		atomic_store(&d->urgent_failed, true);
		if (fd >= 0)
			close(fd);
		free(c.bounce);
		return NULL;
	}
	pthread_mutex_lock(&m->lock);
	m->urgent_stream = &s;
	m->urgent_conn_fd = fd;
	pthread_mutex_unlock(&m->lock);
	/* mig_dst_finish may have looked before we published the stream. */
	if (atomic_load(&d->closing))
		stream_cancel(&s);
	r = mig_load_urgent_magic(&s, &requests_here, err, sizeof(err));
	if (!r && requests_here)
		mig_dst_req_open(d, fd);
	while (!r) {
		r = mig_load_urgent_record(&s, &d->header, &ops, &c, err, sizeof(err));
		if (r == 1)
			r = 0;
		else if (r == 0)
			break; /* END */
		if (atomic_load(&m->pagepath_rt) != rt) {
			rt = !rt;
			mig_urgent_policy(rt);
		}
	}
	if (r && !atomic_load(&m->cancel) && !atomic_load(&d->closing)) {
		mig_dst_urgent_broke(d, err);
		atomic_store(&d->urgent_failed, true);
	}
	mig_dst_req_close(d);
	pthread_mutex_lock(&m->lock);
	m->urgent_stream = NULL;
	m->urgent_conn_fd = -1;
	pthread_mutex_unlock(&m->lock);
	stream_release(&s);
	close(fd);
	free(c.bounce);
	log_debug("postcopy: the urgent thread used %.1f ms of CPU", clock_thread_cpu_ns() / 1e6);
	return NULL;
}

static int mig_dst_advise(void *opaque, char *err, size_t errlen)
{
	struct mig_dst_chan *c = opaque;
	struct mig_dst *d = c->d;
	struct migration *m = d->m;
	int r;

	if (m->cpr_incoming) {
		snprintf(err, errlen, "postcopy into memory inherited over the cpr channel");
		return -EBADMSG;
	}
	pthread_mutex_lock(&m->lock);
	r = m->params.postcopy_ram;
	pthread_mutex_unlock(&m->lock);
	if (!r) {
		snprintf(err, errlen, "the source wants postcopy: enable the postcopy-ram capability "
			 "on the destination too");
		return -EBADMSG;
	}
	/* Normally done when the capability was set; if not, now. */
	r = mig_pc_prepare(m);
	if (!r)
		r = postcopy_dst_create(vm_ram_block(m->vm, 0), mig_dst_request, d, &m->pagepath_rt,
					&d->pd);
	if (r) {
		snprintf(err, errlen, "postcopy setup: %s", strerror(-r));
		return r;
	}
	d->urgent_started = pthread_create(&d->urgent_thread, NULL, mig_urgent_thread, d) == 0;
	if (!d->urgent_started) {
		snprintf(err, errlen, "cannot start the urgent-channel thread");
		return -EAGAIN;
	}
	return 0;
}

static int mig_dst_ping(void *opaque, uint32_t id)
{
	struct mig_dst *d = ((struct mig_dst_chan *)opaque)->d;
	int r = -EPIPE;

	d->discard_ns = d->discard_pages = 0; /* what follows is inside the pause */
	if (d->pd && !atomic_load(&d->run_at_ns)) {
		/*
		 * The source stops its guest once this is answered: finish
		 * preallocating now (its current step), or the switch would
		 * compete with it for the CPU and the address-space lock.  Pages
		 * not preallocated yet are allocated as they arrive.
		 */
		mig_prealloc_join(d->m);
	}
	pthread_mutex_lock(&d->rp_lock);
	if (d->rp_connected) {
		mig_rp_send_pong(&d->rp, id);
		r = stream_error(&d->rp);
	}
	pthread_mutex_unlock(&d->rp_lock);
	return r;
}

static int mig_dst_discard(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages)
{
	struct mig_dst_chan *c = opaque;

	uint64_t t0 = clock_monotonic_ns();
	int r;

	(void)block;
	r = postcopy_dst_discard(c->d->pd, first_page, npages);
	c->d->discard_ns += clock_monotonic_ns() - t0;
	c->d->discard_pages += npages;
	return r;
}

/* POSTCOPY_RUN: every page not here will fault; the guest runs now. */
static int mig_dst_run(void *opaque, char *err, size_t errlen)
{
	struct mig_dst_chan *c = opaque;
	struct mig_dst *d = c->d;
	struct migration *m = d->m;
	uint8_t boot_id[MIG_BOOT_ID_BYTES];
	uint64_t start = clock_monotonic_ns();
	bool same_clock;
	int r;

	if (!d->have_vm) {
		snprintf(err, errlen, "run without the vm section");
		return -EBADMSG;
	}
	/* Missing mode: preallocation would fill pages that must fault, so it
	 * stops here; minor mode: it goes on, through the alias. */
	if (!vm_ram_block(m->vm, 0)->alias)
		mig_prealloc_join(m);
	r = postcopy_dst_listen(d->pd);
	if (r) {
		snprintf(err, errlen, "cannot put guest RAM under userfaultfd: %s", strerror(-r));
		return r;
	}
	vm_set_ram_arriving(m->vm, true);
	mig_dst_vcpu_nice(m, true);
	log_debug("postcopy: listening after %.3f ms", (double)(clock_monotonic_ns() - start) / 1e6);
	d->run_at_ns = start;
	vm_guest_clock_set(m->vm, d->vmsec.guest_clock_ns);
	vm_moves_set(m->vm, d->vmsec.moves + 1);
	r = vm_incoming_finish(m->vm, d->vmsec.was_running, &d->first_run_ns);
	if (r) {
		snprintf(err, errlen, "cannot start the guest");
		return r;
	}
	if (!d->first_run_ns)
		d->first_run_ns = clock_monotonic_ns();
	mig_boot_id(boot_id);
	same_clock = !memcmp(boot_id, d->src_boot_id, MIG_BOOT_ID_BYTES);
	if (same_clock && d->vmsec.stop_ns && start > d->vmsec.stop_ns)
		log_debug("postcopy: pause: RUN arrived %.3f ms after the source stopped (%.3f ms "
			  "of it discarding %" PRIu64 " pages, %.3f ms loading device state), the "
			  "vCPUs run %.3f ms later", (double)(start - d->vmsec.stop_ns) / 1e6,
			  (double)d->discard_ns / 1e6, d->discard_pages, (double)d->sections_ns / 1e6,
			  (double)(d->first_run_ns - start) / 1e6);
	mig_dst_rp_running(d, d->first_run_ns, same_clock, d->first_run_ns - start);
	pthread_mutex_lock(&d->rp_lock);
	r = stream_error(&d->rp);
	pthread_mutex_unlock(&d->rp_lock);
	if (r) {
		/*
		 * The source may not know the guest runs here, and would then
		 * resume its own copy: this side must not continue (or pause).
		 */
		d->run_unconfirmed = true;
		snprintf(err, errlen, "cannot tell the source that the guest runs here: %s",
			 d->rp.errmsg);
		return r;
	}
	if (same_clock && d->vmsec.was_running && d->first_run_ns >= d->vmsec.stop_ns) {
		mig_set_downtime(m, d->first_run_ns - d->vmsec.stop_ns, true);
	}
	mig_set_status(m, MIG_STATUS_POSTCOPY_ACTIVE);
	log_info("postcopy: the guest runs here; %" PRIu64 " pages still to come",
		 postcopy_dst_missing(d->pd));
	return 0;
}

/* Tear down the destination's connections and postcopy state. */
/*
 * Stop the urgent thread (with d->closing set by the caller): wake its
 * accept or read, join.  @completed: the source ends the channel itself
 * (END after it read COMPLETE); wait for that first, so that it never sees
 * the channel close before COMPLETE arrives.
 */
static void mig_dst_stop_urgent(struct migration *m, struct mig_dst *d, bool completed)
{
	uint64_t one = 1;

	if (!d->urgent_started)
		return;
	if (completed) {
		struct timespec until;

		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += MIG_URGENT_CLOSE_MS / 1000;
		until.tv_nsec += (MIG_URGENT_CLOSE_MS % 1000) * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		if (pthread_timedjoin_np(d->urgent_thread, NULL, &until) == 0) {
			d->urgent_started = false;
			return;
		}
		log_warn("postcopy: the source did not end the urgent channel within %d ms",
			 MIG_URGENT_CLOSE_MS);
	}
	pthread_mutex_lock(&m->lock);
	if (m->urgent_stream)
		stream_cancel(m->urgent_stream);
	pthread_mutex_unlock(&m->lock);
	if (write(m->cancel_fd, &one, sizeof(one)) < 0)
		log_debug("migration: cancel eventfd: %s", strerror(errno));
	pthread_join(d->urgent_thread, NULL);
	d->urgent_started = false;
}

static void mig_dst_close_listener(struct migration *m)
{
	if (m->listen_fd >= 0) {
		close(m->listen_fd);
		m->listen_fd = -1;
		if (m->curi.kind == CHANNEL_UNIX)
			unlink(m->curi.path);
	}
}

static void mig_dst_finish(struct migration *m, struct mig_dst *d, struct stream *s, int fd,
			   struct mig_dst_chan *chan, bool completed)
{
	atomic_store(&d->closing, true);
	mig_dst_stop_urgent(m, d, completed);
	mig_publish_conns(m, -1, -1);
	if (d->pd) {
		struct postcopy_dst_stats stats;

		postcopy_dst_get_stats(d->pd, &stats);
		pthread_mutex_lock(&m->lock);
		m->pc_stats = stats;
		m->pc_stats_valid = true;
		pthread_mutex_unlock(&m->lock);
		postcopy_dst_destroy(d->pd);
		d->pd = NULL;
	}
	pthread_mutex_lock(&m->lock);
	m->stream = NULL;
	pthread_mutex_unlock(&m->lock);
	if (fd >= 0) {
		stream_release(s);
		close(fd);
	}
	if (d->rp_fd >= 0) {
		stream_release(&d->rp);
		close(d->rp_fd);
	}
	free(chan->bounce);
	mig_dst_close_listener(m);
	pthread_mutex_destroy(&d->rp_lock);
}

/* Drop the destination's broken connections; the listening socket stays. */
static void mig_dst_drop_conns(struct migration *m, struct mig_dst *d, struct stream *s, int *fdp)
{
	uint64_t v;

	atomic_store(&d->closing, true);
	mig_dst_stop_urgent(m, d, false);
	atomic_store(&d->closing, false);
	/* The accept-cancel eventfd was only for the urgent thread: drain it
	 * (migration_shutdown also sets m->closing, which is checked later). */
	while (read(m->cancel_fd, &v, sizeof(v)) > 0)
		;
	mig_publish_conns(m, -1, -1);
	pthread_mutex_lock(&d->rp_lock);
	d->rp_connected = false;
	if (d->rp_fd >= 0) {
		stream_release(&d->rp);
		close(d->rp_fd);
		d->rp_fd = -1;
	}
	pthread_mutex_unlock(&d->rp_lock);
	pthread_mutex_lock(&m->lock);
	m->stream = NULL;
	pthread_mutex_unlock(&m->lock);
	if (*fdp >= 0) {
		stream_release(s);
		close(*fdp);
		*fdp = -1;
	}
}

static bool mig_closing(struct migration *m)
{
	bool c;

	pthread_mutex_lock(&m->lock);
	c = m->closing;
	pthread_mutex_unlock(&m->lock);
	return c || atomic_load(&m->cancel);
}

/* Paused destination: wait for migrate-recover's listening socket.  0 or -ECANCELED. */
static int mig_dst_wait_recover(struct migration *m)
{
	pthread_mutex_lock(&m->lock);
	while (m->recover_fd < 0 && !m->closing)
		pthread_cond_wait(&m->cond, &m->lock);
	if (m->closing) {
		pthread_mutex_unlock(&m->lock);
		return -ECANCELED;
	}
	m->listen_fd = m->recover_fd;
	m->recover_fd = -1;
	m->curi = m->recover_curi;
	snprintf(m->uri, sizeof(m->uri), "%s", m->recover_uri);
	pthread_mutex_unlock(&m->lock);
	log_info("postcopy: waiting on %s for the source to resume", m->uri);
	return 0;
}

/*
 * Paused destination: accept the source's resumed main channel, check it,
 * answer with the RECEIVED bitmap and the outstanding page requests (under
 * rp_lock, so a request the fault thread sends meanwhile comes after them),
 * and start the urgent thread for the source's new urgent channel.  0, or
 * -errno with @why (-ECANCELED: the VMM is going).
 */
static int mig_dst_resume(struct migration *m, struct mig_dst *d, struct stream *s, int *fdp,
			  char *why, size_t whylen)
{
	uint64_t npages = postcopy_dst_npages(d->pd), outstanding = 0;
	uint8_t *bits = NULL;
	int fd, r;

	fd = channel_accept(m->listen_fd, -1, m->cancel_fd);
	if (fd < 0) {
		snprintf(why, whylen, "accepting the source's connection: %s", strerror(-fd));
		return fd;
	}
	if (stream_init(s, fd, MIG_IO_TIMEOUT_MS)) {
		close(fd);
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	*fdp = fd;
	pthread_mutex_lock(&m->lock);
	m->stream = s;
	pthread_mutex_unlock(&m->lock);
	mig_publish_conns(m, fd, -1);
	r = mig_load_resume_start(s, &d->header, why, whylen);
	if (r) {
		mig_rp_send_error(s, r, why); /* the source says why it cannot resume */
		return r;
	}
	bits = malloc((size_t)((npages + 7) / 8));
	d->rp_fd = dup(fd);
	if (!bits || d->rp_fd < 0 || stream_init(&d->rp, d->rp_fd, MIG_IO_TIMEOUT_MS)) {
		if (d->rp_fd >= 0)
			close(d->rp_fd);
		d->rp_fd = -1;
		free(bits);
		snprintf(why, whylen, "return path setup failed");
		return -ENOMEM;
	}
	atomic_store(&d->urgent_failed, false);
	d->urgent_started = pthread_create(&d->urgent_thread, NULL, mig_urgent_thread, d) == 0;
	pthread_mutex_lock(&d->rp_lock);
	postcopy_dst_received_bits(d->pd, bits);
	mig_rp_send_recv_bitmap(&d->rp, 0, npages, bits);
	if (!stream_error(&d->rp))
		outstanding = postcopy_dst_outstanding(d->pd, mig_dst_rerequest_locked, d);
	r = stream_error(&d->rp);
	d->rp_connected = !r;
	pthread_mutex_unlock(&d->rp_lock);
	free(bits);
	if (!d->urgent_started) {
		snprintf(why, whylen, "cannot start the urgent-channel thread");
		return -EAGAIN;
	}
	if (r) {
		snprintf(why, whylen, "sending the received bitmap: %s", d->rp.errmsg);
		return r;
	}
	log_info("postcopy: resumed; %" PRIu64 " pages missing, %" PRIu64 " requests repeated",
		 postcopy_dst_missing(d->pd), outstanding);
	return 0;
}

/*
 * The destination after POSTCOPY_RUN, with the main channel's outcome
 * @err (0: END seen): wait for the last requested pages and send COMPLETE;
 * when a channel breaks, pause (the guest keeps running here; its vCPUs
 * block only on missing pages) and resume on a new connection after
 * migrate-recover, as often as it takes.  0 complete, or -ECANCELED when
 * the VMM goes (m->error says why).
 */
/*
 * Test hook: whether VMFERRY_POSTCOPY_FAULT names @point.  Tests use it to
 * put the destination's steps in an order the network may produce.
 */
static bool mig_test_fault(const char *point)
{
	const char *want = getenv("VMFERRY_POSTCOPY_FAULT");

	if (!want || strcmp(want, point))
		return false;
	log_warn("VMFERRY_POSTCOPY_FAULT=%s", point);
	return true;
}

static int mig_dst_postcopy(struct migration *m, struct mig_dst *d, struct stream *s, int *fdp,
			    struct mig_dst_chan *chan, int err, char *errbuf, size_t errlen)
{
	static const struct mig_load_ops ops = { .ram = mig_dst_ram, .ping = mig_dst_ping };
	char reason[MIG_ERROR_BYTES + 64];

	for (;;) {
		if (!err) {
			/* END: requested pages may still be on the urgent channel. */
			for (int i = 0; i < MIG_RP_TIMEOUT_MS && postcopy_dst_missing(d->pd) &&
					!atomic_load(&d->urgent_failed) && !mig_closing(m); i++) {
				struct timespec ms = { 0, 1000000 };

				nanosleep(&ms, NULL);
			}
			if (!postcopy_dst_missing(d->pd)) {
				if (mig_test_fault("urgent-closed-first")) {
					/* As if COMPLETE were overtaken by the close. */
					atomic_store(&d->closing, true);
					mig_dst_stop_urgent(m, d, false);
				}
				pthread_mutex_lock(&d->rp_lock);
				mig_rp_send_complete(&d->rp);
				pthread_mutex_unlock(&d->rp_lock);
				return 0;
			}
			snprintf(errbuf, errlen, "%" PRIu64 " pages never arrived",
				 postcopy_dst_missing(d->pd));
			err = -EIO;
		}
		if (mig_closing(m))
			return -ECANCELED;
		pthread_mutex_lock(&m->lock);
		snprintf(reason, sizeof(reason), "%s", m->pause_requested ? "migrate-pause" : "");
		pthread_mutex_unlock(&m->lock);
		if (!reason[0])
			snprintf(reason, sizeof(reason), "the connection to the source broke (%.*s); "
				 "the guest keeps running here and waits for the %" PRIu64 " missing "
				 "pages: migrate-recover to resume (if the source is gone they are lost)",
				 (int)MIG_ERROR_BYTES / 2, errbuf, postcopy_dst_missing(d->pd));
		mig_dst_drop_conns(m, d, s, fdp);
		mig_dst_close_listener(m);
		mig_enter_paused(m, reason);
		if (mig_dst_wait_recover(m))
			return -ECANCELED;
		for (;;) {
			char why[MIG_ERROR_BYTES];
			int r = mig_dst_resume(m, d, s, fdp, why, sizeof(why));

			if (!r)
				break;
			if (r == -ECANCELED || mig_closing(m))
				return -ECANCELED;
			mig_dst_drop_conns(m, d, s, fdp);
			mig_replace_error(m, "postcopy paused: a resume attempt on %s failed: %s", m->uri,
					  why);
		}
		mig_leave_paused(m);
		do
			err = mig_load_resumed_record(s, &d->header, &ops, chan, errbuf, errlen);
		while (err == 1);
	}
}

static void *mig_incoming_thread(void *arg)
{
	struct migration *m = arg;
	struct vm *vm = m->vm;
	static const struct mig_load_ops ops = {
		.header = mig_dst_header,
		.ram = mig_dst_ram,
		.section = mig_dst_section,
		.pass_end = mig_dst_pass_end,
		.postcopy_advise = mig_dst_advise,
		.postcopy_discard = mig_dst_discard,
		.postcopy_run = mig_dst_run,
		.ping = mig_dst_ping,
		.cpr = mig_dst_cpr,
	};
	struct mig_dst d = { .m = m, .rp_fd = -1 };
	struct mig_dst_chan chan = { .d = &d };
	struct mig_load_stats st;
	struct stream s;
	char errbuf[MIG_ERROR_BYTES];
	uint8_t boot_id[MIG_BOOT_ID_BYTES];
	uint64_t first_run_ns = 0, end_ns;
	bool same_clock, ran = false;
	int fd, err;

	pthread_mutex_init(&d.rp_lock, NULL);
	fd = channel_accept(m->listen_fd, -1, m->cancel_fd);
	if (fd < 0) {
		if (fd != -ECANCELED)
			mig_set_error(m, "accepting the migration connection failed: %s", strerror(-fd));
		mig_finish_failed(m);
		pthread_mutex_destroy(&d.rp_lock);
		return NULL;
	}
	mig_set_time(m, &m->start_ns, clock_monotonic_ns());
	err = stream_init(&s, fd, MIG_IO_TIMEOUT_MS);
	d.rp_fd = dup(fd);
	if (err || d.rp_fd < 0 || stream_init(&d.rp, d.rp_fd, MIG_IO_TIMEOUT_MS)) {
		mig_set_error(m, "stream setup failed");
		if (!err)
			stream_release(&s);
		close(fd);
		if (d.rp_fd >= 0)
			close(d.rp_fd);
		d.rp_fd = -1;
		goto quit;
	}
	d.rp_connected = true;
	chan.bounce = malloc((size_t)MIG_RUN_MAX_PAGES * MIG_PAGE_BYTES);
	pthread_mutex_lock(&m->lock);
	m->stream = &s;
	pthread_mutex_unlock(&m->lock);
	mig_publish_conns(m, fd, -1);
	mig_set_status(m, MIG_STATUS_ACTIVE);

	err = chan.bounce ? mig_load(&s, &ops, &chan, &st, errbuf, sizeof(errbuf)) : -ENOMEM;
	if (!chan.bounce)
		snprintf(errbuf, sizeof(errbuf), "out of memory");
	end_ns = clock_monotonic_ns();
	ran = d.run_at_ns != 0;
	if (!err && !d.have_vm) {
		snprintf(errbuf, sizeof(errbuf), "no vm section");
		err = -EBADMSG;
	}
	atomic_store(&m->zero_pages, st.zero_pages);
	atomic_store(&m->normal_pages, st.data_pages);
	if (ran && !d.run_unconfirmed) {
		/* Postcopy: from here a broken channel pauses instead of failing. */
		err = mig_dst_postcopy(m, &d, &s, &fd, &chan, err, errbuf, sizeof(errbuf));
		if (!err)
			goto done;
		mig_set_error(m, "the VMM is shutting down during postcopy; pages that had not "
			      "arrived are lost");
		vm_request_exit(vm, 1);
		goto out;
	}
	if (err) {
		if (ran)
			mig_set_error(m, "postcopy failed after the guest started here: %s; the source "
				      "may not know it runs here, so it cannot continue", errbuf);
		else
			mig_set_error(m, "incoming migration failed: %s", errbuf);
		mig_dst_rp_error(&d, err, m->error);
		/* Stop the vCPUs before closing userfaultfd lets them see holes. */
		if (ran)
			vm_request_exit(vm, 1);
		goto out;
	}
	vm_guest_clock_set(vm, d.vmsec.guest_clock_ns);
	vm_moves_set(vm, d.vmsec.moves + 1);
	/* Not needed any more; it must not compete with the vCPUs. */
	atomic_store(&m->prealloc_stop, true);
	if (m->cpr_incoming)
		cpr_fault_point("before-run");
	err = vm_incoming_finish(vm, d.vmsec.was_running, &first_run_ns);
	if (err) {
		mig_set_error(m, "cannot start the guest after loading");
		mig_dst_rp_error(&d, err, m->error);
		goto out;
	}
	mig_boot_id(boot_id);
	same_clock = !memcmp(boot_id, d.src_boot_id, MIG_BOOT_ID_BYTES);
	if (!first_run_ns)
		first_run_ns = clock_monotonic_ns();
	mig_dst_rp_running(&d, first_run_ns, same_clock, first_run_ns - end_ns);
	if (same_clock && d.vmsec.was_running && first_run_ns >= d.vmsec.stop_ns) {
		mig_set_downtime(m, first_run_ns - d.vmsec.stop_ns, true);
	}
done:
	mig_set_time(m, &m->end_ns, clock_monotonic_ns());
	mig_dst_finish(m, &d, &s, fd, &chan, true);
	vm_set_ram_arriving(vm, false); /* every page is here (or it never was postcopy) */
	mig_dst_vcpu_nice(m, false);
	mig_set_status(m, MIG_STATUS_COMPLETED);
	log_info("incoming migration completed: %" PRIu64 " data pages, %" PRIu64
		 " zero pages, downtime %.3f ms", st.data_pages, st.zero_pages,
		 (double)m->downtime_ns / 1e6);
	log_debug("migration: the load thread used %.1f ms of CPU", clock_thread_cpu_ns() / 1e6);
	return NULL;
out:
	mig_dst_finish(m, &d, &s, fd, &chan, false);
	mig_dst_vcpu_nice(m, false);
quit:
	mig_finish_failed(m);
	/* Half-loaded RAM cannot be reused: the destination VMM ends here. */
	vm_request_exit(vm, 1);
	return NULL;
}

/*
 * Destination: fault in guest RAM ahead of the stream.  The guest's RAM is
 * committed to it anyway; paying for the page faults while waiting for the
 * source (instead of inside every recv) is what -mem-prealloc does in QEMU.
 */
static void *mig_prealloc_thread(void *arg)
{
	struct migration *m = arg;
	/*
	 * Small steps: each holds the address-space lock for reading, and the
	 * postcopy switch (registering userfaultfd) needs it for writing; a
	 * 2 MiB step costs it a millisecond or two, a larger one would land in
	 * the guest's pause.
	 */
	const uint64_t chunk = 2ull << 20;
	uint64_t t0 = clock_monotonic_ns();


	for (size_t b = 0; b < vm_ram_block_count(m->vm); b++) {
		struct ram_block *rb = vm_ram_block(m->vm, b);

		for (uint64_t off = 0; off < rb->bytes && !atomic_load(&m->prealloc_stop); off += chunk) {
			uint64_t n = rb->bytes - off < chunk ? rb->bytes - off : chunk;
			/* In postcopy's minor mode the guest's own mapping must show
			 * only received pages: allocate through the alias. */
			int r = rb->alias ? ram_block_populate_alias(rb, off, n)
					  : ram_block_populate(rb, off, n);

			if (r) {
				log_warn("migration: preallocating guest RAM failed (%s); pages will be "
					 "allocated as they arrive", strerror(-r));
				return NULL;
			}
			atomic_fetch_add(&m->prealloc_bytes, n);
		}
	}
	atomic_store(&m->prealloc_ns, clock_monotonic_ns() - t0);
	log_debug("migration: %" PRIu64 " MiB of guest RAM preallocated in %.1f ms",
		  atomic_load(&m->prealloc_bytes) >> 20, (double)(clock_monotonic_ns() - t0) / 1e6);
	return NULL;
}

static void mig_prealloc_join(struct migration *m)
{
	if (!m->prealloc_joinable)
		return;
	atomic_store(&m->prealloc_stop, true);
	pthread_join(m->prealloc_thread, NULL);
	m->prealloc_joinable = false;
}

/*
 * Destination, postcopy enabled, nothing arrived yet: get guest RAM ready
 * for userfaultfd.  Minor mode (the default where the kernel has it;
 * VMFERRY_POSTCOPY_UFFD=missing forces the older way, for comparison): keep
 * the memory, unmap it from the guest's view and go on preallocating it
 * through an alias mapping.  Missing mode: give it all back (punch).
 * Under m->lock from the control thread (capability set) or the main thread
 * (incoming start), or from the incoming thread (advise).
 */
static int mig_pc_prepare(struct migration *m)
{
	struct ram_block *rb = vm_ram_block(m->vm, 0);
	const char *how = getenv("VMFERRY_POSTCOPY_UFFD");
	bool restart = m->prealloc_joinable;
	int r;

	if (m->pc_prepared)
		return 0;
	mig_prealloc_join(m);
	if ((!how || strcmp(how, "missing")) && postcopy_minor_supported() &&
	    ram_block_map_alias(rb) == 0) {
		r = madvise(rb->host, rb->bytes, MADV_DONTNEED) < 0 ? -errno : 0;
		if (!r && restart) {
			atomic_store(&m->prealloc_stop, false);
			atomic_store(&m->prealloc_bytes, 0);
			m->prealloc_joinable =
				pthread_create(&m->prealloc_thread, NULL, mig_prealloc_thread, m) == 0;
		}
	} else {
		r = fallocate(rb->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
			      (off_t)rb->bytes) < 0 ? -errno : 0;
	}
	if (!r)
		m->pc_prepared = true;
	log_debug("postcopy: guest RAM prepared for %s mode%s", rb->alias ? "minor" : "missing",
		  r ? " (failed)" : "");
	return r;
}

/*
 * A destination still waiting for its stream, with postcopy-ram on: give its
 * preallocated RAM back now, while nothing has arrived, instead of inside
 * the switch-over.  Never over RAM inherited in a live update (missing mode
 * would punch the guest's memory out).  Under m->lock: the stream only
 * writes RAM once the status is active.
 */
static void mig_pc_prepare_waiting(struct migration *m)
{
	if (!m->incoming || m->cpr_incoming || m->status != MIG_STATUS_SETUP ||
	    !m->params.postcopy_ram || m->pc_prepared)
		return;
	if (mig_pc_prepare(m))
		log_warn("postcopy: preparing guest RAM failed; trying again at the switch");
}

void migration_incoming_set_cpr(struct migration *m, const uint8_t *token)
{
	m->cpr_incoming = true;
	memcpy(m->cpr_token, token, MIG_CPR_TOKEN_BYTES);
	m->params.mode = MIG_MODE_CPR_TRANSFER;
}

/* The address a listening socket really has (port 0 resolved) into @uri, for tcp. */
static void mig_listen_uri(int fd, const struct channel_uri *cu, char *uri, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[NI_MAXHOST], port[NI_MAXSERV];

	if (cu->kind != CHANNEL_TCP)
		return;
	/* Port 0 picks a free port; query-migrate shows the real one. */
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 &&
	    getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), port, sizeof(port),
			NI_NUMERICHOST | NI_NUMERICSERV) == 0)
		snprintf(uri, len, ss.ss_family == AF_INET6 ? "tcp:[%s]:%s" : "tcp:%s:%s", host, port);
}

int migration_recover(struct migration *m, const char *uri, char *err, size_t errlen)
{
	struct channel_uri cu;
	char real[sizeof(m->recover_uri)];
	int r, fd;

	if (!uri) {
		snprintf(err, errlen, "migrate-recover needs the address to listen on in \"uri\"");
		return -EINVAL;
	}
	r = channel_uri_parse(uri, &cu, err, errlen);
	if (r)
		return r;
	pthread_mutex_lock(&m->lock);
	if (!m->incoming || m->status != MIG_STATUS_POSTCOPY_PAUSED) {
		snprintf(err, errlen, "migrate-recover needs an incoming migration in postcopy-paused "
			 "(this one is %s%s)", m->incoming ? "" : "outgoing, ", mig_status_name(m->status));
		r = -EINVAL;
	} else if (m->recover_fd >= 0 || m->listen_fd >= 0) {
		snprintf(err, errlen, "already waiting for the source to resume on %s",
			 m->recover_fd >= 0 ? m->recover_uri : m->uri);
		r = -EBUSY;
	}
	pthread_mutex_unlock(&m->lock);
	if (r)
		return r;
	fd = channel_listen(&cu);
	if (fd < 0) {
		snprintf(err, errlen, "cannot listen on %s: %s", uri, strerror(-fd));
		return fd;
	}
	snprintf(real, sizeof(real), "%s", uri);
	mig_listen_uri(fd, &cu, real, sizeof(real));
	pthread_mutex_lock(&m->lock);
	if (m->status != MIG_STATUS_POSTCOPY_PAUSED || m->recover_fd >= 0 || m->listen_fd >= 0) {
		pthread_mutex_unlock(&m->lock); /* lost a race with shutdown or another recover */
		close(fd);
		snprintf(err, errlen, "the migration left postcopy-paused");
		return -EBUSY;
	}
	m->recover_fd = fd;
	m->recover_curi = cu;
	snprintf(m->recover_uri, sizeof(m->recover_uri), "%s", real);
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	log_info("migration: migrate-recover: listening on %s", real);
	return 0;
}

int migration_incoming_start(struct migration *m, const char *uri, bool prealloc,
			     char *err, size_t errlen)
{
	int r = channel_uri_parse(uri, &m->curi, err, errlen);

	if (r)
		return r;
	m->incoming = true;
	snprintf(m->uri, sizeof(m->uri), "%s", uri);
	m->listen_fd = channel_listen(&m->curi);
	if (m->listen_fd < 0) {
		r = m->listen_fd;
		m->listen_fd = -1;
		snprintf(err, errlen, "cannot listen on %s: %s", uri, strerror(-r));
		return r;
	}
	mig_listen_uri(m->listen_fd, &m->curi, m->uri, sizeof(m->uri));
	m->total_bytes = vm_ram_block(m->vm, 0)->bytes;
	mig_reset_stats(m);
	mig_set_status(m, MIG_STATUS_SETUP);
	log_info("waiting for an incoming migration on %s", m->uri);
	if (prealloc)
		m->prealloc_joinable =
			pthread_create(&m->prealloc_thread, NULL, mig_prealloc_thread, m) == 0;
	/* postcopy-ram set before (`run --postcopy`): as if it were set now. */
	pthread_mutex_lock(&m->lock);
	mig_pc_prepare_waiting(m);
	pthread_mutex_unlock(&m->lock);
	r = -pthread_create(&m->thread, NULL, mig_incoming_thread, m);
	if (r) {
		snprintf(err, errlen, "cannot start the incoming thread: %s", strerror(-r));
		return r;
	}
	m->thread_joinable = true;
	return 0;
}

/* ---- query ---- */

struct json_object *migration_query(struct migration *m)
{
	struct json_object *o = json_object_new_object();
	struct { /* what the lock protects, copied in one go */
		enum mig_status status;
		enum mig_mode mode;
		char error[MIG_ERROR_BYTES];
		char uri[sizeof(m->uri)];
		uint64_t start_ns, setup_ns, end_ns, downtime_ns, expected_downtime_ms;
		bool downtime_known, downtime_same_clock, pc_stats_valid;
		struct postcopy_dst_stats pc_stats;
	} snap;
	const char *error = snap.error;
	uint64_t now = clock_monotonic_ns(), total_ns;
	unsigned throttle = vm_get_throttle(m->vm);

	pthread_mutex_lock(&m->lock);
	snap.status = m->status;
	snap.mode = m->params.mode;
	memcpy(snap.error, m->error, sizeof(snap.error));
	memcpy(snap.uri, m->uri, sizeof(snap.uri));
	snap.start_ns = m->start_ns;
	snap.setup_ns = m->setup_ns;
	snap.end_ns = m->end_ns;
	snap.downtime_ns = m->downtime_ns;
	snap.downtime_known = m->downtime_known;
	snap.downtime_same_clock = m->downtime_same_clock;
	snap.expected_downtime_ms = m->expected_downtime_ms;
	snap.pc_stats = m->pc_stats;
	snap.pc_stats_valid = m->pc_stats_valid;
	pthread_mutex_unlock(&m->lock);

	json_object_object_add(o, "status", json_object_new_string(mig_status_name(snap.status)));
	if (snap.status == MIG_STATUS_NONE)
		return o;
	json_object_object_add(o, "role", json_object_new_string(m->incoming ? "destination" : "source"));
	json_object_object_add(o, "mode", json_object_new_string(mig_mode_name(snap.mode)));
	json_object_object_add(o, "uri", json_object_new_string(snap.uri));
	json_object_object_add(o, "cpu-throttle-max", json_object_new_int((int)atomic_load(&m->throttle_max)));
	total_ns = snap.start_ns ? (snap.end_ns ? snap.end_ns : now) - snap.start_ns : 0;
	json_object_object_add(o, "total-time", json_object_new_double((double)total_ns / 1e6));
	json_object_object_add(o, "setup-time", json_object_new_double((double)snap.setup_ns / 1e6));
	if (snap.downtime_known) {
		json_object_object_add(o, "downtime", json_object_new_double((double)snap.downtime_ns / 1e6));
		json_object_object_add(o, "downtime-measured",
				       json_object_new_string(snap.downtime_same_clock
							      ? "source-vcpu-stop-to-destination-vcpu-run"
							      : "source-vcpu-stop-to-running-ack"));
	}
	if (!m->incoming)
		json_object_object_add(o, "expected-downtime",
				       json_object_new_uint64(snap.expected_downtime_ms));
	json_object_object_add(o, "transferred", json_object_new_uint64(atomic_load(&m->transferred)));
	json_object_object_add(o, "remaining", json_object_new_uint64(atomic_load(&m->remaining_bytes)));
	json_object_object_add(o, "total", json_object_new_uint64(m->total_bytes));
	json_object_object_add(o, "zero-pages", json_object_new_uint64(atomic_load(&m->zero_pages)));
	json_object_object_add(o, "normal-pages", json_object_new_uint64(atomic_load(&m->normal_pages)));
	json_object_object_add(o, "passes", json_object_new_uint64(atomic_load(&m->passes)));
	json_object_object_add(o, "dirty-sync-count", json_object_new_uint64(atomic_load(&m->dirty_sync_count)));
	json_object_object_add(o, "dirty-pages-rate", json_object_new_uint64(atomic_load(&m->dirty_pages_rate)));
	json_object_object_add(o, "throughput", json_object_new_uint64(atomic_load(&m->throughput_bps)));
	json_object_object_add(o, "cpu-throttle-percentage", json_object_new_int((int)throttle));
	/* Source: live while postcopy runs, kept at the end. */
	if (!m->incoming && (snap.status == MIG_STATUS_POSTCOPY_ACTIVE ||
			     snap.status == MIG_STATUS_POSTCOPY_PAUSED ||
			     atomic_load(&m->pages_pushed) || atomic_load(&m->pages_requested))) {
		json_object_object_add(o, "postcopy-requests", json_object_new_uint64(atomic_load(&m->postcopy_requests)));
		json_object_object_add(o, "postcopy-pages-pushed", json_object_new_uint64(atomic_load(&m->pages_pushed)));
		json_object_object_add(o, "postcopy-pages-requested", json_object_new_uint64(atomic_load(&m->pages_requested)));
		json_object_object_add(o, "postcopy-pages-resent", json_object_new_uint64(atomic_load(&m->pages_resent)));
	}
	if (m->incoming && atomic_load(&m->pc_prepared))
		json_object_object_add(o, "postcopy-uffd-mode",
				       json_object_new_string(vm_ram_block(m->vm, 0)->alias ? "minor"
											: "missing"));
	if (m->incoming && snap.pc_stats_valid) {
		json_object_object_add(o, "postcopy-requests", json_object_new_uint64(snap.pc_stats.requests));
		json_object_object_add(o, "postcopy-faults", json_object_new_uint64(snap.pc_stats.faults));
		json_object_object_add(o, "fault-latency-p50-us", json_object_new_double((double)snap.pc_stats.latency_p50_ns / 1e3));
		json_object_object_add(o, "fault-latency-p99-us", json_object_new_double((double)snap.pc_stats.latency_p99_ns / 1e3));
		json_object_object_add(o, "fault-latency-max-us", json_object_new_double((double)snap.pc_stats.latency_max_ns / 1e3));
		json_object_object_add(o, "vcpu-blocked-time", json_object_new_double((double)snap.pc_stats.blocked_ns / 1e6));
	}
	if (m->incoming || atomic_load(&m->prealloc_bytes)) {
		json_object_object_add(o, "prealloc-bytes", json_object_new_uint64(atomic_load(&m->prealloc_bytes)));
		json_object_object_add(o, "prealloc-time",
				       json_object_new_double((double)atomic_load(&m->prealloc_ns) / 1e6));
	}
	if (atomic_load(&m->postcopy_pauses)) {
		json_object_object_add(o, "postcopy-pauses",
				       json_object_new_uint64(atomic_load(&m->postcopy_pauses)));
		if (!m->incoming)
			json_object_object_add(o, "postcopy-resume-failures",
					       json_object_new_uint64(atomic_load(&m->resume_failures)));
	}
	if (error[0])
		json_object_object_add(o, "error-desc", json_object_new_string(error));
	return o;
}

/* ---- control commands ---- */

/*
 * migrate {"uri": URI} or {"channels": [{"type": "main", "uri": URI},
 * {"type": "cpr", "uri": "unix:PATH"}]}: the main channel's and the cpr
 * channel's (NULL) URIs.  Borrowed from @args.
 */
static int mig_parse_channels(struct json_object *args, const char **main_uri,
			      const char **cpr_uri, char *err, size_t errlen)
{
	struct json_object *uri = NULL, *chans = NULL;
	bool has_uri = json_object_object_get_ex(args, "uri", &uri);
	bool has_chans = json_object_object_get_ex(args, "channels", &chans);
	size_t n;

	*main_uri = *cpr_uri = NULL;
	if (has_uri == has_chans) {
		snprintf(err, errlen, "give either \"uri\" or \"channels\"");
		return -EINVAL;
	}
	if (has_uri) {
		*main_uri = json_object_get_string(uri);
		return 0;
	}
	n = json_object_array_length(chans);
	for (size_t i = 0; i < n; i++) {
		struct json_object *c = json_object_array_get_idx(chans, i), *type, *u;
		const char *t;

		if (!json_object_is_type(c, json_type_object) ||
		    !json_object_object_get_ex(c, "type", &type) ||
		    !json_object_is_type(type, json_type_string) ||
		    !json_object_object_get_ex(c, "uri", &u) ||
		    !json_object_is_type(u, json_type_string) || json_object_object_length(c) != 2) {
			snprintf(err, errlen, "channels[%zu] must be {\"type\": \"main\"|\"cpr\", "
				 "\"uri\": URI}", i);
			return -EINVAL;
		}
		t = json_object_get_string(type);
		if (strcmp(t, "main") && strcmp(t, "cpr")) {
			snprintf(err, errlen, "channels[%zu]: unknown type '%s' (main or cpr)", i, t);
			return -EINVAL;
		}
		if (*(!strcmp(t, "main") ? main_uri : cpr_uri)) {
			snprintf(err, errlen, "channels: more than one '%s' channel", t);
			return -EINVAL;
		}
		*(!strcmp(t, "main") ? main_uri : cpr_uri) = json_object_get_string(u);
	}
	if (!*main_uri) {
		snprintf(err, errlen, "channels: no 'main' channel");
		return -EINVAL;
	}
	return 0;
}

static int mig_cmd_migrate(void *opaque, struct json_object *args, struct json_object **ret,
			   char *err, size_t errlen)
{
	struct migration *m = opaque;
	const char *uri, *cpr_uri;
	struct json_object *resume;
	int r;

	(void)ret;
	r = mig_parse_channels(args, &uri, &cpr_uri, err, errlen);
	if (r)
		return r;
	if (json_object_object_get_ex(args, "resume", &resume) && json_object_get_boolean(resume)) {
		if (cpr_uri) {
			snprintf(err, errlen, "resume continues a postcopy migration: it takes no cpr "
				 "channel");
			return -EINVAL;
		}
		return migration_resume(m, uri, err, errlen);
	}
	return migration_start_channels(m, uri, cpr_uri, err, errlen);
}

static int mig_cmd_cancel(void *opaque, struct json_object *args, struct json_object **ret,
			  char *err, size_t errlen)
{
	(void)args; (void)ret;
	return migration_cancel(opaque, err, errlen);
}

static int mig_cmd_query(void *opaque, struct json_object *args, struct json_object **ret,
			 char *err, size_t errlen)
{
	(void)args; (void)err; (void)errlen;
	*ret = migration_query(opaque);
	return 0;
}

/* A non-negative integer argument within [min, max]; absent is fine. */
static int mig_arg_u64(struct json_object *args, const char *name, uint64_t min, uint64_t max,
		       uint64_t *out, bool *given, char *err, size_t errlen)
{
	struct json_object *v;
	int64_t x;

	*given = json_object_object_get_ex(args, name, &v);
	if (!*given)
		return 0;
	x = json_object_get_int64(v);
	if (x < 0 || (uint64_t)x < min || (uint64_t)x > max) {
		snprintf(err, errlen, "%s must be in %" PRIu64 "..%" PRIu64, name, min, max);
		return -EINVAL;
	}
	*out = (uint64_t)x;
	return 0;
}

static int mig_cmd_set_parameters(void *opaque, struct json_object *args,
				  struct json_object **ret, char *err, size_t errlen)
{
	struct migration *m = opaque;
	uint64_t dl = 0, bw = 0, ct = 0, pa = 0, vn = 0;
	bool g_dl, g_bw, g_ct, g_pa, g_vn;
	struct json_object *mode_arg;
	enum mig_mode mode = 0;
	int r;

	(void)ret;
	/* Validate everything before changing anything. */
	r = mig_arg_u64(args, "downtime-limit", 1, 2000000, &dl, &g_dl, err, errlen);
	if (!r)
		r = mig_arg_u64(args, "max-bandwidth", 0, INT64_MAX, &bw, &g_bw, err, errlen);
	if (!r)
		r = mig_arg_u64(args, "convergence-timeout", 0, 86400, &ct, &g_ct, err, errlen);
	if (!r)
		r = mig_arg_u64(args, "postcopy-after-passes", 0, 1000000, &pa, &g_pa, err, errlen);
	if (!r)
		r = mig_arg_u64(args, "postcopy-vcpu-nice", 0, VM_VCPU_NICE_IDLE, &vn, &g_vn, err, errlen);
	if (r)
		return r;
	if (json_object_object_get_ex(args, "mode", &mode_arg)) {
		const char *name = json_object_get_string(mode_arg);

		for (enum mig_mode i = MIG_MODE_NORMAL; i <= MIG_MODE_CPR_TRANSFER; i++)
			if (!strcmp(name, mig_mode_name(i)))
				mode = i;
		if (!mode) {
			snprintf(err, errlen, "mode must be normal or cpr-transfer");
			return -EINVAL;
		}
	}
	pthread_mutex_lock(&m->lock);
	if (mode && !mig_status_finished(m->status) &&
	    !(m->incoming && m->status == MIG_STATUS_SETUP)) {
		pthread_mutex_unlock(&m->lock);
		snprintf(err, errlen, "mode cannot change during a migration");
		return -EBUSY;
	}
	if (mode)
		m->params.mode = mode;
	if (g_dl)
		m->params.downtime_limit_ms = dl;
	if (g_bw)
		m->params.max_bandwidth = bw;
	if (g_ct)
		m->params.convergence_timeout_s = ct;
	if (g_pa)
		m->params.postcopy_after_passes = pa;
	if (g_vn) /* takes effect at the next switch or resume */
		m->params.postcopy_vcpu_nice = vn;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static int mig_cmd_query_parameters(void *opaque, struct json_object *args,
				    struct json_object **ret, char *err, size_t errlen)
{
	struct migration *m = opaque;
	struct json_object *o = json_object_new_object();

	(void)args; (void)err; (void)errlen;
	pthread_mutex_lock(&m->lock);
	json_object_object_add(o, "mode", json_object_new_string(mig_mode_name(m->params.mode)));
	json_object_object_add(o, "downtime-limit", json_object_new_uint64(m->params.downtime_limit_ms));
	json_object_object_add(o, "max-bandwidth", json_object_new_uint64(m->params.max_bandwidth));
	json_object_object_add(o, "convergence-timeout",
			       json_object_new_uint64(m->params.convergence_timeout_s));
	json_object_object_add(o, "postcopy-after-passes",
			       json_object_new_uint64(m->params.postcopy_after_passes));
	json_object_object_add(o, "postcopy-vcpu-nice",
			       json_object_new_uint64(m->params.postcopy_vcpu_nice));
	pthread_mutex_unlock(&m->lock);
	*ret = o;
	return 0;
}

int migration_set_postcopy_vcpu_nice(struct migration *m, unsigned nice)
{
	if (nice > VM_VCPU_NICE_IDLE)
		return -EINVAL;
	pthread_mutex_lock(&m->lock);
	m->params.postcopy_vcpu_nice = nice;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

int migration_set_capabilities(struct migration *m, const struct mig_caps_update *u,
			       char *err, size_t errlen)
{
	pthread_mutex_lock(&m->lock);
	/* A destination still waiting for its stream may change them. */
	if (!mig_status_finished(m->status) && !(m->incoming && m->status == MIG_STATUS_SETUP)) {
		pthread_mutex_unlock(&m->lock);
		snprintf(err, errlen, "capabilities cannot change during a migration");
		return -EBUSY;
	}
	if (u->auto_converge >= 0)
		m->params.auto_converge = u->auto_converge;
	if (u->postcopy_ram >= 0)
		m->params.postcopy_ram = u->postcopy_ram;
	if (u->postcopy_preempt >= 0)
		m->params.postcopy_preempt = u->postcopy_preempt;
	mig_pc_prepare_waiting(m);
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static int mig_cmd_set_capabilities(void *opaque, struct json_object *args,
				    struct json_object **ret, char *err, size_t errlen)
{
	struct mig_caps_update u = { .auto_converge = -1, .postcopy_ram = -1,
				     .postcopy_preempt = -1 };
	struct json_object *caps;
	size_t n;

	(void)ret;
	json_object_object_get_ex(args, "capabilities", &caps);
	n = json_object_array_length(caps);
	for (size_t i = 0; i < n; i++) {
		struct json_object *c = json_object_array_get_idx(caps, i), *name, *state;

		if (!json_object_is_type(c, json_type_object) ||
		    !json_object_object_get_ex(c, "capability", &name) ||
		    !json_object_is_type(name, json_type_string) ||
		    !json_object_object_get_ex(c, "state", &state) ||
		    !json_object_is_type(state, json_type_boolean) ||
		    json_object_object_length(c) != 2) {
			snprintf(err, errlen, "capabilities[%zu] must be {\"capability\": NAME, \"state\": BOOL}", i);
			return -EINVAL;
		}
		if (!strcmp(json_object_get_string(name), "auto-converge")) {
			u.auto_converge = json_object_get_boolean(state);
		} else if (!strcmp(json_object_get_string(name), "postcopy-ram")) {
			u.postcopy_ram = json_object_get_boolean(state);
		} else if (!strcmp(json_object_get_string(name), "postcopy-preempt")) {
			u.postcopy_preempt = json_object_get_boolean(state);
		} else {
			snprintf(err, errlen, "unknown capability '%s' (known: auto-converge, postcopy-ram, "
				 "postcopy-preempt)",
				 json_object_get_string(name));
			return -EINVAL;
		}
	}
	return migration_set_capabilities(opaque, &u, err, errlen);
}

static int mig_cmd_query_capabilities(void *opaque, struct json_object *args,
				      struct json_object **ret, char *err, size_t errlen)
{
	struct migration *m = opaque;
	struct json_object *arr = json_object_new_array(), *c = json_object_new_object();

	(void)args; (void)err; (void)errlen;
	json_object_object_add(c, "capability", json_object_new_string("auto-converge"));
	pthread_mutex_lock(&m->lock);
	json_object_object_add(c, "state", json_object_new_boolean(m->params.auto_converge));
	pthread_mutex_unlock(&m->lock);
	json_object_array_add(arr, c);
	c = json_object_new_object();
	json_object_object_add(c, "capability", json_object_new_string("postcopy-ram"));
	pthread_mutex_lock(&m->lock);
	json_object_object_add(c, "state", json_object_new_boolean(m->params.postcopy_ram));
	pthread_mutex_unlock(&m->lock);
	json_object_array_add(arr, c);
	c = json_object_new_object();
	json_object_object_add(c, "capability", json_object_new_string("postcopy-preempt"));
	pthread_mutex_lock(&m->lock);
	json_object_object_add(c, "state", json_object_new_boolean(m->params.postcopy_preempt));
	pthread_mutex_unlock(&m->lock);
	json_object_array_add(arr, c);
	*ret = arr;
	return 0;
}

static int mig_cmd_start_postcopy(void *opaque, struct json_object *args,
				  struct json_object **ret, char *err, size_t errlen)
{
	(void)args; (void)ret;
	return migration_start_postcopy(opaque, err, errlen);
}

static int mig_cmd_pause(void *opaque, struct json_object *args, struct json_object **ret,
			 char *err, size_t errlen)
{
	(void)args; (void)ret;
	return migration_pause(opaque, err, errlen);
}

static int mig_cmd_recover(void *opaque, struct json_object *args, struct json_object **ret,
			   char *err, size_t errlen)
{
	struct migration *m = opaque;
	struct json_object *uri;
	int r;

	json_object_object_get_ex(args, "uri", &uri);
	r = migration_recover(m, json_object_get_string(uri), err, errlen);
	if (!r) {
		/* The address really listened on (port 0 resolved). */
		*ret = json_object_new_object();
		pthread_mutex_lock(&m->lock);
		json_object_object_add(*ret, "uri", json_object_new_string(m->recover_fd >= 0
									  ? m->recover_uri : m->uri));
		pthread_mutex_unlock(&m->lock);
	}
	return r;
}

int migration_register_commands(struct migration *m, struct control_server *srv)
{
	static const struct control_arg_spec migrate_args[] = {
		{ "uri", CONTROL_ARG_STRING, false },
		{ "channels", CONTROL_ARG_ARRAY, false },
		{ "resume", CONTROL_ARG_BOOL, false },
		{ NULL, 0, false },
	};
	static const struct control_arg_spec recover_args[] = {
		{ "uri", CONTROL_ARG_STRING, true },
		{ NULL, 0, false },
	};
	static const struct control_arg_spec param_args[] = {
		{ "downtime-limit", CONTROL_ARG_INT, false },
		{ "max-bandwidth", CONTROL_ARG_INT, false },
		{ "convergence-timeout", CONTROL_ARG_INT, false },
		{ "postcopy-after-passes", CONTROL_ARG_INT, false },
		{ "postcopy-vcpu-nice", CONTROL_ARG_INT, false },
		{ "mode", CONTROL_ARG_STRING, false },
		{ NULL, 0, false },
	};
	static const struct control_arg_spec cap_args[] = {
		{ "capabilities", CONTROL_ARG_ARRAY, true },
		{ NULL, 0, false },
	};
	const struct control_command cmds[] = {
		{ .name = "migrate", .fn = mig_cmd_migrate, .opaque = m, .args = migrate_args },
		{ .name = "migrate-cancel", .fn = mig_cmd_cancel, .opaque = m },
		{ .name = "query-migrate", .fn = mig_cmd_query, .opaque = m },
		{ .name = "migrate-set-parameters", .fn = mig_cmd_set_parameters, .opaque = m,
		  .args = param_args },
		{ .name = "query-migrate-parameters", .fn = mig_cmd_query_parameters, .opaque = m },
		{ .name = "migrate-set-capabilities", .fn = mig_cmd_set_capabilities, .opaque = m,
		  .args = cap_args },
		{ .name = "query-migrate-capabilities", .fn = mig_cmd_query_capabilities, .opaque = m },
		{ .name = "migrate-start-postcopy", .fn = mig_cmd_start_postcopy, .opaque = m },
		{ .name = "migrate-pause", .fn = mig_cmd_pause, .opaque = m },
		{ .name = "migrate-recover", .fn = mig_cmd_recover, .opaque = m, .args = recover_args },
	};

	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		int r = control_server_register(srv, &cmds[i]);

		if (r)
			return r;
	}
	return 0;
}
