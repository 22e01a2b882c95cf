#!/usr/bin/env bash
# What a presence question costs once the node is clustered: N sequential `GET /api/v1/online` of one room on
# node A, first with A alone (no cluster), then with A and B joined through a redis-server of its own. Prints the
# latency percentiles of both runs. Loopback only; everything it starts is stopped on exit.
#
#   bash loadtest/cluster/presence.sh [N]     # default N=300; SHARDCAST_BIN (default target/debug/shardcast)
#                                              # and SHARDCAST_TEST_REDIS_BIN (default redis-server)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
n=${1:-300}
bin=${SHARDCAST_BIN:-$root/target/debug/shardcast}
redis_bin=${SHARDCAST_TEST_REDIS_BIN:-redis-server}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# config NAME [REDIS_URL]: a serve configuration of its own (shared secrets, as every node of a cluster needs).
config() {
  local dir=$work/$1
  mkdir -p "$dir"
  {
    printf '[auth]\njwt_secret = "presence-bench-access-secret-0123456789"\n'
    printf '[realtime]\nroom_token_secret = "presence-bench-room-secret-0123456789!!"\n'
    [ -n "${2:-}" ] && printf '[cluster]\nredis_url = "%s"\n' "$2"
    printf '[orm]\nembedded_path = "%s/data.redb"\n' "$dir"
  } >"$dir/shardcast.toml"
  echo "$dir/shardcast.toml"
}

# serve CONFIG PORT: starts a one-shard node, waits for /readyz.
serve() {
  "$bin" serve --shards 1 --no-pin --listen "127.0.0.1:$2" --config "$1" >/dev/null 2>"$1.log" &
  pids+=($!)
  for _ in $(seq 200); do
    curl -fs "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "node on port $2 did not become ready; log:" >&2
  cat "$1.log" >&2
  exit 1
}

measure() { # measure LABEL PORT CONFIG
  local token
  token=$("$bin" token --config "$3" --sub alice --claim 'companies=["acme"]')
  python3 - "$1" "$2" "$token" "$n" <<'PY'
import http.client, json, sys, time, urllib.parse
label, port, token, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
def call(method, path, body=None):
    c.request(method, path, body=json.dumps(body) if body else None,
              headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, json.loads(r.read() or b"null")
status, v = call("POST", "/api/v1/companies/acme/workspaces/w1/channels", {"resource": {"id": "bench", "name": "b"}})
assert status == 201, v
status, v = call("GET", "/api/v1/channels/bench/messages?websockets=true")
ws = v["websockets"][0]
path = "/api/v1/online?room=%s&token=%s" % (urllib.parse.quote(ws["room"], safe=""), ws["token"])
times = []
for _ in range(n):
    t = time.perf_counter()
    status, v = call("GET", path)
    times.append((time.perf_counter() - t) * 1000)
    assert status == 200 and v.get("complete", True), v
times.sort()
pct = lambda p: times[min(len(times) - 1, int(p * len(times)))]
print("%-40s n=%d p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms" % (label, n, pct(.5), pct(.9), pct(.99), times[-1]))
PY
}

alone=$(free_port)
serve "$(config alone)" "$alone"
measure "node A alone" "$alone" "$work/alone/shardcast.toml"

redis_port=$(free_port)
"$redis_bin" --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >/dev/null &
pids+=($!)
for _ in $(seq 100); do
  [ "$(printf 'PING\r\n' | timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$redis_port; cat >&3; head -c 7 <&3" 2>/dev/null)" = $'+PONG\r\n' ] && break
  sleep 0.05
done
url=redis://127.0.0.1:$redis_port
a=$(free_port)
b=$(free_port)
serve "$(config a "$url")" "$a"
serve "$(config b "$url")" "$b"
for _ in $(seq 200); do
  curl -fs "http://127.0.0.1:$a/readyz/cluster" >/dev/null 2>&1 && curl -fs "http://127.0.0.1:$b/readyz/cluster" >/dev/null 2>&1 && break
  sleep 0.05
done
measure "node A with node B, through Redis" "$a" "$work/a/shardcast.toml"
