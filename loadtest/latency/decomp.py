#!/usr/bin/env python3
"""Reads `perf script` of sched:sched_wakeup, sched:sched_switch and the f(data)sync syscalls, prints for each named
thread how long it waited for a CPU after a wake-up or a preemption (percentiles), how long it ran, who preempted it,
and the fsync durations. Usage: perf script -i F | decomp.py TID=name ... (see perfrun.sh)."""
import sys, re, collections
names = dict(a.split("=", 1) for a in sys.argv[1:])
woken = {}; delays = collections.defaultdict(list); fs_enter = {}; fs = []; runs = collections.defaultdict(list); on = {}
preempted_by = collections.defaultdict(collections.Counter)
ts_re = re.compile(r"\s(\d+\.\d+):\s+([\w:]+):")
for line in sys.stdin:
    m = ts_re.search(line)
    if not m: continue
    t = float(m.group(1)); ev = m.group(2)
    if ev in ("sched:sched_wakeup", "sched:sched_waking", "sched:sched_wakeup_new"):
        pm = re.search(r"pid=(\d+)", line)
        if pm and pm.group(1) in names and ev != "sched:sched_waking": woken[pm.group(1)] = t
    elif ev == "sched:sched_switch":
        prev = re.search(r"prev_pid=(\d+).*prev_state=(\S+)", line); nxt = re.search(r"next_pid=(\d+)", line)
        nc = re.search(r"next_comm=(.*?) next_pid", line)
        if prev and prev.group(1) in names:
            p = prev.group(1)
            if p in on: runs[p].append(t - on.pop(p))
            if prev.group(2) in ("R", "R+"):
                woken[p] = t  # preempted: waits from now
                preempted_by[p][nc.group(1) if nc else "?"] += 1
        if nxt and nxt.group(1) in names:
            n = nxt.group(1); on[n] = t
            if n in woken: delays[n].append(t - woken.pop(n))
    elif "sync" in ev:
        pm = re.match(r"\s*(.*?)\s+(\d+)\s", line)
        tid = pm.group(2) if pm else "?"
        if "enter" in ev: fs_enter[tid] = t
        elif tid in fs_enter: fs.append(t - fs_enter.pop(tid))
def pct(v, q):
    v = sorted(v); return v[min(len(v) - 1, int(q * len(v)))] * 1e3 if v else float("nan")
for tid, name in names.items():
    d = delays[tid]
    print(f"{name:12} wakeups/preempt-waits {len(d):6}  wait-for-CPU ms p50 {pct(d,.5):.3f} p90 {pct(d,.9):.3f} p99 {pct(d,.99):.3f} p999 {pct(d,.999):.3f} max {pct(d,1):.2f}  sum {sum(d)*1e3:.0f} ms"
          f" | run ms p50 {pct(runs[tid],.5):.3f} p99 {pct(runs[tid],.99):.3f}  | preempted by {preempted_by[tid].most_common(4)}")
if fs: print(f"fsync n {len(fs)} ms p50 {pct(fs,.5):.2f} p90 {pct(fs,.9):.2f} p99 {pct(fs,.99):.2f} p999 {pct(fs,.999):.2f} max {pct(fs,1):.2f}")
