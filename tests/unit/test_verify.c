/*
 * Unit tests for the guest memory verifiers (src/verify): synthetic RAM
 * images with a boot info and per-vCPU ranges for the incrementer and the
 * dirtier, consistent ones and every kind of damage the verifiers must
 * catch, and dispatch on the workload named in the boot info.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "verify/verify.h"
#include "vmferry/guest_abi.h"
#include "vmferry/page_pattern.h"

#define TEST_RAM_BYTES (8ull << 20)
#define TEST_PAGE VMF_PAGE_BYTES

struct test_image {
	uint8_t *ram;
	uint64_t bytes;
	struct vmf_boot_info *bi;
};

/* 8 MiB RAM; workload memory [2 MiB, 8 MiB) split evenly among @nvcpus. */
static void test_image_init(struct test_image *t, unsigned nvcpus)
{
	uint64_t per = (TEST_RAM_BYTES - VMF_WORK_GPA) / nvcpus / TEST_PAGE * TEST_PAGE;

	t->bytes = TEST_RAM_BYTES;
	t->ram = calloc(1, t->bytes);
	assert_non_null(t->ram);
	t->bi = (struct vmf_boot_info *)(t->ram + VMF_BOOT_INFO_GPA);
	t->bi->magic = VMF_BOOT_MAGIC;
	t->bi->abi_version = VMF_ABI_VERSION;
	t->bi->nvcpus = nvcpus;
	t->bi->ram_bytes = TEST_RAM_BYTES;
	strcpy(t->bi->workload, "incrementer");
	for (unsigned i = 0; i < nvcpus; i++) {
		t->bi->range[i].gpa = VMF_WORK_GPA + i * per;
		t->bi->range[i].bytes = per;
		t->bi->stats[i].phase = VMF_PHASE_RUNNING;
	}
}

static void test_image_free(struct test_image *t)
{
	free(t->ram);
}

static uint64_t test_npages(struct test_image *t, unsigned vcpu)
{
	return t->bi->range[vcpu].bytes / TEST_PAGE;
}

static uint8_t *test_page(struct test_image *t, unsigned vcpu, uint64_t page)
{
	return t->ram + t->bi->range[vcpu].gpa + page * TEST_PAGE;
}

/*
 * A consistent stop: @passes done, pages below @edge one further.  The rest
 * of each page gets noise: only first bytes count.
 */
static void test_fill(struct test_image *t, unsigned vcpu, uint64_t passes,
		      uint64_t edge)
{
	t->bi->stats[vcpu].passes = passes;
	t->bi->stats[vcpu].writes = passes * test_npages(t, vcpu) + edge;
	for (uint64_t i = 0; i < test_npages(t, vcpu); i++) {
		uint8_t *p = test_page(t, vcpu, i);

		p[0] = (uint8_t)(i < edge ? passes + 1 : passes);
		p[1] = 0xa5;
		p[TEST_PAGE - 1] = (uint8_t)i;
	}
}

static int test_verify(struct test_image *t, struct json_object **verdict)
{
	return verify_incrementer_image(t->ram, t->bytes, verdict);
}

static struct json_object *test_vcpu(struct json_object *verdict, unsigned vcpu)
{
	struct json_object *vcpus = json_object_object_get(verdict, "vcpus");

	assert_non_null(vcpus);
	assert_true(json_object_array_length(vcpus) > vcpu);
	return json_object_array_get_idx(vcpus, vcpu);
}

static int64_t test_int(struct json_object *obj, const char *key)
{
	struct json_object *v = json_object_object_get(obj, key);

	assert_non_null(v);
	return json_object_get_int64(v);
}

static bool test_bool(struct json_object *obj, const char *key)
{
	struct json_object *v;

	assert_true(json_object_object_get_ex(obj, key, &v));
	assert_true(json_object_is_type(v, json_type_boolean));
	return json_object_get_boolean(v);
}

static const char *test_error(struct json_object *verdict)
{
	struct json_object *v = json_object_object_get(verdict, "error");

	assert_non_null(v);
	return json_object_get_string(v);
}

/* Expect the image to be consistent with edge @edge on every vCPU given. */
static void test_expect_ok(struct test_image *t, const int64_t *edges)
{
	struct json_object *verdict = NULL;

	assert_int_equal(test_verify(t, &verdict), 0);
	assert_non_null(verdict);
	assert_true(test_bool(verdict, "ok"));
	assert_null(json_object_object_get(verdict, "error"));
	assert_string_equal(json_object_get_string(json_object_object_get(verdict, "workload")),
			    "incrementer");
	for (unsigned i = 0; i < t->bi->nvcpus; i++) {
		struct json_object *v = test_vcpu(verdict, i);

		assert_int_equal(test_int(v, "vcpu"), i);
		assert_true(test_bool(v, "ok"));
		assert_int_equal(test_int(v, "edge"), edges[i]);
		assert_int_equal(test_int(v, "pages"), test_npages(t, i));
		assert_int_equal(test_int(v, "passes"), t->bi->stats[i].passes);
		assert_int_equal(test_int(v, "gpa"), t->bi->range[i].gpa);
	}
	json_object_put(verdict);
}

/*
 * Expect -EBADMSG with @needle in the error.  With @vcpu >= 0, that vCPU's
 * entry must be bad at @bad_page; returns nothing, frees the verdict.
 */
static void test_expect_bad(struct test_image *t, const char *needle, int vcpu,
			    int64_t bad_page)
{
	struct json_object *verdict = NULL;
	const char *err;

	assert_int_equal(test_verify(t, &verdict), -EBADMSG);
	assert_non_null(verdict);
	assert_false(test_bool(verdict, "ok"));
	err = test_error(verdict);
	if (!strstr(err, needle))
		fail_msg("error \"%s\" lacks \"%s\"", err, needle);
	if (vcpu >= 0) {
		struct json_object *v = test_vcpu(verdict, (unsigned)vcpu);

		assert_false(test_bool(v, "ok"));
		assert_true(json_object_object_get_ex(v, "edge", NULL));
		assert_null(json_object_object_get(v, "edge"));
		if (bad_page >= 0) {
			assert_int_equal(test_int(v, "bad_page"), bad_page);
			assert_int_equal(test_int(v, "bad_gpa"),
					 t->bi->range[vcpu].gpa + (uint64_t)bad_page * TEST_PAGE);
		}
	} else {
		assert_int_equal(json_object_array_length(json_object_object_get(verdict, "vcpus")), 0);
	}
	json_object_put(verdict);
}

/* ---- consistent images ---- */

static void test_ok_edge_zero(void **state)
{
	struct test_image t;
	int64_t edges[1] = { 0 };

	(void)state;
	test_image_init(&t, 1);
	test_fill(&t, 0, 3, 0);
	test_expect_ok(&t, edges);
	test_image_free(&t);
}

static void test_ok_mid_range(void **state)
{
	struct test_image t;
	int64_t edges[2] = { 377, 1 };

	(void)state;
	test_image_init(&t, 2);
	test_fill(&t, 0, 5, 377);
	test_fill(&t, 1, 0, 1); /* first pass barely begun */
	test_expect_ok(&t, edges);
	test_image_free(&t);
}

