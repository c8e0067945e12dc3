#!/usr/bin/env bash
# twonode_slurm.sh — the fault tests' single-node Slurm (tests/fault_slurm.sh) grown to two
# slurmd nodes on this machine, and `sbatch -N 2 -n 4` of jobs/sparsering.sbatch across them.
# Debian 12's slurmd (22.05.8) does run twice on one host (`slurmd -N n1`, `slurmd -N n2`, one
# Port each): both register and `srun -N 2` works, but both nodes are then the same host to
# Open MPI (one hostname, one network), which proves little about a job across nodes. So each
# node here is a host of its own: a network namespace (veth pair, 10.214.<n>.1 and .2) with its
# own hostname (UTS namespace) and /etc/hosts (bound in a mount namespace). Node A also runs
# slurmctld (the head node); munged runs here, its socket a file both namespaces reach. The job's mpirun
# (the default launcher) starts orted on node B through srun, as on a real cluster; Open MPI
# is held to TCP on the veth subnet (OMPI_MCA_* in the job's environment). Checks: both nodes
# idle, the job completes with 2 ranks on each node (Slurm's NodeList, the log's header and
# rank map), the output equals a single-node 4-rank run (h5cmp, selection exact, out 1e-6).
# Environment (tests/twonode.cmake): SR_BIN, SR_H5CMP, MPIEXEC. Exit 77 (skipped) with the
# reason when not root, without slurm-wlm / munge / iproute2, or without namespaces.
# Everything started here is stopped by PID, and the namespaces removed, on every exit path.
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
skip() { echo "skip: $*"; exit 77; }
fail() {
  echo "FAIL: $*"
  [ -s err.txt ] && { echo "--- err.txt:"; tail -15 err.txt; }
  local f
  for f in "${S:-/nonexistent}"/slurmd-*.log; do
    [ -s "$f" ] && { echo "--- ${f##*/} (errors):"; grep -E 'error|fatal' "$f" | tail -5; }
  done
  exit 1
}
ok() { echo "ok: $*"; }

[ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces, slurmd)"
for t in slurmctld slurmd munged sbatch scontrol sinfo ip unshare nsenter timeout "$MPIEXEC"; do
  command -v "$t" >/dev/null || skip "$t not installed (slurm-wlm, munge, iproute2)"
done
id munge >/dev/null 2>&1 || skip "no munge user (munge not installed)"
rm -rf run && mkdir run && cd run || exit 1
here=$PWD
S=$here/slurm
. "$repo/tests/slurm_lib.sh"
slurm_sockdir sr2n || { echo "FAIL: mktemp"; exit 1; }
mkdir -p "$S/state"

id=$$
nsA=srsa-$id nsB=srsb-$id
hostA=srslurma-$id hostB=srslurmb-$id
vA=srsa$id vB=srsb$id
sub=$((id % 250 + 1))
net=10.214.$sub.0/24 ipA=10.214.$sub.1 ipB=10.214.$sub.2

