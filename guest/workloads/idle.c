/*
 * idle: marks itself running and sleeps in the VMM; vCPU 0 prints one '.'
 * per second so a console shows it is alive.  Params: none.
 */
#include "vmf.h"

int vmf_main(unsigned vcpu, struct vmf_boot_info *bi)
{
	((volatile struct vmf_vcpu_stats *)&bi->stats[vcpu])->phase = VMF_PHASE_RUNNING;
	if (vcpu == 0)
		vmf_puts("idle: up\n");
	for (;;) {
		vmf_sleep_us(1000000);
		((volatile struct vmf_vcpu_stats *)&bi->stats[vcpu])->passes++;
		if (vcpu == 0)
			vmf_putc('.');
	}
}
