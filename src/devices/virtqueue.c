/* Split virtqueues, device side; see virtqueue.h. */
#include "devices/virtqueue.h"

#include <errno.h>
#include <string.h>

#include "vmferry/virtio.h"

void *vq_guest_ptr(const struct vq_guest *g, uint64_t gpa, uint64_t len)
{
	if (gpa < g->gpa || len > g->bytes || gpa - g->gpa > g->bytes - len)
		return NULL;
	return g->host + (gpa - g->gpa);
}

int vq_setup(struct virtqueue *vq, const struct vq_guest *g, uint16_t size, uint64_t desc,
	     uint64_t avail, uint64_t used, bool event_idx, uint16_t last_avail,
	     uint16_t used_idx)
{
	struct virtqueue q = {
		.size = size, .event_idx = event_idx, .desc_gpa = desc, .avail_gpa = avail,
		.used_gpa = used, .last_avail = last_avail, .used_idx = used_idx,
	};

	vq->size = 0;
	if (size == 0 || size > VQ_MAX_SIZE || (size & (size - 1)))
		return -EINVAL;
	if (desc % 16 || avail % 2 || used % 4)
		return -EINVAL;
	q.desc = vq_guest_ptr(g, desc, VIRTQ_DESC_BYTES(size));
	q.avail = vq_guest_ptr(g, avail, VIRTQ_AVAIL_BYTES(size));
	q.used = vq_guest_ptr(g, used, VIRTQ_USED_BYTES(size));
	if (!q.desc || !q.avail || !q.used)
		return -EINVAL;
	*vq = q;
	return 0;
}

static uint16_t vq_load16(const uint8_t *p)
{
	return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
}

static void vq_store16(uint8_t *p, uint16_t v)
{
	__atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE);
}

/* Descriptor @i, copied once out of guest memory. */
static struct virtq_desc vq_desc(const struct virtqueue *vq, uint16_t i)
{
	struct virtq_desc d;

	memcpy(&d, vq->desc + 16u * i, sizeof(d));
	__atomic_signal_fence(__ATOMIC_SEQ_CST); /* one read, not re-read later */
	return d;
}

/* Walk the chain at @head into @c.  0 or -EINVAL / -E2BIG. */
static int vq_walk(const struct virtqueue *vq, const struct vq_guest *g, uint16_t head,
		   struct vq_chain *c)
{
	uint16_t i = head;

	c->head = head;
	c->nsegs = c->nread = 0;
	c->read_bytes = c->write_bytes = 0;
	for (;;) {
		struct virtq_desc d = vq_desc(vq, i);
		struct vq_seg *s;

		/* A chain longer than the table repeats a descriptor: a loop. */
		if (c->nsegs == VQ_MAX_CHAIN || c->nsegs == vq->size)
			return -EINVAL;
		if (d.flags & VIRTQ_DESC_F_INDIRECT)
			return -EINVAL;
		if (!vq_guest_ptr(g, d.addr, d.len))
			return -EINVAL;
		s = &c->seg[c->nsegs++];
		s->gpa = d.addr;
		s->len = d.len;
		s->write = d.flags & VIRTQ_DESC_F_WRITE;
		if (s->write) {
			c->write_bytes += d.len;
		} else {
			if (c->nread != c->nsegs - 1)
				return -EINVAL; /* readable after writable */
			c->nread++;
			c->read_bytes += d.len;
		}
		if (c->read_bytes + c->write_bytes > VQ_MAX_CHAIN_BYTES)
			return -E2BIG;
		if (!(d.flags & VIRTQ_DESC_F_NEXT))
			return 0;
		if (d.next >= vq->size)
			return -EINVAL;
		i = d.next;
	}
}

int vq_pop(struct virtqueue *vq, const struct vq_guest *g, struct vq_chain *c)
{
	uint16_t avail_idx, head;
	int r;

	if (!vq->size)
		return 0;
	avail_idx = vq_load16(vq->avail + 2);
	if (avail_idx == vq->last_avail)
		return 0;
	if ((uint16_t)(avail_idx - vq->last_avail) > vq->size)
		return -EPROTO;
	head = __atomic_load_n((const uint16_t *)(vq->avail + 4 + 2u * (vq->last_avail % vq->size)),
			       __ATOMIC_RELAXED);
	if (head >= vq->size)
		return -EPROTO;
	r = vq_walk(vq, g, head, c);
	if (r)
		return r;
	vq->last_avail++;
	return 1;
}

void vq_push(struct virtqueue *vq, uint16_t head, uint32_t len)
{
	struct virtq_used_elem e = { .id = head, .len = len };

	if (!vq->size)
		return;
	memcpy(vq->used + 4 + 8u * (vq->used_idx % vq->size), &e, sizeof(e));
	vq->used_idx++;
	vq_store16(vq->used + 2, vq->used_idx); /* release: the element first */
}

bool vq_arm_kick(struct virtqueue *vq)
{
	if (!vq->size)
		return false;
	/*
	 * avail_event must be visible before we look at the avail index again
	 * (the guest: publish its index, then read avail_event): sequentially
	 * consistent store and load, a full barrier between them on x86.
	 */
	if (vq->event_idx)
		__atomic_store_n((uint16_t *)(vq->used + 4 + 8u * vq->size), vq->last_avail,
				 __ATOMIC_SEQ_CST);
	return __atomic_load_n((const uint16_t *)(vq->avail + 2), __ATOMIC_SEQ_CST) !=
	       vq->last_avail;
}

bool vq_avail_pending(const struct virtqueue *vq)
{
	return vq->size && vq_load16(vq->avail + 2) != vq->last_avail;
}

uint64_t vq_used_bytes(const struct virtqueue *vq)
{
	return VIRTQ_USED_BYTES(vq->size);
}
