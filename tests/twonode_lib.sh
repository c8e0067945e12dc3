# tests/twonode_lib.sh — sourced by tests/twonode.sh and tests/twonode_slurm.sh: the two emulated
# hosts. twonode_net makes namespaces $nsA and $nsB joined by the veth pair $vA / $vB with
# addresses $ipA / $ipB (/24) and loopback up; it skips (77) where namespaces or veth are not
# available and fails where a made link cannot be configured. The caller defines skip and fail
# and removes the namespaces on exit.
twonode_net() {
  ip netns add "$nsA" 2>err.txt || skip "ip netns add fails: $(head -1 err.txt)"
  ip netns add "$nsB" || fail "ip netns add $nsB"
  ip link add "$vA" netns "$nsA" type veth peer name "$vB" netns "$nsB" 2>err.txt ||
    skip "no veth pair: $(head -1 err.txt)"
  local node ns v ip
  for node in "$nsA $vA $ipA" "$nsB $vB $ipB"; do
    read -r ns v ip <<<"$node"
    ip -n "$ns" link set lo up && ip -n "$ns" addr add "$ip/24" dev "$v" &&
      ip -n "$ns" link set "$v" up || fail "cannot configure $v in $ns"
  done
}
