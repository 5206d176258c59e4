/*
 * The VM: KVM setup, the CPL3 long-mode boot, vCPU threads and run state.
 *
 * Stopping vCPUs without races (no locks in the signal handler):
 *
 *   requester                         vCPU thread
 *   ---------                         -----------
 *   lock; pause_depth++;              loop:
 *   attention = 1;                      run->immediate_exit = 0
 *   pthread_kill(SIGUSR1) ─────┐        if (attention) park()
 *   wait nparked == nvcpus     │        ioctl(KVM_RUN)
 *                              └──▶ handler: run->immediate_exit = 1
 *
 * The kick is sent after `attention` is set, so whichever way the signal
 * lands the vCPU sees the request: before the check (the check sees
 * attention), between the check and KVM_RUN (immediate_exit makes KVM_RUN
 * return at once), or inside KVM_RUN (it returns -EINTR).
 */
#include "vmm/vm_internal.h"

/* ---- run state table ---- */

static const char *const vm_runstate_names[VM_RUNSTATE__COUNT] = {
	[VM_RUNSTATE_PRELAUNCH] = "prelaunch",
	[VM_RUNSTATE_RUNNING] = "running",
	[VM_RUNSTATE_PAUSED] = "paused",
	[VM_RUNSTATE_SHUTDOWN] = "shutdown",
	[VM_RUNSTATE_GUEST_PANICKED] = "guest-panicked",
	[VM_RUNSTATE_INTERNAL_ERROR] = "internal-error",
	[VM_RUNSTATE_INMIGRATE] = "inmigrate",
	[VM_RUNSTATE_FINISH_MIGRATE] = "finish-migrate",
	[VM_RUNSTATE_POSTMIGRATE] = "postmigrate",
};

/* allowed[from][to] */
static const bool vm_runstate_allowed[VM_RUNSTATE__COUNT][VM_RUNSTATE__COUNT] = {
	[VM_RUNSTATE_PRELAUNCH] = {
		[VM_RUNSTATE_RUNNING] = true, [VM_RUNSTATE_PAUSED] = true,
	},
	[VM_RUNSTATE_RUNNING] = {
		[VM_RUNSTATE_PAUSED] = true, [VM_RUNSTATE_SHUTDOWN] = true,
		[VM_RUNSTATE_GUEST_PANICKED] = true, [VM_RUNSTATE_INTERNAL_ERROR] = true,
		[VM_RUNSTATE_FINISH_MIGRATE] = true,
	},
	[VM_RUNSTATE_PAUSED] = {
		[VM_RUNSTATE_RUNNING] = true, [VM_RUNSTATE_FINISH_MIGRATE] = true,
	},
	[VM_RUNSTATE_INMIGRATE] = {
		[VM_RUNSTATE_RUNNING] = true, [VM_RUNSTATE_PAUSED] = true,
	},
	[VM_RUNSTATE_FINISH_MIGRATE] = {
		[VM_RUNSTATE_RUNNING] = true, [VM_RUNSTATE_PAUSED] = true,
		[VM_RUNSTATE_POSTMIGRATE] = true,
	},
	/* postmigrate: the guest runs elsewhere; running it here too would fork it */
	/* shutdown, guest-panicked, internal-error are terminal */
};

const char *vm_runstate_name(enum vm_runstate state)
{
	if ((int)state <= 0 || state >= VM_RUNSTATE__COUNT)
		return "invalid";
	return vm_runstate_names[state];
}

bool vm_runstate_transition_ok(enum vm_runstate from, enum vm_runstate to)
{
	if ((int)from <= 0 || from >= VM_RUNSTATE__COUNT || (int)to <= 0 ||
	    to >= VM_RUNSTATE__COUNT)
		return false;
	return vm_runstate_allowed[from][to];
}

static bool vm_runstate_terminal(enum vm_runstate s)
{
	return s == VM_RUNSTATE_SHUTDOWN || s == VM_RUNSTATE_GUEST_PANICKED ||
	       s == VM_RUNSTATE_INTERNAL_ERROR;
}

/* Lock held.  Moves the state; an invalid move is a bug in this file. */
void vm_set_runstate_locked(struct vm *vm, enum vm_runstate to)
{
	if (!vm_runstate_transition_ok(vm->runstate, to)) {
		log_error("vm: invalid run state transition %s -> %s",
			  vm_runstate_name(vm->runstate), vm_runstate_name(to));
		abort();
	}
	vm->runstate = to;
	pthread_cond_broadcast(&vm->cond);
}

void vm_emit(struct vm *vm, const char *event, struct json_object *data)
{
	if (vm->event_fn)
		vm->event_fn(vm->event_opaque, event, data);
	json_object_put(data);
}

/* ---- guest clock ---- */

uint64_t vm_guest_clock_ns(struct vm *vm)
{
	return clock_monotonic_ns() - vm->clock_base_ns;
}

void vm_clock_freeze_locked(struct vm *vm)
{
	if (vm->clock_frozen)
		return;
	vm->clock_frozen_ns = vm_guest_clock_ns(vm);
	vm->clock_frozen = true;
}

void vm_clock_thaw_locked(struct vm *vm)
{
	if (!vm->clock_frozen)
		return;
	vm->clock_base_ns = clock_monotonic_ns() - vm->clock_frozen_ns;
	vm->clock_frozen = false;
}

