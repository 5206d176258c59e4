/*
 * Device-state sections: the complete state of each vCPU and of the VM,
 * serialised for the migration stream (docs/stream-format.md).
 *
 * A vCPU section (VMSTATE_SECTION_CPU, one per vCPU, instance = index) is a
 * list of fields, each (u32 kind, u32 len, len bytes).  Every field kind
 * must appear exactly once; unknown kinds are errors.  Field payloads are
 * KVM's own UAPI structures (stable ABI); MSRs are a u32 count and
 * (u32 index, u32 pad, u64 value) entries.  The VM section
 * (VMSTATE_SECTION_VM, instance 0) holds the guest clock, the source's stop
 * time (for downtime as the guest sees it) and whether the guest was running.
 *
 * Save runs on the migration thread with every vCPU stopped; load on the
 * destination's load thread before any vCPU runs.
 */
#ifndef VMFERRY_MIGRATION_VMSTATE_H
#define VMFERRY_MIGRATION_VMSTATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vm;

enum vmstate_section_id {
	VMSTATE_SECTION_VM = 1,
	VMSTATE_SECTION_CPU = 2,
};
/*
 * Version 2 added `moves`.  A build loads every older version it knows
 * (missing fields take their documented defaults) and refuses newer ones.
 */
#define VMSTATE_VM_VERSION 2
#define VMSTATE_VM_VERSION_MIN 1
#define VMSTATE_CPU_VERSION 1
#define VMSTATE_SECTION_MAX_BYTES (1u << 20)

enum vmstate_cpu_field {
	VMSTATE_CPU_REGS = 1,
	VMSTATE_CPU_SREGS,
	VMSTATE_CPU_XSAVE,
	VMSTATE_CPU_XCRS,
	VMSTATE_CPU_EVENTS,
	VMSTATE_CPU_MP_STATE,
	VMSTATE_CPU_DEBUGREGS,
	VMSTATE_CPU_MSRS,
	VMSTATE_CPU__COUNT,
};

struct vmstate_vm {
	uint64_t guest_clock_ns; /* the guest clock at the stop */
	uint64_t stop_ns;        /* source CLOCK_MONOTONIC when it began stopping the vCPUs */
	uint32_t was_running;    /* 0 or 1: the destination runs the guest iff 1 */
	uint32_t reserved;       /* 0 */
	uint64_t moves;          /* v2: completed moves to a new VMM process before
				  * this one (migrations and live updates); v1: 0 */
};

/* A growable byte buffer for one section.  Owned by its user. */
struct vmstate_buf {
	uint8_t *data;
	size_t len, cap;
	int err;
};
void vmstate_buf_free(struct vmstate_buf *b);

/*
 * Serialise vCPU @index into @out (appended).  0 or -errno (logged).
 * The vCPU must be stopped.
 */
int vmstate_cpu_save(struct vm *vm, unsigned index, struct vmstate_buf *out);
/*
 * Check and apply a vCPU section.  Every field is validated before anything
 * is applied.  0, or -EBADMSG with @err filled.
 */
int vmstate_cpu_load(struct vm *vm, unsigned index, const uint8_t *data, size_t len,
		     char *err, size_t errlen);
/*
 * Validate a vCPU section's framing without a VM (fuzzing, stream dump):
 * 0 or -EBADMSG with @err filled.  @xsave_bytes = 0 accepts any XSAVE size
 * up to the section limit.
 */
int vmstate_cpu_check(const uint8_t *data, size_t len, size_t xsave_bytes,
		      char *err, size_t errlen);

/*
 * Serialise the VM section in format @version (VMSTATE_VM_VERSION_MIN..
 * VMSTATE_VM_VERSION; older versions exist to test compatibility).
 */
void vmstate_vm_save(struct vm *vm, bool was_running, uint64_t stop_ns, uint64_t moves,
		     uint32_t version, struct vmstate_buf *out);
/*
 * Parse a VM section of format @version: 0, or -EBADMSG with @err filled
 * (a version newer than this build's is refused with a message saying so).
 */
int vmstate_vm_parse(const uint8_t *data, size_t len, uint32_t version, struct vmstate_vm *out,
		     char *err, size_t errlen);

#endif
