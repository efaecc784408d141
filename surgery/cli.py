"""The `surgery` command line: parses, calls the library, prints. Nothing else lives here.

Exit codes: 0 ok, 2 bad input or usage (one plain line on stderr), 1 internal error,
3 `audit` found flagged ops.

Start-up is fast on purpose: this module imports only the standard library, and each command
imports TensorFlow (through the library) when it runs, so `--help`, `--version` and usage errors
answer at once.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys

EXAMPLES = """\
examples:
  surgery inspect data/models/vgg
  surgery inspect model.pb --json --tensors 'fc7'
  surgery freeze data/models/vgg --outputs predictions --out vgg.pb
  surgery freeze data/models/vgg --inputs fc7 --outputs predictions --optimize --out head.pb
  surgery restore net.meta --from vgg_16.ckpt --map vgg_16/=net/vgg_16/ --exclude fc8 --out net.ckpt
  surgery finetune data/models/vgg --at fc7 --head dense:5 --data data/shapes.h5 \\
      --x target/x --y target/y --out runs/ft
  surgery split data/models/vgg --cut fc7 --outputs predictions --out pieces
  surgery precompute pieces --data data/shapes.h5 --key target/x --out fc7.h5
  surgery export pieces --saved-model serving
  surgery export pieces/online.pb --tflite head.tflite --quantize int8 --calibration fc7.h5
  surgery inspect exported_keras_model/ --tensorboard logs   # then: tensorboard --logdir logs

MODEL is a checkpoint prefix, its .meta, a checkpoint directory, a frozen .pb/.pbtxt, a
SavedModel directory (--signature NAME), a Keras model file (.keras, legacy .h5), or `-` (a
GraphDef on stdin). Tensor names may be given as `op:0`, `op`, a unique suffix (`fc7`) or a Keras
layer name (`add_4`). -v/-q and --json go before or after the command.
"""


def version() -> str:
    """The installed distribution's version; the source tree's pyproject.toml when not installed."""
    try:
        from importlib.metadata import version as dist_version

        return dist_version("surgery")
    except Exception:
        pass
    try:
        import tomllib

        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(here, "pyproject.toml"), "rb") as f:
            return tomllib.load(f)["project"]["version"]
    except Exception:
        return "unknown"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Raw epilogs, and `(default: X)` after every option that has a default worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" not in text and "default" not in text and action.option_strings
                and default not in (None, False, [], argparse.SUPPRESS) and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse with our one-line error style (exit 2), and unknown options named up front
    (with the closest real option) before argparse complains about a missing required one."""

    def error(self, message):
        self.exit(2, f"surgery: error: {message} (see `{self.prog} --help`)\n")

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        self._check_options(args)
        return super().parse_known_args(args, namespace)

    def _check_options(self, args):
        known = set(self._option_string_actions)
        has_commands = any(isinstance(a, argparse._SubParsersAction) for a in self._actions)
        for token in args:
            if token == "--":
                return
            if not token.startswith("-") or token == "-" or _is_number(token):
                if has_commands:  # the rest belongs to the command's own parser
                    return
                continue
            flag = token.split("=", 1)[0]
            if flag in known or (flag.startswith("--") and sum(k.startswith(flag) for k in known) == 1):
                continue
            if not flag.startswith("--") and all(f"-{c}" in known for c in flag[1:]):  # -vq
                continue
            close = difflib.get_close_matches(flag, sorted(k for k in known if k.startswith("--")), n=1, cutoff=0.5)
            self.error(f"unknown option {flag}" + (f"; did you mean {close[0]}?" if close else ""))


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def _common(subcommand: bool) -> argparse.ArgumentParser:
    """-v/-q/--json, accepted before the command and after it (a command's copy never
    overrides a value given before it: its defaults are SUPPRESS)."""
    p = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if subcommand else False
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="show TensorFlow's logs and full tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="no progress bars or summaries (errors still go to stderr; inspect and audit "
                        "still print their report)")
    p.add_argument("--json", action="store_true", default=default,
                   help="print one JSON document on stdout (what was written, inputs and outputs, figures) "
                        "and nothing else")
    return p


def _model_arg(p, name="MODEL", help_text="checkpoint prefix, .meta, checkpoint dir, .pb/.pbtxt, SavedModel dir, "
                                            "Keras file, or - for a GraphDef on stdin"):
    p.add_argument("model", metavar=name, help=help_text)
    p.add_argument("--tag-set", default="serve", help="SavedModel tag set (default: serve)")
    p.add_argument("--signature", metavar="NAME",
                   help="SavedModel signature to use (default: serving_default, else the only one)")
    p.add_argument("--trust-code", action="store_true",
                   help="load a Keras file even if that runs code stored in it (Lambda layers, custom classes)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a graph with ops that touch files, the network or Python (see `surgery audit`)")


def _set_arg(p) -> None:
    p.add_argument("--set", action="append", default=[], metavar="T=VALUE",
                   help="bind a placeholder to a constant (repeatable): --set is_training=false, --set keep_prob=1.0; "
                        "it is no longer an input, and conditionals on it keep only the branch taken")


