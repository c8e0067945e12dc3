#!/usr/bin/env bash
# fault_slurm.sh — jobs/sparsering-requeue.sbatch under a real single-node Slurm: the batch
# shell gets SIGUSR1 (`scancel --batch --signal=USR1`, what --signal=B:USR1@N delivers), the
# job exits 75 and requeues itself with `scontrol requeue`, the requeued job (restart 1)
# resumes, and the published file is identical to an uninterrupted run. The job is submitted
# from a directory outside the repository (a temporary one) by the repository's own path, as a
# user would: the script finds the repository through `scontrol show job` (Command=), the log
# and the JSON report land in that submission directory. Then jobs/sparsering.sbatch runs with
# SPARSERING_LAUNCHER=srun (srun --mpi=pmix; skipped where Slurm has no pmix plugin).
# Starts its own munged, slurmctld and slurmd under this test's directory and
# stops them by PID at the end. Needs root and Debian's slurm-wlm + munge; exit 77 (skipped)
# without them. With SR_SLURM_TIMELIMIT=1 the signal comes from a real 1-minute time limit
# (--time=1 --signal=B:USR1@50) instead: slower (about 2 minutes), for a manual check.
. "$(dirname "$0")/fault_lib.sh"
for t in slurmctld slurmd munged sbatch scontrol scancel; do
  command -v "$t" >/dev/null || { echo "skip: $t not installed (slurm-wlm, munge)"; exit 77; }
done
[ "$(id -u)" -eq 0 ] && id munge >/dev/null 2>&1 || { echo "skip: needs root and a munge user"; exit 77; }
repo=$(cd "$(dirname "$0")/.." && pwd)
here=$PWD
S=$here/slurm
. "$repo/tests/slurm_lib.sh"
slurm_sockdir srsl || fail "mktemp failed"
mkdir -p "$S"/state "$K"/spool
pids=()
# The submission directory: outside the repository (the build tree may lie inside it).
sub=$(mktemp -d "${TMPDIR:-/tmp}/sr-slurm-submit.XXXXXX") || fail "mktemp failed"
case $sub/ in "$repo"/*) fail "$sub is inside the repository" ;; esac
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$sub" "$K"
}
trap cleanup EXIT

slurm_munged || { echo "skip: munged does not start"; exit 77; }

hw=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //; s/UpTime=.*//')
# Ports of our own (two test runs on one machine must not meet).
port=$(( 20000 + ($$ % 10000) * 2 ))
cat >"$S/slurm.conf" <<EOF
ClusterName=srtest
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
NodeName=localhost NodeAddr=127.0.0.1 $hw
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
MpiDefault=pmix
EnforcePartLimits=ALL
JobRequeue=1
SlurmdSpoolDir=$K/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd.log
EOF
slurm_conf_common >>"$S/slurm.conf"
export SLURM_CONF=$S/slurm.conf
slurmctld -i || fail "slurmctld does not start ($(tail -2 "$S/slurmctld.log"))"
sleep 0.5
pids+=("$(cat "$S/slurmctld.pid")")
slurmd -N localhost || fail "slurmd does not start ($(tail -2 "$S/slurmd.log"))"
sleep 0.5
pids+=("$(cat "$S/slurmd.pid")")
for i in $(seq 50); do
  sinfo -h -o %t 2>/dev/null | grep -qE '^idle' && break
  sleep 0.2
done
sinfo -h -o %t | grep -qE '^idle' || fail "the node does not come up: $(sinfo 2>&1 | tail -1)"

extra=()
if [ "${SR_SLURM_TIMELIMIT:-0}" = 1 ]; then
  extra=(--time=1 --signal=B:USR1@50)
  delay=2000
else
  delay=60
fi
# Submitted from $sub by the repository's path; no SPARSERING_HOME, no --output: the log goes
# to $sub/sparsering-<job>.out. Output paths are absolute (the reference is made at the same).
jid=$(cd "$sub" && env -u SPARSERING_HOME sbatch --parsable -n "$NP" --overcommit \
      "${extra[@]}" --export=ALL,SPARSERING="$SR_BIN",SPARSERING_MPIRUN="$MPIEXEC",SR_TEST_DELAY_MS=$delay \
      "$repo/jobs/sparsering-requeue.sbatch" "${ARGS[@]}" -o "$here/out.h5") || fail "sbatch failed"
