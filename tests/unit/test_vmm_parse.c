/* Unit tests: run-state table, size parsing and formatting, --guest spec parsing, ELF checks. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <elf.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/size.h"
#include "vmm/guest_image.h"
#include "vmm/vm.h"

static void test_runstate_every_pair(void **state)
{
	(void)state;
	/* The full expected table: everything not listed is refused. */
	static const int allowed[][2] = {
		{ VM_RUNSTATE_PRELAUNCH, VM_RUNSTATE_RUNNING },
		{ VM_RUNSTATE_PRELAUNCH, VM_RUNSTATE_PAUSED },
		{ VM_RUNSTATE_RUNNING, VM_RUNSTATE_PAUSED },
		{ VM_RUNSTATE_RUNNING, VM_RUNSTATE_SHUTDOWN },
		{ VM_RUNSTATE_RUNNING, VM_RUNSTATE_GUEST_PANICKED },
		{ VM_RUNSTATE_RUNNING, VM_RUNSTATE_INTERNAL_ERROR },
		{ VM_RUNSTATE_PAUSED, VM_RUNSTATE_RUNNING },
		{ VM_RUNSTATE_RUNNING, VM_RUNSTATE_FINISH_MIGRATE },
		{ VM_RUNSTATE_PAUSED, VM_RUNSTATE_FINISH_MIGRATE },
		{ VM_RUNSTATE_INMIGRATE, VM_RUNSTATE_RUNNING },
		{ VM_RUNSTATE_INMIGRATE, VM_RUNSTATE_PAUSED },
		{ VM_RUNSTATE_FINISH_MIGRATE, VM_RUNSTATE_RUNNING },
		{ VM_RUNSTATE_FINISH_MIGRATE, VM_RUNSTATE_PAUSED },
		{ VM_RUNSTATE_FINISH_MIGRATE, VM_RUNSTATE_POSTMIGRATE },
	};
	for (int from = 0; from <= VM_RUNSTATE__COUNT; from++)
		for (int to = 0; to <= VM_RUNSTATE__COUNT; to++) {
			bool want = false;

			for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
				if (allowed[i][0] == from && allowed[i][1] == to)
					want = true;
			assert_int_equal(vm_runstate_transition_ok((enum vm_runstate)from,
								   (enum vm_runstate)to), want);
		}
	assert_string_equal(vm_runstate_name(VM_RUNSTATE_RUNNING), "running");
	assert_string_equal(vm_runstate_name(0), "invalid");
	assert_string_equal(vm_runstate_name(VM_RUNSTATE__COUNT), "invalid");
}

static void test_size_format(void **state)
{
	char buf[32];

	(void)state;
	assert_string_equal(size_format(0, buf, sizeof(buf)), "0 B");
	assert_string_equal(size_format(1023, buf, sizeof(buf)), "1023 B");
	assert_string_equal(size_format(4096, buf, sizeof(buf)), "4.0 KiB");
	assert_string_equal(size_format(327594803, buf, sizeof(buf)), "312.4 MiB");
	assert_string_equal(size_format(1098437632ull, buf, sizeof(buf)), "1.02 GiB");
	assert_string_equal(size_format(3ull << 40, buf, sizeof(buf)), "3.00 TiB");
	assert_string_equal(size_format(UINT64_MAX, buf, sizeof(buf)), "16384.00 PiB");
}

