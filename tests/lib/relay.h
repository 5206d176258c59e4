/*
 * A TCP relay on 127.0.0.1 (a test peer: the stand-in for a network path
 * that breaks): every connection to its port is forwarded to @dst_port, and
 * relay_cut() closes every forwarded connection at once while the relay
 * keeps listening, as when a link between two hosts fails and comes back.
 * One thread per relay; it fails the current cmocka test on setup errors.
 */
#ifndef VMFERRY_TESTS_RELAY_H
#define VMFERRY_TESTS_RELAY_H

#include <pthread.h>
#include <stdatomic.h>

#define RELAY_MAX_FDS 32

struct relay {
	int listen_fd, ctl_fd;   /* ctl: an eventfd; 1 = cut, RELAY_STOP = stop */
	int dst_port;
	int port;                /* where it listens (127.0.0.1) */
	pthread_t thread;
	int fds[RELAY_MAX_FDS];  /* pairs: [2i] accepted, [2i+1] upstream */
	int nfds;
	_Atomic int accepted, cuts;
};
#define RELAY_STOP 1000u

/* Listen on an ephemeral port of 127.0.0.1, forwarding to @dst_port. */
void relay_start(struct relay *r, int dst_port);
/* Close every forwarded connection at once; the relay keeps listening. */
void relay_cut(struct relay *r);
/* Stop the thread and close everything. */
void relay_stop(struct relay *r);

#endif
