/* Control commands of the migration module, its parameters, and query-migrate. */
#include "migration/internal.h"

/*
 * A time in ms or µs for query-migrate: a JSON number with 3 decimals
 * (nanosecond resolution), not the 17 digits of a plain double.
 */
static struct json_object *mig_json_fixed3(double v)
{
	struct json_object *o = json_object_new_double(v);

	json_object_set_serializer(o, json_object_double_to_json_string, (void *)"%.3f", NULL);
	return o;
}

/* ---- query ---- */

/* QMP's "ram" object (QEMU's names; "duplicate" is its word for zero pages). */
static void mig_query_ram(struct migration *m, struct json_object *o)
{
	struct json_object *ram = json_object_new_object();
	uint64_t normal = atomic_load(&m->normal_pages);

	json_object_object_add(ram, "transferred", json_object_new_uint64(atomic_load(&m->transferred)));
	json_object_object_add(ram, "remaining", json_object_new_uint64(atomic_load(&m->remaining_bytes)));
	json_object_object_add(ram, "total", json_object_new_uint64(m->total_bytes));
	json_object_object_add(ram, "duplicate", json_object_new_uint64(atomic_load(&m->zero_pages)));
	json_object_object_add(ram, "normal", json_object_new_uint64(normal));
	json_object_object_add(ram, "normal-bytes", json_object_new_uint64(normal * MIG_PAGE_BYTES));
	json_object_object_add(ram, "mbps", mig_json_fixed3((double)atomic_load(&m->throughput_bps) *
							   8 / 1e6));
	json_object_object_add(ram, "dirty-pages-rate",
			       json_object_new_uint64(atomic_load(&m->dirty_pages_rate)));
	json_object_object_add(ram, "dirty-sync-count",
			       json_object_new_uint64(atomic_load(&m->dirty_sync_count)));
	json_object_object_add(ram, "page-size", json_object_new_uint64(MIG_PAGE_BYTES));
	json_object_object_add(o, "ram", ram);
}

/*
 * downtime-breakdown: where the pause went, in ms.  Source: stopping the
 * vCPUs, each state's save ("state-ram": the last pass), the discard list
 * (postcopy), sending END or RUN, and the rest until the destination's
 * first vCPU run.  Destination: from the source's stop to END or RUN
 * (one clock only; it includes the load), loading the sections, the
 * discards, userfaultfd registration (postcopy), starting the vCPUs.
 */
static struct json_object *mig_query_breakdown(struct migration *m, const struct mig_breakdown *bd)
{
	struct json_object *o = json_object_new_object();

	if (m->incoming) {
		if (bd->receive_ns)
			json_object_object_add(o, "receive", mig_json_fixed3((double)bd->receive_ns / 1e6));
		json_object_object_add(o, "load", mig_json_fixed3((double)bd->load_ns / 1e6));
		if (bd->discard_ns)
			json_object_object_add(o, "discard", mig_json_fixed3((double)bd->discard_ns / 1e6));
		if (bd->uffd_ns)
			json_object_object_add(o, "userfaultfd", mig_json_fixed3((double)bd->uffd_ns / 1e6));
		json_object_object_add(o, "vcpu-start", mig_json_fixed3((double)bd->start_ns / 1e6));
		return o;
	}
	json_object_object_add(o, "vcpu-stop", mig_json_fixed3((double)bd->vcpu_stop_ns / 1e6));
	for (unsigned i = 0; i < m->nstates; i++) {
		char key[64];

		snprintf(key, sizeof(key), "state-%s", m->states[i].ops->name);
		json_object_object_add(o, key, mig_json_fixed3((double)bd->state_ns[i] / 1e6));
	}
	if (bd->discard_ns)
		json_object_object_add(o, "discard", mig_json_fixed3((double)bd->discard_ns / 1e6));
	json_object_object_add(o, "send", mig_json_fixed3((double)bd->send_ns / 1e6));
	json_object_object_add(o, "destination", mig_json_fixed3((double)bd->wait_ns / 1e6));
	return o;
}

