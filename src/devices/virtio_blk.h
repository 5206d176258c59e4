/*
 * virtio-blk: a disk file as a virtio block device on the virtio-mmio
 * transport (`vmferry run --disk file=PATH[,readonly=on]`, docs/devices.md).
 *
 * Requests IN, OUT, FLUSH, GET_ID, and DISCARD / WRITE_ZEROES where the file
 * can punch holes, run on the disk's own I/O thread ("disk<N>") through
 * io_uring: the guest's kicks reach it by eventfd, its completions go into
 * the used rings, and neither the control nor the migration thread ever
 * stands in between.  While the VM is paused the disk is quiet (nothing in
 * flight, nothing taken): that is what makes its state a small section -
 * see virtio_blk_state.c and docs/devices.md "Migration".
 *
 * Every disk of a VM is one migratable state ("virtio-blk", one section per
 * disk) and answers `query-block`.
 */
#ifndef VMFERRY_DEVICES_VIRTIO_BLK_H
#define VMFERRY_DEVICES_VIRTIO_BLK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmferry/guest_abi.h"

struct vm;
struct migration;
struct control_server;
struct virtio_blk;

#define VIRTIO_BLK_SECTION_ID 10u /* docs/stream-format.md */

/* What --disk says. */
struct virtio_blk_opts {
	char path[4096];
	bool readonly;
	bool incoming;  /* a storage migration's destination: receives the source's data */
	/*
	 * How long the I/O thread keeps looking at the queues after its last
	 * request before it sleeps and waits for a kick (poll-us=, 0..1000;
	 * default VIRTIO_BLK_POLL_US_DEFAULT): while it looks the guest need
	 * not kick, which costs a VM exit and a wake-up per request.
	 */
	uint32_t poll_us;
	/*
	 * Not an option: set on a live update's new process, whose disk file
	 * comes open over the cpr channel (the state's cpr_take_fds), so
	 * virtio_blk_create opens nothing.
	 */
	bool cpr_inherit;
};

#define VIRTIO_BLK_POLL_US_DEFAULT 50u
#define VIRTIO_BLK_POLL_US_MAX 1000u

/*
 * Parse "file=PATH[,readonly=on|off][,incoming=on|off][,poll-us=N]" into
 * @out.  0, or -EINVAL with a message in @err (unknown or repeated key, no
 * file, a bad value, readonly=on with incoming=on).
 */
int virtio_blk_parse_opts(const char *spec, struct virtio_blk_opts *out, char *err,
			  size_t errlen);

/*
 * Open the disk, add it to @vm as device @index (its MMIO window, its
 * kicks), start its I/O thread (paused until the VM first runs).  0, or
 * -errno with a message in @err (a missing file, a read-only file without
 * readonly=on, a size that is not a multiple of 512, no io_uring ...).
 * With opts->cpr_inherit nothing is opened: the disk has no file until
 * the migration's CPR take hands it the old process's (the VM must not run
 * before).  Main thread, before vm_start.
 */
int virtio_blk_create(struct vm *vm, const struct virtio_blk_opts *opts, unsigned index,
		      struct virtio_blk **out, char *err, size_t errlen);
/* Stop the I/O thread (in-flight requests complete first), close. NULL is fine. */
void virtio_blk_destroy(struct virtio_blk *b);

/* The VM's disks, in device order. */
struct virtio_blk_disks {
	struct virtio_blk *disk[VMF_MAX_DEVICES];
	unsigned n;
};

/*
 * Register the disks as one migratable state, one section each (nothing
 * when there is none).  0 or -errno.  Main thread, before any migration.
 */
int virtio_blk_register_state(struct virtio_blk_disks *disks, struct migration *m);
/* Register query-block.  0 or -errno. */
int virtio_blk_register_commands(struct virtio_blk_disks *disks, struct control_server *srv);

#endif
