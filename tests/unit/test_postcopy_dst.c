/*
 * Unit tests: the postcopy destination's fault handling (postcopy.c), on a
 * real userfaultfd in minor mode over a small memfd block, without a VM or
 * a source: faults become one request per page, placing wakes every
 * waiter, recovery's outstanding list, lazy and eager mapping of pages
 * that arrive before anyone touched them, zero runs (the source's holes).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "migration/postcopy.h"
#include "vmm/ram.h"

#define PAGE 4096u
#define BLOCK_BYTES (2u << 20)
#define WAIT_NS 5000000000ull /* no step of a test takes longer */

struct fixture {
	struct ram_block rb;
	struct postcopy_dst *pd;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t requested[16];     /* pages asked for, in order */
	unsigned nrequested;
};

/* postcopy_request_fn: note the request. */
static int note_request(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages)
{
	struct fixture *f = opaque;

	assert_int_equal(block, 0);
	assert_int_equal(npages, 1);
	pthread_mutex_lock(&f->lock);
	if (f->nrequested < 16)
		f->requested[f->nrequested] = first_page;
	f->nrequested++;
	pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->lock);
	return 0;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int setup(void **state)
{
	struct fixture *f;
	const char *map = getenv("TEST_MAP");

	if (!postcopy_minor_supported()) {
		fprintf(stderr, "skipped: this kernel has no userfaultfd minor faults on shmem\n");
		*state = NULL;
		return 0;
	}
	f = calloc(1, sizeof(*f));
	assert_non_null(f);
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->cond, NULL);
	assert_int_equal(ram_block_create("ram", 0, BLOCK_BYTES, &f->rb), 0);
	assert_int_equal(ram_block_map_alias(&f->rb), 0);
	if (map)
		setenv("VMFERRY_POSTCOPY_MAP", map, 1);
	assert_int_equal(postcopy_dst_create(&f->rb, note_request, f, NULL, &f->pd), 0);
	unsetenv("VMFERRY_POSTCOPY_MAP");
	assert_true(postcopy_dst_minor(f->pd));
	assert_int_equal(postcopy_dst_prepare(f->pd), 0);
	assert_int_equal(postcopy_dst_listen(f->pd), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	if (!f)
		return 0;
	postcopy_dst_destroy(f->pd);
	ram_block_destroy(&f->rb);
	pthread_cond_destroy(&f->cond);
	pthread_mutex_destroy(&f->lock);
	free(f);
	return 0;
}

struct toucher {
	const volatile uint64_t *addr;
	uint64_t value;
	pthread_t th;
};

static void *toucher_main(void *arg)
{
	struct toucher *t = arg;

	t->value = *t->addr; /* faults; sleeps until the page is placed */
	return NULL;
}

/* Start a thread that reads the first word of @page (and blocks on it). */
static void touch(struct fixture *f, struct toucher *t, uint64_t page)
{
	t->addr = (const volatile uint64_t *)(f->rb.host + page * PAGE);
	assert_int_equal(pthread_create(&t->th, NULL, toucher_main, t), 0);
}

/* Wait until the fault thread has read @n faults in all. */
static void wait_faults(struct fixture *f, uint64_t n)
{
	uint64_t deadline = now_ns() + WAIT_NS;
	struct postcopy_dst_stats st;
	struct timespec pause = { 0, 100000 };

	for (;;) {
		postcopy_dst_get_stats(f->pd, &st);
		if (st.faults >= n)
			return;
		assert_true(now_ns() < deadline);
		nanosleep(&pause, NULL); /* polling a counter, bounded by the deadline */
	}
}

/* Requests sent so far (the fault thread adds to them). */
static unsigned nrequested(struct fixture *f)
{
	unsigned n;

	pthread_mutex_lock(&f->lock);
	n = f->nrequested;
	pthread_mutex_unlock(&f->lock);
	return n;
}

