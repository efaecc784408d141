"""`surgery export --tflite/--onnx`: frozen pieces for the runtimes people deploy to, verified there.

A piece (a frozen GraphDef and the tensors to feed and fetch) becomes a `.tflite` file for LiteRT
(`tf.compat.v1.lite.TFLiteConverter.from_frozen_graph`, the converter that still takes a GraphDef)
or an `.onnx` file for onnxruntime (`tf2onnx.convert.from_graph_def`). Names are kept: ONNX inputs
and outputs are the manifest names (`fc7:0`), and the `.tflite` file gets a `serving_default`
signature keyed by the same names (the converter itself writes none for a GraphDef). The batch
dimension stays dynamic; `input_shapes` pins the others.

Quantization: `dynamic` (int8 weights), `float16` (float16 weights), `int8` (weights and
activations, calibrated on representative rows; inputs and outputs stay float), `int16x8` (int8
weights, int16 activations, calibrated: for a classifier whose logits span a wide range, where int8
activation steps tie close classes). For ONNX these are onnxruntime's `quantize_dynamic`, its
float16 converter and `quantize_static` (QDQ; int16 activations through its contrib QDQ ops).
Weights get a scale per output channel, or one per tensor with `per_tensor` (smaller files for
small layers; what older accelerators accept). `float_from` keeps named ops and every op after
them in float inside an int8 file (TF's selective quantization, as its quantization debugger does
it: calibrate, then quantize with those ops denylisted; onnxruntime's `nodes_to_exclude`): a
classifier's logits layer computed in float no longer ties close classes on an int8 step.

Verification is not optional: the converted bytes are run in their own runtime (`ai-edge-litert`'s
interpreter, `onnxruntime`) on the same inputs as TensorFlow runs the piece, before anything is
written. Float files must agree within 1e-4 of the output's scale; quantized ones are reported
(max difference, top-1 agreement for classifier outputs) and fail only past `max_error`.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import difflib
import os
import tempfile

import numpy as np

from ..core import tfcompat
from ..core.errors import ModelLoadError, SurgeryError
from ..core.files import stderr_to
from ..core.graph import descendants, graph_from_def
from ..core.names import node_input_op, parse_list, resolve_op, resolve_tensor, suggest
from ..core.pieces import Piece
from ..data.calibration import representative_rows

tf = tfcompat.tf
v1 = tf.compat.v1

QUANTIZE_MODES = ("dynamic", "float16", "int8", "int16x8")
CALIBRATED_MODES = ("int8", "int16x8")  # activations too: they need representative rows
SCALED_MODES = ("dynamic", "int8", "int16x8")  # int8 weights, with scales per channel or per tensor
# ops that LiteRT and tf2onnx fold into the op before them (a bias and activation into its MatMul/Conv)
IDENTITY_OPS = ("Identity", "StopGradient", "Snapshot")
FOLDED_INTO_PRODUCER = (*IDENTITY_OPS, "BiasAdd", "Relu", "Relu6")
WEIGHTED_OPS = ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "Conv2D", "DepthwiseConv2dNative", "Conv3D")
TOP1_HINT_BELOW = 0.98  # int8 agreement under which the report suggests --float-from
FLOAT_TOLERANCE = 1e-4  # relative to the largest |value| of each reference output
SIGNATURE = "serving_default"

RUNTIMES = {
    "tflite": {"suffix": ".tflite", "runtime": "LiteRT", "modules": ("ai_edge_litert",), "extra": "tflite"},
    "onnx": {"suffix": ".onnx", "runtime": "onnxruntime", "modules": ("tf2onnx", "onnxruntime"), "extra": "onnx"},
}


def require(fmt: str) -> None:
    """Refuse `--tflite`/`--onnx` (exit 2) when its optional extra is not installed."""
    import importlib

    info = RUNTIMES[fmt]
    for module in info["modules"]:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise SurgeryError(f"--{fmt} needs {info['runtime']}'s Python package ({module}), which is not installed",
                               f"install it with: pip install 'surgery[{info['extra']}]'") from e


@contextlib.contextmanager
def quiet_stderr():
    """Point fd 2 at /dev/null: the converters and interpreters print MLIR dumps and delegate notices
    from C++ that no log level reaches. `TF_CPP_MIN_LOG_LEVEL=0` (--verbose) keeps them."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    with stderr_to(os.devnull):
        yield