static void test_ok_edge_at_end(void **state)
{
	struct test_image t;
	int64_t edges[2];

	(void)state;
	test_image_init(&t, 2);
	edges[0] = (int64_t)test_npages(&t, 0);
	edges[1] = 0;
	test_fill(&t, 0, 9, test_npages(&t, 0)); /* pass done, passes not yet bumped */
	test_fill(&t, 1, 0, 0);                  /* just zeroed */
	test_expect_ok(&t, edges);
	test_image_free(&t);
}

static void test_ok_wraparound(void **state)
{
	struct test_image t;
	int64_t edges[2] = { 100, 200 };

	(void)state;
	test_image_init(&t, 2);
	test_fill(&t, 0, 255, 100);  /* prefix 0, rest 255 */
	test_fill(&t, 1, 511, 200);  /* same bytes, passes > 256 */
	assert_int_equal(test_page(&t, 0, 0)[0], 0);
	assert_int_equal(test_page(&t, 0, 100)[0], 255);
	test_expect_ok(&t, edges);
	test_image_free(&t);
}

static void test_ok_phase_done(void **state)
{
	struct test_image t;
	int64_t edges[1] = { 0 };

	(void)state;
	test_image_init(&t, 1);
	test_fill(&t, 0, 4, 0);
	t.bi->stats[0].phase = VMF_PHASE_DONE;
	test_expect_ok(&t, edges);
	test_image_free(&t);
}

/* A shorter image reads as zeros past its end: fine when zeros are expected. */
static void test_ok_short_image_zero_tail(void **state)
{
	struct test_image t;
	int64_t edges[1] = { 10 };

	(void)state;
	test_image_init(&t, 1);
	test_fill(&t, 0, 0, 10);
	/* clear the noise so the tail beyond the cut is really zero */
	for (uint64_t i = 0; i < test_npages(&t, 0); i++)
		memset(test_page(&t, 0, i) + 1, 0, TEST_PAGE - 1);
	t.bytes = t.bi->range[0].gpa + 11 * TEST_PAGE;
	test_expect_ok(&t, edges);
	/* cut inside page 0: pages 1..9 read as zero, so the edge moves to 1 */
	t.bytes = t.bi->range[0].gpa + 5;
	edges[0] = 1;
	test_expect_ok(&t, edges);
	test_image_free(&t);
}

/* A huge claimed RAM and range past a small image: checked without a walk. */
static void test_ok_huge_claimed_ram(void **state)
{
	struct test_image t;
	int64_t edges[1];

	(void)state;
	test_image_init(&t, 1);
	t.bi->ram_bytes = VMF_MAX_RAM_GIB << 30;
	t.bi->range[0].bytes = t.bi->ram_bytes - VMF_WORK_GPA;
	/* passes 255: prefix holds 0, so an all-zero range is at edge n. */
	t.bi->stats[0].passes = 255;
	edges[0] = (int64_t)test_npages(&t, 0);
	test_expect_ok(&t, edges);
	/* with passes 7 the zero tail is wrong; its size is counted, not walked */
	t.bi->stats[0].passes = 7;
	test_expect_bad(&t, "holds 0, expected 8 or 7", 0, 0);
	test_image_free(&t);
}

/* ---- broken images ---- */

static void test_bad_stale_page(void **state)
{
	struct test_image t;

	(void)state;
	test_image_init(&t, 2);
	test_fill(&t, 0, 7, 200);
	test_fill(&t, 1, 7, 200);
	test_page(&t, 1, 50)[0] = 7; /* one pass behind, inside the prefix */
	test_expect_bad(&t, "vcpu 1: pages 50..50", 1, 50);
	test_image_free(&t);
}

static void test_bad_stale_page_in_rest(void **state)
{
	struct test_image t;

	(void)state;
	test_image_init(&t, 1);
	test_fill(&t, 0, 7, 200);
	test_page(&t, 0, 300)[0] = 6; /* two passes behind the prefix */
	test_expect_bad(&t, "expected 7 after the edge at page 200", 0, 300);
	test_image_free(&t);
}

static void test_bad_zeroed_page(void **state)
{
	struct test_image t;

	(void)state;
	test_image_init(&t, 1);
	test_fill(&t, 0, 7, 200);
	test_page(&t, 0, 37)[0] = 0;
	test_expect_bad(&t, "page 37 (gpa 0x225000) holds 0, expected 8 or 7", 0, 37);
	test_image_free(&t);
}

static void test_bad_torn_range(void **state)
{
	struct test_image t;

	(void)state;
	test_image_init(&t, 1);
	test_fill(&t, 0, 12, 300);
	for (uint64_t i = 100; i < 200; i++)
		test_page(&t, 0, i)[0] = 12;  /* two edges: 100 and 300 */
	test_expect_bad(&t, "pages 100..199", 0, 100);
	test_image_free(&t);
}

static void test_bad_two_passes_ahead(void **state)
{
	struct test_image t;

	(void)state;
	test_image_init(&t, 1);
	test_fill(&t, 0, 20, 40);
	test_page(&t, 0, 10)[0] = 22;
	test_expect_bad(&t, "holds 22, expected 21 or 20", 0, 10);
	test_image_free(&t);
}

static void test_bad_phase_setup(void **state)
{
	struct test_image t;

	(void)state;
	test_image_init(&t, 2);
	test_fill(&t, 0, 1, 1);
	test_fill(&t, 1, 0, 0);
	t.bi->stats[1].phase = VMF_PHASE_SETUP;
	test_expect_bad(&t, "vcpu 1: phase setup", 1, -1);
	test_image_free(&t);
}

static void test_bad_magic(void **state)
{
	struct test_image t;

	(void)state;
	test_image_init(&t, 1);
	test_fill(&t, 0, 1, 1);
	t.bi->magic ^= 1;
	test_expect_bad(&t, "bad magic", -1, -1);
	test_image_free(&t);
	/* No boot info at all: the verdict says it is not a dump. */
	{
		static const uint8_t junk[4096] = "not a dump";
		struct json_object *verdict = NULL, *v;

		assert_int_equal(verify_guest_image(junk, sizeof(junk), &verdict), -EBADMSG);
		assert_true(json_object_object_get_ex(verdict, "dump", &v));
		assert_false(json_object_get_boolean(v));
		json_object_put(verdict);
	}
}

static void test_bad_abi_and_workload(void **state)
{
	struct test_image t;

	(void)state;
	test_image_init(&t, 1);
	test_fill(&t, 0, 1, 1);
	t.bi->abi_version = VMF_ABI_VERSION + 1;
	test_expect_bad(&t, "abi_version", -1, -1);
	t.bi->abi_version = VMF_ABI_VERSION;
	strcpy(t.bi->workload, "dirtier");
	test_expect_bad(&t, "workload \"dirtier\"", -1, -1);
	memset(t.bi->workload, 'x', sizeof(t.bi->workload)); /* no NUL */
	test_expect_bad(&t, "is not \"incrementer\"", -1, -1);
	test_image_free(&t);
}

static void test_bad_overlapping_ranges(void **state)
{
	struct test_image t;

	(void)state;
	test_image_init(&t, 2);
	test_fill(&t, 0, 1, 1);
	test_fill(&t, 1, 1, 1);
	t.bi->range[1].gpa -= TEST_PAGE;
	test_expect_bad(&t, "overlaps vcpu 0", -1, -1);
	test_image_free(&t);
}

