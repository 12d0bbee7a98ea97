#!/bin/sh
# make demo: the whole story of an Azure Dedicated HSM estate, told with the
# shipped playbooks against the simulated estate (tests/sim), unattended:
#
#   the operator's inventory discovered from Azure -> provision a third HSM
#   (the gateway race hits it: the retry shows) -> discover --merge adds it
#   -> initialize it into the HA group (the group's key replicated to it) ->
#   diagnose all three -> an appliance regenerates its NTLS certificate ->
#   diagnose finds it -> ntls-reexchange -> an HA member drops and comes
#   back -> ha-recover -> decommission everything under two-person control
#   (alice plans, bob approves with his SSH key, alice applies), the group last
#   -> orphans -> the estate's own state shows nothing is left.
#
#   sh tools/demo.sh ./dhsm        (DHSM_DEMO_DIR=DIR: the estate's folder; default a new one in /tmp)
#
# The estate is stopped however the script ends: done, a failed step
# (set -e), or Ctrl-C (exit status 130).
set -eu
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
cd "$(dirname "$0")/.."
estate=tests/sim/estate
dir=${DHSM_DEMO_DIR:-$(mktemp -d /tmp/dhsm-demo.XXXXXX)}
began=$(date +%s)

trap '"$estate" stop --dir "$dir"' EXIT
trap 'echo; echo "== interrupted: stopping the estate"; exit 130' INT TERM

chapter() { printf '\n== %s\n' "$*"; }
say() { printf '   %s\n' "$*"; }
# the command as the operator types it, then run it
dhsm() { printf '\n$ dhsm %s\n' "$*"; "$bin" "$@"; }
state() { "$estate" state --dir "$dir" | jq -r "$@"; }

# diagnose exits 1 when it finds a FAIL: part of the story, not the end of it
diagnose() {
  dhsm run diagnose "$@" || say "(diagnose exit status $?: it found a FAIL)"
}

# LunaSH on appliance $1 over OpenSSH, as an administrator at a terminal
# would type it (stdin: the commands; the estate's client key logs in).
lunash() {
  port=$(jq -r --arg n "$1" '.hsms[] | select(.name == $n) | .ssh_port' "$dir/inventory.json")
  ssh -T -o BatchMode=yes -o UserKnownHostsFile="$dir/known_hosts" -i "$dir/secrets/id_ed25519" \
    -p "$port" tenantadmin@127.0.0.1 | grep -E "successful|Command Result|Stopping|Starting" | sed 's/^/   | /'
}

# wait (at most ~10 s) until the client's HA view says member $1 is $2
member_is() {
  n=0
  until [ "$(state --arg s "$1" '[.lunaclient.ha[][$s].status // empty][0]')" = "$2" ]; do
    n=$((n + 1)); [ $n -lt 100 ] || { echo "member $1 never became $2" >&2; return 1; }
    sleep 0.1
  done
}

chapter "0. The estate: two Luna appliances in an HA pair, one spare appliance at Microsoft"
"$estate" start --dir "$dir" --appliances 2 --spare 1 --client-ready
# a rehearsal keeps its failed-login counts apart from the host's guard (/var/lib/dhsm)
export DHSM_AUDIT="$dir/audit.jsonl" XDG_STATE_HOME="$dir/state" DHSM_GUARD_DIR="$dir/guard" \
  ChrystokiConfigurationPath="$dir/client"
for h in hsm1 hsm2; do "$estate" appliance --dir "$dir" "$h" install-fix >/dev/null; done
p1=$(state .appliances.hsm1.partitions.par1.serial)
p2=$(state .appliances.hsm2.partitions.par1.serial)
tests/sim/bin/lunacm -c hagroup createGroup -label demoHA -serialNumber "$p1" <"$dir/secrets/hsm1_par1_co_pin" >/dev/null
tests/sim/bin/lunacm -c hagroup addMember -group demoHA -serialNumber "$p2" <"$dir/secrets/hsm1_par1_co_pin" >/dev/null
# a key an application makes as applications do: sensitive, never extractable (pkcs11's defaults)
appkey() {
  DEMO_CO_PIN="file:$dir/secrets/hsm1_par1_co_pin" DEMO_KEY="$1" "$bin" -i "$dir/inventory.json" exec -e '
    local lib <close> = require("dhsm.pkcs11").load(inv.client.pkcs11_lib, { env = { SOFTHSM2_CONF = inv.client.softhsm_conf } })
    local s <close> = lib:open { label = "hsm1-par1", rw = true }
    s:login("user", require("dhsm.secret").ref(os.getenv("DEMO_CO_PIN")))
    s:generate_aes { label = os.getenv("DEMO_KEY") }
    s:logout()'
}
appkey app-key-0
say "estate folder $dir (ARM, its login endpoint, the appliances over real SSH and TLS, all on loopback)"
say "hsm1 and hsm2: resource group hsm-rg, reboot fix installed, partition par1 each, HA group demoHA;"
say "an application made key app-key-0 (sensitive, not extractable) on hsm1; this host is their Luna client"

