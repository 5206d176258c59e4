/* What migration uses of the VM: stopping and finishing, dirty logging, throttling. */
#include "vmm/vm_internal.h"

size_t vm_ram_block_count(struct vm *vm)
{
	(void)vm;
	return 1;
}

struct ram_block *vm_ram_block(struct vm *vm, size_t index)
{
	return index == 0 ? &vm->ram : NULL;
}

/* ---- migration support ---- */

unsigned vm_nvcpus(struct vm *vm) { return vm->nvcpus; }
int vm_vcpu_fd(struct vm *vm, unsigned index) { return index < vm->nvcpus ? vm->vcpus[index].fd : -1; }
int vm_kvm_fd(struct vm *vm) { return vm->kvm_fd; }
int vm_vm_fd(struct vm *vm) { return vm->vm_fd; }

int vm_migration_stop(struct vm *vm, uint64_t *stopped_ns, bool *was_running)
{
	pthread_mutex_lock(&vm->lock);
	if (vm->runstate != VM_RUNSTATE_RUNNING && vm->runstate != VM_RUNSTATE_PAUSED) {
		pthread_mutex_unlock(&vm->lock);
		return -EINVAL;
	}
	*was_running = vm->runstate == VM_RUNSTATE_RUNNING;
	/* The guest's pause starts with the first vCPU asked to stop. */
	*stopped_ns = clock_monotonic_ns();
	/*
	 * The vCPU threads keep their scheduling class: changing the class of
	 * threads running in the guest slows both the stop and the start (a
	 * real-time class took the stop from 0.2 to 4 ms on nested KVM).
	 */
	if (*was_running)
		vm_pause_locked(vm);
	log_debug("migration: stopping the vCPUs took %.3f ms",
		  (double)(clock_monotonic_ns() - *stopped_ns) / 1e6);
	if (vm->runstate != VM_RUNSTATE_RUNNING && vm->runstate != VM_RUNSTATE_PAUSED) {
		/* The guest crashed or exited while we stopped it. */
		if (*was_running)
			vm_resume_locked(vm);
		pthread_mutex_unlock(&vm->lock);
		return -EINVAL;
	}
	vm_set_runstate_locked(vm, VM_RUNSTATE_FINISH_MIGRATE);
	vm->kept = VM_KEPT_NONE;
	vm->kept_peer = 0;
	vm_clock_freeze_locked(vm);
	pthread_mutex_unlock(&vm->lock);
	if (*was_running)
		vm_emit(vm, "STOP", NULL);
	return 0;
}

void vm_migration_abort(struct vm *vm, bool was_running)
{
	pthread_mutex_lock(&vm->lock);
	if (vm->runstate != VM_RUNSTATE_FINISH_MIGRATE) {
		pthread_mutex_unlock(&vm->lock);
		return;
	}
	if (was_running) {
		vm_set_runstate_locked(vm, VM_RUNSTATE_RUNNING);
		vm_clock_thaw_locked(vm);
		vm_resume_locked(vm);
	} else {
		vm_set_runstate_locked(vm, VM_RUNSTATE_PAUSED);
	}
	pthread_mutex_unlock(&vm->lock);
	if (was_running)
		vm_emit(vm, "RESUME", NULL);
}

void vm_migration_keep(struct vm *vm, enum vm_kept why, bool was_running, pid_t peer)
{
	pthread_mutex_lock(&vm->lock);
	if (vm->runstate == VM_RUNSTATE_FINISH_MIGRATE) {
		vm->kept = why;
		vm->kept_was_running = was_running;
		vm->kept_peer = why == VM_KEPT_NONE ? 0 : peer;
	}
	pthread_mutex_unlock(&vm->lock);
}

