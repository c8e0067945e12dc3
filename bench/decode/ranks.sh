#!/usr/bin/env bash
# bench/decode/ranks.sh [BIN] [OUT_PREFIX] — decode step latency against the rank count on CPU
# ranks (one node): dense, quest and snapkv (sparsity 0.95) at one N, batch 1, the KV cache
# sharded over 1, 2 and 4 ranks (RANKS="1 2 4" to change), 32 q-heads / 8 kv-heads / d 128,
# prefill none, verify off. Writes OUT_PREFIX.json and OUT_PREFIX.txt (default
# bench/results/decode_cpu_ranks) with the step time, tokens/s and the bytes each step moves
# (partial outputs; quest's page candidates), and the time of the 1-rank run over each time
# (speedup; the cache is split, the queries and outputs are not).
#
# Environment: N (default 65536), STEPS (default 64), RANKS, MPIEXEC (default mpirun), and the
# usual Open MPI variables (as root: OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;
# more ranks than cores: OMPI_MCA_rmaps_base_oversubscribe=1).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${1:-$root/build/sparsering}
prefix=${2:-$root/bench/results/decode_cpu_ranks}
prefix=${prefix%.json}
n=${N:-65536}
steps=${STEPS:-64}
ranks=${RANKS:-1 2 4}
mpiexec=${MPIEXEC:-mpirun}
[[ -x $bin ]] || { echo "ranks.sh: $bin is not an executable" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/sr_ranks.XXXXXX")
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
cores=$(nproc)
echo "# decode step latency vs CPU ranks: $("$bin" --version 2>&1 | head -1)"
echo "# host: ${cpu:-unknown CPU}, $cores cores; N $n, batch 1, $steps steps, 32/8 heads, d 128"
for m in dense quest snapkv; do
  for p in $ranks; do
    out=$work/${m}_np$p.json
    "$mpiexec" -np "$p" --bind-to none "$bin" run -q --set backend=cpu \
      --set attention.phase=decode --set attention.prefill=none --set attention.method="$m" \
      --set attention.sparsity=0.95 --set seq_len="$n" --set decode.steps="$steps" \
      --set model.q_heads=32 --set model.kv_heads=8 --set model.head_dim=128 \
      --set model.layers=1 --set verify.rows=0 --set report.json="$out" \
      >"$work/${m}_np$p.log" 2>&1 || { echo "# $m np $p failed:"; tail -3 "$work/${m}_np$p.log"; }
  done
done
python3 - "$work" "$prefix" "$n" "$steps" "$ranks" "$cpu" "$cores" <<'EOF'
import json, os, sys
work, prefix, n, steps, ranks, cpu, cores = sys.argv[1:8]
rows, lines = [], []
def say(s):
    print(s); lines.append(s)
say(f"# {'method':<8} {'ranks':>5} {'step_ms':>9} {'tokens/s':>9} {'speedup':>8} {'moved_kB/step':>14} {'threads':>7}")
base = {}
versions = ""
for m in ["dense", "quest", "snapkv"]:
    for p in ranks.split():
        f = os.path.join(work, f"{m}_np{p}.json")
        if not os.path.exists(f):
            continue
        r = json.load(open(f))
        versions = r.get("versions", versions)
        L = r["layers"][0]
        d = L["decode"]
        ms = d["step_s"] * 1e3
        if p == "1":
            base[m] = ms
        sp = base.get(m, float("nan")) / ms if ms > 0 else float("nan")
        moved = L["bytes_moved"] / int(steps) / 1e3
        rows.append({"method": m, "ranks": int(p), "step_ms": ms, "tokens_per_s": d["tokens_per_s"],
                     "speedup_vs_1rank": sp, "bytes_moved_per_step": L["bytes_moved"] / int(steps),
                     "threads_per_rank": r["threads_per_rank"], "rank_map": r.get("rank_map", "")})
        say(f"  {m:<8} {p:>5} {ms:>9.3f} {d['tokens_per_s']:>9.1f} {sp:>7.2f}x {moved:>14.2f} {r['threads_per_rank']:>7}")
say(f"# {cores} cores shared by the ranks: past {cores} ranks they take turns (the step is then"
    " bound by the host, not by the cache split)")
json.dump({"host": {"cpu": cpu, "cores": int(cores)}, "versions": versions,
           "config": {"seq_len": int(n), "steps": int(steps), "batch": 1, "q_heads": 32,
                      "kv_heads": 8, "head_dim": 128, "sparsity": 0.95, "prefill": "none"},
           "rows": rows}, open(prefix + ".json", "w"), indent=1)
open(prefix + ".txt", "w").write("\n".join(lines) + "\n")
EOF
