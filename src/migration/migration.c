/*
 * The migration object: its status table, the helpers the source and
 * destination phases share, and the public API (start, cancel, pause,
 * resume, recover, incoming).  The phases themselves are in source*.c,
 * destination.c and cpr.c (docs/architecture.md).
 */
#include "migration/internal.h"

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

/*
 * A duration in ms from the environment variable @name (100..3600000, for
 * tests that cannot wait for the real bound), else @dflt.
 */
int mig_env_ms(const char *name, int dflt)
{
	const char *v = getenv(name);
	char *end;
	long ms;

	if (!v || !*v)
		return dflt;
	ms = strtol(v, &end, 10);
	return *end || ms < 100 || ms > 3600000 ? dflt : (int)ms;
}

int mig_io_timeout_ms(void)
{
	return mig_env_ms("VMFERRY_IO_TIMEOUT_MS", MIG_IO_TIMEOUT_DEFAULT_MS);
}

const char *mig_mode_name(enum mig_mode mode)
{
	return mode == MIG_MODE_CPR_TRANSFER ? "cpr-transfer" : "normal";
}

bool mig_status_finished(enum mig_status s)
{
	return s == MIG_STATUS_NONE || s == MIG_STATUS_COMPLETED || s == MIG_STATUS_FAILED ||
	       s == MIG_STATUS_CANCELLED;
}

void mig_emit(struct migration *m, const char *event, struct json_object *data)
{
	if (m->event_fn)
		m->event_fn(m->event_opaque, event, data);
	json_object_put(data);
}

/* Move to @to if the table allows it; emits MIGRATION.  Returns true if moved. */
bool mig_set_status(struct migration *m, enum mig_status to)
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
void mig_set_error(struct migration *m, const char *fmt, ...)
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
void mig_replace_error(struct migration *m, const char *fmt, ...)
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
void mig_set_time(struct migration *m, uint64_t *field, uint64_t value)
{
	pthread_mutex_lock(&m->lock);
	*field = value;
	pthread_mutex_unlock(&m->lock);
}

void mig_end_main_channel(struct migration *m, struct stream *s, int fd)
{
	mig_set_time(m, &m->end_ns, clock_monotonic_ns());
	pthread_mutex_lock(&m->lock);
	m->stream = NULL;
	pthread_mutex_unlock(&m->lock);
	if (fd >= 0) {
		stream_release(s);
		close(fd);
	}
}

/* Record the measured downtime and which clocks measured it. */
void mig_set_downtime(struct migration *m, uint64_t downtime_ns, bool same_clock)
{
	pthread_mutex_lock(&m->lock);
	m->downtime_ns = downtime_ns;
	m->downtime_same_clock = same_clock;
	m->downtime_known = true;
	pthread_mutex_unlock(&m->lock);
}

/*
 * Fit a source's breakdown to its pause, from @stop_ns to @end_ns (the
 * destination's first vCPU run, or RUNNING's arrival): the phases ran one
 * after the other (vCPU stop, discards, each state, send), each is cut
 * where the pause ended (a thread descheduled after handing END to the
 * kernel must not count time the guest already ran), and the destination's
 * part is what is left.  The parts then add up to the pause.
 */
void mig_breakdown_fit(struct mig_breakdown *bd, uint64_t stop_ns, uint64_t end_ns)
{
	uint64_t *parts[3 + MIG_STATE_MAX], t = stop_ns;
	unsigned n = 0;

	parts[n++] = &bd->vcpu_stop_ns;
	parts[n++] = &bd->discard_ns;
	for (unsigned i = 0; i < MIG_STATE_MAX; i++)
		parts[n++] = &bd->state_ns[i];
	parts[n++] = &bd->send_ns;
	for (unsigned i = 0; i < n; i++) {
		uint64_t left = end_ns > t ? end_ns - t : 0;

		if (*parts[i] > left)
			*parts[i] = left;
		t += *parts[i];
	}
	bd->wait_ns = end_ns > t ? end_ns - t : 0;
}

/* Publish where the pause went. */
void mig_set_breakdown(struct migration *m, const struct mig_breakdown *bd)
{
	pthread_mutex_lock(&m->lock);
	m->bd = *bd;
	m->bd.valid = true;
	pthread_mutex_unlock(&m->lock);
}