/* ---- kicking and parking vCPUs ---- */

static __thread struct kvm_run *vcpu_tls_run;

static void vm_kick_handler(int sig)
{
	(void)sig;
	/* Only a plain store: async-signal-safe. */
	if (vcpu_tls_run)
		vcpu_tls_run->immediate_exit = 1;
}

static void vm_update_attention_locked(struct vm *vm)
{
	atomic_store(&vm->attention, vm->pause_depth > 0 || vm->quit);
}

static void vm_kick_all_locked(struct vm *vm)
{
	pthread_cond_broadcast(&vm->cond); /* vCPUs sleeping on the sleep port */
	for (unsigned i = 0; i < vm->nvcpus; i++)
		if (vm->vcpus[i].thread_started)
			pthread_kill(vm->vcpus[i].thread, VM_KICK_SIGNAL);
}

unsigned vm_nthreads(struct vm *vm)
{
	unsigned n = 0;

	for (unsigned i = 0; i < vm->nvcpus; i++)
		n += vm->vcpus[i].thread_started;
	return n;
}

/* Lock held.  Ask every vCPU to park, without waiting. */
static void vm_pause_request_locked(struct vm *vm)
{
	vm->pause_depth++;
	vm_update_attention_locked(vm);
	vm_kick_all_locked(vm);
}

/* Lock held.  Pause and wait until every vCPU thread is parked. */
/*
 * Lock held.  Pause and wait until every vCPU thread is parked; the first
 * pause also quiesces the devices (their in-flight requests complete into
 * guest RAM now, before whoever paused reads it: a dump, the migration's
 * last dirty sync).
 */
void vm_pause_locked(struct vm *vm)
{
	bool first = vm->pause_depth == 0;

	vm_pause_request_locked(vm);
	while (vm->nparked < vm_nthreads(vm))
		pthread_cond_wait(&vm->cond, &vm->lock);
	if (first)
		vm_devices_pause_locked(vm);
}

void vm_resume_locked(struct vm *vm)
{
	if (vm->pause_depth == 0) {
		log_error("vm: resume without pause");
		abort();
	}
	vm->pause_depth--;
	if (vm->pause_depth == 0)
		vm_devices_resume_locked(vm); /* before the vCPUs: a kick finds them ready */
	vm_update_attention_locked(vm);
	pthread_cond_broadcast(&vm->cond);
}

/* vCPU thread.  Returns true when the thread must exit. */
bool vcpu_park(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;
	bool quit;

	pthread_mutex_lock(&vm->lock);
	vm->nparked++;
	pthread_cond_broadcast(&vm->cond);
	while (vm->pause_depth > 0 && !vm->quit)
		pthread_cond_wait(&vm->cond, &vm->lock);
	quit = vm->quit;
	if (!quit)
		vm->nparked--;
	pthread_mutex_unlock(&vm->lock);
	if (!quit) {
		uint64_t zero = 0;

		atomic_compare_exchange_strong(&vm->first_unpark_ns, &zero, clock_monotonic_ns());
	}
	return quit;
}

/* ---- crash reports ---- */

static void vcpu_format_regs(struct vcpu *vcpu, char *buf, size_t len,
			     struct json_object *data)
{
	struct kvm_regs r;
	struct kvm_sregs s;

	if (ioctl(vcpu->fd, KVM_GET_REGS, &r) < 0 || ioctl(vcpu->fd, KVM_GET_SREGS, &s) < 0) {
		snprintf(buf, len, "registers unavailable: %s", strerror(errno));
		return;
	}
	snprintf(buf, len,
		 "vcpu %u: rip=%#llx rsp=%#llx rflags=%#llx rax=%#llx rbx=%#llx "
		 "rcx=%#llx rdx=%#llx rsi=%#llx rdi=%#llx rbp=%#llx "
		 "cr0=%#llx cr2=%#llx cr3=%#llx cr4=%#llx efer=%#llx cs=%#x cpl=%u",
		 vcpu->index, r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx,
		 r.rsi, r.rdi, r.rbp, s.cr0, s.cr2, s.cr3, s.cr4, s.efer,
		 s.cs.selector, s.cs.dpl);
	if (data) {
		json_object_object_add(data, "rip", json_object_new_int64((int64_t)r.rip));
		json_object_object_add(data, "rsp", json_object_new_int64((int64_t)r.rsp));
		json_object_object_add(data, "cr2", json_object_new_int64((int64_t)s.cr2));
	}
}

/*
 * vCPU thread: the guest cannot continue.  Record why, move to @state,
 * park every vCPU for good and tell the world.
 */
