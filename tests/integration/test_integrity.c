/*
 * End-to-end integrity under real KVM (stream version 2's CRCs): a relay
 * between source and destination that reads the main stream record by
 * record and flips one byte of one page on the way.
 *   - precopy, a page of the final pass (vCPUs stopped, never sent again):
 *     the destination refuses at END, the source keeps its guest, which
 *     runs on and verifies;
 *   - precopy, a page of pass 1 that a later pass sends again (the relay
 *     holds both passes back to pick it): the migration completes and the
 *     destination verifies;
 *   - postcopy, a page pushed after the switch: the destination does not
 *     place it, asks for it again, and completes and verifies (with the
 *     urgent channel, and without: then the background stream resends it);
 *   - without the stream-crc capability (the default) the source writes
 *     version 1 (no CRCs), as older builds did, and it loads.
 * The flips run with stream-crc on the source.
 * Skips (77) without KVM.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <json-c/json.h>

#include "lib/migtest.h"
#include "harness/harness.h"
#include "migration/format.h"

/* Where the relay flips a byte. */
enum flip_at {
	FLIP_PASS1_RESENT, /* a page of pass 1 that the next pass (or the final one) sends again */
	FLIP_FINAL_PASS,  /* the last data record before the first SECTION */
	FLIP_AFTER_RUN,   /* the first data record after POSTCOPY_RUN */
};

/*
 * The relay listens on a UNIX socket; the first connection is the main
 * channel (parsed from source to destination, raw back), any later one the
 * urgent channel (raw both ways).  Each direction is a thread; one ends at
 * EOF or an error and shuts the other side's write end.
 */
#define RELAY_CONNS 4

struct pump {
	struct relay *r;
	int in, out;
	bool parse;
	pthread_t thread;
	bool started;
};

struct relay {
	enum flip_at at;
	int lfd;
	char path[HARNESS_PATH_BYTES];
	char dst_path[HARNESS_PATH_BYTES];
	pthread_t accept_thread;
	atomic_bool stop;
	int fds[2 * RELAY_CONNS];
	int nfds;
	struct pump pumps[2 * RELAY_CONNS];
	int npumps;
	_Atomic int flips;
	/* the parsing pump's pass buffer: records held until PASS_END or a SECTION */
	uint8_t *held;
	size_t held_len, held_cap;
	size_t last_data_page; /* offset in @held of the first page of the last data record */
	bool have_data;
	struct held_rec {      /* the data records held (FLIP_PASS1_RESENT) */
		size_t data_off;
		uint64_t first;
		uint32_t npages;
		bool later;        /* after PASS_END 1 */
	} recs[4096];
	unsigned nrecs;
	bool pass1_ended;
};

static bool read_exact(int fd, void *p, size_t n)
{
	uint8_t *q = p;

	while (n) {
		ssize_t got = read(fd, q, n);

		if (got <= 0)
			return false;
		q += got;
		n -= (size_t)got;
	}
	return true;
}

static bool write_all(int fd, const void *p, size_t n)
{
	const uint8_t *q = p;

	while (n) {
		ssize_t w = write(fd, q, n);

		if (w <= 0)
			return false;
		q += w;
		n -= (size_t)w;
	}
	return true;
}

static void held_add(struct relay *r, const void *p, size_t n)
{
	if (r->held_len + n > r->held_cap) {
		size_t cap = r->held_cap ? r->held_cap : 1 << 20;

		while (cap < r->held_len + n)
			cap *= 2;
		r->held = realloc(r->held, cap);
		assert_non_null(r->held);
		r->held_cap = cap;
	}
	memcpy(r->held + r->held_len, p, n);
	r->held_len += n;
}

/* Forward what is held, flipping a byte of the last data record's first page if @flip. */
static bool held_flush(struct relay *r, int out, bool flip)
{
	bool ok;

	if (flip && r->have_data && !atomic_load(&r->flips)) {
		r->held[r->last_data_page + 100] ^= 0x01;
		atomic_fetch_add(&r->flips, 1);
	}
	ok = write_all(out, r->held, r->held_len);
	r->held_len = 0;
	r->have_data = false;
	r->nrecs = 0;
	return ok;
}

