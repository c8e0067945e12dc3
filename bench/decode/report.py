#!/usr/bin/env python3
"""report.py — merges the decode runs of bench/decode/run.sh (and its peers) into one record.

Usage: python3 report.py speed   WORK OUT_PREFIX [--peers PEERS.json] [--backend B] [--quick]
       python3 report.py quality WORK OUT_PREFIX [--backend B] [--quick]

WORK holds the per-run JSON reports of sparsering (s_<method>_n<N>_b<B>.json in the speed mode,
q_<method>_sp<S>_n<N>.json in the quality mode), runs.tsv (name, exit code, wall seconds),
device.txt and version.txt, as run.sh writes them. Standard library only.

speed:   OUT_PREFIX.json — a header (device, versions, config) and one row per (method, N,
         batch): step_ms, tokens_per_s, kv_gbps (the binary's kv_bytes_read / step time),
         kv_frac_of_copy (kv_gbps over the peer's measured bandwidth; the JSON names which one),
         speedup_vs_dense (our dense step time / this step time, same N and batch), the fastest
         SDPA backend on the same (N, batch) and ours_vs_sdpa (SDPA time / our time: > 1 means
         ours is faster); then the goals: KV GB/s >= 90% of the measured bandwidth (dense rows,
         which stream the whole cache) and quest (budget 1/20) >= 10x faster per step than our
         dense at 128K and 1M (batch 1). OUT_PREFIX.txt — the printed table and goal lines.
quality: OUT_PREFIX_quality.json and OUT_PREFIX_quality.txt — relative error, attention recall
         and needle hit rate against exact dense decode per method, N and sparsity.
"""
import argparse
import datetime
import json
import os
import re
import subprocess

METHODS = ["dense", "quest", "snapkv", "ada_snapkv"]
MRE = "(" + "|".join(METHODS) + ")"
LINES = []


def out(s=""):
    print(s)
    LINES.append(s)


def sh(args):
    try:
        return subprocess.run(args, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001 — a missing tool gives None
        return None


def read_text(path):
    try:
        with open(path) as f:
            return [l.strip() for l in f if l.strip()]
    except OSError:
        return []


def yaml_int(cfg, key):
    m = re.search(r"^\s*%s:\s*(-?\d+)\s*$" % re.escape(key), cfg or "", re.M)
    return int(m.group(1)) if m else None


def load_runs(work, pattern):
    """The runs of runs.tsv (or every matching JSON when there is none) with their reports."""
    status = {}
    for line in read_text(os.path.join(work, "runs.tsv")):
        parts = line.split("\t")
        if len(parts) >= 3:
            status[parts[0]] = (int(parts[1]), float(parts[2]))
    names = list(status) or sorted(f[:-5] for f in os.listdir(work) if f.endswith(".json"))
    runs, failed = [], []
    for name in names:
        m = re.match(pattern, name)
        if not m:
            continue
        rc, wall = status.get(name, (0, None))
        path = os.path.join(work, name + ".json")
        rep = None
        if os.path.exists(path):
            try:
                with open(path) as f:
                    rep = json.load(f)
            except ValueError:
                rep = None
        if rc != 0 or rep is None or not rep.get("layers") or "decode" not in rep["layers"][0]:
            why = "exit %d" % rc if rc != 0 else "no decode report"
            if rc in (124, 137):
                why += " (timed out)"
            log = read_text(os.path.join(work, name + ".log"))
            failed.append({"case": name, "exit": rc, "wall_s": wall, "why": why,
                           "log_tail": log[-3:]})
            continue
        runs.append((name, m, rc, wall, rep))
    return runs, failed


def header(work, args, reps, mode, peers=None):
    dev = read_text(os.path.join(work, "device.txt"))
    first = reps[0] if reps else {}
    cfg = first.get("config_yaml", "")
    git = sh(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "describe", "--always",
              "--dirty", "--abbrev=12"])
    driver = sh(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    versions = {"sparsering": first.get("versions"),
                "binary": (read_text(os.path.join(work, "version.txt")) or [None])[0],
                "git": git, "driver": driver.splitlines()[0] if driver else None}
    if peers and peers.get("available"):
        versions.update({"torch": peers.get("torch"), "torch_cuda": peers.get("cuda"),
                         "cudnn": peers.get("cudnn")})
    gpu = dev[0] if dev and len(dev) > 1 else None
    return {
        "benchmark": "bench/decode/run.sh" + (" --quality" if mode == "quality" else ""),
        "mode": mode,
        "quick": args.quick,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": {"gpu_nvidia_smi": gpu, "host_cpu": dev[-1] if dev else None,
                   "torch_device": peers.get("device") if peers and peers.get("available")
                   else None},
        "backend": first.get("backend") or args.backend,
        "versions": versions,
        "rank_map": first.get("rank_map"),
        "config": {"ranks": first.get("ranks"), "threads_per_rank": first.get("threads_per_rank"),
                   "q_heads": yaml_int(cfg, "q_heads"), "kv_heads": yaml_int(cfg, "kv_heads"),
                   "head_dim": yaml_int(cfg, "head_dim"), "layers": yaml_int(cfg, "layers"),
                   "input": "synthetic, calibrated profile (the default)",
                   "prefill": "none (the prompt's K/V only fill the cache)",
                   "step": "one new token for every sequence of the batch"},
    }


