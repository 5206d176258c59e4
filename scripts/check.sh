#!/bin/bash
# The whole test suite: strict build, unit + integration tests, the same
# suite under ASan/UBSan, the thread-heavy part of it under TSan, and a short
# run of every fuzz target.  Ends with one line "N passed, N failed[, N
# skipped]".
set -u
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
total_p=0 total_f=0 total_s=0
failed_names=() # what failed, repeated just above the last line: CI shows only the tail

count() { # add BUILD_DIR/test-counts to the totals
	local p f s
	read -r p f s < "$1/test-counts" || return
	total_p=$((total_p + p)); total_f=$((total_f + f)); total_s=$((total_s + s))
	[ -s "$1/test-failures" ] && mapfile -t -O "${#failed_names[@]}" failed_names < "$1/test-failures"
	return 0
}

echo "== build (strict warnings)"
if ! make -s -j"$jobs" WERROR=1 all; then
	echo "build failed"; echo "0 passed, 1 failed"; exit 1
fi
echo "== tests"
scripts/run-tests.sh build ""
count build

echo "== tests under ASan/UBSan"
if make -s -j"$jobs" WERROR=1 SAN=1 test-build; then
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		VMFERRY_SANITIZED=1 scripts/run-tests.sh build-san "[asan] "
	count build-san
else
	echo "sanitizer build failed"; total_f=$((total_f + 1)); failed_names+=("ASan/UBSan build")
fi

echo "== tests under TSan"
# TSan slows the VMM 5-15x: the whole suite takes ~8 min under it on the
# 2-core nested-KVM hosts.  So it runs every unit test and the integration
# programs whose VMMs run the most threads at once (control, vCPUs,
# migration / incoming, return path, urgent, fault, prealloc; CPR's
# handover; a postcopy pause and resume; a disk's I/O thread writing guest
# RAM while it migrates; a storage migration's block requests and recovery):
# test_control, test_cpr, test_disk's precopy and postcopy, test_storage's busy
# postcopy and its recovery,
# test_postcopy, test_recovery over UNIX sockets, and test_migration minus
# its long repetitions (ping-pong x20, the no-convergence timeout, the
# auto-converge ramp), which add minutes but no thread interplay the rest
# lacks.  test_vm and test_netns run the same threads as these.  ~3 min.
# A report fails the program: halt_on_error makes the VMM exit 66, which the
# test sees, and run-tests.sh fails any log that holds a report.
TSAN_PROGRAMS="unit/* integration/test_control integration/test_postcopy integration/test_cpr
	integration/test_migration=test_matrix integration/test_migration=test_paused_guest
	integration/test_migration=test_c* integration/test_migration=test_destination_killed
	integration/test_migration=test_bad_requests integration/test_recovery=test_recover_unix
	integration/test_state=test_precopy integration/test_state=test_recovery
	integration/test_disk=test_precopy integration/test_disk=test_postcopy
	integration/test_storage=test_postcopy_recover integration/test_storage=test_postcopy_busy"
if make -s -j"$jobs" WERROR=1 TSAN=1 test-build; then
	tsan_start=$(date +%s)
	TSAN_OPTIONS="halt_on_error=1:exitcode=66:second_deadlock_stack=1:suppressions=$PWD/scripts/tsan.supp" \
		VMFERRY_SANITIZED=1 VMFERRY_TEST_PROGRAMS="$TSAN_PROGRAMS" \
		scripts/run-tests.sh build-tsan "[tsan] "
	count build-tsan
	echo "(TSan tests: $(($(date +%s) - tsan_start)) s)"
else
	echo "TSan build failed"; total_f=$((total_f + 1)); failed_names+=("TSan build")
fi

echo "== fuzz targets (short runs)"
if make -s -j"$jobs" fuzz; then
	for f in build-fuzz/fuzz_*; do
		[ -x "$f" ] || continue
		name=$(basename "$f")
		corpus="fuzz/corpus/${name#fuzz_}"
		args=(-runs="${VMFERRY_FUZZ_RUNS:-20000}" -max_total_time=30 -artifact_prefix=build-fuzz/)
		work=$(mktemp -d /tmp/vmferry-corpus.XXXXXX) # libFuzzer adds to it
		[ -d "$corpus" ] && cp -r "$corpus"/. "$work"/
		args+=("$work")
		if "$f" "${args[@]}" >"build-fuzz/$name.log" 2>&1; then
			echo "ok   $name"; total_p=$((total_p + 1))
		else
			echo "FAIL $name"; tail -n 30 "build-fuzz/$name.log"; total_f=$((total_f + 1))
			failed_names+=("$name")
		fi
		rm -rf "$work"
	done
else
	echo "fuzz build failed"; total_f=$((total_f + 1)); failed_names+=("fuzz build")
fi

for n in "${failed_names[@]}"; do echo "failed: $n"; done
if [ "$total_s" -gt 0 ]; then
	echo "$total_p passed, $total_f failed, $total_s skipped"
else
	echo "$total_p passed, $total_f failed"
fi
[ "$total_f" -eq 0 ]
