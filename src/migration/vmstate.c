#include "migration/vmstate.h"

#include <errno.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "util/log.h"
#include "vmm/vm.h"

#define VMSTATE_MAX_MSRS 1024

void vmstate_buf_free(struct vmstate_buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

static void vmstate_put(struct vmstate_buf *b, const void *p, size_t n)
{
	if (b->err)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 4096;
		uint8_t *d;

		while (cap < b->len + n)
			cap *= 2;
		d = realloc(b->data, cap);
		if (!d) {
			b->err = -ENOMEM;
			return;
		}
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

static void vmstate_put_field(struct vmstate_buf *b, uint32_t kind, const void *p, uint32_t n)
{
	vmstate_put(b, &kind, 4);
	vmstate_put(b, &n, 4);
	vmstate_put(b, p, n);
}

/* ---- MSR list: what KVM lists, filtered to what this vCPU can read ---- */

struct vmstate_msrs {
	struct kvm_msrs hdr;
	struct kvm_msr_entry e[VMSTATE_MAX_MSRS];
};

static int vmstate_msr_list(struct vm *vm, uint32_t *idx, uint32_t *n)
{
	struct {
		struct kvm_msr_list l;
		uint32_t idx[VMSTATE_MAX_MSRS];
	} list = { .l.nmsrs = VMSTATE_MAX_MSRS };

	if (ioctl(vm_kvm_fd(vm), KVM_GET_MSR_INDEX_LIST, &list) < 0) {
		int err = -errno;

		log_error("KVM_GET_MSR_INDEX_LIST failed: %s", strerror(errno));
		return err;
	}
	memcpy(idx, list.idx, list.l.nmsrs * sizeof(uint32_t));
	*n = list.l.nmsrs;
	return 0;
}

/* Read every listed MSR KVM lets us read; skip those it refuses. */
static int vmstate_read_msrs(struct vm *vm, int fd, struct vmstate_msrs *m)
{
	uint32_t idx[VMSTATE_MAX_MSRS];
	uint32_t n = 0, got = 0;
	int err = vmstate_msr_list(vm, idx, &n);

	if (err)
		return err;
	for (uint32_t start = 0; start < n;) {
		struct vmstate_msrs chunk;
		int r;

		memset(&chunk, 0, sizeof(chunk));
		chunk.hdr.nmsrs = n - start;
		for (uint32_t i = 0; i < chunk.hdr.nmsrs; i++)
			chunk.e[i].index = idx[start + i];
		r = ioctl(fd, KVM_GET_MSRS, &chunk);
		if (r < 0)
			return -errno;
		memcpy(&m->e[got], chunk.e, (size_t)r * sizeof(chunk.e[0]));
		got += (uint32_t)r;
		start += (uint32_t)r + 1; /* entry r could not be read: skip it */
	}
	m->hdr.nmsrs = got;
	return 0;
}

static int vmstate_xsave_bytes(struct vm *vm)
{
	int n = ioctl(vm_kvm_fd(vm), KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);

	return n > (int)sizeof(struct kvm_xsave) ? n : (int)sizeof(struct kvm_xsave);
}

int vmstate_cpu_save(struct vm *vm, unsigned index, struct vmstate_buf *out)
{
	int fd = vm_vcpu_fd(vm, index);
	int xsave_bytes = vmstate_xsave_bytes(vm);
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_xcrs xcrs;
	struct kvm_vcpu_events ev;
	struct kvm_mp_state mp;
	struct kvm_debugregs dbg;
	struct vmstate_msrs *msrs = NULL;
	void *xsave = NULL;
	uint32_t count = VMSTATE_CPU__COUNT - 1;
	int err = 0;

	xsave = calloc(1, (size_t)xsave_bytes);
	msrs = calloc(1, sizeof(*msrs));
	if (!xsave || !msrs) {
		err = -ENOMEM;
		goto out;
	}
#define VMSTATE_GET(req, arg) \
	do { if (ioctl(fd, req, arg) < 0) { err = -errno; \
		log_error("vCPU %u: " #req " failed: %s", index, strerror(errno)); goto out; } } while (0)
	VMSTATE_GET(KVM_GET_REGS, &regs);
	VMSTATE_GET(KVM_GET_SREGS, &sregs);
	if (xsave_bytes > (int)sizeof(struct kvm_xsave))
		VMSTATE_GET(KVM_GET_XSAVE2, xsave);
	else
		VMSTATE_GET(KVM_GET_XSAVE, xsave);
	VMSTATE_GET(KVM_GET_XCRS, &xcrs);
	VMSTATE_GET(KVM_GET_VCPU_EVENTS, &ev);
	VMSTATE_GET(KVM_GET_MP_STATE, &mp);
	VMSTATE_GET(KVM_GET_DEBUGREGS, &dbg);
#undef VMSTATE_GET
	err = vmstate_read_msrs(vm, fd, msrs);
	if (err) {
		log_error("vCPU %u: reading MSRs failed: %s", index, strerror(-err));
		goto out;
	}

	vmstate_put(out, &count, 4);
	vmstate_put_field(out, VMSTATE_CPU_REGS, &regs, sizeof(regs));
	vmstate_put_field(out, VMSTATE_CPU_SREGS, &sregs, sizeof(sregs));
	vmstate_put_field(out, VMSTATE_CPU_XSAVE, xsave, (uint32_t)xsave_bytes);
	vmstate_put_field(out, VMSTATE_CPU_XCRS, &xcrs, sizeof(xcrs));
	vmstate_put_field(out, VMSTATE_CPU_EVENTS, &ev, sizeof(ev));
	vmstate_put_field(out, VMSTATE_CPU_MP_STATE, &mp, sizeof(mp));
	vmstate_put_field(out, VMSTATE_CPU_DEBUGREGS, &dbg, sizeof(dbg));
	{
		uint32_t n = msrs->hdr.nmsrs, len = 4 + n * 16;
		uint32_t kind = VMSTATE_CPU_MSRS, pad = 0;

		vmstate_put(out, &kind, 4);
		vmstate_put(out, &len, 4);
		vmstate_put(out, &n, 4);
		for (uint32_t i = 0; i < n; i++) {
			vmstate_put(out, &msrs->e[i].index, 4);
			vmstate_put(out, &pad, 4);
			vmstate_put(out, &msrs->e[i].data, 8);
		}
	}
	err = out->err;
out:
	free(xsave);
	free(msrs);
	return err;
}

static size_t vmstate_field_size(uint32_t kind)
{
	switch (kind) {
	case VMSTATE_CPU_REGS: return sizeof(struct kvm_regs);
	case VMSTATE_CPU_SREGS: return sizeof(struct kvm_sregs);
	case VMSTATE_CPU_XCRS: return sizeof(struct kvm_xcrs);
	case VMSTATE_CPU_EVENTS: return sizeof(struct kvm_vcpu_events);
	case VMSTATE_CPU_MP_STATE: return sizeof(struct kvm_mp_state);
	case VMSTATE_CPU_DEBUGREGS: return sizeof(struct kvm_debugregs);
	}
	return 0; /* variable */
}

/* Locate each field; validate framing.  @at[kind] = offset of payload. */
static int vmstate_cpu_index(const uint8_t *data, size_t len, size_t xsave_bytes,
			     size_t at[VMSTATE_CPU__COUNT], uint32_t flen[VMSTATE_CPU__COUNT],
			     char *err, size_t errlen)
{
	uint32_t count;
	size_t off = 4;

	memset(at, 0, sizeof(size_t) * VMSTATE_CPU__COUNT);
	if (len < 4 || len > VMSTATE_SECTION_MAX_BYTES) {
		snprintf(err, errlen, "cpu section of %zu bytes", len);
		return -EBADMSG;
	}
	memcpy(&count, data, 4);
	if (count != VMSTATE_CPU__COUNT - 1) {
		snprintf(err, errlen, "cpu section has %u fields, expected %u", count,
			 VMSTATE_CPU__COUNT - 1);
		return -EBADMSG;
	}
	for (uint32_t i = 0; i < count; i++) {
		uint32_t kind, n;

		if (len - off < 8) {
			snprintf(err, errlen, "cpu section truncated in field %u", i);
			return -EBADMSG;
		}
		memcpy(&kind, data + off, 4);
		memcpy(&n, data + off + 4, 4);
		off += 8;
		if (kind == 0 || kind >= VMSTATE_CPU__COUNT) {
			snprintf(err, errlen, "unknown cpu field kind %u", kind);
			return -EBADMSG;
		}
		if (at[kind]) {
			snprintf(err, errlen, "cpu field kind %u given twice", kind);
			return -EBADMSG;
		}
		if (n > len - off) {
			snprintf(err, errlen, "cpu field kind %u: %u bytes past the section end", kind, n);
			return -EBADMSG;
		}
		if (vmstate_field_size(kind) && n != vmstate_field_size(kind)) {
			snprintf(err, errlen, "cpu field kind %u has %u bytes, expected %zu", kind, n,
				 vmstate_field_size(kind));
			return -EBADMSG;
		}
		if (kind == VMSTATE_CPU_XSAVE && (n < sizeof(struct kvm_xsave) ||
						   (xsave_bytes && n != xsave_bytes))) {
			snprintf(err, errlen, "XSAVE area of %u bytes does not match this host (%zu)",
				 n, xsave_bytes);
			return -EBADMSG;
		}
		if (kind == VMSTATE_CPU_MSRS) {
			uint32_t nmsrs;

			if (n < 4) {
				snprintf(err, errlen, "MSR field too short");
				return -EBADMSG;
			}
			memcpy(&nmsrs, data + off, 4);
			if (nmsrs > VMSTATE_MAX_MSRS || n != 4 + nmsrs * 16) {
				snprintf(err, errlen, "MSR field: %u entries in %u bytes", nmsrs, n);
				return -EBADMSG;
			}
			for (uint32_t k = 0; k < nmsrs; k++) {
				uint32_t pad;

				memcpy(&pad, data + off + 4 + k * 16 + 4, 4);
				if (pad) {
					snprintf(err, errlen, "MSR entry %u: nonzero padding", k);
					return -EBADMSG;
				}
			}
		}
		at[kind] = off;
		flen[kind] = n;
		off += n;
	}
	if (off != len) {
		snprintf(err, errlen, "%zu stray bytes after the cpu fields", len - off);
		return -EBADMSG;
	}
	return 0;
}

int vmstate_cpu_check(const uint8_t *data, size_t len, size_t xsave_bytes,
		      char *err, size_t errlen)
{
	size_t at[VMSTATE_CPU__COUNT];
	uint32_t flen[VMSTATE_CPU__COUNT];

	return vmstate_cpu_index(data, len, xsave_bytes, at, flen, err, errlen);
}

int vmstate_cpu_load(struct vm *vm, unsigned index, const uint8_t *data, size_t len,
		     char *err, size_t errlen)
{
	size_t at[VMSTATE_CPU__COUNT];
	uint32_t flen[VMSTATE_CPU__COUNT];
	int fd = vm_vcpu_fd(vm, index);
	int xsave_bytes = vmstate_xsave_bytes(vm);
	struct vmstate_msrs *msrs;
	uint32_t nmsrs;
	void *xsave;
	int r;

	if (fd < 0) {
		snprintf(err, errlen, "cpu section for vCPU %u, which does not exist", index);
		return -EBADMSG;
	}
	r = vmstate_cpu_index(data, len, (size_t)xsave_bytes, at, flen, err, errlen);
	if (r)
		return r;
	xsave = calloc(1, (size_t)xsave_bytes);
	msrs = calloc(1, sizeof(*msrs));
	if (!xsave || !msrs) {
		free(xsave);
		free(msrs);
		return -ENOMEM;
	}
	memcpy(xsave, data + at[VMSTATE_CPU_XSAVE], flen[VMSTATE_CPU_XSAVE]);
	memcpy(&nmsrs, data + at[VMSTATE_CPU_MSRS], 4);
	msrs->hdr.nmsrs = nmsrs;
	for (uint32_t i = 0; i < nmsrs; i++) {
		const uint8_t *e = data + at[VMSTATE_CPU_MSRS] + 4 + i * 16;

		memcpy(&msrs->e[i].index, e, 4);
		memcpy(&msrs->e[i].data, e + 8, 8);
	}

	/* Order matters: sregs (EFER, CR*) before MSRs, events last. */
#define VMSTATE_SET(req, arg) \
	do { if (ioctl(fd, req, arg) < 0) { r = -errno; \
		snprintf(err, errlen, "vCPU %u: " #req " failed: %s", index, strerror(errno)); \
		goto out; } } while (0)
	VMSTATE_SET(KVM_SET_SREGS, data + at[VMSTATE_CPU_SREGS]);
	VMSTATE_SET(KVM_SET_REGS, data + at[VMSTATE_CPU_REGS]);
	VMSTATE_SET(KVM_SET_XSAVE, xsave);
	VMSTATE_SET(KVM_SET_XCRS, data + at[VMSTATE_CPU_XCRS]);
	VMSTATE_SET(KVM_SET_DEBUGREGS, data + at[VMSTATE_CPU_DEBUGREGS]);
	VMSTATE_SET(KVM_SET_MP_STATE, data + at[VMSTATE_CPU_MP_STATE]);
#undef VMSTATE_SET
	for (uint32_t start = 0; start < nmsrs;) {
		struct vmstate_msrs chunk;

		memset(&chunk, 0, sizeof(chunk));
		chunk.hdr.nmsrs = nmsrs - start;
		memcpy(chunk.e, &msrs->e[start], chunk.hdr.nmsrs * sizeof(chunk.e[0]));
		r = ioctl(fd, KVM_SET_MSRS, &chunk);
		if (r < 0) {
			r = -errno;
			snprintf(err, errlen, "vCPU %u: KVM_SET_MSRS failed: %s", index, strerror(errno));
			goto out;
		}
		if ((uint32_t)r < chunk.hdr.nmsrs)
			log_debug("vCPU %u: MSR %#x not settable here; skipped", index,
				  chunk.e[r].index);
		start += (uint32_t)r + 1;
	}
	{
		struct kvm_vcpu_events ev;

		memcpy(&ev, data + at[VMSTATE_CPU_EVENTS], sizeof(ev));
		if (ioctl(fd, KVM_SET_VCPU_EVENTS, &ev) < 0) {
			r = -errno;
			snprintf(err, errlen, "vCPU %u: KVM_SET_VCPU_EVENTS failed: %s", index,
				 strerror(errno));
			goto out;
		}
	}
	r = 0;
out:
	free(xsave);
	free(msrs);
	return r;
}

/* Bytes of the VM section in each version. */
static size_t vmstate_vm_bytes(uint32_t version)
{
	return version == 1 ? 24 : 32;
}

void vmstate_vm_save(struct vm *vm, bool was_running, uint64_t stop_ns, uint64_t moves,
		     uint32_t version, struct vmstate_buf *out)
{
	struct vmstate_vm v = {
		.guest_clock_ns = vm_guest_clock_get(vm),
		.stop_ns = stop_ns,
		.was_running = was_running,
		.moves = moves,
	};

	if (version < VMSTATE_VM_VERSION_MIN || version > VMSTATE_VM_VERSION) {
		out->err = -EINVAL;
		return;
	}
	vmstate_put(out, &v, vmstate_vm_bytes(version));
}

int vmstate_vm_parse(const uint8_t *data, size_t len, uint32_t version, struct vmstate_vm *out,
		     char *err, size_t errlen)
{
	size_t want;

	memset(out, 0, sizeof(*out));
	if (version > VMSTATE_VM_VERSION) {
		snprintf(err, errlen, "vm section version %u is newer than this build reads "
			 "(%u..%u): update the destination first", version, VMSTATE_VM_VERSION_MIN,
			 VMSTATE_VM_VERSION);
		return -EBADMSG;
	}
	if (version < VMSTATE_VM_VERSION_MIN) {
		snprintf(err, errlen, "vm section version %u is unknown (this build reads %u..%u)",
			 version, VMSTATE_VM_VERSION_MIN, VMSTATE_VM_VERSION);
		return -EBADMSG;
	}
	want = vmstate_vm_bytes(version);
	if (len != want) {
		snprintf(err, errlen, "vm section version %u has %zu bytes, expected %zu", version,
			 len, want);
		return -EBADMSG;
	}
	memcpy(out, data, want); /* the layout only grows at the end */
	if (out->was_running > 1 || out->reserved) {
		snprintf(err, errlen, "vm section: invalid flags");
		return -EBADMSG;
	}
	return 0;
}