static void test_bad_ranges_outside_ram(void **state)
{
	struct test_image t;

	(void)state;
	test_image_init(&t, 1);
	test_fill(&t, 0, 1, 1);
	t.bi->range[0].bytes += TEST_PAGE; /* one page past the end of RAM */
	test_expect_bad(&t, "outside workload memory", -1, -1);
	t.bi->range[0].bytes -= TEST_PAGE;
	t.bi->range[0].gpa = VMF_IMAGE_GPA; /* below the workload area */
	test_expect_bad(&t, "outside workload memory", -1, -1);
	t.bi->range[0].gpa = UINT64_MAX - TEST_PAGE + 1; /* wraps */
	test_expect_bad(&t, "outside workload memory", -1, -1);
	t.bi->range[0].gpa = VMF_WORK_GPA + 8;
	test_expect_bad(&t, "not page aligned", -1, -1);
	t.bi->range[0].gpa = VMF_WORK_GPA;
	t.bi->range[0].bytes = 0;
	test_expect_bad(&t, "empty", -1, -1);
	test_image_free(&t);
}

static void test_bad_ram_bytes(void **state)
{
	struct test_image t;

	(void)state;
	test_image_init(&t, 1);
	test_fill(&t, 0, 1, 1);
	t.bi->ram_bytes = TEST_RAM_BYTES - TEST_PAGE; /* image larger than RAM */
	t.bi->range[0].bytes -= TEST_PAGE;
	test_expect_bad(&t, "image is", -1, -1);
	t.bi->ram_bytes = (VMF_MAX_RAM_GIB << 30) + TEST_PAGE;
	test_expect_bad(&t, "ram_bytes", -1, -1);
	t.bi->ram_bytes = TEST_RAM_BYTES + 1;
	test_expect_bad(&t, "ram_bytes", -1, -1);
	test_image_free(&t);
}

static void test_bad_nvcpus(void **state)
{
	struct test_image t;

	(void)state;
	test_image_init(&t, 1);
	test_fill(&t, 0, 1, 1);
	t.bi->nvcpus = 0;
	test_expect_bad(&t, "nvcpus 0", -1, -1);
	t.bi->nvcpus = VMF_MAX_VCPUS + 1;
	test_expect_bad(&t, "nvcpus 33", -1, -1);
	t.bi->nvcpus = UINT32_MAX;
	test_expect_bad(&t, "nvcpus", -1, -1);
	test_image_free(&t);
}

static void test_bad_tiny_images(void **state)
{
	struct test_image t;
	struct json_object *verdict = NULL;

	(void)state;
	test_image_init(&t, 1);
	test_fill(&t, 0, 1, 1);
	/* cut inside the boot info: the rest reads as zero */
	t.bytes = VMF_BOOT_INFO_GPA + 12;
	test_expect_bad(&t, "nvcpus 0", -1, -1);
	t.bytes = 3;
	test_expect_bad(&t, "bad magic", -1, -1);
	assert_int_equal(verify_incrementer_image(NULL, 0, &verdict), -EBADMSG);
	json_object_put(verdict);
	assert_int_equal(verify_incrementer_image(NULL, 5, &verdict), -EINVAL);
	assert_int_equal(verify_incrementer_image(t.ram, t.bytes, NULL), -EINVAL);
	test_image_free(&t);
}

/* ---- dirtier ---- */

/* Store @v little-endian in the first 8 bytes of @p, as the guest does. */
static void test_put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* A dirtier image; @wss_bytes 0 leaves the param out (whole range). */
static void test_dirtier_init(struct test_image *t, unsigned nvcpus,
			      uint64_t wss_bytes)
{
	test_image_init(t, nvcpus);
	strcpy(t->bi->workload, "dirtier");
	/* unrelated params around it, as `--guest dirtier,rate=..,wss=..` */
	strcpy(t->bi->params[0].key, "rate");
	t->bi->params[0].value = 50000;
	if (wss_bytes) {
		strcpy(t->bi->params[1].key, "wss");
		t->bi->params[1].value = wss_bytes;
	}
}

/* The working set in pages the verdict must report for @wss_bytes. */
static uint64_t test_wss_pages(struct test_image *t, unsigned vcpu)
{
	uint64_t range = test_npages(t, vcpu);

	for (unsigned i = 0; i < VMF_MAX_PARAMS; i++) {
		if (strcmp(t->bi->params[i].key, "wss") == 0) {
			uint64_t n = t->bi->params[i].value / TEST_PAGE;

			if (t->bi->params[i].value == 0 || n >= range)
				return range;
			return n ? n : 1;
		}
	}
	return range;
}

/*
 * A consistent stop after @writes writes: page k of the working set holds
 * the last sequence number written to it, with noise after the first 8
 * bytes (only those count); pages beyond it keep noise past byte 8 too.
 * Written independently of the verifier: by replaying the guest's loop
 * when @writes is small, by formula otherwise.
 */
static void test_dirtier_fill(struct test_image *t, unsigned vcpu, uint64_t writes)
{
	uint64_t n = test_wss_pages(t, vcpu);

	t->bi->stats[vcpu].writes = writes;
	t->bi->stats[vcpu].passes = writes / n;
	for (uint64_t k = 0; k < test_npages(t, vcpu); k++) {
		uint8_t *p = test_page(t, vcpu, k);

		memset(p, 0, 8);
		p[8] = 0x5a;
		p[TEST_PAGE - 1] = (uint8_t)k;
	}
	if (writes <= 4 * n) {
		for (uint64_t seq = 1; seq <= writes; seq++)
			test_put_u64(test_page(t, vcpu, (seq - 1) % n), seq);
		return;
	}
	for (uint64_t k = 0; k < n; k++) {
		uint64_t last = writes - (writes - 1 - k) % n; /* writes >= n > k */

		test_put_u64(test_page(t, vcpu, k), last);
	}
}

/* The guest wrote seq writes + 1 but was stopped before stats.writes. */
static void test_dirtier_in_flight(struct test_image *t, unsigned vcpu)
{
	uint64_t w = t->bi->stats[vcpu].writes;

	test_put_u64(test_page(t, vcpu, w % test_wss_pages(t, vcpu)), w + 1);
}

static int test_verify_dirtier(struct test_image *t, struct json_object **verdict)
{
	return verify_dirtier_image(t->ram, t->bytes, verdict);
}

/* Expect a consistent dirtier image; returns the verdict (caller puts). */
static struct json_object *test_dirtier_expect_ok(struct test_image *t)
{
	struct json_object *verdict = NULL;

	assert_int_equal(test_verify_dirtier(t, &verdict), 0);
	assert_non_null(verdict);
	assert_true(test_bool(verdict, "ok"));
	assert_null(json_object_object_get(verdict, "error"));
	assert_string_equal(json_object_get_string(json_object_object_get(verdict, "workload")),
			    "dirtier");
	for (unsigned i = 0; i < t->bi->nvcpus; i++) {
		struct json_object *v = test_vcpu(verdict, i);

		assert_int_equal(test_int(v, "vcpu"), i);
		assert_true(test_bool(v, "ok"));
		assert_int_equal(test_int(v, "pages"), test_npages(t, i));
		assert_int_equal(test_int(v, "wss_pages"), test_wss_pages(t, i));
		assert_int_equal(test_int(v, "writes"), t->bi->stats[i].writes);
		assert_int_equal(test_int(v, "gpa"), t->bi->range[i].gpa);
		assert_null(json_object_object_get(v, "bad_page"));
	}
	return verdict;
}

/*
 * Expect -EBADMSG with @needle in the error, vCPU @vcpu bad at @bad_page
 * holding @value where @expected belongs.
 */
