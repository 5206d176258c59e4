/*
 * libFuzzer target: the split-virtqueue parser (src/devices/virtqueue.c)
 * against rings a hostile guest writes.
 *
 * Input: byte 0 picks the queue size (a power of two up to VQ_MAX_SIZE),
 * byte 1 whether EVENT_IDX is on, bytes 2..5 the starting indices; the rest
 * is copied over the descriptor table and then the avail ring of a small
 * guest RAM, so the fuzzer controls every address, length, flag, next index,
 * the avail index and the heads.  The queue is popped until empty or broken
 * (bounded), every chain is checked to lie in guest RAM, to be bounded and
 * ordered, and is pushed back used.
 */
#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "devices/virtqueue.h"
#include "vmferry/virtio.h"

#define FUZZ_GPA 0x200000ull
#define FUZZ_BYTES (256u * 1024u)
#define FUZZ_DESC FUZZ_GPA
#define FUZZ_AVAIL (FUZZ_GPA + VIRTQ_DESC_BYTES(VQ_MAX_SIZE))
#define FUZZ_USED (FUZZ_AVAIL + 0x1000)

static uint8_t fuzz_ram[FUZZ_BYTES];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_check_chain(const struct vq_guest *g, const struct vq_chain *c, uint16_t qsize)
{
	uint64_t total = 0;

	assert(c->head < qsize);
	assert(c->nsegs >= 1 && c->nsegs <= VQ_MAX_CHAIN && c->nread <= c->nsegs);
	for (uint16_t i = 0; i < c->nsegs; i++) {
		const struct vq_seg *s = &c->seg[i];

		assert(vq_guest_ptr(g, s->gpa, s->len) != NULL);
		assert(s->gpa >= FUZZ_GPA && s->gpa + s->len <= FUZZ_GPA + FUZZ_BYTES);
		assert(s->write == (i >= c->nread));
		total += s->len;
	}
	assert(total == c->read_bytes + c->write_bytes && total <= VQ_MAX_CHAIN_BYTES);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vq_guest g = { .host = fuzz_ram, .gpa = FUZZ_GPA, .bytes = FUZZ_BYTES };
	static struct vq_chain c;
	struct virtqueue vq;
	uint16_t qsize, last_avail, used_idx;
	size_t n;

	if (size < 6)
		return 0;
	qsize = (uint16_t)(1u << (data[0] % 9)); /* 1 .. 256 */
	last_avail = (uint16_t)(data[2] | data[3] << 8);
	used_idx = (uint16_t)(data[4] | data[5] << 8);
	memset(fuzz_ram, 0, sizeof(fuzz_ram));
	n = size - 6 < FUZZ_USED - FUZZ_GPA ? size - 6 : FUZZ_USED - FUZZ_GPA;
	/* The descriptors first, then the avail ring (whatever the size). */
	memcpy(fuzz_ram, data + 6, n < VIRTQ_DESC_BYTES(qsize) ? n : VIRTQ_DESC_BYTES(qsize));
	if (n > VIRTQ_DESC_BYTES(qsize))
		memcpy(fuzz_ram + (FUZZ_AVAIL - FUZZ_GPA), data + 6 + VIRTQ_DESC_BYTES(qsize),
		       n - VIRTQ_DESC_BYTES(qsize) < 0x1000 ? n - VIRTQ_DESC_BYTES(qsize) : 0x1000);
	if (vq_setup(&vq, &g, qsize, FUZZ_DESC, FUZZ_AVAIL, FUZZ_USED, data[1] & 1, last_avail,
		     used_idx))
		return 0;
	for (unsigned i = 0; i < 2u * VQ_MAX_SIZE; i++) {
		int r = vq_pop(&vq, &g, &c);

		assert(r == 0 || r == 1 || r == -EPROTO || r == -EINVAL || r == -E2BIG);
		if (r != 1)
			break;
		fuzz_check_chain(&g, &c, qsize);
		vq_push(&vq, c.head, (uint32_t)c.write_bytes);
		(void)vq_arm_kick(&vq);
	}
	return 0;
}
