/*
 * virtio-blk: --disk parsing, query-block, and the disks as a migratable
 * state.
 *
 * Migration with a shared disk (both sides open the same file): the disk's
 * data needs no moving, only the device's state - the transport's registers
 * and each queue's indices.  In-flight requests are drained, not carried:
 * the VM's pause (vm_pause_locked, when the vCPUs stop for the switch-over
 * or the postcopy package or a CPR) first waits for every request in flight
 * to complete into guest RAM - data, status byte, used ring, all marked
 * dirty - so that RAM's last dirty pass (or postcopy's last dirty sync,
 * which follow the stop) carries them, and the section describes a device
 * with nothing in flight.  On a failed migration the VM resumes here and
 * so does the disk.  docs/devices.md has the section byte by byte.
 */
#include "devices/virtio_blk_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <json-c/json.h>

#include "control/control.h"
#include "migration/cpr.h"
#include "migration/migration.h"
#include "migration/state.h"
#include "util/log.h"

/* ---- --disk ---- */

/* "on"/"off" (also yes/no, true/false, 1/0) into *@v; 0 or -EINVAL. */
static int vblk_parse_bool(const char *s, size_t n, bool *v)
{
	static const char *const on[] = { "on", "yes", "true", "1" };
	static const char *const off[] = { "off", "no", "false", "0" };

	for (size_t i = 0; i < sizeof(on) / sizeof(on[0]); i++) {
		if (strlen(on[i]) == n && !strncmp(s, on[i], n)) {
			*v = true;
			return 0;
		}
		if (strlen(off[i]) == n && !strncmp(s, off[i], n)) {
			*v = false;
			return 0;
		}
	}
	return -EINVAL;
}

/* poll-us=N: 0..VIRTIO_BLK_POLL_US_MAX, decimal. */
static int vblk_parse_poll_us(const char *v, size_t vlen, uint32_t *out, char *err,
			      size_t errlen)
{
	uint32_t n = 0;

	for (size_t i = 0; i < vlen && n <= VIRTIO_BLK_POLL_US_MAX; i++) {
		if (v[i] < '0' || v[i] > '9') {
			n = VIRTIO_BLK_POLL_US_MAX + 1;
			break;
		}
		n = n * 10 + (uint32_t)(v[i] - '0');
	}
	if (vlen == 0 || n > VIRTIO_BLK_POLL_US_MAX) {
		snprintf(err, errlen, "poll-us=%.*s: microseconds, 0 to %u", (int)vlen, v,
			 VIRTIO_BLK_POLL_US_MAX);
		return -EINVAL;
	}
	*out = n;
	return 0;
}

/* One key=value of --disk into @out; @seen: the keys given so far (bits). */
static int vblk_parse_key(const char *k, size_t klen, const char *v, size_t vlen,
			  struct virtio_blk_opts *out, unsigned *seen, char *err, size_t errlen)
{
	static const char *const keys[] = { "file", "readonly", "incoming", "poll-us" };
	const unsigned nkeys = sizeof(keys) / sizeof(keys[0]);
	unsigned i;

	for (i = 0; i < nkeys; i++)
		if (strlen(keys[i]) == klen && !strncmp(k, keys[i], klen))
			break;
	if (i == nkeys || (*seen & (1u << i))) {
		snprintf(err, errlen, "%s key '%.*s' (known: file, readonly, incoming, poll-us)",
			 i == nkeys ? "unknown" : "repeated", (int)klen, k);
		return -EINVAL;
	}
	*seen |= 1u << i;
	if (i == 0) {
		if (vlen == 0 || vlen >= sizeof(out->path)) {
			snprintf(err, errlen, "file= needs a path (shorter than %zu)",
				 sizeof(out->path));
			return -EINVAL;
		}
		memcpy(out->path, v, vlen);
		return 0;
	}
	if (i == 3)
		return vblk_parse_poll_us(v, vlen, &out->poll_us, err, errlen);
	if (vblk_parse_bool(v, vlen, i == 1 ? &out->readonly : &out->incoming)) {
		snprintf(err, errlen, "%s=%.*s: on or off", keys[i], (int)vlen, v);
		return -EINVAL;
	}
	return 0;
}

