/*
 * Offline verifiers for guest RAM dumps.  See verify.h for the properties
 * checked and the verdict format.
 *
 * One driver (verify_run) reads and checks the boot info, picks the
 * workload (given, or named by the boot info) and builds the verdict; each
 * workload only checks one vCPU's memory (its check_vcpu hook).
 */
#include "verify/verify.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "util/log.h"
#include "vmferry/guest_abi.h"
#include "vmferry/page_pattern.h"

#define VERIFY_MSG_BYTES 320

/* An image: @bytes readable bytes at @data; everything beyond reads as 0. */
struct verify_image {
	const uint8_t *data;
	uint64_t bytes;
};

/*
 * A workload verifier.  check_vcpu adds the workload's keys to the vCPU's
 * verdict @o (the common ones are there already), checks vCPU @vcpu's
 * memory and returns true when it is consistent, else false with the
 * problem in @msg.  The boot info has passed every check of verify_run().
 */
struct verify_workload {
	const char *name;
	bool (*check_vcpu)(const struct verify_image *img,
			   const struct vmf_boot_info *bi, uint32_t vcpu,
			   struct json_object *o, char *msg, size_t msg_len,
			   int *err);
};

/* Add @val under @key; sticky -ENOMEM in *err, @val consumed either way. */
static void verify_put(struct json_object *obj, const char *key,
		       struct json_object *val, int *err)
{
	if (!val || json_object_object_add(obj, key, val) < 0) {
		json_object_put(val);
		*err = -ENOMEM;
	}
}

static void verify_put_null(struct json_object *obj, const char *key, int *err)
{
	if (json_object_object_add(obj, key, NULL) < 0)
		*err = -ENOMEM;
}

static const char *verify_phase_name(uint64_t phase)
{
	switch (phase) {
	case VMF_PHASE_BOOTING: return "booting";
	case VMF_PHASE_SETUP:   return "setup";
	case VMF_PHASE_RUNNING: return "running";
	case VMF_PHASE_DONE:    return "done";
	default:                return "invalid";
	}
}

/* Copy the boot info out of the image (zero-filled beyond its end). */
static void verify_read_boot_info(const struct verify_image *img,
				  struct vmf_boot_info *bi)
{
	uint64_t avail = 0;

	memset(bi, 0, sizeof(*bi));
	if (img->bytes > VMF_BOOT_INFO_GPA)
		avail = img->bytes - VMF_BOOT_INFO_GPA;
	if (avail > sizeof(*bi))
		avail = sizeof(*bi);
	if (avail)
		memcpy(bi, img->data + VMF_BOOT_INFO_GPA, (size_t)avail);
}

/* The little-endian u64 at @gpa; bytes beyond the image read as 0. */
static uint64_t verify_read_u64(const struct verify_image *img, uint64_t gpa)
{
	uint8_t b[8] = { 0 };
	uint64_t v = 0;

	if (gpa < img->bytes) {
		uint64_t avail = img->bytes - gpa;

		memcpy(b, img->data + gpa, (size_t)(avail < 8 ? avail : 8));
	}
	for (int i = 7; i >= 0; i--)
		v = v << 8 | b[i];
	return v;
}