/* Whether process @pid still exists (a zombie counts: it may not be reaped yet). */
static bool vm_pid_alive(pid_t pid)
{
	return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

int vm_cont_force(struct vm *vm, char *err, size_t errlen)
{
	bool was_running;
	int r = 0;

	pthread_mutex_lock(&vm->lock);
	if (vm->runstate != VM_RUNSTATE_FINISH_MIGRATE) {
		pthread_mutex_unlock(&vm->lock);
		r = vm_cont(vm);
		if (r == -EBUSY)
			vm_migration_hold_reason(vm, err, errlen);
		return r;
	}
	if (vm->kept == VM_KEPT_PEER_MAY_RUN && vm_pid_alive(vm->kept_peer)) {
		/* Both processes map the same RAM: one must be gone for good. */
		snprintf(err, errlen, "the new process (pid %d) is still alive and shares the "
			 "guest's memory: end it (kill -9 %d), then cont {\"force\": true} here",
			 (int)vm->kept_peer, (int)vm->kept_peer);
		r = -EBUSY;
	} else if (vm->kept != VM_KEPT_PEER_MAY_RUN) {
		pthread_mutex_unlock(&vm->lock);
		vm_migration_hold_reason(vm, err, errlen);
		return vm->kept == VM_KEPT_PEER_RAN ? -EPERM : -EBUSY;
	}
	if (r) {
		pthread_mutex_unlock(&vm->lock);
		return r;
	}
	log_warn("cont {\"force\": true}: resuming the guest the migration kept paused here; "
		 "the operator says the destination does not run it");
	vm->kept = VM_KEPT_NONE;
	vm->kept_peer = 0;
	was_running = vm->kept_was_running;
	pthread_mutex_unlock(&vm->lock);
	vm_migration_abort(vm, was_running);
	return 0;
}

void vm_migration_hold_reason(struct vm *vm, char *buf, size_t len)
{
	enum vm_runstate rs;
	enum vm_kept kept;
	pid_t peer;

	pthread_mutex_lock(&vm->lock);
	rs = vm->runstate;
	kept = vm->kept;
	peer = vm->kept_peer;
	pthread_mutex_unlock(&vm->lock);
	if (rs == VM_RUNSTATE_INMIGRATE)
		snprintf(buf, len, "the guest is still arriving from a migration (query-migrate)");
	else if (rs == VM_RUNSTATE_POSTMIGRATE)
		snprintf(buf, len, "the guest migrated: it runs on the destination, which said so, "
			 "and must never run here again");
	else if (kept == VM_KEPT_PEER_RAN)
		snprintf(buf, len, "the guest ran on the destination (it said RUNNING): its state "
			 "is there, so it can never run here again (query-migrate)");
	else if (kept == VM_KEPT_PEER_MAY_RUN && peer > 0)
		snprintf(buf, len, "kept paused: the new process (pid %d) went silent after the "
			 "stop and may run the guest; if it does not, end it (kill -9 %d), then "
			 "cont {\"force\": true} here", (int)peer, (int)peer);
	else if (kept == VM_KEPT_PEER_MAY_RUN)
		snprintf(buf, len, "kept paused: the destination went silent after the stop and "
			 "may run the guest (query-migrate); if it does not, resume it here with "
			 "cont {\"force\": true}");
	else
		snprintf(buf, len, "a migration is switching over right now (query-migrate): wait "
			 "for its end");
}

void vm_migration_complete(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	if (vm->runstate == VM_RUNSTATE_FINISH_MIGRATE)
		vm_set_runstate_locked(vm, VM_RUNSTATE_POSTMIGRATE);
	pthread_mutex_unlock(&vm->lock);
}

int vm_incoming_finish(struct vm *vm, bool run, uint64_t *first_run_ns)
{
	pthread_mutex_lock(&vm->lock);
	if (vm->runstate != VM_RUNSTATE_INMIGRATE) {
		pthread_mutex_unlock(&vm->lock);
		return -EINVAL;
	}
	if (!run) {
		vm_set_runstate_locked(vm, VM_RUNSTATE_PAUSED);
		pthread_mutex_unlock(&vm->lock);
		*first_run_ns = 0;
		return 0;
	}
	vm->first_unpark_ns = 0;
	vm_set_runstate_locked(vm, VM_RUNSTATE_RUNNING);
	vm_clock_thaw_locked(vm);
	vm_resume_locked(vm);
	pthread_mutex_unlock(&vm->lock);
	/* vCPU threads stamp first_unpark_ns as they leave vcpu_park(). */
	for (int i = 0; i < 100000 && !vm->first_unpark_ns; i++)
		sched_yield();
	*first_run_ns = vm->first_unpark_ns ? vm->first_unpark_ns : clock_monotonic_ns();
	vm_emit(vm, "RESUME", NULL);
	return 0;
}

uint64_t vm_guest_clock_get(struct vm *vm)
{
	uint64_t v;

	pthread_mutex_lock(&vm->lock);
	v = vm->clock_frozen ? vm->clock_frozen_ns : vm_guest_clock_ns(vm);
	pthread_mutex_unlock(&vm->lock);
	return v;
}

uint64_t vm_moves_get(struct vm *vm)
{
	return atomic_load(&vm->moves);
}

void vm_moves_set(struct vm *vm, uint64_t moves)
{
	atomic_store(&vm->moves, moves);
}

void vm_guest_clock_set(struct vm *vm, uint64_t ns)
{
	pthread_mutex_lock(&vm->lock);
	vm->clock_frozen = true;
	vm->clock_frozen_ns = ns;
	pthread_mutex_unlock(&vm->lock);
}

static uint64_t vm_block_pages(const struct ram_block *b)
{
	return b->bytes / VMF_PAGE_BYTES;
}

int vm_dirty_log_start(struct vm *vm)
{
	uint64_t words = (vm_block_pages(&vm->ram) + 63) / 64;
	int err;

	pthread_mutex_lock(&vm->lock);
	if (vm->dirty_logging) {
		pthread_mutex_unlock(&vm->lock);
		return -EBUSY;
	}
	if (!vm->vmm_dirty)
		__atomic_store_n(&vm->vmm_dirty, calloc(words, sizeof(uint64_t)), __ATOMIC_RELEASE);
	if (!vm->vmm_dirty) {
		pthread_mutex_unlock(&vm->lock);
		return -ENOMEM;
	}
	err = vm_set_memslot(vm, 0, &vm->ram, KVM_MEM_LOG_DIRTY_PAGES);
	vm->dirty_logging = err == 0;
	pthread_mutex_unlock(&vm->lock);
	return err;
}

int vm_detach_ram(struct vm *vm)
{
	struct kvm_userspace_memory_region region = { .slot = 0 };
	int err = 0;

	pthread_mutex_lock(&vm->lock);
	if (vm->runstate != VM_RUNSTATE_FINISH_MIGRATE && vm->runstate != VM_RUNSTATE_POSTMIGRATE) {
		err = -EINVAL;
	} else if (!vm->ram_detached) {
		/* A memslot of size 0 deletes it. */
		if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
			err = -errno;
		else
			vm->ram_detached = true;
	}
	pthread_mutex_unlock(&vm->lock);
	return err;
}

int vm_dirty_log_stop(struct vm *vm)
{
	int err = 0;

	pthread_mutex_lock(&vm->lock);
	if (vm->dirty_logging && !vm->ram_detached)
		err = vm_set_memslot(vm, 0, &vm->ram, 0);
	vm->dirty_logging = false;
	pthread_mutex_unlock(&vm->lock);
	return err;
}

int vm_dirty_log_get(struct vm *vm, size_t block, uint64_t *bitmap)
{
	struct kvm_dirty_log log = { .slot = (uint32_t)block, .dirty_bitmap = bitmap };
	uint64_t words = (vm_block_pages(&vm->ram) + 63) / 64;

	if (block != 0)
		return -EINVAL;
	if (ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &log) < 0) {
		int err = -errno;

		log_error("KVM_GET_DIRTY_LOG failed: %s", strerror(errno));
		return err;
	}
	/*
	 * Only when the VMM wrote guest RAM since the last read: a writer sets
	 * its bits, then the flag; a bit set after the exchange below is seen
	 * by this scan or keeps the flag set for the next read.
	 */
	if (vm->vmm_dirty && atomic_exchange(&vm->vmm_dirty_some, false))
		for (uint64_t i = 0; i < words; i++)
			if (atomic_load_explicit(&vm->vmm_dirty[i], memory_order_relaxed))
				bitmap[i] |= atomic_exchange(&vm->vmm_dirty[i], 0);
	return 0;
}

