/*
 * Unit tests for stream version 2's CRCs (docs/stream-format.md): streams
 * encoded here by hand - heads, page CRCs and head CRCs laid out as the
 * document says, the CRCs from util/crc32c (tested on its own) - then a
 * byte flipped in a page, a RAM record's head, a section, a part, an
 * urgent-channel page and a resumed stream's page: each is refused before
 * the callback that would use it runs.  Also the writer's encodings against
 * the hand-made ones, PAGE_RESEND on the return path, the fuzzing switch,
 * and the destination's bookkeeping of pages that failed (suspects in
 * precopy, pages asked for again in postcopy).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <fcntl.h>
#include <libgen.h>
#include <limits.h>

#include "harness/harness.h"
#include "migration/internal.h"
#include "util/crc32c.h"

struct tbuf {
	uint8_t p[256 * 1024];
	size_t len;
};

static void put(struct tbuf *b, const void *p, size_t n)
{
	assert_true(b->len + n <= sizeof(b->p));
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void put_le(struct tbuf *b, uint64_t v, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		uint8_t x = (uint8_t)(v >> (8 * i));

		put(b, &x, 1);
	}
}

#define T_PAGES 64u
#define T_SECTION_ID 100u

/* Header of version @version: 1 vCPU, block "ram0" of 64 pages at 0. */
static void put_header(struct tbuf *b, uint32_t version)
{
	put_le(b, MIG_MAGIC, 8);
	put_le(b, version, 4);
	put_le(b, MIG_PAGE_BYTES, 4);
	put_le(b, 1, 4);
	put_le(b, 1, 4);
	for (unsigned i = 0; i < MIG_BOOT_ID_BYTES; i++)
		put_le(b, 0xb0 + i, 1);
	put_le(b, 4, 1);
	put(b, "ram0", 4);
	put_le(b, 0, 8);
	put_le(b, T_PAGES * MIG_PAGE_BYTES, 8);
}

/* Page @p's content: its number in every byte, so a misplaced page shows. */
static void page_fill(uint8_t *page, uint64_t p)
{
	memset(page, (int)(p + 1), MIG_PAGE_BYTES);
}

/* A version-2 RAM record: 17 fixed bytes, the page CRCs, the head CRC, pages. */
static void put_ram(struct tbuf *b, uint64_t first, uint32_t npages, bool zero)
{
	size_t head = b->len;
	uint8_t page[MIG_PAGE_BYTES];

	put_le(b, MIG_REC_RAM, 1);
	put_le(b, 0, 1);
	put_le(b, zero ? MIG_RAM_FLAG_ZERO : 0, 1);
	put_le(b, 0, 2);
	put_le(b, npages, 4);
	put_le(b, first, 8);
	for (uint32_t i = 0; !zero && i < npages; i++) {
		page_fill(page, first + i);
		put_le(b, crc32c(0, page, sizeof(page)), 4);
	}
	put_le(b, crc32c(0, b->p + head, b->len - head), 4);
	for (uint32_t i = 0; !zero && i < npages; i++) {
		page_fill(page, first + i);
		put(b, page, sizeof(page));
	}
}

/* A version-2 SECTION or SECTION_PART: 17 bytes, body CRC, head CRC, body. */
static void put_section(struct tbuf *b, uint8_t type, const void *body, uint32_t len)
{
	size_t head = b->len;

	put_le(b, type, 1);
	put_le(b, T_SECTION_ID, 4);
	put_le(b, 0, 4);
	put_le(b, 1, 4);
	put_le(b, len, 4);
	put_le(b, crc32c(0, body, len), 4);
	put_le(b, crc32c(0, b->p + head, 21), 4);
	put(b, body, len);
}

static const char t_body[] = "the state of a test device";

/*
 * A whole stream; the offsets of interesting bytes in @at: [0] a byte of
 * page 5's data, [1] the RAM record's first_page, [2] its first page CRC,
 * [3] the part's body, [4] the section's body, [5] the section's len.
 */
static void put_stream(struct tbuf *b, size_t at[6])
{
	put_header(b, MIG_VERSION);
	put_ram(b, 0, 2, true);
	at[1] = b->len + 9;
	at[2] = b->len + 17;
	put_ram(b, 4, 3, false);
	at[0] = b->len - 2 * MIG_PAGE_BYTES + 100; /* page 5 = the record's second */
	put_le(b, MIG_REC_PASS_END, 1);
	put_le(b, 1, 4);
	put_section(b, MIG_REC_SECTION_PART, t_body, 10);
	at[3] = b->len - 3;
	at[5] = b->len + 13;
	put_section(b, MIG_REC_SECTION, t_body, sizeof(t_body));
	at[4] = b->len - 5;
	put_le(b, MIG_REC_END, 1);
}

