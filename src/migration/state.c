/* The registry of migratable states and the engine's walks over it (state.h). */
#include "migration/internal.h"

static uint32_t mig_state_instances(struct migration *m, const struct mig_state_ops *ops)
{
	return ops->instances == MIG_STATE_PER_VCPU ? vm_nvcpus(m->vm) : ops->instances;
}

static bool mig_state_ops_valid(const struct mig_state_ops *ops)
{
	bool some_iter = ops->save_setup || ops->save_pending || ops->save_iterate;
	bool all_iter = ops->save_setup && ops->save_pending && ops->save_iterate;

	if (!ops->name || !ops->save_complete || !ops->save_cleanup || (some_iter && !all_iter))
		return false;
	if (ops->instances > 64 || !ops->save_resume != !ops->load_received ||
	    !ops->save_settles != !ops->load_settle)
		return false;
	if (ops->section_id)
		return ops->load && ops->version && ops->min_version &&
		       ops->min_version <= ops->version;
	return !ops->load && !ops->load_part;
}

int migration_register_state(struct migration *m, const struct mig_state_ops *ops, void *opaque)
{
	if (!mig_state_ops_valid(ops)) {
		log_error("migration: state '%s' lacks a required callback or has a bad version "
			  "or instance count", ops->name ? ops->name : "?");
		return -EINVAL;
	}
	for (unsigned i = 0; i < m->nstates; i++) {
		if (ops->section_id && m->states[i].ops->section_id == ops->section_id) {
			log_error("migration: section id %u of state '%s' is taken by '%s'",
				  ops->section_id, ops->name, m->states[i].ops->name);
			return -EEXIST;
		}
	}
	if (m->nstates == MIG_STATE_MAX)
		return -ENOSPC;
	m->states[m->nstates++] = (struct mig_state_reg){ .ops = ops, .opaque = opaque };
	return 0;
}

static const struct mig_state_reg *mig_state_by_section(struct migration *m, uint32_t id);

/* ---- source: the engine's walks ---- */

static int mig_save_record(struct mig_save *sv, uint8_t type, uint32_t instance,
			   uint32_t version, const void *data, uint32_t len)
{
	const struct mig_state_ops *ops = sv->cur->ops;

	if (!ops->section_id || len > VMSTATE_SECTION_MAX_BYTES ||
	    instance >= mig_state_instances(sv->m, ops))
		return -EINVAL;
	mig_save_section_record(sv->s, sv->src->header.version, type, ops->section_id, instance,
				version, data, len);
	return 0;
}

int mig_save_section(struct mig_save *sv, uint32_t instance, const void *data, uint32_t len)
{
	return mig_save_record(sv, MIG_REC_SECTION, instance, sv->cur->ops->version, data, len);
}

int mig_save_section_as(struct mig_save *sv, uint32_t instance, uint32_t version,
			const void *data, uint32_t len)
{
	return mig_save_record(sv, MIG_REC_SECTION, instance, version, data, len);
}

int mig_save_part(struct mig_save *sv, uint32_t instance, const void *data, uint32_t len)
{
	return mig_save_record(sv, MIG_REC_SECTION_PART, instance, sv->cur->ops->version, data,
			       len);
}

bool mig_save_storage(const struct mig_save *sv)
{
	return sv->src && sv->src->storage;
}

struct stream *mig_save_stream(struct mig_save *sv)
{
	return sv->s;
}

/* The first error of a callback or of the stream; the state's name in @err. */
static int mig_save_result(struct mig_save *sv, int r, const char *phase, char *err,
			   size_t errlen)
{
	if (!r && stream_error(sv->s))
		r = stream_error(sv->s);
	if (r && err && !err[0])
		snprintf(err, errlen, "%s of state '%s' failed: %s", phase, sv->cur->ops->name,
			 stream_error(sv->s) ? sv->s->errmsg : strerror(-r));
	return r;
}

int mig_states_setup(struct mig_save *sv, char *err, size_t errlen)
{
	struct migration *m = sv->m;

	for (unsigned i = 0; i < m->nstates; i++) {
		sv->cur = &m->states[i];
		if (sv->cur->ops->save_setup) {
			int r = sv->cur->ops->save_setup(sv->cur->opaque, sv);

			if (mig_save_result(sv, r, "setup", err, errlen))
				return r ? r : stream_error(sv->s);
		}
	}
	return 0;
}