# ---------------------------------------------------------------- a piece and its inputs

def parse_input_shapes(specs) -> dict:
    """`['images=?,224,224,3']` → `{'images': [None, 224, 224, 3]}` (`?`, `-1` or `None`: dynamic)."""
    shapes = {}
    for spec in specs or ():
        name, eq, dims = spec.partition("=")
        try:
            if not eq or not name.strip():
                raise ValueError
            shapes[name.strip()] = [None if d.strip() in ("?", "-1", "None") else int(d)
                                    for d in dims.split(",") if d.strip()]
        except ValueError:
            raise SurgeryError(f"--input-shape '{spec}' is not NAME=D,D,..",
                               "e.g. --input-shape images=?,224,224,3 (? keeps a dimension dynamic)") from None
    return shapes


def pin_shapes(piece: Piece, shapes: dict) -> tuple[Piece, set]:
    """(the piece with its placeholders given the `shapes` asked for (by any name `resolve_tensor`
    takes), the keys of `shapes` used here)."""
    graph = graph_from_def(piece.graph_def)
    used, pinned = set(), {}
    for key, dims in shapes.items():
        try:
            tensor = resolve_tensor(graph, key)
        except SurgeryError:
            continue
        if tensor.name not in [i.name for i in piece.inputs]:
            continue  # another piece's input (in this one, the cut tensor is an output)
        if not tensor.shape.is_compatible_with(dims):
            raise SurgeryError(f"--input-shape {key}={dims} does not fit {tensor.name}, shape {tensor.shape}",
                               "give one dimension per axis, matching the known ones")
        used.add(key)
        pinned[tensor.name] = dims
    if pinned:
        gd = v1.GraphDef()
        gd.CopyFrom(piece.graph_def)
        for node in gd.node:
            if node.name + ":0" in pinned:
                node.attr["shape"].shape.CopyFrom(tf.TensorShape(pinned[node.name + ":0"]).as_proto())
        piece = Piece(gd, [dataclasses.replace(i, shape=pinned.get(i.name, i.shape)) for i in piece.inputs],
                      piece.outputs, name=piece.name)
    return piece, used


def float_ops(pieces, names) -> dict:
    """{piece name: op names that `--float-from NAMES` keeps in float there}. A NAME is an op or a
    name scope (a Keras layer: `dense_1`); with it go the ops it folds into in every converter (an
    Identity's or activation's or bias's producer: `logits` brings its MatMul), and every op after.
    A NAME no piece has is an error with the close names."""
    found, kept = set(), {}
    for piece in pieces:
        graph = graph_from_def(piece.graph_def)
        roots = set()
        for name in names:
            try:
                ops = [resolve_op(graph, name)]
            except SurgeryError:
                ops = [op for op in graph.get_operations() if op.name.startswith(name.rstrip("/") + "/")]
            found.update([name] if ops else [])
            for op in ops:
                roots.add(op.name)
                while op.type in FOLDED_INTO_PRODUCER and op.inputs:
                    op = op.inputs[0].op
                    roots.add(op.name)
        consts = {n.name for n in piece.graph_def.node if n.op == "Const"}
        kept[piece.name] = (descendants(piece.graph_def, roots) - consts) if roots else set()
    missing = [n for n in names if n not in found]
    if missing:
        close = suggest(missing[0], [n.name for p in pieces for n in p.graph_def.node])
        raise SurgeryError(f"--float-from {missing[0]}: no op or name scope of the graph has that name",
                           ("did you mean " + ", ".join(close) + "?") if close
                           else "run `surgery inspect GRAPH` to list the ops")
    return kept


def check_shapes(piece: Piece) -> None:
    """Refuse inputs with an unknown rank or unknown dims other than the batch."""
    for i in piece.inputs:
        if i.shape is None or None in i.shape[1:]:
            raise SurgeryError(f"input {i.name} of piece '{piece.name}' has shape "
                               f"{'unknown' if i.shape is None else list(i.shape)}; mobile runtimes want every "
                               "dimension but the batch known",
                               f"pin it with --input-shape {i.op}=?,D,D,..")


