/*
 * The cpr channel (src/migration/cpr.c): the receive state machine with
 * every kind of malformed message, the ACK parser, and the real thing over
 * a SOCK_SEQPACKET socket pair - memfds arrive as the same files, a message
 * carrying too many fds is caught by MSG_CTRUNC, and no error leaks an fd.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "migration/cpr.h"

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static size_t make_hello(uint8_t *m, uint32_t nfds, uint32_t nvcpus)
{
	memset(m, 0, CPR_HELLO_BYTES);
	put64(m, CPR_MAGIC);
	put32(m + 8, CPR_MSG_HELLO);
	put32(m + 12, CPR_VERSION);
	put32(m + 16, nfds);
	put32(m + 20, nvcpus);
	memset(m + 24, 0xab, CPR_TOKEN_BYTES);
	return CPR_HELLO_BYTES;
}

static size_t make_fd(uint8_t *m, uint32_t index, const char *name, uint64_t bytes)
{
	memset(m, 0, CPR_FD_BYTES);
	put32(m, CPR_MSG_FD);
	put32(m + 4, index);
	put32(m + 8, CPR_FD_RAM);
	put64(m + 16, 0);
	put64(m + 24, bytes);
	memcpy(m + 32, name, strlen(name));
	return CPR_FD_BYTES;
}

static size_t make_done(uint8_t *m, uint32_t nfds)
{
	memset(m, 0, CPR_DONE_BYTES);
	put32(m, CPR_MSG_DONE);
	put32(m + 4, nfds);
	return CPR_DONE_BYTES;
}

static int open_fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	assert_non_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

/* A state machine after a valid HELLO announcing @nfds fds. */
static void rx_after_hello(struct cpr_rx *rx, struct cpr_state *st, uint32_t nfds)
{
	uint8_t m[CPR_MSG_MAX];
	char err[256];
	size_t n = make_hello(m, nfds, 2);

	cpr_rx_init(rx, st);
	assert_int_equal(cpr_rx_message(rx, m, n, NULL, 0, false, err, sizeof(err)), 0);
}

/* Feed @m with @nfds fake fds and expect -EBADMSG mentioning @needle. */
static void expect_rx_bad(struct cpr_rx *rx, const uint8_t *m, size_t len, unsigned nfds,
			  bool ctrunc, const char *needle)
{
	int fds[4] = { 100, 101, 102, 103 };
	char err[256] = "";
	int r = cpr_rx_message(rx, m, len, fds, nfds, ctrunc, err, sizeof(err));

	if (r != -EBADMSG || !strstr(err, needle))
		fail_msg("expected -EBADMSG with \"%s\", got %d \"%s\"", needle, r, err);
}

static void test_rx_valid(void **state)
{
	struct cpr_state st;
	struct cpr_rx rx;
	uint8_t m[CPR_MSG_MAX];
	char err[256];
	int fd = 200;

	(void)state;
	rx_after_hello(&rx, &st, 1);
	assert_int_equal(st.nvcpus, 2);
	assert_int_equal(st.token[0], 0xab);
	assert_int_equal(cpr_rx_message(&rx, m, make_fd(m, 0, "ram0", 1 << 20), &fd, 1, false,
					err, sizeof(err)), 0);
	assert_int_equal(cpr_rx_message(&rx, m, make_done(m, 1), NULL, 0, false, err, sizeof(err)), 1);
	assert_non_null(cpr_state_find(&st, CPR_FD_RAM, "ram0"));
	assert_null(cpr_state_find(&st, CPR_FD_RAM, "ram1"));
	assert_int_equal(st.fds[0].fd, 200);
	assert_int_equal(st.fds[0].bytes, 1 << 20);
	/* Nothing after DONE. */
	expect_rx_bad(&rx, m, make_done(m, 1), 0, false, "after DONE");
	st.fds[0].fd = -1; /* fake */
}