static void vcpu_crash(struct vcpu *vcpu, enum vm_runstate state, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void vcpu_crash(struct vcpu *vcpu, enum vm_runstate state, const char *fmt, ...)
{
	struct vm *vm = vcpu->vm;
	struct json_object *data = json_object_new_object();
	char why[512], regs[1024];
	bool first = false;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	vcpu_format_regs(vcpu, regs, sizeof(regs), data);

	pthread_mutex_lock(&vm->lock);
	if (!vm_runstate_terminal(vm->runstate)) {
		first = true;
		vm_set_runstate_locked(vm, state);
		vm_clock_freeze_locked(vm);
		snprintf(vm->crash_report, sizeof(vm->crash_report), "%s; %s", why, regs);
		vm->exit_status = VM_EXIT_STATUS_CRASH;
		vm_pause_request_locked(vm); /* never resumed: terminal */
	}
	pthread_mutex_unlock(&vm->lock);

	if (first) {
		log_error("guest crashed: %s", why);
		log_error("  %s", regs);
		json_object_object_add(data, "action", json_object_new_string("pause"));
		json_object_object_add(data, "vcpu", json_object_new_int((int)vcpu->index));
		json_object_object_add(data, "reason", json_object_new_string(why));
		json_object_object_add(data, "registers", json_object_new_string(regs));
		vm_emit(vm, "GUEST_PANICKED", data);
	} else {
		json_object_put(data);
	}
}

static void vcpu_guest_exit(struct vcpu *vcpu, uint32_t code)
{
	struct vm *vm = vcpu->vm;
	struct json_object *data;
	bool first = false;

	pthread_mutex_lock(&vm->lock);
	if (!vm_runstate_terminal(vm->runstate)) {
		first = true;
		vm_set_runstate_locked(vm, VM_RUNSTATE_SHUTDOWN);
		vm_clock_freeze_locked(vm);
		vm->exit_status = (int)(code & 0xff);
		vm_pause_request_locked(vm);
	}
	pthread_mutex_unlock(&vm->lock);
	if (first) {
		log_info("guest exited with code %u", code);
		data = json_object_new_object();
		json_object_object_add(data, "guest", json_object_new_boolean(1));
		json_object_object_add(data, "reason", json_object_new_string("guest-shutdown"));
		json_object_object_add(data, "exit-code", json_object_new_int64(code));
		vm_emit(vm, "SHUTDOWN", data);
	}
}

/* ---- port I/O ---- */

static void vcpu_console_write(struct vcpu *vcpu, const uint8_t *bytes, size_t n)
{
	struct vm *vm = vcpu->vm;
	uint64_t zero = 0;

	atomic_compare_exchange_strong(&vm->first_console_ns, &zero, clock_monotonic_ns());
	while (n > 0) {
		ssize_t w = write(vm->console_fd, bytes, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return; /* a closed console must not stop the guest */
		bytes += w;
		n -= (size_t)w;
	}
}

/* vCPU thread: the guest asked to sleep; wake early for pause or quit. */
static void vcpu_sleep(struct vcpu *vcpu, uint32_t us)
{
	struct vm *vm = vcpu->vm;
	struct timespec deadline;
	uint64_t until;

	if (us > VM_SLEEP_MAX_US)
		us = VM_SLEEP_MAX_US;
	until = clock_monotonic_ns() + (uint64_t)us * 1000;
	deadline.tv_sec = (time_t)(until / 1000000000ull);
	deadline.tv_nsec = (long)(until % 1000000000ull);
	pthread_mutex_lock(&vm->lock);
	while (!atomic_load(&vm->attention) && clock_monotonic_ns() < until)
		if (pthread_cond_timedwait(&vm->cond, &vm->lock, &deadline) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&vm->lock);
}

/* Returns false when the guest is dead (crash reported). */
static bool vcpu_handle_io(struct vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	uint32_t v32 = 0;

	if (run->io.size == 4)
		memcpy(&v32, data, 4);
	if (run->io.direction == KVM_EXIT_IO_OUT) {
		switch (run->io.port) {
		case VMF_PORT_CONSOLE:
			vcpu_console_write(vcpu, data, (size_t)run->io.size * run->io.count);
			return true;
		case VMF_PORT_EXIT:
			vcpu_guest_exit(vcpu, v32);
			return false;
		case VMF_PORT_SLEEP:
			vcpu_sleep(vcpu, v32);
			return true;
		case VMF_PORT_PANIC:
			vcpu_crash(vcpu, VM_RUNSTATE_GUEST_PANICKED,
				   "guest reported panic code %#x", v32);
			return false;
		}
	} else {
		switch (run->io.port) {
		case VMF_PORT_TIME_LO: {
			uint64_t t = vm_guest_clock_ns(vcpu->vm);

			vcpu->time_hi_latch = (uint32_t)(t >> 32);
			v32 = (uint32_t)t;
			memcpy(data, &v32, 4);
			return true;
		}
		case VMF_PORT_TIME_HI:
			memcpy(data, &vcpu->time_hi_latch, 4);
			return true;
		}
		memset(data, 0xff, (size_t)run->io.size * run->io.count);
	}
	if (!atomic_exchange(&vcpu->vm->warned_port, true))
		log_warn("vcpu %u: guest used unknown port %#x (%s, size %u); ignored",
			 vcpu->index, run->io.port,
			 run->io.direction == KVM_EXIT_IO_OUT ? "out" : "in", run->io.size);
	return true;
}

/* vCPU thread: sit out this throttle period's share. */
static void vcpu_throttle(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;
	unsigned pct = atomic_load(&vm->throttle_pct);

	vcpu->throttle_seen = vm->throttle_gen;
	if (pct > 0 && pct < 100)
		vcpu_sleep(vcpu, (uint32_t)(VM_THROTTLE_PERIOD_US * pct / 100));
}

/* ---- the vCPU thread: one flat switch on the exit reason ---- */

/* Nice @vcpu's thread by @nice relative to where it started, or (@nice
 * VM_VCPU_NICE_IDLE) put it in SCHED_IDLE.  0 or -errno. */
int vcpu_renice(struct vcpu *vcpu, int tid, int nice)
{
	struct sched_param sp = { 0 };
	int want = vcpu->base_nice + nice;

	if (nice >= VM_VCPU_NICE_IDLE)
		return sched_setscheduler(tid, SCHED_IDLE, &sp) < 0 ? -errno : 0;
	/* Back from SCHED_IDLE first (its nice was kept all along). */
	if (sched_getscheduler(tid) == SCHED_IDLE && sched_setscheduler(tid, SCHED_OTHER, &sp) < 0)
		return -errno;
	if (want > 19)
		want = 19;
	/* PRIO_PROCESS with a thread id applies to that thread alone on Linux. */
	return setpriority(PRIO_PROCESS, (id_t)tid, want) < 0 ? -errno : 0;
}

/*
 * The vCPU thread, first thing: publish its thread id, then apply a nice
 * that vm_set_vcpu_nice() set before it existed.  Both sides store, then
 * load (sequentially consistent), so at least one of them renices it.
 */
void vcpu_nice_start(struct vcpu *vcpu)
{
	int tid = (int)syscall(SYS_gettid), nice;

	errno = 0;
	vcpu->base_nice = getpriority(PRIO_PROCESS, (id_t)tid);
	if (errno)
		vcpu->base_nice = 0;
	atomic_store(&vcpu->tid, tid);
	nice = atomic_load(&vcpu->vm->vcpu_nice);
	if (nice)
		vcpu_renice(vcpu, tid, nice);
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *vcpu = arg;
	struct vm *vm = vcpu->vm;
	struct kvm_run *run = vcpu->run;
	sigset_t unblock;

	vcpu_tls_run = run;
	{
		char name[16]; /* the kernel keeps 15 characters */

		snprintf(name, sizeof(name), "vcpu%u", vcpu->index);
		pthread_setname_np(pthread_self(), name);
	}
	vcpu_nice_start(vcpu);
	sigemptyset(&unblock);
	sigaddset(&unblock, VM_KICK_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &unblock, NULL);

	for (;;) {
		bool alive = true;

		run->immediate_exit = 0;
		if (atomic_load(&vm->attention)) {
			if (vcpu_park(vcpu))
				break;
			continue;
		}
		if (atomic_load(&vm->throttle_pct) && vcpu->throttle_seen != vm->throttle_gen) {
			vcpu_throttle(vcpu);
			continue;
		}
		if (ioctl(vcpu->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			vcpu_crash(vcpu, VM_RUNSTATE_INTERNAL_ERROR, "KVM_RUN failed: %s",
				   strerror(errno));
			continue;
		}
		{
			uint64_t zero = 0;

			atomic_compare_exchange_strong(&vm->first_exit_ns, &zero,
						       clock_monotonic_ns());
		}
		switch (run->exit_reason) {
		case KVM_EXIT_IO:
			alive = vcpu_handle_io(vcpu);
			break;
		case KVM_EXIT_INTR: /* kicked: the loop head looks at attention */
			break;
		case KVM_EXIT_MMIO: /* a device register, or a stray access */
			if (vcpu_handle_mmio(vcpu))
				break;
			vcpu_crash(vcpu, VM_RUNSTATE_GUEST_PANICKED,
				   "guest %s unmapped guest-physical address %#llx",
				   run->mmio.is_write ? "wrote" : "read",
				   (unsigned long long)run->mmio.phys_addr);
			break;
		case KVM_EXIT_SHUTDOWN: /* triple fault: no IDT at CPL3 */
			vcpu_crash(vcpu, VM_RUNSTATE_GUEST_PANICKED,
				   "guest triple-faulted (exception with no handler)");
			break;
		case KVM_EXIT_HLT:
			vcpu_crash(vcpu, VM_RUNSTATE_GUEST_PANICKED, "guest halted");
			break;
		case KVM_EXIT_SYSTEM_EVENT:
			vcpu_crash(vcpu, VM_RUNSTATE_GUEST_PANICKED,
				   "guest system event type %u", run->system_event.type);
			break;
		case KVM_EXIT_FAIL_ENTRY:
			vcpu_crash(vcpu, VM_RUNSTATE_INTERNAL_ERROR,
				   "KVM entry failed, hardware reason %#llx",
				   (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
			break;
		case KVM_EXIT_INTERNAL_ERROR:
			vcpu_crash(vcpu, VM_RUNSTATE_INTERNAL_ERROR,
				   "KVM internal error, suberror %u", run->internal.suberror);
			break;
		default:
			vcpu_crash(vcpu, VM_RUNSTATE_GUEST_PANICKED,
				   "unexpected KVM exit reason %u", run->exit_reason);
			break;
		}
		(void)alive;
	}
	vcpu_tls_run = NULL;
	return NULL;
}

/* ---- creation ---- */

/* Manual-protect dirty logging, pages initially dirty, when KVM has it. */
static void vm_enable_manual_dirty_log(struct vm *vm)
{
	int caps = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
	struct kvm_enable_cap cap = { .cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 };

	if (caps <= 0) {
		log_warn("KVM lacks manual dirty-log protection; migration is unavailable");
		return;
	}
	cap.args[0] = (uint64_t)caps & (KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE |
					 KVM_DIRTY_LOG_INITIALLY_SET);
	if (ioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap) < 0)
		log_warn("enabling manual dirty-log protection failed: %s", strerror(errno));
}

static int vm_check_config(const struct vm_config *c)
{
	long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
	uint64_t host_bytes = (uint64_t)pages * (uint64_t)psz;

	if (c->ram_bytes < VMF_MIN_RAM_BYTES || c->ram_bytes % (2u << 20)) {
		log_error("--mem: guest RAM must be a multiple of 2 MiB and at least %llu MiB",
			  VMF_MIN_RAM_BYTES >> 20);
		return -EINVAL;
	}
	if (c->ram_bytes > (VMF_MAX_RAM_GIB << 30)) {
		log_error("--mem: at most %llu GiB of guest RAM is supported", VMF_MAX_RAM_GIB);
		return -E2BIG;
	}
	/*
	 * More than the host has is fine while the guest touches less: guest
	 * RAM is allocated as it is first written, and a migration moves and
	 * allocates only what was (a sparse guest).  --prealloc refuses it.
	 */
	if (pages > 0 && psz > 0 && c->ram_bytes > host_bytes)
		log_warn("--mem: %llu MiB of guest RAM is more than this host's %llu MiB; it runs as "
			 "long as the guest touches less", (unsigned long long)(c->ram_bytes >> 20),
			 (unsigned long long)(host_bytes >> 20));
	if (c->nvcpus < 1 || c->nvcpus > VMF_MAX_VCPUS) {
		log_error("--vcpus: between 1 and %u vCPUs", VMF_MAX_VCPUS);
		return -EINVAL;
	}
	if ((c->ram_bytes - VMF_WORK_GPA) / VMF_PAGE_BYTES < c->nvcpus) {
		log_error("--mem: too little RAM for %u vCPUs", c->nvcpus);
		return -EINVAL;
	}
	return 0;
}

static int vm_open_kvm(struct vm *vm)
{
	const char *path = vm->config.kvm_path ? vm->config.kvm_path : "/dev/kvm";
	int ver;

	vm->kvm_fd = open(path, O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0) {
		int err = -errno;

		if (errno == ENOENT)
			log_error("%s does not exist: this host has no KVM (load kvm_intel/kvm_amd, "
				  "or enable nested virtualization)", path);
		else if (errno == EACCES || errno == EPERM)
			log_error("cannot open %s: %s (run as root or join the kvm group)",
				  path, strerror(errno));
		else
			log_error("cannot open %s: %s", path, strerror(errno));
		return err;
	}
	ver = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
	if (ver != KVM_API_VERSION) {
		log_error("%s: KVM API version %d, need %d", path, ver, KVM_API_VERSION);
		return -ENOTSUP;
	}
	if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_IMMEDIATE_EXIT) <= 0) {
		log_error("%s: KVM lacks KVM_CAP_IMMEDIATE_EXIT", path);
		return -ENOTSUP;
	}
	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0) {
		int err = -errno;

		log_error("KVM_CREATE_VM failed: %s", strerror(errno));
		return err;
	}
	if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, VM_TSS_GPA) < 0)
		log_debug("KVM_SET_TSS_ADDR: %s (ignored)", strerror(errno));
	return 0;
}

