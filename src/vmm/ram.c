#include "vmm/ram.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"

static int ram_block_map(struct ram_block *out)
{
	void *p = mmap(NULL, out->bytes, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_NORESERVE, out->fd, 0);

	if (p == MAP_FAILED) {
		int err = -errno;

		log_error("ram: mmap of block %s (%llu bytes) failed: %s", out->name,
			  (unsigned long long)out->bytes, strerror(errno));
		return err;
	}
	out->host = p;
	return 0;
}

static void ram_block_init(struct ram_block *out, const char *name,
			   uint64_t gpa, uint64_t bytes)
{
	memset(out, 0, sizeof(*out));
	snprintf(out->name, sizeof(out->name), "%s", name);
	out->gpa = gpa;
	out->bytes = bytes;
	out->fd = -1;
}

int ram_block_create(const char *name, uint64_t gpa, uint64_t bytes,
		     struct ram_block *out)
{
	int err;

	ram_block_init(out, name, gpa, bytes);
	out->fd = memfd_create(name, MFD_CLOEXEC);
	if (out->fd < 0) {
		err = -errno;
		log_error("ram: memfd_create(%s) failed: %s", name, strerror(errno));
		return err;
	}
	if (ftruncate(out->fd, (off_t)bytes) < 0) {
		err = -errno;
		log_error("ram: sizing block %s to %llu bytes failed: %s", name,
			  (unsigned long long)bytes, strerror(errno));
		goto fail;
	}
	err = ram_block_map(out);
	if (err)
		goto fail;
	return 0;
fail:
	close(out->fd);
	out->fd = -1;
	return err;
}

int ram_block_adopt_fd(const char *name, uint64_t gpa, uint64_t bytes, int fd,
		       struct ram_block *out)
{
	struct stat st;
	int err;

	ram_block_init(out, name, gpa, bytes);
	out->fd = fd;
	if (fstat(fd, &st) < 0) {
		err = -errno;
		log_error("ram: fstat of inherited fd for %s failed: %s", name, strerror(errno));
		goto fail;
	}
	if ((uint64_t)st.st_size != bytes) {
		log_error("ram: inherited fd for %s has %lld bytes, expected %llu", name,
			  (long long)st.st_size, (unsigned long long)bytes);
		err = -EINVAL;
		goto fail;
	}
	err = ram_block_map(out);
	if (err)
		goto fail;
	return 0;
fail:
	close(out->fd);
	out->fd = -1;
	return err;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

int ram_block_populate(struct ram_block *block, uint64_t off, uint64_t len)
{
	if (off > block->bytes || len > block->bytes - off)
		return -EINVAL;
	if (madvise(block->host + off, len, MADV_POPULATE_WRITE) < 0)
		return -errno;
	return 0;
}

int ram_block_map_alias(struct ram_block *block)
{
	void *p;

	if (block->alias)
		return 0;
	p = mmap(NULL, block->bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, block->fd, 0);
	if (p == MAP_FAILED) {
		int err = -errno;

		log_error("ram: second mapping of block %s failed: %s", block->name, strerror(errno));
		return err;
	}
	block->alias = p;
	return 0;
}

int ram_block_populate_alias(struct ram_block *block, uint64_t off, uint64_t len)
{
	if (!block->alias || off > block->bytes || len > block->bytes - off)
		return -EINVAL;
	if (madvise(block->alias + off, len, MADV_POPULATE_WRITE) < 0)
		return -errno;
	return 0;
}

void ram_block_destroy(struct ram_block *block)
{
	if (block->host)
		munmap(block->host, block->bytes);
	block->host = NULL;
	if (block->alias)
		munmap(block->alias, block->bytes);
	block->alias = NULL;
	if (block->fd >= 0)
		close(block->fd);
	block->fd = -1;
}

int ram_block_contains(const struct ram_block *block, uint64_t gpa, uint64_t len)
{
	return gpa >= block->gpa && len <= block->bytes &&
	       gpa - block->gpa <= block->bytes - len;
}
