/*
 * The chaos campaign: one migration with one fault (see chaos.h).  This
 * file sets the two VMMs up, starts the migration, injects the fault at its
 * moment and tears everything down; chaos_verdict.c waits for the outcome
 * and classifies it.
 *
 * Topology per fault: link faults need two hosts (network namespaces, the
 * source in a, the destination in b, TCP across the veth); the relay's
 * faults a TCP relay on loopback between the two; process faults a direct
 * UNIX or TCP connection, drawn at random; CPR is always on UNIX sockets.
 */
#include "chaos/internal.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "util/log.h"

#define CHAOS_NFT "/usr/sbin/nft"
#define CHAOS_NFT_TABLE "vmferry_chaos"
/* The moment is drawn in [0, this] ms after the migrate command: a 64 MiB
 * guest at CHAOS_BANDWIDTH takes about that long (CPR a few ms). */
#define CHAOS_MOMENT_MAX_MS 1200u
#define CHAOS_CPR_MOMENT_MAX_MS 12u
#define CHAOS_BANDWIDTH "40000000"

static const char *const chaos_mode_names[CHAOS_NMODES] = {
	"precopy", "hybrid", "postcopy", "cpr",
};
static const char *const chaos_fault_names[CHAOS_NFAULTS] = {
	"kill-src", "kill-dst", "stop-src", "stop-dst", "link-down", "drop", "cut", "slow-reader",
};
static const char *const chaos_outcome_names[CHAOS_NOUTCOMES] = {
	"not-injected", "completed", "failed-source-runs", "cpr-rolled-back", "recovered-auto",
	"recovered-manual", "kept-paused-destination-runs", "kept-paused-forced",
	"lost-source-died", "lost-destination-died", "killed-after-switch", "FAILURE",
};

const char *chaos_mode_name(enum chaos_mode m)
{
	return m < CHAOS_NMODES ? chaos_mode_names[m] : "?";
}

const char *chaos_fault_name(enum chaos_fault f)
{
	return f < CHAOS_NFAULTS ? chaos_fault_names[f] : "?";
}

const char *chaos_outcome_name(enum chaos_outcome o)
{
	return o < CHAOS_NOUTCOMES ? chaos_outcome_names[o] : "?";
}

bool chaos_fault_applies(const struct chaos_config *cfg, enum chaos_mode mode,
			 enum chaos_fault fault)
{
	switch (fault) {
	case CHAOS_LINK_DOWN:
	case CHAOS_DROP:
		return mode != CHAOS_CPR && cfg->hosts;
	case CHAOS_CUT:
	case CHAOS_SLOW_READER:
		/* CPR has no network path: both processes share the host. */
		return mode != CHAOS_CPR;
	default:
		return true;
	}
}

void chaos_init(const struct chaos_config *cfg)
{
	char ms[16];

	snprintf(ms, sizeof(ms), "%u", cfg->io_timeout_ms);
	setenv("VMFERRY_IO_TIMEOUT_MS", ms, 1);
	/* A new process whose old one died gives up this long after its ACK. */
	setenv("VMFERRY_CPR_MAIN_WAIT_MS", ms, 1);
}