def _data_args(p, key_flag: str, *, preprocess: bool = False) -> None:
    """The rows a command reads: --data, the key that picks them (--x or --key), and --preprocess."""
    p.add_argument("--data", required=True, metavar="SRC",
                   help="input rows: HDF5, .npy, TFRecord files (path or glob), Parquet (file or directory) "
                        "or an image folder (one sub-directory per class)")
    p.add_argument(key_flag, metavar="KEY", help="HDF5 dataset / TFRecord feature / Parquet column(s) A or A,B,.. "
                   "of the inputs (default: none; not needed for .npy or an image folder)")
    if preprocess:
        _preprocess_arg(p)


def _preprocess_arg(p) -> None:
    p.add_argument("--preprocess", choices=["none", "vgg", "inception", "unit"],
                   help="scale the inputs: vgg subtracts ImageNet means, inception to [-1,1], unit to [0,1] "
                        "(default: none)")


def _inspect_args(p) -> None:
    _model_arg(p)
    p.add_argument("--tensors", metavar="REGEX", help="also list tensors whose names match REGEX")
    p.add_argument("--tensorboard", metavar="LOGDIR",
                   help="also write the graph to LOGDIR for `tensorboard --logdir LOGDIR` (Graphs tab; "
                        "pip install 'surgery[viz]')")


def _freeze_args(p) -> None:
    _model_arg(p)
    p.add_argument("--outputs", required=True, metavar="T[,..]", help="tensors to keep")
    p.add_argument("--inputs", metavar="T[,..]",
                   help="cut the graph here: these tensors become placeholders (default: the graph's own inputs)")
    _set_arg(p)
    p.add_argument("--optimize", action="store_true", help="for inference: fix boolean training switches to their "
                   "default, fold constants and batch norms into convolutions, drop identities")
    p.add_argument("--text", action="store_true", help="write a text GraphDef (implied by an --out ending in .pbtxt)")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the GraphDef; - for stdout")


def _restore_args(p) -> None:
    _model_arg(p)
    p.add_argument("--from", dest="source", required=True, metavar="SOURCE", help="checkpoint or HDF5 weights file")
    p.add_argument("--map", action="append", default=[], metavar="OLD=NEW",
                   help="rewrite source scope OLD as target scope NEW (repeatable; default: names as they are)")
    p.add_argument("--include", action="append", default=[], metavar="RE",
                   help="restore only variables matching RE (repeatable; default: all)")
    p.add_argument("--exclude", action="append", default=[], metavar="RE",
                   help="skip variables matching RE (repeatable; default: none)")
    p.add_argument("--allow-missing", action="store_true", help="keep initial values for variables with no source")
    p.add_argument("--out", required=True, metavar="PREFIX", help="checkpoint prefix to write (+ .meta)")


def _finetune_args(p) -> None:
    _model_arg(p)
    p.add_argument("--at", required=True, metavar="TENSOR", help="splice the head above this tensor")
    _set_arg(p)
    p.add_argument("--head", required=True, metavar="SPEC",
                   help="layers, comma-separated: dense:UNITS[:ACTIVATION], dropout:RATE, flatten; "
                        "e.g. dense:256:relu,dropout:0.5,dense:5 (the last dense's units are the classes)")
    _data_args(p, "--x")
    p.add_argument("--y", metavar="KEY", help="integer labels: HDF5 dataset / TFRecord feature / Parquet column / "
                   "a second .npy (default: none; an image folder labels by sub-directory)")
    _preprocess_arg(p)
    p.add_argument("--epochs", type=int, default=5, metavar="N", help="passes over the training rows")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="rows per training step")
    p.add_argument("--lr", type=float, default=1e-3, metavar="F", help="learning rate")
    p.add_argument("--optimizer", choices=["adam", "sgd", "momentum"], default="adam", help="the optimizer")
    p.add_argument("--train-scopes", action="append", default=[], metavar="RE",
                   help="also train original layers matching RE (repeatable; moves the stop_gradient below them; "
                        "default: only the head trains)")
    p.add_argument("--val-split", type=float, default=0.2, metavar="F", help="held-out fraction for evaluation")
    p.add_argument("--cache-bottlenecks", action="store_true", help="compute the splice tensor once, train on it")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed for the head's initial weights and "
                   "the shuffling")
    p.add_argument("--tensorboard", metavar="LOGDIR",
                   help="write per-epoch loss/accuracy/val_loss/val_accuracy/learning_rate and the graph to LOGDIR "
                        "(tensorboard --logdir LOGDIR)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="directory to write (model.ckpt*, frozen.pb, manifest.json; history.png with matplotlib); "
                        "appears only when complete")


