/*
 * virtio-blk: the device and its I/O thread; see virtio_blk.h.
 *
 * The I/O thread's loop:  poll(kicks, io_uring completions, control)
 *                         -> reap completions into the used rings
 *                         -> unless paused: pop requests, submit them
 *                         -> arm the kicks (EVENT_IDX), sleep again.
 * Every write into guest RAM (data read, status byte, used ring) is marked
 * dirty for migration after it is done, before the request is returned used.
 */
#include "devices/virtio_blk_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"
#include "vmm/vm.h"

void vblk_wake(struct virtio_blk *b)
{
	uint64_t one = 1;

	atomic_store(&b->woken, true); /* for the polling loop, which reads no fd */
	if (write(b->ctl_efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("%s: waking the I/O thread: %s", b->name, strerror(errno));
}

/* ---- completing requests ---- */

static void vblk_mark(struct virtio_blk *b, uint64_t gpa, uint64_t len)
{
	vm_ram_mark_dirty(b->vm, gpa, len);
}

/* Write @status, return chain @head of queue @q used with @len bytes written. */
static void vblk_complete(struct virtio_blk *b, uint16_t q, uint16_t head, uint64_t status_gpa,
			  uint8_t status, uint32_t len)
{
	uint8_t *p = status_gpa ? vq_guest_ptr(&b->guest, status_gpa, 1) : NULL;

	if (p) {
		*p = status;
		vblk_mark(b, status_gpa, 1);
	}
	if (status != VIRTIO_BLK_S_OK)
		b->st.failed_ops++;
	vq_push(&b->vq[q], head, len);
	vblk_mark(b, b->vq[q].used_gpa, vq_used_bytes(&b->vq[q]));
}

/* One io_uring completion. */
static void vblk_finish(struct virtio_blk *b, struct vblk_req *r, int res)
{
	uint8_t status = res == r->expect ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
	uint32_t len = 1;

	if (res < 0 && res != -EOPNOTSUPP)
		log_warn("%s: request type %u failed: %s", b->name, r->type, strerror(-res));
	else if (res < 0)
		status = VIRTIO_BLK_S_UNSUPP;
	if (r->type == VIRTIO_BLK_T_IN && status == VIRTIO_BLK_S_OK) {
		for (uint32_t i = 0; i < r->niov; i++)
			vblk_mark(b, b->guest.gpa + ((uint8_t *)r->iov[i].iov_base - b->guest.host),
				  r->iov[i].iov_len);
		b->st.rd_bytes += (uint64_t)res;
		len += (uint32_t)res;
	} else if (r->type == VIRTIO_BLK_T_OUT && status == VIRTIO_BLK_S_OK) {
		b->st.wr_bytes += (uint64_t)res;
	}
	/* Storage migration: send what changed again (even a failed write may
	 * have written part of it). */
	if (r->type == VIRTIO_BLK_T_OUT || r->type == VIRTIO_BLK_T_DISCARD ||
	    r->type == VIRTIO_BLK_T_WRITE_ZEROES)
		blkmig_mark(&b->mig, r->off, r->len);
	vblk_complete(b, r->queue, r->head, r->status_gpa, status, len);
	r->busy = false;
	b->in_flight--;
}

/* Lock held: every completion io_uring has.  How many. */
static unsigned vblk_reap(struct virtio_blk *b)
{
	struct io_uring_cqe *cqe;
	unsigned n = 0;

	while (b->ring_ready && io_uring_peek_cqe(&b->ring, &cqe) == 0) {
		if (cqe->user_data < VBLK_QUEUE_DEPTH)
			vblk_finish(b, &b->reqs[cqe->user_data], cqe->res);
		io_uring_cqe_seen(&b->ring, cqe);
		n++;
	}
	if (b->in_flight == 0)
		pthread_cond_broadcast(&b->cond);
	return n;
}

/* ---- taking requests ---- */

/* A free slot, or NULL. */
static struct vblk_req *vblk_slot(struct virtio_blk *b)
{
	for (unsigned i = 0; i < VBLK_QUEUE_DEPTH; i++)
		if (!b->reqs[i].busy)
			return &b->reqs[i];
	return NULL;
}

/*
 * The data buffers of @c (between header and status byte) into @r's iovec:
 * all device-writable (@write) or all readable.  Bytes in total, or -1.
 */
static int64_t vblk_data_iov(struct virtio_blk *b, const struct vq_chain *c, bool write,
			     struct vblk_req *r)
{
	uint64_t total = 0;

	r->niov = 0;
	for (uint16_t i = 1; i < c->nsegs; i++) {
		const struct vq_seg *s = &c->seg[i];
		uint32_t len = i + 1 == c->nsegs ? s->len - 1 : s->len; /* less the status */

		if (len == 0)
			continue;
		if (s->write != write)
			return -1;
		r->iov[r->niov].iov_base = vq_guest_ptr(&b->guest, s->gpa, len);
		r->iov[r->niov].iov_len = len;
		r->niov++;
		total += len;
	}
	return (int64_t)total;
}

/* Is [@sector, +@nbytes) inside the disk? */
static bool vblk_in_range(const struct virtio_blk *b, uint64_t sector, uint64_t nbytes)
{
	uint64_t nsect = b->bytes / VIRTIO_BLK_SECTOR_BYTES;

	return nbytes % VIRTIO_BLK_SECTOR_BYTES == 0 && sector <= nsect &&
	       nbytes / VIRTIO_BLK_SECTOR_BYTES <= nsect - sector;
}

/* DISCARD / WRITE_ZEROES: one segment, a hole to punch.  A status, or 0xff: to do. */
static uint8_t vblk_prep_punch(struct virtio_blk *b, struct vblk_req *r, int64_t data_bytes)
{
	struct virtio_blk_discard_wz seg;

	if (!b->can_punch || b->opts.readonly)
		return b->opts.readonly ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_UNSUPP;
	if (data_bytes != (int64_t)sizeof(seg) || r->niov != 1)
		return VIRTIO_BLK_S_IOERR; /* max_discard_seg = max_write_zeroes_seg = 1 */
	memcpy(&seg, r->iov[0].iov_base, sizeof(seg));
	if (seg.num_sectors > VBLK_MAX_SECTORS ||
	    !vblk_in_range(b, seg.sector, (uint64_t)seg.num_sectors * VIRTIO_BLK_SECTOR_BYTES))
		return VIRTIO_BLK_S_IOERR;
	r->off = seg.sector * VIRTIO_BLK_SECTOR_BYTES;
	r->len = (uint64_t)seg.num_sectors * VIRTIO_BLK_SECTOR_BYTES;
	r->expect = 0;
	if (r->type == VIRTIO_BLK_T_DISCARD)
		b->st.discard_ops++;
	else
		b->st.write_zeroes_ops++;
	return 0xff;
}

/* GET_ID: the id string into the data buffers, at once. */
static uint8_t vblk_get_id(struct virtio_blk *b, struct vblk_req *r, uint32_t *written)
{
	uint32_t off = 0;

	for (uint32_t i = 0; i < r->niov && off < VIRTIO_BLK_ID_BYTES; i++) {
		size_t n = r->iov[i].iov_len < VIRTIO_BLK_ID_BYTES - off
			   ? r->iov[i].iov_len : VIRTIO_BLK_ID_BYTES - off;
		uint64_t gpa = b->guest.gpa + ((uint8_t *)r->iov[i].iov_base - b->guest.host);

		memcpy(r->iov[i].iov_base, b->id + off, n);
		vblk_mark(b, gpa, n);
		off += (uint32_t)n;
	}
	*written = off;
	b->st.get_id_ops++;
	return VIRTIO_BLK_S_OK;
}

/*
 * Check request @c and describe it in @r (type, range, buffers).  Returns
 * 0xff when it is to be done (vblk_do), else the status to complete it
 * with at once (bad header, out of range, read-only, GET_ID done).
 */
static uint8_t vblk_prep(struct virtio_blk *b, const struct vq_chain *c, struct vblk_req *r,
			 uint32_t *written)
{
	struct virtio_blk_req_hdr h;
	bool in;
	int64_t n;

	if (c->seg[0].write || c->seg[0].len != sizeof(h) || c->nsegs < 2)
		return VIRTIO_BLK_S_IOERR;
	memcpy(&h, vq_guest_ptr(&b->guest, c->seg[0].gpa, sizeof(h)), sizeof(h));
	r->type = (uint8_t)h.type;
	in = h.type == VIRTIO_BLK_T_IN || h.type == VIRTIO_BLK_T_GET_ID;
	n = vblk_data_iov(b, c, in, r);
	if (n < 0 || h.type > 0xff)
		return VIRTIO_BLK_S_IOERR;
	switch (h.type) {
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT:
		if (!vblk_in_range(b, h.sector, (uint64_t)n) || n == 0)
			return VIRTIO_BLK_S_IOERR;
		if (!in && b->opts.readonly)
			return VIRTIO_BLK_S_IOERR;
		r->expect = n;
		r->off = h.sector * VIRTIO_BLK_SECTOR_BYTES;
		r->len = (uint64_t)n;
		if (in)
			b->st.rd_ops++;
		else
			b->st.wr_ops++;
		return 0xff;
	case VIRTIO_BLK_T_FLUSH:
		r->expect = 0;
		b->st.flush_ops++;
		return 0xff;
	case VIRTIO_BLK_T_GET_ID:
		return vblk_get_id(b, r, written);
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES:
		return vblk_prep_punch(b, r, n);
	}
	return VIRTIO_BLK_S_UNSUPP;
}

/* @r's operation into @sqe (its type, range and buffers are set). */
static void vblk_prep_sqe(struct virtio_blk *b, struct vblk_req *r, struct io_uring_sqe *sqe)
{
	switch (r->type) {
	case VIRTIO_BLK_T_IN:
		io_uring_prep_readv(sqe, b->fd, r->iov, r->niov, r->off);
		break;
	case VIRTIO_BLK_T_OUT:
		io_uring_prep_writev(sqe, b->fd, r->iov, r->niov, r->off);
		break;
	case VIRTIO_BLK_T_FLUSH:
		io_uring_prep_fsync(sqe, b->fd, IORING_FSYNC_DATASYNC);
		break;
	default: /* DISCARD, WRITE_ZEROES */
		io_uring_prep_fallocate(sqe, b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					r->off, r->len);
		break;
	}
	sqe->user_data = (uint64_t)(r - b->reqs);
}

/*
 * A read whose data is in the page cache, done here (RWF_NOWAIT): no
 * hand-off to io_uring, whose completion would wake this thread once more.
 * True when it completed; else io_uring does it (a read that would block,
 * or a short one, done again whole).  Writes always go to io_uring: ext4
 * takes no RWF_NOWAIT for buffered writes, and a write that blocks here
 * would hold the disk's lock, which the vCPUs' MMIO exits take.
 */
static bool vblk_try_inline(struct virtio_blk *b, struct vblk_req *r)
{
	ssize_t n;

	if (r->type != VIRTIO_BLK_T_IN || !b->inline_reads)
		return false;
	n = preadv2(b->fd, r->iov, (int)r->niov, (off_t)r->off, RWF_NOWAIT);
	if (n < 0 && errno == EOPNOTSUPP)
		b->inline_reads = false; /* a file system without it */
	if (n != r->expect)
		return false;
	vblk_finish(b, r, (int)n);
	return true;
}

/* In flight: done here, deferred, or handed to io_uring. */
static void vblk_do(struct virtio_blk *b, struct vblk_req *r)
{
	struct io_uring_sqe *sqe;

	r->busy = true;
	b->in_flight++;
	if ((r->type == VIRTIO_BLK_T_IN || r->type == VIRTIO_BLK_T_OUT ||
	     r->type == VIRTIO_BLK_T_DISCARD || r->type == VIRTIO_BLK_T_WRITE_ZEROES) &&
	    blkmig_io_wait(b, r->type, r->off, r->len)) {
		/* Storage postcopy: blocks it needs are on their way; it stays in
		 * flight (taken, not lost) until vblk_retry_deferred does it. */
		r->deferred = true;
		r->defer_ns = clock_monotonic_ns();
		return;
	}
	if (vblk_try_inline(b, r))
		return;
	sqe = io_uring_get_sqe(&b->ring);
	if (!sqe) { /* cannot happen: the ring has a slot per request */
		vblk_finish(b, r, -EAGAIN);
		return;
	}
	vblk_prep_sqe(b, r, sqe);
}

/* Start request @c of queue @q: in flight or completed at once. */
static void vblk_start(struct virtio_blk *b, uint16_t q, const struct vq_chain *c,
		       struct vblk_req *r)
{
	const struct vq_seg *last = &c->seg[c->nsegs - 1];
	uint64_t status_gpa = last->write && last->len ? last->gpa + last->len - 1 : 0;
	uint32_t written = 0;
	uint8_t status;

	r->queue = q;
	r->head = c->head;
	r->status_gpa = status_gpa;
	r->niov = 0;
	if (!status_gpa) {
		/* No status byte to say so: returned unused, counted. */
		b->st.invalid_ops++;
		vblk_complete(b, q, c->head, 0, VIRTIO_BLK_S_IOERR, 0);
		return;
	}
	status = vblk_prep(b, c, r, &written);
	if (status != 0xff) {
		vblk_complete(b, q, c->head, status_gpa, status, written + 1);
		return;
	}
	vblk_do(b, r);
}

/*
 * Lock held: submit the deferred requests whose blocks all arrived; when
 * the disk goes (@b->stop) the blocks never will: they fail.
 */
static void vblk_retry_deferred(struct virtio_blk *b)
{
	for (unsigned i = 0; i < VBLK_QUEUE_DEPTH; i++) {
		struct vblk_req *r = &b->reqs[i];
		struct io_uring_sqe *sqe;

		if (r->busy && r->deferred && b->stop) {
			r->deferred = false;
			vblk_complete(b, r->queue, r->head, r->status_gpa, VIRTIO_BLK_S_IOERR, 1);
			r->busy = false;
			b->in_flight--;
			continue;
		}
		if (!r->busy || !r->deferred || blkmig_io_wait(b, r->type, r->off, r->len))
			continue;
		sqe = io_uring_get_sqe(&b->ring);
		if (!sqe)
			return; /* the ring is full: the next round */
		vblk_prep_sqe(b, r, sqe);
		r->deferred = false;
		blkmig_io_waited(b, clock_monotonic_ns() - r->defer_ns);
	}
}

/* Lock held: take what queue @q has, as slots allow.  How many. */
static unsigned vblk_process_queue(struct virtio_blk *b, uint16_t q)
{
	struct virtqueue *vq = &b->vq[q];
	struct vblk_req *r;
	unsigned n = 0;

	while ((r = vblk_slot(b)) != NULL) {
		int got = vq_pop(vq, &b->guest, &b->chain);

		if (got == 0)
			break;
		if (got < 0) {
			b->st.invalid_ops++;
			virtio_mmio_needs_reset(&b->mmio);
			break;
		}
		vblk_start(b, q, &b->chain, r);
		n++;
	}
	return n; /* full: a completion brings us back */
}

/* Lock held: whether the queues may be looked at (the guest's driver is up, not paused). */
static bool vblk_queues_open(const struct virtio_blk *b)
{
	return !b->stop && !b->paused && b->started && virtio_mmio_running(&b->mmio);
}

/* Lock held: deferred requests, then every queue.  Requests taken. */
static unsigned vblk_process(struct virtio_blk *b)
{
	unsigned n = 0;

	/* Taken requests first, paused or not: a pause waits for them. */
	if (atomic_load(&b->mig.pc_active) || b->in_flight)
		vblk_retry_deferred(b);
	if (b->in_flight == 0)
		pthread_cond_broadcast(&b->cond);
	for (uint16_t q = 0; vblk_queues_open(b) && q < b->nqueues; q++)
		n += vblk_process_queue(b, q);
	io_uring_submit(&b->ring);
	return n;
}

/*
 * Lock held, before the thread sleeps: ask for a kick at each queue's next
 * entry (EVENT_IDX).  True when entries came meanwhile (take them first:
 * the guest may not kick for them).
 */
static bool vblk_arm_kicks(struct virtio_blk *b)
{
	bool pending = false;

	for (uint16_t q = 0; vblk_queues_open(b) && q < b->nqueues; q++) {
		struct virtqueue *vq = &b->vq[q];

		pending |= vq_arm_kick(vq);
		if (vq->event_idx && vq->size)
			vblk_mark(b, vq->used_gpa, vq_used_bytes(vq));
	}
	return pending;
}

/* Lock held, polling: anything to do (a request, a completion, a wake-up)? */
static bool vblk_has_work(struct virtio_blk *b)
{
	if (b->stop || atomic_exchange(&b->woken, false))
		return true;
	if (b->ring_ready && io_uring_cq_ready(&b->ring))
		return true;
	for (uint16_t q = 0; vblk_queues_open(b) && q < b->nqueues; q++)
		if (vq_avail_pending(&b->vq[q]))
			return true;
	return false;
}

/* ---- the I/O thread ---- */

static void vblk_drain_fd(int fd)
{
	uint64_t v;

	while (read(fd, &v, sizeof(v)) == sizeof(v))
		;
}

/* Lock held on entry and return: sleep until a kick, a completion or a wake-up. */
static void vblk_sleep(struct virtio_blk *b, struct pollfd *fds, unsigned nfds)
{
	pthread_mutex_unlock(&b->lock);
	if (atomic_load(&b->mig.pc_active))
		blkmig_send_requests(b); /* outside the lock: it writes to the source */
	if (poll(fds, nfds, -1) < 0 && errno != EINTR)
		log_warn("%s: poll: %s", b->name, strerror(errno));
	for (unsigned i = 0; i < nfds; i++)
		if (fds[i].revents & POLLIN)
			vblk_drain_fd(fds[i].fd);
	atomic_store(&b->woken, false);
	pthread_mutex_lock(&b->lock);
}

/*
 * Lock held on entry and return: one look without sleeping (the polling
 * window).  True when there is something to do.
 */
static bool vblk_poll_once(struct virtio_blk *b)
{
	pthread_mutex_unlock(&b->lock);
	if (atomic_load(&b->mig.pc_active))
		blkmig_send_requests(b);
	pthread_mutex_lock(&b->lock);
	return vblk_has_work(b);
}

/*
 * The loop: reap completions, take requests; then, for poll_ns after the
 * last request or completion, look again without sleeping - the kicks stay
 * unarmed meanwhile, so a guest with EVENT_IDX does not exit to notify -
 * and only then arm the kicks and sleep in poll().  It does not look while
 * requests are in flight on io_uring: its worker threads need the CPU this
 * loop would take from them (two cores: a spinning vCPU and this thread
 * already fill them), and their completion wakes the thread anyway.
 *
 * Polling pays only while the guest's vCPU runs on another core than this
 * thread; sharing one, the vCPU cannot submit while this thread looks, and
 * every window ends empty.  After VBLK_POLL_MISSES empty windows in a row
 * the thread stops looking for VBLK_POLL_BACKOFF_NS, then tries again.
 */
#define VBLK_POLL_MISSES 8u
#define VBLK_POLL_BACKOFF_NS 20000000ull

/* The polling window's state (the I/O thread's own). */
struct vblk_poll {
	uint64_t last_work_ns; /* the last request or completion */
	uint64_t off_until_ns; /* backing off until then */
	unsigned misses;       /* empty windows in a row */
	bool looking;          /* in a window now */
};

/* Lock held: whether to look once more instead of sleeping. */
static bool vblk_poll_now(struct virtio_blk *b, struct vblk_poll *p)
{
	uint64_t now;

	if (!b->poll_ns || b->in_flight)
		return false;
	now = clock_monotonic_ns();
	if (now < p->off_until_ns)
		return false;
	if (now - p->last_work_ns < b->poll_ns) {
		p->looking = true;
		return true;
	}
	if (p->looking && ++p->misses >= VBLK_POLL_MISSES) {
		p->off_until_ns = now + VBLK_POLL_BACKOFF_NS;
		p->misses = 0;
	}
	p->looking = false;
	return false;
}
static void *vblk_thread(void *arg)
{
	struct virtio_blk *b = arg;
	struct pollfd fds[2 + VIRTIO_MMIO_MAX_QUEUES];
	unsigned nfds = 0;
	struct vblk_poll p = { 0 };

	pthread_setname_np(pthread_self(), b->name);
	fds[nfds++] = (struct pollfd){ .fd = b->ctl_efd, .events = POLLIN };
	fds[nfds++] = (struct pollfd){ .fd = b->ring_efd, .events = POLLIN };
	for (uint16_t q = 0; q < b->nqueues; q++)
		fds[nfds++] = (struct pollfd){ .fd = b->mmio.kick_fd[q], .events = POLLIN };
	pthread_mutex_lock(&b->lock);
	while (!b->stop || b->in_flight) {
		if (vblk_poll_now(b, &p)) {
			if (!vblk_poll_once(b))
				continue;
			p.misses = 0; /* found something while looking */
		} else if (!vblk_arm_kicks(b)) {
			vblk_sleep(b, fds, nfds);
		}
		if (vblk_reap(b) + vblk_process(b))
			p.last_work_ns = clock_monotonic_ns();
	}
	pthread_mutex_unlock(&b->lock);
	return NULL;
}

/* Lock held: until nothing is in flight (the I/O thread reaps meanwhile). */
static void vblk_wait_idle(struct virtio_blk *b)
{
	while (b->in_flight)
		pthread_cond_wait(&b->cond, &b->lock);
}

/* ---- the VM's and the transport's calls ---- */

static void vblk_mmio(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
	struct virtio_blk *b = opaque;

	virtio_mmio_access(&b->mmio, offset, data, len, is_write);
}

/* The VM pauses (VM lock held): finish what is in flight, take nothing new. */
static void vblk_pause(void *opaque)
{
	struct virtio_blk *b = opaque;
	uint64_t t0 = clock_monotonic_ns(), took;

	pthread_mutex_lock(&b->lock);
	b->paused = true;
	vblk_wake(b);
	vblk_wait_idle(b);
	took = clock_monotonic_ns() - t0;
	b->st.pauses++;
	b->st.pause_last_ns = took;
	if (took > b->st.pause_max_ns)
		b->st.pause_max_ns = took;
	pthread_mutex_unlock(&b->lock);
}

static void vblk_resume(void *opaque)
{
	struct virtio_blk *b = opaque;

	pthread_mutex_lock(&b->lock);
	b->paused = false;
	pthread_mutex_unlock(&b->lock);
	vblk_wake(b);
}

static const struct vm_device_ops vblk_vm_ops = {
	.mmio = vblk_mmio,
	.pause = vblk_pause,
	.resume = vblk_resume,
};

int vblk_setup_queues(struct virtio_blk *b, const uint16_t *last_avail, const uint16_t *used_idx)
{
	bool event_idx = virtio_mmio_has_feature(&b->mmio, VIRTIO_F_EVENT_IDX);

	memset(b->vq, 0, sizeof(b->vq));
	for (uint16_t q = 0; q < b->nqueues; q++) {
		const struct virtio_mmio_queue *r = &b->mmio.queue[q];

		if (!r->ready)
			continue;
		if (vq_setup(&b->vq[q], &b->guest, r->num, r->desc, r->avail, r->used, event_idx,
			     last_avail ? last_avail[q] : 0, used_idx ? used_idx[q] : 0))
			return -EINVAL;
	}
	b->started = true;
	return 0;
}

/* DRIVER_OK (lock held, vCPU thread). */
static int vblk_start_queues(void *opaque)
{
	struct virtio_blk *b = opaque;
	int r = vblk_setup_queues(b, NULL, NULL);

	if (!r)
		vblk_wake(b);
	return r;
}

/* Status 0 (lock held, vCPU thread): nothing in flight when it returns. */
static void vblk_reset(void *opaque)
{
	struct virtio_blk *b = opaque;

	b->started = false;
	vblk_wait_idle(b);
	memset(b->vq, 0, sizeof(b->vq));
}

static const struct virtio_mmio_ops vblk_mmio_ops = {
	.start = vblk_start_queues,
	.reset = vblk_reset,
};

/* ---- creating ---- */

/* Size and hole punching of b->fd into @b.  0 or -errno with @err. */
static int vblk_probe(struct virtio_blk *b, char *err, size_t errlen)
{
	const char *path = b->opts.path;
	struct stat st;
	int r;

	if (fstat(b->fd, &st) < 0) {
		r = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return r;
	}
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(b->fd, BLKGETSIZE64, &b->bytes) < 0) {
			r = -errno;
			snprintf(err, errlen, "%s: BLKGETSIZE64: %s", path, strerror(errno));
			return r;
		}
	} else if (S_ISREG(st.st_mode)) {
		b->bytes = (uint64_t)st.st_size;
	} else {
		snprintf(err, errlen, "%s is neither a regular file nor a block device", path);
		return -EINVAL;
	}
	if (b->bytes == 0 || b->bytes % VIRTIO_BLK_SECTOR_BYTES) {
		snprintf(err, errlen, "%s: its size (%llu bytes) is not a positive multiple of 512",
			 path, (unsigned long long)b->bytes);
		return -EINVAL;
	}
	/* Can it punch holes?  Try beyond the end, where it changes nothing. */
	b->can_punch = !b->opts.readonly && S_ISREG(st.st_mode) &&
		       fallocate(b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				 (off_t)b->bytes, 4096) == 0;
	return 0;
}

