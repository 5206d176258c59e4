/*
 * Postcopy, destination side: guest RAM under userfaultfd (missing mode).
 *
 * Every page that has not arrived (never received in precopy, or discarded
 * because the source dirtied it after sending) is a hole in the memfd, and
 * before the destination's vCPUs run the RAM is registered with userfaultfd.
 * A received page that reads as a hole was a zero page: the fault thread
 * places a zero page there.  A vCPU (inside KVM_RUN) or a VMM thread that touches such a
 * page sleeps in the kernel; the fault thread reads the fault, asks the
 * source for the page once (duplicate faults on a page in flight send no
 * second request), and whoever receives the page - main channel or urgent
 * channel - places it atomically with UFFDIO_COPY, which wakes the waiters.
 * A UFFDIO_COPY that finds the page already there (EEXIST: the other
 * channel won) still wakes the range.
 *
 *   vCPU            fault thread               urgent thread / load thread
 *   touch p ->      read fault p
 *   (sleeps)        requested[p]? no -> set,
 *                   send PAGE_REQ(p) ----> source
 *                                              <- page p: UFFDIO_COPY p
 *   wakes  <------------------------------------  (wakes every waiter)
 *
 * Thread safety: the bitmaps are atomics; place/discard/mark may be called
 * from any thread.
 */
#ifndef VMFERRY_MIGRATION_POSTCOPY_H
#define VMFERRY_MIGRATION_POSTCOPY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct postcopy_dst;
struct ram_block;

/* Send a page request for @npages at @first_page; 0 or -errno.  Fault thread. */
typedef int postcopy_request_fn(void *opaque, uint32_t block, uint64_t first_page,
				uint32_t npages);

/*
 * Minor mode.  When the block has an alias mapping (ram_block_map_alias),
 * guest RAM stays allocated - preallocated in the background through the
 * alias until the switch, so no arriving page pays for its allocation - and userfaultfd watches the guest's mapping in minor mode as
 * well: a page that is not received has memory but no mapping in the guest's
 * view.  An arriving page is claimed (one writer per page, ever), copied
 * into the alias and mapped with UFFDIO_CONTINUE.  Discarding unmaps
 * instead of punching.  Without an alias: missing mode, UFFDIO_COPY, as
 * above.  (UFFDIO_MOVE would save the copy, but it works on private
 * anonymous memory only; guest RAM is a shared memfd.)
 *
 * True when the kernel has minor faults on shmem.
 */
bool postcopy_minor_supported(void);

/*
 * Track one RAM block (the VM's block 0); opens the userfaultfd and starts
 * the fault thread (nothing faults before postcopy_dst_listen).  The thread
 * runs real-time (thread_set_latency_critical) while @realtime is true or
 * NULL, else in the normal policy; it looks at each fault and when
 * postcopy_dst_policy_changed says to.  0 or -errno.
 */
int postcopy_dst_create(struct ram_block *block, postcopy_request_fn *request, void *opaque,
			const atomic_bool *realtime, struct postcopy_dst **out);
/* Stop the fault thread, unregister, free.  NULL is fine. */
void postcopy_dst_destroy(struct postcopy_dst *pd);
/*
 * *@realtime changed: the fault thread takes the new policy now, not at the
 * next fault (which may never come once the guest's working set is here).
 * Any thread.
 */
void postcopy_dst_policy_changed(struct postcopy_dst *pd);

/* Precopy phase: pages written in place (plain stores) now hold current data. */
void postcopy_dst_mark_received(struct postcopy_dst *pd, uint64_t first_page, uint64_t npages);
/*
 * Postcopy was advised: nothing has arrived, so every page is given back to
 * the memfd now (it costs time proportional to what was allocated, which is
 * better spent here than at the switch) - in minor mode only unmapped from
 * the guest's view.  0 or -errno.
 */
int postcopy_dst_prepare(struct postcopy_dst *pd);
/* The source dirtied these after sending them: punched out, fetched again.
 * 0 or -errno. */
int postcopy_dst_discard(struct postcopy_dst *pd, uint64_t first_page, uint64_t npages);

/*
 * Switch to postcopy: register the RAM with userfaultfd (the userfaultfd and
 * its fault thread exist since postcopy_dst_create, so this is quick).
 * Pages not received are holes (missing mode) or unmapped (minor mode)
 * since postcopy_dst_prepare or a discard, so they fault.  Call before any
 * vCPU runs.  0 or -errno (logged).
 */
int postcopy_dst_listen(struct postcopy_dst *pd);

/*
 * Place @npages pages at @first_page (data: @npages * 4096 bytes; NULL for
 * zero pages) atomically; wakes every thread waiting on them.  Pages that
 * arrived already are left alone.  0 or -errno.
 */
int postcopy_dst_place(struct postcopy_dst *pd, uint64_t first_page, uint32_t npages,
		       const void *data);

/* Minor mode (an alias mapping): postcopy_dst_fill works. */
bool postcopy_dst_minor(const struct postcopy_dst *pd);
/*
 * Minor mode, without a bounce copy: writes the next @npages pages of the
 * record into @dst (the alias mapping), or consumes and drops them when
 * @dst is NULL (pages another writer placed or is placing).  0 or -errno.
 */
typedef int postcopy_fill_fn(void *opaque, uint8_t *dst, uint64_t npages);
/*
 * Place @npages data pages at @first_page, read by @fill straight into
 * guest memory (the alias), in order; each page is written at most once,
 * as with postcopy_dst_place.  The caller makes sure the bytes are at hand
 * (already received), since pages are claimed before @fill runs.  0, or
 * the error of @fill or of mapping.
 */
int postcopy_dst_fill(struct postcopy_dst *pd, uint64_t first_page, uint32_t npages,
		      postcopy_fill_fn *fill, void *opaque);

/* Pages in the block. */
uint64_t postcopy_dst_npages(struct postcopy_dst *pd);
/*
 * Postcopy recovery: the RECEIVED bitmap into @out, (npages + 7) / 8 bytes,
 * bit i of byte j = page 8j + i (the wire layout of RP RECV_BITMAP).  Call
 * while no channel places pages (paused), or it is a snapshot.
 */
void postcopy_dst_received_bits(struct postcopy_dst *pd, uint8_t *out);
/*
 * Postcopy recovery: call @fn for each page requested and not received (a
 * request the paused connection lost, or made while paused), in page
 * order, until it fails.  Returns how many were passed on.
 */
uint64_t postcopy_dst_outstanding(struct postcopy_dst *pd, postcopy_request_fn *fn, void *opaque);

/* Pages still missing (0 = the guest's RAM is complete). */
uint64_t postcopy_dst_missing(struct postcopy_dst *pd);

struct postcopy_dst_stats {
	uint64_t requests;         /* page requests sent */
	uint64_t faults;           /* faults read (duplicates included) */
	uint64_t pages_requested_placed; /* placed after a request */
	uint64_t latency_p50_ns, latency_p99_ns, latency_max_ns; /* request -> placed */
	uint64_t blocked_ns;       /* sum of request -> placed */
};
void postcopy_dst_get_stats(struct postcopy_dst *pd, struct postcopy_dst_stats *st);

#endif