int vm_set_memslot(struct vm *vm, uint32_t slot, struct ram_block *b, uint32_t flags)
{
	struct kvm_userspace_memory_region region = {
		.slot = slot,
		.flags = flags,
		.guest_phys_addr = b->gpa,
		.memory_size = b->bytes,
		.userspace_addr = (uint64_t)(uintptr_t)b->host,
	};

	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
		int err = -errno;

		log_error("KVM_SET_USER_MEMORY_REGION for %s failed: %s", b->name, strerror(errno));
		return err;
	}
	return 0;
}

/* Identity map of all RAM with 2 MiB pages, user-accessible at every level. */
static void vm_build_page_tables(struct vm *vm)
{
	uint8_t *ram = vm->ram.host;
	uint64_t *pml4 = (uint64_t *)(ram + VMF_PAGE_TABLE_GPA);
	uint64_t *pdpt = (uint64_t *)(ram + VMF_PAGE_TABLE_GPA + 0x1000);
	uint64_t ngib = (vm->config.ram_bytes + (1ull << 30) - 1) >> 30;
	uint64_t n2m = vm->config.ram_bytes >> 21;

	memset(pml4, 0, 0x1000);
	memset(pdpt, 0, 0x1000);
	pml4[0] = (VMF_PAGE_TABLE_GPA + 0x1000) | 0x7;
	for (uint64_t g = 0; g < ngib; g++) {
		uint64_t pd_gpa = VMF_PAGE_TABLE_GPA + 0x2000 + g * 0x1000;
		uint64_t *pd = (uint64_t *)(ram + pd_gpa);

		memset(pd, 0, 0x1000);
		pdpt[g] = pd_gpa | 0x7;
		for (uint64_t i = 0; i < 512 && g * 512 + i < n2m; i++)
			pd[i] = ((g * 512 + i) << 21) | 0x87;
	}
	/* The device windows: one 2 MiB page with no memslot behind it. */
	{
		uint64_t *pd = (uint64_t *)(ram + VMF_DEVICE_PD_GPA);

		memset(pd, 0, 0x1000);
		pdpt[VMF_DEVICE_GPA >> 30] = VMF_DEVICE_PD_GPA | 0x7;
		pd[0] = VMF_DEVICE_GPA | 0x87;
	}
}