echo "# job $jid submitted"
state() { scontrol show job "$jid" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
restarts() { scontrol show job "$jid" 2>/dev/null | grep -o 'Restarts=[0-9]*' | cut -d= -f2; }
for i in $(seq 100); do [ "$(state)" = RUNNING ] && break; sleep 0.2; done
[ "$(state)" = RUNNING ] || fail "job not running: $(state)"
if [ "${SR_SLURM_TIMELIMIT:-0}" != 1 ]; then
  sleep 1.5
  scancel --batch --signal=USR1 "$jid" || fail "scancel --signal failed"
fi
# The requeued job runs again; wait until it is done. Slurm holds a requeued job back for a
# while (its begin time); as root the test lets it start 1.5 s after it first sees the job
# pending (an update also makes Slurm schedule at once): a restart within the second of the
# kill would find its credential revoked ("Job credential revoked", the job then FAILED), which
# is why Slurm waits in the first place.
pending_since=0
for i in $(seq 900); do
  s=$(state)
  [ "$(restarts)" -ge 1 ] 2>/dev/null && [ "$s" = COMPLETED ] && break
  if [ "$s" = PENDING ]; then
    pending_since=$((pending_since + 1))
    [ $pending_since -ge 8 ] && scontrol update jobid="$jid" StartTime=now 2>/dev/null
  fi
  case $s in FAILED | CANCELLED | TIMEOUT | NODE_FAIL)
    fail "job ended $s: $(tail -5 "$sub/sparsering-$jid.out"); slurmctld: $(tail -n 3 "$S"/slurmctld.log)" ;;
  esac
  sleep 0.2
done
[ "$(state)" = COMPLETED ] || fail "job not completed: $(state) (restarts $(restarts))"
log=$sub/sparsering-$jid.out
[ -s "$log" ] || fail "no job log $log in the submission directory: $(ls "$sub")"
grep -h "job $jid:" "$log" | sed 's/^/  /'
grep -q "got SIGUSR1" "$log" || fail "the job never saw SIGUSR1"
grep -q "requeueing" "$log" || fail "the job did not requeue itself"
grep -q "^# home: $repo (scontrol Command=)" "$log" || fail "home not found from Command=: $(grep '^# home' "$log")"
grep -q "^# launcher: mpirun: .*--map-by ppr:$NP:node" "$log" || fail "no launcher line: $(grep '^# launcher' "$log")"
[ "$(grep -c '^# sparsering job' "$log")" -eq 2 ] || fail "expected a header for each of 2 starts"
[ -s "$sub/sparsering-$jid.json" ] || fail "no JSON report in the submission directory"
ok "job $jid: stopped by SIGUSR1, requeued (restarts $(restarts)), completed; log and report in $sub"
grep -h "^# \(nodes\|launcher\|binding\)" "$log" | head -3 | sed 's/^/  /'

# The reference, at the absolute paths the job wrote to (output and report paths are part of
# the stored config).
mv out.h5 job.h5 && mv "$sub/sparsering-$jid.json" job.json
run --resume -o "$here/out.h5" --json "$sub/sparsering-$jid.json" || fail "reference run failed"
mv out.h5 ref.h5 && mv job.h5 out.h5
same "under Slurm: stopped, requeued, resumed" --bytes

# jobs/sparsering.sbatch with srun --mpi=pmix, also from $sub, report in SPARSERING_OUT_DIR.
if ! srun --mpi=list 2>&1 | grep -q pmix; then
  echo "skip: srun has no pmix plugin (srun --mpi=list)"
  echo "PASS"
  exit 0
fi
# A CPU per rank where the node has them: then srun binds (--cpus-per-task=1 --cpu-bind=cores).
over=()
[ "$(slurmd -C | grep -o 'CPUs=[0-9]*' | cut -d= -f2)" -ge "$NP" ] || over=(--overcommit)
jid=$(cd "$sub" && sbatch --parsable -n "$NP" "${over[@]}" \
      --export=ALL,SPARSERING="$SR_BIN",SPARSERING_LAUNCHER=srun,SPARSERING_OUT_DIR="$here/srun-out" \
      "$repo/jobs/sparsering.sbatch" "${ARGS[@]}" -o "$here/srun.h5") || fail "sbatch (srun) failed"
for i in $(seq 300); do
  case $(state) in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL) break ;; esac
  sleep 0.2
done
log=$sub/sparsering-$jid.out
[ "$(state)" = COMPLETED ] || fail "srun job $(state): $(tail -5 "$log")"
grep -q "^# launcher: srun: srun --mpi=pmix .*--ntasks-per-node=$NP" "$log" ||
  fail "no srun launcher line: $(grep '^# launcher' "$log")"
[ -s "$here/srun-out/sparsering-$jid.json" ] || fail "no report in SPARSERING_OUT_DIR"
[ -s "$here/srun-out/sparsering-$jid.out" ] || fail "no copy of the log in SPARSERING_OUT_DIR"
grep -q "^# ranks $NP," "$log" || fail "sparsering did not run on $NP ranks: $(grep '^# ranks' "$log")"
ok "job $jid: srun --mpi=pmix on $NP ranks; report and log copy in SPARSERING_OUT_DIR"
grep -h "^# \(launcher\|binding\)" "$log" | sed 's/^/  /'
echo "PASS"
