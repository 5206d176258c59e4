/*
 * The virtio-mmio transport (version 2, "modern"): a device's register
 * window - features, status, queue setup, configuration space - and its
 * kicks, which KVM turns into eventfd signals (KVM_IOEVENTFD on
 * QueueNotify, matched on the queue index) so a kick never exits to the
 * VMM.  The device behind it (virtio_blk.c) embeds a struct virtio_mmio,
 * owns its lock and gets two calls: start (the driver set DRIVER_OK) and
 * reset (the driver wrote 0 to Status).
 *
 * Threads: register accesses come from vCPU threads (virtio_mmio_access);
 * they take the device's lock, under which the device reads the queue
 * registers.  No interrupts: guests poll used rings.
 */
#ifndef VMFERRY_DEVICES_VIRTIO_MMIO_H
#define VMFERRY_DEVICES_VIRTIO_MMIO_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define VIRTIO_MMIO_MAX_QUEUES 8u

struct virtio_mmio_queue {
	uint16_t num;    /* QueueNum: entries the driver chose */
	bool ready;      /* QueueReady */
	uint64_t desc, avail, used;
};

struct virtio_mmio_ops {
	/*
	 * The driver set DRIVER_OK: take the ready queues from t->queue[].
	 * Lock held, vCPU thread.  0, or -errno: the device needs a reset.
	 */
	int (*start)(void *opaque);
	/*
	 * The driver wrote 0 to Status (or set FAILED): stop using the queues
	 * and finish what is in flight before returning (the guest may reuse
	 * the memory once it reads Status 0).  Lock held, vCPU thread.
	 */
	void (*reset)(void *opaque);
};

struct virtio_mmio {
	pthread_mutex_t *lock;          /* the device's; protects what follows */
	const struct virtio_mmio_ops *ops;
	void *opaque;
	uint32_t device_id;
	uint64_t device_features;       /* offered; VERSION_1 and EVENT_IDX included */
	uint16_t nqueues;
	const uint8_t *config;          /* configuration space (the device's, constant) */
	uint32_t config_bytes;
	uint64_t gpa;                   /* the window */
	int kick_fd[VIRTIO_MMIO_MAX_QUEUES]; /* eventfds, owned; -1 when closed */

	/* the register file: what migrates */
	uint32_t status;
	uint32_t device_features_sel, driver_features_sel, queue_sel;
	uint64_t driver_features;
	uint32_t config_generation;
	struct virtio_mmio_queue queue[VIRTIO_MMIO_MAX_QUEUES];
};

/*
 * The features the device offers (the transport's own added), e.g. once a
 * live update's disk arrived; lock held, before the driver reads them.
 */
void virtio_mmio_set_device_features(struct virtio_mmio *t, uint64_t device_features);
/*
 * Set up @t for the window at @gpa of VM fd @vm_fd: @nqueues kick eventfds
 * bound with KVM_IOEVENTFD.  @config (@config_bytes, at most 0xf00) must
 * outlive @t.  0 or -errno (logged).  Main thread, before the VM runs.
 */
int virtio_mmio_init(struct virtio_mmio *t, int vm_fd, uint64_t gpa, uint32_t device_id,
		     uint64_t device_features, uint16_t nqueues, const void *config,
		     uint32_t config_bytes, const struct virtio_mmio_ops *ops, void *opaque,
		     pthread_mutex_t *lock);
/* Unbind and close the eventfds.  Safe on a zeroed or half-set-up @t. */
void virtio_mmio_destroy(struct virtio_mmio *t, int vm_fd);

/* A guest access to the window (vm_device_ops.mmio).  vCPU thread; takes t->lock. */
void virtio_mmio_access(struct virtio_mmio *t, uint64_t offset, uint8_t *data, uint32_t len,
			bool is_write);

/* Lock held: set DEVICE_NEEDS_RESET (the device found the driver's rings broken). */
void virtio_mmio_needs_reset(struct virtio_mmio *t);
/* Lock held: the driver negotiated feature @bit. */
bool virtio_mmio_has_feature(const struct virtio_mmio *t, unsigned bit);
/* Lock held: DRIVER_OK is set and no reset is needed. */
bool virtio_mmio_running(const struct virtio_mmio *t);

#endif
