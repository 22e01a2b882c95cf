#!/usr/bin/env bash
# Interleaved rounds of the 40k deliveries/s fanout run (run.py), one configuration after the other in each round.
#
#   CFGS="old slice100 fifoall" bash loadtest/latency/rounds.sh ROUNDS [SHARDCAST_BIN]   # JSON lines on stdout
#
# Configurations: default (no option), old / slice100 / slice500 (SHARDCAST_SHARD_SLICE_US and SHARDCAST_IO_SLICE_US
# 0 / 100 / 500), fifo (the server's shard and IO threads SCHED_FIFO 10), fifoall (and the load generator). Ports
# 4850-4854 unless PORT_BASE is set.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../.."
n=$1; bin=${2:-target/release/shardcast}
for r in $(seq "$n"); do
  for cfg in ${CFGS:-old slice100 fifoall}; do
    case $cfg in
      default) args=() ;;
      old) args=(--env SHARDCAST_SHARD_SLICE_US=0 --env SHARDCAST_IO_SLICE_US=0) ;;
      slice100) args=(--env SHARDCAST_SHARD_SLICE_US=100 --env SHARDCAST_IO_SLICE_US=100) ;;
      slice500) args=(--env SHARDCAST_SHARD_SLICE_US=500 --env SHARDCAST_IO_SLICE_US=500) ;;
      fifo) args=(--fifo shard- --fifo shardcast-io) ;;
      fifoall) args=(--fifo shard- --fifo shardcast-io --lg-fifo) ;;
      *) echo "unknown configuration $cfg" >&2; exit 2 ;;
    esac
    python3 "$here/run.py" --label "$cfg" --bin "$bin" --port $((${PORT_BASE:-4850} + r % 5)) "${args[@]}"
  done
done