uint64_t chaos_random(uint64_t seed, unsigned index, unsigned salt)
{
	uint64_t x = seed ^ ((uint64_t)index << 20) ^ ((uint64_t)salt << 48);

	/* splitmix64 */
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

unsigned chaos_draw(struct chaos_ctx *c, unsigned lo, unsigned hi)
{
	uint64_t r = chaos_random(c->cfg->seed, c->res->index, c->salt++);

	return lo + (unsigned)(r % ((uint64_t)hi - lo + 1));
}

static void chaos_vappend(char *buf, size_t len, const char *fmt, va_list ap)
{
	size_t used = strlen(buf);

	if (used + 3 >= len)
		return;
	if (used) {
		strcpy(buf + used, "; ");
		used += 2;
	}
	vsnprintf(buf + used, len - used, fmt, ap);
}

int chaos_fail(struct chaos_ctx *c, const char *fmt, ...)
{
	va_list ap;

	if (c->res->outcome == CHAOS_FAILURE)
		return -1;
	c->res->outcome = CHAOS_FAILURE;
	c->res->why[0] = 0;
	va_start(ap, fmt);
	chaos_vappend(c->res->why, sizeof(c->res->why), fmt, ap);
	va_end(ap);
	return -1;
}

void chaos_note(struct chaos_ctx *c, const char *fmt, ...)
{
	va_list ap;

	if (c->res->outcome == CHAOS_FAILURE)
		return;
	va_start(ap, fmt);
	chaos_vappend(c->res->why, sizeof(c->res->why), fmt, ap);
	va_end(ap);
}

/* Start one VMM (in @host's namespace, or here for -1), with its log kept. */
static int chaos_spawn(struct chaos_ctx *c, int side, int host, const char *const args[],
		       bool connect)
{
	const char *prefix[5];
	struct harness_vm_opts opts = { .name = side == CHAOS_SRC ? "src" : "dst", .log = true };
	struct harness_vm *vm = &c->vm[side];

	if (host >= 0) {
		harness_netns_prefix(c->cfg->hosts, host, prefix);
		opts.prefix = prefix;
	}
	if (harness_spawn_start(vm, &opts, args) || (connect && harness_connect(vm, 20000)))
		return chaos_fail(c, "cannot start the %s VMM: %s", opts.name, vm->error);
	return 0;
}

static int chaos_setup_source(struct chaos_ctx *c)
{
	const char *args[] = { "--mem", CHAOS_MEM, "--vcpus", CHAOS_VCPUS, "--guest", CHAOS_GUEST,
			       NULL };

	if (chaos_spawn(c, CHAOS_SRC, c->topo == CHAOS_TOPO_NETNS ? 0 : -1, args, true))
		return -1;
	/* Every page of the working set written once: all of them checkable. */
	if (harness_wait_passes(&c->vm[CHAOS_SRC], 1, 30000))
		return chaos_fail(c, "the source guest does not run: %s", c->vm[CHAOS_SRC].error);
	return 0;
}

/* The new process of a live update, on fresh UNIX sockets (not connected yet). */
static int chaos_setup_cpr_target(struct chaos_ctx *c)
{
	char mp[HARNESS_PATH_BYTES], cp[HARNESS_PATH_BYTES];
	const char *args[] = { "--incoming", c->uri, "--incoming-cpr", c->cpr_uri, NULL };

	if (harness_unique_path(mp, sizeof(mp), "main") || harness_unique_path(cp, sizeof(cp), "cpr"))
		return chaos_fail(c, "no temporary directory");
	snprintf(c->uri, sizeof(c->uri), "unix:%s", mp);
	snprintf(c->cpr_uri, sizeof(c->cpr_uri), "unix:%s", cp);
	snprintf(c->res->detail, sizeof(c->res->detail), "unix");
	return chaos_spawn(c, CHAOS_DST, -1, args, false);
}

/* The listening address for the destination's topology. */
static int chaos_listen_uri(struct chaos_ctx *c, char *uri, size_t len)
{
	char path[HARNESS_PATH_BYTES];

	switch (c->topo) {
	case CHAOS_TOPO_UNIX:
		if (harness_unique_path(path, sizeof(path), "mig"))
			return chaos_fail(c, "no temporary directory");
		snprintf(uri, len, "unix:%s", path);
		return 0;
	case CHAOS_TOPO_NETNS:
		snprintf(uri, len, "tcp:%s:0", c->cfg->hosts->addr[1]);
		return 0;
	default:
		snprintf(uri, len, "tcp:127.0.0.1:0");
		return 0;
	}
}

static int chaos_setup_destination(struct chaos_ctx *c)
{
	char listen[HARNESS_PATH_BYTES + 16];
	const char *args[] = { "--mem", CHAOS_MEM, "--vcpus", CHAOS_VCPUS, "--incoming", listen,
			       c->res->mode == CHAOS_PRECOPY ? NULL : "--postcopy", NULL };
	struct harness_vm *dst = &c->vm[CHAOS_DST];
	int port = 0;

	if (c->res->mode == CHAOS_CPR)
		return chaos_setup_cpr_target(c);
	if (chaos_listen_uri(c, listen, sizeof(listen)) ||
	    chaos_spawn(c, CHAOS_DST, c->topo == CHAOS_TOPO_NETNS ? 1 : -1, args, true))
		return -1;
	if (harness_incoming_uri(dst, c->uri, sizeof(c->uri), 20000))
		return chaos_fail(c, "the destination does not listen: %s", dst->error);
	if (c->topo != CHAOS_TOPO_RELAY)
		return 0;
	if (sscanf(strrchr(c->uri, ':') + 1, "%d", &port) != 1 ||
	    harness_relay_start(port, &c->relay))
		return chaos_fail(c, "cannot start the relay to %s", c->uri);
	snprintf(c->uri, sizeof(c->uri), "tcp:127.0.0.1:%d", harness_relay_port(c->relay));
	return 0;
}

/* Capabilities and parameters for the mode; then the migrate command. */
static int chaos_start(struct chaos_ctx *c)
{
	struct harness_vm *src = &c->vm[CHAOS_SRC], *dst = &c->vm[CHAOS_DST];
	char params[160];
	int rc = 0;

	if (c->res->mode == CHAOS_CPR) {
		if (harness_set_params(src, "{\"mode\": \"cpr-transfer\"}") ||
		    harness_migrate_channels(src, c->uri, c->cpr_uri))
			return chaos_fail(c, "cpr-transfer refused: %s", src->error);
		return 0;
	}
	/* Slow enough that a fault at a random moment finds it under way;
	 * a hybrid never converges (downtime 1 ms) and switches after a pass. */
	snprintf(params, sizeof(params), "{\"max-bandwidth\": %s, \"downtime-limit\": %s, "
		 "\"convergence-timeout\": 60%s}", CHAOS_BANDWIDTH,
		 c->res->mode == CHAOS_HYBRID ? "1" : "50",
		 c->res->mode == CHAOS_HYBRID ? ", \"postcopy-after-passes\": 1" : "");
	rc = harness_set_params(src, params);
	if (!rc && c->res->mode != CHAOS_PRECOPY) {
		c->recover_auto = chaos_draw(c, 0, 1);
		rc = harness_set_capability(src, "postcopy-ram", true);
		if (!rc && c->recover_auto) {
			snprintf(params, sizeof(params), "{\"postcopy-recover-timeout\": %u}",
				 c->cfg->recover_timeout_s);
			rc = harness_set_params(src, params) || harness_set_params(dst, params);
		}
		if (!rc && c->res->mode == CHAOS_POSTCOPY)
			rc = harness_call(src, "migrate-start-postcopy", NULL, NULL);
	}
	if (rc || harness_migrate(src, c->uri))
		return chaos_fail(c, "the migration did not start: %s", src->error);
	return 0;
}

/* Whether the migration is still under way (else the fault is not injected). */
static bool chaos_under_way(struct chaos_ctx *c)
{
	struct harness_vm *src = &c->vm[CHAOS_SRC];
	struct json_object *q = NULL;
	bool on;

	if (c->res->mode == CHAOS_CPR)
		return harness_wait_exit(src, 0) == -ETIMEDOUT;
	if (harness_call(src, "query-migrate", NULL, &q))
		return false;
	on = strcmp(harness_json_str(q, "status"), "completed") &&
	     strcmp(harness_json_str(q, "status"), "failed");
	json_object_put(q);
	return on;
}

/* Wait for the moment, watching the migration; false when it ended first. */
static bool chaos_wait_moment(struct chaos_ctx *c, uint64_t start_ns)
{
	uint64_t at_ns = start_ns + (uint64_t)c->res->at_ms * 1000000ull;

	for (;;) {
		uint64_t now = clock_monotonic_ns();

		if (!chaos_under_way(c))
			return false;
		if (now >= at_ns)
			return true;
		harness_nap_ms((unsigned)((at_ns - now) / 1000000ull < 5 ? 1 : 5));
	}
}

static int chaos_ip_link(struct chaos_ctx *c, int host, const char *updown)
{
	const struct harness_netns *h = c->cfg->hosts;
	const char *argv[] = { h->ip_path, "-n", h->ns[host], "link", "set", h->dev[host], updown,
			       NULL };

	return harness_cmd(argv, false, 10000) ? chaos_fail(c, "ip link set %s failed", updown) : 0;
}

/* Run nft in @host's namespace with @words (at most 18). */
static int chaos_nft(struct chaos_ctx *c, int host, const char *const words[])
{
	const struct harness_netns *h = c->cfg->hosts;
	const char *argv[24] = { h->ip_path, "netns", "exec", h->ns[host], CHAOS_NFT };
	size_t n = 5;

	for (size_t i = 0; words[i] && n < 23; i++)
		argv[n++] = words[i];
	argv[n] = NULL;
	return harness_cmd(argv, false, 10000) ? chaos_fail(c, "nft %s %s failed", words[0],
							   words[1]) : 0;
}

/* Drop @pct % of the TCP packets @host receives. */
static int chaos_drop_start(struct chaos_ctx *c, int host, unsigned pct)
{
	char pct_s[8];
	const char *table[] = { "add", "table", "inet", CHAOS_NFT_TABLE, NULL };
	const char *chain[] = { "add", "chain", "inet", CHAOS_NFT_TABLE, "in",
				"{ type filter hook input priority 0; }", NULL };
	const char *rule[] = { "add", "rule", "inet", CHAOS_NFT_TABLE, "in", "meta", "l4proto",
			       "tcp", "numgen", "random", "mod", "100", "<", pct_s, "drop", NULL };

	snprintf(pct_s, sizeof(pct_s), "%u", pct);
	c->nft_table = true;
	return chaos_nft(c, host, table) || chaos_nft(c, host, chain) || chaos_nft(c, host, rule)
		       ? -1 : 0;
}

static void chaos_drop_stop(struct chaos_ctx *c)
{
	const char *del[] = { "delete", "table", "inet", CHAOS_NFT_TABLE, NULL };

	if (c->nft_table && chaos_nft(c, c->link_host, del) == 0)
		c->nft_table = false;
}

static void chaos_signal(struct chaos_ctx *c, int side, int sig)
{
	if (c->vm[side].pid > 0)
		kill(c->vm[side].pid, sig);
}

/* A fault that lasts: start it, let it last, undo it. */
static int chaos_inject_lasting(struct chaos_ctx *c)
{
	enum chaos_fault f = c->res->fault;
	int side = f == CHAOS_STOP_SRC ? CHAOS_SRC : CHAOS_DST;
	size_t dl = strlen(c->res->detail);
	unsigned rate = 0;
	int rc = 0;

	c->res->lasted_ms = chaos_draw(c, c->cfg->fault_min_ms, c->cfg->fault_max_ms);
	if (f == CHAOS_LINK_DOWN || f == CHAOS_DROP)
		c->link_host = (int)chaos_draw(c, 0, 1);
	if (f == CHAOS_STOP_SRC || f == CHAOS_STOP_DST) {
		chaos_signal(c, side, SIGSTOP);
	} else if (f == CHAOS_LINK_DOWN) {
		c->link_down = true;
		rc = chaos_ip_link(c, c->link_host, "down");
		snprintf(c->res->detail + dl, sizeof(c->res->detail) - dl, ", host %c",
			 'a' + c->link_host);
	} else if (f == CHAOS_DROP) {
		unsigned pct = chaos_draw(c, 5, 60);

		rc = chaos_drop_start(c, c->link_host, pct);
		snprintf(c->res->detail + dl, sizeof(c->res->detail) - dl, ", %u%% at host %c",
			 pct, 'a' + c->link_host);
	} else {
		/* slow reader: stop reading, or trickle at 64 KiB/s */
		rate = chaos_draw(c, 0, 1) ? 65536 : 0;
		harness_relay_throttle(c->relay, rate);
		snprintf(c->res->detail + dl, sizeof(c->res->detail) - dl, ", reads %s",
			 rate ? "64 KiB/s" : "nothing");
	}
	/* The fault itself lasts this long: a duration, not a synchronisation. */
	harness_nap_ms(c->res->lasted_ms);
	if (f == CHAOS_STOP_SRC || f == CHAOS_STOP_DST) {
		chaos_signal(c, side, SIGCONT);
	} else if (f == CHAOS_LINK_DOWN) {
		if (chaos_ip_link(c, c->link_host, "up") == 0)
			c->link_down = false;
	} else if (f == CHAOS_DROP) {
		chaos_drop_stop(c);
	} else {
		harness_relay_throttle(c->relay, UINT64_MAX);
	}
	return rc;
}

static int chaos_inject(struct chaos_ctx *c)
{
	switch (c->res->fault) {
	case CHAOS_KILL_SRC:
	case CHAOS_KILL_DST: {
		int side = c->res->fault == CHAOS_KILL_SRC ? CHAOS_SRC : CHAOS_DST;

		c->killed[side] = true;
		chaos_signal(c, side, SIGKILL);
		return 0;
	}
	case CHAOS_CUT:
		harness_relay_cut(c->relay);
		return 0;
	default:
		return chaos_inject_lasting(c);
	}
}

int chaos_recover_by_hand(struct chaos_ctx *c)
{
	struct harness_vm *src = &c->vm[CHAOS_SRC], *dst = &c->vm[CHAOS_DST];
	char listen[HARNESS_PATH_BYTES + 16], real[HARNESS_PATH_BYTES + 16];
	struct json_object *args, *ret = NULL;
	int rc;

	if (c->topo == CHAOS_TOPO_RELAY)
		c->topo = CHAOS_TOPO_TCP;   /* straight to the destination this time */
	if (chaos_listen_uri(c, listen, sizeof(listen)))
		return -1;
	args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string(listen));
	rc = harness_call(dst, "migrate-recover", args, &ret);
	json_object_put(args);
	if (rc) {
		json_object_put(ret);
		return chaos_fail(c, "migrate-recover refused: %s", dst->error);
	}
	snprintf(real, sizeof(real), "%s", harness_json_str(ret, "uri"));
	json_object_put(ret);
	args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string(real));
	json_object_object_add(args, "resume", json_object_new_boolean(true));
	rc = harness_call(src, "migrate", args, NULL);
	json_object_put(args);
	if (rc)
		return chaos_fail(c, "resume to %s refused: %s", real, src->error);
	c->recovered_by_hand = true;
	return 0;
}

