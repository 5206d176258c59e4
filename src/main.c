/*
 * vmferry: command-line entry.  Only this file decides to exit.
 *
 *   vmferry run [options]        boot a guest (or wait for an incoming one)
 *   vmferry ctl PATH CMD [ARGS]  send one control command
 *   vmferry verify incrementer DUMP
 */
#include <errno.h>
#include <inttypes.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "control/client.h"
#include "control/control.h"
#include "migration/cli.h"
#include "migration/cpr.h"
#include "devices/test_state.h"
#include "devices/virtio_blk.h"
#include "migration/migration.h"
#include "util/log.h"
#include "util/size.h"
#include "util/version.h"
#include "verify/verify.h"
#include "vmm/guest_image.h"
#include "vmm/vm.h"
#include "vmm/vm_commands.h"

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
		"      --incoming-cpr unix:PATH\n"
		"                          live update on this host (with --incoming): first take\n"
		"                          guest RAM from the running VMM over this socket instead\n"
		"                          of copying it; --mem and --vcpus then default to the\n"
		"                          source's (docs/cpr.md)\n"
		"      --postcopy          accept a postcopy or hybrid migration (with --incoming):\n"
		"                          turns the postcopy-ram capability on before listening\n"
		"      --postcopy-vcpu-nice N\n"
		"                          with --postcopy: run the vCPUs N nicer (0..19; 20 = the\n"
		"                          SCHED_IDLE policy; default %d; 0 = leave them alone)\n"
		"                          while pages still arrive, so that they do not starve\n"
		"                          the threads bringing them\n"
		"      --prealloc          allocate all guest RAM up front (with --incoming: in the\n"
		"                          background while waiting)\n"
		"      --no-prealloc       allocate guest RAM only as pages are first written\n"
		"                          (with --incoming the default is in between: in the\n"
		"                          background, just ahead of the pages arriving, so RAM\n"
		"                          the source never wrote is never allocated here)\n"
		"      --no-shutdown       keep running after the guest exits or crashes\n"
		"      --disk file=PATH[,readonly=on][,incoming=on][,poll-us=N]\n"
		"                          a virtio-blk disk backed by PATH (repeatable, up to %u;\n"
		"                          a migration's destination gives the same disks in the\n"
		"                          same order; docs/devices.md); incoming=on: PATH (of the\n"
		"                          source disk's size) receives the disk's data from a\n"
		"                          `vmferry migrate --storage`; poll-us: how long the\n"
		"                          disk's thread looks for requests after its last one\n"
		"                          before it sleeps (0-1000, default 50; 0: it sleeps at\n"
		"                          once and every request costs the guest a kick)\n"
		"      --test-state        add a test-only migratable state (a counter and a blob;\n"
		"                          commands test-state-bump, query-test-state): the tests'\n"
		"                          proof that a new state migrates in every mode\n"
		"  -v, --verbose           debug logging\n"
		"\n"
		"Exit status: the guest's exit code; %d when the guest crashed; 1 on errors;\n"
		"2 on usage errors.  Messages start with 'vmferry run: '.\n",
		VMF_MAX_VCPUS, guest_builtin_names(), MIG_POSTCOPY_VCPU_NICE_DEFAULT,
		VMF_MAX_DEVICES, VM_EXIT_STATUS_CRASH);
}

#define MAIN_EXIT_USAGE 2

/* A usage error of `vmferry run`: say what is wrong, point at --help.  Returns 2. */
static int run_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run_usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("vmferry run: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nusage: vmferry run [OPTIONS] (--help for more)\n", stderr);
	return MAIN_EXIT_USAGE;
}

/*
 * A live update's new process, before it tells the old one it is ready (the
 * guest still runs there, at full speed): map the guest's memory into this
 * process now (vm_prefault_ram), so that the guest's first touch of each
 * page here costs less - a slowdown after the pause that no pause figure
 * shows (bench/cpr's guest_lost_ms).
 * Bounded: a huge guest delays the update by at most MAIN_CPR_PREFAULT_MS.
 */
