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
 * Compiled once into the benchmarks' library (bench/wire.c); the postcopy
 * and precopy benchmarks reach it through bench.h.
 */
#ifndef VMFERRY_BENCH_WIRE_H
#define VMFERRY_BENCH_WIRE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

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

/* Empty, with this rate, delay and per-band limit; keeps d->data. */
void wire_dir_init(struct wire_dir *d, uint64_t rate_bps, uint64_t delay_ns,
		   uint64_t limit_bytes);

/* IPv4 TOS low-delay -> band 0; anything else -> band 1. */
unsigned wire_band_of(const uint8_t *pkt, uint32_t len);

/* The slot the next wire_dir_enqueue takes (read the packet there first), or -1: none free. */
int wire_dir_next_slot(const struct wire_dir *d);

/*
 * Queue a packet of @len bytes for @band, read at @now_ns, in the slot
 * wire_dir_next_slot named: that slot, or -1 when the band is full (the
 * packet is dropped, the slot stays free).
 */
int wire_dir_enqueue(struct wire_dir *d, uint64_t now_ns, uint32_t len, unsigned band);

/*
 * Put on the link every packet whose turn has come by @now_ns: while the link
 * is free at or before now, the first packet of the best band starts (at the
 * later of the link's free time and its arrival, so a late call loses no
 * link time) and goes into flight.
 */
void wire_dir_advance(struct wire_dir *d, uint64_t now_ns);

/* The next packet delivered by @now_ns (a slot to write out, then wire_dir_release), or -1. */
int wire_dir_due(struct wire_dir *d, uint64_t now_ns);
/* Give @slot back once its packet is written out. */
void wire_dir_release(struct wire_dir *d, int slot);

/* When this direction next has something to do (UINT64_MAX: nothing). */
uint64_t wire_dir_next_ns(const struct wire_dir *d);

/* ---- the thread ---- */

struct wire {
	int tun[2];             /* tun[i]: the TUN device in namespace i */
	int stop_fd;            /* eventfd */
	struct wire_dir dir[2]; /* dir[i]: from tun[i] to tun[1 - i] */
	pthread_t thread;
	bool running;
	int err;                /* the thread's first I/O error (-errno), 0 */
};

/*
 * Run the wire between the TUN devices @name[i] in the namespaces at
 * @ns_path[i].  0 or -errno.  Call from a thread that may change namespace
 * for a moment (setns applies to the calling thread only).
 */
int wire_start(struct wire *w, const char *const ns_path[2], const char *const name[2],
	       uint64_t rate_bps, uint64_t delay_ns, uint64_t limit_bytes);

/* Stop the thread and close the devices.  Idempotent.  Not signal-safe. */
void wire_stop(struct wire *w);

#endif
