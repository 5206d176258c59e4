#!/bin/bash
# The long fuzzing campaign (`make fuzz-long`; not part of CI): every fuzz
# target, one after the other, for FUZZ_RUNS executions (default 10 M) or
# FUZZ_TIME seconds each, whichever comes first (FUZZ_TIME=0: no time cap).
# FUZZ_TARGETS="control_line migration_stream" picks targets (default all).
#
# Each target starts from its corpus, fuzz/corpus/NAME, and finds new inputs
# in build-fuzz/long/NAME.new; afterwards libFuzzer's -merge=1 keeps the
# hand-written seeds (any file whose name is not a 40-hex SHA-1) plus the
# fewest generated inputs that reach every feature reached, and those replace
# the generated files in fuzz/corpus/NAME.  FUZZ_CORPUS_MAX (default 1000)
# caps the generated files per target: past it the smallest are kept, so the
# repository does not fill up.  Findings (crash-*, leak-*, timeout-*, oom-*)
# stay in build-fuzz/long/ for a regression test or a corpus entry.
#
# Prints one table row per target; the table is also written to
# build-fuzz/long/results.md.
set -u
cd "$(dirname "$0")/.."

runs=${FUZZ_RUNS:-10000000}
time_cap=${FUZZ_TIME:-0}
corpus_max=${FUZZ_CORPUS_MAX:-1000}
out=build-fuzz/long
mkdir -p "$out"

targets=${FUZZ_TARGETS:-}
if [ -z "$targets" ]; then
	for f in fuzz/fuzz_*.c; do
		n=$(basename "$f" .c)
		targets="$targets ${n#fuzz_}"
	done
fi

is_generated() { [[ $(basename "$1") =~ ^[0-9a-f]{40}$ ]]; }

# The merged corpus of @name: seeds + the fewest generated inputs covering all.
merge_corpus() {
	local name=$1 bin=$2 corpus=fuzz/corpus/$1 merged=$out/$1.merged
	local f n
	rm -rf "$merged"
	mkdir -p "$merged" "$corpus"
	for f in "$corpus"/*; do
		[ -f "$f" ] && ! is_generated "$f" && cp "$f" "$merged"/
	done
	"$bin" -merge=1 -artifact_prefix="$out/$name-" "$merged" "$corpus" "$out/$name.new" \
		>"$out/$name.merge.log" 2>&1 || { echo "merge of $name failed: $out/$name.merge.log" >&2; return 1; }
	n=0
	for f in "$merged"/*; do is_generated "$f" && n=$((n + 1)); done
	if [ "$n" -gt "$corpus_max" ]; then
		# Keep the smallest generated inputs (ls -Sr: ascending size).
		ls -Sr "$merged" | while read -r f; do
			is_generated "$merged/$f" || continue
			if [ "$corpus_max" -gt 0 ]; then corpus_max=$((corpus_max - 1)); else rm -f "$merged/$f"; fi
		done
		echo "note: $name: $n generated inputs cut to ${FUZZ_CORPUS_MAX:-1000} (smallest kept)" >&2
	fi
	for f in "$corpus"/*; do
		[ -f "$f" ] && is_generated "$f" && rm -f "$f"
	done
	for f in "$merged"/*; do
		[ -f "$f" ] && is_generated "$f" && cp "$f" "$corpus"/
	done
	rm -rf "$merged"
}

make -s fuzz || exit 1
status=0
{
	echo "| target | executions | seconds | exec/s | cov (edges) | ft (features) | corpus files | findings |"
	echo "|---|---:|---:|---:|---:|---:|---:|---|"
} >"$out/results.md"
cat "$out/results.md"
for name in $targets; do
	bin=build-fuzz/fuzz_$name
	[ -x "$bin" ] || { echo "no fuzz target $name" >&2; status=1; continue; }
	mkdir -p "$out/$name.new" "fuzz/corpus/$name"
	rm -f "$out/$name"-crash-* "$out/$name"-leak-* "$out/$name"-timeout-* "$out/$name"-oom-*
	args=(-runs="$runs" -timeout=25 -print_final_stats=1 -artifact_prefix="$out/$name-")
	[ "$time_cap" -gt 0 ] && args+=(-max_total_time="$time_cap")
	start=$(date +%s)
	"$bin" "${args[@]}" "$out/$name.new" "fuzz/corpus/$name" >"$out/$name.log" 2>&1
	rc=$?
	secs=$(($(date +%s) - start))
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$name.log" | tail -n 1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out/$name.log" | tail -n 1)
	last=$(grep -E '^#[0-9]+.*cov: ' "$out/$name.log" | tail -n 1)
	cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
	ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
	findings=$(cd "$out" && ls "$name"-crash-* "$name"-leak-* "$name"-timeout-* "$name"-oom-* 2>/dev/null | tr '\n' ' ')
	[ "$rc" -ne 0 ] && [ -z "$findings" ] && findings="exit $rc, see $out/$name.log"
	[ -n "$findings" ] && status=1
	merge_corpus "$name" "$bin" || status=1
	files=$(find "fuzz/corpus/$name" -type f | wc -l)
	row="| $name | ${execs:-?} | $secs | ${rate:-?} | ${cov:-?} | ${ft:-?} | $files | ${findings:-none} |"
	echo "$row" | tee -a "$out/results.md"
done
exit $status