static void vm_fill_boot_info(struct vm *vm)
{
	struct vmf_boot_info *bi = (struct vmf_boot_info *)(vm->ram.host + VMF_BOOT_INFO_GPA);
	uint64_t work_pages = (vm->config.ram_bytes - VMF_WORK_GPA) / VMF_PAGE_BYTES;
	uint64_t per = work_pages / vm->nvcpus;

	memset(bi, 0, sizeof(*bi));
	bi->magic = VMF_BOOT_MAGIC;
	bi->abi_version = VMF_ABI_VERSION;
	bi->nvcpus = vm->nvcpus;
	bi->ram_bytes = vm->config.ram_bytes;
	snprintf(bi->workload, sizeof(bi->workload), "%s", vm->guest.name);
	memcpy(bi->params, vm->guest.params, sizeof(bi->params));
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		bi->range[i].gpa = VMF_WORK_GPA + i * per * VMF_PAGE_BYTES;
		bi->range[i].bytes = per * VMF_PAGE_BYTES;
	}
}

static int vm_get_supported_cpuid(struct vm *vm, struct kvm_cpuid2 **out)
{
	for (unsigned n = 64; n <= 4096; n *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));

		if (!c)
			return -ENOMEM;
		c->nent = n;
		if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			*out = c;
			return 0;
		}
		free(c);
		if (errno != E2BIG) {
			int err = -errno;

			log_error("KVM_GET_SUPPORTED_CPUID failed: %s", strerror(errno));
			return err;
		}
	}
	return -E2BIG;
}