/* The workload name as printable ASCII, for messages and the verdict. */
static void verify_workload_name(const struct vmf_boot_info *bi,
				 char out[VMF_WORKLOAD_NAME_BYTES + 1])
{
	size_t i;

	for (i = 0; i < VMF_WORKLOAD_NAME_BYTES && bi->workload[i]; i++) {
		unsigned char c = (unsigned char)bi->workload[i];

		out[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
	}
	out[i] = 0;
}

uint64_t verify_param(const struct vmf_boot_info *bi, const char *key,
			     uint64_t dflt)
{
	for (unsigned i = 0; i < VMF_MAX_PARAMS; i++)
		if (bi->params[i].key[0] &&
		    strncmp(bi->params[i].key, key, VMF_PARAM_KEY_BYTES) == 0)
			return bi->params[i].value;
	return dflt;
}

/*
 * The header that says this is a vmferry boot info at all.  Returns 0,
 * -ENOEXEC when there is no boot info (not a guest memory dump), or
 * -EBADMSG with the reason in @why.
 */
static int verify_check_header(const struct vmf_boot_info *bi, char *why,
			       size_t why_len)
{
	if (bi->magic != VMF_BOOT_MAGIC) {
		snprintf(why, why_len, "boot info at 0x%llx: bad magic 0x%016" PRIx64
			 " (expected 0x%016llx)", VMF_BOOT_INFO_GPA, bi->magic,
			 VMF_BOOT_MAGIC);
		return -ENOEXEC;
	}
	if (bi->abi_version != VMF_ABI_VERSION) {
		snprintf(why, why_len, "boot info: abi_version %" PRIu32 " (expected %u)",
			 bi->abi_version, VMF_ABI_VERSION);
		return -EBADMSG;
	}
	if (bi->nvcpus < 1 || bi->nvcpus > VMF_MAX_VCPUS) {
		snprintf(why, why_len, "boot info: nvcpus %" PRIu32 " not in 1..%u",
			 bi->nvcpus, VMF_MAX_VCPUS);
		return -EBADMSG;
	}
	return 0;
}

/*
 * RAM size and vCPU ranges: everything the page scans rely on.  Returns 0,
 * or -EBADMSG with the reason in @why.
 */
static int verify_check_layout(const struct vmf_boot_info *bi,
			       uint64_t image_bytes, char *why, size_t why_len)
{
	if (bi->ram_bytes % VMF_PAGE_BYTES || bi->ram_bytes < VMF_WORK_GPA ||
	    bi->ram_bytes > (VMF_MAX_RAM_GIB << 30)) {
		snprintf(why, why_len, "boot info: ram_bytes %" PRIu64
			 " not page aligned or not in %llu..%llu", bi->ram_bytes,
			 VMF_WORK_GPA, VMF_MAX_RAM_GIB << 30);
		return -EBADMSG;
	}
	if (image_bytes > bi->ram_bytes) {
		snprintf(why, why_len, "image is %" PRIu64 " bytes but boot info says"
			 " ram_bytes %" PRIu64, image_bytes, bi->ram_bytes);
		return -EBADMSG;
	}
	for (uint32_t i = 0; i < bi->nvcpus; i++) {
		const struct vmf_range *r = &bi->range[i];

		if (r->bytes == 0 || r->gpa % VMF_PAGE_BYTES || r->bytes % VMF_PAGE_BYTES) {
			snprintf(why, why_len, "boot info: vcpu %" PRIu32 " range gpa 0x%"
				 PRIx64 " bytes 0x%" PRIx64 " empty or not page aligned",
				 i, r->gpa, r->bytes);
			return -EBADMSG;
		}
		/* ram_bytes <= 64 GiB, so the subtraction cannot wrap. */
		if (r->gpa < VMF_WORK_GPA || r->gpa > bi->ram_bytes ||
		    r->bytes > bi->ram_bytes - r->gpa) {
			snprintf(why, why_len, "boot info: vcpu %" PRIu32 " range gpa 0x%"
				 PRIx64 " bytes 0x%" PRIx64 " outside workload memory"
				 " 0x%llx..0x%" PRIx64, i, r->gpa, r->bytes,
				 VMF_WORK_GPA, bi->ram_bytes);
			return -EBADMSG;
		}
		for (uint32_t j = 0; j < i; j++) {
			const struct vmf_range *o = &bi->range[j];

			if (r->gpa < o->gpa + o->bytes && o->gpa < r->gpa + r->bytes) {
				snprintf(why, why_len, "boot info: vcpu %" PRIu32
					 " range 0x%" PRIx64 "+0x%" PRIx64 " overlaps vcpu %"
					 PRIu32 " range 0x%" PRIx64 "+0x%" PRIx64,
					 i, r->gpa, r->bytes, j, o->gpa, o->bytes);
				return -EBADMSG;
			}
		}
	}
	return 0;
}

/* True when vCPU @vcpu is RUNNING or DONE, else false with @msg set. */
static bool verify_phase_ok(const struct vmf_boot_info *bi, uint32_t vcpu,
			    char *msg, size_t msg_len)
{
	uint64_t phase = bi->stats[vcpu].phase;

	if (phase == VMF_PHASE_RUNNING || phase == VMF_PHASE_DONE)
		return true;
	snprintf(msg, msg_len, "vcpu %" PRIu32 ": phase %s (%" PRIu64
		 "), expected running or done", vcpu, verify_phase_name(phase), phase);
	return false;
}

/* ---- incrementer ---- */

/*
 * Scan state of one vCPU range: a prefix of `hi` then the rest at `lo`.
 * The first problem found is kept:
 *  - VERIFY_BAD_VALUE: page bad_page holds a value that is neither;
 *  - VERIFY_BAD_TORN: `hi` reappears at page torn_at after the edge, so
 *    pages [bad_page = edge, torn_at) hold `lo` between `hi` pages: they are
 *    stale (one pass behind), or the range has two edges.
 */
enum verify_bad { VERIFY_BAD_NONE, VERIFY_BAD_VALUE, VERIFY_BAD_TORN };

struct verify_scan {
	uint8_t hi;            /* (passes + 1) mod 256 */
	uint8_t lo;            /* passes mod 256 */
	bool in_rest;          /* the edge has been seen */
	uint64_t edge;         /* first page holding lo, valid when in_rest */
	enum verify_bad bad;
	uint64_t bad_page;
	uint64_t torn_at;
	uint8_t bad_value;
	bool bad_after_edge;   /* VERIFY_BAD_VALUE found after the edge */
	uint64_t other_pages;  /* pages holding neither hi nor lo */
};

/* Feed @count consecutive pages, from page @page on, all holding @value. */
static void verify_scan_pages(struct verify_scan *s, uint64_t page,
			      uint8_t value, uint64_t count)
{
	if (value == s->lo) {
		if (!s->in_rest) {
			s->in_rest = true;
			s->edge = page;
		}
		return;
	}
	if (value == s->hi) {
		if (s->in_rest && s->bad == VERIFY_BAD_NONE) {
			s->bad = VERIFY_BAD_TORN;
			s->bad_page = s->edge;
			s->torn_at = page;
			s->bad_value = s->lo;
		}
		return;
	}
	s->other_pages += count;
	if (s->bad == VERIFY_BAD_NONE) {
		s->bad = VERIFY_BAD_VALUE;
		s->bad_after_edge = s->in_rest;
		s->bad_page = page;
		s->bad_value = value;
	}
}

static void verify_scan_range(const struct verify_image *img,
			      const struct vmf_range *r, struct verify_scan *s)
{
	uint64_t npages = r->bytes / VMF_PAGE_BYTES;

	for (uint64_t i = 0; i < npages; i++) {
		uint64_t gpa = r->gpa + i * VMF_PAGE_BYTES;

		if (gpa >= img->bytes) {
			/* The rest of the range is past the image: all zero. */
			verify_scan_pages(s, i, 0, npages - i);
			return;
		}
		verify_scan_pages(s, i, img->data[gpa], 1);
	}
}

/* A hint at what kind of damage a wrong byte looks like. */
static const char *verify_hint(const struct verify_scan *s)
{
	uint8_t v = s->bad_value;

	if (v == (uint8_t)(s->lo - 1))
		return "one pass behind: stale page";
	if (v == 0)
		return "zero: lost page?";
	if (v == (uint8_t)(s->hi + 1))
		return "ahead of the guest's pass count";
	return "garbage";
}

static bool verify_incrementer_vcpu(const struct verify_image *img,
				    const struct vmf_boot_info *bi, uint32_t vcpu,
				    struct json_object *o, char *msg, size_t msg_len,
				    int *err)
{
	const struct vmf_range *r = &bi->range[vcpu];
	const struct vmf_vcpu_stats *st = &bi->stats[vcpu];
	struct verify_scan s = {
		.hi = (uint8_t)(st->passes + 1),
		.lo = (uint8_t)st->passes,
	};
	uint64_t bad_gpa;

	if (!verify_phase_ok(bi, vcpu, msg, msg_len)) {
		verify_put_null(o, "edge", err);
		return false;
	}
	verify_scan_range(img, r, &s);
	if (s.bad == VERIFY_BAD_NONE) {
		uint64_t edge = s.in_rest ? s.edge : r->bytes / VMF_PAGE_BYTES;

		verify_put(o, "edge", json_object_new_uint64(edge), err);
		return true;
	}
	verify_put_null(o, "edge", err);
	bad_gpa = r->gpa + s.bad_page * VMF_PAGE_BYTES;
	if (s.bad == VERIFY_BAD_TORN)
		snprintf(msg, msg_len, "vcpu %" PRIu32 ": pages %" PRIu64 "..%" PRIu64
			 " (gpa 0x%" PRIx64 ") hold %u but page %" PRIu64 " after them"
			 " holds %u (passes %" PRIu64 "; stale pages one pass behind,"
			 " or a torn range with two edges)",
			 vcpu, s.bad_page, s.torn_at - 1, bad_gpa, s.lo, s.torn_at,
			 s.hi, st->passes);
	else if (s.bad_after_edge)
		snprintf(msg, msg_len, "vcpu %" PRIu32 ": page %" PRIu64
			 " (gpa 0x%" PRIx64 ") holds %u, expected %u after the edge"
			 " at page %" PRIu64 " (passes %" PRIu64 "; %s)",
			 vcpu, s.bad_page, bad_gpa, s.bad_value, s.lo, s.edge,
			 st->passes, verify_hint(&s));
	else
		snprintf(msg, msg_len, "vcpu %" PRIu32 ": page %" PRIu64
			 " (gpa 0x%" PRIx64 ") holds %u, expected %u or %u"
			 " (passes %" PRIu64 "; %s)",
			 vcpu, s.bad_page, bad_gpa, s.bad_value, s.hi, s.lo,
			 st->passes, verify_hint(&s));
	verify_put(o, "bad_page", json_object_new_uint64(s.bad_page), err);
	verify_put(o, "bad_gpa", json_object_new_uint64(bad_gpa), err);
	verify_put(o, "value", json_object_new_int(s.bad_value), err);
	verify_put(o, "other_pages", json_object_new_uint64(s.other_pages), err);
	return false;
}

/* ---- dirtier ---- */

/*
 * Scan state of one dirtier vCPU.  Page k < wss_pages must hold
 * verify_dirtier_expected(writes, wss_pages, k), except that page
 * next_page may hold writes + 1 (stopped between the page write and the
 * stats update); pages from wss_pages on must hold 0.  The first offending
 * page is kept.
 */
struct verify_dirtier_scan {
	const struct verify_image *img;
	uint32_t vcpu;
	bool check;           /* check=1: page bodies hold the pattern too */
	uint64_t wss_pages;
	uint64_t writes;
	uint64_t next_page;   /* writes % wss_pages: where writes + 1 goes */
	bool in_flight;       /* next_page holds writes + 1 */
	bool bad;
	uint64_t bad_page;
	uint64_t expected;    /* what bad_page should hold */
	uint64_t value;       /* what it holds */
	uint32_t bad_word;    /* 0: the sequence number; else a body word */
	uint64_t bad_pages;   /* offending pages in all */
};

/* The working set in pages, computed exactly as guest/workloads/dirtier.c. */
static uint64_t verify_dirtier_wss_pages(const struct vmf_boot_info *bi,
					 uint32_t vcpu)
{
	uint64_t range_pages = bi->range[vcpu].bytes / VMF_PAGE_BYTES;
	uint64_t wss_bytes = verify_param(bi, "wss", 0);
	uint64_t npages = range_pages;

	if (wss_bytes && wss_bytes / VMF_PAGE_BYTES < range_pages)
		npages = wss_bytes / VMF_PAGE_BYTES ? wss_bytes / VMF_PAGE_BYTES : 1;
	return npages;
}

/*
 * The sequence number page @k (< @npages) holds after @writes writes: the
 * largest s <= writes with (s - 1) % npages == k, or 0 when there is none.
 * k < npages <= 2^24, so k + 1 cannot wrap.
 */
static uint64_t verify_dirtier_expected(uint64_t writes, uint64_t npages,
					uint64_t k)
{
	if (writes < k + 1)
		return 0;
	return k + 1 + (writes - k - 1) / npages * npages;
}

static void verify_dirtier_bad(struct verify_dirtier_scan *s, uint64_t page,
			       uint64_t expected, uint64_t value, uint64_t count)
{
	s->bad_pages += count;
	if (s->bad)
		return;
	s->bad = true;
	s->bad_page = page;
	s->expected = expected;
	s->value = value;
}

/* What word @i (1..511) of page @k holds after write @seq (0: none). */
static uint64_t verify_dirtier_body_word(const struct verify_dirtier_scan *s, uint64_t k,
					 uint64_t seq, uint32_t i)
{
	return seq ? vmf_pattern_word(vmf_pattern_key(s->vcpu, k, seq), i) : 0;
}

/*
 * check=1: the body of page @k at @gpa holds the pattern of write @seq; a
 * word may hold that of write @alt instead (not 0: the page the guest was
 * filling when it stopped, word 0 last, so its body may be part new).  The
 * first wrong word is recorded as the page's damage.
 */
static void verify_dirtier_body(struct verify_dirtier_scan *s, uint64_t k, uint64_t gpa,
				uint64_t seq, uint64_t alt)
{
	for (uint32_t i = 1; i < VMF_PATTERN_WORDS; i++) {
		uint64_t got = verify_read_u64(s->img, gpa + (uint64_t)i * 8);
		uint64_t want = verify_dirtier_body_word(s, k, seq, i);

		if (got == want || (alt && got == verify_dirtier_body_word(s, k, alt, i)))
			continue;
		if (!s->bad)
			s->bad_word = i;
		verify_dirtier_bad(s, k, want, got, 1);
		return;
	}
}

static void verify_dirtier_page(struct verify_dirtier_scan *s, uint64_t k, uint64_t gpa,
				uint64_t value)
{
	uint64_t want = 0;
	bool next = k == s->next_page && s->writes != UINT64_MAX;

	if (k < s->wss_pages)
		want = verify_dirtier_expected(s->writes, s->wss_pages, k);
	if (value != want && next && value == s->writes + 1) {
		s->in_flight = true;
		want = value;
	}
	if (value != want) {
		verify_dirtier_bad(s, k, want, value, 1);
		return;
	}
	if (s->check)
		verify_dirtier_body(s, k, gpa, want,
				    next && !s->in_flight ? s->writes + 1 : 0);
}

static void verify_dirtier_scan_range(const struct verify_image *img,
				      const struct vmf_range *r,
				      struct verify_dirtier_scan *s)
{
	uint64_t npages = r->bytes / VMF_PAGE_BYTES;

	for (uint64_t k = 0; k < npages; k++) {
		uint64_t gpa = r->gpa + k * VMF_PAGE_BYTES;
		uint64_t written_end;

		if (gpa < img->bytes) {
			verify_dirtier_page(s, k, gpa, verify_read_u64(img, gpa));
			continue;
		}
		/*
		 * The rest of the range is past the image: all zero, which is
		 * right for pages never written, i.e. from min(writes,
		 * wss_pages) on, and wrong before.  Counted, not walked.
		 */
		written_end = s->writes < s->wss_pages ? s->writes : s->wss_pages;
		if (k < written_end)
			verify_dirtier_bad(s, k, verify_dirtier_expected(s->writes,
					   s->wss_pages, k), 0, written_end - k);
		return;
	}
}

/* What kind of damage the first offending page looks like, in @buf. */
static const char *verify_dirtier_hint(const struct verify_dirtier_scan *s,
				       char *buf, size_t len)
{
	uint64_t v = s->value, n = s->wss_pages;

	if (v == 0)
		return "zero: lost page?";
	if (s->writes != UINT64_MAX && v == s->writes + 1) {
		snprintf(buf, len, "from the future: writes + 1, but the next write"
			 " goes to page %" PRIu64, s->next_page);
		return buf;
	}
	if (v > s->writes)
		return "from the future: newer than writes";
	if ((v - 1) % n != s->bad_page)
		return "not a sequence number of this page: garbage";
	snprintf(buf, len, "older sequence number: stale page, %" PRIu64
		 " pass%s behind", (s->expected - v) / n,
		 (s->expected - v) / n == 1 ? "" : "es");
	return buf;
}

static bool verify_dirtier_vcpu(const struct verify_image *img,
				const struct vmf_boot_info *bi, uint32_t vcpu,
				struct json_object *o, char *msg, size_t msg_len,
				int *err)
{
	const struct vmf_range *r = &bi->range[vcpu];
	struct verify_dirtier_scan s = {
		.img = img,
		.vcpu = vcpu,
		.check = verify_param(bi, "check", 0) != 0,
		.wss_pages = verify_dirtier_wss_pages(bi, vcpu),
		.writes = bi->stats[vcpu].writes,
	};
	char hint[96], or_next[40] = "";
	uint64_t bad_gpa;

	s.next_page = s.writes % s.wss_pages;
	verify_put(o, "wss_pages", json_object_new_uint64(s.wss_pages), err);
	verify_put(o, "writes", json_object_new_uint64(s.writes), err);
	if (!verify_phase_ok(bi, vcpu, msg, msg_len))
		return false;
	verify_dirtier_scan_range(img, r, &s);
	verify_put(o, "in_flight", json_object_new_boolean(s.in_flight), err);
	if (!s.bad)
		return true;

	bad_gpa = r->gpa + s.bad_page * VMF_PAGE_BYTES;
	if (s.bad_word) {
		snprintf(msg, msg_len, "vcpu %" PRIu32 ": page %" PRIu64 " (gpa 0x%" PRIx64
			 ") word %" PRIu32 " holds %#" PRIx64 ", expected %#" PRIx64 " (the"
			 " pattern of write %" PRIu64 "; writes %" PRIu64 "): corrupted body",
			 vcpu, s.bad_page, bad_gpa, s.bad_word, s.value, s.expected,
			 verify_read_u64(img, bad_gpa), s.writes);
	} else if (s.bad_page >= s.wss_pages) {
		snprintf(msg, msg_len, "vcpu %" PRIu32 ": page %" PRIu64 " (gpa 0x%"
			 PRIx64 ") holds %" PRIu64 ", expected 0 (beyond the working"
			 " set of %" PRIu64 " pages: never written)", vcpu,
			 s.bad_page, bad_gpa, s.value, s.wss_pages);
	} else {
		if (s.bad_page == s.next_page && s.writes != UINT64_MAX)
			snprintf(or_next, sizeof(or_next), " or %" PRIu64, s.writes + 1);
		snprintf(msg, msg_len, "vcpu %" PRIu32 ": page %" PRIu64 " (gpa 0x%"
			 PRIx64 ") holds %" PRIu64 ", expected %" PRIu64 "%s (writes %"
			 PRIu64 ", wss_pages %" PRIu64 "; %s)", vcpu, s.bad_page,
			 bad_gpa, s.value, s.expected, or_next, s.writes, s.wss_pages,
			 verify_dirtier_hint(&s, hint, sizeof(hint)));
	}
	verify_put(o, "bad_page", json_object_new_uint64(s.bad_page), err);
	verify_put(o, "bad_gpa", json_object_new_uint64(bad_gpa), err);
	verify_put(o, "expected", json_object_new_uint64(s.expected), err);
	verify_put(o, "value", json_object_new_uint64(s.value), err);
	verify_put(o, "bad_pages", json_object_new_uint64(s.bad_pages), err);
	if (s.bad_word)
		verify_put(o, "bad_word", json_object_new_uint64(s.bad_word), err);
	return false;
}

/* ---- idle ---- */

/* What word @i (a multiple of 8) of a vCPU range holds after the idle
 * guest's fill=1, exactly as guest/workloads/idle.c writes it. */
static uint64_t verify_idle_word(uint64_t i)
{
	return (i * 0x9e3779b97f4a7c15ull) | 1;
}

/*
 * idle: with fill=1 the first word of every 64-byte line of the range holds
 * verify_idle_word(its word index) and the other words 0; without fill the
 * range is all zeros.  Nothing changes once the vCPU runs.
 */
static bool verify_idle_vcpu(const struct verify_image *img, const struct vmf_boot_info *bi,
			     uint32_t vcpu, struct json_object *o, char *msg, size_t msg_len,
			     int *err)
{
	const struct vmf_range *r = &bi->range[vcpu];
	bool fill = verify_param(bi, "fill", 0) != 0;
	uint64_t words = r->bytes / 8, bad = 0, first = 0, want_first = 0, got_first = 0;

	verify_put(o, "fill", json_object_new_boolean(fill), err);
	if (!verify_phase_ok(bi, vcpu, msg, msg_len))
		return false;
	for (uint64_t i = 0; i < words; i++) {
		uint64_t want = fill && i % 8 == 0 ? verify_idle_word(i) : 0;
		uint64_t got = verify_read_u64(img, r->gpa + i * 8);

		if (got == want)
			continue;
		if (!bad++)
			first = i, want_first = want, got_first = got;
	}
	if (!bad)
		return true;
	snprintf(msg, msg_len, "vcpu %" PRIu32 ": word %" PRIu64 " (gpa 0x%" PRIx64 ") holds %#"
		 PRIx64 ", expected %#" PRIx64 " (%" PRIu64 " words wrong)", vcpu, first,
		 r->gpa + first * 8, got_first, want_first, bad);
	verify_put(o, "bad_gpa", json_object_new_uint64(r->gpa + first * 8), err);
	verify_put(o, "expected", json_object_new_uint64(want_first), err);
	verify_put(o, "value", json_object_new_uint64(got_first), err);
	verify_put(o, "bad_words", json_object_new_uint64(bad), err);
	return false;
}

/* ---- driver ---- */

static const struct verify_workload verify_workloads[] = {
	{ "incrementer", verify_incrementer_vcpu },
	{ "dirtier", verify_dirtier_vcpu },
	{ "idle", verify_idle_vcpu },
};

#define VERIFY_KNOWN "incrementer, dirtier, idle"

static const struct verify_workload *verify_find_workload(const char *name)
{
	for (size_t i = 0; i < sizeof(verify_workloads) / sizeof(verify_workloads[0]); i++)
		if (strcmp(verify_workloads[i].name, name) == 0)
			return &verify_workloads[i];
	return NULL;
}

/*
 * The workload to check: @want, which the boot info must name, or, when
 * @want is NULL, the one the boot info names.  NULL with *ret = -EBADMSG
 * (name missing or wrong) or -ENOTSUP (no verifier), reason in @why.
 */
static const struct verify_workload *
verify_pick_workload(const struct vmf_boot_info *bi,
		     const struct verify_workload *want, int *ret,
		     char *why, size_t why_len)
{
	char name[VMF_WORKLOAD_NAME_BYTES + 1];
	bool terminated = memchr(bi->workload, 0, sizeof(bi->workload)) != NULL;
	const struct verify_workload *wl;

	verify_workload_name(bi, name);
	if (want) {
		if (terminated && strcmp(bi->workload, want->name) == 0)
			return want;
		snprintf(why, why_len, "boot info: workload \"%s\" is not \"%s\"",
			 name, want->name);
		*ret = -EBADMSG;
		return NULL;
	}
	if (!terminated) {
		snprintf(why, why_len, "boot info: workload \"%s\" is not"
			 " NUL-terminated", name);
		*ret = -EBADMSG;
		return NULL;
	}
	wl = verify_find_workload(bi->workload);
	if (!wl) {
		snprintf(why, why_len, "workload \"%s\" has no verifier (known: "
			 VERIFY_KNOWN ")", name);
		*ret = -ENOTSUP;
	}
	return wl;
}

/* Build the verdict of one vCPU; sets *ok false and @why on a problem. */
static struct json_object *verify_vcpu(const struct verify_image *img,
				       const struct vmf_boot_info *bi, uint32_t vcpu,
				       const struct verify_workload *wl,
				       bool *ok, char *why, size_t why_len, int *err)
{
	const struct vmf_range *r = &bi->range[vcpu];
	const struct vmf_vcpu_stats *st = &bi->stats[vcpu];
	struct json_object *o = json_object_new_object();
	char msg[VERIFY_MSG_BYTES] = "";
	bool vcpu_ok;

	if (!o) {
		*err = -ENOMEM;
		return NULL;
	}
	verify_put(o, "vcpu", json_object_new_int64(vcpu), err);
	verify_put(o, "gpa", json_object_new_uint64(r->gpa), err);
	verify_put(o, "pages", json_object_new_uint64(r->bytes / VMF_PAGE_BYTES), err);
	verify_put(o, "phase", json_object_new_string(verify_phase_name(st->phase)), err);
	verify_put(o, "passes", json_object_new_uint64(st->passes), err);
	vcpu_ok = wl->check_vcpu(img, bi, vcpu, o, msg, sizeof(msg), err);
	verify_put(o, "ok", json_object_new_boolean(vcpu_ok), err);
	if (!vcpu_ok) {
		verify_put(o, "error", json_object_new_string(msg), err);
		if (*ok)
			snprintf(why, why_len, "%s", msg);
		*ok = false;
	}
	return o;
}

/*
 * Check @img against @want (NULL: the workload its boot info names).
 * Returns 0, -EBADMSG or -ENOTSUP with *verdict set, or -ENOMEM.
 */
static int verify_run(const struct verify_image *img,
		      const struct verify_workload *want,
		      struct json_object **verdict)
{
	const struct verify_workload *wl = NULL;
	struct vmf_boot_info bi;
	char name[VMF_WORKLOAD_NAME_BYTES + 1];
	char why[VERIFY_MSG_BYTES] = "";
	struct json_object *root, *vcpus;
	bool ok = true;
	int err = 0, ret;

	verify_read_boot_info(img, &bi);
	root = json_object_new_object();
	vcpus = json_object_new_array();
	if (!root || !vcpus) {
		json_object_put(root);
		json_object_put(vcpus);
		return -ENOMEM;
	}
	verify_workload_name(&bi, name);
	verify_put(root, "workload", json_object_new_string(name), &err);
	verify_put(root, "ram_bytes", json_object_new_uint64(bi.ram_bytes), &err);
	ret = verify_check_header(&bi, why, sizeof(why));
	if (ret == 0)
		wl = verify_pick_workload(&bi, want, &ret, why, sizeof(why));
	if (ret == 0)
		ret = verify_check_layout(&bi, img->bytes, why, sizeof(why));
	if (ret == -ENOEXEC) {
		/* Said apart so that `vmferry verify` can tell a stray file from a broken dump. */
		verify_put(root, "dump", json_object_new_boolean(false), &err);
		ret = -EBADMSG;
	}
	if (ret < 0) {
		ok = false;
	} else {
		for (uint32_t i = 0; i < bi.nvcpus && !err; i++) {
			struct json_object *v =
				verify_vcpu(img, &bi, i, wl, &ok, why, sizeof(why), &err);

			if (v && json_object_array_add(vcpus, v) < 0) {
				json_object_put(v);
				err = -ENOMEM;
			}
		}
		if (!ok)
			ret = -EBADMSG;
	}
	verify_put(root, "vcpus", vcpus, &err);
	verify_put(root, "ok", json_object_new_boolean(ok), &err);
	if (!ok)
		verify_put(root, "error", json_object_new_string(why), &err);
	if (err) {
		json_object_put(root);
		return err;
	}
	*verdict = root;
	return ret;
}

static int verify_image(const uint8_t *ram, uint64_t image_bytes,
			const struct verify_workload *want,
			struct json_object **verdict)
{
	struct verify_image img = { .data = ram, .bytes = image_bytes };

	if (!verdict || (!ram && image_bytes))
		return -EINVAL;
	*verdict = NULL;
	return verify_run(&img, want, verdict);
}

static int verify_file(const char *path, const struct verify_workload *want,
		       struct json_object **verdict)
{
	struct verify_image img = { 0 };
	void *map = NULL;
	struct stat st;
	int fd, ret;

	if (!path || !verdict)
		return -EINVAL;
	*verdict = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		log_error("verify: cannot open %s: %s", path, strerror(-ret));
		return ret;
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		log_error("verify: cannot stat %s: %s", path, strerror(-ret));
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = -EINVAL;
		log_error("verify: %s is not a regular file", path);
		goto out_close;
	}
	if (st.st_size > 0) {
		/* MAP_NORESERVE: a dump can be GiBs; holes read as zero pages. */
		map = mmap(NULL, (size_t)st.st_size, PROT_READ,
			   MAP_PRIVATE | MAP_NORESERVE, fd, 0);
		if (map == MAP_FAILED) {
			ret = -errno;
			log_error("verify: cannot map %s (%lld bytes): %s", path,
				  (long long)st.st_size, strerror(-ret));
			goto out_close;
		}
		/* A few bytes per page, in order: let readahead work. */
		(void)madvise(map, (size_t)st.st_size, MADV_SEQUENTIAL);
		img.data = map;
		img.bytes = (uint64_t)st.st_size;
	}
	ret = verify_run(&img, want, verdict);
	if (map)
		munmap(map, (size_t)st.st_size);
out_close:
	close(fd);
	return ret;
}

