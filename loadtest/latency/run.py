#!/usr/bin/env python3
"""One fanout run at 40,000 deliveries/s (2,000 clients, rooms of 100, 400 publishes/s) against one server, with the
CPU time and run-queue wait of every busy thread of the server and of the load generator over the measured phase
(`/proc/PID/task/TID/schedstat`: the time a thread was runnable but not running). Prints one JSON line.

  python3 loadtest/latency/run.py --label default --bin target/release/shardcast [--env K=V] [--fifo shard-] ...

`--fifo PREFIX` puts the server threads whose name starts with PREFIX in SCHED_FIFO 10 (`chrt`, needs root) and
`--lg-fifo` the load generator: an experiment (what the latency is when no thread waits for a CPU), not a setting.
Loopback only; the server is stopped (SIGTERM, then SIGKILL) at the end."""
import json, os, subprocess, sys, time, socket, signal, argparse, shutil
ap = argparse.ArgumentParser()
ap.add_argument("--label", required=True)
ap.add_argument("--bin", required=True)
ap.add_argument("--port", type=int, default=4850)
ap.add_argument("--env", action="append", default=[])          # K=V for the server
ap.add_argument("--fifo", action="append", default=[])         # thread-name prefix -> SCHED_FIFO 10
ap.add_argument("--lg-fifo", action="store_true")
ap.add_argument("--duration", type=float, default=6)
ap.add_argument("--lg", default="target/release/shardcast-loadtest")
ap.add_argument("--server-args", default="")
ap.add_argument("--peer", action="store_true")
a = ap.parse_args()
SECRET = "shardcast-loadtest-secret-0123456789abcdef"
import tempfile
work = tempfile.mkdtemp(prefix="shardcast-latency-")
db = f"{work}/db"
env = dict(os.environ, SHARDCAST_JWT_SECRET=SECRET, SHARDCAST_USER_WRITES_PER_S="0", SHARDCAST_USER_WRITE_BYTES_PER_S="0")
for kv in a.env:
    k, v = kv.split("=", 1); env[k] = v
if a.peer:
    cmd = [a.bin, "--listen", f"127.0.0.1:{a.port}", "--jwt-secret", SECRET]
else:
    cmd = [a.bin, "serve", "--listen", f"127.0.0.1:{a.port}", "--db-path", db, "--echo-event"] + a.server_args.split()
log = open(f"{work}/server.log", "w")
srv = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", a.port), 0.2).close(); break
    except OSError:
        time.sleep(0.1)
def threads(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = open(f"/proc/{pid}/task/{t}/comm").read().strip()
            ss = open(f"/proc/{pid}/task/{t}/schedstat").read().split()
            st = open(f"/proc/{pid}/task/{t}/status").read()
            vol = int([l for l in st.splitlines() if l.startswith("voluntary_ctxt")][0].split()[1])
            inv = int([l for l in st.splitlines() if l.startswith("nonvoluntary_ctxt")][0].split()[1])
            out[t] = (comm, int(ss[0]), int(ss[1]), int(ss[2]), vol, inv)
        except OSError:
            pass
    return out
def apply(pid, spec):
    for t, (comm, *_r) in threads(pid).items():
        if any(comm.startswith(pre) for pre in spec):
            subprocess.run(["chrt", "-f", "-p", "10", t], check=True)
apply(srv.pid, a.fifo)
lgargs = [a.lg, "fanout", "--url", f"http://127.0.0.1:{a.port}", "--server-pid", str(srv.pid), "--label", a.label,
          "--clients", "2000", "--rooms", "20", "--rate", "400", "--duration-s", str(a.duration)]
if not a.peer:
    lgargs += ["--claim", 'companies=["loadtest"]', "--create-rooms-path", "/companies/loadtest/workspaces/loadtest/channels"]
lg = subprocess.Popen(lgargs, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
if a.lg_fifo:
    subprocess.run(["chrt", "-f", "-p", "10", str(lg.pid)], check=True)
snap = {}
load = None
for line in lg.stderr:
    if " publish " in line and "A" not in snap:
        snap["A"] = (time.time(), threads(srv.pid), threads(lg.pid)); load = open("/proc/loadavg").read().split()[0]
    if " drain " in line and "B" not in snap:
        snap["B"] = (time.time(), threads(srv.pid), threads(lg.pid))
if "A" in snap and "B" not in snap:
    snap["B"] = (time.time(), threads(srv.pid), threads(lg.pid))
out = lg.stdout.read().strip().splitlines()
lg.wait()
srv.send_signal(signal.SIGTERM)
try: srv.wait(10)
except subprocess.TimeoutExpired: srv.kill(); srv.wait()
j = json.loads(out[-1]) if out and out[-1].startswith("{") else {"error": out[-5:]}
r = {"label": a.label, "load1": load}
for k in ("deliveries_per_s", "server_cpu_us_per_delivery", "missed", "duplicated", "latency_us", "loadtest_cpu_s", "publishes_failed"):
    if k in j: r[k] = j[k]
if "latency_us" not in j:
    r["raw"] = {k: v for k, v in j.items() if not isinstance(v, (dict, list))}
if "A" in snap and "B" in snap:
    dt = snap["B"][0] - snap["A"][0]
    per = {}
    for idx, who in ((1, "srv"), (2, "lg")):
        A, B = snap["A"][idx], snap["B"][idx]
        for t, b in B.items():
            if t not in A: continue
            x = A[t]; cpu = (b[1] - x[1]) / 1e6; wait = (b[2] - x[2]) / 1e6; sl = b[3] - x[3]
            if cpu < 5: continue
            name = who + ":" + b[0]
            if name in per:  # several threads of one name (tokio's workers): one entry each
                name += ":" + t
            per[name] = {"cpu%": round(cpu / dt / 10, 1), "rq_wait_ms_per_s": round(wait / dt, 1),
                         "rq_wait_us_per_slice": round(wait * 1000 / max(sl, 1), 1), "slices_per_s": round(sl / dt),
                         "invol_per_s": round((b[5] - x[5]) / dt)}
    r["threads"] = per
print(json.dumps(r))
shutil.rmtree(work, ignore_errors=True)
