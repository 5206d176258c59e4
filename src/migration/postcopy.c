#include "migration/postcopy.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util/log.h"
#include "vmm/ram.h"

#define PC_PAGE 4096ull
#define PC_ZERO_PAGES 64u
/*
 * Lazy mapping: a fault on a page that arrived and is not mapped yet maps
 * it and up to this many more received pages after it, so a vCPU walking
 * through memory the push delivered ahead of it faults once per window,
 * not once per page.
 */
#define PC_MAP_WINDOW 128u

struct postcopy_dst {
	struct ram_block *block;
	uint64_t npages;
	postcopy_request_fn *request;
	void *opaque;
	bool minor;                   /* minor mode: block->alias, see postcopy.h */
	bool lazy;                    /* minor mode: map arriving pages only when waited for */
	_Atomic uint64_t *received;   /* bit per page */
	_Atomic uint64_t *claimed;    /* minor mode: a writer owns the page's content */
	_Atomic uint64_t *requested;  /* bit per page */
	_Atomic uint64_t *waiting;    /* lazy: a thread faulted on the page */
	_Atomic uint64_t *mapped;     /* lazy: in the guest's mapping */
	_Atomic uint64_t *req_ns;     /* per page: when requested, 0 = not waiting */
	_Atomic uint64_t nreceived;
	int uffd;                     /* -1 until listening */
	int stop_fd;
	int policy_fd;                /* postcopy_dst_policy_changed: look at @realtime */
	pthread_t thread;
	bool thread_running;
	atomic_bool listening;
	const atomic_bool *realtime;  /* the fault thread's policy (NULL: real-time), see create */

	pthread_mutex_t stats_lock;   /* protects samples */
	uint32_t *samples_us;         /* latency samples, npages at most */
	uint64_t nsamples;
	_Atomic uint64_t requests, faults, blocked_ns, max_ns;
};

static const uint8_t pc_zero[PC_ZERO_PAGES * PC_PAGE] __attribute__((aligned(4096)));

static bool pc_test(_Atomic uint64_t *bits, uint64_t p)
{
	return atomic_load(&bits[p / 64]) & (1ull << (p % 64));
}

/* Set bit @p; returns whether it was set before. */
static bool pc_test_and_set(_Atomic uint64_t *bits, uint64_t p)
{
	return atomic_fetch_or(&bits[p / 64], 1ull << (p % 64)) & (1ull << (p % 64));
}

static bool pc_test_and_clear(_Atomic uint64_t *bits, uint64_t p)
{
	return atomic_fetch_and(&bits[p / 64], ~(1ull << (p % 64))) & (1ull << (p % 64));
}

static int pc_open(struct postcopy_dst *pd);

/* The bits of word @w that fall in [@p, @end). */
static uint64_t pc_word_mask(uint64_t w, uint64_t p, uint64_t end)
{
	uint64_t lo = p > w * 64 ? p - w * 64 : 0, hi = end < w * 64 + 64 ? end - w * 64 : 64;

	return (hi == 64 ? ~0ull : (1ull << hi) - 1) & ~((1ull << lo) - 1);
}

/* Set bits [@p, @p + @n), a word at a time; how many were clear before. */
static uint64_t pc_set_range_count(_Atomic uint64_t *bits, uint64_t p, uint64_t n)
{
	uint64_t fresh = 0;

	for (uint64_t w = p / 64; n && w <= (p + n - 1) / 64; w++) {
		uint64_t mask = pc_word_mask(w, p, p + n);

		fresh += (uint64_t)__builtin_popcountll(mask & ~atomic_fetch_or(&bits[w], mask));
	}
	return fresh;
}

static void pc_set_range(_Atomic uint64_t *bits, uint64_t p, uint64_t n)
{
	for (uint64_t q = p; q < p + n; q++)
		atomic_fetch_or(&bits[q / 64], 1ull << (q % 64));
}