int verify_incrementer_image(const uint8_t *ram, uint64_t image_bytes,
			     struct json_object **verdict)
{
	return verify_image(ram, image_bytes, verify_find_workload("incrementer"),
			    verdict);
}

int verify_incrementer_file(const char *path, struct json_object **verdict)
{
	return verify_file(path, verify_find_workload("incrementer"), verdict);
}

int verify_dirtier_image(const uint8_t *ram, uint64_t image_bytes,
			 struct json_object **verdict)
{
	return verify_image(ram, image_bytes, verify_find_workload("dirtier"), verdict);
}

int verify_dirtier_file(const char *path, struct json_object **verdict)
{
	return verify_file(path, verify_find_workload("dirtier"), verdict);
}

int verify_guest_image(const uint8_t *ram, uint64_t image_bytes,
		       struct json_object **verdict)
{
	return verify_image(ram, image_bytes, NULL, verdict);
}

int verify_guest_file(const char *path, struct json_object **verdict)
{
	return verify_file(path, NULL, verdict);
}

/* ---- vmferry verify ---- */

static void verify_usage(FILE *f)
{
	fputs("usage: vmferry verify [--pretty] WORKLOAD DUMPFILE\n"
	      "       vmferry verify [--pretty] disk IMAGE [DUMPFILE]\n"
	      "\n"
	      "Check a guest RAM dump (as written by dump-guest-memory: file offset ==\n"
	      "guest-physical address) against its workload's invariant and print a\n"
	      "JSON verdict on stdout.  WORKLOAD is one of:\n"
	      "\n"
	      "  incrementer  in each vCPU range, page first bytes hold passes+1 on a\n"
	      "               prefix and passes on the rest\n"
	      "  dirtier      in each vCPU working set, page k's first 8 bytes hold the\n"
	      "               last sequence number <= writes that went to page k (the\n"
	      "               page being written may hold writes+1); pages past the\n"
	      "               working set hold 0\n"
	      "  idle         each vCPU range holds what fill=1 wrote (the first word\n"
	      "               of every 64-byte line, the rest 0), or zeros without fill\n"
	      "  auto         the workload named in the dump's boot info\n"
	      "  disk         the diskwriter's records on a disk IMAGE: each intact, no\n"
	      "               hole below the newest; with a dump taken at the same stop\n"
	      "               also every acknowledged record there (docs/guest-abi.md)\n"
	      "\n"
	      "exit status: 0 consistent, 1 broken (verdict says where), 2 usage or I/O\n"
	      "error, or no verifier for the dump's workload, 3 the file is not a guest\n"
	      "memory dump (no vmferry boot info in it; the verdict has \"dump\": false)\n",
	      f);
}

