#!/bin/bash
# The main job: boot the default guest (incrementer, 1 GiB, 2 vCPUs) and show
# it running with live figures, then stop, dump and verify its memory.
# (Becomes a live migration once precopy lands.)
set -eu
cd "$(dirname "$0")/.."
make -s -j"$(nproc 2>/dev/null || echo 2)" all
exec build/bench/vmm_boot --demo "$@"
