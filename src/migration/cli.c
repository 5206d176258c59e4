#include "migration/cli.h"

#include <errno.h>
#include <inttypes.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "control/client.h"
#include "migration/migration.h"
#include "util/log.h"
#include "util/size.h"

static volatile sig_atomic_t cli_interrupted;

static void cli_on_sigint(int sig)
{
	(void)sig;
	cli_interrupted = 1;
}

static void cli_usage(FILE *f)
{
	fprintf(f,
		"usage: vmferry migrate --control PATH [OPTIONS] URI\n"
		"\n"
		"Migrate the VM behind control socket PATH to URI (tcp:HOST:PORT or unix:PATH),\n"
		"where a destination started with `vmferry run --incoming URI` waits.\n"
		"\n"
		"Precopy unless a postcopy option is given.  Postcopy runs the guest on the\n"
		"destination at once and pulls the pages it lacks from here; the destination\n"
		"must have been started with `vmferry run --incoming URI --postcopy`.\n"
		"\n"
		"With --cpr, update the VMM in place instead: hand the guest to a new vmferry\n"
		"process on this host started with `vmferry run --incoming URI --incoming-cpr\n"
		"unix:CPR_PATH`; guest RAM is shared, not copied, and the old process exits.\n"
		"\n"
		"  -C, --control PATH             the source VM's control socket (required)\n"
		"      --downtime-limit MS        longest acceptable guest pause (default 300)\n"
		"      --max-bandwidth BYTES/S    cap the transfer rate (K/M/G suffixes; default 0,\n"
		"                                 unlimited)\n"
		"      --convergence-timeout S    give up (guest keeps running) after S seconds\n"
		"                                 (default 0: never)\n"
		"      --auto-converge            throttle the vCPUs when precopy does not converge\n"
		"                                 (default off)\n"
		"      --postcopy                 pure postcopy: switch before the first pass\n"
		"      --postcopy-after-passes N  hybrid: precopy, then postcopy when N passes did\n"
		"                                 not converge (1..1000000)\n"
		"      --no-postcopy-preempt      with a postcopy option: no urgent channel; requested\n"
		"                                 pages come behind the background stream\n"
		"      --stream-crc               CRC-32C over every page and device state, checked\n"
		"                                 by the destination (default off: it costs\n"
		"                                 throughput; docs/stream-format.md)\n"
		"      --storage                  storage migration: send every disk's data too, to a\n"
		"                                 destination started with --disk file=NEW,incoming=on\n"
		"      --cpr unix:CPR_PATH        live update (mode cpr-transfer) over this cpr channel\n"
		"      --resume                   continue a paused postcopy to URI, where the\n"
		"                                 destination listens after migrate-recover\n"
		"      --timeout S                stop waiting after S seconds (default 600) and cancel\n"
		"  -q, --quiet                    no progress line\n"
		"\n"
		"Options apply to this migration only: each run sets downtime-limit,\n"
		"max-bandwidth, convergence-timeout, auto-converge, stream-crc, postcopy-ram\n"
		"and postcopy-after-passes on the source to the value given or the default, so a\n"
		"plain `vmferry migrate` uses the defaults whatever an earlier run or a raw\n"
		"migrate-set-parameters set (postcopy-vcpu-nice is left as it is).\n"
		"\n"
		"Prints the final figures (query-migrate) as JSON on stdout.  Ctrl-C cancels\n"
		"(not once postcopy runs: the guest is on the destination then; Ctrl-C twice\n"
		"stops watching, the migration goes on).\n"
		"Exit status: 0 completed, 1 failed or cancelled, 2 usage error, 3 postcopy\n"
		"paused (a connection broke: recover, then --resume).\n");
}

#define CLI_EXIT_PAUSED 3
/* The VMM's default (migration_create); test_cli checks they agree. */
#define CLI_DOWNTIME_LIMIT_MS_DEFAULT MIG_DOWNTIME_LIMIT_DEFAULT_MS

#define CLI_USAGE_LINE "usage: vmferry migrate --control PATH [OPTIONS] URI (--help for more)\n"

/* A usage error: say what is wrong, point at --help.  Returns the exit status. */
static int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int cli_usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("vmferry migrate: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\n" CLI_USAGE_LINE, stderr);
	return 2;
}

