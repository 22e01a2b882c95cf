#!/usr/bin/env bash
# Runs the official Engine.IO v4, Engine.IO v3 and Socket.IO v5 test suites (the `docs/*-test-suite` folders of the
# socket.io monorepo) against `shardcast conformance`, and prints one score line per suite:
#
#     eio4 25/25
#     eio3 23/24
#     sio5 32/32
#
# Usage: tests/conformance/official.sh <socket.io monorepo: a git dir (bare or not) or a checkout> [runs]
#
# The suites' code is never copied into this repository: they are extracted into a temporary directory (or
# $CONFORMANCE_WORK_DIR), their npm dependencies installed there with `npm ci` from their own lock files, and the
# server is built from this checkout (`cargo build --bin shardcast`, or $SHARDCAST_BIN). The suites expect the server at
# localhost:3000; with $CONFORMANCE_PORT set, the extracted copies are pointed at that port instead (so two people on
# one machine can run them at once). `runs` (default 1) repeats all three suites, each run against a fresh server;
# $CONFORMANCE_ARGS adds flags to `shardcast conformance` (e.g. `--shards 2`).
# Exit status: 0 when every run of every suite had no failing case, 1 otherwise. Mocha's output of each suite is in
# <work dir>/<suite>.<run>.log.
set -euo pipefail

src=${1:?usage: $0 <socket.io monorepo git dir or checkout> [runs]}
runs=${2:-1}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
port=${CONFORMANCE_PORT:-3000}
work=${CONFORMANCE_WORK_DIR:-$(mktemp -d -t shardcast-conformance.XXXXXX)}
mkdir -p "$work"

declare -A suites=(
  [eio4]=docs/engine.io-protocol/v4-test-suite
  [eio3]=docs/engine.io-protocol/v3-test-suite
  [sio5]=docs/socket.io-protocol/v5-test-suite
)
order=(eio4 eio3 sio5)

log() { printf '[official.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# --- extract the three suites (git archive of HEAD, or a copy from a checkout) ---
paths=()
for s in "${order[@]}"; do paths+=("${suites[$s]}"); done
if [ -d "$src/docs/engine.io-protocol" ]; then
  for p in "${paths[@]}"; do
    mkdir -p "$work/$(dirname "$p")"
    rm -rf "${work:?}/$p"
    cp -R "$src/$p" "$work/$p"
    rm -rf "$work/$p/node_modules"
  done
else
  # A mirror without some large blobs elsewhere in the tree makes git archive complain; the suites are checked below.
  git --git-dir="$src" archive HEAD "${paths[@]}" 2>"$work/archive.log" | tar -x -C "$work" || true
fi
for p in "${paths[@]}"; do
  if [ ! -f "$work/$p/test-suite.js" ] || [ ! -f "$work/$p/package-lock.json" ]; then
    cat "$work/archive.log" >&2 2>/dev/null || true
    log "no $p/test-suite.js in $src"
    exit 1
  fi
done
log "suites extracted into $work (monorepo $(git --git-dir="$src" rev-parse --short HEAD 2>/dev/null ||
  git -C "$src" rev-parse --short HEAD 2>/dev/null || echo '?'))"

for s in "${order[@]}"; do
  d="$work/${suites[$s]}"
  if [ "$port" != 3000 ]; then
    sed -i "s#localhost:3000#localhost:$port#g" "$d/test-suite.js"
  fi
  if [ ! -d "$d/node_modules/mocha" ]; then
    log "npm ci in ${suites[$s]}"
    (cd "$d" && npm ci --no-audit --no-fund --loglevel=error >"$work/$s.npm.log" 2>&1) || {
      cat "$work/$s.npm.log" >&2
      exit 1
    }
  fi
done

# --- the server ---
bin=${SHARDCAST_BIN:-}
if [ -z "$bin" ]; then
  log "cargo build --bin shardcast"
  (cd "$root" && cargo build --quiet --bin shardcast)
  bin="$root/target/debug/shardcast"
fi

server_pid=
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap stop_server EXIT

start_server() {
  # shellcheck disable=SC2086 # CONFORMANCE_ARGS is a list of flags
  RUST_LOG=${RUST_LOG:-warn} "$bin" conformance --listen "127.0.0.1:$port" ${CONFORMANCE_ARGS:-} \
    >"$work/server.$1.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
      cat "$work/server.$1.log" >&2
      return 1
    fi
    sleep 0.1
  done
  log "the conformance server did not answer on port $port"
  return 1
}

# mocha's summary: "N passing", "N failing", "N pending".
count() { grep -Eo "^ *[0-9]+ $2" "$1" | grep -Eo '[0-9]+' | tail -1 || true; }

status=0
for run in $(seq 1 "$runs"); do
  start_server "$run"
  line="run $run:"
  for s in "${order[@]}"; do
    d="$work/${suites[$s]}"
    out="$work/$s.$run.log"
    (cd "$d" && npx --no-install mocha --reporter spec test-suite.js) >"$out" 2>&1 || true
    pass=$(count "$out" passing)
    fail=$(count "$out" failing)
    pend=$(count "$out" pending)
    pass=${pass:-0} fail=${fail:-0} pend=${pend:-0}
    total=$((pass + fail + pend))
    echo "$s $pass/$total"
    line="$line $s $pass/$total"
    if [ "$fail" != 0 ] || [ "$total" = 0 ]; then
      status=1
      grep -A3 -E '^ +[0-9]+\) ' "$out" | head -40 >&2 || true
    fi
  done
  stop_server
  log "$line"
done
exit "$status"
