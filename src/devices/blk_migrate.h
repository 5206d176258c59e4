/*
 * Storage migration of a disk only the source has (docs/devices.md
 * "Storage migration"): the disk's blocks travel in the migration stream as
 * section parts of the virtio-blk section (id 10, instance = disk), beside
 * RAM, while the guest runs; guest writes after the setup are tracked in a
 * dirty-block bitmap and sent again; the last dirty blocks go at the stop,
 * before the device's section.  The destination writes them into the file
 * given with `--disk file=NEW,incoming=on`.
 *
 * The block parts on the wire (docs/stream-format.md "virtio-blk block
 * parts"): a 24-byte head, little-endian -
 *   u8 kind, u8[3] 0, u32 a, u64 b, u64 c
 *   SETUP (1): a = block bytes, b = disk bytes, c = blocks (once, first)
 *   DATA  (2): a = 0, b = first block, c = blocks; then the blocks' bytes
 *              (the last block of the disk may be short)
 *   ZERO  (3): a = 0, b = first block, c = blocks: all zero (a hole)
 *   POSTCOPY (4): a = 0, b = 0, c = 0: in the postcopy package - the blocks
 *              not sent yet come while the guest runs on the destination
 *   STALE (5): a = 0, b = first block, c = blocks: in the postcopy package,
 *              before POSTCOPY - copies sent earlier are out of date (the
 *              guest wrote them since): they count as not received (RAM's
 *              DISCARD, for a disk)
 *
 * Postcopy: the destination's guest reads a block that has not arrived ->
 * its request waits in the disk (in flight) and the disk asks the source
 * for it (mig_request, on the urgent channel); a write covering whole
 * missing blocks needs no fetch, and the block then counts as received so
 * a later copy from the source never overwrites it.
 * Threads: the source's walk (save_iterate, save_complete) runs on the
 * migration thread and the dirty marks on the disk's I/O thread, through an
 * atomic bitmap; the destination's writes on the load thread, before any
 * vCPU runs; query-block / query-migrate read atomics only.
 */
#ifndef VMFERRY_DEVICES_BLK_MIGRATE_H
#define VMFERRY_DEVICES_BLK_MIGRATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct virtio_blk;
struct mig_save;
struct json_object;

/*
 * 64 KiB blocks: a 4 GiB disk is 65,536 bits of dirty bitmap (8 KiB), a
 * guest's 512-byte record dirties one block (64 KiB re-sent, not MiBs), and
 * a part of 16 blocks (1 MiB, the section limit) amortises its 41 bytes of
 * headers to nothing.  docs/devices.md says more.
 */
#define BLKMIG_BLOCK_BYTES (64u * 1024u)
#define BLKMIG_HEAD_BYTES 24u
#define BLKMIG_SETUP_ID_BYTES 20u /* SETUP may carry the source's disk id after its head */
#define BLKMIG_MIN_BLOCK_BYTES 4096u
#define BLKMIG_MAX_BLOCK_BYTES (1u << 19)
/* Data bytes in one DATA part: with its head, within VMSTATE_SECTION_MAX_BYTES. */
#define BLKMIG_PART_MAX_DATA (1u << 19)
/* A precopy step sends at most this many data bytes per disk (zero runs are free). */
#define BLKMIG_STEP_BYTES (32u << 20)

enum blkmig_kind {
	BLKMIG_SETUP = 1,
	BLKMIG_DATA = 2,
	BLKMIG_ZERO = 3,
	BLKMIG_POSTCOPY = 4,
	BLKMIG_STALE = 5,
};
#define BLKMIG_REQ_QUEUE 64u     /* destination: requests waiting to be sent */
#define BLKMIG_REQ_MAX_BYTES (8u << 20) /* one request asks for at most this */
#define BLKMIG_LAT_SAMPLES 4096u /* destination: request latencies kept */

/* A disk's geometry, as SETUP gives it. */
struct blkmig_geom {
	uint32_t block_bytes;
	uint64_t disk_bytes;
	uint64_t nblocks;
};

/* One part, parsed. */
struct blkmig_part {
	enum blkmig_kind kind;
	struct blkmig_geom geom;    /* SETUP */
	const uint8_t *id;          /* SETUP: the source disk's id (GET_ID), or NULL */
	uint64_t first, nblocks;    /* DATA, ZERO */
	const uint8_t *data;        /* DATA: into the part */
	uint32_t data_bytes;
};