/* Publish the connections migrate-pause may shut down (-1: none). */
void mig_publish_conns(struct migration *m, int conn_fd, int urgent_fd)
{
	pthread_mutex_lock(&m->lock);
	m->conn_fd = conn_fd;
	m->urgent_conn_fd = urgent_fd;
	pthread_mutex_unlock(&m->lock);
}

/*
 * Postcopy destination: lower the vCPUs' priority by postcopy-vcpu-nice
 * (default 20, the SCHED_IDLE policy: see MIG_POSTCOPY_VCPU_NICE_DEFAULT)
 * while the background stream brings pages (@on), or put it back.  Where
 * vCPUs share cores with the migration threads, a vCPU that spins on the
 * pages it has takes the CPU the stream needs to bring the rest, and every
 * page it then faults on costs a request that needs more CPU than the page
 * in the stream: the whole guest is back at full speed sooner this way.
 * Where they do not share cores, it changes nothing.
 */
void mig_dst_vcpu_nice(struct migration *m, bool on)
{
	int nice = 0, r;

	if (on) {
		pthread_mutex_lock(&m->lock);
		nice = (int)m->params.postcopy_vcpu_nice;
		pthread_mutex_unlock(&m->lock);
	}
	r = vm_set_vcpu_nice(m->vm, nice);
	atomic_store(&m->pagepath_rt, !(nice > 0 && r == 0));
	mig_dst_pagepath_policy_changed(m);
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
void mig_enter_paused(struct migration *m, const char *reason)
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
void mig_leave_paused(struct migration *m)
{
	pthread_mutex_lock(&m->lock);
	m->error[0] = 0;
	pthread_mutex_unlock(&m->lock);
	if (m->incoming)
		mig_dst_vcpu_nice(m, true);
	mig_set_status(m, MIG_STATUS_POSTCOPY_ACTIVE);
	log_info("migration: postcopy resumed");
}

/*
 * A postcopy pause that was not asked for (@deliberate: migrate-pause):
 * until when both sides recover on their own (postcopy-recover-timeout),
 * as CLOCK_MONOTONIC ns; 0 when by hand.
 */
uint64_t mig_auto_recover_deadline(struct migration *m, bool deliberate)
{
	uint64_t s;

	pthread_mutex_lock(&m->lock);
	s = m->params.postcopy_recover_timeout_s;
	pthread_mutex_unlock(&m->lock);
	return deliberate || !s ? 0 : clock_monotonic_ns() + s * 1000000000ull;
}

/*
 * Wait on m->cond for at most @ms (a recovery request or the VMM closing
 * wake it).  True when the VMM is closing.
 */
bool mig_wait_cond_ms(struct migration *m, unsigned ms)
{
	struct timespec until;
	bool closing;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&m->lock);
	if (!m->closing && !m->resume_requested)
		pthread_cond_timedwait(&m->cond, &m->lock, &until);
	closing = m->closing;
	pthread_mutex_unlock(&m->lock);
	return closing;
}

