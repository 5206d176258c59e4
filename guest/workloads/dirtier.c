/*
 * dirtier: dirties pages at a chosen working-set size and rate, so precopy
 * can be made to converge (small wss or low rate) or not.
 *
 * Each vCPU writes the first 8 bytes of the pages of its working set — the
 * first `wss` bytes of bi->range[vcpu] — in page order, wrapping, storing a
 * per-vCPU sequence number (1, 2, 3, ...; equal to stats.writes right after
 * the write).  Params:
 *   wss=BYTES    working set per vCPU (default and maximum: the whole range;
 *                rounded down to pages, at least one page)
 *   rate=N       page writes per second per vCPU (0 = as fast as possible)
 *   passes=N     stop after N passes over the working set (0 = forever)
 *   check=1      fill the rest of each page with a pattern keyed by (vCPU,
 *                page, sequence number) (include/vmferry/page_pattern.h),
 *                and check the whole page before each overwrite: a page
 *                that does not hold what this vCPU last wrote there (lost,
 *                stale, torn or corrupted anywhere, e.g. in a migration) is
 *                reported on the console and panics the guest through the
 *                panic port (code DIRTIER_PANIC_*), where it is found
 *
 * Rate control: pages are written in bursts; the clock is read once per
 * burst (each read is two VM exits) and the vCPU sleeps in the VMM when it
 * is ahead of an absolute schedule, so sleep overshoot is made up by the
 * next burst.  Bursts are sized so that a vCPU makes at most ~500 of them
 * per second whatever the rate.  A vCPU that falls far behind (descheduled
 * host thread, slow postcopy faults) restarts its schedule instead of
 * bursting to catch up.  The guest clock stops while the VM is paused, so a
 * pause does not cause a catch-up burst either.
 *
 * vCPU 0 prints one '.' per completed pass, at most one per 100 ms.
 */
#include "vmf.h"
#include "vmferry/page_pattern.h"

#define DIRTIER_NS_PER_S        1000000000ull
#define DIRTIER_BURSTS_PER_S    500ull        /* rated mode: burst count cap   */
#define DIRTIER_MAX_RATE        1000000000ull /* keeps schedule maths in u64   */
#define DIRTIER_LAG_RESET_NS    100000000ull  /* behind by more: restart       */
#define DIRTIER_DOT_GAP_NS      100000000ull  /* at most 10 dots per second    */
/* Unlimited mode: grow or shrink the burst so one takes 1..8 ms. */
#define DIRTIER_FAST_MIN_NS     1000000ull
#define DIRTIER_FAST_MAX_NS     8000000ull
#define DIRTIER_FAST_MAX_BURST  (1ull << 22)
/* check=1: the panic codes of a page that is not what was written there. */
#define DIRTIER_PANIC_SEQ       0xc4ec0001u   /* word 0: another sequence number */
#define DIRTIER_PANIC_BODY      0xc4ec0002u   /* words 1..511: not the pattern   */

struct dirtier {
	volatile struct vmf_vcpu_stats *st;
	uint8_t *base;      /* first page of the working set */
	uint64_t npages;    /* pages in the working set */
	uint64_t next_page; /* index of the next page to write */
	uint64_t seq;       /* last sequence number written */
	uint64_t passes;    /* completed passes (mirrors st->passes) */
	uint64_t limit;     /* passes to do; 0 = forever */
	int finished;       /* the pass limit was reached */
	int check;          /* check=1: pattern pages, checked before overwrite */
	unsigned vcpu;
};

/* Say what page @k held instead of what was written there, and panic. */
__attribute__((noreturn)) static void dirtier_bad_page(const struct dirtier *d, uint64_t k,
							uint32_t word, uint64_t want,
							uint64_t got, uint32_t code)
{
	vmf_puts("\ndirtier: vcpu ");
	vmf_put_u64(d->vcpu);
	vmf_puts(" page ");
	vmf_put_u64(k);
	vmf_puts(" word ");
	vmf_put_u64(word);
	vmf_puts(" holds ");
	vmf_put_u64(got);
	vmf_puts(", expected ");
	vmf_put_u64(want);
	vmf_puts(" (before write ");
	vmf_put_u64(d->seq + 1);
	vmf_puts(")\n");
	vmf_panic(code);
}

/*
 * check=1: page @k must hold what write @prev (0: none yet, all zeros) put
 * there; then it gets the pattern of write @seq, word 0 last (the verifier
 * relies on that order: a page whose word 0 is new is complete).
 */
static void dirtier_check_and_fill(const struct dirtier *d, uint64_t k, uint64_t prev,
				   uint64_t seq)
{
	volatile uint64_t *page = (volatile uint64_t *)(d->base + k * VMF_PAGE_BYTES);
	uint64_t old_key = vmf_pattern_key(d->vcpu, k, prev);
	uint64_t new_key = vmf_pattern_key(d->vcpu, k, seq);

	if (page[0] != prev)
		dirtier_bad_page(d, k, 0, prev, page[0], DIRTIER_PANIC_SEQ);
	for (uint32_t i = 1; i < VMF_PATTERN_WORDS; i++) {
		uint64_t want = prev ? vmf_pattern_word(old_key, i) : 0;

		if (page[i] != want)
			dirtier_bad_page(d, k, i, want, page[i], DIRTIER_PANIC_BODY);
		page[i] = vmf_pattern_word(new_key, i);
	}
	__asm__ volatile("" ::: "memory");
}