static void test_rx_bad_hello(void **state)
{
	struct cpr_state st;
	struct cpr_rx rx;
	uint8_t m[CPR_MSG_MAX];

	(void)state;
	cpr_rx_init(&rx, &st);
	expect_rx_bad(&rx, m, make_hello(m, 1, 1) - 1, 0, false, "HELLO of 39 bytes");
	make_hello(m, 1, 1);
	expect_rx_bad(&rx, m, 8, 0, false, "must start with HELLO");
	expect_rx_bad(&rx, m, make_done(m, 1), 0, false, "must start with HELLO");
	make_hello(m, 1, 1);
	put64(m, 0x1122334455667788ull);
	expect_rx_bad(&rx, m, CPR_HELLO_BYTES, 0, false, "magic");
	make_hello(m, 1, 1);
	put32(m + 12, 3);
	expect_rx_bad(&rx, m, CPR_HELLO_BYTES, 0, false, "version 3, this build reads versions 1..2");
	put32(m + 12, 0);
	expect_rx_bad(&rx, m, CPR_HELLO_BYTES, 0, false, "version 0");
	expect_rx_bad(&rx, m, make_hello(m, 0, 1), 0, false, "announces 0 fds");
	expect_rx_bad(&rx, m, make_hello(m, CPR_MAX_FDS + 1, 1), 0, false, "announces 17 fds");
	expect_rx_bad(&rx, m, make_hello(m, 1, 0), 0, false, "0 vCPUs");
	expect_rx_bad(&rx, m, make_hello(m, 1, 1000), 0, false, "1000 vCPUs");
	expect_rx_bad(&rx, m, make_hello(m, 1, 1), 1, false, "carries 1 file descriptors");
	expect_rx_bad(&rx, m, make_hello(m, 1, 1), 0, true, "truncated");
}

static void test_rx_bad_fds(void **state)
{
	struct cpr_state st;
	struct cpr_rx rx;
	uint8_t m[CPR_MSG_MAX];
	char err[256];
	int fd = 300;

	(void)state;
	rx_after_hello(&rx, &st, 2);
	/* Wrong fd counts. */
	expect_rx_bad(&rx, m, make_fd(m, 0, "ram0", 4096), 0, false, "expected exactly 1");
	expect_rx_bad(&rx, m, make_fd(m, 0, "ram0", 4096), 2, false, "carries 2 file descriptors");
	expect_rx_bad(&rx, m, make_fd(m, 0, "ram0", 4096), 1, true, "truncated");
	expect_rx_bad(&rx, m, make_done(m, 2), 1, false, "DONE carries 1");
	/* Truncated and oversized. */
	expect_rx_bad(&rx, m, make_fd(m, 0, "ram0", 4096) - 1, 1, false, "63 bytes");
	expect_rx_bad(&rx, m, 2, 1, false, "message of 2 bytes");
	/* Field checks. */
	expect_rx_bad(&rx, m, make_fd(m, 1, "ram0", 4096), 1, false, "index 1, expected 0");
	make_fd(m, 0, "ram0", 4096);
	put32(m + 8, 7);
	expect_rx_bad(&rx, m, CPR_FD_BYTES, 1, false, "unknown kind 7");
	make_fd(m, 0, "ram0", 4096);
	put32(m + 12, 1);
	expect_rx_bad(&rx, m, CPR_FD_BYTES, 1, false, "unknown flags");
	expect_rx_bad(&rx, m, make_fd(m, 0, "", 4096), 1, false, "name is empty");
	make_fd(m, 0, "ram0", 4096);
	memset(m + 32, 'x', CPR_NAME_BYTES);
	expect_rx_bad(&rx, m, CPR_FD_BYTES, 1, false, "not terminated");
	make_fd(m, 0, "ram0", 4096);
	m[40] = 'z';
	expect_rx_bad(&rx, m, CPR_FD_BYTES, 1, false, "after the name");
	expect_rx_bad(&rx, m, make_fd(m, 0, "ram0", 4095), 1, false, "bad geometry");
	expect_rx_bad(&rx, m, make_fd(m, 0, "ram0", 0), 1, false, "bad geometry");
	make_fd(m, 0, "ram0", 4096);
	put64(m + 16, UINT64_MAX - 4095);
	expect_rx_bad(&rx, m, CPR_FD_BYTES, 1, false, "bad geometry");
	put32(m, 9);
	expect_rx_bad(&rx, m, CPR_FD_BYTES, 1, false, "type 9");
	/* One good fd, then a duplicate name, an early DONE, a mismatching DONE. */
	assert_int_equal(cpr_rx_message(&rx, m, make_fd(m, 0, "ram0", 4096), &fd, 1, false, err,
					sizeof(err)), 0);
	expect_rx_bad(&rx, m, make_fd(m, 1, "ram0", 4096), 1, false, "given twice");
	expect_rx_bad(&rx, m, make_done(m, 2), 0, false, "DONE after 1 of 2");
	expect_rx_bad(&rx, m, make_done(m, 3), 0, false, "HELLO announced 2");
	make_done(m, 2);
	put64(m + 8, 1);
	expect_rx_bad(&rx, m, CPR_DONE_BYTES, 0, false, "DONE says");
	expect_rx_bad(&rx, m, make_done(m, 2) + 1, 0, false, "DONE of 17 bytes");
	st.fds[0].fd = -1; /* fake */
}

