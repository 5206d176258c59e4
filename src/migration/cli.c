#include "migration/cli.h"

#include <errno.h>
#include <inttypes.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "control/client.h"
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
		"With --cpr, update the VMM in place instead: hand the guest to a new vmferry\n"
		"process on this host started with `vmferry run --incoming URI --incoming-cpr\n"
		"unix:CPR_PATH`; guest RAM is shared, not copied, and the old process exits.\n"
		"\n"
		"  -C, --control PATH             the source VM's control socket (required)\n"
		"      --downtime-limit MS        longest acceptable guest pause (default 300)\n"
		"      --max-bandwidth BYTES/S    cap the transfer rate (K/M/G suffixes; default unlimited)\n"
		"      --convergence-timeout S    give up (guest keeps running) after S seconds\n"
		"      --auto-converge            throttle the vCPUs when precopy does not converge\n"
		"      --cpr unix:CPR_PATH        live update (mode cpr-transfer) over this cpr channel\n"
		"      --timeout S                stop waiting after S seconds (default 600) and cancel\n"
		"  -q, --quiet                    no progress line\n"
		"\n"
		"Prints the final figures (query-migrate) as JSON on stdout. Ctrl-C cancels.\n"
		"Exit status: 0 completed, 1 failed or cancelled, 2 usage error.\n");
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

/* The final MIGRATION event among those queued, or NULL (caller owns). */
static struct json_object *cli_last_migration_event(struct control_client *c)
{
	struct json_object *ev = NULL, *found = NULL;

	while (control_client_wait_event(c, "MIGRATION", 0, &ev) == 0) {
		struct json_object *data;
		const char *st;

		if (json_object_object_get_ex(ev, "data", &data)) {
			st = cli_str(data, "status");
			if (!strcmp(st, "completed") || !strcmp(st, "failed") ||
			    !strcmp(st, "cancelled")) {
				json_object_put(found);
				found = json_object_get(data);
			}
		}
		json_object_put(ev);
		ev = NULL;
	}
	return found;
}

