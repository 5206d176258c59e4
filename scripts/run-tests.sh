#!/bin/bash
# Run every test program under BUILD_DIR/tests and count cmocka test cases.
# A program exiting 77 is skipped (its stderr says why); one that crashes,
# times out or logs a ThreadSanitizer report (the VMMs it spawns write to its
# stderr) counts as one failure.  Prints "N passed, N failed, N skipped".
#   scripts/run-tests.sh BUILD_DIR [LABEL]
# VMFERRY_TEST_PROGRAMS="NAME[=FILTER] ..." runs only the programs whose name
# (unit/test_x, integration/test_y) matches a NAME glob, once per matching
# entry, with its FILTER (a cmocka glob) as VMFERRY_TEST_FILTER.
set -u
build=${1:-build}
label=${2:-}
per_test_timeout=${VMFERRY_TEST_TIMEOUT:-300}
passed=0 failed=0 skipped=0
failures=()
logdir=$(mktemp -d /tmp/vmferry-tests.XXXXXX)

export VMFERRY_BIN=${VMFERRY_BIN:-$build/vmferry}
# Run program $1 (name $2) with cmocka filter $3 (empty: every test).
run_one() {
	local t=$1 name=$2 filter=$3 log start rc ms secs p f shown=$2
	[ -n "$filter" ] && shown="$name ($filter)"
	log="$logdir/$(echo "$name" | tr / _).log"
	start=$(date +%s%N)
	if [ -n "$filter" ]; then
		VMFERRY_TEST_FILTER=$filter timeout -k 10 "$per_test_timeout" "$t" >"$log" 2>&1
	else
		timeout -k 10 "$per_test_timeout" "$t" >"$log" 2>&1
	fi
	rc=$?
	if [ "$rc" -eq 0 ] && grep -aq '^WARNING: ThreadSanitizer:' "$log"; then
		rc=66 # a report from a VMM whose exit status the test did not check
	fi
	ms=$(( ($(date +%s%N) - start) / 1000000 ))
	secs=$((ms / 1000)).$(printf '%03d' $((ms % 1000)))
	p=$(grep -aoE '^\[  PASSED  \] [0-9]+' "$log" | awk '{s+=$4} END {print s+0}')
	f=$(grep -aoE '^\[  FAILED  \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
	if [ "$rc" -eq 77 ]; then
		skipped=$((skipped + 1))
		printf '%sSKIP %s: %s\n' "$label" "$shown" "$(grep -a SKIP "$log" | head -n1)"
		return
	fi
	passed=$((passed + p))
	failed=$((failed + f))
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		failed=$((failed + 1)) # crashed, timed out or failed outside cmocka
	fi
	if [ "$rc" -ne 0 ]; then
		failures+=("$shown")
		printf '%sFAIL %s (exit %d, %ss); log follows\n' "$label" "$shown" "$rc" "$secs"
		# The failed checks first: a sanitizer's report can fill the tail.
		grep -a -B3 -E '^\[ +(ERROR|LINE) +\]' "$log" | head -n 30 | sed 's/^/    /'
		echo "    ..."
		tail -n 40 "$log" | sed 's/^/    /'
	else
		printf '%sok   %s (%d cases, %ss)\n' "$label" "$shown" "$p" "$secs"
	fi
}

read -rd "" -a selections <<< "${VMFERRY_TEST_PROGRAMS:-}" # words over lines, no globbing
for t in "$build"/tests/unit/test_* "$build"/tests/integration/test_*; do
	[ -x "$t" ] || continue
	case "$t" in *.o|*.d) continue;; esac
	name=${t#"$build"/tests/}
	if [ "${#selections[@]}" -eq 0 ]; then
		run_one "$t" "$name" "${VMFERRY_TEST_FILTER:-}"
		continue
	fi
	for sel in "${selections[@]}"; do
		# shellcheck disable=SC2254 # NAME is a glob
		case "$name" in ${sel%%=*})
			if [ "$sel" != "${sel#*=}" ]; then
				run_one "$t" "$name" "${sel#*=}"
			else
				run_one "$t" "$name" "${VMFERRY_TEST_FILTER:-}"
			fi;;
		esac
	done
done
rm -rf "$logdir"
echo "$passed $failed $skipped" > "$build/test-counts"
printf '%s\n' "${failures[@]/#/$label}" | grep -v '^$' > "$build/test-failures"
[ "${#failures[@]}" -eq 0 ]
