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
 * dirtier property (see guest/workloads/dirtier.c): for each vCPU, with
 * n = the working set in pages (the "wss" param as the guest reads it:
 * clamped to the range, rounded down to pages, at least one page),
 * W = stats[vcpu].writes and q[k] the little-endian u64 at the start of
 * page k of the range, the phase is RUNNING or DONE and
 *  - for k < n, q[k] is the largest s <= W with (s - 1) % n == k, or 0 when
 *    W < k + 1 -- except that q[W % n] may be W + 1 (a stop between the
 *    page write and the stats update);
 *  - for k >= n, q[k] == 0 (never written).
 * A stale page (older sequence number), a zeroed one, a value from the
 * future or a write beyond the working set breaks it.
 *
 * The boot info must also be sane, else the dump is rejected as broken:
 * magic, abi_version, nvcpus in 1..VMF_MAX_VCPUS, the workload name
 * NUL-terminated (and the expected one, for the per-workload functions),
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
 *    "dump": false   -- only when there is no boot info at all (bad magic):
 *                       not a guest memory dump
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
 * Check the dirtier property, as verify_incrementer_image() does the
 * incrementer one (same returns and ownership).  The verdict:
 *
 *   {"ok": bool, "workload": "dirtier", "ram_bytes": N,
 *    "vcpus": [{"vcpu": 0, "gpa": N, "pages": N, "phase": "running",
 *               "passes": N, "wss_pages": n, "writes": W, "ok": bool,
 *               -- when the phase was right: --
 *               "in_flight": bool (page W % n holds W + 1),
 *               -- when not ok: --
 *               "error": "...",
 *               -- when not ok and the phase was right: --
 *               "bad_page": k, "bad_gpa": N, "expected": s, "value": v,
 *               "bad_pages": count of offending pages}],
 *    "error": "first problem found, in words"   -- only when not ok
 *    "dump": false   -- only when there is no boot info at all (bad magic):
 *                       not a guest memory dump
 *   }
 *
 * "bad_page" is the first offending page of the range; "expected" is what
 * it should hold (W + 1 is allowed too when k == W % n).
 */
int verify_dirtier_image(const uint8_t *ram, uint64_t image_bytes,
			 struct json_object **verdict);

/* verify_dirtier_image() on a dump file; as verify_incrementer_file(). */
int verify_dirtier_file(const char *path, struct json_object **verdict);

/*
 * Check an image against the property of the workload its boot info names
 * (incrementer, dirtier or idle), with that workload's verdict.  Returns as
 * verify_incrementer_image(), and also -ENOTSUP when the workload has no
 * verifier: *verdict is then set too, with "ok": false, empty "vcpus" and
 * "error": "workload \"NAME\" has no verifier (...)".  A boot info too
 * broken to name a workload (bad magic, abi_version or nvcpus, unterminated
 * name) gives -EBADMSG.
 */
int verify_guest_image(const uint8_t *ram, uint64_t image_bytes,
		       struct json_object **verdict);

/* verify_guest_image() on a dump file; as verify_incrementer_file(). */
int verify_guest_file(const char *path, struct json_object **verdict);

/*
 * `vmferry verify [--pretty] {incrementer|dirtier|idle|auto} DUMPFILE`; argv[0]
 * is "verify"; auto dispatches on the dump's boot info.  Prints the verdict
 * JSON on stdout (and a one-line summary on stderr when broken or
 * unverifiable).  Returns the process exit status: 0 consistent, 1 broken,
 * 2 usage or I/O error, or no verifier for the dump's workload (message on
 * stderr), 3 not a guest memory dump; --help prints usage, returns 0.
 */
int verify_main(int argc, char **argv);

struct vmf_boot_info;

/* A workload parameter as the guest's vmf_param() reads it (the first slot with @key). */
uint64_t verify_param(const struct vmf_boot_info *bi, const char *key, uint64_t dflt);

/*
 * The diskwriter's disk (verify_disk.c): in each writer's region every slot
 * holds a valid record of that writer in its slot, or zeros, and with m the
 * newest record there, slot k holds the newest s <= m that goes there (no
 * hole, no stale record below m).  With @bi (the boot info of a RAM dump
 * taken at the same stop) also m == stats[w].writes (the last acknowledged
 * record) or that plus one (the one in flight).  Without @bi the layout
 * comes from the first record.  0 or -EBADMSG; *verdict always set (caller
 * owns): {"ok", "workload": "diskwriter", "disk_bytes", "writers",
 * "vcpus": [{"vcpu", "slots", "newest", "acked" (with a dump), "ok",
 * "error", "bad_slot"}], "error"}.
 */
int verify_disk_image(const uint8_t *disk, uint64_t disk_bytes, const struct vmf_boot_info *bi,
		      struct json_object **verdict);
/* `vmferry verify disk IMAGE [DUMP]`: @argv = {IMAGE[, DUMP]}.  An exit status. */
int verify_disk_main(int argc, char **argv, int json_flags);

#define VERIFY_EXIT_OK     0
#define VERIFY_EXIT_BROKEN 1
#define VERIFY_EXIT_ERROR  2
#define VERIFY_EXIT_NOT_A_DUMP 3 /* no vmferry boot info: some other file */

#endif
