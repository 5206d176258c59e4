/* The guest SDK's polling virtio driver; see virtio.h. */
#include "virtio.h"
#include "vmf.h"

#define VMF_VQ_AVAIL_OFF 0x400u /* in the queue's page: desc at 0 */
#define VMF_VQ_USED_OFF  0x800u
#define VMF_VQ_REQ_OFF   0xc00u /* per slot: the request header, then the status byte */
#define VMF_VQ_REQ_BYTES 32u
#define VMF_SPINS_BEFORE_SLEEP 2000u

static uint32_t vmf_reg_read(const struct vmf_blk *d, uint32_t off)
{
	return *(volatile uint32_t *)(d->regs + off);
}

static void vmf_reg_write(struct vmf_blk *d, uint32_t off, uint32_t v)
{
	*(volatile uint32_t *)(d->regs + off) = v;
}

static int vmf_blk_features(struct vmf_blk *d)
{
	uint64_t want = 1ull << VIRTIO_F_VERSION_1 | 1ull << VIRTIO_F_EVENT_IDX |
			1ull << VIRTIO_BLK_F_MQ | 1ull << VIRTIO_BLK_F_FLUSH |
			1ull << VIRTIO_BLK_F_BLK_SIZE | 1ull << VIRTIO_BLK_F_SEG_MAX;
	uint64_t offered;

	vmf_reg_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	offered = vmf_reg_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
	vmf_reg_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	offered |= (uint64_t)vmf_reg_read(d, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
	if (!(offered & 1ull << VIRTIO_F_VERSION_1))
		return -3;
	d->features = offered & want;
	vmf_reg_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	vmf_reg_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)d->features);
	vmf_reg_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	vmf_reg_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(d->features >> 32));
	vmf_reg_write(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
					     VIRTIO_STATUS_FEATURES_OK);
	if (!(vmf_reg_read(d, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK))
		return -3;
	return 0;
}

static int vmf_vq_setup(struct vmf_blk *d, uint16_t q, uint8_t *mem)
{
	struct vmf_vq *vq = &d->vq[q];
	uint64_t gpa = (uint64_t)mem;

	vmf_reg_write(d, VIRTIO_MMIO_QUEUE_SEL, q);
	if (vmf_reg_read(d, VIRTIO_MMIO_QUEUE_NUM_MAX) < VMF_VQ_SIZE)
		return -4;
	vq->index = q;
	vq->event_idx = (d->features >> VIRTIO_F_EVENT_IDX) & 1;
	vq->desc = (struct virtq_desc *)mem;
	vq->avail = (volatile uint16_t *)(mem + VMF_VQ_AVAIL_OFF);
	vq->used = mem + VMF_VQ_USED_OFF;
	vq->req = mem + VMF_VQ_REQ_OFF;
	vq->notify = (volatile uint32_t *)(d->regs + VIRTIO_MMIO_QUEUE_NOTIFY);
	vmf_reg_write(d, VIRTIO_MMIO_QUEUE_NUM, VMF_VQ_SIZE);
	vmf_reg_write(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)gpa);
	vmf_reg_write(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(gpa >> 32));
	gpa += VMF_VQ_AVAIL_OFF;
	vmf_reg_write(d, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (uint32_t)gpa);
	vmf_reg_write(d, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (uint32_t)(gpa >> 32));
	gpa += VMF_VQ_USED_OFF - VMF_VQ_AVAIL_OFF;
	vmf_reg_write(d, VIRTIO_MMIO_QUEUE_USED_LOW, (uint32_t)gpa);
	vmf_reg_write(d, VIRTIO_MMIO_QUEUE_USED_HIGH, (uint32_t)(gpa >> 32));
	vmf_reg_write(d, VIRTIO_MMIO_QUEUE_READY, 1);
	return 0;
}