/* Undo whatever is left: links up, rules gone, processes killed, relay stopped. */
static void chaos_teardown(struct chaos_ctx *c)
{
	if (c->link_down && chaos_ip_link(c, c->link_host, "up") == 0)
		c->link_down = false;
	chaos_drop_stop(c);
	for (int side = 0; side < 2; side++) {
		chaos_signal(c, side, SIGCONT);
		harness_vm_kill(&c->vm[side]);
	}
	harness_relay_stop(c->relay);
	c->relay = NULL;
}

static void chaos_pick_topology(struct chaos_ctx *c)
{
	static const char *const names[] = { "unix", "tcp", "relay", "netns" };

	switch (c->res->fault) {
	case CHAOS_LINK_DOWN:
	case CHAOS_DROP:
		c->topo = CHAOS_TOPO_NETNS;
		break;
	case CHAOS_CUT:
	case CHAOS_SLOW_READER:
		c->topo = CHAOS_TOPO_RELAY;
		break;
	default:
		c->topo = chaos_draw(c, 0, 1) ? CHAOS_TOPO_TCP : CHAOS_TOPO_UNIX;
		break;
	}
	snprintf(c->res->detail, sizeof(c->res->detail), "%s", names[c->topo]);
}

static int chaos_run_steps(struct chaos_ctx *c)
{
	uint64_t start_ns;

	if (c->res->mode != CHAOS_CPR)
		chaos_pick_topology(c);
	c->res->at_ms = chaos_draw(c, 0, c->res->mode == CHAOS_CPR ? CHAOS_CPR_MOMENT_MAX_MS
								   : CHAOS_MOMENT_MAX_MS);
	if (chaos_setup_source(c) || chaos_setup_destination(c) || chaos_start(c))
		return -1;
	start_ns = clock_monotonic_ns();
	c->res->injected = chaos_wait_moment(c, start_ns);
	if (c->res->injected && chaos_inject(c))
		return -1;
	c->fault_end_ns = clock_monotonic_ns();
	if (c->cfg->verbose)
		fprintf(stderr, "chaos %u: %s, %s (%s) %s at %u ms%s\n", c->res->index,
			chaos_mode_name(c->res->mode), chaos_fault_name(c->res->fault),
			c->res->detail, c->res->injected ? "injected" : "not injected (over)",
			c->res->at_ms, c->recover_auto ? ", auto recovery" : "");
	return chaos_settle_and_classify(c);
}

