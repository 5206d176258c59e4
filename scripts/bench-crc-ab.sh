#!/bin/bash
# The CRC's cost: bench/precopy and bench/postcopy with stream version 2
# (--stream-crc: the capability, CRCs) and version 1 (the default: none),
# interleaved - each round runs both, in alternating order - so that the
# machine's drift hits both alike.  One JSON line per run on stdout, each
# with "crc": "on" or "off" added.
#   scripts/bench-crc-ab.sh [ROUNDS] [MEM] [WORKLOADS] [TRANSPORTS]
# (defaults 5, 1G, idle,heavy, loopback,unix; postcopy: pure mode only)
set -u
rounds=${1:-5}
mem=${2:-1G}
workloads=${3:-idle,heavy}
transports=${4:-loopback,unix}
bin=${BUILD:-build}

one() { # crc bench args...
	local crc=$1
	shift
	if [ "$crc" = on ]; then
		"$@" --stream-crc
	else
		"$@"
	fi | grep '"type":"run"' | sed "s/^{/{\"crc\":\"$crc\",/"
}

for ((i = 0; i < rounds; i++)); do
	if ((i % 2)); then order="off on"; else order="on off"; fi
	for crc in $order; do
		one "$crc" "$bin/bench/precopy" --mem "$mem" --workloads "$workloads" \
			--transports "$transports" --runs 1 --probe-bytes 128M
		one "$crc" "$bin/bench/postcopy" --mem "$mem" --workloads "$workloads" \
			--transports "$transports" --modes pure --runs 1 --probe-bytes 128M
	done
done
