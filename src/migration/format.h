/*
 * The vmferry migration stream, version 2 (docs/stream-format.md has it
 * byte by byte).  All integers little-endian.  Zero is invalid in every
 * enum.  Version 2 adds CRC-32Cs (util/crc32c.h) to RAM and section records:
 * the record's head (every byte before the payload) ends with the CRC of
 * the head, and carries the CRC of each page (RAM) or of the body
 * (sections).  Readers take version 1 too (no CRCs).
 *
 *   source                                   destination
 *     |-- header ------------------------------->|  validate, refuse mismatch
 *     |-- RAM records (pass 1) ----------------->|  place pages
 *     |-- PASS_END, RAM records (pass n) ------->|
 *     |   ... vCPUs stop (switch-over) ...        |
 *     |-- RAM records (final dirty pages) ------>|
 *     |-- SECTION vm, SECTION cpu x N ---------->|
 *     |-- END ---------------------------------->|  load state, run vCPUs
 *     |<-------------------- RP_RUNNING / RP_ERROR|  (return path, same socket)
 *
 * With postcopy (docs/migration.md): POSTCOPY_ADVISE right after the
 * header; at the switch DISCARD records, the sections, then POSTCOPY_RUN;
 * the destination runs, asks for missing pages with RP_PAGE_REQ, which the
 * source answers on a second connection (the urgent channel, opened with
 * MIG_URGENT_MAGIC, carrying RAM records and END); the rest of RAM follows on
 * the main channel, then END; the destination answers RP_COMPLETE.  A state
 * with postcopy data (a disk's blocks, storage migration) sends it as
 * SECTION_PARTs after RUN too; the destination asks for what it lacks with
 * RP_STATE_REQ, answered with parts on the urgent channel.
 *
 * With CPR transfer (an in-place live update, docs/cpr.md) the RAM
 * blocks' memfds went over the cpr channel first; the main stream is the
 * header, CPR(token), the sections and END - no RAM record at all.
 *
 * Postcopy recovery: when a channel breaks after RUN both sides pause; the
 * source reconnects and sends the header again then POSTCOPY_RESUME; the
 * destination answers RP_RECV_BITMAP (every page it holds), an
 * RP_STATE_BITMAP per instance of each state with postcopy data, and
 * repeats its outstanding RP_PAGE_REQs; the source re-sends whatever the
 * bitmaps lack.
 */
#ifndef VMFERRY_MIGRATION_FORMAT_H
#define VMFERRY_MIGRATION_FORMAT_H

#include <stdint.h>

#define MIG_MAGIC 0x004d525453464d56ull /* "VMFSTRM\0" */
#define MIG_VERSION 2u     /* the newest: written with the stream-crc capability */
#define MIG_VERSION_MIN 1u /* oldest version read: 1 has no CRCs */
/* Whether records of stream @version carry CRCs. */
#define MIG_VERSION_HAS_CRC(version) ((version) >= 2u)
#define MIG_PAGE_BYTES 4096u
#define MIG_MAX_BLOCKS 16u
#define MIG_BLOCK_NAME_MAX 31u
#define MIG_MAX_VCPUS 32u
#define MIG_BOOT_ID_BYTES 16u
/* Longest run of data pages in one RAM record (zero runs may be longer). */
#define MIG_RUN_MAX_PAGES 1024u
#define MIG_ERRMSG_MAX 512u

enum mig_record {
	MIG_REC_RAM = 1,     /* u8 block, u8 flags, u16 0, u32 npages, u64 first_page,
			      * v2: [npages x u32 page_crc unless zero], u32 head_crc;
			      * [data unless zero] */
	MIG_REC_SECTION = 2, /* u32 id, u32 instance, u32 version, u32 len,
			      * v2: u32 body_crc, u32 head_crc; data */
	MIG_REC_PASS_END = 3,/* u32 pass */
	MIG_REC_END = 4,     /* nothing */
	MIG_REC_POSTCOPY_ADVISE = 5, /* nothing: postcopy may follow (first record) */
	MIG_REC_POSTCOPY_DISCARD = 6,/* u8 block, u32 count, count x (u64 first, u32 n) */
	MIG_REC_POSTCOPY_RUN = 7,    /* nothing: device state is complete, run now */
	MIG_REC_PING = 8,            /* u32 id: answer RP_PONG once all before it is done */
	MIG_REC_POSTCOPY_RESUME = 9, /* nothing: a new connection continues a paused postcopy
				      * (only right after the header of a resumed stream) */
	MIG_REC_CPR = 10,            /* u8 token[16]: CPR transfer - guest RAM is the memfds
				      * handed over on the cpr channel with this token; no
				      * RAM record follows (first record) */
	MIG_REC_SECTION_PART = 11,   /* u32 id, u32 instance, u32 version, u32 len, data: a
				      * part of a section, sent while the guest runs (a
				      * state's precopy iteration; docs/architecture.md) */
	MIG_REC__COUNT,
};
#define MIG_CPR_TOKEN_BYTES 16u
#define MIG_DISCARD_MAX_RUNS 4096u
/* First bytes on the urgent channel (postcopy page answers). */
#define MIG_URGENT_MAGIC 0x544e475255464d56ull /* "VMFURGNT" */
/*
 * The same, from a source that also reads page requests (PAGE_REQ messages
 * of the return path) sent back on this connection: requests then leave the
 * main connection, whose socket the bulk stream keeps busy at both ends.
 */
#define MIG_URGENT_MAGIC_REQ 0x51524752555f4d56ull /* "VM_URGRQ" */
#define MIG_RAM_FLAG_ZERO 0x1u

enum mig_rp_message {
	MIG_RP_RUNNING = 1,  /* u64 first_run_ns, u8 same_clock, u64 load_ns */
	MIG_RP_ERROR = 2,    /* u32 errno, u16 len, len bytes of text */
	MIG_RP_PAGE_REQ = 3, /* u8 block, u32 npages, u64 first_page */
	MIG_RP_COMPLETE = 4, /* nothing: every page arrived (postcopy) */
	MIG_RP_PONG = 5,     /* u32 id: every record before PING(id) is done */
	MIG_RP_RECV_BITMAP = 6, /* u8 block, u64 npages, u32 len, len bytes: pages held
				 * (postcopy recovery, first on a resumed return path) */
	MIG_RP_STATE_REQ = 7,   /* u32 section id, u32 instance, u64 offset, u32 len: a
				 * state's data the destination lacks (postcopy) */
	MIG_RP_STATE_BITMAP = 8,/* u32 section id, u32 instance, u64 nbits, u32 len, len
				 * bytes: what a state holds (postcopy recovery, after
				 * RECV_BITMAP) */
	MIG_RP_PAGE_RESEND = 9, /* as PAGE_REQ: the copy that arrived failed its CRC, send
				 * the pages again (postcopy, stream version 2) */
};
/* Bytes one STATE_REQ may ask for. */
#define MIG_STATE_REQ_MAX_BYTES (16u << 20)
/* Largest block a RECEIVED bitmap may describe: 2^27 pages (512 GiB), 16 MiB of bits. */
#define MIG_RECV_BITMAP_MAX_PAGES (1ull << 27)

struct mig_block_desc {
	char name[MIG_BLOCK_NAME_MAX + 1];
	uint64_t gpa;
	uint64_t bytes;
};

struct mig_header {
	uint32_t version;
	uint32_t page_bytes;
	uint32_t nvcpus;
	uint32_t nblocks;
	uint8_t boot_id[MIG_BOOT_ID_BYTES];
	struct mig_block_desc blocks[MIG_MAX_BLOCKS];
};

#endif