static int cli_call(struct control_client *c, const char *cmd, struct json_object *args,
		    struct json_object **ret)
{
	struct json_object *reply = NULL;
	int r = control_client_call(c, cmd, args, &reply);

	if (r == -EREMOTEIO)
		fprintf(stderr, "vmferry migrate: %s: %s\n", cmd, control_reply_error_desc(reply));
	else if (r)
		fprintf(stderr, "vmferry migrate: %s: %s\n", cmd, strerror(-r));
	if (!r && ret) {
		*ret = json_object_get(control_reply_return(reply));
	}
	json_object_put(reply);
	return r;
}

/* Connect to the source's control socket, or say why not (path and cause). */
static int cli_connect(const char *path, struct control_client **c)
{
	char why[160];
	int r = control_client_connect_now(path, 5000, c);

	if (r < 0)
		fprintf(stderr, "vmferry migrate: cannot reach the control socket %s: %s\n", path,
			control_client_strerror(r, why, sizeof(why)));
	return r;
}

static uint64_t cli_u64(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? (uint64_t)json_object_get_int64(v) : 0;
}

static const char *cli_str(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : "";
}

/* No migration runs in query-migrate status @st. */
static bool cli_finished(const char *st)
{
	return !strcmp(st, "none") || !strcmp(st, "completed") || !strcmp(st, "failed") ||
	       !strcmp(st, "cancelled");
}

/* The final MIGRATION event among those queued, or NULL (caller owns). */
static struct json_object *cli_last_migration_event(struct control_client *c)
{
	struct json_object *ev = NULL, *found = NULL;

	while (control_client_wait_event(c, "MIGRATION", 0, &ev) == 0) {
		struct json_object *data;
		const char *st;

		if (json_object_object_get_ex(ev, "data", &data)) {
			st = cli_str(data, "status");
			if (strcmp(st, "none") && cli_finished(st)) {
				json_object_put(found);
				found = json_object_get(data);
			}
		}
		json_object_put(ev);
		ev = NULL;
	}
	return found;
}

/* {"capability": @name, "state": @on} onto @arr. */
static void cli_cap_add(struct json_object *arr, const char *name, bool on)
{
	struct json_object *cap = json_object_new_object();

	json_object_object_add(cap, "capability", json_object_new_string(name));
	json_object_object_add(cap, "state", json_object_new_boolean(on));
	json_object_array_add(arr, cap);
}

/* One progress line from query-migrate @q with status @st, on stderr. */
static void cli_progress(struct json_object *q, const char *st, bool tty)
{
	const char *pre = tty ? "\r\033[K" : "", *post = tty ? "" : "\n";
	char sent[32], left[32], total[32];
	uint64_t passes = cli_u64(q, "passes");

	size_format(cli_u64(q, "transferred"), sent, sizeof(sent));
	size_format(cli_u64(q, "remaining"), left, sizeof(left));
	size_format(cli_u64(q, "total"), total, sizeof(total));
	if (!strncmp(st, "postcopy-", strlen("postcopy-"))) {
		/* The guest runs on the destination: pages move on demand and behind. */
		fprintf(stderr, "%s%s: %s sent, %s not yet there; pages pushed %" PRIu64
			", requested %" PRIu64 " (%" PRIu64 " requests, %" PRIu64 " resent)%s",
			pre, st, sent, left, cli_u64(q, "postcopy-pages-pushed"),
			cli_u64(q, "postcopy-pages-requested"), cli_u64(q, "postcopy-requests"),
			cli_u64(q, "postcopy-pages-resent"), post);
		return;
	}
	if (!strcmp(st, "setup")) {
		fprintf(stderr, "%ssetup: connecting to the destination%s", pre, post);
		return;
	}
	if (passes == 0) {
		/* Pass 1 counts down through all of RAM... */
		fprintf(stderr, "%s%s: pass 1 (all of RAM): %s sent, %s of %s to go%s", pre, st,
			sent, left, total, post);
		return;
	}
	/*
	 * ...later passes resend what the guest dirtied meanwhile: "to go" is the
	 * dirty set found at the last sync, so it starts over from there.
	 */
	fprintf(stderr, "%s%s: pass %" PRIu64 " (dirtied during pass %" PRIu64 "): %s sent, "
		"%s dirty to go, %.1f MB/s, guest dirties %" PRIu64 " pages/s, throttle %" PRIu64
		"%%%s", pre, st, passes + 1, passes, sent, left,
		(double)cli_u64(q, "throughput") / 1e6, cli_u64(q, "dirty-pages-rate"),
		cli_u64(q, "cpu-throttle-percentage"), post);
}

