/*
 * Storage migration of a disk only the source has; see blk_migrate.h and
 * docs/devices.md "Storage migration".
 *
 * The source's walk and the guest's writes, as a timeline: the walk clears
 * a block's dirty bit *before* it looks at the file (SEEK_DATA, pread), and
 * the disk's thread sets it *after* a write completed.  So a write that
 * completed before the clear is in what the walk reads, and one that
 * completes after it sets the bit again and is sent again:
 *
 *   migration thread                    disk thread
 *   take bit k (clear)
 *                                        write to k completes -> mark k
 *   SEEK_DATA / pread k (old or new)
 *   send k ........................... k dirty again: sent once more
 *
 * At the stop the VM's pause has drained the disk, so the last walk sees
 * every write the guest was told was done.
 */
#include "devices/virtio_blk_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>
#include <liburing.h>

#include "migration/state.h"
#include "util/log.h"

_Static_assert(BLKMIG_SETUP_ID_BYTES == VIRTIO_BLK_ID_BYTES, "SETUP carries a GET_ID id");

/* ---- the parts ---- */

static void blkmig_put(uint8_t *p, uint64_t v, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t blkmig_get(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

void blkmig_put_head(uint8_t *p, enum blkmig_kind kind, uint32_t a, uint64_t b, uint64_t c)
{
	blkmig_put(p, kind, 1);
	blkmig_put(p + 1, 0, 3);
	blkmig_put(p + 4, a, 4);
	blkmig_put(p + 8, b, 8);
	blkmig_put(p + 16, c, 8);
}

uint64_t blkmig_range_bytes(const struct blkmig_geom *g, uint64_t first, uint64_t n)
{
	uint64_t start = first * g->block_bytes, end = (first + n) * g->block_bytes;

	return (end > g->disk_bytes ? g->disk_bytes : end) - start;
}

static int blkmig_parse_setup(const uint8_t *p, uint32_t a, uint64_t b, uint64_t c,
			      uint32_t len, struct blkmig_part *out, char *err, size_t errlen)
{
	if (len != BLKMIG_HEAD_BYTES && len != BLKMIG_HEAD_BYTES + BLKMIG_SETUP_ID_BYTES) {
		snprintf(err, errlen, "a setup part of %u bytes, expected %u or %u", len,
			 BLKMIG_HEAD_BYTES, BLKMIG_HEAD_BYTES + BLKMIG_SETUP_ID_BYTES);
		return -EBADMSG;
	}
	if (a < BLKMIG_MIN_BLOCK_BYTES || a > BLKMIG_MAX_BLOCK_BYTES || (a & (a - 1))) {
		snprintf(err, errlen, "block size %u (a power of two in %u..%u)", a,
			 BLKMIG_MIN_BLOCK_BYTES, BLKMIG_MAX_BLOCK_BYTES);
		return -EBADMSG;
	}
	if (b == 0 || b % 512 || b > (UINT64_MAX >> 1) || c != (b + a - 1) / a) {
		snprintf(err, errlen, "a disk of %" PRIu64 " bytes in %" PRIu64 " blocks of %u", b,
			 c, a);
		return -EBADMSG;
	}
	out->geom = (struct blkmig_geom){ .block_bytes = a, .disk_bytes = b, .nblocks = c };
	out->id = len > BLKMIG_HEAD_BYTES ? p + BLKMIG_HEAD_BYTES : NULL;
	return 0;
}

int blkmig_part_parse(const uint8_t *p, uint32_t len, const struct blkmig_geom *geom,
		      struct blkmig_part *out, char *err, size_t errlen)
{
	uint64_t kind, a, b, c, want;

	memset(out, 0, sizeof(*out));
	if (len < BLKMIG_HEAD_BYTES) {
		snprintf(err, errlen, "a block part of %u bytes (at least %u)", len,
			 BLKMIG_HEAD_BYTES);
		return -EBADMSG;
	}
	kind = blkmig_get(p, 1);
	a = blkmig_get(p + 4, 4);
	b = blkmig_get(p + 8, 8);
	c = blkmig_get(p + 16, 8);
	if (kind < BLKMIG_SETUP || kind > BLKMIG_STALE || blkmig_get(p + 1, 3)) {
		snprintf(err, errlen, "block part kind %" PRIu64 " (or reserved bytes set)", kind);
		return -EBADMSG;
	}
	out->kind = (enum blkmig_kind)kind;
	if (kind == BLKMIG_SETUP) {
		if (geom) {
			snprintf(err, errlen, "a second setup part");
			return -EBADMSG;
		}
		return blkmig_parse_setup(p, (uint32_t)a, b, c, len, out, err, errlen);
	}
	if (!geom) {
		snprintf(err, errlen, "a block part before the setup part");
		return -EBADMSG;
	}
	if (kind == BLKMIG_POSTCOPY) {
		if (len != BLKMIG_HEAD_BYTES || a || b || c) {
			snprintf(err, errlen, "a postcopy part of %u bytes (24, fields 0)", len);
			return -EBADMSG;
		}
		return 0;
	}
	if (a || c == 0 || b >= geom->nblocks || c > geom->nblocks - b) {
		snprintf(err, errlen, "blocks %" PRIu64 "+%" PRIu64 " (reserved %" PRIu64
			 ") outside the disk's %" PRIu64, b, c, a, geom->nblocks);
		return -EBADMSG;
	}
	out->first = b;
	out->nblocks = c;
	if (kind == BLKMIG_ZERO || kind == BLKMIG_STALE) {
		if (len != BLKMIG_HEAD_BYTES) {
			snprintf(err, errlen, "a %s part of %u bytes, expected %u",
				 kind == BLKMIG_ZERO ? "zero" : "stale", len, BLKMIG_HEAD_BYTES);
			return -EBADMSG;
		}
		return 0;
	}
	want = c > BLKMIG_PART_MAX_DATA / geom->block_bytes ? UINT64_MAX
							     : blkmig_range_bytes(geom, b, c);
	if (want > BLKMIG_PART_MAX_DATA || len - BLKMIG_HEAD_BYTES != want) {
		snprintf(err, errlen, "a data part of %u bytes for %" PRIu64 " blocks", len, c);
		return -EBADMSG;
	}
	out->data = p + BLKMIG_HEAD_BYTES;
	out->data_bytes = (uint32_t)want;
	return 0;
}

/* ---- both sides ---- */

void blkmig_init(struct blkmig *bm, uint64_t disk_bytes, bool incoming)
{
	memset(bm, 0, sizeof(*bm));
	pthread_mutex_init(&bm->lock, NULL);
	bm->incoming = incoming;
	bm->geom.block_bytes = BLKMIG_BLOCK_BYTES;
	bm->geom.disk_bytes = disk_bytes;
	bm->geom.nblocks = (disk_bytes + BLKMIG_BLOCK_BYTES - 1) / BLKMIG_BLOCK_BYTES;
}

static void blkmig_wb_destroy(struct blkmig *bm);

void blkmig_destroy(struct blkmig *bm)
{
	blkmig_wb_destroy(bm);
	free((void *)bm->dirty);
	free((void *)bm->received);
	free(bm->requested);
	free(bm->lat_us);
	free(bm->buf);
	free(bm->req_buf);
	bm->dirty = NULL;
	bm->received = NULL;
	bm->requested = NULL;
	bm->lat_us = NULL;
	bm->buf = bm->req_buf = NULL;
	pthread_mutex_destroy(&bm->lock);
}

/* ---- source ---- */

void blkmig_mark(struct blkmig *bm, uint64_t off, uint64_t len)
{
	uint64_t first, last;

	if (!bm->dirty || len == 0 || off >= bm->geom.disk_bytes)
		return;
	first = off / bm->geom.block_bytes;
	last = (off + len - 1) / bm->geom.block_bytes;
	if (last >= bm->geom.nblocks)
		last = bm->geom.nblocks - 1;
	for (uint64_t i = first; i <= last; i++) {
		uint64_t bit = 1ull << (i % 64);

		if (!(atomic_fetch_or(&bm->dirty[i / 64], bit) & bit))
			atomic_fetch_add(&bm->dirtied, 1);
	}
}

/* The first dirty block at or after @from, or nblocks. */
static uint64_t blkmig_next_dirty(const struct blkmig *bm, uint64_t from)
{
	while (from < bm->geom.nblocks) {
		uint64_t w = atomic_load(&bm->dirty[from / 64]) >> (from % 64);

		if (w) {
			from += (uint64_t)__builtin_ctzll(w);
			return from < bm->geom.nblocks ? from : bm->geom.nblocks;
		}
		from = (from / 64 + 1) * 64;
	}
	return bm->geom.nblocks;
}

/* Clear block @i's bit; whether it was set. */
static bool blkmig_take(struct blkmig *bm, uint64_t i)
{
	uint64_t bit = 1ull << (i % 64);

	return atomic_fetch_and(&bm->dirty[i / 64], ~bit) & bit;
}

/*
 * Where the file's data next begins at or after block @i, in blocks
 * (rounded down): > @i means block @i is a hole.  Without SEEK_DATA (a
 * block device, an old filesystem) everything is data.
 */
static uint64_t blkmig_data_from(struct virtio_blk *b, uint64_t i)
{
	const struct blkmig_geom *g = &b->mig.geom;
	off_t d = lseek(b->fd, (off_t)(i * g->block_bytes), SEEK_DATA);

	if (d < 0)
		return errno == ENXIO ? g->nblocks : i;
	return (uint64_t)d / g->block_bytes;
}

/* Where the data at block @i ends (the next hole begins), rounded up, in blocks. */
static uint64_t blkmig_data_until(struct virtio_blk *b, uint64_t i)
{
	const struct blkmig_geom *g = &b->mig.geom;
	off_t h = lseek(b->fd, (off_t)(i * g->block_bytes), SEEK_HOLE);

	if (h < 0)
		return g->nblocks;
	return ((uint64_t)h + g->block_bytes - 1) / g->block_bytes;
}

/* Read blocks [@first, +@n) into part buffer @buf and send them as DATA. */
static int blkmig_send_data(struct virtio_blk *b, struct mig_save *sv, uint32_t instance,
			    uint8_t *buf, uint64_t first, uint64_t n)
{
	struct blkmig *bm = &b->mig;
	uint64_t bytes = blkmig_range_bytes(&bm->geom, first, n), done = 0;
	uint64_t off = first * bm->geom.block_bytes;

	while (done < bytes) {
		ssize_t r = pread(b->fd, buf + BLKMIG_HEAD_BYTES + done, bytes - done,
				  (off_t)(off + done));

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = r < 0 ? errno : EIO;

			log_error("%s: reading %s at byte %" PRIu64 " to migrate it: %s", b->name,
				  b->opts.path, off + done, strerror(e));
			return -e;
		}
		done += (uint64_t)r;
	}
	blkmig_put_head(buf, BLKMIG_DATA, 0, first, n);
	atomic_fetch_add(&bm->bytes, bytes);
	atomic_fetch_add(&bm->blocks, n);
	return mig_save_part(sv, instance, buf, (uint32_t)(BLKMIG_HEAD_BYTES + bytes));
}

/*
 * Send blocks [@first, +@n), whose bits are taken: each hole run as one
 * ZERO part, data in DATA parts built in @buf.  Data bytes sent into *@sent.
 */
static int blkmig_send_taken(struct virtio_blk *b, struct mig_save *sv, uint32_t instance,
			     uint8_t *buf, uint64_t first, uint64_t n, uint64_t *sent)
{
	struct blkmig *bm = &b->mig;
	uint64_t end = first + n, i = first, max = BLKMIG_PART_MAX_DATA / bm->geom.block_bytes;
	int r = 0;

	while (!r && i < end) {
		uint64_t d = blkmig_data_from(b, i), k;

		if (d > i) {
			k = (d < end ? d : end) - i;
			blkmig_put_head(buf, BLKMIG_ZERO, 0, i, k);
			atomic_fetch_add(&bm->zero_blocks, k);
			r = mig_save_part(sv, instance, buf, BLKMIG_HEAD_BYTES);
			i += k;
			continue;
		}
		d = blkmig_data_until(b, i);
		k = (d > i ? d : i + 1) - i;
		if (k > end - i)
			k = end - i;
		for (uint64_t j = 0; !r && j < k; j += max) {
			uint64_t m = k - j < max ? k - j : max;

			r = blkmig_send_data(b, sv, instance, buf, i + j, m);
			*sent += blkmig_range_bytes(&bm->geom, i + j, m);
		}
		i += k;
	}
	return r;
}

/*
 * Send dirty blocks from the cursor on until @budget data bytes went out
 * or the end of the disk (the cursor then starts over).  @budget 0: every
 * dirty block (the stop).
 */
static int blkmig_walk(struct virtio_blk *b, struct mig_save *sv, uint32_t instance,
		       uint64_t budget)
{
	struct blkmig *bm = &b->mig;
	/* A run taken at once is sent at once: no longer than the step. */
	uint64_t run_max = (budget ? budget : BLKMIG_STEP_BYTES) / bm->geom.block_bytes, sent = 0;
	int r = 0;

	if (!run_max)
		run_max = 1;
	if (!budget)
		bm->cursor = 0;
	while (!r && (!budget || sent < budget)) {
		uint64_t i = blkmig_next_dirty(bm, bm->cursor), n = 0;

		if (i == bm->geom.nblocks) {
			bm->cursor = 0; /* the next step starts over */
			break;
		}
		while (n < run_max && i + n < bm->geom.nblocks && blkmig_take(bm, i + n))
			n++;
		bm->cursor = i + n;
		r = blkmig_send_taken(b, sv, instance, bm->buf, i, n, &sent);
	}
	return r;
}

uint64_t blkmig_save_pending(struct virtio_blk *b)
{
	struct blkmig *bm = &b->mig;
	uint64_t n = 0;

	if (!bm->dirty)
		return 0;
	for (uint64_t w = 0; w < bm->words; w++)
		n += (uint64_t)__builtin_popcountll(atomic_load(&bm->dirty[w]));
	n *= bm->geom.block_bytes;
	atomic_store(&bm->dirty_bytes, n);
	return n;
}

int blkmig_save_setup(struct virtio_blk *b, struct mig_save *sv, uint32_t instance)
{
	struct blkmig *bm = &b->mig;
	const struct blkmig_geom *g = &bm->geom;
	uint64_t words = (g->nblocks + 63) / 64;
	_Atomic uint64_t *dirty = calloc(words, sizeof(*dirty));
	uint8_t head[BLKMIG_HEAD_BYTES + BLKMIG_SETUP_ID_BYTES];

	if (!bm->buf)
		bm->buf = malloc(BLKMIG_HEAD_BYTES + BLKMIG_PART_MAX_DATA);
	if (!dirty || !bm->buf) {
		free((void *)dirty);
		return -ENOMEM;
	}
	for (uint64_t i = 0; i < g->nblocks; i++)
		dirty[i / 64] |= 1ull << (i % 64);
	pthread_mutex_lock(&b->lock);
	free((void *)bm->dirty);
	bm->dirty = dirty; /* from now on the disk's thread marks its writes */
	bm->words = words;
	pthread_mutex_unlock(&b->lock);
	bm->cursor = 0;
	atomic_store(&bm->bytes, 0);
	atomic_store(&bm->blocks, 0);
	atomic_store(&bm->zero_blocks, 0);
	atomic_store(&bm->dirtied, 0);
	atomic_store(&bm->dirty_bytes, g->disk_bytes);
	atomic_store(&bm->migrating, true);
	blkmig_put_head(head, BLKMIG_SETUP, g->block_bytes, g->disk_bytes, g->nblocks);
	/* The id goes along: the guest's disk keeps its serial on NEW. */
	memcpy(head + BLKMIG_HEAD_BYTES, b->id, BLKMIG_SETUP_ID_BYTES);
	return mig_save_part(sv, instance, head, sizeof(head));
}

int blkmig_save_iterate(struct virtio_blk *b, struct mig_save *sv, uint32_t instance)
{
	int r;

	if (!b->mig.dirty)
		return 0;
	r = blkmig_walk(b, sv, instance, BLKMIG_STEP_BYTES);
	blkmig_save_pending(b);
	return r;
}

/*
 * The postcopy package: every run of dirty blocks as a STALE part (the
 * destination may hold an older copy; in pure postcopy it holds none and
 * this is one part for the disk).  Bits stay set: the push sends them.
 */
static int blkmig_send_stale(struct virtio_blk *b, struct mig_save *sv, uint32_t instance)
{
	struct blkmig *bm = &b->mig;
	uint8_t head[BLKMIG_HEAD_BYTES];
	uint64_t i = blkmig_next_dirty(bm, 0);
	int r = 0;

	while (!r && i < bm->geom.nblocks) {
		uint64_t n = 1;

		while (i + n < bm->geom.nblocks &&
		       (atomic_load(&bm->dirty[(i + n) / 64]) & (1ull << ((i + n) % 64))))
			n++;
		blkmig_put_head(head, BLKMIG_STALE, 0, i, n);
		r = mig_save_part(sv, instance, head, sizeof(head));
		i = blkmig_next_dirty(bm, i + n);
	}
	return r;
}

int blkmig_save_final(struct virtio_blk *b, struct mig_save *sv, uint32_t instance,
		      bool postcopy)
{
	uint8_t head[BLKMIG_HEAD_BYTES];
	int r;

	if (!b->mig.dirty)
		return 0;
	if (postcopy) {
		/* What the destination holds of the dirty blocks is stale; they and
		 * the rest go while the guest runs there (save_push, save_request). */
		r = blkmig_send_stale(b, sv, instance);
		blkmig_put_head(head, BLKMIG_POSTCOPY, 0, 0, 0);
		blkmig_save_pending(b);
		return r ? r : mig_save_part(sv, instance, head, sizeof(head));
	}
	r = blkmig_walk(b, sv, instance, 0);
	atomic_store(&b->mig.dirty_bytes, 0);
	return r;
}

int blkmig_save_push(struct virtio_blk *b, struct mig_save *sv, uint32_t instance,
		     uint64_t *left_bytes)
{
	int r;

	*left_bytes = 0;
	if (!b->mig.dirty)
		return 0;
	/* A step the size of RAM's, so that the two interleave on the wire. */
	r = blkmig_walk(b, sv, instance, BLKMIG_PART_MAX_DATA * 2);
	*left_bytes = blkmig_save_pending(b);
	return r;
}

int blkmig_save_request(struct virtio_blk *b, struct mig_save *sv, uint32_t instance,
			uint64_t offset, uint32_t len)
{
	struct blkmig *bm = &b->mig;
	uint64_t first, last, sent = 0;

	if (!bm->dirty || offset >= bm->geom.disk_bytes || len > bm->geom.disk_bytes - offset) {
		log_error("%s: the destination asked for bytes %" PRIu64 "+%u, outside the disk "
			  "or not migrating", b->name, offset, len);
		return -EBADMSG;
	}
	if (!bm->req_buf && !(bm->req_buf = malloc(BLKMIG_HEAD_BYTES + BLKMIG_PART_MAX_DATA)))
		return -ENOMEM;
	first = offset / bm->geom.block_bytes;
	last = (offset + len - 1) / bm->geom.block_bytes;
	/*
	 * Sent now whether or not the push sent them already: a pushed copy may
	 * sit behind megabytes on the main channel, this one overtakes it, and
	 * the destination keeps whichever lands first (the disk is stopped
	 * here: both are the same).
	 */
	for (uint64_t i = first; i <= last; i++)
		blkmig_take(bm, i);
	atomic_fetch_add(&bm->requests, 1);
	return blkmig_send_taken(b, sv, instance, bm->req_buf, first, last - first + 1, &sent);
}

int blkmig_save_resume(struct virtio_blk *b, const uint8_t *bits, uint64_t nbits, char *err,
		       size_t errlen)
{
	struct blkmig *bm = &b->mig;
	uint64_t missing = 0;

	if (!bm->dirty) {
		if (!nbits)
			return 0;
		snprintf(err, errlen, "%s: the destination holds blocks of a disk not migrating",
			 b->name);
		return -EPROTO;
	}
	if (nbits != bm->geom.nblocks) {
		snprintf(err, errlen, "%s: the destination's bitmap has %" PRIu64 " blocks, the "
			 "disk %" PRIu64, b->name, nbits, bm->geom.nblocks);
		return -EPROTO;
	}
	for (uint64_t i = 0; i < nbits; i++) {
		uint64_t bit = 1ull << (i % 64);

		if (bits[i / 8] & (1u << (i % 8))) {
			atomic_fetch_and(&bm->dirty[i / 64], ~bit);
		} else {
			atomic_fetch_or(&bm->dirty[i / 64], bit);
			missing++;
		}
	}
	bm->cursor = 0;
	blkmig_save_pending(b);
	log_info("%s: the destination lacks %" PRIu64 " of %" PRIu64 " blocks", b->name, missing,
		 nbits);
	return 0;
}

void blkmig_save_cleanup(struct virtio_blk *b)
{
	struct blkmig *bm = &b->mig;
	_Atomic uint64_t *dirty;

	pthread_mutex_lock(&b->lock);
	dirty = bm->dirty;
	bm->dirty = NULL;
	pthread_mutex_unlock(&b->lock);
	free((void *)dirty);
	free(bm->buf);
	bm->buf = NULL;
	atomic_store(&bm->migrating, false);
}

/* ---- destination ---- */

/* Make blocks [@first, +@n) read as zero: punch them, or write zeroes. */
static int blkmig_zero(struct virtio_blk *b, uint64_t first, uint64_t n, char *err,
		       size_t errlen)
{
	const struct blkmig_geom *g = &b->mig.geom;
	uint64_t off = first * g->block_bytes, len = blkmig_range_bytes(g, first, n);
	static const uint8_t zeros[BLKMIG_MIN_BLOCK_BYTES];

	if (!fallocate(b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len))
		return 0;
	for (uint64_t done = 0; done < len;) {
		uint64_t k = len - done < sizeof(zeros) ? len - done : sizeof(zeros);
		ssize_t r = pwrite(b->fd, zeros, k, (off_t)(off + done));

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = r < 0 ? errno : EIO;

			snprintf(err, errlen, "%s: zeroing %s at byte %" PRIu64 ": %s", b->name,
				 b->opts.path, off + done, strerror(e));
			return -e;
		}
		done += (uint64_t)r;
	}
	return 0;
}