struct tload {
	unsigned sections, parts, ram_records, bad_pages, good_pages;
	uint64_t first_bad;
};

/* Like a destination: checks each page and counts, never fails. */
static int t_ram(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages, bool zero,
		 const uint32_t *page_crcs, struct stream *s, char *err, size_t errlen)
{
	struct tload *t = opaque;
	uint8_t page[MIG_PAGE_BYTES];

	(void)block; (void)err; (void)errlen;
	t->ram_records++;
	assert_true(zero ? page_crcs == NULL : true);
	for (uint32_t i = 0; !zero && i < npages; i++) {
		stream_get_bytes(s, page, sizeof(page));
		if (mig_page_crc_ok(page_crcs, i, page)) {
			t->good_pages++;
		} else {
			if (!t->bad_pages)
				t->first_bad = first_page + i;
			t->bad_pages++;
		}
	}
	return 0;
}

static int t_section(void *opaque, uint32_t id, uint32_t instance, uint32_t version,
		     const uint8_t *data, uint32_t len, char *err, size_t errlen)
{
	(void)id; (void)instance; (void)version; (void)err; (void)errlen;
	assert_int_equal(len, sizeof(t_body));
	assert_memory_equal(data, t_body, len);
	((struct tload *)opaque)->sections++;
	return 0;
}

static int t_part(void *opaque, uint32_t id, uint32_t instance, uint32_t version,
		  const uint8_t *data, uint32_t len, char *err, size_t errlen)
{
	(void)id; (void)instance; (void)version; (void)err; (void)errlen;
	assert_int_equal(len, 10);
	assert_memory_equal(data, t_body, len);
	((struct tload *)opaque)->parts++;
	return 0;
}

static const struct mig_section_kind t_kinds[] = {
	{ T_SECTION_ID, "test", 1, true },
};

#define T_OPS .section_kinds = t_kinds, .nsection_kinds = 1, .section = t_section, \
	      .section_part = t_part

static int load(const struct tbuf *b, const struct mig_load_ops *ops, struct tload *t,
		char *err, size_t errlen)
{
	struct mig_load_stats st;
	struct stream s;
	int r;

	memset(t, 0, sizeof(*t));
	err[0] = 0;
	stream_init_mem(&s, b->p, b->len);
	r = mig_load(&s, ops, t, &st, err, errlen);
	stream_release(&s);
	return r;
}

static void test_valid_v2(void **state)
{
	static const struct mig_load_ops ops = { T_OPS, .ram = t_ram };
	struct tbuf *b = calloc(1, sizeof(*b));
	struct tload t;
	size_t at[6];
	char err[256];

	(void)state;
	put_stream(b, at);
	assert_int_equal(load(b, &ops, &t, err, sizeof(err)), 0);
	assert_int_equal(t.ram_records, 2);
	assert_int_equal(t.good_pages, 3);
	assert_int_equal(t.bad_pages, 0);
	assert_int_equal(t.parts, 1);
	assert_int_equal(t.sections, 1);
	free(b);
}

/* Flip @off; expect @r with @needle, and no section handed on when @r. */
static void expect_flip(const struct tbuf *good, size_t off, const struct mig_load_ops *ops,
			int want, const char *needle, struct tload *t)
{
	struct tbuf *b = malloc(sizeof(*b));
	char err[256];
	int r;

	memcpy(b, good, sizeof(*b));
	b->p[off] ^= 0x20;
	r = load(b, ops, t, err, sizeof(err));
	if (r != want || (needle && !strstr(err, needle)))
		fail_msg("flip at %zu: expected %d \"%s\", got %d \"%s\"", off, want,
			 needle ? needle : "", r, err);
	free(b);
}

