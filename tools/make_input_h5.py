#!/usr/bin/env python3
"""Write a sparsering input file: /layers/<l>/{q,k,v}, each [heads][seq_len][head_dim].

The layout is the one sr_h5_in_open checks (docs/HDF5.md):
  /layers/<l>/q   [q_heads ][seq_len][head_dim]
  /layers/<l>/k   [kv_heads][seq_len][head_dim]
  /layers/<l>/v   [kv_heads][seq_len][head_dim]
stored as float32 (little-endian), float16 (IEEE half, as numpy/h5py write it) or bfloat16
(an HDF5 custom float type: 1 sign, 8 exponent, 7 mantissa bits, exponent bias 127). sparsering
reads all three as float32 through HDF5's type conversion.

Data comes from a seeded Gaussian generator (default) or from a user .npz file holding arrays
`q`, `k`, `v` of shape [layers][heads][seq_len][head_dim] (or [heads][seq_len][head_dim] for a
single layer); the shapes then come from the arrays.

Examples:
  tools/make_input_h5.py in.h5 --layers 2 --q-heads 8 --kv-heads 2 --seq-len 4096 --head-dim 64
  tools/make_input_h5.py in_f16.h5 --dtype float16 --seed 7
  tools/make_input_h5.py mine.h5 --from-npz activations.npz --dtype bfloat16

The matching config lines are printed on success (model.*, seq_len, input.*).
Needs h5py and numpy (Debian: python3-h5py; use /usr/bin/python3 if another python3 lacks them).
"""

import argparse
import os
import sys

import numpy as np

try:
    import h5py
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("make_input_h5.py: h5py is not importable by %s (Debian: apt-get install "
             "python3-h5py, then run it with /usr/bin/python3)" % sys.executable)

DTYPES = ("float32", "float16", "bfloat16")


def bfloat16_type():
    """The HDF5 custom float type for bfloat16 (the top half of an IEEE float32)."""
    t = h5py.h5t.IEEE_F32LE.copy()
    t.set_fields(15, 7, 8, 0, 7)  # sign bit, exponent at bit 7 (8 bits), mantissa 7 bits
    t.set_size(2)
    t.set_ebias(127)
    return t


