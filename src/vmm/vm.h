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
#include <sys/types.h>

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
	VM_RUNSTATE_INMIGRATE,     /* destination: waiting for / loading state */
	VM_RUNSTATE_FINISH_MIGRATE,/* source: vCPUs stopped for switch-over */
	VM_RUNSTATE_POSTMIGRATE,   /* source: the guest now runs elsewhere  */
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
	bool incoming;            /* no guest is loaded: state comes from a stream */
	/*
	 * CPR transfer: guest RAM is this inherited memfd (ownership passes to
	 * vm_create, also on error), mapped as it is - nothing is written.
	 * Only with @incoming; @ram_fd is ignored unless @ram_inherited.
	 */
	bool ram_inherited;
	int ram_fd;
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

/* Ask vm_wait() to return: the VMM quits (exit status 0 unless the guest ended). */
void vm_request_quit(struct vm *vm);
/* Same, with the process exit status vm_wait() returns (a failed incoming). */
void vm_request_exit(struct vm *vm, int status);

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

/* ---- for the migration code (any non-vCPU thread unless noted) ---- */

unsigned vm_nvcpus(struct vm *vm);
int vm_vcpu_fd(struct vm *vm, unsigned index);
int vm_kvm_fd(struct vm *vm);
int vm_vm_fd(struct vm *vm);

/*
 * Source switch-over: stop every vCPU and enter finish-migrate from running
 * or paused.  *stopped_ns is when the first vCPU was asked to stop, where
 * the guest's pause begins (CLOCK_MONOTONIC),
 * *was_running whether the guest ran before.  0, or -EINVAL when the state
 * does not allow it.  Emits STOP when it was running.
 */
int vm_migration_stop(struct vm *vm, uint64_t *stopped_ns, bool *was_running);
/*
 * The guest now runs elsewhere and will never run here again (postcopy
 * after the destination said it runs): take guest RAM out of KVM, so that
 * giving its pages back (release-ram) costs no KVM work - on nested
 * machines each zap of the guest's mappings is expensive.  The host mapping
 * stays, for sending pages.  Only in finish-migrate or postmigrate.  0 or
 * -errno.  Any non-vCPU thread.
 */
int vm_detach_ram(struct vm *vm);
/*
 * Postcopy destination: guest RAM is still arriving (@arriving true from the
 * switch until every page is here).  A page that has not arrived blocks
 * whoever reads it, so vm_dump_memory refuses meanwhile.
 */
void vm_set_ram_arriving(struct vm *vm, bool arriving);
/* vm_set_vcpu_nice: past 19, the SCHED_IDLE policy. */
#define VM_VCPU_NICE_IDLE 20
/*
 * Make the vCPU threads nicer by @nice (0..19) relative to where they
 * started, or with VM_VCPU_NICE_IDLE put them in the SCHED_IDLE policy
 * (they run only on CPU time no other thread wants); 0 puts them back.
 * Applies to vCPU threads started later too.  A postcopy destination does
 * this while pages arrive, so that a guest spinning on the pages it has
 * does not starve the threads that bring the rest (on hosts whose vCPUs
 * share cores with them).  -EPERM, changing nothing, when the process
 * could not undo it (no CAP_SYS_NICE and a low RLIMIT_NICE: the same rule
 * lets a thread leave SCHED_IDLE); -EINVAL for @nice outside 0..20; else 0
 * or the first sched_setscheduler / setpriority error.  Any thread.
 */
int vm_set_vcpu_nice(struct vm *vm, int nice);
/* The migration failed before the destination ran: back to where we were. */
void vm_migration_abort(struct vm *vm, bool was_running);

/*
 * Why a guest that a migration stopped stays stopped here after the
 * migration ended without the destination's word (vm_migration_keep).
 * `cont {"force": true}` reads it: it resumes the guest here only when the
 * destination may have run it but did not provably do so.
 */
enum vm_kept {
	VM_KEPT_NONE = 0,     /* not kept: a migration may be switching over */
	VM_KEPT_PEER_MAY_RUN, /* the destination went silent after the stop: it may run
			       * the guest; the operator decides (cont {"force": true}) */
	VM_KEPT_PEER_RAN,     /* the destination said RUNNING: the guest must never
			       * run here again (its state is split or moved) */
};
/*
 * A migration that stopped the guest ends (or pauses) without resuming it:
 * record why (in finish-migrate only; VM_KEPT_NONE clears it, as a postcopy
 * resume does).  @was_running: what force-resuming restores (running or
 * paused).  @peer: the process that may run the guest over this very
 * memory (a live update's new process), which force-resuming requires to be
 * gone; 0 for none.  Any non-vCPU thread.
 */
void vm_migration_keep(struct vm *vm, enum vm_kept why, bool was_running, pid_t peer);
/*
 * `cont {"force": true}`: resume a guest kept paused with
 * VM_KEPT_PEER_MAY_RUN (finish-migrate -> running, or paused if it was).
 * Elsewhere it is vm_cont().  Refused with the reason in @err: -EPERM when
 * the destination ran the guest, -EBUSY while a migration switches over or
 * while the @peer of vm_migration_keep() is alive.  0 or -errno.
 */
