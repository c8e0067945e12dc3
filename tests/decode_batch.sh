#!/usr/bin/env bash
# decode_batch.sh ONE.h5 MANY.h5 LAYERS BATCH STEPS — sequence 0 of a batch-BATCH decode run
# (MANY.h5) equals a batch-1 run of the same config (ONE.h5), bit for bit: out rows
# [h][0, STEPS), lse [h][0, STEPS) and the selection row h * BATCH + 0 against row h (the
# sequences of a batch are independent; sequence 0 has the configured seed). Sequences 1..
# must differ from sequence 0 (their own prompts). Needs a python3 with h5py and numpy
# (python3-h5py, installed by .ci/run); skipped (77) without one.
set -u
[ $# -eq 5 ] || { echo "usage: $0 ONE.h5 MANY.h5 LAYERS BATCH STEPS"; exit 2; }
py=""
for p in /usr/bin/python3 python3; do
  "$p" -c 'import h5py, numpy' 2>/dev/null && { py=$p; break; }
done
[ -n "$py" ] || { echo "SKIP: no python3 with h5py and numpy"; exit 77; }
exec "$py" - "$@" <<'EOF'
import sys
import h5py
import numpy as np

one, many, layers, B, T = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
bad = []
with h5py.File(one, "r") as a, h5py.File(many, "r") as b:
    for f, name in ((a, one), (b, many)):
        if int(f.attrs.get("complete", 0)) != 1:
            bad.append(f"{name} is not marked complete")
    for l in range(layers):
        ga, gb = a[f"layers/{l}"], b[f"layers/{l}"]
        oa, ob = ga["out"][()], gb["out"][()]
        la, lb = ga["lse"][()], gb["lse"][()]
        H, d = oa.shape[0], oa.shape[2]
        if oa.shape != (H, T, d) or ob.shape != (H, B * T, d):
            bad.append(f"layer {l}: out shapes {oa.shape} / {ob.shape}, expected "
                       f"({H}, {T}, {d}) / ({H}, {B * T}, {d})")
            continue
        if la.shape != (H, T) or lb.shape != (H, B * T):
            bad.append(f"layer {l}: lse shapes {la.shape} / {lb.shape}")
            continue
        if not np.array_equal(oa, ob[:, :T, :]):
            bad.append(f"layer {l}: out of sequence 0 differs, max |diff| "
                       f"{np.abs(oa - ob[:, :T, :]).max():.3e}")
        if not np.array_equal(la, lb[:, :T]):
            bad.append(f"layer {l}: lse of sequence 0 differs, max |diff| "
                       f"{np.abs(la - lb[:, :T]).max():.3e}")
        for s in range(1, B):
            if np.array_equal(ob[:, :T, :], ob[:, s * T:(s + 1) * T, :]):
                bad.append(f"layer {l}: sequence {s} has the same out as sequence 0")
        sa, sb = "selection/indptr" in ga, "selection/indptr" in gb
        if sa != sb:
            bad.append(f"layer {l}: a selection in only one of the files")
        elif sa:
            pa, ia = ga["selection/indptr"][()], ga["selection/indices"][()]
            pb, ib = gb["selection/indptr"][()], gb["selection/indices"][()]
            if len(pa) != H + 1 or len(pb) != H * B + 1:
                bad.append(f"layer {l}: indptr lengths {len(pa)} / {len(pb)}, expected "
                           f"{H + 1} / {H * B + 1}")
                continue
            for h in range(H):
                ra, rb = ia[pa[h]:pa[h + 1]], ib[pb[h * B]:pb[h * B + 1]]
                if not np.array_equal(ra, rb):
                    bad.append(f"layer {l}: selection of q-head {h}, sequence 0 differs "
                               f"({len(ra)} / {len(rb)} entries)")
        print(f"layer {l}: sequence 0 of batch {B} checked against batch 1 ({H} q-heads, {T} steps)")
for m in bad:
    print("FAIL:", m)
if not bad:
    print("ok: sequence 0 of the batch equals the batch-1 run")
sys.exit(1 if bad else 0)
EOF
