/*
 * A test-only migratable state (`vmferry run --test-state`): a counter and
 * a 512 KiB blob, migrated through the state interface (migration/state.h)
 * with no line of the engine knowing it.  The blob goes in section parts
 * while the guest runs (precopy) and whatever is left, with the counter and
 * a checksum of the whole blob, in its section at the stop; the destination
 * refuses a blob that does not match the checksum.  Tests change it with
 * `test-state-bump` and compare `query-test-state` on both sides.
 *
 * Threads: the control thread bumps and queries, the migration (or load)
 * thread saves (or loads); one mutex protects the state.
 */
#ifndef VMFERRY_DEVICES_TEST_STATE_H
#define VMFERRY_DEVICES_TEST_STATE_H

struct migration;
struct control_server;
struct test_state;

/* Section id on the wire (docs/stream-format.md lists every id). */
#define TEST_STATE_SECTION_ID 100u

/* Create it and register its migratable state with @m.  0 or -errno.  Main thread. */
int test_state_create(struct migration *m, struct test_state **out);
/* test-state-bump and query-test-state.  0 or -errno.  Main thread. */
int test_state_register_commands(struct test_state *ts, struct control_server *srv);
/* After the migration object is gone (NULL is fine). */
void test_state_destroy(struct test_state *ts);

#endif
