#!/bin/sh
# tests/run.sh [--no-selftests] DHSM [UNIT_TEST_BINARY...]
#
# Runs every suite: the C unit tests (cmocka, TAP output), the simulator's
# self-tests (Python; not under the sanitizers: --no-selftests), then
# `dhsm test` over each file of tests/lua and tests/e2e, several at once.
# Failures are printed; the last line sums everything up:
#   N passed, N failed[, N skipped]
# and the exit status is non-zero when anything failed.
set -u
selftests=yes
if [ "${1:-}" = "--no-selftests" ]; then selftests=no; shift; fi
dhsm=$1
shift
passed=0 failed=0 skipped=0
log=$(mktemp)
# The suite keeps its journals, failed-login counts, history and audit log
# to itself, never in the operator's ~/.local/state nor in the host's guard
# folder (/var/lib/dhsm).
state=$(mktemp -d)
export XDG_STATE_HOME="$state" DHSM_AUDIT="$state/audit.jsonl" DHSM_GUARD_DIR="$state/guard"
trap 'rm -f "$log"; rm -rf "$state"' EXIT

# add "P F S" to the totals
add() {
  passed=$((passed + $1)); failed=$((failed + $2)); skipped=$((skipped + $3))
}

# counts from the last "N passed, N failed[, N skipped]" line of $log
add_summary() {
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
  if [ -z "$line" ]; then
    echo "FAIL $1: no summary line (crashed?)"
    tail -n 20 "$log"
    add 0 1 0
    return
  fi
  p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
  f=$(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
  s=$(echo "$line" | sed -nE 's/.*, ([0-9]+) skipped.*/\1/p')
  add "$p" "$f" "${s:-0}"
  if [ "$2" -ne 0 ] && [ "$f" -eq 0 ]; then    # exit status says more than the line
    echo "FAIL $1: exited with status $2"
    add 0 1 0
  fi
}

# each unittest failure of $1 with its traceback (a failure seen once on a
# loaded machine must say what it was)
failures() {
  awk '/^(FAIL|ERROR):/ { shown = 1; rules = 0 }
       shown && /^=+$/ { shown = 0 }
       shown && /^-+$/ && ++rules == 2 { shown = 0 }
       shown' "$1"
}

for bin in "$@"; do
  CMOCKA_MESSAGE_OUTPUT=TAP "$bin" >"$log" 2>&1
  rc=$?
  grep -E '^not ok|^# .*(error|Failure)' "$log" | sed "s|^|$(basename "$bin"): |"
  p=$(grep -cE '^ok [0-9]' "$log")
  f=$(grep -cE '^not ok [0-9]' "$log")
  add "$p" "$f" 0
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "FAIL $bin: exited with status $rc"; cat "$log"; add 0 1 0
  fi
done

# The simulator's self-tests start their own estates on free ports: run
# them side by side, then report each.
if [ "$selftests" = yes ]; then
  pids=""
  for t in tests/sim/*_selftest.py; do
    [ -e "$t" ] || continue
    ( /usr/bin/python3 "$t" >"$log.$(basename "$t")" 2>&1; echo $? >"$log.$(basename "$t").rc" ) &
    pids="$pids $!"
  done
  for p in $pids; do wait "$p"; done
  for t in tests/sim/*_selftest.py; do
    [ -e "$t" ] || continue
    mv "$log.$(basename "$t")" "$log"
    rc=$(cat "$log.$(basename "$t").rc"); rm -f "$log.$(basename "$t").rc"
    failures "$log"
    add_summary "$t" "$rc"
  done
fi

# The Lua suites: each file in its own dhsm process with its own state
# folder, $DHSM_TEST_JOBS at a time (default: one more than the cores; the
# end-to-end files spend most of their time waiting on their estates).
# The longest files start first (measured on 2 cores, 2026-12: 30-90 s
# each), so that none is left running alone at the end; then the other
# end-to-end files, then the rest.  Reported in that order.
LONGEST="tests/e2e/diagnose_test.lua tests/e2e/decommission_test.lua tests/e2e/last_copy_test.lua
  tests/e2e/ha_recover_test.lua tests/e2e/plan_test.lua tests/e2e/decommission_kill_test.lua tests/e2e/demo_test.lua
  tests/e2e/provision_test.lua tests/lua/guard_test.lua tests/e2e/initialize_kill_test.lua
  tests/e2e/ha_recover_kill_test.lua"
files=""
for f in $LONGEST; do [ -e "$f" ] && files="$files $f"; done
for f in $(ls tests/e2e/*_test.lua tests/lua/*_test.lua 2>/dev/null); do
  case " $LONGEST " in *[[:space:]]"$f"[[:space:]]*) ;; *) files="$files $f" ;; esac
done
jobs=${DHSM_TEST_JOBS:-$(($(nproc 2>/dev/null || echo 1) + 1))}
results=$(mktemp -d)
trap 'rm -f "$log"; rm -rf "$state" "$results"' EXIT
export DHSM_BIN="$dhsm" RESULTS="$results"
printf '%s\n' $files | xargs -P "$jobs" -I{} sh -c '
  f=$1; key=$(echo "$f" | tr / _)
  mkdir -p "$XDG_STATE_HOME/$key"
  XDG_STATE_HOME="$XDG_STATE_HOME/$key" DHSM_AUDIT="$XDG_STATE_HOME/$key/audit.jsonl" \
    DHSM_GUARD_DIR="$XDG_STATE_HOME/$key/guard" "$DHSM_BIN" test --yes "$f" >"$RESULTS/$key.log" 2>&1
  echo $? >"$RESULTS/$key.rc"' sh {}
for f in $files; do
  key=$(echo "$f" | tr / _)
  mv "$results/$key.log" "$log" 2>/dev/null || : >"$log"
  grep -vE '^[0-9]+ passed, [0-9]+ failed' "$log"
  add_summary "$f" "$(cat "$results/$key.rc" 2>/dev/null || echo 1)"
done

line="$passed passed, $failed failed"
[ "$skipped" -gt 0 ] && line="$line, $skipped skipped"
echo "$line"
[ "$failed" -eq 0 ]