static void test_size_parse(void **state)
{
	uint64_t v;

	(void)state;
	assert_int_equal(size_parse("4096", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(size_parse("256M", &v), 0);
	assert_int_equal(v, 256ull << 20);
	assert_int_equal(size_parse("1g", &v), 0);
	assert_int_equal(v, 1ull << 30);
	assert_int_equal(size_parse("2GiB", &v), 0);
	assert_int_equal(v, 2ull << 30);
	assert_int_equal(size_parse("16K", &v), 0);
	assert_int_equal(v, 16384);
	assert_int_equal(size_parse("0x1f", &v), 0);
	assert_int_equal(v, 31);
	assert_int_equal(size_parse("0x", &v), -EINVAL);
	assert_int_equal(size_parse("0x1fM", &v), -EINVAL);
	assert_int_equal(size_parse("", &v), -EINVAL);
	assert_int_equal(size_parse("-1", &v), -EINVAL);
	assert_int_equal(size_parse("12Q", &v), -EINVAL);
	assert_int_equal(size_parse("1Mx", &v), -EINVAL);
	assert_int_equal(size_parse("M", &v), -EINVAL);
	assert_int_equal(size_parse("99999999999T", &v), -ERANGE);
	assert_int_equal(size_parse("999999999999999999999999", &v), -ERANGE);
	assert_int_equal(size_parse_uint("3", 1, 32, &v), 0);
	assert_int_equal(v, 3);
	assert_int_equal(size_parse_uint("0", 1, 32, &v), -ERANGE);
	assert_int_equal(size_parse_uint("33", 1, 32, &v), -ERANGE);
	assert_int_equal(size_parse_uint("3x", 1, 32, &v), -EINVAL);
}

static void test_guest_spec(void **state)
{
	struct guest_spec s;

	(void)state;
	assert_int_equal(guest_spec_parse("incrementer", &s), 0);
	assert_string_equal(s.name, "incrementer");
	assert_non_null(s.elf);
	assert_int_equal(s.nparams, 0);
	guest_spec_release(&s);

	assert_int_equal(guest_spec_parse("dirtier,wss=64M,rate=2000", &s), 0);
	assert_int_equal(s.nparams, 2);
	assert_string_equal(s.params[0].key, "wss");
	assert_int_equal(s.params[0].value, 64ull << 20);
	assert_int_equal(s.params[1].value, 2000);
	guest_spec_release(&s);

	assert_int_equal(guest_spec_parse("nosuchguest", &s), -ENOENT);
	assert_int_equal(guest_spec_parse("", &s), -EINVAL);
	assert_int_equal(guest_spec_parse("idle,novalue", &s), -EINVAL);
	assert_int_equal(guest_spec_parse("idle,=3", &s), -EINVAL);
	assert_int_equal(guest_spec_parse("idle,a=junk", &s), -EINVAL);
	assert_int_equal(guest_spec_parse("idle,a=1,a=2", &s), -EINVAL);
	assert_int_equal(guest_spec_parse("idle,averyveryverylongkey=1", &s), -EINVAL);
	assert_int_equal(guest_spec_parse("idle,a=1,b=1,c=1,d=1,e=1,f=1,g=1,h=1,i=1", &s), -EINVAL);
	assert_int_equal(guest_spec_parse("/nonexistent/guest.elf", &s), -ENOENT);
}

static int write_temp(const void *buf, size_t len, char *path, size_t pathlen)
{
	int fd;

	snprintf(path, pathlen, "/tmp/vmferry-test-elf.XXXXXX");
	fd = mkstemp(path);
	if (fd < 0)
		return -1;
	if (write(fd, buf, len) != (ssize_t)len) {
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

static void test_guest_elf_validation(void **state)
{
	static uint8_t ram[4 << 20];
	struct guest_spec good, s;
	uint8_t *img;
	uint64_t entry;
	char path[64];

	(void)state;
	assert_int_equal(guest_spec_parse("idle", &good), 0);
	assert_int_equal(guest_image_load(&good, ram, sizeof(ram), &entry), 0);
	assert_true(entry >= VMF_IMAGE_GPA && entry < VMF_IMAGE_GPA + VMF_IMAGE_MAX_BYTES);
	/* RAM too small to hold the image area. */
	assert_int_equal(guest_image_load(&good, ram, VMF_IMAGE_GPA, &entry), -ENOEXEC);

	img = malloc(good.elf_bytes);
	assert_non_null(img);

	/* Not an ELF at all. */
	memset(img, 'x', good.elf_bytes);
	assert_int_equal(write_temp(img, good.elf_bytes, path, sizeof(path)), 0);
	assert_int_equal(guest_spec_parse(path, &s), 0);
	assert_int_equal(guest_image_load(&s, ram, sizeof(ram), &entry), -ENOEXEC);
	guest_spec_release(&s);
	unlink(path);

	/* A segment placed outside the image window. */
	memcpy(img, good.elf, good.elf_bytes);
	{
		Elf64_Ehdr eh;
		Elf64_Phdr ph;

		memcpy(&eh, img, sizeof(eh));
		for (unsigned i = 0; i < eh.e_phnum; i++) {
			memcpy(&ph, img + eh.e_phoff + i * sizeof(ph), sizeof(ph));
			if (ph.p_type == PT_LOAD) {
				ph.p_paddr = 0x10000; /* over the page tables */
				memcpy(img + eh.e_phoff + i * sizeof(ph), &ph, sizeof(ph));
				break;
			}
		}
	}
	assert_int_equal(write_temp(img, good.elf_bytes, path, sizeof(path)), 0);
	assert_int_equal(guest_spec_parse(path, &s), 0);
	assert_int_equal(guest_image_load(&s, ram, sizeof(ram), &entry), -ENOEXEC);
	guest_spec_release(&s);
	unlink(path);

	/* Truncated to half. */
	memcpy(img, good.elf, good.elf_bytes);
	assert_int_equal(write_temp(img, 100, path, sizeof(path)), 0);
	assert_int_equal(guest_spec_parse(path, &s), 0);
	assert_int_equal(guest_image_load(&s, ram, sizeof(ram), &entry), -ENOEXEC);
	guest_spec_release(&s);
	unlink(path);

	free(img);
	guest_spec_release(&good);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_runstate_every_pair),
		cmocka_unit_test(test_size_parse),
		cmocka_unit_test(test_size_format),
		cmocka_unit_test(test_guest_spec),
		cmocka_unit_test(test_guest_elf_validation),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