int virtio_blk_parse_opts(const char *spec, struct virtio_blk_opts *out, char *err,
			  size_t errlen)
{
	const char *p = spec;
	unsigned seen = 0;

	memset(out, 0, sizeof(*out));
	out->poll_us = VIRTIO_BLK_POLL_US_DEFAULT;
	while (*p) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		const char *eq = memchr(p, '=', len);
		size_t klen = eq ? (size_t)(eq - p) : len, vlen = eq ? len - klen - 1 : 0;

		if (!eq || klen == 0) {
			snprintf(err, errlen, "'%.*s' is not key=value (file=PATH[,readonly=on])",
				 (int)len, p);
			return -EINVAL;
		}
		if (vblk_parse_key(p, klen, eq + 1, vlen, out, &seen, err, errlen))
			return -EINVAL;
		p += len + (comma ? 1 : 0);
	}
	if (!(seen & 1u)) {
		snprintf(err, errlen, "file=PATH is required");
		return -EINVAL;
	}
	if (out->readonly && out->incoming) {
		snprintf(err, errlen, "incoming=on receives the source's data: it cannot be "
			 "readonly=on");
		return -EINVAL;
	}
	return 0;
}

/* ---- query-block ---- */

static struct json_object *vblk_query_one(struct virtio_blk *b)
{
	struct json_object *o = json_object_new_object(), *st = json_object_new_object();

	pthread_mutex_lock(&b->lock);
	json_object_object_add(o, "device", json_object_new_string(b->name));
	json_object_object_add(o, "file", json_object_new_string(b->opts.path));
	json_object_object_add(o, "size", json_object_new_uint64(b->bytes));
	json_object_object_add(o, "id", json_object_new_string_len(b->id, (int)strnlen(b->id, sizeof(b->id))));
	json_object_object_add(o, "read-only", json_object_new_boolean(b->opts.readonly));
	json_object_object_add(o, "discard", json_object_new_boolean(b->can_punch));
	json_object_object_add(o, "mmio-gpa", json_object_new_uint64(b->mmio_gpa));
	json_object_object_add(o, "queues", json_object_new_int(b->nqueues));
	json_object_object_add(o, "status", json_object_new_int((int)b->mmio.status));
	json_object_object_add(o, "in-flight", json_object_new_int((int)b->in_flight));
	blkmig_query_block(&b->mig, o);
	json_object_object_add(st, "rd_bytes", json_object_new_uint64(b->st.rd_bytes));
	json_object_object_add(st, "wr_bytes", json_object_new_uint64(b->st.wr_bytes));
	json_object_object_add(st, "rd_operations", json_object_new_uint64(b->st.rd_ops));
	json_object_object_add(st, "wr_operations", json_object_new_uint64(b->st.wr_ops));
	json_object_object_add(st, "flush_operations", json_object_new_uint64(b->st.flush_ops));
	json_object_object_add(st, "discard_operations",
			       json_object_new_uint64(b->st.discard_ops));
	json_object_object_add(st, "write_zeroes_operations",
			       json_object_new_uint64(b->st.write_zeroes_ops));
	json_object_object_add(st, "get_id_operations", json_object_new_uint64(b->st.get_id_ops));
	json_object_object_add(st, "failed_operations", json_object_new_uint64(b->st.failed_ops));
	json_object_object_add(st, "invalid_operations",
			       json_object_new_uint64(b->st.invalid_ops));
	json_object_object_add(st, "pauses", json_object_new_uint64(b->st.pauses));
	json_object_object_add(st, "pause_last_ns", json_object_new_uint64(b->st.pause_last_ns));
	json_object_object_add(st, "pause_max_ns", json_object_new_uint64(b->st.pause_max_ns));
	pthread_mutex_unlock(&b->lock);
	json_object_object_add(o, "stats", st);
	return o;
}

static int vblk_cmd_query_block(void *opaque, struct json_object *args, struct json_object **ret,
				char *err, size_t errlen)
{
	struct virtio_blk_disks *disks = opaque;

	(void)args; (void)err; (void)errlen;
	*ret = json_object_new_array();
	for (unsigned i = 0; i < disks->n; i++)
		json_object_array_add(*ret, vblk_query_one(disks->disk[i]));
	return 0;
}

int virtio_blk_register_commands(struct virtio_blk_disks *disks, struct control_server *srv)
{
	const struct control_command cmd = {
		.name = "query-block", .fn = vblk_cmd_query_block, .opaque = disks,
	};

	return control_server_register(srv, &cmd);
}