/* Whether any bit of [@p, @p + @n) is set. */
static bool pc_any(_Atomic uint64_t *bits, uint64_t p, uint64_t n)
{
	for (uint64_t q = p; q < p + n; q++) {
		uint64_t w = atomic_load(&bits[q / 64]) >> (q % 64);

		if (w & 1)
			return true;
		if (!w) /* none further in this word */
			q |= 63;
	}
	return false;
}

int postcopy_dst_create(struct ram_block *block, postcopy_request_fn *request, void *opaque,
			const atomic_bool *realtime, struct postcopy_dst **out)
{
	struct postcopy_dst *pd = calloc(1, sizeof(*pd));
	uint64_t words;
	int err;

	if (!pd)
		return -ENOMEM;
	pd->block = block;
	pd->npages = block->bytes / PC_PAGE;
	words = (pd->npages + 63) / 64;
	pd->request = request;
	pd->opaque = opaque;
	pd->uffd = -1;
	pd->minor = block->alias != NULL;
	{
		const char *map = getenv("VMFERRY_POSTCOPY_MAP");

		pd->lazy = pd->minor && !(map && !strcmp(map, "eager"));
	}
	pd->realtime = realtime;
	pd->received = calloc(words, sizeof(uint64_t));
	pd->claimed = calloc(words, sizeof(uint64_t));
	pd->requested = calloc(words, sizeof(uint64_t));
	pd->waiting = calloc(words, sizeof(uint64_t));
	pd->mapped = calloc(words, sizeof(uint64_t));
	pd->req_ns = calloc(pd->npages, sizeof(uint64_t));
	pd->samples_us = calloc(pd->npages, sizeof(uint32_t));
	pd->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	pd->policy_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	pthread_mutex_init(&pd->stats_lock, NULL);
	if (!pd->received || !pd->claimed || !pd->requested || !pd->waiting || !pd->mapped ||
	    !pd->req_ns || !pd->samples_us || pd->stop_fd < 0 || pd->policy_fd < 0) {
		postcopy_dst_destroy(pd);
		return -ENOMEM;
	}
	err = pc_open(pd);
	if (err) {
		postcopy_dst_destroy(pd);
		return err;
	}
	*out = pd;
	return 0;
}

void postcopy_dst_destroy(struct postcopy_dst *pd)
{
	uint64_t one = 1;

	if (!pd)
		return;
	if (pd->thread_running) {
		if (write(pd->stop_fd, &one, sizeof(one)) < 0)
			log_debug("postcopy: stop write: %s", strerror(errno));
		pthread_join(pd->thread, NULL);
	}
	if (pd->uffd >= 0) {
		struct uffdio_range r = {
			.start = (uint64_t)(uintptr_t)pd->block->host, .len = pd->block->bytes,
		};

		ioctl(pd->uffd, UFFDIO_UNREGISTER, &r);
		close(pd->uffd);
	}
	if (pd->stop_fd >= 0)
		close(pd->stop_fd);
	if (pd->policy_fd >= 0)
		close(pd->policy_fd);
	free((void *)pd->received);
	free((void *)pd->claimed);
	free((void *)pd->requested);
	free((void *)pd->waiting);
	free((void *)pd->mapped);
	free((void *)pd->req_ns);
	free(pd->samples_us);
	pthread_mutex_destroy(&pd->stats_lock);
	free(pd);
}

void postcopy_dst_mark_received(struct postcopy_dst *pd, uint64_t first_page, uint64_t npages)
{
	if (first_page >= pd->npages)
		return;
	if (npages > pd->npages - first_page)
		npages = pd->npages - first_page;
	/* A word at a time: a hole of the source is one zero run of millions of pages. */
	pc_set_range_count(pd->claimed, first_page, npages);
	atomic_fetch_add(&pd->nreceived, pc_set_range_count(pd->received, first_page, npages));
}

