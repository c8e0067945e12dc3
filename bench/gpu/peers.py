#!/usr/bin/env python3
"""peers.py — the peers of sr_bench_gpu on the same shapes, in the same run (docs/PERFORMANCE.md).

PyTorch SDPA with the flash backend (FlashAttention-2) and the cuDNN backend on dense causal
attention, and FlexAttention (torch.compile) with a BlockMask built from the exact CSR masks
that sr_bench_gpu wrote (--masks DIR): off-diagonal listed blocks are "full" blocks, the
diagonal block is a partial block with the causal mask_mod, at the same block size. Shape:
batch 1, 32 q-heads / 8 kv-heads (GQA), d = 128, bf16, random inputs. Timing: CUDA events,
2 warm-ups, median of --reps. FLOPs as in sr_bench_gpu: effective = 4*N^2*d/2 per q-head;
sparse-aware = 4*d per visible (query, key) pair of the mask.

Usage: python3 peers.py --n 16384,32768 --masks DIR --json out.json [--reps 10]
"""
import argparse
import glob
import json
import os
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, flex_attention

QH, KVH, D = 32, 8, 128


def median_ms(fn, reps):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2], times[0], times[-1]


def read_mask(path):
    """CSR written by sr_bench_gpu: int64 {magic, n, heads, block, nqb, nnz}, row_ptr, col."""
    with open(path, "rb") as f:
        hdr = np.fromfile(f, dtype=np.int64, count=6)
        if hdr[0] != 0x5352435352:
            raise ValueError(f"{path}: not an sr_bench_gpu mask")
        n, heads, block, nqb, nnz = (int(x) for x in hdr[1:])
        row_ptr = np.fromfile(f, dtype=np.int64, count=heads * nqb + 1)
        col = np.fromfile(f, dtype=np.int32, count=nnz)
    return n, heads, block, nqb, row_ptr, col


def block_mask_from_csr(n, heads, block, nqb, row_ptr, col):
    """BlockMask with full blocks (below the diagonal) and partial diagonal blocks."""
    counts = np.diff(row_ptr).reshape(heads, nqb)
    rows = np.repeat(np.arange(heads * nqb), np.diff(row_ptr))
    m = rows % nqb
    diag = col == m
    # The full width for every mask of one N: the BlockMask tensors then have the same shapes
    # for every sparsity, and torch.compile compiles once per N instead of once per mask.
    width = nqb
    full_idx = np.zeros((heads * nqb, width), dtype=np.int32)
    # FlexAttention takes the number of KV blocks from kv_indices' last dimension: both index
    # tensors get the full width.
    part_idx = np.zeros((heads * nqb, width), dtype=np.int32)
    # Position of each entry among its row's full entries (entries are ascending, diag last).
    start = row_ptr[:-1][rows]
    pos = np.arange(len(col)) - start
    full_idx[rows[~diag], pos[~diag]] = col[~diag]
    part_idx[rows[diag], 0] = col[diag]
    full_num = (counts - np.bincount(rows[diag], minlength=heads * nqb).reshape(heads, nqb))
    part_num = np.bincount(rows[diag], minlength=heads * nqb).reshape(heads, nqb)
    dev = "cuda"

    def t(x, shape):
        return torch.from_numpy(np.ascontiguousarray(x)).to(dev).reshape(shape)

    def causal(b, h, q, k):
        return q >= k

    return BlockMask.from_kv_blocks(
        t(part_num.astype(np.int32), (1, heads, nqb)),
        t(part_idx, (1, heads, nqb, width)),
        t(full_num.astype(np.int32), (1, heads, nqb)),
        t(full_idx, (1, heads, nqb, width)),
        BLOCK_SIZE=block,
        mask_mod=causal,
        seq_lengths=(n, n),
    )