def random_rows(piece: Piece, n: int, seed: int = 0) -> list:
    """Random inputs of each input's dtype and shape (the batch dimension `n`)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in piece.inputs:
        shape = [n, *t.shape[1:]] if t.shape and t.shape[0] is None else t.shape
        dtype = np.dtype(t.dtype)
        if dtype.kind == "f":
            out.append(rng.normal(size=shape).astype(dtype))
        elif dtype.kind == "b":
            out.append(rng.integers(0, 2, size=shape).astype(bool))
        else:
            out.append(rng.integers(0, 10, size=shape).astype(dtype))
    return out


# ---------------------------------------------------------------- conversion

def _op_list(errors) -> str:
    seen = {}
    for e in errors:
        op = e.operator.name.removeprefix("tf.")
        where = e.location.call[0].name if len(e.location.call) else e.location.name
        seen.setdefault(op, where)
    return ", ".join(f"{op} ({where})" if where else op for op, where in sorted(seen.items()))


def _converter_message(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:200]


def _tflite_convert(piece: Piece, *, quantize, calibration, select_tf_ops: bool, per_tensor: bool = False,
                    keep_float=frozenset()) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "piece.pb")
        with open(path, "wb") as f:
            f.write(piece.graph_def.SerializeToString())
        ins = [t.op for t in piece.inputs]
        outs = [t.name[:-2] if t.name.endswith(":0") else t.name for t in piece.outputs]
        conv = v1.lite.TFLiteConverter.from_frozen_graph(
            path, ins, outs, input_shapes={n: t.as_dict()["shape"] for n, t in zip(ins, piece.inputs)})
        if select_tf_ops:
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        if quantize:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv._experimental_disable_per_channel = per_tensor
        if quantize == "float16":
            conv.target_spec.supported_types = [tf.float16]
        if quantize in CALIBRATED_MODES:
            conv.representative_dataset = lambda: ([a[i:i + 1] for a in calibration]
                                                   for i in range(len(calibration[0])))
        if quantize == "int16x8":  # ops without a 16x8 kernel stay float
            conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                                              tf.lite.OpsSet.TFLITE_BUILTINS]
        if not keep_float:
            with quiet_stderr():
                return conv.convert()
        # selective quantization, the way TF's QuantizationDebugger does it: calibrate only, then
        # quantize with the ops to keep in float denylisted (by their names in the .tflite)
        from tensorflow.lite.python import convert as lite_convert

        conv._experimental_calibrate_only = True
        with quiet_stderr():
            calibrated = conv.convert()
        denied = _tflite_ops_from(calibrated, keep_float, {n.name for n in piece.graph_def.node})
        if not denied:
            raise SurgeryError(f"piece '{piece.name}': --float-from names no op that is left in the .tflite "
                               "(the converter folded it into another)", "name the op before it")
        with quiet_stderr():
            return lite_convert.mlir_quantize(calibrated, disable_per_channel=per_tensor, denylisted_nodes=denied)


def _tflite_ops_from(blob: bytes, graph_ops, all_ops) -> list:
    """Output tensor names of the `.tflite` ops made from any of `graph_ops`. A fused op's name
    joins the graph ops it came from with ';' ('dense/MatMul;dense/BiasAdd'); a name that clashes
    with another tensor's gets a counter appended ('MatMul_1' → 'MatMul_11')."""
    def graph_op(part):
        while part and part not in all_ops and part[-1].isdigit():
            part = part[:-1]
        return part

    graph = tfcompat.tflite_schema().Model.GetRootAsModel(blob, 0).Subgraphs(0)
    names = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        for j in range(op.OutputsLength()):
            name = graph.Tensors(op.Outputs(j)).Name().decode()
            if {graph_op(part) for part in name.split(";")} & graph_ops:
                names.append(name)
    return names


