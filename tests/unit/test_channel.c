/* Unit tests: socket marks of the migration channels. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <netinet/in.h>
#include <netinet/ip.h>
#include <sys/socket.h>
#include <unistd.h>

#include "migration/channel.h"

static int test_opt(int fd, int level, int name)
{
	int v = -1;
	socklen_t len = sizeof(v);

	assert_int_equal(getsockopt(fd, level, name, &v, &len), 0);
	return v;
}

/* The urgent channel asks for low delay; a plain bulk socket does not. */
static void test_mark_urgent_tcp(void **state)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0), bulk = socket(AF_INET, SOCK_STREAM, 0);

	(void)state;
	assert_true(fd >= 0 && bulk >= 0);
	channel_tune(bulk);
	channel_tune(fd);
	channel_mark_urgent(fd);
	assert_int_equal(test_opt(fd, IPPROTO_IP, IP_TOS), IPTOS_LOWDELAY);
	assert_int_equal(test_opt(fd, SOL_SOCKET, SO_PRIORITY), 6);
	assert_int_equal(test_opt(bulk, IPPROTO_IP, IP_TOS), 0);
	assert_int_equal(test_opt(bulk, SOL_SOCKET, SO_PRIORITY), 0);
	close(fd);
	close(bulk);

	fd = socket(AF_INET6, SOCK_STREAM, 0);
	if (fd >= 0) { /* a kernel without IPv6 has nothing to mark */
		channel_mark_urgent(fd);
		assert_int_equal(test_opt(fd, IPPROTO_IPV6, IPV6_TCLASS), IPTOS_LOWDELAY);
		assert_int_equal(test_opt(fd, SOL_SOCKET, SO_PRIORITY), 6);
		close(fd);
	}
}

/* UNIX sockets have no queue to jump: left alone, no error. */
static void test_mark_urgent_unix(void **state)
{
	int sv[2];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	channel_mark_urgent(sv[0]);
	assert_int_equal(test_opt(sv[0], SOL_SOCKET, SO_PRIORITY), 0);
	close(sv[0]);
	close(sv[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mark_urgent_tcp),
		cmocka_unit_test(test_mark_urgent_unix),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
