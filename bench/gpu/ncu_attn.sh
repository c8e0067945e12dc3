#!/usr/bin/env bash
# ncu_attn.sh BUILD_DIR [sr_bench_gpu options] — hardware counters of one attn_fwd kernel
# launch (the third: after the bench's two warm-ups) with Nsight Compute: speed of light
# (compute vs memory throughput), DRAM bytes read and the L2 hit rate. Clocks are left alone
# (--clock-control none). Example: bench/gpu/ncu_attn.sh build-gpu --n 65536 --sparsity 0.9
set -euo pipefail
build=$1
shift
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
"$ncu" --clock-control none --kernel-name regex:sr_attn_ --launch-skip 2 --launch-count 1 \
  --section SpeedOfLight \
  --metrics dram__bytes_read.sum,lts__t_sector_hit_rate.pct,gpu__time_duration.sum \
  "$build/bench_gpu/sr_bench_gpu" --block 128 --reps 1 "$@"
