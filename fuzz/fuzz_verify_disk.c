/*
 * libFuzzer target: disk images (and dumps' boot info) for `vmferry verify
 * disk` (verify_disk_image).  The first input byte says how the rest is
 * used:
 *  - bit 0: the next sizeof(struct vmf_boot_info) bytes (zero-padded when
 *    short) are a dump's boot info; without it the image is checked alone;
 *  - bit 1: with a boot info, make it a valid diskwriter one (magic, ABI,
 *    workload), so that the writer count and acknowledged sequence numbers
 *    are what the fuzzer varies;
 *  - bit 2: give every 512-byte slot that starts with the record magic its
 *    right checksum, so that the fuzzer reaches the slot, layout and hole
 *    checks behind it.
 * The rest is the disk image (at most 64 KiB, copied into a static buffer).
 * The verifier must return 0 or -EBADMSG with a verdict that serialises and
 * agrees with the return value, whatever the bytes claim.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <json-c/json.h>

#include "verify/verify.h"
#include "vmferry/guest_abi.h"

#define FUZZ_DISK_MAX (64u << 10)
#define FUZZ_REC 512u
#define FUZZ_MAGIC 0x3130434552464d56ull /* "VMFREC01" */

static uint8_t fuzz_disk[FUZZ_DISK_MAX];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t fuzz_fnv(const uint8_t *p, uint32_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (uint32_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static void fuzz_fix_checksums(uint8_t *disk, size_t bytes)
{
	for (size_t off = 0; off + FUZZ_REC <= bytes; off += FUZZ_REC) {
		uint64_t magic, sum;

		memcpy(&magic, disk + off, 8);
		if (magic != FUZZ_MAGIC)
			continue;
		sum = fuzz_fnv(disk + off, FUZZ_REC - 8);
		memcpy(disk + off + FUZZ_REC - 8, &sum, 8);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct vmf_boot_info bi;
	struct json_object *verdict = NULL, *ok;
	uint8_t mode;
	size_t n;
	int r;

	if (size < 1)
		return 0;
	mode = data[0];
	data++;
	size--;
	memset(&bi, 0, sizeof(bi));
	if (mode & 1) {
		n = size < sizeof(bi) ? size : sizeof(bi);
		memcpy(&bi, data, n);
		data += n;
		size -= n;
		if (mode & 2) {
			bi.magic = VMF_BOOT_MAGIC;
			bi.abi_version = VMF_ABI_VERSION;
			memset(bi.workload, 0, sizeof(bi.workload));
			memcpy(bi.workload, "diskwriter", 10);
		}
	}
	n = size < FUZZ_DISK_MAX ? size : FUZZ_DISK_MAX;
	memcpy(fuzz_disk, data, n);
	if (mode & 4)
		fuzz_fix_checksums(fuzz_disk, n);
	r = verify_disk_image(n ? fuzz_disk : NULL, n, (mode & 1) ? &bi : NULL, &verdict);
	if ((r != 0 && r != -EBADMSG) || !verdict || !json_object_to_json_string(verdict))
		__builtin_trap();
	ok = json_object_object_get(verdict, "ok");
	if (!ok || json_object_get_boolean(ok) != (r == 0))
		__builtin_trap();
	json_object_put(verdict);
	memset(fuzz_disk, 0, n);
	return 0;
}
