/*
 * Unit tests: waiting for a whole piece of a stream (stream_wait_ready);
 * pages sent straight from a memfd (stream_put_file), and its fallback.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "migration/channel.h"
#include "migration/stream.h"

#define PIECE (256u * 1024u)

/*
 * A connected loopback TCP pair, with the migration channels' socket
 * options (8 MiB buffers: a small receive buffer under pressure wakes the
 * reader before the low mark, and the wait rightly gives up): fd[0] reads,
 * fd[1] writes.
 */
static void tcp_pair(int fd[2])
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	int l = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(l >= 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(l, 1), 0);
	assert_int_equal(getsockname(l, (struct sockaddr *)&sa, &len), 0);
	fd[1] = socket(AF_INET, SOCK_STREAM, 0);
	channel_tune(fd[1]);
	assert_int_equal(connect(fd[1], (struct sockaddr *)&sa, sizeof(sa)), 0);
	fd[0] = accept(l, NULL, NULL);
	assert_true(fd[0] >= 0);
	channel_tune(fd[0]);
	close(l);
}

static void write_all(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		assert_true(w > 0);
		p += w;
		n -= (size_t)w;
	}
}

struct writer {
	int fd;
	uint8_t *data;
};

/* Writes a piece in two halves, as a stream arrives in segments. */
static void *writer_main(void *arg)
{
	struct writer *w = arg;

	write_all(w->fd, w->data, PIECE / 2);
	write_all(w->fd, w->data + PIECE / 2, PIECE / 2);
	return NULL;
}

/* Over TCP the wait lasts until the whole piece is queued, then reads it. */
static void test_wait_ready_tcp(void **state)
{
	uint8_t *data = malloc(PIECE), *got = malloc(PIECE);
	struct stream s;
	struct writer w;
	pthread_t th;
	int fd[2];

	(void)state;
	assert_non_null(data);
	assert_non_null(got);
	for (size_t i = 0; i < PIECE; i++)
		data[i] = (uint8_t)(i * 7 + 3);
	tcp_pair(fd);
	assert_int_equal(stream_init(&s, fd[0], 10000), 0);
	assert_true(s.lowat);
	w = (struct writer){ fd[1], data };
	assert_int_equal(pthread_create(&th, NULL, writer_main, &w), 0);
	assert_true(stream_wait_ready(&s, PIECE));
	assert_true(stream_ready_bytes(&s) >= PIECE);
	stream_get_bytes(&s, got, PIECE);
	assert_int_equal(stream_error(&s), 0);
	assert_memory_equal(got, data, PIECE);
	pthread_join(th, NULL);

	/* The mark is back at one byte: a short record still wakes the reader. */
	write_all(fd[1], data, 3);
	assert_int_equal(stream_wait_readable(&s, 10000), 1);
	assert_int_equal(stream_get_u8(&s), data[0]);

	/* End of stream before the piece: false, no hang, the caller's read fails. */
	shutdown(fd[1], SHUT_WR);
	assert_false(stream_wait_ready(&s, PIECE));
	stream_get_bytes(&s, got, PIECE);
	assert_int_not_equal(stream_error(&s), 0);
	stream_release(&s);
	close(fd[0]);
	close(fd[1]);
	free(data);
	free(got);
}

/* A UNIX socket's poll ignores the mark: no waiting, the caller reads as usual. */
static void test_wait_ready_unix(void **state)
{
	uint8_t buf[64] = { 1, 2, 3 };
	struct stream s;
	int fd[2];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fd), 0);
	assert_int_equal(stream_init(&s, fd[0], 10000), 0);
	assert_false(s.lowat);
	write_all(fd[1], buf, 3);
	assert_false(stream_wait_ready(&s, sizeof(buf)));
	assert_true(stream_wait_ready(&s, 3));
	assert_int_equal(stream_error(&s), 0);
	stream_release(&s);
	close(fd[0]);
	close(fd[1]);
}