/* Write @n bytes of @data at byte @off of the disk. */
static int blkmig_write(struct virtio_blk *b, const uint8_t *data, uint64_t n, uint64_t off,
			char *err, size_t errlen)
{
	for (uint64_t done = 0; done < n;) {
		ssize_t r = pwrite(b->fd, data + done, n - done, (off_t)(off + done));

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = r < 0 ? errno : EIO;

			snprintf(err, errlen, "%s: writing the source's blocks to %s at byte %" PRIu64
				 ": %s", b->name, b->opts.path, off + done, strerror(e));
			return -e;
		}
		done += (uint64_t)r;
	}
	return 0;
}

static bool blkmig_has(const struct blkmig *bm, uint64_t i)
{
	return atomic_load(&bm->received[i / 64]) & (1ull << (i % 64));
}

/* Block @i is here now; true the first time. */
static bool blkmig_set_received(struct blkmig *bm, uint64_t i)
{
	uint64_t bit = 1ull << (i % 64);

	if (atomic_fetch_or(&bm->received[i / 64], bit) & bit)
		return false;
	atomic_fetch_add(&bm->nreceived, 1);
	return true;
}

/* SETUP: the source's disk against this one. */
/* ---- destination: write-behind ---- */

/*
 * The writeback of blocks that land before the guest runs is started as
 * they land, so that the fdatasync once the guest runs (blkmig_load_settle)
 * finds little left.  sync_file_range(SYNC_FILE_RANGE_WRITE) blocks while
 * the device's queue is full - on the load thread that stalled the stream,
 * and at the end the guest's pause, by 15-25 ms (docs/benchmarks.md) - so
 * io_uring runs it on its own worker.  Only a hint: a range that finds no
 * free slot grows and goes with the next submit; the fdatasync is what
 * counts.
 */
