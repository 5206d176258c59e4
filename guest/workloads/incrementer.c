/*
 * incrementer: the migration test workload (see DESIGN.md).  Each vCPU owns
 * bi->range[vcpu]: it zeroes the first byte of every page, then increments
 * those bytes in page order forever.  At any stop the range holds value v+1
 * on a prefix and v on the rest (one edge); a lost or stale page breaks it.
 * One console mark per pass from vCPU 0 ('.'), and passes/writes counters in
 * bi->stats[vcpu].  Params: passes=N (stop after N passes; 0 = forever).
 */
#include "vmf.h"

int vmf_main(unsigned vcpu, struct vmf_boot_info *bi)
{
	volatile struct vmf_vcpu_stats *st = &bi->stats[vcpu];
	volatile uint8_t *base = (volatile uint8_t *)bi->range[vcpu].gpa;
	uint64_t npages = bi->range[vcpu].bytes / VMF_PAGE_BYTES;
	uint64_t limit = vmf_param(bi, "passes", 0);

	if (vcpu == 0)
		vmf_puts("incrementer: start\n");
	st->phase = VMF_PHASE_SETUP;
	for (uint64_t i = 0; i < npages; i++)
		base[i * VMF_PAGE_BYTES] = 0;
	st->phase = VMF_PHASE_RUNNING;
	for (;;) {
		for (uint64_t i = 0; i < npages; i++)
			base[i * VMF_PAGE_BYTES]++;
		st->passes++;
		st->writes += npages;
		if (vcpu == 0)
			vmf_putc('.');
		if (limit && st->passes >= limit)
			return 0;
	}
}