/*
 * Milliseconds and microseconds come as doubles with all their digits
 * (2260.4509600000001): print them with 3 decimals, nanosecond noise gone.
 */
static void cli_round_doubles(struct json_object *q)
{
	json_object_object_foreach(q, key, v) {
		(void)key;
		if (json_object_is_type(v, json_type_double))
			json_object_set_serializer(v, json_object_double_to_json_string,
						   (void *)"%.3f", NULL);
	}
}

/* Print the final query-migrate @q on stdout; the exit status for it. */
static int cli_finish(struct json_object *q, bool quiet, bool tty)
{
	const char *st = cli_str(q, "status");

	if (!quiet && tty)
		fprintf(stderr, "\r\033[K");
	cli_round_doubles(q);
	printf("%s\n", json_object_to_json_string_ext(q, JSON_C_TO_STRING_PLAIN));
	if (!strcmp(st, "completed"))
		return 0;
	if (!strcmp(st, "postcopy-paused")) {
		fprintf(stderr, "vmferry migrate: postcopy paused: %s\n"
			"  If the destination's VMM is alive (`vmferry ctl DST query-status`), the "
			"guest runs there and waits for the pages it lacks.\n"
			"  Recover: on the destination `vmferry ctl DST migrate-recover '{\"uri\": "
			"URI}'`,\n  then here `vmferry migrate --control SRC --resume URI`.\n"
			"  If the destination's process died, the guest is lost: part of its memory "
			"existed only there.\n", cli_str(q, "error-desc"));
		return CLI_EXIT_PAUSED;
	}
	fprintf(stderr, "vmferry migrate: %s: %s\n", st, cli_str(q, "error-desc"));
	return 1;
}

/*
 * Follow the migration to its end with query-migrate (progress on stderr),
 * print its last figures on stdout; the exit status.  @cpr: a live update,
 * whose VMM exits at the end.  @resume_base: for --resume, the source's
 * postcopy-resume-failures before the attempt (a larger count means it
 * failed); UINT64_MAX otherwise, when postcopy-paused ends the watch.
 */
static int cli_watch(struct control_client *c, bool cpr, bool quiet, bool tty, uint64_t timeout_s,
		     uint64_t resume_base)
{
	uint64_t start = clock_monotonic_ns();
	struct json_object *q = NULL;
	bool warned = false;
	int status = 1;

	signal(SIGINT, cli_on_sigint);
	for (;;) {
		const char *st;
		struct timespec tick = { 0, 100 * 1000000L };
		bool postcopy, stop;

		json_object_put(q);
		q = NULL;
		if (cpr) {
			/* The old process exits once the update is done; its last
			 * MIGRATION event carries the figures. */
			struct json_object *reply = NULL;
			int r = control_client_call(c, "query-migrate", NULL, &reply);

			if (r == 0)
				q = json_object_get(control_reply_return(reply));
			json_object_put(reply);
			if (r == -ECONNRESET || r == -EPIPE) {
				q = cli_last_migration_event(c);
				if (!q) {
					fprintf(stderr, "vmferry migrate: the VMM closed its control "
						"socket without reporting the end of the update\n");
					return 1;
				}
				break;
			}
			if (r) {
				fprintf(stderr, "vmferry migrate: query-migrate: %s\n", strerror(-r));
				return 1;
			}
		} else if (cli_call(c, "query-migrate", NULL, &q)) {
			return 1;
		}
		st = cli_str(q, "status");
		if (strcmp(st, "none") && cli_finished(st))
			break;
		if (!strcmp(st, "postcopy-paused") &&
		    (resume_base == UINT64_MAX || cli_u64(q, "postcopy-resume-failures") > resume_base))
			break;
		if (!quiet)
			cli_progress(q, st, tty);
		postcopy = !strncmp(st, "postcopy-", strlen("postcopy-"));
		stop = cli_interrupted || clock_monotonic_ns() - start > timeout_s * 1000000000ull;
		if (stop && postcopy) {
			/* Nothing to cancel: the guest runs on the destination. */
			if (warned || !cli_interrupted) {
				fprintf(stderr, "%svmferry migrate: %s; postcopy goes on in the VMM "
					"(query-migrate follows it)\n", tty ? "\n" : "",
					cli_interrupted ? "stopped watching" : "timed out");
				json_object_put(q);
				return 1;
			}
			fprintf(stderr, "%svmferry migrate: postcopy cannot be cancelled: the guest "
				"runs on the destination (migrate-pause pauses it); Ctrl-C again to stop "
				"watching\n", tty ? "\n" : "");
			warned = true;
			cli_interrupted = 0;
		} else if (stop) {
			fprintf(stderr, "%svmferry migrate: %s, cancelling\n", tty ? "\n" : "",
				cli_interrupted ? "interrupted" : "timed out");
			cli_interrupted = 0;
			cli_call(c, "migrate-cancel", NULL, NULL);
			timeout_s = (clock_monotonic_ns() - start) / 1000000000ull + 30;
		}
		nanosleep(&tick, NULL);
	}
	status = cli_finish(q, quiet, tty);
	json_object_put(q);
	return status;
}

