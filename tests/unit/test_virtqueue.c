/*
 * The split-virtqueue parser (src/devices/virtqueue.c) against hostile
 * rings: addresses outside guest RAM (below, beyond, wrapping around 2^64),
 * loops, over-long and oversized chains, readable-after-writable buffers,
 * indirect descriptors, an avail index that runs ahead, heads out of range,
 * rings that do not fit; and the good paths: a virtio-blk-shaped chain,
 * index wrap-around, EVENT_IDX's avail_event.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "devices/virtqueue.h"
#include "vmferry/guest_abi.h"
#include "vmferry/virtio.h"

#define T_GPA 0x100000ull          /* guest RAM starts here ... */
#define T_BYTES (16ull << 20)      /* ... and is this long */
#define T_SIZE 128u
#define T_DESC (T_GPA + 0x1000)
#define T_AVAIL (T_GPA + 0x2000)
#define T_USED (T_GPA + 0x3000)
#define T_BUF (T_GPA + 0x10000)

struct t_ring {
	struct vq_guest g;
	struct virtqueue vq;
	struct vq_chain c;
	uint16_t avail_idx;
};

static uint8_t *t_at(struct t_ring *t, uint64_t gpa)
{
	return t->g.host + (gpa - T_GPA);
}

static void t_desc(struct t_ring *t, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags,
		   uint16_t next)
{
	struct virtq_desc d = { .addr = addr, .len = len, .flags = flags, .next = next };

	memcpy(t_at(t, T_DESC + 16u * i), &d, sizeof(d));
}

/* Make chain @head available. */
static void t_offer(struct t_ring *t, uint16_t head)
{
	uint16_t *ring = (uint16_t *)t_at(t, T_AVAIL + 4);

	ring[t->avail_idx % T_SIZE] = head;
	t->avail_idx++;
	memcpy(t_at(t, T_AVAIL + 2), &t->avail_idx, 2);
}

static int t_setup(void **state)
{
	struct t_ring *t = calloc(1, sizeof(*t));

	assert_non_null(t);
	t->g.host = calloc(1, T_BYTES);
	assert_non_null(t->g.host);
	t->g.gpa = T_GPA;
	t->g.bytes = T_BYTES;
	assert_int_equal(vq_setup(&t->vq, &t->g, T_SIZE, T_DESC, T_AVAIL, T_USED, true, 0, 0), 0);
	*state = t;
	return 0;
}

static int t_teardown(void **state)
{
	struct t_ring *t = *state;

	free(t->g.host);
	free(t);
	return 0;
}