int chaos_run_one(const struct chaos_config *cfg, unsigned index, enum chaos_mode mode,
		  enum chaos_fault fault, struct chaos_result *res)
{
	struct chaos_ctx c = { .cfg = cfg, .res = res };
	uint64_t t0 = clock_monotonic_ns();
	int rc;

	memset(res, 0, sizeof(*res));
	res->index = index;
	res->mode = mode;
	res->fault = fault;
	c.vm[CHAOS_SRC].pid = c.vm[CHAOS_DST].pid = -1;
	if (!chaos_fault_applies(cfg, mode, fault))
		return chaos_fail(&c, "%s does not apply to %s here", chaos_fault_name(fault),
				  chaos_mode_name(mode));
	rc = chaos_run_steps(&c);
	if (rc) {
		fprintf(stderr, "chaos %u: FAILURE (seed %llu): %s\n", index,
			(unsigned long long)cfg->seed, res->why);
		harness_vm_log_tail(&c.vm[CHAOS_SRC], "source log");
		harness_vm_log_tail(&c.vm[CHAOS_DST], "destination log");
		/* Keep the logs and consoles (harness_dir()) for whoever looks. */
		setenv("VMTEST_KEEP", "1", 1);
		setenv("VMFERRY_CHAOS_KEEP", "1", 1);
	}
	chaos_teardown(&c);
	res->secs = (double)(clock_monotonic_ns() - t0) / 1e9;
	return rc ? -1 : 0;
}

static void chaos_json_escape(const char *s, FILE *out)
{
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			fprintf(out, "\\%c", ch);
		else if (ch < 0x20 || ch >= 0x7f)
			fprintf(out, "\\u%04x", ch);
		else
			fputc(ch, out);
	}
}

void chaos_result_print(const struct chaos_result *res, uint64_t seed, FILE *out)
{
	fprintf(out, "{\"run\": %u, \"seed\": %llu, \"mode\": \"%s\", \"fault\": \"%s\", "
		"\"at_ms\": %u, \"lasted_ms\": %u, \"injected\": %s, \"outcome\": \"%s\", "
		"\"secs\": %.1f, \"detail\": \"", res->index, (unsigned long long)seed,
		chaos_mode_name(res->mode), chaos_fault_name(res->fault), res->at_ms,
		res->lasted_ms, res->injected ? "true" : "false",
		chaos_outcome_name(res->outcome), res->secs);
	chaos_json_escape(res->detail, out);
	fputs("\", \"why\": \"", out);
	chaos_json_escape(res->why, out);
	fputs("\"}\n", out);
	fflush(out);
}
