/*
 * bench/postcopy: postcopy and hybrid migration against precopy, one JSON
 * line per run, then one median line per combination.
 *
 *   postcopy [--mem SIZES] [--runs N] [--workload SPEC] [--quick]
 *
 * Modes, each on the same workload (default the heavy dirtier,
 * `dirtier,rate=0`) over loopback TCP: postcopy-pure with the urgent
 * channel (postcopy-preempt on), postcopy-pure without it (page requests
 * only redirect the background stream, so they wait behind what it queued),
 * hybrid (switch after one precopy pass), and precopy.  Reported per run:
 * total time, guest pause, bytes on the wire and per byte of guest RAM
 * (about 1.0 when every page crosses once: pure postcopy), pages
 * pushed / requested, page-request latency p50 / p99 / max and the time
 * vCPUs spent blocked (from the destination), the link bandwidth measured
 * just before, the ratio of total time to the bandwidth bound, and whether
 * the destination's memory verified with the guest still running.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "control/client.h"
#include "util/log.h"
#include "util/size.h"
#include "verify/verify.h"

#define PCB_MAX_SIZES 4
#define PCB_MAX_RUNS 16
#define PCB_TIMEOUT_MS 120000

enum pcb_mode { PCB_PURE, PCB_PURE_NOPREEMPT, PCB_HYBRID, PCB_PRECOPY, PCB_NMODES };
static const char *const pcb_mode_names[PCB_NMODES] = {
	"postcopy-pure", "postcopy-pure", "hybrid", "precopy",
};

struct pcb_run {
	bool ok, verified;
	char error[256];
	double total_ms, downtime_ms, setup_ms, bytes, pushed, requested, pages;
	double p50_us, p99_us, max_us, blocked_ms, requests, link_bps, bound_ms, ratio;
};

static const char *pcb_bin(void)
{
	return getenv("VMFERRY_BIN") ? getenv("VMFERRY_BIN") : "build/vmferry";
}

/* ---- loopback bandwidth, measured in the same run ---- */

struct pcb_sink { int fd; uint64_t bytes; };

static void *pcb_sink_thread(void *arg)
{
	struct pcb_sink *k = arg;
	static char buf[1 << 20];
	ssize_t n;

	while ((n = read(k->fd, buf, sizeof(buf))) > 0)
		k->bytes += (uint64_t)n;
	return NULL;
}

static double pcb_link_bandwidth(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), cfd, afd;
	static char buf[1 << 20];
	struct pcb_sink k = { 0 };
	const uint64_t total = 512ull << 20;
	uint64_t t0, sent = 0;
	pthread_t th;

	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, 1) ||
	    getsockname(lfd, (struct sockaddr *)&sa, &sl))
		return 0;
	cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connect(cfd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return 0;
	afd = accept(lfd, NULL, NULL);
	k.fd = afd;
	pthread_create(&th, NULL, pcb_sink_thread, &k);
	memset(buf, 0x5a, sizeof(buf));
	t0 = clock_monotonic_ns();
	while (sent < total) {
		ssize_t n = write(cfd, buf, sizeof(buf));

		if (n <= 0)
			break;
		sent += (uint64_t)n;
	}
	shutdown(cfd, SHUT_WR);
	pthread_join(th, NULL);
	close(cfd);
	close(afd);
	close(lfd);
	return (double)k.bytes * 1e9 / (double)(clock_monotonic_ns() - t0);
}

/* ---- VMs ---- */

struct pcb_vm { pid_t pid; struct control_client *c; char sock[128]; };

static int pcb_spawn(struct pcb_vm *vm, const char *dir, const char *tag, const char *mem,
		     const char *guest)
{
	snprintf(vm->sock, sizeof(vm->sock), "%s/%s.sock", dir, tag);
	vm->pid = fork();
	if (vm->pid == 0) {
		int null_fd = open("/dev/null", O_RDWR);

		dup2(null_fd, 1);
		dup2(null_fd, 2);
		if (guest)
			execl(pcb_bin(), pcb_bin(), "run", "--mem", mem, "--vcpus", "2", "--guest",
			      guest, "--control", vm->sock, "--console", "/dev/null", (char *)NULL);
		else
			execl(pcb_bin(), pcb_bin(), "run", "--mem", mem, "--vcpus", "2", "--incoming",
			      "tcp:127.0.0.1:0", "--control", vm->sock, "--console", "/dev/null",
			      (char *)NULL);
		_exit(127);
	}
	return vm->pid < 0 ? -errno : control_client_connect(vm->sock, 20000, &vm->c);
}