/* ---- the section ---- */

#define VBLK_STATE_VERSION 1u
#define VBLK_HEAD_BYTES 64u   /* through driver_features; see docs/devices.md */
#define VBLK_QUEUE_BYTES 32u
#define VBLK_SECTION_MAX (VBLK_HEAD_BYTES + VIRTIO_MMIO_MAX_QUEUES * VBLK_QUEUE_BYTES)

/* A little-endian cursor over a section; an overrun sticks (checked at the end). */
struct vblk_cur {
	uint8_t *p;
	const uint8_t *end;
	bool bad;
};

static void vblk_put(struct vblk_cur *c, uint64_t v, unsigned n)
{
	if (c->bad || (size_t)(c->end - c->p) < n) {
		c->bad = true;
		return;
	}
	for (unsigned i = 0; i < n; i++)
		*c->p++ = (uint8_t)(v >> (8 * i));
}

static uint64_t vblk_get(struct vblk_cur *c, unsigned n)
{
	uint64_t v = 0;

	if (c->bad || (size_t)(c->end - c->p) < n) {
		c->bad = true;
		return 0;
	}
	for (unsigned i = 0; i < n; i++)
		v |= (uint64_t)*c->p++ << (8 * i);
	return v;
}

/* Lock held, nothing in flight: the device's state into @buf.  Its length. */
static uint32_t vblk_save(struct virtio_blk *b, uint8_t *buf)
{
	struct vblk_cur c = { .p = buf, .end = buf + VBLK_SECTION_MAX };
	const struct virtio_mmio *t = &b->mmio;

	vblk_put(&c, VIRTIO_ID_BLOCK, 4);
	vblk_put(&c, b->nqueues, 4);
	vblk_put(&c, b->mmio_gpa, 8);
	vblk_put(&c, b->bytes, 8);
	vblk_put(&c, b->opts.readonly, 4);
	vblk_put(&c, t->status, 4);
	vblk_put(&c, t->device_features_sel, 4);
	vblk_put(&c, t->driver_features_sel, 4);
	vblk_put(&c, t->queue_sel, 4);
	vblk_put(&c, t->config_generation, 4);
	vblk_put(&c, b->started, 4);
	vblk_put(&c, 0, 4);
	vblk_put(&c, t->driver_features, 8);
	for (uint16_t q = 0; q < b->nqueues; q++) {
		const struct virtio_mmio_queue *r = &t->queue[q];

		vblk_put(&c, r->num, 2);
		vblk_put(&c, r->ready, 2);
		vblk_put(&c, b->vq[q].last_avail, 2);
		vblk_put(&c, b->vq[q].used_idx, 2);
		vblk_put(&c, r->desc, 8);
		vblk_put(&c, r->avail, 8);
		vblk_put(&c, r->used, 8);
	}
	return (uint32_t)(c.p - buf);
}

/* ---- storage migration: the disks' data as parts (blk_migrate.c) ---- */

static int vblk_save_setup(void *opaque, struct mig_save *sv)
{
	struct virtio_blk_disks *disks = opaque;
	int r = 0;

	if (!mig_save_storage(sv))
		return 0; /* a shared disk: only the section moves */
	for (unsigned i = 0; i < disks->n && !r; i++)
		r = blkmig_save_setup(disks->disk[i], sv, i);
	return r;
}

static int vblk_save_pending(void *opaque, struct mig_save *sv, bool sync, uint64_t *bytes)
{
	struct virtio_blk_disks *disks = opaque;

	(void)sv; (void)sync; /* the bitmap is always current */
	*bytes = 0;
	for (unsigned i = 0; i < disks->n; i++)
		*bytes += blkmig_save_pending(disks->disk[i]);
	return 0;
}

static int vblk_save_iterate(void *opaque, struct mig_save *sv)
{
	struct virtio_blk_disks *disks = opaque;
	int r = 0;

	for (unsigned i = 0; i < disks->n && !r; i++)
		r = blkmig_save_iterate(disks->disk[i], sv, i);
	return r;
}

static int vblk_save_push(void *opaque, struct mig_save *sv, uint64_t *left_bytes)
{
	struct virtio_blk_disks *disks = opaque;
	int r = 0;

	*left_bytes = 0;
	for (unsigned i = 0; i < disks->n && !r; i++) {
		uint64_t left = 0;

		r = blkmig_save_push(disks->disk[i], sv, i, &left);
		*left_bytes += left;
	}
	return r;
}

