#!/usr/bin/env bash
# bench/gpu/large_verify.sh [BIN] [OUTDIR] [CASES...] — runs past the 32-bit and 2^24-row lines
# on one GPU and verifies each against the float64 reference (dense: the run fails with exit 6
# when a head's relative error passes the bf16 tolerance, verify.max_relerr).
#   cases: d512k32 (512K tokens x 32 q-heads dense: 2^24 query rows, a 2.1 GB block list),
#          d1m32 (1M x 32 dense), d512k64 (512K x 64 dense), bs128k32, bs1m32, bs512k64
#          (Block-Sparse at sparsity 0.9)
# Prints one line per case (exit code, relative error, lse error, attention time) and writes
# OUTDIR/<case>.json. Needs a GPU with ~60 GB of memory and ~80 GB of host memory for 1M x 32.
set -u
BIN=${1:-build-gpu/sparsering}
OUT=${2:-large_verify}
shift 2 2>/dev/null || shift $#
cases=${*:-d512k32 d1m32 d512k64 bs1m32 bs512k64}
mkdir -p "$OUT"
common=(--set model.kv_heads=8 --set model.head_dim=128 --set attention.block_q=128
        --set attention.block_k=128 --set verify.rows=4 --set backend=cuda --set output.path=)
printf '# %s, %s\n' "$("$BIN" --version 2>/dev/null | head -1)" "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
printf '%-9s %4s %10s %10s %10s %8s %10s %9s %8s\n' case exit rel_err rel_max lse_err recall attn_s wall_s TFLOP/s
for c in $cases; do
  case $c in
    d512k32) a=(--set model.q_heads=32 --set seq_len=524288 --set attention.method=dense) ;;
    d1m32) a=(--set model.q_heads=32 --set seq_len=1048576 --set attention.method=dense) ;;
    d512k64) a=(--set model.q_heads=64 --set seq_len=524288 --set attention.method=dense) ;;
    bs1m32) a=(--set model.q_heads=32 --set seq_len=1048576 --set attention.method=block_sparse
               --set attention.sparsity=0.9) ;;
    bs128k32) a=(--set model.q_heads=32 --set seq_len=131072 --set attention.method=block_sparse
                 --set attention.sparsity=0.9) ;;
    bs512k64) a=(--set model.q_heads=64 --set seq_len=524288 --set attention.method=block_sparse
                 --set attention.sparsity=0.9) ;;
    *) echo "unknown case $c"; continue ;;
  esac
  t0=$(date +%s.%N)
  timeout -k 10 400 mpirun -np 1 --bind-to none "$BIN" run "${common[@]}" "${a[@]}" \
    --json "$OUT/$c.json" >"$OUT/$c.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  python3 - "$OUT/$c.json" "$c" "$rc" "$t0" "$t1" <<'PY'
import json, sys
path, c, rc, t0, t1 = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
try:
    L = json.load(open(path))["layers"][0]
    q, t = L.get("quality", {}), L.get("time_s", {})
    print("%-9s %4d %10.3g %10.3g %10.3g %8.3f %10.3f %9.1f %8.0f" % (c, rc, q.get("relerr_mean", float("nan")),
          q.get("relerr_max", float("nan")), q.get("lse_maxerr", float("nan")),
          q.get("recall_mean", float("nan")), t.get("attention", float("nan")), t1 - t0,
          L.get("gflops_effective", 0) / 1e3))
except Exception as e:
    print("%-9s %4d  (no report: %s)" % (c, rc, e))
PY
  [ $rc -eq 0 ] || tail -3 "$OUT/$c.log"
done
