/*
 * The cpr channel of an in-place live update (CPR transfer): the old VMM
 * hands the new one, over a UNIX socket with SCM_RIGHTS, every file
 * descriptor the new one must inherit rather than recreate - the guest RAM
 * memfds and each disk's open file - before the new process creates its
 * VM.  Guest RAM is never copied: both processes map the same pages; no
 * disk is reopened: both use the same open file.
 *
 * The socket is SOCK_SEQPACKET, so every message arrives whole, with the
 * descriptors that travel with it (docs/cpr.md has the bytes):
 *
 *   old process (source)                     new process (--incoming-cpr)
 *     |-- HELLO  magic, version, nfds, nvcpus, token ------->|
 *     |-- FD     index, kind, flags, gpa, bytes, name + 1 fd ->|  x nfds
 *     |-- DONE   nfds ------------------------------------->|  create the VM over
 *     |                                                      |  the memfds, listen
 *     |<---------------------------- ACK status, text -------|  on the main channel
 *     |== main channel: header, CPR(token), sections, END ==>|  (no RAM records)
 *     |<------------------------------------- RP_RUNNING ----|
 *   exit 0
 *
 * The token ties the main stream to the fds: the new process refuses a main
 * stream whose CPR record carries another token.
 *
 * Every function is safe from any thread; none keeps global state.
 */
#ifndef VMFERRY_MIGRATION_CPR_H
#define VMFERRY_MIGRATION_CPR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CPR_MAGIC 0x0031525043464d56ull /* "VMFCPR1\0" */
/*
 * Channel versions: 1 lends RAM memfds only; 2 adds disk fds.  The old
 * process writes the lowest version that describes what it lends (so a
 * RAM-only hand-over still reaches a version-1 build); this build reads
 * CPR_VERSION_MIN..CPR_VERSION.
 */
#define CPR_VERSION 2u
#define CPR_VERSION_MIN 1u
#define CPR_MAX_FDS 16u
#define CPR_TOKEN_BYTES 16u
#define CPR_NAME_BYTES 32u
#define CPR_TEXT_MAX 480u
/* Largest message on the channel (an ACK with the longest text). */
#define CPR_MSG_MAX (16u + CPR_TEXT_MAX)

enum cpr_msg_type {
	CPR_MSG_HELLO = 1, /* u64 magic, u32 type, u32 version, u32 nfds, u32 nvcpus, u8 token[16] */
	CPR_MSG_FD = 2,    /* u32 type, u32 index, u32 kind, u32 flags, u64 gpa, u64 bytes,
			    * char name[32]; exactly one fd attached */
	CPR_MSG_DONE = 3,  /* u32 type, u32 nfds, u64 0 */
	CPR_MSG_ACK = 4,   /* u32 type, i32 status, u32 text_len, u32 0, text */
};
#define CPR_HELLO_BYTES 40u
#define CPR_FD_BYTES 64u
#define CPR_DONE_BYTES 16u
#define CPR_ACK_HEADER_BYTES 16u

enum cpr_fd_kind {
	CPR_FD_RAM = 1,  /* a guest RAM block's memfd; name = the block's name */
	CPR_FD_DISK = 2, /* a disk's open file (version 2); name "disk<N>", gpa 0,
			  * bytes = its size, flags CPR_FD_F_READONLY */
};
#define CPR_FD_F_READONLY 1u /* DISK: opened read-only */

struct cpr_fd {
	uint32_t kind;               /* enum cpr_fd_kind */
	uint32_t flags;              /* CPR_FD_F_*, as the kind allows */
	char name[CPR_NAME_BYTES];   /* NUL-terminated */
	uint64_t gpa, bytes;         /* RAM: where the block sits and its size; DISK: 0, size */
	int fd;                      /* owned by the cpr_state; -1 when not held */
};

/* What crosses the cpr channel. */
struct cpr_state {
	uint32_t version;            /* received: the channel version the old process wrote */
	uint32_t nvcpus;
	uint8_t token[CPR_TOKEN_BYTES];
	unsigned nfds;
	struct cpr_fd fds[CPR_MAX_FDS];
};

