/*
 * bench/wire.h: a link with a rate and a propagation delay, in user space,
 * between two TUN devices in two network namespaces - for kernels without
 * netem (this project's CI kernel has neither sch_netem nor sch_fq, so no
 * qdisc can delay a packet).
 *
 * Each direction models a host's NIC queue and the wire behind it:
 *   - a packet read from one TUN waits in one of two bands, like the
 *     pfifo_fast a host's NIC has: IP packets marked low-delay (TOS 0x10,
 *     what the postcopy urgent channel sets) in band 0, the rest in band 1;
 *     band 0 always goes first, and each band holds at most `limit_bytes`
 *     (tail drop, like a full NIC queue; TCP recovers);
 *   - the link sends one packet at a time at `rate_bps`: a packet starts when
 *     the link is free and it is the first in the best band;
 *   - it reaches the other TUN `delay_ns` after its last bit left.
 *
 * The scheduling core (wire_dir_*) is pure and takes the time as an
 * argument, for tests/unit/test_wire.c.  wire_start() runs both directions
 * on one thread (real-time priority when allowed: it stands for hardware,
 * not for a host's CPU; timer slack 1 ns) until wire_stop().
 *
 * A header of static functions, included by bench_common.h.
 */
#ifndef VMFERRY_BENCH_WIRE_H
#define VMFERRY_BENCH_WIRE_H

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define WIRE_MTU        9000u    /* jumbo frames, as migration networks use */
#define WIRE_SLOTS      1024u    /* packets held per direction, queued or in flight */
#define WIRE_BANDS      2u

struct wire_fifo {
	uint32_t slot[WIRE_SLOTS];
	uint32_t head, len;
};

/* One direction.  Slots hold the packets; the FIFOs hold slot numbers. */
struct wire_dir {
	uint64_t rate_bps, delay_ns, limit_bytes;
	uint64_t busy_until_ns;             /* the link sends until then */
	struct wire_fifo band[WIRE_BANDS];  /* waiting for the link */
	uint64_t band_bytes[WIRE_BANDS];
	struct wire_fifo flight;            /* sent, propagating; in delivery order */
	struct wire_fifo free_slots;
	uint64_t arrive_ns[WIRE_SLOTS];     /* queued: read at; in flight: delivered at */
	uint32_t len[WIRE_SLOTS];
	uint8_t (*data)[WIRE_MTU];          /* WIRE_SLOTS packets, NULL in the tests */
	uint64_t packets, bytes, drops;
};

static inline void wire_fifo_push(struct wire_fifo *f, uint32_t v)
{
	f->slot[(f->head + f->len++) % WIRE_SLOTS] = v;
}

static inline uint32_t wire_fifo_pop(struct wire_fifo *f)
{
	uint32_t v = f->slot[f->head];

	f->head = (f->head + 1) % WIRE_SLOTS;
	f->len--;
	return v;
}

static inline void wire_dir_init(struct wire_dir *d, uint64_t rate_bps, uint64_t delay_ns,
				 uint64_t limit_bytes)
{
	uint8_t (*data)[WIRE_MTU] = d->data;

	memset(d, 0, sizeof(*d));
	d->data = data;
	d->rate_bps = rate_bps;
	d->delay_ns = delay_ns;
	d->limit_bytes = limit_bytes;
	for (uint32_t i = 0; i < WIRE_SLOTS; i++)
		wire_fifo_push(&d->free_slots, i);
}

/* IPv4 TOS low-delay -> band 0; anything else -> band 1. */
static inline unsigned wire_band_of(const uint8_t *pkt, uint32_t len)
{
	return len >= 2 && (pkt[0] >> 4) == 4 && (pkt[1] & 0x10) ? 0 : 1;
}

/* The slot the next wire_dir_enqueue takes (read the packet there first), or -1: none free. */
static inline int wire_dir_next_slot(const struct wire_dir *d)
{
	return d->free_slots.len ? (int)d->free_slots.slot[d->free_slots.head] : -1;
}

/*
 * Queue a packet of @len bytes for @band, read at @now_ns, in the slot
 * wire_dir_next_slot named: that slot, or -1 when the band is full (the
 * packet is dropped, the slot stays free).
 */