/* Wait until @n requests were sent; the page of the last one. */
static uint64_t wait_requests(struct fixture *f, unsigned n)
{
	struct timespec until;
	uint64_t page;
	unsigned have;
	int r = 0;

	assert_true(n >= 1 && n <= 16);
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += WAIT_NS / 1000000000ull;
	pthread_mutex_lock(&f->lock);
	while (f->nrequested < n && r == 0)
		r = pthread_cond_timedwait(&f->cond, &f->lock, &until);
	have = f->nrequested;
	page = f->requested[n - 1];
	pthread_mutex_unlock(&f->lock);
	assert_true(have >= n);
	return page;
}

/* Place @page holding @value in its first word; the toucher wakes and reads it. */
static void place(struct fixture *f, uint64_t page, uint64_t value)
{
	static uint8_t data[PAGE];

	memset(data, 0, sizeof(data));
	memcpy(data, &value, sizeof(value));
	assert_int_equal(postcopy_dst_place(f->pd, page, 1, data), 0);
}

static int count_one(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages)
{
	uint64_t *seen = opaque;

	(void)block;
	(void)npages;
	*seen = first_page;
	return 0;
}

/* A fault sends one request; placing the page wakes the thread with its data. */
static void test_fault_requests_once(void **state)
{
	struct fixture *f = *state;
	struct postcopy_dst_stats st;
	struct toucher a, b;

	if (!f)
		skip();
	touch(f, &a, 14);
	assert_int_equal(wait_requests(f, 1), 14);
	/* A second thread on the same page: it waits for the same answer. */
	touch(f, &b, 14);
	wait_faults(f, 2);
	assert_int_equal(nrequested(f), 1);
	place(f, 14, 0x14);
	assert_int_equal(pthread_join(a.th, NULL), 0);
	assert_int_equal(pthread_join(b.th, NULL), 0);
	assert_int_equal(a.value, 0x14);
	assert_int_equal(b.value, 0x14);
	postcopy_dst_get_stats(f->pd, &st);
	assert_int_equal(st.requests, 1);
	assert_int_equal(st.pages_requested_placed, 1);
	assert_int_equal(postcopy_dst_missing(f->pd), BLOCK_BYTES / PAGE - 1);
}

/* Recovery asks again for what was requested and has not arrived, only that. */
static void test_outstanding(void **state)
{
	struct fixture *f = *state;
	struct toucher a, b;
	uint64_t seen = 0;

	if (!f)
		skip();
	touch(f, &a, 3);
	assert_int_equal(wait_requests(f, 1), 3);
	touch(f, &b, 9);
	assert_int_equal(wait_requests(f, 2), 9);
	place(f, 3, 0x3);
	assert_int_equal(pthread_join(a.th, NULL), 0);
	assert_int_equal(postcopy_dst_outstanding(f->pd, count_one, &seen), 1);
	assert_int_equal(seen, 9);
	place(f, 9, 0x9);
	assert_int_equal(pthread_join(b.th, NULL), 0);
	assert_int_equal(b.value, 0x9);
	assert_int_equal(postcopy_dst_outstanding(f->pd, count_one, &seen), 0);
}

/*
 * A page that arrived before anyone touched it costs no request, and is
 * never written twice.  Lazy mapping (the default): it is not mapped yet,
 * so the first touch is one fault, answered from here.
 */
static void test_placed_first(void **state)
{
	struct fixture *f = *state;
	struct postcopy_dst_stats st;
	struct toucher a;

	if (!f)
		skip();
	place(f, 20, 0x20);
	place(f, 20, 0x99); /* never written twice: the first copy stays */
	postcopy_dst_get_stats(f->pd, &st);
	assert_int_equal(st.faults, 0);
	touch(f, &a, 20);
	assert_int_equal(pthread_join(a.th, NULL), 0);
	assert_int_equal(a.value, 0x20);
	postcopy_dst_get_stats(f->pd, &st);
	assert_int_equal(st.faults, 1);
	assert_int_equal(st.requests, 0);
	assert_int_equal(*(volatile uint64_t *)(f->rb.host + 20 * PAGE), 0x20);
}

/*
 * Lazy mapping: a fault on an arrived page maps the arrived pages after it
 * too, so walking through them costs one fault, not one per page; it stops
 * at a page that has not arrived (that one still faults and is requested).
 */
