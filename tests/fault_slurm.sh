#!/usr/bin/env bash
# fault_slurm.sh — jobs/sparsering-requeue.sbatch under a real single-node Slurm: the batch
# shell gets SIGUSR1 (`scancel --batch --signal=USR1`, what --signal=B:USR1@N delivers), the
# job exits 75 and requeues itself with `scontrol requeue`, the requeued job (restart 1)
# resumes, and the published file is identical to an uninterrupted run.
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
mkdir -p "$S"/state "$S"/spool /run/munge
chown munge:munge /run/munge
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
}
trap cleanup EXIT

# munge: our own socket, so that a system munged is left alone.
sock=$S/munge.socket
chown munge:munge "$S"
runuser -u munge -- munged --socket="$sock" --pid-file="$S/munged.pid" --log-file="$S/munged.log" \
  --seed-file="$S/munged.seed" || { echo "skip: munged does not start"; exit 77; }
pids+=("$(cat "$S/munged.pid")")

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
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
MpiDefault=pmix
EnforcePartLimits=ALL
MailProg=/bin/true
JobCompType=jobcomp/filetxt
JobCompLoc=$S/jobcomp.txt
JobRequeue=1
ReturnToService=2
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd.log
EOF
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

# The reference, at the absolute path the job writes to.
run --resume -o "$here/out.h5" || fail "reference run failed"
mv out.h5 ref.h5

cp "$repo/jobs/sparsering-requeue.sbatch" job.sbatch
extra=()
if [ "${SR_SLURM_TIMELIMIT:-0}" = 1 ]; then
  extra=(--time=1 --signal=B:USR1@50)
  delay=2000
else
  delay=60
fi
# jobs/env.sh is sourced from SLURM_SUBMIT_DIR: submit from the repository.
jid=$(cd "$repo" && sbatch --parsable -n "$NP" --overcommit --output="$here/job-%j.out" \
      "${extra[@]}" --export=ALL,SPARSERING="$SR_BIN",SR_LAUNCH="$MPIEXEC",SR_TEST_DELAY_MS=$delay \
      "$here/job.sbatch" "${ARGS[@]}" -o "$here/out.h5") || fail "sbatch failed"
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
    fail "job ended $s: $(cat "$here"/job-*.out | tail -5); slurmctld: $(tail -n 3 "$S"/slurmctld.log)" ;;
  esac
  sleep 0.2
done
[ "$(state)" = COMPLETED ] || fail "job not completed: $(state) (restarts $(restarts))"
grep -h "job $jid:" "$here"/job-*.out | sed 's/^/  /'
grep -q "got SIGUSR1" "$here"/job-*.out || fail "the job never saw SIGUSR1"
grep -q "requeueing" "$here"/job-*.out || fail "the job did not requeue itself"
ok "job $jid: stopped by SIGUSR1, requeued (restarts $(restarts)), completed"
same "under Slurm: stopped, requeued, resumed" --bytes
echo "PASS"
