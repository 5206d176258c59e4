/*
 * The destination's guest RAM: preallocation ahead of the stream, and what
 * the stream's CRCs (format.h, version 2) make of arriving pages - in
 * precopy a page whose copy failed its check is suspect until it is sent
 * again; in postcopy it is not placed and is asked for again.
 */
#include "migration/internal.h"

/*
 * Destination: fault in guest RAM ahead of the stream.  The guest's RAM is
 * committed to it anyway; paying for the page faults while waiting for the
 * source (instead of inside every recv) is what -mem-prealloc does in QEMU.
 *
 * Follow mode (the default) stays within MIG_PREALLOC_AHEAD_BYTES of the
 * furthest page data the stream wrote, and skips what the stream passed: a
 * first pass comes in address order and sends nothing (precopy) or zero
 * runs (postcopy) for the source's memfd holes, so those are never
 * allocated here, and a 64 GiB guest that touched 2 GiB costs 2 GiB.
 */
#define MIG_PREALLOC_CHUNK_BYTES  (2ull << 20)
#define MIG_PREALLOC_AHEAD_BYTES  (64ull << 20)

void mig_prealloc_front(struct migration *m, uint64_t end)
{
	uint64_t front = atomic_load(&m->prealloc_front);

	while (end > front && !atomic_compare_exchange_weak(&m->prealloc_front, &front, end))
		;
	if (end > front && end >= atomic_load(&m->prealloc_want)) {
		pthread_mutex_lock(&m->prealloc_lock);
		pthread_cond_signal(&m->prealloc_cond);
		pthread_mutex_unlock(&m->prealloc_lock);
	}
}

/*
 * Follow mode: wait until the stream's front is within the look-ahead of
 * @off (or the thread is stopped).  The front in *@front.  Against
 * mig_prealloc_front(): this stores "want" then reads "front", that stores
 * "front" then reads "want" (both sequentially consistent), so either this
 * sees the new front or that one signals - under the lock this sleeps with.
 */
static void mig_prealloc_wait(struct migration *m, uint64_t off, uint64_t *front)
{
	uint64_t want = off + MIG_PREALLOC_CHUNK_BYTES > MIG_PREALLOC_AHEAD_BYTES
			? off + MIG_PREALLOC_CHUNK_BYTES - MIG_PREALLOC_AHEAD_BYTES : 0;

	pthread_mutex_lock(&m->prealloc_lock);
	atomic_store(&m->prealloc_want, want);
	while (atomic_load(&m->prealloc_front) < want && !atomic_load(&m->prealloc_stop))
		pthread_cond_wait(&m->prealloc_cond, &m->prealloc_lock);
	pthread_mutex_unlock(&m->prealloc_lock);
	*front = atomic_load(&m->prealloc_front);
}

void *mig_prealloc_thread(void *arg)
{
	struct migration *m = arg;
	/*
	 * Small steps: each holds the address-space lock for reading, and the
	 * postcopy switch (registering userfaultfd) needs it for writing; a
	 * 2 MiB step costs it a millisecond or two, a larger one would land in
	 * the guest's pause.
	 */
	const uint64_t chunk = MIG_PREALLOC_CHUNK_BYTES;
	uint64_t t0 = clock_monotonic_ns(), front;
	struct ram_block *rb = vm_ram_block(m->vm, 0);

	for (uint64_t off = 0; off < rb->bytes && !atomic_load(&m->prealloc_stop); off += chunk) {
		uint64_t n = rb->bytes - off < chunk ? rb->bytes - off : chunk;
		int r;

		if (m->prealloc_follow) {
			mig_prealloc_wait(m, off, &front);
			if (atomic_load(&m->prealloc_stop))
				break;
			if (off + n <= front) {
				/* The stream is past it: written, or a hole to keep. */
				uint64_t next = front / chunk * chunk;

				off = (next > off ? next : off + chunk) - chunk;
				continue;
			}
		}
		/* In postcopy's minor mode the guest's own mapping must show only
		 * received pages: allocate through the alias. */
		r = rb->alias ? ram_block_populate_alias(rb, off, n) : ram_block_populate(rb, off, n);
		if (r) {
			log_warn("migration: preallocating guest RAM failed (%s); pages will be "
				 "allocated as they arrive", strerror(-r));
			return NULL;
		}
		atomic_fetch_add(&m->prealloc_bytes, n);
	}
	atomic_store(&m->prealloc_ns, clock_monotonic_ns() - t0);
	log_debug("migration: %" PRIu64 " MiB of guest RAM preallocated in %.1f ms",
		  atomic_load(&m->prealloc_bytes) >> 20, (double)(clock_monotonic_ns() - t0) / 1e6);
	return NULL;
}

