#!/bin/bash
# The main job: live-migrate the default guest (incrementer, 1 GiB, 2 vCPUs)
# from one vmferry process to another over loopback TCP, while it runs, then
# verify the guest's memory on the destination and show it still running.
#   scripts/demo.sh [--mem SIZE] [--vcpus N] [--downtime-limit MS]
set -euo pipefail
cd "$(dirname "$0")/.."
mem=1G vcpus=2 limit=300
while [ $# -gt 0 ]; do
	case "$1" in
	--mem) mem=$2; shift 2;;
	--vcpus) vcpus=$2; shift 2;;
	--downtime-limit) limit=$2; shift 2;;
	-h|--help) sed -n '2,6p' "$0"; exit 0;;
	*) echo "demo: unknown option $1" >&2; exit 2;;
	esac
done
make -s -j"$(nproc 2>/dev/null || echo 2)" all
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
	echo "demo: /dev/kvm is not available here: vmferry needs KVM" >&2
	exit 1
fi

V=build/vmferry
dir=$(mktemp -d /tmp/vmferry-demo.XXXXXX)
pids=()
cleanup() {
	for s in "$dir"/src.sock "$dir"/dst.sock; do
		[ -S "$s" ] && "$V" ctl --timeout 5 "$s" quit >/dev/null 2>&1 || true
	done
	for p in "${pids[@]}"; do
		timeout 10 tail --pid="$p" -f /dev/null 2>/dev/null || kill -9 "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$dir"
}
trap cleanup EXIT

field() { # field NAME JSON -> the value of a top-level number or string
	sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$2"
}
ms() { # ms NAME JSON -> a time field in ms, one decimal
	LC_ALL=C printf '%.1f' "$(field "$1" "$2")"
}
human() { # human BYTES -> 312.4 MiB / 1.02 GiB
	LC_ALL=C awk -v b="$1" 'BEGIN {
		if (b >= 2^30) printf "%.2f GiB", b / 2^30
		else if (b >= 2^20) printf "%.1f MiB", b / 2^20
		else printf "%.1f KiB", b / 2^10 }'
}
mbps() { # mbps BYTES MS -> MB/s over that time
	LC_ALL=C awk -v b="$1" -v t="$2" 'BEGIN { printf "%.0f MB/s", (t > 0 ? b / 1e6 / (t / 1e3) : 0) }'
}
running_vcpus() {
	"$V" ctl "$1" query-workload | grep -o '"phase":"running"' | wc -l
}

echo "== source: booting the incrementer guest ($mem, $vcpus vCPUs, CPL3 long mode)"
"$V" run --mem "$mem" --vcpus "$vcpus" --guest incrementer \
	--control "$dir/src.sock" --console "$dir/src.console" 2>"$dir/src.log" &
pids+=($!)
echo "== destination: waiting for the guest on loopback TCP"
"$V" run --mem "$mem" --vcpus "$vcpus" --incoming tcp:127.0.0.1:0 \
	--control "$dir/dst.sock" --console "$dir/dst.console" 2>"$dir/dst.log" &
pids+=($!)
"$V" ctl --wait "$dir/src.sock" query-status >/dev/null
"$V" ctl --wait "$dir/dst.sock" query-status >/dev/null
uri=$(field uri "$("$V" ctl "$dir/dst.sock" query-migrate)")
for _ in $(seq 600); do
	[ "$(running_vcpus "$dir/src.sock")" -eq "$vcpus" ] && break
	sleep 0.1
done
w=$("$V" ctl "$dir/src.sock" query-workload)
echo "   guest running on the source: $(field writes "$w") page writes so far"

echo "== migrating to $uri (downtime limit $limit ms)"
echo "   (pass 1 copies all of RAM; each later pass resends only the pages the guest"
echo "    dirtied meanwhile, so 'to go' starts over from that dirty set at each pass)"
result=$("$V" migrate --control "$dir/src.sock" --downtime-limit "$limit" "$uri")
echo "$result" >"$dir/query-migrate.json"
echo
echo "   total time      $(ms total-time "$result") ms"
echo "   guest downtime  $(ms downtime "$result") ms ($(field downtime-measured "$result"))"
echo "   setup time      $(ms setup-time "$result") ms"
echo "   bytes on wire   $(human "$(field transferred "$result")") of $(human "$(field total "$result")") guest RAM, $(mbps "$(field transferred "$result")" "$(field total-time "$result")") on average"
echo "   pages sent      $(field normal-pages "$result") data + $(field zero-pages "$result") zero, in $(field passes "$result") passes"
echo "   source now      $(field status "$("$V" ctl "$dir/src.sock" query-status)")"

echo "== destination: guest state $(field status "$("$V" ctl "$dir/dst.sock" query-status)")"
"$V" ctl "$dir/dst.sock" dump-guest-memory "{\"file\": \"$dir/dump\"}" >/dev/null
if "$V" verify auto "$dir/dump" >"$dir/verdict"; then
	echo "   guest memory verified on the destination (every page consistent)"
else
	echo "   GUEST MEMORY BROKEN: $(cat "$dir/verdict")"
	exit 1
fi
rm -f "$dir/dump"
p1=$(field writes "$("$V" ctl "$dir/dst.sock" query-workload)")
sleep 1
p2=$(field writes "$("$V" ctl "$dir/dst.sock" query-workload)")
echo "   guest keeps running there: $((p2 - p1)) page writes in the last second"