#define BLKMIG_WB_DEPTH 32u
#define BLKMIG_WB_CHUNK_BYTES (8ull << 20)
#define BLKMIG_WB_MAX_BYTES (1ull << 30) /* an sqe's length is 32 bits */

struct blkmig_wb {
	struct io_uring ring;
	unsigned inflight;
	uint64_t start, end; /* not submitted yet; empty when start == end */
};

static void blkmig_wb_create(struct blkmig *bm)
{
	struct blkmig_wb *wb = calloc(1, sizeof(*wb));
	int r = wb ? io_uring_queue_init(BLKMIG_WB_DEPTH, &wb->ring, 0) : -ENOMEM;

	if (r) {
		log_debug("storage migration: no write-behind (%s)", strerror(-r));
		free(wb);
		return;
	}
	bm->wb = wb;
}

/* Completions in; with @wait, all of them. */
static void blkmig_wb_reap(struct blkmig_wb *wb, bool wait)
{
	struct io_uring_cqe *cqe;

	while (wb->inflight && (wait ? io_uring_wait_cqe(&wb->ring, &cqe)
				     : io_uring_peek_cqe(&wb->ring, &cqe)) == 0) {
		io_uring_cqe_seen(&wb->ring, cqe);
		wb->inflight--;
	}
}

