/* The source's migration thread: setup, precopy passes, switch-over. */
#include "migration/internal.h"

/*
 * Every state's rest at the stop (RAM's last dirty pages, then the
 * sections), then END if @end, and flush.  0, or -errno with @err.
 */
int mig_send_state(struct mig_src *src, const struct mig_save_info *info, bool end, char *err,
		   size_t errlen)
{
	struct mig_save sv = { .m = src->m, .src = src, .s = &src->s, .bd = &src->bd };
	int r = mig_states_complete(&sv, info, err, errlen);
	uint64_t t0 = clock_monotonic_ns();

	if (r)
		return r;
	if (end)
		stream_put_u8(&src->s, MIG_REC_END);
	r = stream_flush(&src->s);
	src->bd.send_ns = clock_monotonic_ns() - t0;
	if (r)
		snprintf(err, errlen, "%s", src->s.errmsg);
	return r;
}

static void mig_emit_pass(struct migration *m, uint64_t pass)
{
	struct json_object *d = json_object_new_object();

	json_object_object_add(d, "pass", json_object_new_uint64(pass));
	mig_emit(m, "MIGRATION_PASS", d);
}

/*
 * Converged: does what is pending fit the downtime limit at @bw bytes per
 * second?  Updates the expected downtime.
 */
static bool mig_converged(struct migration *m, uint64_t pending_bytes, double bw,
			  struct mig_params *p)
{
	double remaining = (double)pending_bytes;
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
int mig_rp_pending_error(struct mig_src *src, char *out, size_t len)
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

/*
 * The stream version this source writes: 2, with CRCs over every RAM and
 * section record, with the stream-crc capability; else 1, as a build from
 * before version 2 wrote (its cost: docs/benchmarks.md, 2026-12-07, ninth
 * session).  Capabilities do not change during a migration.
 */
static uint32_t mig_src_stream_version(struct migration *m)
{
	bool crc;

	pthread_mutex_lock(&m->lock);
	crc = m->params.stream_crc;
	pthread_mutex_unlock(&m->lock);
	return crc ? MIG_VERSION : MIG_VERSION_MIN;
}

/*
 * Connect the main channel, set up its stream (published for cancel) and
 * queue the header.  The fd, or -1 with the migration's error set.
 */
int mig_src_connect(struct mig_src *src)
{
	struct migration *m = src->m;
	struct mig_header h = { .version = mig_src_stream_version(m),
				.page_bytes = MIG_PAGE_BYTES };
	int fd = channel_connect(&m->main_ch.cu, MIG_CONNECT_TIMEOUT_MS), err;

	if (fd < 0) {
		mig_set_error(m, "cannot connect to %s: %s", m->main_ch.uri, strerror(-fd));
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

/* The source thread's state across its phases. */
struct mig_run {
	struct migration *m;
	struct mig_src src;
	struct mig_save sv;         /* what the states write to */
	struct mig_params p;        /* re-read before every pass */
	char errbuf[MIG_ERROR_BYTES];
	int fd;                     /* the main connection, -1 none */
	uint64_t stop_ns;
	bool was_running;
	bool stopped;               /* the vCPUs stopped here and may resume here */
	enum vm_kept kept;          /* stopped and not resumable: why (vm_migration_keep) */
	double bw;                  /* measured bytes per second */
	uint64_t pass_start_ns, pass_bytes; /* the last pass */
	uint64_t prev_pending;      /* bytes pending before the last pass; UINT64_MAX none */
	unsigned hot_syncs, extra_passes;
};

enum mig_next { MIG_NEXT_PASS = 1, MIG_NEXT_STOP, MIG_NEXT_POSTCOPY };

/* A send failed: say why, the destination's reason when it gave one.  -1. */
static int mig_src_stream_failed(struct mig_run *run, int err)
{
	struct migration *m = run->m;
	char why[MIG_ERROR_BYTES];

	if (atomic_load(&m->cancel))
		mig_set_error(m, "cancelled");
	else if (!mig_rp_pending_error(&run->src, why, sizeof(why)))
		mig_set_error(m, "destination refused the migration: %s", why);
	else if (run->errbuf[0])
		mig_set_error(m, "sending to %s failed: %s", m->main_ch.uri, run->errbuf);
	else
		mig_set_error(m, "sending to %s failed: %s", m->main_ch.uri,
			      run->src.s.errmsg[0] ? run->src.s.errmsg : strerror(-err));
	return -1;
}

/*
 * Connect, send the header (and POSTCOPY_ADVISE with the urgent channel
 * when postcopy may come), set up every state.  0, or -1 with the error set.
 */
static int mig_src_setup(struct mig_run *run)
{
	struct migration *m = run->m;
	struct mig_src *src = &run->src;
	int err;

	src->npages = src->block->bytes / MIG_PAGE_BYTES;
	src->storage = run->p.storage;
	src->bitmap_words = (src->npages + 63) / 64;
	src->bitmap = calloc(src->bitmap_words + MIG_WINDOW_PAGES / 64, sizeof(uint64_t));
	if (!src->bitmap) {
		mig_set_error(m, "out of memory");
		return -1;
	}
	run->fd = mig_src_connect(src);
	if (run->fd < 0)
		return -1;
	src->s.max_bytes_per_s = run->p.max_bandwidth;
	if (atomic_load(&m->cancel))
		return -1;
	if (run->p.postcopy_ram) {
		src->postcopy = true;
		src->preempt = run->p.postcopy_preempt;
		src->sent_once = calloc(src->bitmap_words, sizeof(uint64_t));
		if (!src->sent_once) {
			mig_set_error(m, "out of memory");
			return -1;
		}
		stream_put_u8(&src->s, MIG_REC_POSTCOPY_ADVISE);
		/* The urgent channel now, not inside the pause at the switch. */
		if (stream_flush(&src->s) || mig_src_open_urgent(src))
			return mig_src_stream_failed(run, -ECONNREFUSED);
	}
	run->sv = (struct mig_save){ .m = m, .src = src, .s = &src->s };
	err = mig_states_setup(&run->sv, run->errbuf, sizeof(run->errbuf));
	if (err) {
		mig_set_error(m, "%s", run->errbuf);
		return -1;
	}
	mig_set_time(m, &m->setup_ns, clock_monotonic_ns() - m->start_ns);
	return mig_set_status(m, MIG_STATUS_ACTIVE) ? 0 : -1; /* else cancelled */
}

/* One precopy pass: a step of every state, PASS_END, then the link drains. */
static int mig_src_pass(struct mig_run *run)
{
	struct migration *m = run->m;
	struct mig_src *src = &run->src;
	uint64_t pass = atomic_load(&m->passes) + 1, sent;
	double t;
	int err;

	run->pass_start_ns = clock_monotonic_ns();
	run->pass_bytes = src->s.bytes;
	run->errbuf[0] = 0;
	err = mig_states_iterate(&run->sv, run->errbuf, sizeof(run->errbuf));
	if (err)
		return mig_src_stream_failed(run, err);
	atomic_store(&m->passes, pass);
	stream_put_u8(&src->s, MIG_REC_PASS_END);
	stream_put_u32(&src->s, (uint32_t)pass);
	if (stream_flush(&src->s))
		return mig_src_stream_failed(run, stream_error(&src->s));
	mig_emit_pass(m, pass);
	/* The next dirty sync sees what the guest did while this pass was
	 * really on the wire, not still in socket buffers. */
	mig_wait_drained(src);
	sent = src->s.bytes - run->pass_bytes;
	t = (double)(clock_monotonic_ns() - run->pass_start_ns + 1);
	/* Small passes say more about overhead than about the link. */
	if (pass == 1 || sent >= (1u << 20))
		run->bw = (double)sent * 1e9 / t;
	log_debug("migration: pass %" PRIu64 ": %" PRIu64 " bytes in %.1f ms (%.0f MB/s)", pass,
		  sent, t / 1e6, run->bw / 1e6);
	atomic_store(&m->throughput_bps, (uint64_t)run->bw);
	return 0;
}

/* auto-converge: throttle the vCPUs while the guest dirties more than half
 * of what a pass sends. */
static void mig_src_auto_converge(struct mig_run *run, uint64_t pending)
{
	struct migration *m = run->m;
	unsigned t;

	if (pending > (run->src.s.bytes - run->pass_bytes) / 2)
		run->hot_syncs++;
	if (run->hot_syncs < 2)
		return;
	t = vm_get_throttle(m->vm);
	t = t ? t + run->p.throttle_increment_pct : run->p.throttle_initial_pct;
	t = t > 99 ? 99 : t;
	vm_set_throttle(m->vm, t);
	if (t > atomic_load(&m->throttle_max))
		atomic_store(&m->throttle_max, t);
	run->hot_syncs = 0;
}

/*
 * After a pass: measure what is pending and choose - another pass, the
 * stop, or the postcopy switch.  0, or -1 with the error set.
 */
static int mig_src_decide(struct mig_run *run, enum mig_next *next)
{
	struct migration *m = run->m;
	struct mig_params *p = &run->p;
	uint64_t pending;
	bool conv;

	if (mig_states_pending(&run->sv, true, &pending, run->errbuf, sizeof(run->errbuf))) {
		mig_set_error(m, "%s", run->errbuf);
		return -1;
	}
	pthread_mutex_lock(&m->lock);
	*p = m->params; /* parameters may change while we run */
	pthread_mutex_unlock(&m->lock);
	run->src.s.max_bytes_per_s = p->max_bandwidth;
	conv = mig_converged(m, pending, run->bw, p);
	*next = MIG_NEXT_PASS;
	if (run->src.postcopy && (atomic_load(&m->postcopy_requested) ||
				  (p->postcopy_after_passes &&
				   atomic_load(&m->passes) >= p->postcopy_after_passes && !conv))) {
		*next = MIG_NEXT_POSTCOPY;
		return 0;
	}
	/*
	 * The limit is what the user accepts, not a target: while another
	 * pass still shrinks what is pending by a quarter or more, it costs
	 * less than the pause it saves would and buys a shorter pause.
	 */
	if (conv && (m->expected_downtime_ms <= MIG_DOWNTIME_GOOD_MS ||
		     (run->prev_pending != UINT64_MAX && pending * 4 > run->prev_pending * 3) ||
		     run->extra_passes >= MIG_EXTRA_PASSES_MAX)) {
		*next = MIG_NEXT_STOP;
		return 0;
	}
	run->extra_passes += conv;
	run->prev_pending = pending;
	if (p->convergence_timeout_s &&
	    clock_monotonic_ns() - m->start_ns > p->convergence_timeout_s * 1000000000ull) {
		mig_set_error(m, "precopy did not converge within %" PRIu64 " s: %" PRIu64
			      " MiB still dirty at %" PRIu64 " MiB/s (expected downtime %" PRIu64
			      " ms > limit %" PRIu64 " ms); %s",
			      p->convergence_timeout_s, pending >> 20, (uint64_t)run->bw >> 20,
			      m->expected_downtime_ms, p->downtime_limit_ms,
			      p->auto_converge ? "raise downtime-limit or convergence-timeout, or "
						 "switch to postcopy"
					       : "enable auto-converge or postcopy, or raise downtime-limit");
		return -1;
	}
	if (p->auto_converge)
		mig_src_auto_converge(run, pending);
	return 0;
}

static int mig_src_stop_vcpus(struct mig_run *run)
{
	struct vm *vm = run->m->vm;

	if (!mig_set_status(run->m, MIG_STATUS_DEVICE))
		return -1;
	if (vm_migration_stop(vm, &run->stop_ns, &run->was_running)) {
		mig_set_error(run->m, "cannot stop the guest for switch-over (state %s)",
			      vm_runstate_name(vm_get_runstate(vm)));
		return -1;
	}
	run->stopped = true;
	run->src.bd.vcpu_stop_ns = clock_monotonic_ns() - run->stop_ns;
	return 0;
}

/*
 * After RUNNING, when a state's data must be durable on the destination
 * before this side lets go of its copy (state.h, save_settles): wait for
 * COMPLETE.  The guest runs there already, so whatever happens it is never
 * resumed here; a failure says to keep this side's copy.  0 or -1.
 */
static int mig_src_wait_settled(struct mig_run *run)
{
	struct migration *m = run->m;
	struct mig_rp_msg rp = { 0 };
	int err;

	run->stopped = false; /* from here on the guest is the destination's */
	run->kept = VM_KEPT_PEER_RAN;
	run->src.s.timeout_ms = MIG_RP_TIMEOUT_MS;
	err = mig_rp_read(&run->src.s, &rp, run->errbuf, sizeof(run->errbuf));
	if (!err && rp.type == MIG_RP_COMPLETE)
		return 0;
	if (err)
		mig_set_error(m, "the guest runs on the destination, which did not confirm that the "
			      "disks' data is durable there (%s): keep this side's disk files until "
			      "the destination's are checked", run->errbuf);
	else
		mig_set_error(m, "the guest runs on the destination, but %s: keep this side's "
			      "disk files",
			      rp.type == MIG_RP_ERROR ? rp.text : "it sent an unexpected message "
								  "instead of COMPLETE");
	if (!err)
		mig_rp_msg_release(&rp);
	return -1;
}

/* After END: wait for the destination to run the guest.  0 or -1. */
static int mig_src_wait_running(struct mig_run *run)
{
	struct migration *m = run->m;
	struct mig_rp_msg rp;
	uint64_t end_ns;
	int err;

	run->src.s.timeout_ms = MIG_RP_TIMEOUT_MS;
	err = mig_rp_read(&run->src.s, &rp, run->errbuf, sizeof(run->errbuf));
	if (err == -EPIPE || err == -ECONNRESET) {
		/* The destination closed without running: it is gone. */
		mig_set_error(m, "destination closed the connection before running the guest");
		return -1;
	}
	if (err) {
		mig_set_error(m, "no word from the destination after switch-over (%s): the guest is "
			      "kept paused here because the destination may be running it. If it "
			      "does not (its VMM is gone, or its query-status does not say "
			      "running), resume the guest here with cont {\"force\": true}",
			      run->errbuf);
		run->stopped = false; /* do not resume: two copies must never run */
		run->kept = VM_KEPT_PEER_MAY_RUN;
		return -1;
	}
	if (rp.type != MIG_RP_RUNNING) {
		mig_set_error(m, "destination failed to load the state: %s",
			      rp.type == MIG_RP_ERROR ? rp.text : "unexpected return-path message");
		return -1;
	}
	end_ns = rp.same_clock && rp.first_run_ns >= run->stop_ns ? rp.first_run_ns
									: clock_monotonic_ns();
	mig_set_downtime(m, end_ns - run->stop_ns, rp.same_clock);
	mig_breakdown_fit(&run->src.bd, run->stop_ns, end_ns);
	mig_set_breakdown(m, &run->src.bd);
	return mig_states_save_settles(m) ? mig_src_wait_settled(run) : 0;
}

/* Precopy's end: stop, every state's rest, END; the destination runs it. */
static int mig_src_switchover(struct mig_run *run)
{
	struct migration *m = run->m;
	struct mig_src *src = &run->src;
	struct mig_save_info info;
	int err;

	/*
	 * First let the link drain what earlier passes queued, while the guest
	 * still runs, so the pause pays only for the rest.  With a disk's data
	 * in the stream, also let the destination write what arrived
	 * (PING/PONG): it writes blocks slower than the link brings them, and
	 * the socket buffers' megabytes it was behind added 15-25 ms to the
	 * pause (docs/benchmarks.md).  RAM alone it loads at memory speed.
	 */
	mig_wait_drained(src);
	if (mig_states_save_settles(m) &&
	    mig_ping_wait(src, "the disks' data sent before the stop", run->errbuf,
			  sizeof(run->errbuf))) {
		mig_set_error(m, "%s", run->errbuf);
		return -1;
	}
	if (mig_src_stop_vcpus(run))
		return -1;
	if (src->urgent_fd >= 0) {
		/* Postcopy was possible but not needed: end the urgent channel. */
		stream_put_u8(&src->urgent, MIG_REC_END);
		stream_flush(&src->urgent);
		mig_src_close_side_channels(src);
	}
	info = (struct mig_save_info){ .was_running = run->was_running, .stop_ns = run->stop_ns };
	run->errbuf[0] = 0;
	err = mig_send_state(src, &info, true, run->errbuf, sizeof(run->errbuf));
	if (err)
		return mig_src_stream_failed(run, err);
	atomic_store(&m->transferred, src->s.bytes + src->urgent_bytes);
	atomic_store(&m->remaining_bytes, 0);
	return mig_src_wait_running(run);
}

/*
 * The postcopy switch: discard what the destination holds stale while the
 * guest still runs here, stop, and hand over (source_postcopy.c).  0, or
 * -1 with the error set.
 */
static int mig_src_postcopy_switch(struct mig_run *run)
{
	struct migration *m = run->m;
	struct mig_src *src = &run->src;
	int err;

	mig_wait_drained(src);
	if (atomic_load(&m->passes)) {
		/*
		 * Hybrid: most pages the destination must drop are known
		 * already.  Discard them while the guest still runs here and
		 * wait until the destination has (PING/PONG): dropping hundreds
		 * of MiB takes it tens of milliseconds, which would otherwise
		 * land inside the pause.  Only what the guest dirties from now
		 * to the stop is discarded in the pause.
		 */
		err = mig_prediscard(src, run->errbuf, sizeof(run->errbuf));
	} else {
		/* Pure postcopy: the destination's setup for the advise
		 * (allocations, threads) must not land in the pause. */
		err = mig_ping_wait(src, "the postcopy setup", run->errbuf, sizeof(run->errbuf));
	}
	if (err) {
		mig_set_error(m, "%s", run->errbuf);
		return -1;
	}
	/*
	 * Everything that grows with RAM and does not need the guest stopped,
	 * now: the switch's bitmaps, and in pure postcopy (no pass sent: every
	 * page pending, the dirty log says nothing new) all of them.
	 */
	if (!atomic_load(&m->passes))
		memset(src->bitmap, 0xff, src->bitmap_words * sizeof(uint64_t));
	if (mig_postcopy_prepare(src)) {
		mig_set_error(m, "out of memory");
		return -1;
	}
	if (mig_src_stop_vcpus(run))
		return -1;
	/* Hybrid: the pages dirtied since the last pass (all of the bitmap is written). */
	err = atomic_load(&m->passes) ? vm_dirty_log_get(m->vm, 0, src->bitmap) : 0;
	if (err) {
		mig_set_error(m, "reading the dirty log failed: %s", strerror(-err));
		return -1;
	}
	err = mig_postcopy(src, run->was_running, run->stop_ns, &run->fd);
	if (err && err != -EAGAIN) {
		run->stopped = false; /* the guest ran there: never run it here too */
		run->kept = VM_KEPT_PEER_RAN;
	}
	return err ? -1 : 0; /* -EAGAIN: the destination never ran it: resume here */
}

/* Close the main connection and free what the run allocated. */
static void mig_src_release(struct mig_run *run)
{
	struct migration *m = run->m;

	mig_end_main_channel(m, &run->src.s, run->fd);
	mig_src_close_side_channels(&run->src);
	free(run->src.bitmap);
	free(run->src.sent_once);
	free(run->src.predisc);
	/* A postcopy switch that failed before mig_postcopy() freed them. */
	free((void *)run->src.pending);
	free(run->src.released);
	free(run->src.pc_discard);
	atomic_store(&m->postcopy_requested, false);
}

static void mig_src_completed(struct mig_run *run)
{
	struct migration *m = run->m;

	atomic_store(&m->postcopy_requested, false);
	vm_migration_complete(m->vm);
	vm_set_throttle(m->vm, 0);
	mig_states_cleanup(m, true);
	mig_src_release(run);
	if (!mig_set_status(m, MIG_STATUS_COMPLETED))
		log_debug("migration: completed after a late cancel");
	log_info("migration to %s completed: %.1f ms total, downtime %.3f ms",
		 m->main_ch.uri, (double)(m->end_ns - m->start_ns) / 1e6, (double)m->downtime_ns / 1e6);
	log_debug("migration: the migration thread used %.1f ms of CPU", clock_thread_cpu_ns() / 1e6);
	mig_releaser_join(&run->src); /* completed: the rest of release-ram is housekeeping */
}

/* A failure before the destination ran the guest: it runs on here. */
static void mig_src_failed(struct mig_run *run)
{
	struct migration *m = run->m;

	if (atomic_load(&m->cancel))
		mig_set_error(m, "cancelled");
	vm_set_throttle(m->vm, 0);
	mig_states_cleanup(m, false);
	if (run->stopped)
		vm_migration_abort(m->vm, run->was_running);
	else if (run->kept)
		vm_migration_keep(m->vm, run->kept, run->was_running, 0);
	mig_src_release(run);
	mig_releaser_join(&run->src);
	mig_finish_failed(m);
}

void *mig_source_thread(void *arg)
{
	struct migration *m = arg;
	struct mig_run run = {
		.m = m, .fd = -1, .prev_pending = UINT64_MAX,
		.src = { .m = m, .block = vm_ram_block(m->vm, 0), .urgent_fd = -1, .rp_fd = -1 },
	};
	enum mig_next next = MIG_NEXT_PASS;
	int r;

	pthread_mutex_lock(&m->lock);
	run.p = m->params;
	pthread_mutex_unlock(&m->lock);
	if (run.p.mode == MIG_MODE_CPR_TRANSFER) {
		mig_cpr_source(m);
		return NULL;
	}
	r = mig_src_setup(&run);
	if (!r && run.src.postcopy && atomic_load(&m->postcopy_requested))
		next = MIG_NEXT_POSTCOPY; /* pure postcopy: switch before the first pass */
	else if (!r)
		r = mig_src_pass(&run);
	while (!r && next == MIG_NEXT_PASS) {
		r = mig_src_decide(&run, &next);
		if (!r && next == MIG_NEXT_PASS)
			r = mig_src_pass(&run);
	}
	if (!r)
		r = next == MIG_NEXT_POSTCOPY ? mig_src_postcopy_switch(&run)
					      : mig_src_switchover(&run);
	if (r)
		mig_src_failed(&run);
	else
		mig_src_completed(&run);
	return NULL;
}
