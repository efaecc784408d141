"""Compressed cuts: the cut tensors cross from the offline piece to the online piece as float16 or
int8, so `precompute` stores half or a quarter of the bytes and less crosses a network.

The offline piece ends with the cast (float16) or the quantize (int8); the online piece's cut
placeholder takes that dtype and starts with the matching dequantize, so it computes from
float32 as before. int8 is affine, per channel on the last axis, as TFLite quantizes activations:

    q = clip(round(x / scale) + zero_point, -128, 127)        x ≈ (q - zero_point) * scale

with each channel's range taken from the calibration rows and widened to hold 0 (a ReLU's zeros
stay exact): scale = (hi - lo) / 255, zero_point = round(-128 - lo / scale). Values past the
calibration range saturate. The ops are plain arithmetic (RealDiv, Round, AddV2, Maximum,
Minimum, Cast): every runtime `export` targets converts them, where TensorFlow's `QuantizeV2`
gives `qint8` tensors that HDF5 and Parquet cannot store. The same formulas in numpy
(`quantize`, `dequantize`) let `cuts --measure` price a compressed cut without splitting.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..core import graph as g
from ..core import tfcompat
from ..core.errors import CutError
from ..core.names import node_input_op

tf = tfcompat.tf

CUT_DTYPES = ("float32", "float16", "int8")


# ---------------------------------------------------------------- the arithmetic, in numpy

def int8_ranges(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero_point), float32 arrays of one entry per channel (the last axis) of `values`."""
    values = np.asarray(values, np.float32)
    flat = values.reshape(-1, values.shape[-1]) if values.ndim > 1 else values.reshape(-1, 1)
    lo = np.minimum(flat.min(axis=0), 0.0).astype(np.float32)
    hi = np.maximum(flat.max(axis=0), 0.0).astype(np.float32)
    scale = ((hi - lo) / np.float32(255)).astype(np.float32)
    scale[~(scale > 0)] = 1.0  # a channel that is always 0: any scale keeps it exact
    zero_point = np.clip(np.round(np.float32(-128) - lo / scale), -128, 127).astype(np.float32)
    return scale, zero_point


def quantize(x, scale, zero_point) -> np.ndarray:
    """What the offline piece's int8 tail computes."""
    x = np.asarray(x, np.float32)
    return np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)


def dequantize(q, scale, zero_point) -> np.ndarray:
    """What the online piece's int8 head computes."""
    return ((np.asarray(q).astype(np.float32) - zero_point) * scale).astype(np.float32)


def roundtrip(x, dtype: str, scale=None, zero_point=None) -> np.ndarray:
    """`x` as the online piece sees it after crossing as `dtype`."""
    if dtype == "float16":
        return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)
    if dtype == "int8":
        return dequantize(quantize(x, scale, zero_point), scale, zero_point)
    return np.asarray(x, np.float32)


# ---------------------------------------------------------------- what compression changes

def difference(got: list, expected: list) -> tuple[float, float]:
    """(max |got - expected| over all outputs, the outputs' magnitude, at least 1); inf when a
    shape differs."""
    max_diff, scale = 0.0, 1.0
    for got_i, exp_i in zip(got, expected):
        got_i, exp_i = np.asarray(got_i, np.float64), np.asarray(exp_i, np.float64)
        if got_i.shape != exp_i.shape:
            return float("inf"), scale
        if exp_i.size:
            max_diff = max(max_diff, float(np.max(np.abs(got_i - exp_i))))
            scale = max(scale, float(np.max(np.abs(exp_i))))
    return max_diff, scale


def agreement(got: list, expected: list):
    """The share of rows whose top-1 class is the same, over the classifier outputs (rank 2, more
    than one column); None when no output is one."""
    same = [np.argmax(a, -1) == np.argmax(b, -1) for a, b in zip(got, expected)
            if np.ndim(b) == 2 and np.shape(b)[-1] > 1 and np.shape(a) == np.shape(b)]
    return float(np.mean(np.concatenate(same))) if same else None


# ---------------------------------------------------------------- the graph ops

def _node(name: str, op: str, inputs=(), **attrs):
    node = tf.compat.v1.NodeDef(name=name, op=op)
    node.input.extend(inputs)
    for key, value in attrs.items():
        if isinstance(value, tf.DType):
            node.attr[key].type = value.as_datatype_enum
        elif isinstance(value, bool):
            node.attr[key].b = value
        else:
            node.attr[key].tensor.CopyFrom(tf.make_tensor_proto(value))
    return node


def _cast(name: str, x: str, src, dst):
    return _node(name, "Cast", [x], SrcT=src, DstT=dst, Truncate=False)


def _const(name: str, value):
    value = np.asarray(value, np.float32)
    return _node(name, "Const", dtype=tf.float32, value=value)