static void test_flips_refused(void **state)
{
	static const struct mig_load_ops ops = { T_OPS, .ram = t_ram };
	static const struct mig_load_ops skip_ops = { T_OPS, .ram = mig_load_ram_skip };
	struct tbuf *b = calloc(1, sizeof(*b));
	struct tload t;
	size_t at[6];

	(void)state;
	put_stream(b, at);
	/* Page data: the callback learns which page (a destination marks it). */
	expect_flip(b, at[0], &ops, 0, NULL, &t);
	assert_int_equal(t.bad_pages, 1);
	assert_int_equal(t.first_bad, 5);
	assert_int_equal(t.good_pages, 2);
	/* ... and the skipping callback (stream_dump) refuses it. */
	expect_flip(b, at[0], &skip_ops, -EILSEQ, "page 5 of block 0 fails its CRC check", &t);
	assert_int_equal(t.sections, 0);
	/* The head: where the pages go, or their CRCs - nothing is read on. */
	expect_flip(b, at[1], &ops, -EILSEQ, "RAM record head fails its CRC check", &t);
	assert_int_equal(t.ram_records, 1); /* the zero run before it only */
	expect_flip(b, at[2], &ops, -EILSEQ, "RAM record head fails its CRC check", &t);
	/* A part and a section: refused before their state sees them. */
	expect_flip(b, at[3], &ops, -EILSEQ, "test section 0 (a part) fails its CRC check", &t);
	assert_int_equal(t.parts, 0);
	expect_flip(b, at[4], &ops, -EILSEQ, "test section 0 fails its CRC check", &t);
	assert_int_equal(t.parts, 1);
	assert_int_equal(t.sections, 0);
	expect_flip(b, at[5], &ops, -EILSEQ, "section record head fails its CRC check", &t);
	assert_int_equal(t.sections, 0);
	free(b);
}

/* Fuzzing's switch: damaged CRCs are taken, and pages come without CRCs. */
static void test_crc_unchecked(void **state)
{
	static const struct mig_load_ops ops = { T_OPS, .ram = t_ram, .crc_unchecked = true };
	struct tbuf *b = calloc(1, sizeof(*b));
	struct tload t;
	size_t at[6];

	(void)state;
	put_stream(b, at);
	expect_flip(b, at[2], &ops, 0, NULL, &t);
	assert_int_equal(t.bad_pages, 0);
	assert_int_equal(t.good_pages, 3);
	expect_flip(b, at[1], &ops, 0, NULL, &t); /* pages 36..38 now: the parser goes on */
	assert_int_equal(t.sections, 1);
	free(b);
}

/* The writer's heads are the hand-made ones, byte for byte. */
static void test_writer_encoding(void **state)
{
	struct tbuf *b = calloc(1, sizeof(*b));
	uint8_t out[MIG_RAM_HEAD_MAX], page[MIG_PAGE_BYTES];
	uint32_t crcs[3];
	size_t n;

	(void)state;
	put_ram(b, 4, 3, false);
	for (uint32_t i = 0; i < 3; i++) {
		page_fill(page, 4 + i);
		crcs[i] = crc32c(0, page, sizeof(page));
	}
	n = mig_encode_ram_head(out, MIG_VERSION, 0, false, 3, 4, crcs);
	assert_int_equal(n, 17 + 12 + 4);
	assert_memory_equal(out, b->p, n);
	n = mig_encode_ram_head(out, 1, 0, false, 3, 4, crcs);
	assert_int_equal(n, 17);
	assert_memory_equal(out, b->p, 17);
	b->len = 0;
	put_ram(b, 0, 7, true);
	n = mig_encode_ram_head(out, MIG_VERSION, 0, true, 7, 0, NULL);
	assert_int_equal(n, b->len);
	assert_memory_equal(out, b->p, n);
	b->len = 0;
	put_section(b, MIG_REC_SECTION, t_body, sizeof(t_body));
	n = mig_encode_section_head(out, MIG_VERSION, MIG_REC_SECTION, T_SECTION_ID, 0, 1,
				    sizeof(t_body), crc32c(0, t_body, sizeof(t_body)));
	assert_int_equal(n, 25);
	assert_memory_equal(out, b->p, n);
	free(b);
}