static void test_dirtier_expect_bad(struct test_image *t, const char *needle,
				    unsigned vcpu, uint64_t bad_page,
				    uint64_t expected, uint64_t value)
{
	struct json_object *verdict = NULL, *v;
	const char *err;

	assert_int_equal(test_verify_dirtier(t, &verdict), -EBADMSG);
	assert_non_null(verdict);
	assert_false(test_bool(verdict, "ok"));
	err = test_error(verdict);
	if (!strstr(err, needle))
		fail_msg("error \"%s\" lacks \"%s\"", err, needle);
	v = test_vcpu(verdict, vcpu);
	assert_false(test_bool(v, "ok"));
	assert_string_equal(json_object_get_string(json_object_object_get(v, "error")), err);
	assert_int_equal(test_int(v, "bad_page"), bad_page);
	assert_int_equal(test_int(v, "bad_gpa"), t->bi->range[vcpu].gpa + bad_page * TEST_PAGE);
	assert_int_equal(test_int(v, "expected"), expected);
	assert_int_equal(test_int(v, "value"), value);
	assert_true(test_int(v, "bad_pages") >= 1);
	json_object_put(verdict);
}

static void test_dirtier_ok_first_pass(void **state)
{
	struct test_image t;
	struct json_object *verdict;

	(void)state;
	test_dirtier_init(&t, 1, 0);
	test_dirtier_fill(&t, 0, 0); /* nothing written yet */
	json_object_put(test_dirtier_expect_ok(&t));
	test_dirtier_fill(&t, 0, 100); /* W < n: pages 100.. still 0 */
	verdict = test_dirtier_expect_ok(&t);
	assert_int_equal(test_int(test_vcpu(verdict, 0), "wss_pages"), 1536);
	assert_false(test_bool(test_vcpu(verdict, 0), "in_flight"));
	json_object_put(verdict);
	test_image_free(&t);
}

static void test_dirtier_ok_many_passes(void **state)
{
	struct test_image t;
	uint64_t n;

	(void)state;
	test_dirtier_init(&t, 2, 0);
	n = test_wss_pages(&t, 0);
	test_dirtier_fill(&t, 0, 3 * n + 300);   /* replayed */
	test_dirtier_fill(&t, 1, 1000 * n + 17); /* by formula */
	json_object_put(test_dirtier_expect_ok(&t));
	test_dirtier_fill(&t, 0, 5 * n);         /* exactly at a pass boundary */
	t.bi->stats[0].passes--;                 /* ... before passes++ */
	t.bi->stats[1].phase = VMF_PHASE_DONE;   /* passes=N reached */
	json_object_put(test_dirtier_expect_ok(&t));
	test_image_free(&t);
}

static void test_dirtier_ok_in_flight(void **state)
{
	struct test_image t;
	struct json_object *verdict;
	uint64_t n;

	(void)state;
	test_dirtier_init(&t, 2, 0);
	n = test_wss_pages(&t, 0);
	test_dirtier_fill(&t, 0, 2 * n + 10);
	test_dirtier_in_flight(&t, 0);          /* page 10 holds W + 1 */
	test_dirtier_fill(&t, 1, 0);
	test_dirtier_in_flight(&t, 1);          /* the very first write */
	verdict = test_dirtier_expect_ok(&t);
	assert_true(test_bool(test_vcpu(verdict, 0), "in_flight"));
	assert_true(test_bool(test_vcpu(verdict, 1), "in_flight"));
	json_object_put(verdict);
	/* the write that wraps: W = 3n, next page is 0 */
	test_dirtier_fill(&t, 0, 3 * n);
	test_dirtier_in_flight(&t, 0);
	test_dirtier_fill(&t, 1, 7);            /* W < n */
	test_dirtier_in_flight(&t, 1);
	verdict = test_dirtier_expect_ok(&t);
	assert_true(test_bool(test_vcpu(verdict, 0), "in_flight"));
	assert_true(test_bool(test_vcpu(verdict, 1), "in_flight"));
	json_object_put(verdict);
	test_image_free(&t);
}

static void test_dirtier_ok_small_wss(void **state)
{
	static const struct {
		uint64_t wss_bytes;
		uint64_t wss_pages;
	} cases[] = {
		{ 256 << 10, 64 },
		{ 100000, 24 },           /* rounded down to pages */
		{ 1, 1 },                 /* at least one page */
		{ TEST_PAGE, 1 },
		{ 1ull << 40, 1536 },     /* clamped to the range */
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct test_image t;
		struct json_object *verdict;

		test_dirtier_init(&t, 1, cases[i].wss_bytes);
		assert_int_equal(test_wss_pages(&t, 0), cases[i].wss_pages);
		test_dirtier_fill(&t, 0, 7 * cases[i].wss_pages + cases[i].wss_pages / 2);
		verdict = test_dirtier_expect_ok(&t);
		assert_int_equal(test_int(test_vcpu(verdict, 0), "wss_pages"),
				 cases[i].wss_pages);
		json_object_put(verdict);
		test_image_free(&t);
	}
}

static void test_dirtier_ok_short_image(void **state)
{
	struct test_image t;
	uint64_t cut;

	(void)state;
	test_dirtier_init(&t, 1, 0);
	test_dirtier_fill(&t, 0, 40);
	for (uint64_t k = 0; k < test_npages(&t, 0); k++)
		memset(test_page(&t, 0, k) + 8, 0, TEST_PAGE - 8);
	/* cut in the never-written part: the zero tail is right */
	t.bytes = t.bi->range[0].gpa + 41 * TEST_PAGE;
	json_object_put(test_dirtier_expect_ok(&t));
	/* cut inside page 30's u64: its high bytes read as 0, still 31 */
	t.bytes = t.bi->range[0].gpa + 30 * TEST_PAGE + 1;
	test_dirtier_expect_bad(&t, "page 31 (gpa 0x21f000) holds 0, expected 32", 0,
				31, 32, 0);
	test_image_free(&t);

	/* many writes: a cut loses written pages, counted in bad_pages */
	test_dirtier_init(&t, 1, 0);
	test_dirtier_fill(&t, 0, 3 * test_npages(&t, 0));
	cut = test_npages(&t, 0) - 100;
	t.bytes = t.bi->range[0].gpa + cut * TEST_PAGE;
	{
		struct json_object *verdict = NULL;

		assert_int_equal(test_verify_dirtier(&t, &verdict), -EBADMSG);
		assert_int_equal(test_int(test_vcpu(verdict, 0), "bad_page"), cut);
		assert_int_equal(test_int(test_vcpu(verdict, 0), "bad_pages"), 100);
		json_object_put(verdict);
	}
	test_image_free(&t);
}

static void test_dirtier_bad_stale_page(void **state)
{
	struct test_image t;
	uint64_t n, w, want;

	(void)state;
	test_dirtier_init(&t, 2, 0);
	n = test_wss_pages(&t, 1);
	w = 4 * n + 50;
	test_dirtier_fill(&t, 0, w);
	test_dirtier_fill(&t, 1, w);
	want = 4 * n + 21;
	test_put_u64(test_page(&t, 1, 20), want - n); /* an older copy: lost in migration */
	test_dirtier_expect_bad(&t, "vcpu 1: page 20 (gpa 0x514000)", 1, 20, want, want - n);
	test_dirtier_expect_bad(&t, "stale page, 1 pass behind", 1, 20, want, want - n);
	/* later damage is counted, the first page is reported */
	test_put_u64(test_page(&t, 1, 200), 3 * n + 201 - 2 * n);
	{
		struct json_object *verdict = NULL;

		assert_int_equal(test_verify_dirtier(&t, &verdict), -EBADMSG);
		assert_true(test_bool(test_vcpu(verdict, 0), "ok"));
		assert_int_equal(test_int(test_vcpu(verdict, 1), "bad_page"), 20);
		assert_int_equal(test_int(test_vcpu(verdict, 1), "bad_pages"), 2);
		json_object_put(verdict);
	}
	test_image_free(&t);
}

