"""What every command shares: the argument groups (the model flags, the rows a command reads,
`--set`), the parser's error style, how MODEL is opened, and how a command speaks (`sayer`).

Imports only the standard library at module level: `--help` answers without TensorFlow.
"""

from __future__ import annotations

import argparse
import difflib
import sys


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Raw epilogs, and `(default: X)` after every option that has a default worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" not in text and "default" not in text and action.option_strings
                and default not in (None, False, [], argparse.SUPPRESS) and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
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


def common_flags(subcommand: bool) -> argparse.ArgumentParser:
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


def model_arg(p, name="MODEL", help_text="checkpoint prefix, .meta, checkpoint dir, .pb/.pbtxt, SavedModel dir, "
                                            "Keras file, or - for a GraphDef on stdin"):
    p.add_argument("model", metavar=name, help=help_text)
    p.add_argument("--tag-set", default="serve", help="SavedModel tag set (default: serve)")
    p.add_argument("--signature", metavar="NAME",
                   help="SavedModel signature to use (default: serving_default, else the only one)")
    p.add_argument("--trust-code", action="store_true",
                   help="load a Keras file even if that runs code stored in it (Lambda layers, custom classes)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a graph with ops that touch files, the network or Python (see `surgery audit`)")


def set_arg(p) -> None:
    p.add_argument("--set", action="append", default=[], metavar="T=VALUE",
                   help="bind a placeholder to a constant (repeatable): --set is_training=false, --set keep_prob=1.0; "
                        "it is no longer an input, and conditionals on it keep only the branch taken")


def data_args(p, key_flag: str, *, preprocess: bool = False) -> None:
    """The rows a command reads: --data, the key that picks them (--x or --key), and --preprocess."""
    p.add_argument("--data", required=True, metavar="SRC",
                   help="input rows: HDF5, .npy, TFRecord files (path or glob), Parquet (file or directory) "
                        "or an image folder (one sub-directory per class)")
    p.add_argument(key_flag, metavar="KEY", help="HDF5 dataset / TFRecord feature / Parquet column(s) A or A,B,.. "
                   "of the inputs (default: none; not needed for .npy or an image folder)")
    if preprocess:
        preprocess_arg(p)


def preprocess_arg(p) -> None:
    p.add_argument("--preprocess", choices=["none", "vgg", "inception", "unit"],
                   help="scale the inputs: vgg subtracts ImageNet means, inception to [-1,1], unit to [0,1] "
                        "(default: none)")


def sayer(args, stream=None):
    def say(text: str = "") -> None:
        if not args.json and not args.quiet:
            print(text, file=stream or sys.stdout, flush=True)
    return say


def progress(args) -> bool:
    return not args.quiet


def load_options(args):
    """How to load MODEL, from the model flags every command shares."""
    from ..core.model import LoadOptions

    return LoadOptions(args.tag_set, args.signature, args.trust_code)


def open_model(args):
    """MODEL/GRAPH as `open_pieces` sees it: a folder of pieces, or one model."""
    from ..core.pieces import open_pieces

    return open_pieces(args.model, load_options(args))


class LogLines:
    """stderr when it is a log file, not a terminal: each progress-bar redraw (tqdm writes `\\r` and
    the bar) becomes a line of its own, so the bars of a `make demo` log do not run together."""

    def __init__(self, stream):
        self.stream, self._ended = stream, False

    def write(self, text: str) -> int:
        if text.startswith("\r"):  # a redraw: its own line, trailing padding dropped, blank ones skipped
            line = text[1:].rstrip()
            if line:
                self.stream.write(line + "\n")
                self._ended = True
            return len(text)
        if text == "\n" and self._ended:  # the bar's own line end, already written
            self._ended = False
            return len(text)
        self._ended = False
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self.stream, name)
