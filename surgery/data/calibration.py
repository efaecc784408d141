"""Calibration rows: the representative inputs a quantizer takes its ranges from, read from
`--calibration` sources (`FILE.h5`, `FILE.h5:KEY`, `FILE.npy`) and matched to a piece's inputs."""

from __future__ import annotations

import os

import numpy as np

from ..core.errors import DataError
from ..core.pieces import Piece
from .arrays import ArrayRows, hdf5_datasets

CALIBRATION_ROWS = 500  # min/max ranges from fewer rows clip the tails (the demo head: 6.5 vs 0.4 max error at 200)


def _row_sources(specs) -> list:
    """(path, key, array-like) for every dataset of every `--calibration` source: `FILE.h5`,
    `FILE.h5:KEY` or `FILE.npy`, read through `data.ArrayRows` like any other row source."""
    found = []
    for spec in specs:
        path, key = spec, None
        if not os.path.exists(spec) and ":" in spec and os.path.isfile(spec.rsplit(":", 1)[0]):
            path, key = spec.rsplit(":", 1)
        if not os.path.isfile(path):
            raise DataError(f"no such calibration file: {path}", "pass an .h5 or .npy file with --calibration")
        if path.endswith(".npy") or key is not None:
            found.append((path, key, ArrayRows(path, key, what="calibration").array))
            continue
        import h5py

        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise DataError(f"{path} is not a readable HDF5 file", "pass an .h5 or .npy file with --calibration") from e
        found.extend((path, k, f[k]) for k in hdf5_datasets(f) if k.split("/")[-1] not in ("ids", "rows_done"))
    return found


def _pick_dataset(piece: Piece, tensor, sources: list):
    """The calibration dataset for one input: by row shape, then by name; refused when ambiguous."""
    dims = tensor.shape[1:]
    fits = [s for s in sources if len(s[2].shape) == len(dims) + 1
            and all(d is None or d == n for d, n in zip(dims, s[2].shape[1:]))]
    if len(fits) > 1:
        op = tensor.op
        names = {op, op.split("/")[-1], op.replace("/", "_"), "embeddings"}
        fits = [s for s in fits if s[1] is None or s[1].split("/")[-1] in names] or fits
    where = ", ".join(f"{p}:{k}" if k else p for p, k, _ in fits[:4])
    if len(fits) != 1:
        listed = ", ".join(f"{p}:{k} {list(a.shape)}" if k else f"{p} {list(a.shape)}" for p, k, a in sources[:6])
        raise DataError(f"piece '{piece.name}' input {tensor.name} (shape {list(tensor.shape)}): "
                        + (f"{len(fits)} calibration datasets fit: {where}" if fits
                           else "no calibration dataset has rows of that shape: " + (listed or "(none)")),
                        "name one with --calibration FILE.h5:KEY (repeat --calibration for each input)")
    return fits[0]


def representative_rows(piece: Piece, specs, *, verify: int, seed: int = 0):
    """(calibration rows, held-out rows): lists of arrays, one per piece input, from `--calibration`.

    Rows are drawn by a fixed random permutation so a file sorted by class calibrates on every
    class; the verification rows are disjoint from the calibration rows."""
    sources = _row_sources(specs)
    picked = [_pick_dataset(piece, t, sources) for t in piece.inputs]
    counts = {len(a) for _, _, a in picked}
    if len(counts) != 1:
        raise DataError(f"piece '{piece.name}': its calibration datasets have different row counts "
                        f"({', '.join(str(len(a)) for _, _, a in picked)})", "give rows that belong together")
    n = counts.pop()
    if n < 2:
        raise DataError(f"piece '{piece.name}': the calibration data has {n} row(s)", "give at least two rows")
    order = np.random.default_rng(seed).permutation(n)
    half = n // 2 if verify else n
    cal = np.sort(order[:min(CALIBRATION_ROWS, half)])
    held = np.sort(order[half:][:verify])

    def rows(idx):
        return [np.asarray(a[idx]).astype(t.dtype) for (_, _, a), t in zip(picked, piece.inputs)]

    return rows(cal), (rows(held) if len(held) else None)


__all__ = ["CALIBRATION_ROWS", "representative_rows"]
