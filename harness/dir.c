/* The harness's temporary directory and small waits; see harness.h. */
#include "harness/harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char harness_dir[64];
static unsigned harness_counter;

void harness_nap_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int harness_kvm_available(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0) {
		fprintf(stderr, "SKIP: /dev/kvm not available: %s\n", strerror(errno));
		return 0;
	}
	close(fd);
	return 1;
}

static void harness_cleanup_dir(void)
{
	DIR *d;
	struct dirent *e;

	if (!harness_dir[0] || getenv("VMTEST_KEEP"))
		return;
	d = opendir(harness_dir);
	if (!d)
		return;
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			unlinkat(dirfd(d), e->d_name, 0);
	closedir(d);
	rmdir(harness_dir);
}

int harness_unique_path(char *buf, size_t len, const char *tag)
{
	int n;

	if (!harness_dir[0]) {
		snprintf(harness_dir, sizeof(harness_dir), "/tmp/vmferry-test-XXXXXX");
		if (!mkdtemp(harness_dir)) {
			int rc = -errno;

			fprintf(stderr, "harness: mkdtemp: %s\n", strerror(-rc));
			harness_dir[0] = '\0';
			return rc;
		}
		atexit(harness_cleanup_dir);
	}
	n = snprintf(buf, len, "%s/%s-%u", harness_dir, tag, ++harness_counter);
	if (n < 0 || (size_t)n >= len)
		return -ENAMETOOLONG;
	return 0;
}

const char *harness_binary(void)
{
	const char *bin = getenv("VMFERRY_BIN");

	return bin && *bin ? bin : "build/vmferry";
}
