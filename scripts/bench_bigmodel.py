"""A recommender past 2 GB: a 9M × 64 user-embedding table (2.3 GB) with a small user tower, split at
the item embedding. `surgery split` (offline piece frozen, online piece a SavedModel keeping its
variables, written tensor by tensor) against TensorFlow's own path to a SavedModel
(import_meta_graph + Saver.restore of the whole model + `saved_model.Builder`).

Each side runs as its own process; peak RSS is read by the child at exit (`getrusage`), so it
includes importing TensorFlow; a bare `import tensorflow` is measured too. The target: the split's
peak ≤ 1.5 × (largest variable + bare TensorFlow). Then the pieces are checked: the online
SavedModel, loaded with `tf.saved_model.load(...).signatures["serving_default"]`, answers exactly
like the original checkpoint; `surgery precompute` runs the offline piece and matches it too.

    python scripts/bench.py bigmodel            # 9M users × 64 (2.3 GB table); needs ~10 GB RAM, ~8 GB /tmp
    python scripts/bench.py bigmodel --quick    # 1M users (256 MB)
    python scripts/bench_bigmodel.py --users 2000000 --keep /tmp/bigmodel
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CUT, OUTPUT = "item_tower/embedding", "score"

_PRELUDE = """
import os, sys, resource, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, {root!r})
"""
_EPILOGUE = """
print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
_BARE = "import tensorflow\n"
_SURGERY = """
from surgery.cli import main
prefix, out = sys.argv[1:3]
assert main(["split", prefix, "--cut", "item_tower/embedding", "--outputs", "score", "--verify", "0",
             "--out", out]) == 0
"""
_TF = """
import tensorflow as tf
v1 = tf.compat.v1
prefix, out = sys.argv[1:3]
g = tf.Graph()
with g.as_default():
    saver = v1.train.import_meta_graph(prefix + ".meta", clear_devices=True)
    with v1.Session(graph=g) as sess:
        saver.restore(sess, prefix)
        sig = v1.saved_model.predict_signature_def(
            {"item_tower_embedding": g.get_tensor_by_name("item_tower/embedding:0"),
             "user_ids": g.get_tensor_by_name("user_ids:0"), "user_features": g.get_tensor_by_name("user_features:0")},
            {"score": g.get_tensor_by_name("score:0")})
        builder = v1.saved_model.Builder(out)
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
        builder.save()
"""
_CHECK = """
import numpy as np
import tensorflow as tf
v1 = tf.compat.v1
prefix, pieces, users = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(7)
n = 64
feeds = {"item_features:0": rng.standard_normal((n, 16)).astype(np.float32),
         "user_ids:0": rng.integers(0, users, n).astype(np.int64),
         "user_features:0": rng.standard_normal((n, 8)).astype(np.float32)}
np.save(os.path.join(pieces, "..", "items.npy"), feeds["item_features:0"])
g = tf.Graph()
with g.as_default(), v1.Session(graph=g) as sess:
    v1.train.import_meta_graph(prefix + ".meta").restore(sess, prefix)
    want_emb, want = sess.run(["item_tower/embedding:0", "score:0"], feeds)
del g, sess
manifest = json.load(open(os.path.join(pieces, "manifest.json")))
formats = {k: p["format"] for k, p in manifest["pieces"].items()}
og = v1.GraphDef()
og.ParseFromString(open(os.path.join(pieces, "offline.pb"), "rb").read())
with tf.Graph().as_default() as g2:
    tf.import_graph_def(og, name="")
    with v1.Session(graph=g2) as s2:
        emb = s2.run("item_tower/embedding:0", {"item_features:0": feeds["item_features:0"]})
online = tf.saved_model.load(os.path.join(pieces, "online")).signatures["serving_default"]
got = online(item_tower_embedding=tf.constant(emb), user_ids=tf.constant(feeds["user_ids:0"]),
             user_features=tf.constant(feeds["user_features:0"]))["score"].numpy()
print(json.dumps({"formats": formats, "offline_max_diff": float(np.abs(emb - want_emb).max()),
                  "online_max_diff": float(np.abs(got - want).max()), "score_std": float(want.std()),
                  "want_emb": want_emb.tolist()}))
"""


def build_recommender(num_users: int, *, dim: int = 64, item_features: int = 16, user_features: int = 8,
                      width: int = 32):
    """In the default graph: an item tower (`item_features` → `item_tower/embedding`, offline) and a user
    tower around a `num_users` × `dim` embedding table (`user_ids`, `user_features` →
    `user_tower/embedding`), scored by a dot product plus a small MLP (`score`)."""
    from nets import dense

    from surgery.core import tfcompat

    tf = tfcompat.tf
    v1 = tf.compat.v1
    items = v1.placeholder(tf.float32, [None, item_features], name="item_features")
    ids = v1.placeholder(tf.int64, [None], name="user_ids")
    users = v1.placeholder(tf.float32, [None, user_features], name="user_features")
    with v1.variable_scope("item_tower", use_resource=True):
        h = dense(items, width, "dense_0", tf.nn.relu)
        item_emb = tf.identity(dense(h, dim, "project"), name="embedding")
    with v1.variable_scope("user_tower", use_resource=True):
        table = v1.get_variable("table", [num_users, dim], initializer=v1.random_normal_initializer(stddev=0.05))
        u = tf.concat([tf.nn.embedding_lookup(table, ids), users], axis=1)
        u = dense(u, width, "dense_0", tf.nn.relu)
        user_emb = tf.identity(dense(u, dim, "project"), name="embedding")
    with v1.variable_scope("scorer", use_resource=True):
        h = dense(tf.concat([item_emb * user_emb, item_emb, user_emb], 1), 16, "dense", tf.nn.relu)
        logit = tf.reduce_sum(item_emb * user_emb, 1) + tf.squeeze(dense(h, 1, "logit"), [1])
    return tf.sigmoid(logit, name="score")


