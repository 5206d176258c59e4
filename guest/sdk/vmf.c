#include "vmf.h"

uint64_t vmf_time_ns(void)
{
	uint64_t lo = vmf_inl(VMF_PORT_TIME_LO);
	uint64_t hi = vmf_inl(VMF_PORT_TIME_HI);

	return (hi << 32) | lo;
}

void vmf_sleep_us(uint32_t us)
{
	vmf_outl(VMF_PORT_SLEEP, us);
}

void vmf_sleep_ns(uint64_t ns)
{
	uint64_t us = ns / 1000;

	while (us) {
		uint32_t chunk = us > 1000000 ? 1000000 : (uint32_t)us;

		vmf_sleep_us(chunk);
		us -= chunk;
	}
}

void vmf_putc(char c)
{
	vmf_outb(VMF_PORT_CONSOLE, (uint8_t)c);
}

void vmf_puts(const char *s)
{
	while (*s)
		vmf_putc(*s++);
}

void vmf_put_u64(uint64_t v)
{
	char buf[21];
	int i = 20;

	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	vmf_puts(&buf[i]);
}

void vmf_exit(uint32_t code)
{
	for (;;)
		vmf_outl(VMF_PORT_EXIT, code);
}

void vmf_panic(uint32_t code)
{
	for (;;)
		vmf_outl(VMF_PORT_PANIC, code);
}

static int vmf_streq(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

void vmf_fill(volatile void *p, uint64_t bytes)
{
	volatile uint64_t *w = p;

	for (uint64_t i = 0; i < bytes / 8; i += 8)
		w[i] = (i * 0x9e3779b97f4a7c15ull) | 1;
}

uint64_t vmf_param(const struct vmf_boot_info *bi, const char *key, uint64_t dflt)
{
	for (unsigned i = 0; i < VMF_MAX_PARAMS; i++)
		if (bi->params[i].key[0] && vmf_streq(bi->params[i].key, key))
			return bi->params[i].value;
	return dflt;
}

void *memset(void *d, int c, size_t n)
{
	unsigned char *p = d;

	while (n--)
		*p++ = (unsigned char)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	unsigned char *p = d;
	const unsigned char *q = s;

	while (n--)
		*p++ = *q++;
	return d;
}

/* Called from entry.S on each vCPU's own stack. */
__attribute__((noreturn)) void vmf_main_entry(unsigned vcpu, struct vmf_boot_info *bi);
__attribute__((noreturn)) void vmf_main_entry(unsigned vcpu, struct vmf_boot_info *bi)
{
	int code = vmf_main(vcpu, bi);

	bi->stats[vcpu].phase = VMF_PHASE_DONE;
	if (vcpu == 0)
		vmf_exit((uint32_t)code);
	/* Other vCPUs have nothing left to do: sleep in the VMM forever. */
	for (;;)
		vmf_sleep_us(1000000);
}
