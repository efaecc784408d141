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
    p.add_argument("--format", choices=["auto", "frozen", "savedmodel", "keras"], default="auto",
                   help="pieces as frozen .pb files, or SavedModel directories that keep their variables "
                        "(for models past 2 GB), or .keras files for a Keras MODEL (cut and outputs named as "
                        "layers); auto: frozen when a piece fits (default: auto)")
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
    if args.format == "keras":
        return _run_keras(args, say)
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


def _run_keras(args, say):
    """`--format keras`: two .keras files from a Keras MODEL (`surgery.keras.split`)."""
    import os

    from ..core.errors import SurgeryError
    from ..core.kerasfile import is_keras_file, load_keras_file
    from ..passes.keras_split import split, write_keras_split

    if not is_keras_file(args.model):
        raise SurgeryError(f"--format keras needs a Keras MODEL (.keras or .h5); {args.model} is not one",
                           "split it into frozen pieces (drop --format keras)")
    for flag, given in (("--set", args.set), ("--inputs", args.inputs), ("--verify-data", args.verify_data),
                        ("--input-shape", args.input_shape), ("--cut-dtype", args.cut_dtype != "float32")):
        if given:
            raise SurgeryError(f"{flag} does not apply to --format keras", f"drop {flag}, or split into frozen pieces")
    model = load_keras_file(args.model, trust_code=load_options(args).trust_code)
    offline, online = split(model, cut=args.cut, outputs=args.outputs)
    manifest = write_keras_split(model, offline, online, args.out, verify=args.verify,
                                 source={"path": os.path.abspath(args.model), "format": "keras"})
    out = args.out.rstrip("/") or "/"
    say(f"split {args.model} → {out}/ (Keras files)")
    for name in ("offline", "online"):
        info = manifest["pieces"][name]
        feed = ", ".join(f"{i['name']} {i['shape']}" for i in info["inputs"])
        say(f"  {info['graph']:<14} feed {feed}  →  {', '.join(o['name'] for o in info['outputs'])}")
    v = manifest["verification"]
    if v.get("skipped"):
        say("  verification skipped (--verify 0)")
    else:
        say(f"  verified the written files, loaded with plain Keras, on {v['n']} random inputs: "
            f"max |difference| {v['max_abs_diff']:.3g} (tolerance {v['tolerance']:.3g})")
    return 0, {"written": out, **manifest}
