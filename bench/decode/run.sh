#!/usr/bin/env bash
# bench/decode/run.sh [BIN] [OUT_PREFIX] [--quick] [--quality] — the decode benchmark on one GPU
# node (one H200), with its PyTorch peers in the same run.
#
#   BIN         the sparsering binary (default: <repo>/build-gpu/sparsering)
#   OUT_PREFIX  where the results go (default: <repo>/bench/results/decode_gpu, with --quick
#               <repo>/bench/results/decode_gpu_quick):
#               speed mode   -> OUT_PREFIX.json, OUT_PREFIX.txt
#               --quality    -> OUT_PREFIX_quality.json, OUT_PREFIX_quality.txt
#   --quick     small sizes (a smoke test; also on the CPU): speed N = 16K and 64K, batches 1
#               and 4, 32 steps; quality N = 4K and 8K
#   --quality   the quality mode instead of the speed mode (below)
#
# Environment: SR_DECODE_BACKEND (cuda | cpu | auto; default cuda), SR_DECODE_WORK (folder for
# the per-run JSON reports and logs; default a fresh mktemp -d, kept), SR_DECODE_STEPS (steps
# of the speed runs, default 256; batch 32 runs a quarter), SR_DECODE_QUALITY_N (the quality
# mode's N list, default "16384 32768"), SR_DECODE_LAUNCH (a
# launcher prefix, e.g. "mpirun -np 1 --bind-to none"; default none: the binary runs as a
# singleton, one rank), SR_DECODE_TIMEOUT (seconds per run, default 300), SR_DECODE_PYTHON
# (default python3).
#
# Speed mode (verify.rows=0; 32 q-heads / 8 kv-heads / d 128, 1 layer, prefill none, calibrated
# synthetic input; step = one new token for every sequence of the batch):
#   (a) dense and quest at budget 1/20 (attention.sparsity=0.95), N = 128K and 1M, batch 1,
#       256 steps;
#   (b) dense, quest, snapkv, ada_snapkv (sparsity 0.95) at N = 128K, batch 1, 8 (256 steps) and
#       32 (64 steps; 32 prompts of K/V = 17 GB on the GPU); the batch-1 dense and quest runs
#       are those of (a);
#   then peers_decode.py (copy / read bandwidth, SDPA decode on the same (N, batch) pairs) and
#   report.py (merged JSON, table, goals).
# Quality mode: dense once per N, and quest, snapkv, ada_snapkv at the paper's Table 3
#   sparsities 0.95, 0.9, 0.8, 0.5 (budgets from the paper's formulas), N = 16K and 32K,
#   batch 2, 32 steps, verify.rows=8 (8 sampled steps checked against exact dense decode).
#
# A failed run (exit code, timeout) is reported and left out of the table; the script goes on.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
quick=0
quality=0
pos=()
for a in "$@"; do
  case $a in
    --quick) quick=1 ;;
    --quality) quality=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run.sh: unknown option $a (--quick, --quality)" >&2; exit 2 ;;
    *) pos+=("$a") ;;
  esac