/* Minor mode: unmap pages from the guest's mapping, keeping their memory. */
static int pc_unmap(struct postcopy_dst *pd, uint64_t first_page, uint64_t npages)
{
	if (madvise(pd->block->host + first_page * PC_PAGE, npages * PC_PAGE, MADV_DONTNEED) < 0) {
		int err = -errno;

		log_error("postcopy: unmapping pages %llu+%llu failed: %s",
			  (unsigned long long)first_page, (unsigned long long)npages, strerror(errno));
		return err;
	}
	return 0;
}

/* Give pages back to the memfd so that, once registered, they fault. */
static int pc_punch(struct postcopy_dst *pd, uint64_t first_page, uint64_t npages)
{
	if (fallocate(pd->block->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)(first_page * PC_PAGE), (off_t)(npages * PC_PAGE)) < 0) {
		int err = -errno;

		log_error("postcopy: punching pages %llu+%llu failed: %s",
			  (unsigned long long)first_page, (unsigned long long)npages, strerror(errno));
		return err;
	}
	return 0;
}

int postcopy_dst_discard(struct postcopy_dst *pd, uint64_t first_page, uint64_t npages)
{
	if (first_page >= pd->npages || npages > pd->npages - first_page)
		return -EINVAL;
	for (uint64_t p = first_page; p < first_page + npages; p++) {
		pc_test_and_clear(pd->claimed, p);
		pc_test_and_clear(pd->mapped, p);
		if (pc_test_and_clear(pd->received, p))
			atomic_fetch_sub(&pd->nreceived, 1);
	}
	return pd->minor ? pc_unmap(pd, first_page, npages) : pc_punch(pd, first_page, npages);
}

int postcopy_dst_prepare(struct postcopy_dst *pd)
{
	return pd->minor ? pc_unmap(pd, 0, pd->npages) : pc_punch(pd, 0, pd->npages);
}

bool postcopy_minor_supported(void)
{
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	bool ok;

	if (fd < 0)
		return false;
	ok = ioctl(fd, UFFDIO_API, &api) == 0 && (api.features & UFFD_FEATURE_MINOR_SHMEM);
	close(fd);
	return ok;
}

uint64_t postcopy_dst_npages(struct postcopy_dst *pd)
{
	return pd->npages;
}

void postcopy_dst_received_bits(struct postcopy_dst *pd, uint8_t *out)
{
	memset(out, 0, (size_t)((pd->npages + 7) / 8));
	for (uint64_t p = 0; p < pd->npages; p++)
		if (pc_test(pd->received, p))
			out[p / 8] |= (uint8_t)(1u << (p % 8));
}

uint64_t postcopy_dst_outstanding(struct postcopy_dst *pd, postcopy_request_fn *fn, void *opaque)
{
	uint64_t n = 0;

	for (uint64_t p = 0; p < pd->npages; p++) {
		if (!pc_test(pd->requested, p) || pc_test(pd->received, p))
			continue;
		if (fn(opaque, 0, p, 1))
			break;
		n++;
	}
	return n;
}

uint64_t postcopy_dst_missing(struct postcopy_dst *pd)
{
	return pd->npages - atomic_load(&pd->nreceived);
}

/* A request for @p was answered: account for the wait. */
static void pc_account(struct postcopy_dst *pd, uint64_t p, uint64_t now)
{
	uint64_t t = atomic_exchange(&pd->req_ns[p], 0), d;

	if (!t)
		return;
	d = now > t ? now - t : 0;
	atomic_fetch_add(&pd->blocked_ns, d);
	if (d > atomic_load(&pd->max_ns))
		atomic_store(&pd->max_ns, d);
	pthread_mutex_lock(&pd->stats_lock);
	if (pd->nsamples < pd->npages)
		pd->samples_us[pd->nsamples++] = (uint32_t)(d / 1000 > UINT32_MAX ? UINT32_MAX : d / 1000);
	pthread_mutex_unlock(&pd->stats_lock);
}