#define MAIN_CPR_PREFAULT_MS 5000

static void main_cpr_prefault(struct vm *vm)
{
	uint64_t t0 = clock_monotonic_ns(), done = 0;
	int err = vm_prefault_ram(vm, MAIN_CPR_PREFAULT_MS * 1000000ull, &done);

	if (err == -ENOTSUP)
		log_info("live update: guest memory not pre-faulted (VMFERRY_CPR_PREFAULT=off)");
	else if (err)
		log_warn("live update: pre-faulting guest memory stopped after %" PRIu64 " MiB: %s",
			 done >> 20, strerror(-err));
	else
		log_info("live update: %" PRIu64 " MiB of guest memory pre-faulted in %.1f ms", done >> 20,
			 (double)(clock_monotonic_ns() - t0) / 1e6);
}

/* Tell the old process why the update cannot go on, and hang up. */
static void main_cpr_fail(int *cpr_fd, int err, const char *why)
{
	if (*cpr_fd < 0)
		return;
	cpr_send_ack(*cpr_fd, err < 0 ? err : -EIO, why);
	close(*cpr_fd);
	*cpr_fd = -1;
}

static unsigned main_cpr_count(const struct cpr_state *st, uint32_t kind)
{
	unsigned n = 0;

	for (unsigned i = 0; i < st->nfds; i++)
		n += st->fds[i].kind == kind;
	return n;
}

/*
 * --incoming-cpr: wait for the old process, take the guest RAM memfd it
 * hands over, and size the VM after it.  Returns the connected cpr socket
 * (answered once the main channel listens) or -1 after printing why.
 */
static int main_cpr_receive(const char *uri, struct cpr_state *st, struct vm_config *cfg,
			    bool mem_given, bool vcpus_given)
{
	char err[512];
	struct cpr_fd *ram;
	int lfd, fd, r;

	lfd = cpr_listen(uri, err, sizeof(err));
	if (lfd < 0) {
		fprintf(stderr, "vmferry run: --incoming-cpr: %s\n", err);
		return -1;
	}
	log_info("waiting for a live update on %s", uri);
	fd = cpr_accept(lfd, -1);
	close(lfd);
	unlink(uri + strlen("unix:"));
	if (fd < 0) {
		fprintf(stderr, "vmferry run: --incoming-cpr: accept: %s\n", strerror(-fd));
		return -1;
	}
	cpr_fault_point("before-fds");
	r = cpr_recv(fd, 10000, st, err, sizeof(err));
	if (r) {
		fprintf(stderr, "vmferry run: --incoming-cpr: %s\n", err);
		main_cpr_fail(&fd, r, err);
		return -1;
	}
	ram = cpr_state_find(st, CPR_FD_RAM, "ram0");
	if (!ram || main_cpr_count(st, CPR_FD_RAM) != 1 || ram->gpa != 0)
		snprintf(err, sizeof(err), "expected exactly one RAM block, ram0 at 0; got %u "
			 "RAM fds", main_cpr_count(st, CPR_FD_RAM));
	else if (mem_given && cfg->ram_bytes != ram->bytes)
		snprintf(err, sizeof(err), "the guest has %llu MiB of RAM, --mem says %llu MiB",
			 (unsigned long long)(ram->bytes >> 20),
			 (unsigned long long)(cfg->ram_bytes >> 20));
	else if (vcpus_given && cfg->nvcpus != st->nvcpus)
		snprintf(err, sizeof(err), "the guest has %u vCPUs, --vcpus says %u", st->nvcpus,
			 cfg->nvcpus);
	else
		err[0] = 0;
	if (err[0]) {
		fprintf(stderr, "vmferry run: --incoming-cpr: %s\n", err);
		cpr_state_close(st);
		main_cpr_fail(&fd, -EINVAL, err);
		return -1;
	}
	cfg->ram_bytes = ram->bytes;
	cfg->nvcpus = st->nvcpus;
	cfg->ram_inherited = true;
	cfg->ram_fd = ram->fd; /* vm_create owns it from here */
	ram->fd = -1;
	log_info("live update: inherited %llu MiB of guest RAM, %u vCPUs and %u other fds",
		 (unsigned long long)(cfg->ram_bytes >> 20), cfg->nvcpus, st->nfds - 1);
	return fd;
}

