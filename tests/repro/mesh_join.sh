#!/usr/bin/env bash
# Reproduction of the shard-mesh start-up hang (bounded): start `shardcast conformance --shards 3` RUNS times while
# HOGS busy loops load the CPUs, and count the starts where some shard never logged "shard listening" within
# WAIT_S seconds (the symptom: a shard stuck in glommio's channel-mesh join), where the process failed to start, or
# where it did not exit within WAIT_S seconds of SIGTERM.
# Not part of tests/run.sh: a manual tool. Usage: tests/repro/mesh_join.sh [RUNS] [HOGS] [WAIT_S] [SHARDS]
set -u
BIN=${BIN:-target/debug/shardcast}
RUNS=${1:-100}
HOGS=${2:-4}
WAIT_S=${3:-5}
SHARDS=${4:-3}
tmp=${TMP_DIR:-target/mesh-repro}
rm -rf "$tmp" && mkdir -p "$tmp"
hogs=()
pid=
cleanup() {
    for p in "${hogs[@]}" $pid; do kill "$p" 2>/dev/null; done
}
trap cleanup EXIT
trap 'exit 1' INT TERM
for _ in $(seq "$HOGS"); do
    yes >/dev/null &
    hogs+=($!)
done
hangs=0
failed=0
ok=0
stuck=0
for i in $(seq "$RUNS"); do
    log="$tmp/run.log"
    # Emptied here, before the start: the child truncates it only after the fork, so polling a log still holding the
    # previous run's lines would signal the forked shell before it has become shardcast (a lost SIGTERM).
    : >"$log"
    RUST_LOG=info "$BIN" conformance --shards "$SHARDS" --listen 127.0.0.1:0 >"$tmp/out" 2>"$log" &
    pid=$!
    deadline=$((SECONDS + WAIT_S))
    n=0
    while ((SECONDS < deadline)); do
        n=$(grep -c "shard listening" "$log")
        ((n >= SHARDS)) && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if ((n >= SHARDS)); then
        ok=$((ok + 1))
    elif kill -0 "$pid" 2>/dev/null; then
        hangs=$((hangs + 1))
        echo "run $i: only $n of $SHARDS shards listening after ${WAIT_S}s (hang)"
        cp "$log" "$tmp/hang_$i.log"
    else
        failed=$((failed + 1))
        echo "run $i: exited before every shard listened: $(tail -n 2 "$log" | tr '\n' ' ')"
    fi
    kill "$pid" 2>/dev/null
    # Bounded too: a server that ignores SIGTERM is counted and killed, not waited for.
    deadline=$((SECONDS + WAIT_S))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null; then
        stuck=$((stuck + 1))
        echo "run $i: still running ${WAIT_S}s after SIGTERM"
        cp "$log" "$tmp/stuck_$i.log"
        kill -KILL "$pid" 2>/dev/null
    fi
    ((i % 20 == 0)) && echo "after $i starts: $hangs hangs, $failed loud failures, $stuck ignored SIGTERM, $ok good"
    wait "$pid" 2>/dev/null
done
echo "mesh_join: $hangs hangs, $failed loud failures, $stuck ignored SIGTERM, $ok good starts in $RUNS starts" \
    "(shards $SHARDS, hogs $HOGS, wait ${WAIT_S}s)"
