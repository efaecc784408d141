"""Serve the online piece: answer a request by ids plus live inputs, with the offline half precomputed.

This is the per-request path of a split model: the heavy offline piece ran once over every item
(`surgery precompute`), so a request only looks up the stored rows for its ids and runs the small
online piece on them together with the live inputs (the user's features, say):

    server = OnlineServer("pieces/", "items.h5")
    scores = server.score(candidate_ids, user_features)   # one user row is broadcast to every id

Each precomputed dataset feeds the online placeholder that replaced its cut tensor (the manifest's
`cut` entries, or a placeholder of the same name); every other online input is live.
"""

from __future__ import annotations

import os

import numpy as np

from ..core import tfcompat
from ..core.errors import DataError, SurgeryError
from ..core.pieces import open_pieces
from ..core.weights import restore_checkpoint, saver_for
from .precompute import PROGRESS

tf = tfcompat.tf


def _tensor_name(name: str) -> str:
    return name if ":" in name else name + ":0"


def _open_precomputed(path: str):
    """The precomputed rows: an HDF5 file, or the Parquet directory of `precompute --runner spark`."""
    if os.path.isdir(path):
        from .spark import ParquetFile

        return ParquetFile(path)
    import h5py

    return h5py.File(path, "r")


class OnlineServer:
    """The online piece of a split directory plus a precomputed HDF5 (or Parquet directory), ready to answer requests.

    `preload=True` reads the precomputed rows into memory once (fastest per request);
    `preload=False` reads each request's rows from the file (memory stays small).
    """

    def __init__(self, split_dir, precomputed: str, *, piece: str = "online", preload: bool = True):
        opened = open_pieces(split_dir)  # a path or an `open_pieces` result
        online = opened.piece(piece)
        model = online.load()
        self.graph = model.graph
        self.outputs = [o.name for o in online.outputs]
        try:
            self._file = _open_precomputed(precomputed)
        except OSError as e:
            raise DataError(f"{precomputed} is not a readable HDF5 file", "pass the file `surgery precompute` wrote") from e
        try:
            self._check_provenance(opened, precomputed)
            self._feeds = self._map_datasets(opened.manifest, online, precomputed)  # {dataset: online input name}
            fed = set(self._feeds.values())
            self.live_inputs = [i.name for i in online.inputs if i.name not in fed]
            self._rows = {name: (self._file[name][()] if preload else self._file[name]) for name in self._feeds}
            self._index = self._build_index()
        except BaseException:
            self._file.close()
            raise
        self.session = tf.compat.v1.Session(graph=self.graph)
        if model.checkpoint and model.variables():  # a SavedModel piece keeps its variables
            with self.graph.as_default():
                restore_checkpoint(saver_for(model), self.session, model.checkpoint)
        feed_names = list(self._feeds.values()) + self.live_inputs
        self._call = self.session.make_callable([self.graph.get_tensor_by_name(n) for n in self.outputs],
                                                feed_list=[self.graph.get_tensor_by_name(n) for n in feed_names])

    def _check_provenance(self, opened, precomputed):
        """Refuse rows computed by another offline piece: its graph hash is recorded in the file."""
        recorded = self._file.attrs.get("graph_sha256")
        if PROGRESS in self._file:
            raise DataError(f"{precomputed} is an unfinished precompute", "run `surgery precompute` again to finish it")
        if recorded is None or "offline" not in opened.pieces:
            return
        if opened.pieces["offline"].sha256 != recorded:
            raise DataError(f"{precomputed} was computed by another offline piece than {opened.path}'s",
                            "precompute again with this split directory")

    def _map_datasets(self, manifest, online, precomputed) -> dict:
        online_inputs = {i.name for i in online.inputs}
        by_cut = {_tensor_name(c.get("offline_output", c["tensor"])): _tensor_name(c["placeholder"])
                  for c in manifest.get("cut", []) if isinstance(c, dict) and "tensor" in c and "placeholder" in c}
        feeds = {}
        for name, ds in self._file.items():
            if name == "ids" or not hasattr(ds, "shape"):
                continue
            tensor = ds.attrs.get("tensor", "")
            target = by_cut.get(tensor, tensor)
            if target in online_inputs:
                feeds[name] = target
        if not feeds:
            raise DataError(f"{precomputed} holds no dataset for any input of the online piece "
                            f"({', '.join(sorted(online_inputs))})",
                            "precompute the cut tensors of this split (its offline piece's outputs)")
        return feeds

    def _build_index(self):
        """Sorted ids and the row of each, for vectorised lookup (no per-id Python)."""
        if "ids" not in self._file:
            return None
        ids = self._file["ids"][()]
        if ids.dtype == object:
            ids = np.array([i.decode() if isinstance(i, bytes) else i for i in ids])
        elif ids.dtype.kind == "S":
            ids = ids.astype(str)
        order = np.argsort(ids, kind="stable")
        return ids[order], order

    def rows_for(self, ids) -> np.ndarray:
        """Row numbers of `ids` in the precomputed file; unknown ids are an error naming them."""
        ids = np.asarray(ids)
        if self._index is None:
            rows = ids.astype(np.int64)
            n = len(next(iter(self._rows.values())))
            bad = ids[(rows < 0) | (rows >= n)]
        else:
            sorted_ids, order = self._index
            if ids.dtype.kind in "SO":
                ids = np.array([i.decode() if isinstance(i, bytes) else i for i in ids.ravel()])
            pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
            found = sorted_ids[pos] == ids
            bad = ids[~found]
            rows = order[pos]
        if len(bad):
            raise SurgeryError(f"{len(bad)} unknown id(s): " + ", ".join(map(str, bad[:5])) + ("…" if len(bad) > 5 else ""),
                               "ask only for ids that were precomputed")
        return rows

    def lookup(self, ids) -> dict:
        """{dataset: its rows for `ids`}, in the order of `ids`."""
        rows = self.rows_for(ids)
        out = {}
        for name, data in self._rows.items():
            if isinstance(data, np.ndarray):
                out[name] = data[rows]
            else:  # h5py wants increasing, unique indices
                unique, inverse = np.unique(rows, return_inverse=True)
                out[name] = data[unique][inverse]
        return out

    def score(self, ids, *live, **named_live):
        """Run the online piece for `ids` with the live inputs (positional in `live_inputs` order,
        or by name). A live input with one row is broadcast to every id. Returns the output array,
        or a list of arrays when the piece has several outputs."""
        if len(live) + len(named_live) != len(self.live_inputs):
            raise SurgeryError(f"the online piece needs {len(self.live_inputs)} live input(s) "
                               f"({', '.join(self.live_inputs) or 'none'}), got {len(live) + len(named_live)}",
                               "pass them positionally in that order or by name")
        values = dict(zip(self.live_inputs, live))
        for name, value in named_live.items():
            full = next((n for n in self.live_inputs if n in (name, _tensor_name(name))), None)
            if full is None:
                raise SurgeryError(f"'{name}' is not a live input of the online piece",
                                   "live inputs: " + (", ".join(self.live_inputs) or "none"))
            values[full] = value
        precomputed = self.lookup(ids)
        n = len(np.atleast_1d(np.asarray(ids)))
        feeds = [precomputed[name] for name in self._feeds]
        for name in self.live_inputs:
            v = np.asarray(values[name])
            if v.ndim >= 1 and v.shape[0] == 1 and n != 1:
                v = np.repeat(v, n, axis=0)
            feeds.append(v)
        try:
            results = self._call(*feeds)
        except (tf.errors.OpError, ValueError) as e:
            msg = (getattr(e, "message", None) or str(e)).strip().splitlines()[0][:200]
            raise DataError(f"the online piece failed on this request: {msg}",
                            "check the live inputs' shapes and dtypes against the online piece's inputs") from e
        return results[0] if len(results) == 1 else results

    __call__ = score

    def close(self):
        self.session.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["OnlineServer"]
