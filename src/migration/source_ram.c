/*
 * The source: guest RAM pages into the stream, the first and the dirty passes.
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
#include "migration/internal.h"

bool mig_page_is_zero(const uint8_t *p)
{
	const uint64_t *q = (const uint64_t *)p;

	for (size_t i = 0; i < MIG_PAGE_BYTES / 8; i += 4)
		if (q[i] | q[i + 1] | q[i + 2] | q[i + 3])
			return false;
	return true;
}

void mig_flush_run(struct mig_src *src)
{
	struct migration *m = src->m;

	if (!src->run_len)
		return;
	/*
	 * The page CRCs are computed from guest memory now, and sendfile reads
	 * the pages later: a page the guest writes in between arrives with a
	 * CRC that does not match - but such a page is dirty and is sent
	 * again, and the destination holds it as suspect until then
	 * (docs/stream-format.md).  With the vCPUs stopped nothing writes.
	 */
	mig_save_ram_head(&src->s, src->header.version, 0, src->run_zero, src->run_len,
			  src->run_first, src->block->host + src->run_first * MIG_PAGE_BYTES);
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

void mig_add_zero_span(struct mig_src *src, uint64_t first, uint64_t n)
{
	mig_flush_run(src);
	while (n) {
		uint32_t k = n < UINT32_MAX ? (uint32_t)n : UINT32_MAX;

		if (src->sent_once)
			mig_bits_set(src->sent_once, first, k);
		src->run_first = first;
		src->run_zero = true;
		src->run_len = k;
		mig_flush_run(src);
		first += k;
		n -= k;
	}
}

void mig_add_page(struct mig_src *src, uint64_t page, bool zero)
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

/* Clears of the dirty log over holes: 256 MiB of pages a call. */
#define MIG_HOLE_CLEAR_PAGES (1u << 16)
static uint64_t mig_all_ones[MIG_HOLE_CLEAR_PAGES / 64];

/* Pass 1 over [@w, @end), a hole of the memfd: zero on both sides. */
static int mig_first_pass_hole(struct mig_src *src, uint64_t w, uint64_t end)
{
	struct migration *m = src->m;

	/* Never written, so never dirty: no page of it is read, here or later. */
	for (uint64_t p = w; p < end; p += MIG_HOLE_CLEAR_PAGES) {
		uint64_t n = end - p < MIG_HOLE_CLEAR_PAGES ? end - p : MIG_HOLE_CLEAR_PAGES;
		int err = vm_dirty_log_clear(m->vm, 0, p, (uint32_t)n, mig_all_ones);

		if (err)
			return err;
	}
	/*
	 * The destination's RAM is new: zero.  With postcopy it must know these
	 * pages are here, so zero runs (a few bytes each) say so.
	 */
	if (src->postcopy)
		mig_add_zero_span(src, w, end - w);
	else
		atomic_fetch_add(&m->zero_pages, end - w);
	return 0;
}

/*
 * Pass 1: every page, in windows.  Holes of the memfd (SEEK_DATA) are
 * skipped whole, however large: a sparse guest costs what it touched.
 */
int mig_first_pass(struct mig_src *src)
{
	struct migration *m = src->m;
	int fd = src->block->fd;

	if (!mig_all_ones[0])
		memset(mig_all_ones, 0xff, sizeof(mig_all_ones));
	for (uint64_t w = 0; w < src->npages;) {
		uint64_t n = src->npages - w < MIG_WINDOW_PAGES ? src->npages - w : MIG_WINDOW_PAGES;
		off_t data;
		int err;

		if (atomic_load(&m->cancel))
			return -ECANCELED;
		data = lseek(fd, (off_t)(w * MIG_PAGE_BYTES), SEEK_DATA);
		if (data < 0 || (uint64_t)data >= (w + n) * MIG_PAGE_BYTES) {
			/* Up to the window where data starts again (or the end). */
			uint64_t end = data < 0 ? src->npages
				       : (uint64_t)data / MIG_PAGE_BYTES / MIG_WINDOW_PAGES * MIG_WINDOW_PAGES;

			n = (end < src->npages ? end : src->npages) - w;
			err = mig_first_pass_hole(src, w, w + n);
		} else {
			err = vm_dirty_log_clear(m->vm, 0, w, (uint32_t)n, mig_all_ones);
			if (!err)
				mig_send_pages(src, w, n, NULL);
		}
		if (err)
			return err;
		w += n;
		atomic_store(&m->remaining_bytes, (src->npages - w) * MIG_PAGE_BYTES);
		if (stream_error(&src->s))
			return stream_error(&src->s);
	}
	return 0;
}

void mig_bits_set(uint64_t *bits, uint64_t first, uint64_t n)
{
	uint64_t p = first, end = first + n;

	for (; p < end && p % 64; p++)
		bits[p / 64] |= 1ull << (p % 64);
	for (; p + 64 <= end; p += 64)
		bits[p / 64] = ~0ull;
	for (; p < end; p++)
		bits[p / 64] |= 1ull << (p % 64);
}

