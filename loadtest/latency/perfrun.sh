#!/usr/bin/env bash
# Decomposes the latency of the 40k deliveries/s fanout run: how long each busy thread (the network shard, the IO
# thread, the load generator) waits for a CPU after a wake-up or a preemption, and how long the IO thread's fsyncs
# take, from a system-wide trace of sched_switch, sched_wakeup and f(data)sync over 4 s of the measured phase.
#
#   bash loadtest/latency/perfrun.sh LABEL [run.py options, e.g. --env SHARDCAST_SHARD_SLICE_US=100 --fifo shard-]
#
# Needs perf and root (tracepoints). Port 4857 unless PORT is set. Prints the per-thread table, then run.py's line.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../.."
label=$1; shift
port=${PORT:-4857}
work=$(mktemp -d /tmp/shardcast-perfrun-XXXXXX)
python3 "$here/run.py" --label "$label" --bin "${SHARDCAST_BIN:-target/release/shardcast}" --port "$port" --duration 8 "$@" >"$work/run.json" &
rp=$!
S="" L=""
for _ in $(seq 150); do
  S=$(pgrep -f "serve --listen 127.0.0.1:$port" | head -1 || true)
  L=$(pgrep -f "fanout --url http://127.0.0.1:$port" | head -1 || true)
  [ -n "$S" ] && [ -n "$L" ] && break
  sleep 0.2
done
sleep 4 # the connect phase
names=()
for t in /proc/"$S"/task/*; do
  n=$(cat "$t/comm"); case $n in shard-*|shardcast-io) names+=("$(basename "$t")=$n") ;; esac
done
names+=("$L=loadtest")
perf record -q -o "$work/perf.data" -e sched:sched_switch -e sched:sched_wakeup \
  -e syscalls:sys_enter_fdatasync -e syscalls:sys_exit_fdatasync -e syscalls:sys_enter_fsync -e syscalls:sys_exit_fsync \
  -a -- sleep 4 2>/dev/null
wait $rp
perf script -i "$work/perf.data" 2>/dev/null | python3 "$here/decomp.py" "${names[@]}"
cat "$work/run.json"
rm -rf "$work"
