#!/bin/sh
# The long chaos campaign (docs/reliability.md): `scripts/chaos.sh --runs 200
# --seed S` runs build/tests/chaos/chaos niced (it shares the machine), keeps
# its JSON lines in build/chaos/chaos-SEED.jsonl and prints the summary.
# Options are the program's (--runs, --seed, --only, --mode, --fault, ...).
# Needs root for the link faults (network namespaces, nftables).
set -eu
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build}"
seed=""
prev=""
for a in "$@"; do
	[ "$prev" = "--seed" ] && seed="$a"
	prev="$a"
done
if [ -z "$seed" ]; then
	seed=$(date +%s)
	set -- "$@" --seed "$seed"
fi
mkdir -p "$BUILD/chaos"
out="$BUILD/chaos/chaos-$seed.jsonl"
echo "chaos: seed $seed, results in $out" >&2
rc=0
VMFERRY_BIN="$BUILD/vmferry" nice -n 10 "$BUILD/tests/chaos/chaos" "$@" > "$out" || rc=$?
grep '"table"' "$out" || true
grep '"summary"' "$out" || true
exit $rc