def _add_signature(blob: bytes, piece: Piece) -> bytes:
    """Add a `serving_default` signature keyed by the piece's tensor names (`fc7:0`) to a `.tflite`."""
    import flatbuffers

    schema = tfcompat.tflite_schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(blob, 0))
    graph = model.subgraphs[0]

    def tensor_map(infos, indices):
        by_name = {graph.tensors[i].name.decode(): i for i in indices}
        maps = []
        for info, index in zip(infos, indices):
            m = schema.TensorMapT()
            m.name = info.name
            op_name = info.name[:-2] if info.name.endswith(":0") else info.name
            m.tensorIndex = by_name.get(op_name, index)
            maps.append(m)
        return maps

    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = SIGNATURE, 0
    sig.inputs = tensor_map(piece.inputs, list(graph.inputs))
    sig.outputs = tensor_map(piece.outputs, list(graph.outputs))
    model.signatureDefs = [sig]
    builder = flatbuffers.Builder(len(blob) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def to_tflite(piece: Piece, *, quantize=None, calibration=None, allow_select_tf_ops=False, per_tensor=False,
              keep_float=frozenset()) -> tuple:
    """(`.tflite` bytes, the Select TF ops it keeps). Ops LiteRT lacks are named in one error."""
    kept = []
    options = dict(quantize=quantize, calibration=calibration, per_tensor=per_tensor, keep_float=keep_float)
    try:
        blob = _tflite_convert(piece, select_tf_ops=False, **options)
    except SurgeryError:
        raise
    except Exception as e:
        errors = list(getattr(e, "errors", None) or [])
        flex = [x for x in errors if x.error_code == x.ERROR_NEEDS_FLEX_OPS]
        custom = [x for x in errors if x.error_code == x.ERROR_NEEDS_CUSTOM_OPS]
        if custom:
            raise SurgeryError(f"piece '{piece.name}': LiteRT has no kernel for {_op_list(custom)}, not even as a "
                               "Select TF op", "cut the graph before it (--inputs/--outputs), or replace the op") from e
        if flex and not allow_select_tf_ops:
            raise SurgeryError(f"piece '{piece.name}': LiteRT has no built-in kernel for {_op_list(flex)}",
                               "pass --allow-select-tf-ops to keep them as TensorFlow ops (the app must then link "
                               "LiteRT's Flex delegate), or cut the graph before them") from e
        if not flex:
            raise SurgeryError(f"piece '{piece.name}' cannot be converted to .tflite: {_converter_message(e)}",
                               "run with --verbose for the converter's log; pin shapes with --input-shape") from e
        kept = sorted({x.operator.name.removeprefix("tf.") for x in flex})
        try:
            blob = _tflite_convert(piece, select_tf_ops=True, **options)
        except Exception as e2:
            raise SurgeryError(f"piece '{piece.name}' cannot be converted to .tflite: {_converter_message(e2)}",
                               "run with --verbose for the converter's log") from e2
    return _add_signature(blob, piece), kept


def _onnx_unsupported(model) -> list:
    import onnx

    known = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
    return [f"{n.op_type} ({n.name})" for n in model.graph.node
            if n.domain not in known or not onnx.defs.has(n.op_type, n.domain or "")]


def to_onnx(piece: Piece, *, quantize=None, calibration=None, per_tensor=False, keep_float=frozenset()) -> bytes:
    """`.onnx` bytes; ONNX inputs and outputs are the piece's tensor names."""
    import logging

    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
    try:
        with quiet_stderr():
            model, _ = tf2onnx.convert.from_graph_def(piece.graph_def, input_names=[t.name for t in piece.inputs],
                                                      output_names=[t.name for t in piece.outputs])
    except Exception as e:
        raise SurgeryError(f"piece '{piece.name}' cannot be converted to .onnx: {_converter_message(e)}",
                           "run with --verbose for tf2onnx's log") from e
    bad = _onnx_unsupported(model)
    if bad:
        raise SurgeryError(f"piece '{piece.name}': ONNX has no operator for {', '.join(sorted(set(bad)))}",
                           "cut the graph before it (--inputs/--outputs), or export --tflite --allow-select-tf-ops")
    if quantize is None:
        return model.SerializeToString()
    excluded = [n.name for n in model.graph.node if n.name in keep_float]
    if keep_float and not excluded:
        raise SurgeryError(f"piece '{piece.name}': --float-from names no op that is left in the .onnx "
                           "(tf2onnx folded it into another)", "name the op before it")
    return _quantize_onnx(model, piece, quantize, calibration, per_tensor=per_tensor, excluded=excluded)


def _quantize_onnx(model, piece: Piece, quantize: str, calibration, *, per_tensor=False, excluded=()) -> bytes:
    import onnx

    if quantize == "float16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        return convert_float_to_float16(model, keep_io_types=True).SerializeToString()
    import logging

    from onnxruntime import quantization as q

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "quantized.onnx")
        onnx.save(model, src)
        logging.disable(logging.WARNING)  # onnxruntime's "consider pre-processing" notices, on the root logger
        try:
            _ort_quantize(q, src, dst, piece, quantize, calibration, per_tensor=per_tensor, excluded=excluded)
        finally:
            logging.disable(logging.NOTSET)
        with open(dst, "rb") as f:
            return f.read()


