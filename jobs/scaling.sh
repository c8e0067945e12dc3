#!/usr/bin/env bash
# jobs/scaling.sh CONFIG "NP LIST" [sparsering args...] — strong-scaling sweep: runs CONFIG on
# each rank count in both exchange modes and writes one JSON report per run under
# bench/results/scaling-<name>/, then prints a summary table (time, bytes moved, efficiency).
#   jobs/scaling.sh configs/demo.yaml "1 2 4"
set -euo pipefail
cd "$(dirname "$0")/.."
. jobs/env.sh
cfg=$1 nps=$2
shift 2
name=$(basename "$cfg" .yaml)
out=bench/results/scaling-$name
mkdir -p "$out"
for mode in selected dense_ring; do
  for np in $nps; do
    mpirun -np "$np" build/sparsering run -q -c "$cfg" --set exchange=$mode --set verify.rows=0 \
      --json "$out/${mode}_np$np.json" "$@" >/dev/null
  done
done
printf '# %-10s %4s %12s %14s %14s\n' mode np wall_s bytes_moved eff_vs_np1
for mode in selected dense_ring; do
  base=""
  for np in $nps; do
    f="$out/${mode}_np$np.json"
    w=$(grep -oE '"wall_s":[[:space:]]*[0-9.eE+-]+' "$f" | tail -1 | sed 's/.*: *//')
    b=$(grep -oE '"bytes_moved":[[:space:]]*[0-9.eE+-]+' "$f" | tail -1 | sed 's/.*: *//')
    [ -z "$base" ] && base=$(awk -v w="$w" -v n="$np" 'BEGIN{print w*n}')
    printf '  %-10s %4s %12.3f %14.0f %14.3f\n' "$mode" "$np" "$w" "$b" \
      "$(awk -v b="$base" -v w="$w" -v n="$np" 'BEGIN{print b/(w*n)}')"
  done
done
