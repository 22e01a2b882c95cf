#!/usr/bin/env bash
# Runs the same load-test scenarios against shardcast, socket.io 4.8 (Node) and socketioxide 0.18, one server at a
# time on this machine, and prints one comparison table per scenario; writes a PNG plot.
#
#   bash loadtest/compare.sh [scenario...]   # default: fanout hotroom publish publish@4000 connect idle echo cluster
#
# `cluster` is a block of its own: per server, one redis-server (the one tests/services/redis.sh installs, or
# $SHARDCAST_TEST_REDIS_BIN) and two server processes joined through it (shardcast: `serve --shards 1` each; node: two
# socket.io processes with @socket.io/redis-adapter 8; socketioxide has no classic-protocol adapter and is skipped);
# clients split between the two, REST publishes on both, CPU summed over the two servers and Redis.
#
# `publish@4000` is the publish scenario at 4,000 REST creates/s (any `scenario@RATE` passes `--rate RATE`).
# For each scenario with a CPU-per-delivery figure, the kernel floor (../shared/tools/floor.c, built here with cc) runs
# the same shape in the same run, and the table prints "ratio to floor" beside every CPU-per-delivery figure.
# Every server and the floor set TCP_NODELAY on their sockets.
#
# Environment:
#   SERVERS="shardcast node socketioxide"   which servers, in this order
#   LOADTEST_ARGS="--clients 1000"          extra shardcast-loadtest options for every run
#   LOADTEST_ARGS_FANOUT=... (_HOTROOM, _CONNECT, _IDLE, _ECHO, _PUBLISH)   extra options for one scenario
#   FLOOR_SECONDS=5                         length of each kernel-floor run (FLOOR=0: no floor runs)
#   FLOOR_SRC=../shared/tools/floor.c       the floor's source, relative to the project root by default
#   RESULTS=target/loadtest/<timestamp>     where the JSON lines, server logs and plot go
#   SHARDCAST_ARGS="--db-sync-interval-ms 100"   extra `shardcast serve` options
#   PORT_BASE=3100                          servers listen on PORT_BASE+1, +2, ... (one port per server start)
#
# Everything listens on 127.0.0.1 only; each server is stopped (by its PID) before the next one starts.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

SECRET=${SHARDCAST_JWT_SECRET:-shardcast-loadtest-secret-0123456789abcdef}
SERVERS=${SERVERS:-"shardcast node socketioxide"}
SHARDCAST_ARGS=${SHARDCAST_ARGS:-}
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(fanout hotroom publish publish@4000 connect idle echo cluster)
FLOOR_SECONDS=${FLOOR_SECONDS:-5}
FLOOR=${FLOOR:-1}
RESULTS=${RESULTS:-target/loadtest/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RESULTS"
jsonl="$RESULTS/results.jsonl"
: >"$jsonl"

# ---------------------------------------------------------------------------------------------------------------
# >>> The shardcast command line (`shardcast serve`; adjust here when its flags change).
#     $PORT, $SECRET and $RESULTS are expanded when the server starts. The secret goes through the environment.
SHARDCAST_CMD='env SHARDCAST_JWT_SECRET=$SECRET SHARDCAST_USER_WRITES_PER_S=0 SHARDCAST_USER_WRITE_BYTES_PER_S=0 target/release/shardcast serve --listen 127.0.0.1:$PORT --db-path $RESULTS/shardcast-$PORT.db --echo-event $SHARDCAST_ARGS'
# shardcast's demo services only accept a channel's messages from callers whose token names the channel's company,
# and only for channels that exist: the load generator adds the claim and creates room-0..room-N first.
SHARDCAST_LOADTEST_ARGS=(--claim 'companies=["loadtest"]' --create-rooms-path /companies/loadtest/workspaces/loadtest/channels)
# ---------------------------------------------------------------------------------------------------------------
NODE_CMD='node loadtest/peers/node/server.js --listen 127.0.0.1:$PORT --jwt-secret $SECRET'
SIOXIDE_CMD='target/peers/socketioxide/release/shardcast-peer-socketioxide --listen 127.0.0.1:$PORT --jwt-secret $SECRET'

log() { printf '[compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

log "building (release): shardcast, shardcast-loadtest"
cargo build --release -q -p shardcast-loadtest
for s in $SERVERS; do
  case $s in
    shardcast) cargo build --release -q -p shardcast --bin shardcast || log "shardcast failed to build" ;;
    node)
      if [ ! -d loadtest/peers/node/node_modules ] || [ loadtest/peers/node/package-lock.json -nt loadtest/peers/node/node_modules ]; then
        log "installing the Node peer's packages (npm ci)"
        (cd loadtest/peers/node && npm ci --no-audit --no-fund --loglevel=error)
      fi ;;
    socketioxide)
      log "building the socketioxide peer (release, own workspace)"
      CARGO_TARGET_DIR="$root/target/peers/socketioxide" cargo build --release -q \
        --manifest-path loadtest/peers/socketioxide/Cargo.toml ;;
    *) log "unknown server $s"; exit 2 ;;
  esac