def _ort_quantize(q, src: str, dst: str, piece: Piece, quantize: str, calibration, *, per_tensor=False,
                  excluded=()) -> None:
    """onnxruntime's dynamic or static (QDQ) quantization, `src` → `dst`; `excluded` nodes stay float."""
    with quiet_stderr():
        if quantize == "dynamic":
            q.quantize_dynamic(src, dst, weight_type=q.QuantType.QInt8, per_channel=not per_tensor)
            return
        names = [t.name for t in piece.inputs]

        class Rows(q.CalibrationDataReader):
            def __init__(self):
                self.it = ({n: a[i:i + 1] for n, a in zip(names, calibration)} for i in range(len(calibration[0])))

            def get_next(self):
                return next(self.it, None)

        wide = quantize == "int16x8"
        q.quantize_static(src, dst, Rows(), quant_format=q.QuantFormat.QDQ, per_channel=not per_tensor,
                          nodes_to_exclude=list(excluded),
                          activation_type=q.QuantType.QInt16 if wide else q.QuantType.QInt8,
                          weight_type=q.QuantType.QInt8, extra_options={"UseQDQContribOps": wide})


# ---------------------------------------------------------------- running and verifying

def request_runner(fmt: str, blob: bytes | None, piece: Piece, *, threads: int | None = 1):
    """A function from input arrays (in the piece's order) to output arrays, set up once: `fmt`
    tflite (the `serving_default` signature), onnx, or tensorflow (a Session on the piece; `blob`
    unused). `threads=1` for per-request latency figures; None for each runtime's default."""
    names = [t.name for t in piece.inputs]
    fetch = [t.name for t in piece.outputs]
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        with quiet_stderr():
            runner = Interpreter(model_content=blob, num_threads=threads).get_signature_runner(SIGNATURE)

        def answer(rows):
            with quiet_stderr():  # XNNPACK announces itself on first use
                result = runner(**dict(zip(names, rows)))
            return [result[n] for n in fetch]
        return answer
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = options.inter_op_num_threads = threads
        options.log_severity_level = 3
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        return lambda rows: session.run(fetch, dict(zip(names, rows)))
    config = v1.ConfigProto(intra_op_parallelism_threads=threads or 0, inter_op_parallelism_threads=threads or 0)
    sess = v1.Session(graph=graph_from_def(piece.graph_def), config=config)
    call = sess.make_callable(fetch, names)
    return lambda rows: call(*rows)


def runtime_version(fmt: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    package = "ai-edge-litert" if fmt == "tflite" else "onnxruntime"
    try:
        return f"{package} {version(package)}"
    except PackageNotFoundError:
        return package


def is_classifier(shape) -> bool:
    """[batch, classes] with classes > 1: an output whose top-1 answer means something."""
    return len(shape) == 2 and (shape[1] or 0) > 1


def compare(reference: list, got: list, piece: Piece) -> dict:
    """Max |difference|, the same relative to each output's largest |value|, and top-1 agreement of
    classifier-like outputs ([batch, classes] with classes > 1)."""
    abs_diff = rel_diff = 0.0
    top1 = []
    for want, have in zip(reference, got):
        want, have = np.asarray(want, np.float64), np.asarray(have, np.float64)
        if want.shape != have.shape:
            raise SurgeryError(f"piece '{piece.name}': the converted file answers with shape {list(have.shape)} "
                               f"where TensorFlow gives {list(want.shape)}", "report this as a converter bug")
        d = float(np.max(np.abs(want - have))) if want.size else 0.0
        abs_diff = max(abs_diff, d)
        rel_diff = max(rel_diff, d / max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-12))
        if is_classifier(want.shape):
            top1.append(float(np.mean(want.argmax(1) == have.argmax(1))))
    return {"max_abs_diff": abs_diff, "max_rel_diff": rel_diff, "top1_agreement": min(top1) if top1 else None}


