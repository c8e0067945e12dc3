#!/usr/bin/env bash
# jobs/gpu/check_2gpu.sh [BUILD_DIR] [ctest args...] — the gpu-labelled tests (tests/gpu_mpi.cmake,
# tests/gpu.cmake) on a node with GPUs, e.g. inside a 2-GPU allocation. Run from anywhere;
# BUILD_DIR defaults to build-gpu (jobs/gpu/build.sh). mpirun comes from PATH (your MPI module,
# or the staged tree of jobs/gpu/stage-deps.sh, whose .gpudeps/env.sh is sourced when present).
#
# CTest files hold the absolute paths of the machine that configured the build. When the build
# was made elsewhere and copied here, the old source and build paths are made to point at this
# checkout (symbolic links, only where nothing exists at those paths), so it runs unchanged.
# Tests that need more GPUs than the node has (np 3 and 4 on 2 GPUs) report "skipped".
set -euo pipefail
cd "$(dirname "$0")/../.."
# The staged Open MPI + parallel HDF5 (jobs/gpu/stage-deps.sh), if present and not yet sourced.
# shellcheck source=/dev/null
if [ -z "${OPAL_PREFIX:-}" ] && [ -f .gpudeps/env.sh ]; then . .gpudeps/env.sh; fi
export NCCL_NVLS_ENABLE=0
dir=${1:-build-gpu}
[ -f "$dir/CMakeCache.txt" ] || { echo "check_2gpu: no build in $dir (jobs/gpu/build.sh)" >&2; exit 1; }
grep -qE '^SR_CUDA:[A-Z]+=(ON|1|TRUE|YES)$' "$dir/CMakeCache.txt" ||
  { echo "check_2gpu: $dir was configured without SR_CUDA=ON" >&2; exit 1; }
here_src=$(pwd -P)
here_bin=$(cd "$dir" && pwd -P)
old_src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$dir/CMakeCache.txt")
old_bin=$(sed -n 's/^CMAKE_CACHEFILE_DIR:INTERNAL=//p' "$dir/CMakeCache.txt")
for pair in "$old_src|$here_src" "$old_bin|$here_bin"; do
  old=${pair%%|*} new=${pair#*|}
  if [ -n "$old" ] && [ "$old" != "$new" ] && [ ! -e "$old" ]; then
    mkdir -p "$(dirname "$old")"
    ln -s "$new" "$old"
    echo "# linked $old -> $new (the build was configured there)"
  fi
done
echo "# $(nvidia-smi -L 2>/dev/null | tr '\n' ';' || echo 'no nvidia-smi')"
echo "# mpirun: $(command -v mpirun), NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE"
ctest --test-dir "$dir" -L gpu --output-on-failure --timeout 300 "${@:2}"
