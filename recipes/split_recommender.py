"""Split a two-tower recommender at its item embedding and serve it with precomputed items.

The item tower is too slow to run per request, so it runs offline over every item once; per
request only the user tower and the scorer run, fed with the stored item embeddings where the
item tower used to be, plus the live user features.

    python recipes/split_recommender.py --out runs/recommender

Steps: generate users, items and clicks; train `scripts/nets.py two_tower` briefly; save a
checkpoint; `surgery.split_model` at `item_tower/embedding` → `offline.pb` + `online.pb`
(+ manifest, verified against the checkpoint); precompute all item embeddings with the offline
piece; rank items for a few users with the online piece alone; compare with the whole model.
The same split from the shell:

    surgery split runs/recommender/model --cut item_tower/embedding --outputs score --out runs/recommender/pieces
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import surgery  # noqa: E402
from surgery.core.tfcompat import tf  # noqa: E402
from surgery.passes.split import import_piece, split_model, write_split  # noqa: E402

v1 = tf.compat.v1
tf.get_logger().setLevel("ERROR")
ITEM_FEATURES, USER_FEATURES = 32, 16


def make_data(num_items: int, num_users: int, seed: int):
    """Users and items with a hidden taste space; a click when their tastes agree."""
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(num_items, ITEM_FEATURES)).astype(np.float32)
    users = rng.normal(size=(num_users, USER_FEATURES)).astype(np.float32)
    item_taste = items @ rng.normal(size=(ITEM_FEATURES, 4))
    user_taste = users @ rng.normal(size=(USER_FEATURES, 4))
    return items, users, item_taste, user_taste


def train(prefix: str, items, users, item_taste, user_taste, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        from nets import two_tower

        item_ph, user_ph, score = two_tower(num_items=len(items), item_features=ITEM_FEATURES,
                                            user_features=USER_FEATURES)
        clicks = v1.placeholder(tf.float32, [None], name="clicks")
        p = tf.clip_by_value(score, 1e-6, 1 - 1e-6)
        loss = -tf.reduce_mean(clicks * tf.math.log(p) + (1 - clicks) * tf.math.log(1 - p), name="loss")
        train_op = v1.train.AdamOptimizer(3e-3).minimize(loss, global_step=v1.train.get_or_create_global_step())
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            bar = tqdm(range(steps), desc="train two-tower", leave=False,
                       disable=not sys.stderr.isatty())  # a bar on a terminal; the final line alone in a log
            for step in bar:
                i, u = rng.integers(0, len(items), 256), rng.integers(0, len(users), 256)
                y = (np.sum(item_taste[i] * user_taste[u], axis=1) > 0).astype(np.float32)
                value, _ = sess.run([loss, train_op], {item_ph: items[i], user_ph: users[u], clicks: y})
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{value:.3f}", refresh=False)
            os.makedirs(os.path.dirname(prefix), exist_ok=True)
            v1.train.Saver().save(sess, prefix)
    print(f"trained {steps} steps, final loss {value:.3f} → {prefix}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/recommender")
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    items, users, item_taste, user_taste = make_data(args.items, args.users, args.seed)
    prefix = os.path.join(args.out, "model", "model.ckpt")
    train(prefix, items, users, item_taste, user_taste, args.steps, args.seed)

    # Split at the item embedding: offline = item tower, online = user tower + scorer.
    model = surgery.load_model(prefix)
    split = split_model(model, "item_tower/embedding", "score")
    pieces = os.path.join(args.out, "pieces")
    manifest = write_split(model, split, pieces, verify=8)
    v = manifest["verification"]
    print(f"split → {pieces}: offline feeds {[i.name for i in split.offline_inputs]}, online feeds "
          f"{[c['placeholder'] for c in split.cut]} (cut) + {[i.name for i in split.live_inputs]} (live); "
          f"verified, max |difference| {v['max_abs_diff']:.2g}")

    # Offline: every item's embedding, once.
    offline = import_piece(os.path.join(pieces, "offline.pb"))
    with v1.Session(graph=offline) as sess:
        item_embeddings = sess.run("item_tower/embedding:0", {"item_features:0": items})
    print(f"precomputed {item_embeddings.shape[0]} item embeddings of width {item_embeddings.shape[1]}")

    # Online: per request, one user's features against the stored embeddings.
    online = import_piece(os.path.join(pieces, "online.pb"))
    whole = load_graph_from_checkpoint(prefix)
    hits, worst = [], 0.0
    with v1.Session(graph=online) as online_sess, v1.Session(graph=whole[0]) as whole_sess:
        whole[1].restore(whole_sess, prefix)
        timings = {"online": [], "whole": []}
        for user in range(5):
            tiled = np.repeat(users[user:user + 1], len(items), axis=0)
            t0 = time.perf_counter()
            scores = online_sess.run("score:0", {"item_tower/embedding:0": item_embeddings, "user_features:0": tiled})
            timings["online"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            reference = whole_sess.run("score:0", {"item_features:0": items, "user_features:0": tiled})
            timings["whole"].append(time.perf_counter() - t0)
            worst = max(worst, float(np.max(np.abs(scores - reference))))
            top = np.argsort(-scores)[:5]
            truth = np.sum(item_taste[top] * user_taste[user], axis=1) > 0
            hits.append(truth.mean())
            print(f"user {user}: top items {top.tolist()} scores {np.round(scores[top], 4).tolist()} "
                  f"(truly liked: {int(truth.sum())}/5)")
    print(f"online piece vs whole model: max |score difference| {worst:.2g}; "
          f"ranking {len(items)} items took {np.median(timings['online']) * 1e3:.1f} ms online vs "
          f"{np.median(timings['whole']) * 1e3:.1f} ms whole (median of 5 users); "
          f"precision@5 {np.mean(hits):.2f}")
    return 0


def load_graph_from_checkpoint(prefix: str):
    """The trained model as plain TensorFlow sees it: (graph, saver) from the .meta."""
    graph = tf.Graph()
    with graph.as_default():
        saver = v1.train.import_meta_graph(prefix + ".meta")
    return graph, saver


if __name__ == "__main__":
    sys.exit(main())
