#!/bin/sh
# make demo: the main job against the simulated estate.
#
# The estate simulator (tests/sim) starts an ARM endpoint, Luna appliances
# and client tools on loopback; the shipped playbooks run against it exactly
# as against a real environment.  Parts not built yet are skipped.
set -eu
dhsm=$1
dir=$(mktemp -d /tmp/dhsm-demo.XXXXXX)
export DHSM_AUDIT="$dir/audit.jsonl"
echo "== dhsm $($dhsm version | head -n 1 | cut -d' ' -f2), state in $dir"
$dhsm exec tools/demo.lua
echo "== audit log ($DHSM_AUDIT):"
cat "$DHSM_AUDIT"
