/*
 * Storage migration's block parts (src/devices/blk_migrate.c): the parser
 * against every malformed part docs/stream-format.md rules out, and the
 * destination's side - writing, zeroing, refusing - on a memfd disk.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "devices/virtio_blk_internal.h"

#define T_BS 4096u
#define T_DISK (10u * T_BS + 512u) /* 11 blocks, the last one 512 bytes */

static const struct blkmig_geom t_geom = { .block_bytes = T_BS, .disk_bytes = T_DISK,
					   .nblocks = 11 };

static int t_parse(const uint8_t *p, uint32_t len, const struct blkmig_geom *g,
		   struct blkmig_part *pt)
{
	char err[200] = "";
	int r = blkmig_part_parse(p, len, g, pt, err, sizeof(err));

	if (r)
		assert_true(err[0]); /* every refusal says why */
	return r;
}

static void test_valid_parts(void **state)
{
	static uint8_t p[BLKMIG_HEAD_BYTES + 2 * T_BS];
	struct blkmig_part pt;

	(void)state;
	blkmig_put_head(p, BLKMIG_SETUP, T_BS, T_DISK, 11);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES, NULL, &pt), 0);
	assert_int_equal(pt.kind, BLKMIG_SETUP);
	assert_int_equal(pt.geom.nblocks, 11);
	assert_null(pt.id);
	/* With the source disk's id after the head. */
	memcpy(p + BLKMIG_HEAD_BYTES, "disk-0\0\0\0\0\0\0\0\0\0\0\0\0\0", BLKMIG_SETUP_ID_BYTES);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES + BLKMIG_SETUP_ID_BYTES, NULL, &pt), 0);
	assert_ptr_equal(pt.id, p + BLKMIG_HEAD_BYTES);
	blkmig_put_head(p, BLKMIG_DATA, 0, 3, 2);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES + 2 * T_BS, &t_geom, &pt), 0);
	assert_int_equal(pt.first, 3);
	assert_int_equal(pt.data_bytes, 2 * T_BS);
	assert_ptr_equal(pt.data, p + BLKMIG_HEAD_BYTES);
	/* The last block is short: 512 bytes of data. */
	blkmig_put_head(p, BLKMIG_DATA, 0, 9, 2);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES + T_BS + 512, &t_geom, &pt), 0);
	blkmig_put_head(p, BLKMIG_ZERO, 0, 0, 11);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES, &t_geom, &pt), 0);
	assert_int_equal(pt.nblocks, 11);
	blkmig_put_head(p, BLKMIG_POSTCOPY, 0, 0, 0);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES, &t_geom, &pt), 0);
	assert_int_equal(pt.kind, BLKMIG_POSTCOPY);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES, NULL, &pt), -EBADMSG);     /* before SETUP */
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES + 1, &t_geom, &pt), -EBADMSG);
	blkmig_put_head(p, BLKMIG_POSTCOPY, 0, 0, 1);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES, &t_geom, &pt), -EBADMSG);  /* fields 0 */
	blkmig_put_head(p, BLKMIG_STALE, 0, 2, 3);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES, &t_geom, &pt), 0);
	assert_int_equal(pt.first, 2);
	assert_int_equal(pt.nblocks, 3);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES + 1, &t_geom, &pt), -EBADMSG);
	blkmig_put_head(p, BLKMIG_STALE, 0, 10, 2);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES, &t_geom, &pt), -EBADMSG);  /* past the end */
	blkmig_put_head(p, 6, 0, 0, 0);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES, &t_geom, &pt), -EBADMSG);  /* kind 6 */
}

