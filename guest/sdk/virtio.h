/*
 * The guest SDK's polling virtio driver: virtio-mmio (version 2) devices
 * from the boot info, split virtqueues polled for completion (no
 * interrupts: the guest runs with IF=0), EVENT_IDX to kick only when the
 * device asks.  A queue belongs to one vCPU; it carries one request at a
 * time (vmf_blk_request), or up to VMF_BLK_MAX_INFLIGHT at once
 * (vmf_blk_submit / vmf_blk_complete).  docs/guest-abi.md "Devices" has
 * the rules.
 */
#ifndef VMF_GUEST_VIRTIO_H
#define VMF_GUEST_VIRTIO_H

#include <stdint.h>
#include "vmferry/guest_abi.h"
#include "vmferry/virtio.h"

#define VMF_VQ_SIZE 16u       /* entries per queue */
#define VMF_VQ_MEM_BYTES 4096u /* what vmf_blk_init needs per queue (one page) */
/* Requests in flight per queue: three descriptors each (header, data, status). */
#define VMF_BLK_MAX_INFLIGHT (VMF_VQ_SIZE / 3u)

struct vmf_vq {
	uint16_t index;
	uint16_t avail_idx;   /* next entry to publish */
	uint16_t used_seen;   /* used entries consumed */
	int event_idx;
	struct virtq_desc *desc;
	volatile uint16_t *avail;  /* flags, idx, ring[VMF_VQ_SIZE], used_event */
	volatile uint8_t *used;
	uint8_t *req;              /* per slot: a request header, then its status byte */
	volatile uint32_t *notify;
};

struct vmf_blk {
	volatile uint8_t *regs;
	uint64_t capacity;    /* sectors */
	uint16_t nqueues;     /* set up by vmf_blk_init */
	uint64_t features;    /* negotiated */
	struct vmf_vq vq[8];
};

/*
 * Find the first block device in @bi and set it up with up to @want queues,
 * queue q's rings and request header in the page at @mem[q] (zeroed, in
 * guest RAM).  One vCPU does it, before any queue is used.  0, or a negative
 * code: -1 no block device, -2 not a virtio-mmio v2 device, -3 features
 * refused, -4 a queue cannot be set up.
 */
int vmf_blk_init(struct vmf_blk *d, const struct vmf_boot_info *bi, unsigned want,
		 void *const mem[]);

/*
 * One request on queue @q: @type (VIRTIO_BLK_T_*) at @sector with @len
 * bytes at @buf (0 for none), waiting for it by polling.  The status byte
 * (VIRTIO_BLK_S_*).
 */
uint8_t vmf_blk_request(struct vmf_blk *d, unsigned q, uint32_t type, uint64_t sector,
			void *buf, uint32_t len);

/*
 * Start a request in @slot (0..VMF_BLK_MAX_INFLIGHT-1, not in flight) of
 * queue @q and return at once; @buf must stay put until it completes.
 */
void vmf_blk_submit(struct vmf_blk *d, unsigned q, unsigned slot, uint32_t type,
		    uint64_t sector, void *buf, uint32_t len);
/* Wait (polling) for the next request of queue @q to complete: its slot; its status in *@status. */
unsigned vmf_blk_complete(struct vmf_blk *d, unsigned q, uint8_t *status);

#endif