static void test_dirtier_bad_zero_page(void **state)
{
	struct test_image t;
	uint64_t n;

	(void)state;
	test_dirtier_init(&t, 1, 1 << 20);
	n = test_wss_pages(&t, 0);
	test_dirtier_fill(&t, 0, 2 * n + 100);
	test_put_u64(test_page(&t, 0, 150), 0);
	test_dirtier_expect_bad(&t, "holds 0, expected 407 (writes 612, wss_pages 256;"
				" zero: lost page?)", 0, 150, n + 151, 0);
	/* in the first pass too */
	test_dirtier_fill(&t, 0, 100);
	test_put_u64(test_page(&t, 0, 99), 0);
	test_dirtier_expect_bad(&t, "zero", 0, 99, 100, 0);
	test_image_free(&t);
}

static void test_dirtier_bad_future(void **state)
{
	struct test_image t;
	uint64_t n, w;

	(void)state;
	test_dirtier_init(&t, 1, 0);
	n = test_wss_pages(&t, 0);
	w = n + 5;
	test_dirtier_fill(&t, 0, w);
	/* page 3 one pass ahead of stats.writes */
	test_put_u64(test_page(&t, 0, 3), n + 4 + n);
	test_dirtier_expect_bad(&t, "from the future: newer than writes", 0, 3, n + 4, 2 * n + 4);
	/* in the first pass: a page the guest has not reached yet */
	test_dirtier_fill(&t, 0, 10);
	test_put_u64(test_page(&t, 0, 12), 13);
	test_dirtier_expect_bad(&t, "from the future", 0, 12, 0, 13);
	/* garbage: not any sequence number page 5 ever held */
	test_dirtier_fill(&t, 0, 10);
	test_put_u64(test_page(&t, 0, 5), 3);
	test_dirtier_expect_bad(&t, "garbage", 0, 5, 6, 3);
	test_image_free(&t);
}

static void test_dirtier_bad_beyond_wss(void **state)
{
	struct test_image t;

	(void)state;
	test_dirtier_init(&t, 2, 64 * TEST_PAGE);
	test_dirtier_fill(&t, 0, 1000);
	test_dirtier_fill(&t, 1, 1000);
	json_object_put(test_dirtier_expect_ok(&t));
	test_page(&t, 1, 64)[7] = 1; /* the first page past the working set */
	test_dirtier_expect_bad(&t, "beyond the working set of 64 pages", 1, 64, 0,
				1ull << 56);
	test_page(&t, 1, 64)[7] = 0;
	test_put_u64(test_page(&t, 1, 700), 1001); /* even W + 1 */
	test_dirtier_expect_bad(&t, "page 700", 1, 700, 0, 1001);
	test_image_free(&t);
}

static void test_dirtier_bad_in_flight_wrong_page(void **state)
{
	struct test_image t;
	uint64_t n, w;

	(void)state;
	test_dirtier_init(&t, 1, 0);
	n = test_wss_pages(&t, 0);
	w = 2 * n + 10;
	test_dirtier_fill(&t, 0, w);
	test_put_u64(test_page(&t, 0, 11), w + 1); /* the next write goes to 10 */
	test_dirtier_expect_bad(&t, "next write goes to page 10", 0, 11, n + 12, w + 1);
	/* W + 1 on the right page, but page 10 a pass behind too */
	test_dirtier_fill(&t, 0, w);
	test_put_u64(test_page(&t, 0, 10), w + 1 - 2 * n);
	test_dirtier_expect_bad(&t, "expected 1547 or 3083", 0, 10, w + 1 - n, w + 1 - 2 * n);
	test_image_free(&t);
}

static void test_dirtier_bad_phase_setup(void **state)
{
	struct test_image t;
	struct json_object *verdict = NULL;

	(void)state;
	test_dirtier_init(&t, 2, 0);
	test_dirtier_fill(&t, 0, 10);
	test_dirtier_fill(&t, 1, 0);
	t.bi->stats[1].phase = VMF_PHASE_SETUP;
	assert_int_equal(test_verify_dirtier(&t, &verdict), -EBADMSG);
	assert_string_equal(test_error(verdict), "vcpu 1: phase setup (1), expected running or done");
	assert_true(test_bool(test_vcpu(verdict, 0), "ok"));
	assert_false(test_bool(test_vcpu(verdict, 1), "ok"));
	assert_null(json_object_object_get(test_vcpu(verdict, 1), "bad_page"));
	json_object_put(verdict);
	t.bi->stats[1].phase = VMF_PHASE_BOOTING;
	assert_int_equal(test_verify_dirtier(&t, &verdict), -EBADMSG);
	json_object_put(verdict);
	t.bi->stats[1].phase = 77;
	assert_int_equal(test_verify_dirtier(&t, &verdict), -EBADMSG);
	json_object_put(verdict);
	test_image_free(&t);
}

static void test_dirtier_bad_boot_info(void **state)
{
	struct test_image t;
	struct json_object *verdict = NULL;

	(void)state;
	/* the incrementer's boot-info checks apply: shared code */
	test_dirtier_init(&t, 2, 0);
	test_dirtier_fill(&t, 0, 1);
	test_dirtier_fill(&t, 1, 1);
	t.bi->range[1].gpa -= TEST_PAGE;
	assert_int_equal(test_verify_dirtier(&t, &verdict), -EBADMSG);
	assert_non_null(strstr(test_error(verdict), "overlaps vcpu 0"));
	json_object_put(verdict);
	t.bi->range[1].gpa += TEST_PAGE;
	/* an incrementer dump is not a dirtier dump, and vice versa */
	strcpy(t.bi->workload, "incrementer");
	assert_int_equal(test_verify_dirtier(&t, &verdict), -EBADMSG);
	assert_string_equal(test_error(verdict),
			    "boot info: workload \"incrementer\" is not \"dirtier\"");
	json_object_put(verdict);
	strcpy(t.bi->workload, "dirtier");
	assert_int_equal(test_verify(&t, &verdict), -EBADMSG);
	assert_string_equal(test_error(verdict),
			    "boot info: workload \"dirtier\" is not \"incrementer\"");
	json_object_put(verdict);
	assert_int_equal(verify_dirtier_image(NULL, 0, &verdict), -EBADMSG);
	json_object_put(verdict);
	assert_int_equal(verify_dirtier_image(NULL, 5, &verdict), -EINVAL);
	assert_int_equal(verify_dirtier_image(t.ram, t.bytes, NULL), -EINVAL);
	test_image_free(&t);
}

/* ---- dispatch on the boot info ---- */

static const char *test_str(struct json_object *obj, const char *key)
{
	struct json_object *v = json_object_object_get(obj, key);

	assert_non_null(v);
	return json_object_get_string(v);
}

/* ---- dirtier, check=1: whole pages hold a pattern ---- */