def _split_args(p) -> None:
    _model_arg(p)
    p.add_argument("--cut", required=True, metavar="T[,..]", help="tensors where the graph is cut")
    p.add_argument("--outputs", required=True, metavar="T[,..]", help="the online piece's outputs")
    p.add_argument("--inputs", metavar="T[,..]", help="the offline piece's inputs (default: its placeholders)")
    _set_arg(p)
    p.add_argument("--verify", type=int, default=4, metavar="N",
                   help="check offline∘online against the original on N random inputs (0: skip; default: 4)")
    p.add_argument("--format", choices=["auto", "frozen", "savedmodel"], default="auto",
                   help="pieces as frozen .pb files, or SavedModel directories that keep their variables "
                        "(for models past 2 GB); auto: frozen when a piece fits (default: auto)")
    p.add_argument("--verify-data", metavar="FILE",
                   help="verify on real inputs: an HDF5 file with one dataset per input (named as the input op), "
                        "or a .npy array for a single input; its first N rows are used")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=d0,d1,..",
                   help="shape of an input for the random verification inputs, batch first, ? for any (repeatable)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="directory to write (offline.pb or offline/, online.pb or online/, manifest.json), "
                        "all or nothing")


def _precompute_args(p) -> None:
    _model_arg(p, "GRAPH", "a split directory, a frozen .pb, or any MODEL")
    _data_args(p, "--key", preprocess=True)
    p.add_argument("--ids", metavar="KEY", help="dataset key of row ids to copy alongside (default: no ids)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="rows per session run")
    p.add_argument("--inputs", metavar="T", help="input tensor (default: the graph's one input)")
    _set_arg(p)
    p.add_argument("--outputs", metavar="T[=NAME],..",
                   help="tensors to store, optionally renamed (default: the piece's outputs; one is stored as "
                        "`embeddings`)")
    p.add_argument("--out", required=True, metavar="FILE.h5",
                   help="HDF5 to write; an interrupted run resumes from FILE.h5.partial when run again")
    p.add_argument("--runner", choices=["local", "beam", "spark"], default="local",
                   help="local, or Apache Beam: shards + index in FILE.h5.shards/, merged into FILE.h5 "
                        "(needs pip install 'surgery[beam]'), or Apache Spark: a Parquet directory DIR.parquet "
                        "(FILE.h5.parquet/ beside an .h5), --data may be Parquet (needs pip install 'surgery[spark]') "
                        "(default: local)")
    p.add_argument("--beam-option", action="append", default=[], metavar="K=V",
                   help="Beam pipeline option, repeatable: runner=DataflowRunner, direct_num_workers=2, "
                        "direct_running_mode=multi_processing, project=..., temp_location=gs://... (default: none)")
    p.add_argument("--spark-master", metavar="URL", help="Spark master (default local[*]): local-cluster[2,1,1024], "
                   "spark://host:7077, yarn, k8s://https://host:443")
    p.add_argument("--spark-conf", action="append", default=[], metavar="K=V",
                   help="Spark setting, repeatable: spark.executor.memory=4g, spark.executor.instances=8 (default: none)")


def _export_args(p) -> None:
    _model_arg(p, "GRAPH", "a frozen .pb/.pbtxt, a directory with manifest.json (one file per piece), or with "
                           "--outputs any MODEL")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--saved-model", metavar="DIR",
                       help="SavedModel directory to write (a split gives DIR/offline and DIR/online)")
    where.add_argument("--tflite", metavar="PATH", help="LiteRT: a .tflite file, or a directory (one per piece + "
                       "manifest.json); verified in LiteRT (needs pip install 'surgery[tflite]')")
    where.add_argument("--onnx", metavar="PATH", help="onnxruntime: an .onnx file, or a directory (one per piece + "
                       "manifest.json); verified in onnxruntime (needs pip install 'surgery[onnx]')")
    p.add_argument("--outputs", metavar="T[,..]", help="from a MODEL: the tensors to export (--saved-model keeps "
                   "its variables as variables, no 2 GB limit; --tflite/--onnx freeze first)")
    p.add_argument("--inputs", metavar="T[,..]", help="from a MODEL: cut the graph here into placeholders")
    _set_arg(p)
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D,..",
                   help="pin an input's shape (? keeps a dimension dynamic), e.g. images=?,224,224,3")
    p.add_argument("--quantize", choices=["dynamic", "float16", "int8", "int16x8"],
                   help="dynamic: int8 weights; float16: float16 weights; int8: weights and activations, "
                        "calibrated on --calibration rows; int16x8: int8 weights, int16 activations, calibrated "
                        "(for classifiers whose close classes int8 ties)")
    p.add_argument("--calibration", action="append", default=[], metavar="SRC",
                   help="representative rows, .h5[:KEY] or .npy (repeatable, one per input); e.g. the HDF5 "
                        "`precompute` wrote for an online piece. Verification uses rows held out from them")
    p.add_argument("--per-tensor", action="store_true",
                   help="one scale per weight tensor instead of one per output channel: smaller files for small "
                        "layers, and what older accelerators (Edge TPU, NNAPI) accept")
    p.add_argument("--float-from", action="append", default=[], metavar="OP[,..]",
                   help="with --quantize int8: keep OP and every op after it in float, e.g. a classifier's "
                        "logits layer, so close classes are not tied on an int8 step")
    p.add_argument("--allow-select-tf-ops", action="store_true",
                   help="--tflite: keep ops LiteRT lacks as TensorFlow ops (the app links the Flex delegate)")
    p.add_argument("--max-error", type=float, metavar="F",
                   help="fail past this difference, relative to each output's scale (default 1e-4 unquantized; "
                        "quantized files are only reported)")
    p.add_argument("--verify", type=int, default=100, metavar="N", help="rows to verify on (0: skip)")


