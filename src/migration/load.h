/*
 * Parsing a migration stream (format.h), independent of what consumes it:
 * the destination VMM, the stream dump tool and the fuzz target each give
 * their own callbacks.  Every field is validated before a callback sees it;
 * unknown record types and section ids are errors.
 */
#ifndef VMFERRY_MIGRATION_LOAD_H
#define VMFERRY_MIGRATION_LOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migration/format.h"
#include "migration/stream.h"

/*
 * A kind of device-state section a stream may carry: its id, a name for
 * messages, how many instances (0..instances-1; MIG_SECTION_PER_VCPU: one
 * per vCPU of the stream's header) and whether each must arrive before the
 * destination runs the guest (POSTCOPY_RUN or END).
 */
struct mig_section_kind {
	uint32_t id;
	const char *name;
	uint32_t instances;
	bool required;
};
#define MIG_SECTION_PER_VCPU 0u
#define MIG_MAX_SECTION_KINDS 32u

struct mig_load_ops {
	/*
	 * The section kinds this consumer takes (at most MIG_MAX_SECTION_KINDS);
	 * NULL: the VM's and the vCPUs' (VMSTATE_SECTION_VM, _CPU), both required.
	 */
	const struct mig_section_kind *section_kinds;
	size_t nsection_kinds;
	/* The header passed framing checks; refuse a mismatch with the local VM. */
	int (*header)(void *opaque, const struct mig_header *h, char *err, size_t errlen);
	/*
	 * A RAM record, bounds-checked against the header's block.  For a data
	 * record the callback must consume exactly npages * page bytes from @s
	 * (for instance straight into guest memory).  @page_crcs: the CRC-32C
	 * of each page (stream version 2; the record's head passed its own
	 * CRC), NULL when the stream has none (version 1, zero runs): the
	 * callback checks each page with mig_page_crc_ok before it uses it.
	 */
	int (*ram)(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages,
		   bool zero, const uint32_t *page_crcs, struct stream *s, char *err,
		   size_t errlen);
	int (*section)(void *opaque, uint32_t id, uint32_t instance, uint32_t version,
		       const uint8_t *data, uint32_t len, char *err, size_t errlen);
	/* A part of a section sent while the guest still runs (NULL: refused). */
	int (*section_part)(void *opaque, uint32_t id, uint32_t instance, uint32_t version,
			    const uint8_t *data, uint32_t len, char *err, size_t errlen);
	int (*pass_end)(void *opaque, uint32_t pass); /* may be NULL */
	/* Postcopy (NULL: refused as "postcopy not enabled here"). */
	int (*postcopy_advise)(void *opaque, char *err, size_t errlen);
	int (*postcopy_discard)(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages);
	int (*postcopy_run)(void *opaque, char *err, size_t errlen);
	/* PING: everything before it is processed; answer PONG (NULL: ignored). */
	int (*ping)(void *opaque, uint32_t id);
	/* CPR transfer: RAM is shared, check the token (NULL: refused). */
	int (*cpr)(void *opaque, const uint8_t *token, char *err, size_t errlen);
	/*
	 * Fuzzing only: a CRC that does not match is taken as if it did (and
	 * no page CRCs reach @ram), so mutated records get past the check to
	 * the checks behind it.
	 */
	bool crc_unchecked;
};

struct mig_load_stats {
	uint64_t ram_records, zero_pages, data_pages, sections, section_parts, passes;
	/* per section kind (in the order of ops->section_kinds): instances seen */
	uint64_t sections_seen[MIG_MAX_SECTION_KINDS];
	bool end_seen;
	bool postcopy_advised, postcopy_running;
	bool cpr;
	uint64_t discarded_pages;
};

/*
 * Read the stream up to and including END.  Returns 0, or the first error:
 * -EBADMSG for malformed or mismatching content (message in @err), -EILSEQ
 * for a record that fails its CRC (version 2: damaged in transit), the
 * stream's error for I/O (message in @err).  Which record may come when is
 * a table in load.c; at POSTCOPY_RUN and END every required section
 * (ops->section_kinds) must have arrived.
 */