static int vblk_save_request(void *opaque, struct mig_save *sv, uint32_t instance,
			     uint64_t offset, uint32_t len)
{
	struct virtio_blk_disks *disks = opaque;

	if (instance >= disks->n) {
		log_error("virtio-blk: the destination asked for disk %u's data; %u disks",
			  instance, disks->n);
		return -EBADMSG;
	}
	return blkmig_save_request(disks->disk[instance], sv, instance, offset, len);
}

static int vblk_save_resume(void *opaque, uint32_t instance, const uint8_t *bits, uint64_t nbits,
			    char *err, size_t errlen)
{
	struct virtio_blk_disks *disks = opaque;

	return blkmig_save_resume(disks->disk[instance], bits, nbits, err, errlen);
}

static uint64_t vblk_load_pending(void *opaque)
{
	struct virtio_blk_disks *disks = opaque;
	uint64_t n = 0;

	for (unsigned i = 0; i < disks->n; i++)
		n += blkmig_load_pending(disks->disk[i]);
	return n;
}

static int vblk_load_received(void *opaque, uint32_t instance, uint8_t **bits, uint64_t *nbits)
{
	struct virtio_blk_disks *disks = opaque;

	return blkmig_load_received(disks->disk[instance], bits, nbits);
}

static int vblk_load_part(void *opaque, uint32_t instance, uint32_t version, const uint8_t *data,
			  uint32_t len, char *err, size_t errlen)
{
	struct virtio_blk_disks *disks = opaque;

	(void)version;
	if (instance >= disks->n) {
		snprintf(err, errlen, "virtio-blk: blocks for disk %u; this VM has %u disks",
			 instance, disks->n);
		return -EBADMSG;
	}
	return blkmig_load_part(disks->disk[instance], data, len, err, errlen);
}

static int vblk_load_complete(void *opaque, char *err, size_t errlen)
{
	struct virtio_blk_disks *disks = opaque;
	int r = 0;

	for (unsigned i = 0; i < disks->n && !r; i++)
		r = blkmig_load_complete(disks->disk[i], i, err, errlen);
	return r;
}

static int vblk_load_settle(void *opaque, char *err, size_t errlen)
{
	struct virtio_blk_disks *disks = opaque;
	int any = 0;

	for (unsigned i = 0; i < disks->n; i++) {
		int r = blkmig_load_settle(disks->disk[i], i, err, errlen);

		if (r < 0)
			return r;
		any |= r;
	}
	return any;
}

static bool vblk_save_settles(void *opaque)
{
	struct virtio_blk_disks *disks = opaque;

	for (unsigned i = 0; i < disks->n; i++)
		if (blkmig_save_settles(disks->disk[i]))
			return true;
	return false;
}

/* query-migrate's "disk": the disks' data, summed (when any moves or moved). */
static void vblk_query_migrate(void *opaque, struct json_object *reply)
{
	struct virtio_blk_disks *disks = opaque;
	struct blkmig_sums s = { 0 };
	struct json_object *o;

	for (unsigned i = 0; i < disks->n; i++)
		blkmig_query_add(disks->disk[i], &s);
	if (!s.incoming && !s.migrating && !s.bytes && !s.zero_blocks)
		return;
	o = json_object_new_object();
	json_object_object_add(o, "disks", json_object_new_int((int)s.disks));
	json_object_object_add(o, "migrating", json_object_new_int((int)s.migrating));
	json_object_object_add(o, "transferred", json_object_new_uint64(s.bytes));
	json_object_object_add(o, "remaining", json_object_new_uint64(s.dirty_bytes));
	json_object_object_add(o, "blocks-sent", json_object_new_uint64(s.blocks));
	json_object_object_add(o, "zero-blocks", json_object_new_uint64(s.zero_blocks));
	json_object_object_add(o, "blocks-dirtied", json_object_new_uint64(s.dirtied));
	json_object_object_add(o, "blocks-requested", json_object_new_uint64(s.requests));
	json_object_object_add(o, "request-latency-p50-us", json_object_new_uint64(s.lat_p50_us));
	json_object_object_add(o, "request-latency-p99-us", json_object_new_uint64(s.lat_p99_us));
	json_object_object_add(reply, "disk", o);
}