def _audit_args(p) -> None:
    _model_arg(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="surgery", description="Transfer-learning graph surgery for TensorFlow graphs.",
                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[_common(False)])
    parser.add_argument("--version", action="version", version=f"surgery {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    common = _common(True)
    for name, func, add_args, help_text, example in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog="example:\n  " + example,
                           formatter_class=_Formatter, parents=[common])
        p.set_defaults(func=func)
        add_args(p)
    return parser


def _check_command(argv) -> str | None:
    """A mistyped command, answered with the closest one (argparse only lists them all)."""
    commands = ("inspect", "freeze", "restore", "finetune", "split", "precompute", "export", "audit")
    for token in argv:
        if token.startswith("-"):
            continue
        if token in commands:
            return None
        close = difflib.get_close_matches(token, commands, n=1, cutoff=0.5)
        return f"unknown command {token!r}" + (f"; did you mean {close[0]}?" if close else
                                               f"; the commands are {', '.join(commands)}")
    return None


# ---------------------------------------------------------------- command handlers
# Each handler returns (exit code, JSON document); `main` prints the document under --json.
# Human output goes through `say` (stdout, or stderr when stdout carries data), silenced by -q/--json.

def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _sayer(args, stream=None):
    def say(text: str = "") -> None:
        if not args.json and not args.quiet:
            print(text, file=stream or sys.stdout, flush=True)
    return say


def _progress(args) -> bool:
    return not args.quiet


def _options(args):
    """How to load MODEL, from the model flags every command shares."""
    from .core.model import LoadOptions

    return LoadOptions(args.tag_set, args.signature, args.trust_code)


def _opened(args):
    """MODEL/GRAPH as `open_pieces` sees it: a folder of pieces, or one model."""
    from .core.pieces import open_pieces

    return open_pieces(args.model, _options(args))


def _cmd_inspect(args):
    import shutil

    from .passes.inspect import format_report, inspect_model, write_tensorboard

    opened = _opened(args)
    if opened.is_split:  # a split directory: one report per piece
        models = {name: piece.load() for name, piece in opened.pieces.items()}
    else:
        models = {"": opened.model()}
    reports = {name: inspect_model(m, tensors=args.tensors) for name, m in models.items()}
    if args.stdin:
        reports[""]["path"] = "-"
    if args.tensorboard:
        for name, m in models.items():
            write_tensorboard(m, os.path.join(args.tensorboard, name) if name else args.tensorboard)
    doc = reports[""] if "" in reports else {"format": "pieces", "path": args.model, "pieces": reports}
    if args.tensorboard:
        doc = {**doc, "tensorboard": args.tensorboard}
    if not args.json:  # the report is the product: printed even with -q
        print("\n\n".join((f"── piece '{name}'\n" if name else "") + format_report(r, description=models[name].description)
                          for name, r in reports.items()))
        if args.tensorboard and not args.quiet:
            hint = "" if shutil.which("tensorboard") else "  (tensorboard is not installed: pip install 'surgery[viz]')"
            print(f"\ngraph written for TensorBoard: tensorboard --logdir {args.tensorboard}{hint}")
    return 0, doc


def _cmd_freeze(args):
    from .core.graph import stream_graph_def, write_graph_def
    from .passes.bind import bind
    from .passes.freeze import freeze_model

    to_stdout = args.out == "-"
    say = _sayer(args, sys.stderr if to_stdout else None)
    model = bind(_options(args).load(args.model),
                 args.set)
    frozen = freeze_model(model, args.outputs, inputs=args.inputs or (), optimize=args.optimize)
    text = True if args.text else None  # None: decided by the name (.pbtxt is text)
    if to_stdout:
        size = stream_graph_def(frozen, sys.stdout.buffer, text=bool(args.text))
        sys.stdout.buffer.flush()
    else:
        size = write_graph_def(frozen, args.out, text=text, progress=_progress(args))
    say(f"froze {frozen.num_nodes} nodes ({size / 2**20:.1f} MiB) → {'stdout' if to_stdout else args.out}"
        + ("  [optimized]" if args.optimize else ""))
    say("  feed:  " + (", ".join(t.name for t in frozen.inputs) or "(nothing)"))
    say("  fetch: " + ", ".join(t.name for t in frozen.outputs))
    for note in frozen.notes:  # not silenced by -q/--json: the answer may differ from the original's
        print(f"surgery: note: {note}", file=sys.stderr)
    return 0, {"written": args.out, "bytes": size, "num_nodes": frozen.num_nodes, "optimized": args.optimize,
               "text": bool(args.text or args.out.endswith(".pbtxt")), "inputs": [t.as_dict() for t in frozen.inputs],
               "outputs": [t.as_dict() for t in frozen.outputs], "stripped_stateful": frozen.stripped_stateful, "notes": frozen.notes}


