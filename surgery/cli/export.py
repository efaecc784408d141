"""`surgery export`: pieces as SavedModels, LiteRT or ONNX files, each verified."""

from __future__ import annotations

import os

from .common import model_arg, open_model, progress, sayer, set_arg

HELP = "write frozen pieces as SavedModels, .tflite or .onnx files, each verified"
EXAMPLE = ("surgery export pieces --saved-model serving   # serving/offline, serving/online\n"
           "  surgery export head.pb --saved-model serving/head\n"
           "  surgery export pieces --tflite mobile/   # mobile/offline.tflite, mobile/online.tflite\n"
           "  surgery export pieces/online.pb --tflite head.tflite --quantize int8 --calibration fc7.h5 \\\n"
           "      --float-from head/logits --per-tensor   # int8, with the logits layer in float\n\n"
           "signature keys are the tensor names with '/' and ':' made '_' (item_tower/embedding:0 → "
           "item_tower_embedding)")


def add_arguments(p) -> None:
    model_arg(p, "GRAPH", "a frozen .pb/.pbtxt, a directory with manifest.json (one file per piece), or with "
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
    set_arg(p)
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


def run(args):
    if args.tflite or args.onnx:
        return _export_runtime(args)
    from ..core.errors import SurgeryError
    from ..exporters.export import export

    if (args.quantize or args.calibration or args.input_shape or args.allow_select_tf_ops or args.per_tensor
            or args.float_from):
        raise SurgeryError("--input-shape/--quantize/--calibration/--per-tensor/--float-from/--allow-select-tf-ops "
                           "go with --tflite or --onnx",
                           "drop them for --saved-model")
    if args.inputs and not args.outputs:
        raise SurgeryError("--inputs needs --outputs", "name the tensors to export with --outputs T[,..]")
    say = sayer(args)
    written = export(open_model(args), args.saved_model, outputs=args.outputs, inputs=args.inputs, set=args.set,
                     progress=progress(args) and not args.json)
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
    from ..core.graph import shape_str
    from ..exporters.runtimes import TOP1_HINT_BELOW, export_runtime
    from ..passes.inspect import human_bytes

    say = sayer(args)
    fmt, path = ("tflite", args.tflite) if args.tflite else ("onnx", args.onnx)
    manifest = export_runtime(open_model(args), path, fmt, outputs=args.outputs, inputs=args.inputs,
                              input_shapes=args.input_shape, quantize=args.quantize, calibration=args.calibration,
                              allow_select_tf_ops=args.allow_select_tf_ops, max_error=args.max_error,
                              verify=args.verify, per_tensor=args.per_tensor, float_from=args.float_from,
                              set=args.set, progress=progress(args) and not args.json)
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
