/*
 * virtio 1.x as vmferry's devices and guests speak it: the virtio-mmio
 * register window (version 2), the split virtqueue and virtio-blk.  Values
 * are the virtio specification's (1.2, sections 2.7, 4.2 and 5.2); only
 * what vmferry uses is here.  Shared by the VMM (src/devices/) and the guest
 * SDK (guest/sdk/virtio.c); everything is little-endian, as is x86.
 */
#ifndef VMFERRY_VIRTIO_H
#define VMFERRY_VIRTIO_H

#include <stddef.h>
#include <stdint.h>

/* ---- virtio-mmio registers (offsets in the device window) ---- */
#define VIRTIO_MMIO_MAGIC_VALUE         0x000 /* R: VIRTIO_MMIO_MAGIC */
#define VIRTIO_MMIO_VERSION             0x004 /* R: 2 */
#define VIRTIO_MMIO_DEVICE_ID           0x008 /* R */
#define VIRTIO_MMIO_VENDOR_ID           0x00c /* R */
#define VIRTIO_MMIO_DEVICE_FEATURES     0x010 /* R: 32 bits selected by ..._SEL */
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014 /* W */
#define VIRTIO_MMIO_DRIVER_FEATURES     0x020 /* W */
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024 /* W */
#define VIRTIO_MMIO_QUEUE_SEL           0x030 /* W */
#define VIRTIO_MMIO_QUEUE_NUM_MAX       0x034 /* R */
#define VIRTIO_MMIO_QUEUE_NUM           0x038 /* W */
#define VIRTIO_MMIO_QUEUE_READY         0x044 /* RW */
#define VIRTIO_MMIO_QUEUE_NOTIFY        0x050 /* W: the queue index (a kick) */
#define VIRTIO_MMIO_INTERRUPT_STATUS    0x060 /* R */
#define VIRTIO_MMIO_INTERRUPT_ACK       0x064 /* W */
#define VIRTIO_MMIO_STATUS              0x070 /* RW; writing 0 resets */
#define VIRTIO_MMIO_QUEUE_DESC_LOW      0x080 /* W */
#define VIRTIO_MMIO_QUEUE_DESC_HIGH     0x084
#define VIRTIO_MMIO_QUEUE_AVAIL_LOW     0x090 /* W: the "driver area" */
#define VIRTIO_MMIO_QUEUE_AVAIL_HIGH    0x094
#define VIRTIO_MMIO_QUEUE_USED_LOW      0x0a0 /* W: the "device area" */
#define VIRTIO_MMIO_QUEUE_USED_HIGH     0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION   0x0fc /* R */
#define VIRTIO_MMIO_CONFIG              0x100 /* device-specific configuration */

#define VIRTIO_MMIO_MAGIC      0x74726976u /* "virt" */
#define VIRTIO_MMIO_VERSION_2  2u
#define VIRTIO_VENDOR_VMFERRY  0x46464d56u /* "VMFF" */

/* ---- device status bits ---- */
#define VIRTIO_STATUS_ACKNOWLEDGE        0x01
#define VIRTIO_STATUS_DRIVER             0x02
#define VIRTIO_STATUS_DRIVER_OK          0x04
#define VIRTIO_STATUS_FEATURES_OK        0x08
#define VIRTIO_STATUS_DEVICE_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED             0x80

/* ---- feature bits (bit numbers) ---- */
#define VIRTIO_F_EVENT_IDX  29 /* avail_event / used_event suppress notifications */
#define VIRTIO_F_VERSION_1  32 /* a modern (1.x) device: required */

/* ---- device ids ---- */
#define VIRTIO_ID_BLOCK 2u

/* ---- the split virtqueue ---- */
#define VIRTQ_DESC_F_NEXT     1 /* the chain goes on at .next */
#define VIRTQ_DESC_F_WRITE    2 /* device writes this buffer (else reads it) */
#define VIRTQ_DESC_F_INDIRECT 4 /* not offered by vmferry's devices */

