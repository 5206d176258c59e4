/* The incoming side: load thread, urgent thread, preallocation, postcopy recovery. */
#include "migration/internal.h"

/* ---- destination ---- */

struct mig_dst {
	struct migration *m;
	uint8_t src_boot_id[MIG_BOOT_ID_BYTES];
	struct mig_header header;
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
	_Atomic pid_t urgent_tid;    /* the urgent thread's, 0 when none: its policy is set from outside */
	atomic_bool urgent_failed;
	uint64_t first_run_ns;
	_Atomic uint64_t run_at_ns;  /* when RUN was handled: RAM is under userfaultfd */
	uint64_t discard_ns, discard_pages; /* load thread: discarding since the last PING
					     * (the pre-discard's), for the log */
	uint64_t sections_ns;        /* load thread: time spent loading device state */
	struct mig_breakdown bd;     /* load thread: this side of the pause */
	atomic_bool closing;         /* mig_dst_finish runs: the urgent thread must go */
	struct mig_crc_dst crc;      /* pages whose copy failed its CRC */
	bool pong_held;              /* under rp_lock: PONG(pong_id) waits for pages asked */
	uint32_t pong_id;            /* for again after a bad copy (see mig_dst_ping) */
};

/* Each reader of RAM records: the load thread and the urgent thread. */
struct mig_dst_chan {
	struct mig_dst *d;
	uint8_t *bounce;             /* MIG_RUN_MAX_PAGES pages, for UFFDIO_COPY */
	struct stream *s;            /* the stream being read, for mig_dst_fill */
};

static void mig_dst_release_pong(struct mig_dst *d);

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

/*
 * Postcopy, a record in c->bounce of which some pages failed their CRC
 * (bad[i]): place the good pages; ask for each bad one again (PAGE_RESEND,
 * on the return path) - a second bad copy of a page fails.  0 or the error
 * (in @err).
 */
static int mig_dst_place_checked(struct mig_dst_chan *c, uint64_t first_page, uint32_t npages,
				 const uint8_t *bad, char *err, size_t errlen)
{
	struct mig_dst *d = c->d;
	uint32_t done = 0;

	while (done < npages) {
		uint32_t k = 0;
		int r;

		while (done + k < npages && !bad[done + k])
			k++;
		if (k) {
			r = postcopy_dst_place(d->pd, first_page + done, k,
					       c->bounce + (size_t)done * MIG_PAGE_BYTES);
			if (r) {
				snprintf(err, errlen, "placing pages %" PRIu64 "+%u failed: %s",
					 first_page + done, k, strerror(-r));
				return r;
			}
			if (mig_crc_retry_done(&d->crc, first_page + done, k))
				mig_dst_release_pong(d);
			done += k;
			continue;
		}
		/* page first_page + done failed its CRC: not placed */
		atomic_fetch_add(&d->m->crc_mismatches, 1);
		r = mig_crc_retry_mark(&d->crc, first_page + done, err, errlen);
		if (r)
			return r;
		log_debug("postcopy: page %" PRIu64 " failed its CRC check; asking for it again",
			  first_page + done);
		atomic_fetch_add(&d->m->crc_resends, 1);
		pthread_mutex_lock(&d->rp_lock);
		if (d->rp_connected) /* else the resume's bitmap asks for it */
			mig_rp_send_page_resend(&d->rp, 0, first_page + done, 1);
		pthread_mutex_unlock(&d->rp_lock);
		done++;
	}
	return 0;
}

