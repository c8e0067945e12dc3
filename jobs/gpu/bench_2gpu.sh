#!/usr/bin/env bash
# jobs/gpu/bench_2gpu.sh [OUT_DIR] — the 2-GPU benchmark of docs/MULTIGPU.md, on one node with
# (at least) 2 GPUs, e.g. inside an allocation of 2 GPUs. Needs the CUDA build in build-gpu/
# (jobs/gpu/build.sh), mpirun on PATH (your MPI module; or the staged tree of
# jobs/gpu/stage-deps.sh, whose .gpudeps/env.sh is sourced when present), and python3.
#
# 128K tokens, 32 q-heads / 8 kv-heads, d = 128, bf16 (backend cuda), blocks 128:
#   NVLink (NCCL P2P):  1 GPU dense | 2 GPUs dense, dense_ring  -> parallel efficiency t1/(2 t2)
#                       2 GPUs Block-Sparse at sparsity 0.9 and 0.95, exchange dense_ring vs
#                       selected -> time, bytes moved, ratio
#   socket (NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1: NCCL's socket transport over loopback, a
#   slow inter-node link, 0.1-0.2 GB/s): the same 2-GPU runs.
# t is the attention time of a layer (time_s.attention: request lists + block lists + ring
# exchange + compute up to the device's completion, each rank's own sum, max over ranks; the
# copy of the results to the host is reported apart as download), the median over the layers
# after the first (layer 0 is a warm-up).
#
# Every JSON report is kept, verbatim, in OUT_DIR/bench_2gpu.json (one file with everything);
# the table goes to stdout and OUT_DIR/bench_2gpu.txt, every run's output to
# OUT_DIR/bench_2gpu.log. OUT_DIR: $1, else $OUT, else bench/results/gpu-2gpu.
# Knobs (environment): N (131072), NSOCK (socket-part tokens, default N), BLOCK (128),
# LAYERS (3), VERIFY_ROWS (8), SR_BIN (build-gpu/sparsering), RUN_LIMIT (s per run, 150),
# BUDGET (s, 480: runs that would start later are skipped and marked so).
# Designed to end within about 9 minutes (BUDGET + one run); if the NVLink part overruns, the
# socket part drops to 32768 tokens by itself and the table says so.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
# The staged Open MPI + parallel HDF5 (jobs/gpu/stage-deps.sh), if present and not yet sourced.
# shellcheck source=/dev/null
if [ -z "${OPAL_PREFIX:-}" ] && [ -f .gpudeps/env.sh ]; then . .gpudeps/env.sh; fi
export NCCL_NVLS_ENABLE=0 # NVLink SHARP (multicast) off: send/recv never needs it
export NCCL_DEBUG=${NCCL_DEBUG:-VERSION} # prints the NCCL version line into the log

N=${N:-131072}
NSOCK=${NSOCK:-$N}
BLOCK=${BLOCK:-128}
LAYERS=${LAYERS:-3}
VERIFY_ROWS=${VERIFY_ROWS:-8}
RUN_LIMIT=${RUN_LIMIT:-150}
BUDGET=${BUDGET:-480}
bin=${SR_BIN:-build-gpu/sparsering}
out=${1:-${OUT:-bench/results/gpu-2gpu}}
mkdir -p "$out"
log=$out/bench_2gpu.log
: >"$log"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

die() { echo "bench_2gpu: $*" >&2; exit 1; }
[ -x "$bin" ] || die "$bin not found (build it: jobs/gpu/build.sh)"
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU [0-9]')
[ "$ngpu" -ge 2 ] || die "needs 2 GPUs, nvidia-smi lists ${ngpu:-none}"
command -v python3 >/dev/null || die "python3 is needed for the table"