def _cmd_restore(args):
    from .passes.restore import format_report, plan_restore, restore_model

    model = _options(args).load(args.model)
    plan = plan_restore(model, args.source, maps=args.map, include=args.include, exclude=args.exclude,
                        allow_missing=args.allow_missing)
    report = restore_model(model, plan, args.out, progress=_progress(args) and not args.json and sys.stderr.isatty())
    _sayer(args)(format_report(report))
    return 0, {"written": args.out, **report}


def _cmd_finetune(args):
    from .passes.bind import bind
    from .runners.finetune import finetune

    say = _sayer(args)
    model = bind(_options(args).load(args.model),
                 args.set)
    history = []

    def on_epoch(r):
        if not history and r["epoch"] > 1:
            say(f"(resumed an interrupted run after epoch {r['epoch'] - 1})")
        history.append(r)
        val = "" if r["val_accuracy"] is None else f"  val accuracy {r['val_accuracy']:.1%}"
        say(f"epoch {r['epoch']}/{args.epochs}: loss {r['loss']:.4f}  train accuracy {r['accuracy']:.1%}"
            f"{val}  ({r['seconds']:.1f}s)")

    result = finetune(model, at=args.at, head=args.head, data=args.data, x_key=args.x, y_key=args.y, out=args.out,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                      train_scopes=args.train_scopes, val_split=args.val_split,
                      cache_bottlenecks=args.cache_bottlenecks, seed=args.seed, preprocess=args.preprocess,
                      tensorboard=args.tensorboard, progress=_progress(args), on_epoch=on_epoch)
    names = result.names
    if result.val_accuracy is not None:
        say(f"held-out accuracy ({result.num_val} rows): {result.initial_val_accuracy:.1%} before → "
            f"{result.val_accuracy:.1%} after")
    out = args.out.rstrip("/") or "/"
    say(f"trained {len(result.trainable)} variables: " + ", ".join(result.trainable))
    if result.fixed:
        say(f"kept fixed {len(result.fixed)} non-trainable variables --train-scopes matched (statistics): "
            + ", ".join(result.fixed))
    say(f"wrote {out}/: model.ckpt (+ .meta), frozen.pb, saved_model/, manifest.json")
    say(f"  feed:  {names['input']} (or cached values at {names['bottleneck']})")
    say(f"  fetch: {names['probabilities']}, {names['logits']}")
    return 0, {"written": out, "names": names, "trainable": result.trainable, "fixed": result.fixed,
               "history": result.history,
               "initial_val_accuracy": result.initial_val_accuracy, "val_accuracy": result.val_accuracy,
               "num_train": result.num_train, "num_val": result.num_val,
               "resumed_from_epoch": result.resumed_from_epoch, "manifest": result.manifest}


VERIFIED_AGAINST = {"graph": "the original graph", "checkpoint": "the original graph with its checkpoint",
                    "frozen": "the original model frozen whole"}


def _cmd_split(args):
    from .core.errors import SurgeryError
    from .core.graph import shape_str
    from .core.pieces import TensorSpec
    from .exporters.runtimes import parse_input_shapes
    from .passes.bind import bind
    from .passes.split import split_model, write_split

    if args.verify < 0:
        raise SurgeryError(f"--verify {args.verify} is negative", "give a number of random inputs, or 0 to skip")
    say = _sayer(args)
    model = bind(_options(args).load(args.model),
                 args.set)
    split = split_model(model, args.cut, args.outputs, inputs=args.inputs or None, format=args.format)
    manifest = write_split(model, split, args.out, verify=args.verify, progress=_progress(args) and not args.json,
                           verify_data=args.verify_data, input_shapes=parse_input_shapes(args.input_shape),
                           options=_options(args))
    out = args.out.rstrip("/") or "/"

    def names(specs):
        return ", ".join(f"{s.name} {s.dtype} {shape_str(s.shape)}" for s in specs) or "(nothing)"

    say(f"split {args.model} → {out}/")
    files = {name: manifest["pieces"][name]["graph"] + ("/" if info["format"] == "savedmodel" else "")
             for name, info in manifest["pieces"].items()}
    say(f"  {files['offline']:<11} {split.offline.num_nodes:>5} nodes   feed {names(split.offline_inputs)}")
    say(f"                           fetch {names(split.offline.outputs)}")
    say(f"  {files['online']:<11} {split.online.num_nodes:>5} nodes   feed "
        + names([TensorSpec(c["placeholder"], c["dtype"], c["shape"]) for c in split.cut]) + " (cut)")
    if split.live_inputs:
        say(f"                           feed {names(split.live_inputs)} (live)")
    say(f"                           fetch {names(split.online.outputs)}")
    for piece_name, defaults in split.defaults.items():
        for d in defaults:
            say(f"  note: {piece_name} keeps {d.name} (PlaceholderWithDefault) at its default unless fed")
    v = manifest["verification"]
    if v.get("skipped"):
        say("  verification skipped (--verify 0)")
    else:
        against = VERIFIED_AGAINST.get(v["reference"], f"the original ({v['reference']})")
        say(f"  verified on {v['n']} {v.get('data', 'random')} inputs against {against}: "
            f"max |difference| {v['max_abs_diff']:.3g} (tolerance {v['tolerance']:.3g})")
    return 0, {"written": out, **manifest}


