#!/usr/bin/env bash
# runtime_vs_kernel.sh — the runtime's attention time on one GPU against the time of its own
# attention kernels in the same run (CUDA events), dense and Block-Sparse, on a node with a GPU.
#
#   bench/gpu/runtime_vs_kernel.sh [BUILD_DIR] [OUT_JSON]
#
# BUILD_DIR (default build-gpu) holds a CUDA build of sparsering (jobs/gpu/build.sh). Each
# configuration runs `sparsering run` with --layers layers (default 3) on the paper's prefill
# shape (32 q-heads / 8 kv-heads, d 128, 128-token blocks, synthetic input); layer 0 is the
# warm-up (first allocations) and the medians of the other layers are reported:
#   attention  the report's attention time (exchange plan + work lists + compute, host clock)
#   kernels    the attention kernels alone (CUDA events, JSON device_s.kernels)
#   lists      the work-list builds on the device (CUDA events, device_s.lists)
#   ratio      kernels / attention (goal >= 0.95, docs/PERFORMANCE.md)
#   download   out and lse from the device to the host after the ring (a phase of its own)
# Environment: SR_RVK_N (default 32768,131072,524288), SR_RVK_METHODS (dense,block_sparse),
# SR_RVK_SPARSITY (0.9, for block_sparse), SR_RVK_LAYERS (3).
set -euo pipefail
build=${1:-build-gpu}
out=${2:-bench/results/gpu_runtime.json}
ns=${SR_RVK_N:-32768,131072,524288}
methods=${SR_RVK_METHODS:-dense,block_sparse}
sp=${SR_RVK_SPARSITY:-0.9}
layers=${SR_RVK_LAYERS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
runs=()
for n in ${ns//,/ }; do
  for m in ${methods//,/ }; do
    j="$work/${m}_$n.json"
    "$build/sparsering" run -q --set backend=cuda --set attention.method="$m" \
      --set attention.sparsity="$sp" --set seq_len="$n" --set attention.block_q=128 \
      --set attention.block_k=128 --set model.q_heads=32 --set model.kv_heads=8 \
      --set model.head_dim=128 --set model.layers="$layers" --set verify.rows=2 \
      --set report.json="$j" >"$work/${m}_$n.txt" 2>&1 ||
      { echo "runtime_vs_kernel: sparsering failed for $m at N=$n:" >&2; tail -5 "$work/${m}_$n.txt" >&2; exit 1; }
    runs+=("$j")
  done
done
python3 - "$out" "$sp" "${runs[@]}" <<'PYEOF'
import datetime, json, statistics, subprocess, sys
out, sp, files = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
def gpu():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
rows = []
for f in files:
    d = json.load(open(f))
    L = d["layers"][1:] if len(d["layers"]) > 1 else d["layers"]
    att = statistics.median(l["time_s"]["attention"] for l in L)
    ker = statistics.median(l["device_s"]["kernels"] for l in L)
    lst = statistics.median(l["device_s"]["lists"] for l in L)
    dl = statistics.median(l["time_s"]["download"] for l in L)
    rows.append({"n": d["seq_len"], "method": d["method"],
                 "attention_s": att, "kernels_s": ker, "lists_s": lst, "download_s": dl,
                 "ratio": ker / att if att > 0 else 0,
                 "layers_timed": len(L), "sparsity_measured": L[0]["sparsity_measured"],
                 "file": f.split("/")[-1]})
rec = {"benchmark": "runtime attention time vs its attention kernels (one GPU)", "device": gpu(),
       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "versions": json.load(open(files[0]))["versions"],
       "config": "bf16, causal, 32 q-heads / 8 kv-heads, d 128, blocks 128, synthetic input; "
                 "block_sparse at sparsity %g; median of the layers after the first" % sp,
       "goal": "kernels / attention >= 0.95", "rows": rows}
json.dump(rec, open(out, "w"), indent=1)
print("# %s | %s" % (rec["device"], rec["versions"]))
print("# %s" % rec["config"])
print("# rank 0 -> GPU 0 (one rank)")
print("%9s %13s %12s %12s %10s %11s %7s" % ("N", "method", "attention_s", "kernels_s", "lists_s",
                                            "download_s", "ratio"))
for r in rows:
    print("%9d %13s %12.4f %12.4f %10.5f %11.4f %7.3f%s" % (r["n"], r["method"], r["attention_s"],
          r["kernels_s"], r["lists_s"], r["download_s"], r["ratio"],
          "" if r["ratio"] >= 0.95 else "  (goal 0.95 NOT MET)"))
PYEOF
