"""The `surgery` command line: parses, calls the library, prints. Nothing else lives here.

Exit codes: 0 ok, 2 bad input or usage (one plain line on stderr), 1 internal error,
3 `audit` found flagged ops.

Start-up is fast on purpose: this module imports only the standard library, and each command
imports TensorFlow (through the library) when it runs, so `--help`, `--version` and usage errors
answer at once.

One module per command (`add_arguments`, `run`, `HELP`, `EXAMPLE`); the argument groups they
share live in `common`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys

from . import audit, cuts, export, finetune, freeze, inspect, precompute, restore, split
from .audit import refuse_flagged
from .common import Formatter, LogLines, Parser, common_flags
from .split import VERIFIED_AGAINST  # noqa: F401  (tests read it here)

# in the order `surgery --help` lists them
COMMANDS = {"inspect": inspect, "freeze": freeze, "restore": restore, "finetune": finetune, "split": split,
            "precompute": precompute, "export": export, "cuts": cuts, "audit": audit}

EXAMPLES = """\
examples:
  surgery inspect data/models/vgg
  surgery inspect model.pb --json --tensors 'fc7'
  surgery freeze data/models/vgg --outputs predictions --out vgg.pb
  surgery freeze data/models/vgg --inputs fc7 --outputs predictions --optimize --out head.pb
  surgery restore net.meta --from vgg_16.ckpt --map vgg_16/=net/vgg_16/ --exclude fc8 --out net.ckpt
  surgery finetune data/models/vgg --at fc7 --head dense:5 --data data/shapes.h5 \\
      --x target/x --y target/y --out runs/ft
  surgery cuts data/models/vgg --outputs predictions    # where to cut, and what each side costs
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

        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with open(os.path.join(here, "pyproject.toml"), "rb") as f:
            return tomllib.load(f)["project"]["version"]
    except Exception:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="surgery", description="Transfer-learning graph surgery for TensorFlow graphs.",
                    epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common_flags(False)])
    parser.add_argument("--version", action="version", version=f"surgery {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    common = common_flags(True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.HELP, description=command.HELP, epilog="example:\n  " + command.EXAMPLE,
                           formatter_class=Formatter, parents=[common])
        p.set_defaults(func=command.run)
        command.add_arguments(p)
    return parser


def _check_command(argv) -> str | None:
    """A mistyped command, answered with the closest one (argparse only lists them all)."""
    commands = tuple(COMMANDS)
    for token in argv:
        if token.startswith("-"):
            continue
        if token in commands:
            return None
        close = difflib.get_close_matches(token, commands, n=1, cutoff=0.5)
        return f"unknown command {token!r}" + (f"; did you mean {close[0]}?" if close else
                                               f"; the commands are {', '.join(commands)}")
    return None


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


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
        from ..passes.bind import parse_sets

        args.set = parse_sets(args.set)
    if getattr(args, "head", None):
        from ..passes.splice import parse_head

        parse_head(args.head)
    if getattr(args, "input_shape", None):
        from ..exporters.runtimes import parse_input_shapes

        parse_input_shapes(args.input_shape)


def _stdin_model(tmpdir: str) -> str:
    """MODEL `-`: the GraphDef on stdin (binary, or text when it reads as text) saved to a file."""
    from ..core.errors import ModelLoadError

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


def _log_lines(args):
    """Progress bars one line per redraw when stderr is a log file (`common.LogLines`)."""
    import contextlib

    if args.quiet or sys.stderr.isatty():
        return contextlib.nullcontext()
    return contextlib.redirect_stderr(LogLines(sys.stderr))


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

    from ..core.errors import SurgeryError

    try:
        with tempfile.TemporaryDirectory(prefix="surgery-stdin.") as tmpdir, _log_lines(args):
            args.stdin = getattr(args, "model", None) == "-"
            if args.stdin:
                args.model = _stdin_model(tmpdir)
            _check_specs(args)
            if getattr(args, "strict", False) and args.command != "audit":
                refuse_flagged(args)
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
