/* The VM's queries (query-status, -vcpus, -memory, -workload), memory dumps, vCPU priority. */
#include "vmm/vm_internal.h"

/* ---- queries ---- */

static struct json_object *json_u64(uint64_t v)
{
	return json_object_new_uint64(v);
}

/*
 * A copy of the boot info page, read from the memfd rather than through the
 * guest's mapping: during postcopy that page may not have arrived, and
 * touching it through the mapping would block the caller (the control
 * thread) until it does - forever while the migration is paused.  A page
 * not received yet reads as zeros (or stale), never blocks.
 */
static void vm_read_boot_info(struct vm *vm, struct vmf_boot_info *out)
{
	if (pread(vm->ram.fd, out, sizeof(*out), VMF_BOOT_INFO_GPA) != (ssize_t)sizeof(*out))
		memset(out, 0, sizeof(*out));
}

struct json_object *vm_query_status(struct vm *vm)
{
	struct json_object *o = json_object_new_object();
	struct json_object *t = json_object_new_object();
	uint64_t fe = vm->first_exit_ns, fc = vm->first_console_ns;
	enum vm_runstate s;
	char crash[sizeof(vm->crash_report)];
	uint64_t guest_clock;

	pthread_mutex_lock(&vm->lock);
	s = vm->runstate;
	snprintf(crash, sizeof(crash), "%s", vm->crash_report);
	guest_clock = vm->clock_frozen ? vm->clock_frozen_ns : vm_guest_clock_ns(vm);
	pthread_mutex_unlock(&vm->lock);

	json_object_object_add(o, "status", json_object_new_string(vm_runstate_name(s)));
	json_object_object_add(o, "running", json_object_new_boolean(s == VM_RUNSTATE_RUNNING));
	{
		/* After a migration the name is only in guest RAM's boot info. */
		struct vmf_boot_info bi;
		char name[VMF_WORKLOAD_NAME_BYTES];

		vm_read_boot_info(vm, &bi);
		for (size_t k = 0; k < sizeof(name); k++)
			name[k] = s == VM_RUNSTATE_INMIGRATE ? vm->guest.name[k] : bi.workload[k];
		name[sizeof(name) - 1] = 0;
		json_object_object_add(o, "guest", json_object_new_string(name));
	}
	json_object_object_add(o, "vcpus", json_object_new_int((int)vm->nvcpus));
	json_object_object_add(o, "ram-bytes", json_u64(vm->config.ram_bytes));
	json_object_object_add(o, "guest-clock-ns", json_u64(guest_clock));
	json_object_object_add(o, "moves", json_u64(atomic_load(&vm->moves)));
	if (crash[0])
		json_object_object_add(o, "crash", json_object_new_string(crash));
	/* Absolute CLOCK_MONOTONIC stamps, so a benchmark on this host can
	 * measure from its own fork(). */
	json_object_object_add(t, "create-ns", json_u64(vm->start_ns));
	if (fe)
		json_object_object_add(t, "first-instruction-ns", json_u64(fe));
	if (fc)
		json_object_object_add(t, "first-console-ns", json_u64(fc));
	json_object_object_add(o, "boot", t);
	return o;
}

struct json_object *vm_query_vcpus(struct vm *vm)
{
	struct json_object *arr = json_object_new_array();
	bool paused_here;

	pthread_mutex_lock(&vm->lock);
	paused_here = vm_nthreads(vm) > 0;
	if (paused_here)
		vm_pause_locked(vm);
	pthread_mutex_unlock(&vm->lock);