pids=()
cleanup() {
  local ns p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for ns in "$nsA" "$nsB"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null; done
  done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  for ns in "$nsA" "$nsB"; do
    ip netns list 2>/dev/null | grep -qw "^$ns" || continue
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null # the veth pair goes with it
  done
  rm -rf "$K"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# The two hosts.
. "$repo/tests/twonode_lib.sh"
twonode_net
printf '127.0.0.1 localhost\n%s %s\n%s %s\n' "$ipA" "$hostA" "$ipB" "$hostB" >hosts
# on A|B COMMAND...: COMMAND on that node: its network namespace, hostname (UTS namespace) and
# /etc/hosts (bound in a mount namespace of its own). nsenter rather than `ip netns exec`: that
# remounts /sys, which hides /sys/fs/cgroup, and slurmd then stops ("Unable to initialize
# cgroup plugin") even with proctrack/linuxproc. Each node also has a TmpFS of its own
# ($S/tmp, Slurm's TmpFS, bound to $S/tmp-<host>): Slurm's pmix plugin makes
# <TmpFS>/spmix_appdir_<uid>_<job>.<step> on every node of a step, and with one shared /tmp
# node B's slurmstepd fails ("Cannot create directory ... File exists").
on() {
  local ns host
  eval "ns=\$ns$1 host=\$host$1"
  shift
  mkdir -p "$S/tmp" "$S/tmp-$host"
  nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private \
    sh -c 'mount --bind "$1" /etc/hosts && mount --bind "$2" "$3" && hostname "$4" && shift 4 && exec "$@"' \
    sh "$here/hosts" "$S/tmp-$host" "$S/tmp" "$host" "$@"
}
on A true 2>err.txt || skip "no UTS / mount namespace for a node: $(head -1 err.txt)"
ok "hosts $hostA ($nsA, $ipA) and $hostB ($nsB, $ipB) on $net"

# munge: its socket is a file, so both namespaces reach it.
slurm_munged || skip "munged does not start"

hw=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //; s/UpTime=.*//')
port=$((20000 + (id % 10000) * 2))
cat >"$S/slurm.conf" <<EOC
ClusterName=srtwo
SlurmctldHost=$hostA($ipA)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
NodeName=$hostA NodeAddr=$ipA NodeHostname=$hostA $hw
NodeName=$hostB NodeAddr=$ipB NodeHostname=$hostB $hw
PartitionName=test Nodes=$hostA,$hostB Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
MpiDefault=none
TmpFS=$S/tmp
SlurmdSpoolDir=$K/spool-%n
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd-%n.pid
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd-%n.log
EOC
slurm_conf_common >>"$S/slurm.conf"
export SLURM_CONF=$S/slurm.conf
on A slurmctld -i || skip "environment: slurmctld does not start on $hostA ($(tail -2 "$S/slurmctld.log"))"
for _ in $(seq 50); do [ -s "$S/slurmctld.pid" ] && break; sleep 0.1; done
pids+=("$(cat "$S/slurmctld.pid")")
for n in A B; do
  eval "h=\$host$n"
  on $n slurmd -N "$h" || skip "environment: slurmd does not start on $h ($(tail -2 "$S/slurmd-$h.log"))"
  for _ in $(seq 50); do [ -s "$S/slurmd-$h.pid" ] && break; sleep 0.1; done
  pids+=("$(cat "$S/slurmd-$h.pid")")
done
# The clients talk to slurmctld on node A.
inA() { nsenter --net="/run/netns/$nsA" "$@"; }
for _ in $(seq 100); do
  [ "$(inA sinfo -h -N -o '%N %t' 2>/dev/null | grep -c ' idle$')" -eq 2 ] && break
  sleep 0.2
done
inA sinfo -N -o '%N %t %c' | sed 's/^/  /'
[ "$(inA sinfo -h -N -o '%N %t' | grep -c ' idle$')" -eq 2 ] ||
  skip "environment: the two slurmd nodes do not come up: $(inA sinfo -h -N 2>&1 | tr '\n' ';'); slurmctld: $(tail -n 2 "$S/slurmctld.log")"
ok "two slurmd nodes idle under one slurmctld"

ARGS=(--set seq_len=8192 --set model.layers=1 --set verify.rows=8 --set threads=1)
export OMP_NUM_THREADS=1
# The single-node reference: 4 ranks here, in the root namespace.
timeout -k 5 60 "$MPIEXEC" -np 4 "$SR_BIN" "${ARGS[@]}" -o "$here/one.h5" >one.txt 2>err.txt ||
  fail "single-node run failed (exit $?)"

# The Open MPI settings go through the environment (--export=ALL): a comma in a value such as
# btl=tcp,self would split sbatch's --export list.
# A CPU per rank where the nodes have them (then mpirun binds), else --overcommit.
over=()
[ "$(slurmd -C | grep -o 'CPUs=[0-9]*' | cut -d= -f2)" -ge 2 ] || over=(--overcommit)
vbytes() {
  ip netns exec "$nsB" sh -c "echo \$((\$(cat /sys/class/net/$vB/statistics/rx_bytes) + \$(cat /sys/class/net/$vB/statistics/tx_bytes)))"
}
before=$(vbytes)
jid=$(inA env OMPI_MCA_pml=ob1 OMPI_MCA_btl=tcp,self OMPI_MCA_btl_tcp_if_include="$net" \
  OMPI_MCA_oob_tcp_if_include="$net" sbatch --parsable -N 2 -n 4 "${over[@]}" \
  --export=ALL,SPARSERING="$SR_BIN",SPARSERING_MPIRUN="$MPIEXEC" \
  "$repo/jobs/sparsering.sbatch" "${ARGS[@]}" -o "$here/two.h5" 2>err.txt) ||
  fail "sbatch -N 2 failed: $(cat err.txt)"
echo "# job $jid submitted: sbatch -N 2 -n 4 jobs/sparsering.sbatch"
state() { inA scontrol show job "$jid" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
for _ in $(seq 480); do
  case $(state) in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) break ;; esac
  sleep 0.25
done
log=$here/sparsering-$jid.out
nodes=$(inA scontrol show job "$jid" | grep -o ' NodeList=[^ ]*' | cut -d= -f2)
[ "$(state)" = COMPLETED ] ||
  fail "job $jid $(state) on $nodes: $(tail -8 "$log" 2>/dev/null); slurmctld: $(tail -n 3 "$S/slurmctld.log")"
grep -h '^# \(nodes\|launcher\|binding\)' "$log" | sed 's/^/  /'
grep '^#   rank ' "$log" | sed 's/^#/ /'
[ "$nodes" = "$hostA,$hostB" ] || [ "$nodes" = "srslurm[a-b]-$id" ] || fail "job NodeList=$nodes"
grep -q "^# nodes: 2 (.*), ranks: 4, ranks per node: 2" "$log" || fail "header: $(grep '^# nodes' "$log")"
for h in "$hostA" "$hostB"; do
  [ "$(grep -c "^#   rank [0-3]: host $h," "$log")" -eq 2 ] || fail "not 2 ranks on $h"
done
ok "job $jid spanned both nodes ($nodes): 2 ranks on each"
"$SR_H5CMP" one.h5 two.h5 1 1e-6 >cmp.txt 2>&1 || fail "two Slurm nodes vs one: $(cat cmp.txt)"
ok "same selection and out (1e-6) as the single-node run: $(tr '\n' ' ' <cmp.txt)"
through=$(($(vbytes) - before))
moved=$(awk '/^# bytes moved:/ { print $4 * 1e9; exit }' "$log")
echo "  $through bytes through $vB (node B's veth: Slurm, orted and MPI); the ring moved ${moved%.*} bytes in all"
[ "$through" -gt $((${moved%.*} / 8)) ] || fail "too little traffic on the veth: $through bytes"
ok "the job's MPI traffic went between the nodes over the veth"

# The same with SPARSERING_LAUNCHER=srun (srun --mpi=pmix: Slurm starts the ranks on both nodes).
if ! inA srun --mpi=list 2>&1 | grep -q pmix; then
  echo "skip (srun part): srun has no pmix plugin (srun --mpi=list)"
  echo PASS
  exit 0
fi
jid=$(inA env OMPI_MCA_pml=ob1 OMPI_MCA_btl=tcp,self OMPI_MCA_btl_tcp_if_include="$net" \
  OMPI_MCA_oob_tcp_if_include="$net" sbatch --parsable -N 2 -n 4 "${over[@]}" \
  --export=ALL,SPARSERING="$SR_BIN",SPARSERING_LAUNCHER=srun \
  "$repo/jobs/sparsering.sbatch" "${ARGS[@]}" -o "$here/srun.h5" 2>err.txt) ||
  fail "sbatch -N 2 (srun) failed: $(cat err.txt)"
for _ in $(seq 240); do
  case $(state) in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) break ;; esac
  sleep 0.25
done
log=$here/sparsering-$jid.out
[ "$(state)" = COMPLETED ] ||
  fail "srun job $jid $(state): $(tail -8 "$log" 2>/dev/null); slurmd: $(tail -n 2 "$S/slurmd-$hostB.log")"
grep -h '^# launcher' "$log" | sed 's/^/  /'
grep -q "^# launcher: srun: srun --mpi=pmix .*--ntasks-per-node=2" "$log" || fail "no srun launcher line"
for h in "$hostA" "$hostB"; do
  [ "$(grep -c "^#   rank [0-3]: host $h," "$log")" -eq 2 ] || fail "srun: not 2 ranks on $h"
done
"$SR_H5CMP" one.h5 srun.h5 1 1e-6 >cmp.txt 2>&1 || fail "srun on two nodes vs one: $(cat cmp.txt)"
ok "job $jid: srun --mpi=pmix, 2 ranks on each node, same result as the single-node run"
echo PASS