/* Page @k of @vcpu as write @seq leaves it (all zeros for 0). */
static void test_check_page(struct test_image *t, unsigned vcpu, uint64_t k, uint64_t seq)
{
	uint8_t *p = test_page(t, vcpu, k);
	uint64_t key = vmf_pattern_key(vcpu, k, seq);

	test_put_u64(p, seq);
	for (uint32_t i = 1; i < VMF_PATTERN_WORDS; i++)
		test_put_u64(p + i * 8, seq ? vmf_pattern_word(key, i) : 0);
}

/* A check=1 image of 2 vCPUs, 64-page working sets, @writes writes each. */
static void test_check_init(struct test_image *t, uint64_t writes)
{
	test_dirtier_init(t, 2, 64 * TEST_PAGE);
	strcpy(t->bi->params[2].key, "check");
	t->bi->params[2].value = 1;
	memset(t->ram + t->bi->range[0].gpa, 0, t->bi->range[0].bytes);
	memset(t->ram + t->bi->range[1].gpa, 0, t->bi->range[1].bytes);
	for (unsigned v = 0; v < 2; v++) {
		t->bi->stats[v].writes = writes;
		t->bi->stats[v].passes = writes / 64;
		for (uint64_t seq = writes > 128 ? writes - 127 : 1; seq <= writes; seq++)
			test_check_page(t, v, (seq - 1) % 64, seq);
	}
}

static void test_dirtier_check_ok(void **state)
{
	struct test_image t;
	struct json_object *verdict;
	uint8_t *p;

	(void)state;
	test_check_init(&t, 0);
	json_object_put(test_dirtier_expect_ok(&t));
	test_image_free(&t);
	test_check_init(&t, 1000);
	json_object_put(test_dirtier_expect_ok(&t));
	/* the page being written when the guest stopped: body part new, word 0 old */
	p = test_page(&t, 0, 1000 % 64);
	for (uint32_t i = 1; i < 100; i++)
		test_put_u64(p + i * 8, vmf_pattern_word(vmf_pattern_key(0, 1000 % 64, 1001), i));
	json_object_put(test_dirtier_expect_ok(&t));
	/* ... or complete with word 0 new: in flight */
	test_check_page(&t, 1, 1000 % 64, 1001);
	verdict = test_dirtier_expect_ok(&t);
	assert_true(test_bool(test_vcpu(verdict, 1), "in_flight"));
	json_object_put(verdict);
	test_image_free(&t);
}

/* Expect vCPU @vcpu's page @k to be reported with a corrupted body at @word. */
static void test_check_expect_body(struct test_image *t, unsigned vcpu, uint64_t k,
				   uint32_t word)
{
	struct json_object *verdict = NULL, *v;

	assert_int_equal(test_verify_dirtier(t, &verdict), -EBADMSG);
	if (!strstr(test_error(verdict), "corrupted body"))
		fail_msg("error \"%s\" lacks \"corrupted body\"", test_error(verdict));
	v = test_vcpu(verdict, vcpu);
	assert_false(test_bool(v, "ok"));
	assert_int_equal(test_int(v, "bad_page"), k);
	assert_int_equal(test_int(v, "bad_word"), word);
	json_object_put(verdict);
}

static void test_dirtier_check_bad_body(void **state)
{
	struct test_image t;

	(void)state;
	/* one flipped bit in the middle of a page, word 0 intact */
	test_check_init(&t, 1000);
	test_page(&t, 1, 5)[8 * 300 + 3] ^= 0x10;
	test_check_expect_body(&t, 1, 5, 300);
	/* a page whose body is one write behind (stale body, new word 0) */
	test_image_free(&t);
	test_check_init(&t, 1000);
	test_check_page(&t, 0, 20, 917);
	test_put_u64(test_page(&t, 0, 20), 981); /* page 20's last write: 981 */
	test_check_expect_body(&t, 0, 20, 1);
	/* a body part new on a page other than the one being written */
	test_image_free(&t);
	test_check_init(&t, 1000);
	test_put_u64(test_page(&t, 0, 3) + 8 * 7,
		     vmf_pattern_word(vmf_pattern_key(0, 3, 1001), 7));
	test_check_expect_body(&t, 0, 3, 7);
	/* a never-written page (writes < n) holding anything in its body */
	test_image_free(&t);
	test_check_init(&t, 10);
	test_page(&t, 1, 40)[4000] = 1;
	test_check_expect_body(&t, 1, 40, 500);
	test_image_free(&t);
}

static void test_auto_dispatch(void **state)
{
	struct test_image t;
	struct json_object *verdict = NULL;

	(void)state;
	test_image_init(&t, 2);
	test_fill(&t, 0, 3, 20);
	test_fill(&t, 1, 3, 0);
	assert_int_equal(verify_guest_image(t.ram, t.bytes, &verdict), 0);
	assert_string_equal(test_str(verdict, "workload"), "incrementer");
	assert_int_equal(test_int(test_vcpu(verdict, 0), "edge"), 20);
	json_object_put(verdict);
	test_page(&t, 1, 3)[0] = 9;
	assert_int_equal(verify_guest_image(t.ram, t.bytes, &verdict), -EBADMSG);
	assert_non_null(strstr(test_error(verdict), "vcpu 1: page 3"));
	json_object_put(verdict);
	test_image_free(&t);

	test_dirtier_init(&t, 2, 32 * TEST_PAGE);
	test_dirtier_fill(&t, 0, 1000);
	test_dirtier_fill(&t, 1, 5);
	test_dirtier_in_flight(&t, 1);
	assert_int_equal(verify_guest_image(t.ram, t.bytes, &verdict), 0);
	assert_string_equal(test_str(verdict, "workload"), "dirtier");
	assert_int_equal(test_int(test_vcpu(verdict, 0), "wss_pages"), 32);
	assert_true(test_bool(test_vcpu(verdict, 1), "in_flight"));
	json_object_put(verdict);
	test_put_u64(test_page(&t, 0, 4), 5);
	assert_int_equal(verify_guest_image(t.ram, t.bytes, &verdict), -EBADMSG);
	assert_int_equal(test_int(test_vcpu(verdict, 0), "bad_page"), 4);
	json_object_put(verdict);
	test_image_free(&t);
}

/* ---- idle ---- */

/* What the idle guest's fill=1 writes, replayed as guest/workloads/idle.c does. */
static void test_idle_fill(struct test_image *t, unsigned vcpu)
{
	uint64_t *p = (uint64_t *)(t->ram + t->bi->range[vcpu].gpa);

	for (uint64_t i = 0; i < t->bi->range[vcpu].bytes / 8; i += 8)
		p[i] = (i * 0x9e3779b97f4a7c15ull) | 1;
}

static void test_idle_init(struct test_image *t, bool fill)
{
	test_image_init(t, 2);
	strcpy(t->bi->workload, "idle");
	if (fill) {
		strcpy(t->bi->params[0].key, "fill");
		t->bi->params[0].value = 1;
		test_idle_fill(t, 0);
		test_idle_fill(t, 1);
	}
}