def _cmd_precompute(args):
    if args.runner == "beam":
        return _precompute_on_beam(args)
    if args.runner == "spark":
        return _precompute_on_spark(args)
    import numpy as np

    from .runners.precompute import precompute

    say = _sayer(args)
    result = precompute(_opened(args), args.data, args.key, args.out, ids=args.ids, batch_size=args.batch_size,
                        inputs=args.inputs, outputs=args.outputs, preprocess=args.preprocess,
                        progress=_progress(args), set=args.set)
    doc = {"written": args.out, "status": result.status, "rows": result.rows, "resumed_from": result.resumed_from,
           "computed": result.computed, "datasets": result.datasets, "ids": args.ids}
    if result.status == "up to date":
        say(f"{args.out} is up to date ({result.rows} rows, same graph and data); nothing to do")
        return 0, doc
    if result.resumed_from:
        say(f"resumed at row {result.resumed_from} of {result.rows}; computed {result.computed} rows")
    else:
        say(f"computed {result.computed} rows")
    for name, spec in result.datasets.items():
        shape = ", ".join(str(d) for d in [result.rows, *spec["shape"]])
        say(f"  {name:<12} [{shape}] {np.dtype(spec['dtype']).name}  ← {spec['tensor']}")
    if args.ids:
        say(f"  {'ids':<12} ← {args.ids}")
    say(f"→ {args.out}")
    return 0, doc


def _precompute_on_beam(args):
    """`precompute --runner beam`: shards + index in OUT.shards/, merged into OUT (see surgery/runners/beam.py)."""
    from .runners.beam import merge_shards, require_beam, run_precompute, source_for

    require_beam()
    if args.set:
        from .core.errors import SurgeryError

        raise SurgeryError("--set with --runner beam: Beam's workers load the piece from its file",
                           "bind the placeholders when you split or freeze (`surgery split … --set T=V`), "
                           "then precompute that piece")
    say = _sayer(args)
    source = source_for(args.data, args.key, args.ids, preprocess=args.preprocess)
    shard_dir = args.out + ".shards"
    index = run_precompute(args.model, source, shard_dir, inputs=args.inputs, outputs=args.outputs,
                           batch_size=args.batch_size, beam_options=args.beam_option)
    merge_shards(index, args.out)
    say(f"precomputed {source.num_rows} rows on Beam → {args.out}")
    say(f"  shards and index: {index}")
    return 0, {"written": args.out, "rows": source.num_rows, "index": index, "runner": "beam"}


def _precompute_on_spark(args):
    """`precompute --runner spark`: a Parquet directory (+ the merged HDF5 for an .h5 --out); see surgery/runners/spark.py."""
    from .runners.spark import run_precompute

    result = run_precompute(_opened(args), args.data, args.key, args.out, ids=args.ids, batch_size=args.batch_size,
                            inputs=args.inputs, outputs=args.outputs, master=args.spark_master,
                            conf=args.spark_conf, progress=_progress(args) and not args.json,
                            preprocess=args.preprocess, set=args.set)
    say = _sayer(args)
    say(f"precomputed {result.rows} rows on Spark ({result.partitions} partitions) → {result.out}")
    if result.h5:
        say(f"  merged: {result.h5}")
    return 0, {"written": result.out, "merged": result.h5, "rows": result.rows, "partitions": result.partitions,
               "runner": "spark"}


def _cmd_export(args):
    if args.tflite or args.onnx:
        return _export_runtime(args)
    from .core.errors import SurgeryError
    from .exporters.export import export

    if (args.quantize or args.calibration or args.input_shape or args.allow_select_tf_ops or args.per_tensor
            or args.float_from):
        raise SurgeryError("--input-shape/--quantize/--calibration/--per-tensor/--float-from/--allow-select-tf-ops "
                           "go with --tflite or --onnx",
                           "drop them for --saved-model")
    if args.inputs and not args.outputs:
        raise SurgeryError("--inputs needs --outputs", "name the tensors to export with --outputs T[,..]")
    say = _sayer(args)
    written = export(_opened(args), args.saved_model, outputs=args.outputs, inputs=args.inputs, set=args.set,
                     progress=_progress(args) and not args.json)
    pieces = {}
    for piece, keys in written.items():
        where = os.path.join(args.saved_model, piece) if piece else args.saved_model
        pieces[piece or "model"] = {"written": where, "signature": "serving_default", **keys}
        say(f"exported {where}  (signature serving_default)")
        say("  inputs:  " + (", ".join(f"{k} ← {n}" for k, n in keys["inputs"].items()) or "(none)"))
        say("  outputs: " + ", ".join(f"{k} ← {n}" for k, n in keys["outputs"].items()))
    return 0, {"written": args.saved_model, "pieces": pieces}


