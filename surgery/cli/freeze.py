"""`surgery freeze`: variables → constants, pruned to the outputs, written as one GraphDef."""

from __future__ import annotations

import sys

from .common import load_options, model_arg, progress, sayer, set_arg

HELP = "variables → constants, pruned to the outputs, training nodes stripped"
EXAMPLE = ("surgery freeze data/models/vgg --outputs predictions --out vgg.pb\n"
           "  surgery freeze data/models/vgg --inputs fc7 --outputs predictions --optimize --out head.pb\n"
           "  surgery freeze vgg.pb --outputs fc7 --out trunk.pbtxt   # re-prune a frozen graph, as text\n"
           "  cat vgg.pb | surgery freeze - --outputs fc7 --out - > trunk.pb")


def add_arguments(p) -> None:
    model_arg(p)
    p.add_argument("--outputs", required=True, metavar="T[,..]", help="tensors to keep")
    p.add_argument("--inputs", metavar="T[,..]",
                   help="cut the graph here: these tensors become placeholders (default: the graph's own inputs)")
    set_arg(p)
    p.add_argument("--optimize", action="store_true", help="for inference: fix boolean training switches to their "
                   "default, fold constants and batch norms into convolutions, drop identities")
    p.add_argument("--text", action="store_true", help="write a text GraphDef (implied by an --out ending in .pbtxt)")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the GraphDef; - for stdout")


def run(args):
    from ..core.graph import stream_graph_def, write_graph_def
    from ..passes.bind import bind
    from ..passes.freeze import freeze_model
    from ..passes.inspect import human_bytes

    to_stdout = args.out == "-"
    say = sayer(args, sys.stderr if to_stdout else None)
    model = bind(load_options(args).load(args.model),
                 args.set)
    frozen = freeze_model(model, args.outputs, inputs=args.inputs or (), optimize=args.optimize)
    text = True if args.text else None  # None: decided by the name (.pbtxt is text)
    if to_stdout:
        size = stream_graph_def(frozen, sys.stdout.buffer, text=bool(args.text))
        sys.stdout.buffer.flush()
    else:
        size = write_graph_def(frozen, args.out, text=text, progress=progress(args))
    say(f"froze {frozen.num_nodes} nodes ({human_bytes(size)}) → {'stdout' if to_stdout else args.out}"
        + ("  [optimized]" if args.optimize else ""))
    say("  feed:  " + (", ".join(t.name for t in frozen.inputs) or "(nothing)"))
    say("  fetch: " + ", ".join(t.name for t in frozen.outputs))
    for note in frozen.notes:  # not silenced by -q/--json: the answer may differ from the original's
        print(f"surgery: note: {note}", file=sys.stderr)
    return 0, {"written": args.out, "bytes": size, "num_nodes": frozen.num_nodes, "optimized": args.optimize,
               "text": bool(args.text or args.out.endswith(".pbtxt")), "inputs": [t.as_dict() for t in frozen.inputs],
               "outputs": [t.as_dict() for t in frozen.outputs], "stripped_stateful": frozen.stripped_stateful, "notes": frozen.notes}