def make_checkpoint(directory: str, num_users: int, *, seed: int = 0) -> str:
    """`.meta` + V2 checkpoint of `build_recommender`, values written one variable at a time (the table is
    never held twice), so making the 2.3 GB case costs no more memory than reading it."""
    import numpy as np

    from surgery.core import tfcompat
    from surgery.passes.savedmodel import write_checkpoint

    tf = tfcompat.tf
    os.makedirs(directory, exist_ok=True)
    prefix = os.path.join(directory, "model.ckpt")
    graph = tf.Graph()
    with graph.as_default():
        build_recommender(num_users)
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        tf.compat.v1.train.Saver(variables).export_meta_graph(prefix + ".meta")
    rng = np.random.default_rng(seed)

    def value(name):
        shape = variables[name].shape.as_list()
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.3 if len(shape) > 1 else 0.1))

    write_checkpoint(prefix, sorted(variables), value)
    return prefix


def _child(body: str, *args, env=None) -> tuple[float, dict]:
    code = _PRELUDE.format(root=ROOT) + body + _EPILOGUE
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                       env=dict(os.environ, **(env or {})))
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"child failed ({r.returncode}):\n{r.stderr[-3000:]}")
    lines = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    return wall, {k: v for d in lines for k, v in d.items()}


def run(quick: bool = False, *, users: int | None = None, repeats: int = 1, keep: str | None = None) -> list[dict]:
    users = users or (1_000_000 if quick else 9_000_000)
    work = keep or tempfile.mkdtemp(prefix="bench_bigmodel.", dir="/tmp")
    try:
        prefix = os.path.join(work, "model", "model.ckpt")
        if not os.path.exists(prefix + ".index"):
            _child(f"sys.path.insert(0, {HERE!r})\nfrom bench_bigmodel import make_checkpoint\n"
                   "make_checkpoint(sys.argv[1], int(sys.argv[2]))\n", os.path.dirname(prefix), users)
        table_mb = users * 64 * 4 / 2**20
        # Below 2 GB (--quick, --users), a forced limit makes `auto` keep the table's piece as a SavedModel.
        env = {} if users * 64 * 4 > 2**31 else {"SURGERY_2GB_LIMIT": str(users * 64 * 4 // 2)}
        bare = statistics.median(_child(_BARE)[1]["maxrss_mb"] for _ in range(max(repeats, 3)))
        ours, theirs = [], []
        for _ in range(repeats):  # sides alternated
            shutil.rmtree(os.path.join(work, "pieces"), ignore_errors=True)
            ours.append(_child(_SURGERY, prefix, os.path.join(work, "pieces"), env=env))
            shutil.rmtree(os.path.join(work, "tf_saved_model"), ignore_errors=True)
            theirs.append(_child(_TF, prefix, os.path.join(work, "tf_saved_model")))
        _, check = _child(_CHECK, prefix, os.path.join(work, "pieces"), users)
        want_emb = check.pop("want_emb")
        check["check_maxrss_mb"] = check.pop("maxrss_mb")
        import numpy as np

        items = os.path.join(work, "items.npy")
        emb_file = os.path.join(work, "emb.h5")
        r = subprocess.run([sys.executable, "-m", "surgery", "precompute", os.path.join(work, "pieces"), "--data",
                            items, "--out", emb_file], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=ROOT))
        if r.returncode != 0:
            raise RuntimeError(f"precompute failed: {r.stderr[-2000:]}")
        import h5py

        with h5py.File(emb_file, "r") as f:
            precompute_diff = float(np.abs(f["embeddings"][()] - np.asarray(want_emb, np.float32)).max())
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    mem = lambda runs: statistics.median(m["maxrss_mb"] for _, m in runs)  # noqa: E731 - a one-line key, read where it is used
    wall = lambda runs: statistics.median(w for w, _ in runs)  # noqa: E731 - a one-line key, read where it is used
    budget = 1.5 * (table_mb + bare)
    name = f"bigmodel ({users / 1e6:g}M users × 64, table {table_mb / 1024:.2f} GB)"
    info = dict(check, precompute_max_diff=precompute_diff, bare_tf_mb=bare, table_mb=table_mb,
                budget_mb=budget, within_budget=mem(ours) <= budget)
    return [
        {"benchmark": name, "metric": "split peak RSS vs Builder after full restore", "surgery": mem(ours),
         "baseline": mem(theirs), "ratio": mem(ours) / mem(theirs), "unit": "MB", **info},
        {"benchmark": name, "metric": "split peak RSS vs 1.5x(table + bare TF)", "surgery": mem(ours),
         "baseline": budget, "ratio": mem(ours) / budget, "unit": "MB"},
        {"benchmark": name, "metric": "split wall time vs Builder after full restore", "surgery": wall(ours),
         "baseline": wall(theirs), "ratio": wall(ours) / wall(theirs), "unit": "s"},
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, help="rows of the user table (default 9M; --quick 1M)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--keep", metavar="DIR", help="work here and keep the files (the checkpoint is reused)")
    args = ap.parse_args(argv)
    rows = run(args.quick, users=args.users, repeats=args.repeats, keep=args.keep)
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
