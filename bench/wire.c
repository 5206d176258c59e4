/* The user-space wire; see wire.h. */
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static void wire_fifo_push(struct wire_fifo *f, uint32_t v)
{
	f->slot[(f->head + f->len++) % WIRE_SLOTS] = v;
}

static uint32_t wire_fifo_pop(struct wire_fifo *f)
{
	uint32_t v = f->slot[f->head];

	f->head = (f->head + 1) % WIRE_SLOTS;
	f->len--;
	return v;
}

void wire_dir_init(struct wire_dir *d, uint64_t rate_bps, uint64_t delay_ns,
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

unsigned wire_band_of(const uint8_t *pkt, uint32_t len)
{
	return len >= 2 && (pkt[0] >> 4) == 4 && (pkt[1] & 0x10) ? 0 : 1;
}

int wire_dir_next_slot(const struct wire_dir *d)
{
	return d->free_slots.len ? (int)d->free_slots.slot[d->free_slots.head] : -1;
}

int wire_dir_enqueue(struct wire_dir *d, uint64_t now_ns, uint32_t len, unsigned band)
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

void wire_dir_advance(struct wire_dir *d, uint64_t now_ns)
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

int wire_dir_due(struct wire_dir *d, uint64_t now_ns)
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

void wire_dir_release(struct wire_dir *d, int slot)
{
	wire_fifo_push(&d->free_slots, (uint32_t)slot);
}

uint64_t wire_dir_next_ns(const struct wire_dir *d)
{
	uint64_t t = UINT64_MAX;

	if (d->flight.len)
		t = d->arrive_ns[d->flight.slot[d->flight.head]];
	if ((d->band[0].len || d->band[1].len) && d->busy_until_ns < t)
		t = d->busy_until_ns;
	return t;
}

static uint64_t wire_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *wire_thread(void *arg)
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
static int wire_open_tun(const char *ns_path, const char *name)
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

int wire_start(struct wire *w, const char *const ns_path[2],
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

void wire_stop(struct wire *w)
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
