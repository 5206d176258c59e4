/*
 * libFuzzer target: guest RAM images for the incrementer verifier.
 *
 * The first input byte picks how the rest becomes an image:
 *  - even: the rest is the image as is (mostly exercises boot-info checks
 *    on short images, and the "past the end reads as zero" path);
 *  - odd: the rest is laid out like real RAM — the first
 *    sizeof(struct vmf_boot_info) bytes become the boot info at
 *    VMF_BOOT_INFO_GPA, each remaining byte the first byte of one page from
 *    VMF_WORK_GPA on — so the fuzzer reaches the page scan with few bytes.
 *
 * Claimed sizes (ram_bytes, ranges) are arbitrary: the verifier must check
 * them without allocating or walking memory in proportion to them.  The
 * laid-out image lives in one static buffer, cleared after each run.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <json-c/json.h>

#include "verify/verify.h"
#include "vmferry/guest_abi.h"

#define FUZZ_MAX_PAGES 2048u
#define FUZZ_IMAGE_BYTES (VMF_WORK_GPA + FUZZ_MAX_PAGES * VMF_PAGE_BYTES)

static uint8_t fuzz_image[FUZZ_IMAGE_BYTES];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_check(const uint8_t *image, uint64_t bytes)
{
	struct json_object *verdict = NULL;
	int ret = verify_guest_image(image, bytes, &verdict);

	if (ret == 0 || ret == -EBADMSG || ret == -ENOTSUP) {
		/* A verdict must exist and serialise (-ENOTSUP: a workload
		 * without verifier also gets one, saying so). */
		if (!verdict || !json_object_to_json_string(verdict))
			__builtin_trap();
	} else if (verdict) {
		__builtin_trap();
	}
	json_object_put(verdict);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t bi_bytes = sizeof(struct vmf_boot_info), npages;

	if (size < 1)
		return 0;
	if (!(data[0] & 1)) {
		fuzz_check(data + 1, size - 1);
		return 0;
	}
	data++;
	size--;
	if (size > bi_bytes + FUZZ_MAX_PAGES)
		size = bi_bytes + FUZZ_MAX_PAGES;
	memcpy(fuzz_image + VMF_BOOT_INFO_GPA, data, size < bi_bytes ? size : bi_bytes);
	npages = size > bi_bytes ? size - bi_bytes : 0;
	for (size_t i = 0; i < npages; i++)
		fuzz_image[VMF_WORK_GPA + i * VMF_PAGE_BYTES] = data[bi_bytes + i];
	fuzz_check(fuzz_image, VMF_WORK_GPA + npages * VMF_PAGE_BYTES);

	memset(fuzz_image + VMF_BOOT_INFO_GPA, 0, bi_bytes);
	for (size_t i = 0; i < npages; i++)
		fuzz_image[VMF_WORK_GPA + i * VMF_PAGE_BYTES] = 0;
	return 0;
}