static int vblk_save_complete(void *opaque, struct mig_save *sv, const struct mig_save_info *info)
{
	struct virtio_blk_disks *disks = opaque;
	uint8_t buf[VBLK_SECTION_MAX];
	int r = 0;

	(void)info;
	for (unsigned i = 0; i < disks->n && !r; i++) {
		struct virtio_blk *b = disks->disk[i];
		uint32_t len;

		pthread_mutex_lock(&b->lock);
		/* The VM's pause drained it; a request still here would be lost. */
		if (b->in_flight || !b->paused) {
			pthread_mutex_unlock(&b->lock);
			log_error("%s: %u requests in flight at the stop", b->name, b->in_flight);
			return -EBUSY;
		}
		len = vblk_save(b, buf);
		pthread_mutex_unlock(&b->lock);
		/* Storage migration: the last dirty blocks (postcopy: the marker
		 * that they come later), before the section. */
		r = blkmig_save_final(b, sv, i, info->postcopy);
		if (!r)
			r = mig_save_section(sv, i, buf, len);
	}
	return r;
}

static void vblk_save_cleanup(void *opaque, bool completed)
{
	struct virtio_blk_disks *disks = opaque;

	/* A failed migration resumes the VM, and the disk with it; only the
	 * storage migration's bitmap goes. */
	(void)completed;
	for (unsigned i = 0; i < disks->n; i++)
		blkmig_save_cleanup(disks->disk[i]);
}

/* A queue's registers from the section, checked.  0 or -EBADMSG. */
static int vblk_load_queue(struct virtio_blk *b, struct vblk_cur *c, uint16_t q,
			   struct virtio_mmio_queue *r, uint16_t *last_avail, uint16_t *used_idx,
			   char *err, size_t errlen)
{
	uint64_t ready;

	r->num = (uint16_t)vblk_get(c, 2);
	ready = vblk_get(c, 2);
	*last_avail = (uint16_t)vblk_get(c, 2);
	*used_idx = (uint16_t)vblk_get(c, 2);
	r->desc = vblk_get(c, 8);
	r->avail = vblk_get(c, 8);
	r->used = vblk_get(c, 8);
	r->ready = ready == 1;
	if (ready > 1 || r->num > VQ_MAX_SIZE || (r->num & (r->num - 1))) {
		snprintf(err, errlen, "%s: queue %u: ready %llu, size %u", b->name, q,
			 (unsigned long long)ready, r->num);
		return -EBADMSG;
	}
	return 0;
}

/* The section's fixed part against this disk.  0 or -EBADMSG. */
static int vblk_load_head(struct virtio_blk *b, struct vblk_cur *c, struct virtio_mmio *t,
			  uint64_t *started, char *err, size_t errlen)
{
	uint64_t type = vblk_get(c, 4), nq = vblk_get(c, 4), gpa = vblk_get(c, 8);
	uint64_t bytes = vblk_get(c, 8), ro = vblk_get(c, 4);

	t->status = (uint32_t)vblk_get(c, 4);
	t->device_features_sel = (uint32_t)vblk_get(c, 4);
	t->driver_features_sel = (uint32_t)vblk_get(c, 4);
	t->queue_sel = (uint32_t)vblk_get(c, 4);
	t->config_generation = (uint32_t)vblk_get(c, 4);
	*started = vblk_get(c, 4);
	(void)vblk_get(c, 4);
	t->driver_features = vblk_get(c, 8);
	if (c->bad || type != VIRTIO_ID_BLOCK || nq != b->nqueues || gpa != b->mmio_gpa) {
		snprintf(err, errlen, "%s: the source's device (type %llu, %llu queues at %#llx) "
			 "is not this one (%u queues at %#llx)", b->name, (unsigned long long)type,
			 (unsigned long long)nq, (unsigned long long)gpa, b->nqueues,
			 (unsigned long long)b->mmio_gpa);
		return -EBADMSG;
	}
	if (bytes != b->bytes || ro != b->opts.readonly) {
		snprintf(err, errlen, "%s: the source's disk has %llu bytes%s, %s has %llu%s "
			 "(the same disk must be given with --disk on both sides)", b->name,
			 (unsigned long long)bytes, ro ? " read-only" : "", b->opts.path,
			 (unsigned long long)b->bytes, b->opts.readonly ? " read-only" : "");
		return -EBADMSG;
	}
	if ((t->driver_features & ~b->mmio.device_features) || *started > 1 ||
	    (t->status & ~0xcfu)) {
		snprintf(err, errlen, "%s: features %#llx, status %#x: not what this device offers",
			 b->name, (unsigned long long)t->driver_features, t->status);
		return -EBADMSG;
	}
	return 0;
}

