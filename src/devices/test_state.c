/* The test-only migratable state; see test_state.h. */
#include "devices/test_state.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "control/control.h"
#include "migration/migration.h"
#include "migration/state.h"

#define TS_VERSION 1u
#define TS_CHUNK_BYTES (64u * 1024u)
#define TS_CHUNKS 8u
#define TS_PARTS_PER_PASS 2u /* a precopy step sends at most this many chunks */
#define TS_CHUNK_RECORD_BYTES (8u + TS_CHUNK_BYTES) /* u32 index, u32 0, data */
#define TS_SECTION_HEAD_BYTES 24u /* u64 counter, u64 checksum, u32 nchunks, u32 0 */

struct test_state {
	pthread_mutex_t lock;        /* protects everything below */
	uint64_t counter;
	uint8_t blob[TS_CHUNKS][TS_CHUNK_BYTES];
	uint32_t unsent;             /* source: chunks to send in this migration */
	bool setup_done;             /* source: save_setup ran for this migration */
	bool moved;                  /* source: saved at a stop: changes are refused, as a
				      * stopped device makes none (until a failure) */
	uint64_t parts_sent, parts_loaded, sections_loaded;
	const char *last_end;        /* "", or how the last migration ended here */
	uint8_t *record;             /* a section's bytes, TS_CHUNKS records long */
};