static void test_bad_setup(void **state)
{
	static const struct { uint32_t bs; uint64_t disk, n; } bad[] = {
		{ 0, T_DISK, 11 },
		{ 2048, T_DISK, 11 },                 /* below 4 KiB */
		{ 4096 + 512, T_DISK, 3 },            /* not a power of two */
		{ 1u << 20, T_DISK, 1 },              /* above 512 KiB */
		{ T_BS, 0, 0 },                       /* an empty disk */
		{ T_BS, T_DISK + 1, 11 },             /* not sectors */
		{ T_BS, T_DISK, 10 },                 /* blocks do not cover it */
		{ T_BS, T_DISK, 12 },
		{ T_BS, UINT64_MAX - 511, UINT64_MAX / T_BS }, /* overflows */
	};
	uint8_t p[BLKMIG_HEAD_BYTES + BLKMIG_SETUP_ID_BYTES + 1] = { 0 };
	struct blkmig_part pt;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		blkmig_put_head(p, BLKMIG_SETUP, bad[i].bs, bad[i].disk, bad[i].n);
		assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES, NULL, &pt), -EBADMSG);
	}
	blkmig_put_head(p, BLKMIG_SETUP, T_BS, T_DISK, 11);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES + 1, NULL, &pt), -EBADMSG); /* trailing */
	/* an id of any other length */
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES + BLKMIG_SETUP_ID_BYTES - 1, NULL, &pt),
			 -EBADMSG);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES + BLKMIG_SETUP_ID_BYTES + 1, NULL, &pt),
			 -EBADMSG);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES, &t_geom, &pt), -EBADMSG);  /* a second */
}

static void test_bad_heads(void **state)
{
	uint8_t p[BLKMIG_HEAD_BYTES] = { 0 };
	struct blkmig_part pt;

	(void)state;
	for (uint32_t len = 0; len < BLKMIG_HEAD_BYTES; len++)
		assert_int_equal(t_parse(p, len, &t_geom, &pt), -EBADMSG); /* short */
	assert_int_equal(t_parse(p, sizeof(p), &t_geom, &pt), -EBADMSG);  /* kind 0 */
	blkmig_put_head(p, 6, 0, 0, 1);
	assert_int_equal(t_parse(p, sizeof(p), &t_geom, &pt), -EBADMSG);  /* kind 6 */
	blkmig_put_head(p, BLKMIG_ZERO, 0, 0, 1);
	p[2] = 1;                                                       /* reserved */
	assert_int_equal(t_parse(p, sizeof(p), &t_geom, &pt), -EBADMSG);
	blkmig_put_head(p, BLKMIG_ZERO, 0, 0, 1);
	assert_int_equal(t_parse(p, sizeof(p), NULL, &pt), -EBADMSG);    /* before SETUP */
	blkmig_put_head(p, BLKMIG_ZERO, 7, 0, 1);                        /* a != 0 */
	assert_int_equal(t_parse(p, sizeof(p), &t_geom, &pt), -EBADMSG);
}

static void test_bad_ranges(void **state)
{
	static const struct { uint64_t first, n; } bad[] = {
		{ 0, 0 }, { 11, 1 }, { 10, 2 }, { UINT64_MAX, 2 }, { 1, UINT64_MAX },
	};
	static uint8_t p[BLKMIG_HEAD_BYTES + BLKMIG_PART_MAX_DATA + T_BS];
	struct blkmig_part pt;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		blkmig_put_head(p, BLKMIG_ZERO, 0, bad[i].first, bad[i].n);
		assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES, &t_geom, &pt), -EBADMSG);
		blkmig_put_head(p, BLKMIG_DATA, 0, bad[i].first, bad[i].n);
		assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES + T_BS, &t_geom, &pt), -EBADMSG);
	}
	/* Data of the wrong length, a zero part with data. */
	blkmig_put_head(p, BLKMIG_DATA, 0, 0, 2);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES + T_BS, &t_geom, &pt), -EBADMSG);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES + 2 * T_BS + 1, &t_geom, &pt), -EBADMSG);
	blkmig_put_head(p, BLKMIG_DATA, 0, 10, 1);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES + T_BS, &t_geom, &pt), -EBADMSG);
	blkmig_put_head(p, BLKMIG_ZERO, 0, 0, 1);
	assert_int_equal(t_parse(p, BLKMIG_HEAD_BYTES + 8, &t_geom, &pt), -EBADMSG);
}