static void vm_segment(struct kvm_segment *s, uint16_t sel, uint8_t type, bool code)
{
	memset(s, 0, sizeof(*s));
	s->base = 0;
	s->limit = 0xffffffff;
	s->selector = sel;
	s->type = type;
	s->present = 1;
	s->dpl = 3;
	s->s = 1;
	s->g = 1;
	s->l = code;
	s->db = !code;
}

static int vcpu_init(struct vm *vm, struct vcpu *vcpu, unsigned index,
		     const struct kvm_cpuid2 *cpuid, uint64_t entry)
{
	struct kvm_cpuid2 *mine;
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	size_t cpuid_bytes = sizeof(*cpuid) + cpuid->nent * sizeof(cpuid->entries[0]);
	int mmap_bytes, err;

	vcpu->vm = vm;
	vcpu->index = index;
	vcpu->entry_rip = entry;
	vcpu->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, index);
	if (vcpu->fd < 0) {
		err = -errno;
		log_error("KVM_CREATE_VCPU %u failed: %s", index, strerror(errno));
		return err;
	}
	mmap_bytes = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (mmap_bytes <= 0)
		return -ENOTSUP;
	vcpu->run_bytes = (size_t)mmap_bytes;
	vcpu->run = mmap(NULL, vcpu->run_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd, 0);
	if (vcpu->run == MAP_FAILED) {
		vcpu->run = NULL;
		return -errno;
	}

	mine = malloc(cpuid_bytes);
	if (!mine)
		return -ENOMEM;
	memcpy(mine, cpuid, cpuid_bytes);
	for (unsigned i = 0; i < mine->nent; i++) {
		struct kvm_cpuid_entry2 *e = &mine->entries[i];

		if (e->function == 1)
			e->ebx = (e->ebx & 0x00ffffffu) | (index << 24);
		if (e->function == 0xb || e->function == 0x1f)
			e->edx = index;
	}
	err = ioctl(vcpu->fd, KVM_SET_CPUID2, mine) < 0 ? -errno : 0;
	free(mine);
	if (err) {
		log_error("KVM_SET_CPUID2 failed: %s", strerror(-err));
		return err;
	}

	if (ioctl(vcpu->fd, KVM_GET_SREGS, &sregs) < 0)
		return -errno;
	vm_segment(&sregs.cs, 0x18 | 3, 0xb, true);
	vm_segment(&sregs.ds, 0x20 | 3, 0x3, false);
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	/*
	 * TR stays as KVM set it: on this project's paravirtualized nested KVM a
	 * hand-made TSS descriptor makes every port access at CPL3 fault, while
	 * KVM's default one lets IOPL=3 through.
	 */
	sregs.cr0 = 0x80000031; /* PG | NE | ET | PE */
	sregs.cr3 = VMF_PAGE_TABLE_GPA;
	sregs.cr4 = 0x20;       /* PAE */
	sregs.efer = 0x500;     /* LMA | LME */
	if (ioctl(vcpu->fd, KVM_SET_SREGS, &sregs) < 0) {
		err = -errno;
		log_error("KVM_SET_SREGS failed: %s", strerror(errno));
		return err;
	}
	memset(&regs, 0, sizeof(regs));
	regs.rip = entry;
	regs.rsp = VMF_STACKS_GPA + (index + 1) * VMF_STACK_BYTES;
	regs.rdi = index;
	regs.rsi = VMF_BOOT_INFO_GPA;
	regs.rflags = 0x3002; /* IOPL = 3: port I/O allowed at CPL3 */
	if (ioctl(vcpu->fd, KVM_SET_REGS, &regs) < 0) {
		err = -errno;
		log_error("KVM_SET_REGS failed: %s", strerror(errno));
		return err;
	}
	return 0;
}