static int mig_dst_ram(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages,
		       bool zero, const uint32_t *page_crcs, struct stream *s, char *err,
		       size_t errlen)
{
	struct mig_dst_chan *c = opaque;
	struct mig_dst *d = c->d;
	/* The header callback checked that the block matches ours. */
	struct ram_block *rb = vm_ram_block(d->m->vm, block);
	uint64_t off = first_page * MIG_PAGE_BYTES, len = (uint64_t)npages * MIG_PAGE_BYTES;
	int r;

	if (d->pd && atomic_load(&d->run_at_ns) && !zero && !page_crcs &&
	    postcopy_dst_minor(d->pd)) {
		/* (pages with CRCs go through the bounce buffer: checked, then placed) */
		r = mig_dst_ram_minor(c, first_page, npages, s);
		if (r && !stream_error(s)) {
			snprintf(err, errlen, "placing pages %" PRIu64 "+%u failed: %s", first_page,
				 npages, strerror(-r));
			return r;
		}
	} else if (d->pd && atomic_load(&d->run_at_ns)) {
		/* Postcopy: guest RAM is under userfaultfd; place atomically. */
		uint8_t bad[MIG_RUN_MAX_PAGES];
		uint32_t nbad = 0;

		if (!zero)
			nbad = mig_get_pages_checked(s, c->bounce, npages, page_crcs, bad);
		if (stream_error(s))
			return 0; /* the caller reports the stream error */
		if (nbad)
			return mig_dst_place_checked(c, first_page, npages, bad, err, errlen);
		r = postcopy_dst_place(d->pd, first_page, npages, zero ? NULL : c->bounce);
		if (r) {
			snprintf(err, errlen, "placing pages %" PRIu64 "+%u failed: %s", first_page,
				 npages, strerror(-r));
			return r;
		}
		if (mig_crc_retry_done(&d->crc, first_page, npages))
			mig_dst_release_pong(d);
	} else {
		uint8_t bad[MIG_RUN_MAX_PAGES];
		uint32_t nbad = 0;

		if (!zero) {
			nbad = mig_get_pages_checked(s, rb->host + off, npages, page_crcs, bad);
		} else if (fallocate(rb->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				     (off_t)off, (off_t)len) < 0) {
			/* Free and zero them: nothing is read, nothing allocated. */
			memset(rb->host + off, 0, len);
		}
		if (stream_error(s))
			return 0;
		/* Precopy: the guest does not run here yet, so a bad copy may sit
		 * in its memory as long as it is replaced before the stop. */
		r = mig_crc_precopy_pages(d->m, &d->crc, block, rb->bytes / MIG_PAGE_BYTES,
					  first_page, npages, nbad ? bad : NULL, err, errlen);
		if (r)
			return r;
		if (d->pd)
			postcopy_dst_mark_received(d->pd, first_page, npages);
	}
	if (!zero)
		mig_prealloc_front(d->m, off + len);
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

static int mig_dst_section_common(void *opaque, uint32_t id, uint32_t instance,
				  uint32_t version, bool part, const uint8_t *data, uint32_t len,
				  char *err, size_t errlen)
{
	struct mig_dst *d = ((struct mig_dst_chan *)opaque)->d;
	uint64_t t0 = clock_monotonic_ns();
	int r;

	if (d->m->cpr_incoming && !d->cpr_seen) {
		snprintf(err, errlen, "guest RAM came over the cpr channel, but this is a normal "
			 "migration stream: set mode cpr-transfer on the source");
		return -EBADMSG;
	}
	r = mig_states_load(d->m, id, instance, version, part, data, len, err, errlen);
	/* The pause's device-state time; after RUN parts come on two threads
	 * (main and urgent: a disk's blocks) and are no part of it. */
	if (!atomic_load(&d->run_at_ns))
		d->sections_ns += clock_monotonic_ns() - t0;
	return r;
}

/* A section: the state that registered its id loads it. */
static int mig_dst_section(void *opaque, uint32_t id, uint32_t instance, uint32_t version,
			   const uint8_t *data, uint32_t len, char *err, size_t errlen)
{
	return mig_dst_section_common(opaque, id, instance, version, false, data, len, err, errlen);
}

static int mig_dst_section_part(void *opaque, uint32_t id, uint32_t instance, uint32_t version,
				const uint8_t *data, uint32_t len, char *err, size_t errlen)
{
	return mig_dst_section_common(opaque, id, instance, version, true, data, len, err, errlen);
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

int mig_request(struct migration *m, uint32_t section_id, uint32_t instance, uint64_t offset,
		uint32_t len)
{
	int r = -ENOTCONN;

	if (len == 0 || len > MIG_STATE_REQ_MAX_BYTES)
		return -EINVAL;
	pthread_mutex_lock(&m->lock);
	if (m->dst) {
		struct mig_dst *d = m->dst;

		pthread_mutex_lock(&d->rp_lock);
		if (d->rp_connected) {
			/* As mig_dst_request: the urgent connection when the source reads it. */
			struct stream *to = d->req_ready ? &d->req : &d->rp;

			mig_rp_send_state_req(to, section_id, instance, offset, len);
			r = stream_error(to);
		}
		pthread_mutex_unlock(&d->rp_lock);
	}
	pthread_mutex_unlock(&m->lock);
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

/*
 * Test hook: whether VMFERRY_DST_FAULT names @point.  Tests use it to
 * put the destination's steps in an order the network may produce, or to
 * fail one that the host rarely fails (settle-fails: an fdatasync error;
 * settle-silent: the source never hears the outcome).
 */
static bool mig_test_fault(const char *point)
{
	const char *want = getenv("VMFERRY_DST_FAULT");

	if (!want || strcmp(want, point))
		return false;
	log_warn("VMFERRY_DST_FAULT=%s", point);
	return true;
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
 * time slice (100 µs: the shortest the kernel takes).  With the default
 * slice one request in a few dozen waited 1-4 ms for this thread;
 * real-time throughout would cost the median instead (its wake-up crosses
 * CPUs: p50 82-94 against 57-58 µs).  Kernels before 6.12 ignore the
 * slice: plain normal policy there.
 */
#define MIG_URGENT_SLICE_NS 100000ull

/* The urgent thread's (kernel id @tid) policy: as the fault thread's, or a short slice. */
static void mig_urgent_policy(pid_t tid, bool rt)
{
	thread_set_latency_critical_of(tid, rt);
	if (!rt && thread_set_short_slice_of(tid, MIG_URGENT_SLICE_NS))
		log_debug("postcopy: the urgent thread keeps the default time slice");
}

void mig_dst_pagepath_policy_changed(struct migration *m)
{
	pid_t tid;

	pthread_mutex_lock(&m->lock);
	if (m->dst) {
		postcopy_dst_policy_changed(m->dst->pd);
		tid = atomic_load(&m->dst->urgent_tid);
		if (tid)
			mig_urgent_policy(tid, atomic_load(&m->pagepath_rt));
	}
	pthread_mutex_unlock(&m->lock);
}

/* Urgent thread: requested pages, straight into guest RAM. */
static void *mig_urgent_thread(void *arg)
{
	struct mig_dst *d = arg;
	struct migration *m = d->m;
	static const struct mig_load_ops ops = { .ram = mig_dst_ram,
						 .section_part = mig_dst_section_part };
	struct mig_dst_chan c = { .d = d, .bounce = malloc((size_t)MIG_RUN_MAX_PAGES * MIG_PAGE_BYTES) };
	struct stream s;
	char err[256];
	bool requests_here = false;
	int fd, r;

	pthread_setname_np(pthread_self(), "pc-urgent");
	pthread_mutex_lock(&m->lock); /* against mig_dst_pagepath_policy_changed */
	atomic_store(&d->urgent_tid, (pid_t)syscall(SYS_gettid));
	mig_urgent_policy(0, atomic_load(&m->pagepath_rt));
	pthread_mutex_unlock(&m->lock);
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
	}
	if (r == -EILSEQ)
		atomic_fetch_add(&m->crc_mismatches, 1);
	if (r && !atomic_load(&m->cancel) && !atomic_load(&d->closing)) {
		mig_dst_urgent_broke(d, err);
		atomic_store(&d->urgent_failed, true);
	}
	mig_dst_req_close(d);
	pthread_mutex_lock(&m->lock);
	atomic_store(&d->urgent_tid, 0);
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
		r = mig_crc_dst_init(&d->crc, vm_ram_block(m->vm, 0)->bytes / MIG_PAGE_BYTES);
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

/*
 * A PONG tells the source it may give back every page sent before the
 * PING; a page asked for again after a bad copy may be one of them, so
 * PONGs wait while any is outstanding:
 *
 *   source                         destination
 *   page p (damaged) ------------>  CRC fails: not placed
 *                   <------------  PAGE_RESEND p
 *   PING 7 ---------------------->  p outstanding: PONG 7 held
 *   page p ---------------------->  placed: PONG 7 sent now
 *                   <------------  PONG 7: the source releases p
 */
static void mig_dst_release_pong(struct mig_dst *d)
{
	pthread_mutex_lock(&d->rp_lock);
	if (d->pong_held && d->rp_connected && !atomic_load(&d->crc.nwaiting)) {
		mig_rp_send_pong(&d->rp, d->pong_id);
		d->pong_held = false;
	}
	pthread_mutex_unlock(&d->rp_lock);
}

static int mig_dst_ping(void *opaque, uint32_t id)
{
	struct mig_dst *d = ((struct mig_dst_chan *)opaque)->d;
	int r = -EPIPE;

	/* what follows is inside the pause */
	d->discard_ns = d->discard_pages = d->sections_ns = 0;
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
	if (d->rp_connected && atomic_load(&d->crc.nwaiting)) {
		d->pong_held = true; /* sent by mig_dst_release_pong */
		d->pong_id = id;
		r = 0;
	} else if (d->rp_connected) {
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

	/* fetched again in postcopy: a copy that failed its CRC does not matter */
	mig_crc_precopy_forget(&c->d->crc, block, first_page, npages);
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

	r = mig_crc_precopy_verdict(m, &d->crc, &d->header, "postcopy's start", err, errlen);
	if (r)
		return r;
	/* Missing mode: preallocation would fill pages that must fault, so it
	 * stops here; minor mode: it goes on, through the alias. */
	if (!vm_ram_block(m->vm, 0)->alias)
		mig_prealloc_join(m);
	r = postcopy_dst_listen(d->pd);
	d->bd.uffd_ns = clock_monotonic_ns() - start;
	if (r) {
		snprintf(err, errlen, "cannot put guest RAM under userfaultfd: %s", strerror(-r));
		return r;
	}
	vm_set_ram_arriving(m->vm, true);
	mig_dst_vcpu_nice(m, true);
	log_debug("postcopy: listening after %.3f ms", (double)(clock_monotonic_ns() - start) / 1e6);
	d->run_at_ns = start;
	r = mig_states_load_complete(m, err, errlen);
	if (r)
		return r;
	pthread_mutex_lock(&m->lock);
	m->dst = d; /* states may ask for their data now (mig_request) */
	pthread_mutex_unlock(&m->lock);
	mig_dst_pagepath_policy_changed(m); /* mig_dst_vcpu_nice came before m->dst */
	d->bd.start_ns = clock_monotonic_ns();
	r = vm_incoming_finish(m->vm, m->in_vm.was_running, &d->first_run_ns);
	if (r) {
		snprintf(err, errlen, "cannot start the guest");
		return r;
	}
	if (!d->first_run_ns)
		d->first_run_ns = clock_monotonic_ns();
	/* until the first vCPU ran: the pause ends there, not when all did */
	d->bd.start_ns = d->first_run_ns > d->bd.start_ns ? d->first_run_ns - d->bd.start_ns : 0;
	mig_boot_id(boot_id);
	same_clock = !memcmp(boot_id, d->src_boot_id, MIG_BOOT_ID_BYTES);
	if (same_clock && m->in_vm.stop_ns && start > m->in_vm.stop_ns)
		log_debug("postcopy: pause: RUN arrived %.3f ms after the source stopped (%.3f ms "
			  "of it discarding %" PRIu64 " pages, %.3f ms loading device state), the "
			  "vCPUs run %.3f ms later", (double)(start - m->in_vm.stop_ns) / 1e6,
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
	if (same_clock && m->in_vm.was_running && d->first_run_ns >= m->in_vm.stop_ns)
		mig_set_downtime(m, d->first_run_ns - m->in_vm.stop_ns, true);
	if (same_clock && m->in_vm.stop_ns && start > m->in_vm.stop_ns)
		d->bd.receive_ns = start - m->in_vm.stop_ns;
	d->bd.discard_ns = d->discard_ns;
	d->bd.load_ns = d->sections_ns;
	mig_set_breakdown(m, &d->bd);
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
		if (m->main_ch.cu.kind == CHANNEL_UNIX)
			unlink(m->main_ch.cu.path);
	}
}

static void mig_dst_finish(struct migration *m, struct mig_dst *d, struct stream *s, int fd,
			   struct mig_dst_chan *chan, bool completed)
{
	pthread_mutex_lock(&m->lock);
	m->dst = NULL; /* mig_request: no more requests through d */
	pthread_mutex_unlock(&m->lock);
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
	mig_end_main_channel(m, s, fd);
	if (d->rp_fd >= 0) {
		stream_release(&d->rp);
		close(d->rp_fd);
	}
	free(chan->bounce);
	mig_crc_dst_release(&d->crc);
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
	m->main_ch = m->recover_ch;
	pthread_mutex_unlock(&m->lock);
	log_info("postcopy: waiting on %s for the source to resume", m->main_ch.uri);
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
			  uint64_t deadline_ns, char *why, size_t whylen)
{
	uint64_t npages = postcopy_dst_npages(d->pd), outstanding = 0;
	uint8_t *bits = NULL;
	int fd, r;

	fd = channel_accept(m->listen_fd, !deadline_ns ? -1
				 : clock_monotonic_ns() >= deadline_ns ? 0
				 : (int)((deadline_ns - clock_monotonic_ns()) / 1000000 + 1), m->cancel_fd);
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
	/* Nothing places pages while paused.  The bitmap below asks for every
	 * page not held, those asked for again after a bad copy too, and what
	 * PONG was held for belongs to the broken connection. */
	mig_crc_retry_reset(&d->crc, npages);
	d->pong_held = false;
	d->urgent_started = pthread_create(&d->urgent_thread, NULL, mig_urgent_thread, d) == 0;
	pthread_mutex_lock(&d->rp_lock);
	postcopy_dst_received_bits(d->pd, bits);
	mig_rp_send_recv_bitmap(&d->rp, 0, npages, bits);
	if (!stream_error(&d->rp)) /* then each state's (state.h's load_received) */
		mig_states_send_bitmaps(m, &d->rp);
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
 * Automatic recovery: listen again where the migration first came in, as
 * migrate-recover would (unless an operator's migrate-recover came first).
 */
static void mig_dst_auto_listen(struct migration *m)
{
	int fd = channel_listen(&m->incoming_ch.cu);

	if (fd < 0) {
		log_warn("postcopy: automatic recovery cannot listen on %s (%s); migrate-recover "
			 "to resume", m->incoming_ch.uri, strerror(-fd));
		return;
	}
	pthread_mutex_lock(&m->lock);
	if (m->recover_fd < 0 && m->listen_fd < 0) {
		m->recover_fd = fd;
		m->recover_ch = m->incoming_ch;
		fd = -1;
		pthread_cond_broadcast(&m->cond);
	}
	pthread_mutex_unlock(&m->lock);
	if (fd >= 0)
		close(fd);
}

/*
 * Paused destination: until the source resumes.  Unless the pause was
 * @deliberate, it first listens again on its own (postcopy-recover-timeout);
 * when no source came back by then it closes that listener and waits for
 * migrate-recover.  0 resumed, -ECANCELED the VMM is going.
 */
static int mig_dst_paused(struct migration *m, struct mig_dst *d, struct stream *s, int *fdp,
			  bool deliberate)
{
	uint64_t deadline_ns = mig_auto_recover_deadline(m, deliberate);

	if (deadline_ns)
		mig_dst_auto_listen(m);
	for (;;) {
		if (mig_dst_wait_recover(m))
			return -ECANCELED;
		for (;;) {
			char why[MIG_ERROR_BYTES];
			int r = mig_dst_resume(m, d, s, fdp, deadline_ns, why, sizeof(why));

			if (!r)
				return 0;
			if (r == -ECANCELED || mig_closing(m))
				return -ECANCELED;
			mig_dst_drop_conns(m, d, s, fdp);
			if (r == -ETIMEDOUT && deadline_ns)
				break;
			mig_replace_error(m, "postcopy paused: a resume attempt on %s failed: %s",
					  m->main_ch.uri, why);
		}
		mig_dst_close_listener(m);
		deadline_ns = 0;
		mig_replace_error(m, "postcopy paused: the source did not come back within the "
				  "automatic recovery's postcopy-recover-timeout; migrate-recover to "
				  "resume by hand");
	}
}

/*
 * Postcopy, every page and block here: what a state left to make durable
 * (a disk whose blocks had all arrived before the switch), before COMPLETE.
 * The guest runs here whatever happens, so a failure is only logged, as a
 * disk's own fdatasync after its last postcopy block is.
 */
static void mig_dst_postcopy_settle(struct migration *m)
{
	char errbuf[MIG_ERROR_BYTES];

	if (mig_states_load_settle(m, errbuf, sizeof(errbuf)) < 0)
		log_error("postcopy: the guest runs here, but its data is not durable: %s", errbuf);
}

static int mig_dst_postcopy(struct migration *m, struct mig_dst *d, struct stream *s, int *fdp,
			    struct mig_dst_chan *chan, int err, char *errbuf, size_t errlen)
{
	static const struct mig_load_ops ops = { .ram = mig_dst_ram, .ping = mig_dst_ping,
						 .section_part = mig_dst_section_part };
	char reason[MIG_ERROR_BYTES + 64];
	bool deliberate;

	for (;;) {
		if (!err) {
			/* END: requested pages (and states' data) may still be on the
			 * urgent channel. */
			for (int i = 0, n = MIG_RP_TIMEOUT_MS; i < n && (postcopy_dst_missing(d->pd) ||
					mig_states_load_pending(m)) &&
					!atomic_load(&d->urgent_failed) && !mig_closing(m); i++) {
				struct timespec ms = { 0, 1000000 };

				nanosleep(&ms, NULL);
			}
			if (!postcopy_dst_missing(d->pd) && !mig_states_load_pending(m)) {
				mig_dst_postcopy_settle(m);
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
			snprintf(errbuf, errlen, "%" PRIu64 " pages and %" PRIu64 " bytes of device "
				 "data never arrived", postcopy_dst_missing(d->pd),
				 mig_states_load_pending(m));
			err = -EIO;
		}
		if (mig_closing(m))
			return -ECANCELED;
		pthread_mutex_lock(&m->lock);
		deliberate = m->pause_requested;
		snprintf(reason, sizeof(reason), "%s", deliberate ? "migrate-pause" : "");
		pthread_mutex_unlock(&m->lock);
		if (!reason[0])
			snprintf(reason, sizeof(reason), "the connection to the source broke (%.*s); "
				 "the guest keeps running here and waits for the %" PRIu64 " missing "
				 "pages: migrate-recover to resume (if the source is gone they are lost)",
				 (int)MIG_ERROR_BYTES / 2, errbuf, postcopy_dst_missing(d->pd));
		mig_dst_drop_conns(m, d, s, fdp);
		mig_dst_close_listener(m);
		mig_enter_paused(m, reason);
		if (mig_dst_paused(m, d, s, fdp, deliberate))
			return -ECANCELED;
		mig_leave_paused(m);
		do
			err = mig_load_resumed_record(s, &d->header, &ops, chan, errbuf, errlen);
		while (err == 1);
	}
}

/*
 * Accept the source's main connection; the return path writes to a dup of
 * it.  0, -ECANCELED, -ENOTCONN (no connection came), or -1 with the
 * error set (the connection came and failed).
 */
static int mig_in_accept(struct migration *m, struct mig_dst *d, struct stream *s, int *fdp)
{
	/* A live update's new process holds the guest's memory: it must not
	 * wait forever for an old process that went away or silent. */
	int wait_ms = m->cpr_incoming ? mig_env_ms("VMFERRY_CPR_MAIN_WAIT_MS",
						   MIG_CPR_MAIN_WAIT_DEFAULT_MS) : -1;
	int fd = channel_accept(m->listen_fd, wait_ms, m->cancel_fd), err;

	if (fd == -ETIMEDOUT && m->cpr_incoming) {
		mig_set_error(m, "live update: the old process handed over the guest's memory but "
			      "did not connect the main channel (%s) within %d ms: giving up, "
			      "releasing every fd it handed over", m->main_ch.uri, wait_ms);
		return -1;
	}
	if (fd < 0) {
		if (fd != -ECANCELED)
			mig_set_error(m, "accepting the migration connection failed: %s", strerror(-fd));
		return fd == -ECANCELED ? fd : -ENOTCONN;
	}
	mig_set_time(m, &m->start_ns, clock_monotonic_ns());
	err = stream_init(s, fd, MIG_IO_TIMEOUT_MS);
	d->rp_fd = dup(fd);
	if (err || d->rp_fd < 0 || stream_init(&d->rp, d->rp_fd, MIG_IO_TIMEOUT_MS)) {
		mig_set_error(m, "stream setup failed");
		if (!err)
			stream_release(s);
		close(fd);
		if (d->rp_fd >= 0)
			close(d->rp_fd);
		d->rp_fd = -1;
		return -1;
	}
	d->rp_connected = true;
	*fdp = fd;
	pthread_mutex_lock(&m->lock);
	m->stream = s;
	pthread_mutex_unlock(&m->lock);
	mig_publish_conns(m, fd, -1);
	mig_set_status(m, MIG_STATUS_ACTIVE);
	return 0;
}

/* Read the main stream up to END, or up to a break after RUN.  0 or the error. */
static int mig_in_load(struct migration *m, struct mig_dst *d, struct stream *s,
		       struct mig_dst_chan *chan, struct mig_load_stats *st, char *errbuf,
		       size_t errlen)
{
	struct mig_section_kind kinds[MIG_STATE_MAX];
	const struct mig_load_ops ops = {
		.section_kinds = kinds,
		.nsection_kinds = mig_states_section_kinds(m, kinds),
		.header = mig_dst_header,
		.ram = mig_dst_ram,
		.section = mig_dst_section,
		.section_part = mig_dst_section_part,
		.pass_end = mig_dst_pass_end,
		.postcopy_advise = mig_dst_advise,
		.postcopy_discard = mig_dst_discard,
		.postcopy_run = mig_dst_run,
		.ping = mig_dst_ping,
		.cpr = mig_dst_cpr,
	};
	int err;

	memset(st, 0, sizeof(*st));
	chan->bounce = malloc((size_t)MIG_RUN_MAX_PAGES * MIG_PAGE_BYTES);
	if (!chan->bounce) {
		snprintf(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
	err = mig_load(s, &ops, chan, st, errbuf, errlen);
	if (err == -EILSEQ) /* a record's CRC (a page's is counted where it is checked) */
		atomic_fetch_add(&m->crc_mismatches, 1);
	atomic_store(&m->zero_pages, st->zero_pages);
	atomic_store(&m->normal_pages, st->data_pages);
	(void)d;
	return err;
}

/*
 * Precopy, the guest running here: make durable what the source keeps
 * until this side has it (a disk's blocks: the fdatasync that used to sit
 * inside the pause), then COMPLETE.  A failure is told to the source (it
 * keeps its copy) and logged; the guest runs on here either way.
 */
static void mig_in_settle(struct migration *m, struct mig_dst *d)
{
	char errbuf[MIG_ERROR_BYTES];
	uint64_t t0 = clock_monotonic_ns();
	int r = mig_states_load_settle(m, errbuf, sizeof(errbuf));

	if (r > 0 && mig_test_fault("settle-fails")) {
		r = -EIO;
		snprintf(errbuf, sizeof(errbuf), "fdatasync: %s (VMFERRY_DST_FAULT)", strerror(EIO));
	}
	if (r > 0 && mig_test_fault("settle-silent"))
		return;
	if (r < 0) {
		log_error("migration: the guest runs here, but its data is not durable: %s", errbuf);
		mig_dst_rp_error(d, r, errbuf);
		return;
	}
	if (r == 0)
		return;
	log_debug("migration: settled in %.3f ms after the guest started",
		  (double)(clock_monotonic_ns() - t0) / 1e6);
	pthread_mutex_lock(&d->rp_lock);
	if (d->rp_connected && !stream_error(&d->rp))
		mig_rp_send_complete(&d->rp);
	pthread_mutex_unlock(&d->rp_lock);
}

/* Precopy's end, every section in: start the guest here, tell the source.  0 or -1. */
static int mig_in_start_guest(struct migration *m, struct mig_dst *d, uint64_t end_ns)
{
	char errbuf[MIG_ERROR_BYTES];
	uint8_t boot_id[MIG_BOOT_ID_BYTES];
	uint64_t first_run_ns = 0;
	bool same_clock;
	int err = mig_states_load_complete(m, errbuf, sizeof(errbuf));

	if (err) {
		mig_set_error(m, "incoming migration failed: %s", errbuf);
		mig_dst_rp_error(d, err, m->error);
		return -1;
	}
	/* Not needed any more; it must not compete with the vCPUs. */
	atomic_store(&m->prealloc_stop, true);
	if (m->cpr_incoming)
		cpr_fault_point("before-run");
	d->bd.start_ns = clock_monotonic_ns();
	err = vm_incoming_finish(m->vm, m->in_vm.was_running, &first_run_ns);
	if (err) {
		mig_set_error(m, "cannot start the guest after loading");
		mig_dst_rp_error(d, err, m->error);
		return -1;
	}
	/* until the first vCPU ran: the pause ends there, not when all did */
	d->bd.start_ns = first_run_ns > d->bd.start_ns ? first_run_ns - d->bd.start_ns : 0;
	mig_boot_id(boot_id);
	same_clock = !memcmp(boot_id, d->src_boot_id, MIG_BOOT_ID_BYTES);
	if (!first_run_ns)
		first_run_ns = clock_monotonic_ns();
	mig_dst_rp_running(d, first_run_ns, same_clock, first_run_ns - end_ns);
	if (same_clock && m->in_vm.was_running && first_run_ns >= m->in_vm.stop_ns)
		mig_set_downtime(m, first_run_ns - m->in_vm.stop_ns, true);
	if (same_clock && m->in_vm.stop_ns && end_ns > m->in_vm.stop_ns)
		d->bd.receive_ns = end_ns - m->in_vm.stop_ns;
	d->bd.load_ns = d->sections_ns;
	mig_set_breakdown(m, &d->bd);
	mig_in_settle(m, d);
	return 0;
}

/*
 * After the load: postcopy goes on until every page is here; precopy
 * starts the guest.  0 completed, or -1 with the error set.
 */
static int mig_in_finish_load(struct migration *m, struct mig_dst *d, struct stream *s,
			      int *fdp, struct mig_dst_chan *chan, int err, char *errbuf,
			      size_t errlen)
{
	bool ran = d->run_at_ns != 0;

	if (ran && !d->run_unconfirmed) {
		/* Postcopy: from here a broken channel pauses instead of failing. */
		if (!mig_dst_postcopy(m, d, s, fdp, chan, err, errbuf, errlen))
			return 0;
		mig_set_error(m, "the VMM is shutting down during postcopy; pages that had not "
			      "arrived are lost");
		vm_request_exit(m->vm, 1);
		return -1;
	}
	if (err) {
		if (ran)
			mig_set_error(m, "postcopy failed after the guest started here: %s; the source "
				      "may not know it runs here, so it cannot continue", errbuf);
		else
			mig_set_error(m, "incoming migration failed: %s", errbuf);
		mig_dst_rp_error(d, err, m->error);
		/* Stop the vCPUs before closing userfaultfd lets them see holes. */
		if (ran)
			vm_request_exit(m->vm, 1);
		return -1;
	}
	err = mig_crc_precopy_verdict(m, &d->crc, &d->header, "the end", errbuf, errlen);
	if (err) {
		mig_set_error(m, "incoming migration failed: %s", errbuf);
		mig_dst_rp_error(d, err, m->error);
		return -1;
	}
	return mig_in_start_guest(m, d, clock_monotonic_ns());
}

void *mig_incoming_thread(void *arg)
{
	struct migration *m = arg;
	struct mig_dst d = { .m = m, .rp_fd = -1 };
	struct mig_dst_chan chan = { .d = &d };
	struct mig_load_stats st;
	struct stream s;
	char errbuf[MIG_ERROR_BYTES];
	int fd = -1, err;

	pthread_mutex_init(&d.rp_lock, NULL);
	err = mig_in_accept(m, &d, &s, &fd);
	if (err) {
		mig_finish_failed(m);
		pthread_mutex_destroy(&d.rp_lock);
		if (err == -1)
			vm_request_exit(m->vm, 1); /* the VMM waited for this stream only */
		return NULL;
	}
	err = mig_in_load(m, &d, &s, &chan, &st, errbuf, sizeof(errbuf));
	if (mig_in_finish_load(m, &d, &s, &fd, &chan, err, errbuf, sizeof(errbuf))) {
		mig_dst_finish(m, &d, &s, fd, &chan, false);
		mig_dst_vcpu_nice(m, false);
		mig_states_end(m, false, false);
		mig_finish_failed(m);
		/* Half-loaded RAM cannot be reused: the destination VMM ends here. */
		vm_request_exit(m->vm, 1);
		return NULL;
	}
	mig_dst_finish(m, &d, &s, fd, &chan, true);
	vm_set_ram_arriving(m->vm, false); /* every page is here (or it never was postcopy) */
	mig_dst_vcpu_nice(m, false);
	mig_states_end(m, false, true);
	mig_set_status(m, MIG_STATUS_COMPLETED);
	log_info("incoming migration completed: %" PRIu64 " data pages, %" PRIu64
		 " zero pages, downtime %.3f ms", st.data_pages, st.zero_pages,
		 (double)m->downtime_ns / 1e6);
	log_debug("migration: the load thread used %.1f ms of CPU", clock_thread_cpu_ns() / 1e6);
	return NULL;
}