/*
 * --resume: continue a paused postcopy to @uri, where the destination
 * listens after migrate-recover.  The exit status.
 */
static int cli_resume(struct control_client *c, const char *uri, bool quiet, bool tty,
		      uint64_t timeout_s)
{
	struct json_object *q = NULL, *args;
	uint64_t failures;

	if (cli_call(c, "query-migrate", NULL, &q))
		return 1;
	if (strcmp(cli_str(q, "status"), "postcopy-paused") || !strcmp(cli_str(q, "role"),
								   "destination")) {
		fprintf(stderr, "vmferry migrate: nothing to resume: %s is %s, not a paused "
			"postcopy source\n", cli_str(q, "role"), cli_str(q, "status"));
		json_object_put(q);
		return 1;
	}
	failures = cli_u64(q, "postcopy-resume-failures");
	json_object_put(q);
	args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string(uri));
	json_object_object_add(args, "resume", json_object_new_boolean(true));
	if (cli_call(c, "migrate", args, NULL)) {
		json_object_put(args);
		return 1;
	}
	json_object_put(args);
	return cli_watch(c, false, quiet, tty, timeout_s, failures);
}

/* What `vmferry migrate` was asked to do. */
struct cli_opts {
	const char *control, *uri, *cpr_uri;
	uint64_t timeout_s, after_passes; /* after_passes 0: not hybrid */
	uint64_t downtime_ms, bandwidth, convergence_s; /* the value given, or the default */
	bool downtime_given, bandwidth_given, convergence_given;
	bool pure_postcopy, preempt, postcopy, resume, auto_converge, stream_crc, quiet, storage;
};

/* One option: 0, or the exit status to end with (usage error, or --help). */
static int cli_parse_option(int opt, struct cli_opts *o)
{
	switch (opt) {
	case 'C': o->control = optarg; return 0;
	case 'd':
		o->downtime_given = true;
		return size_parse_uint(optarg, 1, 2000000, &o->downtime_ms)
		       ? cli_usage_error("--downtime-limit: '%s' is not a number of milliseconds "
					 "in 1..2000000", optarg) : 0;
	case 'b':
		o->bandwidth_given = true;
		return size_parse(optarg, &o->bandwidth) || o->bandwidth > INT64_MAX
		       ? cli_usage_error("--max-bandwidth: '%s' is not a rate in bytes/s (e.g. "
					 "100M)", optarg) : 0;
	case 't':
		o->convergence_given = true;
		return size_parse_uint(optarg, 0, 86400, &o->convergence_s)
		       ? cli_usage_error("--convergence-timeout: '%s' is not a number of seconds "
					 "in 0..86400", optarg) : 0;
	case 'a': o->auto_converge = true; return 0;
	case 'k': o->stream_crc = true; return 0;
	case 'P': o->pure_postcopy = true; return 0;
	case 'A':
		return size_parse_uint(optarg, 1, 1000000, &o->after_passes)
		       ? cli_usage_error("--postcopy-after-passes: '%s' is not a number of passes "
					 "in 1..1000000", optarg) : 0;
	case 'n': o->preempt = false; return 0;
	case 'c': o->cpr_uri = optarg; return 0;
	case 'R': o->resume = true; return 0;
	case 'S': o->storage = true; return 0;
	case 'T':
		return size_parse_uint(optarg, 1, 86400, &o->timeout_s)
		       ? cli_usage_error("--timeout: '%s' is not a number of seconds in 1..86400",
					 optarg) : 0;
	case 'q': o->quiet = true; return 0;
	case 'h':
		cli_usage(stdout);
		return -1; /* exit 0 */
	default:
		/* getopt said which option. */
		fputs(CLI_USAGE_LINE, stderr);
		return 2;
	}
}

