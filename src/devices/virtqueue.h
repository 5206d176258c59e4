/*
 * Split virtqueues, device side: taking descriptor chains the guest made
 * available and returning them used.
 *
 * Everything in guest memory is untrusted and may change under us (another
 * vCPU writes it): each field is read once into a local copy, then checked.
 * Every address is checked against guest RAM (overflow-safe) before any
 * access; a chain is bounded (VQ_MAX_CHAIN descriptors, VQ_MAX_CHAIN_BYTES
 * in all), may not loop, and lists its device-readable buffers before its
 * device-writable ones.  Indirect descriptors are not offered.
 *
 * Threads: a virtqueue belongs to one thread at a time (its device's I/O
 * thread, or whoever holds the device lock); the functions take no locks.
 */
#ifndef VMFERRY_DEVICES_VIRTQUEUE_H
#define VMFERRY_DEVICES_VIRTQUEUE_H

#include <stdbool.h>
#include <stdint.h>

#define VQ_MAX_SIZE 256u               /* QueueNumMax */
#define VQ_MAX_CHAIN 64u               /* descriptors per chain */
#define VQ_MAX_CHAIN_BYTES (4u << 20)  /* bytes per chain, all buffers */

/* Guest RAM as a device sees it: [gpa, gpa + bytes) at host. */
struct vq_guest {
	uint8_t *host;
	uint64_t gpa;
	uint64_t bytes;
};

/* One buffer of a chain. */
struct vq_seg {
	uint64_t gpa;
	uint32_t len;
	bool write;  /* device-writable */
};

/* A chain taken from the avail ring. */
struct vq_chain {
	uint16_t head;          /* its id for vq_push */
	uint16_t nsegs;
	uint16_t nread;         /* seg[0..nread) are device-readable, the rest writable */
	uint64_t read_bytes, write_bytes;
	struct vq_seg seg[VQ_MAX_CHAIN];
};

struct virtqueue {
	uint16_t size;          /* entries, a power of two; 0: not set up */
	bool event_idx;         /* VIRTIO_F_EVENT_IDX negotiated */
	uint64_t desc_gpa, avail_gpa, used_gpa;
	uint16_t last_avail;    /* the next avail entry to take */
	uint16_t used_idx;      /* the next used entry to fill */
	/* host addresses of the rings, set by vq_setup */
	uint8_t *desc, *avail, *used;
};

/* A pointer to [@gpa, +@len) in @g, or NULL when any of it lies outside (overflow-safe). */
void *vq_guest_ptr(const struct vq_guest *g, uint64_t gpa, uint64_t len);

/*
 * Set @vq up over the rings at @desc/@avail/@used with @size entries,
 * taking from index @last_avail and filling at @used_idx (0, 0 for a new
 * queue; a migrated one resumes where it was).  0, or -EINVAL when the
 * size is not a power of two in 1..VQ_MAX_SIZE, a ring is misaligned or
 * not inside guest RAM; @vq is then left not set up (size 0).
 */
int vq_setup(struct virtqueue *vq, const struct vq_guest *g, uint16_t size, uint64_t desc,
	     uint64_t avail, uint64_t used, bool event_idx, uint16_t last_avail,
	     uint16_t used_idx);

/*
 * Take the next available chain into @c.  1: taken; 0: none available;
 * -EPROTO: the avail ring is broken (its index ran more than size ahead, a
 * head out of range); -EINVAL: the chain is malformed (an address outside
 * RAM, a loop, too many descriptors, a readable buffer after a writable
 * one, an indirect one); -E2BIG: more than VQ_MAX_CHAIN_BYTES.  On an
 * error nothing is consumed: the device needs a reset.
 */
int vq_pop(struct virtqueue *vq, const struct vq_guest *g, struct vq_chain *c);

/* Return chain @head as used with @len bytes written, and publish it. */
void vq_push(struct virtqueue *vq, uint16_t head, uint32_t len);

/*
 * The device is about to wait for a kick: with EVENT_IDX, ask for one at
 * the next entry (avail_event).  True when entries are available already
 * (take them instead of waiting: the guest may not kick for them).
 */
bool vq_arm_kick(struct virtqueue *vq);

/* Whether the guest made entries available that vq_pop has not taken. */
bool vq_avail_pending(const struct virtqueue *vq);

/* Guest-physical range of the used ring, for dirty logging. */
uint64_t vq_used_bytes(const struct virtqueue *vq);

#endif
