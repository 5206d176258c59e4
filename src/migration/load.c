#include "migration/load.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "migration/vmstate.h"
#include "util/crc32c.h"

void mig_boot_id(uint8_t out[MIG_BOOT_ID_BYTES])
{
	char text[64] = { 0 };
	int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	unsigned j = 0;

	memset(out, 0, MIG_BOOT_ID_BYTES);
	if (fd >= 0) {
		if (read(fd, text, sizeof(text) - 1) < 0)
			text[0] = 0;
		close(fd);
	}
	/* "xxxxxxxx-xxxx-..." -> 16 bytes */
	for (unsigned i = 0; text[i] && j < 2 * MIG_BOOT_ID_BYTES; i++) {
		char c = text[i];
		unsigned v;

		if (c >= '0' && c <= '9')
			v = (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v = (unsigned)(c - 'a' + 10);
		else
			continue;
		out[j / 2] |= (uint8_t)(v << (j % 2 ? 0 : 4));
		j++;
	}
}

void mig_save_header(struct stream *s, const struct mig_header *h)
{
	stream_put_u64(s, MIG_MAGIC);
	stream_put_u32(s, h->version);
	stream_put_u32(s, h->page_bytes);
	stream_put_u32(s, h->nvcpus);
	stream_put_u32(s, h->nblocks);
	stream_put_bytes(s, h->boot_id, MIG_BOOT_ID_BYTES);
	for (uint32_t i = 0; i < h->nblocks; i++) {
		uint8_t n = (uint8_t)strlen(h->blocks[i].name);

		stream_put_u8(s, n);
		stream_put_bytes(s, h->blocks[i].name, n);
		stream_put_u64(s, h->blocks[i].gpa);
		stream_put_u64(s, h->blocks[i].bytes);
	}
}

#define LOAD_FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -EBADMSG; } while (0)
/* A record that fails its CRC: the bytes were damaged on the way. */
#define CRC_FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -EILSEQ; } while (0)

/* The 17 fixed bytes of a RAM record, as on the wire, into @out. */
static void mig_ram_head_encode(uint8_t out[17], uint8_t block, uint8_t flags, uint16_t pad,
				uint32_t npages, uint64_t first_page)
{
	out[0] = MIG_REC_RAM;
	out[1] = block;
	out[2] = flags;
	memcpy(out + 3, &pad, 2);
	memcpy(out + 5, &npages, 4);
	memcpy(out + 9, &first_page, 8);
}

/* The 21 bytes of a section record's head before its head_crc (version 2). */
static void mig_section_head_encode(uint8_t out[21], uint8_t type, uint32_t id, uint32_t inst,
				    uint32_t ver, uint32_t len, uint32_t body_crc)
{
	out[0] = type;
	memcpy(out + 1, &id, 4);
	memcpy(out + 5, &inst, 4);
	memcpy(out + 9, &ver, 4);
	memcpy(out + 13, &len, 4);
	memcpy(out + 17, &body_crc, 4);
}

size_t mig_encode_ram_head(uint8_t *out, uint32_t version, uint8_t block, bool zero,
			   uint32_t npages, uint64_t first_page, const uint32_t *page_crcs)
{
	size_t n = 17;
	uint32_t crc;

	mig_ram_head_encode(out, block, zero ? MIG_RAM_FLAG_ZERO : 0, 0, npages, first_page);
	if (!MIG_VERSION_HAS_CRC(version))
		return n;
	if (!zero) {
		memcpy(out + n, page_crcs, (size_t)npages * 4);
		n += (size_t)npages * 4;
	}
	crc = crc32c(0, out, n);
	memcpy(out + n, &crc, 4);
	return n + 4;
}

size_t mig_encode_section_head(uint8_t *out, uint32_t version, uint8_t type, uint32_t id,
			       uint32_t instance, uint32_t section_version, uint32_t len,
			       uint32_t body_crc)
{
	uint32_t crc;

	mig_section_head_encode(out, type, id, instance, section_version, len, body_crc);
	if (!MIG_VERSION_HAS_CRC(version))
		return 17;
	crc = crc32c(0, out, 21);
	memcpy(out + 21, &crc, 4);
	return 25;
}

void mig_save_ram_head(struct stream *s, uint32_t version, uint8_t block, bool zero,
		       uint32_t npages, uint64_t first_page, const uint8_t *pages)
{
	uint8_t head[MIG_RAM_HEAD_MAX];
	uint32_t crcs[MIG_RUN_MAX_PAGES];

	for (uint32_t i = 0; MIG_VERSION_HAS_CRC(version) && !zero && i < npages &&
			     i < MIG_RUN_MAX_PAGES; i++)
		crcs[i] = crc32c(0, pages + (size_t)i * MIG_PAGE_BYTES, MIG_PAGE_BYTES);
	stream_put_bytes(s, head, mig_encode_ram_head(head, version, block, zero, npages,
						      first_page, crcs));
}

void mig_save_section_record(struct stream *s, uint32_t version, uint8_t type, uint32_t id,
			     uint32_t instance, uint32_t section_version, const void *data,
			     uint32_t len)
{
	uint8_t head[MIG_SECTION_HEAD_MAX];
	uint32_t body_crc = MIG_VERSION_HAS_CRC(version) ? crc32c(0, data, len) : 0;

	stream_put_bytes(s, head, mig_encode_section_head(head, version, type, id, instance,
							  section_version, len, body_crc));
	stream_put_bytes(s, data, len);
}

bool mig_page_crc_ok(const uint32_t *page_crcs, uint32_t i, const void *page)
{
	return !page_crcs || crc32c(0, page, MIG_PAGE_BYTES) == page_crcs[i];
}

uint32_t mig_get_pages_checked(struct stream *s, uint8_t *dst, uint32_t npages,
			       const uint32_t *page_crcs, uint8_t *bad)
{
	uint32_t nbad = 0;

	for (uint32_t done = 0, k; done < npages && !stream_error(s); done += k) {
		k = npages - done < MIG_CHECK_PIECE_PAGES ? npages - done : MIG_CHECK_PIECE_PAGES;
		stream_get_bytes(s, dst + (size_t)done * MIG_PAGE_BYTES, (size_t)k * MIG_PAGE_BYTES);
		for (uint32_t i = done; page_crcs && i < done + k && !stream_error(s); i++) {
			bad[i] = !mig_page_crc_ok(page_crcs, i, dst + (size_t)i * MIG_PAGE_BYTES);
			nbad += bad[i];
		}
	}
	return stream_error(s) ? 0 : nbad;
}

static int mig_load_io_error(struct stream *s, char *err, size_t errlen)
{
	snprintf(err, errlen, "migration stream: %s", s->errmsg[0] ? s->errmsg : strerror(-s->err));
	return s->err;
}

int mig_load_header(struct stream *s, struct mig_header *h, char *err, size_t errlen)
{
	uint64_t magic;

	memset(h, 0, sizeof(*h));
	magic = stream_get_u64(s);
	if (stream_error(s))
		return mig_load_io_error(s, err, errlen);
	if (magic != MIG_MAGIC)
		LOAD_FAIL("not a vmferry migration stream (magic %#llx)", (unsigned long long)magic);
	h->version = stream_get_u32(s);
	h->page_bytes = stream_get_u32(s);
	h->nvcpus = stream_get_u32(s);
	h->nblocks = stream_get_u32(s);
	stream_get_bytes(s, h->boot_id, MIG_BOOT_ID_BYTES);
	if (stream_error(s))
		return mig_load_io_error(s, err, errlen);
	if (h->version < MIG_VERSION_MIN || h->version > MIG_VERSION)
		LOAD_FAIL("stream version %u, this build reads versions %u to %u", h->version,
			  MIG_VERSION_MIN, MIG_VERSION);
	if (h->page_bytes != MIG_PAGE_BYTES)
		LOAD_FAIL("stream page size %u, expected %u", h->page_bytes, MIG_PAGE_BYTES);
	if (h->nvcpus == 0 || h->nvcpus > MIG_MAX_VCPUS)
		LOAD_FAIL("stream has %u vCPUs (1..%u allowed)", h->nvcpus, MIG_MAX_VCPUS);
	if (h->nblocks == 0 || h->nblocks > MIG_MAX_BLOCKS)
		LOAD_FAIL("stream has %u RAM blocks (1..%u allowed)", h->nblocks, MIG_MAX_BLOCKS);
	for (uint32_t i = 0; i < h->nblocks; i++) {
		struct mig_block_desc *b = &h->blocks[i];
		uint8_t n = stream_get_u8(s);

		if (stream_error(s))
			return mig_load_io_error(s, err, errlen);
		if (n == 0 || n > MIG_BLOCK_NAME_MAX)
			LOAD_FAIL("RAM block %u: name of %u bytes", i, n);
		stream_get_bytes(s, b->name, n);
		b->name[n] = 0;
		b->gpa = stream_get_u64(s);
		b->bytes = stream_get_u64(s);
		if (stream_error(s))
			return mig_load_io_error(s, err, errlen);
		if (memchr(b->name, 0, n))
			LOAD_FAIL("RAM block %u: name contains NUL", i);
		if (b->bytes == 0 || b->bytes % MIG_PAGE_BYTES || b->gpa % MIG_PAGE_BYTES ||
		    b->gpa + b->bytes < b->gpa)
			LOAD_FAIL("RAM block %s: bad geometry (gpa %#llx, %llu bytes)", b->name,
				  (unsigned long long)b->gpa, (unsigned long long)b->bytes);
		for (uint32_t j = 0; j < i; j++) {
			const struct mig_block_desc *o = &h->blocks[j];

			if (!strcmp(o->name, b->name))
				LOAD_FAIL("RAM block name %s given twice", b->name);
			if (b->gpa < o->gpa + o->bytes && o->gpa < b->gpa + b->bytes)
				LOAD_FAIL("RAM blocks %s and %s overlap", o->name, b->name);
		}
	}
	return 0;
}

int mig_load_ram_skip(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages,
		      bool zero, const uint32_t *page_crcs, struct stream *s, char *err,
		      size_t errlen)
{
	uint8_t scratch[MIG_PAGE_BYTES];

	(void)opaque;
	for (uint32_t i = 0; !zero && i < npages && !stream_error(s); i++) {
		stream_get_bytes(s, scratch, sizeof(scratch));
		if (!stream_error(s) && !mig_page_crc_ok(page_crcs, i, scratch))
			CRC_FAIL("RAM record: page %llu of block %u fails its CRC check",
				  (unsigned long long)(first_page + i), block);
	}
	return 0;
}

/*
 * Version 2: the page CRCs (data runs) and the head's CRC after the fixed
 * bytes of a RAM record.  @crcs gets npages entries.  0 or the error.
 */
static int mig_load_ram_crcs(struct stream *s, const struct mig_load_ops *ops,
			     const uint8_t fixed[17], bool zero, uint32_t npages, uint32_t *crcs,
			     char *err, size_t errlen)
{
	uint32_t crc = crc32c(0, fixed, 17), head_crc;

	if (!zero) {
		stream_get_bytes(s, crcs, (size_t)npages * 4);
		crc = crc32c(crc, crcs, (size_t)npages * 4);
	}
	head_crc = stream_get_u32(s);
	if (stream_error(s))
		return mig_load_io_error(s, err, errlen);
	if (crc != head_crc && !ops->crc_unchecked)
		CRC_FAIL("RAM record head fails its CRC check (%#x, expected %#x): the stream was "
			  "corrupted in transit", crc, head_crc);
	return 0;
}

/*
 * One RAM record after its type byte: validated against @h, handed to
 * ops->ram.  0 or the error.
 */
static int mig_load_ram_record(struct stream *s, const struct mig_header *h,
			       const struct mig_load_ops *ops, void *opaque, bool *zero_out,
			       uint32_t *npages_out, char *err, size_t errlen)
{
	uint8_t block = stream_get_u8(s), flags = stream_get_u8(s);
	uint16_t pad = stream_get_u16(s);
	uint32_t npages = stream_get_u32(s);
	uint64_t first = stream_get_u64(s), block_pages;
	uint32_t crcs[MIG_RUN_MAX_PAGES];
	bool zero, with_crc = MIG_VERSION_HAS_CRC(h->version);
	int r;

	if (stream_error(s))
		return mig_load_io_error(s, err, errlen);
	zero = flags & MIG_RAM_FLAG_ZERO;
	if (!zero && npages > MIG_RUN_MAX_PAGES) {
		snprintf(err, errlen, "RAM record: data run of %u pages (at most %u)",
			 npages, MIG_RUN_MAX_PAGES);
		return -EBADMSG;
	}
	if (with_crc) {
		uint8_t fixed[17];

		mig_ram_head_encode(fixed, block, flags, pad, npages, first);
		r = mig_load_ram_crcs(s, ops, fixed, zero, npages, crcs, err, errlen);
		if (r)
			return r;
	}
	if (block >= h->nblocks || (flags & ~MIG_RAM_FLAG_ZERO) || pad) {
		snprintf(err, errlen, "RAM record: block %u flags %#x pad %#x invalid",
			 block, flags, pad);
		return -EBADMSG;
	}
	block_pages = h->blocks[block].bytes / MIG_PAGE_BYTES;
	if (npages == 0 || first >= block_pages || npages > block_pages - first) {
		snprintf(err, errlen, "RAM record: pages %llu+%u outside block %s (%llu pages)",
			 (unsigned long long)first, npages, h->blocks[block].name,
			 (unsigned long long)block_pages);
		return -EBADMSG;
	}
	r = ops->ram(opaque, block, first, npages, zero,
		     with_crc && !zero && !ops->crc_unchecked ? crcs : NULL, s, err, errlen);
	if (r)
		return r;
	if (stream_error(s))
		return mig_load_io_error(s, err, errlen);
	*zero_out = zero;
	*npages_out = npages;
	return 0;
}

int mig_load_urgent_magic(struct stream *s, bool *requests_here, char *err, size_t errlen)
{
	uint64_t magic = stream_get_u64(s);

	*requests_here = false;
	if (stream_error(s))
		return mig_load_io_error(s, err, errlen);
	if (magic != MIG_URGENT_MAGIC && magic != MIG_URGENT_MAGIC_REQ)
		LOAD_FAIL("not a vmferry urgent channel (magic %#llx)", (unsigned long long)magic);
	*requests_here = magic == MIG_URGENT_MAGIC_REQ;
	return 0;
}

/* A section record's head after its type byte (@type): the fields in @sh. */
struct mig_section_head {
	uint32_t id, inst, ver, len, body_crc;
	bool check_body;           /* version 2 and checked: compare body_crc */
};

/* Read it; version 2: the CRCs too, the head's checked.  0 or the error. */
static int mig_load_section_head(struct stream *s, uint32_t version, bool unchecked,
				 uint8_t type, struct mig_section_head *sh, char *err,
				 size_t errlen)
{
	sh->id = stream_get_u32(s);
	sh->inst = stream_get_u32(s);
	sh->ver = stream_get_u32(s);
	sh->len = stream_get_u32(s);
	sh->body_crc = 0;
	sh->check_body = MIG_VERSION_HAS_CRC(version) && !unchecked;
	if (MIG_VERSION_HAS_CRC(version)) {
		uint8_t head[21];
		uint32_t head_crc;

		sh->body_crc = stream_get_u32(s);
		head_crc = stream_get_u32(s);
		mig_section_head_encode(head, type, sh->id, sh->inst, sh->ver, sh->len,
					sh->body_crc);
		if (!stream_error(s) && !unchecked && crc32c(0, head, sizeof(head)) != head_crc)
			CRC_FAIL("section record head fails its CRC check: the stream was corrupted "
				 "in transit");
	}
	return stream_error(s) ? mig_load_io_error(s, err, errlen) : 0;
}

/*
 * A SECTION_PART after its type byte, outside mig_load (after POSTCOPY_RUN:
 * the urgent channel, a resumed stream): the length is bounded before the
 * body is allocated; the id, instance and version are the state's to check
 * (mig_states_load refuses an unknown id).  1 or <0.
 */
static int mig_load_late_part(struct stream *s, const struct mig_header *h,
			      const struct mig_load_ops *ops, void *opaque, char *err, size_t errlen)
{
	struct mig_section_head sh;
	uint8_t *body;
	int r = mig_load_section_head(s, h->version, ops->crc_unchecked, MIG_REC_SECTION_PART, &sh,
				      err, errlen);

	if (r)
		return r;
	if (!ops->section_part)
		LOAD_FAIL("section %u part: parts are not taken here", sh.id);
	if (sh.len > VMSTATE_SECTION_MAX_BYTES)
		LOAD_FAIL("section %u of %u bytes exceeds %u", sh.id, sh.len,
			  VMSTATE_SECTION_MAX_BYTES);
	body = malloc(sh.len ? sh.len : 1);
	if (!body)
		return -ENOMEM;
	stream_get_bytes(s, body, sh.len);
	if (stream_error(s))
		r = mig_load_io_error(s, err, errlen);
	else if (sh.check_body && crc32c(0, body, sh.len) != sh.body_crc) {
		snprintf(err, errlen, "section %u instance %u (a part) fails its CRC check: the "
			 "stream was corrupted in transit", sh.id, sh.inst);
		r = -EILSEQ;
	} else {
		r = ops->section_part(opaque, sh.id, sh.inst, sh.ver, body, sh.len, err, errlen);
	}
	free(body);
	return r ? r : 1;
}

int mig_load_urgent_record(struct stream *s, const struct mig_header *h,
			   const struct mig_load_ops *ops, void *opaque, char *err, size_t errlen)
{
	uint8_t type = stream_get_u8(s);
	uint32_t npages;
	bool zero;
	int r;

	if (stream_error(s))
		return mig_load_io_error(s, err, errlen);
	if (type == MIG_REC_END)
		return 0;
	if (type == MIG_REC_SECTION_PART)
		return mig_load_late_part(s, h, ops, opaque, err, errlen);
	if (type != MIG_REC_RAM)
		LOAD_FAIL("urgent channel: record type %u (only RAM, SECTION_PART and END belong "
			  "here)", type);
	r = mig_load_ram_record(s, h, ops, opaque, &zero, &npages, err, errlen);
	return r ? r : 1;
}

int mig_load_resume_start(struct stream *s, const struct mig_header *orig, char *err,
			  size_t errlen)
{
	struct mig_header h;
	uint8_t type;
	int r = mig_load_header(s, &h, err, errlen);

	if (r)
		return r;
	if (h.version != orig->version || h.nvcpus != orig->nvcpus || h.nblocks != orig->nblocks ||
	    memcmp(h.boot_id, orig->boot_id, MIG_BOOT_ID_BYTES))
		LOAD_FAIL("resume: the header is not the paused migration's (another source?)");
	for (uint32_t i = 0; i < h.nblocks; i++)
		if (strcmp(h.blocks[i].name, orig->blocks[i].name) ||
		    h.blocks[i].gpa != orig->blocks[i].gpa || h.blocks[i].bytes != orig->blocks[i].bytes)
			LOAD_FAIL("resume: RAM block %u differs from the paused migration's", i);
	type = stream_get_u8(s);
	if (stream_error(s))
		return mig_load_io_error(s, err, errlen);
	if (type != MIG_REC_POSTCOPY_RESUME)
		LOAD_FAIL("resume: record type %u after the header, expected postcopy resume (%u)",
			  type, MIG_REC_POSTCOPY_RESUME);
	return 0;
}

int mig_load_resumed_record(struct stream *s, const struct mig_header *h,
			    const struct mig_load_ops *ops, void *opaque, char *err, size_t errlen)
{
	uint8_t type = stream_get_u8(s);
	uint32_t npages, id;
	bool zero;
	int r;

	if (stream_error(s))
		return mig_load_io_error(s, err, errlen);
	switch (type) {
	case MIG_REC_END:
		return 0;
	case MIG_REC_RAM:
		r = mig_load_ram_record(s, h, ops, opaque, &zero, &npages, err, errlen);
		return r ? r : 1;
	case MIG_REC_PING:
		id = stream_get_u32(s);
		if (stream_error(s))
			return mig_load_io_error(s, err, errlen);
		if (ops->ping && (r = ops->ping(opaque, id)) != 0) {
			snprintf(err, errlen, "answering ping %u failed", id);
			return r;
		}
		return 1;
	case MIG_REC_SECTION_PART:
		return mig_load_late_part(s, h, ops, opaque, err, errlen);
	}
	LOAD_FAIL("resumed stream: record type %u (only RAM, SECTION_PART, PING and END belong "
		  "here)", type);
}

/* ---- the main stream: which record may come when ---- */

/* The section kinds a plain stream carries: the VM's and one per vCPU. */
static const struct mig_section_kind mig_core_section_kinds[] = {
	{ .id = VMSTATE_SECTION_VM, .name = "vm", .instances = 1, .required = true },
	{ .id = VMSTATE_SECTION_CPU, .name = "cpu", .instances = MIG_SECTION_PER_VCPU,
	  .required = true },
};

/* One mig_load() in progress. */
struct mig_loader {
	struct stream *s;
	struct mig_header h;
	const struct mig_load_ops *ops;
	void *opaque;
	struct mig_load_stats *st;
	const struct mig_section_kind *kinds;
	size_t nkinds;
	uint8_t *section;          /* the last section's bytes */
};

/* When a record may come (struct mig_record_rule.when). */
enum {
	MIG_WHEN_FIRST = 1u << 0,        /* before any other record */
	MIG_WHEN_NOT_CPR = 1u << 1,      /* not in a cpr-transfer stream */
	MIG_WHEN_ADVISED = 1u << 2,      /* after POSTCOPY_ADVISE */
	MIG_WHEN_BEFORE_RUN = 1u << 3,   /* before POSTCOPY_RUN */
};

struct mig_record_rule {
	unsigned when;
	const char *refusal;       /* the error when @when does not hold */
	/* Read the rest of the record and act on it: 0, 1 (END), or the error. */
	int (*load)(struct mig_loader *l, char *err, size_t errlen);
};

static uint32_t mig_kind_instances(const struct mig_loader *l, const struct mig_section_kind *k)
{
	return k->instances == MIG_SECTION_PER_VCPU ? l->h.nvcpus : k->instances;
}

/* Has every required section arrived?  If not, which is missing, in @what. */
static bool mig_loader_state_complete(const struct mig_loader *l, char *what, size_t len)
{
	for (size_t i = 0; i < l->nkinds; i++) {
		uint32_t n = mig_kind_instances(l, &l->kinds[i]);

		for (uint32_t k = 0; k < n && k < 64 && l->kinds[i].required; k++) {
			if (!(l->st->sections_seen[i] & (1ull << k))) {
				snprintf(what, len, "%s section %u", l->kinds[i].name, k);
				return false;
			}
		}
	}
	return true;
}

static int mig_rec_ram(struct mig_loader *l, char *err, size_t errlen)
{
	bool zero;
	uint32_t npages;
	int r = mig_load_ram_record(l->s, &l->h, l->ops, l->opaque, &zero, &npages, err, errlen);

	if (r)
		return r;
	l->st->ram_records++;
	if (zero)
		l->st->zero_pages += npages;
	else
		l->st->data_pages += npages;
	return 0;
}

static int mig_rec_cpr(struct mig_loader *l, char *err, size_t errlen)
{
	uint8_t token[MIG_CPR_TOKEN_BYTES];
	int r;

	stream_get_bytes(l->s, token, sizeof(token));
	if (stream_error(l->s))
		return mig_load_io_error(l->s, err, errlen);
	if (!l->ops->cpr)
		LOAD_FAIL("the source does a cpr-transfer live update, which this destination "
			  "does not take");
	r = l->ops->cpr(l->opaque, token, err, errlen);
	l->st->cpr = !r;
	return r;
}

static int mig_rec_advise(struct mig_loader *l, char *err, size_t errlen)
{
	int r;

	if (!l->ops->postcopy_advise)
		LOAD_FAIL("the source wants postcopy, which this destination does not do");
	r = l->ops->postcopy_advise(l->opaque, err, errlen);
	l->st->postcopy_advised = !r;
	return r;
}

static int mig_rec_discard(struct mig_loader *l, char *err, size_t errlen)
{
	struct stream *s = l->s;
	uint8_t block = stream_get_u8(s);
	uint32_t count = stream_get_u32(s);
	uint64_t block_pages;

	if (stream_error(s))
		return mig_load_io_error(s, err, errlen);
	if (block >= l->h.nblocks || count == 0 || count > MIG_DISCARD_MAX_RUNS)
		LOAD_FAIL("postcopy discard: unexpected (block %u, %u runs)", block, count);
	block_pages = l->h.blocks[block].bytes / MIG_PAGE_BYTES;
	for (uint32_t i = 0; i < count; i++) {
		uint64_t first = stream_get_u64(s);
		uint32_t n = stream_get_u32(s);
		int r;

		if (stream_error(s))
			return mig_load_io_error(s, err, errlen);
		if (n == 0 || first >= block_pages || n > block_pages - first)
			LOAD_FAIL("postcopy discard: pages %llu+%u outside block %s",
				  (unsigned long long)first, n, l->h.blocks[block].name);
		r = l->ops->postcopy_discard(l->opaque, block, first, n);
		if (r)
			return r;
		l->st->discarded_pages += n;
	}
	return 0;
}

static int mig_rec_ping(struct mig_loader *l, char *err, size_t errlen)
{
	uint32_t id = stream_get_u32(l->s);
	int r;

	if (stream_error(l->s))
		return mig_load_io_error(l->s, err, errlen);
	if (l->ops->ping && (r = l->ops->ping(l->opaque, id)) != 0) {
		snprintf(err, errlen, "answering ping %u failed", id);
		return r;
	}
	return 0;
}

static int mig_rec_resume(struct mig_loader *l, char *err, size_t errlen)
{
	(void)l;
	LOAD_FAIL("postcopy resume in a new migration stream (it only follows the header of a "
		  "resumed one)");
}

static int mig_rec_run(struct mig_loader *l, char *err, size_t errlen)
{
	char what[64];
	int r;

	if (!mig_loader_state_complete(l, what, sizeof(what)))
		LOAD_FAIL("postcopy run before the state of the VM and every device (no %s)", what);
	r = l->ops->postcopy_run(l->opaque, err, errlen);
	l->st->postcopy_running = !r;
	return r;
}

/*
 * A section (@part: a part of one, sent while the guest runs) after its
 * type byte: the id must be a known kind, the instance one of its own, a
 * whole section must come once per instance, and the length is bounded
 * before anything is allocated.
 */
static int mig_rec_section_common(struct mig_loader *l, bool part, char *err, size_t errlen)
{
	struct stream *s = l->s;
	struct mig_section_head sh;
	const struct mig_section_kind *k = NULL;
	uint32_t id, inst, ver, len;
	size_t ki;
	int r = mig_load_section_head(s, l->h.version, l->ops->crc_unchecked,
				      part ? MIG_REC_SECTION_PART : MIG_REC_SECTION, &sh, err, errlen);

	if (r)
		return r;
	id = sh.id;
	inst = sh.inst;
	ver = sh.ver;
	len = sh.len;
	for (ki = 0; ki < l->nkinds && !k; ki++)
		if (l->kinds[ki].id == id)
			k = &l->kinds[ki];
	if (!k)
		LOAD_FAIL("unknown section id %u", id);
	ki--;
	if (inst >= mig_kind_instances(l, k) || inst >= 64 ||
	    (!part && (l->st->sections_seen[ki] & (1ull << inst))))
		LOAD_FAIL("%s section %u unexpected", k->name, inst);
	if (part && !l->ops->section_part)
		LOAD_FAIL("%s section %u: parts are not taken here", k->name, inst);
	if (len > VMSTATE_SECTION_MAX_BYTES)
		LOAD_FAIL("section %u of %u bytes exceeds %u", id, len, VMSTATE_SECTION_MAX_BYTES);
	free(l->section);
	l->section = malloc(len ? len : 1);
	if (!l->section)
		return -ENOMEM;
	stream_get_bytes(s, l->section, len);
	if (stream_error(s))
		return mig_load_io_error(s, err, errlen);
	if (sh.check_body && crc32c(0, l->section, len) != sh.body_crc)
		CRC_FAIL("%s section %u%s fails its CRC check: the stream was corrupted in transit",
			  k->name, inst, part ? " (a part)" : "");
	if (part) {
		r = l->ops->section_part(l->opaque, id, inst, ver, l->section, len, err, errlen);
		l->st->section_parts += !r;
		return r;
	}
	r = l->ops->section(l->opaque, id, inst, ver, l->section, len, err, errlen);
	if (r)
		return r;
	l->st->sections_seen[ki] |= 1ull << inst;
	l->st->sections++;
	return 0;
}

static int mig_rec_section(struct mig_loader *l, char *err, size_t errlen)
{
	return mig_rec_section_common(l, false, err, errlen);
}

static int mig_rec_section_part(struct mig_loader *l, char *err, size_t errlen)
{
	return mig_rec_section_common(l, true, err, errlen);
}

static int mig_rec_pass_end(struct mig_loader *l, char *err, size_t errlen)
{
	uint32_t pass = stream_get_u32(l->s);

	if (stream_error(l->s))
		return mig_load_io_error(l->s, err, errlen);
	l->st->passes++;
	return l->ops->pass_end ? l->ops->pass_end(l->opaque, pass) : 0;
}

static int mig_rec_end(struct mig_loader *l, char *err, size_t errlen)
{
	/* After RUN the state was checked already; precopy may also finish
	 * normally after postcopy was advised. */
	char what[64];

	if (!l->st->postcopy_running && !mig_loader_state_complete(l, what, sizeof(what)))
		LOAD_FAIL("stream ended without the state of the VM and every device (no %s)", what);
	l->st->end_seen = true;
	return 1;
}

static const struct mig_record_rule mig_record_rules[MIG_REC__COUNT] = {
	[MIG_REC_RAM] = { MIG_WHEN_NOT_CPR, "RAM record in a cpr-transfer stream", mig_rec_ram },
	[MIG_REC_SECTION] = { MIG_WHEN_BEFORE_RUN, "section after postcopy run", mig_rec_section },
	[MIG_REC_SECTION_PART] = { MIG_WHEN_NOT_CPR, "section part in a cpr-transfer stream",
				   mig_rec_section_part },
	[MIG_REC_PASS_END] = { 0, NULL, mig_rec_pass_end },
	[MIG_REC_END] = { 0, NULL, mig_rec_end },
	[MIG_REC_POSTCOPY_ADVISE] = { MIG_WHEN_FIRST, "postcopy advise must be the first record",
				      mig_rec_advise },
	[MIG_REC_POSTCOPY_DISCARD] = { MIG_WHEN_ADVISED | MIG_WHEN_BEFORE_RUN,
				       "postcopy discard: unexpected before advise or after run",
				       mig_rec_discard },
	[MIG_REC_POSTCOPY_RUN] = { MIG_WHEN_ADVISED | MIG_WHEN_BEFORE_RUN,
				   "postcopy run without advise, or twice", mig_rec_run },
	[MIG_REC_PING] = { 0, NULL, mig_rec_ping },
	[MIG_REC_POSTCOPY_RESUME] = { 0, NULL, mig_rec_resume },
	[MIG_REC_CPR] = { MIG_WHEN_FIRST, "cpr record must be the first record", mig_rec_cpr },
};

static bool mig_rule_holds(const struct mig_load_stats *st, unsigned when)
{
	if ((when & MIG_WHEN_FIRST) && (st->ram_records || st->sections || st->section_parts ||
					st->passes || st->postcopy_advised || st->cpr))
		return false;
	if ((when & MIG_WHEN_NOT_CPR) && st->cpr)
		return false;
	if ((when & MIG_WHEN_ADVISED) && !st->postcopy_advised)
		return false;
	if ((when & MIG_WHEN_BEFORE_RUN) && st->postcopy_running)
		return false;
	return true;
}

int mig_load(struct stream *s, const struct mig_load_ops *ops, void *opaque,
	     struct mig_load_stats *st, char *err, size_t errlen)
{
	struct mig_loader l = { .s = s, .ops = ops, .opaque = opaque, .st = st,
				.kinds = ops->section_kinds, .nkinds = ops->nsection_kinds };
	int r;

	memset(st, 0, sizeof(*st));
	if (!l.kinds) {
		l.kinds = mig_core_section_kinds;
		l.nkinds = sizeof(mig_core_section_kinds) / sizeof(mig_core_section_kinds[0]);
	}
	if (l.nkinds > MIG_MAX_SECTION_KINDS) {
		snprintf(err, errlen, "%zu section kinds (at most %u)", l.nkinds, MIG_MAX_SECTION_KINDS);
		return -EINVAL;
	}
	r = mig_load_header(s, &l.h, err, errlen);
	if (!r && ops->header)
		r = ops->header(opaque, &l.h, err, errlen);
	while (!r) {
		uint8_t type = stream_get_u8(s);
		const struct mig_record_rule *rule = type < MIG_REC__COUNT ? &mig_record_rules[type]
									   : NULL;

		if (stream_error(s)) {
			r = mig_load_io_error(s, err, errlen);
		} else if (!rule || !rule->load) {
			snprintf(err, errlen, "unknown record type %u", type);
			r = -EBADMSG;
		} else if (!mig_rule_holds(st, rule->when)) {
			snprintf(err, errlen, "%s", rule->refusal);
			r = -EBADMSG;
		} else {
			r = rule->load(&l, err, errlen);
		}
	}
	free(l.section);
	return r == 1 ? 0 : r;
}

uint64_t mig_load_sections_seen(const struct mig_load_ops *ops, const struct mig_load_stats *st,
				uint32_t id)
{
	const struct mig_section_kind *kinds = ops->section_kinds ? ops->section_kinds
								 : mig_core_section_kinds;
	size_t n = ops->section_kinds ? ops->nsection_kinds
		   : sizeof(mig_core_section_kinds) / sizeof(mig_core_section_kinds[0]);

	for (size_t i = 0; i < n && i < MIG_MAX_SECTION_KINDS; i++)
		if (kinds[i].id == id)
			return st->sections_seen[i];
	return 0;
}

/*
 * A bitmap's @len bytes (its length already checked against
 * m->bitmap_pages) into m->bitmap; bits past the last one are refused
 * ("return path: @past N").  0 or -errno with @err.
 */
static int mig_rp_read_bits(struct stream *s, struct mig_rp_msg *m, uint32_t len,
			    const char *past, char *err, size_t errlen)
{
	m->bitmap = malloc(len ? len : 1);
	if (!m->bitmap) {
		snprintf(err, errlen, "return path: no memory for a %u-byte bitmap", len);
		return -ENOMEM;
	}
	stream_get_bytes(s, m->bitmap, len);
	if (stream_error(s)) {
		mig_rp_msg_release(m);
		return mig_load_io_error(s, err, errlen);
	}
	if (m->bitmap_pages % 8 && (m->bitmap[len - 1] >> (m->bitmap_pages % 8))) {
		mig_rp_msg_release(m);
		LOAD_FAIL("return path: %s %llu", past, (unsigned long long)m->bitmap_pages);
	}
	return 0;
}

/* STATE_BITMAP after its type: lengths checked before the bits are allocated. */
static int mig_rp_read_state_bitmap(struct stream *s, struct mig_rp_msg *m, char *err,
				    size_t errlen)
{
	uint32_t len;

	m->section_id = stream_get_u32(s);
	m->instance = stream_get_u32(s);
	m->bitmap_pages = stream_get_u64(s);
	len = stream_get_u32(s);
	if (stream_error(s))
		return mig_load_io_error(s, err, errlen);
	if (m->bitmap_pages > MIG_RECV_BITMAP_MAX_PAGES || len != (m->bitmap_pages + 7) / 8)
		LOAD_FAIL("return path: state bitmap of %llu bits in %u bytes (0..%llu bits)",
			  (unsigned long long)m->bitmap_pages, len, MIG_RECV_BITMAP_MAX_PAGES);
	return mig_rp_read_bits(s, m, len, "state bitmap has bits past bit", err, errlen);
}

int mig_rp_read(struct stream *s, struct mig_rp_msg *m, char *err, size_t errlen)
{
	memset(m, 0, sizeof(*m));
	m->type = stream_get_u8(s);
	if (stream_error(s))
		return mig_load_io_error(s, err, errlen);
	switch (m->type) {
	case MIG_RP_RUNNING: {
		uint8_t same;

		m->first_run_ns = stream_get_u64(s);
		same = stream_get_u8(s);
		m->load_ns = stream_get_u64(s);
		if (stream_error(s))
			return mig_load_io_error(s, err, errlen);
		if (same > 1)
			LOAD_FAIL("return path: RUNNING with same_clock %u", same);
		m->same_clock = same;
		return 0;
	}
	case MIG_RP_PAGE_REQ:
	case MIG_RP_PAGE_RESEND:
		m->block = stream_get_u8(s);
		m->npages = stream_get_u32(s);
		m->first_page = stream_get_u64(s);
		if (stream_error(s))
			return mig_load_io_error(s, err, errlen);
		if (m->npages == 0 || m->npages > MIG_RUN_MAX_PAGES ||
		    m->first_page > (UINT64_MAX >> 12))
			LOAD_FAIL("return path: page request for %u pages at %llu", m->npages,
				  (unsigned long long)m->first_page);
		return 0; /* the block and range are checked by the source against its RAM */
	case MIG_RP_COMPLETE:
		return 0;
	case MIG_RP_RECV_BITMAP: {
		uint32_t len;

		m->block = stream_get_u8(s);
		m->bitmap_pages = stream_get_u64(s);
		len = stream_get_u32(s);
		if (stream_error(s))
			return mig_load_io_error(s, err, errlen);
		if (m->bitmap_pages == 0 || m->bitmap_pages > MIG_RECV_BITMAP_MAX_PAGES)
			LOAD_FAIL("return path: received bitmap of %llu pages (1..%llu)",
				  (unsigned long long)m->bitmap_pages, MIG_RECV_BITMAP_MAX_PAGES);
		if (len != (m->bitmap_pages + 7) / 8)
			LOAD_FAIL("return path: received bitmap of %llu pages in %u bytes",
				  (unsigned long long)m->bitmap_pages, len);
		/* the block and its size are checked by the source against its RAM */
		return mig_rp_read_bits(s, m, len, "received bitmap has bits past page", err,
					errlen);
	}
	case MIG_RP_STATE_REQ:
		m->section_id = stream_get_u32(s);
		m->instance = stream_get_u32(s);
		m->offset = stream_get_u64(s);
		m->length = stream_get_u32(s);
		if (stream_error(s))
			return mig_load_io_error(s, err, errlen);
		if (m->length == 0 || m->length > MIG_STATE_REQ_MAX_BYTES ||
		    m->offset > UINT64_MAX - m->length)
			LOAD_FAIL("return path: state request for %u bytes at %llu", m->length,
				  (unsigned long long)m->offset);
		return 0; /* the state checks the section, instance and range */
	case MIG_RP_STATE_BITMAP:
		return mig_rp_read_state_bitmap(s, m, err, errlen);
	case MIG_RP_PONG:
		m->id = stream_get_u32(s);
		if (stream_error(s))
			return mig_load_io_error(s, err, errlen);
		return 0;
	case MIG_RP_ERROR: {
		uint32_t code = stream_get_u32(s);
		uint16_t len = stream_get_u16(s);

		if (stream_error(s))
			return mig_load_io_error(s, err, errlen);
		if (len > MIG_ERRMSG_MAX)
			LOAD_FAIL("return path: error text of %u bytes", len);
		if (code == 0 || code > 4095)
			LOAD_FAIL("return path: error code %u", code);
		stream_get_bytes(s, m->text, len);
		if (stream_error(s))
			return mig_load_io_error(s, err, errlen);
		m->text[len] = 0;
		for (uint16_t i = 0; i < len; i++)
			if ((unsigned char)m->text[i] < 0x20 || (unsigned char)m->text[i] >= 0x7f)
				m->text[i] = '?'; /* keep logs and JSON readable */
		m->err = -(int32_t)code;
		return 0;
	}
	}
	LOAD_FAIL("return path: unknown message type %u", m->type);
}

void mig_rp_send_running(struct stream *s, uint64_t first_run_ns, bool same_clock, uint64_t load_ns)
{
	stream_put_u8(s, MIG_RP_RUNNING);
	stream_put_u64(s, first_run_ns);
	stream_put_u8(s, same_clock);
	stream_put_u64(s, load_ns);
	stream_flush(s);
}

void mig_rp_send_error(struct stream *s, int err, const char *text)
{
	size_t n = strlen(text);
	uint32_t code;

	if (n > MIG_ERRMSG_MAX)
		n = MIG_ERRMSG_MAX;
	stream_put_u8(s, MIG_RP_ERROR);
	code = (uint32_t)(err < 0 ? -err : err);
	if (code == 0 || code > 4095) /* the reader accepts errno values only */
		code = EIO;
	stream_put_u32(s, code);
	stream_put_u16(s, (uint16_t)n);
	stream_put_bytes(s, text, n);
	stream_flush(s);
}

void mig_rp_send_page_req(struct stream *s, uint8_t block, uint64_t first_page, uint32_t npages)
{
	stream_put_u8(s, MIG_RP_PAGE_REQ);
	stream_put_u8(s, block);
	stream_put_u32(s, npages);
	stream_put_u64(s, first_page);
	stream_flush(s);
}

void mig_rp_send_page_resend(struct stream *s, uint8_t block, uint64_t first_page,
			     uint32_t npages)
{
	stream_put_u8(s, MIG_RP_PAGE_RESEND);
	stream_put_u8(s, block);
	stream_put_u32(s, npages);
	stream_put_u64(s, first_page);
	stream_flush(s);
}

void mig_rp_msg_release(struct mig_rp_msg *m)
{
	free(m->bitmap);
	m->bitmap = NULL;
}

void mig_rp_send_recv_bitmap(struct stream *s, uint8_t block, uint64_t npages, const uint8_t *bits)
{
	stream_put_u8(s, MIG_RP_RECV_BITMAP);
	stream_put_u8(s, block);
	stream_put_u64(s, npages);
	stream_put_u32(s, (uint32_t)((npages + 7) / 8));
	stream_put_bytes(s, bits, (size_t)((npages + 7) / 8));
	stream_flush(s);
}

void mig_rp_send_state_req(struct stream *s, uint32_t id, uint32_t instance, uint64_t offset,
			   uint32_t len)
{
	stream_put_u8(s, MIG_RP_STATE_REQ);
	stream_put_u32(s, id);
	stream_put_u32(s, instance);
	stream_put_u64(s, offset);
	stream_put_u32(s, len);
	stream_flush(s);
}

void mig_rp_send_state_bitmap(struct stream *s, uint32_t id, uint32_t instance, uint64_t nbits,
			      const uint8_t *bits)
{
	stream_put_u8(s, MIG_RP_STATE_BITMAP);
	stream_put_u32(s, id);
	stream_put_u32(s, instance);
	stream_put_u64(s, nbits);
	stream_put_u32(s, (uint32_t)((nbits + 7) / 8));
	stream_put_bytes(s, bits, (size_t)((nbits + 7) / 8));
	stream_flush(s);
}

void mig_rp_send_complete(struct stream *s)
{
	stream_put_u8(s, MIG_RP_COMPLETE);
	stream_flush(s);
}

void mig_rp_send_pong(struct stream *s, uint32_t id)
{
	stream_put_u8(s, MIG_RP_PONG);
	stream_put_u32(s, id);
	stream_flush(s);
}
