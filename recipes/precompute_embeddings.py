"""Recipe: precompute the demo backbone's fc7 embeddings, then find nearest neighbours by embedding.

    python recipes/precompute_embeddings.py [--model data/models/vgg] [--data data/shapes.h5] [--out runs/embeddings]

1. Split the backbone at fc7 with `surgery split` (offline: image → fc7; online: fc7 → predictions).
   Without `split` in this version, the whole MODEL is frozen to fc7 instead.
2. `surgery.precompute` runs the offline piece over every target image (`target/x`) into
   `fc7.h5`, ids (`target/ids`) copied alongside. Interrupt it and run again: it resumes.
3. Nearest neighbours by cosine similarity of the embeddings: a few queries printed, and the
   fraction of neighbours that share the query's label (`target/y`) against chance. The backbone
   never saw these classes, so this measures how well its fc7 transfers.
4. With the split: `surgery.runners.serve.OnlineServer` answers requests by id from the stored fc7 through
   the online piece, and the answers are checked against the whole network run on the images.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from surgery.runners.precompute import precompute  # noqa: E402


def split_at_fc7(model: str, directory: str) -> bool:
    """`surgery split MODEL --cut fc7 --outputs predictions` (the CLI contract); False if unavailable."""
    r = subprocess.run([sys.executable, "-m", "surgery", "split", model, "--cut", "fc7", "--outputs", "predictions",
                        "--out", directory], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    if r.returncode != 0:
        print(f"(no split: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}; "
              "freezing the whole model to fc7 instead)")
    return r.returncode == 0


def nearest_neighbours(embeddings: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of every row (itself excluded), a block of queries at a time."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    idx = np.empty((len(unit), k), dtype=np.int64)
    sim = np.empty((len(unit), k), dtype=np.float32)
    for s in range(0, len(unit), block):
        scores = unit[s:s + block] @ unit.T
        scores[np.arange(len(scores)), np.arange(s, s + len(scores))] = -np.inf  # not yourself
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        idx[s:s + block] = np.take_along_axis(top, order, axis=1)
        sim[s:s + block] = np.take_along_axis(scores, idx[s:s + block], axis=1)
    return idx, sim


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "data/models/vgg"))
    ap.add_argument("--data", default=os.path.join(ROOT, "data/shapes.h5"))
    ap.add_argument("--out", default="runs/embeddings")
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    pieces = os.path.join(args.out, "pieces")
    split = split_at_fc7(args.model, pieces)
    emb_file = os.path.join(args.out, "fc7.h5")
    if split:
        result = precompute(pieces, args.data, "target/x", emb_file, ids="target/ids", progress=True)
    else:
        result = precompute(args.model, args.data, "target/x", emb_file, ids="target/ids", inputs="input",
                            outputs="fc7", progress=True)
    print(f"fc7 embeddings: {result.rows} rows → {emb_file} ({result.status}; resumed at row {result.resumed_from})")

    with h5py.File(emb_file, "r") as f, h5py.File(args.data, "r") as d:
        emb, ids = f["embeddings"][()], f["ids"][()].astype(str)
        labels = d["target/y"][()]
    idx, sim = nearest_neighbours(emb, args.k)
    print(f"\nnearest neighbours by fc7 (cosine), k={args.k}:")
    for q in np.random.default_rng(0).choice(len(emb), 4, replace=False):
        near = ", ".join(f"{ids[j]} (label {labels[j]}, {s:.3f})" for j, s in zip(idx[q], sim[q]))
        print(f"  {ids[q]} (label {labels[q]}) → {near}")
    agree = float(np.mean(labels[idx] == labels[:, None]))
    chance = float(np.sum((np.bincount(labels) / len(labels)) ** 2))
    print(f"\nneighbours sharing the query's label: {agree:.1%} (chance {chance:.1%})")

    if split:
        from surgery.core import tfcompat
        from surgery.core.model import load_model
        from surgery.runners.serve import OnlineServer

        wanted = ids[:8]
        with OnlineServer(pieces, emb_file) as server:
            served = server.score(wanted)  # fc7 looked up by id, then the online piece
        model = load_model(args.model)
        tf = tfcompat.tf
        with tf.compat.v1.Session(graph=model.graph) as sess, h5py.File(args.data, "r") as d:
            tf.compat.v1.train.Saver().restore(sess, model.checkpoint)
            full = sess.run("predictions:0", {"input:0": d["target/x"][:8]})
        print(f"\nserved by id through the online piece: {served.argmax(1).tolist()} "
              f"(whole network on the images: {full.argmax(1).tolist()}, "
              f"max |difference| {np.abs(served - full).max():.2g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