int vm_dirty_log_clear(struct vm *vm, size_t block, uint64_t first_page,
		       uint32_t npages, const uint64_t *bits)
{
	struct kvm_clear_dirty_log c = {
		.slot = (uint32_t)block, .first_page = first_page,
		.num_pages = npages, .dirty_bitmap = (void *)bits,
	};

	if (block != 0 || first_page % 64)
		return -EINVAL;
	if (ioctl(vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &c) < 0) {
		int err = -errno;

		log_error("KVM_CLEAR_DIRTY_LOG(%llu, %u) failed: %s",
			  (unsigned long long)first_page, npages, strerror(errno));
		return err;
	}
	return 0;
}

int vm_ram_write(struct vm *vm, uint64_t gpa, const void *data, size_t len)
{
	struct ram_block *b = &vm->ram;

	if (!ram_block_contains(b, gpa, len))
		return -EFAULT;
	memcpy(b->host + (gpa - b->gpa), data, len);
	if (vm->vmm_dirty && len) {
		uint64_t first = (gpa - b->gpa) / VMF_PAGE_BYTES;
		uint64_t last = (gpa - b->gpa + len - 1) / VMF_PAGE_BYTES;

		for (uint64_t p = first; p <= last; p++)
			atomic_fetch_or(&vm->vmm_dirty[p / 64], 1ull << (p % 64));
		atomic_store(&vm->vmm_dirty_some, true);
	}
	return 0;
}

