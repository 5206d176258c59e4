/* The source's migration thread: setup, precopy passes, switch-over. */
#include "migration/internal.h"

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

int mig_send_sections(struct mig_src *src, bool was_running, uint64_t stop_ns, bool end)
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
 * Connect the main channel, set up its stream (published for cancel) and
 * queue the header.  The fd, or -1 with the migration's error set.
 */
int mig_src_connect(struct mig_src *src)
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

void *mig_source_thread(void *arg)
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
