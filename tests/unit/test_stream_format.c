/*
 * Unit tests for the migration stream parser (src/migration/load.c) and the
 * vCPU / VM section checks (vmstate.c), against streams encoded here by
 * hand, byte by byte as docs/stream-format.md specifies them, so the tests
 * do not share the writer's mistakes.  Also the return-path messages, and
 * tools/stream_dump end to end (skipped when it is not built): its --save
 * copy must be byte-identical, from a file and from a live connection.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/kvm.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "migration/format.h"
#include "migration/load.h"
#include "migration/stream.h"
#include "migration/vmstate.h"

/* ---- a byte buffer with little-endian appenders ---- */

struct tbuf {
	uint8_t *p;
	size_t len, cap;
};

static void tbuf_bytes(struct tbuf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;

		while (cap < b->len + n)
			cap *= 2;
		b->p = realloc(b->p, cap);
		assert_non_null(b->p);
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void tbuf_le(struct tbuf *b, uint64_t v, unsigned nbytes)
{
	uint8_t x[8];

	for (unsigned i = 0; i < nbytes; i++)
		x[i] = (uint8_t)(v >> (8 * i));
	tbuf_bytes(b, x, nbytes);
}
#define tbuf_u8(b, v) tbuf_le(b, v, 1)
#define tbuf_u16(b, v) tbuf_le(b, v, 2)
#define tbuf_u32(b, v) tbuf_le(b, v, 4)
#define tbuf_u64(b, v) tbuf_le(b, v, 8)

static void tbuf_free(struct tbuf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* ---- stream pieces ---- */

#define T_BLOCK_PAGES 64u
/* Offsets in the fixed header part (docs/stream-format.md). */
#define T_OFF_VERSION 8
#define T_OFF_PAGE 12
#define T_OFF_NVCPUS 16
#define T_OFF_NBLOCKS 20
#define T_OFF_BLOCKS 40

/*
 * These hand encodings follow stream version 1 (no CRCs), which readers
 * still take; version 2's CRCs are tested in test_stream_crc.c.
 */
#define T_STREAM_VERSION 1u

static void put_header_fixed(struct tbuf *b, uint32_t nvcpus, uint32_t nblocks)
{
	tbuf_u64(b, MIG_MAGIC);
	tbuf_u32(b, T_STREAM_VERSION);
	tbuf_u32(b, MIG_PAGE_BYTES);
	tbuf_u32(b, nvcpus);
	tbuf_u32(b, nblocks);
	for (unsigned i = 0; i < MIG_BOOT_ID_BYTES; i++)
		tbuf_u8(b, 0xb0 + i);
}

static void put_block(struct tbuf *b, const char *name, size_t name_len, uint64_t gpa,
		      uint64_t bytes)
{
	tbuf_u8(b, name_len);
	tbuf_bytes(b, name, name_len);
	tbuf_u64(b, gpa);
	tbuf_u64(b, bytes);
}

/* Blocks "ram0".. of @block_pages pages each, one after the other in GPA. */
static void put_header(struct tbuf *b, uint32_t nvcpus, uint32_t nblocks, uint64_t block_pages)
{
	put_header_fixed(b, nvcpus, nblocks);
	for (uint32_t i = 0; i < nblocks; i++) {
		char name[16];

		snprintf(name, sizeof(name), "ram%u", i);
		put_block(b, name, strlen(name), i * block_pages * MIG_PAGE_BYTES,
			  block_pages * MIG_PAGE_BYTES);
	}
}

static void put_ram_hdr(struct tbuf *b, unsigned block, unsigned flags, unsigned pad,
			uint32_t npages, uint64_t first)
{
	tbuf_u8(b, MIG_REC_RAM);
	tbuf_u8(b, block);
	tbuf_u8(b, flags);
	tbuf_u16(b, pad);
	tbuf_u32(b, npages);
	tbuf_u64(b, first);
}

/* A data run whose page p is filled with the byte (first + p). */
static void put_ram_data(struct tbuf *b, unsigned block, uint32_t npages, uint64_t first)
{
	uint8_t page[MIG_PAGE_BYTES];

	put_ram_hdr(b, block, 0, 0, npages, first);
	for (uint32_t i = 0; i < npages; i++) {
		memset(page, (int)((first + i) & 0xff), sizeof(page));
		tbuf_bytes(b, page, sizeof(page));
	}
}

static void put_section(struct tbuf *b, uint32_t id, uint32_t inst, uint32_t ver,
			const void *data, uint32_t len)
{
	tbuf_u8(b, MIG_REC_SECTION);
	tbuf_u32(b, id);
	tbuf_u32(b, inst);
	tbuf_u32(b, ver);
	tbuf_u32(b, len);
	tbuf_bytes(b, data, len);
}

static void put_vm_section(struct tbuf *b, uint32_t inst)
{
	struct tbuf v = { 0 };

	tbuf_u64(&v, 123456789);  /* guest_clock_ns */
	tbuf_u64(&v, 987654321);  /* stop_ns */
	tbuf_u32(&v, 1);          /* was_running */
	tbuf_u32(&v, 0);          /* reserved */
	tbuf_u64(&v, 3);          /* moves (version 2) */
	put_section(b, VMSTATE_SECTION_VM, inst, 2, v.p, (uint32_t)v.len);
	tbuf_free(&v);
}

static void put_cpu_field(struct tbuf *c, uint32_t kind, size_t n, uint8_t fill)
{
	uint8_t *p = malloc(n ? n : 1);

	assert_non_null(p);
	memset(p, fill, n);
	tbuf_u32(c, kind);
	tbuf_u32(c, (uint32_t)n);
	tbuf_bytes(c, p, n);
	free(p);
}

/* A vCPU section body that vmstate_cpu_check() accepts, with 2 MSRs. */
static void make_cpu_body(struct tbuf *c)
{
	struct kvm_regs regs;

	memset(&regs, 0, sizeof(regs));
	regs.rip = 0x401000;
	regs.rsp = 0x7ff000;
	regs.rflags = 0x3002;
	tbuf_u32(c, VMSTATE_CPU__COUNT - 1);
	tbuf_u32(c, VMSTATE_CPU_REGS);
	tbuf_u32(c, sizeof(regs));
	tbuf_bytes(c, &regs, sizeof(regs));
	put_cpu_field(c, VMSTATE_CPU_SREGS, sizeof(struct kvm_sregs), 0);
	put_cpu_field(c, VMSTATE_CPU_XSAVE, sizeof(struct kvm_xsave), 0);
	put_cpu_field(c, VMSTATE_CPU_XCRS, sizeof(struct kvm_xcrs), 0);
	put_cpu_field(c, VMSTATE_CPU_EVENTS, sizeof(struct kvm_vcpu_events), 0);
	put_cpu_field(c, VMSTATE_CPU_MP_STATE, sizeof(struct kvm_mp_state), 0);
	put_cpu_field(c, VMSTATE_CPU_DEBUGREGS, sizeof(struct kvm_debugregs), 0);
	tbuf_u32(c, VMSTATE_CPU_MSRS);
	tbuf_u32(c, 4 + 2 * 16);
	tbuf_u32(c, 2);
	tbuf_u32(c, 0xc0000080); tbuf_u32(c, 0); tbuf_u64(c, 0x500); /* EFER */
	tbuf_u32(c, 0x10); tbuf_u32(c, 0); tbuf_u64(c, 42);          /* TSC */
}

static void put_cpu_section(struct tbuf *b, uint32_t inst)
{
	struct tbuf c = { 0 };

	make_cpu_body(&c);
	put_section(b, VMSTATE_SECTION_CPU, inst, VMSTATE_CPU_VERSION, c.p, (uint32_t)c.len);
	tbuf_free(&c);
}

static void put_pass_end(struct tbuf *b, uint32_t pass)
{
	tbuf_u8(b, MIG_REC_PASS_END);
	tbuf_u32(b, pass);
}

static void put_end(struct tbuf *b)
{
	tbuf_u8(b, MIG_REC_END);
}

/* Header (1 vCPU, 1 block), a zero run, a 1-page data run, PASS_END, VM, CPU, END. */
static void make_valid(struct tbuf *b)
{
	put_header(b, 1, 1, T_BLOCK_PAGES);
	put_ram_hdr(b, 0, MIG_RAM_FLAG_ZERO, 0, 16, 0);
	put_ram_data(b, 0, 1, 16);
	put_pass_end(b, 1);
	put_vm_section(b, 0);
	put_cpu_section(b, 0);
	put_end(b);
}

/* ---- loading with checking callbacks ---- */

struct tload {
	int headers;
	struct mig_header h;
	uint64_t ram_records, data_pages_checked;
	int vm_sections, cpu_sections;
	uint32_t last_pass;
	bool fail_header;
	int cpr_records;
	uint8_t cpr_token[MIG_CPR_TOKEN_BYTES];
};

static int tload_header(void *opaque, const struct mig_header *h, char *err, size_t errlen)
{
	struct tload *t = opaque;

	t->headers++;
	t->h = *h;
	if (t->fail_header) {
		snprintf(err, errlen, "header refused by the callback");
		return -EBADMSG;
	}
	return 0;
}

static int tload_ram(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages,
		     bool zero, const uint32_t *page_crcs, struct stream *s, char *err,
		     size_t errlen)
{
	struct tload *t = opaque;
	uint8_t page[MIG_PAGE_BYTES];

	(void)block;
	assert_null(page_crcs); /* version 1 */
	/* The parser's promise: the run lies inside the block. */
	assert_true(first_page + npages <= t->h.blocks[block].bytes / MIG_PAGE_BYTES);
	t->ram_records++;
	for (uint32_t i = 0; !zero && i < npages; i++) {
		stream_get_bytes(s, page, sizeof(page));
		if (stream_error(s))
			return 0;
		if (page[0] != (uint8_t)(first_page + i) || page[MIG_PAGE_BYTES - 1] != page[0]) {
			snprintf(err, errlen, "page %llu has the wrong content",
				 (unsigned long long)(first_page + i));
			return -EBADMSG;
		}
		t->data_pages_checked++;
	}
	return 0;
}

static int tload_section(void *opaque, uint32_t id, uint32_t instance, uint32_t version,
			 const uint8_t *data, uint32_t len, char *err, size_t errlen)
{
	struct tload *t = opaque;

	(void)instance;
	if (id == VMSTATE_SECTION_VM) {
		struct vmstate_vm v;
		int r = vmstate_vm_parse(data, len, version, &v, err, errlen);

		if (r)
			return r;
		assert_int_equal(v.guest_clock_ns, 123456789);
		t->vm_sections++;
		return 0;
	}
	assert_int_equal(id, VMSTATE_SECTION_CPU);
	t->cpu_sections++;
	return vmstate_cpu_check(data, len, 0, err, errlen);
}

static int tload_pass_end(void *opaque, uint32_t pass)
{
	((struct tload *)opaque)->last_pass = pass;
	return 0;
}

static int tload_cpr(void *opaque, const uint8_t *token, char *err, size_t errlen)
{
	struct tload *t = opaque;

	(void)err; (void)errlen;
	t->cpr_records++;
	memcpy(t->cpr_token, token, MIG_CPR_TOKEN_BYTES);
	return 0;
}

static const struct mig_load_ops tload_ops = {
	.cpr = tload_cpr,
	.header = tload_header,
	.ram = tload_ram,
	.section = tload_section,
	.pass_end = tload_pass_end,
};

static int load_buf(const void *p, size_t len, struct tload *t, struct mig_load_stats *st,
		    char *err, size_t errlen)
{
	struct stream s;
	int r;

	stream_init_mem(&s, p, len);
	err[0] = 0;
	r = mig_load(&s, &tload_ops, t, st, err, errlen);
	stream_release(&s);
	return r;
}

/* Load @b and expect -EBADMSG with @needle in the message. */
static void expect_bad(const struct tbuf *b, const char *needle)
{
	struct tload t = { 0 };
	struct mig_load_stats st;
	char err[512];
	int r = load_buf(b->p, b->len, &t, &st, err, sizeof(err));

	if (r != -EBADMSG || !strstr(err, needle))
		fail_msg("expected -EBADMSG with \"%s\", got %d \"%s\"", needle, r, err);
}

/* ---- tests: valid streams ---- */

static void test_valid_minimal(void **state)
{
	struct tbuf b = { 0 };
	struct tload t = { 0 };
	struct mig_load_stats st;
	char err[512];

	(void)state;
	make_valid(&b);
	assert_int_equal(load_buf(b.p, b.len, &t, &st, err, sizeof(err)), 0);
	assert_int_equal(t.headers, 1);
	assert_string_equal(t.h.blocks[0].name, "ram0");
	assert_int_equal(t.h.nvcpus, 1);
	assert_int_equal(t.h.boot_id[0], 0xb0);
	assert_int_equal(t.ram_records, 2);
	assert_int_equal(t.data_pages_checked, 1);
	assert_int_equal(t.vm_sections, 1);
	assert_int_equal(t.cpu_sections, 1);
	assert_int_equal(t.last_pass, 1);
	assert_int_equal(st.ram_records, 2);
	assert_int_equal(st.zero_pages, 16);
	assert_int_equal(st.data_pages, 1);
	assert_int_equal(st.sections, 2);
	assert_int_equal(st.passes, 1);
	assert_int_equal(mig_load_sections_seen(&tload_ops, &st, VMSTATE_SECTION_VM), 1);
	assert_int_equal(mig_load_sections_seen(&tload_ops, &st, VMSTATE_SECTION_CPU), 1);
	assert_true(st.end_seen);
	tbuf_free(&b);
}

/* Limits are inclusive: 32 vCPUs, 16 blocks, 31-byte names, 1024-page runs. */
static void test_valid_limits(void **state)
{
	struct tbuf b = { 0 };
	struct tload t = { 0 };
	struct mig_load_stats st;
	char name[MIG_BLOCK_NAME_MAX];
	char err[512];

	(void)state;
	memset(name, 'n', sizeof(name));
	put_header_fixed(&b, MIG_MAX_VCPUS, MIG_MAX_BLOCKS);
	put_block(&b, name, sizeof(name), 0, 2048ull * MIG_PAGE_BYTES);
	for (uint32_t i = 1; i < MIG_MAX_BLOCKS; i++) {
		char one = (char)('a' + i); /* names must differ */

		put_block(&b, &one, 1, (uint64_t)i << 32, MIG_PAGE_BYTES);
	}
	/* A zero run may be longer than MIG_RUN_MAX_PAGES; a data run may not. */
	put_ram_hdr(&b, 0, MIG_RAM_FLAG_ZERO, 0, 2048, 0);
	put_ram_data(&b, 0, MIG_RUN_MAX_PAGES, 1024);
	put_ram_data(&b, MIG_MAX_BLOCKS - 1, 1, 0);
	put_vm_section(&b, 0);
	for (uint32_t i = MIG_MAX_VCPUS; i-- > 0;) /* any order */
		put_cpu_section(&b, i);
	put_end(&b);
	assert_int_equal(load_buf(b.p, b.len, &t, &st, err, sizeof(err)), 0);
	assert_int_equal(mig_load_sections_seen(&tload_ops, &st, VMSTATE_SECTION_CPU), 0xffffffffu);
	assert_int_equal(st.data_pages, MIG_RUN_MAX_PAGES + 1);
	assert_int_equal(strlen(t.h.blocks[0].name), MIG_BLOCK_NAME_MAX);
	tbuf_free(&b);
}

/* Sections may come before RAM records and PASS_END is optional. */
static void test_valid_any_order(void **state)
{
	struct tbuf b = { 0 };
	struct tload t = { 0 };
	struct mig_load_stats st;
	char err[512];

	(void)state;
	put_header(&b, 2, 2, 4);
	put_cpu_section(&b, 1);
	put_ram_data(&b, 1, 4, 0);
	put_vm_section(&b, 0);
	put_ram_hdr(&b, 0, MIG_RAM_FLAG_ZERO, 0, 4, 0);
	put_cpu_section(&b, 0);
	put_end(&b);
	assert_int_equal(load_buf(b.p, b.len, &t, &st, err, sizeof(err)), 0);
	assert_int_equal(st.passes, 0);
	assert_int_equal(t.data_pages_checked, 4);
	tbuf_free(&b);
}

/* The parser stops at END: bytes after it are the caller's business. */
static void test_valid_stops_at_end(void **state)
{
	struct tbuf b = { 0 };
	struct stream s;
	struct tload t = { 0 };
	struct mig_load_stats st;
	char err[512];
	size_t valid_len;

	(void)state;
	make_valid(&b);
	valid_len = b.len;
	tbuf_u8(&b, 0xee);
	stream_init_mem(&s, b.p, b.len);
	assert_int_equal(mig_load(&s, &tload_ops, &t, &st, err, sizeof(err)), 0);
	assert_int_equal(s.pos, valid_len);
	stream_release(&s);
	tbuf_free(&b);
}

/* ---- tests: the header ---- */

/* The worked example's header and zero record, copied from docs/stream-format.md. */
static void test_doc_example(void **state)
{
	static const uint8_t doc[] = {
		0x56, 0x4d, 0x46, 0x53, 0x54, 0x52, 0x4d, 0x00, 0x01, 0x00, 0x00, 0x00,
		0x00, 0x10, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
		0x3f, 0x1c, 0x9a, 0x0e, 0x5b, 0x7d, 0x4c, 0x2a, 0x8e, 0x6f, 0x1d, 0x3b,
		0x5a, 0x7c, 0x9e, 0x0f, 0x04, 0x72, 0x61, 0x6d, 0x30, 0x00, 0x00, 0x00,
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00,
		0x00,
		0x01, 0x00, 0x01, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
		0x00, 0x00, 0x00, 0x00, 0x00,
	};
	struct tbuf b = { 0 };
	struct mig_header h;
	struct stream s;
	char err[256];

	(void)state;
	stream_init_mem(&s, doc, sizeof(doc));
	assert_int_equal(mig_load_header(&s, &h, err, sizeof(err)), 0);
	assert_int_equal(s.pos, 61);
	assert_int_equal(h.nvcpus, 1);
	assert_string_equal(h.blocks[0].name, "ram0");
	assert_int_equal(h.blocks[0].bytes, 2u << 20);
	assert_int_equal(h.boot_id[0], 0x3f);
	assert_int_equal(h.boot_id[15], 0x0f);
	stream_release(&s);

	/* This file's encoder agrees with the document. */
	tbuf_u64(&b, MIG_MAGIC);
	tbuf_u32(&b, 1);
	tbuf_u32(&b, 4096);
	tbuf_u32(&b, 1);
	tbuf_u32(&b, 1);
	tbuf_bytes(&b, h.boot_id, MIG_BOOT_ID_BYTES);
	put_block(&b, "ram0", 4, 0, 2u << 20);
	put_ram_hdr(&b, 0, MIG_RAM_FLAG_ZERO, 0, 16, 0);
	assert_int_equal(b.len, sizeof(doc));
	assert_memory_equal(b.p, doc, sizeof(doc));
	tbuf_free(&b);
}

static void patch_u32(struct tbuf *b, size_t off, uint32_t v)
{
	for (unsigned i = 0; i < 4; i++)
		b->p[off + i] = (uint8_t)(v >> (8 * i));
}

static void test_bad_header_fields(void **state)
{
	struct tbuf b = { 0 };

	(void)state;
	make_valid(&b);
	b.p[0] ^= 1;
	expect_bad(&b, "not a vmferry migration stream");
	b.p[0] ^= 1;

	patch_u32(&b, T_OFF_VERSION, MIG_VERSION + 1);
	expect_bad(&b, "version 3");
	patch_u32(&b, T_OFF_VERSION, 0);
	expect_bad(&b, "version 0");
	patch_u32(&b, T_OFF_VERSION, T_STREAM_VERSION);

	patch_u32(&b, T_OFF_PAGE, 2 * MIG_PAGE_BYTES);
	expect_bad(&b, "page size");
	patch_u32(&b, T_OFF_PAGE, MIG_PAGE_BYTES);

	patch_u32(&b, T_OFF_NVCPUS, 0);
	expect_bad(&b, "0 vCPUs");
	patch_u32(&b, T_OFF_NVCPUS, MIG_MAX_VCPUS + 1);
	expect_bad(&b, "33 vCPUs");
	patch_u32(&b, T_OFF_NVCPUS, 1);

	patch_u32(&b, T_OFF_NBLOCKS, 0);
	expect_bad(&b, "0 RAM blocks");
	patch_u32(&b, T_OFF_NBLOCKS, MIG_MAX_BLOCKS + 1);
	expect_bad(&b, "17 RAM blocks");
	patch_u32(&b, T_OFF_NBLOCKS, 1);
	tbuf_free(&b);
}

static void test_bad_block_names(void **state)
{
	struct tbuf b = { 0 };
	char name[MIG_BLOCK_NAME_MAX + 1];

	(void)state;
	put_header_fixed(&b, 1, 1);
	put_block(&b, "", 0, 0, MIG_PAGE_BYTES);
	expect_bad(&b, "name of 0 bytes");
	tbuf_free(&b);

	memset(name, 'n', sizeof(name));
	put_header_fixed(&b, 1, 1);
	put_block(&b, name, sizeof(name), 0, MIG_PAGE_BYTES);
	expect_bad(&b, "name of 32 bytes");
	tbuf_free(&b);

	put_header_fixed(&b, 1, 1);
	put_block(&b, "a\0b", 3, 0, MIG_PAGE_BYTES);
	expect_bad(&b, "NUL");
	tbuf_free(&b);
}

static void test_bad_block_geometry(void **state)
{
	static const struct { uint64_t gpa, bytes; } cases[] = {
		{ 0x1001, MIG_PAGE_BYTES },           /* misaligned start */
		{ 0, MIG_PAGE_BYTES + 1 },            /* partial page */
		{ 0, 0 },                             /* empty */
		{ UINT64_MAX - MIG_PAGE_BYTES + 1, 2 * MIG_PAGE_BYTES }, /* wraps */
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tbuf b = { 0 };

		put_header_fixed(&b, 1, 1);
		put_block(&b, "ram", 3, cases[i].gpa, cases[i].bytes);
		expect_bad(&b, "bad geometry");
		tbuf_free(&b);
	}
	/* Two blocks: the same name, or overlapping ranges. */
	{
		struct tbuf b = { 0 };

		put_header_fixed(&b, 1, 2);
		put_block(&b, "ram", 3, 0, MIG_PAGE_BYTES);
		put_block(&b, "ram", 3, 1ull << 30, MIG_PAGE_BYTES);
		expect_bad(&b, "given twice");
		tbuf_free(&b);
		memset(&b, 0, sizeof(b));
		put_header_fixed(&b, 1, 2);
		put_block(&b, "ram0", 4, 0, 4 * MIG_PAGE_BYTES);
		put_block(&b, "ram1", 4, 3 * MIG_PAGE_BYTES, MIG_PAGE_BYTES);
		expect_bad(&b, "overlap");
		tbuf_free(&b);
	}
}

static void test_header_callback_refuses(void **state)
{
	struct tbuf b = { 0 };
	struct tload t = { .fail_header = true };
	struct mig_load_stats st;
	char err[512];

	(void)state;
	make_valid(&b);
	assert_int_equal(load_buf(b.p, b.len, &t, &st, err, sizeof(err)), -EBADMSG);
	assert_string_equal(err, "header refused by the callback");
	assert_int_equal(t.ram_records, 0);
	tbuf_free(&b);
}

/* ---- tests: records ---- */

/* A valid header and sections, then one bad RAM record. */
static void expect_bad_ram(unsigned block, unsigned flags, unsigned pad, uint32_t npages,
			   uint64_t first, const char *needle)
{
	struct tbuf b = { 0 };

	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_vm_section(&b, 0);
	put_cpu_section(&b, 0);
	put_ram_hdr(&b, block, flags, pad, npages, first);
	put_end(&b); /* the parser must not get this far */
	expect_bad(&b, needle);
	tbuf_free(&b);
}

static void test_bad_ram_records(void **state)
{
	(void)state;
	expect_bad_ram(0, 0, 0, 2, T_BLOCK_PAGES - 1, "outside block ram0");
	expect_bad_ram(0, MIG_RAM_FLAG_ZERO, 0, 1, T_BLOCK_PAGES, "outside block");
	expect_bad_ram(0, MIG_RAM_FLAG_ZERO, 0, UINT32_MAX, 1, "outside block");
	expect_bad_ram(0, MIG_RAM_FLAG_ZERO, 0, 1, UINT64_MAX, "outside block");
	expect_bad_ram(0, 0, 0, 0, 0, "outside block");
	expect_bad_ram(0, MIG_RAM_FLAG_ZERO, 0, 0, 0, "outside block");
	expect_bad_ram(0, 0x2, 0, 1, 0, "flags 0x2");
	expect_bad_ram(0, 0x80 | MIG_RAM_FLAG_ZERO, 0, 1, 0, "flags 0x81");
	expect_bad_ram(0, 0, 1, 1, 0, "pad 0x1");
	expect_bad_ram(1, 0, 0, 1, 0, "block 1");
	expect_bad_ram(255, MIG_RAM_FLAG_ZERO, 0, 1, 0, "block 255");
}

static void test_bad_data_run_too_long(void **state)
{
	struct tbuf b = { 0 };

	(void)state;
	put_header(&b, 1, 1, 4 * MIG_RUN_MAX_PAGES);
	put_ram_hdr(&b, 0, 0, 0, MIG_RUN_MAX_PAGES + 1, 0);
	expect_bad(&b, "data run of"); /* rejected before any page is read */
	tbuf_free(&b);
}

static void test_bad_record_types(void **state)
{
	static const uint8_t types[] = { 0, 0x40, 0x80, 0xff };

	(void)state;
	for (size_t i = 0; i < sizeof(types); i++) {
		struct tbuf b = { 0 };
		char needle[64];

		put_header(&b, 1, 1, T_BLOCK_PAGES);
		tbuf_u8(&b, types[i]);
		snprintf(needle, sizeof(needle), "unknown record type %u", types[i]);
		expect_bad(&b, needle);
		tbuf_free(&b);
	}
}

static void test_bad_sections(void **state)
{
	struct tbuf b = { 0 };
	uint8_t *big;

	(void)state;
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_section(&b, 3, 0, 1, "", 0);
	expect_bad(&b, "unknown section id 3");
	tbuf_free(&b);

	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_section(&b, 0, 0, 1, "", 0);
	expect_bad(&b, "unknown section id 0");
	tbuf_free(&b);

	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_cpu_section(&b, 0);
	put_cpu_section(&b, 0);
	expect_bad(&b, "cpu section 0 unexpected");
	tbuf_free(&b);

	put_header(&b, 2, 1, T_BLOCK_PAGES);
	put_cpu_section(&b, 2);
	expect_bad(&b, "cpu section 2 unexpected");
	tbuf_free(&b);

	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_cpu_section(&b, 0xffffffffu);
	expect_bad(&b, "unexpected");
	tbuf_free(&b);

	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_vm_section(&b, 1);
	expect_bad(&b, "vm section 1 unexpected");
	tbuf_free(&b);

	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_vm_section(&b, 0);
	put_vm_section(&b, 0);
	expect_bad(&b, "vm section 0 unexpected");
	tbuf_free(&b);

	/* Oversized: refused from the length alone, before reading the body. */
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	tbuf_u8(&b, MIG_REC_SECTION);
	tbuf_u32(&b, VMSTATE_SECTION_CPU);
	tbuf_u32(&b, 0);
	tbuf_u32(&b, 1);
	tbuf_u32(&b, VMSTATE_SECTION_MAX_BYTES + 1);
	expect_bad(&b, "exceeds");
	tbuf_free(&b);

	put_header(&b, 1, 1, T_BLOCK_PAGES);
	tbuf_u8(&b, MIG_REC_SECTION);
	tbuf_u32(&b, VMSTATE_SECTION_VM);
	tbuf_u32(&b, 0);
	tbuf_u32(&b, 1);
	tbuf_u32(&b, UINT32_MAX);
	expect_bad(&b, "exceeds");
	tbuf_free(&b);

	/* Exactly the limit is framed fine; the vCPU check then refuses it. */
	big = calloc(1, VMSTATE_SECTION_MAX_BYTES);
	assert_non_null(big);
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_section(&b, VMSTATE_SECTION_CPU, 0, 1, big, VMSTATE_SECTION_MAX_BYTES);
	expect_bad(&b, "cpu section has 0 fields");
	tbuf_free(&b);
	free(big);
}

static void test_bad_end_incomplete(void **state)
{
	struct tbuf b = { 0 };

	(void)state;
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_end(&b);
	expect_bad(&b, "stream ended without the state");
	tbuf_free(&b);

	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_cpu_section(&b, 0);
	put_end(&b);
	expect_bad(&b, "stream ended without the state");
	tbuf_free(&b);

	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_vm_section(&b, 0);
	put_end(&b);
	expect_bad(&b, "stream ended without the state");
	tbuf_free(&b);

	put_header(&b, 3, 1, T_BLOCK_PAGES);
	put_vm_section(&b, 0);
	put_cpu_section(&b, 0);
	put_cpu_section(&b, 2);
	put_end(&b);
	expect_bad(&b, "stream ended without the state");
	tbuf_free(&b);

	put_header(&b, MIG_MAX_VCPUS, 1, T_BLOCK_PAGES);
	put_vm_section(&b, 0);
	for (uint32_t i = 0; i < MIG_MAX_VCPUS - 1; i++)
		put_cpu_section(&b, i);
	put_end(&b);
	expect_bad(&b, "stream ended without the state");
	tbuf_free(&b);
}

/* Every proper prefix of a valid stream is a truncated stream: -EPIPE, never a crash. */
static void test_truncated_everywhere(void **state)
{
	struct tbuf b = { 0 };

	(void)state;
	make_valid(&b);
	for (size_t len = 0; len < b.len; len++) {
		/* A private copy of exactly @len bytes, so ASan sees any over-read. */
		uint8_t *p = malloc(len ? len : 1);
		struct tload t = { 0 };
		struct mig_load_stats st;
		char err[512];
		int r;

		assert_non_null(p);
		memcpy(p, b.p, len);
		r = load_buf(p, len, &t, &st, err, sizeof(err));
		if (r != -EPIPE || !strstr(err, "truncated"))
			fail_msg("prefix of %zu bytes: %d \"%s\"", len, r, err);
		assert_false(st.end_seen);
		free(p);
	}
	tbuf_free(&b);
}

/* ---- tests: section bodies ---- */

static void expect_cpu_bad(const struct tbuf *c, size_t xsave_bytes, const char *needle)
{
	char err[512] = "";
	int r = vmstate_cpu_check(c->p, c->len, xsave_bytes, err, sizeof(err));

	if (r != -EBADMSG || !strstr(err, needle))
		fail_msg("expected -EBADMSG with \"%s\", got %d \"%s\"", needle, r, err);
}

static void test_cpu_check(void **state)
{
	struct tbuf c = { 0 };
	char err[512];
	size_t msr_off;

	(void)state;
	make_cpu_body(&c);
	assert_int_equal(vmstate_cpu_check(c.p, c.len, 0, err, sizeof(err)), 0);
	assert_int_equal(vmstate_cpu_check(c.p, c.len, sizeof(struct kvm_xsave), err,
					   sizeof(err)), 0);
	expect_cpu_bad(&c, 8192, "XSAVE area of 4096 bytes");

	/* Each proper prefix fails framing. */
	for (size_t len = 0; len < c.len; len++) {
		uint8_t *p = malloc(len ? len : 1);

		assert_non_null(p);
		memcpy(p, c.p, len);
		assert_int_equal(vmstate_cpu_check(p, len, 0, err, sizeof(err)), -EBADMSG);
		free(p);
	}

	/* Stray byte at the end. */
	tbuf_u8(&c, 0);
	expect_cpu_bad(&c, 0, "stray");
	c.len--;

	/* Field count. */
	patch_u32(&c, 0, VMSTATE_CPU__COUNT);
	expect_cpu_bad(&c, 0, "fields");
	patch_u32(&c, 0, VMSTATE_CPU__COUNT - 1);

	/* The first field (regs): unknown kind, duplicate kind, wrong size. */
	patch_u32(&c, 4, 0);
	expect_cpu_bad(&c, 0, "unknown cpu field kind 0");
	patch_u32(&c, 4, VMSTATE_CPU__COUNT);
	expect_cpu_bad(&c, 0, "unknown cpu field kind");
	patch_u32(&c, 4, VMSTATE_CPU_SREGS);
	expect_cpu_bad(&c, 0, "expected"); /* sregs size check comes first */
	patch_u32(&c, 4, VMSTATE_CPU_REGS);
	patch_u32(&c, 8, sizeof(struct kvm_regs) + 1);
	expect_cpu_bad(&c, 0, "expected 144");
	patch_u32(&c, 8, UINT32_MAX);
	expect_cpu_bad(&c, 0, "past the section end");
	patch_u32(&c, 8, sizeof(struct kvm_regs));

	/* MSRs: the count must match the length. */
	msr_off = c.len - (4 + 2 * 16);
	patch_u32(&c, msr_off, 3);
	expect_cpu_bad(&c, 0, "MSR field");
	patch_u32(&c, msr_off, UINT32_MAX);
	expect_cpu_bad(&c, 0, "MSR field");
	patch_u32(&c, msr_off, 2);
	assert_int_equal(vmstate_cpu_check(c.p, c.len, 0, err, sizeof(err)), 0);
	tbuf_free(&c);

	/* A short field count is refused before any field is read. */
	tbuf_u32(&c, VMSTATE_CPU__COUNT - 2);
	expect_cpu_bad(&c, 0, "fields");
	tbuf_free(&c);

	/* Duplicate kind: regs twice (so one kind is missing). */
	tbuf_u32(&c, VMSTATE_CPU__COUNT - 1);
	for (uint32_t k = 1; k < VMSTATE_CPU__COUNT; k++)
		put_cpu_field(&c, k == VMSTATE_CPU_SREGS ? VMSTATE_CPU_REGS : k,
			      k == VMSTATE_CPU_SREGS ? sizeof(struct kvm_regs) :
			      k == VMSTATE_CPU_REGS ? sizeof(struct kvm_regs) : 4096, 0);
	expect_cpu_bad(&c, 0, "given twice");
	tbuf_free(&c);
}

static void test_vm_parse(void **state)
{
	struct tbuf v = { 0 };
	struct vmstate_vm out;
	char err[256];

	(void)state;
	/* Version 1, as an older build writes it: no `moves`. */
	tbuf_u64(&v, 5);
	tbuf_u64(&v, 6);
	tbuf_u32(&v, 0);
	tbuf_u32(&v, 0);
	assert_int_equal(vmstate_vm_parse(v.p, v.len, 1, &out, err, sizeof(err)), 0);
	assert_int_equal(out.guest_clock_ns, 5);
	assert_int_equal(out.was_running, 0);
	assert_int_equal(out.moves, 0);
	/* The same bytes are too short for version 2. */
	assert_int_equal(vmstate_vm_parse(v.p, v.len, 2, &out, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "expected 32"));
	assert_int_equal(vmstate_vm_parse(v.p, v.len - 1, 1, &out, err, sizeof(err)), -EBADMSG);
	patch_u32(&v, 16, 2);
	assert_int_equal(vmstate_vm_parse(v.p, v.len, 1, &out, err, sizeof(err)), -EBADMSG);
	patch_u32(&v, 16, 1);
	patch_u32(&v, 20, 1);
	assert_int_equal(vmstate_vm_parse(v.p, v.len, 1, &out, err, sizeof(err)), -EBADMSG);
	patch_u32(&v, 20, 0);
	/* Version 2 appends moves. */
	tbuf_u64(&v, 41);
	assert_int_equal(vmstate_vm_parse(v.p, v.len, 2, &out, err, sizeof(err)), 0);
	assert_int_equal(out.moves, 41);
	assert_int_equal(out.was_running, 1);
	assert_int_equal(vmstate_vm_parse(v.p, v.len, 1, &out, err, sizeof(err)), -EBADMSG);
	/* A newer build's section and version 0 are refused with a reason. */
	assert_int_equal(vmstate_vm_parse(v.p, v.len, VMSTATE_VM_VERSION + 1, &out, err, sizeof(err)),
			 -EBADMSG);
	assert_non_null(strstr(err, "newer"));
	assert_int_equal(vmstate_vm_parse(v.p, v.len, 0, &out, err, sizeof(err)), -EBADMSG);
	tbuf_u8(&v, 0);
	assert_int_equal(vmstate_vm_parse(v.p, v.len, 2, &out, err, sizeof(err)), -EBADMSG);
	tbuf_free(&v);
}

/* ---- tests: cpr-transfer streams ---- */

static void put_cpr(struct tbuf *b)
{
	tbuf_u8(b, MIG_REC_CPR);
	for (unsigned i = 0; i < MIG_CPR_TOKEN_BYTES; i++)
		tbuf_u8(b, 0xc0 + i);
}

static void test_cpr_stream(void **state)
{
	struct tbuf b = { 0 };
	struct tload t = { 0 };
	struct mig_load_stats st;
	char err[512];

	(void)state;
	/* Valid: header, CPR, state, END - no RAM at all. */
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_cpr(&b);
	put_vm_section(&b, 0);
	put_cpu_section(&b, 0);
	put_end(&b);
	assert_int_equal(load_buf(b.p, b.len, &t, &st, err, sizeof(err)), 0);
	assert_true(st.cpr);
	assert_int_equal(t.cpr_records, 1);
	assert_int_equal(t.cpr_token[0], 0xc0);
	assert_int_equal(t.cpr_token[MIG_CPR_TOKEN_BYTES - 1], 0xc0 + MIG_CPR_TOKEN_BYTES - 1);
	assert_int_equal(st.ram_records, 0);
	tbuf_free(&b);

	/* RAM is shared: a RAM record after CPR is refused. */
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_cpr(&b);
	put_ram_data(&b, 0, 1, 0);
	expect_bad(&b, "RAM record in a cpr-transfer stream");
	tbuf_free(&b);
	/* CPR only first, only once, and not with postcopy. */
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_ram_hdr(&b, 0, MIG_RAM_FLAG_ZERO, 0, 1, 0);
	put_cpr(&b);
	expect_bad(&b, "cpr record must be the first record");
	tbuf_free(&b);
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_cpr(&b);
	put_cpr(&b);
	expect_bad(&b, "cpr record must be the first record");
	tbuf_free(&b);
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_cpr(&b);
	tbuf_u8(&b, MIG_REC_POSTCOPY_ADVISE);
	expect_bad(&b, "postcopy advise must be the first record");
	tbuf_free(&b);
	/* A token cut short. */
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_cpr(&b);
	b.len -= 3;
	memset(&t, 0, sizeof(t));
	assert_int_not_equal(load_buf(b.p, b.len, &t, &st, err, sizeof(err)), 0);
	assert_int_equal(t.cpr_records, 0);
	tbuf_free(&b);
	/* A loader that does not take live updates says so. */
	{
		struct mig_load_ops ops = tload_ops;
		struct stream s;

		ops.cpr = NULL;
		put_header(&b, 1, 1, T_BLOCK_PAGES);
		put_cpr(&b);
		memset(&t, 0, sizeof(t));
		stream_init_mem(&s, b.p, b.len);
		assert_int_equal(mig_load(&s, &ops, &t, &st, err, sizeof(err)), -EBADMSG);
		assert_non_null(strstr(err, "cpr-transfer"));
		stream_release(&s);
		tbuf_free(&b);
	}
}

/* ---- tests: section kinds given by the consumer, and section parts ---- */

#define T_DEV_ID 100u

struct tdev {
	unsigned parts, sections;
};

static int tdev_section(void *opaque, uint32_t id, uint32_t instance, uint32_t version,
			const uint8_t *data, uint32_t len, char *err, size_t errlen)
{
	struct tdev *d = opaque;

	(void)instance; (void)version; (void)data; (void)len; (void)err; (void)errlen;
	if (id == T_DEV_ID)
		d->sections++;
	return 0;
}

static int tdev_part(void *opaque, uint32_t id, uint32_t instance, uint32_t version,
		     const uint8_t *data, uint32_t len, char *err, size_t errlen)
{
	struct tdev *d = opaque;

	(void)instance; (void)version; (void)data; (void)len; (void)err; (void)errlen;
	assert_int_equal(id, T_DEV_ID);
	d->parts++;
	return 0;
}

static const struct mig_section_kind tdev_kinds[] = {
	{ .id = VMSTATE_SECTION_VM, .name = "vm", .instances = 1, .required = true },
	{ .id = T_DEV_ID, .name = "dev", .instances = 2, .required = true },
};

static const struct mig_load_ops tdev_ops = {
	.section_kinds = tdev_kinds,
	.nsection_kinds = 2,
	.ram = mig_load_ram_skip,
	.section = tdev_section,
	.section_part = tdev_part,
	.cpr = tload_cpr,
};

static void put_part(struct tbuf *b, uint32_t id, uint32_t inst)
{
	tbuf_u8(b, MIG_REC_SECTION_PART);
	tbuf_u32(b, id);
	tbuf_u32(b, inst);
	tbuf_u32(b, 1);
	tbuf_u32(b, 3);
	tbuf_bytes(b, "abc", 3);
}

/* Load @b with @ops: the result, the message in @err. */
static int tdev_load(const struct tbuf *b, const struct mig_load_ops *ops, struct tdev *d,
		     struct mig_load_stats *st, char *err, size_t errlen)
{
	struct stream s;
	int r;

	memset(d, 0, sizeof(*d));
	err[0] = 0;
	stream_init_mem(&s, b->p, b->len);
	r = mig_load(&s, ops, d, st, err, errlen);
	stream_release(&s);
	return r;
}

static void tdev_expect_bad(const struct tbuf *b, const struct mig_load_ops *ops,
			    const char *needle)
{
	struct tdev d;
	struct mig_load_stats st;
	char err[512];
	int r = tdev_load(b, ops, &d, &st, err, sizeof(err));

	if (r != -EBADMSG || !strstr(err, needle))
		fail_msg("expected -EBADMSG with \"%s\", got %d \"%s\"", needle, r, err);
}

static void test_section_kinds_and_parts(void **state)
{
	struct tbuf b = { 0 };
	struct tdev d;
	struct mig_load_stats st;
	struct mig_load_ops no_parts = tdev_ops;
	char err[512];

	(void)state;
	/* Parts of both instances while the guest runs, then whole sections. */
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_part(&b, T_DEV_ID, 0);
	put_part(&b, T_DEV_ID, 1);
	put_part(&b, T_DEV_ID, 0); /* parts may repeat */
	put_vm_section(&b, 0);
	put_section(&b, T_DEV_ID, 1, 1, "x", 1);
	put_section(&b, T_DEV_ID, 0, 1, "y", 1);
	put_end(&b);
	assert_int_equal(tdev_load(&b, &tdev_ops, &d, &st, err, sizeof(err)), 0);
	assert_int_equal(d.parts, 3);
	assert_int_equal(d.sections, 2);
	assert_int_equal(st.section_parts, 3);
	assert_int_equal(mig_load_sections_seen(&tdev_ops, &st, T_DEV_ID), 3);
	/* A cpu section is not a kind this consumer takes. */
	assert_int_equal(mig_load_sections_seen(&tdev_ops, &st, VMSTATE_SECTION_CPU), 0);
	tbuf_free(&b);

	/* A required instance missing: named. */
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_vm_section(&b, 0);
	put_section(&b, T_DEV_ID, 0, 1, "y", 1);
	put_end(&b);
	tdev_expect_bad(&b, &tdev_ops, "no dev section 1");
	tbuf_free(&b);

	/* Instances beyond the kind's, whole sections twice, unknown ids. */
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_part(&b, T_DEV_ID, 2);
	tdev_expect_bad(&b, &tdev_ops, "dev section 2 unexpected");
	tbuf_free(&b);
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_section(&b, T_DEV_ID, 1, 1, "x", 1);
	put_section(&b, T_DEV_ID, 1, 1, "x", 1);
	tdev_expect_bad(&b, &tdev_ops, "dev section 1 unexpected");
	tbuf_free(&b);
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_part(&b, VMSTATE_SECTION_CPU, 0);
	tdev_expect_bad(&b, &tdev_ops, "unknown section id 2");
	tbuf_free(&b);

	/* A consumer without parts refuses them; a cpr stream carries none. */
	no_parts.section_part = NULL;
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_part(&b, T_DEV_ID, 0);
	tdev_expect_bad(&b, &no_parts, "parts are not taken here");
	tbuf_free(&b);
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_cpr(&b);
	put_part(&b, T_DEV_ID, 0);
	tdev_expect_bad(&b, &tdev_ops, "cpr-transfer");
	tbuf_free(&b);

	/* Cut inside a part: an I/O error, not a crash. */
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_part(&b, T_DEV_ID, 0);
	b.len -= 2;
	assert_int_not_equal(tdev_load(&b, &tdev_ops, &d, &st, err, sizeof(err)), 0);
	assert_int_equal(d.parts, 0);
	tbuf_free(&b);

	/* The default kinds (vm, cpu) refuse a device's parts and sections. */
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	put_part(&b, T_DEV_ID, 0);
	expect_bad(&b, "unknown section id 100");
	tbuf_free(&b);
}

/* ---- tests: the return path ---- */

static void put_rp_running(struct tbuf *b, uint64_t first_run_ns, uint8_t same, uint64_t load_ns)
{
	tbuf_u8(b, MIG_RP_RUNNING);
	tbuf_u64(b, first_run_ns);
	tbuf_u8(b, same);
	tbuf_u64(b, load_ns);
}

static void put_rp_error(struct tbuf *b, uint32_t code, const char *text, size_t len)
{
	tbuf_u8(b, MIG_RP_ERROR);
	tbuf_u32(b, code);
	tbuf_u16(b, len);
	tbuf_bytes(b, text, len);
}

static int rp_read_buf(const struct tbuf *b, struct mig_rp_msg *m, char *err, size_t errlen)
{
	struct stream s;
	int r;

	stream_init_mem(&s, b->p, b->len);
	err[0] = 0;
	r = mig_rp_read(&s, m, err, errlen);
	stream_release(&s);
	return r;
}

static void expect_rp_bad(const struct tbuf *b, const char *needle)
{
	struct mig_rp_msg m;
	char err[512];
	int r = rp_read_buf(b, &m, err, sizeof(err));

	if (r != -EBADMSG || !strstr(err, needle))
		fail_msg("expected -EBADMSG with \"%s\", got %d \"%s\"", needle, r, err);
}

static void test_rp_valid(void **state)
{
	struct tbuf b = { 0 };
	struct stream s;
	struct mig_rp_msg m;
	char err[512];
	char longtext[MIG_ERRMSG_MAX];

	(void)state;
	memset(longtext, 'x', sizeof(longtext));
	put_rp_running(&b, 111, 1, 222);
	put_rp_error(&b, ECANCELED, "inspected\n\x01", 11);
	put_rp_error(&b, 4095, longtext, sizeof(longtext));
	put_rp_running(&b, 0, 0, 0);
	tbuf_u8(&b, MIG_RP_STATE_REQ);          /* section 10, disk 1, 64 KiB at 1 MiB */
	tbuf_u32(&b, 10);
	tbuf_u32(&b, 1);
	tbuf_u64(&b, 1 << 20);
	tbuf_u32(&b, 65536);
	tbuf_u8(&b, MIG_RP_STATE_BITMAP);       /* 3 bits: 0 and 2 held */
	tbuf_u32(&b, 10);
	tbuf_u32(&b, 0);
	tbuf_u64(&b, 3);
	tbuf_u32(&b, 1);
	tbuf_u8(&b, 0x05);
	tbuf_u8(&b, MIG_RP_STATE_BITMAP);       /* none: the disk receives nothing */
	tbuf_u32(&b, 10);
	tbuf_u32(&b, 1);
	tbuf_u64(&b, 0);
	tbuf_u32(&b, 0);
	stream_init_mem(&s, b.p, b.len);

	assert_int_equal(mig_rp_read(&s, &m, err, sizeof(err)), 0);
	assert_int_equal(m.type, MIG_RP_RUNNING);
	assert_int_equal(m.first_run_ns, 111);
	assert_true(m.same_clock);
	assert_int_equal(m.load_ns, 222);

	assert_int_equal(mig_rp_read(&s, &m, err, sizeof(err)), 0);
	assert_int_equal(m.type, MIG_RP_ERROR);
	assert_int_equal(m.err, -ECANCELED);
	assert_string_equal(m.text, "inspected??"); /* control bytes made printable */

	assert_int_equal(mig_rp_read(&s, &m, err, sizeof(err)), 0);
	assert_int_equal(m.err, -4095);
	assert_int_equal(strlen(m.text), MIG_ERRMSG_MAX);

	assert_int_equal(mig_rp_read(&s, &m, err, sizeof(err)), 0);
	assert_false(m.same_clock);

	assert_int_equal(mig_rp_read(&s, &m, err, sizeof(err)), 0);
	assert_int_equal(m.type, MIG_RP_STATE_REQ);
	assert_int_equal(m.section_id, 10);
	assert_int_equal(m.instance, 1);
	assert_int_equal(m.offset, 1 << 20);
	assert_int_equal(m.length, 65536);
	assert_int_equal(mig_rp_read(&s, &m, err, sizeof(err)), 0);
	assert_int_equal(m.type, MIG_RP_STATE_BITMAP);
	assert_int_equal(m.bitmap_pages, 3);
	assert_int_equal(m.bitmap[0], 0x05);
	mig_rp_msg_release(&m);
	assert_int_equal(mig_rp_read(&s, &m, err, sizeof(err)), 0);
	assert_int_equal(m.bitmap_pages, 0);
	assert_int_equal(m.instance, 1);
	mig_rp_msg_release(&m);

	assert_int_equal(mig_rp_read(&s, &m, err, sizeof(err)), -EPIPE);
	stream_release(&s);
	tbuf_free(&b);
}

static void test_rp_bad(void **state)
{
	struct tbuf b = { 0 };
	char longtext[MIG_ERRMSG_MAX + 1];

	(void)state;
	memset(longtext, 'x', sizeof(longtext));
	tbuf_u8(&b, 0);
	expect_rp_bad(&b, "unknown message type 0");
	tbuf_free(&b);
	tbuf_u8(&b, 10);
	expect_rp_bad(&b, "unknown message type 10");
	tbuf_free(&b);
	/* STATE_REQ: 0 bytes, too many, a range that wraps. */
	{
		static const struct { uint64_t off; uint32_t len; } bad[] = {
			{ 0, 0 }, { 0, MIG_STATE_REQ_MAX_BYTES + 1 }, { UINT64_MAX - 10, 11 },
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			tbuf_u8(&b, MIG_RP_STATE_REQ);
			tbuf_u32(&b, 10);
			tbuf_u32(&b, 0);
			tbuf_u64(&b, bad[i].off);
			tbuf_u32(&b, bad[i].len);
			expect_rp_bad(&b, "state request for");
			tbuf_free(&b);
		}
	}
	/* STATE_BITMAP: a length that disagrees, too many bits, bits past the end. */
	tbuf_u8(&b, MIG_RP_STATE_BITMAP);
	tbuf_u32(&b, 10);
	tbuf_u32(&b, 0);
	tbuf_u64(&b, 9);
	tbuf_u32(&b, 1);
	expect_rp_bad(&b, "state bitmap of 9 bits in 1 bytes");
	tbuf_free(&b);
	tbuf_u8(&b, MIG_RP_STATE_BITMAP);
	tbuf_u32(&b, 10);
	tbuf_u32(&b, 0);
	tbuf_u64(&b, MIG_RECV_BITMAP_MAX_PAGES + 1);
	tbuf_u32(&b, 0);
	expect_rp_bad(&b, "state bitmap of");
	tbuf_free(&b);
	tbuf_u8(&b, MIG_RP_STATE_BITMAP);
	tbuf_u32(&b, 10);
	tbuf_u32(&b, 0);
	tbuf_u64(&b, 3);
	tbuf_u32(&b, 1);
	tbuf_u8(&b, 0x0f);
	expect_rp_bad(&b, "bits past bit 3");
	tbuf_free(&b);

	put_rp_error(&b, EIO, longtext, sizeof(longtext));
	expect_rp_bad(&b, "error text of 513 bytes");
	tbuf_free(&b);
	put_rp_error(&b, 0, "x", 1);
	expect_rp_bad(&b, "error code 0");
	tbuf_free(&b);
	put_rp_error(&b, 4096, "x", 1);
	expect_rp_bad(&b, "error code 4096");
	tbuf_free(&b);
	put_rp_error(&b, (uint32_t)-EIO, "x", 1); /* negative errno sent raw */
	expect_rp_bad(&b, "error code");
	tbuf_free(&b);
	put_rp_running(&b, 1, 2, 1);
	expect_rp_bad(&b, "same_clock 2");
	tbuf_free(&b);
}

static void test_rp_truncated(void **state)
{
	struct tbuf whole = { 0 };

	(void)state;
	put_rp_running(&whole, 1, 1, 2);
	put_rp_error(&whole, EIO, "broken", 6);
	/* Every prefix that cuts a message: EPIPE for the cut one. */
	for (size_t len = 0; len < whole.len; len++) {
		struct tbuf b = { 0 };
		struct stream s;
		struct mig_rp_msg m;
		char err[512];
		int r;

		tbuf_bytes(&b, whole.p, len);
		stream_init_mem(&s, b.p, b.len);
		r = mig_rp_read(&s, &m, err, sizeof(err));
		if (len >= 18) { /* the RUNNING message is complete */
			assert_int_equal(r, 0);
			r = mig_rp_read(&s, &m, err, sizeof(err));
		}
		if (r != -EPIPE)
			fail_msg("prefix of %zu bytes: %d \"%s\"", len, r, err);
		stream_release(&s);
		tbuf_free(&b);
	}
	tbuf_free(&whole);
}

/* ---- tests: postcopy recovery (RECV_BITMAP, resumed main channel) ---- */

/* RECV_BITMAP claiming @len bytes of bits; at most 64 are written (a bad
 * length is refused before the bits are read). */
static void put_rp_bitmap(struct tbuf *b, uint8_t block, uint64_t npages, uint32_t len,
			  uint8_t fill)
{
	tbuf_u8(b, MIG_RP_RECV_BITMAP);
	tbuf_u8(b, block);
	tbuf_u64(b, npages);
	tbuf_u32(b, len);
	for (uint32_t i = 0; i < len && i < 64; i++)
		tbuf_u8(b, fill);
}

static void test_rp_recv_bitmap(void **state)
{
	struct tbuf b = { 0 };
	struct stream s;
	struct mig_rp_msg m;
	char err[512];

	(void)state;
	put_rp_bitmap(&b, 0, 16, 2, 0xa5);
	/* 13 pages: the last byte's top 3 bits must be zero */
	tbuf_u8(&b, MIG_RP_RECV_BITMAP);
	tbuf_u8(&b, 2);
	tbuf_u64(&b, 13);
	tbuf_u32(&b, 2);
	tbuf_u8(&b, 0xff);
	tbuf_u8(&b, 0x1f);
	stream_init_mem(&s, b.p, b.len);
	assert_int_equal(mig_rp_read(&s, &m, err, sizeof(err)), 0);
	assert_int_equal(m.type, MIG_RP_RECV_BITMAP);
	assert_int_equal(m.block, 0);
	assert_int_equal(m.bitmap_pages, 16);
	assert_non_null(m.bitmap);
	assert_int_equal(m.bitmap[0], 0xa5);
	assert_int_equal(m.bitmap[1], 0xa5);
	mig_rp_msg_release(&m);
	assert_null(m.bitmap);
	assert_int_equal(mig_rp_read(&s, &m, err, sizeof(err)), 0);
	assert_int_equal(m.block, 2);
	assert_int_equal(m.bitmap_pages, 13);
	assert_int_equal(m.bitmap[1], 0x1f);
	mig_rp_msg_release(&m);
	assert_int_equal(mig_rp_read(&s, &m, err, sizeof(err)), -EPIPE);
	assert_null(m.bitmap);
	stream_release(&s);
	tbuf_free(&b);
}

static void test_rp_recv_bitmap_bad(void **state)
{
	struct tbuf b = { 0 };

	(void)state;
	put_rp_bitmap(&b, 0, 0, 0, 0);
	expect_rp_bad(&b, "received bitmap of 0 pages");
	tbuf_free(&b);
	/* too large: refused before anything is allocated or read */
	tbuf_u8(&b, MIG_RP_RECV_BITMAP);
	tbuf_u8(&b, 0);
	tbuf_u64(&b, MIG_RECV_BITMAP_MAX_PAGES + 1);
	tbuf_u32(&b, (uint32_t)((MIG_RECV_BITMAP_MAX_PAGES + 8) / 8));
	expect_rp_bad(&b, "received bitmap of 134217729 pages");
	tbuf_free(&b);
	tbuf_u8(&b, MIG_RP_RECV_BITMAP);
	tbuf_u8(&b, 0);
	tbuf_u64(&b, UINT64_MAX);
	tbuf_u32(&b, UINT32_MAX);
	expect_rp_bad(&b, "received bitmap of");
	tbuf_free(&b);
	/* length must be exactly ceil(npages / 8) */
	put_rp_bitmap(&b, 0, 16, 3, 0);
	expect_rp_bad(&b, "16 pages in 3 bytes");
	tbuf_free(&b);
	put_rp_bitmap(&b, 0, 17, 2, 0);
	expect_rp_bad(&b, "17 pages in 2 bytes");
	tbuf_free(&b);
	put_rp_bitmap(&b, 0, 16, UINT32_MAX, 0);
	expect_rp_bad(&b, "in 4294967295 bytes");
	tbuf_free(&b);
	/* stray bits past the last page */
	put_rp_bitmap(&b, 0, 12, 2, 0x10);
	expect_rp_bad(&b, "bits past page 12");
	tbuf_free(&b);
}

static void test_rp_recv_bitmap_truncated(void **state)
{
	struct tbuf whole = { 0 };

	(void)state;
	put_rp_bitmap(&whole, 1, 64, 8, 0xff);
	for (size_t len = 0; len < whole.len; len++) {
		struct stream s;
		struct mig_rp_msg m;
		char err[512];

		stream_init_mem(&s, whole.p, len);
		if (mig_rp_read(&s, &m, err, sizeof(err)) != -EPIPE)
			fail_msg("prefix of %zu bytes: \"%s\"", len, err);
		assert_null(m.bitmap); /* nothing leaks from a cut message */
		stream_release(&s);
	}
	tbuf_free(&whole);
}

static int resume_start_buf(const struct tbuf *b, const struct mig_header *orig, char *err,
			    size_t errlen)
{
	struct stream s;
	int r;

	stream_init_mem(&s, b->p, b->len);
	err[0] = 0;
	r = mig_load_resume_start(&s, orig, err, errlen);
	stream_release(&s);
	return r;
}

/* The header put_header(b, 2, 1, T_BLOCK_PAGES) describes. */
static void orig_header(struct mig_header *h)
{
	struct tbuf b = { 0 };
	struct stream s;
	char err[256];

	put_header(&b, 2, 1, T_BLOCK_PAGES);
	stream_init_mem(&s, b.p, b.len);
	assert_int_equal(mig_load_header(&s, h, err, sizeof(err)), 0);
	stream_release(&s);
	tbuf_free(&b);
}

static void test_resume_start(void **state)
{
	struct mig_header orig, other;
	struct tbuf b = { 0 };
	char err[512];

	(void)state;
	orig_header(&orig);
	put_header(&b, 2, 1, T_BLOCK_PAGES);
	tbuf_u8(&b, MIG_REC_POSTCOPY_RESUME);
	assert_int_equal(resume_start_buf(&b, &orig, err, sizeof(err)), 0);
	tbuf_free(&b);

	/* another VM's header, another boot id, another record, a cut */
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	tbuf_u8(&b, MIG_REC_POSTCOPY_RESUME);
	assert_int_equal(resume_start_buf(&b, &orig, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "not the paused migration's"));
	tbuf_free(&b);
	put_header(&b, 2, 1, T_BLOCK_PAGES * 2);
	tbuf_u8(&b, MIG_REC_POSTCOPY_RESUME);
	assert_int_equal(resume_start_buf(&b, &orig, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "RAM block 0 differs"));
	tbuf_free(&b);
	other = orig;
	other.boot_id[3] ^= 1;
	put_header(&b, 2, 1, T_BLOCK_PAGES);
	tbuf_u8(&b, MIG_REC_POSTCOPY_RESUME);
	assert_int_equal(resume_start_buf(&b, &other, err, sizeof(err)), -EBADMSG);
	tbuf_free(&b);
	put_header(&b, 2, 1, T_BLOCK_PAGES);
	tbuf_u8(&b, MIG_REC_RAM);
	assert_int_equal(resume_start_buf(&b, &orig, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "expected postcopy resume"));
	tbuf_free(&b);
	put_header(&b, 2, 1, T_BLOCK_PAGES);
	assert_int_equal(resume_start_buf(&b, &orig, err, sizeof(err)), -EPIPE);
	tbuf_free(&b);
	/* garbage instead of a header */
	tbuf_u64(&b, MIG_URGENT_MAGIC);
	assert_int_equal(resume_start_buf(&b, &orig, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "not a vmferry migration stream"));
	tbuf_free(&b);

	/* RESUME inside a fresh stream is refused */
	put_header(&b, 1, 1, T_BLOCK_PAGES);
	tbuf_u8(&b, MIG_REC_POSTCOPY_RESUME);
	expect_bad(&b, "postcopy resume in a new migration stream");
	tbuf_free(&b);
}

static uint32_t resumed_pongs;

static int count_ping(void *opaque, uint32_t id)
{
	(void)opaque;
	resumed_pongs += id;
	return 0;
}

static void test_resumed_records(void **state)
{
	struct mig_load_ops ops = { .ram = tload_ram, .ping = count_ping };
	struct tload t = { 0 };
	struct tbuf b = { 0 };
	struct stream s;
	char err[512];
	static const uint8_t bad[] = { 0, MIG_REC_SECTION, MIG_REC_PASS_END, MIG_REC_POSTCOPY_RUN,
				       MIG_REC_POSTCOPY_RESUME, MIG_REC_POSTCOPY_DISCARD, 10 };

	(void)state;
	orig_header(&t.h);
	put_ram_data(&b, 0, 2, 5);
	tbuf_u8(&b, MIG_REC_PING);
	tbuf_u32(&b, 7);
	put_ram_hdr(&b, 0, MIG_RAM_FLAG_ZERO, 0, T_BLOCK_PAGES, 0);
	put_end(&b);
	stream_init_mem(&s, b.p, b.len);
	resumed_pongs = 0;
	assert_int_equal(mig_load_resumed_record(&s, &t.h, &ops, &t, err, sizeof(err)), 1);
	assert_int_equal(t.data_pages_checked, 2);
	assert_int_equal(mig_load_resumed_record(&s, &t.h, &ops, &t, err, sizeof(err)), 1);
	assert_int_equal(resumed_pongs, 7);
	assert_int_equal(mig_load_resumed_record(&s, &t.h, &ops, &t, err, sizeof(err)), 1);
	assert_int_equal(mig_load_resumed_record(&s, &t.h, &ops, &t, err, sizeof(err)), 0);
	assert_int_equal(mig_load_resumed_record(&s, &t.h, &ops, &t, err, sizeof(err)), -EPIPE);
	stream_release(&s);
	tbuf_free(&b);

	for (size_t i = 0; i < sizeof(bad); i++) {
		tbuf_u8(&b, bad[i]);
		tbuf_u32(&b, 0);
		stream_init_mem(&s, b.p, b.len);
		assert_int_equal(mig_load_resumed_record(&s, &t.h, &ops, &t, err, sizeof(err)),
				 -EBADMSG);
		assert_non_null(strstr(err, "only RAM, SECTION_PART, PING and END"));
		stream_release(&s);
		tbuf_free(&b);
	}
	/* RAM outside the block */
	put_ram_hdr(&b, 0, MIG_RAM_FLAG_ZERO, 0, 1, T_BLOCK_PAGES);
	stream_init_mem(&s, b.p, b.len);
	assert_int_equal(mig_load_resumed_record(&s, &t.h, &ops, &t, err, sizeof(err)), -EBADMSG);
	stream_release(&s);
	tbuf_free(&b);
}

/* ---- tests: tools/stream_dump, end to end ---- */

/* build/tests/unit/test_stream_format -> build/tools/stream_dump, or NULL. */
static const char *dump_tool(void)
{
	static char path[PATH_MAX];
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (n <= 0)
		return NULL;
	self[n] = 0;
	for (int i = 0; i < 3; i++) {
		slash = strrchr(self, '/');
		if (!slash)
			return NULL;
		*slash = 0;
	}
	if (snprintf(path, sizeof(path), "%s/tools/stream_dump", self) >= (int)sizeof(path))
		return NULL;
	return access(path, X_OK) == 0 ? path : NULL;
}

static char test_tmpdir[] = "/tmp/vmferry-streamfmt.XXXXXX";

static void tmp_path(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/%s", test_tmpdir, name);
}

static void write_file(const char *path, const void *p, size_t len)
{
	FILE *f = fopen(path, "we");

	assert_non_null(f);
	assert_int_equal(fwrite(p, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

static bool file_equals(const char *path, const void *p, size_t len)
{
	FILE *f = fopen(path, "re");
	uint8_t *got;
	size_t n;
	bool same;

	if (!f)
		return false;
	got = malloc(len + 1);
	assert_non_null(got);
	n = fread(got, 1, len + 1, f);
	fclose(f);
	same = n == len && memcmp(got, p, len) == 0;
	free(got);
	return same;
}

/* Start the tool with @argv (NULL-terminated), output to /dev/null. */
static pid_t run_tool_async(const char *const *argv)
{
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0) {
		int devnull = open("/dev/null", O_WRONLY);

		dup2(devnull, 1);
		dup2(devnull, 2);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	return pid;
}

static int tool_wait(pid_t pid)
{
	int status;

	assert_int_equal(waitpid(pid, &status, 0), pid);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int run_tool(const char *const *argv)
{
	return tool_wait(run_tool_async(argv));
}

/* Header, 3 passes with dirty pages and zero runs, VM, 2 vCPUs, END. */
static void make_rich(struct tbuf *b)
{
	put_header(b, 2, 2, 512);
	put_ram_hdr(b, 0, MIG_RAM_FLAG_ZERO, 0, 512, 0);
	put_ram_data(b, 1, 300, 0);
	put_pass_end(b, 1);
	put_ram_data(b, 1, 3, 7);
	put_ram_data(b, 0, 1, 500);
	put_pass_end(b, 2);
	put_ram_hdr(b, 1, MIG_RAM_FLAG_ZERO, 0, 2, 9);
	put_vm_section(b, 0);
	put_cpu_section(b, 1);
	put_cpu_section(b, 0);
	put_end(b);
}

static void test_tool_file(void **state)
{
	const char *tool = dump_tool();
	struct tbuf b = { 0 };
	char in[PATH_MAX], out[PATH_MAX];

	(void)state;
	if (!tool)
		skip();
	tmp_path(in, sizeof(in), "stream.bin");
	tmp_path(out, sizeof(out), "copy.bin");
	make_rich(&b);
	write_file(in, b.p, b.len);
	{
		const char *argv[] = { tool, "--save", out, in, NULL };

		assert_int_equal(run_tool(argv), 0);
		assert_true(file_equals(out, b.p, b.len));
	}
	{
		const char *argv[] = { tool, in, "--pages", NULL };

		assert_int_equal(run_tool(argv), 0);
	}
	{
		const char *argv[] = { tool, "--save", in, in, NULL };

		assert_int_equal(run_tool(argv), 2);
		assert_true(file_equals(in, b.p, b.len)); /* not truncated */
	}
	/* Truncated, malformed, trailing garbage: 1. */
	write_file(in, b.p, b.len - 1);
	{
		const char *argv[] = { tool, in, NULL };

		assert_int_equal(run_tool(argv), 1);
	}
	b.p[0] ^= 0xff;
	write_file(in, b.p, b.len);
	{
		const char *argv[] = { tool, in, NULL };

		assert_int_equal(run_tool(argv), 1);
	}
	b.p[0] ^= 0xff;
	tbuf_u8(&b, 0);
	write_file(in, b.p, b.len);
	{
		const char *argv[] = { tool, in, NULL };

		assert_int_equal(run_tool(argv), 1);
	}
	write_file(in, "", 0);
	{
		const char *argv[] = { tool, in, NULL };

		assert_int_equal(run_tool(argv), 1);
	}
	/* Usage. */
	{
		const char *argv[] = { tool, NULL };

		assert_int_equal(run_tool(argv), 2);
	}
	{
		const char *argv[] = { tool, in, in, NULL };

		assert_int_equal(run_tool(argv), 2);
	}
	{
		const char *argv[] = { tool, "--bogus", in, NULL };

		assert_int_equal(run_tool(argv), 2);
	}
	{
		const char *argv[] = { tool, "--help", NULL };

		assert_int_equal(run_tool(argv), 0);
	}
	{
		const char *argv[] = { tool, "/nonexistent/stream", NULL };

		assert_int_equal(run_tool(argv), 1);
	}
	unlink(in);
	unlink(out);
	tbuf_free(&b);
}

static int connect_retry(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	if (strlen(path) >= sizeof(sa.sun_path))
		return -1;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	for (int i = 0; i < 500; i++) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct timespec ts = { 0, 10 * 1000 * 1000 };

		assert_true(fd >= 0);
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return fd;
		close(fd);
		nanosleep(&ts, NULL);
	}
	return -1;
}

/* Act as a migration source: send @b, read the return-path answer. */
static void listen_once(const char *tool, const struct tbuf *b, const char *save,
			int expect_code, int expect_exit)
{
	char sock[PATH_MAX], uri[PATH_MAX + 8];
	struct stream s;
	struct mig_rp_msg m;
	char err[512];
	pid_t pid;
	int fd;

	tmp_path(sock, sizeof(sock), "mig.sock");
	snprintf(uri, sizeof(uri), "unix:%s", sock);
	{
		const char *argv[] = { tool, "--timeout", "20", "--listen", uri,
				       save ? "--save" : NULL, save, NULL };

		pid = run_tool_async(argv);
	}
	fd = connect_retry(sock);
	assert_true(fd >= 0);
	/* The whole stream is bigger than the socket buffers: the tool reads as we write. */
	for (size_t off = 0; off < b->len;) {
		ssize_t w = send(fd, b->p + off, b->len - off, MSG_NOSIGNAL);

		if (w < 0)
			break; /* a malformed stream may be refused mid-way */
		off += (size_t)w;
	}
	assert_int_equal(stream_init(&s, fd, 20000), 0);
	assert_int_equal(mig_rp_read(&s, &m, err, sizeof(err)), 0);
	assert_int_equal(m.type, MIG_RP_ERROR);
	assert_int_equal(m.err, expect_code);
	assert_non_null(strstr(m.text, "stream_dump"));
	stream_release(&s);
	close(fd);
	assert_int_equal(tool_wait(pid), expect_exit);
	assert_int_equal(access(sock, F_OK), -1); /* the tool removed its socket */
}

static void test_tool_listen(void **state)
{
	const char *tool = dump_tool();
	struct tbuf b = { 0 };
	char out[PATH_MAX];

	(void)state;
	if (!tool)
		skip();
	tmp_path(out, sizeof(out), "live.bin");
	make_rich(&b);
	listen_once(tool, &b, out, -ECANCELED, 0);
	assert_true(file_equals(out, b.p, b.len));
	unlink(out);

	/* Malformed: refused with the parser's reason; the copy holds the valid prefix. */
	b.p[b.len - 1] = 0x42;
	listen_once(tool, &b, out, -EBADMSG, 1);
	assert_true(file_equals(out, b.p, b.len - 1));
	unlink(out);
	tbuf_free(&b);
}

static int group_setup(void **state)
{
	(void)state;
	return mkdtemp(test_tmpdir) ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	return rmdir(test_tmpdir);
}

/* Both urgent-channel magics load, and say where page requests go. */
static void test_urgent_magic(void **state)
{
	static const struct { uint64_t magic; size_t len; int r; bool req; } cases[] = {
		{ MIG_URGENT_MAGIC_REQ, 8, 0, true },
		{ MIG_URGENT_MAGIC, 8, 0, false },
		{ 0x4e47525546564d56ull, 8, -EBADMSG, false }, /* bytes swapped */
		{ MIG_URGENT_MAGIC_REQ, 7, -EPIPE, false },    /* truncated */
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint8_t b[8];
		struct stream s;
		char err[128] = "";
		bool req = !cases[i].req;

		for (int k = 0; k < 8; k++)
			b[k] = (uint8_t)(cases[i].magic >> (8 * k));
		stream_init_mem(&s, b, cases[i].len);
		assert_int_equal(mig_load_urgent_magic(&s, &req, err, sizeof(err)), cases[i].r);
		assert_int_equal(req, cases[i].req);
		if (cases[i].r == -EBADMSG)
			assert_non_null(strstr(err, "not a vmferry urgent channel"));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_minimal),
		cmocka_unit_test(test_section_kinds_and_parts),
		cmocka_unit_test(test_valid_limits),
		cmocka_unit_test(test_valid_any_order),
		cmocka_unit_test(test_valid_stops_at_end),
		cmocka_unit_test(test_doc_example),
		cmocka_unit_test(test_bad_header_fields),
		cmocka_unit_test(test_bad_block_names),
		cmocka_unit_test(test_bad_block_geometry),
		cmocka_unit_test(test_header_callback_refuses),
		cmocka_unit_test(test_bad_ram_records),
		cmocka_unit_test(test_bad_data_run_too_long),
		cmocka_unit_test(test_bad_record_types),
		cmocka_unit_test(test_bad_sections),
		cmocka_unit_test(test_bad_end_incomplete),
		cmocka_unit_test(test_truncated_everywhere),
		cmocka_unit_test(test_cpu_check),
		cmocka_unit_test(test_vm_parse),
		cmocka_unit_test(test_cpr_stream),
		cmocka_unit_test(test_rp_valid),
		cmocka_unit_test(test_rp_bad),
		cmocka_unit_test(test_rp_truncated),
		cmocka_unit_test(test_rp_recv_bitmap),
		cmocka_unit_test(test_rp_recv_bitmap_bad),
		cmocka_unit_test(test_rp_recv_bitmap_truncated),
		cmocka_unit_test(test_resume_start),
		cmocka_unit_test(test_resumed_records),
		cmocka_unit_test(test_tool_file),
		cmocka_unit_test(test_tool_listen),
		cmocka_unit_test(test_urgent_magic),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