static int vblk_load(void *opaque, uint32_t instance, uint32_t version, const uint8_t *data,
		     uint32_t len, char *err, size_t errlen)
{
	struct virtio_blk_disks *disks = opaque;
	struct virtio_blk *b;
	struct vblk_cur c = { .p = (uint8_t *)data, .end = data + len };
	struct virtio_mmio t;
	uint16_t last_avail[VIRTIO_MMIO_MAX_QUEUES] = { 0 }, used_idx[VIRTIO_MMIO_MAX_QUEUES] = { 0 };
	uint64_t started;
	int r;

	(void)version;
	if (instance >= disks->n) {
		snprintf(err, errlen, "virtio-blk: a section for disk %u; this VM has %u disks",
			 instance, disks->n);
		return -EBADMSG;
	}
	b = disks->disk[instance];
	pthread_mutex_lock(&b->lock);
	t = b->mmio;
	memset(t.queue, 0, sizeof(t.queue));
	r = vblk_load_head(b, &c, &t, &started, err, errlen);
	for (uint16_t q = 0; !r && q < b->nqueues; q++)
		r = vblk_load_queue(b, &c, q, &t.queue[q], &last_avail[q], &used_idx[q], err,
				    errlen);
	if (!r && (c.bad || c.p != c.end)) {
		snprintf(err, errlen, "%s: a section of %u bytes", b->name, len);
		r = -EBADMSG;
	}
	if (!r) {
		b->mmio = t;
		b->started = false;
		memset(b->vq, 0, sizeof(b->vq));
		/* Rings outside this VM's RAM: the driver's problem, as on the source. */
		if (started && vblk_setup_queues(b, last_avail, used_idx))
			virtio_mmio_needs_reset(&b->mmio);
	}
	pthread_mutex_unlock(&b->lock);
	return r;
}

/* ---- CPR: the disks' files are lent, not reopened ---- */

/*
 * Source: each disk's open file, still owned by the disk.  Test hook:
 * VMFERRY_CPR_LEND_NO_DISKS=1 lends none, as a build from before disks
 * were lent (cpr channel version 1) did.
 */
static int vblk_cpr_lend_fds(void *opaque, struct cpr_state *cs, char *err, size_t errlen)
{
	struct virtio_blk_disks *disks = opaque;
	const char *old_build = getenv("VMFERRY_CPR_LEND_NO_DISKS");

	if (old_build && !strcmp(old_build, "1"))
		return 0;

	for (unsigned i = 0; i < disks->n; i++) {
		const struct virtio_blk *b = disks->disk[i];
		int r = cpr_state_add(cs, CPR_FD_DISK, b->name,
				      b->opts.readonly ? CPR_FD_F_READONLY : 0, 0, b->bytes, b->fd,
				      err, errlen);

		if (r)
			return r;
	}
	return 0;
}

/*
 * Is the lent file @f the one --disk names here?  Readonly must match, and
 * the path, if it still exists, must be the very file (same device and
 * inode); a path that no longer exists (unlinked or renamed since the old
 * process opened it) is fine: the lent fd is the disk.  0 or -EINVAL.
 */