static void test_idle(void **state)
{
	struct test_image t;
	struct json_object *verdict = NULL;

	(void)state;
	/* filled, consistent */
	test_idle_init(&t, true);
	assert_int_equal(verify_guest_image(t.ram, t.bytes, &verdict), 0);
	assert_string_equal(test_str(verdict, "workload"), "idle");
	assert_true(test_bool(test_vcpu(verdict, 1), "fill"));
	json_object_put(verdict);
	/* a line lost (a page that never arrived reads as zeros) */
	memset(test_page(&t, 1, 7), 0, TEST_PAGE);
	assert_int_equal(verify_guest_image(t.ram, t.bytes, &verdict), -EBADMSG);
	assert_non_null(strstr(test_error(verdict), "vcpu 1: word 3584"));
	assert_int_equal(test_int(test_vcpu(verdict, 1), "bad_words"), 64);
	assert_true(test_bool(test_vcpu(verdict, 0), "ok"));
	json_object_put(verdict);
	test_idle_fill(&t, 1);
	/* a word between the written ones is not 0 */
	test_page(&t, 0, 2)[8] = 1;
	assert_int_equal(verify_guest_image(t.ram, t.bytes, &verdict), -EBADMSG);
	assert_int_equal(test_int(test_vcpu(verdict, 0), "value"), 1);
	assert_int_equal(test_int(test_vcpu(verdict, 0), "expected"), 0);
	json_object_put(verdict);
	test_page(&t, 0, 2)[8] = 0;
	/* still filling */
	t.bi->stats[0].phase = VMF_PHASE_SETUP;
	assert_int_equal(verify_guest_image(t.ram, t.bytes, &verdict), -EBADMSG);
	assert_non_null(strstr(test_error(verdict), "vcpu 0: phase setup"));
	json_object_put(verdict);
	test_image_free(&t);

	/* without fill: zeros, and any data is wrong */
	test_idle_init(&t, false);
	assert_int_equal(verify_guest_image(t.ram, t.bytes, &verdict), 0);
	assert_false(test_bool(test_vcpu(verdict, 0), "fill"));
	json_object_put(verdict);
	test_idle_fill(&t, 0);
	assert_int_equal(verify_guest_image(t.ram, t.bytes, &verdict), -EBADMSG);
	json_object_put(verdict);
	test_image_free(&t);
}

static void test_auto_no_verifier(void **state)
{
	struct test_image t;
	struct json_object *verdict = NULL;

	(void)state;
	test_image_init(&t, 1);
	strcpy(t.bi->workload, "selftest");
	assert_int_equal(verify_guest_image(t.ram, t.bytes, &verdict), -ENOTSUP);
	assert_non_null(verdict);
	assert_false(test_bool(verdict, "ok"));
	assert_string_equal(test_str(verdict, "workload"), "selftest");
	assert_string_equal(test_error(verdict),
			    "workload \"selftest\" has no verifier (known: incrementer, dirtier, idle)");
	assert_int_equal(json_object_array_length(json_object_object_get(verdict, "vcpus")), 0);
	json_object_put(verdict);
	/* a boot info too broken to name a workload is broken, not unknown */
	memset(t.bi->workload, 'x', sizeof(t.bi->workload));
	assert_int_equal(verify_guest_image(t.ram, t.bytes, &verdict), -EBADMSG);
	assert_non_null(strstr(test_error(verdict), "not NUL-terminated"));
	json_object_put(verdict);
	strcpy(t.bi->workload, "selftest");
	t.bi->magic = 0;
	assert_int_equal(verify_guest_image(t.ram, t.bytes, &verdict), -EBADMSG);
	assert_non_null(strstr(test_error(verdict), "bad magic"));
	json_object_put(verdict);
	assert_int_equal(verify_guest_image(NULL, 0, &verdict), -EBADMSG);
	json_object_put(verdict);
	assert_int_equal(verify_guest_image(NULL, 1, &verdict), -EINVAL);
	assert_int_equal(verify_guest_file(NULL, &verdict), -EINVAL);
	test_image_free(&t);
}

/* ---- files ---- */

static char *test_write_file(const uint8_t *data, uint64_t bytes)
{
	char *path = strdup("/tmp/vmferry-test-verify-XXXXXX");
	int fd;

	assert_non_null(path);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	for (uint64_t off = 0; off < bytes;) {
		ssize_t n = write(fd, data + off, bytes - off);

		assert_true(n > 0);
		off += (uint64_t)n;
	}
	close(fd);
	return path;
}

static void test_file_ok_and_truncated(void **state)
{
	struct test_image t;
	struct json_object *verdict = NULL;
	char *path;

	(void)state;
	test_image_init(&t, 2);
	test_fill(&t, 0, 3, 77);
	test_fill(&t, 1, 3, 0);

	path = test_write_file(t.ram, t.bytes);
	assert_int_equal(verify_incrementer_file(path, &verdict), 0);
	assert_true(test_bool(verdict, "ok"));
	json_object_put(verdict);
	verdict = NULL;

	/* lose the second half of vCPU 1's range: those pages read as 0 */
	assert_int_equal(truncate(path, (off_t)(t.bi->range[1].gpa +
						t.bi->range[1].bytes / 2)), 0);
	assert_int_equal(verify_incrementer_file(path, &verdict), -EBADMSG);
	assert_false(test_bool(verdict, "ok"));
	assert_true(test_bool(test_vcpu(verdict, 0), "ok"));
	assert_false(test_bool(test_vcpu(verdict, 1), "ok"));
	assert_int_equal(test_int(test_vcpu(verdict, 1), "bad_page"),
			 test_npages(&t, 1) / 2);
	assert_int_equal(test_int(test_vcpu(verdict, 1), "other_pages"),
			 test_npages(&t, 1) / 2);
	json_object_put(verdict);
	verdict = NULL;

	/* an empty file has no boot info */
	assert_int_equal(truncate(path, 0), 0);
	assert_int_equal(verify_incrementer_file(path, &verdict), -EBADMSG);
	assert_string_equal(test_error(verdict), "boot info at 0x1000: bad magic "
			    "0x0000000000000000 (expected 0x31544f4f42464d56)");
	json_object_put(verdict);
	verdict = NULL;

	unlink(path);
	assert_int_equal(verify_incrementer_file(path, &verdict), -ENOENT);
	assert_null(verdict);
	assert_int_equal(verify_incrementer_file("/tmp", &verdict), -EINVAL);
	assert_null(verdict);
	free(path);
	test_image_free(&t);
}

static void test_file_dirtier_and_auto(void **state)
{
	struct test_image t;
	struct json_object *verdict = NULL;
	char *path;

	(void)state;
	test_dirtier_init(&t, 2, 0);
	test_dirtier_fill(&t, 0, 12345);
	test_dirtier_fill(&t, 1, 0);
	path = test_write_file(t.ram, t.bytes);
	assert_int_equal(verify_dirtier_file(path, &verdict), 0);
	json_object_put(verdict);
	assert_int_equal(verify_guest_file(path, &verdict), 0);
	assert_string_equal(test_str(verdict, "workload"), "dirtier");
	json_object_put(verdict);
	assert_int_equal(verify_incrementer_file(path, &verdict), -EBADMSG);
	json_object_put(verdict);
	/* lose vCPU 0's pages from 100 on (all written): zeros where values belong */
	assert_int_equal(truncate(path, (off_t)(t.bi->range[0].gpa + 100 * TEST_PAGE)), 0);
	assert_int_equal(verify_guest_file(path, &verdict), -EBADMSG);
	assert_int_equal(test_int(test_vcpu(verdict, 0), "bad_page"), 100);
	assert_int_equal(test_int(test_vcpu(verdict, 0), "bad_pages"),
			 test_npages(&t, 0) - 100);
	assert_true(test_bool(test_vcpu(verdict, 1), "ok")); /* nothing written yet */
	json_object_put(verdict);
	unlink(path);
	assert_int_equal(verify_guest_file(path, &verdict), -ENOENT);
	assert_null(verdict);
	assert_int_equal(verify_dirtier_file(path, &verdict), -ENOENT);
	assert_null(verdict);
	free(path);
	test_image_free(&t);
}