uint64_t mig_popcount(const uint64_t *bits, uint64_t words)
{
	uint64_t n = 0;

	for (uint64_t i = 0; i < words; i++)
		n += (uint64_t)__builtin_popcountll(bits[i]);
	return n;
}

/* A later pass: the pages in src->bitmap.  @protect: re-arm logging first. */
int mig_dirty_pass(struct mig_src *src, bool protect)
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

/* ---- RAM as a migratable state (state.h) ---- */

static int mig_ram_save_setup(void *opaque, struct mig_save *sv)
{
	struct migration *m = opaque;
	int err = vm_dirty_log_start(m->vm);

	(void)sv;
	if (err) {
		log_error("migration: cannot start dirty logging: %s", strerror(-err));
		return err;
	}
	m->ram_logging = true;
	return 0;
}

/*
 * Dirty pages since the last sync: read KVM's log into the pass bitmap.
 * @count: and count them for the rate and what is pending (not at the
 * stop, where nothing reads the count: a scan of the bitmap less in the
 * pause).
 */
static int mig_ram_sync(struct migration *m, struct mig_src *src, bool count)
{
	uint64_t now, dirty;
	int err;

	/* All of the bitmap is written: no clearing first (vm.h). */
	err = vm_dirty_log_get(m->vm, 0, src->bitmap);
	if (err) {
		log_error("migration: reading the dirty log failed: %s", strerror(-err));
		return err;
	}
	atomic_fetch_add(&m->dirty_sync_count, 1);
	if (!count)
		return 0;
	now = clock_monotonic_ns();
	dirty = mig_popcount(src->bitmap, src->bitmap_words);
	atomic_store(&m->dirty_pages_rate,
		     (uint64_t)((double)dirty * 1e9 / (double)(now - src->ram_sync_ns + 1)));
	src->ram_sync_ns = now;
	src->ram_dirty_pages = dirty;
	return 0;
}

static int mig_ram_save_pending(void *opaque, struct mig_save *sv, bool sync, uint64_t *bytes)
{
	struct mig_src *src = sv->src;
	int err = 0;

	if (!src->ram_passes) {
		*bytes = src->npages * MIG_PAGE_BYTES; /* nothing sent yet */
		return 0;
	}
	if (sync)
		err = mig_ram_sync(opaque, src, true);
	*bytes = src->ram_dirty_pages * MIG_PAGE_BYTES;
	return err;
}

/* Pass 1 sends every page; a later pass what the last sync found dirty. */
static int mig_ram_save_iterate(void *opaque, struct mig_save *sv)
{
	struct mig_src *src = sv->src;
	int err;

	(void)opaque;
	if (!src->ram_passes)
		src->ram_sync_ns = clock_monotonic_ns();
	err = src->ram_passes ? mig_dirty_pass(src, true) : mig_first_pass(src);
	src->ram_passes++;
	return err;
}

/*
 * At a precopy stop: the pages dirtied since the last pass.  In postcopy
 * they follow after the destination runs (source_postcopy.c); in CPR the
 * memory is shared.
 */
static int mig_ram_save_complete(void *opaque, struct mig_save *sv,
				 const struct mig_save_info *info)
{
	int err;

	if (info->cpr || info->postcopy)
		return 0;
	err = mig_ram_sync(opaque, sv->src, false);
	return err ? err : mig_dirty_pass(sv->src, false);
}

static void mig_ram_save_cleanup(void *opaque, bool completed)
{
	struct migration *m = opaque;

	(void)completed;
	if (m->ram_logging)
		vm_dirty_log_stop(m->vm);
	m->ram_logging = false;
}

/* CPR: the RAM blocks' memfds go to the new process; nothing is copied. */
static int mig_ram_cpr_lend_fds(void *opaque, struct cpr_state *cs, char *err, size_t errlen)
{
	struct migration *m = opaque;

	for (size_t i = 0; i < vm_ram_block_count(m->vm); i++) {
		struct ram_block *rb = vm_ram_block(m->vm, i);
		/* lent, not given: the block keeps its fd */
		int r = cpr_state_add(cs, CPR_FD_RAM, rb->name, 0, rb->gpa, rb->bytes, rb->fd, err,
				      errlen);

		if (r)
			return r;
	}
	return 0;
}

static const struct mig_state_ops mig_ram_state_ops = {
	.name = "ram",
	.instances = 1,
	.save_setup = mig_ram_save_setup,
	.save_pending = mig_ram_save_pending,
	.save_iterate = mig_ram_save_iterate,
	.save_complete = mig_ram_save_complete,
	.save_cleanup = mig_ram_save_cleanup,
	.cpr_lend_fds = mig_ram_cpr_lend_fds,
};

int mig_register_ram_state(struct migration *m)
{
	return migration_register_state(m, &mig_ram_state_ops, m);
}
