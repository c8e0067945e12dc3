#!/usr/bin/env bash
# jobs/scaling.sh [options] [-- sparsering args...] — scaling sweeps (docs/SCALING.md).
# Runs sparsering over ranks x N x method x sparsity x exchange mode, strong and/or weak scaling,
# each point --warmup times unrecorded then --reps times, one layer per run, no verification,
# no HDF5 output; one JSON report per run under DIR/runs/, then DIR/sweep.json and DIR/sweep.csv
# (median and spread of the attention time, GFLOP/s, bytes moved, per-rank min/avg/max of every
# phase, efficiency vs the smallest rank count run) and DIR/meta.json (run metadata), made by
# bench/scaling/aggregate.py. Plots: bench/scaling/plot.py DIR.
#   jobs/scaling.sh -o /tmp/sweep --ranks "1 2 4" --n "16384 32768" --weak 8192
# Older form, still accepted: jobs/scaling.sh CONFIG "NP LIST" [sparsering args...]
set -euo pipefail
home=$(cd "$(dirname "$0")/.." && pwd)
. "$home/jobs/env.sh"

usage() {
  cat <<'EOF'
Usage: jobs/scaling.sh [options] [-- sparsering args...]
  -o, --out DIR         results folder (default: ./results/scaling-<date>-<job id or pid>,
                        under the current directory); refused if it already holds a sweep
  -c, --config FILE     base config (default: the binary's embedded demo)
      --bin PATH        the binary (default: $SPARSERING, else <home>/build/sparsering)
      --ranks LIST      rank counts (default "1 2 4")
      --n LIST          strong scaling: global seq_len values (default "16384")
      --weak LIST       weak scaling: tokens per rank (N = tokens x ranks); default none
      --no-strong       weak scaling only
      --methods LIST    attention.method values (default "dense block_sparse vertical_slash")
      --sparsities LIST attention.sparsity values for the sparse methods (default "0.9")
      --exchange LIST   exchange modes (default "selected dense_ring")
      --reps R          recorded repetitions per point (default 3)
      --warmup W        unrecorded runs before them (default 1)
      --threads T       threads per rank (default 1)
      --bind MODE       core (default; none where ranks x threads exceed the cores) or none
      --launcher L      mpirun (default) or srun
      --note TEXT       free text kept in meta.json (e.g. "another job shared the machine")
      --dry-run         print the commands, run nothing
  -h, --help            this help
LIST: words separated by spaces or commas.
EOF
}

out="" cfg="" bin=${SPARSERING:-$home/build/sparsering}
ranks="1 2 4" ns="16384" weak="" strong=1
methods="dense block_sparse vertical_slash" sps="0.9" exch="selected dense_ring"
reps=3 warmup=1 threads=1 bind=core launcher=mpirun note="" dry=0
extra=()
# The older positional form: CONFIG "NP LIST" [args...]
if [ $# -ge 2 ] && [ -f "$1" ] && [[ $2 =~ ^[0-9\ ,]+$ ]]; then
  cfg=$1 ranks=$2
  shift 2
  extra=("$@")
  set --
fi
while [ $# -gt 0 ]; do
  case $1 in
  -o | --out) out=$2; shift ;;
  -c | --config) cfg=$2; shift ;;
  --bin) bin=$2; shift ;;
  --ranks) ranks=$2; shift ;;
  --n) ns=$2; shift ;;
  --weak) weak=$2; shift ;;
  --no-strong) strong=0 ;;
  --methods) methods=$2; shift ;;
  --sparsities) sps=$2; shift ;;
  --exchange) exch=$2; shift ;;
  --reps) reps=$2; shift ;;
  --warmup) warmup=$2; shift ;;
  --threads) threads=$2; shift ;;
  --bind) bind=$2; shift ;;
  --launcher) launcher=$2; shift ;;
  --note) note=$2; shift ;;
  --dry-run) dry=1 ;;
  -h | --help) usage; exit 0 ;;
  --) shift; extra+=("$@"); break ;;
  *) echo "jobs/scaling.sh: unknown option '$1' (--help)" >&2; exit 2 ;;
  esac
  shift
