"""Fine-tune the demo VGG at fc7 on a new task: the classic transfer-learning recipe.

    python recipes/finetune_fc7.py [--model data/models/vgg] [--data data/shapes.h5] [--out runs/fc7]

The pretrained network (`data/models/vgg`) learned 10 classes of red and blue shapes; the new
task (`target/x`, `target/y` of data/shapes.h5) is 5 classes of green shapes at other sizes.

1. Head only: import the graph, take `fc7:0` behind `tf.stop_gradient`, put a new 5-way dense
   layer on it and train only that layer. fc7 is computed once for the whole dataset
   (`cache_bottlenecks`) and the head trains on the cached values.
2. The same, with fc6 and fc7 opened (`train_scopes`): the stop_gradient moves below them and
   their weights train too; everything below still comes from the cache (now at fc6's input).

Each prints the held-out accuracy before (the new head at its random initialisation: chance)
and after, and writes a directory with the checkpoint, `frozen.pb` and `manifest.json`.
The command-line equivalent of step 1:

    surgery finetune data/models/vgg --at fc7 --head dense:5 --data data/shapes.h5 \\
        --x target/x --y target/y --epochs 30 --lr 0.01 --cache-bottlenecks --out runs/fc7/head
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from surgery.runners.finetune import finetune


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="data/models/vgg")
    ap.add_argument("--data", default="data/shapes.h5")
    ap.add_argument("--out", default="runs/fc7")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

    runs = [
        ("head only (fc7 behind stop_gradient)", "head", dict(head="dense:5", epochs=30, lr=0.01)),
        ("fc6 + fc7 opened (stop_gradient below fc6)", "opened",
         dict(head="dense:5", epochs=20, lr=0.003, train_scopes=["fc[67]"])),
    ]
    for title, name, options in runs:
        result = finetune(args.model, at="fc7", data=args.data, x_key="target/x", y_key="target/y",
                          out=os.path.join(args.out, name), cache_bottlenecks=True, progress=not args.quiet,
                          **options)
        print(f"{title}: trained {', '.join(result.trainable)}")
        print(f"  held-out accuracy ({result.num_val} images): {result.initial_val_accuracy:.1%} before → "
              f"{result.val_accuracy:.1%} after {len(result.history)} epochs")
        print(f"  wrote {result.out}/ (model.ckpt, frozen.pb: {result.names['input']} → "
              f"{result.names['probabilities']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
