"""Fine-tune a spliced head: restore the pretrained weights, train only the var_list, evaluate on
a held-out fraction, and write one directory: `model.ckpt*` (the whole trainable graph + .meta),
`frozen.pb` (input → probabilities) and `manifest.json`.

Long runs resume: every epoch is checkpointed in a work directory beside the output
(`.DIR.finetune-work/`), keyed by the run's arguments; running the same command again continues
from the last finished epoch. With `cache_bottlenecks` the tensors at the boundary are computed
once for the dataset (cached in the work directory, keyed by content) and the head trains on them
by feeding the `placeholder_with_default`, as TF Hub's retrain.py does; the graph written is still
the whole one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

import numpy as np
from tqdm import tqdm

from . import tfcompat
from .data import DEFAULT_PREPROCESS, check_feedable, open_labels, open_rows, spec_of
from .errors import DataError, RestoreError, SurgeryError
from .files import atomic_path, write_text
from .freeze import freeze_graph, write_graph_def
from .manifest import piece, source_info, write_manifest
from .model import Model, load_model
from .restore import plan_restore
from .splice import splice
from .weights import CheckpointSource, restore_checkpoint

tf = tfcompat.tf
v1 = tf.compat.v1

CHECKPOINT = "model.ckpt"
FROZEN = "frozen.pb"


# ---------------------------------------------------------------- data

def load_dataset(path: str, x_key: str | None, y_key: str | None, *, spec: dict | None = None,
                 preprocess: str | None = None) -> tuple[np.ndarray, np.ndarray, list | None, str]:
    """Inputs, integer labels, class names (an image folder's, else None) and a content
    fingerprint, from any `data.open_rows` source: read into memory, checked."""
    with open_rows(path, x_key, spec=spec, preprocess=preprocess) as source:
        y = open_labels(path, y_key, source)
        if len(source) < 2:
            raise DataError(f"{source.where} has {len(source)} rows", "fine-tuning needs a dataset")
        if spec is not None:
            check_feedable(source, spec)
        x = source.read(0, len(source))
        return x, y, source.classes, source.fingerprint()


def check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    """Labels must be class ids the head can produce."""
    if y.min() < 0:
        raise DataError(f"labels in {where} range {int(y.min())}..{int(y.max())}: label {int(y.min())} is negative, "
                        "and class ids start at 0",
                        f"relabel the data to 0..{max(num_classes, int(y.max()) + 1) - 1} (drop or map rows marked "
                        f"{int(y.min())})")
    if y.max() >= num_classes:
        bad = int(y.max())
        raise DataError(f"labels in {where} range {int(y.min())}..{bad} but the head has {num_classes} "
                        f"classes (label {bad} does not fit)",
                        f"end the head with dense:{bad + 1}, or relabel the data to 0..{num_classes - 1}")


# ---------------------------------------------------------------- the run

@dataclasses.dataclass
class FinetuneResult:
    out: str
    names: dict
    trainable: list  # variable names in the optimizer's var_list
    history: list  # per epoch: {epoch, loss, accuracy, val_accuracy, seconds}
    initial_val_accuracy: float | None
    val_accuracy: float | None
    num_train: int
    num_val: int
    resumed_from_epoch: int
    manifest: dict


def work_dir(out: str) -> str:
    """Where per-epoch checkpoints and the bottleneck cache live while a run is unfinished."""
    out = os.path.abspath(out)
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.finetune-work")


def _file_key(path: str) -> list:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _restore_plan(model: Model, variables) -> dict:
    """{checkpoint key: variable} for the original variables, planned and checked against the
    checkpoint by `restore.plan_restore` before anything runs (absent optimizer slots are fine:
    the fine-tune's own optimizer starts fresh)."""
    if not variables:
        return {}
    plan = plan_restore(model, model.checkpoint)
    plan.check()
    keys = {e.name: e.source for e in plan.restored if not e.parts}
    partitioned = [e.name for e in plan.restored if e.parts]
    if partitioned:
        raise RestoreError(f"'{partitioned[0]}' is a partitioned variable, which finetune cannot restore yet",
                           "restore the model into a new checkpoint with `surgery restore` first")
    return {keys[v.op.name]: v for v in variables if v.op.name in keys}


def finetune(model, *, at: str, head, data: str, x_key: str | None = None, y_key: str | None = None, out: str,
             epochs: int = 5, batch_size: int = 64, lr: float = 1e-3, optimizer: str = "adam", train_scopes=(),
             val_split: float = 0.2, cache_bottlenecks: bool = False, seed: int = 0, preprocess: str | None = None,
             progress: bool = True, on_epoch=None) -> FinetuneResult:
    """Splice `head` above `at`, train it on `data`, write `out/` (see the module docstring).

    `data`: HDF5 (`x_key`/`y_key` datasets), `.npy` (`y_key` a second `.npy`), TFRecord files
    (`x_key`/`y_key` features) or an image folder (labels from its sorted sub-directories),
    scaled as `preprocess` says (`data.PREPROCESS`).

    `model`: a `Model` or any MODEL path. `on_epoch(record)` is called after each epoch.
    Everything is checked (names, data keys, labels, restore plan) before anything is written.
    """
    if epochs < 1 or batch_size < 1:
        raise SurgeryError(f"--epochs {epochs} / --batch-size {batch_size} must be at least 1", "e.g. --epochs 5")
    if not 0 <= val_split < 1:
        raise SurgeryError(f"--val-split {val_split} must be in [0, 1)", "e.g. --val-split 0.2")
    if isinstance(model, str):
        model = load_model(model)
    sp = splice(model, at, head, train_scopes=train_scopes, optimizer=optimizer, lr=lr, seed=seed)
    spec = spec_of(sp.input)
    x, y, classes, data_sha256 = load_dataset(data, x_key, y_key, spec=spec, preprocess=preprocess)
    check_labels(y, sp.num_classes, f"{data}:{y_key}" if y_key and classes is None else data)
    feed_dtype = check_feedable(x, spec, f"{data}:{x_key}" if x_key else data)
    if sp.original_variables and not model.checkpoint:
        raise SurgeryError(f"{model.path} has no checkpoint with the pretrained weights",
                           "pass the checkpoint prefix or its directory, not the .meta alone")
    plan = _restore_plan(model, sp.original_variables)

    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(len(x) * val_split))
    val_idx, train_idx = np.sort(order[:n_val]), order[n_val:]
    if len(train_idx) == 0:
        raise SurgeryError(f"--val-split {val_split} leaves no training rows", "lower --val-split")

    work = work_dir(out)
    fingerprint = {"model": _file_key(model.checkpoint + (".index" if os.path.exists(model.checkpoint + ".index") else ""))
                   if model.checkpoint else _file_key(model.path),
                   "at": sp.at.name, "head": head if isinstance(head, str) else repr(head),
                   "data": [os.path.abspath(data), data_sha256], "x": x_key,
                   "preprocess": preprocess or DEFAULT_PREPROCESS, "y": y_key, "batch_size": batch_size, "lr": lr,
                   "optimizer": optimizer, "train_scopes": list(train_scopes), "val_split": val_split,
                   "seed": seed, "cache": cache_bottlenecks}
    state = _load_state(work, fingerprint)

    graph = sp.graph
    with graph.as_default():
        all_vars = graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES)
        init = v1.global_variables_initializer()
        pretrained = v1.train.Saver(var_list=plan, name="restore_pretrained") if plan else None
        epoch_saver = v1.train.Saver(var_list=all_vars, max_to_keep=2, save_relative_paths=True, name="epoch_saver")
        final_saver = v1.train.Saver(var_list=all_vars, max_to_keep=1, save_relative_paths=True, name="saver")
    config = v1.ConfigProto()
    if cache_bottlenecks and sp.opened_variables:
        # Grappler's constant folding (with its dependency optimizer) makes the gradient of an opened
        # layer wait on the placeholder *under* a fed PlaceholderWithDefault ("must feed 'input'").
        from tensorflow.core.protobuf import rewriter_config_pb2

        config.graph_options.rewrite_options.constant_folding = rewriter_config_pb2.RewriterConfig.OFF
    with graph.as_default(), v1.Session(graph=graph, config=config) as sess:  # Saver.restore is eager outside
        if state:
            epoch_saver.restore(sess, os.path.join(work, state["checkpoint"]))
        else:
            os.makedirs(work, exist_ok=True)
            sess.run(init)
            if pretrained:
                restore_checkpoint(pretrained, sess, model.checkpoint)
        cache = None
        if cache_bottlenecks:
            cache = _bottlenecks(sess, sp, x, feed_dtype, batch_size, work, fingerprint, progress)

        def feed(idx, training=False):
            d = {sp.labels: y[idx]}
            if cache is not None:
                d.update({b: c[idx] for b, c in zip(sp.bottlenecks, cache)})
            else:
                d[sp.input] = x[idx].astype(feed_dtype, copy=False)
            if training:
                d[sp.is_training] = True
            return d

        def evaluate(idx, desc):
            if len(idx) == 0:
                return None
            correct = 0
            for i in tqdm(range(0, len(idx), batch_size), desc=desc, unit="batch", leave=False, disable=not progress):
                b = idx[i:i + batch_size]
                probs = sess.run(sp.probabilities, feed(b))
                correct += int((probs.argmax(1) == y[b]).sum())
            return correct / len(idx)

        if state:
            history, initial, start = state["history"], state["initial_val_accuracy"], state["epoch"]
        else:
            history, initial, start = [], evaluate(val_idx, "evaluate (before)"), 0
            _save_state(work, fingerprint, 0, None, history, initial)
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            perm = np.random.default_rng([seed, epoch]).permutation(train_idx)
            bar = tqdm(range(0, len(perm), batch_size), desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                       leave=False, disable=not progress)
            total_loss = total_correct = seen = 0
            for i in bar:
                b = perm[i:i + batch_size]
                _, loss, acc = sess.run([sp.train_op, sp.loss, sp.accuracy], feed(b, training=True))
                total_loss += float(loss) * len(b)
                total_correct += float(acc) * len(b)
                seen += len(b)
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{total_correct / seen:.3f}", refresh=False)
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "loss": total_loss / seen, "accuracy": total_correct / seen,
                      "val_accuracy": evaluate(val_idx, f"evaluate epoch {epoch + 1}"), "seconds": seconds}
            history.append(record)
            prefix = epoch_saver.save(sess, os.path.join(work, "epoch.ckpt"), global_step=epoch + 1,
                                      write_meta_graph=False)
            _save_state(work, fingerprint, epoch + 1, os.path.basename(prefix), history, initial)
            if on_epoch:
                on_epoch(record)

        names = sp.names()
        trainable = [v.op.name for v in sp.var_list]
        with atomic_path(out, directory=True) as tmp:
            prefix = final_saver.save(sess, os.path.join(tmp, CHECKPOINT), write_meta_graph=True)
            frozen = freeze_graph(graph, [sp.probabilities], read_variable=CheckpointSource(prefix).read)
            write_graph_def(frozen.graph_def, os.path.join(tmp, FROZEN))
            final = history[-1]["val_accuracy"] if history else initial
            manifest = write_manifest(
                tmp, source=source_info(model), pieces={"model": piece(FROZEN, frozen)}, checkpoint=CHECKPOINT,
                finetune={"at": sp.at.name, "head": head if isinstance(head, str) else repr(head),
                          "boundary": sp.boundary, "names": names, "trainable": trainable,
                          "num_classes": sp.num_classes, "classes": classes, "data": os.path.abspath(data),
                          "x": x_key, "y": y_key, "preprocess": preprocess or DEFAULT_PREPROCESS,
                          "epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
                          "val_split": val_split, "seed": seed, "cache_bottlenecks": cache_bottlenecks,
                          "initial_val_accuracy": initial, "val_accuracy": final, "history": history})
    shutil.rmtree(work, ignore_errors=True)
    return FinetuneResult(out=os.path.abspath(out), names=names, trainable=trainable, history=history,
                          initial_val_accuracy=initial, val_accuracy=final, num_train=len(train_idx),
                          num_val=len(val_idx), resumed_from_epoch=start, manifest=manifest)