done

# The kernel floor: the cheapest possible server for a shape (one write(2) per delivery), from the project guide's tools.
floor_src=${FLOOR_SRC:-"$root/../shared/tools/floor.c"}
floor_bin=target/loadtest/floor
if [ "$FLOOR" != 0 ]; then
  if [ -f "$floor_src" ] && mkdir -p target/loadtest && cc -O2 -o "$floor_bin" "$floor_src"; then
    log "built the kernel floor from $floor_src"
  else
    log "cannot build $floor_src: no floor figures"; FLOOR=0
  fi
fi

# run_floor scenario: runs the floor for the shape the last run of `scenario` had (clients, room size, rate) and appends
# its JSON line, tagged with the scenario, to $jsonl. Hotroom also runs 16 frames per write (coalescing's floor).
run_floor() {
  local scenario=$1 shape
  [ "$FLOOR" != 0 ] || return 0
  shape=$(python3 - "$jsonl" "$scenario" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
runs = [r for r in runs if r.get("scenario") == sys.argv[2] and "error" not in r and r.get("server") != "floor"]
if not runs:
    sys.exit(0)
r = runs[-1]
c, rooms = r["clients"], max(r.get("rooms") or 1, 1)
rate = r.get("publish_rate_target_per_s")
sc = sys.argv[2]
if sc == "fanout":
    print(c, max(c // rooms, 1), rate or 0, 1, rate or "")
elif sc == "publish":
    print(c, 1, rate or 0, 1, rate or "")
elif sc == "hotroom":
    print(c, c, 0, 1, "")
    print(c, c, 0, 16, "")
elif sc == "echo" and r.get("measured_s"):
    print(c, 1, round((r.get("acks_received") or 0) / r["measured_s"]), 1, "")
PY
)
  [ -n "$shape" ] || return 0
  while read -r n group rate frames target; do
    local bytes=$((344 * frames)) line
    log "kernel floor for $scenario: floor $n $group $rate $FLOOR_SECONDS $bytes"
    if line=$("$floor_bin" "$n" "$group" "$rate" "$FLOOR_SECONDS" "$bytes"); then
      local tag="\"scenario\":\"$scenario\",\"server\":\"floor\",\"frames_per_write\":$frames,"
      [ -n "$target" ] && tag="$tag\"publish_rate_target_per_s\":$target,"
      echo "{$tag${line#\{}" >>"$jsonl"
    else
      log "the floor failed for $scenario"
    fi
  done <<<"$shape"
}

server_pid=""
stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}

start_server() { # name port -> sets server_pid; returns 1 if it does not listen within 20 s
  local name=$1 PORT=$2 cmd
  case $name in
    shardcast) cmd=$SHARDCAST_CMD ;;
    node) cmd=$NODE_CMD ;;
    socketioxide) cmd=$SIOXIDE_CMD ;;
  esac
  cmd="$(PORT=$PORT SECRET=$SECRET eval "echo \"$cmd\"") ${CLUSTER_ARGS:-}"
  [ -n "${CLUSTER_ENV:-}" ] && cmd="env $CLUSTER_ENV $cmd"
  log "starting $name: ${cmd//$SECRET/<secret>}"
  # exec: the PID is the server's own, so its /proc entry is what gets measured.
  bash -c "exec $cmd" >>"$RESULTS/$name.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 200); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      log "$name exited during start-up; see $RESULTS/$name.log"; server_pid=""; return 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "$name is not listening on $PORT after 20 s"; stop_server; return 1
}

# >>> The cluster scenario: two nodes of one server kind plus Redis (see the header).
cluster_pids=()
stop_cluster() {
  local p
  for p in "${cluster_pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${cluster_pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  cluster_pids=()
}
trap 'stop_server; stop_cluster' EXIT