# run NAME NP LINK TOKENS [sparsering --set args...]: one mpirun, its report in $work/NAME.json.
# LINK nvlink = NCCL defaults (P2P over NVLink); socket = P2P and shared memory off, IB off,
# loopback sockets only. Every run is listed in the manifest, with its exit status.
run() {
  local name=$1 np=$2 link=$3 tokens=$4
  shift 4
  local envs=(NCCL_NVLS_ENABLE=0)
  if [ "$link" = socket ]; then
    envs+=(NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_IB_DISABLE=1 NCCL_NET=Socket
           "NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo}")
  fi
  if [ "$SECONDS" -ge "$BUDGET" ]; then
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$np" "$link" "$tokens" skipped 0 >>"$work/manifest"
    echo "# $name: skipped (time budget of $BUDGET s spent)" | tee -a "$log"
    return
  fi
  local xs=() e
  for e in "${envs[@]}" NCCL_DEBUG=$NCCL_DEBUG; do xs+=(-x "${e%%=*}"); done
  echo "### $name: np $np, $link, N $tokens: $*" >>"$log"
  local t0=$SECONDS rc=0
  env "${envs[@]}" timeout -k 10 "$RUN_LIMIT" mpirun -np "$np" --bind-to none "${xs[@]}" \
    "$bin" run -q --set seq_len="$tokens" --set model.q_heads=32 --set model.kv_heads=8 \
    --set model.head_dim=128 --set model.layers="$LAYERS" --set attention.block_q="$BLOCK" \
    --set attention.block_k="$BLOCK" --set backend=cuda --set verify.rows="$VERIFY_ROWS" \
    --set report.progress=false --set output.path= "$@" --json "$work/$name.json" \
    >>"$log" 2>&1 || rc=$?
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$np" "$link" "$tokens" "$rc" "$((SECONDS - t0))" \
    >>"$work/manifest"
  echo "# $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log" >&2
}

: >"$work/manifest"
dense=(--set attention.method=dense)
bs() { echo --set attention.method=block_sparse --set attention.sparsity="$1"; }

# NVLink part.
run nvlink_1gpu_dense 1 nvlink "$N" "${dense[@]}"
run nvlink_2gpu_dense_ring 2 nvlink "$N" "${dense[@]}" --set exchange=dense_ring
for sp in 0.9 0.95; do
  for ex in dense_ring selected; do
    # shellcheck disable=SC2046
    run "nvlink_2gpu_bs${sp}_${ex}" 2 nvlink "$N" $(bs "$sp") --set exchange=$ex
  done
done

# Socket part (a bandwidth-starved network); smaller if the NVLink part took too long.
sock_note=""
if [ "$NSOCK" -eq "$N" ] && [ "$SECONDS" -gt $((BUDGET * 5 / 8)) ]; then
  NSOCK=32768
  sock_note="socket part at N = $NSOCK: the NVLink part took $SECONDS s of the $BUDGET s budget"
fi
run socket_2gpu_dense_ring 2 socket "$NSOCK" "${dense[@]}" --set exchange=dense_ring
for sp in 0.9 0.95; do
  for ex in dense_ring selected; do
    # shellcheck disable=SC2046
    run "socket_2gpu_bs${sp}_${ex}" 2 socket "$NSOCK" $(bs "$sp") --set exchange=$ex
  done
done

# Header facts: device, link, versions.
nvidia-smi --query-gpu=index,name,pci.bus_id,memory.total,driver_version --format=csv,noheader \
  >"$work/gpus" 2>/dev/null || true
nvidia-smi topo -m >"$work/topo" 2>/dev/null || true
nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | head -1 >"$work/cuda" || true
grep -o 'NCCL version [^ ]*' "$log" | head -1 >"$work/nccl" || true

