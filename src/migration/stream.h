/*
 * A buffered byte stream over a socket with sticky errors.
 *
 * Every put/get is a no-op once the stream has failed; the first error (and
 * its message) is kept, so a long sequence of puts or gets is checked once
 * at the end.  All I/O is non-blocking underneath and waits with poll() on
 * the socket and on a cancel eventfd, with a timeout: a dead peer or a
 * cancel turns into an error, never a hang.  Integers are little-endian.
 *
 * One thread uses a stream at a time (the owner); stream_cancel() may be
 * called from any thread.
 */
#ifndef VMFERRY_MIGRATION_STREAM_H
#define VMFERRY_MIGRATION_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define STREAM_BUF_BYTES (256u * 1024u)  /* write buffer */
/*
 * A refill reads at most STREAM_FILL_BYTES, and a read of at least
 * STREAM_DIRECT_BYTES goes straight from the socket to the caller: record
 * headers are buffered, and the pages of a long run are copied once, never
 * through the buffer.  A one-page record (header and page, the urgent
 * channel's) fits one refill: one system call.
 */
#define STREAM_FILL_BYTES 8192u
#define STREAM_DIRECT_BYTES 4096u
#define STREAM_ERRMSG_BYTES 256

struct stream {
	int fd;                /* not owned */
	int cancel_fd;         /* eventfd owned by the stream; readable = cancelled */
	int err;               /* 0 or the first -errno */
	char errmsg[STREAM_ERRMSG_BYTES];
	int timeout_ms;        /* per wait; <0 = forever */
	uint8_t *buf;          /* read buffer: [pos, len) unread */
	size_t pos, len;
	uint8_t *wbuf;         /* write buffer: [0, wlen) unsent */
	size_t wlen;
	uint64_t bytes;        /* bytes moved through the socket */
	uint64_t max_bytes_per_s; /* write rate limit; 0 = unlimited */
	uint64_t rate_start_ns, rate_bytes;
	bool lowat;            /* the socket's poll honours SO_RCVLOWAT (TCP) */
	bool copy_send;        /* stream_put_file copies (sendfile refused or off) */
};

/* Set up around @fd (made non-blocking).  0 or -errno. */
int stream_init(struct stream *s, int fd, int timeout_ms);
/* Free the buffer and the cancel eventfd; does not close fd. */
void stream_release(struct stream *s);

/* Make every pending and future wait fail with -ECANCELED.  Any thread. */
void stream_cancel(struct stream *s);

/* Record an error unless one is already kept.  Returns s->err. */
int stream_fail(struct stream *s, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static inline int stream_error(const struct stream *s) { return s->err; }

/* ---- writing ---- */
void stream_put_u8(struct stream *s, uint8_t v);
void stream_put_u16(struct stream *s, uint16_t v);
void stream_put_u32(struct stream *s, uint32_t v);
void stream_put_u64(struct stream *s, uint64_t v);
void stream_put_bytes(struct stream *s, const void *p, size_t n);
/* Large payloads (guest pages): flushes the buffer and sends @p directly. */
void stream_put_direct(struct stream *s, const void *p, size_t n);
/*
 * The same from a file (guest RAM's memfd, @n bytes at @off, which @p maps):
 * the socket takes references to the file's pages instead of a copy of them
 * (sendfile), so the source's one copy of a page is saved.  The pages are
 * read when the socket sends them, not now: the caller sends only memory
 * whose later writes it tracks as dirty (or that nothing writes any more).
 * Where the file or socket cannot (hugetlbfs, a memory stream), and with
 * VMFERRY_SEND_COPY=1 in the environment, it copies from @p as
 * stream_put_direct does.
 */
void stream_put_file(struct stream *s, int fd, uint64_t off, const void *p, size_t n);
/* Send everything buffered.  Returns s->err. */
int stream_flush(struct stream *s);

/* ---- reading ---- */
uint8_t stream_get_u8(struct stream *s);
uint16_t stream_get_u16(struct stream *s);
uint32_t stream_get_u32(struct stream *s);
uint64_t stream_get_u64(struct stream *s);
/* Read exactly @n bytes into @p (zero-filled on error). */
void stream_get_bytes(struct stream *s, void *p, size_t n);

/* Bytes a read gets without waiting: buffered plus queued in the socket. */
size_t stream_ready_bytes(struct stream *s);
/* Whether @n bytes can be read without waiting (asks the socket only when
 * the buffer holds fewer). */
bool stream_has_ready(struct stream *s, size_t n);
/*
 * Wait until @n bytes can be read without blocking, with one wake-up: over
 * TCP the socket's low mark (SO_RCVLOWAT) is raised for the wait, so the
 * reader sleeps while they arrive instead of waking per segment.  True when
 * they are ready; false when they are not after the wait (a UNIX socket,
 * whose poll ignores the mark, returns at once; also at end of stream, or
 * on an error, kept in the stream): the caller reads them as usual.
 */
bool stream_wait_ready(struct stream *s, size_t n);
/* Bytes in the read buffer (no system call). */
static inline size_t stream_buffered(const struct stream *s) { return s->len - s->pos; }

/*
 * Wait until at least one byte can be read, for at most @timeout_ms
 * (-1 forever).  1 readable, 0 timed out, or the stream error.
 */
int stream_wait_readable(struct stream *s, int timeout_ms);

/* Parse-only streams over memory (fuzzing, tests): fd = -1, no I/O. */
void stream_init_mem(struct stream *s, const void *data, size_t len);

#endif
