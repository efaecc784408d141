"""The `surgery` command line: parses, calls the library, prints. Nothing else lives here.

Exit codes: 0 ok, 2 bad input or usage (one plain line on stderr), 1 internal error,
3 `audit` found flagged ops.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXAMPLES = """\
examples:
  surgery inspect data/models/vgg/model.ckpt
  surgery inspect model.pb --json --tensors 'fc7'
  surgery freeze data/models/vgg --outputs predictions --out vgg.pb
  surgery freeze data/models/vgg --inputs fc7 --outputs predictions --optimize --out head.pb
  surgery restore net.meta --from vgg_16.ckpt --map vgg_16/=net/vgg_16/ --exclude fc8 --out net.ckpt
  surgery finetune data/models/vgg --at fc7 --head dense:5 --data data/shapes.h5 \\
      --x target/x --y target/y --out runs/ft
  surgery split data/models/vgg --cut fc7 --outputs predictions --out pieces/
  surgery precompute pieces/ --data data/shapes.h5 --key target/x --out fc7.h5
  surgery export pieces/ --saved-model serving/
  surgery inspect exported_keras_model/ --tensorboard logs/   # then: tensorboard --logdir logs/

MODEL is a checkpoint prefix, its .meta, a checkpoint directory, a frozen .pb/.pbtxt or a
SavedModel directory. Tensor names may be given as `op:0`, `op`, or a unique suffix (`fc7`).
"""


class _Parser(argparse.ArgumentParser):
    """argparse with our one-line error style (exit 2)."""

    def error(self, message):
        self.exit(2, f"surgery: error: {message} (see `{self.prog} --help`)\n")


def _model_arg(p, name="MODEL", help_text="checkpoint prefix, .meta, checkpoint dir, .pb/.pbtxt or SavedModel dir"):
    p.add_argument("model", metavar=name, help=help_text)
    p.add_argument("--tag-set", default="serve", help="SavedModel tag set (default: serve)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a graph with ops that touch files, the network or Python (see `surgery audit`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="surgery", description="Transfer-learning graph surgery for TensorFlow graphs.",
                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show TensorFlow's logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name, help_text, example):
        return sub.add_parser(name, help=help_text, description=help_text, epilog="example:\n  " + example,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add("inspect", "report format, nodes, op histogram, inputs, outputs, variables and parameters",
            "surgery inspect data/models/vgg --tensors 'fc[67]'")
    _model_arg(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--tensors", metavar="REGEX", help="also list tensors whose names match REGEX")
    p.add_argument("--tensorboard", metavar="LOGDIR",
                   help="also write the graph to LOGDIR for `tensorboard --logdir LOGDIR` (Graphs tab)")

    p = add("freeze", "variables → constants, pruned to the outputs, training nodes stripped",
            "surgery freeze data/models/vgg --outputs predictions --out vgg.pb\n"
            "  surgery freeze data/models/vgg --inputs fc7 --outputs predictions --optimize --out head.pb\n"
            "  surgery freeze vgg.pb --outputs fc7 --text --out trunk.pbtxt   # re-prune a frozen graph")
    _model_arg(p)
    p.add_argument("--outputs", required=True, metavar="T[,..]", help="tensors to keep")
    p.add_argument("--inputs", metavar="T[,..]", help="cut the graph here: these tensors become placeholders")
    p.add_argument("--optimize", action="store_true", help="for inference: fix boolean training switches to their default, "
                   "fold constants and batch norms into convolutions, drop identities")
    p.add_argument("--text", action="store_true", help="write a text GraphDef (.pbtxt)")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the GraphDef")

    p = add("restore", "fill MODEL's variables from a checkpoint or HDF5 weights file, scopes remapped",
            "surgery restore net.meta --from vgg_16.ckpt --map vgg_16/=net/vgg_16/ --exclude fc8 --out net.ckpt")
    _model_arg(p)
    p.add_argument("--from", dest="source", required=True, metavar="SOURCE", help="checkpoint or HDF5 weights file")
    p.add_argument("--map", action="append", default=[], metavar="OLD=NEW",
                   help="rewrite source scope OLD as target scope NEW (repeatable)")
    p.add_argument("--include", action="append", default=[], metavar="RE", help="restore only variables matching RE")
    p.add_argument("--exclude", action="append", default=[], metavar="RE", help="skip variables matching RE")
    p.add_argument("--allow-missing", action="store_true", help="keep initial values for variables with no source")
    p.add_argument("--out", required=True, metavar="PREFIX", help="checkpoint prefix to write (+ .meta)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = add("finetune", "splice a head above a tensor behind stop_gradient and train it",
            "surgery finetune data/models/vgg --at fc7 --head dense:5 --data data/shapes.h5 "
            "--x target/x --y target/y --out runs/ft")
    _model_arg(p)
    p.add_argument("--at", required=True, metavar="TENSOR", help="splice the head above this tensor")
    p.add_argument("--head", required=True, metavar="SPEC", help="e.g. dense:256:relu,dropout:0.5,dense:5")
    p.add_argument("--data", required=True, metavar="SRC", help="HDF5, .npy, TFRecord files or an image folder")
    p.add_argument("--x", metavar="KEY", help="HDF5 dataset / TFRecord feature of the inputs")
    p.add_argument("--y", metavar="KEY", help="labels: HDF5 dataset / TFRecord feature / .npy (folders: by sub-directory)")
    p.add_argument("--preprocess", choices=["none", "vgg", "inception", "unit"], help="scale the inputs (default none)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=["adam", "sgd", "momentum"], default="adam")
    p.add_argument("--train-scopes", action="append", default=[], metavar="RE",
                   help="also train original layers matching RE (moves the stop_gradient below them)")
    p.add_argument("--val-split", type=float, default=0.2, help="held-out fraction for evaluation")
    p.add_argument("--cache-bottlenecks", action="store_true", help="compute the splice tensor once, train on it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tensorboard", metavar="DIR",
                   help="write per-epoch loss/accuracy/val_loss/val_accuracy/learning_rate and the graph to DIR "
                        "(tensorboard --logdir DIR)")
    p.add_argument("--out", required=True, metavar="DIR")

    p = add("split", "cut a graph into an offline piece and an online piece fed by placeholders",
            "surgery split data/models/vgg --cut fc7 --outputs predictions --out pieces/")
    _model_arg(p)
    p.add_argument("--cut", required=True, metavar="T[,..]", help="tensors where the graph is cut")
    p.add_argument("--outputs", required=True, metavar="T[,..]", help="the online piece's outputs")
    p.add_argument("--inputs", metavar="T[,..]", help="the offline piece's inputs (default: its placeholders)")
    p.add_argument("--verify", type=int, default=4, metavar="N",
                   help="check offline∘online against the original on N random inputs (0: skip)")
    p.add_argument("--out", required=True, metavar="DIR")

    p = add("precompute", "run an offline piece over a dataset in batches into HDF5 (resumable)",
            "surgery precompute pieces/ --data data/shapes.h5 --key target/x --ids target/ids --out fc7.h5\n"
            "  surgery precompute data/models/vgg --outputs fc7=fc7,fc6 --data data/shapes.h5 --key target/x "
            "--out fc.h5")
    _model_arg(p, "GRAPH", "a split directory, a frozen .pb, or any MODEL")
    p.add_argument("--data", required=True, metavar="SRC", help="HDF5, .npy, TFRecord files or an image folder")
    p.add_argument("--key", metavar="KEY", help="HDF5 dataset / TFRecord feature of the inputs")
    p.add_argument("--preprocess", choices=["none", "vgg", "inception", "unit"], help="scale the inputs (default none)")
    p.add_argument("--ids", metavar="KEY", help="dataset key of row ids to copy alongside")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--inputs", metavar="T", help="input tensor (default: the graph's one input)")
    p.add_argument("--outputs", metavar="T[=NAME],..",
                   help="tensors to store, optionally renamed (default: the piece's outputs; one is stored as "
                        "`embeddings`)")
    p.add_argument("--out", required=True, metavar="FILE.h5",
                   help="HDF5 to write; an interrupted run resumes from FILE.h5.partial when run again")
    p.add_argument("--runner", choices=["local", "beam"], default="local",
                   help="local (default), or Apache Beam: shards + index in FILE.h5.shards/, merged into FILE.h5 "
                        "(needs pip install 'surgery[beam]')")
    p.add_argument("--beam-option", action="append", default=[], metavar="K=V",
                   help="Beam pipeline option, repeatable: runner=DataflowRunner, direct_num_workers=2, "
                        "direct_running_mode=multi_processing, project=..., temp_location=gs://...")

    p = add("export", "write frozen pieces as SavedModels with a serving_default signature",
            "surgery export pieces/ --saved-model serving/   # serving/offline, serving/online\n"
            "  surgery export head.pb --saved-model serving/head\n\n"
            "signature keys are the tensor names with '/' and ':' made '_' (item_tower/embedding:0 → "
            "item_tower_embedding)")
    _model_arg(p, "GRAPH", "a frozen .pb/.pbtxt, or a directory with manifest.json (one SavedModel per piece)")
    p.add_argument("--saved-model", required=True, metavar="DIR")

    p = add("audit", "list ops that touch files, the network or Python (exit 3 when flagged)",
            "surgery audit downloaded.pb")
    _model_arg(p)
    p.add_argument("--json", action="store_true")
    return parser


# ---------------------------------------------------------------- command handlers

def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# Each command has its handler `_cmd_<name>`; `main` dispatches on the name.

def _cmd_inspect(args) -> int:
    from .report import format_report, inspect_model, write_tensorboard
    from .manifest import is_pieces_dir, load_pieces
    from .model import load_model

    if is_pieces_dir(args.model):  # a split directory: one report per piece
        models = load_pieces(args.model)
    else:
        models = {"": load_model(args.model, tag_set=args.tag_set)}
    reports = {name: inspect_model(m, tensors=args.tensors) for name, m in models.items()}
    if args.tensorboard:
        for name, m in models.items():
            write_tensorboard(m, os.path.join(args.tensorboard, name) if name else args.tensorboard)
    if args.json:
        _print_json(reports[""] if "" in reports else
                    {"format": "pieces", "path": args.model, "pieces": reports})
    else:
        print("\n\n".join((f"── piece '{name}'\n" if name else "") + format_report(r, description=models[name].description)
                          for name, r in reports.items()))
    if args.tensorboard and not args.json:
        print(f"\ngraph written for TensorBoard: tensorboard --logdir {args.tensorboard}")
    return 0


def _cmd_freeze(args) -> int:
    from .freeze import freeze_model, write_graph_def
    from .model import load_model

    model = load_model(args.model, tag_set=args.tag_set)
    frozen = freeze_model(model, args.outputs, inputs=args.inputs or (), optimize=args.optimize)
    size = write_graph_def(frozen, args.out, text=args.text, progress=True)
    print(f"froze {frozen.num_nodes} nodes ({size / 2**20:.1f} MiB) → {args.out}"
          + ("  [optimized]" if args.optimize else ""))
    print("  feed:  " + (", ".join(t["name"] for t in frozen.inputs) or "(nothing)"))
    print("  fetch: " + ", ".join(t["name"] for t in frozen.outputs))
    return 0


def _cmd_restore(args) -> int:
    from .model import load_model
    from .restore import format_report, plan_restore, restore_model

    model = load_model(args.model, tag_set=args.tag_set)
    plan = plan_restore(model, args.source, maps=args.map, include=args.include, exclude=args.exclude,
                        allow_missing=args.allow_missing)
    report = restore_model(model, plan, args.out, progress=not args.json and sys.stderr.isatty())
    if args.json:
        _print_json(report)
    else:
        print(format_report(report))
    return 0


def _cmd_finetune(args) -> int:
    from .model import load_model
    from .train import finetune

    model = load_model(args.model, tag_set=args.tag_set)
    history = []

    def on_epoch(r):
        if not history and r["epoch"] > 1:
            print(f"(resumed an interrupted run after epoch {r['epoch'] - 1})")
        history.append(r)
        val = "" if r["val_accuracy"] is None else f"  val accuracy {r['val_accuracy']:.1%}"
        print(f"epoch {r['epoch']}/{args.epochs}: loss {r['loss']:.4f}  train accuracy {r['accuracy']:.1%}"
              f"{val}  ({r['seconds']:.1f}s)", flush=True)

    result = finetune(model, at=args.at, head=args.head, data=args.data, x_key=args.x, y_key=args.y, out=args.out,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                      train_scopes=args.train_scopes, val_split=args.val_split,
                      cache_bottlenecks=args.cache_bottlenecks, seed=args.seed, preprocess=args.preprocess,
                      tensorboard=args.tensorboard, on_epoch=on_epoch)
    names = result.names
    if result.val_accuracy is not None:
        print(f"held-out accuracy ({result.num_val} rows): {result.initial_val_accuracy:.1%} before → "
              f"{result.val_accuracy:.1%} after")
    print(f"trained {len(result.trainable)} variables: " + ", ".join(result.trainable))
    print(f"wrote {args.out}/: model.ckpt (+ .meta), frozen.pb, manifest.json")
    print(f"  feed:  {names['input']} (or cached values at {names['bottleneck']})")
    print(f"  fetch: {names['probabilities']}, {names['logits']}")
    return 0


def _cmd_split(args) -> int:
    from .model import load_model
    from .split import split_model, write_split

    if args.verify < 0:
        from .errors import SurgeryError

        raise SurgeryError(f"--verify {args.verify} is negative", "give a number of random inputs, or 0 to skip")
    model = load_model(args.model, tag_set=args.tag_set)
    split = split_model(model, args.cut, args.outputs, inputs=args.inputs or None)
    manifest = write_split(model, split, args.out, verify=args.verify)

    def names(specs):
        return ", ".join(f"{s['name']} {s['dtype']}{s['shape']}" for s in specs) or "(nothing)"

    print(f"split {args.model} → {args.out}/")
    print(f"  offline.pb  {len(split.offline.graph_def.node):>5} nodes   feed {names(split.offline_inputs)}")
    print(f"                           fetch {names(split.offline.outputs)}")
    print(f"  online.pb   {len(split.online.graph_def.node):>5} nodes   feed "
          + names([{**c, "name": c["placeholder"]} for c in split.cut]) + " (cut)")
    if split.live_inputs:
        print(f"                           feed {names(split.live_inputs)} (live)")
    print(f"                           fetch {names(split.online.outputs)}")
    for piece_name, defaults in split.defaults.items():
        for d in defaults:
            print(f"  note: {piece_name} keeps {d['name']} (PlaceholderWithDefault) at its default unless fed")
    v = manifest["verification"]
    if v.get("skipped"):
        print("  verification skipped (--verify 0)")
    else:
        print(f"  verified on {v['n']} random inputs against the {v['reference']}: "
              f"max |difference| {v['max_abs_diff']:.3g} (tolerance {v['tolerance']:.3g})")
    return 0


def _cmd_precompute(args) -> int:
    if args.runner == "beam":
        return _precompute_on_beam(args)
    import numpy as np

    from .precompute import precompute

    result = precompute(args.model, args.data, args.key, args.out, ids=args.ids, batch_size=args.batch_size,
                        inputs=args.inputs, outputs=args.outputs, tag_set=args.tag_set, preprocess=args.preprocess,
                        progress=True)
    if result.status == "up to date":
        print(f"{args.out} is up to date ({result.rows} rows, same graph and data); nothing to do")
        return 0
    if result.resumed_from:
        print(f"resumed at row {result.resumed_from} of {result.rows}; computed {result.computed} rows")
    else:
        print(f"computed {result.computed} rows")
    for name, spec in result.datasets.items():
        shape = ", ".join(str(d) for d in [result.rows, *spec["shape"]])
        print(f"  {name:<12} [{shape}] {np.dtype(spec['dtype']).name}  ← {spec['tensor']}")
    if args.ids:
        print(f"  {'ids':<12} ← {args.ids}")
    print(f"→ {args.out}")
    return 0


def _precompute_on_beam(args) -> int:
    """`precompute --runner beam`: shards + index in OUT.shards/, merged into OUT (see surgery/beam.py)."""
    from .beam import merge_shards, require_beam, run_precompute, source_for

    require_beam()
    source = source_for(args.data, args.key, args.ids, preprocess=args.preprocess)
    shard_dir = args.out + ".shards"
    index = run_precompute(args.model, source, shard_dir, inputs=args.inputs, outputs=args.outputs,
                           batch_size=args.batch_size, beam_options=args.beam_option)
    merge_shards(index, args.out)
    print(f"precomputed {source.num_rows} rows on Beam → {args.out}")
    print(f"  shards and index: {index}")
    return 0


def _cmd_export(args) -> int:
    from .export import export

    written = export(args.model, args.saved_model)
    for piece, keys in written.items():
        where = os.path.join(args.saved_model, piece) if piece else args.saved_model
        print(f"exported {where}  (signature serving_default)")
        print("  inputs:  " + (", ".join(f"{k} ← {n}" for k, n in keys["inputs"].items()) or "(none)"))
        print("  outputs: " + ", ".join(f"{k} ← {n}" for k, n in keys["outputs"].items()))
    return 0


def _cmd_audit(args) -> int:
    from .audit import audit_path, format_audit

    reports = audit_path(args.model, tag_set=args.tag_set)
    if args.json:
        _print_json(reports[0] if len(reports) == 1 else {"clean": all(r["clean"] for r in reports), "pieces": reports})
    else:
        print("\n".join(format_audit(r) for r in reports))
    return 0 if all(r["clean"] for r in reports) else 3


def _refuse_flagged(args) -> None:
    """--strict: audit MODEL before any command touches it."""
    from .audit import audit_path, strict_violations
    from .errors import SurgeryError

    bad = [f for r in audit_path(args.model, tag_set=args.tag_set) for f in strict_violations(r)]
    if bad:
        listed = ", ".join(f"{f['name']} ({f['op']})" for f in bad[:3]) + (" …" if len(bad) > 3 else "")
        raise SurgeryError(f"--strict: {args.model} has {len(bad)} op(s) that touch files, the network or "
                           f"Python: {listed}", "run `surgery audit` on it, or drop --strict if you trust it")


def _quiet_tensorflow(verbose: bool) -> None:
    """Silence TensorFlow's C++ and Python chatter unless --verbose (must run before import)."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
        import warnings

        warnings.filterwarnings("ignore")
    else:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_tensorflow(args.verbose)
    if not sys.stderr.isatty():  # a log file, not a terminal: a progress line every 10 s at most
        os.environ.setdefault("TQDM_MININTERVAL", "10")
    if not args.verbose:
        import logging

        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from .errors import SurgeryError

    try:
        if getattr(args, "strict", False) and args.command != "audit":
            _refuse_flagged(args)
        return globals()[f"_cmd_{args.command}"](args)
    except SurgeryError as e:
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"surgery: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("surgery: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `surgery inspect ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # an internal error: say so plainly, traceback with --verbose
        if args.verbose:
            raise
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        print(f"surgery: internal error: {type(e).__name__}: {msg} (run with --verbose for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
