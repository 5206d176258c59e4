#!/bin/bash
# Every benchmark, one JSON line per run (plus median lines), also appended
# to bench/results/<date>.jsonl.  `make bench`; options pass to none of them:
# run build/bench/NAME --help for each one's own options.
set -eu
cd "$(dirname "$0")/.."
mkdir -p bench/results
out=bench/results/$(date +%Y%m%d-%H%M%S).jsonl
build/bench/vmm_boot --mem 1G --vcpus 2 --runs 3 | tee -a "$out"
build/bench/precopy --mem 256M,1G,4G --runs 3 --transports loopback | tee -a "$out"
build/bench/precopy --mem 256M,1G --runs 3 --transports veth --workloads idle,moderate | tee -a "$out"
build/bench/postcopy --mem 256M,1G --runs 3 | tee -a "$out"
build/bench/cpr --mem 1G,16G --updates 5 | tee -a "$out"
echo "results in $out"
