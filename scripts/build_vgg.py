"""Build and briefly train the demo's "pretrained" network: a small VGG with TF-slim's layer
names (`vgg/conv1/conv1_1`, …, `vgg/fc6`, `vgg/fc7`, `vgg/fc8`; top-level `fc7:0`), trained on
the source task of `data/shapes.h5`, saved as `.meta` + checkpoint with its Adam slots, the
way pretrained checkpoints are usually published.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import h5py
import numpy as np
from nets import vgg
from tqdm import tqdm

from surgery.core.tfcompat import tf

v1 = tf.compat.v1


def build(num_classes: int = 10):
    images = v1.placeholder(tf.uint8, [None, 32, 32, 3], name="input")
    x = tf.cast(images, tf.float32) / 255.0 - 0.5
    logits = vgg(x, num_classes, blocks=(2, 2, 2), widths=(16, 32, 64), fc_width=128, scope="vgg")
    probs = tf.nn.softmax(logits, name="predictions")
    labels = v1.placeholder(tf.int64, [None], name="labels")
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits), name="loss")
    step = v1.train.get_or_create_global_step()
    train_op = v1.train.AdamOptimizer(1e-3).minimize(loss, global_step=step, name="train")
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), labels), tf.float32), name="accuracy")
    return images, labels, probs, loss, train_op, accuracy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/shapes.h5")
    ap.add_argument("--out", default="data/models/vgg")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    with h5py.File(args.data, "r") as f:
        x, y = f["source/x"][:], f["source/y"][:]
    n_val = len(x) // 10
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(args.seed)
        images, labels, _, loss, train_op, accuracy = build(int(y.max()) + 1)
        saver = v1.train.Saver(save_relative_paths=True)  # the `checkpoint` file survives the rename below
        rng = np.random.default_rng(args.seed)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            for epoch in range(args.epochs):
                order = rng.permutation(len(x) - n_val) + n_val
                bar = tqdm(range(0, len(order), 64), desc=f"pretrain epoch {epoch + 1}/{args.epochs}", leave=False,
                           mininterval=0.1 if sys.stderr.isatty() else 10)
                for i in bar:
                    idx = np.sort(order[i:i + 64])
                    _, loss_value = sess.run([train_op, loss], {images: x[idx], labels: y[idx]})
                    bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
            acc = sess.run(accuracy, {images: x[:n_val], labels: y[:n_val]})
            tmp = args.out + ".tmp"
            os.makedirs(tmp, exist_ok=True)
            saver.save(sess, os.path.join(tmp, "model.ckpt"), write_meta_graph=True)
    if os.path.isdir(args.out):
        import shutil

        shutil.rmtree(args.out)
    os.rename(tmp, args.out)
    print(f"pretrained demo VGG: source-task validation accuracy {acc:.1%} → {args.out}/model.ckpt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