int verify_main(int argc, char **argv)
{
	const char *positional[3];
	const struct verify_workload *want = NULL;
	int npositional = 0, flags = JSON_C_TO_STRING_PLAIN;
	struct json_object *verdict = NULL;
	bool options_done = false;
	int ret;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!options_done && a[0] == '-' && a[1]) {
			if (strcmp(a, "--") == 0) {
				options_done = true;
			} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
				verify_usage(stdout);
				return VERIFY_EXIT_OK;
			} else if (strcmp(a, "--pretty") == 0) {
				flags = JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED;
			} else {
				fprintf(stderr, "vmferry verify: unknown option %s\n", a);
				verify_usage(stderr);
				return VERIFY_EXIT_ERROR;
			}
			continue;
		}
		/* WORKLOAD DUMP, or disk IMAGE [DUMP] */
		if (npositional == 2 && strcmp(positional[0], "disk")) {
			fprintf(stderr, "vmferry verify: unexpected argument %s\n", a);
			verify_usage(stderr);
			return VERIFY_EXIT_ERROR;
		}
		if (npositional == 3) {
			fprintf(stderr, "vmferry verify: unexpected argument %s\n", a);
			verify_usage(stderr);
			return VERIFY_EXIT_ERROR;
		}
		positional[npositional++] = a;
	}
	if (npositional >= 1 && strcmp(positional[0], "disk") == 0)
		return verify_disk_main(npositional - 1, (char **)positional + 1,
					flags | JSON_C_TO_STRING_NOSLASHESCAPE);
	if (npositional != 2) {
		fprintf(stderr, "vmferry verify: need a workload and a dump file\n");
		verify_usage(stderr);
		return VERIFY_EXIT_ERROR;
	}
	if (strcmp(positional[0], "auto") != 0) {
		want = verify_find_workload(positional[0]);
		if (!want) {
			fprintf(stderr, "vmferry verify: unknown workload \"%s\" (known: "
				VERIFY_KNOWN ", auto)\n", positional[0]);
			return VERIFY_EXIT_ERROR;
		}
	}

	ret = verify_file(positional[1], want, &verdict);
	if (ret < 0 && ret != -EBADMSG && ret != -ENOTSUP) {
		/* open/stat/mmap failures were logged with their cause already */
		if (ret == -ENOMEM)
			fprintf(stderr, "vmferry verify: out of memory checking %s\n",
				positional[1]);
		return VERIFY_EXIT_ERROR;
	}
	if (json_object_object_add(verdict, "file", json_object_new_string(positional[1])) < 0) {
		json_object_put(verdict);
		fprintf(stderr, "vmferry verify: out of memory\n");
		return VERIFY_EXIT_ERROR;
	}
	printf("%s\n", json_object_to_json_string_ext(verdict,
						      flags | JSON_C_TO_STRING_NOSLASHESCAPE));
	fflush(stdout);
	if (ret < 0 && json_object_object_get_ex(verdict, "dump", NULL)) {
		fprintf(stderr, "vmferry verify: %s is not a guest memory dump: it holds no vmferry "
			"boot info (%s)\n", positional[1],
			json_object_get_string(json_object_object_get(verdict, "error")));
		json_object_put(verdict);
		return VERIFY_EXIT_NOT_A_DUMP;
	}
	if (ret < 0)
		fprintf(stderr, "vmferry verify: %s%s\n", ret == -EBADMSG ? "BROKEN: " : "",
			json_object_get_string(json_object_object_get(verdict, "error")));
	json_object_put(verdict);
	if (ret == -ENOTSUP)
		return VERIFY_EXIT_ERROR;
	return ret == 0 ? VERIFY_EXIT_OK : VERIFY_EXIT_BROKEN;
}