static int vblk_cpr_check(const struct virtio_blk *b, const struct cpr_fd *f, char *err,
			  size_t errlen)
{
	bool lent_ro = f->flags & CPR_FD_F_READONLY;
	struct stat fs, ps;
	int mode = fcntl(f->fd, F_GETFL);

	if (lent_ro != b->opts.readonly || mode < 0 ||
	    ((mode & O_ACCMODE) == O_RDONLY) != lent_ro) {
		snprintf(err, errlen, "%s: the old process has it open %s, --disk here says "
			 "readonly=%s", b->name, lent_ro ? "read-only" : "read-write",
			 b->opts.readonly ? "on" : "off");
		return -EINVAL;
	}
	if (fstat(f->fd, &fs) < 0) {
		snprintf(err, errlen, "%s: fstat of the lent file: %s", b->name, strerror(errno));
		return -EINVAL;
	}
	if (stat(b->opts.path, &ps) < 0) {
		if (errno != ENOENT) {
			snprintf(err, errlen, "%s: cannot compare --disk file=%s with the lent file: "
				 "%s", b->name, b->opts.path, strerror(errno));
			return -EINVAL;
		}
		log_info("%s: %s no longer exists (unlinked or renamed since the old process "
			 "opened it); going on with the file it had open (inode %llu)", b->name,
			 b->opts.path, (unsigned long long)fs.st_ino);
		return 0;
	}
	if (ps.st_dev != fs.st_dev || ps.st_ino != fs.st_ino) {
		snprintf(err, errlen, "%s: --disk file=%s (inode %llu) is not the file the old "
			 "process has open (inode %llu): give the same disk", b->name, b->opts.path,
			 (unsigned long long)ps.st_ino, (unsigned long long)fs.st_ino);
		return -EINVAL;
	}
	return 0;
}

/* Destination: take each disk's file from the cpr channel instead of opening it. */
static int vblk_cpr_take_fds(void *opaque, struct cpr_state *cs, char *err, size_t errlen)
{
	struct virtio_blk_disks *disks = opaque;

	for (unsigned i = 0; i < disks->n; i++) {
		struct virtio_blk *b = disks->disk[i];
		struct cpr_fd *f = cpr_state_find(cs, CPR_FD_DISK, b->name);
		int fd, r;

		if (cs->version < 2) {
			/* An older build lends RAM only: the disk is opened by path, as it did. */
			log_info("%s: the old process lends no disks (cpr channel version %u): "
				 "opening %s", b->name, cs->version, b->opts.path);
			r = vblk_reopen(b, err, errlen);
			if (r)
				return r;
			continue;
		}
		if (!f) {
			snprintf(err, errlen, "%s: the old process lent no such disk (--disk is given "
				 "%u times here; give the old process's disks, in its order)", b->name,
				 disks->n);
			return -EINVAL;
		}
		r = vblk_cpr_check(b, f, err, errlen);
		if (r)
			return r;
		fd = f->fd;
		f->fd = -1; /* the disk's now */
		r = vblk_adopt_fd(b, fd, err, errlen);
		if (!r && b->bytes != f->bytes) {
			snprintf(err, errlen, "%s: the lent file has %llu bytes, the old process's disk "
				 "%llu", b->name, (unsigned long long)b->bytes,
				 (unsigned long long)f->bytes);
			r = -EINVAL;
		}
		if (r)
			return r;
	}
	return 0;
}

static const struct mig_state_ops vblk_state_ops = {
	.name = "virtio-blk",
	.section_id = VIRTIO_BLK_SECTION_ID,
	.version = VBLK_STATE_VERSION,
	.min_version = VBLK_STATE_VERSION,
	.required = true,
	.save_setup = vblk_save_setup,
	.save_pending = vblk_save_pending,
	.save_iterate = vblk_save_iterate,
	.save_complete = vblk_save_complete,
	.save_cleanup = vblk_save_cleanup,
	.load = vblk_load,
	.load_part = vblk_load_part,
	.load_complete = vblk_load_complete,
	.save_settles = vblk_save_settles,
	.load_settle = vblk_load_settle,
	.save_push = vblk_save_push,
	.save_request = vblk_save_request,
	.save_resume = vblk_save_resume,
	.load_pending = vblk_load_pending,
	.load_received = vblk_load_received,
	.query = vblk_query_migrate,
	.cpr_lend_fds = vblk_cpr_lend_fds,
	.cpr_take_fds = vblk_cpr_take_fds,
};

int virtio_blk_register_state(struct virtio_blk_disks *disks, struct migration *m)
{
	/* One VM per process, so one table: registration keeps the pointer. */
	static struct mig_state_ops ops[1];

	if (disks->n == 0)
		return 0;
	for (unsigned i = 0; i < disks->n; i++) {
		disks->disk[i]->mig.m = m; /* storage postcopy asks through it */
		disks->disk[i]->mig.index = i;
	}
	ops[0] = vblk_state_ops;
	ops[0].instances = disks->n;
	return migration_register_state(m, &ops[0], disks);
}
