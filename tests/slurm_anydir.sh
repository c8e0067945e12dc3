#!/usr/bin/env bash
# slurm_anydir.sh — jobs/sparsering.sbatch and jobs/sparsering-requeue.sbatch submitted from a
# directory outside the repository, without Slurm: each script is copied to a "spool" directory
# and run from there as slurmd does (so $0 says nothing about the repository), with the
# submission directory a temporary one. A stand-in `scontrol` answers `show job` with the
# Command= line Slurm would print; a stand-in `srun` records its arguments and runs mpirun.
# Checks: the repository is found (Command=, SPARSERING_HOME, the submission directory or one
# above), outputs land in the submission directory or SPARSERING_OUT_DIR, the launcher is the
# one chosen (mpirun on 2 ranks for real; srun --mpi=pmix through the stand-in), the '#' header
# names ranks per node, binding and GPUs, and a missing home or a bad launcher fails clearly.
. "$(dirname "$0")/fault_lib.sh"
repo=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sr-anydir.XXXXXX") || fail "mktemp failed"
trap 'rm -rf "$tmp"' EXIT
case $tmp/ in "$repo"/*) fail "$tmp is inside the repository" ;; esac
sub=$tmp/submit spool=$tmp/spool
mkdir -p "$sub" "$spool/job00042" "$spool/job00043" "$spool/job00044" "$tmp/bin"
cp "$repo/jobs/sparsering.sbatch" "$spool/job00042/slurm_script"
cp "$repo/jobs/sparsering.sbatch" "$spool/job00043/slurm_script"
cp "$repo/jobs/sparsering-requeue.sbatch" "$spool/job00044/slurm_script"

cat >"$tmp/bin/scontrol" <<EOS
#!/bin/sh
echo "\$*" >>"$tmp/scontrol.log"
[ "\$1 \$2" = "show job" ] || exit 0
echo "JobId=\$3 JobName=sparsering"
[ -n "\${FAKE_COMMAND:-}" ] && echo "   Command=\$FAKE_COMMAND"
echo "   WorkDir=\$SLURM_SUBMIT_DIR"
EOS
# srun [options] PROGRAM ARGS...: the options are recorded, PROGRAM runs under mpirun.
cat >"$tmp/bin/srun" <<EOS
#!/usr/bin/env bash
printf '%s\n' "\$*" >>"$tmp/srun.log"
while [ \$# -gt 0 ] && [ "\${1#-}" != "\$1" ]; do shift; done
exec "$MPIEXEC" -np "\$SLURM_NTASKS" "\$@"
EOS
chmod +x "$tmp/bin/scontrol" "$tmp/bin/srun"
export PATH=$tmp/bin:$PATH SPARSERING=$SR_BIN SPARSERING_MPIRUN=$MPIEXEC
unset SR_LAUNCH SPARSERING_LAUNCHER SPARSERING_OUT_DIR SPARSERING_HOME SPARSERING_BIND FAKE_COMMAND
unset SLURM_NTASKS_PER_NODE SLURM_CPUS_PER_TASK SLURM_GPUS_PER_TASK CUDA_VISIBLE_DEVICES
export SLURM_SUBMIT_DIR=$sub SLURM_NTASKS=$NP SLURM_TASKS_PER_NODE=$NP SLURM_JOB_NUM_NODES=1

# job JOBID SCRIPT_DIR [args...]: the copied script in its spool dir, run from $sub.
job() {
  local id=$1 d=$spool/job000$1
  shift
  (cd "$sub" && SLURM_JOB_ID=$id timeout -k 5 60 "$d/slurm_script" "$@") >"$tmp/job$id.out" 2>&1
}
has() { grep -q -- "$2" "$1" || fail "$(basename "$1"): no line matching /$2/: $(grep '^#' "$1" | head -12)"; }

# 1. mpirun (the default), the repository found from Command=, relative -o, outputs in $sub.
FAKE_COMMAND=$repo/jobs/sparsering.sbatch job 42 "${ARGS[@]}" -o out.h5 ||
  fail "job 42 (mpirun) failed: $(tail -5 "$tmp/job42.out")"
o=$tmp/job42.out
has "$o" "^# home: $repo (scontrol Command=)"
has "$o" "^# nodes: 1 .*ranks: $NP, ranks per node: $NP\$"
has "$o" "^# launcher: mpirun: $MPIEXEC --map-by ppr:$NP:node"
has "$o" "^# binding: "
has "$o" "^# ranks $NP,"
[ -s "$sub/out.h5" ] || fail "out.h5 (relative -o) is not in the submission directory"
[ -s "$sub/sparsering-42.json" ] || fail "no report sparsering-42.json in the submission directory"
ok "from $sub: home from Command=, $(grep '^# launcher' "$o" | cut -c3-), outputs in the submission directory"

# 2. srun (stand-in), SPARSERING_HOME, SPARSERING_OUT_DIR, one GPU per task in the header.
SPARSERING_LAUNCHER=srun SPARSERING_HOME=$repo SPARSERING_OUT_DIR=$tmp/out SPARSERING_BIND=core \
  SLURM_CPUS_PER_TASK=1 SLURM_GPUS_PER_TASK=1 CUDA_VISIBLE_DEVICES=0 \
  job 43 "${ARGS[@]}" -o "$tmp/out/srun.h5" || fail "job 43 (srun) failed: $(tail -5 "$tmp/job43.out")"
o=$tmp/job43.out
has "$o" "^# home: $repo (SPARSERING_HOME)"
has "$o" "^# launcher: srun: srun --mpi=pmix .*--ntasks-per-node=$NP .*--cpus-per-task=1 --cpu-bind=cores"
has "$o" "^# GPUs per rank: 1 (--gpus-per-task"
has "$o" "^# ranks $NP,"
grep -q -- "--mpi=pmix" "$tmp/srun.log" || fail "srun was not called with --mpi=pmix: $(cat "$tmp/srun.log")"
[ -s "$tmp/out/sparsering-43.json" ] || fail "no report in SPARSERING_OUT_DIR"
has "$tmp/out/sparsering-43.out" "^# sparsering exit code 0"
[ ! -e "$sub/sparsering-43.json" ] || fail "the report went to the submission directory"
ok "srun launcher: $(head -1 "$tmp/srun.log"); report and log copy in SPARSERING_OUT_DIR"

# 3. The requeue script: the repository found above the submission directory (no Command=),
#    srun; a run that finishes is not requeued. The outputs go to SPARSERING_OUT_DIR.
rm -f "$tmp/scontrol.log"
(cd "$repo/jobs" && SLURM_SUBMIT_DIR=$repo/jobs SLURM_JOB_ID=44 SLURM_RESTART_COUNT=0 \
  SPARSERING_LAUNCHER=srun SPARSERING_OUT_DIR=$tmp/out3 timeout -k 5 60 \
  "$spool/job00044/slurm_script" "${ARGS[@]}" -o "$tmp/out3/r.h5") >"$tmp/job44.out" 2>&1 ||
  fail "job 44 (requeue script, srun) failed: $(tail -5 "$tmp/job44.out")"
o=$tmp/out3/sparsering-44.out
has "$o" "^# home: $repo (submission directory)"
has "$o" "^# launcher: srun: srun --mpi=pmix"
has "$o" "job 44: done"
[ -s "$tmp/out3/sparsering-44.json" ] && [ -s "$tmp/out3/r.h5" ] || fail "requeue script: outputs missing"
! grep -q requeue "$tmp/scontrol.log" 2>/dev/null || fail "a finished run was requeued"
ok "requeue script: home from the submission directory, srun, done, outputs in SPARSERING_OUT_DIR"

# 4. No way to the repository: a clear error. A bad launcher: exit 2.
job 42 "${ARGS[@]}" -o out.h5 && fail "job without a home succeeded"
has "$tmp/job42.out" "cannot find the sparsering directory.*SPARSERING_HOME"
nohome=$(tail -1 "$tmp/job42.out")
SPARSERING_HOME=$repo SPARSERING_LAUNCHER=aprun job 42 "${ARGS[@]}" -o out.h5
rc=$?
[ $rc -eq 2 ] || fail "SPARSERING_LAUNCHER=aprun: exit $rc, expected 2"
has "$tmp/job42.out" "expected mpirun or srun"
ok "no home: \"$nohome\"; unknown launcher: exit 2"
echo "PASS"