/* Start the writeback of what is pending, if a slot is free. */
static void blkmig_wb_submit(struct blkmig_wb *wb, int fd)
{
	struct io_uring_sqe *sqe;
	uint64_t len = wb->end - wb->start;

	if (!len)
		return;
	blkmig_wb_reap(wb, false);
	if (wb->inflight == BLKMIG_WB_DEPTH || !(sqe = io_uring_get_sqe(&wb->ring)))
		return;
	if (len > BLKMIG_WB_MAX_BYTES)
		len = BLKMIG_WB_MAX_BYTES;
	io_uring_prep_sync_file_range(sqe, fd, (unsigned)len, wb->start, SYNC_FILE_RANGE_WRITE);
	sqe->flags |= IOSQE_ASYNC; /* never inline: it may block */
	if (io_uring_submit(&wb->ring) == 1) {
		wb->inflight++;
		wb->start += len;
	}
}

/* Load thread, before the guest runs: [@off, +@len) was just written. */
static void blkmig_wb_add(struct virtio_blk *b, uint64_t off, uint64_t len)
{
	struct blkmig_wb *wb = b->mig.wb;

	if (!wb)
		return;
	if (wb->start != wb->end && off != wb->end)
		blkmig_wb_submit(wb, b->fd); /* not contiguous: the old range first */
	if (wb->start == wb->end) {
		wb->start = off;
		wb->end = off + len;
	} else { /* still pending: cover both (clean pages cost nothing) */
		wb->start = off < wb->start ? off : wb->start;
		wb->end = off + len > wb->end ? off + len : wb->end;
	}
	if (wb->end - wb->start >= BLKMIG_WB_CHUNK_BYTES)
		blkmig_wb_submit(wb, b->fd);
}