static void test_map_ahead(void **state)
{
	static uint8_t data[16 * PAGE];
	struct fixture *f = *state;
	struct postcopy_dst_stats st;
	struct toucher a, b;

	if (!f)
		skip();
	for (unsigned i = 0; i < 16; i++)
		data[i * PAGE] = (uint8_t)(0x40 + i);
	assert_int_equal(postcopy_dst_place(f->pd, 40, 16, data), 0);
	touch(f, &a, 40);
	assert_int_equal(pthread_join(a.th, NULL), 0);
	assert_int_equal(a.value, 0x40);
	for (unsigned i = 1; i < 16; i++)
		assert_int_equal(*(volatile uint8_t *)(f->rb.host + (40 + i) * PAGE), 0x40 + i);
	postcopy_dst_get_stats(f->pd, &st);
	assert_int_equal(st.faults, 1);
	assert_int_equal(st.requests, 0);
	/* Page 56 never came: it is asked for. */
	touch(f, &b, 56);
	assert_int_equal(wait_requests(f, 1), 56);
	place(f, 56, 0x56);
	assert_int_equal(pthread_join(b.th, NULL), 0);
	assert_int_equal(b.value, 0x56);
}

/*
 * A zero run (how a hole of the source arrives): across partial words, over
 * a page with stale bytes in the memfd (punched: reads zero, holds no
 * memory), a thread already waiting inside it (woken with a zero page) and
 * a page that arrived with data before (kept: never written twice).
 */
static void test_zero_run(void **state)
{
	struct fixture *f = *state;
	struct toucher a, b;
	struct stat st0, st1;
	uint64_t missing;

	if (!f)
		skip();
	memset(f->rb.alias + 10 * PAGE, 0xee, PAGE); /* stale: never received */
	place(f, 50, 0x50);
	touch(f, &a, 100);
	assert_int_equal(wait_requests(f, 1), 100);
	missing = postcopy_dst_missing(f->pd);
	assert_int_equal(fstat(f->rb.fd, &st0), 0);
	assert_int_equal(postcopy_dst_place(f->pd, 3, 200, NULL), 0);
	assert_int_equal(postcopy_dst_missing(f->pd), missing - 199); /* page 50 was here */
	/* Nothing allocated for the run but the waiter's page; the stale one given back. */
	assert_int_equal(fstat(f->rb.fd, &st1), 0);
	assert_true(st1.st_blocks <= st0.st_blocks); /* +1 page: the waiter's, -1: page 10 */
	assert_int_equal(pthread_join(a.th, NULL), 0);
	assert_int_equal(a.value, 0);
	touch(f, &b, 10);
	assert_int_equal(pthread_join(b.th, NULL), 0);
	assert_int_equal(b.value, 0);
	assert_int_equal(*(volatile uint64_t *)(f->rb.host + 50 * PAGE), 0x50);
	assert_int_equal(*(volatile uint64_t *)(f->rb.host + 202 * PAGE), 0);
	/* Pages outside the run were not touched: page 203 still faults and is asked for. */
	touch(f, &b, 203);
	assert_int_equal(wait_requests(f, 2), 203);
	place(f, 203, 0x203);
	assert_int_equal(pthread_join(b.th, NULL), 0);
	assert_int_equal(b.value, 0x203);
}

/* Eager mapping (VMFERRY_POSTCOPY_MAP=eager): an arrived page costs no fault. */
static void test_placed_first_eager(void **state)
{
	struct fixture *f = *state;
	struct postcopy_dst_stats st;

	if (!f)
		skip();
	place(f, 20, 0x20);
	assert_int_equal(*(volatile uint64_t *)(f->rb.host + 20 * PAGE), 0x20);
	postcopy_dst_get_stats(f->pd, &st);
	assert_int_equal(st.faults, 0);
	assert_int_equal(st.requests, 0);
}

static int setup_eager(void **state)
{
	int r;

	setenv("TEST_MAP", "eager", 1);
	r = setup(state);
	unsetenv("TEST_MAP");
	return r;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_fault_requests_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_outstanding, setup, teardown),
		cmocka_unit_test_setup_teardown(test_placed_first, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_ahead, setup, teardown),
		cmocka_unit_test_setup_teardown(test_zero_run, setup, teardown),
		cmocka_unit_test_setup_teardown(test_placed_first_eager, setup_eager, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