chapter "1. The operator's inventory, discovered from Azure (not the estate's own file)"
# the service principal in the environment, as the Azure SDKs' credential chain reads it
AZURE_CLIENT_ID=$(jq -r .azure.client_id "$dir/estate.json")
AZURE_TENANT_ID=$(jq -r .azure.tenant "$dir/estate.json")
AZURE_SUBSCRIPTION_ID=$(jq -r .azure.subscription "$dir/estate.json")
AZURE_CLIENT_SECRET=$(cat "$(jq -r .azure.secret_file "$dir/estate.json")")
export AZURE_CLIENT_ID AZURE_TENANT_ID AZURE_SUBSCRIPTION_ID AZURE_CLIENT_SECRET
# the rehearsal's endpoints and NIC address map (a real estate needs neither)
rehearsal="--endpoint $(jq -r .services.arm.url "$dir/estate.json") --authority $(jq -r .services.aad.url "$dir/estate.json")
  --ca-file $dir/ca.pem --address-map $dir/address-map.json --known-hosts $dir/operator_known_hosts"
inv="$dir/operator.json"
# shellcheck disable=SC2086
dhsm inventory discover -g hsm-rg $rehearsal --accept-new -o "$inv"
# what discover cannot know: where this operator keeps the secrets, and the client install
fill() {
  jq --arg s "$dir/secrets" --slurpfile est "$dir/inventory.json" '.client = $est[0].client
    | .hsms |= map(.password = "file:\($s)/\(.name)_password" | .so_password = "file:\($s)/\(.name)_so_password")' \
    "$inv" >"$inv.new" && mv "$inv.new" "$inv" && chmod 600 "$inv"
}
fill
export DHSM_INVENTORY="$inv"
say "the operator pointed each secret at its file and added the client install: $inv"

chapter "2. Provision a third HSM, hsm3 - with the guide's gateway race switched on"
say "the estate will fail the next HSM creation as if the ExpressRoute gateway were not ready yet,"
say "although it reads Succeeded; the guide says rerunning the deployment often solves it"
"$estate" fault --dir "$dir" gateway_race_next=1 >/dev/null
dhsm run provision -e hsms=hsm3:stamp2 -e poll_interval=0.2 -e backoff=1 --yes

chapter "3. discover --merge: the inventory gains hsm3, nothing else changes"
# shellcheck disable=SC2086
dhsm inventory discover -g hsm-rg $rehearsal --accept-new --merge "$inv" --yes
fill

chapter "4. initialize hsm3: from factory-fresh to a member of demoHA holding the group's keys"
for f in new_password so_password pso_password; do printf 'Demo-%s-Passw0rd\n' "$f" >"$dir/hsm3_$f"; done
echo defaultdomain >"$dir/hsm3_domain"      # the group's cloning domain (its partitions were made in it)
chmod 600 "$dir"/hsm3_*
dhsm run initialize -e hsm=hsm3 -e partition=par1 -e ha_group=demoHA -e credentials_stored=true \
  -e new_password="file:$dir/hsm3_new_password" -e so_password="file:$dir/hsm3_so_password" \
  -e cloning_domain="file:$dir/hsm3_domain" -e pso_password="file:$dir/hsm3_pso_password" \
  -e co_password="file:$dir/secrets/hsm1_par1_co_pin" --yes