/* Pages [@p, @p + @n) are in place and mapped: received, waits accounted. */
static void pc_placed(struct postcopy_dst *pd, uint64_t p, uint64_t n)
{
	uint64_t now = clock_monotonic_ns();

	for (uint64_t q = p; q < p + n; q++) {
		if (!pc_test_and_set(pd->received, q))
			atomic_fetch_add(&pd->nreceived, 1);
		pc_account(pd, q, now);
	}
}

static int pc_continue(struct postcopy_dst *pd, uint64_t p, uint64_t n);

/*
 * Minor mode: pages [@p, @p + @n) were written through the alias.  Eager:
 * map them, then they count as received.  Lazy: they count as received
 * first, and are mapped now only when a thread waits for one of them
 * (faulted, or asked the source); the others are mapped by the first fault
 * on them (pc_map_window), or after the migration, when the guest's mapping
 * is a plain one again, by the kernel.  Mapping costs about a third of
 * receiving a page, and most pushed pages are not touched while postcopy
 * lasts.  Against the fault thread: it sets "waiting" and then reads
 * "received"; this sets "received" and then reads "waiting" (both
 * sequentially consistent), so at least one of the two maps the page.
 */
static int pc_arrived(struct postcopy_dst *pd, uint64_t p, uint64_t n)
{
	int err;

	if (!pd->lazy) {
		err = pc_continue(pd, p, n);
		if (!err)
			pc_placed(pd, p, n);
		return err;
	}
	for (uint64_t q = p; q < p + n; q++)
		if (!pc_test_and_set(pd->received, q))
			atomic_fetch_add(&pd->nreceived, 1);
	err = pc_any(pd->waiting, p, n) ? pc_continue(pd, p, n) : 0;
	if (!err) {
		uint64_t now = clock_monotonic_ns();

		for (uint64_t q = p; q < p + n; q++)
			pc_account(pd, q, now);
	}
	return err;
}

static int pc_wake(struct postcopy_dst *pd, uint64_t p, uint64_t n)
{
	struct uffdio_range r = {
		.start = (uint64_t)(uintptr_t)(pd->block->host + p * PC_PAGE), .len = n * PC_PAGE,
	};

	return ioctl(pd->uffd, UFFDIO_WAKE, &r) < 0 ? -errno : 0;
}

/*
 * UFFDIO_COPY of one run; pages already present are skipped (and woken).
 * Another channel may place pages of the run meanwhile (a requested page
 * answered on the urgent channel while the push carries it too): the kernel
 * then copies up to that page and reports a partial copy (EAGAIN with the
 * bytes done) or, at the page itself, EEXIST.
 */
static int pc_copy(struct postcopy_dst *pd, uint64_t p, uint64_t n, const uint8_t *src)
{
	uint64_t done = 0;
	unsigned retries = 0;

	while (done < n) {
		struct uffdio_copy c = {
			.dst = (uint64_t)(uintptr_t)(pd->block->host + (p + done) * PC_PAGE),
			.src = (uint64_t)(uintptr_t)(src + done * PC_PAGE),
			.len = (n - done) * PC_PAGE,
		};

		if (ioctl(pd->uffd, UFFDIO_COPY, &c) == 0)
			return 0; /* the kernel woke the waiters of what it copied */
		if (errno == EAGAIN && c.copy > 0) {
			done += (uint64_t)c.copy / PC_PAGE; /* partial: go on after it */
			continue;
		}
		if (errno == EEXIST) {
			pc_wake(pd, p + done, 1); /* an EEXIST copy does not wake waiters */
			done++;
			continue;
		}
		if (errno == EAGAIN && ++retries < 1000)
			continue; /* the address space was changing: try again */
		{
			int err = -errno;

			log_error("postcopy: UFFDIO_COPY at page %llu (+%llu) failed: %s",
				  (unsigned long long)(p + done), (unsigned long long)(n - done),
				  strerror(errno));
			return err;
		}
	}
	return 0;
}

/*
 * Minor mode: map pages whose content is in place (written through the
 * alias) into the guest's mapping with UFFDIO_CONTINUE, waking waiters.
 * Pages mapped already are skipped (and woken).  0, -EFAULT for a page that
 * is a hole (no content at all), other -errno.
 */