def _load_state(work: str, fingerprint: dict) -> dict | None:
    """The saved progress of an unfinished run with the same arguments, or None (fresh start)."""
    try:
        with open(os.path.join(work, "state.json")) as f:
            state = json.load(f)
    except (OSError, ValueError):
        state = None
    if state and state.get("fingerprint") == _digest(fingerprint) and state.get("checkpoint") \
            and os.path.exists(os.path.join(work, state["checkpoint"] + ".index")):
        return state
    if state and state.get("fingerprint") == _digest(fingerprint) and state.get("epoch") == 0:
        return None  # evaluated but not a single epoch done: start over, keep the cache
    if os.path.isdir(work) and not (state and state.get("fingerprint") == _digest(fingerprint)):
        shutil.rmtree(work, ignore_errors=True)  # another run's leftovers
    return None


def _save_state(work, fingerprint, epoch, checkpoint, history, initial) -> None:
    write_text(os.path.join(work, "state.json"), json.dumps(
        {"fingerprint": _digest(fingerprint), "epoch": epoch, "checkpoint": checkpoint, "history": history,
         "initial_val_accuracy": initial}, indent=2))


def _bottlenecks(sess, sp, x, feed_dtype, batch_size, work, fingerprint, progress) -> list:
    """The boundary tensors for every row, computed once in batches (below the boundary nothing
    trains, so they never change) and cached in the work directory, keyed by content."""
    key = _digest({"model": fingerprint["model"], "data": fingerprint["data"], "x": fingerprint["x"],
                   "preprocess": fingerprint["preprocess"], "boundary": sp.boundary})
    path = os.path.join(work, f"bottlenecks-{key}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return [z[f"b{k}"] for k in range(len(sp.bottlenecks))]
    parts = [[] for _ in sp.bottlenecks]
    for i in tqdm(range(0, len(x), batch_size), desc="cache bottlenecks", unit="batch", leave=False,
                  disable=not progress):
        values = sess.run(sp.bottlenecks, {sp.input: x[i:i + batch_size].astype(feed_dtype, copy=False)})
        for p, v in zip(parts, values):
            p.append(v)
    cache = [np.concatenate(p) for p in parts]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{f"b{k}": c for k, c in enumerate(cache)})
    return cache


__all__ = ["FinetuneResult", "finetune", "load_dataset", "check_labels", "work_dir"]
