#!/usr/bin/env bash
# jobs/gpu/build.sh [BUILD_DIR] [cmake args...] — the Release build with the CUDA backend and the
# NCCL transport (SR_CUDA=ON), in build-gpu/ by default. Run it from any directory.
#
# It needs, found by CMake: the CUDA toolkit (nvcc), NCCL, MPI (Open MPI) and parallel HDF5,
# plus libcyaml, cJSON and (for the tests) cmocka. On a cluster, load the matching modules first
# (names vary by site, e.g. `module load cuda nccl openmpi hdf5/parallel`); on a node without
# parallel HDF5, `source .gpudeps/env.sh` after jobs/gpu/stage-deps.sh. No GPU is needed to build.
#
#   SR_NATIVE=OFF    no -march=native: the binary also runs on compute nodes whose CPU is not
#                    the build machine's
#   architecture     cmake/cuda.cmake's default, 90a (H100/H200; the wgmma kernels). Other GPUs:
#                    jobs/gpu/build.sh build-gpu -DCMAKE_CUDA_ARCHITECTURES=80
#   NCCL elsewhere   jobs/gpu/build.sh build-gpu -DNCCL_ROOT=/path/to/nccl
#   benchmarks       off here; jobs/gpu/build.sh build-gpu -DSR_BUILD_BENCH=ON builds
#                    sr_bench_gpu for bench/gpu/run_all.sh
# Then: jobs/gpu/check_2gpu.sh (the GPU tests), jobs/gpu/bench_2gpu.sh, or mpirun/srun with one
# rank per GPU (docs/MULTIGPU.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-build-gpu}
shift || true
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DSR_CUDA=ON -DSR_NATIVE=OFF -DSR_BUILD_BENCH=OFF \
  "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)" >/dev/null
echo "# built $dir/sparsering ($(du -sh "$dir" | cut -f1))"
