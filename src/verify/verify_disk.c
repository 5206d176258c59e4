/*
 * `vmferry verify disk IMAGE [DUMP]`: the diskwriter's records on a disk
 * image, and (with a RAM dump taken at the same stop) that the guest's
 * acknowledged sequence numbers agree with them.  docs/guest-abi.md
 * "diskwriter" has the record format and the property.
 */
#include "verify/verify.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "vmferry/guest_abi.h"

#define VD_MAGIC 0x3130434552464d56ull /* "VMFREC01" */
#define VD_REC_BYTES 512u
#define VD_MAX_WRITERS 8u

static uint64_t vd_fnv(const uint8_t *p, uint32_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (uint32_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static uint64_t vd_u64(const uint8_t *p, unsigned word)
{
	uint64_t v;

	memcpy(&v, p + 8 * word, 8);
	return v;
}

static bool vd_zero(const uint8_t *p, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* Writer @w's region: every slot a valid record of @w, or zero.  0 or a message. */
static const char *vd_scan(const uint8_t *r, uint64_t slots, unsigned w, unsigned writers,
			   uint64_t *max_seq, uint64_t *bad_slot)
{
	*max_seq = 0;
	for (uint64_t k = 0; k < slots; k++) {
		const uint8_t *p = r + k * VD_REC_BYTES;
		uint64_t seq = vd_u64(p, 2);

		*bad_slot = k;
		if (vd_zero(p, VD_REC_BYTES))
			continue;
		if (vd_u64(p, 0) != VD_MAGIC)
			return "a slot holds neither a record nor zeros";
		if (vd_u64(p, 63) != vd_fnv(p, VD_REC_BYTES - 8))
			return "a record's checksum is wrong (torn or corrupted)";
		if (vd_u64(p, 1) != ((uint64_t)w | (uint64_t)writers << 32) || vd_u64(p, 3) != slots)
			return "a record of another writer or another disk layout";
		if (seq == 0 || (seq - 1) % slots != k)
			return "a record in the wrong slot";
		if (seq > *max_seq)
			*max_seq = seq;
	}
	return NULL;
}

/* With @m the newest record: slot k holds the newest s <= m in it, or zero. */
static const char *vd_holes(const uint8_t *r, uint64_t slots, uint64_t m, uint64_t *bad_slot)
{
	for (uint64_t k = 0; k < slots; k++) {
		const uint8_t *p = r + k * VD_REC_BYTES;
		uint64_t want = m >= k + 1 ? m - (m - 1 - k) % slots : 0;

		*bad_slot = k;
		if (want == 0 ? !vd_zero(p, VD_REC_BYTES) : vd_u64(p, 2) != want)
			return want == 0 ? "a record beyond the newest one" :
			       vd_zero(p, VD_REC_BYTES) ? "a hole below the newest record"
							: "a stale record below the newest one";
	}
	return NULL;
}

/* One writer's verdict; false when broken. */
static bool vd_writer(const uint8_t *disk, uint64_t region, unsigned w, unsigned writers,
		      const struct vmf_boot_info *bi, struct json_object *o, const char **why)
{
	const uint8_t *r = disk + w * region;
	uint64_t slots = region / VD_REC_BYTES, m = 0, bad = 0;
	const char *err = vd_scan(r, slots, w, writers, &m, &bad);

	bool slot_error;

	if (!err)
		err = vd_holes(r, slots, m, &bad);
	slot_error = err != NULL;
	json_object_object_add(o, "vcpu", json_object_new_int((int)w));
	json_object_object_add(o, "slots", json_object_new_uint64(slots));
	json_object_object_add(o, "newest", json_object_new_uint64(m));
	if (!err && bi) {
		uint64_t acked = bi->stats[w].writes;

		json_object_object_add(o, "acked", json_object_new_uint64(acked));
		/* The one request in flight at the stop may be on disk, not yet acknowledged. */
		if (m < acked)
			err = "an acknowledged record is missing from the disk";
		else if (m > acked + 1)
			err = "the disk holds records the guest never sent (the dump is stale)";
	}
	json_object_object_add(o, "ok", json_object_new_boolean(!err));
	if (err) {
		json_object_object_add(o, "error", json_object_new_string(err));
		if (slot_error)
			json_object_object_add(o, "bad_slot", json_object_new_uint64(bad));
		*why = err;
	}
	return !err;
}

/*
 * Each writer's region: the part of the disk the diskwriter uses (its
 * "span" param in MiB, from the dump; without one, what the first record
 * says: its slots), in equal shares of whole 4 KiB.
 */
static uint64_t vd_region(const uint8_t *disk, uint64_t disk_bytes,
			  const struct vmf_boot_info *bi, unsigned writers)
{
	uint64_t span = disk_bytes;

	if (bi) {
		uint64_t mib = verify_param(bi, "span", 0);

		if (mib && mib < disk_bytes >> 20)
			span = mib << 20;
	} else if (vd_u64(disk, 3) && vd_u64(disk, 3) <= disk_bytes / writers / VD_REC_BYTES) {
		return vd_u64(disk, 3) * VD_REC_BYTES; /* the first record's slots */
	}
	return span / writers / 4096 * 4096;
}

int verify_disk_image(const uint8_t *disk, uint64_t disk_bytes, const struct vmf_boot_info *bi,
		      struct json_object **verdict)
{
	struct json_object *v = json_object_new_object(), *arr = json_object_new_array();
	unsigned writers = 0;
	const char *why = NULL;
	uint64_t region;
	bool ok = true;

	*verdict = v;
	if (bi) {
		writers = bi->nvcpus < VD_MAX_WRITERS ? bi->nvcpus : VD_MAX_WRITERS;
		if (bi->magic != VMF_BOOT_MAGIC || bi->abi_version != VMF_ABI_VERSION ||
		    strncmp(bi->workload, "diskwriter", sizeof(bi->workload)) || !writers)
			why = "the dump is not of a diskwriter guest (boot info)";
	} else if (disk_bytes >= VD_REC_BYTES && vd_u64(disk, 0) == VD_MAGIC) {
		writers = (unsigned)(vd_u64(disk, 1) >> 32); /* the first record says */
		if (writers == 0 || writers > VD_MAX_WRITERS)
			why = "the first record names an impossible number of writers";
	}
	region = writers ? vd_region(disk, disk_bytes, bi, writers) : 0;
	if (!why && writers && !region)
		why = "the disk is too small for its writers (less than 4 KiB each)";
	json_object_object_add(v, "workload", json_object_new_string("diskwriter"));
	json_object_object_add(v, "disk_bytes", json_object_new_uint64(disk_bytes));
	json_object_object_add(v, "writers", json_object_new_int((int)writers));
	for (unsigned w = 0; !why && w < writers; w++) {
		struct json_object *o = json_object_new_object();

		ok &= vd_writer(disk, region, w, writers, bi, o, &why);
		json_object_array_add(arr, o);
	}
	json_object_object_add(v, "vcpus", arr);
	json_object_object_add(v, "ok", json_object_new_boolean(ok && !why));
	if (why)
		json_object_object_add(v, "error", json_object_new_string(why));
	return why ? -EBADMSG : 0;
}

/* Map @path read-only (NULL and 0 bytes for an empty file).  0 or -errno, said. */
static int vd_map(const char *path, const uint8_t **out, uint64_t *bytes)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC), r = 0;
	void *m = NULL;

	*out = NULL;
	*bytes = 0;
	if (fd < 0 || fstat(fd, &st) < 0) {
		r = -errno;
		fprintf(stderr, "vmferry verify: %s: %s\n", path, strerror(errno));
	} else if (st.st_size > 0) {
		m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
		if (m == MAP_FAILED) {
			r = -errno;
			fprintf(stderr, "vmferry verify: cannot map %s: %s\n", path, strerror(errno));
		} else {
			*out = m;
			*bytes = (uint64_t)st.st_size;
		}
	}
	if (fd >= 0)
		close(fd);
	return r;
}

int verify_disk_main(int argc, char **argv, int json_flags)
{
	struct vmf_boot_info bi;
	struct json_object *verdict = NULL;
	const uint8_t *disk = NULL;
	uint64_t disk_bytes = 0;
	int r;

	if (argc < 1 || argc > 2) {
		fprintf(stderr, "usage: vmferry verify [--pretty] disk IMAGE [DUMP]\n");
		return VERIFY_EXIT_ERROR;
	}
	if (argc == 2) {
		int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
		ssize_t n = fd < 0 ? -1 : pread(fd, &bi, sizeof(bi), VMF_BOOT_INFO_GPA);

		if (fd >= 0)
			close(fd);
		if (n != (ssize_t)sizeof(bi)) {
			fprintf(stderr, "vmferry verify: %s: cannot read its boot info\n", argv[1]);
			return VERIFY_EXIT_ERROR;
		}
	}
	if (vd_map(argv[0], &disk, &disk_bytes))
		return VERIFY_EXIT_ERROR;
	r = verify_disk_image(disk, disk_bytes, argc == 2 ? &bi : NULL, &verdict);
	json_object_object_add(verdict, "file", json_object_new_string(argv[0]));
	printf("%s\n", json_object_to_json_string_ext(verdict, json_flags));
	if (r)
		fprintf(stderr, "vmferry verify: BROKEN: %s\n",
			json_object_get_string(json_object_object_get(verdict, "error")));
	json_object_put(verdict);
	if (disk)
		munmap((void *)disk, disk_bytes);
	return r ? VERIFY_EXIT_BROKEN : VERIFY_EXIT_OK;
}