def _export_runtime(args):
    """`export --tflite/--onnx`: convert each piece, verify it in its runtime, print sizes and differences."""
    from .core.graph import shape_str
    from .exporters.runtimes import TOP1_HINT_BELOW, export_runtime
    from .passes.inspect import human_bytes

    say = _sayer(args)
    fmt, path = ("tflite", args.tflite) if args.tflite else ("onnx", args.onnx)
    manifest = export_runtime(_opened(args), path, fmt, outputs=args.outputs, inputs=args.inputs,
                              input_shapes=args.input_shape, quantize=args.quantize, calibration=args.calibration,
                              allow_select_tf_ops=args.allow_select_tf_ops, max_error=args.max_error,
                              verify=args.verify, per_tensor=args.per_tensor, float_from=args.float_from,
                              set=args.set, progress=_progress(args) and not args.json)
    for name, piece in manifest["pieces"].items():
        where = path if path.endswith("." + fmt) else os.path.join(path, piece["graph"])
        mode = piece["quantize"] or "float"
        if piece.get("weight_scales"):
            mode += f", weights scaled {piece['weight_scales']}"
        if piece.get("float_ops"):
            mode += f", {len(piece['float_ops'])} ops kept in float"
        say(f"exported {where}  ({human_bytes(piece['bytes'])}, {mode}; "
            f"the frozen graph is {human_bytes(piece['graph_def_bytes'])})")
        say("  inputs:  " + (", ".join(f"{t['name']} {t['dtype']} {shape_str(t['shape'])}" for t in piece["inputs"])
                             or "(none)"))
        say("  outputs: " + ", ".join(f"{t['name']} {t['dtype']} {shape_str(t['shape'])}" for t in piece["outputs"]))
        v = piece["verification"]
        if "skipped" in v:
            say(f"  not verified: {v['skipped']}")
        else:
            top1 = "" if v["top1_agreement"] is None else f", top-1 agreement {v['top1_agreement']:.1%}"
            tol = "reported only" if v["tolerance"] is None else f"tolerance {v['tolerance']:g}"
            say(f"  verified in {v['runtime']} on {v['n']} {v['data']} rows: max |difference| "
                f"{v['max_abs_diff']:.3g} ({v['max_rel_diff']:.3g} of the output's scale; {tol}){top1}")
            if v.get("hint"):
                say(f"  under {TOP1_HINT_BELOW:.0%}: if close classes tie on int8 steps, keep the logits layer in "
                    f"float with {v['hint']}")
        if piece.get("select_tf_ops"):
            say(f"  keeps Select TF ops: {', '.join(piece['select_tf_ops'])} (link LiteRT's Flex delegate)")
    return 0, {"written": path, **manifest}


def _cmd_audit(args):
    from .passes.audit import audit_path, format_audit

    reports = audit_path(args.model, _options(args))
    if not args.json:
        print("\n".join(format_audit(r) for r in reports))
    clean = all(r["clean"] for r in reports)
    return (0 if clean else 3), (reports[0] if len(reports) == 1 else {"clean": clean, "pieces": reports})


def _refuse_flagged(args) -> None:
    """--strict: audit MODEL before any command touches it."""
    from .core.errors import SurgeryError
    from .passes.audit import audit_path, strict_violations

    bad = [f for r in audit_path(args.model, _options(args)) for f in strict_violations(r)]
    if bad:
        listed = ", ".join(f"{f['name']} ({f['op']})" for f in bad[:3]) + (" …" if len(bad) > 3 else "")
        raise SurgeryError(f"--strict: {args.model} has {len(bad)} op(s) that touch files, the network or "
                           f"Python: {listed}", "run `surgery audit` on it, or drop --strict if you trust it")


def _quiet_tensorflow(verbose: bool) -> None:
    """Silence TensorFlow's C++ and Python chatter unless --verbose (must run before import)."""
    import logging

    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
        import warnings

        warnings.filterwarnings("ignore")
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        logging.getLogger("surgery").setLevel(logging.ERROR)
    else:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        logger = logging.getLogger("surgery")
        if not logger.handlers:  # our own: absl's root handler drops INFO
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s: %(message)s"))
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _check_specs(args) -> None:
    """Usage errors that need no model are said before any model loads (a large Keras file takes
    seconds): a malformed --set, --head or --input-shape."""
    if getattr(args, "set", None):
        from .passes.bind import parse_sets

        args.set = parse_sets(args.set)
    if getattr(args, "head", None):
        from .passes.splice import parse_head

        parse_head(args.head)
    if getattr(args, "input_shape", None):
        from .exporters.runtimes import parse_input_shapes

        parse_input_shapes(args.input_shape)


