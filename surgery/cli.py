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
            "surgery freeze data/models/vgg --outputs predictions --out vgg.pb")
    _model_arg(p)
    p.add_argument("--outputs", required=True, metavar="T[,..]", help="tensors to keep")
    p.add_argument("--inputs", metavar="T[,..]", help="cut the graph here: these tensors become placeholders")
    p.add_argument("--optimize", action="store_true", help="fold constants and batch norms, drop identities")
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
    p.add_argument("--data", required=True, metavar="FILE.h5", help="training data")
    p.add_argument("--x", required=True, metavar="KEY", help="HDF5 key of the inputs")
    p.add_argument("--y", required=True, metavar="KEY", help="HDF5 key of the integer labels")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=["adam", "sgd", "momentum"], default="adam")
    p.add_argument("--train-scopes", action="append", default=[], metavar="RE",
                   help="also train original layers matching RE (moves the stop_gradient below them)")
    p.add_argument("--val-split", type=float, default=0.2, help="held-out fraction for evaluation")
    p.add_argument("--cache-bottlenecks", action="store_true", help="compute the splice tensor once, train on it")
    p.add_argument("--seed", type=int, default=0)
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
            "surgery precompute pieces/ --data data/shapes.h5 --key target/x --out fc7.h5")
    _model_arg(p, "GRAPH", "a split directory, a frozen .pb, or any MODEL")
    p.add_argument("--data", required=True, metavar="FILE.h5", help="HDF5 (or .npy) input data")
    p.add_argument("--key", required=True, metavar="KEY", help="dataset key of the inputs")
    p.add_argument("--ids", metavar="KEY", help="dataset key of row ids to copy alongside")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--inputs", metavar="T", help="input tensor (default: the graph's one input)")
    p.add_argument("--outputs", metavar="T[=NAME],..", help="tensors to store, optionally renamed")
    p.add_argument("--out", required=True, metavar="FILE.h5")

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


def _cmd_inspect(args) -> int:
    from .inspect import format_report, inspect_model
    from .model import load_model

    model = load_model(args.model, tag_set=args.tag_set)
    report = inspect_model(model, tensors=args.tensors)
    if args.tensorboard:
        from .inspect import write_tensorboard

        write_tensorboard(model, args.tensorboard)
    if args.json:
        _print_json(report)
    else:
        print(format_report(report, description=model.description))
    if args.tensorboard and not args.json:
        print(f"\ngraph written for TensorBoard: tensorboard --logdir {args.tensorboard}")
    return 0


def _cmd_freeze(args) -> int:
    from .freeze import freeze_model, write_graph_def
    from .model import load_model

    model = load_model(args.model, tag_set=args.tag_set)
    frozen = freeze_model(model, args.outputs, inputs=args.inputs or ())
    write_graph_def(frozen.graph_def, args.out, text=args.text)
    print(f"froze {len(frozen.graph_def.node)} nodes → {args.out}")
    print("  feed:  " + (", ".join(t["name"] for t in frozen.inputs) or "(nothing)"))
    print("  fetch: " + ", ".join(t["name"] for t in frozen.outputs))
    return 0


# Each command below has its handler `_cmd_<name>`; `main` dispatches on the name.

def _cmd_restore(args) -> int:
    return _not_available(args)


def _cmd_finetune(args) -> int:
    return _not_available(args)


def _cmd_split(args) -> int:
    return _not_available(args)


def _cmd_precompute(args) -> int:
    return _not_available(args)


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
    return _not_available(args)


def _not_available(args) -> int:
    from .errors import SurgeryError

    raise SurgeryError(f"`surgery {args.command}` is not available in this version", "see README.md for what ships")


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
    if not args.verbose:
        import logging

        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from .errors import SurgeryError

    try:
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
    except Exception as e:  # an internal error: say so plainly, traceback with --verbose
        if args.verbose:
            raise
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        print(f"surgery: internal error: {type(e).__name__}: {msg} (run with --verbose for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