done
(( ${#pos[@]} <= 2 )) || { echo "run.sh: at most two arguments: BIN OUT_PREFIX" >&2; exit 2; }
bin=${pos[0]:-$root/build-gpu/sparsering}
defprefix=$root/bench/results/decode_gpu
(( quick )) && defprefix+=_quick   # a smoke test does not overwrite the real results
prefix=${pos[1]:-$defprefix}
prefix=${prefix%.json}
backend=${SR_DECODE_BACKEND:-cuda}
tmo=${SR_DECODE_TIMEOUT:-300}
py=${SR_DECODE_PYTHON:-python3}
read -r -a launch <<<"${SR_DECODE_LAUNCH:-}"
[[ -x $bin ]] || { echo "run.sh: $bin is not an executable (build it, or pass BIN)" >&2; exit 2; }
mkdir -p "$(dirname "$prefix")"
work=${SR_DECODE_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/sr_decode.XXXXXX")}
mkdir -p "$work"
t_start=$(date +%s)
qflag=()
if (( quick )); then qflag=(--quick); fi

# 1. The device and the binary.
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu \
    --format=csv || true
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
    head -1 >"$work/device.txt" || true
else
  echo "# nvidia-smi: not found (no NVIDIA driver on this host)"
  : >"$work/device.txt"
fi
lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1 >>"$work/device.txt" || true
version=$("$bin" --version 2>/dev/null | grep -m1 sparsering || true)
echo "# $version ($bin); backend $backend; work dir $work"
printf '%s\n' "$version" >"$work/version.txt"
: >"$work/runs.tsv"

common=(--set attention.phase=decode --set attention.prefill=none --set model.q_heads=32
        --set model.kv_heads=8 --set model.head_dim=128 --set model.layers=1
        --set backend="$backend" --set output.path=)

run() { # name method seq_len batch steps sparsity verify_rows
  local name=$1 method=$2 n=$3 b=$4 steps=$5 sp=$6 vr=$7 rc=0
  local args=("${common[@]}" --set attention.method="$method" --set seq_len="$n"
              --set decode.batch="$b" --set decode.steps="$steps" --set verify.rows="$vr"
              --set report.json="$work/$name.json")
  [[ $method == dense ]] || args+=(--set attention.sparsity="$sp")
  rm -f "$work/$name.json"
  local t0 t1
  t0=$(date +%s%N)
  timeout -k 10 "$tmo" ${launch[@]+"${launch[@]}"} "$bin" run -q "${args[@]}" \
    >"$work/$name.log" 2>&1 || rc=$?
  t1=$(date +%s%N)
  local wall
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  printf '%s\t%d\t%s\n' "$name" "$rc" "$wall" >>"$work/runs.tsv"
  local line
  line=$(grep -A1 '^# layer' "$work/$name.log" | tail -1 | awk '{print $6" ms/step, "$7" tok/s, "$8" GB/s"}' || true)
  printf '  %-30s exit %3d %8.1f s  %s\n' "$name" "$rc" "$wall" "${line:-}"
  if (( rc != 0 )); then
    (( rc == 124 || rc == 137 )) && echo "    (timed out after ${tmo} s)"
    tail -3 "$work/$name.log" | sed 's/^/    | /'
  fi
  return 0
}

if (( quality )); then
  if (( quick )); then ns=(4096 8192); else ns=(16384 32768); fi
  [[ -n ${SR_DECODE_QUALITY_N:-} ]] && read -r -a ns <<<"$SR_DECODE_QUALITY_N"
  echo "# quality: dense, quest, snapkv, ada_snapkv at sparsity 0.95 0.9 0.8 0.5; N ${ns[*]};" \
       "batch 2, 32 steps, verify.rows 8"
  for n in "${ns[@]}"; do
    run "q_dense_sp0_n$n" dense "$n" 2 32 0 8
    for m in quest snapkv ada_snapkv; do
      for sp in 0.95 0.9 0.8 0.5; do
        run "q_${m}_sp${sp}_n$n" "$m" "$n" 2 32 "$sp" 8
      done
    done
  done
  "$py" "$here/report.py" quality "$work" "$prefix" --backend "$backend" ${qflag[@]+"${qflag[@]}"}
  echo "# total $(( $(date +%s) - t_start )) s"
  exit 0
fi

# 2. Speed runs.
if (( quick )); then
  n_small=16384 n_big=65536 batches=(1 4) steps_a=32 steps_b=32 steps_big_b=32
else
  n_small=131072 n_big=1048576 batches=(1 8 32) steps_a=${SR_DECODE_STEPS:-256}
  steps_b=$steps_a steps_big_b=$(( steps_a / 4 ))
fi
sp=0.95
echo "# speed (a): dense and quest (sparsity $sp), N $n_small and $n_big, batch 1, $steps_a steps"
for n in "$n_small" "$n_big"; do
  for m in dense quest; do
    run "s_${m}_n${n}_b1" "$m" "$n" 1 "$steps_a" "$sp" 0
  done
done
echo "# speed (b): tokens/s at N $n_small, batches ${batches[*]}"
pairs="$n_small:1,$n_big:1"
for b in "${batches[@]}"; do
  st=$steps_b
  (( b >= 32 )) && st=$steps_big_b
  (( b == 1 )) || pairs+=",$n_small:$b"
  for m in dense quest snapkv ada_snapkv; do
    [[ $b == 1 && ( $m == dense || $m == quest ) ]] && continue   # the runs of (a)
    run "s_${m}_n${n_small}_b$b" "$m" "$n_small" "$b" "$st" "$sp" 0
  done
done

# 3. Peers on the same GPU (prints a '#' line and writes "available": false without torch/GPU).
echo "# peers: $pairs"
PYTHONUNBUFFERED=1 "$py" "$here/peers_decode.py" --pairs "$pairs" --json "$work/peers.json" ||
  echo "# peers_decode.py failed (exit $?)"

# 4. Merge and report.
"$py" "$here/report.py" speed "$work" "$prefix" --peers "$work/peers.json" --backend "$backend" \
  ${qflag[@]+"${qflag[@]}"}
echo "# total $(( $(date +%s) - t_start )) s"
