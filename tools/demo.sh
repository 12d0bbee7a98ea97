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
args="-e hsm=hsm2 -e so_password=file:$dir/secrets/hsm2_so_password -e backups_confirmed=true -e delete_group=true -e poll_interval=0.5"
echo "== decommission hsm2 (the shipped playbook): the plan (--check); it already sees that the"
echo "   resource group cannot go, since it holds hsm1 too"
$dhsm run decommission $args --check || echo "(exit status $?: the plan stops at the refusal)"
echo
echo "== decommission hsm2: for real (--yes stands for typing the target's name at each destructive step);"
echo "   the resource group is refused at the end: it still holds hsm1"
$dhsm run decommission $args --yes || echo "(exit status $?: refused, as the guide requires)"
echo
echo "== the audit log ($DHSM_AUDIT), last 8 of $(wc -l < "$DHSM_AUDIT") records"
tail -n 8 "$DHSM_AUDIT"