/* The destination's postcopy figures, kept at the end. */
static void mig_query_pc_dst(struct json_object *o, const struct postcopy_dst_stats *st)
{
	json_object_object_add(o, "postcopy-requests", json_object_new_uint64(st->requests));
	json_object_object_add(o, "postcopy-faults", json_object_new_uint64(st->faults));
	json_object_object_add(o, "fault-latency-p50-us", mig_json_fixed3((double)st->latency_p50_ns / 1e3));
	json_object_object_add(o, "fault-latency-p99-us", mig_json_fixed3((double)st->latency_p99_ns / 1e3));
	json_object_object_add(o, "fault-latency-max-us", mig_json_fixed3((double)st->latency_max_ns / 1e3));
	json_object_object_add(o, "vcpu-blocked-time", mig_json_fixed3((double)st->blocked_ns / 1e6));
}

/* What query-migrate reads under m->lock, copied in one go. */
struct mig_query_snap {
	enum mig_status status;
	enum mig_mode mode;
	char error[MIG_ERROR_BYTES];
	char uri[CHANNEL_URI_BYTES];
	uint64_t start_ns, setup_ns, end_ns, downtime_ns, expected_downtime_ms;
	bool downtime_known, downtime_same_clock, pc_stats_valid;
	struct postcopy_dst_stats pc_stats;
	struct mig_breakdown bd;
};

/* Copy into @snap what m->lock protects (takes the lock). */
static void mig_query_snapshot(struct migration *m, struct mig_query_snap *snap)
{
	pthread_mutex_lock(&m->lock);
	snap->status = m->status;
	snap->mode = m->params.mode;
	memcpy(snap->error, m->error, sizeof(snap->error));
	memcpy(snap->uri, m->main_ch.uri, sizeof(snap->uri));
	snap->start_ns = m->start_ns;
	snap->setup_ns = m->setup_ns;
	snap->end_ns = m->end_ns;
	snap->downtime_ns = m->downtime_ns;
	snap->downtime_known = m->downtime_known;
	snap->downtime_same_clock = m->downtime_same_clock;
	snap->expected_downtime_ms = m->expected_downtime_ms;
	snap->pc_stats = m->pc_stats;
	snap->pc_stats_valid = m->pc_stats_valid;
	snap->bd = m->bd;
	pthread_mutex_unlock(&m->lock);
}

/* Add to @o who and how (role, mode, uri) and the times: total, setup, downtime and its breakdown. */
static void mig_query_times(struct migration *m, const struct mig_query_snap *snap, uint64_t now,
			    struct json_object *o)
{
	uint64_t total_ns;

	json_object_object_add(o, "role", json_object_new_string(m->incoming ? "destination" : "source"));
	json_object_object_add(o, "mode", json_object_new_string(mig_mode_name(snap->mode)));
	json_object_object_add(o, "uri", json_object_new_string(snap->uri));
	json_object_object_add(o, "cpu-throttle-max", json_object_new_int((int)atomic_load(&m->throttle_max)));
	total_ns = snap->start_ns ? (snap->end_ns ? snap->end_ns : now) - snap->start_ns : 0;
	json_object_object_add(o, "total-time", mig_json_fixed3((double)total_ns / 1e6));
	json_object_object_add(o, "setup-time", mig_json_fixed3((double)snap->setup_ns / 1e6));
	if (snap->downtime_known) {
		json_object_object_add(o, "downtime", mig_json_fixed3((double)snap->downtime_ns / 1e6));
		json_object_object_add(o, "downtime-measured",
				       json_object_new_string(snap->downtime_same_clock
							      ? "source-vcpu-stop-to-destination-vcpu-run"
							      : "source-vcpu-stop-to-running-ack"));
	}
	if (snap->bd.valid)
		json_object_object_add(o, "downtime-breakdown", mig_query_breakdown(m, &snap->bd));
	if (!m->incoming)
		json_object_object_add(o, "expected-downtime",
				       json_object_new_uint64(snap->expected_downtime_ms));
}