static void vm_install_kick_handler(void)
{
	struct sigaction sa;
	sigset_t block;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = vm_kick_handler;
	sigemptyset(&sa.sa_mask);
	sigaction(VM_KICK_SIGNAL, &sa, NULL);
	/* Only vCPU threads take the kick; every other thread blocks it. */
	sigemptyset(&block);
	sigaddset(&block, VM_KICK_SIGNAL);
	pthread_sigmask(SIG_BLOCK, &block, NULL);
}

/*
 * A VM in its prelaunch state with a copy of @config: no fds open yet, its
 * lock and condition variable ready.  NULL when out of memory.
 */
static struct vm *vm_alloc(const struct vm_config *config)
{
	pthread_condattr_t ca;
	struct vm *vm = calloc(1, sizeof(*vm));

	if (!vm)
		return NULL;
	vm->config = *config;
	vm->start_ns = clock_monotonic_ns();
	vm->kvm_fd = vm->vm_fd = vm->console_fd = -1;
	vm->ram.fd = -1;
	vm->nvcpus = config->nvcpus;
	vm->runstate = VM_RUNSTATE_PRELAUNCH;
	vm->pause_depth = 1; /* released by vm_start() unless start_paused */
	vm->clock_frozen = true;
	atomic_store(&vm->attention, 1);
	pthread_mutex_init(&vm->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&vm->cond, &ca);
	pthread_condattr_destroy(&ca);
	return vm;
}

/* Open --console (or take stdout) as the guest's console.  0, or -errno after logging. */
static int vm_open_console(struct vm *vm)
{
	const char *path = vm->config.console_path;

	if (!path) {
		vm->console_fd = STDOUT_FILENO;
		return 0;
	}
	vm->console_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (vm->console_fd < 0) {
		int err = -errno;

		log_error("--console: cannot open %s: %s", path, strerror(errno));
		return err;
	}
	vm->console_owned = true;
	return 0;
}

/*
 * Guest RAM: create it, or adopt @config's inherited memfd (the block owns
 * it from here; vm->config.ram_inherited turns false), and map it into KVM;
 * booting, load the guest image, its page tables and boot info, with the
 * entry point in *@entry (0 when incoming).  0 or -errno.
 */
static int vm_setup_ram(struct vm *vm, const struct vm_config *config, uint64_t *entry)
{
	int err;

	if (config->ram_inherited) {
		int fd = config->ram_fd;

		vm->config.ram_inherited = false; /* the block owns the fd now */
		err = config->incoming ? ram_block_adopt_fd("ram0", 0, config->ram_bytes, fd, &vm->ram)
				       : -EINVAL;
		if (!config->incoming)
			close(fd);
	} else {
		err = ram_block_create("ram0", 0, config->ram_bytes, &vm->ram);
	}
	if (err)
		return err;
	err = vm_set_memslot(vm, 0, &vm->ram, 0);
	if (err)
		return err;
	vm_enable_manual_dirty_log(vm);
	*entry = 0;
	if (!config->incoming) {
		err = guest_image_load(&vm->guest, vm->ram.host, vm->ram.bytes, entry);
		if (err)
			return err;
		vm_build_page_tables(vm);
		vm_fill_boot_info(vm);
	}
	return 0;
}

/*
 * Create the vCPUs (not running), each with the host's supported CPUID and
 * registers set to start at @entry.  0 or -errno; vm_destroy releases what
 * was made.
 */
static int vm_create_vcpus(struct vm *vm, uint64_t entry)
{
	struct kvm_cpuid2 *cpuid = NULL;
	int err;

	err = vm_get_supported_cpuid(vm, &cpuid);
	if (err)
		return err;
	vm->vcpus = calloc(vm->nvcpus, sizeof(*vm->vcpus));
	if (!vm->vcpus) {
		free(cpuid);
		return -ENOMEM;
	}
	for (unsigned i = 0; i < vm->nvcpus; i++)
		vm->vcpus[i].fd = -1;
	for (unsigned i = 0; i < vm->nvcpus && !err; i++)
		err = vcpu_init(vm, &vm->vcpus[i], i, cpuid, entry);
	free(cpuid);
	return err;
}

int vm_create(const struct vm_config *config, struct vm **out)
{
	uint64_t entry;
	struct vm *vm;
	int err;

	*out = NULL;
	err = vm_check_config(config);
	vm = err ? NULL : vm_alloc(config);
	if (!vm) {
		if (config->ram_inherited)
			close(config->ram_fd);
		return err ? err : -ENOMEM;
	}
	if (config->incoming) {
		/* The guest arrives in the stream; its name is in the boot info. */
		vm->runstate = VM_RUNSTATE_INMIGRATE;
		snprintf(vm->guest.name, sizeof(vm->guest.name), "incoming");
	} else {
		err = guest_spec_parse(config->guest ? config->guest : "incrementer", &vm->guest);
		if (err)
			goto fail;
	}
	err = vm_open_console(vm);
	if (!err)
		err = vm_open_kvm(vm);
	if (!err)
		err = vm_setup_ram(vm, config, &entry);
	if (!err)
		err = vm_create_vcpus(vm, entry);
	if (err)
		goto fail;
	vm_install_kick_handler();
	*out = vm;
	return 0;
fail:
	if (vm->config.ram_inherited)
		close(config->ram_fd); /* failed before the block took it */
	vm_destroy(vm);
	return err;
}

void vm_set_event_handler(struct vm *vm, vm_event_fn *fn, void *opaque)
{
	vm->event_fn = fn;
	vm->event_opaque = opaque;
}

