#!/bin/sh
# make deps: install the Debian packages dhsm needs to build, test and run
# its simulated estate (openssh-client: also ssh-keygen, which signs and
# verifies plans, dhsm.plan).  Quiet and idempotent when everything is there.
set -eu

PKGS="gcc make pkg-config
liblua5.4-dev lua5.4 lua-cjson-dev
libcurl4-openssl-dev libssh2-1-dev libssl-dev openssl libedit-dev
libp11-kit-dev libcmocka-dev softhsm2 opensc
python3 python3-paramiko python3-cryptography
tmux procps openssh-client openssh-server time jq"

missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "dhsm: missing Debian packages:$missing" >&2
  echo "run as root:  apt-get install -y$missing" >&2
  exit 1
fi
echo "dhsm: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 || {
  apt-get update -q >/dev/null 2>&1
  apt-get install -y -q --no-install-recommends $missing >/dev/null
}
