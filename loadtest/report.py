#!/usr/bin/env python3
"""Comparison table (markdown, stdout) and plot (PNG) from the JSON lines of shardcast-loadtest runs.

    python3 loadtest/report.py results.jsonl [--plot compare.png]

The table needs only the standard library; the plot needs matplotlib (compare.sh installs it into a venv under
target/). Ratios are "peer / shardcast" for costs (CPU per delivery, latency, RSS: >1 means shardcast is cheaper)
and "shardcast / peer" for rates, so >1 always means shardcast is better.

Lines with "server": "floor" are kernel-floor runs (../shared/tools/floor.c) of a scenario's shape, made by compare.sh
in the same run: their CPU per write is the floor, and "ratio to floor" is (CPU per delivery) / floor, so 1.00x is the
physical limit of one write per delivery (hotroom also shows the floor of 16 frames per write: coalescing's limit).
"""
import argparse
import json
import sys

ORDER = ["shardcast", "node", "socketioxide"]
NAMES = {"node": "socket.io 4.8 (Node)", "socketioxide": "socketioxide 0.18", "shardcast": "shardcast"}


def load(path):
    runs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                runs.append(json.loads(line))
    return runs


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def key(r):
    """The table a run belongs to: its scenario, and for publish also its rate (publish runs at 400/s and 4,000/s)."""
    sc = r.get("scenario", "?")
    if sc == "publish":
        rate = r.get("publish_rate_target_per_s")
        return f"publish at {rate:g}/s" if isinstance(rate, (int, float)) else "publish"
    return sc


def floor_ratio(value, floor):
    if value in (None, 0) or floor is None or not floor.get("cpu_us_per_write"):
        return None
    per_frame = floor["cpu_us_per_write"] / max(floor.get("frames_per_write", 1), 1)
    return value / per_frame


def ratio(ours, theirs, higher_is_better):
    if ours in (None, 0) or theirs in (None, 0):
        return "-"
    r = ours / theirs if higher_is_better else theirs / ours
    return f"{r:.2f}x"