static void *vm_throttle_thread(void *arg)
{
	struct vm *vm = arg;
	struct timespec period = { 0, VM_THROTTLE_PERIOD_US * 1000l };

	while (atomic_load(&vm->throttle_pct)) {
		nanosleep(&period, NULL);
		pthread_mutex_lock(&vm->lock);
		vm->throttle_gen++;
		for (unsigned i = 0; i < vm->nvcpus; i++)
			if (vm->vcpus[i].thread_started)
				pthread_kill(vm->vcpus[i].thread, VM_KICK_SIGNAL);
		pthread_mutex_unlock(&vm->lock);
	}
	return NULL;
}

void vm_set_throttle(struct vm *vm, unsigned pct)
{
	bool join = false;

	if (pct > 99)
		pct = 99;
	pthread_mutex_lock(&vm->lock);
	atomic_store(&vm->throttle_pct, pct);
	if (pct && !vm->throttle_running) {
		sigset_t block, old;

		sigemptyset(&block);
		sigaddset(&block, VM_KICK_SIGNAL);
		pthread_sigmask(SIG_BLOCK, &block, &old);
		vm->throttle_running =
			pthread_create(&vm->throttle_thread, NULL, vm_throttle_thread, vm) == 0;
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	} else if (!pct && vm->throttle_running) {
		vm->throttle_running = false;
		join = true;
	}
	pthread_mutex_unlock(&vm->lock);
	if (join)
		pthread_join(vm->throttle_thread, NULL);
	if (pct)
		log_info("vCPUs throttled to %u%%", 100 - pct);
}

unsigned vm_get_throttle(struct vm *vm)
{
	return atomic_load(&vm->throttle_pct);
}

int vm_prefault_ram(struct vm *vm, uint64_t budget_ns, uint64_t *done_bytes)
{
	/* Small steps: the budget is checked between them. */
	const uint64_t step = 2ull << 20;
	uint64_t deadline = clock_monotonic_ns() + budget_ns, off = 0;
	const char *how = getenv("VMFERRY_CPR_PREFAULT");
	int fd = vm->ram.fd;

	*done_bytes = 0;
	if (how && !strcmp(how, "off"))
		return -ENOTSUP; /* for A/B measurements */
	while (off < vm->ram.bytes && clock_monotonic_ns() < deadline) {
		off_t data = lseek(fd, (off_t)off, SEEK_DATA), hole;

		if (data < 0)
			return errno == ENXIO ? 0 : -errno;
		hole = lseek(fd, data, SEEK_HOLE);
		if (hole < 0)
			return -errno;
		/* Whole pages: a data extent of a memfd is page aligned. */
		for (off = (uint64_t)data; off < (uint64_t)hole && clock_monotonic_ns() < deadline;
		     off += step) {
			uint64_t n = (uint64_t)hole - off < step ? (uint64_t)hole - off : step;
			int err = ram_block_populate(&vm->ram, off, n);

			if (err)
				return err;
			*done_bytes += n;
		}
	}
	return 0;
}