static void blkmig_wb_destroy(struct blkmig *bm)
{
	if (!bm->wb)
		return;
	blkmig_wb_reap(bm->wb, true);
	io_uring_queue_exit(&bm->wb->ring);
	free(bm->wb);
	bm->wb = NULL;
}

static int blkmig_load_setup(struct virtio_blk *b, const struct blkmig_part *pt, char *err,
			     size_t errlen)
{
	struct blkmig *bm = &b->mig;
	uint64_t words = (pt->geom.nblocks + 63) / 64;

	if (pt->geom.disk_bytes != b->bytes) {
		snprintf(err, errlen, "%s: the source's disk has %" PRIu64 " bytes, %s has %" PRIu64
			 ": an incoming disk must have the source's size (truncate -s %" PRIu64
			 " %s)", b->name, pt->geom.disk_bytes, b->opts.path, b->bytes,
			 pt->geom.disk_bytes, b->opts.path);
		return -EBADMSG;
	}
	free((void *)bm->received);
	free(bm->requested);
	bm->received = calloc(words, sizeof(*bm->received));
	bm->requested = calloc(words, sizeof(uint64_t));
	if (!bm->received || !bm->requested)
		return -ENOMEM;
	bm->geom = pt->geom;
	bm->got_setup = true;
	bm->has_src_id = pt->id != NULL;
	if (pt->id)
		memcpy(bm->src_id, pt->id, BLKMIG_SETUP_ID_BYTES);
	if (!bm->wb)
		blkmig_wb_create(bm);
	atomic_store(&bm->nreceived, 0);
	atomic_store(&bm->migrating, true);
	return 0;
}