	for (unsigned i = 0; i < vm->nvcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		struct json_object *o = json_object_new_object();
		struct kvm_regs r;
		struct kvm_sregs s;

		json_object_object_add(o, "cpu-index", json_object_new_int((int)i));
		if (ioctl(v->fd, KVM_GET_REGS, &r) == 0 && ioctl(v->fd, KVM_GET_SREGS, &s) == 0) {
			static const char *const names[] = {
				"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
				"r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
				"rip", "rflags",
			};
			uint64_t vals[] = {
				r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp,
				r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
				r.rip, r.rflags,
			};

			for (size_t k = 0; k < sizeof(vals) / sizeof(vals[0]); k++)
				json_object_object_add(o, names[k], json_u64(vals[k]));
			json_object_object_add(o, "cr0", json_u64(s.cr0));
			json_object_object_add(o, "cr2", json_u64(s.cr2));
			json_object_object_add(o, "cr3", json_u64(s.cr3));
			json_object_object_add(o, "cr4", json_u64(s.cr4));
			json_object_object_add(o, "efer", json_u64(s.efer));
			json_object_object_add(o, "cpl", json_object_new_int(s.cs.dpl));
		} else {
			json_object_object_add(o, "error", json_object_new_string(strerror(errno)));
		}
		json_object_array_add(arr, o);
	}

	if (paused_here) {
		pthread_mutex_lock(&vm->lock);
		vm_resume_locked(vm);
		pthread_mutex_unlock(&vm->lock);
	}
	return arr;
}

struct json_object *vm_query_memory(struct vm *vm)
{
	struct json_object *o = json_object_new_object();
	struct json_object *blocks = json_object_new_array();
	struct json_object *b = json_object_new_object();

	json_object_object_add(b, "name", json_object_new_string(vm->ram.name));
	json_object_object_add(b, "gpa", json_u64(vm->ram.gpa));
	json_object_object_add(b, "size", json_u64(vm->ram.bytes));
	json_object_object_add(b, "backend", json_object_new_string("memfd"));
	json_object_object_add(b, "shared", json_object_new_boolean(1));
	json_object_array_add(blocks, b);
	json_object_object_add(o, "blocks", blocks);
	json_object_object_add(o, "total", json_u64(vm->ram.bytes));
	return o;
}

static const char *vm_phase_name(uint64_t phase)
{
	switch (phase) {
	case VMF_PHASE_BOOTING: return "booting";
	case VMF_PHASE_SETUP: return "setup";
	case VMF_PHASE_RUNNING: return "running";
	case VMF_PHASE_DONE: return "done";
	}
	return "invalid";
}

struct json_object *vm_query_workload(struct vm *vm)
{
	struct vmf_boot_info bi_copy, *bi = &bi_copy;
	struct json_object *o = json_object_new_object();
	struct json_object *arr = json_object_new_array();
	uint64_t total = 0;

	vm_read_boot_info(vm, bi);
	{
		char name[VMF_WORKLOAD_NAME_BYTES];

		/* From guest RAM: after a migration the destination learns it there. */
		for (size_t k = 0; k < sizeof(name); k++)
			name[k] = bi->workload[k];
		name[sizeof(name) - 1] = 0;
		json_object_object_add(o, "workload", json_object_new_string(name));
	}
	for (unsigned i = 0; i < vm->nvcpus && i < VMF_MAX_VCPUS; i++) {
		struct json_object *v = json_object_new_object();
		uint64_t writes = bi->stats[i].writes;

		json_object_object_add(v, "vcpu", json_object_new_int((int)i));
		json_object_object_add(v, "phase", json_object_new_string(vm_phase_name(bi->stats[i].phase)));
		json_object_object_add(v, "passes", json_u64(bi->stats[i].passes));
		json_object_object_add(v, "writes", json_u64(writes));
		json_object_object_add(v, "gpa", json_u64(bi->range[i].gpa));
		json_object_object_add(v, "bytes", json_u64(bi->range[i].bytes));
		json_object_array_add(arr, v);
		total += writes;
	}
	json_object_object_add(o, "vcpus", arr);
	json_object_object_add(o, "writes", json_u64(total));
	json_object_object_add(o, "guest-clock-ns", json_u64(vm->clock_frozen ? vm->clock_frozen_ns
								  : vm_guest_clock_ns(vm)));
	return o;
}

