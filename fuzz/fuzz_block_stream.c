/*
 * libFuzzer target: storage migration's block parts on the destination
 * (src/devices/blk_migrate.c, blkmig_load_part and blkmig_load_complete)
 * against a hostile source.
 *
 * Input: a sequence of parts, each a u16 little-endian length and that many
 * bytes (the engine hands parts over whole, at most 1 MiB; here at most
 * 64 KiB).  They go in order to an incoming disk of 64 KiB + 512 bytes on a
 * memfd; after the first refused one the rest is dropped, as the migration
 * would fail there.  Once a POSTCOPY part came, the guest "runs"
 * (load_complete) and each later part is followed by a guest read of its
 * first block (blkmig_io_wait), as in postcopy.  Checked: a refusal always
 * says why, nothing is written past the disk's end, and load_complete
 * accepts only when every block arrived (or, in postcopy, leaves the rest
 * pending).
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "devices/virtio_blk_internal.h"

#define FUZZ_DISK (64u * 1024u + 512u)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct virtio_blk fuzz_disk;

static void fuzz_disk_reset(void)
{
	if (!fuzz_disk.name[0]) {
		fuzz_disk.fd = memfd_create("fuzz-disk", MFD_CLOEXEC);
		assert(fuzz_disk.fd >= 0);
		snprintf(fuzz_disk.name, sizeof(fuzz_disk.name), "disk0");
		snprintf(fuzz_disk.opts.path, sizeof(fuzz_disk.opts.path), "memfd");
		fuzz_disk.bytes = FUZZ_DISK;
		fuzz_disk.opts.incoming = true;
		fuzz_disk.ctl_efd = -1;
		pthread_mutex_init(&fuzz_disk.lock, NULL);
	}
	blkmig_destroy(&fuzz_disk.mig);
	assert(ftruncate(fuzz_disk.fd, 0) == 0 && ftruncate(fuzz_disk.fd, FUZZ_DISK) == 0);
	blkmig_init(&fuzz_disk.mig, FUZZ_DISK, true);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[512];
	struct stat st;
	int r = 0;

	bool running = false;

	fuzz_disk_reset();
	while (size >= 2 && !r) {
		uint32_t len = (uint32_t)data[0] | (uint32_t)data[1] << 8;

		data += 2;
		size -= 2;
		if (len > size)
			len = (uint32_t)size;
		err[0] = 0;
		r = blkmig_load_part(&fuzz_disk, data, len, err, sizeof(err));
		assert(!r || err[0]);
		if (!r && running && len >= BLKMIG_HEAD_BYTES) {
			uint64_t off = (uint64_t)data[8] * 4096u % FUZZ_DISK;

			pthread_mutex_lock(&fuzz_disk.lock);
			(void)blkmig_io_wait(&fuzz_disk, VIRTIO_BLK_T_IN, off, 512);
			fuzz_disk.mig.nrq = 0; /* nobody sends them here */
			pthread_mutex_unlock(&fuzz_disk.lock);
		}
		if (!r && !running && fuzz_disk.mig.postcopy_in) {
			r = blkmig_load_complete(&fuzz_disk, 0, err, sizeof(err));
			assert(!r || err[0]);
			running = !r;
			if (r)
				break;
		}
		data += len;
		size -= len;
	}
	assert(fstat(fuzz_disk.fd, &st) == 0 && st.st_size == FUZZ_DISK);
	if (running) {
		assert(blkmig_load_pending(&fuzz_disk) ==
		       (fuzz_disk.mig.geom.nblocks - fuzz_disk.mig.nreceived) *
		       fuzz_disk.mig.geom.block_bytes * atomic_load(&fuzz_disk.mig.pc_active));
	} else if (!r) {
		err[0] = 0;
		r = blkmig_load_complete(&fuzz_disk, 0, err, sizeof(err));
		assert(!r || err[0]);
		if (!r) { /* every block arrived */
			for (uint64_t i = 0; i < fuzz_disk.mig.geom.nblocks; i++)
				assert(fuzz_disk.mig.received[i / 64] & (1ull << (i % 64)));
		}
	}
	return 0;
}