/* Add to @o the transfer counters of either side, the "ram" object and the CRC counters. */
static void mig_query_counters(struct migration *m, unsigned throttle, struct json_object *o)
{
	json_object_object_add(o, "transferred", json_object_new_uint64(atomic_load(&m->transferred)));
	json_object_object_add(o, "remaining", json_object_new_uint64(atomic_load(&m->remaining_bytes)));
	json_object_object_add(o, "total", json_object_new_uint64(m->total_bytes));
	json_object_object_add(o, "zero-pages", json_object_new_uint64(atomic_load(&m->zero_pages)));
	json_object_object_add(o, "normal-pages", json_object_new_uint64(atomic_load(&m->normal_pages)));
	json_object_object_add(o, "passes", json_object_new_uint64(atomic_load(&m->passes)));
	json_object_object_add(o, "dirty-sync-count", json_object_new_uint64(atomic_load(&m->dirty_sync_count)));
	json_object_object_add(o, "dirty-pages-rate", json_object_new_uint64(atomic_load(&m->dirty_pages_rate)));
	json_object_object_add(o, "throughput", json_object_new_uint64(atomic_load(&m->throughput_bps)));
	json_object_object_add(o, "cpu-throttle-percentage", json_object_new_int((int)throttle));
	mig_query_ram(m, o);
	json_object_object_add(o, "crc-suspect-pages", json_object_new_uint64(atomic_load(&m->crc_suspects)));
	json_object_object_add(o, "crc-mismatches", json_object_new_uint64(atomic_load(&m->crc_mismatches)));
	json_object_object_add(o, "crc-resends", json_object_new_uint64(atomic_load(&m->crc_resends)));
}

/*
 * Add to @o the postcopy figures: the source's once postcopy ran (live
 * while it runs), the destination's userfaultfd mode and fault figures.
 */
static void mig_query_postcopy(struct migration *m, const struct mig_query_snap *snap,
			       struct json_object *o)
{
	if (!m->incoming && (snap->status == MIG_STATUS_POSTCOPY_ACTIVE ||
			     snap->status == MIG_STATUS_POSTCOPY_PAUSED ||
			     atomic_load(&m->pages_pushed) || atomic_load(&m->pages_requested))) {
		json_object_object_add(o, "postcopy-requests", json_object_new_uint64(atomic_load(&m->postcopy_requests)));
		json_object_object_add(o, "postcopy-pages-pushed", json_object_new_uint64(atomic_load(&m->pages_pushed)));
		json_object_object_add(o, "postcopy-pages-requested", json_object_new_uint64(atomic_load(&m->pages_requested)));
		json_object_object_add(o, "postcopy-pages-resent", json_object_new_uint64(atomic_load(&m->pages_resent)));
	}
	if (m->incoming && atomic_load(&m->pc_prepared))
		json_object_object_add(o, "postcopy-uffd-mode",
				       json_object_new_string(vm_ram_block(m->vm, 0)->alias ? "minor"
											: "missing"));
	if (m->incoming && snap->pc_stats_valid)
		mig_query_pc_dst(o, &snap->pc_stats);
}

struct json_object *migration_query(struct migration *m)
{
	struct json_object *o = json_object_new_object();
	struct mig_query_snap snap;
	uint64_t now = clock_monotonic_ns();
	unsigned throttle = vm_get_throttle(m->vm);

	mig_query_snapshot(m, &snap);
	json_object_object_add(o, "status", json_object_new_string(mig_status_name(snap.status)));
	if (snap.status == MIG_STATUS_NONE)
		return o;
	mig_query_times(m, &snap, now, o);
	mig_query_counters(m, throttle, o);
	mig_query_postcopy(m, &snap, o);
	if (m->incoming || atomic_load(&m->prealloc_bytes)) {
		json_object_object_add(o, "prealloc-bytes", json_object_new_uint64(atomic_load(&m->prealloc_bytes)));
		json_object_object_add(o, "prealloc-time",
				       mig_json_fixed3((double)atomic_load(&m->prealloc_ns) / 1e6));
	}
	if (atomic_load(&m->postcopy_pauses)) {
		json_object_object_add(o, "postcopy-pauses",
				       json_object_new_uint64(atomic_load(&m->postcopy_pauses)));
		if (!m->incoming)
			json_object_object_add(o, "postcopy-resume-failures",
					       json_object_new_uint64(atomic_load(&m->resume_failures)));
	}
	mig_states_query(m, o);
	if (snap.error[0])
		json_object_object_add(o, "error-desc", json_object_new_string(snap.error));
	return o;
}