def mask_pairs(block, nqb, row_ptr, col, heads):
    rows = np.repeat(np.arange(heads * nqb), np.diff(row_ptr))
    m = rows % nqb
    diag = col == m
    return float((~diag).sum()) * block * block + float(diag.sum()) * block * (block + 1) / 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="16384,32768,65536,131072")
    ap.add_argument("--masks", default=None)
    ap.add_argument("--json", required=True)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--no-flex", action="store_true")
    args = ap.parse_args()
    ns = [int(x) for x in args.n.split(",") if x]
    torch.manual_seed(0)
    dev = torch.cuda.get_device_properties(0)
    meta = {
        "benchmark": "peers.py",
        "device": torch.cuda.get_device_name(0),
        "sm_count": dev.multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "nccl": ".".join(str(x) for x in torch.cuda.nccl.version()),
        "reps": args.reps,
        "runs": [],
    }
    print(f"# peers.py: {meta['device']}, torch {meta['torch']}, CUDA {meta['cuda']}, "
          f"cuDNN {meta['cudnn']}, median of {args.reps}")
    print(f"{'N':>7} {'peer':>12} {'block':>5} {'spars':>6} {'ms':>9} {'eff_TF':>8} {'sp_TF':>8}")
    flex = torch.compile(flex_attention, dynamic=False)
    scale = 1.0 / D ** 0.5
    for n in ns:
        q = torch.randn(1, QH, n, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, KVH, n, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, KVH, n, D, device="cuda", dtype=torch.bfloat16)
        dense_flops = 4.0 * n * n * D / 2 * QH
        for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION),
                              ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
            note = "enable_gqa"
            try:
                with sdpa_kernel(backend):
                    fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                 scale=scale, enable_gqa=True)
                    ms, lo, hi = median_ms(fn, args.reps)
            except Exception as e:  # a backend without GQA: K/V expanded outside the timing
                note = f"expanded kv ({type(e).__name__})"
                ke = k.repeat_interleave(QH // KVH, dim=1)
                ve = v.repeat_interleave(QH // KVH, dim=1)
                try:
                    with sdpa_kernel(backend):
                        fn = lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True,
                                                                     scale=scale)
                        ms, lo, hi = median_ms(fn, args.reps)
                except Exception as e2:
                    print(f"# {name} N={n}: failed: {e2}")
                    continue
                del ke, ve
            eff = dense_flops / (ms * 1e-3) * 1e-12
            print(f"{n:7d} {name:>12} {'-':>5} {0.0:6.2f} {ms:9.3f} {eff:8.1f} {eff:8.1f}")
            meta["runs"].append({"n": n, "peer": name, "sparsity_target": 0.0, "ms": ms,
                                 "ms_min": lo, "ms_max": hi, "effective_tflops": eff,
                                 "sparse_tflops": eff, "note": note})
            sys.stdout.flush()
        if args.masks and not args.no_flex:
            files = sorted(glob.glob(os.path.join(args.masks, f"mask_n{n}_b*_s*.csr")))
            for path in files:
                sp = float(re.search(r"_s([0-9.]+)\.csr$", path).group(1))
                mn, heads, block, nqb, row_ptr, col = read_mask(path)
                bm = block_mask_from_csr(mn, heads, block, nqb, row_ptr, col)
                pairs = mask_pairs(block, nqb, row_ptr, col, heads)
                fn = lambda: flex(q, k, v, block_mask=bm, scale=scale, enable_gqa=True)
                try:
                    ms, lo, hi = median_ms(fn, args.reps)
                except Exception as e:
                    print(f"# flex N={n} b={block} s={sp}: failed: {e}")
                    continue
                eff = dense_flops / (ms * 1e-3) * 1e-12
                spf = 4.0 * pairs * D / (ms * 1e-3) * 1e-12
                print(f"{n:7d} {'flex':>12} {block:5d} {sp:6.2f} {ms:9.3f} {eff:8.1f} {spf:8.1f}")
                meta["runs"].append({"n": n, "peer": "flex", "block": block, "sparsity_target": sp,
                                     "ms": ms, "ms_min": lo, "ms_max": hi,
                                     "effective_tflops": eff, "sparse_tflops": spf})
                sys.stdout.flush()
                del bm
        del q, k, v
        torch.cuda.empty_cache()
    with open(args.json, "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