/* Open every --disk and add it to @vm.  0, or -errno after saying why. */
static int main_create_disks(struct vm *vm, const struct virtio_blk_opts *opts, unsigned n,
			     struct virtio_blk_disks *disks)
{
	char err[512];

	for (unsigned i = 0; i < n; i++) {
		int r = virtio_blk_create(vm, &opts[i], i, &disks->disk[i], err, sizeof(err));

		if (r) {
			fprintf(stderr, "vmferry run: --disk: %s\n", err);
			return r;
		}
		disks->n++;
	}
	return 0;
}

static void main_destroy_disks(struct virtio_blk_disks *disks)
{
	for (unsigned i = 0; i < disks->n; i++)
		virtio_blk_destroy(disks->disk[i]);
	disks->n = 0;
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

/* What `vmferry run`'s options ask for. */
struct main_run_opts {
	struct vm_config cfg;
	const char *control_path, *incoming_uri, *cpr_uri;
	bool mem_given, vcpus_given, postcopy, with_test_state;
	struct virtio_blk_opts disk[VMF_MAX_DEVICES];
	unsigned ndisks;
	int vcpu_nice; /* -1: the migration default */
	int prealloc;  /* -1: the default for the mode (--incoming: follow the stream, migration.h) */
};

/* What `vmferry run` holds while it runs; NULL or -1 when not (yet) held. */
struct main_run_res {
	struct cpr_state cpr;
	int cpr_fd;
	struct vm *vm;
	struct virtio_blk_disks disks;
	struct migration *mig;
	struct test_state *test_state;
	struct control_server *srv;
};

/* main_run_parse's "no exit status yet": the options are read, go on. */
#define MAIN_RUN_GO_ON (-1)

/*
 * Read `vmferry run`'s options into @o.  Returns MAIN_RUN_GO_ON, or the exit
 * status to end with at once (0 after --help, 2 on a usage error).
 */
static int main_run_parse(int argc, char **argv, struct main_run_opts *o)
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
		{ "incoming-cpr", required_argument, NULL, 'R' },
		{ "postcopy", no_argument, NULL, 'Y' },
		{ "postcopy-vcpu-nice", required_argument, NULL, 'n' },
		{ "prealloc", no_argument, NULL, 'P' },
		{ "no-prealloc", no_argument, NULL, 'p' },
		{ "test-state", no_argument, NULL, 'T' },
		{ "disk", required_argument, NULL, 'D' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	char errbuf[512];
	uint64_t v;
	int opt;

	memset(o, 0, sizeof(*o));
	o->cfg.ram_bytes = 256ull << 20;
	o->cfg.nvcpus = 1;
	o->cfg.guest = "incrementer";
	o->vcpu_nice = -1;
	o->prealloc = -1;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "m:c:g:Svh", opts, NULL)) != -1) {
		switch (opt) {
		case 'm':
			if (size_parse(optarg, &o->cfg.ram_bytes))
				return run_usage_error("--mem: '%s' is not a size (e.g. 512M, 1G)", optarg);
			o->mem_given = true;
			break;
		case 'c':
			if (size_parse_uint(optarg, 1, VMF_MAX_VCPUS, &v))
				return run_usage_error("--vcpus: '%s' is not a number in 1..%u",
						       optarg, VMF_MAX_VCPUS);
			o->cfg.nvcpus = (unsigned)v;
			o->vcpus_given = true;
			break;
		case 'g': o->cfg.guest = optarg; break;
		case 'C': o->control_path = optarg; break;
		case 'o': o->cfg.console_path = optarg; break;
		case 'S': o->cfg.start_paused = true; break;
		case 'N': o->cfg.no_shutdown = true; break;
		case 'I': o->incoming_uri = optarg; o->cfg.incoming = true; break;
		case 'R': o->cpr_uri = optarg; break;
		case 'Y': o->postcopy = true; break;
		case 'T': o->with_test_state = true; break;
		case 'D':
			if (o->ndisks == VMF_MAX_DEVICES)
				return run_usage_error("--disk: at most %u disks", VMF_MAX_DEVICES);
			if (virtio_blk_parse_opts(optarg, &o->disk[o->ndisks], errbuf, sizeof(errbuf)))
				return run_usage_error("--disk %s: %s", optarg, errbuf);
			o->ndisks++;
			break;
		case 'n':
			if (size_parse_uint(optarg, 0, 20, &v))
				return run_usage_error("--postcopy-vcpu-nice: '%s' is not a number "
						       "in 0..20", optarg);
			o->vcpu_nice = (int)v;
			break;
		case 'P': o->prealloc = 1; break;
		case 'p': o->prealloc = 0; break;
		case 'v': log_set_level(LOG_DEBUG); break;
		case 'h': run_usage(stdout); return 0;
		default:
			/* getopt said which option. */
			fputs("usage: vmferry run [OPTIONS] (--help for more)\n", stderr);
			return MAIN_EXIT_USAGE;
		}
	}
	if (optind < argc)
		return run_usage_error("unexpected argument '%s'", argv[optind]);
	return MAIN_RUN_GO_ON;
}

