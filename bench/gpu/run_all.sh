#!/usr/bin/env bash
# run_all.sh — the GPU attention benchmark with its peers in one run, on a node with a GPU.
#
#   bench/gpu/run_all.sh [BUILD_DIR] [OUT_JSON] [sr_bench_gpu options]
#
# BUILD_DIR (default build-gpu) must hold bench_gpu/sr_bench_gpu (-DSR_BUILD_BENCH=ON); the peers
# need Python 3 with PyTorch and numpy.
#
# Runs sr_bench_gpu (ours; writes the masks), then peers.py (SDPA flash / cuDNN, FlexAttention
# on the same masks), then report.py, which merges both into OUT_JSON (default
# bench/results/gpu_kernels.json) and prints the table with the ratios; then (unless
# SR_BENCH_RUNTIME=0) runtime_vs_kernel.sh, whose rows and goal join the same record. N and sparsities may
# be narrowed with sr_bench_gpu's options (--n 32768 --sparsity 0,0.9); peers follow --n.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=${1:-build-gpu}
out=${2:-bench/results/gpu_kernels.json}
shift $(( $# >= 2 ? 2 : $# ))
ns=16384,32768,65536,131072
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ ${args[i]} == --n ]] && ns=${args[i + 1]}
done
work=${SR_BENCH_WORK:-$(mktemp -d)}   # the two JSON files
masks=${SR_BENCH_MASKS:-$work/masks}   # the CSR masks (large: up to ~70 MB each at 128K)
mkdir -p "$work" "$masks"
# The nvcc that built BUILD_DIR (CMake records it under CMakeFiles/<version>/); SR_NVCC_VERSION
# overrides, for a build folder copied without its CMakeFiles/.
nvcc_ver=${SR_NVCC_VERSION:-$(sed -n 's/^set(CMAKE_CUDA_COMPILER_VERSION "\(.*\)")/\1/p' \
  "$build"/CMakeFiles/*/CMakeCUDACompiler.cmake 2>/dev/null | head -1)}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
"$build/bench_gpu/sr_bench_gpu" --json "$work/ours.json" --masks "$masks" --mask-block 128 "$@"
PYTHONUNBUFFERED=1 python3 "$here/peers.py" --n "$ns" --masks "$masks" --json "$work/peers.json"
rm -rf "$masks"
python3 "$here/report.py" "$work/ours.json" "$work/peers.json" "$out" --mask-block 128 \
  ${nvcc_ver:+--nvcc "$nvcc_ver"}
# The runtime against its own kernels (runtime_vs_kernel.sh), merged into the same record.
if [[ ${SR_BENCH_RUNTIME:-1} != 0 ]]; then
  "$here/runtime_vs_kernel.sh" "$build" "$work/runtime.json"
  python3 - "$out" "$work/runtime.json" <<'PYEOF2'
import json, sys
rec, rt = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
rec["runtime_vs_kernel"] = rt
worst = min(r["ratio"] for r in rt["rows"])
rec["goals"]["runtime_over_kernel"] = {"goal": 0.95, "worst_ratio": worst, "met": worst >= 0.95}
json.dump(rec, open(sys.argv[1], "w"), indent=1)
print("#   runtime_over_kernel: worst ratio %.3f vs goal 0.95 -> %s" % (worst, "met" if worst >= 0.95 else "NOT MET"))
PYEOF2
fi