int vm_start(struct vm *vm)
{
	int err = 0;

	for (unsigned i = 0; i < vm->nvcpus; i++) {
		err = -pthread_create(&vm->vcpus[i].thread, NULL, vcpu_thread, &vm->vcpus[i]);
		if (err) {
			log_error("cannot start vCPU thread %u: %s", i, strerror(-err));
			return err;
		}
		pthread_mutex_lock(&vm->lock);
		vm->vcpus[i].thread_started = true;
		pthread_mutex_unlock(&vm->lock);
	}
	if (!vm->config.start_paused && !vm->config.incoming)
		return vm_cont(vm);
	return 0;
}

/* States in which the user's stop/cont do not apply. */
static bool vm_runstate_migrating(enum vm_runstate s)
{
	return s == VM_RUNSTATE_INMIGRATE || s == VM_RUNSTATE_FINISH_MIGRATE ||
	       s == VM_RUNSTATE_POSTMIGRATE;
}

int vm_stop(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	if (vm_runstate_terminal(vm->runstate) || vm_runstate_migrating(vm->runstate)) {
		pthread_mutex_unlock(&vm->lock);
		return vm_runstate_migrating(vm->runstate) ? -EBUSY : -EINVAL;
	}
	if (vm->runstate != VM_RUNSTATE_RUNNING) {
		pthread_mutex_unlock(&vm->lock);
		return 0;
	}
	vm_pause_locked(vm);
	/* A vCPU may have crashed while we waited: then it owns the state. */
	if (vm->runstate == VM_RUNSTATE_RUNNING) {
		vm_set_runstate_locked(vm, VM_RUNSTATE_PAUSED);
		vm_clock_freeze_locked(vm);
		pthread_mutex_unlock(&vm->lock);
		vm_emit(vm, "STOP", NULL);
		return 0;
	}
	vm_resume_locked(vm);
	pthread_mutex_unlock(&vm->lock);
	return -EINVAL;
}

int vm_cont(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	if (vm_runstate_terminal(vm->runstate) || vm_runstate_migrating(vm->runstate)) {
		pthread_mutex_unlock(&vm->lock);
		return vm_runstate_migrating(vm->runstate) ? -EBUSY : -EINVAL;
	}
	if (vm->runstate == VM_RUNSTATE_RUNNING) {
		pthread_mutex_unlock(&vm->lock);
		return 0;
	}
	vm_set_runstate_locked(vm, VM_RUNSTATE_RUNNING);
	vm_clock_thaw_locked(vm);
	vm_resume_locked(vm);
	pthread_mutex_unlock(&vm->lock);
	vm_emit(vm, "RESUME", NULL);
	return 0;
}

void vm_request_exit(struct vm *vm, int status)
{
	pthread_mutex_lock(&vm->lock);
	vm->exit_status = status;
	vm->exit_status_forced = true;
	pthread_mutex_unlock(&vm->lock);
	vm_request_quit(vm);
}

void vm_request_quit(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	vm->quit = true;
	vm_update_attention_locked(vm);
	vm_kick_all_locked(vm);
	pthread_mutex_unlock(&vm->lock);
}

int vm_wait(struct vm *vm)
{
	int status;

	pthread_mutex_lock(&vm->lock);
	while (!vm->quit &&
	       !(vm_runstate_terminal(vm->runstate) && !vm->config.no_shutdown))
		pthread_cond_wait(&vm->cond, &vm->lock);
	status = vm->quit && !vm->exit_status_forced
			 ? (vm_runstate_terminal(vm->runstate) ? vm->exit_status : 0)
			 : vm->exit_status;
	pthread_mutex_unlock(&vm->lock);
	return status;
}

void vm_join_vcpus(struct vm *vm)
{
	vm_request_quit(vm);
	for (unsigned i = 0; vm->vcpus && i < vm->nvcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		bool started;

		pthread_mutex_lock(&vm->lock);
		started = v->thread_started;
		pthread_mutex_unlock(&vm->lock);
		if (!started)
			continue;
		pthread_join(v->thread, NULL);
		pthread_mutex_lock(&vm->lock);
		v->thread_started = false;
		vm->nparked--; /* it parked for good before exiting */
		pthread_mutex_unlock(&vm->lock);
	}
}

void vm_destroy(struct vm *vm)
{
	if (!vm)
		return;
	if (vm->vcpus) {
		vm_join_vcpus(vm);
		for (unsigned i = 0; i < vm->nvcpus; i++) {
			struct vcpu *v = &vm->vcpus[i];

			if (v->run)
				munmap(v->run, v->run_bytes);
			if (v->fd >= 0)
				close(v->fd);
		}
		free(vm->vcpus);
	}
	vm_set_throttle(vm, 0);
	free((void *)vm->vmm_dirty);
	ram_block_destroy(&vm->ram);
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	if (vm->console_owned)
		close(vm->console_fd);
	guest_spec_release(&vm->guest);
	pthread_cond_destroy(&vm->cond);
	pthread_mutex_destroy(&vm->lock);
	free(vm);
}

enum vm_runstate vm_get_runstate(struct vm *vm)
{
	enum vm_runstate s;

	pthread_mutex_lock(&vm->lock);
	s = vm->runstate;
	pthread_mutex_unlock(&vm->lock);
	return s;
}
