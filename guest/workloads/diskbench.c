/*
 * diskbench: drives the first block device as hard as a benchmark asks and
 * counts what completes, so that bench/storage can set the guest-visible
 * IOPS and throughput of virtio-blk against fio on the host.
 *
 * vCPU 0 sets the device up with one queue per job (min(jobs, nvcpus, the
 * device's queues)); job j then owns region j of the disk (an equal share
 * in whole blocks) and keeps `depth` requests in flight on its queue,
 * starting a new one as each completes: random blocks (xorshift) or the
 * next block in turn, wrapping at the region's end.  stats.writes and
 * stats.passes count completed requests (bytes = requests * bs); the host
 * reads them with query-workload and divides by its own clock.  A failed
 * request is a guest panic (VMF_PORT_PANIC, DB_PANIC_* below).  vCPUs
 * without a job idle.
 * Params:
 *   mode=N   1 random read, 2 random write, 3 sequential read, 4 sequential
 *            write (default 1)
 *   bs=N     bytes per request, a multiple of 512 up to 1 MiB (default 4096)
 *   depth=N  requests in flight per job, 1..VMF_BLK_MAX_INFLIGHT (default 1)
 *   jobs=N   queues driven at once (default 1)
 */
#include "virtio.h"
#include "vmf.h"

#define DB_PANIC_INIT 0xdb000000u /* + the init error's absolute value */
#define DB_PANIC_IO   0xdb000100u /* + status */
#define DB_PANIC_ARGS 0xdb000200u /* a bad param */
#define DB_MAX_BS     (1u << 20)
#define DB_MAX_JOBS   8u

enum { DB_RANDREAD = 1, DB_RANDWRITE, DB_SEQREAD, DB_SEQWRITE };

static struct vmf_blk db_dev;
static volatile int db_ready; /* 1: set up; < 0: failed (the code) */

/* vCPU 0: the device, one queue per job, queue j's page at range[j]. */
static void db_setup_device(struct vmf_boot_info *bi, unsigned jobs)
{
	void *mem[DB_MAX_JOBS];
	int r;

	for (unsigned i = 0; i < jobs; i++)
		mem[i] = (void *)bi->range[i].gpa;
	r = vmf_blk_init(&db_dev, bi, jobs, mem);
	if (r == 0 && db_dev.nqueues == 0)
		r = -5;
	__atomic_store_n(&db_ready, r ? r : 1, __ATOMIC_RELEASE);
}

static uint64_t db_next_block(uint64_t *rng, uint64_t *cursor, uint64_t nblocks, int random)
{
	uint64_t b;

	if (!random) {
		b = *cursor;
		*cursor = (b + 1) % nblocks;
		return b;
	}
	*rng ^= *rng << 13;
	*rng ^= *rng >> 7;
	*rng ^= *rng << 17;
	return *rng % nblocks;
}

int vmf_main(unsigned vcpu, struct vmf_boot_info *bi)
{
	uint64_t mode = vmf_param(bi, "mode", DB_RANDREAD), bs = vmf_param(bi, "bs", 4096);
	uint64_t depth = vmf_param(bi, "depth", 1), jobs = vmf_param(bi, "jobs", 1);
	volatile struct vmf_vcpu_stats *st = &bi->stats[vcpu];
	uint64_t rng = 0x2545f4914f6cdd1dull + vcpu * 0x9e3779b97f4a7c15ull, cursor = 0;
	uint64_t region_blocks, first_sector;
	int random = mode == DB_RANDREAD || mode == DB_RANDWRITE;
	uint32_t type = mode == DB_RANDREAD || mode == DB_SEQREAD ? VIRTIO_BLK_T_IN
								    : VIRTIO_BLK_T_OUT;
	uint8_t *buf;
	int ready;

	st->phase = VMF_PHASE_SETUP;
	if (jobs > bi->nvcpus)
		jobs = bi->nvcpus;
	if (mode < DB_RANDREAD || mode > DB_SEQWRITE || !bs || bs % 512 || bs > DB_MAX_BS ||
	    !depth || depth > VMF_BLK_MAX_INFLIGHT || !jobs || jobs > DB_MAX_JOBS ||
	    VMF_VQ_MEM_BYTES + depth * bs > bi->range[vcpu].bytes)
		vmf_panic(DB_PANIC_ARGS);
	if (vcpu == 0)
		db_setup_device(bi, (unsigned)jobs);
	while ((ready = __atomic_load_n(&db_ready, __ATOMIC_ACQUIRE)) == 0)
		vmf_sleep_us(1000);
	if (ready < 0)
		vmf_panic(DB_PANIC_INIT + (uint32_t)-ready);
	if (vcpu >= db_dev.nqueues) { /* no job for this one: idle */
		st->phase = VMF_PHASE_RUNNING;
		for (;;)
			vmf_sleep_us(1000000);
	}
	region_blocks = db_dev.capacity * VIRTIO_BLK_SECTOR_BYTES / db_dev.nqueues / bs;
	first_sector = vcpu * region_blocks * (bs / VIRTIO_BLK_SECTOR_BYTES);
	if (region_blocks == 0)
		vmf_panic(DB_PANIC_ARGS);
	/* Each slot's buffer after the queue's page, in the vCPU's own range. */
	buf = (uint8_t *)bi->range[vcpu].gpa + VMF_VQ_MEM_BYTES;
	for (uint64_t i = 0; type == VIRTIO_BLK_T_OUT && i < depth * bs; i += 8)
		*(volatile uint64_t *)(buf + i) = (i * 0x9e3779b97f4a7c15ull) ^ vcpu;
	st->phase = VMF_PHASE_RUNNING;
	for (unsigned s = 0; s < depth; s++) {
		uint64_t b = db_next_block(&rng, &cursor, region_blocks, random);

		vmf_blk_submit(&db_dev, vcpu, s, type,
			       first_sector + b * (bs / VIRTIO_BLK_SECTOR_BYTES), buf + s * bs,
			       (uint32_t)bs);
	}
	for (;;) {
		uint8_t status;
		unsigned s = vmf_blk_complete(&db_dev, vcpu, &status);
		uint64_t b;

		if (status != VIRTIO_BLK_S_OK)
			vmf_panic(DB_PANIC_IO + status);
		st->writes++;
		st->passes++;
		b = db_next_block(&rng, &cursor, region_blocks, random);
		vmf_blk_submit(&db_dev, vcpu, s, type,
			       first_sector + b * (bs / VIRTIO_BLK_SECTOR_BYTES), buf + s * bs,
			       (uint32_t)bs);
	}
}
