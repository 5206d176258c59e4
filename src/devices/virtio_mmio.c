/* The virtio-mmio transport; see virtio_mmio.h. */
#include "devices/virtio_mmio.h"

#include <errno.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "devices/virtqueue.h"
#include "util/log.h"
#include "vmferry/virtio.h"

static int virtio_mmio_ioeventfd(struct virtio_mmio *t, int vm_fd, uint16_t q, bool bind)
{
	struct kvm_ioeventfd io = {
		.datamatch = q,
		.addr = t->gpa + VIRTIO_MMIO_QUEUE_NOTIFY,
		.len = 4,
		.fd = t->kick_fd[q],
		.flags = KVM_IOEVENTFD_FLAG_DATAMATCH | (bind ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN),
	};

	return ioctl(vm_fd, KVM_IOEVENTFD, &io) < 0 ? -errno : 0;
}

void virtio_mmio_set_device_features(struct virtio_mmio *t, uint64_t device_features)
{
	t->device_features = device_features | 1ull << VIRTIO_F_VERSION_1 |
			     1ull << VIRTIO_F_EVENT_IDX;
}

int virtio_mmio_init(struct virtio_mmio *t, int vm_fd, uint64_t gpa, uint32_t device_id,
		     uint64_t device_features, uint16_t nqueues, const void *config,
		     uint32_t config_bytes, const struct virtio_mmio_ops *ops, void *opaque,
		     pthread_mutex_t *lock)
{
	memset(t, 0, sizeof(*t));
	for (unsigned q = 0; q < VIRTIO_MMIO_MAX_QUEUES; q++)
		t->kick_fd[q] = -1;
	if (nqueues == 0 || nqueues > VIRTIO_MMIO_MAX_QUEUES ||
	    config_bytes > 0x1000 - VIRTIO_MMIO_CONFIG)
		return -EINVAL;
	t->lock = lock;
	t->ops = ops;
	t->opaque = opaque;
	t->device_id = device_id;
	virtio_mmio_set_device_features(t, device_features);
	t->nqueues = nqueues;
	t->config = config;
	t->config_bytes = config_bytes;
	t->gpa = gpa;
	for (uint16_t q = 0; q < nqueues; q++) {
		int r;

		t->kick_fd[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (t->kick_fd[q] < 0) {
			r = -errno;
			log_error("virtio-mmio: eventfd: %s", strerror(errno));
			return r;
		}
		r = virtio_mmio_ioeventfd(t, vm_fd, q, true);
		if (r) {
			log_error("virtio-mmio: KVM_IOEVENTFD at %#llx: %s",
				  (unsigned long long)(gpa + VIRTIO_MMIO_QUEUE_NOTIFY), strerror(-r));
			close(t->kick_fd[q]);
			t->kick_fd[q] = -1;
			return r;
		}
	}
	return 0;
}

void virtio_mmio_destroy(struct virtio_mmio *t, int vm_fd)
{
	for (uint16_t q = 0; q < VIRTIO_MMIO_MAX_QUEUES; q++) {
		if (t->kick_fd[q] < 0)
			continue;
		if (vm_fd >= 0)
			virtio_mmio_ioeventfd(t, vm_fd, q, false);
		close(t->kick_fd[q]);
		t->kick_fd[q] = -1;
	}
}

void virtio_mmio_needs_reset(struct virtio_mmio *t)
{
	if (!(t->status & VIRTIO_STATUS_DEVICE_NEEDS_RESET))
		log_warn("virtio-mmio device at %#llx: the driver's rings are broken; it needs a "
			 "reset", (unsigned long long)t->gpa);
	t->status |= VIRTIO_STATUS_DEVICE_NEEDS_RESET;
}

bool virtio_mmio_has_feature(const struct virtio_mmio *t, unsigned bit)
{
	return bit < 64 && (t->driver_features >> bit) & 1;
}

bool virtio_mmio_running(const struct virtio_mmio *t)
{
	return (t->status & VIRTIO_STATUS_DRIVER_OK) &&
	       !(t->status & (VIRTIO_STATUS_DEVICE_NEEDS_RESET | VIRTIO_STATUS_FAILED));
}

static uint32_t virtio_mmio_read_reg(struct virtio_mmio *t, uint64_t off)
{
	struct virtio_mmio_queue *q = t->queue_sel < t->nqueues ? &t->queue[t->queue_sel] : NULL;

	switch (off) {
	case VIRTIO_MMIO_MAGIC_VALUE: return VIRTIO_MMIO_MAGIC;
	case VIRTIO_MMIO_VERSION: return VIRTIO_MMIO_VERSION_2;
	case VIRTIO_MMIO_DEVICE_ID: return t->device_id;
	case VIRTIO_MMIO_VENDOR_ID: return VIRTIO_VENDOR_VMFERRY;
	case VIRTIO_MMIO_DEVICE_FEATURES:
		return t->device_features_sel < 2
		       ? (uint32_t)(t->device_features >> (32 * t->device_features_sel)) : 0;
	case VIRTIO_MMIO_QUEUE_NUM_MAX: return q ? VQ_MAX_SIZE : 0;
	case VIRTIO_MMIO_QUEUE_READY: return q ? q->ready : 0;
	case VIRTIO_MMIO_INTERRUPT_STATUS: return 0; /* no interrupts: guests poll */
	case VIRTIO_MMIO_STATUS: return t->status;
	case VIRTIO_MMIO_CONFIG_GENERATION: return t->config_generation;
	}
	return 0;
}

/* The driver wrote Status. */
static void virtio_mmio_set_status(struct virtio_mmio *t, uint32_t v)
{
	if (v == 0) {
		t->ops->reset(t->opaque);
		t->status = 0;
		t->driver_features = 0;
		t->device_features_sel = t->driver_features_sel = t->queue_sel = 0;
		memset(t->queue, 0, sizeof(t->queue));
		return;
	}
	if ((v & VIRTIO_STATUS_FEATURES_OK) && !(t->status & VIRTIO_STATUS_FEATURES_OK) &&
	    (!virtio_mmio_has_feature(t, VIRTIO_F_VERSION_1) ||
	     (t->driver_features & ~t->device_features)))
		v &= ~(uint32_t)VIRTIO_STATUS_FEATURES_OK; /* refused: the driver reads it back */
	if ((v & VIRTIO_STATUS_FAILED) && !(t->status & VIRTIO_STATUS_FAILED))
		t->ops->reset(t->opaque);
	if ((v & VIRTIO_STATUS_DRIVER_OK) && !(t->status & VIRTIO_STATUS_DRIVER_OK)) {
		t->status = (t->status & VIRTIO_STATUS_DEVICE_NEEDS_RESET) | v;
		if (!(t->status & VIRTIO_STATUS_FEATURES_OK) || t->ops->start(t->opaque))
			virtio_mmio_needs_reset(t);
		return;
	}
	/* Bits are only ever added until a reset; NEEDS_RESET is the device's. */
	t->status |= v & ~(uint32_t)VIRTIO_STATUS_DEVICE_NEEDS_RESET;
}

static void virtio_mmio_set_addr(uint64_t *a, bool high, uint32_t v)
{
	*a = high ? (*a & 0xffffffffull) | (uint64_t)v << 32 : (*a & ~0xffffffffull) | v;
}

static void virtio_mmio_write_reg(struct virtio_mmio *t, uint64_t off, uint32_t v)
{
	struct virtio_mmio_queue *q = t->queue_sel < t->nqueues ? &t->queue[t->queue_sel] : NULL;
	/* Queue registers change only while the queue is off and the device not live. */
	bool q_writable = q && !q->ready && !(t->status & VIRTIO_STATUS_DRIVER_OK);
	bool features_writable = !(t->status & VIRTIO_STATUS_FEATURES_OK);

	switch (off) {
	case VIRTIO_MMIO_DEVICE_FEATURES_SEL: t->device_features_sel = v; return;
	case VIRTIO_MMIO_DRIVER_FEATURES_SEL: t->driver_features_sel = v; return;
	case VIRTIO_MMIO_DRIVER_FEATURES:
		if (features_writable && t->driver_features_sel < 2) {
			unsigned sh = 32 * t->driver_features_sel;

			t->driver_features = (t->driver_features & ~(0xffffffffull << sh)) |
					     (uint64_t)v << sh;
		}
		return;
	case VIRTIO_MMIO_QUEUE_SEL: t->queue_sel = v; return;
	case VIRTIO_MMIO_QUEUE_NUM:
		if (q_writable)
			q->num = (uint16_t)(v > 0xffff ? 0 : v); /* checked at DRIVER_OK */
		return;
	case VIRTIO_MMIO_QUEUE_READY:
		if (q && !(t->status & VIRTIO_STATUS_DRIVER_OK))
			q->ready = v & 1;
		return;
	case VIRTIO_MMIO_STATUS: virtio_mmio_set_status(t, v); return;
	case VIRTIO_MMIO_QUEUE_DESC_LOW: case VIRTIO_MMIO_QUEUE_DESC_HIGH:
		if (q_writable)
			virtio_mmio_set_addr(&q->desc, off & 4, v);
		return;
	case VIRTIO_MMIO_QUEUE_AVAIL_LOW: case VIRTIO_MMIO_QUEUE_AVAIL_HIGH:
		if (q_writable)
			virtio_mmio_set_addr(&q->avail, off & 4, v);
		return;
	case VIRTIO_MMIO_QUEUE_USED_LOW: case VIRTIO_MMIO_QUEUE_USED_HIGH:
		if (q_writable)
			virtio_mmio_set_addr(&q->used, off & 4, v);
		return;
	case VIRTIO_MMIO_QUEUE_NOTIFY: /* a kick the ioeventfd did not match: ignored */
	case VIRTIO_MMIO_INTERRUPT_ACK:
	default:
		return;
	}
}

void virtio_mmio_access(struct virtio_mmio *t, uint64_t offset, uint8_t *data, uint32_t len,
			bool is_write)
{
	uint32_t v = 0;

	pthread_mutex_lock(t->lock);
	if (offset >= VIRTIO_MMIO_CONFIG) {
		/* Configuration space: any width; writes are ignored (nothing writable). */
		uint64_t off = offset - VIRTIO_MMIO_CONFIG;

		if (!is_write && off < t->config_bytes && len <= t->config_bytes - off)
			memcpy(data, t->config + off, len);
	} else if (len == 4 && offset % 4 == 0) {
		if (is_write) {
			memcpy(&v, data, 4);
			virtio_mmio_write_reg(t, offset, v);
		} else {
			v = virtio_mmio_read_reg(t, offset);
			memcpy(data, &v, 4);
		}
	}
	/* Registers at other widths: reads 0, writes ignored (a driver bug). */
	pthread_mutex_unlock(t->lock);
}