/*
 * Parse and check one part of @len bytes.  @geom: the disk's geometry from
 * its SETUP, or NULL before one (then only SETUP is accepted, and SETUP is
 * refused after one).  0, or -EBADMSG with a message in @err.  Pure: any
 * thread.
 */
int blkmig_part_parse(const uint8_t *p, uint32_t len, const struct blkmig_geom *geom,
		      struct blkmig_part *out, char *err, size_t errlen);
/* Write a part's head into @p (BLKMIG_HEAD_BYTES). */
void blkmig_put_head(uint8_t *p, enum blkmig_kind kind, uint32_t a, uint64_t b, uint64_t c);
/* Bytes of data blocks [@first, +@n) carry on a disk of @g (the last may be short). */
uint64_t blkmig_range_bytes(const struct blkmig_geom *g, uint64_t first, uint64_t n);

/* A disk's migration of its data, both sides. */
struct blkmig {
	bool incoming;                  /* destination: --disk ...,incoming=on */
	struct blkmig_geom geom;        /* this disk's */
	/* source, under the disk's lock (the pointer; bits are atomic) */
	_Atomic uint64_t *dirty;        /* blocks still to send; NULL: not migrating data */
	uint64_t words;
	uint64_t cursor;                /* migration thread: where the walk goes on */
	uint8_t *buf;                   /* migration thread: a part being built */
	uint8_t *req_buf;               /* return-path thread: a requested part */
	/*
	 * Destination: load thread until the guest runs, then under @lock -
	 * not the disk's lock, which the disk thread holds while it writes
	 * guest RAM, where it may wait for a postcopy page that comes behind
	 * a block part on the same channel.  Order: disk lock, then @lock;
	 * nothing touches guest RAM with @lock held.
	 */
	pthread_mutex_t lock;
	struct migration *m;            /* for mig_request */
	unsigned index;                 /* the disk's instance */
	/*
	 * Blocks written here (or by the guest).  Set and cleared under @lock,
	 * read without it by the resume handshake (a snapshot is enough: a
	 * block landing meanwhile is sent again and skipped).
	 */
	_Atomic uint64_t *received;
	_Atomic uint64_t nreceived;
	bool got_setup;
	bool has_src_id;                /* SETUP carried the source disk's id: */
	uint8_t src_id[BLKMIG_SETUP_ID_BYTES]; /* the disk answers GET_ID with it */
	bool settle;                    /* every block in, fdatasync still to do */
	struct blkmig_wb *wb;           /* load thread: write-behind (blk_migrate.c), or NULL */
	bool postcopy_in;               /* POSTCOPY seen: the rest comes after RUN */
	atomic_bool pc_active;          /* the guest runs and blocks still arrive */
	atomic_bool guest_runs;         /* postcopy: the guest ran here; from now on a
					 * block held is never written again (copies
					 * still in flight after the last one arrive) */
	uint64_t *requested;            /* asked for already (@lock) */
	atomic_bool rerequest;          /* a resume: forget what was asked for */
	struct { uint64_t first, n; } rq[BLKMIG_REQ_QUEUE]; /* to ask for */
	unsigned nrq;
	uint32_t *lat_us;               /* BLKMIG_LAT_SAMPLES waits, a ring */
	uint64_t nlat;
	_Atomic uint64_t requests;      /* source: requests served; destination: sent */
	/* figures (atomic: read by query-block and query-migrate) */
	atomic_bool migrating;          /* source: sending; destination: receiving */
	_Atomic uint64_t bytes, blocks, zero_blocks; /* sent or received: data bytes,
						       * data blocks, zero blocks */
	_Atomic uint64_t dirty_bytes;   /* source: still to send, at the last look */
	_Atomic uint64_t dirtied;       /* source: blocks guest writes marked again */
};

/* Set @bm up for a disk of @disk_bytes; @incoming as --disk said.  Allocates nothing. */
void blkmig_init(struct blkmig *bm, uint64_t disk_bytes, bool incoming);
/* Free what a migration left (the disk's thread is gone). */
void blkmig_destroy(struct blkmig *bm);