/* A version-2 FD message lending a disk of @bytes, @flags. */
static size_t make_disk_fd(uint8_t *m, uint32_t index, const char *name, uint64_t bytes,
			   uint32_t flags)
{
	make_fd(m, index, name, bytes);
	put32(m + 8, CPR_FD_DISK);
	put32(m + 12, flags);
	return CPR_FD_BYTES;
}

/* Disk fds (channel version 2): accepted with their flags, checked, refused in version 1. */
static void test_rx_disk_fds(void **state)
{
	struct cpr_state st;
	struct cpr_rx rx;
	uint8_t m[CPR_MSG_MAX];
	char err[256];
	int fds[3] = { 400, 401, 402 };
	struct cpr_fd *f;

	(void)state;
	rx_after_hello(&rx, &st, 3);
	assert_int_equal(st.version, 2);
	/* Geometry and flags by kind. */
	expect_rx_bad(&rx, m, make_disk_fd(m, 0, "disk0", 1000, 0), 1, false, "bad geometry");
	expect_rx_bad(&rx, m, make_disk_fd(m, 0, "disk0", 0, 0), 1, false, "bad geometry");
	make_disk_fd(m, 0, "disk0", 4096, 0);
	put64(m + 16, 4096);
	expect_rx_bad(&rx, m, CPR_FD_BYTES, 1, false, "bad geometry");
	expect_rx_bad(&rx, m, make_disk_fd(m, 0, "disk0", 4096, 2), 1, false,
		      "unknown flags 0x2 for a disk fd");
	make_fd(m, 0, "ram0", 4096);
	put32(m + 12, CPR_FD_F_READONLY);
	expect_rx_bad(&rx, m, CPR_FD_BYTES, 1, false, "unknown flags 0x1 for a ram fd");
	/* RAM, a read-only disk of 512 bytes (sectors, not pages), a disk by the same name as RAM. */
	assert_int_equal(cpr_rx_message(&rx, m, make_fd(m, 0, "ram0", 4096), &fds[0], 1, false,
					err, sizeof(err)), 0);
	assert_int_equal(cpr_rx_message(&rx, m, make_disk_fd(m, 1, "disk0", 512, CPR_FD_F_READONLY),
					&fds[1], 1, false, err, sizeof(err)), 0);
	expect_rx_bad(&rx, m, make_disk_fd(m, 2, "disk0", 512, 0), 1, false, "given twice");
	assert_int_equal(cpr_rx_message(&rx, m, make_disk_fd(m, 2, "ram0", 1 << 20, 0), &fds[2], 1,
					false, err, sizeof(err)), 0);
	assert_int_equal(cpr_rx_message(&rx, m, make_done(m, 3), NULL, 0, false, err, sizeof(err)), 1);
	f = cpr_state_find(&st, CPR_FD_DISK, "disk0");
	assert_non_null(f);
	assert_int_equal(f->fd, 401);
	assert_int_equal(f->flags, CPR_FD_F_READONLY);
	assert_int_equal(f->bytes, 512);
	assert_int_equal(cpr_state_find(&st, CPR_FD_DISK, "ram0")->fd, 402);
	assert_int_equal(cpr_state_find(&st, CPR_FD_RAM, "ram0")->fd, 400);
	assert_int_equal(cpr_state_version(&st), 2);
	for (unsigned i = 0; i < 3; i++)
		st.fds[i].fd = -1; /* fake */

	/* A version-1 channel (an older old process) knows no disk kind. */
	cpr_rx_init(&rx, &st);
	make_hello(m, 2, 1);
	put32(m + 12, 1);
	assert_int_equal(cpr_rx_message(&rx, m, CPR_HELLO_BYTES, NULL, 0, false, err, sizeof(err)), 0);
	assert_int_equal(st.version, 1);
	expect_rx_bad(&rx, m, make_disk_fd(m, 0, "disk0", 512, 0), 1, false,
		      "unknown kind 2 (channel version 1)");
}

