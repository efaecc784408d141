"""Recipe: a fine-tuned head for a phone. Fine-tune at fc7, split, precompute fc7, and export the
online head as an int8 `.tflite` calibrated on the precomputed fc7 rows.

    python recipes/mobile_head.py [--model data/models/vgg] [--data data/shapes.h5] [--out runs/mobile]

1. Fine-tune a new head (`dense:256:relu,dense:5`) at fc7 of the demo VGG on the 5-class task.
2. `surgery split` it at fc7: the offline backbone (image → fc7) and the online head (fc7 → classes).
3. `precompute` fc7 for every target image with the offline piece.
4. `surgery export` the online head three times: float; int8 calibrated on the fc7 rows of the
   fine-tuning's training rows (the precomputed inputs of an online piece are exactly its
   representative data); and int8 with the logits layer kept in float (`--float-from`) and one
   weight scale per tensor (`--per-tensor`). Each is verified in LiteRT by the export itself.
5. On the fine-tuning's held-out rows: size, accuracy and top-1 agreement of each file against
   the float graph, and latency per request (batch 1, one thread) in LiteRT against TensorFlow.

Why the third file: this head's logits span about ±40, so int8's step on them is 0.33, and one
held-out row in ten has its two best classes closer than that; all-int8 ties or swaps some of
them. Computing only the logits layer (256×5 weights) in float keeps every other weight and
activation int8. The command-line equivalent of step 4's int8 files:

    surgery export runs/mobile/pieces/online.pb --tflite runs/mobile/head_int8.tflite \\
        --quantize int8 --calibration runs/mobile/fc7_train.npy
    surgery export runs/mobile/pieces/online.pb --tflite runs/mobile/head_int8_float_logits.tflite \\
        --quantize int8 --calibration runs/mobile/fc7_train.npy --float-from head/logits --per-tensor
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from surgery.runners.finetune import finetune  # noqa: E402
from surgery.runners.precompute import precompute  # noqa: E402

SEED, VAL_SPLIT = 0, 0.2


def surgery(*args) -> dict | None:
    """Run `surgery ARGS` (the CLI contract); the parsed --json output, if asked for."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "surgery", *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"surgery {' '.join(args)} failed: {r.stderr.strip()}")
    return json.loads(r.stdout) if "--json" in args else None


def per_request_ms(answer, rows, repeats: int = 300) -> float:
    """Median milliseconds of one request (batch 1) over `repeats` rows."""
    times = []
    for i in range(repeats):
        row = [r[i % len(r)][None] for r in rows]
        t0 = time.perf_counter()
        answer(row)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "data/models/vgg"))
    ap.add_argument("--data", default=os.path.join(ROOT, "data/shapes.h5"))
    ap.add_argument("--out", default="runs/mobile")
    ap.add_argument("--head", default="dense:256:relu,dense:5")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("ai_edge_litert") is None:
        print("skipped: this recipe runs the .tflite in LiteRT; install it with pip install 'surgery[tflite]'")
        return 0
    from surgery.exporters.runtimes import load_pieces, request_runner

    out = args.out
    ft = finetune(args.model, at="fc7", head=args.head, data=args.data, x_key="target/x", y_key="target/y",
                  out=os.path.join(out, "finetuned"), epochs=args.epochs, lr=0.003, cache_bottlenecks=True,
                  val_split=VAL_SPLIT, seed=SEED, progress=not args.quiet)
    print(f"1. fine-tuned {args.head} at fc7: held-out accuracy {ft.initial_val_accuracy:.1%} → {ft.val_accuracy:.1%}")
    surgery("split", os.path.join(out, "finetuned"), "--cut", "fc7", "--outputs", ft.names["probabilities"],
            "--out", os.path.join(out, "pieces"))
    print(f"2. split at fc7 → {out}/pieces/offline.pb, online.pb")
    fc7_file = os.path.join(out, "fc7.h5")
    precompute(os.path.join(out, "pieces"), args.data, "target/x", fc7_file, ids="target/ids", progress=not args.quiet)
    with h5py.File(fc7_file, "r") as f, h5py.File(args.data, "r") as d:
        fc7, labels = f["embeddings"][()], d["target/y"][()]
    print(f"3. precomputed fc7 for {len(fc7)} images → {fc7_file}")

    # the rows fine-tuning held out: the same permutation `finetune` draws (seed, val_split)
    order = np.random.default_rng(SEED).permutation(len(fc7))
    n_val = int(round(len(fc7) * VAL_SPLIT))
    val, train = np.sort(order[:n_val]), order[n_val:]
    np.save(os.path.join(out, "fc7_train.npy"), fc7[train])
    online = os.path.join(out, "pieces", "online.pb")
    files = {"LiteRT float": os.path.join(out, "head_float.tflite"),
             "LiteRT int8": os.path.join(out, "head_int8.tflite"),
             "LiteRT int8, float logits": os.path.join(out, "head_int8_float_logits.tflite")}
    int8 = ("--quantize", "int8", "--calibration", os.path.join(out, "fc7_train.npy"))
    options = {"LiteRT float": (), "LiteRT int8": int8,
               "LiteRT int8, float logits": (*int8, "--float-from", ft.names["logits"], "--per-tensor")}
    print(f"4. exported the online head (int8 calibrated on {len(train)} training rows; verified in LiteRT on rows "
          "held out from calibrating):")
    for name, path in files.items():
        v = surgery("export", online, "--tflite", path, *options[name], "--json")["pieces"]["model"]["verification"]
        agreement = "" if v.get("top1_agreement") is None else f", top-1 agreement {v['top1_agreement']:.1%}"
        print(f"   {path} ({v['n']} {v['data']} rows{agreement})")

    (piece,), _ = load_pieces(online)
    held = [fc7[val]]
    tf_answer = request_runner("tensorflow", None, piece)
    runners = {"TensorFlow (float graph)": tf_answer}
    for name, path in files.items():
        with open(path, "rb") as f:
            runners[name] = request_runner("tflite", f.read(), piece)
    reference = tf_answer(held)[0].argmax(1)
    sizes = {name: os.path.getsize(path) for name, path in files.items()}
    print(f"5. on the {len(val)} rows fine-tuning held out (batch 1, one thread):")
    print(f"   {'':<27}{'size':>10}{'accuracy':>10}{'top-1 = float':>15}{'ms/request':>12}  vs float")
    base_ms = None
    for name, answer in runners.items():
        top1 = answer(held)[0].argmax(1)
        ms = per_request_ms(answer, held)
        base_ms = base_ms or ms
        size = f"{sizes[name] / 1024:.1f} KiB" if name in sizes else ""
        ratio = f"{sizes[name] / sizes['LiteRT float']:.3f}x" if name in sizes else ""
        print(f"   {name:<27}{size:>10}{np.mean(top1 == labels[val]):>10.1%}{np.mean(top1 == reference):>15.1%}"
              f"{ms:>9.3f} ({ms / base_ms:.2f}x)  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