say "app-key-0 on hsm3's partition: $(DEMO_CO_PIN="file:$dir/secrets/hsm1_par1_co_pin" "$bin" exec -e '
  local lib <close> = require("dhsm.pkcs11").load(inv.client.pkcs11_lib, { env = { SOFTHSM2_CONF = inv.client.softhsm_conf } })
  local s <close> = lib:open { label = "hsm3-par1" }
  s:login("user", require("dhsm.secret").ref(os.getenv("DEMO_CO_PIN")))
  print(#s:find { label = "app-key-0" } == 1 and "there (cloned by the synchronize)" or "MISSING")
  s:logout()')"
"$estate" appliance --dir "$dir" hsm3 install-fix >/dev/null
say "the operator installs the reboot fix on hsm3, as initialize reported it missing"

chapter "5. Diagnose all three HSMs: every check of the guide"
diagnose
say "no FAIL: hsm3 serves as the others do"

chapter "6. Meanwhile, an administrator on hsm1 regenerates its NTLS certificate and restarts NTLS"
{ echo "hsm login"; cat "$dir/secrets/hsm1_so_password"; echo "sysconf regenCert -force"; echo "service restart ntls"; } |
  lunash hsm1
say "this client still trusts the old certificate: vtl verify no longer lists hsm1's partition"
tests/sim/bin/vtl verify | sed 's/^/   | /'

chapter "7. Diagnose again: it finds the certificate hsm1 presents is not the one this client trusts"
diagnose

chapter "8. ntls-reexchange: fetch hsm1's new server.pem, replace it in the client's trust (vtl), verify"
dhsm run ntls-reexchange -e hsm=hsm1 --yes

chapter "9. hsm2 loses power and comes back: the client drops it from demoHA"
"$estate" appliance --dir "$dir" hsm2 down >/dev/null
member_is "$p2" down
say "hsm2 is down; the client marks member $p2 down"
say "meanwhile an application creates key app-key-1 through the group: only hsm1, the member alive, holds it"
appkey app-key-1
"$estate" appliance --dir "$dir" hsm2 up >/dev/null
say "hsm2 is back; auto-recovery (initialize set it) would retry in 60 s: the operator does not wait"

chapter "10. ha-recover: recover the member, compare the members, synchronize"
dhsm run ha-recover -e co_password="file:$dir/secrets/hsm1_par1_co_pin"

chapter "11. Decommission all three under two-person control: alice plans, bob approves, alice applies"
say "each HSM's SO password is in the operator's inventory ($inv; hsm3's is the one initialize set)"
# the Crypto Officer's secret of each partition (one for the group), so decommission can list the keys it destroys
"$estate" state --dir "$dir" >"$dir/state-now.json"
jq --arg pin "file:$dir/secrets/hsm1_par1_co_pin" --slurpfile st "$dir/state-now.json" '.hsms |= map(
    ($st[0].appliances[.name].partitions.par1.serial) as $sn | .partitions = [$sn]
    | .crypto_officers = [{partition: $sn, password: $pin}])' "$inv" >"$inv.new" && mv "$inv.new" "$inv" && chmod 600 "$inv"
# the host's policy (a rehearsal's, DHSM_POLICY: the host's own is /etc/dhsm/policy.json, root's):
# decommission and every destructive change only from a plan one other operator approved
ops="$dir/operators"
mkdir -p "$ops"
for who in alice bob; do
  ssh-keygen -q -t ed25519 -N '' -C "$who" -f "$ops/$who"
  printf '%s@example.com %s\n' "$who" "$(cut -d' ' -f1,2 "$ops/$who.pub")" >>"$ops/allowed_signers"
done
printf '{"approvals": 1, "allowed_signers": "%s", "playbooks": ["decommission"], "destructive_changes": true}\n' \
  "$ops/allowed_signers" >"$ops/policy.json"
DHSM_POLICY="$ops/policy.json"
export DHSM_POLICY
say "this host's policy: decommission only from a plan approved by one operator other than its author ($ops)"
decommission_args="-e hsm=hsm1,hsm2,hsm3 -e backups_confirmed=true -e destroy_last_copies=app-key-0,app-key-1 \
  -e delete_group=true -e poll_interval=0.2"
# shellcheck disable=SC2086
dhsm run decommission $decommission_args --yes || say "(exit status $?: --yes is no approval)"
say "every member of demoHA goes: each key is a last copy, so alice names them (destroy_last_copies)"
# shellcheck disable=SC2086
dhsm run decommission $decommission_args --check --out "$dir/decommission.plan.json" --key "$ops/alice"
say "bob reviews the plan, destructive changes first, and approves it with his own key"
dhsm plan show "$dir/decommission.plan.json"
dhsm plan approve "$dir/decommission.plan.json" --key "$ops/bob"
dhsm run --plan "$dir/decommission.plan.json" --yes

chapter "12. Orphans: an HSM whose group went first would still be billed"
dhsm run orphans

chapter "13. The estate, from its own state"
say "resources: $(state '.resources | length'), resource groups: $(state '.groups | length'), orphaned HSMs: \
$(state '.derived.orphaned_hsms | length'), billed HSMs: $(state '.derived.billed_hsms | length')"
say "appliances: $(state '[.appliances | to_entries[] | "\(.key) \(.value.status)"] | join(", ")')"
say "audit log: $(wc -l <"$DHSM_AUDIT") records in $DHSM_AUDIT"
say "the story took $(($(date +%s) - began)) s; stopping the estate"
