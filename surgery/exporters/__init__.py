"""Exporters: a piece or a model out to another runtime (SavedModel, LiteRT, ONNX), each verified
in that runtime.

May import `surgery.core`, `surgery.data` and `surgery.passes`.
"""