static bool vm_page_is_zero(const uint8_t *p, size_t len)
{
	const uint64_t *q = (const uint64_t *)p;

	for (size_t i = 0; i < len / 8; i++)
		if (q[i])
			return false;
	return true;
}

static int vm_dump_range(int fd, const struct ram_block *b, uint64_t off, uint64_t end)
{
	const size_t chunk = 64 * 1024;

	for (; off < end; off += chunk) {
		size_t n = (size_t)(end - off < chunk ? end - off : chunk);
		const uint8_t *src = b->host + off;
		size_t done = 0;

		if (vm_page_is_zero(src, n))
			continue;
		while (done < n) {
			ssize_t w = pwrite(fd, src + done, n - done, (off_t)(b->gpa + off + done));

			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				return w < 0 ? -errno : -EIO;
			done += (size_t)w;
		}
	}
	return 0;
}

int vm_set_vcpu_nice(struct vm *vm, int nice)
{
	int err = 0;

	if (nice < 0 || nice > VM_VCPU_NICE_IDLE)
		return -EINVAL;
	if (nice == atomic_load(&vm->vcpu_nice))
		return 0;
	/* Only if it can be undone: lowering a priority is a one-way door
	 * without CAP_SYS_NICE.  Every vCPU thread starts at the process's
	 * nice (threads inherit it), which is the one to get back to. */
	if (nice) {
		int base;

		errno = 0;
		base = getpriority(PRIO_PROCESS, 0);
		if (errno || !thread_nice_reversible(base))
			return -EPERM;
	}
	atomic_store(&vm->vcpu_nice, nice);
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		int tid = atomic_load(&vm->vcpus[i].tid), r;

		if (!tid)
			continue; /* vcpu_nice_start() applies it */
		r = vcpu_renice(&vm->vcpus[i], tid, nice);
		if (r && !err)
			err = r;
	}
	return err;
}

void vm_set_ram_arriving(struct vm *vm, bool arriving)
{
	pthread_mutex_lock(&vm->lock);
	vm->ram_arriving = arriving;
	pthread_mutex_unlock(&vm->lock);
}

int vm_dump_memory(struct vm *vm, const char *path)
{
	struct ram_block *b = &vm->ram;
	bool paused_here;
	off_t data, hole;
	int fd, err = 0;

	/* Before the file is created: a refused dump leaves it alone. */
	pthread_mutex_lock(&vm->lock);
	err = vm->ram_arriving ? -EBUSY : vm->ram_detached ? -ENODATA : 0;
	pthread_mutex_unlock(&vm->lock);
	if (err)
		return err;
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		err = -errno;
		log_error("dump-guest-memory: cannot create %s: %s", path, strerror(errno));
		return err;
	}
	pthread_mutex_lock(&vm->lock);
	paused_here = vm_nthreads(vm) > 0;
	if (paused_here)
		vm_pause_locked(vm);
	pthread_mutex_unlock(&vm->lock);

	/* Walk only the memfd's data extents: holes were never written. */
	for (data = 0; (uint64_t)data < b->bytes; data = hole) {
		data = lseek(b->fd, data, SEEK_DATA);
		if (data < 0)
			break; /* ENXIO: no more data */
		hole = lseek(b->fd, data, SEEK_HOLE);
		if (hole < 0 || (uint64_t)hole > b->bytes)
			hole = (off_t)b->bytes;
		err = vm_dump_range(fd, b, (uint64_t)data, (uint64_t)hole);
		if (err)
			break;
	}
	if (!err && ftruncate(fd, (off_t)(b->gpa + b->bytes)) < 0)
		err = -errno;

	if (paused_here) {
		pthread_mutex_lock(&vm->lock);
		vm_resume_locked(vm);
		pthread_mutex_unlock(&vm->lock);
	}
	if (close(fd) < 0 && !err)
		err = -errno;
	if (err)
		log_error("dump-guest-memory: writing %s failed: %s", path, strerror(-err));
	return err;
}