static int pc_continue(struct postcopy_dst *pd, uint64_t p, uint64_t n)
{
	uint64_t done = 0;
	unsigned retries = 0;

	while (done < n) {
		struct uffdio_continue c = {
			.range = { .start = (uint64_t)(uintptr_t)(pd->block->host + (p + done) * PC_PAGE),
				   .len = (n - done) * PC_PAGE },
		};

		if (ioctl(pd->uffd, UFFDIO_CONTINUE, &c) == 0) {
			pc_set_range(pd->mapped, p + done, n - done);
			return 0;
		}
		if (errno == EAGAIN && c.mapped > 0) {
			pc_set_range(pd->mapped, p + done, (uint64_t)c.mapped / PC_PAGE);
			done += (uint64_t)c.mapped / PC_PAGE;
			continue;
		}
		if (errno == EEXIST) {
			pc_wake(pd, p + done, 1);
			pc_set_range(pd->mapped, p + done, 1);
			done++;
			continue;
		}
		if (errno == EAGAIN && ++retries < 1000)
			continue;
		if (errno != EFAULT)
			log_error("postcopy: UFFDIO_CONTINUE at page %llu (+%llu) failed: %s",
				  (unsigned long long)(p + done), (unsigned long long)(n - done),
				  strerror(errno));
		return -errno;
	}
	return 0;
}

/*
 * Minor mode placing: claim each page (one writer per page, ever: a page
 * the guest may already have written must never be written again), write
 * the claimed runs through the alias mapping, then map them.
 */
static int pc_place_minor(struct postcopy_dst *pd, uint64_t first_page, uint32_t npages,
			  const uint8_t *data)
{
	uint64_t p = first_page, end = first_page + npages, run;
	int err;

	while (p < end) {
		if (pc_test_and_set(pd->claimed, p)) {
			p++;
			continue;
		}
		for (run = 1; p + run < end && !pc_test_and_set(pd->claimed, p + run); run++)
			;
		if (data)
			memcpy(pd->block->alias + p * PC_PAGE, data + (p - first_page) * PC_PAGE,
			       run * PC_PAGE);
		else
			memset(pd->block->alias + p * PC_PAGE, 0, run * PC_PAGE);
		err = pc_arrived(pd, p, run);
		if (err)
			return err;
		p += run;
	}
	return 0;
}

bool postcopy_dst_minor(const struct postcopy_dst *pd)
{
	return pd->minor;
}

/*
 * Minor mode, straight from the stream: claim, let @fill write each claimed
 * run into the alias (and skip the others), then map the claimed runs.  A
 * run is claimed only right before its bytes are read, and the caller makes
 * sure those bytes are already here, so a claim is held for the time of a
 * copy, never for the time of the network.  When @fill fails the claims
 * taken and not mapped are dropped again: nothing of those pages was
 * visible to the guest, and whoever brings them later must be able to
 * claim them.
 */
int postcopy_dst_fill(struct postcopy_dst *pd, uint64_t first_page, uint32_t npages,
		      postcopy_fill_fn *fill, void *opaque)
{
	uint64_t p = first_page, end = first_page + npages, run;
	int err;

	if (!pd->minor || end > pd->npages || !atomic_load(&pd->listening))
		return -EINVAL;
	while (p < end) {
		bool mine = !pc_test_and_set(pd->claimed, p);

		/* A run ends where ownership changes. */
		if (mine)
			for (run = 1; p + run < end && !pc_test_and_set(pd->claimed, p + run); run++)
				;
		else
			for (run = 1; p + run < end && pc_test(pd->claimed, p + run); run++)
				;
		err = fill(opaque, mine ? pd->block->alias + p * PC_PAGE : NULL, run);
		if (err) {
			if (mine)
				for (uint64_t q = p; q < p + run; q++)
					pc_test_and_clear(pd->claimed, q);
			return err;
		}
		if (mine) {
			err = pc_arrived(pd, p, run);
			if (err)
				return err;
		}
		p += run;
	}
	return 0;
}

