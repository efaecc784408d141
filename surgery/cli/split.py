"""`surgery split`: an offline piece and an online piece, verified and written together."""

from __future__ import annotations

from .common import load_options, model_arg, progress, sayer, set_arg

HELP = "cut a graph into an offline piece and an online piece fed by placeholders"
EXAMPLE = "surgery split data/models/vgg --cut fc7 --outputs predictions --out pieces"


def add_arguments(p) -> None:
    model_arg(p)
    p.add_argument("--cut", required=True, metavar="T[,..]", help="tensors where the graph is cut")
    p.add_argument("--outputs", required=True, metavar="T[,..]", help="the online piece's outputs")
    p.add_argument("--inputs", metavar="T[,..]", help="the offline piece's inputs (default: its placeholders)")
    set_arg(p)
    p.add_argument("--verify", type=int, default=4, metavar="N",
                   help="check offline∘online against the original on N random inputs (0: skip; default: 4)")
    p.add_argument("--cut-dtype", choices=["float32", "float16", "int8"], default="float32",
                   help="the dtype the cut crosses in: the offline piece ends with the cast or quantize, the online "
                        "piece starts with the dequantize, precompute stores it (default: float32)")
    p.add_argument("--calibration", action="append", default=[], metavar="SRC",
                   help="for --cut-dtype int8: FILE.h5[:KEY] or FILE.npy holding inputs of the offline piece, "
                        "whose cut values set each channel's range (repeatable, one per input)")
    p.add_argument("--format", choices=["auto", "frozen", "savedmodel"], default="auto",
                   help="pieces as frozen .pb files, or SavedModel directories that keep their variables "
                        "(for models past 2 GB); auto: frozen when a piece fits (default: auto)")
    p.add_argument("--verify-data", metavar="FILE",
                   help="verify on real inputs: an HDF5 file with one dataset per input (named as the input op), "
                        "or FILE.h5:KEY or a .npy array for a single input; its first N rows are used")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=d0,d1,..",
                   help="shape of an input for the random verification inputs, batch first, ? for any (repeatable)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="directory to write (offline.pb or offline/, online.pb or online/, manifest.json), "
                        "all or nothing")


VERIFIED_AGAINST = {"graph": "the original graph", "checkpoint": "the original graph with its checkpoint",
                    "frozen": "the original model frozen whole"}


def run(args):
    from ..core.errors import SurgeryError
    from ..core.graph import shape_str
    from ..core.pieces import TensorSpec
    from ..exporters.runtimes import parse_input_shapes
    from ..passes.bind import bind
    from ..passes.split import split_model, write_split

    if args.verify < 0:
        raise SurgeryError(f"--verify {args.verify} is negative", "give a number of random inputs, or 0 to skip")
    say = sayer(args)
    model = bind(load_options(args).load(args.model),
                 args.set)
    split = split_model(model, args.cut, args.outputs, inputs=args.inputs or None, format=args.format,
                        cut_dtype=args.cut_dtype, calibration=args.calibration)
    manifest = write_split(model, split, args.out, verify=args.verify, progress=progress(args) and not args.json,
                           verify_data=args.verify_data, input_shapes=parse_input_shapes(args.input_shape),
                           options=load_options(args))
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
        if "compressed" in v:
            c = v["compressed"]
            agreement = f", top-1 agreement {c['agreement']:.1%}" if c["agreement"] is not None else ""
            say(f"  crossing as {c['dtype']}: max |difference| {c['max_abs_diff']:.3g} from the original{agreement}")
    return 0, {"written": out, **manifest}