# (column title, getter, digits, higher is better)
COLUMNS = {
    "fanout": [
        ("deliveries/s", lambda r: r.get("deliveries_per_s"), 0, True),
        ("CPU us/delivery", lambda r: r.get("server_cpu_us_per_delivery"), 2, False),
        ("ratio to floor", lambda r: r.get("_ratio_to_floor"), 2, None),
        ("p50 us", lambda r: r["latency_us"]["p50"], 0, False),
        ("p99 us", lambda r: r["latency_us"]["p99"], 0, False),
        ("p999 us", lambda r: r["latency_us"]["p999"], 0, False),
        ("RSS/conn B", lambda r: r.get("server_rss_per_connection_bytes"), 0, False),
        ("missed", lambda r: r.get("missed"), 0, None),
        ("dup", lambda r: r.get("duplicated"), 0, None),
    ],
    "hotroom": None,  # fanout's, plus the ratio to the 16-frames-per-write floor
    "publish": [
        ("creates/s", lambda r: r.get("publishes_per_s"), 0, True),
        ("CPU us/CRUD event", lambda r: r.get("server_cpu_us_per_crud_event"), 1, False),
        ("ratio to floor", lambda r: r.get("_ratio_to_floor"), 2, None),
        ("p50 us", lambda r: r["latency_us"]["p50"], 0, False),
        ("p99 us", lambda r: r["latency_us"]["p99"], 0, False),
        ("p999 us", lambda r: r["latency_us"]["p999"], 0, False),
        ("failed", lambda r: r.get("publishes_failed"), 0, None),
        ("missed", lambda r: r.get("missed"), 0, None),
        ("dup", lambda r: r.get("duplicated"), 0, None),
    ],
    "connect": [
        ("connections/s", lambda r: r.get("connections_per_s"), 0, True),
        ("connect s", lambda r: r.get("connect_s"), 2, False),
        ("CPU us/connection", lambda r: r.get("server_connect_cpu_us_per_connection"), 1, False),
        ("p99 connect us", lambda r: (r.get("connect_latency_us") or {}).get("p99"), 0, False),
        ("ready", lambda r: r.get("clients_ready"), 0, None),
        ("failed", lambda r: r.get("clients_failed"), 0, None),
    ],
    "idle": [
        ("RSS/conn B", lambda r: r.get("server_rss_per_connection_bytes"), 0, False),
        ("CPU % one core", lambda r: r.get("server_cpu_pct_one_core"), 2, False),
        ("ready", lambda r: r.get("clients_ready"), 0, None),
        ("lost", lambda r: r.get("clients_lost"), 0, None),
    ],
    "echo": [
        ("acks/s", lambda r: (r.get("acks_received") or 0) / r["measured_s"] if r.get("measured_s") else None, 0, True),
        ("CPU us/ack", lambda r: r.get("server_cpu_us_per_ack"), 2, False),
        ("ratio to floor", lambda r: r.get("_ratio_to_floor"), 2, None),
        ("rtt p50 us", lambda r: r["ack_rtt_us"]["p50"], 0, False),
        ("rtt p99 us", lambda r: r["ack_rtt_us"]["p99"], 0, False),
        ("rtt p999 us", lambda r: r["ack_rtt_us"]["p999"], 0, False),
        ("lost acks", lambda r: r.get("acks_sent", 0) - r.get("acks_received", 0), 0, None),
    ],
}
# Two nodes and Redis: CPU summed over the three processes; cross-node = delivered on the node the publish did not go to.
COLUMNS["cluster"] = [
    ("deliveries/s", lambda r: r.get("deliveries_per_s"), 0, True),
    ("CPU us/delivery (2 nodes + Redis)", lambda r: r.get("server_cpu_us_per_delivery"), 2, False),
    ("p50 us", lambda r: r["latency_us"]["p50"], 0, False),
    ("cross-node p50 us", lambda r: (r.get("latency_cross_node_us") or {}).get("p50"), 0, False),
    ("cross-node p99 us", lambda r: (r.get("latency_cross_node_us") or {}).get("p99"), 0, False),
    ("cross-node p999 us", lambda r: (r.get("latency_cross_node_us") or {}).get("p999"), 0, False),
    ("failed", lambda r: r.get("publishes_failed"), 0, None),
    ("missed", lambda r: r.get("missed"), 0, None),
    ("dup", lambda r: r.get("duplicated"), 0, None),
]
COLUMNS["hotroom"] = COLUMNS["fanout"][:3] + [
    ("ratio to 16-frame floor", lambda r: r.get("_ratio_to_floor16"), 2, None)
] + COLUMNS["fanout"][3:]
# The CPU figure each scenario compares with its floor.
CPU_FIELD = {"fanout": "server_cpu_us_per_delivery", "hotroom": "server_cpu_us_per_delivery",
             "publish": "server_cpu_us_per_crud_event", "echo": "server_cpu_us_per_ack"}


