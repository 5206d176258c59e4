/*
 * Fuzz the cpr channel's receiving side (cpr_rx_message) and its ACK
 * parser.  The input is a sequence of messages, each framed as
 *   u8 nfds (low 3 bits: fds attached, 0..4), u8 ctrunc, u16 len, len bytes
 * and fed in order; attached fds are real (duplicates of /dev/null), so an
 * fd the parser keeps or drops wrongly shows up as a leak or a double close.
 * The whole input is also parsed as an ACK.  Seeds in fuzz/corpus/cpr cover
 * version 1 (RAM only) and version 2 (RAM and disk fds).
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "migration/cpr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int devnull = -1;
	struct cpr_state st;
	struct cpr_rx rx;
	char err[256], text[CPR_TEXT_MAX + 1];
	size_t pos = 0;
	int status, r = 0;

	if (devnull < 0)
		devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert(devnull >= 0);
	if (cpr_parse_ack(data, size, &status, text, sizeof(text), err, sizeof(err)) == 0)
		assert(status <= 0 && strlen(text) <= CPR_TEXT_MAX);

	cpr_rx_init(&rx, &st);
	while (pos + 4 <= size && r == 0) {
		unsigned nfds = data[pos] & 7;
		bool ctrunc = data[pos + 1] & 1;
		size_t len = data[pos + 2] | (size_t)data[pos + 3] << 8;
		int fds[8];

		pos += 4;
		if (len > size - pos)
			len = size - pos;
		if (nfds > 4)
			nfds = 4;
		for (unsigned i = 0; i < nfds; i++) {
			fds[i] = dup(devnull);
			assert(fds[i] >= 0);
		}
		r = cpr_rx_message(&rx, data + pos, len, fds, nfds, ctrunc, err, sizeof(err));
		assert(r == 0 || r == 1 || (r == -EBADMSG && err[0]));
		if (r < 0) {
			/* On error the fds stay ours. */
			for (unsigned i = 0; i < nfds; i++)
				assert(close(fds[i]) == 0);
		} else if (r == 1) {
			assert(rx.state == 2 && st.nfds >= 1 && st.nfds <= CPR_MAX_FDS);
			for (unsigned i = 0; i < st.nfds; i++)
				assert(st.fds[i].fd >= 0 && st.fds[i].name[0] && st.fds[i].bytes &&
				       (st.fds[i].kind == CPR_FD_RAM ? !st.fds[i].flags
					: st.fds[i].kind == CPR_FD_DISK && st.version >= 2 &&
					  !st.fds[i].gpa && !(st.fds[i].bytes % 512) &&
					  !(st.fds[i].flags & ~CPR_FD_F_READONLY)));
		}
		pos += len;
	}
	cpr_state_close(&st);
	return 0;
}
