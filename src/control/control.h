/*
 * The control socket: a UNIX stream socket speaking QMP-like JSON lines
 * (see control_proto.h for the wire format and docs/control.md for the
 * commands).
 *
 * Threads: the server owns one thread ("control") that polls the listening
 * socket, every client and an eventfd.  Command handlers run on that thread,
 * one at a time.  control_server_emit_event() may be called from any thread
 * (vCPU threads included): it formats the event, queues it under a mutex and
 * writes the eventfd; it never blocks on a socket.  The thread stops when
 * control_server_destroy() writes the eventfd.
 *
 * Untrusted input: every client is non-blocking, its request lines are at
 * most CONTROL_LINE_MAX_BYTES, its unsent output at most
 * CONTROL_CLIENT_OUTPUT_MAX_BYTES (beyond that it is dropped), and at most
 * CONTROL_MAX_CLIENTS are connected; nothing a client sends reaches the VM
 * except through a validated command.
 */
#ifndef VMFERRY_CONTROL_CONTROL_H
#define VMFERRY_CONTROL_CONTROL_H

#include "control/control_proto.h"

struct control_server;
struct json_object;

#define CONTROL_MAX_CLIENTS 16
#define CONTROL_MAX_COMMANDS 64
/* A client whose unsent output grows beyond this is disconnected. */
#define CONTROL_CLIENT_OUTPUT_MAX_BYTES (1024u * 1024u)
/* Events queued for the control thread beyond this are dropped (logged). */
#define CONTROL_EVENT_QUEUE_MAX 4096

/*
 * Bind and listen on the UNIX socket @path (mode 0600) and register the
 * server's own commands, query-commands and query-version (qmp_capabilities
 * is the protocol's, see control_proto.h).  The server knows no other
 * command: each module registers its own (vm_register_commands,
 * migration_register_commands).
 *
 * If @path exists and something is listening there: -EADDRINUSE ("control
 * socket PATH is in use by another process" is logged); if it is a stale
 * socket nobody listens on, it is unlinked and reused; if it exists and is
 * not a socket: -EEXIST.  Other failures -errno; everything is logged.
 * Main thread.
 */
int control_server_create(const char *path, struct control_server **out);

/* Start the control thread.  0 or -errno.  Main thread, once. */
int control_server_start(struct control_server *srv);

/*
 * Register a command (before or after start; any non-control thread, or a
 * handler).  The command struct is copied; its name, spec and opaque must
 * outlive the server.  0, -EEXIST (name taken), -EINVAL (bad name or spec),
 * -ENOSPC (table full).
 */
int control_server_register(struct control_server *srv, const struct control_command *cmd);

/*
 * Send an event to every connected client.  Matches vm_event_fn: @srv is a
 * struct control_server *, @data is borrowed (may be NULL).  Any thread;
 * never blocks on a socket.  Must not be called once control_server_destroy
 * has begun: unhook the event sources (vm_destroy) first.
 */
void control_server_emit_event(void *srv, const char *event, struct json_object *data);

/*
 * Stop the thread, give pending replies a bounded moment (~0.5 s) to drain,
 * close every client and the listening socket, and unlink @path if it is
 * still our socket.  NULL is fine.  Main thread.
 */
void control_server_destroy(struct control_server *srv);

/* The path being served (for messages). */
const char *control_server_path(const struct control_server *srv);

#endif