def fmt(x, w, p, suffix=""):
    if x is None:
        return "%*s" % (w, "-")
    return "%*.*f%s" % (w - len(suffix), p, x, suffix)


def speed(args):
    runs, failed = load_runs(args.work, r"^s_%s_n(\d+)_b(\d+)$" % MRE)
    peers = {"available": False, "reason": "no peers file"}
    if args.peers and os.path.exists(args.peers):
        try:
            with open(args.peers) as f:
                peers = json.load(f)
        except ValueError as e:
            peers = {"available": False, "reason": "unreadable peers file: %s" % e}
    bw = peers.get("bandwidth", {}) if peers.get("available") else {}
    if bw.get("read_gbps"):
        denom = {"name": "read_gbps", "gbps": bw["read_gbps"], "how": bw.get("read_how"),
                 "note": "kv_frac_of_copy = kv_gbps / read bandwidth (torch.sum over a bf16 "
                         "tensor on the same GPU, bytes/time); the copy bandwidth "
                         "(2*bytes/time) is in 'bandwidth'"}
    elif bw.get("copy_gbps"):
        denom = {"name": "copy_gbps", "gbps": bw["copy_gbps"], "how": bw.get("copy_how"),
                 "note": "no read bandwidth measured: kv_frac_of_copy = kv_gbps / copy bandwidth"}
    else:
        denom = {"name": None, "gbps": None,
                 "note": "no bandwidth measured (%s): kv_frac_of_copy is null"
                         % peers.get("reason", "peers unavailable")}
    sdpa = {(r["seq_len"], r["batch"]): r for r in peers.get("sdpa_best", [])}

    rows, ours = [], []
    for name, m, rc, wall, rep in runs:
        L = rep["layers"][0]
        d = L["decode"]
        row = {"method": rep.get("method", m.group(1)), "seq_len": rep.get("seq_len"),
               "batch": d["batch"], "steps": d["steps"], "budget_tokens": d["budget_tokens"],
               "step_ms": d["step_s"] * 1e3, "tokens_per_s": d["tokens_per_s"],
               "kv_gbps": d["kv_gbps"], "kv_bytes_read": d["kv_bytes_read"],
               "sparsity_paper": L.get("sparsity_paper"),
               "sparsity_measured": L.get("sparsity_measured")}
        if (row["method"], row["seq_len"], row["batch"]) != (m.group(1), int(m.group(2)),
                                                              int(m.group(3))):
            row["note"] = "report differs from the case name %s" % name
        rows.append(row)
        ours.append({"case": name, "exit": rc, "wall_s": wall, "method": row["method"],
                     "seq_len": row["seq_len"], "backend": rep.get("backend"),
                     "threads_per_rank": rep.get("threads_per_rank"), "decode": d,
                     "time_s": L.get("time_s"), "sparsity_paper": L.get("sparsity_paper"),
                     "sparsity_measured": L.get("sparsity_measured"), "wall_s_report":
                     rep.get("wall_s")})
    rows.sort(key=lambda r: (r["seq_len"], r["batch"], METHODS.index(r["method"])
                             if r["method"] in METHODS else 9))
    dense = {(r["seq_len"], r["batch"]): r for r in rows if r["method"] == "dense"}
    for r in rows:
        r["kv_frac_of_copy"] = r["kv_gbps"] / denom["gbps"] if denom["gbps"] else None
        dn = dense.get((r["seq_len"], r["batch"]))
        r["speedup_vs_dense"] = dn["step_ms"] / r["step_ms"] if dn and r["step_ms"] > 0 else None
        s = sdpa.get((r["seq_len"], r["batch"]))
        r["sdpa_step_ms"] = s["ms"] if s else None
        r["sdpa_kv_gbps"] = s["kv_gbps"] if s else None
        r["sdpa_backend"] = s["backend"] if s else None
        r["ours_vs_sdpa"] = s["ms"] / r["step_ms"] if s and r["step_ms"] > 0 else None

    hdr = header(args.work, args, [x[4] for x in runs], "speed", peers)
    # bytes per cached value, from a dense run: kv_bytes_read over the values the steps read
    cfg = hdr["config"]
    bpv = None
    for r in rows:
        if r["method"] == "dense" and cfg["kv_heads"] and cfg["head_dim"]:
            vals = r["steps"] * r["batch"] * 2 * cfg["kv_heads"] * cfg["head_dim"] * \
                (r["seq_len"] + (r["steps"] + 1) / 2)
            bpv = round(r["kv_bytes_read"] / vals, 2)
            break
    cfg.update({"attention.sparsity": 0.95, "budget": "the paper's formulas at sparsity 0.95 "
                "(quest: token_budget = N/20; snapkv: capacity N/20; ada_snapkv: N/20 per kv-head "
                "on average)", "verify.rows": 0, "kv_cache_bytes_per_value": bpv,
                "step_ms": "the binary's decode.step_s: wall time of one step (all sequences of "
                "the batch), max over ranks",
                "kv_gbps": "the binary's kv_bytes_read / step time (GB = 1e9 bytes)",
                "speedup_vs_dense": "our dense step_ms / step_ms at the same N and batch",
                "ours_vs_sdpa": "SDPA step time / our step time (fastest SDPA backend; > 1: ours "
                "faster); SDPA reads the N prompt tokens in bf16, ours N + t at step t"})
    hdr["bandwidth"] = bw or None
    hdr["kv_frac_denominator"] = denom

    out("# %s; backend %s%s" % (hdr["versions"]["sparsering"] or hdr["versions"]["binary"],
                                hdr["backend"], "; --quick" if args.quick else ""))
    out("# device: %s; host: %s" % (hdr["device"]["gpu_nvidia_smi"] or "no nvidia-smi",
                                    hdr["device"]["host_cpu"] or "-"))
    for line in (hdr["rank_map"] or "").strip().split("\n"):
        if line:
            out("#   %s" % line)
    out("# model %s q-heads / %s kv-heads / d %s, %s layer, prefill none, sparsity 0.95; "
        "cache %s bytes per value" % (cfg["q_heads"], cfg["kv_heads"], cfg["head_dim"],
                                      cfg["layers"], bpv if bpv is not None else "?"))
    if peers.get("available"):
        out("# peers: %s, torch %s; bandwidth copy %s GB/s (2*bytes/time), read %s GB/s "
            "(torch.sum); SDPA %s" % (peers.get("device"), peers.get("torch"),
                                      fmt(bw.get("copy_gbps"), 1, 0), fmt(bw.get("read_gbps"), 1, 0),
                                      peers.get("gqa")))
    else:
        out("# peers: unavailable (%s)" % peers.get("reason", "?"))
    out("# frac_bw = KV GB/s / %s; vs_dense = dense step / step; vs_sdpa = SDPA step / our step"
        % (denom["name"] or "(no bandwidth measured)"))
    out("# %-11s %8s %3s %5s %7s %9s %10s %8s %7s %8s %9s %9s %7s" % (
        "method", "N", "B", "steps", "budget", "step_ms", "tokens/s", "KV_GB/s", "frac_bw",
        "vs_dense", "sdpa_ms", "sdpa_GB/s", "vs_sdpa"))
    for r in rows:
        out("  %-11s %8d %3d %5d %7d %9.4f %10.1f %8.1f %7s %8s %9s %9s %7s" % (
            r["method"], r["seq_len"], r["batch"], r["steps"], r["budget_tokens"], r["step_ms"],
            r["tokens_per_s"], r["kv_gbps"], fmt(r["kv_frac_of_copy"], 7, 3),
            fmt(r["speedup_vs_dense"], 8, 2, "x"), fmt(r["sdpa_step_ms"], 9, 4),
            fmt(r["sdpa_kv_gbps"], 9, 1), fmt(r["ours_vs_sdpa"], 7, 2, "x")))
    for f in failed:
        out("# FAILED %s: %s%s" % (f["case"], f["why"],
                                   (" — " + f["log_tail"][-1]) if f["log_tail"] else ""))

    goals = {}
    out("#")
    out("# goals:")
    # 1. KV GB/s >= 90% of the measured bandwidth, on the dense rows (the whole cache streamed).
    dr = [r for r in rows if r["method"] == "dense"]
    g = {"goal": "KV GB/s >= 90% of measured copy bandwidth", "threshold": 0.9,
         "rows": "dense (every N and batch)", "denominator": denom["name"],
         "denominator_gbps": denom["gbps"], "copy_gbps": bw.get("copy_gbps"),
         "read_gbps": bw.get("read_gbps")}
    if dr and denom["gbps"]:
        w = min(dr, key=lambda r: r["kv_frac_of_copy"])
        g.update({"worst_frac": w["kv_frac_of_copy"], "worst_kv_gbps": w["kv_gbps"],
                  "worst_at": {"seq_len": w["seq_len"], "batch": w["batch"]},
                  "met": w["kv_frac_of_copy"] >= 0.9})
        out("#   KV GB/s >= 90%% of measured copy bandwidth: dense worst %.1f GB/s at N=%d B=%d "
            "= %.1f%% of %s %.1f GB/s (copy %s GB/s, read %s GB/s) -> %s" % (
                w["kv_gbps"], w["seq_len"], w["batch"], 100 * w["kv_frac_of_copy"],
                denom["name"], denom["gbps"], fmt(bw.get("copy_gbps"), 1, 1),
                fmt(bw.get("read_gbps"), 1, 1), "met" if g["met"] else "NOT MET"))
        per = []
        for m in METHODS[1:]:
            mr = [r for r in rows if r["method"] == m]
            if mr:
                lo = min(r["kv_frac_of_copy"] for r in mr)
                hi = max(r["kv_frac_of_copy"] for r in mr)
                per.append("%s %.0f-%.0f%%" % (m, 100 * lo, 100 * hi))
        if per:
            out("#     (for information, sparse methods' KV GB/s as a share of it: %s)"
                % ", ".join(per))
    else:
        g["met"] = None
        out("#   KV GB/s >= 90%% of measured copy bandwidth: %s -> NOT MET (unknown: %s)" % (
            "dense best %.1f GB/s" % max(r["kv_gbps"] for r in dr) if dr else "no dense run",
            "no bandwidth measured, peers unavailable" if not denom["gbps"] else "no dense run"))
    goals["kv_gbps_vs_bandwidth"] = g
    # 2. quest >= 10x faster per step than dense at 128K and 1M (batch 1).
    want = [131072, 1048576]
    qr = {r["seq_len"]: r for r in rows if r["method"] == "quest" and r["batch"] == 1}
    ns = [n for n in want if n in qr] or sorted(qr)
    g = {"goal": "quest (budget 1/20) >= 10x faster per step than our dense at 128K and 1M",
         "threshold": 10.0, "batch": 1, "at_seq_len": ns, "speedups": {}}
    parts, ok = [], bool(ns)
    for n in ns:
        q = qr[n]
        sp = q["speedup_vs_dense"]
        g["speedups"][str(n)] = sp
        if sp is None:
            parts.append("N=%d: no dense run" % n)
            ok = False
        else:
            parts.append("N=%d %.2fx (dense %.4f ms / quest %.4f ms)" % (
                n, sp, dense[(n, 1)]["step_ms"], q["step_ms"]))
            ok = ok and sp >= 10.0
    missing = [n for n in want if n not in qr]
    g["met"] = ok if ns else None
    note = ""
    if missing:
        note = " [%s not run%s]" % (", ".join(str(n) for n in missing),
                                    "; --quick sizes" if args.quick else "")
        if args.quick or len(missing) == len(want):
            g["note"] = "evaluated at the Ns that were run; the goal is at 128K and 1M"
    out("#   quest (budget 1/20) >= 10x faster per step than our dense at 128K and 1M: %s%s -> %s"
        % ("; ".join(parts) or "no quest run", note, "met" if ok else "NOT MET"))
    goals["quest_vs_dense_10x"] = g

    rec = dict(hdr)
    rec.update({"rows": rows, "goals": goals, "failed_runs": failed, "ours": ours,
                "peers": peers})
    with open(args.prefix + ".json", "w") as f:
        json.dump(rec, f, indent=1)
    with open(args.prefix + ".txt", "w") as f:
        f.write("\n".join(LINES) + "\n")
    print("# wrote %s.json and %s.txt" % (args.prefix, args.prefix))