static void test_blk_chain(void **state)
{
	struct t_ring *t = *state;
	uint16_t used_idx;
	struct virtq_used_elem e;

	assert_int_equal(vq_pop(&t->vq, &t->g, &t->c), 0);
	t_desc(t, 5, T_BUF, 16, VIRTQ_DESC_F_NEXT, 9);
	t_desc(t, 9, T_BUF + 512, 4096, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
	t_desc(t, 2, T_BUF + 8192, 1, VIRTQ_DESC_F_WRITE, 0);
	t_offer(t, 5);
	assert_int_equal(vq_pop(&t->vq, &t->g, &t->c), 1);
	assert_int_equal(t->c.head, 5);
	assert_int_equal(t->c.nsegs, 3);
	assert_int_equal(t->c.nread, 1);
	assert_int_equal(t->c.read_bytes, 16);
	assert_int_equal(t->c.write_bytes, 4097);
	assert_true(t->c.seg[1].write);
	assert_int_equal(t->c.seg[2].gpa, T_BUF + 8192);
	assert_int_equal(vq_pop(&t->vq, &t->g, &t->c), 0);
	vq_push(&t->vq, 5, 4097);
	memcpy(&used_idx, t_at(t, T_USED + 2), 2);
	memcpy(&e, t_at(t, T_USED + 4), sizeof(e));
	assert_int_equal(used_idx, 1);
	assert_int_equal(e.id, 5);
	assert_int_equal(e.len, 4097);
}

/* Each bad descriptor: the pop fails and consumes nothing. */
static void t_expect_bad(struct t_ring *t, int err)
{
	uint16_t before = t->vq.last_avail;

	assert_int_equal(vq_pop(&t->vq, &t->g, &t->c), err);
	assert_int_equal(t->vq.last_avail, before);
}

static void test_addresses_outside_ram(void **state)
{
	struct t_ring *t = *state;
	static const struct { uint64_t addr; uint32_t len; } bad[] = {
		{ 0, 16 },                         /* below RAM */
		{ T_GPA - 1, 16 },                 /* straddles the start */
		{ T_GPA + T_BYTES - 8, 16 },       /* straddles the end */
		{ T_GPA + T_BYTES, 1 },            /* just past the end */
		{ UINT64_MAX - 7, 16 },            /* wraps around 2^64 */
		{ VMF_DEVICE_GPA, 4 },        /* a device window */
	};

	t_offer(t, 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		t_desc(t, 0, bad[i].addr, bad[i].len, 0, 0);
		t_expect_bad(t, -EINVAL);
	}
	/* The last byte of RAM is fine. */
	t_desc(t, 0, T_GPA + T_BYTES - 1, 1, 0, 0);
	assert_int_equal(vq_pop(&t->vq, &t->g, &t->c), 1);
}

static void test_loops(void **state)
{
	struct t_ring *t = *state;

	t_offer(t, 0);
	t_desc(t, 0, T_BUF, 16, VIRTQ_DESC_F_NEXT, 0); /* itself */
	t_expect_bad(t, -EINVAL);
	t_desc(t, 0, T_BUF, 16, VIRTQ_DESC_F_NEXT, 1);
	t_desc(t, 1, T_BUF, 16, VIRTQ_DESC_F_NEXT, 0); /* two-cycle */
	t_expect_bad(t, -EINVAL);
	for (uint16_t i = 0; i < T_SIZE; i++) /* every descriptor, then back to 0 */
		t_desc(t, i, T_BUF, 1, VIRTQ_DESC_F_NEXT, (uint16_t)((i + 1) % T_SIZE));
	t_expect_bad(t, -EINVAL);
}

static void test_long_chain(void **state)
{
	struct t_ring *t = *state;

	t_offer(t, 0);
	for (uint16_t i = 0; i < VQ_MAX_CHAIN; i++)
		t_desc(t, i, T_BUF, 1, i + 1u < VQ_MAX_CHAIN ? VIRTQ_DESC_F_NEXT : 0, (uint16_t)(i + 1));
	assert_int_equal(vq_pop(&t->vq, &t->g, &t->c), 1); /* exactly the limit */
	assert_int_equal(t->c.nsegs, VQ_MAX_CHAIN);
	t_offer(t, 0);
	t_desc(t, VQ_MAX_CHAIN - 1, T_BUF, 1, VIRTQ_DESC_F_NEXT, VQ_MAX_CHAIN);
	t_desc(t, VQ_MAX_CHAIN, T_BUF, 1, 0, 0);
	t_expect_bad(t, -EINVAL); /* one more */
}

static void test_oversized(void **state)
{
	struct t_ring *t = *state;

	t_offer(t, 0);
	t_desc(t, 0, T_BUF, VQ_MAX_CHAIN_BYTES, VIRTQ_DESC_F_NEXT, 1);
	t_desc(t, 1, T_BUF, 1, VIRTQ_DESC_F_WRITE, 0);
	t_expect_bad(t, -E2BIG);
	t_desc(t, 0, T_BUF, UINT32_MAX, 0, 0); /* also beyond RAM */
	t_expect_bad(t, -EINVAL);
}

static void test_bad_shapes(void **state)
{
	struct t_ring *t = *state;

	t_offer(t, 0);
	t_desc(t, 0, T_BUF, 1, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1);
	t_desc(t, 1, T_BUF, 1, 0, 0); /* readable after writable */
	t_expect_bad(t, -EINVAL);
	t_desc(t, 0, T_BUF, 16, VIRTQ_DESC_F_INDIRECT, 0);
	t_expect_bad(t, -EINVAL);
	t_desc(t, 0, T_BUF, 16, VIRTQ_DESC_F_NEXT, T_SIZE); /* next out of range */
	t_expect_bad(t, -EINVAL);
	t_desc(t, 0, T_BUF, 16, VIRTQ_DESC_F_NEXT, 0xffff);
	t_expect_bad(t, -EINVAL);
}

static void test_broken_avail_ring(void **state)
{
	struct t_ring *t = *state;
	uint16_t idx = T_SIZE + 1;

	memcpy(t_at(t, T_AVAIL + 2), &idx, 2); /* more than a ring ahead */
	t_expect_bad(t, -EPROTO);
	t->avail_idx = 0;
	t_offer(t, T_SIZE); /* head out of range */
	t_expect_bad(t, -EPROTO);
}

static void test_index_wrap(void **state)
{
	struct t_ring *t = *state;

	assert_int_equal(vq_setup(&t->vq, &t->g, T_SIZE, T_DESC, T_AVAIL, T_USED, true, 65535,
				  65535), 0);
	t->avail_idx = 65535;
	t_desc(t, 3, T_BUF, 16, 0, 0);
	t_offer(t, 3);
	t_offer(t, 3);
	assert_int_equal(vq_pop(&t->vq, &t->g, &t->c), 1);
	assert_int_equal(vq_pop(&t->vq, &t->g, &t->c), 1);
	assert_int_equal(t->vq.last_avail, 1);
	assert_int_equal(vq_pop(&t->vq, &t->g, &t->c), 0);
	vq_push(&t->vq, 3, 0);
	vq_push(&t->vq, 3, 0);
	assert_int_equal(t->vq.used_idx, 1);
}

static void test_event_idx(void **state)
{
	struct t_ring *t = *state;
	uint16_t ev;

	assert_false(vq_arm_kick(&t->vq));
	memcpy(&ev, t_at(t, T_USED + 4 + 8 * T_SIZE), 2);
	assert_int_equal(ev, 0);
	t_desc(t, 0, T_BUF, 16, 0, 0);
	t_offer(t, 0);
	assert_true(vq_arm_kick(&t->vq)); /* one came in: take it rather than wait */
	assert_int_equal(vq_pop(&t->vq, &t->g, &t->c), 1);
	assert_false(vq_arm_kick(&t->vq));
	memcpy(&ev, t_at(t, T_USED + 4 + 8 * T_SIZE), 2);
	assert_int_equal(ev, 1);
	assert_true(virtq_need_event(ev, 2, 1));  /* the driver publishing entry 1 kicks */
	assert_false(virtq_need_event(ev, 3, 2)); /* and not again for entry 2 */
}

static void test_setup_checks(void **state)
{
	struct t_ring *t = *state;
	struct virtqueue q;
	static const struct { uint16_t size; uint64_t desc, avail, used; } bad[] = {
		{ 0, T_DESC, T_AVAIL, T_USED },
		{ 3, T_DESC, T_AVAIL, T_USED },
		{ 512, T_DESC, T_AVAIL, T_USED },
		{ 8, T_DESC + 8, T_AVAIL, T_USED },            /* desc not 16-aligned */
		{ 8, T_DESC, T_AVAIL + 1, T_USED },            /* avail not 2-aligned */
		{ 8, T_DESC, T_AVAIL, T_USED + 2 },            /* used not 4-aligned */
		{ 8, 0, T_AVAIL, T_USED },                     /* below RAM */
		{ 8, T_DESC, T_AVAIL, T_GPA + T_BYTES - 16 },  /* used ring past the end */
		{ 8, UINT64_MAX - 15, T_AVAIL, T_USED },       /* wraps */
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(vq_setup(&q, &t->g, bad[i].size, bad[i].desc, bad[i].avail,
					  bad[i].used, false, 0, 0), -EINVAL);
		assert_int_equal(q.size, 0);
		assert_int_equal(vq_pop(&q, &t->g, &t->c), 0); /* not set up: nothing */
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_blk_chain, t_setup, t_teardown),
		cmocka_unit_test_setup_teardown(test_addresses_outside_ram, t_setup, t_teardown),
		cmocka_unit_test_setup_teardown(test_loops, t_setup, t_teardown),
		cmocka_unit_test_setup_teardown(test_long_chain, t_setup, t_teardown),
		cmocka_unit_test_setup_teardown(test_oversized, t_setup, t_teardown),
		cmocka_unit_test_setup_teardown(test_bad_shapes, t_setup, t_teardown),
		cmocka_unit_test_setup_teardown(test_broken_avail_ring, t_setup, t_teardown),
		cmocka_unit_test_setup_teardown(test_index_wrap, t_setup, t_teardown),
		cmocka_unit_test_setup_teardown(test_event_idx, t_setup, t_teardown),
		cmocka_unit_test_setup_teardown(test_setup_checks, t_setup, t_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
