"""`surgery inspect`: the report of a MODEL, or of each piece of a folder of pieces."""

from __future__ import annotations

import os

from .common import model_arg, open_model

HELP = "report format, nodes, op histogram, inputs, outputs, variables and parameters"
EXAMPLE = "surgery inspect data/models/vgg --tensors 'fc[67]'"


def add_arguments(p) -> None:
    model_arg(p)
    p.add_argument("--tensors", metavar="REGEX", help="also list tensors whose names match REGEX")
    p.add_argument("--tensorboard", metavar="LOGDIR",
                   help="also write the graph to LOGDIR for `tensorboard --logdir LOGDIR` (Graphs tab; "
                        "pip install 'surgery[viz]')")


def run(args):
    import shutil

    from ..passes.inspect import format_report, inspect_model, write_tensorboard

    opened = open_model(args)
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
