/*
 * Fuzz the return path as the source reads it: arbitrary bytes from the
 * destination go through mig_rp_read until it fails.
 *
 * Checks beyond "no crash, no leak": every message accepted has a known
 * type and sane fields (same_clock a bool, a page request's length within
 * a run, an error's code a negative errno with printable, NUL-terminated
 * text, a received bitmap within bounds with no bit past its last page),
 * every failure has a message and leaves no bitmap behind.
 */
#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "migration/load.h"
#include "migration/stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct stream s;
	struct mig_rp_msg m;
	char err[512];
	int r;

	stream_init_mem(&s, data, size);
	for (;;) {
		size_t before = s.pos;

		err[0] = 0;
		r = mig_rp_read(&s, &m, err, sizeof(err));
		assert(s.pos <= size);
		if (r) {
			assert(r < 0 && err[0] && !m.bitmap);
			break;
		}
		assert(s.pos > before); /* progress: no endless loop on any input */
		if (m.type == MIG_RP_RUNNING) {
			assert(m.same_clock == 0 || m.same_clock == 1);
		} else if (m.type == MIG_RP_PAGE_REQ || m.type == MIG_RP_PAGE_RESEND) {
			assert(m.npages >= 1 && m.npages <= MIG_RUN_MAX_PAGES);
		} else if (m.type == MIG_RP_STATE_REQ) {
			assert(m.length >= 1 && m.length <= MIG_STATE_REQ_MAX_BYTES &&
			       m.offset <= UINT64_MAX - m.length);
		} else if (m.type == MIG_RP_STATE_BITMAP) {
			/* 0 bits allowed (a state holding nothing yet) */
			assert(m.bitmap_pages <= MIG_RECV_BITMAP_MAX_PAGES);
			if (m.bitmap_pages % 8)
				assert(!(m.bitmap[(m.bitmap_pages - 1) / 8] >> (m.bitmap_pages % 8)));
			mig_rp_msg_release(&m);
		} else if (m.type == MIG_RP_RECV_BITMAP) {
			assert(m.bitmap && m.bitmap_pages >= 1 &&
			       m.bitmap_pages <= MIG_RECV_BITMAP_MAX_PAGES);
			/* the whole bitmap is readable (ASan) and has no stray bit */
			if (m.bitmap_pages % 8)
				assert(!(m.bitmap[(m.bitmap_pages - 1) / 8] >> (m.bitmap_pages % 8)));
			mig_rp_msg_release(&m);
		} else if (m.type == MIG_RP_COMPLETE || m.type == MIG_RP_PONG) {
			/* nothing to check */
		} else {
			size_t n = strnlen(m.text, sizeof(m.text));

			assert(m.type == MIG_RP_ERROR);
			assert(m.err < 0 && m.err >= -4095);
			assert(n <= MIG_ERRMSG_MAX);
			for (size_t i = 0; i < n; i++)
				assert((unsigned char)m.text[i] >= 0x20);
		}
	}
	stream_release(&s);
	return 0;
}
