/*
 * virtio-blk's internals, shared by its files (not an API):
 *   virtio_blk.c        the device: opening the disk, requests, the I/O thread
 *   virtio_blk_state.c  its migratable state, query-block, --disk parsing
 *   blk_migrate.c       storage migration: the disk's data in the stream
 */
#ifndef VMFERRY_DEVICES_VIRTIO_BLK_INTERNAL_H
#define VMFERRY_DEVICES_VIRTIO_BLK_INTERNAL_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/uio.h>

#include "devices/blk_migrate.h"
#include "devices/virtio_blk.h"
#include "devices/virtio_mmio.h"
#include "devices/virtqueue.h"
#include "vmferry/virtio.h"

#define VBLK_QUEUE_DEPTH 128u       /* requests in flight per disk */
#define VBLK_MAX_SECTORS (1u << 22) /* one DISCARD / WRITE_ZEROES: 2 GiB */

/* A request in flight on io_uring. */
struct vblk_req {
	bool busy;
	uint8_t type;          /* VIRTIO_BLK_T_* */
	uint16_t queue, head;
	uint64_t status_gpa;
	int64_t expect;        /* the io_uring result that means success */
	uint64_t off, len;     /* what a read, write, discard or write-zeroes covers */
	bool deferred;         /* storage postcopy: waits for blocks to arrive */
	uint64_t defer_ns;     /* since when */
	uint32_t niov;
	struct iovec iov[VQ_MAX_CHAIN];
};

struct vblk_stats {
	uint64_t rd_bytes, wr_bytes;
	uint64_t rd_ops, wr_ops, flush_ops, discard_ops, write_zeroes_ops, get_id_ops;
	uint64_t failed_ops;   /* completed with IOERR or UNSUPP */
	uint64_t invalid_ops;  /* malformed chains (the device needed a reset) */
	uint64_t pauses;       /* VM pauses the disk quiesced for */
	uint64_t pause_last_ns, pause_max_ns; /* how long quiescing took: its share of a pause */
};

struct virtio_blk {
	struct vm *vm;
	unsigned index;
	char name[16];                 /* "disk<index>": its thread, messages */
	struct virtio_blk_opts opts;
	int fd;                        /* the disk file, owned */
	uint64_t bytes;                /* its size */
	bool can_punch;                /* DISCARD / WRITE_ZEROES offered */
	uint16_t nqueues;
	struct virtio_blk_config config; /* constant after create */
	uint64_t mmio_gpa;
	struct vq_guest guest;         /* guest RAM */
	char id[VIRTIO_BLK_ID_BYTES];

	pthread_mutex_t lock;          /* the transport's registers and all below */
	pthread_cond_t cond;           /* broadcast when in_flight drops to 0 */
	struct virtio_mmio mmio;
	struct virtqueue vq[VIRTIO_MMIO_MAX_QUEUES];
	bool started;                  /* queues set up (DRIVER_OK) */
	bool paused;                   /* the VM is paused: take no request */
	bool stop;                     /* destroy: the thread ends once idle */
	unsigned in_flight;
	struct vblk_req *reqs;         /* VBLK_QUEUE_DEPTH slots */
	struct vq_chain chain;         /* I/O thread's scratch */
	struct vblk_stats st;
	struct blkmig mig;             /* storage migration (blk_migrate.h); its bitmap
				        * pointer under the lock */

	bool inline_reads;             /* cached reads done on the I/O thread (RWF_NOWAIT) */
	uint64_t poll_ns;              /* opts.poll_us: look this long after the last request */
	atomic_bool woken;             /* vblk_wake was called: the polling loop looks */

	struct io_uring ring;
	bool ring_ready;
	int ring_efd;                  /* io_uring completions, owned */
	int ctl_efd;                   /* wakes the thread: start, resume, stop; owned */
	pthread_t thread;
	bool thread_started;
};

/* Lock held: set the queues up from the transport's registers (start, load). */
int vblk_setup_queues(struct virtio_blk *b, const uint16_t *last_avail, const uint16_t *used_idx);
/* Wake the I/O thread. */
void vblk_wake(struct virtio_blk *b);
/*
 * CPR, before the VM runs: make @fd (now owned by @b, even on error) the
 * disk's file - its size, whether it can punch holes, the config space and
 * features that follow from them.  0, or -errno with @err.
 */
int vblk_adopt_fd(struct virtio_blk *b, int fd, char *err, size_t errlen);
/* The same with the --disk path opened here (an old process that lent no disk).  0 or -errno. */
int vblk_reopen(struct virtio_blk *b, char *err, size_t errlen);

#endif