/* The file as --disk says, opened: an fd, or -errno with @err. */
static int vblk_open_path(const struct virtio_blk *b, char *err, size_t errlen)
{
	const char *path = b->opts.path;
	int fd = open(path, (b->opts.readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC), r;

	if (fd >= 0)
		return fd;
	r = -errno;
	if (!b->opts.readonly && (errno == EACCES || errno == EROFS) && access(path, R_OK) == 0)
		snprintf(err, errlen, b->opts.incoming
			 ? "%s is read-only (%s): an incoming=on disk receives the "
			   "source's data and must be writable"
			 : "%s is read-only (%s): add readonly=on", path, strerror(errno));
	else
		snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
	return r;
}

/* Open the file as --disk says; its size into b->bytes.  0 or -errno with @err. */
static int vblk_open(struct virtio_blk *b, char *err, size_t errlen)
{
	int fd = vblk_open_path(b, err, errlen);

	if (fd < 0)
		return fd;
	b->fd = fd;
	return vblk_probe(b, err, errlen);
}

static void vblk_fill_config(struct virtio_blk *b, uint64_t *features)
{
	const char *base = strrchr(b->opts.path, '/');
	struct virtio_blk_config *c = &b->config;

	memset(c, 0, sizeof(*c));
	c->capacity = b->bytes / VIRTIO_BLK_SECTOR_BYTES;
	c->seg_max = VQ_MAX_CHAIN - 2;
	c->blk_size = VIRTIO_BLK_SECTOR_BYTES;
	c->num_queues = b->nqueues;
	*features = 1ull << VIRTIO_BLK_F_SEG_MAX | 1ull << VIRTIO_BLK_F_BLK_SIZE |
		    1ull << VIRTIO_BLK_F_FLUSH | 1ull << VIRTIO_BLK_F_MQ;
	if (b->opts.readonly)
		*features |= 1ull << VIRTIO_BLK_F_RO;
	if (b->can_punch) {
		c->max_discard_sectors = c->max_write_zeroes_sectors = VBLK_MAX_SECTORS;
		c->max_discard_seg = c->max_write_zeroes_seg = 1;
		c->discard_sector_alignment = 1;
		c->write_zeroes_may_unmap = 1;
		*features |= 1ull << VIRTIO_BLK_F_DISCARD | 1ull << VIRTIO_BLK_F_WRITE_ZEROES;
	}
	/* The id: the file's name (the same on a migration's destination). */
	base = base ? base + 1 : b->opts.path;
	memcpy(b->id, base, strnlen(base, sizeof(b->id))); /* NUL-padded, not terminated */
}

static int vblk_start_io(struct virtio_blk *b, char *err, size_t errlen)
{
	int r;

	b->reqs = calloc(VBLK_QUEUE_DEPTH, sizeof(*b->reqs));
	b->ring_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	b->ctl_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!b->reqs || b->ring_efd < 0 || b->ctl_efd < 0) {
		snprintf(err, errlen, "out of memory or fds");
		return -ENOMEM;
	}
	r = io_uring_queue_init(VBLK_QUEUE_DEPTH, &b->ring, 0);
	if (r) {
		snprintf(err, errlen, "io_uring: %s (is io_uring disabled on this host?)",
			 strerror(-r));
		return r;
	}
	b->ring_ready = true;
	r = io_uring_register_eventfd(&b->ring, b->ring_efd);
	if (r) {
		snprintf(err, errlen, "io_uring_register_eventfd: %s", strerror(-r));
		return r;
	}
	r = -pthread_create(&b->thread, NULL, vblk_thread, b);
	if (r) {
		snprintf(err, errlen, "cannot start the I/O thread: %s", strerror(-r));
		return r;
	}
	b->thread_started = true;
	return 0;
}