done
words() { echo "$1" | tr ',' ' '; }
ranks=$(words "$ranks") ns=$(words "$ns") weak=$(words "$weak") methods=$(words "$methods")
sps=$(words "$sps") exch=$(words "$exch")
die() { echo "jobs/scaling.sh: $*" >&2; exit 2; }
[[ $reps =~ ^[1-9][0-9]*$ ]] || die "--reps $reps: a positive integer"
[[ $warmup =~ ^[0-9]+$ ]] || die "--warmup $warmup: an integer >= 0"
[[ $threads =~ ^[1-9][0-9]*$ ]] || die "--threads $threads: a positive integer"
case $bind in core | none) ;; *) die "--bind $bind: core or none" ;; esac
case $launcher in mpirun | srun) ;; *) die "--launcher $launcher: mpirun or srun" ;; esac
for r in $ranks $ns $weak; do [[ $r =~ ^[1-9][0-9]*$ ]] || die "'$r' is not a positive integer"; done
[ -n "$ranks" ] && [ -n "$methods" ] && [ -n "$exch" ] || die "empty --ranks, --methods or --exchange"
[ "$strong" = 1 ] && [ -n "$ns" ] || [ -n "$weak" ] || die "nothing to run (no --n for strong, no --weak)"
[ -x "$bin" ] || die "no binary at $bin (--bin, or build it: jobs/build.sh)"
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
[ -z "$cfg" ] || { [ -f "$cfg" ] || die "no config $cfg"; cfg=$(cd "$(dirname "$cfg")" && pwd)/$(basename "$cfg"); }