int mig_load(struct stream *s, const struct mig_load_ops *ops, void *opaque,
	     struct mig_load_stats *stats, char *err, size_t errlen);


/* The instances of section @id that a finished mig_load() saw, as a bitmask. */
uint64_t mig_load_sections_seen(const struct mig_load_ops *ops, const struct mig_load_stats *st,
				uint32_t id);

/* Read and check only the header. */
int mig_load_header(struct stream *s, struct mig_header *h, char *err, size_t errlen);

/* A ram callback that reads and discards page data, checking the pages'
 * CRCs (dump tool, fuzzing).  0 or -EILSEQ (a page failed its CRC). */
int mig_load_ram_skip(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages,
		      bool zero, const uint32_t *page_crcs, struct stream *s, char *err,
		      size_t errlen);

/* Whether page @i of a RAM record matches its CRC (true without CRCs). */
bool mig_page_crc_ok(const uint32_t *page_crcs, uint32_t i, const void *page);
/*
 * Read a data record's @npages pages into @dst and check each against
 * @page_crcs (NULL: none), a piece at a time, while the piece is still in
 * the cache the read left it in (a whole 4 MiB run is not): bad[i] = 1 for
 * a page that fails (@bad has npages entries; untouched without CRCs).
 * Returns how many failed (0 after a stream error, which @s keeps).
 */
#define MIG_CHECK_PIECE_PAGES 32u
uint32_t mig_get_pages_checked(struct stream *s, uint8_t *dst, uint32_t npages,
			       const uint32_t *page_crcs, uint8_t *bad);

/* Write a header for the source. */
void mig_save_header(struct stream *s, const struct mig_header *h);
/*
 * Write a RAM record's head for stream @version; the caller sends the
 * @npages pages after it unless @zero.  @pages: where the pages are now
 * (their CRCs are computed from it; unused for zero runs).
 */
void mig_save_ram_head(struct stream *s, uint32_t version, uint8_t block, bool zero,
		       uint32_t npages, uint64_t first_page, const uint8_t *pages);
/* Write a whole SECTION or SECTION_PART (@type) record for stream @version. */
#define MIG_RAM_HEAD_MAX (17u + 4u * MIG_RUN_MAX_PAGES + 4u)
#define MIG_SECTION_HEAD_MAX 25u
/*
 * The same heads as bytes (for re-encoding, stream_dump --save): a RAM
 * record's (@page_crcs: npages CRCs, for a data run of version 2) and a
 * section's.  Returns the length written to @out (at most the _MAX above).
 */
size_t mig_encode_ram_head(uint8_t *out, uint32_t version, uint8_t block, bool zero,
			   uint32_t npages, uint64_t first_page, const uint32_t *page_crcs);
size_t mig_encode_section_head(uint8_t *out, uint32_t version, uint8_t type, uint32_t id,
			       uint32_t instance, uint32_t section_version, uint32_t len,
			       uint32_t body_crc);
void mig_save_section_record(struct stream *s, uint32_t version, uint8_t type, uint32_t id,
			     uint32_t instance, uint32_t section_version, const void *data,
			     uint32_t len);

/* This host's boot id (for comparing CLOCK_MONOTONIC across processes). */
void mig_boot_id(uint8_t out[MIG_BOOT_ID_BYTES]);

#endif

/* ---- return path (destination -> source) ---- */

