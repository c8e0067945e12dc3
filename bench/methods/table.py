#!/usr/bin/env python3
"""bench/methods/table.py MODE DIR OUT.json — summarises the runs of bench/methods/study.sh.

Prints a '#' header and aligned columns, and writes OUT.json with one record per run.
  quality: relative error (mean, max), attention recall, needle hit rate, sparsity (paper
           formula and measured) per method, sparsity target and N.
  time:    selection (summarise + select) and attention (exchange + compute) seconds, their
           sum ("end to end", everything between the loaded rows and the downloaded result),
           and the speedup of that sum over dense at the same N.
  bytes:   bytes moved by the selected exchange / bytes of the dense ring.
"""
import glob, json, os, re, sys

mode, d, out = sys.argv[1], sys.argv[2], sys.argv[3]
recs = []
for path in sorted(glob.glob(os.path.join(d, "*.json"))):
    name = os.path.basename(path)[:-5]
    try:
        rep = json.load(open(path))
    except Exception:
        continue
    m = re.match(r"[qtb]_(dense|block_sparse|vertical_slash|flexprefill)(?:_([0-9.]+))?_(?:np)?(\d+)$", name)
    if not m:
        continue
    L = rep["layers"][0]
    t = L["time_s"]
    q = L.get("quality", {})
    r = {"case": name, "method": m.group(1), "sparsity_target": float(m.group(2)) if m.group(2) else 0.0,
         "seq_len": rep.get("seq_len"), "ranks": rep.get("ranks"), "backend": rep.get("backend"),
         "versions": rep.get("versions"),
         "sparsity_paper": L.get("sparsity_paper"), "sparsity_measured": L.get("sparsity_measured"),
         "select_s": t["summarise"] + t["select"], "attention_s": t["attention"],
         "bytes_moved": L.get("bytes_moved"), "bytes_dense_ring": L.get("bytes_dense_ring"),
         "selected_blocks": L.get("selected_blocks"), "selected_columns": L.get("selected_columns"),
         "budget_verticals": L.get("budget_verticals"), "budget_slashes": L.get("budget_slashes"),
         "top_chunks": L.get("top_chunks")}
    r["end_to_end_s"] = r["select_s"] + r["attention_s"]
    if q:
        r.update({"relerr_mean": q["relerr_mean"], "relerr_max": q["relerr_max"],
                  "recall_mean": q["recall_mean"], "recall_min": q["recall_min"],
                  "needle_hit_rate": q["needle_hits"] / q["needles"] if q.get("needles") else None,
                  "rows_checked": q["rows_checked"]})
    recs.append(r)

key = lambda r: (r["seq_len"] or 0, r.get("ranks") or 0, r["method"] != "dense", r["method"], -r["sparsity_target"])
recs.sort(key=key)
hdr = recs[0]["versions"] if recs else "no runs"
dev = ""
if os.path.exists(os.path.join(d, "device.txt")):
    dev = "; ".join(l.strip() for l in open(os.path.join(d, "device.txt")) if l.strip())
print("# %s; mode %s; %d runs from %s" % (hdr, mode, len(recs), d))
print("# device: %s" % (dev or "not recorded"))
if recs:
    first = json.load(open(os.path.join(d, recs[0]["case"] + ".json")))
    for line in (first.get("rank_map") or "").strip().split("\n"):
        print("#   %s" % line)
if mode == "quality":
    print("# %-15s %6s %8s %9s %9s %9s %8s %8s %8s" % ("method", "target", "N", "sp_paper", "sp_meas",
          "relerr", "relmax", "recall", "needles"))
    for r in recs:
        print("  %-15s %6.3f %8d %9.4f %9.4f %9.3g %8.3g %8.3f %8s" % (r["method"], r["sparsity_target"], r["seq_len"],
              r["sparsity_paper"], r["sparsity_measured"], r.get("relerr_mean", float("nan")),
              r.get("relerr_max", float("nan")), r.get("recall_mean", float("nan")),
              "%.3f" % r["needle_hit_rate"] if r.get("needle_hit_rate") is not None else "-"))
elif mode == "time":
    dense = {r["seq_len"]: r["end_to_end_s"] for r in recs if r["method"] == "dense"}
    print("# %-15s %6s %8s %9s %9s %10s %10s %10s %8s" % ("method", "target", "N", "sp_paper", "sp_meas",
          "select_s", "attn_s", "e2e_s", "vs_dense"))
    for r in recs:
        dn = dense.get(r["seq_len"])
        r["speedup_vs_dense"] = dn / r["end_to_end_s"] if dn and r["end_to_end_s"] > 0 else None
        print("  %-15s %6.3f %8d %9.4f %9.4f %10.4f %10.4f %10.4f %8s" % (r["method"], r["sparsity_target"],
              r["seq_len"], r["sparsity_paper"], r["sparsity_measured"], r["select_s"], r["attention_s"],
              r["end_to_end_s"], "%.2fx" % r["speedup_vs_dense"] if r["speedup_vs_dense"] else "-"))
else:
    print("# %-15s %6s %5s %9s %9s %12s %12s %8s" % ("method", "target", "ranks", "sp_paper", "sp_meas",
          "moved_B", "ring_B", "ratio"))
    for r in recs:
        r["bytes_ratio"] = r["bytes_moved"] / r["bytes_dense_ring"] if r["bytes_dense_ring"] else None
        print("  %-15s %6.3f %5d %9.4f %9.4f %12d %12d %8.4f" % (r["method"], r["sparsity_target"], r["ranks"],
              r["sparsity_paper"], r["sparsity_measured"], r["bytes_moved"], r["bytes_dense_ring"],
              r["bytes_ratio"] or 0))
json.dump({"mode": mode, "device": dev, "runs": recs}, open(out, "w"), indent=1)
