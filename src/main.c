/*
 * vmferry: command-line entry.  Only this file decides to exit.
 *
 *   vmferry run [options]        boot a guest (or wait for an incoming one)
 *   vmferry ctl PATH CMD [ARGS]  send one control command
 *   vmferry verify incrementer DUMP
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "control/client.h"
#include "control/control.h"
#include "migration/cli.h"
#include "migration/migration.h"
#include "util/log.h"
#include "util/size.h"
#include "verify/verify.h"
#include "vmm/guest_image.h"
#include "vmm/vm.h"

#define VMFERRY_VERSION "0.1.0"

static void main_usage(FILE *f)
{
	fprintf(f,
		"usage: vmferry COMMAND [ARGS]\n"
		"\n"
		"commands:\n"
		"  run      boot a guest VM            (vmferry run --help)\n"
		"  ctl      send a control command     (vmferry ctl --help)\n"
		"  migrate  live-migrate a running VM  (vmferry migrate --help)\n"
		"  verify   check a guest memory dump  (vmferry verify --help)\n"
		"  version  print the version\n");
}

static void run_usage(FILE *f)
{
	fprintf(f,
		"usage: vmferry run [OPTIONS]\n"
		"\n"
		"  -m, --mem SIZE          guest RAM, multiple of 2M (default 256M; K/M/G suffixes)\n"
		"  -c, --vcpus N           vCPUs, 1..%u (default 1); each runs the workload on its own range\n"
		"  -g, --guest SPEC        NAME|FILE[,key=value...] (default incrementer)\n"
		"                          built-in guests: %s\n"
		"      --control PATH      JSON control socket (docs/control.md)\n"
		"      --console PATH      write guest console output to PATH (default stdout)\n"
		"  -S, --paused            do not start the vCPUs until 'cont'\n"
		"      --incoming URI      wait for a migration stream on tcp:HOST:PORT or unix:PATH\n"
		"                          instead of booting (--mem and --vcpus must match the source)\n"
		"      --prealloc          allocate all guest RAM up front (default with --incoming,\n"
		"                          where it happens in the background while waiting)\n"
		"      --no-prealloc       allocate guest RAM only as pages are first written\n"
		"      --no-shutdown       keep running after the guest exits or crashes\n"
		"  -v, --verbose           debug logging\n"
		"\n"
		"Exit status: the guest's exit code; %d when the guest crashed; 1 on errors.\n",
		VMF_MAX_VCPUS, guest_builtin_names(), VM_EXIT_STATUS_CRASH);
}

/* SIGINT/SIGTERM arrive here (blocked in every other thread). */
static void *main_signal_thread(void *arg)
{
	struct vm *vm = arg;
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	if (sigwait(&set, &sig) == 0) {
		log_info("signal %d: quitting", sig);
		vm_request_quit(vm);
	}
	return NULL;
}

