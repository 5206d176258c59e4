/*
 * diskwriter: appends numbered, checksummed records to its own region of a
 * virtio-blk disk, so a migration that loses, tears or reorders a write is
 * caught (docs/guest-abi.md "diskwriter" has the record format).
 *
 * vCPU 0 sets the first block device up with one queue per writing vCPU
 * (min(nvcpus, the device's queues)); each writer w then owns region w of
 * the disk (an equal share, in 4 KiB units) as a ring of 512-byte slots:
 * record s (1, 2, 3, ...) goes to slot (s - 1) % slots, one request at a
 * time.  When the device acknowledges it, stats.writes = s: the last
 * acknowledged sequence number, in the boot info where a memory dump shows
 * it.  Every `check` records it reads back a random older record still on
 * the disk and checks it (stats.passes counts these); a bad one, or a
 * failed request, is a guest panic (VMF_PORT_PANIC, codes below).
 * Params:
 *   rate=N     records per second per writer (0 = as fast as possible; default 200)
 *   check=N    re-read one older record every N records (default 4; 0 = never)
 *   records=N  stop after N records (0 = forever)
 *   fill=1     first fill the rest of the vCPU's range with data (above its
 *              queue and buffers), so a migration has RAM to move as for a
 *              real guest, and postcopy lasts long enough to be cut
 *   span=N     use only the first N MiB of the disk (0 = all of it; the rest is
 *              left as it is, e.g. for data a storage migration must carry)
 */
#include "virtio.h"
#include "vmf.h"

#define DW_MAGIC 0x3130434552464d56ull /* "VMFREC01" */
#define DW_REC_BYTES 512u
#define DW_PANIC_INIT  0xd15c0000u /* + the init error's absolute value */
#define DW_PANIC_WRITE 0xd15c0100u /* + status */
#define DW_PANIC_READ  0xd15c0200u /* + status */
#define DW_PANIC_CHECK 0xd15c0300u /* a record read back is wrong */
#define DW_NS_PER_S 1000000000ull
#define DW_FILL_FROM (VMF_VQ_MEM_BYTES + 4096u) /* the queue page, then the two buffers' page */

static struct vmf_blk dw_dev;
static volatile int dw_ready; /* 1: set up; < 0: failed (the code) */

struct dw {
	unsigned vcpu, writers;
	uint64_t first_sector, slots;
	uint64_t seq;            /* last acknowledged */
	uint64_t rng;
	uint8_t *wbuf, *rbuf;    /* one record each, in the vCPU's range */
	volatile struct vmf_vcpu_stats *st;
};