/* More data blocks than a part may carry, on a disk big enough for them. */
static void test_oversized_data(void **state)
{
	const struct blkmig_geom g = { .block_bytes = T_BS, .disk_bytes = 1ull << 30,
				       .nblocks = (1ull << 30) / T_BS };
	uint64_t n = BLKMIG_PART_MAX_DATA / T_BS + 1;
	static uint8_t p[BLKMIG_HEAD_BYTES + BLKMIG_PART_MAX_DATA + T_BS];
	struct blkmig_part pt;

	(void)state;
	blkmig_put_head(p, BLKMIG_DATA, 0, 0, n);
	assert_int_equal(t_parse(p, (uint32_t)(BLKMIG_HEAD_BYTES + n * T_BS), &g, &pt), -EBADMSG);
	blkmig_put_head(p, BLKMIG_DATA, 0, 0, n - 1);
	assert_int_equal(t_parse(p, (uint32_t)(BLKMIG_HEAD_BYTES + (n - 1) * T_BS), &g, &pt), 0);
}

/* ---- the destination, on a memfd ---- */

static struct virtio_blk *t_disk(uint64_t bytes, bool incoming)
{
	struct virtio_blk *b = calloc(1, sizeof(*b));

	assert_non_null(b);
	b->fd = memfd_create("t-disk", MFD_CLOEXEC);
	assert_true(b->fd >= 0);
	assert_int_equal(ftruncate(b->fd, (off_t)bytes), 0);
	b->bytes = bytes;
	snprintf(b->name, sizeof(b->name), "disk0");
	snprintf(b->opts.path, sizeof(b->opts.path), "memfd");
	b->opts.incoming = incoming;
	blkmig_init(&b->mig, bytes, incoming);
	return b;
}

static void t_disk_free(struct virtio_blk *b)
{
	blkmig_destroy(&b->mig);
	close(b->fd);
	free(b);
}

static int t_load(struct virtio_blk *b, const uint8_t *p, uint32_t len, const char *want)
{
	char err[300] = "";
	int r = blkmig_load_part(b, p, len, err, sizeof(err));

	if (want && !strstr(err, want))
		fail_msg("error '%s' does not say '%s'", err, want);
	return r;
}

static void test_load(void **state)
{
	struct virtio_blk *b = t_disk(T_DISK, true);
	static uint8_t p[BLKMIG_HEAD_BYTES + 2 * T_BS], back[T_BS];
	char err[300];

	(void)state;
	pthread_mutex_init(&b->lock, NULL);
	memset(back, 0xee, sizeof(back));
	assert_int_equal(pwrite(b->fd, back, T_BS, 5 * T_BS), T_BS); /* garbage to be zeroed */
	assert_int_equal(blkmig_load_complete(b, 0, err, sizeof(err)), -ENODATA);
	assert_non_null(strstr(err, "carries no blocks"));
	blkmig_put_head(p, BLKMIG_DATA, 0, 0, 1);
	assert_int_equal(t_load(b, p, BLKMIG_HEAD_BYTES + T_BS, "before the setup"), -EBADMSG);
	blkmig_put_head(p, BLKMIG_SETUP, T_BS, T_DISK, 11);
	assert_int_equal(t_load(b, p, BLKMIG_HEAD_BYTES, NULL), 0);
	for (uint32_t i = 0; i < 2 * T_BS; i++)
		p[BLKMIG_HEAD_BYTES + i] = (uint8_t)(i * 7);
	blkmig_put_head(p, BLKMIG_DATA, 0, 0, 2);
	assert_int_equal(t_load(b, p, BLKMIG_HEAD_BYTES + 2 * T_BS, NULL), 0);
	assert_int_equal(pread(b->fd, back, T_BS, T_BS), T_BS);
	assert_memory_equal(back, p + BLKMIG_HEAD_BYTES + T_BS, T_BS);
	assert_int_equal(blkmig_load_complete(b, 0, err, sizeof(err)), -ENODATA);
	assert_non_null(strstr(err, "9 of 11 blocks never arrived"));
	blkmig_put_head(p, BLKMIG_ZERO, 0, 2, 9);
	assert_int_equal(t_load(b, p, BLKMIG_HEAD_BYTES, NULL), 0);
	assert_int_equal(pread(b->fd, back, T_BS, 5 * T_BS), T_BS);
	for (uint32_t i = 0; i < T_BS; i++)
		assert_int_equal(back[i], 0);
	assert_int_equal(blkmig_load_complete(b, 0, err, sizeof(err)), 0);
	pthread_mutex_destroy(&b->lock);
	t_disk_free(b);
}