@dataclasses.dataclass
class Converted:
    piece: Piece
    blob: bytes
    report: dict  # the manifest entry: graph, inputs, outputs, quantize, bytes, verification


def convert_piece(piece: Piece, fmt: str, *, quantize=None, calibration=(), allow_select_tf_ops=False,
                  max_error=None, verify: int = 100, filename: str = "", per_tensor: bool = False,
                  keep_float=frozenset()) -> Converted:
    """Convert, run in the runtime, compare with TensorFlow; SurgeryError past the tolerance.
    `keep_float`: op names of the piece that stay float in an int8 file (see `float_ops`)."""
    if quantize not in (None, *QUANTIZE_MODES):
        raise SurgeryError(f"--quantize {quantize} is not a mode", "use dynamic, float16, int8 or int16x8")
    check_weight_options(quantize, per_tensor=per_tensor, float_from=keep_float)
    if quantize in CALIBRATED_MODES and not calibration:
        raise SurgeryError(f"--quantize {quantize} needs representative rows",
                           "pass --calibration FILE.h5 (for an online piece, the HDF5 `precompute` wrote)")
    cal_rows = held = None
    data = "random"
    if calibration:
        cal_rows, held = representative_rows(piece, calibration, verify=verify)
        data = "held-out calibration" if quantize in CALIBRATED_MODES else "calibration"
    options = dict(quantize=quantize, calibration=cal_rows, per_tensor=per_tensor, keep_float=frozenset(keep_float))
    if fmt == "tflite":
        blob, kept = to_tflite(piece, allow_select_tf_ops=allow_select_tf_ops, **options)
    else:
        blob, kept = to_onnx(piece, **options), []
    tolerance = max_error if max_error is not None else (FLOAT_TOLERANCE if quantize is None else None)
    verification = {"runtime": runtime_version(fmt), "tolerance": tolerance}
    if kept:
        verification["skipped"] = (f"keeps Select TF ops ({', '.join(kept)}): the Python interpreter has no Flex "
                                   "delegate to run them")
    elif verify > 0:
        rows = held if held is not None else random_rows(piece, verify)
        reference = request_runner("tensorflow", None, piece, threads=None)(rows)
        try:
            got = request_runner(fmt, blob, piece, threads=None)(rows)
        except Exception as e:
            raise SurgeryError(f"piece '{piece.name}': {RUNTIMES[fmt]['runtime']} cannot run the converted file: "
                               f"{_converter_message(e)}", "run with --verbose; pin shapes with --input-shape") from e
        verification.update(n=len(rows[0]) if rows else 1, data=data, **compare(reference, got, piece))
        verification["passed"] = tolerance is None or verification["max_rel_diff"] <= tolerance
        top1 = verification["top1_agreement"]
        if quantize == "int8" and not keep_float and top1 is not None and top1 < TOP1_HINT_BELOW:
            logits = logits_op(piece)
            kept_float = float_ops([piece], [logits])[piece.name] if logits else set()
            if any(n.op in WEIGHTED_OPS and n.name not in kept_float for n in piece.graph_def.node):
                verification["hint"] = f"--float-from {logits}"  # the rest of the piece still int8
        if not verification["passed"]:
            raise SurgeryError(f"piece '{piece.name}': the {fmt} file differs from TensorFlow by "
                               f"{verification['max_rel_diff']:.3g} of the output's scale (max |difference| "
                               f"{verification['max_abs_diff']:.3g}), over the tolerance {tolerance:g}; nothing written",
                               "raise it with --max-error if that is acceptable, or export without --quantize")
    else:
        verification["skipped"] = "--verify 0"
    report = {"graph": filename, "inputs": [t.as_dict() for t in piece.inputs],
              "outputs": [t.as_dict() for t in piece.outputs], "quantize": quantize,
              "bytes": len(blob), "graph_def_bytes": piece.graph_def.ByteSize(), "verification": verification}
    if quantize in SCALED_MODES:
        report["weight_scales"] = "per tensor" if per_tensor else "per channel"
    if keep_float:
        report["float_ops"] = sorted(keep_float)
    if kept:
        report["select_tf_ops"] = kept
    return Converted(piece, blob, report)