int migration_cli_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "control", required_argument, NULL, 'C' },
		{ "downtime-limit", required_argument, NULL, 'd' },
		{ "max-bandwidth", required_argument, NULL, 'b' },
		{ "convergence-timeout", required_argument, NULL, 't' },
		{ "auto-converge", no_argument, NULL, 'a' },
		{ "cpr", required_argument, NULL, 'c' },
		{ "timeout", required_argument, NULL, 'T' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *control = NULL, *uri, *cpr_uri = NULL;
	struct json_object *params = json_object_new_object(), *args, *q = NULL;
	struct control_client *c = NULL;
	uint64_t v, timeout_s = 600, start;
	bool auto_converge = false, quiet = false, tty = isatty(STDERR_FILENO);
	int opt, status = 1;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "C:qh", opts, NULL)) != -1) {
		switch (opt) {
		case 'C': control = optarg; break;
		case 'd':
			if (size_parse_uint(optarg, 1, 2000000, &v))
				goto usage;
			json_object_object_add(params, "downtime-limit", json_object_new_int64((int64_t)v));
			break;
		case 'b':
			if (size_parse(optarg, &v) || v > INT64_MAX)
				goto usage;
			json_object_object_add(params, "max-bandwidth", json_object_new_int64((int64_t)v));
			break;
		case 't':
			if (size_parse_uint(optarg, 0, 86400, &v))
				goto usage;
			json_object_object_add(params, "convergence-timeout", json_object_new_int64((int64_t)v));
			break;
		case 'a': auto_converge = true; break;
		case 'c':
			cpr_uri = optarg;
			json_object_object_add(params, "mode", json_object_new_string("cpr-transfer"));
			break;
		case 'T':
			if (size_parse_uint(optarg, 1, 86400, &timeout_s))
				goto usage;
			break;
		case 'q': quiet = true; break;
		case 'h':
			cli_usage(stdout);
			json_object_put(params);
			return 0;
		default:
			goto usage;
		}
	}
	if (!control || optind != argc - 1)
		goto usage;
	uri = argv[optind];
	if (!cpr_uri)
		json_object_object_add(params, "mode", json_object_new_string("normal"));

	if (control_client_connect(control, 5000, &c) != 0) {
		fprintf(stderr, "vmferry migrate: cannot reach the control socket %s\n", control);
		json_object_put(params);
		return 1;
	}
	if (json_object_object_length(params) && cli_call(c, "migrate-set-parameters", params, NULL))
		goto out;
	if (auto_converge) {
		struct json_object *caps = json_object_new_object(), *arr = json_object_new_array();
		struct json_object *cap = json_object_new_object();

		json_object_object_add(cap, "capability", json_object_new_string("auto-converge"));
		json_object_object_add(cap, "state", json_object_new_boolean(1));
		json_object_array_add(arr, cap);
		json_object_object_add(caps, "capabilities", arr);
		opt = cli_call(c, "migrate-set-capabilities", caps, NULL);
		json_object_put(caps);
		if (opt)
			goto out;
	}
	args = json_object_new_object();
	if (cpr_uri) {
		struct json_object *chans = json_object_new_array(), *ch;

		ch = json_object_new_object();
		json_object_object_add(ch, "type", json_object_new_string("main"));
		json_object_object_add(ch, "uri", json_object_new_string(uri));
		json_object_array_add(chans, ch);
		ch = json_object_new_object();
		json_object_object_add(ch, "type", json_object_new_string("cpr"));
		json_object_object_add(ch, "uri", json_object_new_string(cpr_uri));
		json_object_array_add(chans, ch);
		json_object_object_add(args, "channels", chans);
	} else {
		json_object_object_add(args, "uri", json_object_new_string(uri));
	}
	if (cli_call(c, "migrate", args, NULL)) {
		json_object_put(args);
		goto out;
	}
	json_object_put(args);
	signal(SIGINT, cli_on_sigint);
	start = clock_monotonic_ns();
	for (;;) {
		const char *st;
		struct timespec tick = { 0, 100 * 1000000L };

		json_object_put(q);
		q = NULL;
		if (cpr_uri) {
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
					goto out;
				}
				break;
			}
			if (r) {
				fprintf(stderr, "vmferry migrate: query-migrate: %s\n", strerror(-r));
				goto out;
			}
		} else if (cli_call(c, "query-migrate", NULL, &q)) {
			goto out;
		}
		st = cli_str(q, "status");
		if (!strcmp(st, "completed") || !strcmp(st, "failed") || !strcmp(st, "cancelled"))
			break;
		if (!quiet)
			fprintf(stderr, "%s%s: transferred %.1f MiB, remaining %.1f MiB, dirty %" PRIu64
				" pages/s, pass %" PRIu64 ", throttle %" PRIu64 "%%%s",
				tty ? "\r\033[K" : "", st, (double)cli_u64(q, "transferred") / 1048576.0,
				(double)cli_u64(q, "remaining") / 1048576.0, cli_u64(q, "dirty-pages-rate"),
				cli_u64(q, "passes"), cli_u64(q, "cpu-throttle-percentage"),
				tty ? "" : "\n");
		if (cli_interrupted || clock_monotonic_ns() - start > timeout_s * 1000000000ull) {
			fprintf(stderr, "%svmferry migrate: %s, cancelling\n", tty ? "\n" : "",
				cli_interrupted ? "interrupted" : "timed out");
			cli_interrupted = 0;
			cli_call(c, "migrate-cancel", NULL, NULL);
			timeout_s = (clock_monotonic_ns() - start) / 1000000000ull + 30;
		}
		nanosleep(&tick, NULL);
	}
	if (!quiet && tty)
		fprintf(stderr, "\r\033[K");
	printf("%s\n", json_object_to_json_string_ext(q, JSON_C_TO_STRING_PLAIN));
	status = strcmp(cli_str(q, "status"), "completed") ? 1 : 0;
	if (status)
		fprintf(stderr, "vmferry migrate: %s: %s\n", cli_str(q, "status"), cli_str(q, "error-desc"));
out:
	json_object_put(q);
	json_object_put(params);
	control_client_close(c);
	return status;
usage:
	cli_usage(stderr);
	json_object_put(params);
	return 2;
}