/* Run verify_main with stdout and stderr sent to /dev/null. */
static int test_run_main(int argc, const char *const *argv)
{
	int saved_out, saved_err, devnull, ret;

	fflush(stdout);
	fflush(stderr);
	saved_out = dup(STDOUT_FILENO);
	saved_err = dup(STDERR_FILENO);
	devnull = open("/dev/null", O_WRONLY);
	assert_true(saved_out >= 0 && saved_err >= 0 && devnull >= 0);
	dup2(devnull, STDOUT_FILENO);
	dup2(devnull, STDERR_FILENO);
	ret = verify_main(argc, (char **)argv);
	fflush(stdout);
	fflush(stderr);
	dup2(saved_out, STDOUT_FILENO);
	dup2(saved_err, STDERR_FILENO);
	close(saved_out);
	close(saved_err);
	close(devnull);
	return ret;
}

static void test_main_exit_codes(void **state)
{
	struct test_image t;
	char *good, *bad, *dirtier, *idle;

	(void)state;
	test_image_init(&t, 1);
	test_fill(&t, 0, 2, 5);
	good = test_write_file(t.ram, t.bytes);
	test_page(&t, 0, 3)[0] = 99;
	bad = test_write_file(t.ram, t.bytes);
	strcpy(t.bi->workload, "selftest"); /* a workload without a verifier */
	idle = test_write_file(t.ram, t.bytes);
	test_image_free(&t);
	test_dirtier_init(&t, 1, 0);
	test_dirtier_fill(&t, 0, 4000);
	dirtier = test_write_file(t.ram, t.bytes);

	{
		const char *argv[] = { "verify", "incrementer", good };
		assert_int_equal(test_run_main(3, argv), 0);
	}
	{
		const char *argv[] = { "verify", "--pretty", "incrementer", "--", good };
		assert_int_equal(test_run_main(5, argv), 0);
	}
	{
		const char *argv[] = { "verify", "incrementer", bad };
		assert_int_equal(test_run_main(3, argv), 1);
	}
	{
		const char *argv[] = { "verify", "incrementer", "/nonexistent/dump" };
		assert_int_equal(test_run_main(3, argv), 2);
	}
	{
		const char *argv[] = { "verify" };
		assert_int_equal(test_run_main(1, argv), 2);
	}
	{
		const char *argv[] = { "verify", "incrementer" };
		assert_int_equal(test_run_main(2, argv), 2);
	}
	{
		const char *argv[] = { "verify", "incrementer", good, "extra" };
		assert_int_equal(test_run_main(4, argv), 2);
	}
	{
		const char *argv[] = { "verify", "dirtier", good }; /* wrong workload */
		assert_int_equal(test_run_main(3, argv), 1);
	}
	{
		const char *argv[] = { "verify", "auto", good };
		assert_int_equal(test_run_main(3, argv), 0);
	}
	{
		const char *argv[] = { "verify", "auto", bad };
		assert_int_equal(test_run_main(3, argv), 1);
	}
	{
		/* Any other file: said so, with its own status. */
		static const char text[] = "root:x:0:0:root:/root:/bin/sh\n";
		char *other = test_write_file((const uint8_t *)text, sizeof(text) - 1);
		const char *argv[] = { "verify", "auto", other };

		assert_int_equal(test_run_main(3, argv), VERIFY_EXIT_NOT_A_DUMP);
		unlink(other);
		free(other);
	}
	{
		const char *argv[] = { "verify", "dirtier", dirtier };
		assert_int_equal(test_run_main(3, argv), 0);
	}
	{
		const char *argv[] = { "verify", "--pretty", "auto", dirtier };
		assert_int_equal(test_run_main(4, argv), 0);
	}
	{
		const char *argv[] = { "verify", "auto", idle };
		assert_int_equal(test_run_main(3, argv), 2);
	}
	{
		const char *argv[] = { "verify", "selftest", idle };
		assert_int_equal(test_run_main(3, argv), 2);
	}
	{
		/* a verifier that exists, for another workload: broken */
		const char *argv[] = { "verify", "idle", idle };
		assert_int_equal(test_run_main(3, argv), 1);
	}
	{
		const char *argv[] = { "verify", "--bogus", "incrementer", good };
		assert_int_equal(test_run_main(4, argv), 2);
	}
	{
		const char *argv[] = { "verify", "--help" };
		assert_int_equal(test_run_main(2, argv), 0);
	}
	unlink(good);
	unlink(bad);
	unlink(dirtier);
	unlink(idle);
	free(good);
	free(bad);
	free(dirtier);
	free(idle);
	test_image_free(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ok_edge_zero),
		cmocka_unit_test(test_ok_mid_range),
		cmocka_unit_test(test_ok_edge_at_end),
		cmocka_unit_test(test_ok_wraparound),
		cmocka_unit_test(test_ok_phase_done),
		cmocka_unit_test(test_ok_short_image_zero_tail),
		cmocka_unit_test(test_ok_huge_claimed_ram),
		cmocka_unit_test(test_bad_stale_page),
		cmocka_unit_test(test_bad_stale_page_in_rest),
		cmocka_unit_test(test_bad_zeroed_page),
		cmocka_unit_test(test_bad_torn_range),
		cmocka_unit_test(test_bad_two_passes_ahead),
		cmocka_unit_test(test_bad_phase_setup),
		cmocka_unit_test(test_bad_magic),
		cmocka_unit_test(test_bad_abi_and_workload),
		cmocka_unit_test(test_bad_overlapping_ranges),
		cmocka_unit_test(test_bad_ranges_outside_ram),
		cmocka_unit_test(test_bad_ram_bytes),
		cmocka_unit_test(test_bad_nvcpus),
		cmocka_unit_test(test_bad_tiny_images),
		cmocka_unit_test(test_dirtier_ok_first_pass),
		cmocka_unit_test(test_dirtier_ok_many_passes),
		cmocka_unit_test(test_dirtier_ok_in_flight),
		cmocka_unit_test(test_dirtier_ok_small_wss),
		cmocka_unit_test(test_dirtier_ok_short_image),
		cmocka_unit_test(test_dirtier_bad_stale_page),
		cmocka_unit_test(test_dirtier_bad_zero_page),
		cmocka_unit_test(test_dirtier_bad_future),
		cmocka_unit_test(test_dirtier_bad_beyond_wss),
		cmocka_unit_test(test_dirtier_bad_in_flight_wrong_page),
		cmocka_unit_test(test_dirtier_bad_phase_setup),
		cmocka_unit_test(test_dirtier_bad_boot_info),
		cmocka_unit_test(test_dirtier_check_ok),
		cmocka_unit_test(test_dirtier_check_bad_body),
		cmocka_unit_test(test_auto_dispatch),
		cmocka_unit_test(test_auto_no_verifier),
		cmocka_unit_test(test_file_ok_and_truncated),
		cmocka_unit_test(test_file_dirtier_and_auto),
		cmocka_unit_test(test_idle),
		cmocka_unit_test(test_main_exit_codes),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
