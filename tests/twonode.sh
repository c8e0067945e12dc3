#!/usr/bin/env bash
# twonode.sh — one sparsering job on two emulated nodes of this machine, over TCP. Two network
# namespaces made here (their own veth pair, addresses 10.213.<n>.1 and .2), each with its own
# hostname (a UTS namespace); mpirun runs on node A, Open MPI's remote-launch agent is
# tests/twonode_rsh.sh, which starts orted inside node B's namespaces instead of over ssh. The
# TCP BTL and the out-of-band channel are held to the veth subnet (pml ob1, btl tcp,self: no
# shared memory between the nodes). Checks: the report's rank map shows ranks 0-1 on node A and
# 2-3 on node B; the output equals a single-node 4-rank run (h5cmp: selection exact, out within
# 1e-6); the bytes through node B's veth (its counters) cover the ring traffic.
# Environment (tests/twonode.cmake): SR_BIN, SR_H5CMP, MPIEXEC. Exit 77 (skipped) with a
# one-line reason when not root or when namespaces / tools are missing. Everything made here
# (namespaces, their /etc/netns/<ns>/ files, processes in them) is removed on every exit path.
set -u
here=$(cd "$(dirname "$0")" && pwd)
skip() { echo "skip: $*"; exit 77; }
fail() { echo "FAIL: $*"; [ -s err.txt ] && { echo "--- err.txt:"; tail -15 err.txt; }; exit 1; }
ok() { echo "ok: $*"; }

[ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces)"
for t in ip unshare awk timeout "$MPIEXEC"; do
  command -v "$t" >/dev/null || skip "$t not found"
done
rm -rf run && mkdir run && cd run || exit 1

id=$$
nsA=sr2a-$id nsB=sr2b-$id
hostA=srnodea-$id hostB=srnodeb-$id
vA=sr2a$id vB=sr2b$id # veth ends (<= 15 characters)
sub=$((id % 250 + 1))
net=10.213.$sub.0/24 ipA=10.213.$sub.1 ipB=10.213.$sub.2

netns_dir_made=0
[ -d /etc/netns ] || netns_dir_made=1
cleanup() {
  local ns p
  for ns in "$nsA" "$nsB"; do
    ip netns list 2>/dev/null | grep -qw "^$ns" || continue
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null; done
    sleep 0.2
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null # the veth pair goes with it
    rm -rf "/etc/netns/$ns"
  done
  [ $netns_dir_made = 1 ] && rmdir /etc/netns 2>/dev/null
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

. "$(dirname "$0")/twonode_lib.sh"
twonode_net
for ns in "$nsA" "$nsB"; do
  # ip netns exec binds /etc/netns/<ns>/hosts over /etc/hosts: the node names resolve inside.
  mkdir -p "/etc/netns/$ns"
  printf '127.0.0.1 localhost\n%s %s\n%s %s\n' "$ipA" "$hostA" "$ipB" "$hostB" >"/etc/netns/$ns/hosts"
done
ip netns exec "$nsA" unshare --uts true 2>err.txt || skip "unshare --uts fails: $(head -1 err.txt)"
ip netns exec "$nsA" timeout 10 ping -c 1 -W 2 "$hostB" >/dev/null 2>&1 ||
  ip netns exec "$nsA" timeout 10 bash -c "exec 3<>/dev/tcp/$ipB/9" 2>&1 | grep -q refused ||
  fail "node B ($ipB) not reachable from node A"
printf '%s %s\n%s %s\n' "$hostA" "$nsA" "$hostB" "$nsB" >map.txt
export SR_TWONODE_MAP=$PWD/map.txt
ok "nodes $hostA ($nsA, $ipA) and $hostB ($nsB, $ipB) on $net"

ARGS=(--set seq_len=8192 --set model.layers=1 --set verify.rows=8 --set threads=1)
export OMP_NUM_THREADS=1
# node B's veth counters (rx + tx bytes)
vbytes() {
  ip netns exec "$nsB" sh -c "echo \$((\$(cat /sys/class/net/$vB/statistics/rx_bytes) + \$(cat /sys/class/net/$vB/statistics/tx_bytes)))"
}

# The single-node reference: 4 ranks here, in the root namespace.
timeout -k 5 60 "$MPIEXEC" -np 4 "$SR_BIN" "${ARGS[@]}" -o "$PWD/one.h5" >one.txt 2>err.txt ||
  fail "single-node run failed (exit $?)"
ok "single-node reference: 4 ranks on $(hostname)"

before=$(vbytes)
ip netns exec "$nsA" unshare --uts sh -c 'hostname "$1" && shift && exec "$@"' sh "$hostA" \
  timeout -k 5 120 "$MPIEXEC" -np 4 --host "$hostA:2,$hostB:2" \
  --mca plm rsh --mca plm_rsh_agent "$here/twonode_rsh.sh" \
  --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include "$net" --mca oob_tcp_if_include "$net" \
  -x OMP_NUM_THREADS -x SR_TWONODE_MAP \
  "$SR_BIN" "${ARGS[@]}" -o "$PWD/two.h5" >two.txt 2>err.txt || fail "two-node run failed (exit $?)"
after=$(vbytes)
grep '^#   rank ' two.txt | sed 's/^#/ /'
for r in 0 1; do grep -q "^#   rank $r: host $hostA," two.txt || fail "rank $r not on $hostA"; done
for r in 2 3; do grep -q "^#   rank $r: host $hostB," two.txt || fail "rank $r not on $hostB"; done
ok "ranks 0-1 on $hostA, 2-3 on $hostB"

"$SR_H5CMP" one.h5 two.h5 1 1e-6 >cmp.txt 2>&1 || fail "two nodes vs one: $(cat cmp.txt)"
ok "same selection and out (1e-6) as the single-node run: $(tr '\n' ' ' <cmp.txt)"

moved=$(awk '/^# bytes moved:/ { print $4 * 1e9; exit }' two.txt)
through=$((after - before))
echo "  $through bytes through $vB (node B's veth) during the run; the ring moved ${moved%.*} bytes in all"
# Of the 4-rank ring, the hops 1->2 and 3->0 cross between the nodes: a good part of the bytes.
[ "$through" -gt $(( ${moved%.*} / 8 )) ] || fail "too little traffic on the veth: $through bytes"
ok "MPI traffic went through the test interface"
echo PASS
