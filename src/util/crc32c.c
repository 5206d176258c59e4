#include "util/crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

/* Reflected form of the Castagnoli polynomial. */
#define CRC32C_POLY 0x82f63b78u
/*
 * The instruction's latency is three cycles and one can start each cycle,
 * so three independent streams over thirds of a block run about three times
 * as fast as one; 3 x 1360 bytes cover a 4 KiB page but for 16 bytes.
 */
#define CRC32C_LANE_BYTES 1360u

static uint32_t crc32c_table[256];
/* crc32c_shift[k][b]: the CRC state (b << 8k) advanced over LANE_BYTES and
 * 2 x LANE_BYTES zero bytes - how a lane's CRC is moved to the end of the
 * block so that the three lanes combine by xor. */
static uint32_t crc32c_shift1[4][256], crc32c_shift2[4][256];
static bool crc32c_hw_ok;
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;

/* The raw state (no inversions) over @n bytes. */
static uint32_t crc32c_raw_sw(uint32_t state, const uint8_t *p, size_t n)
{
	while (n--)
		state = crc32c_table[(state ^ *p++) & 0xff] ^ (state >> 8);
	return state;
}

static uint32_t crc32c_zeros_slow(uint32_t state, size_t n)
{
	while (n--)
		state = crc32c_table[state & 0xff] ^ (state >> 8);
	return state;
}

static void crc32c_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
		crc32c_table[i] = c;
	}
	/* Advancing over zeros is linear in the state: one table per byte. */
	for (uint32_t k = 0; k < 4; k++) {
		for (uint32_t b = 0; b < 256; b++) {
			crc32c_shift1[k][b] = crc32c_zeros_slow(b << (8 * k), CRC32C_LANE_BYTES);
			crc32c_shift2[k][b] = crc32c_zeros_slow(b << (8 * k), 2 * CRC32C_LANE_BYTES);
		}
	}
#if defined(__x86_64__)
	__builtin_cpu_init();
	crc32c_hw_ok = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc32c_apply(const uint32_t t[4][256], uint32_t state)
{
	return t[0][state & 0xff] ^ t[1][(state >> 8) & 0xff] ^ t[2][(state >> 16) & 0xff] ^
	       t[3][state >> 24];
}

bool crc32c_hw_available(void)
{
	pthread_once(&crc32c_once, crc32c_init);
	return crc32c_hw_ok;
}

uint32_t crc32c_sw(uint32_t crc, const void *p, size_t n)
{
	pthread_once(&crc32c_once, crc32c_init);
	return ~crc32c_raw_sw(~crc, p, n);
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc32c_raw_hw1(uint32_t state, const uint8_t *p, size_t n)
{
	uint64_t s = state;

	for (; n >= 8; n -= 8, p += 8) {
		uint64_t v;

		memcpy(&v, p, 8);
		s = _mm_crc32_u64(s, v);
	}
	state = (uint32_t)s;
	for (; n; n--)
		state = _mm_crc32_u8(state, *p++);
	return state;
}

/* Three lanes of LANE_BYTES each; the state continues from @state. */
__attribute__((target("sse4.2")))
static uint32_t crc32c_raw_hw3(uint32_t state, const uint8_t *p)
{
	uint64_t a = state, b = 0, c = 0;
	const uint8_t *pb = p + CRC32C_LANE_BYTES, *pc = p + 2 * CRC32C_LANE_BYTES;

	for (size_t i = 0; i < CRC32C_LANE_BYTES; i += 8) {
		uint64_t va, vb, vc;

		memcpy(&va, p + i, 8);
		memcpy(&vb, pb + i, 8);
		memcpy(&vc, pc + i, 8);
		a = _mm_crc32_u64(a, va);
		b = _mm_crc32_u64(b, vb);
		c = _mm_crc32_u64(c, vc);
	}
	return crc32c_apply(crc32c_shift2, (uint32_t)a) ^ crc32c_apply(crc32c_shift1, (uint32_t)b) ^
	       (uint32_t)c;
}
#endif

uint32_t crc32c_hw(uint32_t crc, const void *p, size_t n)
{
#if defined(__x86_64__)
	const uint8_t *q = p;
	uint32_t state = ~crc;

	pthread_once(&crc32c_once, crc32c_init);
	for (; n >= 3 * CRC32C_LANE_BYTES; n -= 3 * CRC32C_LANE_BYTES, q += 3 * CRC32C_LANE_BYTES)
		state = crc32c_raw_hw3(state, q);
	return ~crc32c_raw_hw1(state, q, n);
#else
	return crc32c_sw(crc, p, n);
#endif
}

uint32_t crc32c(uint32_t crc, const void *p, size_t n)
{
	pthread_once(&crc32c_once, crc32c_init);
	return crc32c_hw_ok ? crc32c_hw(crc, p, n) : crc32c_sw(crc, p, n);
}