/* FLIP_PASS1_RESENT: flip pass 1's copy of a page a later record holds too. */
static void held_flip_resent(struct relay *r)
{
	for (unsigned i = 0; i < r->nrecs && !atomic_load(&r->flips); i++) {
		const struct held_rec *a = &r->recs[i];

		for (unsigned j = 0; j < r->nrecs && a->later; j++) {
			const struct held_rec *b = &r->recs[j];
			uint64_t p = a->first;

			if (b->later || p < b->first || p >= b->first + b->npages)
				continue;
			r->held[b->data_off + (p - b->first) * MIG_PAGE_BYTES + 100] ^= 0x01;
			atomic_fetch_add(&r->flips, 1);
			break;
		}
	}
}

/* Bytes after a record's type byte, before its payload (version 2), but RAM and DISCARD. */
static size_t record_fixed_len(uint8_t type)
{
	switch (type) {
	case MIG_REC_SECTION:
	case MIG_REC_SECTION_PART:
		return 24; /* id, instance, version, len, body_crc, head_crc */
	case MIG_REC_PASS_END:
	case MIG_REC_PING:
		return 4;
	case MIG_REC_CPR:
		return 16;
	default:
		return 0; /* END, ADVISE, RUN, RESUME */
	}
}

/* One record from @in (its type already read) into the held buffer. */
static bool relay_record(struct relay *r, int in, uint8_t type, bool *is_data)
{
	uint8_t fixed[24];
	size_t payload = 0, rest = 0;

	held_add(r, &type, 1);
	*is_data = false;
	if (type == MIG_REC_RAM) {
		uint32_t npages;
		size_t n;

		if (!read_exact(in, fixed, 16))
			return false;
		held_add(r, fixed, 16);
		memcpy(&npages, fixed + 4, 4);
		n = fixed[1] & MIG_RAM_FLAG_ZERO ? 4 : 4 * (size_t)npages + 4;
		payload = fixed[1] & MIG_RAM_FLAG_ZERO ? 0 : (size_t)npages * MIG_PAGE_BYTES;
		*is_data = payload != 0;
		rest = n;
	} else if (type == MIG_REC_POSTCOPY_DISCARD) {
		uint32_t count;

		if (!read_exact(in, fixed, 5))
			return false;
		held_add(r, fixed, 5);
		memcpy(&count, fixed + 1, 4);
		rest = 0;
		payload = 12 * (size_t)count;
	} else {
		size_t n = record_fixed_len(type);

		if (n && !read_exact(in, fixed, n))
			return false;
		held_add(r, fixed, n);
		rest = payload = 0;
		if (type == MIG_REC_SECTION || type == MIG_REC_SECTION_PART) {
			uint32_t len;

			memcpy(&len, fixed + 12, 4);
			payload = len;
		}
	}
	while (rest) {
		uint8_t buf[4096 + 4];
		size_t k = rest < sizeof(buf) ? rest : sizeof(buf);

		if (!read_exact(in, buf, k))
			return false;
		held_add(r, buf, k);
		rest -= k;
	}
	if (*is_data) {
		r->last_data_page = r->held_len;
		if (r->nrecs < sizeof(r->recs) / sizeof(r->recs[0])) {
			struct held_rec *h = &r->recs[r->nrecs++];

			h->data_off = r->held_len;
			memcpy(&h->first, fixed + 8, 8);
			memcpy(&h->npages, fixed + 4, 4);
			h->later = r->pass1_ended;
		}
	}
	while (payload) {
		uint8_t buf[65536];
		size_t k = payload < sizeof(buf) ? payload : sizeof(buf);

		if (!read_exact(in, buf, k))
			return false;
		held_add(r, buf, k);
		payload -= k;
	}
	return true;
}