/* cpr_state_add fills in order, refuses the 17th; the version follows the kinds. */
static void test_state_add(void **state)
{
	struct cpr_state st;
	char err[128] = "";

	(void)state;
	memset(&st, 0, sizeof(st));
	assert_int_equal(cpr_state_add(&st, CPR_FD_RAM, "ram0", 0, 0, 4096, 7, err, sizeof(err)), 0);
	assert_int_equal(cpr_state_version(&st), 1);
	assert_int_equal(cpr_state_add(&st, CPR_FD_DISK, "disk0", CPR_FD_F_READONLY, 0, 512, 8, err,
				       sizeof(err)), 0);
	assert_int_equal(cpr_state_version(&st), 2);
	assert_int_equal(st.fds[1].fd, 8);
	assert_int_equal(st.fds[1].flags, CPR_FD_F_READONLY);
	assert_string_equal(st.fds[1].name, "disk0");
	while (st.nfds < CPR_MAX_FDS)
		assert_int_equal(cpr_state_add(&st, CPR_FD_DISK, "d", 0, 0, 512, 9, err, sizeof(err)), 0);
	assert_int_equal(cpr_state_add(&st, CPR_FD_DISK, "d", 0, 0, 512, 9, err, sizeof(err)),
			 -ENOSPC);
	assert_non_null(strstr(err, "more than 16 fds"));
	assert_string_equal(cpr_fd_kind_name(CPR_FD_DISK), "disk");
	assert_string_equal(cpr_fd_kind_name(99), "unknown");
}

static void test_ack_parse(void **state)
{
	uint8_t m[CPR_MSG_MAX];
	char text[64], err[256];
	int status = 1;

	(void)state;
	memset(m, 0, sizeof(m));
	put32(m, CPR_MSG_ACK);
	put32(m + 4, (uint32_t)-EINVAL);
	put32(m + 8, 5);
	memcpy(m + 16, "sizes", 5);
	assert_int_equal(cpr_parse_ack(m, 21, &status, text, sizeof(text), err, sizeof(err)), 0);
	assert_int_equal(status, -EINVAL);
	assert_string_equal(text, "sizes");
	assert_int_equal(cpr_parse_ack(m, 20, &status, text, sizeof(text), err, sizeof(err)), -EBADMSG);
	assert_int_equal(cpr_parse_ack(m, 15, &status, text, sizeof(text), err, sizeof(err)), -EBADMSG);
	m[18] = 0;
	assert_int_equal(cpr_parse_ack(m, 21, &status, text, sizeof(text), err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "NUL"));
	m[18] = 'z';
	put32(m + 4, 5);
	assert_int_equal(cpr_parse_ack(m, 21, &status, text, sizeof(text), err, sizeof(err)), -EBADMSG);
	put32(m + 4, 0);
	put32(m + 8, CPR_TEXT_MAX + 1);
	assert_int_equal(cpr_parse_ack(m, CPR_MSG_MAX, &status, text, sizeof(text), err, sizeof(err)),
			 -EBADMSG);
	put32(m + 8, 0);
	put32(m, CPR_MSG_DONE);
	assert_int_equal(cpr_parse_ack(m, 16, &status, text, sizeof(text), err, sizeof(err)), -EBADMSG);
}