/* The urgent channel's and a resumed main channel's pages are checked too. */
static void test_urgent_and_resumed(void **state)
{
	static const struct mig_load_ops ops = { .ram = mig_load_ram_skip };
	struct tbuf *b = calloc(1, sizeof(*b));
	struct mig_header h = { .version = MIG_VERSION, .page_bytes = MIG_PAGE_BYTES,
				.nvcpus = 1, .nblocks = 1 };
	struct stream s;
	char err[256];
	bool req;

	(void)state;
	snprintf(h.blocks[0].name, sizeof(h.blocks[0].name), "ram0");
	h.blocks[0].bytes = T_PAGES * MIG_PAGE_BYTES;
	for (unsigned i = 0; i < MIG_BOOT_ID_BYTES; i++)
		h.boot_id[i] = (uint8_t)(0xb0 + i);
	put_le(b, MIG_URGENT_MAGIC_REQ, 8);
	put_ram(b, 9, 1, false);
	b->p[b->len - 1] ^= 1;
	stream_init_mem(&s, b->p, b->len);
	assert_int_equal(mig_load_urgent_magic(&s, &req, err, sizeof(err)), 0);
	assert_int_equal(mig_load_urgent_record(&s, &h, &ops, NULL, err, sizeof(err)), -EILSEQ);
	assert_non_null(strstr(err, "page 9 of block 0 fails its CRC check"));
	stream_release(&s);

	b->len = 0;
	put_header(b, MIG_VERSION);
	put_le(b, MIG_REC_POSTCOPY_RESUME, 1);
	put_ram(b, 3, 2, false);
	b->p[b->len - 2 * MIG_PAGE_BYTES - 6] ^= 1; /* the second page's CRC, in the head */
	stream_init_mem(&s, b->p, b->len);
	assert_int_equal(mig_load_resume_start(&s, &h, err, sizeof(err)), 0);
	assert_int_equal(mig_load_resumed_record(&s, &h, &ops, NULL, err, sizeof(err)), -EILSEQ);
	assert_non_null(strstr(err, "head fails its CRC check"));
	stream_release(&s);

	/* A resumed connection must speak the paused migration's version. */
	h.version = 1;
	stream_init_mem(&s, b->p, b->len);
	assert_int_equal(mig_load_resume_start(&s, &h, err, sizeof(err)), -EBADMSG);
	stream_release(&s);
	assert_non_null(strstr(err, "not the paused migration's"));
	h.version = MIG_VERSION;

	/* A SECTION_PART on the urgent channel (a state's answer, after RUN). */
	{
		static const struct mig_load_ops part_ops = { .ram = mig_load_ram_skip,
							      .section_part = t_part };
		struct tload t = { 0 };

		b->len = 0;
		put_section(b, MIG_REC_SECTION_PART, t_body, 10);
		stream_init_mem(&s, b->p, b->len);
		assert_int_equal(mig_load_urgent_record(&s, &h, &part_ops, &t, err, sizeof(err)), 1);
		assert_int_equal(t.parts, 1);
		stream_release(&s);
		b->p[b->len - 1] ^= 1;
		stream_init_mem(&s, b->p, b->len);
		assert_int_equal(mig_load_urgent_record(&s, &h, &part_ops, &t, err, sizeof(err)),
				 -EILSEQ);
		assert_non_null(strstr(err, "(a part) fails its CRC check"));
		assert_int_equal(t.parts, 1);
		stream_release(&s);
		b->p[b->len - 1] ^= 1;
		b->p[3] ^= 1; /* the id, in the head */
		stream_init_mem(&s, b->p, b->len);
		assert_int_equal(mig_load_urgent_record(&s, &h, &part_ops, &t, err, sizeof(err)),
				 -EILSEQ);
		assert_non_null(strstr(err, "head fails its CRC check"));
		stream_release(&s);
	}
	free(b);
}

/* The version-2 bytes of docs/stream-format.md's worked example. */
static void test_doc_example(void **state)
{
	static const uint8_t zero_run[] = { 0x01, 0x00, 0x01, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00,
					    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
					    0xa4, 0x5a, 0xae, 0xfb };
	static const uint8_t data_head[] = { 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
					     0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
					     0x85, 0x89, 0x1f, 0x69, 0xcf, 0xf2, 0x4d, 0x0b };
	static const uint8_t vm_head[] = { 0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
					   0x01, 0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00,
					   0x55, 0xed, 0x08, 0xc1, 0x69, 0xa2, 0xae, 0xf2 };
	uint8_t out[MIG_RAM_HEAD_MAX], page[MIG_PAGE_BYTES] = "vmferry", body[24] = { 0 };
	uint64_t clock_ns = 2107521462, stop_ns = 1423792346660;
	uint32_t crc = crc32c(0, page, sizeof(page)), was_running = 1;

	(void)state;
	assert_int_equal(mig_encode_ram_head(out, 2, 0, true, 16, 0, NULL), sizeof(zero_run));
	assert_memory_equal(out, zero_run, sizeof(zero_run));
	assert_int_equal(mig_encode_ram_head(out, 2, 0, false, 1, 16, &crc), sizeof(data_head));
	assert_memory_equal(out, data_head, sizeof(data_head));
	memcpy(body, &clock_ns, 8);
	memcpy(body + 8, &stop_ns, 8);
	memcpy(body + 16, &was_running, 4);
	assert_int_equal(mig_encode_section_head(out, 2, MIG_REC_SECTION, 1, 0, 1, sizeof(body),
						 crc32c(0, body, sizeof(body))), sizeof(vm_head));
	assert_memory_equal(out, vm_head, sizeof(vm_head));
}

