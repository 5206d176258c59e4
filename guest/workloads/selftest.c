/*
 * selftest: guest behaviours the VMM tests need, chosen by param `mode`:
 *   0 exit with code `code` (default 0) after printing "selftest: ok\n"
 *   1 invalid opcode (no IDT at CPL3: the VMM sees a triple fault)
 *   2 report a panic through the panic port with code `code`
 *   3 read guest-physical memory beyond RAM (an unmapped access)
 *   4 execute a privileged instruction (hlt at CPL3 -> #GP)
 *   5 write to an unknown port, then exit with `code`
 *   6 print the guest clock, sleep `us` microseconds, print it again, exit 0
 */
#include "vmf.h"

int vmf_main(unsigned vcpu, struct vmf_boot_info *bi)
{
	uint64_t mode = vmf_param(bi, "mode", 0);
	uint32_t code = (uint32_t)vmf_param(bi, "code", 0);

	if (vcpu != 0)
		for (;;)
			vmf_sleep_us(1000000);
	switch (mode) {
	case 0:
		vmf_puts("selftest: ok\n");
		return (int)code;
	case 1:
		__asm__ volatile("ud2");
		break;
	case 2:
		vmf_panic(code);
	case 3: {
		volatile uint8_t *beyond = (volatile uint8_t *)(bi->ram_bytes + 4096);

		return *beyond;
	}
	case 4:
		__asm__ volatile("hlt");
		break;
	case 5:
		vmf_outl(0x7777, 1);
		return (int)code;
	case 6: {
		uint64_t t0 = vmf_time_ns(), t1;

		vmf_sleep_us((uint32_t)vmf_param(bi, "us", 1000));
		t1 = vmf_time_ns();
		vmf_put_u64(t0);
		vmf_putc(' ');
		vmf_put_u64(t1);
		vmf_putc('\n');
		return t1 > t0 ? 0 : 1;
	}
	}
	return 99;
}