int mig_states_pending(struct mig_save *sv, bool sync, uint64_t *bytes, char *err, size_t errlen)
{
	struct migration *m = sv->m;

	*bytes = 0;
	for (unsigned i = 0; i < m->nstates; i++) {
		uint64_t b = 0;
		int r;

		sv->cur = &m->states[i];
		if (!sv->cur->ops->save_pending)
			continue;
		r = sv->cur->ops->save_pending(sv->cur->opaque, sv, sync, &b);
		if (r) {
			snprintf(err, errlen, "state '%s': %s", sv->cur->ops->name, strerror(-r));
			return r;
		}
		*bytes += b;
	}
	return 0;
}

int mig_states_iterate(struct mig_save *sv, char *err, size_t errlen)
{
	struct migration *m = sv->m;

	for (unsigned i = 0; i < m->nstates; i++) {
		int r;

		sv->cur = &m->states[i];
		if (!sv->cur->ops->save_iterate)
			continue;
		r = sv->cur->ops->save_iterate(sv->cur->opaque, sv);
		if (mig_save_result(sv, r, "a precopy step", err, errlen))
			return r ? r : stream_error(sv->s);
	}
	return 0;
}

int mig_states_complete(struct mig_save *sv, const struct mig_save_info *info, char *err,
			size_t errlen)
{
	struct migration *m = sv->m;

	for (unsigned i = 0; i < m->nstates; i++) {
		int r;

		uint64_t t0 = clock_monotonic_ns();

		sv->cur = &m->states[i];
		r = sv->cur->ops->save_complete(sv->cur->opaque, sv, info);
		if (sv->bd)
			sv->bd->state_ns[i] = clock_monotonic_ns() - t0;
		if (mig_save_result(sv, r, "saving", err, errlen))
			return r ? r : stream_error(sv->s);
	}
	return 0;
}

void mig_states_cleanup(struct migration *m, bool completed)
{
	for (unsigned i = 0; i < m->nstates; i++) {
		m->states[i].ops->save_cleanup(m->states[i].opaque, completed);
		if (m->states[i].ops->migration_end)
			m->states[i].ops->migration_end(m->states[i].opaque, true, completed);
	}
}

int mig_states_cpr_lend(struct migration *m, struct cpr_state *cs, char *err, size_t errlen)
{
	for (unsigned i = 0; i < m->nstates; i++) {
		const struct mig_state_reg *st = &m->states[i];
		int r;

		if (!st->ops->cpr_lend_fds)
			continue;
		r = st->ops->cpr_lend_fds(st->opaque, cs, err, errlen);
		if (r)
			return r;
	}
	return 0;
}

/* ---- destination ---- */

int mig_states_cpr_take(struct migration *m, struct cpr_state *cs, char *err, size_t errlen)
{
	for (unsigned i = 0; i < m->nstates; i++) {
		const struct mig_state_reg *st = &m->states[i];
		int r;

		if (!st->ops->cpr_take_fds)
			continue;
		r = st->ops->cpr_take_fds(st->opaque, cs, err, errlen);
		if (r)
			return r;
	}
	/* Whatever nobody took would be lost silently: a device missing here. */
	for (unsigned i = 0; i < cs->nfds; i++) {
		if (cs->fds[i].fd < 0)
			continue;
		snprintf(err, errlen, "the old process lent the %s fd %s, which nothing in this "
			 "process takes (is a --disk missing here?)", cpr_fd_kind_name(cs->fds[i].kind),
			 cs->fds[i].name);
		return -EINVAL;
	}
	return 0;
}

size_t mig_states_section_kinds(struct migration *m, struct mig_section_kind *kinds)
{
	size_t n = 0;

	for (unsigned i = 0; i < m->nstates; i++) {
		const struct mig_state_ops *ops = m->states[i].ops;

		if (!ops->section_id)
			continue;
		kinds[n++] = (struct mig_section_kind){
			.id = ops->section_id, .name = ops->name, .required = ops->required,
			.instances = mig_state_instances(m, ops),
		};
	}
	return n;
}