static void test_rp_page_resend(void **state)
{
	uint8_t msg[] = { 9, 0, 1, 0, 0, 0, 42, 0, 0, 0, 0, 0, 0, 0 };
	struct mig_rp_msg m;
	struct stream s;
	char err[256];

	(void)state;
	stream_init_mem(&s, msg, sizeof(msg));
	assert_int_equal(mig_rp_read(&s, &m, err, sizeof(err)), 0);
	assert_int_equal(m.type, MIG_RP_PAGE_RESEND);
	assert_int_equal(m.npages, 1);
	assert_int_equal(m.first_page, 42);
	stream_release(&s);
	msg[2] = 0; /* zero pages */
	stream_init_mem(&s, msg, sizeof(msg));
	assert_int_equal(mig_rp_read(&s, &m, err, sizeof(err)), -EBADMSG);
	stream_release(&s);
}

/* Pages read a piece at a time, each checked: which one failed. */
static void test_get_pages_checked(void **state)
{
	struct tbuf *b = calloc(1, sizeof(*b));
	uint8_t *dst = malloc(40 * MIG_PAGE_BYTES), bad[40];
	uint32_t crcs[40];
	struct stream s;

	(void)state;
	for (uint32_t i = 0; i < 40; i++) {
		uint8_t page[MIG_PAGE_BYTES];

		page_fill(page, i);
		crcs[i] = crc32c(0, page, sizeof(page));
		if (i == 3 || i == 35)
			page[7] ^= 0x80; /* damaged on the way */
		put(b, page, sizeof(page));
	}
	stream_init_mem(&s, b->p, b->len);
	assert_int_equal(mig_get_pages_checked(&s, dst, 40, crcs, bad), 2);
	for (uint32_t i = 0; i < 40; i++)
		assert_int_equal(bad[i], i == 3 || i == 35);
	stream_release(&s);
	/* without CRCs nothing is checked */
	stream_init_mem(&s, b->p, b->len);
	assert_int_equal(mig_get_pages_checked(&s, dst, 40, NULL, bad), 0);
	assert_memory_equal(dst, b->p, 40 * MIG_PAGE_BYTES);
	stream_release(&s);
	/* truncated: 0, the error kept in the stream */
	stream_init_mem(&s, b->p, b->len - 1);
	assert_int_equal(mig_get_pages_checked(&s, dst, 40, crcs, bad), 0);
	assert_int_not_equal(stream_error(&s), 0);
	stream_release(&s);
	free(dst);
	free(b);
}

/* tools/stream_dump on @path: its exit status. */
static int dump_status(const char *tool, const char *path)
{
	const char *argv[] = { tool, path, NULL };
	int null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC), raw, rc;
	pid_t pid = harness_fork_exec(argv, false, -1, null_fd, null_fd);

	close(null_fd);
	assert_true(pid > 0);
	rc = harness_reap(pid, 20000, &raw);
	return rc;
}

/* @data with byte @off flipped, in a temporary file: dump_status of it. */
static int dump_flipped(const char *tool, const uint8_t *data, size_t len, size_t off)
{
	char path[] = "/tmp/vmferry-crcdump.XXXXXX";
	uint8_t *copy = malloc(len);
	int fd = mkstemp(path), rc;

	assert_true(fd >= 0 && copy);
	memcpy(copy, data, len);
	if (off < len)
		copy[off] ^= 0x01;
	assert_int_equal(write(fd, copy, len), (ssize_t)len);
	close(fd);
	rc = dump_status(tool, path);
	unlink(path);
	free(copy);
	return rc;
}

/*
 * tools/stream_dump on a real version-2 capture (the fuzz corpus's, from a
 * paused 32 MiB guest): it takes it whole, and refuses it with a byte of a
 * page or of the cpu section flipped.  Skipped without the tool.
 */