python3 - "$work" "$out" "$N" "$NSOCK" "$BLOCK" "$LAYERS" "$VERIFY_ROWS" "$SECONDS" "$sock_note" <<'PY'
import json, os, statistics, sys, time
work, out, N, NSOCK, BLOCK, LAYERS, VROWS, secs, note = sys.argv[1:10]
rd = lambda f: open(os.path.join(work, f)).read().strip() if os.path.exists(os.path.join(work, f)) else ""
runs, order = {}, []
for line in rd("manifest").splitlines():
    name, np_, link, tokens, rc, sec = line.split("\t")
    r = {"np": int(np_), "link": link, "seq_len": int(tokens), "exit": rc, "seconds": int(sec)}
    p = os.path.join(work, name + ".json")
    if rc == "0" and os.path.exists(p):
        r["report"] = json.load(open(p))
    runs[name] = r
    order.append(name)

def stats(r):
    rep = r.get("report")
    if not rep or not rep.get("layers"):
        return None
    ls = rep["layers"]
    warm = ls[1:] if len(ls) > 1 else ls
    attn = statistics.median(l["time_s"]["attention"] for l in warm)
    down = statistics.median(l["time_s"]["download"] for l in warm)
    total = statistics.median(l["time_s"]["total"] for l in warm)
    q = [l.get("quality", {}) for l in ls]
    return {"attn_s": attn, "down_s": down, "layer_s": total, "bytes": ls[0]["bytes_moved"],
            "ring_bytes": ls[0]["bytes_dense_ring"], "top_chunks": ls[0]["top_chunks"],
            "sp_paper": ls[0]["sparsity_paper"], "sp_meas": ls[0]["sparsity_measured"],
            "relerr": max((x.get("relerr_max", float("nan")) for x in q), default=float("nan")),
            "recall": min((x.get("recall_mean", float("nan")) for x in q), default=float("nan")),
            "tflops": ls[0]["pairs_causal"] * 4 * 128 / attn / 1e12 if attn > 0 else 0.0}

S = {n: stats(runs[n]) for n in order}
for n in order:
    runs[n]["derived"] = S[n]