def logits_op(piece: Piece) -> str | None:
    """The op a classifier output's softmax reads (or that output's op, if it has no softmax):
    what to keep in float when int8 ties close classes."""
    nodes = {n.name: n for n in piece.graph_def.node}
    for out in piece.outputs:
        if not out.shape or not is_classifier(out.shape):
            continue
        node = nodes.get(node_input_op(out.name))
        while node is not None and node.op in IDENTITY_OPS and node.input:
            node = nodes.get(node_input_op(node.input[0]))
        if node is not None and node.op == "Softmax":
            return node_input_op(node.input[0])
        return node.name if node is not None else None
    return None


def check_weight_options(quantize, *, per_tensor=False, float_from=()) -> None:
    """`--per-tensor` needs int8 weights; `--float-from` an int8 file to keep ops float in."""
    if per_tensor and quantize not in SCALED_MODES:
        raise SurgeryError("--per-tensor sets how int8 weights are scaled",
                           "use it with --quantize dynamic, int8 or int16x8")
    if float_from and quantize != "int8":
        raise SurgeryError("--float-from keeps ops in float inside an int8 file",
                           "use it with --quantize int8 --calibration SRC")


# ---------------------------------------------------------------- GRAPH|MODEL → pieces → files

def _fed_at_placeholders(piece: Piece) -> Piece:
    """The piece fed at its Placeholders only: each PlaceholderWithDefault keeps its default (as after
    a split) and becomes an Identity of it, which tf2onnx requires and LiteRT does anyway."""
    graph_def = piece.graph_def
    ops = {n.name: n.op for n in graph_def.node}
    inputs = [t for t in piece.inputs if ops.get(t.op) == "Placeholder"]
    if "PlaceholderWithDefault" in ops.values():
        gd = v1.GraphDef()
        gd.CopyFrom(graph_def)
        for node in gd.node:
            if node.op == "PlaceholderWithDefault":
                dtype = node.attr["dtype"].type
                node.op = "Identity"
                for attr in ("dtype", "shape"):
                    del node.attr[attr]
                node.attr["T"].type = dtype
        graph_def = gd
    return Piece(graph_def, inputs, piece.outputs, name=piece.name)


def load_pieces(graph, *, outputs=None, inputs=None, set=None) -> tuple:
    """(pieces, is_split_dir): a split/finetune directory's pieces, or one piece `model` from a
    frozen graph or any MODEL (frozen here, to `outputs` above `inputs` when given). `graph`: a
    path or an `open_pieces` result."""
    from ..core.pieces import open_pieces
    from ..passes.bind import bind
    from ..passes.freeze import freeze_model
    from ..passes.inspect import likely_inputs, likely_outputs

    opened = open_pieces(graph)
    if opened.is_split:
        if outputs or inputs or set:
            raise SurgeryError(f"{opened.path} is a directory of pieces; --outputs/--inputs/--set work on one MODEL",
                               "drop them, or pass one piece's .pb")
        return [_fed_at_placeholders(p) for p in opened.pieces.values()], True
    model = bind(opened.model(), set)
    if model.is_frozen and not outputs and not inputs and not set:
        piece = Piece(model.graph_def, likely_inputs(model), likely_outputs(model))
    else:
        if not outputs:
            outputs = [t.name for t in likely_outputs(model)]
            if not outputs:
                raise SurgeryError(f"{opened.path} has no obvious output", "name the tensors to export with --outputs")
        piece = freeze_model(model, outputs, inputs=inputs or ())
    if not piece.outputs:
        raise ModelLoadError(f"{opened.path} has no outputs to export", "name them with --outputs")
    return [_fed_at_placeholders(piece)], False