job=${SLURM_JOB_ID:-$$}
[ -n "$out" ] || out=$PWD/results/scaling-$(date +%Y%m%d-%H%M%S)-$job
[ -e "$out/sweep.csv" ] || [ -e "$out/meta.json" ] && die "$out already holds a sweep (choose another --out)"
mkdir -p "$out/runs"
out=$(cd "$out" && pwd)
case $out/ in "$home"/bench/* | "$home"/runtime/* | "$home"/jobs/* | "$home"/docs/*)
  die "--out $out is inside the source tree (choose a results folder elsewhere)" ;;
esac
cores=$(env -u OMP_NUM_THREADS nproc)
idx=$out/runs/index.tsv
printf 'id\tscaling\tranks\tseq_len\tmethod\tsparsity\texchange\trun\trc\tlaunch_s\tbinding\treport\n' >"$idx"

# The launcher for NP ranks: sets cmd (array) and eff_bind.
launch() {
  local np=$1
  eff_bind=$bind
  [ "$bind" = core ] && [ $((np * threads)) -gt "$cores" ] && eff_bind=none
  if [ "$launcher" = srun ]; then
    cmd=(srun --mpi=pmix --kill-on-bad-exit=1 -n "$np" --cpus-per-task="$threads")
    if [ "$eff_bind" = core ]; then cmd+=(--cpu-bind=cores); else cmd+=(--cpu-bind=none); fi
  else
    cmd=("${SPARSERING_MPIRUN:-mpirun}" -np "$np" -x OMP_NUM_THREADS)
    if [ "$eff_bind" = core ]; then cmd+=(--map-by "slot:PE=$threads" --bind-to core)
    else cmd+=(--map-by slot --bind-to none); fi
  fi
}

# One point: W + R runs.
total=0 failed=0
point() { # scaling np n method sparsity exchange
  local sc=$1 np=$2 n=$3 m=$4 s=$5 e=$6 id k tag rep rc t0 t1
  id=${sc}_${m}_s${s}_${e}_N${n}_np${np}
  launch "$np"
  local args=(run -q --set model.layers=1 --set "seq_len=$n" --set "attention.method=$m"
    --set "exchange=$e" --set verify.rows=0 --set "threads=$threads" --set output.path=)
  [ "$m" = dense ] || args+=(--set "attention.sparsity=$s")
  [ -n "$cfg" ] && args=(run -c "$cfg" "${args[@]:1}")
  for ((k = 1; k <= warmup + reps; k++)); do
    if [ "$k" -le "$warmup" ]; then tag=warm$k; else tag=rep$((k - warmup)); fi
    rep=runs/${id}_$tag.json
    if [ "$dry" = 1 ]; then
      echo "${cmd[*]} $bin ${args[*]} ${extra[*]} --json $out/$rep"
      continue
    fi
    t0=$(date +%s.%N)
    rc=0
    OMP_NUM_THREADS=$threads "${cmd[@]}" "$bin" "${args[@]}" "${extra[@]}" --json "$out/$rep" \
      >"$out/runs/${id}_$tag.log" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    [ "$rc" = 0 ] || { failed=$((failed + 1)); echo "  FAILED (exit $rc): $out/runs/${id}_$tag.log" >&2; }
    [ "$rc" = 0 ] && rm -f "$out/runs/${id}_$tag.log"
    total=$((total + 1))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.3f\t%s\t%s\n' "$id" "$sc" "$np" "$n" "$m" \
      "$([ "$m" = dense ] && echo 0 || echo "$s")" "$e" "$tag" "$rc" \
      "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" "$eff_bind" "$rep" >>"$idx"
  done
  [ "$dry" = 1 ] || printf '  %-60s done\n' "$id"
}

sweep() { # scaling: strong over $ns or weak over $weak
  local sc=$1 list m s e n np x
  for m in $methods; do
    list=$sps
    [ "$m" = dense ] && list=0
    for s in $list; do
      for e in $exch; do
        for x in $([ "$sc" = strong ] && echo "$ns" || echo "$weak"); do
          for np in $ranks; do
            if [ "$sc" = strong ]; then n=$x; else n=$((x * np)); fi
            point "$sc" "$np" "$n" "$m" "$s" "$e"
          done
        done
      done
    done
  done
}

start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
echo "# sweep into $out ($cores cores here, load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null))"
[ "$strong" = 1 ] && [ -n "$ns" ] && sweep strong
[ -n "$weak" ] && sweep weak
[ "$dry" = 1 ] && { rm -rf "$out/runs/index.tsv"; rmdir "$out/runs" "$out" 2>/dev/null || true; exit 0; }
end=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# Metadata (the aggregator adds the hosts, backend and versions from the reports).
commit=$(git -C "$home" rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$home" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo true || echo false)
gpus=$( (command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null) | tr '\n' ';' || true)
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
SR_META_VERSION=$("$bin" --version 2>/dev/null | head -1 || true) \
SR_META_COMMIT=$commit SR_META_DIRTY=$dirty SR_META_START=$start SR_META_END=$end \
SR_META_HOST=$(hostname) SR_META_JOB=${SLURM_JOB_ID:-} SR_META_THREADS=$threads SR_META_BIND=$bind \
SR_META_LAUNCHER=$launcher SR_META_CORES=$cores SR_META_CPU=$cpu SR_META_GPUS=$gpus \
SR_META_CUDA=${CUDA_VISIBLE_DEVICES:-} SR_META_NOTE=$note SR_META_BIN=$bin SR_META_CFG=${cfg:-embedded demo} \
SR_META_REPS=$reps SR_META_WARMUP=$warmup SR_META_EXTRA="${extra[*]}" \
SR_META_LOAD="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || true)" \
  python3 - "$out/meta.json" <<'EOF'
import json, os, sys
g = lambda k: os.environ.get("SR_META_" + k, "")
meta = {"version": g("VERSION"), "git_commit": g("COMMIT"), "git_dirty": g("DIRTY") == "true",
        "started_utc": g("START"), "finished_utc": g("END"), "driver_host": g("HOST"),
        "job_id": g("JOB") or None, "threads_per_rank": int(g("THREADS")), "binding": g("BIND"),
        "launcher": g("LAUNCHER"), "cores_on_driver_host": int(g("CORES")), "cpu": g("CPU"),
        "gpus": [x for x in g("GPUS").split(";") if x], "cuda_visible_devices": g("CUDA") or None,
        "binary": g("BIN"), "config": g("CFG"), "reps": int(g("REPS")), "warmup": int(g("WARMUP")),
        "extra_args": g("EXTRA"), "load_average_at_end": g("LOAD"), "note": g("NOTE")}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF
python3 "$home/bench/scaling/aggregate.py" "$out"
[ "$failed" = 0 ] || { echo "jobs/scaling.sh: $failed of $total runs failed (see runs/*.log)" >&2; exit 1; }