/* The command line: 0, -1 (--help was printed), or the exit status to end with. */
static int cli_parse(int argc, char **argv, struct cli_opts *o)
{
	static const struct option opts[] = {
		{ "control", required_argument, NULL, 'C' },
		{ "downtime-limit", required_argument, NULL, 'd' },
		{ "max-bandwidth", required_argument, NULL, 'b' },
		{ "convergence-timeout", required_argument, NULL, 't' },
		{ "auto-converge", no_argument, NULL, 'a' },
		{ "postcopy", no_argument, NULL, 'P' },
		{ "postcopy-after-passes", required_argument, NULL, 'A' },
		{ "no-postcopy-preempt", no_argument, NULL, 'n' },
		{ "stream-crc", no_argument, NULL, 'k' },
		{ "cpr", required_argument, NULL, 'c' },
		{ "resume", no_argument, NULL, 'R' },
		{ "storage", no_argument, NULL, 'S' },
		{ "timeout", required_argument, NULL, 'T' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	int opt, r;

	*o = (struct cli_opts){ .timeout_s = 600, .preempt = true,
				.downtime_ms = CLI_DOWNTIME_LIMIT_MS_DEFAULT,
				.bandwidth = 0, .convergence_s = 0 };
	optind = 1;
	opterr = 1; /* getopt names an unknown option or a missing argument */
	while ((opt = getopt_long(argc, argv, "C:qh", opts, NULL)) != -1)
		if ((r = cli_parse_option(opt, o)) != 0)
			return r; /* -1: --help, exit 0 */
	if (!o->control)
		return cli_usage_error("--control PATH is required: the source VM's control socket");
	if (optind == argc)
		return cli_usage_error("missing the destination URI (tcp:HOST:PORT or unix:PATH)");
	if (optind < argc - 1)
		return cli_usage_error("one destination URI only; unexpected '%s'", argv[optind + 1]);
	o->uri = argv[optind];
	o->postcopy = o->pure_postcopy || o->after_passes;
	if (o->pure_postcopy && o->after_passes)
		return cli_usage_error("--postcopy and --postcopy-after-passes exclude each other: "
				       "pure postcopy switches before the first pass");
	if (o->cpr_uri && (o->postcopy || !o->preempt))
		return cli_usage_error("--cpr cannot be combined with postcopy options: a live "
				       "update moves no RAM");
	if (!o->postcopy && !o->preempt)
		return cli_usage_error("--no-postcopy-preempt needs --postcopy or "
				       "--postcopy-after-passes");
	if (o->storage && o->cpr_uri)
		return cli_usage_error("--storage cannot be combined with --cpr: a live update "
				       "keeps the disk where it is");
	if (o->storage && o->postcopy && !o->preempt)
		return cli_usage_error("--storage with postcopy needs the urgent channel: drop "
				       "--no-postcopy-preempt");
	if (o->resume && (o->postcopy || !o->preempt || o->cpr_uri || o->auto_converge ||
			  o->stream_crc || o->storage || o->downtime_given || o->bandwidth_given ||
			  o->convergence_given))
		return cli_usage_error("--resume takes the paused migration as it is: only "
				       "--timeout and --quiet go with it");
	return 0;
}

/*
 * The parameters and capabilities this migration runs with: every one the
 * command line controls, given or default, so nothing an earlier run left
 * applies (a 50 MB/s cap from the last run throttled the next one; a
 * lingering postcopy-ram would make a precopy run advise postcopy, and a
 * live update refuse).  postcopy-preempt only with postcopy, as it means
 * nothing without.
 */
static void cli_settings(const struct cli_opts *o, struct json_object **params,
			 struct json_object **caps)
{
	struct json_object *cap_list = json_object_new_array();

	*params = json_object_new_object();
	json_object_object_add(*params, "downtime-limit",
			       json_object_new_int64((int64_t)o->downtime_ms));
	json_object_object_add(*params, "max-bandwidth",
			       json_object_new_int64((int64_t)o->bandwidth));
	json_object_object_add(*params, "convergence-timeout",
			       json_object_new_int64((int64_t)o->convergence_s));
	json_object_object_add(*params, "postcopy-after-passes",
			       json_object_new_int64((int64_t)o->after_passes));
	json_object_object_add(*params, "mode", json_object_new_string(o->cpr_uri ? "cpr-transfer"
										  : "normal"));
	*caps = json_object_new_object();
	json_object_object_add(*caps, "capabilities", cap_list);
	cli_cap_add(cap_list, "postcopy-ram", o->postcopy);
	if (o->postcopy)
		cli_cap_add(cap_list, "postcopy-preempt", o->preempt);
	cli_cap_add(cap_list, "auto-converge", o->auto_converge);
	cli_cap_add(cap_list, "stream-crc", o->stream_crc);
}

/* The migrate command's arguments: the main channel, and the cpr one. */
static struct json_object *cli_migrate_args(const struct cli_opts *o)
{
	struct json_object *args = json_object_new_object(), *chans, *ch;

	if (o->storage)
		json_object_object_add(args, "storage", json_object_new_boolean(true));
	if (!o->cpr_uri) {
		json_object_object_add(args, "uri", json_object_new_string(o->uri));
		return args;
	}
	chans = json_object_new_array();
	ch = json_object_new_object();
	json_object_object_add(ch, "type", json_object_new_string("main"));
	json_object_object_add(ch, "uri", json_object_new_string(o->uri));
	json_object_array_add(chans, ch);
	ch = json_object_new_object();
	json_object_object_add(ch, "type", json_object_new_string("cpr"));
	json_object_object_add(ch, "uri", json_object_new_string(o->cpr_uri));
	json_object_array_add(chans, ch);
	json_object_object_add(args, "channels", chans);
	return args;
}

/*
 * Set up and start the migration on @c.  0, or 1 (said why).  Parameters
 * and capabilities change nothing once a migration runs, except on a
 * destination still waiting for its stream, whose postcopy-ram this must
 * not turn off: both are refused before anything is touched.
 */
static int cli_start(struct control_client *c, const struct cli_opts *o)
{
	struct json_object *params, *caps, *q = NULL, *args = NULL;
	int r = 1;

	cli_settings(o, &params, &caps);
	if (cli_call(c, "query-migrate", NULL, &q))
		goto out;
	if (!cli_finished(cli_str(q, "status"))) {
		fprintf(stderr, "vmferry migrate: %s (%s)\n",
			strcmp(cli_str(q, "role"), "destination")
			? "a migration is already in progress"
			: "this VM is waiting for an incoming migration", cli_str(q, "status"));
		goto out;
	}
	if (cli_call(c, "migrate-set-parameters", params, NULL) ||
	    cli_call(c, "migrate-set-capabilities", caps, NULL))
		goto out;
	/* Before `migrate`: the migration switches before its first pass. */
	if (o->pure_postcopy && cli_call(c, "migrate-start-postcopy", NULL, NULL))
		goto out;
	args = cli_migrate_args(o);
	r = cli_call(c, "migrate", args, NULL) ? 1 : 0;
out:
	json_object_put(args);
	json_object_put(q);
	json_object_put(caps);
	json_object_put(params);
	return r;
}

int migration_cli_main(int argc, char **argv)
{
	struct control_client *c = NULL;
	struct cli_opts o;
	bool tty = isatty(STDERR_FILENO);
	int status = cli_parse(argc, argv, &o);

	if (status)
		return status < 0 ? 0 : status;
	if (cli_connect(o.control, &c) < 0)
		return 1;
	if (o.resume)
		status = cli_resume(c, o.uri, o.quiet, tty, o.timeout_s);
	else
		status = cli_start(c, &o) ? 1
			 : cli_watch(c, o.cpr_uri != NULL, o.quiet, tty, o.timeout_s, UINT64_MAX);
	control_client_close(c);
	return status;
}
