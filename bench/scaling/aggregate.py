#!/usr/bin/env python3
"""bench/scaling/aggregate.py DIR — sweep.json and sweep.csv from a jobs/scaling.sh results folder.

Reads DIR/runs/index.tsv (one line per run), the JSON reports it names and DIR/meta.json; the
warm-up runs (run = warm<k>) and failed runs are left out. Per point (scaling, method, sparsity,
exchange, N, ranks), over the recorded repetitions: median, min, max, quartiles of the attention
time (each rank's plan + exchange + compute, max over ranks: input generation and verification
are not in it), the medians of GFLOP/s, bytes and of each phase's per-rank min / avg / max, and
the efficiency against the smallest rank count run for the same (scaling, method, sparsity,
exchange, N or tokens per rank): per-rank throughput (dense-equivalent GFLOP/s / ranks) relative
to that point's, which is T_ref p_ref / (T p) for strong scaling and accounts for the work that
grows with N^2 in weak scaling. Only the standard library (docs/SCALING.md).
"""
import csv
import json
import os
import statistics
import sys

PHASES = ["generate", "summarise", "select", "exchange", "compute", "download", "verify", "total",
          "attention"]


def quantiles(xs):
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def read_index(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def hosts_of(rank_map):
    hs = []
    for line in (rank_map or "").splitlines():
        if "host " in line:
            h = line.split("host ", 1)[1].split(",", 1)[0].strip()
            if h not in hs:
                hs.append(h)
    return hs


def aggregate(d):
    runs = read_index(os.path.join(d, "runs", "index.tsv"))
    meta_path = os.path.join(d, "meta.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    groups, order, failed = {}, [], 0
    hosts, backends, versions, transports = [], set(), set(), set()
    for r in runs:
        if not r["run"].startswith("rep"):
            continue
        if r["rc"] != "0":
            failed += 1
            continue
        rep = json.load(open(os.path.join(d, r["report"])))
        key = (r["scaling"], r["method"], float(r["sparsity"]), r["exchange"], int(r["seq_len"]),
               int(r["ranks"]))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append((r, rep))
        for h in hosts_of(rep.get("rank_map")):
            if h not in hosts:
                hosts.append(h)
        backends.add(rep.get("backend", ""))
        transports.add(rep.get("transport", ""))
        versions.add(rep.get("versions", ""))

    points = []
    for key in order:
        sc, m, s, e, n, p = key
        reps = groups[key]
        lay = [rep["layers"][0] for _, rep in reps]
        att = [l["time_s"]["attention"] for l in lay]
        q1, q3 = quantiles(att)
        med = lambda xs: statistics.median(xs)
        pt = {
            "scaling": sc, "method": m, "sparsity": s, "exchange": e, "seq_len": n, "ranks": p,
            "tokens_per_rank": n // p, "reps": len(reps),
            "binding": reps[0][0]["binding"],
            "threads_per_rank": reps[0][1].get("threads_per_rank"),
            "attention_s": {"median": med(att), "min": min(att), "max": max(att), "q1": q1, "q3": q3},
            "total_s_median": med([l["time_s"]["total"] for l in lay]),
            "wall_s_median": med([rep.get("wall_s", 0) for _, rep in reps]),
            "launch_s_median": med([float(r["launch_s"]) for r, _ in reps]),
            "gflops_effective": med([l["gflops_effective"] for l in lay]),
            "gflops_sparse_aware": med([l["gflops_sparse_aware"] for l in lay]),
            "sparsity_measured": med([l["sparsity_measured"] for l in lay]),
            "bytes_moved": med([l["bytes_moved"] for l in lay]),
            "bytes_dense_ring": med([l["bytes_dense_ring"] for l in lay]),
            "bytes_recv_max_rank": med([l["bytes_recv_max_rank"] for l in lay]),
            "phases": {},
        }
        for ph in PHASES:
            mx = [l["time_s"].get(ph, 0) for l in lay]
            mn = [l.get("time_s_min", {}).get(ph, float("nan")) for l in lay]
            av = [l.get("time_s_avg", {}).get(ph, float("nan")) for l in lay]
            pt["phases"][ph] = {"min": med(mn), "avg": med(av), "max": med(mx)}
        a = pt["phases"]["attention"]
        pt["attention_imbalance"] = a["max"] / a["avg"] if a["avg"] and a["avg"] == a["avg"] else None
        points.append(pt)

    # Efficiency and speedup against the smallest rank count of the same series.
    def series(pt):
        x = pt["seq_len"] if pt["scaling"] == "strong" else pt["tokens_per_rank"]
        return (pt["scaling"], pt["method"], pt["sparsity"], pt["exchange"], x)

    ref = {}
    for pt in points:
        k = series(pt)
        if k not in ref or pt["ranks"] < ref[k]["ranks"]:
            ref[k] = pt
    for pt in points:
        r = ref[series(pt)]
        pt["efficiency_ref"] = "np%d" % r["ranks"]
        g, g0 = pt["gflops_effective"], r["gflops_effective"]
        pt["efficiency"] = (g / pt["ranks"]) / (g0 / r["ranks"]) if g0 > 0 else None
        t, t0 = pt["attention_s"]["median"], r["attention_s"]["median"]
        pt["speedup"] = t0 / t if pt["scaling"] == "strong" and t > 0 else None
        # the time perfect scaling would give: the reference's per-rank throughput, this work
        w, w0 = pt["gflops_effective"] * t, g0 * t0
        pt["ideal_attention_s"] = t0 * (w / w0) * (r["ranks"] / pt["ranks"]) if w0 > 0 else None

    meta = dict(meta)
    meta.update({"hosts": hosts, "backends": sorted(backends), "transports": sorted(transports),
                 "versions_reported": sorted(versions), "points": len(points),
                 "runs_recorded": sum(len(v) for v in groups.values()), "runs_failed": failed})
    return meta, points


COLUMNS = ["scaling", "method", "sparsity", "exchange", "seq_len", "ranks", "tokens_per_rank",
           "reps", "threads_per_rank", "binding", "attention_s_median", "attention_s_min",
           "attention_s_max", "attention_s_q1", "attention_s_q3", "ideal_attention_s",
           "efficiency", "efficiency_ref", "speedup", "gflops_effective", "gflops_sparse_aware",
           "sparsity_measured", "bytes_moved", "bytes_dense_ring", "bytes_recv_max_rank",
           "attention_imbalance", "total_s_median", "wall_s_median", "launch_s_median"]
COLUMNS += ["%s_%s_s" % (ph, k) for ph in PHASES for k in ("min", "avg", "max")]


def row(pt):
    r = {k: pt.get(k) for k in COLUMNS if k in pt}
    for k in ("median", "min", "max", "q1", "q3"):
        r["attention_s_" + k] = pt["attention_s"][k]
    for ph in PHASES:
        for k in ("min", "avg", "max"):
            r["%s_%s_s" % (ph, k)] = pt["phases"][ph][k]
    return {k: ("" if r.get(k) is None else ("%.6g" % r[k] if isinstance(r[k], float) else r[k]))
            for k in COLUMNS}


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(sys.argv) == 2 else 2
    d = sys.argv[1]
    meta, points = aggregate(d)
    with open(os.path.join(d, "sweep.json"), "w") as f:
        json.dump({"meta": meta, "points": points}, f, indent=1)
    with open(os.path.join(d, "sweep.csv"), "w", newline="") as f:
        f.write("".join("# %s: %s\n" % (k, json.dumps(v)) for k, v in meta.items()))
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for pt in points:
            w.writerow(row(pt))
    # A summary table on stdout.
    print("# %-6s %-15s %5s %-10s %7s %3s %10s %10s %6s %6s %12s" %
          ("scale", "method", "sp", "exchange", "N", "np", "attn_s", "spread", "eff", "vs",
           "bytes_moved"))
    for pt in points:
        a = pt["attention_s"]
        print("  %-6s %-15s %5.2f %-10s %7d %3d %10.4f %10.4f %6.3f %6s %12.0f" %
              (pt["scaling"], pt["method"], pt["sparsity"], pt["exchange"], pt["seq_len"],
               pt["ranks"], a["median"], a["max"] - a["min"], pt["efficiency"] or 0,
               pt["efficiency_ref"], pt["bytes_moved"]))
    print("# %d points, %d runs recorded, %d failed; %s/sweep.json, sweep.csv" %
          (meta["points"], meta["runs_recorded"], meta["runs_failed"], d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
