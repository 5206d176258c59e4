/*
 * Fuzz the migration stream parser as a destination meets it: arbitrary
 * bytes from the main channel go through mig_load with callbacks that skip
 * RAM and run the same section checks a destination runs before touching
 * KVM (vmstate_cpu_check with any XSAVE size, vmstate_vm_parse).
 *
 * Checks beyond "no crash, no leak": every failure comes with a message;
 * success means END was seen with the VM section and one cpu section per
 * vCPU; the parser never reads past the input; a RAM record the callback
 * sees lies inside its block.  Each input is parsed twice: as a destination
 * does, and with version 2's CRCs taken as correct (crc_unchecked), so that
 * mutated records reach the checks behind the CRC.
 */
#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "migration/load.h"
#include "migration/stream.h"
#include "migration/vmstate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fuzz_state {
	struct mig_header h;
	bool header_seen;
	bool advised, running, cpr;
};

static int fuzz_header(void *opaque, const struct mig_header *h, char *err, size_t errlen)
{
	struct fuzz_state *f = opaque;

	(void)err;
	(void)errlen;
	assert(h->version >= MIG_VERSION_MIN && h->version <= MIG_VERSION);
	assert(h->page_bytes == MIG_PAGE_BYTES);
	assert(h->nvcpus >= 1 && h->nvcpus <= MIG_MAX_VCPUS);
	assert(h->nblocks >= 1 && h->nblocks <= MIG_MAX_BLOCKS);
	for (uint32_t i = 0; i < h->nblocks; i++) {
		size_t n = strnlen(h->blocks[i].name, sizeof(h->blocks[i].name));

		assert(n >= 1 && n <= MIG_BLOCK_NAME_MAX);
		assert(h->blocks[i].bytes && h->blocks[i].bytes % MIG_PAGE_BYTES == 0);
	}
	f->h = *h;
	f->header_seen = true;
	return 0;
}

static int fuzz_ram(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages,
		    bool zero, const uint32_t *page_crcs, struct stream *s, char *err,
		    size_t errlen)
{
	struct fuzz_state *f = opaque;
	uint64_t block_pages;

	assert(f->header_seen && block < f->h.nblocks);
	assert(!f->cpr); /* RAM is shared in a cpr-transfer stream */
	block_pages = f->h.blocks[block].bytes / MIG_PAGE_BYTES;
	assert(npages >= 1 && first_page < block_pages && npages <= block_pages - first_page);
	assert(zero || npages <= MIG_RUN_MAX_PAGES);
	/* CRCs come with data runs of version 2 only (and not when unchecked) */
	assert(!page_crcs || (!zero && MIG_VERSION_HAS_CRC(f->h.version)));
	return mig_load_ram_skip(NULL, block, first_page, npages, zero, page_crcs, s, err, errlen);
}

static int fuzz_section(void *opaque, uint32_t id, uint32_t instance, uint32_t version,
			const uint8_t *data, uint32_t len, char *err, size_t errlen)
{
	struct fuzz_state *f = opaque;

	assert(len <= VMSTATE_SECTION_MAX_BYTES);
	assert(!f->running); /* no state after postcopy run */
	if (id == VMSTATE_SECTION_VM) {
		struct vmstate_vm v;

		assert(instance == 0);
		return vmstate_vm_parse(data, len, version, &v, err, errlen);
	}
	assert(id == VMSTATE_SECTION_CPU && instance < f->h.nvcpus);
	return vmstate_cpu_check(data, len, 0, err, errlen);
}

/* A part of a vCPU's section (a state that sends while the guest runs). */
static int fuzz_section_part(void *opaque, uint32_t id, uint32_t instance, uint32_t version,
			     const uint8_t *data, uint32_t len, char *err, size_t errlen)
{
	struct fuzz_state *f = opaque;

	(void)version; (void)data; (void)err; (void)errlen;
	assert(len <= VMSTATE_SECTION_MAX_BYTES);
	assert(!f->cpr); /* parts may follow postcopy run (a disk's blocks), never CPR */
	assert((id == VMSTATE_SECTION_VM && instance == 0) ||
	       (id == VMSTATE_SECTION_CPU && instance < f->h.nvcpus));
	return 0;
}

/* Postcopy records: the parser promises their order and bounds. */
static int fuzz_advise(void *opaque, char *err, size_t errlen)
{
	struct fuzz_state *f = opaque;

	(void)err; (void)errlen;
	assert(f->header_seen && !f->advised);
	f->advised = true;
	return 0;
}

static int fuzz_discard(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages)
{
	struct fuzz_state *f = opaque;
	uint64_t block_pages;

	assert(f->advised && !f->running && block < f->h.nblocks);
	block_pages = f->h.blocks[block].bytes / MIG_PAGE_BYTES;
	assert(npages >= 1 && first_page < block_pages && npages <= block_pages - first_page);
	return 0;
}

static int fuzz_run(void *opaque, char *err, size_t errlen)
{
	struct fuzz_state *f = opaque;

	(void)err; (void)errlen;
	assert(f->advised && !f->running);
	f->running = true;
	return 0;
}

static int fuzz_cpr(void *opaque, const uint8_t *token, char *err, size_t errlen)
{
	struct fuzz_state *f = opaque;

	(void)token; (void)err; (void)errlen;
	assert(f->header_seen && !f->cpr && !f->advised);
	f->cpr = true;
	return 0;
}

#define FUZZ_OPS                                                                           \
	.cpr = fuzz_cpr, .header = fuzz_header, .ram = fuzz_ram, .section = fuzz_section,   \
	.section_part = fuzz_section_part,                                                  \
	.pass_end = NULL, /* optional: the parser must cope */                             \
	.postcopy_advise = fuzz_advise, .postcopy_discard = fuzz_discard,                   \
	.postcopy_run = fuzz_run

static const struct mig_load_ops fuzz_ops = { FUZZ_OPS };
/* Version 2's CRCs taken as correct: mutations reach the checks behind them. */
static const struct mig_load_ops fuzz_ops_unchecked = { FUZZ_OPS, .crc_unchecked = true };

static void fuzz_one(const uint8_t *data, size_t size, const struct mig_load_ops *ops)
{
	struct fuzz_state f;
	struct mig_load_stats st;
	struct stream s;
	char err[512];
	int r;

	memset(&f, 0, sizeof(f));
	err[0] = 0;
	stream_init_mem(&s, data, size);
	r = mig_load(&s, ops, &f, &st, err, sizeof(err));
	assert(s.pos <= size);
	if (r == 0) {
		assert(st.end_seen);
		assert(mig_load_sections_seen(ops, &st, VMSTATE_SECTION_VM) == 1);
		assert(mig_load_sections_seen(ops, &st, VMSTATE_SECTION_CPU) ==
		       (f.h.nvcpus >= 64 ? ~0ull : (1ull << f.h.nvcpus) - 1));
	} else {
		assert(r < 0 && err[0]);
		assert(!st.end_seen);
	}
	stream_release(&s);

	/* The header alone, as the incoming side's early check reads it. */
	{
		struct mig_header h;

		stream_init_mem(&s, data, size);
		r = mig_load_header(&s, &h, err, sizeof(err));
		assert(r == 0 ? f.header_seen : err[0] != 0);
		stream_release(&s);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_one(data, size, &fuzz_ops);
	fuzz_one(data, size, &fuzz_ops_unchecked);
	return 0;
}