/* The main channel, source to destination: the header, then record by record. */
static void relay_parse(struct relay *r, int in, int out)
{
	uint8_t hdr[40], b;
	bool running = false;

	if (!read_exact(in, hdr, sizeof(hdr)) || !write_all(out, hdr, sizeof(hdr)))
		return;
	for (uint32_t i = 0, nblocks = hdr[20]; i < nblocks; i++) {
		uint8_t desc[48];

		if (!read_exact(in, &b, 1) || !read_exact(in, desc, (size_t)b + 16) ||
		    !write_all(out, &b, 1) || !write_all(out, desc, (size_t)b + 16))
			return;
	}
	for (;;) {
		bool is_data, flip_now = false, flush = false;

		if (!read_exact(in, &b, 1))
			break;
		if (b == MIG_REC_SECTION || b == MIG_REC_SECTION_PART) {
			flip_now = r->at == FLIP_FINAL_PASS;
			flush = true;
			if (r->at == FLIP_PASS1_RESENT)
				held_flip_resent(r);
		}
		if (flush && !held_flush(r, out, flip_now))
			break;
		if (!relay_record(r, in, b, &is_data))
			break;
		if (is_data)
			r->have_data = true;
		if (b == MIG_REC_PASS_END) {
			uint32_t pass;

			memcpy(&pass, r->held + r->held_len - 4, 4);
			if (r->at == FLIP_PASS1_RESENT && pass == 1) {
				r->pass1_ended = true; /* hold pass 1 until the next one ended */
				continue;
			}
			if (r->at == FLIP_PASS1_RESENT)
				held_flip_resent(r);
			if (!held_flush(r, out, false))
				break;
		} else if (b == MIG_REC_POSTCOPY_RUN) {
			running = true;
			if (!held_flush(r, out, false))
				break;
		} else if (running && is_data && r->at == FLIP_AFTER_RUN) {
			if (!held_flush(r, out, true))
				break;
		} else if (b != MIG_REC_RAM || running) {
			/* PING, END, DISCARD ...: nothing waits for a pass to end here */
			if (!held_flush(r, out, false))
				break;
		}
	}
	held_flush(r, out, false);
}

static void *pump_thread(void *arg)
{
	struct pump *p = arg;
	uint8_t buf[65536];

	if (p->parse) {
		relay_parse(p->r, p->in, p->out);
	} else {
		for (;;) {
			ssize_t got = read(p->in, buf, sizeof(buf));

			if (got <= 0 || !write_all(p->out, buf, (size_t)got))
				break;
		}
	}
	shutdown(p->out, SHUT_WR);
	shutdown(p->in, SHUT_RD);
	return NULL;
}

static void relay_pump(struct relay *r, int in, int out, bool parse)
{
	struct pump *p = &r->pumps[r->npumps++];

	*p = (struct pump){ .r = r, .in = in, .out = out, .parse = parse };
	p->started = pthread_create(&p->thread, NULL, pump_thread, p) == 0;
	assert_true(p->started);
}