static void ts_put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void ts_put64(uint8_t *p, uint64_t v)
{
	ts_put32(p, (uint32_t)v);
	ts_put32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t ts_get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t ts_get64(const uint8_t *p)
{
	return ts_get32(p) | (uint64_t)ts_get32(p + 4) << 32;
}

/* FNV-1a over the whole blob. */
static uint64_t ts_checksum(const struct test_state *ts)
{
	const uint8_t *p = &ts->blob[0][0];
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < sizeof(ts->blob); i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

/* Chunk @i's contents for counter value @c (xorshift keyed by both). */
static void ts_fill_chunk(struct test_state *ts, uint32_t i, uint64_t c)
{
	uint64_t x = (c + 1) * 0x9e3779b97f4a7c15ull ^ ((uint64_t)i << 32 | 0x5bd1e995u);

	for (uint32_t off = 0; off < TS_CHUNK_BYTES; off += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		ts_put64(&ts->blob[i][off], x);
	}
}

/* ---- source ---- */

static int ts_save_setup(void *opaque, struct mig_save *sv)
{
	struct test_state *ts = opaque;

	(void)sv;
	pthread_mutex_lock(&ts->lock);
	ts->unsent = (1u << TS_CHUNKS) - 1;
	ts->setup_done = true;
	pthread_mutex_unlock(&ts->lock);
	return 0;
}

static int ts_save_pending(void *opaque, struct mig_save *sv, bool sync, uint64_t *bytes)
{
	struct test_state *ts = opaque;

	(void)sv; (void)sync;
	pthread_mutex_lock(&ts->lock);
	*bytes = (uint64_t)__builtin_popcount(ts->unsent) * TS_CHUNK_BYTES;
	pthread_mutex_unlock(&ts->lock);
	return 0;
}

/* Append chunk @i's record at @p (TS_CHUNK_RECORD_BYTES). */
static void ts_put_chunk(const struct test_state *ts, uint8_t *p, uint32_t i)
{
	ts_put32(p, i);
	ts_put32(p + 4, 0);
	memcpy(p + 8, ts->blob[i], TS_CHUNK_BYTES);
}

static int ts_save_iterate(void *opaque, struct mig_save *sv)
{
	struct test_state *ts = opaque;
	unsigned sent = 0;
	int r = 0;

	pthread_mutex_lock(&ts->lock);
	for (uint32_t i = 0; i < TS_CHUNKS && sent < TS_PARTS_PER_PASS && !r; i++) {
		if (!(ts->unsent & (1u << i)))
			continue;
		ts_put_chunk(ts, ts->record, i);
		r = mig_save_part(sv, 0, ts->record, TS_CHUNK_RECORD_BYTES);
		ts->unsent &= ~(1u << i);
		ts->parts_sent++;
		sent++;
	}
	pthread_mutex_unlock(&ts->lock);
	return r;
}

/* The section: counter, checksum of the whole blob, every chunk not sent yet. */
static int ts_save_complete(void *opaque, struct mig_save *sv, const struct mig_save_info *info)
{
	struct test_state *ts = opaque;
	uint32_t todo, n = 0;
	uint8_t *p = ts->record + TS_SECTION_HEAD_BYTES;
	int r;

	pthread_mutex_lock(&ts->lock);
	todo = info->cpr || !ts->setup_done ? (1u << TS_CHUNKS) - 1 : ts->unsent;
	for (uint32_t i = 0; i < TS_CHUNKS; i++) {
		if (!(todo & (1u << i)))
			continue;
		ts_put_chunk(ts, p, i);
		p += TS_CHUNK_RECORD_BYTES;
		n++;
	}
	ts_put64(ts->record, ts->counter);
	ts_put64(ts->record + 8, ts_checksum(ts));
	ts_put32(ts->record + 16, n);
	ts_put32(ts->record + 20, 0);
	ts->unsent = 0;
	ts->moved = true;
	r = mig_save_section(sv, 0, ts->record, (uint32_t)(p - ts->record));
	pthread_mutex_unlock(&ts->lock);
	return r;
}

static void ts_save_cleanup(void *opaque, bool completed)
{
	struct test_state *ts = opaque;

	pthread_mutex_lock(&ts->lock);
	ts->moved = completed; /* failed: it lives on here */
	ts->setup_done = false;
	ts->unsent = 0;
	pthread_mutex_unlock(&ts->lock);
}

/* ---- destination ---- */

/* One chunk record at @p: checked, then copied in. */
static int ts_load_chunk(struct test_state *ts, const uint8_t *p, char *err, size_t errlen)
{
	uint32_t i = ts_get32(p);

	if (i >= TS_CHUNKS || ts_get32(p + 4)) {
		snprintf(err, errlen, "test state: chunk %u invalid", i);
		return -EBADMSG;
	}
	memcpy(ts->blob[i], p + 8, TS_CHUNK_BYTES);
	return 0;
}

static int ts_load_part(void *opaque, uint32_t instance, uint32_t version, const uint8_t *data,
			uint32_t len, char *err, size_t errlen)
{
	struct test_state *ts = opaque;
	int r;

	(void)instance; (void)version;
	if (len != TS_CHUNK_RECORD_BYTES) {
		snprintf(err, errlen, "test state: a part of %u bytes", len);
		return -EBADMSG;
	}
	pthread_mutex_lock(&ts->lock);
	r = ts_load_chunk(ts, data, err, errlen);
	ts->parts_loaded += !r;
	pthread_mutex_unlock(&ts->lock);
	return r;
}

static int ts_load(void *opaque, uint32_t instance, uint32_t version, const uint8_t *data,
		   uint32_t len, char *err, size_t errlen)
{
	struct test_state *ts = opaque;
	uint32_t n;
	uint64_t sum;
	int r = 0;

	(void)instance; (void)version;
	if (len < TS_SECTION_HEAD_BYTES) {
		snprintf(err, errlen, "test state: section of %u bytes", len);
		return -EBADMSG;
	}
	n = ts_get32(data + 16);
	if (n > TS_CHUNKS || ts_get32(data + 20) ||
	    len != TS_SECTION_HEAD_BYTES + (uint64_t)n * TS_CHUNK_RECORD_BYTES) {
		snprintf(err, errlen, "test state: section of %u bytes with %u chunks", len, n);
		return -EBADMSG;
	}
	pthread_mutex_lock(&ts->lock);
	for (uint32_t k = 0; k < n && !r; k++)
		r = ts_load_chunk(ts, data + TS_SECTION_HEAD_BYTES + k * TS_CHUNK_RECORD_BYTES, err,
				  errlen);
	sum = ts_checksum(ts);
	if (!r && sum != ts_get64(data + 8)) {
		snprintf(err, errlen, "test state: the blob's checksum is %016" PRIx64 ", the "
			 "source's %016" PRIx64, sum, ts_get64(data + 8));
		r = -EBADMSG;
	}
	if (!r) {
		ts->counter = ts_get64(data);
		ts->sections_loaded++;
	}
	pthread_mutex_unlock(&ts->lock);
	return r;
}

static void ts_migration_end(void *opaque, bool source, bool completed)
{
	struct test_state *ts = opaque;

	pthread_mutex_lock(&ts->lock);
	ts->last_end = completed ? (source ? "completed-source" : "completed-destination")
				 : (source ? "failed-source" : "failed-destination");
	pthread_mutex_unlock(&ts->lock);
}

static const struct mig_state_ops ts_ops = {
	.name = "test-state",
	.section_id = TEST_STATE_SECTION_ID,
	.version = TS_VERSION,
	.min_version = TS_VERSION,
	.instances = 1,
	.required = true,
	.save_setup = ts_save_setup,
	.save_pending = ts_save_pending,
	.save_iterate = ts_save_iterate,
	.save_complete = ts_save_complete,
	.save_cleanup = ts_save_cleanup,
	.load = ts_load,
	.load_part = ts_load_part,
	.migration_end = ts_migration_end,
};

/* ---- control commands ---- */

static int ts_cmd_bump(void *opaque, struct json_object *args, struct json_object **ret,
		       char *err, size_t errlen)
{
	struct test_state *ts = opaque;
	struct json_object *nv;
	int64_t n = 1;

	if (json_object_object_get_ex(args, "n", &nv))
		n = json_object_get_int64(nv);
	if (n < 1 || n > 1000000) {
		snprintf(err, errlen, "n must be in 1..1000000");
		return -EINVAL;
	}
	pthread_mutex_lock(&ts->lock);
	if (ts->moved) {
		pthread_mutex_unlock(&ts->lock);
		snprintf(err, errlen, "the test state moved with the guest");
		return -EBUSY;
	}
	for (int64_t k = 0; k < n; k++) {
		uint32_t i = (uint32_t)(++ts->counter % TS_CHUNKS);

		ts_fill_chunk(ts, i, ts->counter);
		if (ts->setup_done)
			ts->unsent |= 1u << i; /* changed since sent: again */
	}
	*ret = json_object_new_object();
	json_object_object_add(*ret, "counter", json_object_new_uint64(ts->counter));
	pthread_mutex_unlock(&ts->lock);
	return 0;
}

static int ts_cmd_query(void *opaque, struct json_object *args, struct json_object **ret,
			char *err, size_t errlen)
{
	struct test_state *ts = opaque;
	char sum[24];

	(void)args; (void)err; (void)errlen;
	*ret = json_object_new_object();
	pthread_mutex_lock(&ts->lock);
	snprintf(sum, sizeof(sum), "%016" PRIx64, ts_checksum(ts));
	json_object_object_add(*ret, "counter", json_object_new_uint64(ts->counter));
	json_object_object_add(*ret, "checksum", json_object_new_string(sum));
	json_object_object_add(*ret, "parts-sent", json_object_new_uint64(ts->parts_sent));
	json_object_object_add(*ret, "parts-loaded", json_object_new_uint64(ts->parts_loaded));
	json_object_object_add(*ret, "sections-loaded",
			       json_object_new_uint64(ts->sections_loaded));
	json_object_object_add(*ret, "last-end", json_object_new_string(ts->last_end));
	pthread_mutex_unlock(&ts->lock);
	return 0;
}

int test_state_register_commands(struct test_state *ts, struct control_server *srv)
{
	static const struct control_arg_spec bump_args[] = {
		{ "n", CONTROL_ARG_INT, false },
		{ NULL, 0, false },
	};
	const struct control_command cmds[] = {
		{ .name = "test-state-bump", .fn = ts_cmd_bump, .opaque = ts, .args = bump_args },
		{ .name = "query-test-state", .fn = ts_cmd_query, .opaque = ts },
	};

	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		int r = control_server_register(srv, &cmds[i]);

		if (r)
			return r;
	}
	return 0;
}

int test_state_create(struct migration *m, struct test_state **out)
{
	struct test_state *ts = calloc(1, sizeof(*ts));
	int r;

	if (!ts)
		return -ENOMEM;
	ts->record = malloc(TS_SECTION_HEAD_BYTES + TS_CHUNKS * TS_CHUNK_RECORD_BYTES);
	if (!ts->record) {
		free(ts);
		return -ENOMEM;
	}
	pthread_mutex_init(&ts->lock, NULL);
	ts->last_end = "";
	for (uint32_t i = 0; i < TS_CHUNKS; i++)
		ts_fill_chunk(ts, i, 0);
	r = migration_register_state(m, &ts_ops, ts);
	if (r) {
		test_state_destroy(ts);
		return r;
	}
	*out = ts;
	return 0;
}

void test_state_destroy(struct test_state *ts)
{
	if (!ts)
		return;
	pthread_mutex_destroy(&ts->lock);
	free(ts->record);
	free(ts);
}