static void pcb_reap(struct pcb_vm *vm)
{
	int st;

	if (vm->c) {
		control_client_call(vm->c, "quit", NULL, NULL);
		control_client_close(vm->c);
		vm->c = NULL;
	}
	for (int i = 0; i < 1000 && vm->pid > 0; i++) {
		if (waitpid(vm->pid, &st, WNOHANG) == vm->pid) {
			vm->pid = -1;
			return;
		}
		usleep(10000);
	}
	if (vm->pid > 0) {
		kill(vm->pid, SIGKILL);
		waitpid(vm->pid, &st, 0);
		vm->pid = -1;
	}
}

/* Call and return the "return" value (caller owns), or NULL. */
static struct json_object *pcb_call(struct pcb_vm *vm, const char *cmd, const char *args_json)
{
	struct json_object *args = args_json ? json_tokener_parse(args_json) : NULL, *reply = NULL, *ret;

	control_client_set_timeout(vm->c, 20000);
	if (control_client_call(vm->c, cmd, args, &reply) != 0) {
		json_object_put(args);
		json_object_put(reply);
		return NULL;
	}
	ret = json_object_get(control_reply_return(reply));
	json_object_put(args);
	json_object_put(reply);
	return ret ? ret : json_object_new_object();
}

static double pcb_num(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_double(v) : 0;
}

static const char *pcb_str(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : "";
}

/* Poll query-migrate on @vm until a final status (bounded). */
static struct json_object *pcb_wait(struct pcb_vm *vm)
{
	for (int i = 0; i < PCB_TIMEOUT_MS / 10; i++) {
		struct json_object *q = pcb_call(vm, "query-migrate", NULL);
		const char *s = pcb_str(q, "status");

		if (!q)
			return NULL;
		if (!strcmp(s, "completed") || !strcmp(s, "failed") || !strcmp(s, "cancelled"))
			return q;
		json_object_put(q);
		usleep(10000);
	}
	return NULL;
}

static bool pcb_guest_ready(struct pcb_vm *vm)
{
	for (int i = 0; i < 3000; i++) {
		struct json_object *w = pcb_call(vm, "query-workload", NULL), *arr;
		bool ready = w && json_object_object_get_ex(w, "vcpus", &arr) &&
			     json_object_array_length(arr) > 0;

		for (size_t k = 0; ready && k < json_object_array_length(arr); k++)
			ready = pcb_num(json_object_array_get_idx(arr, k), "passes") >= 1;
		json_object_put(w);
		if (ready)
			return true;
		usleep(10000);
	}
	return false;
}

static void pcb_one(const char *dir, const char *mem, uint64_t mem_bytes, const char *guest,
		    enum pcb_mode mode, struct pcb_run *r)
{
	static const char caps_on[] = "{\"capabilities\": [{\"capability\": \"postcopy-ram\", \"state\": true}]}";
	static const char nopreempt[] = "{\"capabilities\": [{\"capability\": \"postcopy-ram\", \"state\": true},"
					" {\"capability\": \"postcopy-preempt\", \"state\": false}]}";
	struct pcb_vm src = { .pid = -1 }, dst = { .pid = -1 };
	struct json_object *q = NULL, *dq = NULL, *x;
	char args[512], dump[256];

