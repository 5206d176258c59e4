/*
 * Offline verifiers for guest RAM dumps (`vmferry verify`).
 *
 * A dump is a flat guest RAM image: file offset == guest-physical address.
 * It may be shorter than guest RAM (a sparse dump with trailing zero pages
 * cut off): bytes beyond the end read as zero.  The guest's RAM size, vCPU
 * count, workload and per-vCPU ranges come from struct vmf_boot_info at
 * VMF_BOOT_INFO_GPA inside the dump itself.
 *
 * incrementer property (see guest/workloads/incrementer.c): for each vCPU
 * range of n pages, with P = stats[vcpu].passes and b[i] the first byte of
 * page i, the phase is RUNNING or DONE and there is an edge k in [0, n] with
 * b[0..k-1] == (P+1) mod 256 and b[k..n-1] == P mod 256.  A lost, stale,
 * zeroed or torn page breaks it.
 *
 * The boot info must also be sane, else the dump is rejected as broken:
 * magic, abi_version, nvcpus in 1..VMF_MAX_VCPUS, workload "incrementer",
 * ram_bytes page aligned, at least VMF_WORK_GPA and at most VMF_MAX_RAM_GIB,
 * not smaller than the image, and every vCPU range non-empty, page aligned,
 * at or above VMF_WORK_GPA, inside ram_bytes and not overlapping another.
 *
 * Nothing is allocated in proportion to sizes the dump claims: pages beyond
 * the end of the image are checked as one run of zeros.
 *
 * All functions are thread-safe (no shared state).
 */
#ifndef VMFERRY_VERIFY_VERIFY_H
#define VMFERRY_VERIFY_VERIFY_H

#include <stdint.h>

struct json_object;

/*
 * Check the incrementer property on an in-memory image of @image_bytes bytes
 * (guest RAM or a prefix of it).
 *
 * Returns 0 when consistent, -EBADMSG when the property or the boot info is
 * broken, -ENOMEM when the verdict cannot be built, -EINVAL for NULL
 * arguments.  On 0 and -EBADMSG, *verdict is set to a new json-c object the
 * caller owns (json_object_put):
 *
 *   {"ok": bool, "workload": "incrementer", "ram_bytes": N,
 *    "vcpus": [{"vcpu": 0, "gpa": N, "pages": N, "phase": "running",
 *               "passes": N, "edge": k or null, "ok": bool,
 *               -- when not ok: --
 *               "error": "...",
 *               -- when not ok and the phase was right: --
 *               "bad_page": i, "bad_gpa": N, "value": v,
 *               "other_pages": count of pages holding neither P nor P+1}],
 *    "error": "first problem found, in words"   -- only when not ok
 *   }
 *
 * "edge" is the k of the property when ok, else null.  "bad_page" is the
 * first offending page: one holding a value other than P or P+1, or, when
 * P+1 reappears after the edge (a page left one pass behind, or a torn
 * range with two edges), the first page of the run holding P before it.
 * "vcpus" is empty when the boot info itself is rejected.
 */
int verify_incrementer_image(const uint8_t *ram, uint64_t image_bytes,
			     struct json_object **verdict);

/*
 * Same as verify_incrementer_image() on a dump file, read through a
 * read-only mmap.  Returns 0, -EBADMSG (verdict set), or -errno when the
 * file cannot be opened, stat'ed or mapped (logged, *verdict left NULL).
 * The file must not shrink while it is checked (the mapping would SIGBUS):
 * verify finished dumps.
 */
int verify_incrementer_file(const char *path, struct json_object **verdict);

/*
 * `vmferry verify [--pretty] incrementer DUMPFILE`; argv[0] is "verify".
 * Prints the verdict JSON on stdout (and a one-line summary on stderr when
 * broken).  Returns the process exit status: 0 consistent, 1 broken,
 * 2 usage or I/O error (message on stderr); --help prints usage, returns 0.
 */
int verify_main(int argc, char **argv);

#define VERIFY_EXIT_OK     0
#define VERIFY_EXIT_BROKEN 1
#define VERIFY_EXIT_ERROR  2

#endif
