/*
 * idle: marks itself running and sleeps in the VMM; vCPU 0 prints one '.'
 * per second so a console shows it is alive.
 * Params: fill=1 first writes a pattern over every cache line of the vCPU's
 * range (an idle guest whose memory holds data, as a real one's does, so a
 * migration has RAM to move but nothing gets dirtied).
 */
#include "vmf.h"

int vmf_main(unsigned vcpu, struct vmf_boot_info *bi)
{
	volatile struct vmf_vcpu_stats *st = &bi->stats[vcpu];

	st->phase = VMF_PHASE_SETUP;
	if (vmf_param(bi, "fill", 0))
		vmf_fill((volatile void *)bi->range[vcpu].gpa, bi->range[vcpu].bytes);
	st->phase = VMF_PHASE_RUNNING;
	if (vcpu == 0)
		vmf_puts("idle: up\n");
	for (;;) {
		vmf_sleep_us(1000000);
		st->passes++;
		if (vcpu == 0)
			vmf_putc('.');
	}
}