/*
 * Lazy minor mode, a zero run [@p, @p + @n) claimed by us: punched out of
 * the memfd instead of written (a hole of the source is millions of pages:
 * nothing allocated here either), counted received a word at a time; a
 * thread already waiting for one of them gets a zero page placed now, the
 * others when they first fault (pc_handle_fault: received, not in the
 * memfd).
 */
static int pc_arrived_zero(struct postcopy_dst *pd, uint64_t p, uint64_t n)
{
	uint64_t now;
	int err = pc_punch(pd, p, n);

	if (err)
		return err;
	atomic_fetch_add(&pd->nreceived, pc_set_range_count(pd->received, p, n));
	for (uint64_t q = p; q < p + n; q++) {
		uint64_t waiting = atomic_load(&pd->waiting[q / 64]);

		if (!waiting) {
			q |= 63; /* none in this word */
			continue;
		}
		if (!((waiting >> (q % 64)) & 1))
			continue;
		err = pc_copy(pd, q, 1, pc_zero);
		if (err)
			return err;
		pc_set_range(pd->mapped, q, 1);
	}
	now = clock_monotonic_ns();
	for (uint64_t q = p; q < p + n; q++) {
		uint64_t requested = atomic_load(&pd->requested[q / 64]);

		if (!requested) {
			q |= 63;
			continue;
		}
		if ((requested >> (q % 64)) & 1)
			pc_account(pd, q, now);
	}
	return 0;
}

/* Lazy minor mode: the zero run [@first, @end), claimed a word at a time. */
static int pc_place_minor_zero(struct postcopy_dst *pd, uint64_t first, uint64_t end)
{
	uint64_t span = 0, span_n = 0;
	int err;

#define PC_SPAN_FLUSH() do { \
		if (span_n && (err = pc_arrived_zero(pd, span, span_n))) \
			return err; \
		span_n = 0; \
	} while (0)
	for (uint64_t w = first / 64; w <= (end - 1) / 64; w++) {
		uint64_t mask = pc_word_mask(w, first, end);
		uint64_t mine = mask & ~atomic_fetch_or(&pd->claimed[w], mask);

		if (mine == ~0ull) {
			/* The whole word is ours: the common case over a hole. */
			if (span_n && span + span_n != w * 64)
				PC_SPAN_FLUSH();
			if (!span_n)
				span = w * 64;
			span_n += 64;
			continue;
		}
		for (uint64_t b = 0; b < 64; b++) {
			uint64_t q = w * 64 + b;

			if (!((mask >> b) & 1))
				continue;
			if (!((mine >> b) & 1)) {
				PC_SPAN_FLUSH(); /* someone else's: not ours to write */
				continue;
			}
			if (span_n && span + span_n != q)
				PC_SPAN_FLUSH();
			if (!span_n)
				span = q;
			span_n++;
		}
	}
	PC_SPAN_FLUSH();
#undef PC_SPAN_FLUSH
	return 0;
}

int postcopy_dst_place(struct postcopy_dst *pd, uint64_t first_page, uint32_t npages,
		       const void *data)
{
	uint64_t p = first_page, end = first_page + npages;
	int err = 0;

	if (end > pd->npages)
		return -EINVAL;
	if (!atomic_load(&pd->listening)) {
		/* Precopy phase: the caller wrote the pages in place already. */
		postcopy_dst_mark_received(pd, first_page, npages);
		return 0;
	}
	if (pd->minor && pd->lazy && !data && npages)
		return pc_place_minor_zero(pd, first_page, end);
	if (pd->minor)
		return pc_place_minor(pd, first_page, npages, data);
	while (p < end) {
		uint64_t run;

		/* Skip pages that are here already; collect a run of missing ones. */
		if (pc_test(pd->received, p)) {
			p++;
			continue;
		}
		for (run = 1; p + run < end && !pc_test(pd->received, p + run); run++)
			;
		if (data) {
			err = pc_copy(pd, p, run, (const uint8_t *)data + (p - first_page) * PC_PAGE);
		} else {
			for (uint64_t q = p; q < p + run && !err; q += PC_ZERO_PAGES) {
				uint64_t k = p + run - q < PC_ZERO_PAGES ? p + run - q : PC_ZERO_PAGES;

				err = pc_copy(pd, q, k, pc_zero);
			}
		}
		if (err)
			return err;
		pc_placed(pd, p, run);
		p += run;
	}
	return 0;
}