static uint64_t dw_fnv(const uint8_t *p, uint32_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (uint32_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

/* Record @seq of @d into @buf. */
static void dw_record(const struct dw *d, uint64_t seq, uint64_t now_ns, uint8_t *buf)
{
	uint64_t *w = (uint64_t *)buf, x = seq * 0x9e3779b97f4a7c15ull ^ d->vcpu;

	w[0] = DW_MAGIC;
	w[1] = (uint64_t)d->vcpu | (uint64_t)d->writers << 32;
	w[2] = seq;
	w[3] = d->slots;
	w[4] = now_ns;
	for (unsigned i = 5; i < DW_REC_BYTES / 8 - 1; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w[i] = x;
	}
	w[DW_REC_BYTES / 8 - 1] = dw_fnv(buf, DW_REC_BYTES - 8);
}

static uint64_t dw_sector(const struct dw *d, uint64_t seq)
{
	return d->first_sector + (seq - 1) % d->slots;
}

/* Read back a random record among the last `slots` and check it. */
static void dw_check(struct dw *d)
{
	const uint64_t *w = (const uint64_t *)d->rbuf;
	uint64_t oldest = d->seq > d->slots ? d->seq - d->slots + 1 : 1, s;
	uint8_t status;

	d->rng ^= d->rng << 13;
	d->rng ^= d->rng >> 7;
	d->rng ^= d->rng << 17;
	s = oldest + d->rng % (d->seq - oldest + 1);
	status = vmf_blk_request(&dw_dev, d->vcpu, VIRTIO_BLK_T_IN, dw_sector(d, s), d->rbuf,
				 DW_REC_BYTES);
	if (status != VIRTIO_BLK_S_OK)
		vmf_panic(DW_PANIC_READ + status);
	if (w[0] != DW_MAGIC || w[2] != s || (uint32_t)w[1] != d->vcpu || w[3] != d->slots ||
	    w[DW_REC_BYTES / 8 - 1] != dw_fnv(d->rbuf, DW_REC_BYTES - 8))
		vmf_panic(DW_PANIC_CHECK);
	d->st->passes++;
}

/* vCPU 0: the device, one queue per writer, queue w's page at range[w]. */
static void dw_setup_device(struct vmf_boot_info *bi)
{
	void *mem[8];
	unsigned want = bi->nvcpus < 8 ? bi->nvcpus : 8;
	int r;

	for (unsigned i = 0; i < want; i++)
		mem[i] = (void *)bi->range[i].gpa;
	r = vmf_blk_init(&dw_dev, bi, want, mem);
	if (r == 0 && dw_dev.nqueues == 0)
		r = -5;
	if (vmf_param(bi, "verbose", 1) && r == 0) {
		vmf_puts("diskwriter: ");
		vmf_put_u64(dw_dev.capacity / 2048);
		vmf_puts(" MiB disk, ");
		vmf_put_u64(dw_dev.nqueues);
		vmf_puts(" writers\n");
	}
	__atomic_store_n(&dw_ready, r ? r : 1, __ATOMIC_RELEASE);
}

int vmf_main(unsigned vcpu, struct vmf_boot_info *bi)
{
	uint64_t rate = vmf_param(bi, "rate", 200), every = vmf_param(bi, "check", 4);
	uint64_t limit = vmf_param(bi, "records", 0), base_ns, region, span;
	struct dw d = { .vcpu = vcpu, .st = &bi->stats[vcpu], .rng = 0x2545f4914f6cdd1dull + vcpu };
	int ready;

	d.st->phase = VMF_PHASE_SETUP;
	if (vmf_param(bi, "fill", 0) && bi->range[vcpu].bytes > DW_FILL_FROM)
		vmf_fill((volatile void *)(bi->range[vcpu].gpa + DW_FILL_FROM),
			 bi->range[vcpu].bytes - DW_FILL_FROM);
	if (vcpu == 0)
		dw_setup_device(bi);
	while ((ready = __atomic_load_n(&dw_ready, __ATOMIC_ACQUIRE)) == 0)
		vmf_sleep_us(1000);
	if (ready < 0)
		vmf_panic(DW_PANIC_INIT + (uint32_t)-ready);
	d.writers = dw_dev.nqueues;
	if (vcpu >= d.writers) { /* no queue for this one: idle */
		d.st->phase = VMF_PHASE_RUNNING;
		for (;;)
			vmf_sleep_us(1000000);
	}
	span = dw_dev.capacity * VIRTIO_BLK_SECTOR_BYTES;
	if (vmf_param(bi, "span", 0) && vmf_param(bi, "span", 0) < span >> 20)
		span = vmf_param(bi, "span", 0) << 20;
	region = span / d.writers / 4096 * 4096;
	d.slots = region / DW_REC_BYTES;
	d.first_sector = vcpu * (region / VIRTIO_BLK_SECTOR_BYTES);
	d.wbuf = (uint8_t *)bi->range[vcpu].gpa + VMF_VQ_MEM_BYTES;
	d.rbuf = d.wbuf + DW_REC_BYTES;
	if (d.slots == 0)
		vmf_panic(DW_PANIC_INIT + 6);
	d.st->phase = VMF_PHASE_RUNNING;
	base_ns = rate ? vmf_time_ns() : 0;
	while (!limit || d.seq < limit) {
		uint64_t s = d.seq + 1, now = rate ? vmf_time_ns() : 0;
		uint8_t status;

		if (rate && now < base_ns + (s - 1) * (DW_NS_PER_S / rate)) {
			vmf_sleep_ns(base_ns + (s - 1) * (DW_NS_PER_S / rate) - now);
			continue;
		}
		dw_record(&d, s, now, d.wbuf);
		status = vmf_blk_request(&dw_dev, vcpu, VIRTIO_BLK_T_OUT, dw_sector(&d, s), d.wbuf,
					 DW_REC_BYTES);
		if (status != VIRTIO_BLK_S_OK)
			vmf_panic(DW_PANIC_WRITE + status);
		d.seq = s;
		d.st->writes = s; /* acknowledged */
		if (every && s % every == 0)
			dw_check(&d);
	}
	return 0;
}