/* ---- control commands ---- */

/* A member of @o that is a string, or NULL. */
static const char *mig_json_string(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
	       ? json_object_get_string(v) : NULL;
}

/*
 * QMP's channel address, {"transport": "socket", "type": "inet", "host": H,
 * "port": P} or {..., "type": "unix", "path": P}, as our URI in @uri.
 * 0 or -EINVAL with @err.
 */
static int mig_qmp_addr_uri(struct json_object *addr, char *uri, size_t len, char *err,
			    size_t errlen)
{
	const char *transport = mig_json_string(addr, "transport");
	const char *type = mig_json_string(addr, "type");
	struct json_object *port;

	if (!json_object_is_type(addr, json_type_object) || !transport || !type) {
		snprintf(err, errlen, "addr must be {\"transport\": \"socket\", \"type\": "
			 "\"inet\"|\"unix\", ...}");
		return -EINVAL;
	}
	if (strcmp(transport, "socket")) {
		snprintf(err, errlen, "transport '%s' is not supported (socket only)", transport);
		return -EINVAL;
	}
	if (!strcmp(type, "unix") && mig_json_string(addr, "path")) {
		snprintf(uri, len, "unix:%s", mig_json_string(addr, "path"));
		return 0;
	}
	if (!strcmp(type, "inet") && mig_json_string(addr, "host") &&
	    json_object_object_get_ex(addr, "port", &port) &&
	    (json_object_is_type(port, json_type_string) || json_object_is_type(port, json_type_int))) {
		const char *host = mig_json_string(addr, "host");

		snprintf(uri, len, strchr(host, ':') ? "tcp:[%s]:%s" : "tcp:%s:%s", host,
			 json_object_get_string(port));
		return 0;
	}
	snprintf(err, errlen, "addr: type '%s' needs %s (inet: host and port; unix: path)", type,
		 strcmp(type, "inet") && strcmp(type, "unix") ? "to be inet or unix" : "its members");
	return -EINVAL;
}

/*
 * One element of "channels", ours ({"type": T, "uri": URI}) or QMP's
 * ({"channel-type": T, "addr": {...}}): its type in *@type, its URI in @uri.
 */
static int mig_parse_channel(struct json_object *c, size_t i, const char **type, char *uri,
			     size_t len, char *err, size_t errlen)
{
	struct json_object *addr;
	const char *u;

	if (!json_object_is_type(c, json_type_object) || json_object_object_length(c) != 2)
		goto bad;
	*type = mig_json_string(c, "type");
	u = mig_json_string(c, "uri");
	if (*type && u) {
		snprintf(uri, len, "%s", u);
		return 0;
	}
	*type = mig_json_string(c, "channel-type");
	if (*type && json_object_object_get_ex(c, "addr", &addr))
		return mig_qmp_addr_uri(addr, uri, len, err, errlen);
bad:
	snprintf(err, errlen, "channels[%zu] must be {\"type\": \"main\"|\"cpr\", \"uri\": "
		 "URI} or QMP's {\"channel-type\": ..., \"addr\": {...}}", i);
	return -EINVAL;
}

/*
 * migrate {"uri": URI} or {"channels": [main, cpr]}: the main channel's URI
 * in @main_uri and the cpr channel's in @cpr_uri ("" when none).
 */
