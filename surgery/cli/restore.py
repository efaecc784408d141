"""`surgery restore`: fill MODEL's variables from a checkpoint or HDF5 weights file."""

from __future__ import annotations

import sys

from .common import load_options, model_arg, progress, sayer

HELP = "fill MODEL's variables from a checkpoint or HDF5 weights file, scopes remapped"
EXAMPLE = "surgery restore net.meta --from vgg_16.ckpt --map vgg_16/=net/vgg_16/ --exclude fc8 --out net.ckpt"


def add_arguments(p) -> None:
    model_arg(p)
    p.add_argument("--from", dest="source", required=True, metavar="SOURCE", help="checkpoint or HDF5 weights file")
    p.add_argument("--map", action="append", default=[], metavar="OLD=NEW",
                   help="rewrite source scope OLD as target scope NEW (repeatable; default: names as they are)")
    p.add_argument("--include", action="append", default=[], metavar="RE",
                   help="restore only variables matching RE (repeatable; default: all)")
    p.add_argument("--exclude", action="append", default=[], metavar="RE",
                   help="skip variables matching RE (repeatable; default: none)")
    p.add_argument("--allow-missing", action="store_true", help="keep initial values for variables with no source")
    p.add_argument("--out", required=True, metavar="PREFIX", help="checkpoint prefix to write (+ .meta)")


def run(args):
    from ..passes.restore import format_report, plan_restore, restore_model

    model = load_options(args).load(args.model)
    plan = plan_restore(model, args.source, maps=args.map, include=args.include, exclude=args.exclude,
                        allow_missing=args.allow_missing)
    report = restore_model(model, plan, args.out, progress=progress(args) and not args.json and sys.stderr.isatty())
    sayer(args)(format_report(report))
    return 0, {"written": args.out, **report}
