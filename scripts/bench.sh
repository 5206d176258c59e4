#!/bin/bash
# Every benchmark, one JSON line per run, into bench/results/<date>.jsonl too.
set -eu
cd "$(dirname "$0")/.."
mkdir -p bench/results
out=bench/results/$(date +%Y%m%d-%H%M%S).jsonl
build/bench/vmm_boot --mem 1G --vcpus 2 --runs 3 | tee -a "$out"
echo "results in $out"