static int mig_parse_channels(struct json_object *args, char main_uri[CHANNEL_URI_BYTES],
			      char cpr_uri[CHANNEL_URI_BYTES], char *err, size_t errlen)
{
	struct json_object *uri = NULL, *chans = NULL;
	bool has_uri = json_object_object_get_ex(args, "uri", &uri);
	bool has_chans = json_object_object_get_ex(args, "channels", &chans);
	size_t n;

	main_uri[0] = cpr_uri[0] = 0;
	if (has_uri == has_chans) {
		snprintf(err, errlen, "give either \"uri\" or \"channels\"");
		return -EINVAL;
	}
	if (has_uri) {
		snprintf(main_uri, CHANNEL_URI_BYTES, "%s", json_object_get_string(uri));
		return 0;
	}
	n = json_object_array_length(chans);
	for (size_t i = 0; i < n; i++) {
		char u[CHANNEL_URI_BYTES];
		const char *t;
		char *slot;
		int r = mig_parse_channel(json_object_array_get_idx(chans, i), i, &t, u, sizeof(u),
					  err, errlen);

		if (r)
			return r;
		if (strcmp(t, "main") && strcmp(t, "cpr")) {
			snprintf(err, errlen, "channels[%zu]: unknown type '%s' (main or cpr)", i, t);
			return -EINVAL;
		}
		slot = !strcmp(t, "main") ? main_uri : cpr_uri;
		if (slot[0] || !u[0]) {
			snprintf(err, errlen, slot[0] ? "channels: more than one '%s' channel"
				 : "channels: an empty '%s' address", t);
			return -EINVAL;
		}
		snprintf(slot, CHANNEL_URI_BYTES, "%s", u);
	}
	if (!main_uri[0]) {
		snprintf(err, errlen, "channels: no 'main' channel");
		return -EINVAL;
	}
	return 0;
}

static int mig_cmd_migrate(void *opaque, struct json_object *args, struct json_object **ret,
			   char *err, size_t errlen)
{
	struct migration *m = opaque;
	char uri[CHANNEL_URI_BYTES], cpr_uri[CHANNEL_URI_BYTES];
	struct json_object *resume, *storage_arg;
	bool storage = false;
	int r;

	(void)ret; /* "detach" (QMP's, for old clients) is accepted and means nothing */
	r = mig_parse_channels(args, uri, cpr_uri, err, errlen);
	if (r)
		return r;
	if (json_object_object_get_ex(args, "storage", &storage_arg)) /* a bool: checked */
		storage = json_object_get_boolean(storage_arg);
	if (json_object_object_get_ex(args, "resume", &resume) && json_object_get_boolean(resume)) {
		if (cpr_uri[0]) {
			snprintf(err, errlen, "resume continues a postcopy migration: it takes no cpr "
				 "channel");
			return -EINVAL;
		}
		if (storage) {
			snprintf(err, errlen, "resume continues the paused migration as it was: it "
				 "takes no storage argument");
			return -EINVAL;
		}
		return migration_resume(m, uri, err, errlen);
	}
	return migration_start_storage(m, uri, cpr_uri[0] ? cpr_uri : NULL, storage, err, errlen);
}

static int mig_cmd_cancel(void *opaque, struct json_object *args, struct json_object **ret,
			  char *err, size_t errlen)
{
	(void)args; (void)ret;
	return migration_cancel(opaque, err, errlen);
}

static int mig_cmd_query(void *opaque, struct json_object *args, struct json_object **ret,
			 char *err, size_t errlen)
{
	(void)args; (void)err; (void)errlen;
	*ret = migration_query(opaque);
	return 0;
}

/* A non-negative integer argument within [min, max]; absent is fine. */
static int mig_arg_u64(struct json_object *args, const char *name, uint64_t min, uint64_t max,
		       uint64_t *out, bool *given, char *err, size_t errlen)
{
	struct json_object *v;
	int64_t x;

	*given = json_object_object_get_ex(args, name, &v);
	if (!*given)
		return 0;
	x = json_object_get_int64(v);
	if (x < 0 || (uint64_t)x < min || (uint64_t)x > max) {
		snprintf(err, errlen, "%s must be in %" PRIu64 "..%" PRIu64, name, min, max);
		return -EINVAL;
	}
	*out = (uint64_t)x;
	return 0;
}

static int mig_cmd_set_parameters(void *opaque, struct json_object *args,
				  struct json_object **ret, char *err, size_t errlen)
{
	struct migration *m = opaque;
	uint64_t dl = 0, bw = 0, ct = 0, pa = 0, vn = 0, rt = 0;
	bool g_dl, g_bw, g_ct, g_pa, g_vn, g_rt;
	struct json_object *mode_arg;
	enum mig_mode mode = 0;
	int r;