static const struct mig_state_reg *mig_state_by_section(struct migration *m, uint32_t id)
{
	for (unsigned i = 0; i < m->nstates; i++)
		if (m->states[i].ops->section_id == id)
			return &m->states[i];
	return NULL;
}

int mig_states_load(struct migration *m, uint32_t id, uint32_t instance, uint32_t version,
		    bool part, const uint8_t *data, uint32_t len, char *err, size_t errlen)
{
	const struct mig_state_reg *st = mig_state_by_section(m, id);

	if (!st) { /* mig_load checked it against the kinds: cannot happen */
		snprintf(err, errlen, "unknown section id %u", id);
		return -EBADMSG;
	}
	if (version < st->ops->min_version || version > st->ops->version) {
		snprintf(err, errlen, "%s section version %u; this build reads %u..%u%s",
			 st->ops->name, version, st->ops->min_version, st->ops->version,
			 version > st->ops->version ? " (the source is newer: update this side)" : "");
		return -EBADMSG;
	}
	if (part && !st->ops->load_part) {
		snprintf(err, errlen, "%s section %u: parts are not taken here", st->ops->name,
			 instance);
		return -EBADMSG;
	}
	return (part ? st->ops->load_part : st->ops->load)(st->opaque, instance, version, data, len,
							   err, errlen);
}

int mig_states_load_complete(struct migration *m, char *err, size_t errlen)
{
	for (unsigned i = 0; i < m->nstates; i++) {
		const struct mig_state_reg *st = &m->states[i];
		int r;

		if (!st->ops->load_complete)
			continue;
		r = st->ops->load_complete(st->opaque, err, errlen);
		if (r)
			return r;
	}
	return 0;
}

int mig_states_load_settle(struct migration *m, char *err, size_t errlen)
{
	int any = 0;

	for (unsigned i = 0; i < m->nstates; i++) {
		const struct mig_state_reg *st = &m->states[i];
		int r;

		if (!st->ops->load_settle)
			continue;
		r = st->ops->load_settle(st->opaque, err, errlen);
		if (r < 0)
			return r;
		any |= r > 0;
	}
	return any;
}

bool mig_states_save_settles(struct migration *m)
{
	for (unsigned i = 0; i < m->nstates; i++) {
		const struct mig_state_reg *st = &m->states[i];

		if (st->ops->save_settles && st->ops->save_settles(st->opaque))
			return true;
	}
	return false;
}

/* ---- postcopy ---- */

int mig_states_push(struct mig_save *sv, uint64_t *left_bytes, char *err, size_t errlen)
{
	struct migration *m = sv->m;

	*left_bytes = 0;
	for (unsigned i = 0; i < m->nstates; i++) {
		uint64_t left = 0;
		int r;

		sv->cur = &m->states[i];
		if (!sv->cur->ops->save_push)
			continue;
		r = sv->cur->ops->save_push(sv->cur->opaque, sv, &left);
		if (mig_save_result(sv, r, "a postcopy step", err, errlen))
			return r ? r : stream_error(sv->s);
		*left_bytes += left;
	}
	return 0;
}

int mig_states_request(struct mig_save *sv, const struct mig_rp_msg *msg, char *err,
		       size_t errlen)
{
	const struct mig_state_reg *st = mig_state_by_section(sv->m, msg->section_id);

	if (!st || !st->ops->save_request) {
		snprintf(err, errlen, "the destination asked for data of section %u, which has "
			 "none to ask for", msg->section_id);
		return -EBADMSG;
	}
	sv->cur = st;
	return st->ops->save_request(st->opaque, sv, msg->instance, msg->offset, msg->length);
}

/*
 * Return-path thread: a state's data the destination asked for (STATE_REQ),
 * sent by the state on the urgent channel at once.  A request the state
 * refuses (no such section, instance or range) fails the migration.
 */
