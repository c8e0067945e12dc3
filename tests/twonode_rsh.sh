#!/bin/sh
# tests/twonode_rsh.sh — Open MPI's remote-launch agent (--mca plm_rsh_agent) for the emulated
# nodes of tests/twonode.sh: instead of ssh to HOST, runs the command on this machine inside
# HOST's network namespace, with HOST as the hostname (a UTS namespace of its own), as sshd on
# that node would. SR_TWONODE_MAP names a file of "HOST NAMESPACE" lines. Called as
#   twonode_rsh.sh [ssh options] HOST COMMAND...
# (the command words are joined with spaces and run by sh, as ssh does).
while [ $# -gt 0 ]; do
  case $1 in
  -[lpioF]) shift 2 ;; # ssh options with a value
  -*) shift ;;
  *) break ;;
  esac
done
host=$1
shift
ns=$(awk -v h="$host" '$1 == h { print $2; exit }' "${SR_TWONODE_MAP:?SR_TWONODE_MAP not set}")
[ -n "$ns" ] || { echo "twonode_rsh.sh: unknown host $host (not in $SR_TWONODE_MAP)" >&2; exit 255; }
exec ip netns exec "$ns" unshare --uts /bin/sh -c 'hostname "$1" && eval "$2"' sh "$host" "$*"
