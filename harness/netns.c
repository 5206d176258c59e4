/* Simulated hosts: network namespaces joined by a veth pair or TUN devices; see harness.h. */
#include "harness/internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "util/proc.h"

#define HARNESS_IP_TIMEOUT_MS 10000

/* `ip ARGS...` (NULL-terminated), quiet or not; 0 when it exits 0. */
static int harness_ip(const struct harness_netns *p, bool quiet, const char *first, ...)
{
	const char *argv[24];
	size_t n = 0;
	va_list ap;

	argv[n++] = p->ip_path;
	argv[n++] = first;
	va_start(ap, first);
	while (n < sizeof(argv) / sizeof(argv[0]) - 1 && (argv[n] = va_arg(ap, const char *)))
		n++;
	va_end(ap);
	argv[n] = NULL;
	return harness_cmd(argv, quiet, HARNESS_IP_TIMEOUT_MS) == 0 ? 0 : -EIO;
}

/* The janitor (proc_janitor_start) deletes the namespaces if we die unseen. */
static void harness_janitor_start(struct harness_netns *p)
{
	const char *const *const cmds[2] = { p->del_argv[0], p->del_argv[1] };
	pid_t pid;
	int fd = proc_janitor_start(cmds, 2, HARNESS_IP_TIMEOUT_MS, &pid);

	if (fd < 0)
		return;
	p->janitor_fd = fd;
	p->janitor_pid = pid;
}

/* Both ends of a veth pair are born inside their namespaces: nothing is left in ours. */
static int harness_netns_veth(struct harness_netns *p)
{
	char cidr[2][24];

	if (harness_ip(p, false, "link", "add", p->dev[0], "netns", p->ns[0], "type", "veth",
		       "peer", "name", p->dev[1], "netns", p->ns[1], NULL) < 0)
		return -EIO;
	for (int i = 0; i < 2; i++) {
		snprintf(cidr[i], sizeof(cidr[i]), "%.15s/24", p->addr[i]);
		if (harness_ip(p, false, "-n", p->ns[i], "addr", "add", cidr[i], "dev", p->dev[i], NULL) ||
		    harness_ip(p, false, "-n", p->ns[i], "link", "set", p->dev[i], "up", NULL))
			return -EIO;
	}
	return 0;
}

/* A TUN device in each namespace, point to point with the other's address. */
static int harness_netns_tun(struct harness_netns *p)
{
	char mtu[16], peer[2][24];

	snprintf(mtu, sizeof(mtu), "%u", HARNESS_TUN_MTU);
	for (int i = 0; i < 2; i++) {
		snprintf(peer[i], sizeof(peer[i]), "%.15s/32", p->addr[1 - i]);
		if (harness_ip(p, false, "-n", p->ns[i], "tuntap", "add", "dev", p->dev[i], "mode", "tun",
			       NULL) ||
		    harness_ip(p, false, "-n", p->ns[i], "addr", "add", p->addr[i], "peer", peer[i], "dev",
			       p->dev[i], NULL) ||
		    harness_ip(p, false, "-n", p->ns[i], "link", "set", p->dev[i], "mtu", mtu, "up", NULL))
			return -EIO;
	}
	return 0;
}

int harness_netns_create(struct harness_netns *p, char tag, enum harness_link link)
{
	static const char *const ip_paths[] = { "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip" };
	unsigned pid = (unsigned)getpid(), subnet = pid % 254 + 1;

	memset(p, 0, sizeof(*p));
	for (int i = 0; i < 2; i++) {
		snprintf(p->ns[i], sizeof(p->ns[i]), "vmf%c-%u-%c", tag, pid, 'a' + i);
		snprintf(p->dev[i], sizeof(p->dev[i]), "vf%c%c%u", tag, 'a' + i, pid);
		snprintf(p->addr[i], sizeof(p->addr[i]), "10.199.%u.%d", subnet, i + 1);
	}
	for (size_t i = 0; i < sizeof(ip_paths) / sizeof(ip_paths[0]) && !p->ip_path[0]; i++)
		if (access(ip_paths[i], X_OK) == 0)
			snprintf(p->ip_path, sizeof(p->ip_path), "%s", ip_paths[i]);
	if (!p->ip_path[0]) {
		harness_say("no ip binary (iproute2) found");
		return -ENOENT;
	}
	for (int i = 0; i < 2; i++) {
		p->del_argv[i][0] = p->ip_path;
		p->del_argv[i][1] = "netns";
		p->del_argv[i][2] = "del";
		p->del_argv[i][3] = p->ns[i];
		p->del_argv[i][4] = NULL;
	}
	harness_netns_add(p);
	harness_janitor_start(p);
	for (int i = 0; i < 2; i++) {
		if (harness_ip(p, false, "netns", "add", p->ns[i], NULL) < 0) {
			harness_netns_destroy(p);
			return -EPERM;
		}
		p->created[i] = 1;
		if (harness_ip(p, false, "-n", p->ns[i], "link", "set", "lo", "up", NULL))
			goto fail;
	}
	if ((link == HARNESS_LINK_TUN ? harness_netns_tun(p) : harness_netns_veth(p)) == 0)
		return 0;
fail:
	harness_say("cannot set up the link between %s and %s", p->ns[0], p->ns[1]);
	harness_netns_destroy(p);
	return -EIO;
}

