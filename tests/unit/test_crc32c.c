/*
 * Unit tests: CRC-32C, the migration stream's end-to-end check - published
 * check values, the instruction and the table agree on every length and
 * alignment, and chaining equals one pass.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/crc32c.h"

/* The check value of the CRC catalogue and RFC 3720's (iSCSI) examples. */
static void test_known_vectors(void **state)
{
	uint8_t buf[32];

	(void)state;
	assert_int_equal(crc32c(0, "123456789", 9), 0xe3069283u);
	assert_int_equal(crc32c(0, "", 0), 0);
	memset(buf, 0, sizeof(buf));
	assert_int_equal(crc32c(0, buf, 32), 0x8a9136aau);
	memset(buf, 0xff, sizeof(buf));
	assert_int_equal(crc32c(0, buf, 32), 0x62a8ab43u);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)i;
	assert_int_equal(crc32c(0, buf, 32), 0x46dd794eu);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)(31 - i);
	assert_int_equal(crc32c(0, buf, 32), 0x113fdb5cu);
	/* The table alone gives the same. */
	assert_int_equal(crc32c_sw(0, "123456789", 9), 0xe3069283u);
	assert_int_equal(crc32c_sw(0, buf, 32), 0x113fdb5cu);
}

/* Pseudo-random bytes, reproducible. */
static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		p[i] = (uint8_t)(seed >> 56);
	}
}

/* Every length around the three-lane block and the page, every alignment. */
static void test_hw_matches_table(void **state)
{
	size_t max = 3 * 4096 + 64;
	uint8_t *buf = malloc(max + 8);
	static const size_t lens[] = { 1, 7, 8, 15, 16, 4079, 4080, 4081, 4095, 4096, 4097,
				       8160, 8192, 12288, 12288 + 33 };

	(void)state;
	if (!crc32c_hw_available()) {
		free(buf);
		skip();
	}
	assert_non_null(buf);
	fill(buf, max + 8, 42);
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
		for (size_t off = 0; off < 8; off++)
			assert_int_equal(crc32c_hw(0, buf + off, lens[i]),
					 crc32c_sw(0, buf + off, lens[i]));
	for (size_t n = 0; n < 600; n++)
		assert_int_equal(crc32c_hw(0x12345678u, buf, n), crc32c_sw(0x12345678u, buf, n));
	free(buf);
}

/* crc(a || b) = crc(crc(a), b), split anywhere; a flipped bit changes it. */
static void test_chaining_and_flips(void **state)
{
	uint8_t page[4096];
	uint32_t whole;

	(void)state;
	fill(page, sizeof(page), 7);
	whole = crc32c(0, page, sizeof(page));
	for (size_t cut = 0; cut <= sizeof(page); cut += 97)
		assert_int_equal(crc32c(crc32c(0, page, cut), page + cut, sizeof(page) - cut), whole);
	for (size_t bit = 0; bit < 8 * sizeof(page); bit += 61) {
		page[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		assert_int_not_equal(crc32c(0, page, sizeof(page)), whole);
		page[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	assert_int_equal(crc32c(0, page, sizeof(page)), whole);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_known_vectors),
		cmocka_unit_test(test_hw_matches_table),
		cmocka_unit_test(test_chaining_and_flips),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
