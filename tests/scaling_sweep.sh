#!/usr/bin/env bash
# scaling_sweep.sh BIN DIR — a short jobs/scaling.sh sweep (ranks 1 2, tiny N, strong and weak,
# two repetitions) into DIR, then checks sweep.csv and sweep.json: the expected columns, one row
# per point, efficiency 1 at the reference rank count, per-rank min <= avg <= max, metadata.
set -euo pipefail
bin=$1 dir=$2
src=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$dir"
"$src/jobs/scaling.sh" --bin "$bin" -o "$dir" --ranks "1 2" --n 2048 --weak 1024 \
  --methods "dense block_sparse" --sparsities 0.9 --exchange "selected dense_ring" \
  --reps 2 --warmup 1 --bind none --note "ctest scaling_sweep"
# A second sweep into the same folder is refused (earlier results are never overwritten).
if "$src/jobs/scaling.sh" --bin "$bin" -o "$dir" --ranks 1 --n 2048 --methods dense \
  --exchange selected --reps 1 --warmup 0 2>/dev/null; then
  echo "FAIL: a second sweep overwrote $dir"; exit 1
fi
python3 - "$dir" <<'PY'
import csv, json, sys
d = sys.argv[1]
lines = [l for l in open(d + "/sweep.csv") if not l.startswith("#")]
rows = list(csv.DictReader(lines))
need = ["scaling", "method", "sparsity", "exchange", "seq_len", "ranks", "reps",
        "attention_s_median", "attention_s_min", "attention_s_max", "efficiency", "efficiency_ref",
        "gflops_effective", "bytes_moved", "bytes_dense_ring", "threads_per_rank", "binding"]
need += ["%s_%s_s" % (p, k) for p in ("generate", "exchange", "compute", "attention")
         for k in ("min", "avg", "max")]
miss = [c for c in need if c not in rows[0]]
assert not miss, "missing columns: %s" % miss
# 2 scalings x (dense + block_sparse) x 2 exchange modes x 2 rank counts
assert len(rows) == 16, "expected 16 rows, got %d" % len(rows)
for r in rows:
    assert r["reps"] == "2", r
    assert r["efficiency_ref"] == "np1", r
    if r["ranks"] == "1":
        assert abs(float(r["efficiency"]) - 1) < 1e-9, r
        assert float(r["bytes_moved"]) == 0, r
    else:
        assert float(r["bytes_moved"]) > 0, r
    if r["exchange"] == "dense_ring":
        assert r["bytes_moved"] == r["bytes_dense_ring"], r
    lo, av, hi = (float(r["attention_%s_s" % k]) for k in ("min", "avg", "max"))
    assert 0 < lo <= av * (1 + 1e-9) and av <= hi * (1 + 1e-9), r
    assert float(r["attention_s_min"]) <= float(r["attention_s_median"]) <= float(r["attention_s_max"])
    want = int(r["seq_len"]) if r["scaling"] == "strong" else 1024 * int(r["ranks"])
    assert int(r["seq_len"]) == want, r
s = json.load(open(d + "/sweep.json"))
m = s["meta"]
for k in ("version", "git_commit", "started_utc", "hosts", "threads_per_rank", "binding", "backends",
          "note"):
    assert k in m, "meta lacks " + k
assert m["version"].startswith("sparsering"), m["version"]
assert m["hosts"], m
assert m["runs_recorded"] == 32 and m["runs_failed"] == 0, m
assert len(s["points"]) == 16
print("ok: %d rows, columns and metadata as expected" % len(rows))
PY
