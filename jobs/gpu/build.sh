#!/usr/bin/env bash
# jobs/gpu/build.sh [BUILD_DIR] [cmake args...] — on the CPU machine (nvcc 13.0 and NCCL under
# /usr/local/cuda, no GPU): the CUDA build that the GPU host runs, in build-gpu/ by default.
# SR_NATIVE=OFF: the GPU host's processor is not this one (no -march=native). The CUDA
# architecture is cmake/cuda.cmake's default (Hopper). Benchmarks are left out to keep the
# carried folder small. Then carry build-gpu and .gpudeps (../shared/gpuhost/stage-deps.sh makes
# it) to the GPU host and run jobs/gpu/check_2gpu.sh and jobs/gpu/bench_2gpu.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-build-gpu}
shift || true
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DSR_CUDA=ON -DSR_NATIVE=OFF -DSR_BUILD_BENCH=OFF \
  "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)" >/dev/null
echo "# built $dir/sparsering; $dir is $(du -sh "$dir" | cut -f1), .gpudeps $(du -sh .gpudeps 2>/dev/null | cut -f1 || echo 'not staged') (device carry limit: 64 MiB together)"