/* A cancelled wait ends at once with the stream's error. */
static void test_wait_ready_cancel(void **state)
{
	struct stream s;
	int fd[2];

	(void)state;
	tcp_pair(fd);
	assert_int_equal(stream_init(&s, fd[0], -1), 0);
	stream_cancel(&s);
	assert_false(stream_wait_ready(&s, PIECE));
	assert_int_equal(stream_error(&s), -ECANCELED);
	stream_release(&s);
	close(fd[0]);
	close(fd[1]);
}

#define FILE_BYTES (1u << 20)
#define FILE_OFF (3u * 4096u)
#define FILE_LEN (600u * 1024u) /* more than one send slice */

/*
 * A header, @len bytes of a memfd at FILE_OFF through stream_put_file, a
 * trailer; the reader gets exactly those bytes.  With @refuse the
 * descriptor given is a pipe, which sendfile refuses: the copy from the
 * mapping must take over.  Returns the writer's copy_send afterwards.
 */
static bool put_file_roundtrip(bool refuse)
{
	int mfd = memfd_create("ram", MFD_CLOEXEC), pfd[2] = { -1, -1 }, fd[2];
	uint8_t *map, *got = malloc(FILE_LEN);
	struct stream w, r;
	bool copied;

	assert_true(mfd >= 0);
	assert_non_null(got);
	assert_int_equal(ftruncate(mfd, FILE_BYTES), 0);
	map = mmap(NULL, FILE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	assert_true(map != MAP_FAILED);
	for (size_t i = 0; i < FILE_BYTES; i++)
		map[i] = (uint8_t)(i * 13 + (i >> 12));
	if (refuse)
		assert_int_equal(pipe(pfd), 0);
	tcp_pair(fd);
	assert_int_equal(stream_init(&w, fd[1], 10000), 0);
	assert_int_equal(stream_init(&r, fd[0], 10000), 0);
	assert_false(w.copy_send);
	stream_put_u32(&w, 0xfeedf00d);
	stream_put_file(&w, refuse ? pfd[0] : mfd, FILE_OFF, map + FILE_OFF, FILE_LEN);
	stream_put_u8(&w, 0x5a);
	assert_int_equal(stream_flush(&w), 0);
	assert_int_equal(w.bytes, 4 + FILE_LEN + 1);

	assert_int_equal(stream_get_u32(&r), 0xfeedf00d);
	stream_get_bytes(&r, got, FILE_LEN);
	assert_int_equal(stream_get_u8(&r), 0x5a);
	assert_int_equal(stream_error(&r), 0);
	assert_memory_equal(got, map + FILE_OFF, FILE_LEN);
	copied = w.copy_send;
	stream_release(&w);
	stream_release(&r);
	close(fd[0]);
	close(fd[1]);
	if (refuse) {
		close(pfd[0]);
		close(pfd[1]);
	}
	munmap(map, FILE_BYTES);
	close(mfd);
	free(got);
	return copied;
}

/* From a memfd over TCP: sendfile, in order with what is buffered around it. */
static void test_put_file(void **state)
{
	(void)state;
	assert_false(put_file_roundtrip(false));
}

/* A file sendfile refuses: the same bytes, copied, and copying from then on. */
static void test_put_file_refused(void **state)
{
	(void)state;
	assert_true(put_file_roundtrip(true));
}

/* VMFERRY_SEND_COPY=1: copies from the start. */
static void test_put_file_copy_env(void **state)
{
	struct stream s;
	int fd[2];

	(void)state;
	tcp_pair(fd);
	setenv("VMFERRY_SEND_COPY", "1", 1);
	assert_int_equal(stream_init(&s, fd[1], 10000), 0);
	unsetenv("VMFERRY_SEND_COPY");
	assert_true(s.copy_send);
	stream_release(&s);
	setenv("VMFERRY_SEND_COPY", "0", 1);
	assert_int_equal(stream_init(&s, fd[1], 10000), 0);
	unsetenv("VMFERRY_SEND_COPY");
	assert_false(s.copy_send);
	stream_release(&s);
	close(fd[0]);
	close(fd[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_put_file),
		cmocka_unit_test(test_put_file_refused),
		cmocka_unit_test(test_put_file_copy_env),
		cmocka_unit_test(test_wait_ready_tcp),
		cmocka_unit_test(test_wait_ready_unix),
		cmocka_unit_test(test_wait_ready_cancel),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
