"""Keras in, Keras out: `surgery.keras.split(model, cut=..., outputs=...) -> (offline, online)`,
each a `keras.Model` (see `surgery.passes.keras_split`)."""

from .passes.keras_split import split, verify_keras_split, write_keras_split

__all__ = ["split", "verify_keras_split", "write_keras_split"]
