/*
 * The guest ABI: what a vmferry guest sees of the VMM.
 *
 * Shared, byte for byte, by the VMM (src/) and the freestanding guest SDK
 * (guest/).  Everything here is part of the guest-visible contract and is
 * described for humans in docs/guest-abi.md; change both together and bump
 * VMF_ABI_VERSION when a layout changes.
 *
 * The guest runs in 64-bit long mode at CPL3 with guest-physical ==
 * guest-virtual (identity map, 2 MiB pages).  It talks to the VMM only
 * through the ports below and through the boot-info page.
 */
#ifndef VMFERRY_GUEST_ABI_H
#define VMFERRY_GUEST_ABI_H

#include <stdint.h>

#define VMF_ABI_VERSION 2u

/* ---- I/O ports (guest executes in/out at CPL3; RFLAGS.IOPL=3) ---- */
#define VMF_PORT_CONSOLE  0x3f8u /* out 8: one console byte                   */
#define VMF_PORT_EXIT     0x500u /* out 32: guest exits with this code         */
#define VMF_PORT_TIME_LO  0x504u /* in 32: latch guest ns clock, low 32 bits   */
#define VMF_PORT_TIME_HI  0x508u /* in 32: high 32 bits of the latched value   */
#define VMF_PORT_SLEEP    0x50cu /* out 32: block this vCPU for N microseconds */
#define VMF_PORT_PANIC    0x510u /* out 32: guest reports a fatal error code   */

/* ---- guest-physical memory layout ---- */
#define VMF_PAGE_BYTES        4096ull
#define VMF_BOOT_INFO_GPA     0x1000ull    /* struct vmf_boot_info           */
#define VMF_PAGE_TABLE_GPA    0x10000ull   /* PML4, PDPT, then one PD per GiB */
#define VMF_MAX_RAM_GIB       64ull        /* PDs fit below VMF_STACKS_GPA    */
#define VMF_STACKS_GPA        0x80000ull   /* per-vCPU stacks                 */
#define VMF_STACK_BYTES       0x4000ull
#define VMF_IMAGE_GPA         0x100000ull  /* guest image is linked here      */
#define VMF_IMAGE_MAX_BYTES   0x100000ull
#define VMF_WORK_GPA          0x200000ull  /* workload memory starts here     */
#define VMF_MAX_VCPUS         32u
#define VMF_MIN_RAM_BYTES     (4ull << 20)

/*
 * Devices: MMIO windows outside RAM, one VMF_DEVICE_WINDOW_BYTES window per
 * device from VMF_DEVICE_GPA on, listed in the boot info (devices[]).  The
 * VMM maps the first 2 MiB there (user-accessible, page directory at
 * VMF_DEVICE_PD_GPA) with no memory behind it: every access is a register
 * access handled by the VMM (docs/devices.md).
 */
#define VMF_DEVICE_GPA          0x1000000000ull /* 64 GiB, just above the largest RAM */
#define VMF_DEVICE_WINDOW_BYTES 0x1000ull
#define VMF_MAX_DEVICES         8u
#define VMF_DEVICE_PD_GPA       (VMF_PAGE_TABLE_GPA + 0x2000ull + VMF_MAX_RAM_GIB * 0x1000ull)

#define VMF_BOOT_MAGIC        0x31544f4f42464d56ull /* "VMFBOOT1" little-endian */
#define VMF_MAX_PARAMS        8u
#define VMF_PARAM_KEY_BYTES   16u
#define VMF_WORKLOAD_NAME_BYTES 32u

/* Workload phases a vCPU reports in its stats slot. */
#define VMF_PHASE_BOOTING  0u /* not started yet                      */
#define VMF_PHASE_SETUP    1u /* preparing its range (e.g. zeroing)   */
#define VMF_PHASE_RUNNING  2u /* in its steady loop                   */
#define VMF_PHASE_DONE     3u /* finished (about to exit)             */

struct vmf_param {
	char key[VMF_PARAM_KEY_BYTES]; /* NUL-terminated, "" = unused slot */
	uint64_t value;
};

struct vmf_range {
	uint64_t gpa;   /* first byte, page aligned */
	uint64_t bytes; /* length, multiple of VMF_PAGE_BYTES */
};

/* Written by the guest: one slot per vCPU, each on its own cache line. */
struct vmf_vcpu_stats {
	uint64_t phase;  /* VMF_PHASE_* */
	uint64_t passes; /* completed passes over the range */
	uint64_t writes; /* page writes done (workload defined) */
	uint64_t reserved[5];
};

/* One device in the boot info. */
struct vmf_device {
	uint32_t type;       /* virtio device id (2: block); 0: unused slot */
	uint32_t reserved;   /* 0 */
	uint64_t mmio_gpa;   /* its virtio-mmio register window */
	uint64_t mmio_bytes; /* VMF_DEVICE_WINDOW_BYTES */
};

/*
 * At VMF_BOOT_INFO_GPA.  The VMM fills everything but stats[] before the
 * first instruction; afterwards the page belongs to the guest.
 */
struct vmf_boot_info {
	uint64_t magic;       /* VMF_BOOT_MAGIC */
	uint32_t abi_version; /* VMF_ABI_VERSION */
	uint32_t nvcpus;
	uint64_t ram_bytes;
	char workload[VMF_WORKLOAD_NAME_BYTES];
	struct vmf_param params[VMF_MAX_PARAMS];
	struct vmf_range range[VMF_MAX_VCPUS]; /* vCPU i's own memory */
	_Alignas(64) struct vmf_vcpu_stats stats[VMF_MAX_VCPUS]; /* cache-line aligned */
	uint32_t ndevices;    /* entries used in devices[], in order */
	uint32_t reserved;
	struct vmf_device devices[VMF_MAX_DEVICES];
};

_Static_assert(sizeof(struct vmf_boot_info) <= 4096, "boot info fits one page");
_Static_assert(VMF_DEVICE_PD_GPA + 0x1000 <= VMF_STACKS_GPA, "device PD below the stacks");
_Static_assert(VMF_DEVICE_GPA >= (VMF_MAX_RAM_GIB << 30), "device windows above RAM");

/*
 * vCPU entry state: RIP = ELF entry, RSP = top of the vCPU's stack,
 * RDI = vCPU index, RSI = VMF_BOOT_INFO_GPA, RFLAGS = 0x3002 (IOPL=3).
 */

#endif