def to_bfloat16_bits(x):
    """float32 array -> uint16 bfloat16 bit patterns, rounded to nearest even (NaN kept NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def write_dataset(group, name, data, dtype):
    """Writes data ([heads][seq_len][head_dim], any float dtype) as `dtype` below group."""
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError("%s/%s: expected [heads][seq_len][head_dim], got shape %s"
                         % (group.name, name, data.shape))
    if dtype == "float32":
        group.create_dataset(name, data=data.astype("<f4"))
    elif dtype == "float16":
        # h5py stores numpy float16 as IEEE half: H5T_IEEE_F32LE copy with fields
        # (15, 10, 5, 0, 10), size 2, exponent bias 15.
        group.create_dataset(name, data=data.astype(np.float16))
    elif dtype == "bfloat16":
        tid = bfloat16_type()
        space = h5py.h5s.create_simple(data.shape)
        dsid = h5py.h5d.create(group.id, name.encode(), tid, space)
        bits = to_bfloat16_bits(data.astype(np.float32))
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, bits, mtype=tid)
    else:
        raise ValueError("unknown dtype %r (one of %s)" % (dtype, ", ".join(DTYPES)))


def check_layers(layers):
    """Checks q [Hq][N][d], k and v [Hkv][N][d] with Hkv dividing Hq, equal across layers.
    Returns (q shape, k shape)."""
    shapes = None
    if not layers:
        raise ValueError("no layers")
    for l, (q, k, v) in enumerate(layers):
        q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
        if q.ndim != 3 or k.ndim != 3 or k.shape != v.shape or q.shape[1:] != k.shape[1:] or \
                q.shape[0] % k.shape[0] != 0:
            raise ValueError("layer %d: q %s, k %s, v %s are not [q_heads][N][d] and "
                             "[kv_heads][N][d] with kv_heads dividing q_heads"
                             % (l, q.shape, k.shape, v.shape))
        if shapes is not None and shapes != (q.shape, k.shape):
            raise ValueError("layer %d: shapes q %s, k %s differ from layer 0's q %s, k %s"
                             % (l, q.shape, k.shape, shapes[0], shapes[1]))
        shapes = (q.shape, k.shape)
    return shapes


def write_input(path, layers, dtype="float32", overwrite=False):
    """Writes layers = [(q, k, v), ...] (numpy arrays, [heads][seq_len][head_dim]) to path.
    Nothing is left at path if the data is invalid or the write fails."""
    if dtype not in DTYPES:
        raise ValueError("unknown dtype %r (one of %s)" % (dtype, ", ".join(DTYPES)))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError("%s: exists (use --force to replace it)" % path)
    shapes = check_layers(layers)
    try:
        with h5py.File(path, "w") as f:
            f.attrs["format"] = "sparsering-input-1"
            f.attrs["dtype"] = dtype
            for l, (q, k, v) in enumerate(layers):
                g = f.create_group("layers/%d" % l)
                for name, x in (("q", q), ("k", k), ("v", v)):
                    write_dataset(g, name, x, dtype)
    except BaseException:
        if os.path.exists(path):
            os.unlink(path)
        raise
    return shapes


def random_layers(nlayers, q_heads, kv_heads, seq_len, head_dim, seed, scale):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(nlayers):
        q = rng.standard_normal((q_heads, seq_len, head_dim), dtype=np.float32) * scale
        k = rng.standard_normal((kv_heads, seq_len, head_dim), dtype=np.float32) * scale
        v = rng.standard_normal((kv_heads, seq_len, head_dim), dtype=np.float32)
        out.append((q, k, v))
    return out


def npz_layers(path):
    z = np.load(path)
    missing = [n for n in ("q", "k", "v") if n not in z]
    if missing:
        raise ValueError("%s: arrays %s missing (need q, k, v)" % (path, ", ".join(missing)))
    q, k, v = z["q"], z["k"], z["v"]
    if q.ndim == 3:
        q, k, v = q[None], k[None], v[None]
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4 or not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError("%s: q %s, k %s, v %s: expected [layers][heads][seq_len][head_dim]"
                         % (path, q.shape, k.shape, v.shape))
    return [(q[l], k[l], v[l]) for l in range(q.shape[0])]


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Write a sparsering HDF5 input file (/layers/<l>/{q,k,v}, "
                    "[heads][seq_len][head_dim]) with random or user data.",
        epilog="Layout and dtypes: docs/HDF5.md. The config lines to use the file are printed.")
    ap.add_argument("path", help="output .h5 file")
    ap.add_argument("--layers", type=int, default=1, help="number of layers (default 1)")
    ap.add_argument("--q-heads", type=int, default=8, help="query heads (default 8)")
    ap.add_argument("--kv-heads", type=int, default=2, help="key/value heads (default 2)")
    ap.add_argument("--seq-len", type=int, default=4096, help="tokens (default 4096)")
    ap.add_argument("--head-dim", type=int, default=64, help="head dimension (default 64)")
    ap.add_argument("--dtype", choices=DTYPES, default="float32",
                    help="element type on disk (default float32)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="standard deviation of q and k (v is unit) (default 1.0)")
    ap.add_argument("--from-npz", metavar="FILE",
                    help="take q, k, v from FILE.npz ([layers][heads][N][d] or [heads][N][d]); "
                         "the shape options are then ignored")
    ap.add_argument("--force", action="store_true", help="replace an existing file")
    a = ap.parse_args(argv)

    try:
        if a.from_npz:
            layers = npz_layers(a.from_npz)
        else:
            for name in ("layers", "q_heads", "kv_heads", "seq_len", "head_dim"):
                if getattr(a, name) <= 0:
                    ap.error("--%s must be positive" % name.replace("_", "-"))
            if a.q_heads % a.kv_heads:
                ap.error("--kv-heads %d does not divide --q-heads %d" % (a.kv_heads, a.q_heads))
            layers = random_layers(a.layers, a.q_heads, a.kv_heads, a.seq_len, a.head_dim,
                                   a.seed, a.scale)
        (qs, ks) = write_input(a.path, layers, a.dtype, a.force)
    except (OSError, ValueError) as e:
        print("make_input_h5.py: %s" % e, file=sys.stderr)
        return 1
    print("# %s: %d layer(s), q %s, k/v %s, %s" % (a.path, len(layers), list(qs), list(ks),
                                                    a.dtype))
    print("model: {q_heads: %d, kv_heads: %d, head_dim: %d, layers: %d}"
          % (qs[0], ks[0], qs[2], len(layers)))
    print("seq_len: %d" % qs[1])
    print("input: {source: hdf5, path: %s}" % a.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
