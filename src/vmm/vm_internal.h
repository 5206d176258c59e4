/*
 * The VM module's internals, shared by its files (not an API):
 *   vm.c          run state, guest clock, vCPU threads, creation, lifecycle
 *   vm_query.c    query-status and the other queries, memory dumps, vCPU priority
 *   vm_migrate.c  what migration uses: stop/finish, dirty logging, throttle
 */
#ifndef VMFERRY_VMM_VM_INTERNAL_H
#define VMFERRY_VMM_VM_INTERNAL_H

#include "vmm/vm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <json-c/json.h>

#include "util/log.h"
#include "vmm/guest_image.h"

#define VM_KICK_SIGNAL SIGUSR1
#define VM_SLEEP_MAX_US 1000000u
#define VM_TSS_GPA 0xfffbd000ull
#define VM_THROTTLE_PERIOD_US 20000u

struct vcpu {
	struct vm *vm;
	unsigned index;
	int fd;                 /* KVM vCPU fd, owned */
	struct kvm_run *run;    /* shared with KVM */
	size_t run_bytes;
	pthread_t thread;
	bool thread_started;
	uint32_t time_hi_latch; /* vCPU thread only */
	uint64_t entry_rip;
	uint64_t throttle_seen;  /* vCPU thread only */
	_Atomic int tid;         /* the vCPU thread's, once it runs; 0 before */
	int base_nice;           /* its nice when it started (set before tid) */
};

/* A device's MMIO window and hooks (vm_devices.c); fixed before vm_start. */
struct vm_device {
	uint32_t type;
	uint64_t gpa, bytes;
	const struct vm_device_ops *ops;
	void *opaque;
};

struct vm {
	struct vm_config config;
	int kvm_fd, vm_fd;
	struct ram_block ram;
	struct guest_spec guest;
	unsigned nvcpus;
	struct vcpu *vcpus;
	int console_fd;        /* owned unless it is stdout */
	bool console_owned;
	_Atomic uint64_t moves; /* see vm_moves_get() */
	_Atomic int vcpu_nice;  /* see vm_set_vcpu_nice() */

	struct vm_device devices[VMF_MAX_DEVICES]; /* set before vm_start, then read-only */
	unsigned ndevices;

	vm_event_fn *event_fn;
	void *event_opaque;

	pthread_mutex_t lock;  /* protects everything below */
	pthread_cond_t cond;   /* broadcast on any change below */
	enum vm_runstate runstate;
	unsigned pause_depth;  /* > 0: vCPUs must park */
	unsigned nparked;      /* vCPU threads parked or gone */
	bool quit;
	int exit_status;
	bool exit_status_forced;
	char crash_report[2048];
	atomic_int attention;  /* pause_depth > 0 || quit; read lock-free */

	/* Guest clock: guest_ns = now - clock_base_ns while running. */
	_Atomic uint64_t clock_base_ns;
	uint64_t clock_frozen_ns;
	bool clock_frozen;

	uint64_t start_ns;     /* vm_create() entry */
	_Atomic uint64_t first_exit_ns;
	_Atomic uint64_t first_console_ns;
	atomic_bool warned_port;

	/* Migration support. */
	_Atomic uint64_t first_unpark_ns; /* set by the first vCPU let go */
	bool dirty_logging;               /* lock */
	bool ram_detached;     /* guest RAM removed from KVM (vm_detach_ram) */
	bool ram_arriving;     /* postcopy destination: pages still to come */
	enum vm_kept kept;     /* finish-migrate: why the guest stays stopped (lock) */
	bool kept_was_running; /* lock */
	pid_t kept_peer;       /* lock: see vm_migration_keep(); 0 none */
	_Atomic uint64_t *vmm_dirty;      /* one bit per page of ram, or NULL */
	/*
	 * Set after a bit of vmm_dirty is: the dirty-log read scans vmm_dirty
	 * only when it is (exchanged to false first), so a read over a large
	 * guest that the VMM itself did not write costs nothing here.
	 */
	atomic_bool vmm_dirty_some;
	_Atomic unsigned throttle_pct;
	_Atomic uint64_t throttle_gen;    /* bumped every throttle period */
	pthread_t throttle_thread;
	bool throttle_running;            /* lock */
};

void vm_set_runstate_locked(struct vm *vm, enum vm_runstate to);
void vm_emit(struct vm *vm, const char *event, struct json_object *data);
uint64_t vm_guest_clock_ns(struct vm *vm);
void vm_clock_freeze_locked(struct vm *vm);
void vm_clock_thaw_locked(struct vm *vm);
unsigned vm_nthreads(struct vm *vm);
void vm_pause_locked(struct vm *vm);
void vm_resume_locked(struct vm *vm);
bool vcpu_park(struct vcpu *vcpu);
int vcpu_renice(struct vcpu *vcpu, int tid, int nice);
void vcpu_nice_start(struct vcpu *vcpu);
/* vCPU thread: a KVM_EXIT_MMIO in a device window.  False: no device there. */
bool vcpu_handle_mmio(struct vcpu *vcpu);
/* Lock held: the devices quiesce (first pause) or go on (last resume). */
void vm_devices_pause_locked(struct vm *vm);
void vm_devices_resume_locked(struct vm *vm);
int vm_set_memslot(struct vm *vm, uint32_t slot, struct ram_block *b, uint32_t flags);

#endif
