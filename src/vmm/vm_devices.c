/*
 * The VM's device bus: MMIO windows outside RAM, dispatched from the vCPU
 * threads' exit switch, and the pause/resume hooks that keep devices quiet
 * while the vCPUs are stopped.
 */
#include "vmm/vm_internal.h"

int vm_add_device(struct vm *vm, uint32_t type, const struct vm_device_ops *ops, void *opaque,
		  uint64_t *mmio_gpa)
{
	struct vm_device *d;

	if (vm_nthreads(vm) > 0)
		return -EBUSY;
	if (vm->ndevices == VMF_MAX_DEVICES)
		return -ENOSPC;
	d = &vm->devices[vm->ndevices];
	d->type = type;
	d->gpa = VMF_DEVICE_GPA + vm->ndevices * VMF_DEVICE_WINDOW_BYTES;
	d->bytes = VMF_DEVICE_WINDOW_BYTES;
	d->ops = ops;
	d->opaque = opaque;
	if (!vm->config.incoming) {
		struct vmf_boot_info *bi =
			(struct vmf_boot_info *)(vm->ram.host + VMF_BOOT_INFO_GPA);

		bi->devices[vm->ndevices] = (struct vmf_device){
			.type = type, .mmio_gpa = d->gpa, .mmio_bytes = d->bytes,
		};
		bi->ndevices = vm->ndevices + 1;
	}
	vm->ndevices++;
	*mmio_gpa = d->gpa;
	return 0;
}

bool vcpu_handle_mmio(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;
	struct kvm_run *run = vcpu->run;
	uint64_t addr = run->mmio.phys_addr;
	uint32_t len = run->mmio.len;

	if (len == 0 || len > sizeof(run->mmio.data))
		return false;
	for (unsigned i = 0; i < vm->ndevices; i++) {
		struct vm_device *d = &vm->devices[i];

		if (addr < d->gpa || addr - d->gpa > d->bytes - len)
			continue;
		if (!run->mmio.is_write)
			memset(run->mmio.data, 0, sizeof(run->mmio.data));
		d->ops->mmio(d->opaque, addr - d->gpa, run->mmio.data, len, run->mmio.is_write);
		return true;
	}
	return false;
}

void vm_devices_pause_locked(struct vm *vm)
{
	for (unsigned i = 0; i < vm->ndevices; i++)
		vm->devices[i].ops->pause(vm->devices[i].opaque);
}

void vm_devices_resume_locked(struct vm *vm)
{
	for (unsigned i = 0; i < vm->ndevices; i++)
		vm->devices[i].ops->resume(vm->devices[i].opaque);
}

int vm_ram_mark_dirty(struct vm *vm, uint64_t gpa, uint64_t len)
{
	struct ram_block *b = &vm->ram;
	/* Set once by vm_dirty_log_start (release); devices write from their own threads. */
	_Atomic uint64_t *dirty = __atomic_load_n(&vm->vmm_dirty, __ATOMIC_ACQUIRE);

	if (!ram_block_contains(b, gpa, len))
		return -EFAULT;
	if (dirty && len) {
		uint64_t first = (gpa - b->gpa) / VMF_PAGE_BYTES;
		uint64_t last = (gpa - b->gpa + len - 1) / VMF_PAGE_BYTES;

		for (uint64_t p = first; p <= last; p++)
			atomic_fetch_or(&dirty[p / 64], 1ull << (p % 64));
		atomic_store(&vm->vmm_dirty_some, true);
	}
	return 0;
}
