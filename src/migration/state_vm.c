/*
 * The VM's own section and the vCPUs', as migratable states (state.h).
 * Both are written at the stop and loaded before any vCPU runs; the
 * serialisation is vmstate.c's.
 */
#include "migration/internal.h"

/*
 * The VM section's format version.  VMFERRY_EMIT_VM_SECTION_VERSION makes
 * this build write an older one, as an older build would: the
 * compatibility tests migrate from "an older build" that way.
 */
static uint32_t mig_vm_section_version(void)
{
	const char *e = getenv("VMFERRY_EMIT_VM_SECTION_VERSION");
	unsigned long v = e ? strtoul(e, NULL, 10) : 0;

	return v >= VMSTATE_VM_VERSION_MIN && v <= VMSTATE_VM_VERSION ? (uint32_t)v
								     : VMSTATE_VM_VERSION;
}

static int mig_vm_save_complete(void *opaque, struct mig_save *sv,
				const struct mig_save_info *info)
{
	struct migration *m = opaque;
	struct vmstate_buf b = { 0 };
	uint32_t version = mig_vm_section_version();
	int r;

	vmstate_vm_save(m->vm, info->was_running, info->stop_ns, vm_moves_get(m->vm), version, &b);
	r = b.err ? b.err : mig_save_section_as(sv, 0, version, b.data, (uint32_t)b.len);
	vmstate_buf_free(&b);
	return r;
}

static void mig_vm_save_cleanup(void *opaque, bool completed)
{
	(void)opaque; (void)completed; /* nothing was set up */
}

static int mig_vm_load(void *opaque, uint32_t instance, uint32_t version, const uint8_t *data,
		       uint32_t len, char *err, size_t errlen)
{
	struct migration *m = opaque;
	int r;

	(void)instance;
	r = vmstate_vm_parse(data, len, version, &m->in_vm, err, errlen);
	m->in_vm_loaded = !r;
	return r;
}

/* The guest's clock and its count of moves continue from the source's. */
static int mig_vm_load_complete(void *opaque, char *err, size_t errlen)
{
	struct migration *m = opaque;

	if (!m->in_vm_loaded) {
		snprintf(err, errlen, "no vm section");
		return -EBADMSG;
	}
	vm_guest_clock_set(m->vm, m->in_vm.guest_clock_ns);
	vm_moves_set(m->vm, m->in_vm.moves + 1);
	return 0;
}

static const struct mig_state_ops mig_vm_state_ops = {
	.name = "vm",
	.section_id = VMSTATE_SECTION_VM,
	.version = VMSTATE_VM_VERSION,
	.min_version = VMSTATE_VM_VERSION_MIN,
	.instances = 1,
	.required = true,
	.save_complete = mig_vm_save_complete,
	.save_cleanup = mig_vm_save_cleanup,
	.load = mig_vm_load,
	.load_complete = mig_vm_load_complete,
};

static int mig_cpu_save_complete(void *opaque, struct mig_save *sv,
				 const struct mig_save_info *info)
{
	struct vm *vm = opaque;
	struct vmstate_buf b = { 0 };
	int r = 0;

	(void)info;
	for (unsigned i = 0; i < vm_nvcpus(vm) && !r; i++) {
		b.len = 0;
		r = vmstate_cpu_save(vm, i, &b);
		if (!r)
			r = mig_save_section(sv, i, b.data, (uint32_t)b.len);
	}
	vmstate_buf_free(&b);
	return r;
}

static void mig_cpu_save_cleanup(void *opaque, bool completed)
{
	(void)opaque; (void)completed; /* nothing was set up */
}

static int mig_cpu_load(void *opaque, uint32_t instance, uint32_t version, const uint8_t *data,
			uint32_t len, char *err, size_t errlen)
{
	(void)version;
	return vmstate_cpu_load(opaque, instance, data, len, err, errlen);
}

static const struct mig_state_ops mig_cpu_state_ops = {
	.name = "cpu",
	.section_id = VMSTATE_SECTION_CPU,
	.version = VMSTATE_CPU_VERSION,
	.min_version = VMSTATE_CPU_VERSION,
	.instances = MIG_STATE_PER_VCPU,
	.required = true,
	.save_complete = mig_cpu_save_complete,
	.save_cleanup = mig_cpu_save_cleanup,
	.load = mig_cpu_load,
};

int mig_register_vm_states(struct migration *m)
{
	int r = migration_register_state(m, &mig_vm_state_ops, m);

	return r ? r : migration_register_state(m, &mig_cpu_state_ops, m->vm);
}