def table(runs):
    out = ["Every server and the kernel floor set TCP_NODELAY on their sockets. The peers store nothing; shardcast "
           "stores every created message durably (fsync'd group commit) before it answers."]
    groups = []
    for r in runs:
        if key(r) not in groups:
            groups.append(key(r))
    for g in groups:
        group = [r for r in runs if key(r) == g]
        sc = group[0]["scenario"]
        if sc not in COLUMNS:
            continue
        floors = {r.get("frames_per_write", 1): r for r in group if r.get("server") == "floor"}
        rows = {r["server"]: r for r in group if r.get("server") != "floor"}
        for r in rows.values():
            cpu = r.get(CPU_FIELD.get(sc, ""))
            r["_ratio_to_floor"] = floor_ratio(cpu, floors.get(1))
            r["_ratio_to_floor16"] = floor_ratio(cpu, floors.get(16))
        cols = COLUMNS[sc]
        clients = next((r.get("clients") for r in rows.values() if "clients" in r), "?")
        out.append(f"\n### {g} ({clients} clients)\n")
        out.append("| server | " + " | ".join(c[0] for c in cols) + " |")
        out.append("|---" * (len(cols) + 1) + "|")
        ours = rows.get("shardcast")
        if ours is None:
            out.append("| shardcast | not measured yet | " + " | ".join(["-"] * (len(cols) - 1)) + " |")
        for name in ORDER + [n for n in rows if n not in ORDER]:
            r = rows.get(name)
            if r is None:
                continue
            if "error" in r:
                out.append(f"| {NAMES.get(name, name)} | " + " | ".join(["not measured: " + r["error"]] + ["-"] * (len(cols) - 1)) + " |")
                continue
            cells = [fmt(get(r), d) for (_, get, d, _) in cols]
            out.append(f"| {NAMES.get(name, name)} | " + " | ".join(cells) + " |")
        if ours is not None and "error" not in ours:
            for name in ORDER[1:]:
                r = rows.get(name)
                if r is None or "error" in r:
                    continue
                cells = [ratio(get(ours), get(r), hib) if hib is not None else "" for (_, get, _, hib) in cols]
                out.append(f"| shardcast vs {NAMES[name]} | " + " | ".join(cells) + " |")
        for frames, f in sorted(floors.items()):
            shape = f"floor {f.get('conns')} {f.get('group')} {f.get('rate')} _ {f.get('bytes')}"
            per = floor_ratio(1.0, f)
            per_frame = (1.0 / per) if per else None
            note = f"{fmt(per_frame, 2)} us per frame" + (f" ({frames} frames per write)" if frames > 1 else "")
            out.append(f"\nKernel floor (`{shape}`): {note}, {fmt(f.get('writes_per_s'), 0)} writes/s.")
    return "\n".join(out)


def plot(runs, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not available: no plot)", file=sys.stderr)
        return
    measured = [r for r in runs if "error" not in r and r.get("server") != "floor"
                and r["scenario"] in ("fanout", "hotroom")]
    if not measured:
        print("(no fanout/hotroom results: no plot)", file=sys.stderr)
        return
    scenarios = [s for s in ("fanout", "hotroom") if any(r["scenario"] == s for r in measured)]
    fig, axes = plt.subplots(len(scenarios), 2, figsize=(11, 3.6 * len(scenarios)), squeeze=False)
    colors = {"shardcast": "#d62728", "node": "#2ca02c", "socketioxide": "#1f77b4"}
    for row, sc in enumerate(scenarios):
        rows = {r["server"]: r for r in measured if r["scenario"] == sc}
        names = [n for n in ORDER if n in rows]
        ax = axes[row][0]
        qs = ["p50", "p99", "p999", "max"]
        width = 0.8 / max(len(names), 1)
        for i, n in enumerate(names):
            vals = [max(rows[n]["latency_us"][q], 1) / 1000 for q in qs]
            ax.bar([x + i * width for x in range(len(qs))], vals, width, label=NAMES[n], color=colors.get(n))
        ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(qs))], qs)
        ax.set_yscale("log")
        ax.set_ylabel("publish -> delivery latency (ms, log)")
        ax.set_title(f"{sc}: latency percentiles ({rows[names[0]]['clients']} clients)")
        ax.legend(fontsize=8)
        ax = axes[row][1]
        cpu = [rows[n].get("server_cpu_us_per_delivery") or 0 for n in names]
        ax.bar([NAMES[n] for n in names], cpu, color=[colors.get(n) for n in names])
        for i, v in enumerate(cpu):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
        if "shardcast" not in rows:
            ax.text(0.98, 0.95, "shardcast: not measured yet", transform=ax.transAxes, ha="right", va="top",
                    fontsize=9, color=colors["shardcast"])
        ax.set_ylabel("server CPU us per delivery")
        ax.set_title(f"{sc}: server CPU per delivery (lower is better)")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"(plot written to {path})", file=sys.stderr)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("jsonl")
    p.add_argument("--plot")
    a = p.parse_args()
    runs = load(a.jsonl)
    print(table(runs))
    if a.plot:
        plot(runs, a.plot)


if __name__ == "__main__":
    main()