/*
 * Pages to map for a fault on the received page @p: lazy mapping maps the
 * received, unmapped pages that follow it as well, up to PC_MAP_WINDOW in
 * all, in the same call (the faulting thread would touch the next one
 * while they were being mapped anyway).
 */
static uint64_t pc_map_window(struct postcopy_dst *pd, uint64_t p)
{
	uint64_t n = 1;

	while (pd->lazy && p + n < pd->npages && n < PC_MAP_WINDOW &&
	       pc_test(pd->received, p + n) && !pc_test(pd->mapped, p + n))
		n++;
	return n;
}

static void pc_handle_fault(struct postcopy_dst *pd, uint64_t addr)
{
	uint64_t host = (uint64_t)(uintptr_t)pd->block->host;
	uint64_t p;

	atomic_fetch_add(&pd->faults, 1);
	if (addr < host || addr >= host + pd->block->bytes)
		return;
	p = (addr - host) / PC_PAGE;
	if (pd->lazy)
		pc_test_and_set(pd->waiting, p); /* before "received": see pc_arrived */
	if (pc_test(pd->received, p)) {
		/*
		 * Either placed between the fault and now (the copy below finds it
		 * and just wakes), or (minor mode) received in precopy and not
		 * mapped, or a zero page that arrived as a hole: give it a zero
		 * page.  UFFDIO_COPY never overwrites a present page.
		 */
		if (!pd->minor || pc_continue(pd, p, pc_map_window(pd, p)))
			pc_copy(pd, p, 1, pc_zero);
		return;
	}
	if (pd->minor && pc_test(pd->claimed, p))
		return; /* being written: its UFFDIO_CONTINUE wakes this waiter */
	if (pc_test_and_set(pd->requested, p))
		return; /* already asked: the answer wakes this waiter too */
	atomic_store(&pd->req_ns[p], clock_monotonic_ns());
	atomic_fetch_add(&pd->requests, 1);
	if (pd->request(pd->opaque, 0, p, 1))
		log_error("postcopy: requesting page %llu failed", (unsigned long long)p);
	/* The page may have landed while we asked; it woke everyone then, but
	 * a waiter that faulted after the copy's wake must not sleep on. */
	if (pc_test(pd->received, p) && (!pd->minor || pc_continue(pd, p, 1)))
		pc_copy(pd, p, 1, pc_zero);
}