def _unique(base: str, taken: set) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _compress_nodes(x: str, prefix: str, dtype: str, scale, zero_point) -> list:
    """Nodes from float32 tensor `x` to its compressed form, the last one named `prefix`."""
    f32 = tf.float32
    if dtype == "float16":
        return [_cast(prefix, x, f32, tf.float16)]
    p = prefix + "/"
    return [_const(p + "scale", scale), _const(p + "zero_point", zero_point),
            _const(p + "low", -128.0), _const(p + "high", 127.0),
            _node(p + "div", "RealDiv", [x, p + "scale"], T=f32), _node(p + "round", "Round", [p + "div"], T=f32),
            _node(p + "shift", "AddV2", [p + "round", p + "zero_point"], T=f32),
            _node(p + "max", "Maximum", [p + "shift", p + "low"], T=f32),
            _node(p + "min", "Minimum", [p + "max", p + "high"], T=f32),
            _cast(prefix, p + "min", f32, tf.int8)]


def _decompress_nodes(q: str, prefix: str, dtype: str, scale, zero_point) -> list:
    """Nodes from the compressed placeholder `q` back to float32, the last one named `prefix`."""
    if dtype == "float16":
        return [_cast(prefix, q, tf.float16, tf.float32)]
    p = prefix + "/"
    return [_cast(p + "cast", q, tf.int8, tf.float32), _const(p + "zero_point", zero_point), _const(p + "scale", scale),
            _node(p + "sub", "Sub", [p + "cast", p + "zero_point"], T=tf.float32),
            _node(prefix, "Mul", [p + "sub", p + "scale"], T=tf.float32)]


# ---------------------------------------------------------------- the split

def compress_split(split, dtype: str, *, calibration=None):
    """`split` with its cut crossing as `dtype` ("float16" or "int8"; "float32" returns it as is).

    int8 needs `calibration`: the cut tensors' values on representative rows (see `split.calibrate`),
    one array per cut tensor. Each cut entry then records `dtype`, the compressed tensor the
    offline piece now outputs (`offline_output`), the float tensor the online piece rebuilds from
    the placeholder (`dequantized`), and for int8 the per-channel `scale` and `zero_point`.
    """
    if dtype not in CUT_DTYPES:
        raise CutError(f"unknown --cut-dtype '{dtype}'", "use one of " + ", ".join(CUT_DTYPES))
    if dtype == "float32":
        return split
    for c in split.cut:
        if c["dtype"] != "float32":
            raise CutError(f"cannot compress cut tensor '{c['tensor']}': it is {c['dtype']}",
                           "--cut-dtype compresses float32 cuts; drop it or cut at a float32 tensor")
    if dtype == "int8" and calibration is None:
        raise CutError("--cut-dtype int8 needs calibration rows to choose its scales",
                       "pass --calibration FILE.h5 (or .npy) with inputs of the offline piece")
    cut, tails, heads = [], [], []
    off_taken = {n.name for n in split.offline.skeleton.node}
    on_taken = {n.name for n in split.online.skeleton.node}
    for k, c in enumerate(split.cut):
        scale = zero_point = None
        if dtype == "int8":
            scale, zero_point = int8_ranges(calibration[k])
            channels = c["shape"][-1] if c["shape"] else None
            if channels is not None and len(scale) != channels:
                raise CutError(f"the calibration values of '{c['tensor']}' have {len(scale)} channels, "
                               f"the cut has {channels}", "calibrate with inputs of this model")
        out = _unique(f"{node_input_op(c['tensor'])}/{dtype}", off_taken)
        tails += _compress_nodes(c["tensor"], out, dtype, scale, zero_point)
        placeholder = node_input_op(c["placeholder"])
        back = _unique(f"{placeholder}/dequantized", on_taken)
        heads.append((placeholder, back, _decompress_nodes(c["placeholder"], back, dtype, scale, zero_point)))
        entry = dict(c, dtype=dtype, offline_output=f"{out}:0", dequantized=f"{back}:0")
        if dtype == "int8":
            entry.update(scale=scale.tolist(), zero_point=zero_point.astype(int).tolist())
        cut.append(entry)

    def offline_tail(gd):
        gd = g.replace_uses(gd, {})  # a copy
        gd.node.extend(tails)
        return gd

    def online_head(gd):
        old = [n.name for n in gd.node]
        gd = g.replace_uses(gd, {f"{p}:0": f"{b}:0" for p, b, _ in heads}, only=old)
        retyped = {p for p, _, _ in heads}
        for node in gd.node:
            if node.name in retyped:
                node.attr["dtype"].type = tf.as_dtype(dtype).as_datatype_enum
        for _, _, nodes in heads:
            gd.node.extend(nodes)
        return gd

    by_placeholder = {c["placeholder"]: c for c in cut}
    offline = split.offline.rewritten(offline_tail, outputs=[
        dataclasses.replace(o, name=c["offline_output"], dtype=dtype) for o, c in zip(split.offline.outputs, cut)])
    online = split.online.rewritten(online_head, inputs=[
        dataclasses.replace(i, dtype=dtype) if i.name in by_placeholder else i for i in split.online.inputs])
    return dataclasses.replace(split, offline=offline, online=online, cut=cut)


__all__ = ["CUT_DTYPES", "agreement", "compress_split", "difference", "dequantize", "int8_ranges", "quantize", "roundtrip"]
