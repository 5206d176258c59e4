/*
 * What the harness's files share among themselves (not the API): the
 * registry of live VMMs and namespaces that harness_cleanup() undoes, and
 * the reporting of failures.
 */
#ifndef VMFERRY_HARNESS_INTERNAL_H
#define VMFERRY_HARNESS_INTERNAL_H

#include <sys/types.h>

#include "harness/harness.h"

/* Track @pid until it is reaped (harness_cleanup kills it); a full table tracks nothing. */
void harness_child_add(pid_t pid);
void harness_child_del(pid_t pid);
/* Track @p until harness_netns_destroy (harness_cleanup destroys it). */
void harness_netns_add(struct harness_netns *p);
void harness_netns_del(struct harness_netns *p);

/* "<prog>: <message>" on stderr, always. */
void harness_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/*
 * A failure on @vm: the message into vm->error, and on stderr as
 * harness_say() unless harness_init() asked for quiet.
 */
void harness_vm_fail(struct harness_vm *vm, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif
