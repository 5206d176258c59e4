/*
 * Helpers for migration integration tests (cmocka): spawning sources and
 * destinations, driving and waiting for migrations, checking the guest.
 * They fail the current cmocka test on unexpected errors.  Every wait is
 * bounded.
 */
#ifndef VMFERRY_TESTS_MIGTEST_H
#define VMFERRY_TESTS_MIGTEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/un.h>

#include "harness/harness.h"

struct json_object;

#define MIG_TIMEOUT_MS 60000

void migtest_set_sun_path(struct sockaddr_un *sa, const char *path);
/* Spawn a VM; @guest NULL for a destination listening on @incoming. */
void migtest_spawn(struct harness_vm *vm, const char *mem, const char *vcpus, const char *guest,
		   const char *incoming);
/* The same with more options @extra (NULL-terminated, may be NULL). */
void migtest_spawn_extra(struct harness_vm *vm, const char *mem, const char *vcpus,
			 const char *guest, const char *incoming, const char *const extra[]);
/* The destination's listening URI (port 0 resolved; harness_incoming_uri). */
void migtest_incoming_uri(struct harness_vm *dst, char *uri, size_t len);
/* A destination on a unique UNIX socket or tcp:127.0.0.1:0; its URI in @uri. */
void migtest_spawn_incoming(struct harness_vm *dst, const char *mem, const char *vcpus,
			    bool unix_sock, char *uri, size_t len);
/* The same with more options @extra (e.g. {"--postcopy", NULL}; may be NULL). */
void migtest_spawn_incoming_extra(struct harness_vm *dst, const char *mem, const char *vcpus,
				  bool unix_sock, const char *const extra[], char *uri, size_t len);

/* A new process waiting for a live update, and the URIs it waits on. */
struct migtest_cpr_target {
	struct harness_vm vm;
	char main_uri[HARNESS_PATH_BYTES + 8];
	char cpr_uri[HARNESS_PATH_BYTES + 8];
};

/*
 * Start it on unique socket paths (not connected yet: its control socket
 * comes up only once it holds guest RAM; harness_connect() then).  @fault: a
 * VMFERRY_CPR_FAULT point or NULL; @extra: more options or NULL.
 */
void migtest_cpr_spawn_new(struct migtest_cpr_target *t, const char *fault,
			   const char *const extra[]);
/*
 * A whole live update of @old: spawn the new process with @extra, cpr-transfer
 * to it, wait for @old to exit 0 and for the new one (connected, in t->vm)
 * to report the migration completed.
 */
void migtest_cpr_update(struct harness_vm *old, struct migtest_cpr_target *t,
			const char *const extra[]);
/* Poll query-migrate until completed/failed/cancelled (MIG_TIMEOUT_MS); the reply (caller owns). */
struct json_object *migtest_wait_migration(struct harness_vm *src);
void migtest_expect_status(struct harness_vm *vm, const char *status);
/* query-migrate's integer @key on @vm (-1 when absent); fails the test if the call does. */
int64_t migtest_query_int(struct harness_vm *vm, const char *key);
/* Poll query-migrate on @vm until its status is @status (bounded). */
void migtest_wait_migration_status(struct harness_vm *vm, const char *status);
/* Running, memory verified, two more passes, verified again. */
void migtest_expect_guest_alive_and_verified(struct harness_vm *vm);
/*
 * Bytes of guest RAM (the memfd "ram0") that @vm's process holds, read from
 * /proc/PID/fd; -1 when it has no such fd.
 */
int64_t migtest_guest_ram_allocated(struct harness_vm *vm);
/* A new fd of @vm's guest RAM memfd, opened through /proc with open(2)
 * @flags (O_RDWR to write guest memory behind its back); -1 without one. */
int migtest_guest_ram_open(struct harness_vm *vm, int flags);
/* Wait (at most @timeout_ms) until @vm's guest RAM holds no memory: fails otherwise. */
void migtest_expect_guest_ram_released(struct harness_vm *vm, long timeout_ms);

/*
 * The body of a migration test program's main(): skip (HARNESS_SKIP) without
 * /dev/kvm, ignore SIGPIPE (a VMM that dies mid-reply), apply
 * VMFERRY_TEST_FILTER, run @tests.  The exit status.  Needs <cmocka.h>.
 */
/*
 * The source's postcopy page counters in @q (a query-migrate of a completed
 * postcopy without a pause) add up: @pure switched before the first pass,
 * else after pass 1 (see migtest.c).
 */
void migtest_expect_postcopy_accounting(struct json_object *q, bool pure);

/* The diskwriter guest: records its writers acknowledged, summed (query-workload "writes"). */
int64_t migtest_disk_acked(struct harness_vm *vm);
/* Wait (bounded, 30 s) until the diskwriter acknowledged @more records beyond now. */
void migtest_disk_expect_writing(struct harness_vm *vm, int64_t more);
/* Stop, dump RAM, `vmferry verify disk @path DUMP` (must pass), cont. */
void migtest_disk_expect_verified(struct harness_vm *vm, const char *path);
/* Running; disk @path and RAM agree; 50 more records; they agree again. */
void migtest_disk_expect_alive(struct harness_vm *vm, const char *path);

struct CMUnitTest;
int migtest_run(const char *name, const struct CMUnitTest *tests, size_t n);
#define MIGTEST_RUN(tests) migtest_run(#tests, tests, sizeof(tests) / sizeof((tests)[0]))

#endif