static int main_run(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mem", required_argument, NULL, 'm' },
		{ "vcpus", required_argument, NULL, 'c' },
		{ "guest", required_argument, NULL, 'g' },
		{ "control", required_argument, NULL, 'C' },
		{ "console", required_argument, NULL, 'o' },
		{ "paused", no_argument, NULL, 'S' },
		{ "no-shutdown", no_argument, NULL, 'N' },
		{ "incoming", required_argument, NULL, 'I' },
		{ "prealloc", no_argument, NULL, 'P' },
		{ "no-prealloc", no_argument, NULL, 'p' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct vm_config cfg = {
		.ram_bytes = 256ull << 20,
		.nvcpus = 1,
		.guest = "incrementer",
	};
	const char *control_path = NULL, *incoming_uri = NULL;
	struct control_server *srv = NULL;
	struct migration *mig = NULL;
	char errbuf[512];
	struct vm *vm = NULL;
	pthread_t sig_thread;
	sigset_t sigs;
	uint64_t v;
	int opt, err, status = 1, prealloc = -1; /* -1: the default for the mode */

	optind = 1;
	while ((opt = getopt_long(argc, argv, "m:c:g:Svh", opts, NULL)) != -1) {
		switch (opt) {
		case 'm':
			if (size_parse(optarg, &cfg.ram_bytes)) {
				fprintf(stderr, "vmferry run: --mem: '%s' is not a size (e.g. 512M, 1G)\n", optarg);
				return 1;
			}
			break;
		case 'c':
			if (size_parse_uint(optarg, 1, VMF_MAX_VCPUS, &v)) {
				fprintf(stderr, "vmferry run: --vcpus: '%s' is not a number in 1..%u\n",
					optarg, VMF_MAX_VCPUS);
				return 1;
			}
			cfg.nvcpus = (unsigned)v;
			break;
		case 'g': cfg.guest = optarg; break;
		case 'C': control_path = optarg; break;
		case 'o': cfg.console_path = optarg; break;
		case 'S': cfg.start_paused = true; break;
		case 'N': cfg.no_shutdown = true; break;
		case 'I': incoming_uri = optarg; cfg.incoming = true; break;
		case 'P': prealloc = 1; break;
		case 'p': prealloc = 0; break;
		case 'v': log_set_level(LOG_DEBUG); break;
		case 'h': run_usage(stdout); return 0;
		default: run_usage(stderr); return 1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "vmferry run: unexpected argument '%s'\n", argv[optind]);
		run_usage(stderr);
		return 1;
	}

	/* SIGINT/SIGTERM go to one thread; created threads inherit the mask. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (prealloc < 0)
		prealloc = cfg.incoming;
	err = vm_create(&cfg, &vm);
	if (err)
		return 1;
	if (prealloc && !cfg.incoming) {
		/* Booting: before the first instruction, so the guest never waits. */
		err = ram_block_populate(vm_ram_block(vm, 0), 0, vm_ram_block(vm, 0)->bytes);
		if (err)
			log_warn("--prealloc: %s; pages will be allocated on first use", strerror(-err));
		err = 0;
	}
	err = migration_create(vm, &mig);
	if (err)
		goto out;
	if (control_path) {
		err = control_server_create(control_path, vm, &srv);
		if (err)
			goto out;
		vm_set_event_handler(vm, control_server_emit_event, srv);
		migration_set_event_handler(mig, control_server_emit_event, srv);
		err = migration_register_commands(mig, srv);
		if (err)
			goto out;
	}
	if (pthread_create(&sig_thread, NULL, main_signal_thread, vm) == 0)
		pthread_detach(sig_thread);
	err = vm_start(vm);
	if (err)
		goto out;
	if (incoming_uri) {
		err = migration_incoming_start(mig, incoming_uri, prealloc != 0, errbuf, sizeof(errbuf));
		if (err) {
			fprintf(stderr, "vmferry run: --incoming: %s\n", errbuf);
			goto out;
		}
	}
	/* Clients are served once everything they may ask about exists. */
	if (srv) {
		err = control_server_start(srv);
		if (err)
			goto out;
	}
	status = vm_wait(vm);
out:
	/* Nothing may emit events into the server once it is destroyed. */
	migration_shutdown(mig);
	if (vm)
		vm_join_vcpus(vm);
	control_server_destroy(srv);
	migration_destroy(mig);
	vm_destroy(vm);
	return err ? 1 : status;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		main_usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "run"))
		return main_run(argc - 1, argv + 1);
	if (!strcmp(argv[1], "ctl"))
		return control_client_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "migrate"))
		return migration_cli_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "verify"))
		return verify_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
		printf("vmferry %s\n", VMFERRY_VERSION);
		return 0;
	}
	if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		main_usage(stdout);
		return 0;
	}
	fprintf(stderr, "vmferry: unknown command '%s'\n", argv[1]);
	main_usage(stderr);
	return 2;
}