/*
 * Write up to @count pages.  Returns the number written; stops early, with
 * d->finished set, when the pass limit is reached.
 */
static uint64_t dirtier_burst(struct dirtier *d, uint64_t count)
{
	uint64_t done;

	for (done = 0; done < count; done++) {
		volatile uint64_t *slot =
			(volatile uint64_t *)(d->base + d->next_page * VMF_PAGE_BYTES);

		if (d->check)
			dirtier_check_and_fill(d, d->next_page,
					       d->seq + 1 > d->npages ? d->seq + 1 - d->npages : 0,
					       d->seq + 1);
		*slot = ++d->seq;
		d->st->writes = d->seq;
		if (++d->next_page == d->npages) {
			d->next_page = 0;
			d->st->passes = ++d->passes;
			if (d->limit && d->passes >= d->limit) {
				d->finished = 1;
				return done + 1;
			}
		}
	}
	return done;
}

static void dirtier_banner(uint64_t npages, uint64_t rate, uint64_t limit, int check)
{
	vmf_puts("dirtier: wss ");
	vmf_put_u64(npages * VMF_PAGE_BYTES / 1024);
	vmf_puts(" KiB/vcpu, rate ");
	if (rate)
		vmf_put_u64(rate);
	else
		vmf_puts("max");
	vmf_puts(" pages/s/vcpu, passes ");
	if (limit)
		vmf_put_u64(limit);
	else
		vmf_puts("forever");
	if (check)
		vmf_puts(", every page checked");
	vmf_putc('\n');
}

int vmf_main(unsigned vcpu, struct vmf_boot_info *bi)
{
	volatile struct vmf_vcpu_stats *st = &bi->stats[vcpu];
	uint64_t range_pages = bi->range[vcpu].bytes / VMF_PAGE_BYTES;
	uint64_t wss_bytes = vmf_param(bi, "wss", 0);
	uint64_t rate = vmf_param(bi, "rate", 0);
	struct dirtier d = {
		.st = st,
		.base = (uint8_t *)bi->range[vcpu].gpa,
		.limit = vmf_param(bi, "passes", 0),
		.check = vmf_param(bi, "check", 0) != 0,
		.vcpu = vcpu,
	};
	uint64_t burst, sched_base_ns, sched_done, last_ns, dot_ns = 0;
	uint64_t dotted_passes = 0;

	st->phase = VMF_PHASE_SETUP;
	d.npages = range_pages;
	if (wss_bytes && wss_bytes / VMF_PAGE_BYTES < range_pages)
		d.npages = wss_bytes / VMF_PAGE_BYTES ? wss_bytes / VMF_PAGE_BYTES : 1;
	if (rate > DIRTIER_MAX_RATE)
		rate = DIRTIER_MAX_RATE;
	if (vcpu == 0)
		dirtier_banner(d.npages, rate, d.limit, d.check);
	st->phase = VMF_PHASE_RUNNING;
	if (d.npages == 0) {
		/* No memory to dirty: stay alive like idle. */
		for (;;)
			vmf_sleep_us(1000000);
	}

	if (rate)
		burst = (rate + DIRTIER_BURSTS_PER_S - 1) / DIRTIER_BURSTS_PER_S;
	else
		burst = 1024;
	sched_base_ns = last_ns = vmf_time_ns();
	sched_done = 0;

	for (;;) {
		uint64_t n = dirtier_burst(&d, burst);
		uint64_t now = vmf_time_ns();

		if (vcpu == 0 && d.passes > dotted_passes &&
		    (dotted_passes == 0 || now - dot_ns >= DIRTIER_DOT_GAP_NS ||
		     d.finished)) {
			vmf_putc('.');
			dot_ns = now;
			dotted_passes = d.passes;
		}
		if (d.finished)
			return 0;

		if (rate) {
			uint64_t due_ns;

			sched_done += n;
			/* Rebase every second so sched_done * 1e9 cannot overflow. */
			if (sched_done >= rate) {
				sched_done -= rate;
				sched_base_ns += DIRTIER_NS_PER_S;
			}
			due_ns = sched_base_ns + sched_done * DIRTIER_NS_PER_S / rate;
			if (now < due_ns) {
				vmf_sleep_ns(due_ns - now);
			} else if (now - due_ns > DIRTIER_LAG_RESET_NS) {
				sched_base_ns = now;
				sched_done = 0;
			}
		} else {
			uint64_t took_ns = now - last_ns;

			if (took_ns < DIRTIER_FAST_MIN_NS && burst < DIRTIER_FAST_MAX_BURST)
				burst *= 2;
			else if (took_ns > DIRTIER_FAST_MAX_NS && burst > 1)
				burst /= 2;
			last_ns = now;
		}
	}
}
