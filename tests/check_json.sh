#!/usr/bin/env bash
# check_json.sh FILE KEY MAX — every numeric "KEY": value in FILE is finite and <= MAX, and
# there is at least one (a missing key is a failure, not a pass).
set -u
vals=$(grep -oE "\"$2\":[[:space:]]*[-0-9.eE+naif]+" "$1" | sed 's/.*:[[:space:]]*//')
[ -n "$vals" ] || { echo "FAIL: no \"$2\" in $1"; exit 1; }
for v in $vals; do
  awk -v v="$v" -v m="$3" 'BEGIN { if (v == v + 0 && v + 0 <= m + 0) exit 0; exit 1 }' ||
    { echo "FAIL: $2 = $v exceeds $3"; exit 1; }
  echo "ok: $2 = $v <= $3"
done
