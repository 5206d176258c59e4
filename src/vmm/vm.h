/*
 * The virtual machine: a KVM VM, its RAM blocks, its vCPU threads and its
 * run state.
 *
 * Lifecycle: vm_create() -> vm_start() -> (vm_stop()/vm_cont())* ->
 * vm_wait() -> vm_destroy().  vm_create/vm_start/vm_wait/vm_destroy belong
 * to the main thread; vm_stop, vm_cont, vm_query_*, vm_dump_memory and
 * vm_request_quit may be called from any non-vCPU thread (the control
 * thread, a migration thread) and serialise on the VM lock.
 */
#ifndef VMFERRY_VMM_VM_H
#define VMFERRY_VMM_VM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmferry/guest_abi.h"
#include "vmm/ram.h"

struct vm;
struct json_object;

/* Run states, as a table in vm.c; zero is invalid. */
enum vm_runstate {
	VM_RUNSTATE_PRELAUNCH = 1, /* created, vCPUs not started           */
	VM_RUNSTATE_RUNNING,
	VM_RUNSTATE_PAUSED,        /* stopped by the user (or -S)          */
	VM_RUNSTATE_SHUTDOWN,      /* guest wrote the exit port            */
	VM_RUNSTATE_GUEST_PANICKED,/* triple fault, panic port, bad exit   */
	VM_RUNSTATE_INTERNAL_ERROR,/* KVM failed underneath the guest      */
	VM_RUNSTATE__COUNT,
};

/* "running", "paused", ... as QMP names them; "invalid" for junk. */
const char *vm_runstate_name(enum vm_runstate state);
/* True when the table allows @from -> @to. */
bool vm_runstate_transition_ok(enum vm_runstate from, enum vm_runstate to);

struct vm_config {
	uint64_t ram_bytes;       /* multiple of 2 MiB, >= VMF_MIN_RAM_BYTES */
	unsigned nvcpus;          /* 1..VMF_MAX_VCPUS */
	const char *guest;        /* "NAME|FILE[,key=value...]" */
	const char *console_path; /* NULL: stdout */
	bool start_paused;        /* -S: stay in prelaunch/paused until cont */
	bool no_shutdown;         /* keep the VMM alive after guest exit/crash */
	const char *kvm_path;     /* NULL: /dev/kvm */
};

/*
 * Event sink: called with the event name and its data object (owned by the
 * caller, may be NULL) from whichever thread caused the event, never with
 * the VM lock held.
 */
typedef void vm_event_fn(void *opaque, const char *event, struct json_object *data);

/*
 * Open KVM, create RAM, load the guest, create the vCPUs (not yet running).
 * Returns 0 or -errno; a message saying why was logged.
 */
int vm_create(const struct vm_config *config, struct vm **out);

/* Install the event sink (before vm_start). */
void vm_set_event_handler(struct vm *vm, vm_event_fn *fn, void *opaque);

/* Start the vCPU threads; running unless config.start_paused.  0 or -errno. */
int vm_start(struct vm *vm);

/*
 * Pause every vCPU (user "stop").  Returns 0 (also when already paused),
 * -EINVAL when the guest has shut down or crashed.  Emits STOP.
 */
int vm_stop(struct vm *vm);

/* Resume (user "cont").  0, or -EINVAL in a terminal state.  Emits RESUME. */
int vm_cont(struct vm *vm);

/* Ask vm_wait() to return: the VMM quits. */
void vm_request_quit(struct vm *vm);

/*
 * Block until quit is requested, or the guest shut down / crashed and
 * config.no_shutdown is off.  Returns the process exit status to use:
 * the guest's exit code, 0 on quit, VM_EXIT_STATUS_CRASH on a crash.
 */
int vm_wait(struct vm *vm);
#define VM_EXIT_STATUS_CRASH 3

/*
 * Quit and join every vCPU thread; afterwards no vCPU emits events.  The VM
 * stays valid for queries.  Main thread; idempotent.
 */
void vm_join_vcpus(struct vm *vm);

/* Stop the vCPU threads, free everything.  Main thread; NULL is fine. */
void vm_destroy(struct vm *vm);

enum vm_runstate vm_get_runstate(struct vm *vm);

/*
 * Build a JSON object for query-status / query-vcpus / query-memory /
 * query-workload.  The caller owns the result.  NULL on allocation failure.
 */
struct json_object *vm_query_status(struct vm *vm);
struct json_object *vm_query_vcpus(struct vm *vm);
struct json_object *vm_query_memory(struct vm *vm);
struct json_object *vm_query_workload(struct vm *vm);

/*
 * Write guest RAM as a flat image (file offset == guest-physical address;
 * all-zero pages left as holes) to @path.  The vCPUs are paused for the copy
 * if they were running.  Returns 0 or -errno (message logged).
 */
int vm_dump_memory(struct vm *vm, const char *path);

/* Guest RAM blocks, for the migration code. */
size_t vm_ram_block_count(struct vm *vm);
struct ram_block *vm_ram_block(struct vm *vm, size_t index);

#endif