	(void)ret;
	/* Validate everything before changing anything. */
	r = mig_arg_u64(args, "downtime-limit", 1, 2000000, &dl, &g_dl, err, errlen);
	if (!r)
		r = mig_arg_u64(args, "max-bandwidth", 0, INT64_MAX, &bw, &g_bw, err, errlen);
	if (!r)
		r = mig_arg_u64(args, "convergence-timeout", 0, 86400, &ct, &g_ct, err, errlen);
	if (!r)
		r = mig_arg_u64(args, "postcopy-after-passes", 0, 1000000, &pa, &g_pa, err, errlen);
	if (!r)
		r = mig_arg_u64(args, "postcopy-vcpu-nice", 0, VM_VCPU_NICE_IDLE, &vn, &g_vn, err, errlen);
	if (!r)
		r = mig_arg_u64(args, "postcopy-recover-timeout", 0, 86400, &rt, &g_rt, err, errlen);
	if (r)
		return r;
	if (json_object_object_get_ex(args, "mode", &mode_arg)) {
		const char *name = json_object_get_string(mode_arg);

		for (enum mig_mode i = MIG_MODE_NORMAL; i <= MIG_MODE_CPR_TRANSFER; i++)
			if (!strcmp(name, mig_mode_name(i)))
				mode = i;
		if (!mode) {
			snprintf(err, errlen, "mode must be normal or cpr-transfer");
			return -EINVAL;
		}
	}
	pthread_mutex_lock(&m->lock);
	if (mode && !mig_status_finished(m->status) &&
	    !(m->incoming && m->status == MIG_STATUS_SETUP)) {
		pthread_mutex_unlock(&m->lock);
		snprintf(err, errlen, "mode cannot change during a migration");
		return -EBUSY;
	}
	if (mode)
		m->params.mode = mode;
	if (g_dl)
		m->params.downtime_limit_ms = dl;
	if (g_bw)
		m->params.max_bandwidth = bw;
	if (g_ct)
		m->params.convergence_timeout_s = ct;
	if (g_pa)
		m->params.postcopy_after_passes = pa;
	if (g_vn) /* takes effect at the next switch or resume */
		m->params.postcopy_vcpu_nice = vn;
	if (g_rt) /* read at each postcopy pause */
		m->params.postcopy_recover_timeout_s = rt;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static int mig_cmd_query_parameters(void *opaque, struct json_object *args,
				    struct json_object **ret, char *err, size_t errlen)
{
	struct migration *m = opaque;
	struct json_object *o = json_object_new_object();