struct virtq_desc {       /* 16 bytes, table aligned to 16 */
	uint64_t addr;    /* guest-physical */
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct virtq_used_elem {  /* 8 bytes */
	uint32_t id;      /* head of the chain */
	uint32_t len;     /* bytes the device wrote into the chain */
};

/*
 * Avail ring (aligned to 2): u16 flags, u16 idx, u16 ring[size],
 * u16 used_event.  Used ring (aligned to 4): u16 flags, u16 idx,
 * struct virtq_used_elem ring[size], u16 avail_event.
 */
#define VIRTQ_AVAIL_BYTES(size) (6u + 2u * (uint32_t)(size))
#define VIRTQ_USED_BYTES(size)  (6u + 8u * (uint32_t)(size))
#define VIRTQ_DESC_BYTES(size)  (16u * (uint32_t)(size))

/* Would moving the index from @old to @new cross @event? (virtio's vring_need_event) */
static inline int virtq_need_event(uint16_t event, uint16_t new_idx, uint16_t old)
{
	return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

/* ---- virtio-blk ---- */
#define VIRTIO_BLK_F_SIZE_MAX     1
#define VIRTIO_BLK_F_SEG_MAX      2
#define VIRTIO_BLK_F_RO           5
#define VIRTIO_BLK_F_BLK_SIZE     6
#define VIRTIO_BLK_F_FLUSH        9
#define VIRTIO_BLK_F_MQ          12
#define VIRTIO_BLK_F_DISCARD     13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

#define VIRTIO_BLK_T_IN           0
#define VIRTIO_BLK_T_OUT          1
#define VIRTIO_BLK_T_FLUSH        4
#define VIRTIO_BLK_T_GET_ID       8
#define VIRTIO_BLK_T_DISCARD      11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK     0
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_SECTOR_BYTES 512u
#define VIRTIO_BLK_ID_BYTES     20u
#define VIRTIO_BLK_WZ_F_UNMAP   1u /* write-zeroes: may deallocate */

/* The request: this header (device-readable), data, then one status byte (device-writable). */
struct virtio_blk_req_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

/* The data of DISCARD and WRITE_ZEROES: an array of these. */
struct virtio_blk_discard_wz {
	uint64_t sector;
	uint32_t num_sectors;
	uint32_t flags;
};

/* Configuration space, at VIRTIO_MMIO_CONFIG (the fields vmferry fills). */
struct virtio_blk_config {
	uint64_t capacity;          /* 0x00: in 512-byte sectors */
	uint32_t size_max;          /* 0x08: bytes per segment */
	uint32_t seg_max;           /* 0x0c: data segments per request */
	uint16_t cylinders;         /* 0x10: geometry (unused) */
	uint8_t heads, sectors;
	uint32_t blk_size;          /* 0x14 */
	uint8_t physical_block_exp; /* 0x18: topology (unused) */
	uint8_t alignment_offset;
	uint16_t min_io_size;
	uint32_t opt_io_size;
	uint8_t writeback;          /* 0x20 */
	uint8_t unused0;
	uint16_t num_queues;        /* 0x22 */
	uint32_t max_discard_sectors;      /* 0x24 */
	uint32_t max_discard_seg;          /* 0x28 */
	uint32_t discard_sector_alignment; /* 0x2c */
	uint32_t max_write_zeroes_sectors; /* 0x30 */
	uint32_t max_write_zeroes_seg;     /* 0x34 */
	uint8_t write_zeroes_may_unmap;    /* 0x38 */
	uint8_t unused1[3];
};

_Static_assert(sizeof(struct virtq_desc) == 16, "virtq_desc");
_Static_assert(sizeof(struct virtio_blk_req_hdr) == 16, "blk header");
#define VIRTIO_BLK_CONFIG_BYTES 60u /* the struct less its tail padding */
_Static_assert(offsetof(struct virtio_blk_config, num_queues) == 0x22, "blk config");
_Static_assert(offsetof(struct virtio_blk_config, write_zeroes_may_unmap) == 0x38, "blk config");

#endif
