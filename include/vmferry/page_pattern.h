/*
 * The dirtier's page pattern (check=1): the contents a page holds after a
 * given write, shared by the guest (which writes it and checks it before
 * each overwrite) and the dump verifier (src/verify/verify.c), so both
 * compute the same bytes.  Freestanding: no libc, integer arithmetic only.
 *
 * Page k of a vCPU's working set after write s (s >= 1, the dirtier's
 * sequence number): word 0 is s (as without check), word i (1..511) is
 * vmf_pattern_word(vmf_pattern_key(vcpu, k, s), i).  Before its first
 * write (s == 0) a page is all zeros.
 */
#ifndef VMFERRY_PAGE_PATTERN_H
#define VMFERRY_PAGE_PATTERN_H

#include <stdint.h>

#define VMF_PATTERN_WORDS 512u /* u64 words in a 4 KiB page */

/* splitmix64's finalizer: a bijective mix of 64 bits. */
static inline uint64_t vmf_pattern_mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

/* The key of page @k of vCPU @vcpu's working set after write @seq. */
static inline uint64_t vmf_pattern_key(uint32_t vcpu, uint64_t k, uint64_t seq)
{
	return vmf_pattern_mix(seq * 0x9e3779b97f4a7c15ull ^ (k << 8) ^ vcpu);
}

/* Word @i (1..511) of the page whose key is @key. */
static inline uint64_t vmf_pattern_word(uint64_t key, uint32_t i)
{
	return vmf_pattern_mix(key + (uint64_t)i * 0x9e3779b97f4a7c15ull);
}

#endif
