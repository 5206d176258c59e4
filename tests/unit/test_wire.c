/*
 * Unit tests: the scheduling core of bench/wire.h, the user-space link the
 * postcopy benchmark runs over where the kernel has no netem - rate, delay,
 * the low-delay band overtaking bulk, tail drop, and a late caller losing no
 * link time.  Times are given, not read: deterministic.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>

#include "../../bench/wire.h"

#define US 1000ull
#define GBIT 1000000000ull

/* 1250 bytes at 1 Gbit/s: 10 us on the link. */
#define PKT 1250u

static struct wire_dir *new_dir(uint64_t delay_ns, uint64_t limit)
{
	struct wire_dir *d = calloc(1, sizeof(*d));

	assert_non_null(d);
	wire_dir_init(d, GBIT, delay_ns, limit);
	return d;
}

/* Deliver everything due by @now into @out (slots), return how many. */
static int drain(struct wire_dir *d, uint64_t now, int *out, int max)
{
	int n = 0, s;

	wire_dir_advance(d, now);
	while ((s = wire_dir_due(d, now)) >= 0) {
		assert_true(n < max);
		out[n++] = s;
		wire_dir_release(d, s);
		wire_dir_advance(d, now);
	}
	return n;
}

static void test_rate_and_delay(void **state)
{
	struct wire_dir *d = new_dir(500 * US, 1 << 20);
	int a, b, c, got[4];

	(void)state;
	a = wire_dir_enqueue(d, 0, PKT, 1);
	b = wire_dir_enqueue(d, 0, PKT, 1);
	c = wire_dir_enqueue(d, 0, PKT, 1);
	assert_true(a >= 0 && b >= 0 && c >= 0);
	/* Nothing arrives before serialization + delay. */
	assert_int_equal(drain(d, 0, got, 4), 0);
	assert_int_equal(wire_dir_next_ns(d), 10 * US); /* the link frees up */
	assert_int_equal(drain(d, 509 * US, got, 4), 0);
	assert_int_equal(drain(d, 510 * US, got, 4), 1);
	assert_int_equal(got[0], a);
	assert_int_equal(wire_dir_next_ns(d), 520 * US);
	assert_int_equal(drain(d, 529 * US, got, 4), 1);
	assert_int_equal(got[0], b);
	assert_int_equal(drain(d, 530 * US, got, 4), 1);
	assert_int_equal(got[0], c);
	assert_int_equal(wire_dir_next_ns(d), UINT64_MAX);
	assert_int_equal(d->packets, 3);
	assert_int_equal(d->bytes, 3 * PKT);
	free(d);
}

/* A packet that arrives to an idle link leaves at once: no catch-up from the past. */
static void test_idle_link_starts_at_arrival(void **state)
{
	struct wire_dir *d = new_dir(100 * US, 1 << 20);
	int got[2];

	(void)state;
	wire_dir_enqueue(d, 0, PKT, 1);
	assert_int_equal(drain(d, 200 * US, got, 2), 1);
	wire_dir_enqueue(d, 1000 * US, PKT, 1);
	assert_int_equal(drain(d, 1109 * US, got, 2), 0);
	assert_int_equal(drain(d, 1110 * US, got, 2), 1);
	free(d);
}

static void test_low_delay_band_overtakes(void **state)
{
	struct wire_dir *d = new_dir(500 * US, 1 << 20);
	int bulk[3], urgent, got[4];

	(void)state;
	for (int i = 0; i < 3; i++)
		bulk[i] = wire_dir_enqueue(d, 0, PKT, 1);
	wire_dir_advance(d, 0); /* bulk[0] is on the link until 10 us */
	urgent = wire_dir_enqueue(d, 5 * US, PKT, 0);
	/* At 10 us the link is free: the urgent packet goes before bulk[1]. */
	assert_int_equal(drain(d, 510 * US, got, 4), 1);
	assert_int_equal(got[0], bulk[0]);
	assert_int_equal(drain(d, 520 * US, got, 4), 1);
	assert_int_equal(got[0], urgent);
	assert_int_equal(drain(d, 540 * US, got, 4), 2);
	assert_int_equal(got[0], bulk[1]);
	assert_int_equal(got[1], bulk[2]);
	free(d);
}

static void test_tail_drop(void **state)
{
	struct wire_dir *d = new_dir(0, 3000);

	(void)state;
	assert_true(wire_dir_enqueue(d, 0, PKT, 1) >= 0);
	assert_true(wire_dir_enqueue(d, 0, PKT, 1) >= 0);
	assert_int_equal(wire_dir_enqueue(d, 0, PKT, 1), -1); /* 3750 > 3000 */
	assert_int_equal(d->drops, 1);
	/* The other band has its own limit. */
	assert_true(wire_dir_enqueue(d, 0, PKT, 0) >= 0);
	/* Once the link takes some, there is room again (band 0 went first). */
	wire_dir_advance(d, 0);
	assert_int_equal(wire_dir_enqueue(d, 1 * US, PKT, 1), -1);
	wire_dir_advance(d, 10 * US);
	assert_true(wire_dir_enqueue(d, 10 * US, PKT, 1) >= 0);
	free(d);
}

static void test_slots_run_out(void **state)
{
	struct wire_dir *d = new_dir(0, UINT64_MAX);

	(void)state;
	for (unsigned i = 0; i < WIRE_SLOTS; i++) {
		assert_int_equal(wire_dir_next_slot(d) >= 0, 1);
		assert_true(wire_dir_enqueue(d, 0, 64, 1) >= 0);
	}
	assert_int_equal(wire_dir_next_slot(d), -1);
	assert_int_equal(wire_dir_enqueue(d, 0, 64, 1), -1);
	free(d);
}

/* A caller that comes late still sends back to back from when the link was free. */
static void test_late_call_keeps_rate(void **state)
{
	struct wire_dir *d = new_dir(0, 1 << 20);
	int got[4];

	(void)state;
	wire_dir_enqueue(d, 0, PKT, 1);
	wire_dir_enqueue(d, 0, PKT, 1);
	wire_dir_enqueue(d, 0, PKT, 1);
	assert_int_equal(drain(d, 100 * US, got, 4), 3);
	assert_int_equal(d->busy_until_ns, 30 * US);
	free(d);
}

static void test_band_of(void **state)
{
	uint8_t v4_lowdelay[20] = { 0x45, 0x10 };
	uint8_t v4_bulk[20] = { 0x45, 0x00 };
	uint8_t v6[40] = { 0x60, 0x10 };

	(void)state;
	assert_int_equal(wire_band_of(v4_lowdelay, sizeof(v4_lowdelay)), 0);
	assert_int_equal(wire_band_of(v4_bulk, sizeof(v4_bulk)), 1);
	assert_int_equal(wire_band_of(v6, sizeof(v6)), 1);
	assert_int_equal(wire_band_of(v4_lowdelay, 1), 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rate_and_delay),
		cmocka_unit_test(test_idle_link_starts_at_arrival),
		cmocka_unit_test(test_low_delay_band_overtakes),
		cmocka_unit_test(test_tail_drop),
		cmocka_unit_test(test_slots_run_out),
		cmocka_unit_test(test_late_call_keeps_rate),
		cmocka_unit_test(test_band_of),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
