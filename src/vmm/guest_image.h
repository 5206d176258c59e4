/*
 * Guest images: built-in workloads linked into the binary, or an ELF file;
 * the --guest option parser; the ELF loader.
 */
#ifndef VMFERRY_VMM_GUEST_IMAGE_H
#define VMFERRY_VMM_GUEST_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "vmferry/guest_abi.h"

struct guest_builtin {
	const char *name;
	const unsigned char *start;
	const unsigned char *end;
};
/* Generated at build time from guest/workloads/; ends with a NULL name. */
extern const struct guest_builtin guest_builtins[];

struct guest_spec {
	char name[VMF_WORKLOAD_NAME_BYTES]; /* builtin name or file basename */
	struct vmf_param params[VMF_MAX_PARAMS];
	unsigned nparams;
	const uint8_t *elf;   /* image bytes (builtin or owned_buf) */
	size_t elf_bytes;
	void *owned_buf;      /* file contents when loaded from a file */
};

/*
 * Parse "NAME|FILE[,key=value...]": NAME is a built-in workload, anything
 * containing '/' or ending in ".elf" is a file.  Values accept size suffixes
 * (K/M/G).  Returns 0, or -ENOENT (unknown guest / missing file), -EINVAL
 * (bad parameter), with a message logged.  Free with guest_spec_release().
 */
int guest_spec_parse(const char *text, struct guest_spec *out);
void guest_spec_release(struct guest_spec *spec);

/*
 * Copy the ELF's PT_LOAD segments into @ram (guest-physical 0..ram_bytes).
 * Every segment must lie inside [VMF_IMAGE_GPA, VMF_IMAGE_GPA +
 * VMF_IMAGE_MAX_BYTES).  Returns 0 and the entry point, or -ENOEXEC.
 */
int guest_image_load(const struct guest_spec *spec, uint8_t *ram,
		     uint64_t ram_bytes, uint64_t *entry_out);

/* Comma-separated list of built-in names, for help text. */
const char *guest_builtin_names(void);

#endif