lines = []
P = lines.append
first = next((runs[n]["report"] for n in order if "report" in runs[n]), {})
two = next((runs[n]["report"] for n in order if "report" in runs[n] and runs[n]["np"] == 2), {})
P(f"# sparsering 2-GPU benchmark, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
for g in rd("gpus").splitlines():
    P(f"# device: GPU {g}")
topo = rd("topo").splitlines()
link = next((l.split() for l in topo if l.startswith("GPU0")), [])
if len(link) > 2:
    P(f"# link GPU0-GPU1 (nvidia-smi topo -m): {link[2]}")
P(f"# versions: {first.get('versions', '?')} | {rd('nccl') or 'NCCL version ?'} | "
  f"{rd('cuda') or 'CUDA Version ?'} (driver)")
P(f"# config: seq_len {N} (socket part {NSOCK}), q_heads 32, kv_heads 8, head_dim 128, bf16 "
  f"storage (backend {first.get('backend', 'cuda')}), blocks {BLOCK}x{BLOCK}, layers {LAYERS} "
  f"(layer 0 = warm-up), zigzag, verify.rows {VROWS}, NCCL_NVLS_ENABLE=0")
for l in (two.get("rank_map") or "").splitlines():
    if l.strip():
        r = int(l.split(":")[0].split()[1])
        P(f"# rank map: {l.strip()} -> GPU {r % 2} (node-local rank % GPUs)")
P(f"# transport: {two.get('transport', '?')}; nvlink = NCCL defaults (P2P); socket = "
  "NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_IB_DISABLE=1 NCCL_NET=Socket over lo")
if note:
    P(f"# NOTE: {note}")
P("#")
P("# attn_s: plan + ring exchange + compute of one layer up to the GPU's completion (each rank's"
  " sum, max over ranks; median of warm layers); down_s: out/lse copied to the host;"
  " layer_s: whole layer incl. generate/verify/write")
P("# moved_GB: KV bytes sent per layer, all ranks; vs_ring: moved / moved of the dense_ring run "
  "of the same link, size and method;"
  " run_s: the whole mpirun, or why a run has no numbers")
hdr = ("run", "gpus", "link", "N", "method", "exchange", "top_k", "sp_paper", "attn_s",
       "down_s", "TF/s_eff", "layer_s", "moved_GB", "vs_ring", "relerr_max", "recall", "run_s")
fmt = "%-29s %4s %6s %7s %12s %10s %6s %8s %9s %7s %9s %8s %9s %8s %10s %7s %8s"
P("# " + fmt % hdr)

def ring_of(n):
    r = runs[n]
    if "report" not in r:
        return None
    m = r["report"]["method"]
    for k in order:
        x = runs[k]
        if ("report" in x and x["link"] == r["link"] and x["np"] == r["np"] and
                x["seq_len"] == r["seq_len"] and x["report"]["exchange"] == "dense_ring" and
                x["report"]["method"] == m and
                (m == "dense" or x["report"]["layers"][0]["top_chunks"] ==
                 r["report"]["layers"][0]["top_chunks"])):
            return k
    return None

for n in order:
    r, s = runs[n], S[n]
    if s is None:
        P("  " + fmt % (n, r["np"], r["link"], r["seq_len"], "-", "-", "-", "-", "-", "-", "-", "-",
                        "-", "-", "-", "-", "skipped" if r["exit"] == "skipped" else "exit " + r["exit"]))
        continue
    rep = r["report"]
    k = ring_of(n)
    vs = s["bytes"] / S[k]["bytes"] if k and S[k] and S[k]["bytes"] else float("nan")
    P("  " + fmt % (n, r["np"], r["link"], r["seq_len"], rep["method"],
             rep["exchange"] if r["np"] > 1 else "-",
             s["top_chunks"] if rep["method"] != "dense" else "-",
             "%.4f" % s["sp_paper"], "%.4f" % s["attn_s"], "%.3f" % s["down_s"],
             "%.1f" % s["tflops"],
             "%.3f" % s["layer_s"], "%.4f" % (s["bytes"] / 1e9), "%.4f" % vs,
             "%.2e" % s["relerr"], "%.4f" % s["recall"], r["seconds"]))

P("#")
summary = {}
def get(n):
    return S.get(n)
t1, t2 = get("nvlink_1gpu_dense"), get("nvlink_2gpu_dense_ring")
if t1 and t2:
    eff = t1["attn_s"] / (2 * t2["attn_s"])
    summary["parallel_efficiency_dense_nvlink"] = eff
    P(f"# parallel efficiency, dense, NVLink: t1 {t1['attn_s']:.4f} s, t2 {t2['attn_s']:.4f} s, "
      f"t1/(2 t2) = {eff:.3f}")
for linkname in ("nvlink", "socket"):
    for sp in ("0.9", "0.95"):
        a, b = get(f"{linkname}_2gpu_bs{sp}_selected"), get(f"{linkname}_2gpu_bs{sp}_dense_ring")
        if a and b and a["attn_s"] > 0 and b["bytes"]:
            sp_ = b["attn_s"] / a["attn_s"]
            br = a["bytes"] / b["bytes"]
            summary[f"{linkname}_bs{sp}"] = {"selected_s": a["attn_s"], "dense_ring_s": b["attn_s"],
                                            "speedup": sp_, "bytes_ratio": br}
            P(f"# Block-Sparse {sp}, {linkname}: selected {a['attn_s']:.4f} s vs dense_ring "
              f"{b['attn_s']:.4f} s (speedup x{sp_:.2f}); bytes {a['bytes'] / 1e9:.4f} vs "
              f"{b['bytes'] / 1e9:.4f} GB = {br:.4f}x")
P(f"# total script time {secs} s")
text = "\n".join(lines) + "\n"
sys.stdout.write(text)
open(os.path.join(out, "bench_2gpu.txt"), "w").write(text)
json.dump({"bench": "jobs/gpu/bench_2gpu.sh", "header": [l for l in lines if l.startswith("# ")],
           "summary": summary, "runs": runs}, open(os.path.join(out, "bench_2gpu.json"), "w"),
          indent=1)
PY