static void test_load_refusals(void **state)
{
	struct virtio_blk *b = t_disk(T_DISK, false), *c = t_disk(T_DISK - 512, true);
	uint8_t p[BLKMIG_HEAD_BYTES];

	(void)state;
	blkmig_put_head(p, BLKMIG_SETUP, T_BS, T_DISK, 11);
	assert_int_equal(t_load(b, p, sizeof(p), "is not incoming=on"), -EBADMSG);
	pthread_mutex_init(&c->lock, NULL);
	assert_int_equal(t_load(c, p, sizeof(p), "must have the source's size"), -EBADMSG);
	pthread_mutex_destroy(&c->lock);
	t_disk_free(b);
	t_disk_free(c);
}

/*
 * Postcopy on the destination: a read of a missing block waits and asks
 * for it; a write covering a whole missing block goes at once and the
 * source's later copy of that block never overwrites the guest's data;
 * what is pending and the received bitmap follow.
 */
static void test_postcopy_destination(void **state)
{
	struct virtio_blk *b = t_disk(T_DISK, true);
	static uint8_t p[BLKMIG_HEAD_BYTES + T_BS], back[T_BS], guest[T_BS];
	uint8_t *bits = NULL;
	uint64_t nbits = 0;
	char err[300];

	(void)state;
	pthread_mutex_init(&b->lock, NULL);
	b->ctl_efd = -1; /* vblk_wake: no thread to wake here */
	blkmig_put_head(p, BLKMIG_SETUP, T_BS, T_DISK, 11);
	assert_int_equal(t_load(b, p, BLKMIG_HEAD_BYTES, NULL), 0);
	blkmig_put_head(p, BLKMIG_ZERO, 0, 0, 3);
	assert_int_equal(t_load(b, p, BLKMIG_HEAD_BYTES, NULL), 0);
	/* Hybrid: block 2 arrived in precopy, then the guest wrote it: stale. */
	blkmig_put_head(p, BLKMIG_STALE, 0, 2, 1);
	assert_int_equal(t_load(b, p, BLKMIG_HEAD_BYTES, NULL), 0);
	assert_int_equal(b->mig.nreceived, 2);
	blkmig_put_head(p, BLKMIG_POSTCOPY, 0, 0, 0);
	assert_int_equal(t_load(b, p, BLKMIG_HEAD_BYTES, NULL), 0);
	assert_int_equal(t_load(b, p, BLKMIG_HEAD_BYTES, "a second postcopy part"), -EBADMSG);
	blkmig_put_head(p, BLKMIG_STALE, 0, 0, 1);
	assert_int_equal(t_load(b, p, BLKMIG_HEAD_BYTES, "a stale part after"), -EBADMSG);
	assert_int_equal(blkmig_load_pending(b), 0);            /* not running yet */
	assert_int_equal(blkmig_load_complete(b, 0, err, sizeof(err)), 0); /* 9 missing: fine */
	assert_int_equal(blkmig_load_pending(b), 9 * T_BS);

	/* Reads: block 1 is here, block 4 is not (asked for once). */
	assert_int_equal(blkmig_io_wait(b, VIRTIO_BLK_T_IN, T_BS, 512), 0);
	assert_int_equal(blkmig_io_wait(b, VIRTIO_BLK_T_IN, 4 * T_BS + 512, 512), 1);
	assert_int_equal(b->mig.nrq, 1);
	assert_int_equal(blkmig_io_wait(b, VIRTIO_BLK_T_IN, 4 * T_BS, 512), 1);
	assert_int_equal(b->mig.nrq, 1);
	/* A partial write of a missing block waits too; a whole one does not. */
	assert_int_equal(blkmig_io_wait(b, VIRTIO_BLK_T_OUT, 3 * T_BS, 512), 1);
	assert_int_equal(blkmig_io_wait(b, VIRTIO_BLK_T_OUT, 5 * T_BS, T_BS), 0);
	memset(guest, 0x47, sizeof(guest));                     /* the guest's write lands */
	assert_int_equal(pwrite(b->fd, guest, T_BS, 5 * T_BS), T_BS);
	assert_int_equal(blkmig_load_pending(b), 8 * T_BS);

	/* The source's copies of blocks 4..5 arrive: 4 written, 5 kept as the guest's. */
	memset(p + BLKMIG_HEAD_BYTES, 0x11, T_BS);
	blkmig_put_head(p, BLKMIG_DATA, 0, 4, 1);
	assert_int_equal(t_load(b, p, BLKMIG_HEAD_BYTES + T_BS, NULL), 0);
	blkmig_put_head(p, BLKMIG_DATA, 0, 5, 1);
	assert_int_equal(t_load(b, p, BLKMIG_HEAD_BYTES + T_BS, NULL), 0);
	assert_int_equal(pread(b->fd, back, T_BS, 5 * T_BS), T_BS);
	assert_memory_equal(back, guest, T_BS);
	assert_int_equal(pread(b->fd, back, T_BS, 4 * T_BS), T_BS);
	assert_int_equal(back[0], 0x11);
	assert_int_equal(blkmig_io_wait(b, VIRTIO_BLK_T_IN, 4 * T_BS, 512), 0);

	/* What a resume would tell the source: blocks 0, 1, 4, 5. */
	assert_int_equal(blkmig_load_received(b, &bits, &nbits), 0);
	assert_int_equal(nbits, 11);
	assert_int_equal(bits[0], 0x33);
	assert_int_equal(bits[1], 0);
	free(bits);

	/* The rest: done, nothing pending, nothing waits. */
	blkmig_put_head(p, BLKMIG_ZERO, 0, 0, 11);
	assert_int_equal(t_load(b, p, BLKMIG_HEAD_BYTES, NULL), 0);
	assert_int_equal(blkmig_load_pending(b), 0);
	assert_false(atomic_load(&b->mig.pc_active));
	assert_int_equal(pread(b->fd, back, T_BS, 5 * T_BS), T_BS);
	assert_memory_equal(back, guest, T_BS);                /* still the guest's */
	/* A copy still in flight after the last block: the guest's data stays. */
	blkmig_put_head(p, BLKMIG_DATA, 0, 5, 1);
	assert_int_equal(t_load(b, p, BLKMIG_HEAD_BYTES + T_BS, NULL), 0);
	assert_int_equal(pread(b->fd, back, T_BS, 5 * T_BS), T_BS);
	assert_memory_equal(back, guest, T_BS);
	assert_int_equal(blkmig_io_wait(b, VIRTIO_BLK_T_IN, 3 * T_BS, 512), 0);
	pthread_mutex_destroy(&b->lock);
	t_disk_free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_parts),
		cmocka_unit_test(test_bad_setup),
		cmocka_unit_test(test_bad_heads),
		cmocka_unit_test(test_bad_ranges),
		cmocka_unit_test(test_oversized_data),
		cmocka_unit_test(test_load),
		cmocka_unit_test(test_load_refusals),
		cmocka_unit_test(test_postcopy_destination),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