static inline int wire_dir_enqueue(struct wire_dir *d, uint64_t now_ns, uint32_t len, unsigned band)
{
	uint32_t s;

	if (band >= WIRE_BANDS)
		band = WIRE_BANDS - 1;
	if (!d->free_slots.len || d->band_bytes[band] + len > d->limit_bytes) {
		d->drops++;
		return -1;
	}
	s = wire_fifo_pop(&d->free_slots);
	d->len[s] = len;
	d->arrive_ns[s] = now_ns;
	d->band_bytes[band] += len;
	wire_fifo_push(&d->band[band], s);
	return (int)s;
}

/*
 * Put on the link every packet whose turn has come by @now_ns: while the link
 * is free at or before now, the first packet of the best band starts (at the
 * later of the link's free time and its arrival, so a late call loses no
 * link time) and goes into flight.
 */
static inline void wire_dir_advance(struct wire_dir *d, uint64_t now_ns)
{
	while (d->busy_until_ns <= now_ns) {
		unsigned b = 0;
		uint64_t start;
		uint32_t s;

		while (b < WIRE_BANDS && !d->band[b].len)
			b++;
		if (b == WIRE_BANDS)
			return;
		s = wire_fifo_pop(&d->band[b]);
		d->band_bytes[b] -= d->len[s];
		start = d->busy_until_ns > d->arrive_ns[s] ? d->busy_until_ns : d->arrive_ns[s];
		d->busy_until_ns = start + (uint64_t)d->len[s] * 8 * 1000000000ull / d->rate_bps;
		d->arrive_ns[s] = d->busy_until_ns + d->delay_ns;
		wire_fifo_push(&d->flight, s);
	}
}

/* The next packet delivered by @now_ns (a slot to write out, then wire_dir_release), or -1. */
static inline int wire_dir_due(struct wire_dir *d, uint64_t now_ns)
{
	uint32_t s;

	if (!d->flight.len)
		return -1;
	s = d->flight.slot[d->flight.head];
	if (d->arrive_ns[s] > now_ns)
		return -1;
	wire_fifo_pop(&d->flight);
	d->packets++;
	d->bytes += d->len[s];
	return (int)s;
}

static inline void wire_dir_release(struct wire_dir *d, int slot)
{
	wire_fifo_push(&d->free_slots, (uint32_t)slot);
}

/* When this direction next has something to do (UINT64_MAX: nothing). */
static inline uint64_t wire_dir_next_ns(const struct wire_dir *d)
{
	uint64_t t = UINT64_MAX;

	if (d->flight.len)
		t = d->arrive_ns[d->flight.slot[d->flight.head]];
	if ((d->band[0].len || d->band[1].len) && d->busy_until_ns < t)
		t = d->busy_until_ns;
	return t;
}

/* ---- the thread ---- */

struct wire {
	int tun[2];             /* tun[i]: the TUN device in namespace i */
	int stop_fd;            /* eventfd */
	struct wire_dir dir[2]; /* dir[i]: from tun[i] to tun[1 - i] */
	pthread_t thread;
	bool running;
	int err;                /* the thread's first I/O error (-errno), 0 */
};

static inline uint64_t wire_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void *wire_thread(void *arg)
{
	struct wire *w = arg;
	struct sched_param sp = { .sched_priority = 1 };

	pthread_setname_np(pthread_self(), "bench-wire");
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp); /* best effort */
	for (;;) {
		struct pollfd pfd[3] = {
			{ .fd = w->tun[0], .events = POLLIN },
			{ .fd = w->tun[1], .events = POLLIN },
			{ .fd = w->stop_fd, .events = POLLIN },
		};
		uint64_t now = wire_now_ns(), next = UINT64_MAX;
		struct timespec tmo, *tp = NULL;

		for (int i = 0; i < 2; i++) {
			uint64_t t = wire_dir_next_ns(&w->dir[i]);

			if (t < next)
				next = t;
		}
		if (next != UINT64_MAX) {
			uint64_t wait = next > now ? next - now : 0;

			tmo.tv_sec = (time_t)(wait / 1000000000ull);
			tmo.tv_nsec = (long)(wait % 1000000000ull);
			tp = &tmo;
		}
		if (ppoll(pfd, 3, tp, NULL) < 0 && errno != EINTR) {
			w->err = -errno;
			return NULL;
		}
		if (pfd[2].revents)
			return NULL;
		for (int i = 0; i < 2; i++) {
			struct wire_dir *d = &w->dir[i];
			uint8_t scratch[WIRE_MTU];

			/* Read what is there; a full band drops, as a NIC queue would. */
			while (pfd[i].revents & POLLIN) {
				int slot = wire_dir_next_slot(d);
				uint8_t *buf = slot >= 0 ? d->data[slot] : scratch;
				ssize_t n = read(w->tun[i], buf, WIRE_MTU);

				if (n < 0 && errno == EINTR)
					continue;
				if (n < 0 && errno == EAGAIN)
					break;
				if (n <= 0) {
					w->err = n < 0 ? -errno : -EPIPE;
					return NULL;
				}
				if (slot < 0)
					d->drops++;
				else
					wire_dir_enqueue(d, wire_now_ns(), (uint32_t)n,
							 wire_band_of(buf, (uint32_t)n));
			}
		}
		now = wire_now_ns();
		for (int i = 0; i < 2; i++) {
			struct wire_dir *d = &w->dir[i];
			int s;

			wire_dir_advance(d, now);
			while ((s = wire_dir_due(d, now)) >= 0) {
				/* A TUN write never blocks for long; a failed one is a lost packet. */
				if (write(w->tun[1 - i], d->data[s], d->len[s]) < 0)
					d->drops++;
				wire_dir_release(d, s);
			}
			wire_dir_advance(d, now);
		}
	}
}

