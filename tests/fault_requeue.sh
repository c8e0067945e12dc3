#!/usr/bin/env bash
# fault_requeue.sh — jobs/sparsering-requeue.sbatch as Slurm would drive it, without Slurm: the
# script runs with SLURM_JOB_ID set, a stand-in `scontrol` on PATH records what it is asked,
# and SIGUSR1 goes to the script alone (what --signal=B:USR1@N does). Expected: the script
# forwards it, sparsering exits 75 with its checkpoint, the script asks `scontrol requeue <id>`
# and exits 0; the "requeued" start (SLURM_RESTART_COUNT=1) resumes and finishes with a result
# identical to an uninterrupted run. A failing run is passed through, not requeued.
. "$(dirname "$0")/fault_lib.sh"
repo=$(cd "$(dirname "$0")/.." && pwd)
script=$repo/jobs/sparsering-requeue.sbatch
[ -x "$script" ] || fail "$script is not executable"

here=$PWD
# The reference at the same absolute paths the job uses (the output and report paths are part
# of the stored config; the job writes its report sparsering-<job id>.json).
run --resume -o "$here/out.h5" --json "$here/sparsering-4242.json" || fail "reference run failed"
mv out.h5 ref.h5
rm sparsering-4242.json
mkdir -p fakebin
cat >fakebin/scontrol <<EOF
#!/bin/sh
echo "\$*" >>"$PWD/scontrol.log"
EOF
chmod +x fakebin/scontrol
# The job runs in its submission directory (here); the launcher line is the script's own
# (mpirun --map-by ppr:NP:node ... from SLURM_NTASKS; tests/slurm_anydir.sh checks it further).
export PATH=$PWD/fakebin:$PATH SPARSERING=$SR_BIN SLURM_SUBMIT_DIR=$here SLURM_JOB_ID=4242
export SPARSERING_MPIRUN=$MPIEXEC SLURM_NTASKS=$NP SLURM_NTASKS_PER_NODE=$NP
unset SR_LAUNCH SPARSERING_LAUNCHER SPARSERING_OUT_DIR SPARSERING_HOME

# The first start, told to stop while layer 0 or 1 is in progress.
SR_TEST_DELAY_MS=60 SLURM_RESTART_COUNT=0 "$script" "${ARGS[@]}" -o "$here/out.h5" \
  >job1.out 2>job1.err &
job=$!
sleep 1
kill -USR1 "$job"
wait "$job"
rc=$?
[ $rc -eq 0 ] || fail "first start: script exit $rc, expected 0 after requeueing ($(tail -2 job1.out))"
grep -q "^# launcher: mpirun: .*--map-by ppr:$NP:node" job1.out || fail "no launcher line: $(head -8 job1.out)"
grep -q "got SIGUSR1" job1.out || fail "the script did not see SIGUSR1"
grep -q "^sparsering: interrupted by SIGUSR1" job1.err || fail "sparsering was not interrupted"
[ "$(cat scontrol.log)" = "requeue 4242" ] || fail "scontrol was asked: $(cat scontrol.log)"
[ -f out.h5.partial.d/manifest.json ] || fail "no checkpoint after the first start"
ok "first start: stopped by SIGUSR1, requeued ($(grep requeueing job1.out | cut -c1-80))"

# The requeued start resumes and finishes.
SLURM_RESTART_COUNT=1 "$script" "${ARGS[@]}" -o "$here/out.h5" >job2.out 2>job2.err ||
  fail "requeued start failed: $(tail -3 job2.out job2.err)"
grep -q "done" job2.out || fail "requeued start did not finish"
[ -s sparsering-4242.json ] || fail "no JSON report sparsering-4242.json in the submission directory"
[ "$(wc -l <scontrol.log)" -eq 1 ] || fail "requeued again after finishing"
same "stopped by the job script, requeued, resumed" --bytes

# A real failure is not requeued and keeps its exit code.
SLURM_RESTART_COUNT=0 "$script" "${ARGS[@]}" --set attention.sparsity=2 -o "$here/x.h5" \
  >job3.out 2>job3.err
rc=$?
[ $rc -eq 2 ] || fail "a config error gave script exit $rc, expected 2"
[ "$(wc -l <scontrol.log)" -eq 1 ] || fail "a failed run was requeued"
ok "a failing run is not requeued (exit $rc)"
echo "PASS"