int vm_cont_force(struct vm *vm, char *err, size_t errlen);
/*
 * Why stop/cont do not apply in a migration run state, for their error
 * messages: the text, with the command that helps, into @buf.
 */
void vm_migration_hold_reason(struct vm *vm, char *buf, size_t len);
/* The destination runs the guest: finish-migrate -> postmigrate. */
void vm_migration_complete(struct vm *vm);

/*
 * Destination: state is loaded; inmigrate -> running (@run) or paused.
 * When running, *first_run_ns is when the first vCPU was let go.
 */
int vm_incoming_finish(struct vm *vm, bool run, uint64_t *first_run_ns);

/*
 * A new process that took guest RAM over (CPR), before the guest runs
 * here: map the pages that hold data (SEEK_DATA over the memfd; they are in
 * the memfd already, so nothing is allocated or written) into this
 * process's page tables now, so that KVM's fault on each page the guest
 * touches again after the switch finds it mapped.  (KVM_PRE_FAULT_MEMORY
 * would map the second level as well; these nested hosts run KVM without
 * TDP, where it is not offered.)  Stops after @budget_ns; the bytes done in
 * *done_bytes.  0, -ENOTSUP when VMFERRY_CPR_PREFAULT=off, or -errno.
 * Main thread, before the guest runs.
 */
int vm_prefault_ram(struct vm *vm, uint64_t budget_ns, uint64_t *done_bytes);

/* The guest clock (ns); set only while the vCPUs are stopped. */
uint64_t vm_guest_clock_get(struct vm *vm);
void vm_guest_clock_set(struct vm *vm, uint64_t ns);
/*
 * How many times this guest moved to a new VMM process (migrations and
 * live updates) before arriving here; carried in the VM section.  Any thread.
 */
uint64_t vm_moves_get(struct vm *vm);
void vm_moves_set(struct vm *vm, uint64_t moves);

/*
 * Dirty logging over every RAM block (KVM manual-protect mode: pages start
 * dirty, and a page is write-protected again only by vm_dirty_log_clear).
 * vm_dirty_log_get writes KVM's log into all of @bitmap (one bit per 4 KiB
 * page of the block: no need to clear it first) and ORs the VMM's own
 * writes (vm_ram_write, vm_ram_mark_dirty) into it.  0 or -errno.
 */
int vm_dirty_log_start(struct vm *vm);
int vm_dirty_log_stop(struct vm *vm);
int vm_dirty_log_get(struct vm *vm, size_t block, uint64_t *bitmap);
/* Re-protect the pages set in @bits, which covers [first_page, +npages);
 * first_page is a multiple of 64. */
int vm_dirty_log_clear(struct vm *vm, size_t block, uint64_t first_page,
		       uint32_t npages, const uint64_t *bits);

/* A write by the VMM itself into guest RAM, logged for migration. */
int vm_ram_write(struct vm *vm, uint64_t gpa, const void *data, size_t len);

/* ---- devices (vm_devices.c) ---- */

/*
 * What a device gives the VM.  Every callback is required.
 *  mmio:   vCPU thread, a guest access of @len (1, 2, 4 or 8) bytes at
 *          @offset in its window; a read fills @data.  Never blocks for long.
 *  pause:  the first pause of the VM (stop, migration stop, dump), called
 *          with the VM lock held once every vCPU is parked: complete what is
 *          in flight into guest RAM and take no new request until resume.
 *          Must not call back into the VM but for vm_ram_mark_dirty.
 *  resume: the last resume (the vCPUs run next); also the first start.
 *          A device is paused when it is added.
 */
struct vm_device_ops {
	void (*mmio)(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write);
	void (*pause)(void *opaque);
	void (*resume)(void *opaque);
};

/*
 * Add a device of virtio type @type: its MMIO window is the next free one
 * from VMF_DEVICE_GPA (in *@mmio_gpa), listed in the boot info unless the
 * guest arrives by migration (then the source's boot info lists it, in the
 * same order).  Before vm_start; main thread.  0, -ENOSPC (VMF_MAX_DEVICES),
 * -EBUSY (started).
 */
int vm_add_device(struct vm *vm, uint32_t type, const struct vm_device_ops *ops, void *opaque,
		  uint64_t *mmio_gpa);
/*
 * A device wrote guest RAM [@gpa, +@len) behind KVM's back (DMA): logged
 * for migration like vm_ram_write.  -EFAULT outside RAM.  Any thread.
 */
int vm_ram_mark_dirty(struct vm *vm, uint64_t gpa, uint64_t len);

/* Throttle every vCPU to run only (100 - @pct)% of the time; 0 = off. */
void vm_set_throttle(struct vm *vm, unsigned pct);
unsigned vm_get_throttle(struct vm *vm);

#endif
