/* The source after the postcopy switch: background push, return path, release-ram, pause and resume. */
#include "migration/internal.h"

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
			 * guest takes tens of milliseconds (18-42 ms for 1 GiB), so it
			 * is done here, not on the push's thread, whose stream it
			 * would hold still right after the switch.  At normal
			 * priority: it holds the VM's lock.
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

void mig_releaser_join(struct mig_src *src)
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
	uint64_t p = first, end = first + n;

	/* Atomic: the return-path thread reads it (mig_rp_serve_request). */
	for (; p < end; p++) {
		if (p % 64 == 0 && end - p >= 64) {
			/* Whole words: a hole's zero run is millions of pages. */
			for (; end - p >= 64; p += 64)
				__atomic_store_n(&src->released[p / 64], ~0ull, __ATOMIC_RELAXED);
			if (p == end)
				break;
		}
		__atomic_fetch_or(&src->released[p / 64], 1ull << (p % 64), __ATOMIC_RELAXED);
	}
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
void mig_unacked_add(struct mig_src *src, uint64_t first, uint64_t n)
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

/* ---- source: postcopy ---- */


static bool mig_pending_take(struct mig_src *src, uint64_t p)
{
	uint64_t bit = 1ull << (p % 64);

	if (!(atomic_fetch_and(&src->pending[p / 64], ~bit) & bit))
		return false;
	atomic_fetch_sub(&src->pending_count, 1);
	return true;
}

/*
 * Push, pages [@first, @end) a hole of the memfd: every pending one of them
 * as zero runs, a word of the pending bitmap at a time, none of them read
 * (reading a hole of a memfd allocates it).  The guest is stopped here, so
 * a hole stays one.
 */
static void mig_push_hole(struct mig_src *src, uint64_t first, uint64_t end)
{
	uint64_t span_first = 0, span_n = 0, taken = 0;

	for (uint64_t p = first; p < end;) {
		uint64_t bits, nbits = 64;

		if (p % 64 || end - p < 64) {
			bits = mig_pending_take(src, p) ? 1 : 0;
			nbits = 1;
			atomic_fetch_add(&src->m->pages_pushed, bits);
		} else {
			bits = atomic_exchange(&src->pending[p / 64], 0);
			taken += (uint64_t)__builtin_popcountll(bits);
		}
		for (uint64_t i = 0; i < nbits; i++) {
			bool set = bits == ~0ull || (bits >> i) & 1;

			if (set && span_n && span_first + span_n == p + i) {
				span_n += bits == ~0ull ? nbits - i : 1;
			} else if (set) {
				if (span_n)
					mig_add_zero_span(src, span_first, span_n);
				span_first = p + i;
				span_n = bits == ~0ull ? nbits - i : 1;
			}
			if (bits == ~0ull)
				break;
		}
		p += nbits;
	}
	if (span_n)
		mig_add_zero_span(src, span_first, span_n);
	/* Whole words only: mig_pending_take() counted the others. */
	atomic_fetch_sub(&src->pending_count, taken);
	atomic_fetch_add(&src->m->pages_pushed, taken);
}

/*
 * Push: where the data of the memfd starts again at or after page @p (the
 * end when none), or @p itself when @p holds data.
 */
static uint64_t mig_push_data_from(struct mig_src *src, uint64_t p)
{
	off_t data = lseek(src->block->fd, (off_t)(p * MIG_PAGE_BYTES), SEEK_DATA);

	if (data < 0)
		return errno == ENXIO ? src->npages : p;
	return (uint64_t)data / MIG_PAGE_BYTES;
}

/*
 * Return-path thread: answers page requests on the urgent channel at once.
 * A PAGE_RESEND (the copy the destination got failed its CRC) is answered
 * the same way, but also for a page the background push already took.
 */