/* Check that @o's options go together.  Returns 0, or 2 after saying why not. */
static int main_run_check(const struct main_run_opts *o)
{
	for (unsigned i = 0; i < o->ndisks; i++)
		if (o->disk[i].incoming && (!o->incoming_uri || o->cpr_uri))
			return run_usage_error("--disk %s,incoming=on: an incoming disk receives a "
					       "storage migration: it needs --incoming URI (and no "
					       "--incoming-cpr)", o->disk[i].path);
	if (o->postcopy && (!o->incoming_uri || o->cpr_uri))
		return run_usage_error("--postcopy %s", o->incoming_uri
				       ? "does not apply to --incoming-cpr: a live update moves no RAM"
				       : "needs --incoming URI: it prepares the destination of a "
					 "migration");
	if (o->vcpu_nice >= 0 && !o->postcopy)
		return run_usage_error("--postcopy-vcpu-nice needs --postcopy");
	if (o->cpr_uri && !o->incoming_uri)
		return run_usage_error("--incoming-cpr needs --incoming MAIN_URI too");
	if (o->cpr_uri && o->prealloc > 0)
		return run_usage_error("--prealloc does not apply to --incoming-cpr: "
				       "guest RAM is inherited, not allocated");
	/* Not with --incoming-cpr (refused above): its RAM size comes from the old process. */
	if (o->prealloc > 0 && sysconf(_SC_PHYS_PAGES) > 0 &&
	    o->cfg.ram_bytes > (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE))
		return run_usage_error("--prealloc: %llu MiB of guest RAM does not fit in this "
				       "host's memory", (unsigned long long)(o->cfg.ram_bytes >> 20));
	return 0;
}

