"""Generate the bundled demo data: small synthetic RGB images, deterministic (seeded).

Two tasks share one file, so transfer learning has something to transfer:
  source/x, source/y : 10 classes = 5 shapes × 2 backgrounds (dark, light), shapes in random
                        colours — the "pretraining" task the demo VGG learns.
  target/x, target/y : 5 classes = the same 5 shapes on a mid-grey background at other sizes —
                        a new task the demo fine-tunes on at fc7 (the shape features transfer).
  target/ids         : stable string ids for the target rows (for precompute/serving).
Images are uint8 [N, 32, 32, 3].
"""

from __future__ import annotations

import argparse
import os
import sys

import h5py
import numpy as np

SIZE = 32
SHAPES = ("disk", "square", "triangle", "cross", "ring")


def _mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    if shape == "disk":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "cross":
        w = max(1.5, r * 0.3)
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    if shape == "ring":
        d = np.sqrt(dx * dx + dy * dy)
        return (d <= r) & (d >= r * 0.55)
    raise ValueError(shape)


def draw(rng: np.random.Generator, shape: str, colour: np.ndarray, rmin: float, rmax: float,
         background: float) -> np.ndarray:
    r = rng.uniform(rmin, rmax)
    cx, cy = rng.uniform(r + 1, SIZE - r - 1, size=2)
    img = rng.normal(background, 0.08, size=(SIZE, SIZE, 3))  # noisy grey background
    m = _mask(shape, cx, cy, r)
    img[m] = colour + rng.normal(0, 0.05, size=(int(m.sum()), 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def colour(rng: np.random.Generator, background: float) -> np.ndarray:
    """A random saturated colour that stands out from the background."""
    c = rng.uniform(0, 1, size=3)
    c[rng.integers(3)] = 1.0 if background < 0.5 else 0.0
    return c


def make(n_source: int, n_target: int, seed: int):
    rng = np.random.default_rng(seed)
    sx, sy = [], []
    for i in range(n_source):
        label = i % 10
        background = (0.2, 0.8)[label // 5]
        sx.append(draw(rng, SHAPES[label % 5], colour(rng, background), 5, 11, background))
        sy.append(label)
    tx, ty = [], []
    for i in range(n_target):
        label = i % 5
        tx.append(draw(rng, SHAPES[label], colour(rng, 0.5), 4, 13, 0.5))
        ty.append(label)
    p, q = rng.permutation(n_source), rng.permutation(n_target)
    return (np.stack(sx)[p], np.array(sy, np.int64)[p], np.stack(tx)[q], np.array(ty, np.int64)[q])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/shapes.h5")
    ap.add_argument("--source", type=int, default=4000, help="source-task images")
    ap.add_argument("--target", type=int, default=1500, help="target-task images")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    sx, sy, tx, ty = make(args.source, args.target, args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with h5py.File(tmp, "w") as f:
        f.attrs["generator"] = "scripts/make_data.py"
        f.attrs["seed"] = args.seed
        f.attrs["shapes"] = ",".join(SHAPES)
        f.create_dataset("source/x", data=sx, chunks=(256, SIZE, SIZE, 3))
        f.create_dataset("source/y", data=sy)
        f.create_dataset("target/x", data=tx, chunks=(256, SIZE, SIZE, 3))
        f.create_dataset("target/y", data=ty)
        f.create_dataset("target/ids", data=np.array([f"item-{i:06d}" for i in range(len(ty))], dtype="S11"))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: source {sx.shape} (10 classes), target {tx.shape} (5 classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