int vmf_blk_init(struct vmf_blk *d, const struct vmf_boot_info *bi, unsigned want,
		 void *const mem[])
{
	uint16_t nq = 1;
	unsigned i;
	int r;

	for (i = 0; i < bi->ndevices && i < VMF_MAX_DEVICES; i++)
		if (bi->devices[i].type == VIRTIO_ID_BLOCK)
			break;
	if (i == bi->ndevices || i == VMF_MAX_DEVICES)
		return -1;
	d->regs = (volatile uint8_t *)bi->devices[i].mmio_gpa;
	if (vmf_reg_read(d, VIRTIO_MMIO_MAGIC_VALUE) != VIRTIO_MMIO_MAGIC ||
	    vmf_reg_read(d, VIRTIO_MMIO_VERSION) != VIRTIO_MMIO_VERSION_2 ||
	    vmf_reg_read(d, VIRTIO_MMIO_DEVICE_ID) != VIRTIO_ID_BLOCK)
		return -2;
	vmf_reg_write(d, VIRTIO_MMIO_STATUS, 0); /* reset */
	vmf_reg_write(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	vmf_reg_write(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	r = vmf_blk_features(d);
	if (r)
		return r;
	d->capacity = vmf_reg_read(d, VIRTIO_MMIO_CONFIG) |
		      (uint64_t)vmf_reg_read(d, VIRTIO_MMIO_CONFIG + 4) << 32;
	if (d->features & 1ull << VIRTIO_BLK_F_MQ)
		nq = (uint16_t)(vmf_reg_read(d, VIRTIO_MMIO_CONFIG + 0x20) >> 16);
	if (nq > want)
		nq = (uint16_t)want;
	if (nq > 8)
		nq = 8;
	for (uint16_t q = 0; q < nq; q++) {
		r = vmf_vq_setup(d, q, mem[q]);
		if (r)
			return r;
	}
	d->nqueues = nq;
	vmf_reg_write(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
					     VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
	return (vmf_reg_read(d, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_DEVICE_NEEDS_RESET) ? -4 : 0;
}

/* Publish the chain at descriptor @head and kick if the device wants it. */
static void vmf_vq_submit(struct vmf_vq *vq, uint16_t head)
{
	uint16_t old = vq->avail_idx;

	vq->avail[2 + old % VMF_VQ_SIZE] = head;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	vq->avail[1] = ++vq->avail_idx;
	__atomic_thread_fence(__ATOMIC_SEQ_CST); /* idx visible before avail_event is read */
	if (!vq->event_idx ||
	    virtq_need_event(*(volatile uint16_t *)(vq->used + 4 + 8 * VMF_VQ_SIZE),
			     vq->avail_idx, old))
		*vq->notify = vq->index;
}

/* Poll the used ring until a request comes back: the head of its chain. */
static uint16_t vmf_vq_wait(struct vmf_vq *vq)
{
	uint32_t spins = 0;
	uint16_t head;

	while (*(volatile uint16_t *)(vq->used + 2) == vq->used_seen) {
		if (++spins < VMF_SPINS_BEFORE_SLEEP)
			__asm__ volatile("pause" ::: "memory");
		else
			vmf_sleep_us(20);
	}
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	head = (uint16_t)*(volatile uint32_t *)(vq->used + 4 + 8 * (vq->used_seen % VMF_VQ_SIZE));
	vq->used_seen++;
	return head;
}

void vmf_blk_submit(struct vmf_blk *d, unsigned q, unsigned slot, uint32_t type,
		    uint64_t sector, void *buf, uint32_t len)
{
	struct vmf_vq *vq = &d->vq[q];
	struct virtio_blk_req_hdr *hdr = (struct virtio_blk_req_hdr *)(vq->req + slot * VMF_VQ_REQ_BYTES);
	volatile uint8_t *status = vq->req + slot * VMF_VQ_REQ_BYTES + sizeof(*hdr);
	int in = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
	uint16_t head = (uint16_t)(slot * 3), n = head;

	hdr->type = type;
	hdr->reserved = 0;
	hdr->sector = sector;
	*status = 0xff;
	vq->desc[n] = (struct virtq_desc){ (uint64_t)hdr, sizeof(*hdr), VIRTQ_DESC_F_NEXT,
					   (uint16_t)(n + 1) };
	n++;
	if (len) {
		vq->desc[n] = (struct virtq_desc){ (uint64_t)buf, len,
						   (uint16_t)(VIRTQ_DESC_F_NEXT |
							      (in ? VIRTQ_DESC_F_WRITE : 0)),
						   (uint16_t)(n + 1) };
		n++;
	}
	vq->desc[n] = (struct virtq_desc){ (uint64_t)status, 1, VIRTQ_DESC_F_WRITE, 0 };
	vmf_vq_submit(vq, head);
}

unsigned vmf_blk_complete(struct vmf_blk *d, unsigned q, uint8_t *status)
{
	struct vmf_vq *vq = &d->vq[q];
	unsigned slot = vmf_vq_wait(vq) / 3u;

	*status = vq->req[slot * VMF_VQ_REQ_BYTES + sizeof(struct virtio_blk_req_hdr)];
	return slot;
}

uint8_t vmf_blk_request(struct vmf_blk *d, unsigned q, uint32_t type, uint64_t sector,
			void *buf, uint32_t len)
{
	uint8_t status;

	vmf_blk_submit(d, q, 0, type, sector, buf, len);
	vmf_blk_complete(d, q, &status);
	return status;
}
