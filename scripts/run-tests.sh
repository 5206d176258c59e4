#!/bin/bash
# Run every test program under BUILD_DIR/tests and count cmocka test cases.
# A program exiting 77 is skipped (its stderr says why); one that crashes or
# times out counts as one failure.  Prints "N passed, N failed, N skipped".
#   scripts/run-tests.sh BUILD_DIR [LABEL]
set -u
build=${1:-build}
label=${2:-}
per_test_timeout=${VMFERRY_TEST_TIMEOUT:-300}
passed=0 failed=0 skipped=0
failures=()
logdir=$(mktemp -d /tmp/vmferry-tests.XXXXXX)

export VMFERRY_BIN=${VMFERRY_BIN:-$build/vmferry}
for t in "$build"/tests/unit/test_* "$build"/tests/integration/test_*; do
	[ -x "$t" ] || continue
	case "$t" in *.o|*.d) continue;; esac
	name=${t#"$build"/tests/}
	log="$logdir/$(echo "$name" | tr / _).log"
	start=$(date +%s%N)
	timeout -k 10 "$per_test_timeout" "$t" >"$log" 2>&1
	rc=$?
	ms=$(( ($(date +%s%N) - start) / 1000000 ))
	secs=$((ms / 1000)).$(printf '%03d' $((ms % 1000)))
	p=$(grep -aoE '^\[  PASSED  \] [0-9]+' "$log" | awk '{s+=$4} END {print s+0}')
	f=$(grep -aoE '^\[  FAILED  \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
	if [ "$rc" -eq 77 ]; then
		skipped=$((skipped + 1))
		printf '%sSKIP %s: %s\n' "$label" "$name" "$(grep -a SKIP "$log" | head -n1)"
		continue
	fi
	passed=$((passed + p))
	failed=$((failed + f))
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		failed=$((failed + 1)) # crashed, timed out or failed outside cmocka
	fi
	if [ "$rc" -ne 0 ]; then
		failures+=("$name")
		printf '%sFAIL %s (exit %d, %ss); log follows\n' "$label" "$name" "$rc" "$secs"
		tail -n 40 "$log" | sed 's/^/    /'
	else
		printf '%sok   %s (%d cases, %ss)\n' "$label" "$name" "$p" "$secs"
	fi
done
rm -rf "$logdir"
echo "$passed $failed $skipped" > "$build/test-counts"
[ "${#failures[@]}" -eq 0 ]