static void vblk_log_disk(const struct virtio_blk *b)
{
	log_info("%s: %s, %llu MiB%s%s%s", b->name, b->opts.path,
		 (unsigned long long)(b->bytes >> 20), b->opts.readonly ? ", read-only" : "",
		 b->can_punch ? ", discard" : "", b->opts.incoming ? ", incoming" : "");
}

int vblk_adopt_fd(struct virtio_blk *b, int fd, char *err, size_t errlen)
{
	uint64_t features;
	int r;

	pthread_mutex_lock(&b->lock);
	if (b->fd >= 0)
		close(b->fd);
	b->fd = fd;
	r = vblk_probe(b, err, errlen);
	if (!r) {
		vblk_fill_config(b, &features);
		virtio_mmio_set_device_features(&b->mmio, features);
		/* A later storage migration needs the size, unknown at creation. */
		blkmig_destroy(&b->mig);
		blkmig_init(&b->mig, b->bytes, b->opts.incoming);
	}
	pthread_mutex_unlock(&b->lock);
	if (!r)
		vblk_log_disk(b);
	return r;
}

int vblk_reopen(struct virtio_blk *b, char *err, size_t errlen)
{
	int fd = vblk_open_path(b, err, errlen);

	return fd < 0 ? fd : vblk_adopt_fd(b, fd, err, errlen);
}