int harness_netns_shape(const struct harness_netns *p, uint64_t rate_bps, unsigned delay_us,
			bool bands, char *how, size_t howlen)
{
	char rate[32], delay[32], burst[32];
	/* tbf: a burst of ~4 ms at the rate (at least 64 KiB, above a GSO packet). */
	uint64_t burst_bytes = rate_bps / 8 / 250;
	bool netem = true;

	if (burst_bytes < 65536)
		burst_bytes = 65536;
	snprintf(rate, sizeof(rate), "%llubit", (unsigned long long)rate_bps);
	snprintf(delay, sizeof(delay), "%uus", delay_us);
	snprintf(burst, sizeof(burst), "%llub", (unsigned long long)burst_bytes);
	for (int i = 0; i < 2; i++) {
		/* A NULL in place of "delay" ends the argument list there. */
		if (netem && harness_ip(p, true, "netns", "exec", p->ns[i], "tc", "qdisc", "replace",
					"dev", p->dev[i], "root", "netem", "rate", rate,
					delay_us ? "delay" : NULL, delay, NULL) == 0)
			continue;
		if (netem && i == 0)
			harness_say("netem is not available here; shaping the veth with tbf "
				    "(rate %s, no delay)", rate);
		netem = false;
		if (harness_ip(p, false, "netns", "exec", p->ns[i], "tc", "qdisc", "replace", "dev",
			       p->dev[i], "root", "handle", "1:", "tbf", "rate", rate, "burst", burst,
			       "latency", "20ms", NULL) < 0)
			return -EIO;
		/*
		 * Under the rate limit, the queue a host's NIC has: pfifo_fast (this
		 * kernel's default qdisc; it has no fq or fq_codel), whose bands let
		 * low-delay packets pass the bulk stream's.  tbf alone queues in one
		 * FIFO, which no real host does.
		 */
		if (bands && harness_ip(p, false, "netns", "exec", p->ns[i], "tc", "qdisc", "add", "dev",
					p->dev[i], "parent", "1:1", "pfifo_fast", NULL) < 0)
			return -EIO;
	}
	snprintf(how, howlen, "%s", netem ? "netem" : "tbf");
	return 0;
}

int harness_netns_unshape(const struct harness_netns *p)
{
	int rc = 0;

	for (int i = 0; i < 2; i++)
		if (harness_ip(p, true, "netns", "exec", p->ns[i], "tc", "qdisc", "del", "dev",
			      p->dev[i], "root", NULL) < 0)
			rc = -EIO;
	return rc;
}

void harness_netns_destroy(struct harness_netns *p)
{
	for (int i = 0; i < 2; i++) {
		if (!p->created[i])
			continue;
		p->created[i] = 0;
		harness_cmd(p->del_argv[i], true, HARNESS_IP_TIMEOUT_MS);
	}
	if (p->janitor_pid > 0) {
		pid_t pid = p->janitor_pid;

		p->janitor_pid = 0;
		/* It retries the (now failing) deletes, then exits. */
		proc_janitor_finish(p->janitor_fd, pid, 2 * HARNESS_IP_TIMEOUT_MS + 1000);
	}
	harness_netns_del(p);
}

void harness_netns_prefix(const struct harness_netns *p, int side, const char *out[5])
{
	out[0] = p->ip_path;
	out[1] = "netns";
	out[2] = "exec";
	out[3] = p->ns[side];
	out[4] = NULL;
}
