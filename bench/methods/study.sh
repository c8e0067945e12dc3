#!/usr/bin/env bash
# bench/methods/study.sh MODE [BIN] [OUTDIR] — the method studies of docs/METHODS_STUDY.md.
#   quality  N = 16K..128K, every prefill method at the paper's Table 3 budgets for sparsity
#            0.95 / 0.9 / 0.8 (and dense), 32 q-heads, 8 kv-heads, head dim 128, calibrated
#            synthetic input, 32 verified rows per q-head (output relative error, attention
#            recall, needle hits against the float64 reference). One GPU (or CPU: slow).
#   time     N = 32K..512K on one GPU: dense, block_sparse 0.9, vertical_slash 0.95 and 0.9,
#            flexprefill 0.9; selection (summarise + select) timed apart from attention.
#   bytes    N = 64K on 2 and 4 CPU ranks: bytes moved by the selected exchange vs the dense
#            ring for every method and sparsity (8 q-heads, 2 kv-heads, head dim 64).
# Each run writes OUTDIR/<case>.json (the run's report); bench/methods/table.py summarises.
set -u
MODE=${1:?quality, time or bytes}
BIN=${2:-build-gpu/sparsering}
OUT=${3:-study_$MODE}
mkdir -p "$OUT"
# The device, for the summary's header.
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 ||
  true; lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1; } >"$OUT/device.txt"
run() { # name ranks args...
  local name=$1 np=$2
  shift 2
  local t0=$(date +%s%N)
  timeout -k 10 500 mpirun -np "$np" --bind-to none "$BIN" run -q "$@" --json "$OUT/$name.json" \
    >"$OUT/$name.log" 2>&1
  local rc=$? t1=$(date +%s%N)
  printf '%-32s exit %d  %6d ms\n' "$name" "$rc" $(( (t1 - t0) / 1000000 ))
  [ $rc -eq 0 ] || tail -3 "$OUT/$name.log"
}
# The paper's tiles for vertical_slash and flexprefill (the embedded demo config sets 16).
vs64=(--set attention.block_q=64 --set attention.block_k=64)
gpu=(--set model.q_heads=32 --set model.kv_heads=8 --set model.head_dim=128 --set output.path=)
case $MODE in
  quality)
    for n in 16384 32768 65536 131072; do
      run "q_dense_$n" 1 "${gpu[@]}" --set seq_len=$n --set attention.method=dense \
        --set attention.block_q=128 --set attention.block_k=128 --set verify.rows=32
      for sp in 0.95 0.9 0.8; do
        run "q_block_sparse_${sp}_$n" 1 "${gpu[@]}" --set seq_len=$n --set verify.rows=32 \
          --set attention.method=block_sparse --set attention.sparsity=$sp
        for m in vertical_slash flexprefill; do
          run "q_${m}_${sp}_$n" 1 "${gpu[@]}" --set seq_len=$n --set verify.rows=32 \
            --set attention.method=$m --set attention.block_q=64 --set attention.block_k=64 \
            --set attention.sparsity=$sp
        done
      done
    done ;;
  time)
    for n in 32768 65536 131072 262144 524288; do
      run "t_dense_$n" 1 "${gpu[@]}" --set seq_len=$n --set attention.method=dense \
        --set attention.block_q=128 --set attention.block_k=128 --set verify.rows=0
      run "t_block_sparse_0.9_$n" 1 "${gpu[@]}" --set seq_len=$n --set verify.rows=0 \
        --set attention.method=block_sparse --set attention.sparsity=0.9 \
        --set attention.block_q=64 --set attention.block_k=64
      for sp in 0.95 0.9; do
        run "t_vertical_slash_${sp}_$n" 1 "${gpu[@]}" --set seq_len=$n --set verify.rows=0 \
          --set attention.method=vertical_slash --set attention.sparsity=$sp "${vs64[@]}"
      done
      run "t_flexprefill_0.9_$n" 1 "${gpu[@]}" --set seq_len=$n --set verify.rows=0 \
        --set attention.method=flexprefill --set attention.sparsity=0.9 "${vs64[@]}"
    done ;;
  bytes)
    cpu=(--set model.q_heads=8 --set model.kv_heads=2 --set model.head_dim=64 --set backend=cpu
         --set seq_len=65536 --set verify.rows=0 --set output.path=)
    for np in 2 4; do
      for sp in 0.95 0.9 0.8; do
        run "b_block_sparse_${sp}_np$np" $np "${cpu[@]}" --set attention.method=block_sparse \
          --set attention.sparsity=$sp
        for m in vertical_slash flexprefill; do
          run "b_${m}_${sp}_np$np" $np "${cpu[@]}" --set attention.method=$m \
            --set attention.sparsity=$sp "${vs64[@]}"
        done
      done
    done ;;
  *) echo "unknown mode $MODE (quality, time or bytes)" >&2; exit 2 ;;
esac
