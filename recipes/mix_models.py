#!/usr/bin/env python
"""Recipe: mix two models in one graph, an output of the first feeding an input of the second.

Each model is imported under its own name scope (two networks often share variable names such
as `net/conv1/weights`) and restores its weights from its own checkpoint. The recipe then checks
the mix against the other way of chaining models — running the first graph, fetching its
output and feeding it to the second in a separate session — and can write the mix frozen.

    surgery freeze data/models/vgg --inputs fc7 --outputs predictions --out head.pb
    python recipes/mix_models.py data/models/vgg head.pb --connect fc7=fc7 \\
        --outputs predictions --scopes body,head --out mixed.pb

FIRST / SECOND: any MODEL form (checkpoint, .meta + checkpoint, .pb, SavedModel, Keras export).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from surgery import SurgeryError, freeze_model, load_model, write_graph_def
from surgery.core.names import parse_list, resolve_tensors
from surgery.core.tfcompat import tf
from surgery.passes.mix import mix_models

v1 = tf.compat.v1


def random_feed(tensor, batch: int, rng) -> np.ndarray:
    """A batch of random values of `tensor`'s dtype and shape (unknown dims: `batch` first, then 1)."""
    dims = tensor.shape.as_list() if tensor.shape.rank is not None else [None]
    shape = [batch if (d is None and i == 0) else (d or 1) for i, d in enumerate(dims)]
    if tensor.dtype.is_integer:
        return rng.integers(0, 256 if tensor.dtype == tf.uint8 else 10, size=shape).astype(tensor.dtype.as_numpy_dtype)
    return rng.normal(size=shape).astype(tensor.dtype.as_numpy_dtype)


def run_frozen(frozen, feeds: dict) -> list:
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(frozen.graph_def, name="")
    with v1.Session(graph=graph) as sess:
        return sess.run([t.name for t in frozen.outputs], feeds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--connect", action="append", required=True, metavar="SECOND_INPUT=FIRST_OUTPUT")
    p.add_argument("--outputs", required=True, metavar="T[,..]", help="the second model's outputs")
    p.add_argument("--scopes", default="first,second", help="two name scopes (default: first,second)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--out", help="also write the mix, frozen, to this .pb")
    args = p.parse_args(argv)
    try:
        connect = dict(c.split("=", 1) for c in args.connect)
        scopes = tuple(parse_list(args.scopes))
        first, second = load_model(args.first), load_model(args.second)
        mixed = mix_models(first, second, connect=connect, scopes=scopes)
        outputs = [f"{scopes[1]}/{t.name}" for t in resolve_tensors(second.graph, args.outputs)]

        # Feed the first model's inputs with random values.
        sources = resolve_tensors(first.graph, list(connect.values()))
        frozen_first = freeze_model(first, [t.name for t in sources])
        rng = np.random.default_rng(0)
        first_inputs = {t.name: random_feed(first.graph.get_tensor_by_name(t.name), args.batch, rng)
                        for t in frozen_first.inputs}

        with v1.Session(graph=mixed.graph) as sess:
            restored = mixed.restore(sess)
            mixed_out = sess.run(outputs, {f"{scopes[0]}/{k}": v for k, v in first_inputs.items()})
        print("restored: " + ", ".join(f"{s}: {n} variables" for s, n in restored.items()))

        # The other way: run the first graph, feed its outputs to the second in its own session.
        middle = dict(zip([t.name for t in sources], run_frozen(frozen_first, first_inputs)))
        targets = resolve_tensors(second.graph, list(connect))
        frozen_second = freeze_model(second, args.outputs, inputs=[t.name for t in targets])
        chained = run_frozen(frozen_second, {t.name: middle[s.name] for t, s in zip(targets, sources)})
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(mixed_out, chained))
        print(f"one graph vs two sessions: max |difference| = {diff:.3g} over {len(outputs)} output(s)")

        if args.out:
            frozen = mixed.freeze(outputs)
            write_graph_def(frozen.graph_def, args.out)
            print(f"wrote {args.out}: feed " + ", ".join(t.name for t in frozen.inputs)
                  + "; fetch " + ", ".join(t.name for t in frozen.outputs))
    except SurgeryError as e:
        print(f"mix_models: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
