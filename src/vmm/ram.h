/*
 * Guest RAM blocks: memfd-backed, mapped MAP_SHARED so that other processes
 * (vhost-user backends, a CPR successor) can map the very same pages.
 */
#ifndef VMFERRY_VMM_RAM_H
#define VMFERRY_VMM_RAM_H

#include <stdint.h>
#include <stddef.h>

#define RAM_BLOCK_NAME_BYTES 32

struct ram_block {
	char name[RAM_BLOCK_NAME_BYTES];
	uint64_t gpa;   /* guest-physical base */
	uint64_t bytes; /* multiple of 2 MiB */
	int fd;         /* memfd, owned; -1 when not open */
	uint8_t *host;  /* host mapping of the whole block, or NULL */
	uint8_t *alias; /* a second mapping of the same pages, or NULL: postcopy
			 * writes arriving pages there while the guest's mapping
			 * (host, under userfaultfd) does not show them yet */
};

/*
 * Create a block of @bytes at @gpa backed by a new memfd.  Pages are not
 * touched (the memfd is sparse).  Returns 0 or -errno; on error *out is left
 * with fd = -1, host = NULL.  Any thread.
 */
int ram_block_create(const char *name, uint64_t gpa, uint64_t bytes,
		     struct ram_block *out);

/*
 * Adopt an existing memfd (ownership of @fd passes to the block, also on
 * error).  Its size must equal @bytes.  Returns 0 or -errno.
 */
int ram_block_adopt_fd(const char *name, uint64_t gpa, uint64_t bytes, int fd,
		       struct ram_block *out);

/*
 * Allocate and map the pages of [off, off+len) without changing their
 * content (MADV_POPULATE_WRITE), so that later writes - a migration stream,
 * a booting guest - do not pay a page fault each.  Safe while others write
 * the same pages.  0, or -errno (-EINVAL: the kernel lacks it).
 */
int ram_block_populate(struct ram_block *block, uint64_t off, uint64_t len);

/*
 * Map the block a second time at block->alias (idempotent).  0 or -errno.
 * Thread: the one that owns the block's setup (no concurrent users of alias).
 */
int ram_block_map_alias(struct ram_block *block);
/* ram_block_populate() through the alias mapping.  0 or -errno. */
int ram_block_populate_alias(struct ram_block *block, uint64_t off, uint64_t len);

/* Unmap and close; safe on a zeroed or already destroyed block. */
void ram_block_destroy(struct ram_block *block);

/* True when [gpa, gpa+len) lies inside the block. */
int ram_block_contains(const struct ram_block *block, uint64_t gpa, uint64_t len);

#endif