/* Send raw bytes with @nfds copies of @fd attached. */
static void send_raw(int sock, const uint8_t *m, size_t len, int fd, unsigned nfds)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * 8)];
	} ctl;
	struct iovec iov = { .iov_base = (void *)m, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (nfds) {
		struct cmsghdr *c;

		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		for (unsigned i = 0; i < nfds; i++)
			memcpy(CMSG_DATA(c) + i * sizeof(int), &fd, sizeof(int));
	}
	assert_int_equal(sendmsg(sock, &mh, 0), (ssize_t)len);
}

static void test_socket_roundtrip(void **state)
{
	struct cpr_state out, in;
	struct stat a, b;
	char err[256], text[128];
	int sv[2], mfd, before = open_fd_count();
	uint8_t *p;

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	mfd = memfd_create("ram0", MFD_CLOEXEC);
	assert_true(mfd >= 0);
	assert_int_equal(ftruncate(mfd, 2 << 20), 0);
	memset(&out, 0, sizeof(out));
	for (unsigned i = 0; i < CPR_MAX_FDS; i++)
		out.fds[i].fd = -1;
	out.nvcpus = 3;
	out.nfds = 1;
	out.fds[0].kind = CPR_FD_RAM;
	snprintf(out.fds[0].name, sizeof(out.fds[0].name), "ram0");
	out.fds[0].bytes = 2 << 20;
	out.fds[0].fd = mfd;
	assert_int_equal(cpr_send(sv[0], &out, err, sizeof(err)), 0);
	assert_int_equal(cpr_recv(sv[1], 5000, &in, err, sizeof(err)), 0);
	assert_int_equal(in.nvcpus, 3);
	assert_int_equal(in.nfds, 1);
	/* RAM only goes as version 1, which an older new process reads too. */
	assert_int_equal(in.version, 1);
	/* The very same file, and writes through one show through the other. */
	assert_int_equal(fstat(mfd, &a), 0);
	assert_int_equal(fstat(in.fds[0].fd, &b), 0);
	assert_int_equal(a.st_ino, b.st_ino);
	p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, in.fds[0].fd, 0);
	assert_true(p != MAP_FAILED);
	assert_int_equal(pwrite(mfd, "hi", 2, 0), 2);
	assert_memory_equal(p, "hi", 2);
	munmap(p, 4096);
	assert_true(fcntl(in.fds[0].fd, F_GETFD) & FD_CLOEXEC);
	/* The ACK both ways of ending. */
	assert_int_equal(cpr_send_ack(sv[1], -ENOSPC, "no room"), 0);
	assert_int_equal(cpr_recv_ack(sv[0], 5000, -1, text, sizeof(text)), -ENOSPC);
	assert_string_equal(text, "no room");
	assert_int_equal(cpr_send_ack(sv[1], 0, NULL), 0);
	assert_int_equal(cpr_recv_ack(sv[0], 5000, -1, text, sizeof(text)), 0);
	cpr_state_close(&in);
	/* With a disk: version 2, the disk's flags and size, the same open file. */
	assert_int_equal(cpr_state_add(&out, CPR_FD_DISK, "disk0", CPR_FD_F_READONLY, 0, 2 << 20, mfd,
				       err, sizeof(err)), 0);
	assert_int_equal(cpr_send(sv[0], &out, err, sizeof(err)), 0);
	assert_int_equal(cpr_recv(sv[1], 5000, &in, err, sizeof(err)), 0);
	assert_int_equal(in.version, 2);
	assert_int_equal(in.nfds, 2);
	assert_int_equal(in.fds[1].kind, CPR_FD_DISK);
	assert_int_equal(in.fds[1].flags, CPR_FD_F_READONLY);
	assert_int_equal(in.fds[1].bytes, 2 << 20);
	assert_int_equal(fstat(in.fds[1].fd, &b), 0);
	assert_int_equal(a.st_ino, b.st_ino);
	cpr_state_close(&in);
	close(mfd);
	close(sv[0]);
	close(sv[1]);
	assert_int_equal(open_fd_count(), before);
}