static void *relay_accept_thread(void *arg)
{
	struct relay *r = arg;

	while (!atomic_load(&r->stop) && r->nfds + 2 <= 2 * RELAY_CONNS) {
		struct pollfd pfd = { .fd = r->lfd, .events = POLLIN };
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		int c, u;

		if (poll(&pfd, 1, 50) <= 0)
			continue; /* a bounded wait: the stop flag is looked at */
		c = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			continue;
		u = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		migtest_set_sun_path(&sa, r->dst_path);
		if (u < 0 || connect(u, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			close(c);
			if (u >= 0)
				close(u);
			continue;
		}
		r->fds[r->nfds++] = c;
		r->fds[r->nfds++] = u;
		relay_pump(r, c, u, r->nfds == 2); /* the first connection is the main one */
		relay_pump(r, u, c, false);
	}
	return NULL;
}

/* Listen on a fresh path, forwarding to the destination at @dst_uri ("unix:PATH"). */
static void relay_start(struct relay *r, enum flip_at at, const char *dst_uri, char *uri,
			size_t len)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	memset(r, 0, sizeof(*r));
	r->at = at;
	assert_int_equal(strncmp(dst_uri, "unix:", 5), 0);
	snprintf(r->dst_path, sizeof(r->dst_path), "%s", dst_uri + 5);
	assert_int_equal(harness_unique_path(r->path, sizeof(r->path), "flip"), 0);
	migtest_set_sun_path(&sa, r->path);
	r->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(r->lfd >= 0);
	assert_int_equal(bind(r->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(r->lfd, 4), 0);
	snprintf(uri, len, "unix:%s", r->path);
	assert_int_equal(pthread_create(&r->accept_thread, NULL, relay_accept_thread, r), 0);
}

static void relay_stop(struct relay *r)
{
	atomic_store(&r->stop, true);
	pthread_join(r->accept_thread, NULL);
	for (int i = 0; i < r->nfds; i++)
		shutdown(r->fds[i], SHUT_RDWR);
	for (int i = 0; i < r->npumps; i++)
		pthread_join(r->pumps[i].thread, NULL);
	for (int i = 0; i < r->nfds; i++)
		close(r->fds[i]);
	close(r->lfd);
	unlink(r->path);
	free(r->held);
}

static struct json_object *query(struct harness_vm *vm)
{
	struct json_object *q = NULL;

	assert_int_equal(harness_call(vm, "query-migrate", NULL, &q), 0);
	return q;
}

/*
 * The source's copy of the guest moved to @dst without the relay finding
 * its page (see run_precopy): it must have gone well; @dst is the source now.
 */
static void moved_without_flip(struct harness_vm *src, struct harness_vm *dst,
			       struct json_object *q)
{
	assert_string_equal(harness_json_str(q, "status"), "completed");
	migtest_wait_migration_status(dst, "completed");
	migtest_expect_guest_alive_and_verified(dst);
	assert_int_equal(harness_vm_quit(src), 0);
	*src = *dst;
}

/*
 * Precopy through the relay; @at picks the page.  When the stream has no
 * such page (a final pass without data: the vCPU did not run between the
 * last read of the dirty log and the stop, as under ThreadSanitizer on a
 * loaded machine), the guest moved unharmed, and it goes on from there
 * through a new relay, at most 3 times.
 */
static void run_precopy(enum flip_at at, bool expect_completed)
{
	struct harness_vm src, dst;
	struct relay *r = calloc(1, sizeof(*r));
	char dst_uri[HARNESS_PATH_BYTES + 8], uri[HARNESS_PATH_BYTES + 8];
	struct json_object *q;

	assert_non_null(r);
	migtest_spawn(&src, "16M", "1", "incrementer", NULL);
	assert_int_equal(harness_wait_passes(&src, 1, 30000), 0);
	for (int attempt = 0;; attempt++) {
		migtest_spawn_incoming(&dst, "16M", "1", true, dst_uri, sizeof(dst_uri));
		assert_int_equal(harness_set_capability(&src, "stream-crc", true), 0);
		relay_start(r, at, dst_uri, uri, sizeof(uri));
		assert_int_equal(harness_migrate(&src, uri), 0);
		q = migtest_wait_migration(&src);
		relay_stop(r);
		if (atomic_load(&r->flips) || attempt == 2)
			break;
		moved_without_flip(&src, &dst, q);
		json_object_put(q);
	}
	assert_int_equal(atomic_load(&r->flips), 1);
	free(r);
	if (expect_completed) {
		if (strcmp(harness_json_str(q, "status"), "completed"))
			fail_msg("%s: %s", harness_json_str(q, "status"),
				 harness_json_str(q, "error-desc"));
		json_object_put(q);
		migtest_wait_migration_status(&dst, "completed");
		q = query(&dst);
		/* the flipped copy was one of the suspects, and none was left */
		assert_true(harness_json_int(q, "crc-suspect-pages") >= 1);
		assert_int_equal(harness_json_int(q, "crc-mismatches"), 0);
		json_object_put(q);
		migtest_expect_guest_alive_and_verified(&dst);
		assert_int_equal(harness_vm_quit(&dst), 0);
	} else {
		assert_string_equal(harness_json_str(q, "status"), "failed");
		if (!strstr(harness_json_str(q, "error-desc"), "failed their CRC check"))
			fail_msg("error: %s", harness_json_str(q, "error-desc"));
		json_object_put(q);
		/* the destination never ran the guest: it gives up and exits */
		assert_int_equal(harness_wait_exit(&dst, 20000), 1);
		migtest_expect_status(&src, "running");
		migtest_expect_guest_alive_and_verified(&src);
	}
	assert_int_equal(harness_vm_quit(&src), 0);
}

static void test_precopy_final_pass_flip_fails(void **state)
{
	(void)state;
	run_precopy(FLIP_FINAL_PASS, false);
}

static void test_precopy_resent_page_flip_completes(void **state)
{
	(void)state;
	run_precopy(FLIP_PASS1_RESENT, true);
}

/*
 * Pure postcopy through the relay, which damages the first page pushed.
 * @preempt: the source answers the PAGE_RESEND on the urgent channel; else
 * its background stream sends the page again.
 */
static void run_postcopy(bool preempt)
{
	struct harness_vm src, dst;
	struct relay r;
	char dst_uri[HARNESS_PATH_BYTES + 8], uri[HARNESS_PATH_BYTES + 8];
	struct json_object *q;

	migtest_spawn(&src, "32M", "1", "incrementer", NULL);
	assert_int_equal(harness_wait_passes(&src, 1, 30000), 0);
	migtest_spawn_incoming(&dst, "32M", "1", true, dst_uri, sizeof(dst_uri));
	assert_int_equal(harness_set_capability(&src, "postcopy-ram", true), 0);
	assert_int_equal(harness_set_capability(&dst, "postcopy-ram", true), 0);
	assert_int_equal(harness_set_capability(&src, "postcopy-preempt", preempt), 0);
	assert_int_equal(harness_set_capability(&src, "stream-crc", true), 0);
	relay_start(&r, FLIP_AFTER_RUN, dst_uri, uri, sizeof(uri));
	assert_int_equal(harness_call(&src, "migrate-start-postcopy", NULL, NULL), 0);
	assert_int_equal(harness_migrate(&src, uri), 0);
	q = migtest_wait_migration(&src);
	if (!strcmp(harness_json_str(q, "status"), "completed"))
		migtest_wait_migration_status(&dst, "completed");
	relay_stop(&r);
	if (strcmp(harness_json_str(q, "status"), "completed"))
		fail_msg("postcopy: %s: %s", harness_json_str(q, "status"),
			 harness_json_str(q, "error-desc"));
	assert_int_equal(atomic_load(&r.flips), 1);
	assert_true(harness_json_int(q, "crc-resends") >= 1); /* the source sent it again */
	json_object_put(q);
	q = query(&dst);
	assert_int_equal(harness_json_int(q, "crc-mismatches"), 1);
	assert_int_equal(harness_json_int(q, "crc-resends"), 1);
	json_object_put(q);
	migtest_expect_guest_alive_and_verified(&dst);
	assert_int_equal(harness_vm_quit(&src), 0);
	assert_int_equal(harness_vm_quit(&dst), 0);
}

static void test_postcopy_flip_rerequested(void **state)
{
	(void)state;
	run_postcopy(true);
}

static void test_postcopy_flip_rerequested_no_preempt(void **state)
{
	(void)state;
	run_postcopy(false);
}

/*
 * Without the stream-crc capability (the default) a source writes stream
 * version 1, as a build from before version 2 did: no CRCs, still loaded.
 * And the capability is the source's alone: a destination reads both.
 */
static void test_version1_stream_loads(void **state)
{
	struct harness_vm src, dst;
	char uri[HARNESS_PATH_BYTES + 8];
	struct json_object *q = NULL, *caps = NULL;

	(void)state;
	migtest_spawn(&src, "16M", "1", "incrementer", NULL);
	assert_int_equal(harness_wait_passes(&src, 1, 30000), 0);
	assert_int_equal(harness_call(&src, "query-migrate-capabilities", NULL, &caps), 0);
	assert_non_null(strstr(json_object_to_json_string(caps),
			       "\"capability\": \"stream-crc\", \"state\": false"));
	json_object_put(caps);
	migtest_spawn_incoming(&dst, "16M", "1", true, uri, sizeof(uri));
	assert_int_equal(harness_migrate(&src, uri), 0);
	q = migtest_wait_migration(&src);
	assert_string_equal(harness_json_str(q, "status"), "completed");
	json_object_put(q);
	migtest_wait_migration_status(&dst, "completed");
	q = query(&dst);
	/* nothing to check without CRCs, so nothing is suspect */
	assert_int_equal(harness_json_int(q, "crc-suspect-pages"), 0);
	json_object_put(q);
	migtest_expect_guest_alive_and_verified(&dst);
	assert_int_equal(harness_vm_quit(&src), 0);
	assert_int_equal(harness_vm_quit(&dst), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_precopy_final_pass_flip_fails),
		cmocka_unit_test(test_precopy_resent_page_flip_completes),
		cmocka_unit_test(test_postcopy_flip_rerequested),
		cmocka_unit_test(test_postcopy_flip_rerequested_no_preempt),
		cmocka_unit_test(test_version1_stream_loads),
	};

	return MIGTEST_RUN(tests);
}