/* Attach to the TUN device @name of the network namespace at @ns_path. */
static inline int wire_open_tun(const char *ns_path, const char *name)
{
	struct ifreq ifr;
	int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	int nsfd = open(ns_path, O_RDONLY | O_CLOEXEC);
	int fd = -1, err = 0;

	if (self < 0 || nsfd < 0 || setns(nsfd, CLONE_NEWNET) < 0) {
		err = -errno;
		goto out;
	}
	fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
	} else {
		memset(&ifr, 0, sizeof(ifr));
		ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
		snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
		if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
			err = -errno;
			close(fd);
			fd = -1;
		}
	}
	if (setns(self, CLONE_NEWNET) < 0 && !err)
		err = -errno; /* cannot happen: we came from there */
out:
	if (self >= 0)
		close(self);
	if (nsfd >= 0)
		close(nsfd);
	return err ? err : fd;
}

/*
 * Run the wire between the TUN devices @name[i] in the namespaces at
 * @ns_path[i].  0 or -errno.  Call from a thread that may change namespace
 * for a moment (setns applies to the calling thread only).
 */
static inline int wire_start(struct wire *w, const char *const ns_path[2],
			     const char *const name[2], uint64_t rate_bps, uint64_t delay_ns,
			     uint64_t limit_bytes)
{
	int r;

	memset(w, 0, sizeof(*w));
	w->tun[0] = w->tun[1] = w->stop_fd = -1;
	for (int i = 0; i < 2; i++) {
		w->dir[i].data = malloc((size_t)WIRE_SLOTS * WIRE_MTU);
		if (!w->dir[i].data) {
			r = -ENOMEM;
			goto fail;
		}
		wire_dir_init(&w->dir[i], rate_bps, delay_ns, limit_bytes);
		w->tun[i] = wire_open_tun(ns_path[i], name[i]);
		if (w->tun[i] < 0) {
			r = w->tun[i];
			goto fail;
		}
	}
	w->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (w->stop_fd < 0) {
		r = -errno;
		goto fail;
	}
	r = -pthread_create(&w->thread, NULL, wire_thread, w);
	if (r)
		goto fail;
	w->running = true;
	return 0;
fail:
	for (int i = 0; i < 2; i++) {
		if (w->tun[i] >= 0)
			close(w->tun[i]);
		free(w->dir[i].data);
		w->dir[i].data = NULL;
	}
	if (w->stop_fd >= 0)
		close(w->stop_fd);
	w->tun[0] = w->tun[1] = w->stop_fd = -1;
	return r;
}

/* Stop the thread and close the devices.  Idempotent.  Not signal-safe. */
static inline void wire_stop(struct wire *w)
{
	uint64_t one = 1;

	if (!w->running)
		return;
	w->running = false;
	if (write(w->stop_fd, &one, sizeof(one)) < 0)
		pthread_cancel(w->thread);
	pthread_join(w->thread, NULL);
	for (int i = 0; i < 2; i++) {
		close(w->tun[i]);
		free(w->dir[i].data);
		w->dir[i].data = NULL;
	}
	close(w->stop_fd);
	w->tun[0] = w->tun[1] = w->stop_fd = -1;
}

#endif