/*
 * The guest runs here (postcopy): write only the blocks not here yet - the
 * guest may have written one since, and the source's copy is older.  Under
 * bm->lock, so the guest's requests (checked under it too) see each block
 * before or after.
 */
static int blkmig_apply_missing(struct virtio_blk *b, const struct blkmig_part *pt, char *err,
				size_t errlen)
{
	struct blkmig *bm = &b->mig;
	const uint32_t bs = bm->geom.block_bytes;
	int r = 0;

	for (uint64_t i = pt->first; !r && i < pt->first + pt->nblocks;) {
		uint64_t k = 0;

		while (i + k < pt->first + pt->nblocks && !blkmig_has(bm, i + k))
			k++;
		if (k && pt->kind == BLKMIG_DATA)
			r = blkmig_write(b, pt->data + (i - pt->first) * bs,
					 blkmig_range_bytes(&bm->geom, i, k), i * bs, err, errlen);
		else if (k)
			r = blkmig_zero(b, i, k, err, errlen);
		for (uint64_t j = i; !r && j < i + k; j++)
			blkmig_set_received(bm, j);
		i += k ? k : 1;
	}
	return r;
}

/* The last block arrived while the guest runs: durable, done. */
static void blkmig_pc_finish(struct virtio_blk *b)
{
	struct blkmig *bm = &b->mig;

	if (atomic_load(&bm->nreceived) < bm->geom.nblocks || !atomic_load(&bm->pc_active))
		return;
	if (fdatasync(b->fd) < 0)
		log_error("%s: fdatasync of %s after the last block: %s", b->name, b->opts.path,
			  strerror(errno));
	atomic_store(&bm->pc_active, false);
	atomic_store(&bm->migrating, false);
	log_info("%s: every block of %s is here", b->name, b->opts.path);
}

/* DATA or ZERO, under bm->lock. */
static int blkmig_load_blocks(struct virtio_blk *b, const struct blkmig_part *pt, char *err,
			      size_t errlen)
{
	struct blkmig *bm = &b->mig;
	int r;

	if (atomic_load(&bm->guest_runs)) {
		r = blkmig_apply_missing(b, pt, err, errlen);
		blkmig_pc_finish(b);
		if (b->ctl_efd >= 0)
			vblk_wake(b); /* requests waiting for these blocks */
	} else {
		/* Before the guest runs: in stream order, the last copy wins. */
		r = pt->kind == BLKMIG_DATA
		    ? blkmig_write(b, pt->data, pt->data_bytes, pt->first * bm->geom.block_bytes,
				   err, errlen)
		    : blkmig_zero(b, pt->first, pt->nblocks, err, errlen);
		if (!r && pt->kind == BLKMIG_DATA)
			blkmig_wb_add(b, pt->first * bm->geom.block_bytes, pt->data_bytes);
		for (uint64_t i = pt->first; !r && i < pt->first + pt->nblocks; i++)
			blkmig_set_received(bm, i);
	}
	if (r)
		return r;
	if (pt->kind == BLKMIG_DATA) {
		atomic_fetch_add(&bm->bytes, pt->data_bytes);
		atomic_fetch_add(&bm->blocks, pt->nblocks);
	} else {
		atomic_fetch_add(&bm->zero_blocks, pt->nblocks);
	}
	return 0;
}

/* STALE, before the guest runs here: those blocks are not received after all. */
static int blkmig_load_stale(struct virtio_blk *b, const struct blkmig_part *pt, char *err,
			     size_t errlen)
{
	struct blkmig *bm = &b->mig;

	if (atomic_load(&bm->guest_runs) || bm->postcopy_in) {
		snprintf(err, errlen, "%s: a stale part after the postcopy part", b->name);
		return -EBADMSG;
	}
	for (uint64_t i = pt->first; i < pt->first + pt->nblocks; i++) {
		uint64_t bit = 1ull << (i % 64);

		if (atomic_fetch_and(&bm->received[i / 64], ~bit) & bit)
			atomic_fetch_sub(&bm->nreceived, 1);
	}
	return 0;
}