static void test_socket_errors_leak_nothing(void **state)
{
	uint8_t m[CPR_MSG_MAX];
	struct cpr_state in;
	char err[256], text[128];
	int sv[2], mfd, before;

	(void)state;
	mfd = memfd_create("ram0", MFD_CLOEXEC);
	assert_true(mfd >= 0);
	assert_int_equal(ftruncate(mfd, 4096), 0);
	before = open_fd_count();

	/* Too many fds on one message: the kernel truncates, we notice. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	send_raw(sv[0], m, make_hello(m, 1, 1), -1, 0);
	send_raw(sv[0], m, make_fd(m, 0, "ram0", 4096), mfd, 6);
	assert_int_equal(cpr_recv(sv[1], 5000, &in, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "truncated"));
	close(sv[0]);
	close(sv[1]);
	assert_int_equal(open_fd_count(), before);

	/* Two fds where one belongs, after a good one. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	send_raw(sv[0], m, make_hello(m, 2, 1), -1, 0);
	send_raw(sv[0], m, make_fd(m, 0, "ram0", 4096), mfd, 1);
	send_raw(sv[0], m, make_fd(m, 1, "ram1", 4096), mfd, 2);
	assert_int_equal(cpr_recv(sv[1], 5000, &in, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "carries 2"));
	close(sv[0]);
	close(sv[1]);
	assert_int_equal(open_fd_count(), before);

	/* A message longer than any valid one. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	memset(m, 0, sizeof(m));
	send_raw(sv[0], m, sizeof(m), -1, 0);
	{
		uint8_t big[CPR_MSG_MAX + 1] = { 0 };

		send_raw(sv[0], big, sizeof(big), -1, 0);
	}
	assert_int_equal(cpr_recv(sv[1], 5000, &in, err, sizeof(err)), -EBADMSG);
	close(sv[0]);
	close(sv[1]);

	/* The old process goes away half-way: EOF before DONE. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	send_raw(sv[0], m, make_hello(m, 2, 1), -1, 0);
	send_raw(sv[0], m, make_fd(m, 0, "ram0", 4096), mfd, 1);
	close(sv[0]);
	assert_int_equal(cpr_recv(sv[1], 5000, &in, err, sizeof(err)), -EPIPE);
	assert_non_null(strstr(err, "before DONE"));
	close(sv[1]);
	assert_int_equal(open_fd_count(), before);

	/* Silence: bounded wait; the new process closing without an answer. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(cpr_recv(sv[1], 50, &in, err, sizeof(err)), -ETIMEDOUT);
	assert_int_equal(cpr_recv_ack(sv[0], 50, -1, text, sizeof(text)), -ETIMEDOUT);
	send_raw(sv[1], m, make_done(m, 1), mfd, 1);
	assert_int_equal(cpr_recv_ack(sv[0], 5000, -1, text, sizeof(text)), -EBADMSG);
	close(sv[1]);
	assert_int_equal(cpr_recv_ack(sv[0], 5000, -1, text, sizeof(text)), -EPIPE);
	close(sv[0]);
	assert_int_equal(open_fd_count(), before);
	close(mfd);
}

static void test_uris(void **state)
{
	char err[256];

	(void)state;
	assert_int_equal(cpr_listen("tcp:127.0.0.1:0", err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "UNIX socket"));
	assert_int_equal(cpr_connect("tcp:127.0.0.1:1", 100, -1, err, sizeof(err)), -EINVAL);
	assert_int_equal(cpr_listen("bogus", err, sizeof(err)), -EINVAL);
	/* Nobody there: retried, then a clear error within the bound. */
	assert_int_equal(cpr_connect("unix:/nonexistent/cpr.sock", 20, -1, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, "cannot connect the cpr channel"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rx_valid),
		cmocka_unit_test(test_rx_bad_hello),
		cmocka_unit_test(test_rx_bad_fds),
		cmocka_unit_test(test_rx_disk_fds),
		cmocka_unit_test(test_state_add),
		cmocka_unit_test(test_ack_parse),
		cmocka_unit_test(test_socket_roundtrip),
		cmocka_unit_test(test_socket_errors_leak_nothing),
		cmocka_unit_test(test_uris),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