def _stdin_model(tmpdir: str) -> str:
    """MODEL `-`: the GraphDef on stdin (binary, or text when it reads as text) saved to a file."""
    from .core.errors import ModelLoadError

    data = sys.stdin.buffer.read()
    if not data:
        raise ModelLoadError("MODEL is - but stdin is empty", "pipe a GraphDef in, e.g. `cat model.pb | surgery …`")
    try:  # a binary GraphDef starts with a field tag byte and holds float bytes: never UTF-8 text
        is_text = data.decode("utf-8").lstrip()[:1].isalpha()
    except UnicodeDecodeError:
        is_text = False
    path = os.path.join(tmpdir, "stdin.pbtxt" if is_text else "stdin.pb")
    with open(path, "wb") as f:
        f.write(data)
    return path


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    problem = _check_command(argv)
    if problem:
        parser.error(problem)
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet contradict each other; give one")
    if args.command == "freeze" and args.out == "-" and args.json:
        parser.error("--out - writes the graph to stdout, so --json cannot; write to a file, or drop --json")
    _quiet_tensorflow(args.verbose)
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    elif not sys.stderr.isatty():  # a log file, not a terminal: a progress line every 10 s at most
        os.environ.setdefault("TQDM_MININTERVAL", "10")
    import tempfile

    from .core.errors import SurgeryError

    try:
        with tempfile.TemporaryDirectory(prefix="surgery-stdin.") as tmpdir:
            args.stdin = getattr(args, "model", None) == "-"
            if args.stdin:
                args.model = _stdin_model(tmpdir)
            _check_specs(args)
            if getattr(args, "strict", False) and args.command != "audit":
                _refuse_flagged(args)
            code, doc = args.func(args)
            if args.json:
                _print_json(doc)
            return code
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


# (command, what runs it, its arguments, help, examples), in the order `surgery --help` lists them
COMMANDS = [
    ("inspect", _cmd_inspect, _inspect_args, "report format, nodes, op histogram, inputs, outputs, variables and parameters",
            "surgery inspect data/models/vgg --tensors 'fc[67]'"),
    ("freeze", _cmd_freeze, _freeze_args, "variables → constants, pruned to the outputs, training nodes stripped",
            "surgery freeze data/models/vgg --outputs predictions --out vgg.pb\n"
            "  surgery freeze data/models/vgg --inputs fc7 --outputs predictions --optimize --out head.pb\n"
            "  surgery freeze vgg.pb --outputs fc7 --out trunk.pbtxt   # re-prune a frozen graph, as text\n"
            "  cat vgg.pb | surgery freeze - --outputs fc7 --out - > trunk.pb"),
    ("restore", _cmd_restore, _restore_args, "fill MODEL's variables from a checkpoint or HDF5 weights file, scopes remapped",
            "surgery restore net.meta --from vgg_16.ckpt --map vgg_16/=net/vgg_16/ --exclude fc8 --out net.ckpt"),
    ("finetune", _cmd_finetune, _finetune_args, "splice a head above a tensor behind stop_gradient and train it",
            "surgery finetune data/models/vgg --at fc7 --head dense:5 --data data/shapes.h5 "
            "--x target/x --y target/y --out runs/ft"),
    ("split", _cmd_split, _split_args, "cut a graph into an offline piece and an online piece fed by placeholders",
            "surgery split data/models/vgg --cut fc7 --outputs predictions --out pieces"),
    ("precompute", _cmd_precompute, _precompute_args, "run an offline piece over a dataset in batches into HDF5 (resumable)",
            "surgery precompute pieces --data data/shapes.h5 --key target/x --ids target/ids --out fc7.h5\n"
            "  surgery precompute data/models/vgg --outputs fc7=fc7,fc6 --data data/shapes.h5 --key target/x "
            "--out fc.h5"),
    ("export", _cmd_export, _export_args, "write frozen pieces as SavedModels, .tflite or .onnx files, each verified",
            "surgery export pieces --saved-model serving   # serving/offline, serving/online\n"
            "  surgery export head.pb --saved-model serving/head\n"
            "  surgery export pieces --tflite mobile/   # mobile/offline.tflite, mobile/online.tflite\n"
            "  surgery export pieces/online.pb --tflite head.tflite --quantize int8 --calibration fc7.h5 \\\n"
            "      --float-from head/logits --per-tensor   # int8, with the logits layer in float\n\n"
            "signature keys are the tensor names with '/' and ':' made '_' (item_tower/embedding:0 → "
            "item_tower_embedding)"),
    ("audit", _cmd_audit, _audit_args, "list ops that touch files, the network or Python (exit 3 when flagged)",
            "surgery audit downloaded.pb"),
]