/* Route SIGINT/SIGTERM to one thread (created threads inherit the mask); ignore SIGPIPE. */
static void main_block_signals(void)
{
	sigset_t sigs;

	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/*
 * After vm_create: allocate a booting guest's RAM if --prealloc, and open
 * every --disk into @res->disks.  0, or -errno after saying why.
 */
static int main_run_setup_vm(struct main_run_opts *o, struct main_run_res *res)
{
	int err;

	if (res->cpr_fd >= 0)
		cpr_fault_point("after-map");
	if (o->prealloc > 0 && !o->cfg.incoming) {
		/* Booting: before the first instruction, so the guest never waits. */
		err = ram_block_populate(vm_ram_block(res->vm, 0), 0, vm_ram_block(res->vm, 0)->bytes);
		if (err)
			log_warn("--prealloc: %s; pages will be allocated on first use", strerror(-err));
	}
	for (unsigned i = 0; i < o->ndisks; i++)
		o->disk[i].cpr_inherit = res->cpr_fd >= 0; /* its fd comes with the update */
	err = main_create_disks(res->vm, o->disk, o->ndisks, &res->disks);
	if (err)
		main_cpr_fail(&res->cpr_fd, err, "the new process could not open its disks (see its log)");
	return err;
}

/*
 * Create the migration and its states (test state, disks), take what a live
 * update lent, and turn postcopy on if asked.  0, or -errno after saying why.
 */
static int main_run_setup_migration(const struct main_run_opts *o, struct main_run_res *res)
{
	char errbuf[512];
	int err;

	err = migration_create(res->vm, &res->mig);
	if (!err && o->with_test_state)
		err = test_state_create(res->mig, &res->test_state);
	if (!err)
		err = virtio_blk_register_state(&res->disks, res->mig);
	if (err)
		return err;
	if (res->cpr_fd >= 0) {
		/* Each state takes what it lent on the old side: the disks' files. */
		err = migration_incoming_take_cpr(res->mig, &res->cpr, errbuf, sizeof(errbuf));
		if (err) {
			fprintf(stderr, "vmferry run: --incoming-cpr: %s\n", errbuf);
			main_cpr_fail(&res->cpr_fd, err, errbuf);
			return err;
		}
	}
	if (o->postcopy) {
		/* Applied when the incoming side starts listening, before it accepts. */
		const struct mig_caps_update caps = { .auto_converge = -1, .postcopy_ram = 1,
						      .postcopy_preempt = -1 };

		err = migration_set_capabilities(res->mig, &caps, errbuf, sizeof(errbuf));
		if (err) {
			fprintf(stderr, "vmferry run: --postcopy: %s\n", errbuf);
			return err;
		}
		if (o->vcpu_nice >= 0)
			migration_set_postcopy_vcpu_nice(res->mig, (unsigned)o->vcpu_nice);
	}
	return 0;
}

/*
 * With --control: create the control server (not serving yet) and register
 * every module's commands and events.  0 or -errno.
 */
static int main_run_setup_control(const struct main_run_opts *o, struct main_run_res *res)
{
	int err;

	if (!o->control_path)
		return 0;
	err = control_server_create(o->control_path, &res->srv);
	if (err)
		return err;
	err = vm_register_commands(res->vm, res->srv);
	if (err)
		return err;
	vm_set_event_handler(res->vm, control_server_emit_event, res->srv);
	migration_set_event_handler(res->mig, control_server_emit_event, res->srv);
	err = migration_register_commands(res->mig, res->srv);
	if (!err && res->test_state)
		err = test_state_register_commands(res->test_state, res->srv);
	if (!err)
		err = virtio_blk_register_commands(&res->disks, res->srv);
	return err;
}

/*
 * Start the vCPUs, the incoming side (answering a live update's old process
 * once it listens) and the control server.  0, or -errno after saying why.
 */
static int main_run_start(const struct main_run_opts *o, struct main_run_res *res)
{
	char errbuf[512];
	pthread_t sig_thread;
	int err;

	if (pthread_create(&sig_thread, NULL, main_signal_thread, res->vm) == 0)
		pthread_detach(sig_thread);
	err = vm_start(res->vm);
	if (err)
		return err;
	if (o->incoming_uri) {
		err = migration_incoming_start(res->mig, o->incoming_uri,
					       o->prealloc < 0 ? MIG_PREALLOC_FOLLOW
					       : o->prealloc ? MIG_PREALLOC_ALL : MIG_PREALLOC_NONE,
					       errbuf, sizeof(errbuf));
		if (err) {
			fprintf(stderr, "vmferry run: --incoming: %s\n", errbuf);
			main_cpr_fail(&res->cpr_fd, err, errbuf);
			return err;
		}
		if (res->cpr_fd >= 0) {
			main_cpr_prefault(res->vm);
			/* Listening on the main channel: the old process may connect. */
			if (cpr_send_ack(res->cpr_fd, 0, NULL))
				log_warn("--incoming-cpr: the old process went away before the answer");
			close(res->cpr_fd);
			res->cpr_fd = -1;
		}
	}
	/* Clients are served once everything they may ask about exists. */
	if (res->srv)
		return control_server_start(res->srv);
	return 0;
}

/*
 * Release what @res holds, in reverse order of acquisition; @err: how the
 * run ended (nonzero: a live update's old process is told it failed).
 */
static void main_run_teardown(const struct main_run_opts *o, struct main_run_res *res, int err)
{
	if (err)
		main_cpr_fail(&res->cpr_fd, err, "the new process failed to start (see its log)");
	if (o->cpr_uri)
		cpr_state_close(&res->cpr); /* lent fds nobody took (a failure before taking) */
	/* Nothing may emit events into the server once it is destroyed. */
	migration_shutdown(res->mig);
	if (res->vm)
		vm_join_vcpus(res->vm);
	control_server_destroy(res->srv);
	migration_destroy(res->mig);
	test_state_destroy(res->test_state);
	main_destroy_disks(&res->disks);
	vm_destroy(res->vm);
}

/* `vmferry run`.  Returns the exit status (run_usage's "Exit status"). */
static int main_run(int argc, char **argv)
{
	static struct main_run_opts o; /* static: the disks' paths take 32 KiB */
	struct main_run_res res = { .cpr_fd = -1 };
	int err, status;

	status = main_run_parse(argc, argv, &o);
	if (status != MAIN_RUN_GO_ON)
		return status;
	status = main_run_check(&o);
	if (status)
		return status;
	if (o.cpr_uri) {
		/* Before signals are routed: Ctrl-C while waiting just ends us. */
		o.prealloc = 0;
		res.cpr_fd = main_cpr_receive(o.cpr_uri, &res.cpr, &o.cfg, o.mem_given, o.vcpus_given);
		if (res.cpr_fd < 0)
			return 1;
	}
	main_block_signals();
	err = vm_create(&o.cfg, &res.vm);
	if (err) {
		main_cpr_fail(&res.cpr_fd, err, "the new process could not create its VM over the "
			      "inherited memory (see its log)");
		return 1;
	}
	err = main_run_setup_vm(&o, &res);
	if (!err)
		err = main_run_setup_migration(&o, &res);
	if (!err)
		err = main_run_setup_control(&o, &res);
	if (!err)
		err = main_run_start(&o, &res);
	status = err ? 1 : vm_wait(res.vm);
	main_run_teardown(&o, &res, err);
	return status;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(int argc, char **argv);
	} cmds[] = {
		{ "run", main_run },
		{ "ctl", control_client_main },
		{ "migrate", migration_cli_main },
		{ "verify", verify_main },
	};
	char prefix[32];

	if (argc < 2) {
		main_usage(stderr);
		return MAIN_EXIT_USAGE;
	}
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		if (strcmp(argv[1], cmds[i].name) != 0)
			continue;
		/*
		 * One prefix for every message: "vmferry SUBCOMMAND: ".  getopt
		 * takes it from argv[0], the log from log_set_prefix().
		 */
		snprintf(prefix, sizeof(prefix), "vmferry %s", cmds[i].name);
		log_set_prefix(prefix);
		argv[1] = prefix;
		return cmds[i].fn(argc - 1, argv + 1);
	}
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
	return MAIN_EXIT_USAGE;
}