run_cluster() { # rate_args...
  local redis_bin=${SHARDCAST_TEST_REDIS_BIN:-redis-server} s rport redis_pid a_port b_port a_pid b_pid ok
  if ! command -v "$redis_bin" >/dev/null 2>&1; then
    log "cluster: no redis-server (bash tests/services/redis.sh start installs it)"
    echo '{"scenario":"cluster","server":"shardcast","error":"no redis-server"}' >>"$jsonl"
    return 0
  fi
  for s in $SERVERS; do
    [ "$s" = socketioxide ] && { log "cluster: socketioxide speaks no classic redis-adapter protocol, skipped"; continue; }
    port=$((port + 1)); rport=$port
    "$redis_bin" --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$RESULTS/redis-$s.log" 2>&1 &
    redis_pid=$!; cluster_pids+=("$redis_pid")
    ok=0
    for _ in $(seq 100); do
      if [[ "$( (exec 3<>"/dev/tcp/127.0.0.1/$rport" && printf 'PING\r\n' >&3 && head -c 5 <&3) 2>/dev/null)" == +PONG ]]; then ok=1; break; fi
      sleep 0.1
    done
    if [ $ok = 0 ]; then
      log "cluster: redis-server did not answer on $rport"; stop_cluster
      echo "{\"scenario\":\"cluster\",\"server\":\"$s\",\"error\":\"redis did not start\"}" >>"$jsonl"; continue
    fi
    case $s in
      shardcast) CLUSTER_ARGS="--shards 1 --redis-url redis://127.0.0.1:$rport"
        CLUSTER_ENV="SHARDCAST_ROOM_TOKEN_SECRET=$SECRET-room" ;;
      node) CLUSTER_ARGS="--redis-url redis://127.0.0.1:$rport" ;;
    esac
    port=$((port + 1)); a_port=$port; port=$((port + 1)); b_port=$port
    ok=1
    # One shard per shardcast process (two processes share this machine's cores with Redis and the generator).
    if start_server "$s" "$a_port"; then
      a_pid=$server_pid; cluster_pids+=("$a_pid"); server_pid=""
    else ok=0; fi
    if [ $ok = 1 ] && start_server "$s" "$b_port"; then
      b_pid=$server_pid; cluster_pids+=("$b_pid"); server_pid=""
    else ok=0; fi
    CLUSTER_ARGS=""; CLUSTER_ENV=""
    if [ $ok = 1 ] && [ "$s" = shardcast ]; then
      # Subscribed to Redis before the clients come.
      for port_ in $a_port $b_port; do
        for _ in $(seq 100); do
          curl -fs "http://127.0.0.1:$port_/readyz/cluster" >/dev/null 2>&1 && break; sleep 0.1
        done
      done
    fi
    if [ $ok = 0 ]; then
      echo "{\"scenario\":\"cluster\",\"server\":\"$s\",\"error\":\"server did not start\"}" >>"$jsonl"
      stop_cluster; continue
    fi
    log "cluster against two $s nodes (pids $a_pid $b_pid) and redis (pid $redis_pid)"
    server_args=()
    [ "$s" = shardcast ] && server_args=("${SHARDCAST_LOADTEST_ARGS[@]}")
    # shellcheck disable=SC2086
    if ! SHARDCAST_JWT_SECRET=$SECRET target/release/shardcast-loadtest cluster \
        --url "http://127.0.0.1:$a_port" --url "http://127.0.0.1:$b_port" \
        --server-pid "$a_pid" --server-pid "$b_pid" --server-pid "$redis_pid" --label "$s" --json-out "$jsonl" \
        "${server_args[@]}" "$@" ${LOADTEST_ARGS:-} ${LOADTEST_ARGS_CLUSTER:-}; then
      echo "{\"scenario\":\"cluster\",\"server\":\"$s\",\"error\":\"load test failed\"}" >>"$jsonl"
    fi
    stop_cluster
  done
}

port=${PORT_BASE:-3100}
for spec in "${scenarios[@]}"; do
  scenario=${spec%@*}
  rate_args=()
  [ "$spec" != "$scenario" ] && rate_args=(--rate "${spec#*@}")
  upper=$(echo "$scenario" | tr '[:lower:]' '[:upper:]')
  extra_var="LOADTEST_ARGS_$upper"
  if [ "$scenario" = cluster ]; then
    run_cluster "${rate_args[@]}"
    continue
  fi
  for s in $SERVERS; do
    port=$((port + 1))
    if ! start_server "$s" "$port"; then
      echo "{\"scenario\":\"$scenario\",\"server\":\"$s\",\"error\":\"server did not start\"}" >>"$jsonl"
      continue
    fi
    log "$scenario against $s (pid $server_pid)"
    server_args=()
    [ "$s" = shardcast ] && server_args=("${SHARDCAST_LOADTEST_ARGS[@]}")
    # shellcheck disable=SC2086
    if ! SHARDCAST_JWT_SECRET=$SECRET target/release/shardcast-loadtest "$scenario" \
        --url "http://127.0.0.1:$port" --server-pid "$server_pid" --label "$s" --json-out "$jsonl" \
        "${server_args[@]}" "${rate_args[@]}" ${LOADTEST_ARGS:-} ${!extra_var:-}; then
      echo "{\"scenario\":\"$scenario\",\"server\":\"$s\",\"error\":\"load test failed\"}" >>"$jsonl"
    fi
    stop_server
  done
  run_floor "$scenario"
done

# The table needs only python3; the plot needs matplotlib, installed once into a venv under target/.
venv=target/loadtest/venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
  log "installing matplotlib into $venv (once)"
  python3 -m venv "$venv" && "$venv/bin/pip" install -q matplotlib || log "matplotlib unavailable: no plot"
fi
py=python3
[ -x "$venv/bin/python" ] && py="$venv/bin/python"
"$py" loadtest/report.py "$jsonl" --plot "$RESULTS/compare.png" | tee "$RESULTS/table.md"
log "results: $RESULTS (results.jsonl, table.md, compare.png, server logs)"