void mig_prealloc_join(struct migration *m)
{
	if (!m->prealloc_joinable)
		return;
	pthread_mutex_lock(&m->prealloc_lock);
	atomic_store(&m->prealloc_stop, true);
	pthread_cond_broadcast(&m->prealloc_cond);
	pthread_mutex_unlock(&m->prealloc_lock);
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
int mig_pc_prepare(struct migration *m)
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
void mig_pc_prepare_waiting(struct migration *m)
{
	if (!m->incoming || m->cpr_incoming || m->status != MIG_STATUS_SETUP ||
	    !m->params.postcopy_ram || m->pc_prepared)
		return;
	if (mig_pc_prepare(m))
		log_warn("postcopy: preparing guest RAM failed; trying again at the switch");
}

/* ---- CRC failures (stream version 2) ---- */

void mig_crc_dst_release(struct mig_crc_dst *c)
{
	for (unsigned b = 0; b < MIG_MAX_BLOCKS; b++)
		free(c->suspect[b]);
	free((void *)c->retry);
	free((void *)c->waiting);
	memset(c, 0, sizeof(*c));
}

void mig_crc_precopy_forget(struct mig_crc_dst *c, uint32_t block, uint64_t first, uint64_t n)
{
	uint64_t *bits = block < MIG_MAX_BLOCKS ? c->suspect[block] : NULL;

	for (uint64_t p = first; c->nsuspect && bits && p < first + n; p++) {
		if (bits[p / 64] & (1ull << (p % 64))) {
			bits[p / 64] &= ~(1ull << (p % 64));
			c->nsuspect--;
		}
	}
}

int mig_crc_precopy_pages(struct migration *m, struct mig_crc_dst *c, uint32_t block,
			  uint64_t block_pages, uint64_t first, uint32_t npages, const uint8_t *bad,
			  char *err, size_t errlen)
{
	mig_crc_precopy_forget(c, block, first, npages);
	for (uint32_t i = 0; bad && i < npages; i++) {
		uint64_t p = first + i;

		if (!bad[i])
			continue;
		if (!c->suspect[block]) {
			c->suspect[block] = calloc((block_pages + 63) / 64, sizeof(uint64_t));
			if (!c->suspect[block]) {
				snprintf(err, errlen, "out of memory for pages that failed their CRC "
					 "check");
				return -ENOMEM;
			}
		}
		c->suspect[block][p / 64] |= 1ull << (p % 64);
		c->nsuspect++;
		c->last_pass = (uint32_t)atomic_load(&m->passes) + 1;
		atomic_fetch_add(&m->crc_suspects, 1);
	}
	return 0;
}

int mig_crc_precopy_verdict(struct migration *m, const struct mig_crc_dst *c,
			    const struct mig_header *h, const char *when, char *err, size_t errlen)
{
	if (!c->nsuspect)
		return 0;
	atomic_fetch_add(&m->crc_mismatches, c->nsuspect);
	for (uint32_t b = 0; b < h->nblocks && b < MIG_MAX_BLOCKS; b++) {
		uint64_t words = (h->blocks[b].bytes / MIG_PAGE_BYTES + 63) / 64;

		for (uint64_t w = 0; c->suspect[b] && w < words; w++) {
			if (!c->suspect[b][w])
				continue;
			snprintf(err, errlen, "%" PRIu64 " page(s) failed their CRC check and were "
				 "not sent again before %s (the first: page %" PRIu64 " of block %s; "
				 "the last failure in pass %u): the stream was corrupted in transit; "
				 "the guest stays on the source", c->nsuspect, when,
				 w * 64 + (uint64_t)__builtin_ctzll(c->suspect[b][w]),
				 h->blocks[b].name, c->last_pass);
			return -EBADMSG;
		}
	}
	snprintf(err, errlen, "%" PRIu64 " page(s) failed their CRC check", c->nsuspect);
	return -EBADMSG;
}

int mig_crc_retry_mark(struct mig_crc_dst *c, uint64_t page, char *err, size_t errlen)
{
	uint64_t bit = 1ull << (page % 64);

	if (atomic_fetch_or(&c->retry[page / 64], bit) & bit) {
		snprintf(err, errlen, "page %" PRIu64 " failed its CRC check twice (sent again, "
			 "damaged again): the link corrupts data", page);
		return -EBADMSG;
	}
	atomic_fetch_or(&c->waiting[page / 64], bit);
	atomic_fetch_add(&c->nwaiting, 1);
	return 0;
}

bool mig_crc_retry_done(struct mig_crc_dst *c, uint64_t first, uint64_t n)
{
	bool last = false;

	if (!atomic_load(&c->nwaiting))
		return false;
	for (uint64_t p = first; p < first + n; p++) {
		uint64_t bit = 1ull << (p % 64);

		if (atomic_fetch_and(&c->waiting[p / 64], ~bit) & bit)
			last |= atomic_fetch_sub(&c->nwaiting, 1) == 1;
	}
	return last;
}

int mig_crc_dst_init(struct mig_crc_dst *c, uint64_t npages)
{
	size_t words = (size_t)((npages + 63) / 64);

	c->retry = calloc(words ? words : 1, sizeof(*c->retry));
	c->waiting = calloc(words ? words : 1, sizeof(*c->waiting));
	if (!c->retry || !c->waiting) {
		free((void *)c->retry);
		free((void *)c->waiting);
		c->retry = c->waiting = NULL;
		return -ENOMEM;
	}
	return 0;
}

void mig_crc_retry_reset(struct mig_crc_dst *c, uint64_t npages)
{
	for (uint64_t w = 0; c->retry && w < (npages + 63) / 64; w++) {
		atomic_store(&c->retry[w], 0);
		atomic_store(&c->waiting[w], 0);
	}
	atomic_store(&c->nwaiting, 0);
}