void mig_states_serve_request(struct mig_src *src, const struct mig_rp_msg *msg)
{
	struct mig_save sv = { .m = src->m, .src = src, .s = &src->urgent };
	char err[256] = "";
	int r;

	atomic_fetch_add(&src->m->postcopy_requests, 1);
	r = mig_states_request(&sv, msg, err, sizeof(err));
	if (r && !stream_error(&src->urgent)) {
		snprintf(src->rp_error, sizeof(src->rp_error), "%s",
			 err[0] ? err : strerror(-r));
		src->rp_result = r;
		return;
	}
	stream_flush(&src->urgent);
}

/*
 * After the RAM bitmap of a resumed connection: one STATE_BITMAP per
 * instance of every state with postcopy data (state.h's save_resume), in
 * registration order.  0 or -errno with @why.
 */
int mig_states_read_bitmaps(struct mig_src *src, char *why, size_t whylen)
{
	unsigned n = mig_states_bitmaps(src->m);

	for (unsigned k = 0; k < n; k++) {
		struct mig_rp_msg msg = { 0 };
		char err[256];
		int r = mig_rp_read(&src->s, &msg, err, sizeof(err));

		if (r) {
			snprintf(why, whylen, "no state bitmap from the destination: %s", err);
			return r;
		}
		r = mig_states_apply_bitmap(src->m, k, &msg, why, whylen);
		mig_rp_msg_release(&msg);
		if (r)
			return r;
	}
	return 0;
}

unsigned mig_states_bitmaps(struct migration *m)
{
	unsigned n = 0;

	for (unsigned i = 0; i < m->nstates; i++)
		if (m->states[i].ops->save_resume)
			n += mig_state_instances(m, m->states[i].ops);
	return n;
}

int mig_states_apply_bitmap(struct migration *m, unsigned k, const struct mig_rp_msg *msg,
			    char *err, size_t errlen)
{
	for (unsigned i = 0; i < m->nstates; i++) {
		const struct mig_state_reg *st = &m->states[i];
		uint32_t n;

		if (!st->ops->save_resume)
			continue;
		n = mig_state_instances(m, st->ops);
		if (k >= n) {
			k -= n;
			continue;
		}
		if (msg->type != MIG_RP_STATE_BITMAP || msg->section_id != st->ops->section_id ||
		    msg->instance != k) {
			snprintf(err, errlen, "expected the bitmap of %s %u, got message type %u "
				 "(section %u, instance %u)", st->ops->name, k, msg->type,
				 msg->section_id, msg->instance);
			return -EPROTO;
		}
		return st->ops->save_resume(st->opaque, k, msg->bitmap, msg->bitmap_pages, err,
					    errlen);
	}
	return -EINVAL;
}

int mig_states_send_bitmaps(struct migration *m, struct stream *s)
{
	for (unsigned i = 0; i < m->nstates && !stream_error(s); i++) {
		const struct mig_state_reg *st = &m->states[i];
		uint32_t n = st->ops->load_received ? mig_state_instances(m, st->ops) : 0;

		for (uint32_t k = 0; k < n && !stream_error(s); k++) {
			uint8_t *bits = NULL;
			uint64_t nbits = 0;
			int r = st->ops->load_received(st->opaque, k, &bits, &nbits);

			if (r)
				return r;
			mig_rp_send_state_bitmap(s, st->ops->section_id, k, nbits,
						 bits ? bits : (const uint8_t *)"");
			free(bits);
		}
	}
	return stream_error(s);
}

uint64_t mig_states_load_pending(struct migration *m)
{
	uint64_t n = 0;

	for (unsigned i = 0; i < m->nstates; i++)
		if (m->states[i].ops->load_pending)
			n += m->states[i].ops->load_pending(m->states[i].opaque);
	return n;
}

void mig_states_query(struct migration *m, struct json_object *reply)
{
	for (unsigned i = 0; i < m->nstates; i++)
		if (m->states[i].ops->query)
			m->states[i].ops->query(m->states[i].opaque, reply);
}

void mig_states_end(struct migration *m, bool source, bool completed)
{
	for (unsigned i = 0; i < m->nstates; i++)
		if (m->states[i].ops->migration_end)
			m->states[i].ops->migration_end(m->states[i].opaque, source, completed);
}
