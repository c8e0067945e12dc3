#!/usr/bin/env bash
# sass_summary.sh BINARY — per kernel of the ladder: tensor-core instructions (HGMMA = wgmma,
# HMMA = mma.sync), ldmatrix (LDSM), async copies (LDGSTS), 128-bit shared loads, local
# memory traffic (LDL/STL = spills) and barriers. Needs cuobjdump (CUDA toolkit).
set -euo pipefail
cuobjdump -sass "$1" | awk '
  /Function :/ { if (name) report(); name = $3; delete c; next }
  { for (k in pat) if ($0 ~ pat[k]) c[k]++ }
  function report() {
    gsub(/_Z[0-9]+/, "", name)
    printf "%-60s", substr(name, 1, 60)
    for (i = 1; i <= n; i++) printf " %s=%d", keys[i], c[keys[i]] + 0
    printf "\n"
  }
  BEGIN {
    n = split("HGMMA HMMA LDSM LDGSTS LDS128 LDL STL BAR", keys, " ")
    pat["HGMMA"] = "HGMMA"; pat["HMMA"] = "HMMA"; pat["LDSM"] = "LDSM"
    pat["LDGSTS"] = "LDGSTS"; pat["LDS128"] = "LDS\\.128"; pat["LDL"] = "LDL"
    pat["STL"] = "STL"; pat["BAR"] = "BAR\\.SYNC"
  }
  END { if (name) report() }'
