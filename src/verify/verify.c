/*
 * Offline verifiers for guest RAM dumps.  See verify.h for the property
 * checked and the verdict format.
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

#define VERIFY_MSG_BYTES 256

/* An image: @bytes readable bytes at @data; everything beyond reads as 0. */
struct verify_image {
	const uint8_t *data;
	uint64_t bytes;
};

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

/*
 * Validate everything the scan relies on.  Returns 0, or -EBADMSG with the
 * reason in @why.
 */
static int verify_check_boot_info(const struct vmf_boot_info *bi,
				  uint64_t image_bytes, char *why, size_t why_len)
{
	static const char want[] = "incrementer";
	char name[VMF_WORKLOAD_NAME_BYTES + 1];

	if (bi->magic != VMF_BOOT_MAGIC) {
		snprintf(why, why_len, "boot info at 0x%llx: bad magic 0x%016" PRIx64
			 " (expected 0x%016llx)", VMF_BOOT_INFO_GPA, bi->magic,
			 VMF_BOOT_MAGIC);
		return -EBADMSG;
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
	if (memchr(bi->workload, 0, sizeof(bi->workload)) == NULL ||
	    strcmp(bi->workload, want) != 0) {
		verify_workload_name(bi, name);
		snprintf(why, why_len, "boot info: workload \"%s\" is not \"%s\"",
			 name, want);
		return -EBADMSG;
	}
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

/* Build the verdict of one vCPU; sets *ok false and @why on a problem. */
static struct json_object *verify_vcpu(const struct verify_image *img,
				       const struct vmf_boot_info *bi, uint32_t vcpu,
				       bool *ok, char *why, size_t why_len, int *err)
{
	const struct vmf_range *r = &bi->range[vcpu];
	const struct vmf_vcpu_stats *st = &bi->stats[vcpu];
	struct json_object *o = json_object_new_object();
	struct verify_scan s = {
		.hi = (uint8_t)(st->passes + 1),
		.lo = (uint8_t)st->passes,
	};
	char msg[VERIFY_MSG_BYTES];
	uint64_t bad_gpa;
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

	if (st->phase != VMF_PHASE_RUNNING && st->phase != VMF_PHASE_DONE) {
		snprintf(msg, sizeof(msg), "vcpu %" PRIu32 ": phase %s (%" PRIu64
			 "), expected running or done", vcpu,
			 verify_phase_name(st->phase), st->phase);
		verify_put_null(o, "edge", err);
		vcpu_ok = false;
		goto out;
	}

	verify_scan_range(img, r, &s);
	vcpu_ok = s.bad == VERIFY_BAD_NONE;
	if (vcpu_ok) {
		uint64_t edge = s.in_rest ? s.edge : r->bytes / VMF_PAGE_BYTES;

		verify_put(o, "edge", json_object_new_uint64(edge), err);
		goto out;
	}
	verify_put_null(o, "edge", err);
	bad_gpa = r->gpa + s.bad_page * VMF_PAGE_BYTES;
	if (s.bad == VERIFY_BAD_TORN)
		snprintf(msg, sizeof(msg), "vcpu %" PRIu32 ": pages %" PRIu64 "..%" PRIu64
			 " (gpa 0x%" PRIx64 ") hold %u but page %" PRIu64 " after them"
			 " holds %u (passes %" PRIu64 "; stale pages one pass behind,"
			 " or a torn range with two edges)",
			 vcpu, s.bad_page, s.torn_at - 1, bad_gpa, s.lo, s.torn_at,
			 s.hi, st->passes);
	else if (s.bad_after_edge)
		snprintf(msg, sizeof(msg), "vcpu %" PRIu32 ": page %" PRIu64
			 " (gpa 0x%" PRIx64 ") holds %u, expected %u after the edge"
			 " at page %" PRIu64 " (passes %" PRIu64 "; %s)",
			 vcpu, s.bad_page, bad_gpa, s.bad_value, s.lo, s.edge,
			 st->passes, verify_hint(&s));
	else
		snprintf(msg, sizeof(msg), "vcpu %" PRIu32 ": page %" PRIu64
			 " (gpa 0x%" PRIx64 ") holds %u, expected %u or %u"
			 " (passes %" PRIu64 "; %s)",
			 vcpu, s.bad_page, bad_gpa, s.bad_value, s.hi, s.lo,
			 st->passes, verify_hint(&s));
	verify_put(o, "bad_page", json_object_new_uint64(s.bad_page), err);
	verify_put(o, "bad_gpa", json_object_new_uint64(bad_gpa), err);
	verify_put(o, "value", json_object_new_int(s.bad_value), err);
	verify_put(o, "other_pages", json_object_new_uint64(s.other_pages), err);
out:
	verify_put(o, "ok", json_object_new_boolean(vcpu_ok), err);
	if (!vcpu_ok) {
		verify_put(o, "error", json_object_new_string(msg), err);
		if (*ok)
			snprintf(why, why_len, "%s", msg);
		*ok = false;
	}
	return o;
}

static int verify_incrementer(const struct verify_image *img,
			      struct json_object **verdict)
{
	struct vmf_boot_info bi;
	char name[VMF_WORKLOAD_NAME_BYTES + 1];
	char why[VERIFY_MSG_BYTES] = "";
	struct json_object *root, *vcpus;
	bool ok = true;
	int err = 0;

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
	if (verify_check_boot_info(&bi, img->bytes, why, sizeof(why)) < 0) {
		ok = false;
	} else {
		for (uint32_t i = 0; i < bi.nvcpus && !err; i++) {
			struct json_object *v =
				verify_vcpu(img, &bi, i, &ok, why, sizeof(why), &err);

			if (v && json_object_array_add(vcpus, v) < 0) {
				json_object_put(v);
				err = -ENOMEM;
			}
		}
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
	return ok ? 0 : -EBADMSG;
}

int verify_incrementer_image(const uint8_t *ram, uint64_t image_bytes,
			     struct json_object **verdict)
{
	struct verify_image img = { .data = ram, .bytes = image_bytes };

	if (!verdict || (!ram && image_bytes))
		return -EINVAL;
	*verdict = NULL;
	return verify_incrementer(&img, verdict);
}

int verify_incrementer_file(const char *path, struct json_object **verdict)
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
		/* One byte per page, in order: let readahead work. */
		(void)madvise(map, (size_t)st.st_size, MADV_SEQUENTIAL);
		img.data = map;
		img.bytes = (uint64_t)st.st_size;
	}
	ret = verify_incrementer(&img, verdict);
	if (map)
		munmap(map, (size_t)st.st_size);
out_close:
	close(fd);
	return ret;
}

static void verify_usage(FILE *f)
{
	fputs("usage: vmferry verify [--pretty] incrementer DUMPFILE\n"
	      "\n"
	      "Check a guest RAM dump (as written by dump-guest-memory: file offset ==\n"
	      "guest-physical address) for the incrementer workload's invariant: in each\n"
	      "vCPU range, page first bytes hold passes+1 on a prefix and passes on the\n"
	      "rest.  Prints a JSON verdict on stdout.\n"
	      "\n"
	      "exit status: 0 consistent, 1 broken (verdict says where), 2 usage or I/O error\n",
	      f);
}

int verify_main(int argc, char **argv)
{
	const char *positional[2];
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
		if (npositional == 2) {
			fprintf(stderr, "vmferry verify: unexpected argument %s\n", a);
			verify_usage(stderr);
			return VERIFY_EXIT_ERROR;
		}
		positional[npositional++] = a;
	}
	if (npositional != 2) {
		fprintf(stderr, "vmferry verify: need a workload and a dump file\n");
		verify_usage(stderr);
		return VERIFY_EXIT_ERROR;
	}
	if (strcmp(positional[0], "incrementer") != 0) {
		fprintf(stderr, "vmferry verify: unknown workload \"%s\" (known: incrementer)\n",
			positional[0]);
		return VERIFY_EXIT_ERROR;
	}

	ret = verify_incrementer_file(positional[1], &verdict);
	if (ret < 0 && ret != -EBADMSG) {
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
	if (ret == -EBADMSG)
		fprintf(stderr, "vmferry verify: BROKEN: %s\n",
			json_object_get_string(json_object_object_get(verdict, "error")));
	json_object_put(verdict);
	return ret == 0 ? VERIFY_EXIT_OK : VERIFY_EXIT_BROKEN;
}