int virtio_blk_create(struct vm *vm, const struct virtio_blk_opts *opts, unsigned index,
		      struct virtio_blk **out, char *err, size_t errlen)
{
	struct virtio_blk *b = calloc(1, sizeof(*b));
	struct ram_block *ram = vm_ram_block(vm, 0);
	uint64_t features;
	int r;

	*out = NULL;
	if (!b) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	b->vm = vm;
	b->index = index;
	snprintf(b->name, sizeof(b->name), "disk%u", index);
	b->opts = *opts;
	b->fd = b->ring_efd = b->ctl_efd = -1;
	b->paused = true; /* until the VM first runs */
	b->inline_reads = true;
	b->poll_ns = (uint64_t)opts->poll_us * 1000;
	b->nqueues = (uint16_t)(vm_nvcpus(vm) < VIRTIO_MMIO_MAX_QUEUES ? vm_nvcpus(vm)
								     : VIRTIO_MMIO_MAX_QUEUES);
	b->guest = (struct vq_guest){ .host = ram->host, .gpa = ram->gpa, .bytes = ram->bytes };
	pthread_mutex_init(&b->lock, NULL);
	pthread_cond_init(&b->cond, NULL);
	for (unsigned q = 0; q < VIRTIO_MMIO_MAX_QUEUES; q++)
		b->mmio.kick_fd[q] = -1;
	r = opts->cpr_inherit ? 0 : vblk_open(b, err, errlen);
	if (r)
		goto fail;
	blkmig_init(&b->mig, b->bytes, opts->incoming);
	vblk_fill_config(b, &features);
	r = vm_add_device(vm, VIRTIO_ID_BLOCK, &vblk_vm_ops, b, &b->mmio_gpa);
	if (r) {
		snprintf(err, errlen, "at most %u devices", VMF_MAX_DEVICES);
		goto fail;
	}
	r = virtio_mmio_init(&b->mmio, vm_vm_fd(vm), b->mmio_gpa, VIRTIO_ID_BLOCK, features,
			     b->nqueues, &b->config, VIRTIO_BLK_CONFIG_BYTES, &vblk_mmio_ops, b,
			     &b->lock);
	if (r) {
		snprintf(err, errlen, "virtio-mmio setup failed: %s", strerror(-r));
		goto fail;
	}
	r = vblk_start_io(b, err, errlen);
	if (r)
		goto fail;
	if (!opts->cpr_inherit)
		vblk_log_disk(b);
	*out = b;
	return 0;
fail:
	virtio_blk_destroy(b);
	return r;
}

void virtio_blk_destroy(struct virtio_blk *b)
{
	if (!b)
		return;
	if (b->thread_started) {
		pthread_mutex_lock(&b->lock);
		b->stop = true;
		pthread_mutex_unlock(&b->lock);
		vblk_wake(b);
		pthread_join(b->thread, NULL);
	}
	if (b->ring_ready)
		io_uring_queue_exit(&b->ring);
	virtio_mmio_destroy(&b->mmio, vm_vm_fd(b->vm));
	if (b->ring_efd >= 0)
		close(b->ring_efd);
	if (b->ctl_efd >= 0)
		close(b->ctl_efd);
	if (b->fd >= 0)
		close(b->fd);
	free(b->reqs);
	blkmig_destroy(&b->mig);
	pthread_cond_destroy(&b->cond);
	pthread_mutex_destroy(&b->lock);
	free(b);
}
