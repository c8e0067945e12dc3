#!/usr/bin/env bash
# tests/gpu_run.sh [--gpus N] [--np N] [--] COMMAND [ARGS...]
#
# Runs COMMAND only where enough NVIDIA GPUs are visible; otherwise exits 77, which the GPU
# tests declare as SKIP_RETURN_CODE (CTest reports "skipped", never "passed").
#   --gpus N   GPUs needed (default 1). No driver, no `nvidia-smi`, or `nvidia-smi -L` listing
#              fewer than N GPUs (or CUDA_VISIBLE_DEVICES naming fewer) means skip.
#   --np N     launch COMMAND with N MPI ranks, one GPU each (implies --gpus N). The launcher is
#              $SR_GPU_MPIEXEC, else `mpirun` from PATH: with the staged Open MPI of
#              jobs/gpu/stage-deps.sh that is the one `source .gpudeps/env.sh` puts first (a
#              node's own /usr/bin/mpirun must not be mixed with the staged libraries, and a
#              build made on another machine would name that machine's launcher). Ranks are not bound to cores, so each rank's
#              OpenMP threads (input generation, CPU verify) spread over the node.
# NCCL_NVLS_ENABLE is forced to 0 for everything started here (NVLink multicast stays off).
set -u
need=1
np=0
while [ $# -gt 0 ]; do
  case $1 in
  --gpus) need=$2; shift 2 ;;
  --np) np=$2; shift 2 ;;
  --) shift; break ;;
  *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: gpu_run.sh [--gpus N] [--np N] [--] COMMAND [ARGS...]" >&2; exit 2; }
[ "$np" -gt "$need" ] && need=$np

list=$(nvidia-smi -L 2>/dev/null) || { echo "SKIP: nvidia-smi -L failed (no GPU or no driver)"; exit 77; }
have=$(printf '%s\n' "$list" | grep -c '^GPU [0-9]')
if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
  vis=$(printf '%s' "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c '[^[:space:]]')
  [ "$vis" -lt "$have" ] && have=$vis
fi
[ "$have" -ge "$need" ] || { echo "SKIP: needs $need GPU(s), $have visible"; exit 77; }

export NCCL_NVLS_ENABLE=0
if [ "$np" -gt 0 ]; then
  exec ${SR_GPU_MPIEXEC:-mpirun} -np "$np" --bind-to none -x NCCL_NVLS_ENABLE "$@"
fi
exec "$@"
