#!/usr/bin/env bash
# Profiles shardcast under one load-test scenario with perf: starts the release server, runs the scenario against it
# while `perf record -g` samples the server process, then prints the hottest symbols (self and children).
#
#   bash loadtest/profile.sh fanout --clients 2000 --duration-s 15
#
# Output goes to target/loadtest/profile-<scenario>-<timestamp>/ (perf.data, report.txt, the loadtest's JSON line).
# Needs `perf` (Debian: linux-perf) and kernel.perf_event_paranoid <= 1 (or root).
#
# SHARDCAST_BIN=path profiles that server binary instead of building target/release/shardcast (e.g. a copy built
# before a change, for a before/after pair). PERF_STAT=1 also counts, with `perf stat`, the server's context
# switches, `membarrier` and `io_uring_enter` calls (report in perf-stat.txt).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scenario=${1:?usage: loadtest/profile.sh <scenario> [loadtest options]}
shift
SECRET=${SHARDCAST_JWT_SECRET:-shardcast-loadtest-secret-0123456789abcdef}
out=target/loadtest/profile-$scenario-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
port=${PORT:-3190}
if [ -n "${SHARDCAST_BIN:-}" ]; then
  cargo build --release -q -p shardcast-loadtest
else
  cargo build --release -q -p shardcast -p shardcast-loadtest
fi
bin=${SHARDCAST_BIN:-target/release/shardcast}

SHARDCAST_JWT_SECRET=$SECRET SHARDCAST_USER_WRITES_PER_S=0 SHARDCAST_USER_WRITE_BYTES_PER_S=0 "$bin" serve --listen "127.0.0.1:$port" \
  --db-path "$out/shardcast.db" --echo-event ${SHARDCAST_ARGS:-} >"$out/server.log" 2>&1 &
server=$!
perf_pid=""
stat_pid=""
cleanup() {
  [ -n "$perf_pid" ] && kill -INT "$perf_pid" 2>/dev/null && wait "$perf_pid" 2>/dev/null
  [ -n "$stat_pid" ] && kill -INT "$stat_pid" 2>/dev/null && wait "$stat_pid" 2>/dev/null
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

# PERF_CALLGRAPH=none: flat profile (cheapest, least distorted); default: DWARF call graphs.
graph=(-g --call-graph "${PERF_CALLGRAPH:-dwarf,16384}")
[ "${PERF_CALLGRAPH:-}" = none ] && graph=()
perf record -F "${PERF_FREQ:-999}" "${graph[@]}" -p "$server" -o "$out/perf.data" >"$out/perf.log" 2>&1 &
perf_pid=$!
if [ -n "${PERF_STAT:-}" ]; then
  perf stat -e context-switches,syscalls:sys_enter_membarrier,syscalls:sys_enter_io_uring_enter -p "$server" \
    -o "$out/perf-stat.txt" >/dev/null 2>&1 &
  stat_pid=$!
fi
SHARDCAST_JWT_SECRET=$SECRET target/release/shardcast-loadtest "$scenario" --url "http://127.0.0.1:$port" \
  --server-pid "$server" --label shardcast --json-out "$out/result.jsonl" \
  --claim 'companies=["loadtest"]' --create-rooms-path /companies/loadtest/workspaces/loadtest/channels "$@"
kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
perf_pid=""
if [ -n "$stat_pid" ]; then
  kill -INT "$stat_pid"; wait "$stat_pid" 2>/dev/null || true
  stat_pid=""
fi
perf report -i "$out/perf.data" --no-children --percent-limit 0.7 --stdio -g none 2>/dev/null >"$out/report.txt" || true
perf report -i "$out/perf.data" --children --percent-limit 2 --stdio -g none 2>/dev/null >"$out/report-children.txt" || true
echo "== self time (top) =="; grep -v '^#' "$out/report.txt" | grep -v '^$' | head -40
echo "== with children (top) =="; grep -v '^#' "$out/report-children.txt" | grep -v '^$' | head -40
[ -f "$out/perf-stat.txt" ] && { echo "== perf stat =="; grep -E 'context-switches|syscalls' "$out/perf-stat.txt"; }
echo "profile: $out"
