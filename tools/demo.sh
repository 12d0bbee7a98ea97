#!/bin/sh
# make demo: the whole story of an Azure Dedicated HSM estate, told with the
# shipped playbooks against the simulated estate (tests/sim), unattended:
#
#   provision a third HSM (the gateway race hits it: the retry shows) ->
#   diagnose -> an appliance regenerates its NTLS certificate -> diagnose
#   finds it -> ntls-reexchange -> an HA member drops and comes back ->
#   ha-recover -> decommission everything, the resource group last ->
#   orphans -> the estate's own state shows nothing is left.
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
export DHSM_INVENTORY="$dir/inventory.json" DHSM_AUDIT="$dir/audit.jsonl" XDG_STATE_HOME="$dir/state" \
  DHSM_GUARD_DIR="$dir/guard" \
  ChrystokiConfigurationPath="$dir/client"
for h in hsm1 hsm2; do "$estate" appliance --dir "$dir" "$h" install-fix >/dev/null; done
p1=$(state .appliances.hsm1.partitions.par1.serial)
p2=$(state .appliances.hsm2.partitions.par1.serial)
tests/sim/bin/lunacm -c hagroup createGroup -label demoHA -serialNumber "$p1" <"$dir/secrets/hsm1_par1_co_pin" >/dev/null
tests/sim/bin/lunacm -c hagroup addMember -group demoHA -serialNumber "$p2" <"$dir/secrets/hsm1_par1_co_pin" >/dev/null
say "estate folder $dir (ARM, its login endpoint, the appliances over real SSH and TLS, all on loopback)"
say "hsm1 and hsm2: resource group hsm-rg, reboot fix installed, partition par1 each, HA group demoHA"
say "this host is their Luna client (Chrystoki.conf in $dir/client)"

chapter "1. Provision a third HSM, hsm3 - with the guide's gateway race switched on"
say "the estate will fail the next HSM creation as if the ExpressRoute gateway were not ready yet,"
say "although it reads Succeeded; the guide says rerunning the deployment often solves it"
"$estate" fault --dir "$dir" gateway_race_next=1 >/dev/null
dhsm run provision -e hsms=hsm3:stamp2 -e poll_interval=0.2 -e backoff=1 --yes
say "hsm3 came up on the spare appliance, factory-fresh (zeroized, a factory admin password): its"
say "first login must change that password, as provision's report says; done here with a new one"
say "from a file (the report's command asks for it at a terminal instead)"
umask 077
printf 'Demo-%s-Pw1!\n' "$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')" >"$dir/hsm3_new_password"
dhsm exec --yes -e "require('dhsm.luna').first_login(inv:hsm('hsm3'), {new_password = secret.file('$dir/hsm3_new_password')}):close()"
say "initialising hsm3 is the next step provision names; this story leaves it zeroized and gives it back at the end"

chapter "2. Diagnose the HSMs in service, hsm1 and hsm2: every check of the guide"
say "(hsm3 is left out: a factory-fresh HSM is zeroized and has no certificate exchange yet, which"
say " diagnose would rightly report; the Azure checks still cover the whole resource group)"
diagnose -e hsm=hsm1,hsm2
say "no FAIL; the one WARN is the HA retry count of 0, the default the guide warns about: chapter 7 sets it"

chapter "3. Meanwhile, an administrator on hsm1 regenerates its NTLS certificate and restarts NTLS"
{ echo "hsm login"; cat "$dir/secrets/hsm1_so_password"; echo "sysconf regenCert -force"; echo "service restart ntls"; } |
  lunash hsm1
say "this client still trusts the old certificate: vtl verify no longer lists hsm1's partition"
tests/sim/bin/vtl verify | sed 's/^/   | /'

chapter "4. Diagnose again: it finds the certificate hsm1 presents is not the one this client trusts"
diagnose -e hsm=hsm1,hsm2

chapter "5. ntls-reexchange: fetch hsm1's new server.pem, replace it in the client's trust (vtl), verify"
dhsm run ntls-reexchange -e hsm=hsm1 --yes

chapter "6. hsm2 loses power and comes back: the client dropped it from demoHA, and the retry count is 0"
"$estate" appliance --dir "$dir" hsm2 down >/dev/null
member_is "$p2" down
say "hsm2 is down; the client marks member $p2 down"
say "meanwhile an application creates key app-key-1 through the group: only hsm1, the member alive, holds it"
DEMO_CO_PIN="file:$dir/secrets/hsm1_par1_co_pin" "$bin" exec -e '
  local client = require("dhsm.inventory").load(os.getenv("DHSM_INVENTORY")).client
  local lib <close> = require("dhsm.pkcs11").load(client.pkcs11_lib, { env = { SOFTHSM2_CONF = client.softhsm_conf } })
  local s <close> = lib:open { label = "hsm1-par1", rw = true }
  s:login("user", require("dhsm.secret").ref(os.getenv("DEMO_CO_PIN")))
  s:generate_aes { label = "app-key-1", sensitive = false, extractable = true }
  s:logout()'
"$estate" appliance --dir "$dir" hsm2 up >/dev/null
say "hsm2 is back, but with no auto-recovery the member stays out of the group until someone acts"

chapter "7. ha-recover: recover the member, turn auto-recovery on, compare the members, synchronize"
dhsm run ha-recover -e co_password="file:$dir/secrets/hsm1_par1_co_pin"

chapter "8. Decommission all three, the guide's way: zeroize, check, delete each HSM, then the group"
jq --arg s "$dir/secrets" '.hsms |= map(.so_password = "file:\($s)/\(.name)_so_password")' \
  "$dir/inventory.json" >"$dir/operator.json"
say "each HSM's SO password is in the operator's inventory ($dir/operator.json)"
dhsm -i "$dir/operator.json" run decommission -e hsm=hsm1,hsm2,hsm3 -e backups_confirmed=true \
  -e delete_group=true -e poll_interval=0.2 --yes

chapter "9. Orphans: an HSM whose group went first would still be billed"
dhsm run orphans

chapter "10. The estate, from its own state"
say "resources: $(state '.resources | length'), resource groups: $(state '.groups | length'), orphaned HSMs: \
$(state '.derived.orphaned_hsms | length'), billed HSMs: $(state '.derived.billed_hsms | length')"
say "appliances: $(state '[.appliances | to_entries[] | "\(.key) \(.value.status)"] | join(", ")')"
say "audit log: $(wc -l <"$DHSM_AUDIT") records in $DHSM_AUDIT"
say "the story took $(($(date +%s) - began)) s; stopping the estate"
