/*
 * Fuzz the start of a resumed main channel as a paused postcopy destination
 * meets it (postcopy recovery): mig_load_resume_start against a fixed
 * original header (1 vCPU, block "ram0" of 64 pages at GPA 0, boot id
 * b0..bf, stream version 1 or 2), then mig_load_resumed_record until END
 * or an error.
 *
 * Checks beyond "no crash, no leak": every failure has a message, a RAM
 * record the callback sees lies inside the block, the parser never reads
 * past the input and always makes progress.
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "migration/load.h"
#include "migration/stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_BLOCK_PAGES 64u

static int fuzz_ram(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages,
		    bool zero, const uint32_t *page_crcs, struct stream *s, char *err,
		    size_t errlen)
{
	(void)opaque;
	assert(block == 0 && npages >= 1 && first_page < FUZZ_BLOCK_PAGES &&
	       npages <= FUZZ_BLOCK_PAGES - first_page);
	assert(!zero || !page_crcs);
	return mig_load_ram_skip(NULL, block, first_page, npages, zero, page_crcs, s, err, errlen);
}

static int fuzz_ping(void *opaque, uint32_t id)
{
	(void)opaque;
	(void)id;
	return 0;
}

/* One pass over the input against a paused migration of stream @version. */
static void fuzz_one(const uint8_t *data, size_t size, uint32_t version,
		     const struct mig_load_ops *ops)
{
	struct mig_header orig = {
		.version = version, .page_bytes = MIG_PAGE_BYTES, .nvcpus = 1, .nblocks = 1,
		.blocks = { { .name = "ram0", .gpa = 0, .bytes = FUZZ_BLOCK_PAGES * MIG_PAGE_BYTES } },
	};
	struct stream s;
	char err[512] = "";
	int r;

	for (unsigned i = 0; i < MIG_BOOT_ID_BYTES; i++)
		orig.boot_id[i] = (uint8_t)(0xb0 + i);
	stream_init_mem(&s, data, size);
	r = mig_load_resume_start(&s, &orig, err, sizeof(err));
	while (!r) {
		size_t before = s.pos;

		r = mig_load_resumed_record(&s, &orig, ops, NULL, err, sizeof(err));
		assert(s.pos <= size);
		if (r == 0)
			break; /* END */
		if (r == 1) {
			assert(s.pos > before);
			r = 0;
		}
	}
	assert(r == 0 || (r < 0 && err[0]));
	stream_release(&s);
}

/*
 * Version 1 (no CRCs), version 2 as a destination reads it, and version 2
 * with the CRCs taken as correct, so that mutations reach what lies behind
 * the check.
 */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct mig_load_ops ops = { .ram = fuzz_ram, .ping = fuzz_ping };
	static const struct mig_load_ops ops_unchecked = { .ram = fuzz_ram, .ping = fuzz_ping,
							   .crc_unchecked = true };

	fuzz_one(data, size, 1, &ops);
	fuzz_one(data, size, MIG_VERSION, &ops);
	fuzz_one(data, size, MIG_VERSION, &ops_unchecked);
	return 0;
}
