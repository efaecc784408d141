"""Preprocessing: how rows are scaled before they are fed (`--preprocess`)."""

from __future__ import annotations

import numpy as np

from ..core.errors import DataError


PREPROCESS = ("none", "vgg", "inception", "unit")
DEFAULT_PREPROCESS = "none"
VGG_MEANS = np.array([123.68, 116.78, 103.94], np.float32)  # ImageNet RGB means, as TF-slim's vgg_preprocessing


# ---------------------------------------------------------------- preprocessing

def preprocess_mode(how: str | None) -> str:
    """`how` checked against PREPROCESS (None: the default), or `DataError`."""
    how = how or DEFAULT_PREPROCESS
    if how not in PREPROCESS:
        raise DataError(f"--preprocess {how} is not one of {', '.join(PREPROCESS)}", "e.g. --preprocess vgg")
    return how


def preprocess(rows: np.ndarray, how: str | None) -> np.ndarray:
    """Rows scaled as `how` says (see the module docstring); `none` returns them unchanged."""
    how = preprocess_mode(how)
    if how == "none":
        return rows
    x = rows.astype(np.float32, copy=False)
    if how == "vgg":
        means = VGG_MEANS if x.ndim and x.shape[-1] == 3 else np.float32(VGG_MEANS.mean())
        return x - means
    if how == "inception":
        return x / np.float32(127.5) - np.float32(1.0)
    return x / np.float32(255.0)
