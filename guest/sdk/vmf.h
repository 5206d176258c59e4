/*
 * vmferry guest SDK: what a freestanding workload may use.
 * A workload defines `int vmf_main(unsigned vcpu, struct vmf_boot_info *bi)`;
 * its return value from vCPU 0 becomes the guest's exit code (other vCPUs
 * returning just park).
 */
#ifndef VMF_GUEST_SDK_H
#define VMF_GUEST_SDK_H

#include <stdint.h>
#include <stddef.h>
#include "vmferry/guest_abi.h"

static inline void vmf_outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port) : "memory");
}
static inline void vmf_outl(uint16_t port, uint32_t v)
{
	__asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port) : "memory");
}
static inline uint32_t vmf_inl(uint16_t port)
{
	uint32_t v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port) : "memory");
	return v;
}

int vmf_main(unsigned vcpu, struct vmf_boot_info *bi);

/* Monotonic guest clock in nanoseconds (stops while the VM is paused). */
uint64_t vmf_time_ns(void);
/* Block this vCPU in the VMM for @us microseconds (at most 1 s). */
void vmf_sleep_us(uint32_t us);
/* Block this vCPU for @ns nanoseconds (rounded down to microseconds; split
 * into sleeps of at most 1 s; returns at once below 1 us). */
void vmf_sleep_ns(uint64_t ns);
void vmf_putc(char c);
void vmf_puts(const char *s);
void vmf_put_u64(uint64_t v);
/* End the guest with @code (never returns). */
__attribute__((noreturn)) void vmf_exit(uint32_t code);
/* Report a fatal guest error (never returns). */
__attribute__((noreturn)) void vmf_panic(uint32_t code);
/* Look up a parameter given by --guest NAME,key=value; @dflt if absent. */
uint64_t vmf_param(const struct vmf_boot_info *bi, const char *key, uint64_t dflt);
/*
 * Write a non-zero pattern into one word of every cache line of [@p, @p +
 * @bytes): memory that holds data, as a real guest's does, so a migration
 * has RAM to move (workloads' fill=1).
 */
void vmf_fill(volatile void *p, uint64_t bytes);

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);

#endif