struct mig_rp_msg {
	uint8_t type;            /* enum mig_rp_message */
	uint8_t block;           /* PAGE_REQ, PAGE_RESEND */
	uint32_t npages;         /* PAGE_REQ, PAGE_RESEND */
	uint64_t first_page;     /* PAGE_REQ, PAGE_RESEND */
	uint32_t id;             /* PONG */
	uint64_t first_run_ns;   /* RUNNING */
	uint64_t load_ns;        /* RUNNING */
	bool same_clock;         /* RUNNING: destination shares our boot id */
	int32_t err;             /* ERROR: -errno */
	char text[MIG_ERRMSG_MAX + 1]; /* ERROR */
	uint64_t bitmap_pages;   /* RECV_BITMAP: pages described (block is in @block);
				  * STATE_BITMAP: bits */
	uint8_t *bitmap;         /* RECV_BITMAP, STATE_BITMAP: (bitmap_pages + 7) / 8
				  * bytes, bit i of byte j = page (unit) 8j + i; owned:
				  * mig_rp_msg_release */
	uint32_t section_id;     /* STATE_REQ, STATE_BITMAP */
	uint32_t instance;       /* STATE_REQ, STATE_BITMAP */
	uint64_t offset;         /* STATE_REQ */
	uint32_t length;         /* STATE_REQ */
};

/*
 * Read one return-path message into @m (which must not hold a bitmap: release
 * it first).  0, -EBADMSG (message in @err), -ENOMEM, or the I/O error.  A
 * RECV_BITMAP's bits are allocated only after its length fields were checked.
 */
int mig_rp_read(struct stream *s, struct mig_rp_msg *m, char *err, size_t errlen);
/* Free what mig_rp_read allocated (a RECV_BITMAP's bits).  Any thread. */
void mig_rp_msg_release(struct mig_rp_msg *m);
/* Send RECV_BITMAP for @block: @npages bits from @bits (LSB first). */
void mig_rp_send_recv_bitmap(struct stream *s, uint8_t block, uint64_t npages, const uint8_t *bits);
void mig_rp_send_running(struct stream *s, uint64_t first_run_ns, bool same_clock, uint64_t load_ns);
void mig_rp_send_error(struct stream *s, int err, const char *text);
void mig_rp_send_page_req(struct stream *s, uint8_t block, uint64_t first_page, uint32_t npages);
/* PAGE_RESEND: the copy of these pages that arrived failed its CRC. */
void mig_rp_send_page_resend(struct stream *s, uint8_t block, uint64_t first_page,
			     uint32_t npages);
void mig_rp_send_complete(struct stream *s);
/* STATE_REQ: [@offset, +@len) of section @id's instance @instance. */
void mig_rp_send_state_req(struct stream *s, uint32_t id, uint32_t instance, uint64_t offset,
			   uint32_t len);
/* STATE_BITMAP: @nbits bits from @bits (LSB first) for section @id's @instance. */
void mig_rp_send_state_bitmap(struct stream *s, uint32_t id, uint32_t instance, uint64_t nbits,
			      const uint8_t *bits);
void mig_rp_send_pong(struct stream *s, uint32_t id);

/*
 * The urgent channel: after MIG_URGENT_MAGIC or MIG_URGENT_MAGIC_REQ, RAM
 * records and section parts (a state's requested data) only, then END.  Reads the magic; 0 or -EBADMSG.  *@requests_here
 * tells whether the source reads page requests on this connection
 * (MIG_URGENT_MAGIC_REQ).
 */
int mig_load_urgent_magic(struct stream *s, bool *requests_here, char *err, size_t errlen);
/*
 * Read one urgent-channel record against header @h: 1 = a RAM record was
 * handed to @ops->ram (a section part to @ops->section_part), 0 = END, <0
 * error.
 */
int mig_load_urgent_record(struct stream *s, const struct mig_header *h,
			   const struct mig_load_ops *ops, void *opaque, char *err, size_t errlen);

/*
 * Postcopy recovery, destination: the start of a resumed main channel, a
 * HEADER equal to @orig (the one the paused migration began with: same
 * vCPUs, blocks and boot id) followed by POSTCOPY_RESUME.  0 or -EBADMSG
 * (message in @err) or the I/O error.
 */
int mig_load_resume_start(struct stream *s, const struct mig_header *orig, char *err,
			  size_t errlen);
/*
 * One record of a resumed main channel: RAM (handed to @ops->ram), PING
 * (@ops->ping) or END.  1 = a record was handled, 0 = END, <0 error.
 */
int mig_load_resumed_record(struct stream *s, const struct mig_header *h,
			    const struct mig_load_ops *ops, void *opaque, char *err, size_t errlen);