/* Close every fd held by @st and mark it -1. */
void cpr_state_close(struct cpr_state *st);
/* The entry of @kind named @name, or NULL. */
struct cpr_fd *cpr_state_find(struct cpr_state *st, uint32_t kind, const char *name);
/*
 * Source: append an entry lending @fd (still owned by the caller) of @kind
 * named @name.  0, or -ENOSPC with @err filled (CPR_MAX_FDS reached).
 */
int cpr_state_add(struct cpr_state *st, uint32_t kind, const char *name, uint32_t flags,
		  uint64_t gpa, uint64_t bytes, int fd, char *err, size_t errlen);
/* "ram", "disk", or "unknown": a kind in messages. */
const char *cpr_fd_kind_name(uint32_t kind);
/* The channel version that describes @st: 1 when it lends RAM only, else 2. */
uint32_t cpr_state_version(const struct cpr_state *st);

/*
 * Receiving side, as a pure state machine so that tests and the fuzz target
 * drive it without sockets.  Feed each message with the fds that came with
 * it (@ctrunc: the kernel dropped some).  Returns 0 (more to come), 1 (DONE
 * received: @st is complete), or -EBADMSG with @err filled.  On success
 * the message's fds belong to @st; on error they stay the caller's.
 */
struct cpr_rx {
	struct cpr_state *st;
	unsigned state; /* 0: want HELLO, 1: want FD/DONE, 2: complete */
};
void cpr_rx_init(struct cpr_rx *rx, struct cpr_state *st);
int cpr_rx_message(struct cpr_rx *rx, const uint8_t *msg, size_t len, const int *fds,
		   unsigned nfds, bool ctrunc, char *err, size_t errlen);

/* Parse an ACK: 0 with *status and @text (NUL-terminated), or -EBADMSG. */
int cpr_parse_ack(const uint8_t *msg, size_t len, int *status, char *text, size_t textlen,
		  char *err, size_t errlen);

/*
 * Listen on @uri, which must be "unix:PATH" (a stale socket file is
 * replaced).  fd, or -errno with @err filled (-EINVAL: not a UNIX uri).
 */
int cpr_listen(const char *uri, char *err, size_t errlen);
/* Accept one connection, waiting at most @timeout_ms (-1: forever).  fd or -errno. */
int cpr_accept(int listen_fd, int timeout_ms);
/*
 * Connect to "unix:PATH", retrying while the new process has not started
 * listening yet, for at most @timeout_ms; gives up early with -ECANCELED
 * when @cancel_fd (may be -1) becomes readable.  fd or -errno with @err.
 */
int cpr_connect(const char *uri, int timeout_ms, int cancel_fd, char *err, size_t errlen);
/* The same with the address parsed already (a migration's cpr channel). */
struct channel;
int cpr_connect_channel(const struct channel *ch, int timeout_ms, int cancel_fd, char *err,
			size_t errlen);
/* The process id at the other end of a connected cpr socket, or -errno. */
int cpr_peer_pid(int sock);

/* Send @st (HELLO, FDs, DONE).  0 or -errno with @err. */
int cpr_send(int sock, const struct cpr_state *st, char *err, size_t errlen);
/*
 * Receive a complete cpr_state within @timeout_ms.  0, or -errno with @err
 * (then nothing is held: every received fd is closed).
 */
int cpr_recv(int sock, int timeout_ms, struct cpr_state *st, char *err, size_t errlen);

/* Send an ACK: @status 0 (ready: connect the main channel) or -errno with @text. */
int cpr_send_ack(int sock, int status, const char *text);
/*
 * Wait at most @timeout_ms for the ACK, returning early with -ECANCELED
 * when @cancel_fd (may be -1) becomes readable.  Returns the peer's status
 * (0 or its -errno, its text in @text), or a local -errno (-EPIPE: the
 * peer closed without answering) with @text describing it.
 */
int cpr_recv_ack(int sock, int timeout_ms, int cancel_fd, char *text, size_t textlen);

/*
 * Failure injection for tests: when the environment variable
 * VMFERRY_CPR_FAULT equals @point ("before-fds", "after-map",
 * "before-run"), the process dies here with SIGKILL, as a crashing new
 * process would.
 */
void cpr_fault_point(const char *point);

#endif