	(void)args; (void)err; (void)errlen;
	pthread_mutex_lock(&m->lock);
	json_object_object_add(o, "mode", json_object_new_string(mig_mode_name(m->params.mode)));
	json_object_object_add(o, "downtime-limit", json_object_new_uint64(m->params.downtime_limit_ms));
	json_object_object_add(o, "max-bandwidth", json_object_new_uint64(m->params.max_bandwidth));
	json_object_object_add(o, "convergence-timeout",
			       json_object_new_uint64(m->params.convergence_timeout_s));
	json_object_object_add(o, "postcopy-after-passes",
			       json_object_new_uint64(m->params.postcopy_after_passes));
	json_object_object_add(o, "postcopy-vcpu-nice",
			       json_object_new_uint64(m->params.postcopy_vcpu_nice));
	json_object_object_add(o, "postcopy-recover-timeout",
			       json_object_new_uint64(m->params.postcopy_recover_timeout_s));
	pthread_mutex_unlock(&m->lock);
	*ret = o;
	return 0;
}

int migration_set_postcopy_vcpu_nice(struct migration *m, unsigned nice)
{
	if (nice > VM_VCPU_NICE_IDLE)
		return -EINVAL;
	pthread_mutex_lock(&m->lock);
	m->params.postcopy_vcpu_nice = nice;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

int migration_set_capabilities(struct migration *m, const struct mig_caps_update *u,
			       char *err, size_t errlen)
{
	pthread_mutex_lock(&m->lock);
	/* A destination still waiting for its stream may change them. */
	if (!mig_status_finished(m->status) && !(m->incoming && m->status == MIG_STATUS_SETUP)) {
		pthread_mutex_unlock(&m->lock);
		snprintf(err, errlen, "capabilities cannot change during a migration");
		return -EBUSY;
	}
	if (u->auto_converge >= 0)
		m->params.auto_converge = u->auto_converge;
	if (u->postcopy_ram >= 0)
		m->params.postcopy_ram = u->postcopy_ram;
	if (u->postcopy_preempt >= 0)
		m->params.postcopy_preempt = u->postcopy_preempt;
	if (u->stream_crc >= 0)
		m->params.stream_crc = u->stream_crc;
	mig_pc_prepare_waiting(m);
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static int mig_cmd_set_capabilities(void *opaque, struct json_object *args,
				    struct json_object **ret, char *err, size_t errlen)
{
	struct mig_caps_update u = { .auto_converge = -1, .postcopy_ram = -1,
				     .postcopy_preempt = -1, .stream_crc = -1 };
	struct json_object *caps;
	size_t n;

	(void)ret;
	json_object_object_get_ex(args, "capabilities", &caps);
	n = json_object_array_length(caps);
	for (size_t i = 0; i < n; i++) {
		struct json_object *c = json_object_array_get_idx(caps, i), *name, *state;

		if (!json_object_is_type(c, json_type_object) ||
		    !json_object_object_get_ex(c, "capability", &name) ||
		    !json_object_is_type(name, json_type_string) ||
		    !json_object_object_get_ex(c, "state", &state) ||
		    !json_object_is_type(state, json_type_boolean) ||
		    json_object_object_length(c) != 2) {
			snprintf(err, errlen, "capabilities[%zu] must be {\"capability\": NAME, \"state\": BOOL}", i);
			return -EINVAL;
		}
		if (!strcmp(json_object_get_string(name), "auto-converge")) {
			u.auto_converge = json_object_get_boolean(state);
		} else if (!strcmp(json_object_get_string(name), "postcopy-ram")) {
			u.postcopy_ram = json_object_get_boolean(state);
		} else if (!strcmp(json_object_get_string(name), "postcopy-preempt")) {
			u.postcopy_preempt = json_object_get_boolean(state);
		} else if (!strcmp(json_object_get_string(name), "stream-crc")) {
			u.stream_crc = json_object_get_boolean(state);
		} else {
			snprintf(err, errlen, "unknown capability '%s' (known: auto-converge, postcopy-ram, "
				 "postcopy-preempt, stream-crc)",
				 json_object_get_string(name));
			return -EINVAL;
		}
	}
	return migration_set_capabilities(opaque, &u, err, errlen);
}

static int mig_cmd_query_capabilities(void *opaque, struct json_object *args,
				      struct json_object **ret, char *err, size_t errlen)
{
	struct migration *m = opaque;
	struct json_object *arr = json_object_new_array(), *c = json_object_new_object();

	(void)args; (void)err; (void)errlen;
	json_object_object_add(c, "capability", json_object_new_string("auto-converge"));
	pthread_mutex_lock(&m->lock);
	json_object_object_add(c, "state", json_object_new_boolean(m->params.auto_converge));
	pthread_mutex_unlock(&m->lock);
	json_object_array_add(arr, c);
	c = json_object_new_object();
	json_object_object_add(c, "capability", json_object_new_string("postcopy-ram"));
	pthread_mutex_lock(&m->lock);
	json_object_object_add(c, "state", json_object_new_boolean(m->params.postcopy_ram));
	pthread_mutex_unlock(&m->lock);
	json_object_array_add(arr, c);
	c = json_object_new_object();
	json_object_object_add(c, "capability", json_object_new_string("postcopy-preempt"));
	pthread_mutex_lock(&m->lock);
	json_object_object_add(c, "state", json_object_new_boolean(m->params.postcopy_preempt));
	pthread_mutex_unlock(&m->lock);
	json_object_array_add(arr, c);
	c = json_object_new_object();
	json_object_object_add(c, "capability", json_object_new_string("stream-crc"));
	pthread_mutex_lock(&m->lock);
	json_object_object_add(c, "state", json_object_new_boolean(m->params.stream_crc));
	pthread_mutex_unlock(&m->lock);
	json_object_array_add(arr, c);
	*ret = arr;
	return 0;
}

static int mig_cmd_start_postcopy(void *opaque, struct json_object *args,
				  struct json_object **ret, char *err, size_t errlen)
{
	(void)args; (void)ret;
	return migration_start_postcopy(opaque, err, errlen);
}

static int mig_cmd_pause(void *opaque, struct json_object *args, struct json_object **ret,
			 char *err, size_t errlen)
{
	(void)args; (void)ret;
	return migration_pause(opaque, err, errlen);
}

static int mig_cmd_recover(void *opaque, struct json_object *args, struct json_object **ret,
			   char *err, size_t errlen)
{
	struct migration *m = opaque;
	struct json_object *uri;
	int r;

	json_object_object_get_ex(args, "uri", &uri);
	r = migration_recover(m, json_object_get_string(uri), err, errlen);
	if (!r) {
		/* The address really listened on (port 0 resolved). */
		*ret = json_object_new_object();
		pthread_mutex_lock(&m->lock);
		json_object_object_add(*ret, "uri", json_object_new_string(m->recover_fd >= 0
									  ? m->recover_ch.uri : m->main_ch.uri));
		pthread_mutex_unlock(&m->lock);
	}
	return r;
}

int migration_register_commands(struct migration *m, struct control_server *srv)
{
	static const struct control_arg_spec migrate_args[] = {
		{ "uri", CONTROL_ARG_STRING, false },
		{ "channels", CONTROL_ARG_ARRAY, false },
		{ "resume", CONTROL_ARG_BOOL, false },
		{ "storage", CONTROL_ARG_BOOL, false },
		{ "detach", CONTROL_ARG_BOOL, false },
		{ NULL, 0, false },
	};
	static const struct control_arg_spec recover_args[] = {
		{ "uri", CONTROL_ARG_STRING, true },
		{ NULL, 0, false },
	};
	static const struct control_arg_spec param_args[] = {
		{ "downtime-limit", CONTROL_ARG_INT, false },
		{ "max-bandwidth", CONTROL_ARG_INT, false },
		{ "convergence-timeout", CONTROL_ARG_INT, false },
		{ "postcopy-after-passes", CONTROL_ARG_INT, false },
		{ "postcopy-vcpu-nice", CONTROL_ARG_INT, false },
		{ "postcopy-recover-timeout", CONTROL_ARG_INT, false },
		{ "mode", CONTROL_ARG_STRING, false },
		{ NULL, 0, false },
	};
	static const struct control_arg_spec cap_args[] = {
		{ "capabilities", CONTROL_ARG_ARRAY, true },
		{ NULL, 0, false },
	};
	const struct control_command cmds[] = {
		{ .name = "migrate", .fn = mig_cmd_migrate, .opaque = m, .args = migrate_args },
		{ .name = "migrate-cancel", .fn = mig_cmd_cancel, .opaque = m },
		{ .name = "query-migrate", .fn = mig_cmd_query, .opaque = m },
		{ .name = "migrate-set-parameters", .fn = mig_cmd_set_parameters, .opaque = m,
		  .args = param_args },
		{ .name = "query-migrate-parameters", .fn = mig_cmd_query_parameters, .opaque = m },
		{ .name = "migrate-set-capabilities", .fn = mig_cmd_set_capabilities, .opaque = m,
		  .args = cap_args },
		{ .name = "query-migrate-capabilities", .fn = mig_cmd_query_capabilities, .opaque = m },
		{ .name = "migrate-start-postcopy", .fn = mig_cmd_start_postcopy, .opaque = m },
		{ .name = "migrate-pause", .fn = mig_cmd_pause, .opaque = m },
		{ .name = "migrate-recover", .fn = mig_cmd_recover, .opaque = m, .args = recover_args },
	};

	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		int r = control_server_register(srv, &cmds[i]);

		if (r)
			return r;
	}
	return 0;
}