/* Finish a failed or cancelled run. */
void mig_finish_failed(struct migration *m)
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
	int r;

	if (!m)
		return -ENOMEM;
	m->vm = vm;
	m->status = MIG_STATUS_NONE;
	m->params = (struct mig_params){
		.downtime_limit_ms = MIG_DOWNTIME_LIMIT_DEFAULT_MS,
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
	pthread_mutex_init(&m->prealloc_lock, NULL);
	pthread_cond_init(&m->prealloc_cond, NULL);
	/* The engine's own states; devices register theirs after. */
	r = mig_register_ram_state(m);
	if (!r)
		r = mig_register_vm_states(m);
	if (r) {
		migration_destroy(m);
		return r;
	}
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
	if (m->main_ch.cu.kind == CHANNEL_UNIX && m->incoming)
		unlink(m->main_ch.cu.path);
	if (m->recover_fd >= 0)
		close(m->recover_fd);
	close(m->cancel_fd);
	pthread_cond_destroy(&m->cond);
	pthread_mutex_destroy(&m->lock);
	pthread_cond_destroy(&m->prealloc_cond);
	pthread_mutex_destroy(&m->prealloc_lock);
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

static void mig_reset_stats(struct migration *m)
{
	pthread_mutex_lock(&m->lock);
	m->start_ns = clock_monotonic_ns();
	m->setup_ns = m->end_ns = m->downtime_ns = 0;
	m->downtime_known = m->downtime_same_clock = false;
	m->expected_downtime_ms = 0;
	memset(&m->bd, 0, sizeof(m->bd));
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
	atomic_store(&m->crc_suspects, 0);
	atomic_store(&m->crc_mismatches, 0);
	atomic_store(&m->crc_resends, 0);
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
	struct channel ch;
	int r;

	if (!uri) {
		snprintf(err, errlen, "resume needs the destination's recovery address in \"uri\"");
		return -EINVAL;
	}
	r = channel_parse(uri, &ch, err, errlen);
	if (r)
		return r;
	pthread_mutex_lock(&m->lock);
	if (m->incoming || m->status != MIG_STATUS_POSTCOPY_PAUSED) {
		snprintf(err, errlen, "resume needs an outgoing migration in postcopy-paused (this "
			 "one is %s%s)", m->incoming ? "incoming, " : "", mig_status_name(m->status));
		r = -EINVAL;
	} else if (m->resume_requested) {
		snprintf(err, errlen, "already resuming to %s", m->resume_ch.uri);
		r = -EBUSY;
	} else {
		m->resume_ch = ch;
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
	return migration_start_storage(m, uri, cpr_uri, false, err, errlen);
}

/* --storage's refusals: what it cannot be combined with (yet).  0 or -EINVAL. */
static int mig_storage_check(const struct mig_params *p, char *err, size_t errlen)
{
	if (p->mode == MIG_MODE_CPR_TRANSFER) {
		snprintf(err, errlen, "storage migration moves a disk to another host; a live "
			 "update (cpr-transfer) keeps the disk where it is: drop storage");
		return -EINVAL;
	}
	if (p->postcopy_ram && !p->postcopy_preempt) {
		snprintf(err, errlen, "storage migration in postcopy needs the postcopy-preempt "
			 "capability: a disk's requested blocks come on the urgent channel");
		return -EINVAL;
	}
	return 0;
}

int migration_start_storage(struct migration *m, const char *uri, const char *cpr_uri,
			    bool storage, char *err, size_t errlen)
{
	enum vm_runstate rs = vm_get_runstate(m->vm);
	struct channel main_ch, cpr_ch = { .uri = "" };
	struct mig_params p;
	int r;

	r = channel_parse(uri, &main_ch, err, errlen);
	if (r)
		return r;
	pthread_mutex_lock(&m->lock);
	p = m->params;
	pthread_mutex_unlock(&m->lock);
	if (storage && (r = mig_storage_check(&p, err, errlen)) != 0)
		return r;
	if (p.mode == MIG_MODE_CPR_TRANSFER) {
		if (!cpr_uri) {
			snprintf(err, errlen, "mode cpr-transfer needs a cpr channel: migrate "
				 "{\"channels\": [{\"type\": \"main\", \"uri\": URI}, "
				 "{\"type\": \"cpr\", \"uri\": \"unix:PATH\"}]}");
			return -EINVAL;
		}
		r = channel_parse(cpr_uri, &cpr_ch, err, errlen);
		if (r)
			return r;
		if (cpr_ch.cu.kind != CHANNEL_UNIX) {
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
		char why[400] = "";

		if (rs == VM_RUNSTATE_FINISH_MIGRATE || rs == VM_RUNSTATE_POSTMIGRATE)
			vm_migration_hold_reason(m->vm, why, sizeof(why));
		snprintf(err, errlen, "cannot migrate a guest in state %s%s%s", vm_runstate_name(rs),
			 why[0] ? ": " : "", why);
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
	pthread_mutex_lock(&m->lock);
	m->params.storage = storage; /* per run, like the channels */
	pthread_mutex_unlock(&m->lock);
	m->main_ch = main_ch;
	m->cpr_ch = cpr_ch;
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
		char why[400] = "";

		pthread_mutex_unlock(&m->lock);
		if (!m->incoming && vm_get_runstate(m->vm) == VM_RUNSTATE_FINISH_MIGRATE)
			vm_migration_hold_reason(m->vm, why, sizeof(why));
		snprintf(err, errlen, "no outgoing migration is in progress%s%s", why[0] ? "; " : "",
			 why);
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

int migration_incoming_take_cpr(struct migration *m, struct cpr_state *cs, char *err,
				size_t errlen)
{
	int r = mig_states_cpr_take(m, cs, err, errlen);

	if (r)
		return r;
	m->cpr_incoming = true;
	memcpy(m->cpr_token, cs->token, MIG_CPR_TOKEN_BYTES);
	m->params.mode = MIG_MODE_CPR_TRANSFER;
	return 0;
}

/* The address a listening socket really has (port 0 resolved) into @uri, for tcp. */
/*
 * The address a listening socket really has, text and parsed (port 0
 * resolved: query-migrate shows it, and automatic recovery listens there
 * again), into @ch, for tcp.
 */
static void mig_listen_uri(int fd, struct channel *ch)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[NI_MAXHOST], port[NI_MAXSERV], text[CHANNEL_URI_BYTES], err[128];
	struct channel real;

	if (ch->cu.kind != CHANNEL_TCP)
		return;
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 &&
	    getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), port, sizeof(port),
			NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
		snprintf(text, sizeof(text), ss.ss_family == AF_INET6 ? "tcp:[%s]:%s" : "tcp:%s:%s",
			 host, port);
		if (channel_parse(text, &real, err, sizeof(err)) == 0)
			*ch = real;
	}
}

int migration_recover(struct migration *m, const char *uri, char *err, size_t errlen)
{
	struct channel ch;
	int r, fd;

	if (!uri) {
		snprintf(err, errlen, "migrate-recover needs the address to listen on in \"uri\"");
		return -EINVAL;
	}
	r = channel_parse(uri, &ch, err, errlen);
	if (r)
		return r;
	pthread_mutex_lock(&m->lock);
	if (!m->incoming || m->status != MIG_STATUS_POSTCOPY_PAUSED) {
		snprintf(err, errlen, "migrate-recover needs an incoming migration in postcopy-paused "
			 "(this one is %s%s)", m->incoming ? "" : "outgoing, ", mig_status_name(m->status));
		r = -EINVAL;
	} else if (m->recover_fd >= 0 || m->listen_fd >= 0) {
		snprintf(err, errlen, "already waiting for the source to resume on %s",
			 m->recover_fd >= 0 ? m->recover_ch.uri : m->main_ch.uri);
		r = -EBUSY;
	}
	pthread_mutex_unlock(&m->lock);
	if (r)
		return r;
	fd = channel_listen(&ch.cu);
	if (fd < 0) {
		snprintf(err, errlen, "cannot listen on %s: %s", uri, strerror(-fd));
		return fd;
	}
	mig_listen_uri(fd, &ch);
	pthread_mutex_lock(&m->lock);
	if (m->status != MIG_STATUS_POSTCOPY_PAUSED || m->recover_fd >= 0 || m->listen_fd >= 0) {
		pthread_mutex_unlock(&m->lock); /* lost a race with shutdown or another recover */
		close(fd);
		snprintf(err, errlen, "the migration left postcopy-paused");
		return -EBUSY;
	}
	m->recover_fd = fd;
	m->recover_ch = ch;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	log_info("migration: migrate-recover: listening on %s", ch.uri);
	return 0;
}

int migration_incoming_start(struct migration *m, const char *uri, enum mig_prealloc prealloc,
			     char *err, size_t errlen)
{
	int r = channel_parse(uri, &m->main_ch, err, errlen);

	if (r)
		return r;
	m->incoming = true;
	m->listen_fd = channel_listen(&m->main_ch.cu);
	if (m->listen_fd < 0) {
		r = m->listen_fd;
		m->listen_fd = -1;
		snprintf(err, errlen, "cannot listen on %s: %s", uri, strerror(-r));
		return r;
	}
	mig_listen_uri(m->listen_fd, &m->main_ch);
	m->incoming_ch = m->main_ch;
	m->total_bytes = vm_ram_block(m->vm, 0)->bytes;
	mig_reset_stats(m);
	mig_set_status(m, MIG_STATUS_SETUP);
	log_info("waiting for an incoming migration on %s", m->main_ch.uri);
	m->prealloc_follow = prealloc == MIG_PREALLOC_FOLLOW;
	if (prealloc != MIG_PREALLOC_NONE)
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