int blkmig_load_part(struct virtio_blk *b, const uint8_t *data, uint32_t len, char *err,
		     size_t errlen)
{
	struct blkmig *bm = &b->mig;
	struct blkmig_part pt;
	char why[200];
	int r;

	if (!bm->incoming) {
		snprintf(err, errlen, "%s: the source sends its disk's data (storage migration), "
			 "but %s is not incoming=on: give the destination --disk file=NEW,incoming=on",
			 b->name, b->opts.path);
		return -EBADMSG;
	}
	/* After the guest started here parts come on two channels: one at a time,
	 * and against the disk thread's checks (blkmig_io_wait). */
	pthread_mutex_lock(&bm->lock);
	r = blkmig_part_parse(data, len, bm->got_setup ? &bm->geom : NULL, &pt, why, sizeof(why));
	if (r) {
		snprintf(err, errlen, "%s: %s", b->name, why);
	} else if (pt.kind == BLKMIG_SETUP) {
		r = blkmig_load_setup(b, &pt, err, errlen);
	} else if (pt.kind == BLKMIG_POSTCOPY) {
		if (bm->postcopy_in || atomic_load(&bm->pc_active)) {
			snprintf(err, errlen, "%s: a second postcopy part", b->name);
			r = -EBADMSG;
		}
		bm->postcopy_in = true;
	} else if (pt.kind == BLKMIG_STALE) {
		r = blkmig_load_stale(b, &pt, err, errlen);
	} else {
		r = blkmig_load_blocks(b, &pt, err, errlen);
	}
	pthread_mutex_unlock(&bm->lock);
	return r;
}

int blkmig_load_complete(struct virtio_blk *b, unsigned index, char *err, size_t errlen)
{
	struct blkmig *bm = &b->mig;
	uint64_t missing;

	if (!bm->incoming)
		return 0;
	if (!bm->got_setup) {
		snprintf(err, errlen, "disk %u (%s) is incoming=on but the stream carries no blocks "
			 "(migrate the source with --storage)", index, b->opts.path);
		return -ENODATA;
	}
	if (bm->has_src_id) { /* before the guest runs here: GET_ID answers the source's id */
		pthread_mutex_lock(&b->lock);
		memcpy(b->id, bm->src_id, BLKMIG_SETUP_ID_BYTES);
		pthread_mutex_unlock(&b->lock);
	}
	missing = bm->geom.nblocks - atomic_load(&bm->nreceived);
	if (bm->postcopy_in)
		atomic_store(&bm->guest_runs, true); /* a late copy never overwrites */
	if (missing && bm->postcopy_in) {
		/* Postcopy: the guest runs now, the rest arrives (or is asked for). */
		pthread_mutex_lock(&bm->lock);
		if (!bm->lat_us)
			bm->lat_us = calloc(BLKMIG_LAT_SAMPLES, sizeof(*bm->lat_us));
		atomic_store(&bm->pc_active, true);
		pthread_mutex_unlock(&bm->lock);
		log_info("%s: the guest runs; %" PRIu64 " of %" PRIu64 " blocks still to come",
			 b->name, missing, bm->geom.nblocks);
		return 0;
	}
	if (missing) {
		snprintf(err, errlen, "disk %u (%s): %" PRIu64 " of %" PRIu64 " blocks never arrived",
			 index, b->opts.path, missing, bm->geom.nblocks);
		return -ENODATA;
	}
	/* Every block is here; durable once the guest runs (blkmig_load_settle). */
	bm->settle = true;
	return 0;
}

int blkmig_load_settle(struct virtio_blk *b, unsigned index, char *err, size_t errlen)
{
	struct blkmig *bm = &b->mig;

	if (!bm->settle)
		return 0;
	bm->settle = false;
	blkmig_wb_destroy(bm); /* its ranges are in the fdatasync's anyway */
	if (fdatasync(b->fd) < 0) {
		int e = errno;

		snprintf(err, errlen, "disk %u: fdatasync of %s: %s", index, b->opts.path,
			 strerror(e));
		return -e;
	}
	atomic_store(&bm->migrating, false);
	return 1;
}

bool blkmig_save_settles(struct virtio_blk *b)
{
	return b->mig.dirty != NULL;
}

uint64_t blkmig_load_pending(struct virtio_blk *b)
{
	struct blkmig *bm = &b->mig;

	if (!atomic_load(&bm->pc_active))
		return 0;
	return (bm->geom.nblocks - atomic_load(&bm->nreceived)) * bm->geom.block_bytes;
}

int blkmig_load_received(struct virtio_blk *b, uint8_t **bits, uint64_t *nbits)
{
	struct blkmig *bm = &b->mig;
	uint8_t *out;

	*bits = NULL;
	*nbits = 0;
	if (!bm->incoming || !bm->got_setup || !bm->postcopy_in)
		return 0;
	out = calloc((bm->geom.nblocks + 7) / 8, 1);
	if (!out)
		return -ENOMEM;
	/*
	 * Without a lock (see struct blkmig): a block landing meanwhile is
	 * sent again and skipped here.  Requests waiting are asked for again.
	 */
	for (uint64_t i = 0; i < bm->geom.nblocks; i++)
		if (blkmig_has(bm, i))
			out[i / 8] |= (uint8_t)(1u << (i % 8));
	atomic_store(&bm->rerequest, true);
	*bits = out;
	*nbits = bm->geom.nblocks;
	return 0;
}

/* ---- destination: the guest's requests while blocks arrive ---- */

/* Queue blocks [@first, +@n) to be asked for (lock held); a full queue drops it:
 * the push brings them anyway. */
static void blkmig_queue_request(struct blkmig *bm, uint64_t first, uint64_t n)
{
	for (uint64_t i = first; i < first + n; i++)
		bm->requested[i / 64] |= 1ull << (i % 64);
	if (bm->nrq < BLKMIG_REQ_QUEUE) {
		bm->rq[bm->nrq].first = first;
		bm->rq[bm->nrq].n = n;
		bm->nrq++;
	}
}