def export_runtime(graph, path: str, fmt: str, *, outputs=None, inputs=None, input_shapes=(), quantize=None,
                   calibration=(), allow_select_tf_ops=False, max_error=None, verify: int = 100,
                   per_tensor: bool = False, float_from=(), set=None, progress: bool = False) -> dict:
    """`surgery export --tflite/--onnx`: every piece converted and verified in its own runtime
    (LiteRT, onnxruntime) on the same inputs as TensorFlow runs it, then all written together.

    Args:
        graph: a frozen `.pb`, a directory of pieces, or any MODEL with `outputs`.
        path: a file (`x.tflite`) for one piece, or a directory that gets `<piece>.tflite` each.
        fmt: "tflite" or "onnx".
        outputs: the tensors to keep (a MODEL needs them).
        inputs: tensors to cut off into inputs.
        input_shapes: `NAME=d0,d1,..` pins (mobile runtimes want every dimension but the batch).
        quantize: None, "dynamic", "float16", "int8" or "int16x8".
        calibration: `FILE.h5[:KEY]`/`FILE.npy` representative rows (int8, int16x8).
        allow_select_tf_ops: let LiteRT fall back to TensorFlow ops it lacks.
        max_error: fail a quantized file past this max difference (else it is reported).
        verify: rows to verify on.
        per_tensor: one scale per weight tensor instead of per channel.
        float_from: op names kept in float, with everything after them, in an int8 file.
        set: placeholders bound first.
        progress: show a progress bar.

    Returns:
        The manifest (files, sizes, and each piece's verification).

    Raises:
        SurgeryError: a conversion the runtime refuses, or a float file that does not agree.

    Examples:
        >>> surgery.export_runtime("pieces/", "mobile/", "tflite", quantize="int8", calibration=["fc7.h5"])
    """
    from ..core.files import atomic_path, write_bytes
    from ..core.manifest import FILENAME, FORMAT

    require(fmt)
    if allow_select_tf_ops and fmt != "tflite":
        raise SurgeryError("--allow-select-tf-ops is for --tflite", "onnxruntime has no TensorFlow fallback")
    if verify < 0:
        raise SurgeryError(f"--verify {verify} is negative", "give a number of rows, or 0 to skip")
    float_from = parse_list(float_from)
    check_weight_options(quantize, per_tensor=per_tensor, float_from=float_from)
    suffix = RUNTIMES[fmt]["suffix"]
    pieces, is_dir = load_pieces(graph, outputs=outputs, inputs=inputs, set=set)
    where = getattr(graph, "path", graph)
    one_file = path.endswith(suffix)
    if one_file and len(pieces) > 1:
        raise SurgeryError(f"{where} has {len(pieces)} pieces ({', '.join(p.name for p in pieces)}); "
                           f"{path} is one file", f"give a directory: --{fmt} {path[:-len(suffix)]}/")
    shapes = parse_input_shapes(input_shapes)
    used = builtins.set()  # `set` is this function's --set argument
    for k, piece in enumerate(pieces):
        pieces[k], pinned = pin_shapes(piece, shapes)
        used |= pinned
    unused = sorted(builtins.set(shapes) - used)
    if unused:
        names = [i.name for p in pieces for i in p.inputs]
        close = difflib.get_close_matches(unused[0], names, n=3, cutoff=0.4)
        raise SurgeryError(f"--input-shape {unused[0]}: no input of {where} has that name",
                           ("did you mean " + ", ".join(close) + "?") if close else "inputs: " + ", ".join(names))
    for piece in pieces:
        check_shapes(piece)
    keep_float = float_ops(pieces, float_from) if float_from else {}
    from tqdm import tqdm

    converted = []
    for piece in tqdm(pieces, desc=f"convert to {suffix}", unit="piece", disable=not progress or len(pieces) < 2,
                      leave=False):
        converted.append(convert_piece(piece, fmt, quantize=quantize, calibration=list(calibration or ()),
                                       allow_select_tf_ops=allow_select_tf_ops, max_error=max_error, verify=verify,
                                       per_tensor=per_tensor, keep_float=keep_float.get(piece.name, ()),
                                       filename=os.path.basename(path) if one_file else piece.name + suffix))
    manifest = {"format": FORMAT, "source": {"path": os.path.abspath(where), "split": is_dir},
                "runtime": RUNTIMES[fmt]["runtime"], "pieces": {c.piece.name: c.report for c in converted}}
    if one_file:
        write_bytes(path, converted[0].blob)
    else:
        import json

        with atomic_path(path, directory=True) as tmp:
            for c in converted:
                with open(os.path.join(tmp, c.report["graph"]), "wb") as f:
                    f.write(c.blob)
            with open(os.path.join(tmp, FILENAME), "w") as f:
                f.write(json.dumps(manifest, indent=2) + "\n")
    return manifest


__all__ = ["export_runtime", "convert_piece", "load_pieces", "to_tflite", "to_onnx", "request_runner",
           "QUANTIZE_MODES"]