	memset(r, 0, sizeof(*r));
	r->link_bps = pcb_link_bandwidth();
	if (pcb_spawn(&src, dir, "src", mem, guest) || pcb_spawn(&dst, dir, "dst", mem, NULL) ||
	    !pcb_guest_ready(&src)) {
		snprintf(r->error, sizeof(r->error), "could not start the VMs");
		goto out;
	}
	if (mode != PCB_PRECOPY) {
		const char *caps = mode == PCB_PURE_NOPREEMPT ? nopreempt : caps_on;

		json_object_put(pcb_call(&src, "migrate-set-capabilities", caps));
		json_object_put(pcb_call(&dst, "migrate-set-capabilities", caps_on));
	}
	if (mode == PCB_PURE || mode == PCB_PURE_NOPREEMPT)
		json_object_put(pcb_call(&src, "migrate-start-postcopy", NULL));
	if (mode == PCB_HYBRID)
		json_object_put(pcb_call(&src, "migrate-set-parameters", "{\"postcopy-after-passes\": 1}"));
	x = pcb_call(&dst, "query-migrate", NULL);
	snprintf(args, sizeof(args), "{\"uri\": \"%s\"}", pcb_str(x, "uri"));
	json_object_put(x);
	json_object_put(pcb_call(&src, "migrate", args));
	q = pcb_wait(&src);
	if (!q || strcmp(pcb_str(q, "status"), "completed")) {
		snprintf(r->error, sizeof(r->error), "%s", q ? pcb_str(q, "error-desc") : "no answer");
		goto out;
	}
	dq = pcb_wait(&dst);
	r->ok = true;
	r->total_ms = pcb_num(q, "total-time");
	r->downtime_ms = pcb_num(q, "downtime");
	r->setup_ms = pcb_num(q, "setup-time");
	r->bytes = pcb_num(q, "transferred");
	r->pushed = pcb_num(q, "postcopy-pages-pushed");
	r->requested = pcb_num(q, "postcopy-pages-requested");
	r->pages = pcb_num(q, "normal-pages") + pcb_num(q, "zero-pages");
	r->p50_us = pcb_num(dq, "fault-latency-p50-us");
	r->p99_us = pcb_num(dq, "fault-latency-p99-us");
	r->max_us = pcb_num(dq, "fault-latency-max-us");
	r->blocked_ms = pcb_num(dq, "vcpu-blocked-time");
	r->requests = pcb_num(dq, "postcopy-requests");
	r->bound_ms = r->link_bps > 0 ? pcb_num(q, "normal-pages") * 4096.0 * 1e3 / r->link_bps : 0;
	r->ratio = r->bound_ms > 0 ? r->total_ms / r->bound_ms : 0;
	/* The destination's memory, with the guest still running there. */
	snprintf(dump, sizeof(dump), "%s/dump", dir);
	snprintf(args, sizeof(args), "{\"file\": \"%s\"}", dump);
	x = pcb_call(&dst, "dump-guest-memory", args);
	if (x) {
		struct json_object *verdict = NULL;
		struct json_object *st = pcb_call(&dst, "query-status", NULL);

		r->verified = verify_guest_file(dump, &verdict) == 0 &&
			      !strcmp(pcb_str(st, "status"), "running");
		json_object_put(verdict);
		json_object_put(st);
	}
	json_object_put(x);
	unlink(dump);
	(void)mem_bytes;
out:
	json_object_put(q);
	json_object_put(dq);
	pcb_reap(&src);
	pcb_reap(&dst);
}

static void pcb_print(const char *type, enum pcb_mode mode, const char *guest,
		      uint64_t mem_bytes, const struct pcb_run *r, unsigned runs)
{
	printf("{\"bench\":\"postcopy\",\"type\":\"%s\",\"mode\":\"%s\",\"preempt\":%s,"
	       "\"transport\":\"loopback-tcp\",\"workload\":\"%s\",\"guest_ram_bytes\":%llu,",
	       type, pcb_mode_names[mode], mode == PCB_PURE_NOPREEMPT ? "false" :
	       mode == PCB_PRECOPY ? "null" : "true", guest, (unsigned long long)mem_bytes);
	if (!strcmp(type, "median"))
		printf("\"runs\":%u,", runs);
	if (!r->ok) {
		printf("\"status\":\"failed\",\"error\":\"%s\"}\n", r->error);
		return;
	}
	printf("\"status\":\"completed\",\"total_time_ms\":%.3f,\"downtime_ms\":%.3f,"
	       "\"setup_time_ms\":%.3f,\"bytes_on_wire\":%.0f,\"pages_sent\":%.0f,"
	       "\"postcopy_pages_pushed\":%.0f,\"postcopy_pages_requested\":%.0f,"
	       "\"wire_bytes_per_guest_byte\":%.3f,\"page_requests\":%.0f,"
	       "\"fault_latency_p50_us\":%.1f,\"fault_latency_p99_us\":%.1f,\"fault_latency_max_us\":%.1f,"
	       "\"vcpu_blocked_ms\":%.3f,\"link_bandwidth_bytes_per_s\":%.0f,\"bound_ms\":%.3f,"
	       "\"ratio_total_to_bound\":%.3f,\"verified\":%s}\n",
	       r->total_ms, r->downtime_ms, r->setup_ms, r->bytes, r->pages, r->pushed, r->requested,
	       r->bytes / (double)mem_bytes, r->requests, r->p50_us, r->p99_us, r->max_us,
	       r->blocked_ms, r->link_bps, r->bound_ms, r->ratio, r->verified ? "true" : "false");
	fflush(stdout);
}