static void mig_rp_serve_request(struct mig_src *src, const struct mig_rp_msg *msg)
{
	uint64_t end = msg->first_page + msg->npages;
	bool resend = msg->type == MIG_RP_PAGE_RESEND;

	if (resend)
		atomic_fetch_add(&src->m->crc_resends, msg->npages);
	else
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

		atomic_store_explicit(&src->req_ring[seq % MIG_REQ_RING],
				      msg->first_page | (resend ? MIG_REQ_RESEND : 0),
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
		mig_save_ram_head(&src->urgent, src->header.version, 0, zero, 1, p, page);
		if (!zero)
			stream_put_bytes(&src->urgent, page, MIG_PAGE_BYTES);
		if (!zero)
			atomic_fetch_add(&src->m->normal_pages, 1);
		else
			atomic_fetch_add(&src->m->zero_pages, 1);
	}
	stream_flush(&src->urgent);
}

/* A request on either channel: a page or a state's data. */
static void mig_rp_serve(struct mig_src *src, const struct mig_rp_msg *msg)
{
	if (msg->type == MIG_RP_STATE_REQ)
		mig_states_serve_request(src, msg);
	else
		mig_rp_serve_request(src, msg);
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

/* The urgent channel's side of the return-path thread. */
struct mig_rp_urgent {
	uint64_t down_ns;          /* when it closed; 0 while open */
	int r;                     /* how it closed */
	char err[256];
};

/*
 * A read on the urgent channel (@r, @msg, @err): serve a page request, or
 * note that the channel closed.  True when the thread must stop.
 */
static bool mig_rp_from_urgent(struct mig_src *src, struct mig_rp_msg *msg, int r,
			       const char *err, struct mig_rp_urgent *u)
{
	char why[256];

	/* Requests only, sent back on the urgent channel. */
	if (!r && msg->type != MIG_RP_PAGE_REQ && msg->type != MIG_RP_STATE_REQ) {
		mig_rp_msg_release(msg);
		snprintf(why, sizeof(why), "message type %u (only requests come back on it)",
			 msg->type);
		err = why;
		r = -EBADMSG;
	}
	if (r && r != -EBADMSG && !u->down_ns) {
		/*
		 * Closed or broken.  A destination that completed closes it
		 * too, and its COMPLETE on the return path may still be on the
		 * way: read that alone for a while.
		 */
		u->down_ns = clock_monotonic_ns();
		u->r = r;
		snprintf(u->err, sizeof(u->err), "%s", err);
		return false;
	}
	if (r) {
		snprintf(src->rp_error, sizeof(src->rp_error), "urgent channel: %s", err);
		src->rp_result = r;
		src->rp_fatal = r == -EBADMSG;
		return true;
	}
	mig_rp_serve(src, msg);
	src->rp_fatal = src->rp_result != 0;
	return src->rp_result != 0;
}

/* A message on the return path.  True when the thread must stop. */
static bool mig_rp_from_return_path(struct mig_src *src, struct mig_rp_msg *msg)
{
	switch (msg->type) {
	case MIG_RP_PONG:
		atomic_store(&src->ping_acked, msg->id);
		return false;
	case MIG_RP_RUNNING:
		src->running = *msg;
		atomic_store(&src->got_running, true);
		return false;
	case MIG_RP_PAGE_REQ:
	case MIG_RP_PAGE_RESEND:
	case MIG_RP_STATE_REQ:
		mig_rp_serve(src, msg);
		src->rp_fatal = src->rp_result != 0;
		return src->rp_result != 0;
	case MIG_RP_COMPLETE:
		src->rp_result = 0;
		return true;
	case MIG_RP_ERROR:
		snprintf(src->rp_error, sizeof(src->rp_error), "destination failed: %.400s", msg->text);
		src->rp_result = msg->err ? msg->err : -EIO;
		src->rp_fatal = true;
		return true;
	default:
		mig_rp_msg_release(msg);
		snprintf(src->rp_error, sizeof(src->rp_error),
			 "return path: unexpected message type %u during postcopy", msg->type);
		src->rp_result = -EPROTO;
		src->rp_fatal = true;
		return true;
	}
}

static void *mig_rp_thread(void *arg)
{
	struct mig_src *src = arg;
	struct mig_rp_urgent u = { .down_ns = 0 };
	struct mig_rp_msg msg;
	char err[256];

	/* A faulting vCPU waits for this thread: it must not queue behind the
	 * background push for a CPU. */
	pthread_setname_np(pthread_self(), "pc-return");
	thread_make_latency_critical();
	for (;;) {
		struct stream *from = mig_rp_next_input(src, u.down_ns);
		int r;

		if (!from) {
			/* The urgent channel closed and no COMPLETE followed. */
			snprintf(src->rp_error, sizeof(src->rp_error), "urgent channel: %s", u.err);
			src->rp_result = u.r;
			break;
		}
		r = mig_rp_read(from, &msg, err, sizeof(err));
		if (from == &src->urgent) {
			if (mig_rp_from_urgent(src, &msg, r, err, &u))
				break;
			continue;
		}
		if (r) {
			snprintf(src->rp_error, sizeof(src->rp_error), "return path: %s", err);
			src->rp_result = r;
			src->rp_fatal = r == -EBADMSG; /* malformed, not merely broken */
			break;
		}
		if (mig_rp_from_return_path(src, &msg))
			break;
		if (stream_error(&src->urgent) && !u.down_ns) {
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
 * jump ends the record, so a migration with thousands of requests does not
 * send thousands of small records.
 */
/*
 * One step of the RAM push from *@cursor (growing *@chunk while no request
 * comes; requests since *@seen first).
 */
static void mig_postcopy_push_ram(struct mig_src *src, uint64_t *cursorp, uint64_t *chunkp,
				  uint64_t *seenp)
{
	uint64_t cursor = *cursorp, chunk = *chunkp, seen = *seenp;
	uint64_t seq = atomic_load_explicit(&src->req_seq, memory_order_acquire), end;

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
			bool resend = p & MIG_REQ_RESEND;

			p &= ~MIG_REQ_RESEND;
			if (p < src->npages && (mig_pending_take(src, p) ||
						(resend && !mig_released(src, p)))) {
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
	if (mig_push_data_from(src, cursor) >= end) {
		/* A hole: all of it, up to where data starts again. */
		end = mig_push_data_from(src, cursor);
		mig_push_hole(src, cursor, end);
		chunk = 16;
	} else {
		for (uint64_t p = cursor; p < end; p++) {
			if (!mig_pending_take(src, p)) {
				mig_flush_run(src);
				continue;
			}
			mig_add_page(src, p, mig_page_is_zero(src->block->host + p * MIG_PAGE_BYTES));
			atomic_fetch_add(&src->m->pages_pushed, 1);
		}
	}
	cursor = end == src->npages ? 0 : end;
	*cursorp = cursor;
	*chunkp = chunk;
	*seenp = seen;
}

/* The background push: RAM's pages and the states' data, then END. */
static int mig_postcopy_push(struct mig_src *src)
{
	struct mig_save sv = { .m = src->m, .src = src, .s = &src->s };
	uint64_t cursor = 0, chunk = 16, state_left = 1; /* unknown until asked */
	uint64_t seen = atomic_load_explicit(&src->req_seq, memory_order_acquire);
	char err[256];

	while (atomic_load(&src->pending_count) > 0 || state_left) {
		atomic_store(&src->m->remaining_bytes,
			     atomic_load(&src->pending_count) * MIG_PAGE_BYTES + state_left);
		/* max-bandwidth may change while the push runs, as between passes */
		pthread_mutex_lock(&src->m->lock);
		src->s.max_bytes_per_s = src->m->params.max_bandwidth;
		pthread_mutex_unlock(&src->m->lock);
		if (atomic_load(&src->pending_count) > 0)
			mig_postcopy_push_ram(src, &cursor, &chunk, &seen);
		err[0] = 0;
		if (mig_states_push(&sv, &state_left, err, sizeof(err)) && !stream_error(&src->s)) {
			log_error("postcopy: %s", err);
			return -EIO;
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
	}
	atomic_store(&src->m->remaining_bytes, 0);
	mig_flush_run(src);
	stream_put_u8(&src->s, MIG_REC_END);
	return stream_flush(&src->s);
}

/* One DISCARD record of @nruns runs. */
static void mig_put_discard_record(struct mig_src *src, const uint64_t *first, const uint32_t *n,
				   uint32_t nruns)
{
	stream_put_u8(&src->s, MIG_REC_POSTCOPY_DISCARD);
	stream_put_u8(&src->s, 0);
	stream_put_u32(&src->s, nruns);
	for (uint32_t i = 0; i < nruns; i++) {
		stream_put_u64(&src->s, first[i]);
		stream_put_u32(&src->s, n[i]);
	}
}

/*
 * The pages set in @discard as DISCARD records of up to 256 runs.  Inside
 * the pause: it scans a word at a time (an empty or full word costs one
 * step, not 64), so a guest that dirtied little costs little whatever its
 * RAM size.
 */
static void mig_send_discards(struct mig_src *src, const uint64_t *discard)
{
	uint64_t runs_first[256], p = 0;
	uint32_t runs_n[256];
	uint32_t nruns = 0;

	while (p < src->npages) {
		uint64_t bits = discard[p / 64] >> (p % 64), first;

		if (!bits) {
			p = (p / 64 + 1) * 64; /* nothing more in this word */
			continue;
		}
		p += (uint64_t)__builtin_ctzll(bits);
		if (p >= src->npages)
			break;
		first = p;
		while (p < src->npages) {
			uint64_t rest = ~(discard[p / 64] >> (p % 64));

			if (p % 64 == 0 && !rest) {
				p += 64; /* a full word */
				continue;
			}
			if (rest & 1)
				break;
			p++;
		}
		if (p > src->npages)
			p = src->npages;
		if (nruns == 256) {
			mig_put_discard_record(src, runs_first, runs_n, nruns);
			nruns = 0;
		}
		runs_first[nruns] = first;
		runs_n[nruns++] = (uint32_t)(p - first);
	}
	if (nruns)
		mig_put_discard_record(src, runs_first, runs_n, nruns);
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
int mig_ping_wait(struct mig_src *src, const char *what, char *err, size_t errlen)
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

int mig_prediscard(struct mig_src *src, char *err, size_t errlen)
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

/* Open the urgent channel to m->main_ch.cu and start it with its magic.  0 or -errno. */
int mig_src_open_urgent(struct mig_src *src)
{
	src->urgent_fd = channel_connect(&src->m->main_ch.cu, MIG_CONNECT_TIMEOUT_MS);
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

void mig_src_close_side_channels(struct mig_src *src)
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
		if (src->rp_result == -ECANCELED && !src->rp_fatal && stream_error(&src->s) &&
		    stream_error(&src->s) != -ECANCELED) {
			/* The push broke first and we cancelled the return path:
			 * the push's reason is what happened, not "cancelled". */
			snprintf(src->rp_error, sizeof(src->rp_error), "main channel: %s",
				 src->s.errmsg);
			src->rp_result = stream_error(&src->s);
		}
		return src->rp_fatal ? src->rp_result : err;
	}
	/* The destination answers COMPLETE once it holds every page. */
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += MIG_RP_TIMEOUT_MS / 1000;
	until.tv_nsec += (MIG_RP_TIMEOUT_MS % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
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
 * Resume a paused postcopy on m->main_ch.cu: connect, send the header and RESUME,
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

	fd = channel_connect(&m->main_ch.cu, MIG_CONNECT_TIMEOUT_MS);
	if (fd < 0) {
		snprintf(why, whylen, "cannot connect to %s: %s", m->main_ch.uri, strerror(-fd));
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
	if (!r)
		r = mig_states_read_bitmaps(src, why, whylen);
	if (r)
		return r;
	r = mig_src_open_urgent(src);
	if (r) {
		snprintf(why, whylen, "cannot open the urgent channel to %s", m->main_ch.uri);
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
 * What a paused source cannot tell (a dead destination from a broken link),
 * in every message it shows while paused, so a failed or abandoned resume
 * does not drop it from error-desc.
 */
#define MIG_SRC_PAUSED_MEANS "if the destination's process died the guest is lost " \
	"(query-status there tells); else it waits there for the pages it lacks"

/*
 * Automatic recovery (postcopy-recover-timeout): resume to the same
 * destination, retrying with a growing backoff until @deadline_ns.  0
 * resumed; -ETIMEDOUT gave up (error-desc says so); -EAGAIN a manual
 * resume was asked for; -ECANCELED the VMM is going.
 */
static int mig_src_auto_resume(struct mig_src *src, int *fdp, pthread_t *rp_thread,
			       uint64_t deadline_ns)
{
	struct migration *m = src->m;
	unsigned backoff_ms = 20;

	for (unsigned attempt = 1;; attempt++) {
		char why[MIG_ERROR_BYTES];
		uint64_t now;
		bool manual;
		int r;

		pthread_mutex_lock(&m->lock);
		manual = m->resume_requested;
		pthread_mutex_unlock(&m->lock);
		if (manual)
			return -EAGAIN;
		r = mig_src_resume(src, fdp, rp_thread, why, sizeof(why));
		if (!r) {
			log_info("postcopy: recovered on its own after %u attempt%s", attempt,
				 attempt > 1 ? "s" : "");
			return 0;
		}
		mig_src_drop_conns(src, fdp);
		atomic_fetch_add(&m->resume_failures, 1);
		now = clock_monotonic_ns();
		if (now >= deadline_ns) {
			mig_replace_error(m, "postcopy paused: automatic recovery to %s gave up after "
					  "%u attempts (last: %.160s); resume by hand with migrate "
					  "{\"uri\": URI, \"resume\": true}; " MIG_SRC_PAUSED_MEANS,
					  m->main_ch.uri, attempt, why);
			return -ETIMEDOUT;
		}
		mig_replace_error(m, "postcopy paused: automatic recovery to %s, attempt %u failed: "
				  "%.160s; retrying; " MIG_SRC_PAUSED_MEANS, m->main_ch.uri, attempt,
				  why);
		if (mig_wait_cond_ms(m, (unsigned)((deadline_ns - now) / 1000000 + 1 < backoff_ms
						   ? (deadline_ns - now) / 1000000 + 1 : backoff_ms)))
			return -ECANCELED;
		backoff_ms = backoff_ms * 2 > 1000 ? 1000 : backoff_ms * 2;
	}
}

/*
 * Postcopy-paused on the source: unless the pause was @deliberate, recover
 * on its own first (postcopy-recover-timeout); then wait for `migrate
 * {"resume": true}` and resume; a failed attempt stays paused (error-desc
 * says why) and waits for the next.  0 resumed (the return-path thread
 * runs), -ECANCELED when the VMM goes.
 */
static int mig_src_paused(struct mig_src *src, int *fdp, pthread_t *rp_thread, bool deliberate)
{
	struct migration *m = src->m;
	uint64_t deadline_ns = mig_auto_recover_deadline(m, deliberate);
	char why[MIG_ERROR_BYTES];

	if (deadline_ns) {
		int r = mig_src_auto_resume(src, fdp, rp_thread, deadline_ns);

		if (r == 0 || r == -ECANCELED)
			return r;
	}
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
		m->main_ch = m->resume_ch;
		pthread_mutex_unlock(&m->lock);
		log_info("postcopy: resuming to %s", m->main_ch.uri);
		r = mig_src_resume(src, fdp, rp_thread, why, sizeof(why));
		if (!r)
			return 0;
		mig_src_drop_conns(src, fdp);
		mig_replace_error(m, "postcopy paused: resuming to %s failed: %.160s; "
				  MIG_SRC_PAUSED_MEANS, m->main_ch.uri, why);
		atomic_fetch_add(&m->resume_failures, 1);
	}
}

/*
 * The bitmaps of the switch, allocated and faulted in before the stop (a
 * fresh page of them costs a fault inside the pause otherwise: ~64 per
 * GiB of guest RAM).  Pure postcopy: pending = every page, filled here.
 */
int mig_postcopy_prepare(struct mig_src *src)
{
	size_t bytes = src->bitmap_words * sizeof(uint64_t);

	src->pending = malloc(bytes);
	src->released = malloc(bytes);
	src->pc_discard = malloc(bytes);
	if (!src->pending || !src->released || !src->pc_discard)
		return -ENOMEM;
	memset((void *)src->pending, 0, bytes);
	memset(src->released, 0, bytes);
	memset(src->pc_discard, 0, bytes);
	src->pending_ready = !atomic_load(&src->m->passes) && !src->predisc;
	if (src->pending_ready) {
		mig_bits_set((uint64_t *)src->pending, 0, src->npages);
		atomic_store(&src->pending_count, src->npages);
	}
	return 0;
}

/*
 * Pages pending and to discard, vCPUs stopped, from src->bitmap (dirty
 * since the last pass; all ones in pure postcopy) and src->sent_once:
 * pending = never sent, or dirtied since sent; the returned discard set =
 * the latter, minus what the hybrid pre-discard dropped already; NULL when
 * there is none (pure postcopy: filled before the stop).  Plain stores: no
 * other thread sees these bitmaps before the handover starts them.
 */
static const uint64_t *mig_postcopy_pending(struct mig_src *src)
{
	uint64_t *discard = src->pc_discard, count = 0;

	src->ping_id = 1; /* 1 was the hybrid pre-discard's */
	if (src->pending_ready)
		return NULL;
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
		atomic_store_explicit(&src->pending[w], pend, memory_order_relaxed);
		count += (uint64_t)__builtin_popcountll(pend);
	}
	atomic_store(&src->pending_count, count);
	return discard;
}

/* A handover step failed before RUN: the destination's reason if it gave one. */
static int mig_postcopy_refused(struct mig_src *src, const char *fmt, const char *what)
{
	char why[MIG_ERROR_BYTES];

	if (!mig_rp_pending_error(src, why, sizeof(why)))
		mig_set_error(src->m, "destination refused the migration: %s", why);
	else
		mig_set_error(src->m, fmt, what);
	return -EAGAIN;
}

/*
 * The package, vCPUs stopped: discards, every state's sections, the urgent
 * channel and the return path, RUN; then the return-path thread starts.
 * 0, or -EAGAIN with the error set (the destination never ran the guest).
 */
static int mig_postcopy_handover(struct mig_src *src, bool was_running, uint64_t stop_ns,
				 int fd, pthread_t *rp_thread)
{
	struct migration *m = src->m;
	struct mig_save_info info = { .postcopy = true, .was_running = was_running,
				      .stop_ns = stop_ns };
	char why[MIG_ERROR_BYTES] = "";
	uint64_t t0 = clock_monotonic_ns(), t1;
	const uint64_t *discard;

	if (!src->pending && mig_postcopy_prepare(src)) {
		mig_set_error(m, "out of memory");
		return -EAGAIN;
	}
	discard = mig_postcopy_pending(src);
	log_debug("postcopy: %" PRIu64 " pages pending, %.3f ms after the stop",
		  atomic_load(&src->pending_count), (double)(clock_monotonic_ns() - stop_ns) / 1e6);
	if (discard)
		mig_send_discards(src, discard);
	src->bd.discard_ns = clock_monotonic_ns() - t0;
	if (mig_send_state(src, &info, false, why, sizeof(why)))
		return mig_postcopy_refused(src, "sending the device state failed: %s", why);
	t1 = clock_monotonic_ns();
	/* Open since the advise; else now, so the destination can be answered at once. */
	if (src->urgent_fd < 0 && mig_src_open_urgent(src))
		return mig_postcopy_refused(src, "cannot open the urgent channel to %s", m->main_ch.uri);
	if (mig_src_open_rp(src, fd)) {
		mig_set_error(m, "cannot set up the return path");
		return -EAGAIN;
	}
	log_debug("postcopy: urgent channel open, %.3f ms after the stop",
		  (double)(clock_monotonic_ns() - stop_ns) / 1e6);
	stream_put_u8(&src->s, MIG_REC_POSTCOPY_RUN);
	if (stream_flush(&src->s))
		return mig_postcopy_refused(src, "sending run failed: %s", src->s.errmsg);
	src->bd.send_ns += clock_monotonic_ns() - t1;
	if (pthread_create(rp_thread, NULL, mig_rp_thread, src)) {
		mig_set_error(m, "cannot start the return-path thread");
		return -EAGAIN;
	}
	mig_publish_conns(m, fd, src->urgent_fd);
	mig_set_status(m, MIG_STATUS_POSTCOPY_ACTIVE);
	mig_releaser_start(src);
	src->release_ram = true;
	return 0;
}

/*
 * Serve the destination until it holds every page, pausing when a channel
 * breaks and resuming on request.  0 complete; -EAGAIN the destination
 * never ran the guest; other -errno with the error set.
 */
/*
 * The source's pause reason: what broke (@cause), and what it means for a
 * guest that ran (@ran) or may run on the destination - which the source
 * cannot tell apart from a dead destination.
 */
static void mig_src_pause_reason(char *reason, size_t len, const char *cause, bool ran)
{
	snprintf(reason, len, "%.160s; %s: if its VMM is alive the guest waits there for the "
		 "pages it lacks (migrate-recover there, then migrate {\"resume\": true} here); "
		 "if its process died the guest is lost (query-status there tells)", cause,
		 ran ? "the guest ran on the destination"
		     : "the destination may be running the guest (RUN was sent)");
}

static int mig_postcopy_run(struct mig_src *src, pthread_t rp_thread, int *fdp, bool was_running)
{
	struct migration *m = src->m;

	for (;;) {
		char reason[MIG_ERROR_BYTES + 128];
		bool ran, deliberate;
		int err = mig_postcopy_serve(src, rp_thread);

		if (!err)
			return 0;
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
			return -EAGAIN;
		}
		if (src->rp_fatal || atomic_load(&m->cancel)) {
			mig_set_error(m, "%s%s", src->rp_error[0] ? src->rp_error : "postcopy failed",
				      ran ? "; the guest ran on the destination, so its state is split "
					    "and it cannot resume here" : "");
			return !ran ? -EAGAIN : src->rp_result ? src->rp_result : -EIO;
		}
		/* A channel broke: keep every unacknowledged page and wait. */
		if (deliberate)
			snprintf(reason, sizeof(reason), "migrate-pause");
		else
			mig_src_pause_reason(reason, sizeof(reason),
					     src->rp_error[0] ? src->rp_error
					     : stream_error(&src->s) ? src->s.errmsg : strerror(-err),
					     ran);
		mig_src_drop_conns(src, fdp);
		/* cont here must say why not (the destination ran it, or may). */
		vm_migration_keep(m->vm, ran ? VM_KEPT_PEER_RAN : VM_KEPT_NONE, was_running, 0);
		mig_enter_paused(m, reason);
		if (mig_src_paused(src, fdp, &rp_thread, deliberate)) {
			mig_set_error(m, "the VMM is shutting down during a paused postcopy; the guest "
				      "stays with the destination");
			return -ECANCELED;
		}
		vm_migration_keep(m->vm, VM_KEPT_NONE, was_running, 0);
		mig_leave_paused(m);
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
int mig_postcopy(struct mig_src *src, bool was_running, uint64_t stop_ns, int *fdp)
{
	struct migration *m = src->m;
	pthread_t rp_thread;
	int err = mig_postcopy_handover(src, was_running, stop_ns, *fdp, &rp_thread);

	if (!err)
		err = mig_postcopy_run(src, rp_thread, fdp, was_running);
	if (!err) {
		/* Every page is on the destination: the rest of RAM goes back too. */
		mig_releaser_finish(src, true);
		mig_set_downtime(m, src->running.same_clock && src->running.first_run_ns >= stop_ns
				    ? src->running.first_run_ns - stop_ns : 0,
				 src->running.same_clock);
		if (src->running.same_clock && src->running.first_run_ns >= stop_ns)
			mig_breakdown_fit(&src->bd, stop_ns, src->running.first_run_ns);
		mig_set_breakdown(m, &src->bd);
	}
	mig_releaser_finish(src, false); /* no-op after success */
	mig_publish_conns(m, -1, -1);
	mig_src_close_side_channels(src);
	free((void *)src->pending);
	src->pending = NULL;
	free(src->released);
	src->released = NULL;
	free(src->pc_discard);
	src->pc_discard = NULL;
	src->pending_ready = false;
	free(src->unacked);
	src->unacked = NULL;
	return err;
}
