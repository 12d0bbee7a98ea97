#!/bin/sh
# make demo: the main job against the simulated estate (tests/sim): every
# layer checked as the troubleshooting guide asks, then the guide's
# decommission sequence rehearsed (plan first, then for real).
set -eu
dhsm=$1
dir=$(mktemp -d /tmp/dhsm-demo.XXXXXX)
tests/sim/estate start --dir "$dir" --appliances 2
trap 'tests/sim/estate stop --dir "$dir"' EXIT
export DHSM_INVENTORY="$dir/inventory.json" DHSM_AUDIT="$dir/audit.jsonl" XDG_STATE_HOME="$dir/state"
echo "== simulated estate in $dir (ARM, login, 2 appliances on loopback)"
$dhsm exec tools/demo.lua
echo
echo "== decommission hsm2: the plan (--check)"
$dhsm run tools/demo_decommission.lua -e hsm=hsm2 -e so_password="file:$dir/secrets/hsm2_so_password" --check
echo
echo "== decommission hsm2: for real (--yes stands for typing 'hsm2' at each destructive step)"
$dhsm run tools/demo_decommission.lua -e hsm=hsm2 -e so_password="file:$dir/secrets/hsm2_so_password" --yes
echo
echo "== the audit log ($DHSM_AUDIT), last 8 of $(wc -l < "$DHSM_AUDIT") records"
tail -n 8 "$DHSM_AUDIT"