static int pcb_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double pcb_median(double *v, unsigned n)
{
	qsort(v, n, sizeof(*v), pcb_cmp);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mem", required_argument, NULL, 'm' }, { "runs", required_argument, NULL, 'r' },
		{ "workload", required_argument, NULL, 'w' }, { "quick", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' }, { 0, 0, 0, 0 },
	};
	const char *mems[PCB_MAX_SIZES] = { "256M", "1G" }, *guest = "dirtier,rate=0";
	unsigned nmem = 2, runs = 3;
	char dir[] = "/tmp/vmferry-pcbench.XXXXXX";
	uint64_t v;
	int opt;

	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 'm': {
			char *copy = strdup(optarg), *save = NULL, *tok;

			nmem = 0;
			for (tok = strtok_r(copy, ",", &save); tok && nmem < PCB_MAX_SIZES;
			     tok = strtok_r(NULL, ",", &save))
				mems[nmem++] = tok; /* copy is kept for the program's life */
			break;
		}
		case 'r':
			if (size_parse_uint(optarg, 1, PCB_MAX_RUNS, &v))
				goto usage;
			runs = (unsigned)v;
			break;
		case 'w': guest = optarg; break;
		case 'q': nmem = 1; mems[0] = "256M"; runs = 1; break;
		default: goto usage;
		}
	}
	if (access("/dev/kvm", R_OK | W_OK)) {
		fprintf(stderr, "postcopy: /dev/kvm not available: %s\n", strerror(errno));
		return 77;
	}
	if (!mkdtemp(dir))
		return 1;
	signal(SIGPIPE, SIG_IGN);
	for (unsigned s = 0; s < nmem; s++) {
		uint64_t mem_bytes;

		if (size_parse(mems[s], &mem_bytes))
			goto usage;
		for (int mode = 0; mode < PCB_NMODES; mode++) {
			struct pcb_run rs[PCB_MAX_RUNS], med;
			double a[PCB_MAX_RUNS];
			unsigned ok = 0;

			for (unsigned i = 0; i < runs; i++) {
				pcb_one(dir, mems[s], mem_bytes, guest, (enum pcb_mode)mode, &rs[i]);
				pcb_print("run", (enum pcb_mode)mode, guest, mem_bytes, &rs[i], 1);
			}
			memset(&med, 0, sizeof(med));
			for (unsigned i = 0; i < runs; i++)
				if (rs[i].ok)
					rs[ok++] = rs[i];
			if (!ok) {
				snprintf(med.error, sizeof(med.error), "no run completed");
				pcb_print("median", (enum pcb_mode)mode, guest, mem_bytes, &med, runs);
				continue;
			}
			med.ok = true;
			med.verified = true;
#define PCB_MED(f) do { for (unsigned i = 0; i < ok; i++) a[i] = rs[i].f; med.f = pcb_median(a, ok); } while (0)
			PCB_MED(total_ms); PCB_MED(downtime_ms); PCB_MED(setup_ms); PCB_MED(bytes);
			PCB_MED(pushed); PCB_MED(requested); PCB_MED(pages); PCB_MED(p50_us);
			PCB_MED(p99_us); PCB_MED(max_us); PCB_MED(blocked_ms); PCB_MED(requests);
			PCB_MED(link_bps); PCB_MED(bound_ms); PCB_MED(ratio);
#undef PCB_MED
			for (unsigned i = 0; i < ok; i++)
				med.verified &= rs[i].verified;
			pcb_print("median", (enum pcb_mode)mode, guest, mem_bytes, &med, ok);
		}
	}
	rmdir(dir);
	return 0;
usage:
	fprintf(stderr, "usage: postcopy [--mem SIZES] [--runs N] [--workload SPEC] [--quick]\n");
	return 2;
}