/*
 * Disk I/O thread, disk lock held: a write, discard or write-zeroes of
 * [@off, +@len) completed (or failed, having perhaps written some): mark its
 * blocks to be sent again.
 */
void blkmig_mark(struct blkmig *bm, uint64_t off, uint64_t len);

/*
 * Source, migration thread (the state's callbacks for disk @instance).
 * save_setup: the bitmap (every block), SETUP.  pending: dirty bytes.
 * iterate: one bounded step.  final: every dirty block (the disk paused).
 * cleanup: drop the bitmap.  0 or -errno (a read error said in the log).
 */
int blkmig_save_setup(struct virtio_blk *b, struct mig_save *sv, uint32_t instance);
uint64_t blkmig_save_pending(struct virtio_blk *b);
int blkmig_save_iterate(struct virtio_blk *b, struct mig_save *sv, uint32_t instance);
int blkmig_save_final(struct virtio_blk *b, struct mig_save *sv, uint32_t instance,
		      bool postcopy);
void blkmig_save_cleanup(struct virtio_blk *b);
/*
 * Source, postcopy.  push (migration thread): a bounded step of the blocks
 * not sent yet, what is left into *@left_bytes.  request (return-path
 * thread): blocks [@offset, +@len) now, on @sv.  resume: what the
 * destination holds (@nbits bits; 0: it receives nothing).  0 or -errno.
 */
int blkmig_save_push(struct virtio_blk *b, struct mig_save *sv, uint32_t instance,
		     uint64_t *left_bytes);
int blkmig_save_request(struct virtio_blk *b, struct mig_save *sv, uint32_t instance,
			uint64_t offset, uint32_t len);
int blkmig_save_resume(struct virtio_blk *b, const uint8_t *bits, uint64_t nbits, char *err,
		       size_t errlen);

/*
 * Destination, postcopy.  load_pending: bytes still to arrive.  received:
 * the received bitmap as bytes (malloc'd; NULL, 0 when not receiving).
 */
uint64_t blkmig_load_pending(struct virtio_blk *b);
int blkmig_load_received(struct virtio_blk *b, uint8_t **bits, uint64_t *nbits);
/*
 * Disk's I/O thread, disk lock held (takes the blkmig lock): may a request of @type on [@off,
 * +@len) go now?  0: yes (a write's whole missing blocks now count as
 * received); 1: it waits - the blocks it lacks are queued to be asked for.
 */
int blkmig_io_wait(struct virtio_blk *b, uint8_t type, uint64_t off, uint64_t len);
/* Disk thread: a request that waited @waited_ns goes now (latency figures). */
void blkmig_io_waited(struct virtio_blk *b, uint64_t waited_ns);
/* Disk's I/O thread, lock NOT held: ask the source for what is queued. */
void blkmig_send_requests(struct virtio_blk *b);

/*
 * Destination, load thread: one part for disk @b; every part is in (no
 * SETUP on an incoming disk, a block missing, fdatasync).  0 or -errno with
 * @err.
 */
int blkmig_load_part(struct virtio_blk *b, const uint8_t *data, uint32_t len, char *err,
		     size_t errlen);
int blkmig_load_complete(struct virtio_blk *b, unsigned index, char *err, size_t errlen);
/*
 * Destination, load thread, the guest running: fdatasync what
 * blkmig_load_complete found whole (outside the pause).  1 done, 0 nothing
 * to do, -errno with @err.  Source, migration thread: whether this disk's
 * data moves, so the destination will settle it.
 */
int blkmig_load_settle(struct virtio_blk *b, unsigned index, char *err, size_t errlen);
bool blkmig_save_settles(struct virtio_blk *b);

/* query-migrate's "disk" object: the disks' figures summed. */
struct blkmig_sums {
	unsigned disks, migrating, incoming;
	uint64_t bytes, blocks, zero_blocks, dirty_bytes, dirtied, requests;
	uint32_t lat_p50_us, lat_p99_us; /* the largest of the disks' */
};
/* query-block's fields for @bm into @o; @bm's figures added to @s. */
void blkmig_query_block(struct blkmig *bm, struct json_object *o);
void blkmig_query_add(struct virtio_blk *b, struct blkmig_sums *s);

#endif