static void test_dump_tool_v2_capture(void **state)
{
	char bin[PATH_MAX], root[PATH_MAX], tool[PATH_MAX + 32], capture[PATH_MAX + 64];
	uint8_t *data;
	long len;
	FILE *f;

	(void)state;
	snprintf(bin, sizeof(bin), "%s", harness_binary());
	snprintf(root, sizeof(root), "%s", dirname(bin)); /* build */
	snprintf(tool, sizeof(tool), "%s/tools/stream_dump", root);
	snprintf(capture, sizeof(capture), "%s/fuzz/corpus/migration_stream/real_capture_32m_v2",
		 dirname(root));
	f = fopen(capture, "re");
	if (access(tool, X_OK) || !f) {
		if (f)
			fclose(f);
		skip();
	}
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	rewind(f);
	data = malloc((size_t)len);
	assert_non_null(data);
	assert_int_equal(fread(data, 1, (size_t)len, f), (size_t)len);
	fclose(f);
	assert_int_equal(dump_flipped(tool, data, (size_t)len, SIZE_MAX), 0);
	/* its first data record, 1 page, is at byte 82 (stream_dump --pages):
	 * 25 bytes of head, then the page */
	assert_int_equal(data[82], MIG_REC_RAM);
	assert_int_equal(dump_flipped(tool, data, (size_t)len, 82 + 25 + 100), 1);
	assert_int_equal(dump_flipped(tool, data, (size_t)len, 82 + 9), 1); /* first_page */
	assert_int_equal(dump_flipped(tool, data, (size_t)len, (size_t)len - 10), 1); /* cpu */
	free(data);
}

/* The destination's bookkeeping: precopy suspects and postcopy retries. */
static void test_destination_bookkeeping(void **state)
{
	static struct migration m;
	struct mig_crc_dst c;
	struct mig_header h = { .nblocks = 1 };
	static const uint8_t bad01[2] = { 0, 1 }, bad10[2] = { 1, 0 };
	char err[256];

	(void)state;
	memset(&c, 0, sizeof(c));
	snprintf(h.blocks[0].name, sizeof(h.blocks[0].name), "ram0");
	h.blocks[0].bytes = T_PAGES * MIG_PAGE_BYTES;
	/* page 11 arrives damaged */
	assert_int_equal(mig_crc_precopy_pages(&m, &c, 0, T_PAGES, 10, 2, bad01, err,
					       sizeof(err)), 0);
	assert_int_equal(c.nsuspect, 1);
	assert_int_equal(mig_crc_precopy_verdict(&m, &c, &h, "the end", err, sizeof(err)),
			 -EBADMSG);
	assert_non_null(strstr(err, "page 11 of block ram0"));
	/* sent again, good: no longer suspect */
	assert_int_equal(mig_crc_precopy_pages(&m, &c, 0, T_PAGES, 10, 2, NULL, err,
					       sizeof(err)), 0);
	assert_int_equal(mig_crc_precopy_verdict(&m, &c, &h, "the end", err, sizeof(err)), 0);
	/* suspect, then discarded for postcopy to fetch: forgotten */
	assert_int_equal(mig_crc_precopy_pages(&m, &c, 0, T_PAGES, 10, 2, bad10, err,
					       sizeof(err)), 0);
	mig_crc_precopy_forget(&c, 0, 8, 4);
	assert_int_equal(mig_crc_precopy_verdict(&m, &c, &h, "the end", err, sizeof(err)), 0);
	assert_int_equal(atomic_load(&m.crc_suspects), 2);

	/* postcopy: asked for again once; the second failure is fatal */
	assert_int_equal(mig_crc_dst_init(&c, T_PAGES), 0);
	assert_int_equal(mig_crc_retry_mark(&c, 7, err, sizeof(err)), 0);
	assert_int_equal(mig_crc_retry_mark(&c, 9, err, sizeof(err)), 0);
	assert_false(mig_crc_retry_done(&c, 6, 2));  /* 7 here, 9 still missing */
	assert_true(mig_crc_retry_done(&c, 9, 1));   /* the last one */
	assert_false(mig_crc_retry_done(&c, 9, 1));
	assert_int_equal(mig_crc_retry_mark(&c, 7, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "page 7 failed its CRC check twice"));
	mig_crc_dst_release(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_v2),
		cmocka_unit_test(test_flips_refused),
		cmocka_unit_test(test_crc_unchecked),
		cmocka_unit_test(test_writer_encoding),
		cmocka_unit_test(test_urgent_and_resumed),
		cmocka_unit_test(test_doc_example),
		cmocka_unit_test(test_rp_page_resend),
		cmocka_unit_test(test_get_pages_checked),
		cmocka_unit_test(test_dump_tool_v2_capture),
		cmocka_unit_test(test_destination_bookkeeping),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