void postcopy_dst_policy_changed(struct postcopy_dst *pd)
{
	uint64_t one = 1;

	if (pd && write(pd->policy_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_debug("postcopy: policy wake-up: %s", strerror(errno));
}

static void *pc_fault_thread(void *arg)
{
	struct postcopy_dst *pd = arg;
	struct pollfd pfd[3] = {
		{ .fd = pd->uffd, .events = POLLIN },
		{ .fd = pd->stop_fd, .events = POLLIN },
		{ .fd = pd->policy_fd, .events = POLLIN },
	};
	bool rt = true;

	pthread_setname_np(pthread_self(), "pc-fault");
	thread_make_latency_critical(); /* faulting vCPUs wait for this thread */
	for (;;) {
		struct uffd_msg msgs[64];
		ssize_t n;

		if (poll(pfd, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_error("postcopy: poll: %s", strerror(errno));
			return NULL;
		}
		if (pfd[1].revents)
			return NULL;
		if (pfd[2].revents) {
			uint64_t v;

			if (read(pd->policy_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				log_debug("postcopy: policy read: %s", strerror(errno));
		}
		if ((!pd->realtime || atomic_load(pd->realtime)) != rt) {
			rt = !rt;
			thread_set_latency_critical(rt);
		}
		if (!pfd[0].revents)
			continue; /* only the policy */
		n = read(pd->uffd, msgs, sizeof(msgs));
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			log_error("postcopy: reading userfaultfd: %s", strerror(errno));
			return NULL;
		}
		for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++)
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				pc_handle_fault(pd, msgs[i].arg.pagefault.address);
	}
}

/*
 * The userfaultfd and its fault thread, made when postcopy is advised, so
 * that the switch itself (inside the guest's pause) only registers RAM:
 * creating a thread maps its stack, which waits for the address-space lock
 * that a background preallocation step may hold.
 */
static int pc_open(struct postcopy_dst *pd)
{
	struct uffdio_api api = {
		.api = UFFD_API,
		.features = UFFD_FEATURE_MISSING_SHMEM | (pd->minor ? UFFD_FEATURE_MINOR_SHMEM : 0),
	};
	int err;

	pd->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (pd->uffd < 0) {
		err = -errno;
		log_error("postcopy: userfaultfd: %s", strerror(errno));
		return err;
	}
	if (ioctl(pd->uffd, UFFDIO_API, &api) < 0) {
		err = -errno;
		log_error("postcopy: userfaultfd API: %s", strerror(errno));
		return err;
	}
	err = -pthread_create(&pd->thread, NULL, pc_fault_thread, pd);
	if (err)
		return err;
	pd->thread_running = true;
	return 0;
}

int postcopy_dst_listen(struct postcopy_dst *pd)
{
	/* Minor mode registers both: a page may also be a hole (never allocated). */
	struct uffdio_register reg = {
		.range = { .start = (uint64_t)(uintptr_t)pd->block->host, .len = pd->block->bytes },
		.mode = UFFDIO_REGISTER_MODE_MISSING | (pd->minor ? UFFDIO_REGISTER_MODE_MINOR : 0),
	};
	int err;

	if (pd->uffd < 0)
		return -EBADF;
	if (ioctl(pd->uffd, UFFDIO_REGISTER, &reg) < 0) {
		err = -errno;
		log_error("postcopy: registering guest RAM with userfaultfd failed: %s", strerror(errno));
		return err;
	}
	if (!(reg.ioctls & (1ull << _UFFDIO_COPY)) ||
	    (pd->minor && !(reg.ioctls & (1ull << _UFFDIO_CONTINUE)))) {
		log_error("postcopy: UFFDIO_COPY%s is not available on guest RAM",
			  pd->minor ? "/CONTINUE" : "");
		return -ENOTSUP;
	}
	atomic_store(&pd->listening, true);
	return 0;
}

static int pc_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return (x > y) - (x < y);
}

void postcopy_dst_get_stats(struct postcopy_dst *pd, struct postcopy_dst_stats *st)
{
	uint32_t *copy = NULL;
	uint64_t n;

	memset(st, 0, sizeof(*st));
	st->requests = atomic_load(&pd->requests);
	st->faults = atomic_load(&pd->faults);
	st->blocked_ns = atomic_load(&pd->blocked_ns);
	st->latency_max_ns = atomic_load(&pd->max_ns);
	pthread_mutex_lock(&pd->stats_lock);
	n = pd->nsamples;
	if (n)
		copy = malloc(n * sizeof(uint32_t));
	if (copy)
		memcpy(copy, pd->samples_us, n * sizeof(uint32_t));
	pthread_mutex_unlock(&pd->stats_lock);
	st->pages_requested_placed = n;
	if (copy) {
		qsort(copy, n, sizeof(uint32_t), pc_cmp_u32);
		st->latency_p50_ns = (uint64_t)copy[n / 2] * 1000;
		st->latency_p99_ns = (uint64_t)copy[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] * 1000;
		free(copy);
	}
}
