/*
 * silent_peer: a migration peer that takes everything and then says
 * nothing, to test what vmferry does when the other side goes silent at
 * the worst moment (docs/migration.md and docs/cpr.md, failure tables).
 *
 *   silent_peer main URI
 *       a destination: listen on URI (tcp:HOST:PORT, port 0 picks one, or
 *       unix:PATH), accept one migration connection and read every byte of
 *       it, END included, without ever answering on the return path.
 *   silent_peer cpr CPR_URI MAIN_URI
 *       a live update's new process: take the fds on the cpr channel
 *       (unix:PATH), listen on MAIN_URI, answer ACK 0, then read the main
 *       channel to its end without ever answering (no RUNNING, no error).
 *   silent_peer cpr-old CPR_URI [MEM_MIB [VCPUS]]
 *       a live update's old process: connect to a new process's cpr channel,
 *       hand over a guest RAM memfd of MEM_MIB (64) MiB for VCPUS (1) vCPUs,
 *       read the ACK, and never connect the main channel.
 *
 * It prints "ready URI" on stdout once it listens (the URI with the port
 * resolved) or, for cpr-old, "acked STATUS" once the ACK came, and then
 * stays alive and silent until it is killed.  Exit status 1 when a step
 * fails before that (said on stderr), 2 for usage errors.
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "migration/channel.h"
#include "migration/cpr.h"

static int peer_usage(void)
{
	fputs("usage: silent_peer main URI\n"
	      "       silent_peer cpr CPR_URI MAIN_URI\n"
	      "       silent_peer cpr-old CPR_URI [MEM_MIB [VCPUS]]\n", stderr);
	return 2;
}

static int peer_fail(const char *what, const char *why)
{
	fprintf(stderr, "silent_peer: %s: %s\n", what, why);
	return 1;
}

/* Listen on @uri; print "ready URI" (the port resolved).  The fd or -1. */
static int peer_listen(const char *uri)
{
	struct channel ch;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char err[256], host[NI_MAXHOST], port[NI_MAXSERV];
	int fd;

	if (channel_parse(uri, &ch, err, sizeof(err))) {
		peer_fail(uri, err);
		return -1;
	}
	fd = channel_listen(&ch.cu);
	if (fd < 0) {
		peer_fail(uri, strerror(-fd));
		return -1;
	}
	if (ch.cu.kind == CHANNEL_TCP &&
	    getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 &&
	    getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), port, sizeof(port),
			NI_NUMERICHOST | NI_NUMERICSERV) == 0)
		printf("ready tcp:%s:%s\n", host, port);
	else
		printf("ready %s\n", uri);
	fflush(stdout);
	return fd;
}

/* Accept one connection on @lfd and read it to its end, answering nothing. */
static int peer_swallow(int lfd)
{
	static char buf[1 << 16];
	int fd = channel_accept(lfd, -1, -1);
	ssize_t n;

	if (fd < 0)
		return peer_fail("accept", strerror(-fd));
	do
		n = read(fd, buf, sizeof(buf));
	while (n > 0 || (n < 0 && errno == EINTR));
	/* Keep the connection open: a closed one would be an answer. */
	return 0;
}

/* Alive and silent until killed. */
static int peer_hang(void)
{
	for (;;)
		pause();
	return 0;
}

static int peer_cpr_new(const char *cpr_uri, const char *main_uri)
{
	struct cpr_state st;
	char err[512];
	int lfd, cfd, mfd, r;

	lfd = cpr_listen(cpr_uri, err, sizeof(err));
	if (lfd < 0)
		return peer_fail(cpr_uri, err);
	printf("ready %s\n", cpr_uri);
	fflush(stdout);
	cfd = cpr_accept(lfd, -1);
	if (cfd < 0)
		return peer_fail("cpr accept", strerror(-cfd));
	r = cpr_recv(cfd, 10000, &st, err, sizeof(err));
	if (r)
		return peer_fail("cpr receive", err);
	mfd = peer_listen(main_uri);
	if (mfd < 0)
		return 1;
	/* Holding the guest's memfd, as a new process would. */
	if (cpr_send_ack(cfd, 0, NULL))
		return peer_fail("cpr ACK", "the old process went away");
	if (peer_swallow(mfd))
		return 1;
	return peer_hang();
}

static int peer_cpr_old(const char *cpr_uri, unsigned long mem_mib, unsigned long vcpus)
{
	struct cpr_state st = { .nvcpus = (uint32_t)vcpus, .nfds = 1 };
	char err[512], text[CPR_TEXT_MAX + 1];
	int cfd, r;

	for (unsigned i = 0; i < CPR_MAX_FDS; i++)
		st.fds[i].fd = -1;
	st.fds[0].kind = CPR_FD_RAM;
	snprintf(st.fds[0].name, sizeof(st.fds[0].name), "ram0");
	st.fds[0].bytes = (uint64_t)mem_mib << 20;
	st.fds[0].fd = memfd_create("ram0", MFD_CLOEXEC);
	if (st.fds[0].fd < 0 || ftruncate(st.fds[0].fd, (off_t)st.fds[0].bytes) < 0)
		return peer_fail("memfd", strerror(errno));
	cfd = cpr_connect(cpr_uri, 10000, -1, err, sizeof(err));
	if (cfd < 0)
		return peer_fail(cpr_uri, err);
	if (cpr_send(cfd, &st, err, sizeof(err)))
		return peer_fail("cpr send", err);
	r = cpr_recv_ack(cfd, 30000, -1, text, sizeof(text));
	printf("acked %d %s\n", r, text);
	fflush(stdout);
	return peer_hang();
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "main")) {
		int lfd = peer_listen(argv[2]);

		if (lfd < 0 || peer_swallow(lfd))
			return 1;
		return peer_hang();
	}
	if (argc == 4 && !strcmp(argv[1], "cpr"))
		return peer_cpr_new(argv[2], argv[3]);
	if (argc >= 3 && argc <= 5 && !strcmp(argv[1], "cpr-old")) {
		unsigned long mem = argc > 3 ? strtoul(argv[3], NULL, 10) : 64;
		unsigned long vcpus = argc > 4 ? strtoul(argv[4], NULL, 10) : 1;

		if (!mem || mem > (1ul << 20) || !vcpus || vcpus > 32)
			return peer_usage();
		return peer_cpr_old(argv[2], mem, vcpus);
	}
	return peer_usage();
}