def quality(args):
    runs, failed = load_runs(args.work, r"^q_%s_sp([0-9.]+)_n(\d+)$" % MRE)
    rows = []
    for name, m, rc, wall, rep in runs:
        L = rep["layers"][0]
        d, q = L["decode"], L.get("quality") or {}
        nd = q.get("needles")
        rows.append({"method": rep.get("method", m.group(1)), "seq_len": rep.get("seq_len"),
                     "sparsity_target": float(m.group(2)),
                     "sparsity_paper": L.get("sparsity_paper"),
                     "sparsity_measured": L.get("sparsity_measured"),
                     "budget_tokens": d["budget_tokens"], "batch": d["batch"],
                     "steps": d["steps"], "rows_checked": q.get("rows_checked"),
                     "relerr_mean": q.get("relerr_mean"), "relerr_max": q.get("relerr_max"),
                     "recall_mean": q.get("recall_mean"), "recall_min": q.get("recall_min"),
                     "lse_maxerr": q.get("lse_maxerr"), "needles": nd,
                     "needle_hits": q.get("needle_hits"),
                     "needle_hit_rate": q["needle_hits"] / nd if nd else None,
                     "step_ms": d["step_s"] * 1e3, "time_s": L.get("time_s"), "case": name,
                     "wall_s": wall})
    rows.sort(key=lambda r: (r["seq_len"], METHODS.index(r["method"]) if r["method"] in
                             METHODS else 9, -r["sparsity_target"]))
    hdr = header(args.work, args, [x[4] for x in runs], "quality")
    hdr["config"].update({"batch": 2, "steps": 32, "verify.rows": 8,
                          "sparsities": [0.95, 0.9, 0.8, 0.5],
                          "budget": "the paper's Table 3 formulas from attention.sparsity "
                          "(quest 1 - token_budget/N, snapkv 1 - C/N, ada_snapkv "
                          "1 - kept/(N*kv_heads))",
                          "reference": "exact dense decode (float64) on verify.rows sampled "
                          "steps; relerr = relative error of the output rows, recall = "
                          "attention mass of the exact softmax on the tokens read, needle hit "
                          "= a planted needle's tokens among those read"})
    out("# %s; backend %s; quality%s" % (hdr["versions"]["sparsering"] or
                                        hdr["versions"]["binary"], hdr["backend"],
                                        "; --quick" if args.quick else ""))
    out("# device: %s; host: %s" % (hdr["device"]["gpu_nvidia_smi"] or "no nvidia-smi",
                                    hdr["device"]["host_cpu"] or "-"))
    for line in (hdr["rank_map"] or "").strip().split("\n"):
        if line:
            out("#   %s" % line)
    cfg = hdr["config"]
    out("# model %s/%s/%s, batch 2, 32 steps, 8 verified steps, calibrated synthetic input; "
        "rows = (step, sequence, q-head)" % (cfg["q_heads"], cfg["kv_heads"], cfg["head_dim"]))
    out("# %-11s %7s %6s %8s %7s %6s %10s %10s %8s %8s %9s" % (
        "method", "N", "target", "sp_paper", "budget", "rows", "relerr", "relerr_max",
        "recall", "rec_min", "needles"))
    for r in rows:
        out("  %-11s %7d %6.2f %8.4f %7d %6s %10.3g %10.3g %8.4f %8.4f %9s" % (
            r["method"], r["seq_len"], r["sparsity_target"], r["sparsity_paper"] or 0.0,
            r["budget_tokens"], r["rows_checked"] if r["rows_checked"] is not None else "-",
            r["relerr_mean"] if r["relerr_mean"] is not None else float("nan"),
            r["relerr_max"] if r["relerr_max"] is not None else float("nan"),
            r["recall_mean"] if r["recall_mean"] is not None else float("nan"),
            r["recall_min"] if r["recall_min"] is not None else float("nan"),
            "%.3f" % r["needle_hit_rate"] if r["needle_hit_rate"] is not None else "-"))
    for f in failed:
        out("# FAILED %s: %s%s" % (f["case"], f["why"],
                                   (" — " + f["log_tail"][-1]) if f["log_tail"] else ""))
    rec = dict(hdr)
    rec.update({"rows": rows, "failed_runs": failed})
    p = args.prefix + "_quality"
    with open(p + ".json", "w") as f:
        json.dump(rec, f, indent=1)
    with open(p + ".txt", "w") as f:
        f.write("\n".join(LINES) + "\n")
    print("# wrote %s.json and %s.txt" % (p, p))


def main():
    ap = argparse.ArgumentParser(description="merge bench/decode runs")
    ap.add_argument("mode", choices=["speed", "quality"])
    ap.add_argument("work")
    ap.add_argument("prefix")
    ap.add_argument("--peers", default=None)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    args.prefix = args.prefix[:-5] if args.prefix.endswith(".json") else args.prefix
    (speed if args.mode == "speed" else quality)(args)


if __name__ == "__main__":
    main()
