/* Unit tests: the migration status table, every (from, to) pair. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>

#include "migration/migration.h"

static void test_status_every_pair(void **state)
{
	/* The full expected table: everything not listed is refused. */
	static const int allowed[][2] = {
		{ MIG_STATUS_NONE, MIG_STATUS_SETUP },
		{ MIG_STATUS_SETUP, MIG_STATUS_ACTIVE },
		{ MIG_STATUS_SETUP, MIG_STATUS_FAILED },
		{ MIG_STATUS_SETUP, MIG_STATUS_CANCELLING },
		{ MIG_STATUS_ACTIVE, MIG_STATUS_DEVICE },
		{ MIG_STATUS_ACTIVE, MIG_STATUS_COMPLETED },
		{ MIG_STATUS_ACTIVE, MIG_STATUS_POSTCOPY_ACTIVE },
		{ MIG_STATUS_ACTIVE, MIG_STATUS_FAILED },
		{ MIG_STATUS_ACTIVE, MIG_STATUS_CANCELLING },
		{ MIG_STATUS_DEVICE, MIG_STATUS_COMPLETED },
		{ MIG_STATUS_DEVICE, MIG_STATUS_FAILED },
		{ MIG_STATUS_DEVICE, MIG_STATUS_CANCELLING },
		{ MIG_STATUS_DEVICE, MIG_STATUS_POSTCOPY_ACTIVE },
		{ MIG_STATUS_POSTCOPY_ACTIVE, MIG_STATUS_COMPLETED },
		{ MIG_STATUS_POSTCOPY_ACTIVE, MIG_STATUS_FAILED },
		{ MIG_STATUS_POSTCOPY_ACTIVE, MIG_STATUS_POSTCOPY_PAUSED },
		{ MIG_STATUS_POSTCOPY_PAUSED, MIG_STATUS_POSTCOPY_ACTIVE },
		{ MIG_STATUS_POSTCOPY_PAUSED, MIG_STATUS_FAILED },
		{ MIG_STATUS_CANCELLING, MIG_STATUS_CANCELLED },
		{ MIG_STATUS_CANCELLING, MIG_STATUS_FAILED },
		{ MIG_STATUS_CANCELLING, MIG_STATUS_COMPLETED },
		{ MIG_STATUS_COMPLETED, MIG_STATUS_SETUP },
		{ MIG_STATUS_FAILED, MIG_STATUS_SETUP },
		{ MIG_STATUS_CANCELLED, MIG_STATUS_SETUP },
	};

	(void)state;
	for (int from = -1; from <= MIG_STATUS__COUNT; from++)
		for (int to = -1; to <= MIG_STATUS__COUNT; to++) {
			bool want = false;

			for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
				if (allowed[i][0] == from && allowed[i][1] == to)
					want = true;
			if (mig_status_transition_ok((enum mig_status)from, (enum mig_status)to) != want)
				fail_msg("transition %s -> %s: expected %s",
					 mig_status_name((enum mig_status)from),
					 mig_status_name((enum mig_status)to), want ? "allowed" : "refused");
		}
	/* A pause never skips back to precopy states, and nothing cancels it. */
	assert_false(mig_status_transition_ok(MIG_STATUS_POSTCOPY_PAUSED, MIG_STATUS_CANCELLING));
	assert_string_equal(mig_status_name(MIG_STATUS_POSTCOPY_PAUSED), "postcopy-paused");
	assert_string_equal(mig_status_name(MIG_STATUS_POSTCOPY_ACTIVE), "postcopy-active");
	assert_string_equal(mig_status_name(0), "invalid");
	assert_string_equal(mig_status_name(MIG_STATUS__COUNT), "invalid");
	for (int st = 1; st < MIG_STATUS__COUNT; st++)
		assert_string_not_equal(mig_status_name((enum mig_status)st), "invalid");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_status_every_pair),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