int blkmig_io_wait(struct virtio_blk *b, uint8_t type, uint64_t off, uint64_t len)
{
	struct blkmig *bm = &b->mig;
	const uint64_t bs = bm->geom.block_bytes;
	uint64_t first, last, end = off + len;
	bool wait = false, write = type != VIRTIO_BLK_T_IN;

	if (!atomic_load(&bm->pc_active) || len == 0)
		return 0;
	pthread_mutex_lock(&bm->lock);
	if (atomic_exchange(&bm->rerequest, false))
		memset(bm->requested, 0, (bm->geom.nblocks + 63) / 64 * sizeof(uint64_t));
	first = off / bs;
	last = (end - 1) / bs;
	for (uint64_t i = first; i <= last; i++) {
		uint64_t bstart = i * bs, bend = bstart + bs < b->bytes ? bstart + bs : b->bytes;
		bool whole = write && off <= bstart && end >= bend;

		if (blkmig_has(bm, i) || whole)
			continue;
		wait = true;
		if (!(bm->requested[i / 64] & (1ull << (i % 64)))) {
			uint64_t n = 1;

			while (i + n <= last && !blkmig_has(bm, i + n) &&
			       !(bm->requested[(i + n) / 64] & (1ull << ((i + n) % 64))))
				n++;
			blkmig_queue_request(bm, i, n);
		}
	}
	if (!wait) {
		/* It goes now: the blocks it writes whole are the guest's from here on. */
		for (uint64_t i = first; write && i <= last; i++)
			blkmig_set_received(bm, i);
		blkmig_pc_finish(b);
	}
	pthread_mutex_unlock(&bm->lock);
	return wait;
}

void blkmig_io_waited(struct virtio_blk *b, uint64_t waited_ns)
{
	struct blkmig *bm = &b->mig;
	uint64_t us = waited_ns / 1000;

	pthread_mutex_lock(&bm->lock);
	if (bm->lat_us)
		bm->lat_us[bm->nlat % BLKMIG_LAT_SAMPLES] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
	bm->nlat++;
	pthread_mutex_unlock(&bm->lock);
}

void blkmig_send_requests(struct virtio_blk *b)
{
	struct blkmig *bm = &b->mig;
	struct { uint64_t first, n; } q[BLKMIG_REQ_QUEUE];
	unsigned n;

	pthread_mutex_lock(&bm->lock);
	n = bm->nrq;
	memcpy(q, bm->rq, n * sizeof(q[0]));
	bm->nrq = 0;
	pthread_mutex_unlock(&bm->lock);
	for (unsigned i = 0; i < n; i++) {
		uint64_t off = q[i].first * bm->geom.block_bytes;
		uint64_t len = blkmig_range_bytes(&bm->geom, q[i].first, q[i].n);
		int r;

		if (len > BLKMIG_REQ_MAX_BYTES)
			len = BLKMIG_REQ_MAX_BYTES;
		r = bm->m ? mig_request(bm->m, VIRTIO_BLK_SECTION_ID, bm->index, off, (uint32_t)len)
			  : -ENOTCONN;
		if (r)
			log_debug("%s: asking for blocks %" PRIu64 "+%" PRIu64 ": %s (the push brings "
				  "them)", b->name, q[i].first, q[i].n, strerror(-r));
		else
			atomic_fetch_add(&bm->requests, 1);
	}
}

/* ---- figures ---- */

void blkmig_query_block(struct blkmig *bm, struct json_object *o)
{
	json_object_object_add(o, "incoming", json_object_new_boolean(bm->incoming));
	json_object_object_add(o, "migrating", json_object_new_boolean(atomic_load(&bm->migrating)));
}

static int blkmig_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* The p50 and p99 of the request waits kept (bm->lock held). */
static void blkmig_latency(struct blkmig *bm, uint32_t *p50, uint32_t *p99)
{
	uint64_t n = bm->nlat < BLKMIG_LAT_SAMPLES ? bm->nlat : BLKMIG_LAT_SAMPLES;
	uint32_t *v;

	*p50 = *p99 = 0;
	if (!n || !bm->lat_us || !(v = malloc(n * sizeof(*v))))
		return;
	memcpy(v, bm->lat_us, n * sizeof(*v));
	qsort(v, n, sizeof(*v), blkmig_cmp_u32);
	*p50 = v[(n - 1) / 2];
	*p99 = v[(n * 99 + 99) / 100 - 1];
	free(v);
}

void blkmig_query_add(struct virtio_blk *b, struct blkmig_sums *s)
{
	struct blkmig *bm = &b->mig;
	uint32_t p50 = 0, p99 = 0;

	/* The lock only where there are waits to rank (a postcopy
	 * destination that asked for blocks): query-migrate is polled. */
	if (bm->incoming && atomic_load(&bm->requests)) {
		pthread_mutex_lock(&bm->lock);
		blkmig_latency(bm, &p50, &p99);
		pthread_mutex_unlock(&bm->lock);
	}
	s->lat_p50_us = p50 > s->lat_p50_us ? p50 : s->lat_p50_us;
	s->lat_p99_us = p99 > s->lat_p99_us ? p99 : s->lat_p99_us;
	s->requests += atomic_load(&bm->requests);
	s->disks++;
	s->migrating += atomic_load(&bm->migrating);
	s->incoming += bm->incoming;
	s->bytes += atomic_load(&bm->bytes);
	s->blocks += atomic_load(&bm->blocks);
	s->zero_blocks += atomic_load(&bm->zero_blocks);
	s->dirty_bytes += atomic_load(&bm->dirty_bytes);
	s->dirtied += atomic_load(&bm->dirtied);
}
