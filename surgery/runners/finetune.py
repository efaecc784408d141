"""Fine-tune a spliced head: restore the pretrained weights, train only the var_list, evaluate on
a held-out fraction, and write one directory: `model.ckpt*` (the whole trainable graph + .meta),
`frozen.pb` (input → probabilities), `manifest.json` and, with matplotlib, `history.png`.

Long runs resume: progress is checkpointed (at most every 30 s, and after the last epoch) in a
work directory beside the output (`.DIR.finetune-work/`), keyed by the run's arguments; running
the same command again continues from the last save. Only what changes is saved there (head,
opened layers, optimizer slots, step): the frozen backbone always comes from the pretrained
checkpoint. With `cache_bottlenecks` the tensors at the boundary are computed once, streaming
the data in batches into an HDF5 file in the work directory (keyed by content), and the head
trains on them by feeding the `placeholder_with_default`, as TF Hub's retrain.py does; with no
layer opened below, the backbone's weights are then never loaded for training at all. The output
checkpoint and `frozen.pb` are written tensor by tensor (`weights.write_checkpoint`,
`freeze.write_graph_def`): memory holds the backbone at most once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import shutil
import time

import numpy as np
from tqdm import tqdm

from ..core import graph as g
from ..core import tfcompat
from ..core.errors import DataError, RestoreError, SurgeryError
from ..core.files import atomic_path, write_text
from ..core.manifest import source_info, write_manifest
from ..core.model import Model, load_model
from ..core.pieces import TensorSpec
from ..core.weights import CheckpointCopy, CheckpointSource, restore_checkpoint, write_checkpoint
from ..data import DEFAULT_PREPROCESS, check_feedable, open_labels, open_rows
from ..exporters.export import export_model
from ..passes.freeze import freeze_graph, write_graph_def
from ..passes.restore import plan_restore
from ..passes.splice import splice

tf = tfcompat.tf
v1 = tf.compat.v1

CHECKPOINT = "model.ckpt"
FROZEN = "frozen.pb"
SAVED_MODEL = "saved_model"
HISTORY_PNG = "history.png"
KERAS_MODEL = "model.keras"  # for a Keras MODEL: the pretrained layers and the trained head, in Keras
SAVE_SECONDS = 30.0  # at most this often, progress is saved for a resume (and after the last epoch)


# ---------------------------------------------------------------- data

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
    fixed: list = dataclasses.field(default_factory=list)  # matched by train_scopes, not trainable: unchanged


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
    # The key as stored: a TF2 object key keeps its `/.ATTRIBUTES/VARIABLE_VALUE` suffix there.
    keys = {e.name: plan.source.tensors[e.source].stored or e.source for e in plan.restored if not e.parts}
    partitioned = [e.name for e in plan.restored if e.parts]
    if partitioned:
        raise RestoreError(f"'{partitioned[0]}' is a partitioned variable, which finetune cannot restore yet",
                           "restore the model into a new checkpoint with `surgery restore` first")
    return {keys[v.op.name]: v for v in variables if v.op.name in keys}


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """What a fine-tuning run is asked to do. One record serves twice: its fields (less `epochs`,
    which a rerun may raise to train on) key the resume state, and they are the manifest's record."""

    at: str
    head: object  # a --head spec, or a list of splice layers
    data: str
    x_key: str | None = None
    y_key: str | None = None
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    train_scopes: tuple = ()
    val_split: float = 0.2
    cache_bottlenecks: bool = False
    seed: int = 0
    preprocess: str | None = None
    tensorboard: str | None = None

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise SurgeryError(f"--epochs {self.epochs} / --batch-size {self.batch_size} must be at least 1",
                               "e.g. --epochs 5")
        if not 0 <= self.val_split < 1:
            raise SurgeryError(f"--val-split {self.val_split} must be in [0, 1)", "e.g. --val-split 0.2")
        object.__setattr__(self, "train_scopes", tuple(self.train_scopes))

    @property
    def head_text(self) -> str:
        return self.head if isinstance(self.head, str) else repr(self.head)

    def fingerprint(self, model_key: list, at_name: str, data_sha256: str) -> dict:
        """What decides the numbers an epoch computes: a saved state with another is not resumed."""
        return {"model": model_key, "at": at_name, "head": self.head_text,
                "data": [os.path.abspath(self.data), data_sha256], "x": self.x_key,
                "preprocess": self.preprocess or DEFAULT_PREPROCESS, "y": self.y_key, "batch_size": self.batch_size,
                "lr": self.lr, "optimizer": self.optimizer, "train_scopes": list(self.train_scopes),
                "val_split": self.val_split, "seed": self.seed, "cache": self.cache_bottlenecks}

    def record(self) -> dict:
        """The run's arguments as the manifest keeps them."""
        return {"data": os.path.abspath(self.data), "x": self.x_key, "y": self.y_key,
                "preprocess": self.preprocess or DEFAULT_PREPROCESS, "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "optimizer": self.optimizer,
                "val_split": self.val_split, "seed": self.seed, "cache_bottlenecks": self.cache_bottlenecks,
                "tensorboard": os.path.abspath(self.tensorboard) if self.tensorboard else None}


@dataclasses.dataclass
class _Run:
    """A prepared run: the spliced graph, its rows and labels, the train/validation split, the
    savers, and where its progress is kept."""

    model: Model
    config: FinetuneConfig
    sp: object  # splice.Splice
    x: np.ndarray | None  # the rows in memory, when not training on cached bottlenecks
    y: np.ndarray
    classes: list | None
    train_idx: np.ndarray
    val_idx: np.ndarray
    pretrained: dict  # {checkpoint key: variable} of the backbone below the boundary
    state_vars: list  # everything else: what an epoch changes
    savers: dict  # restorer, init_state, state_saver, final_saver
    session_config: object
    work: str
    fingerprint: dict
    state: dict | None
    cache: _Cache | None
    head_only: bool

    def open_session(self, with_backbone: bool):
        graph, savers = self.sp.graph, self.savers
        sess = v1.Session(graph=graph, config=self.session_config)
        with graph.as_default():  # Saver.restore is eager outside
            sess.run(savers["init_state"])
            if with_backbone and savers["restorer"]:  # assigned into uninitialised variables: moved, not copied
                restore_checkpoint(savers["restorer"], sess, self.model.checkpoint)
            if self.state:
                restore_checkpoint(savers["state_saver"], sess, os.path.join(self.work, self.state["checkpoint"]))
        return sess


def finetune(model, *, out: str, config: FinetuneConfig | None = None, save_seconds: float = SAVE_SECONDS,
             cache_memory: int | None = None, progress: bool = True, on_epoch=None, **options) -> FinetuneResult:
    """Splice a new head above `at` behind a `stop_gradient`, train it on `data`, and write `out/`:
    `model.ckpt*`, `frozen.pb`, `saved_model/`, `model.keras` for a Keras MODEL, `manifest.json`.

    Everything (names, data keys, labels, the restore plan) is checked before anything is
    written; an interrupted run resumes from its last saved epoch.

    Args:
        model: a `Model` or any MODEL path.
        out: the directory to write, all or nothing.
        config: a `FinetuneConfig`, or its fields as keyword arguments: `at`, `head` (a spec such
            as "dense:5"), `data` (HDF5, `.npy`, TFRecord or an image folder), `x_key`, `y_key`,
            `epochs`, `batch_size`, `lr`, `optimizer`, `train_scopes`, `val_split`,
            `cache_bottlenecks`, `seed`, `preprocess`, `tensorboard`.
        save_seconds: progress is saved at most this often (and after the last epoch).
        cache_memory: bytes of bottleneck cache held in memory before it is read from disk.
        progress: show progress bars.
        on_epoch: called with each epoch's record (loss, accuracies, seconds).
        **options: the `FinetuneConfig` fields, when `config` is not given.

    Returns:
        A `FinetuneResult`: `names` (what to feed and fetch), `trainable`, `history`, accuracies.

    Raises:
        SurgeryError: a bad name, data key, label or head spec; a restore plan that does not fit.

    Examples:
        >>> result = surgery.finetune(model, at="fc7", head="dense:5", data="data/shapes.h5",
        ...                           x_key="target/x", y_key="target/y", out="tuned/")
        >>> result.val_accuracy
    """
    config = config or FinetuneConfig(**options)
    run = _prepare(load_model(model) if isinstance(model, str) else model, config, out, cache_memory, progress)
    history, initial, start, trained = _train(run, save_seconds, progress, on_epoch)
    return _write_output(run, out, history, initial, start, trained, progress)


def _prepare(model: Model, config: FinetuneConfig, out: str, cache_memory: int | None, progress: bool) -> _Run:
    """Splice, open and check the data, plan the restore, split the rows, build the savers, find a
    saved state to resume, and cache the bottlenecks when asked: all before training starts."""
    sp = splice(model, config.at, config.head, train_scopes=config.train_scopes, optimizer=config.optimizer,
                lr=config.lr, seed=config.seed)
    spec = TensorSpec.of(sp.input)
    data = config.data
    with open_rows(data, config.x_key, spec=spec, preprocess=config.preprocess) as source:
        y = open_labels(data, config.y_key, source)
        if len(source) < 2:
            raise DataError(f"{source.where} has {len(source)} rows", "fine-tuning needs a dataset")
        feed_dtype = check_feedable(source, spec)
        # through the graph the rows are fed in shuffled batches from memory; a cached run only streams them once
        x = None if config.cache_bottlenecks else source.read(0, len(source)).astype(feed_dtype, copy=False)
        classes, data_sha256 = source.classes, source.fingerprint()
        check_labels(y, sp.num_classes, f"{data}:{config.y_key}" if config.y_key and classes is None else data)
        if sp.original_variables and not model.checkpoint:
            raise SurgeryError(f"{model.path} has no checkpoint with the pretrained weights",
                               "pass the checkpoint prefix or its directory, not the .meta alone")
        plan = _restore_plan(model, sp.original_variables)

        order = np.random.default_rng(config.seed).permutation(len(y))
        n_val = int(round(len(y) * config.val_split))
        val_idx, train_idx = np.sort(order[:n_val]), order[n_val:]
        if len(train_idx) == 0:
            raise SurgeryError(f"--val-split {config.val_split} leaves no training rows", "lower --val-split")

        work = work_dir(out)
        model_key = _file_key(model.checkpoint + (".index" if os.path.exists(model.checkpoint + ".index") else "")) \
            if model.checkpoint else _file_key(model.path)
        fingerprint = config.fingerprint(model_key, sp.at.name, data_sha256)
        state = _load_state(work, fingerprint)

        # The backbone below the boundary never changes: it comes from the pretrained checkpoint, at
        # the start, on resume and into the output. Epoch state is everything else (head, opened
        # layers, optimizer slots, step, and any variable the checkpoint does not hold).
        frozen = {v.op.name for v in sp.original_variables} - {v.op.name for v in sp.opened_variables}
        pretrained = {key: v for key, v in plan.items() if v.op.name in frozen}
        restored = {v.op.name for v in pretrained.values()}
        state_vars = [v for v in sp.graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES) if v.op.name not in restored]
        with sp.graph.as_default():
            savers = {"restorer": v1.train.Saver(var_list=pretrained, name="restore_pretrained") if pretrained else None,
                      "init_state": v1.variables_initializer(state_vars),
                      "state_saver": v1.train.Saver(var_list=state_vars, max_to_keep=2, save_relative_paths=True,
                                                    name="epoch_saver"),
                      "final_saver": v1.train.Saver(max_to_keep=1, save_relative_paths=True, name="saver")}
        session_config = v1.ConfigProto()
        if config.cache_bottlenecks and sp.opened_variables:
            # Grappler's constant folding (with its dependency optimizer) makes the gradient of an opened
            # layer wait on the placeholder *under* a fed PlaceholderWithDefault ("must feed 'input'").
            from tensorflow.core.protobuf import rewriter_config_pb2

            session_config.graph_options.rewrite_options.constant_folding = rewriter_config_pb2.RewriterConfig.OFF
        run = _Run(model, config, sp, x, y, classes, train_idx, val_idx, pretrained, state_vars, savers,
                   session_config, work, fingerprint, state, None,
                   head_only=config.cache_bottlenecks and not sp.opened_variables)

        fresh_work = not os.path.isdir(work)
        os.makedirs(work, exist_ok=True)
        try:
            if config.cache_bottlenecks:
                path = _cache_path(sp, work, fingerprint)
                if not os.path.exists(path):  # eager outside the graph: images decode
                    _write_bottlenecks(run.open_session(True), sp, source, feed_dtype, path, progress)
                run.cache = _Cache(path, len(sp.bottlenecks), cache_memory)
        except SurgeryError:
            if fresh_work:  # bad data found while streaming it: leave nothing behind
                shutil.rmtree(work, ignore_errors=True)
            raise
    return run


def _train(run: _Run, save_seconds: float, progress: bool, on_epoch) -> tuple:
    """The epochs, from a fresh start or the saved state: (history, initial val accuracy, first
    epoch run, {variable: trained value})."""
    sp, cache, y, config = run.sp, run.cache, run.y, run.config
    batch_size, epochs = config.batch_size, config.epochs
    with sp.graph.as_default(), contextlib.ExitStack() as stack:  # Saver.save is eager outside
        sess = stack.enter_context(contextlib.closing(run.open_session(not run.head_only)))
        if cache is not None:
            stack.callback(cache.close)
        train_step = sess.make_callable([sp.train_op, sp.loss, sp.accuracy],
                                        feed_list=[sp.labels, sp.is_training, *_fed(sp, cache)])
        eval_step = sess.make_callable([sp.loss, sp.probabilities], feed_list=[sp.labels, *_fed(sp, cache)])

        def inputs(idx):
            return cache.read(idx) if cache is not None else [run.x[idx]]

        def evaluate(idx, desc):
            """(accuracy, mean loss) on rows `idx`, or (None, None)."""
            if len(idx) == 0:
                return None, None
            correct = total = 0.0
            for i in tqdm(range(0, len(idx), batch_size), desc=desc, unit="batch", leave=False, disable=not progress):
                b = idx[i:i + batch_size]
                loss, probs = eval_step(y[b], *inputs(b))
                correct += int((probs.argmax(1) == y[b]).sum())
                total += float(loss) * len(b)
            return correct / len(idx), total / len(idx)

        if run.state:
            history, initial, start = run.state["history"], run.state["initial_val_accuracy"], run.state["epoch"]
        else:
            history, start = [], 0
            initial = evaluate(run.val_idx, "evaluate (before)")[0]
            _save_state(run.work, run.fingerprint, 0, None, history, initial)
        writer = _summary_writer(config.tensorboard, sp.graph, start) if config.tensorboard else None
        if writer is not None:
            stack.callback(writer.close)
        last_save = time.monotonic()
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            perm = np.random.default_rng([config.seed, epoch]).permutation(run.train_idx)
            bar = tqdm(range(0, len(perm), batch_size), desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                       leave=False, disable=not progress)
            total_loss = total_correct = seen = 0
            for i in bar:
                b = np.sort(perm[i:i + batch_size])  # a batch is a set; sorted, it reads from disk in one sweep
                _, loss, acc = train_step(y[b], True, *inputs(b))
                total_loss += float(loss) * len(b)
                total_correct += float(acc) * len(b)
                seen += len(b)
                if progress:
                    bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{total_correct / seen:.3f}", refresh=False)
            val_accuracy, val_loss = evaluate(run.val_idx, f"evaluate epoch {epoch + 1}")
            record = {"epoch": epoch + 1, "loss": total_loss / seen, "accuracy": total_correct / seen,
                      "val_loss": val_loss, "val_accuracy": val_accuracy, "seconds": time.perf_counter() - t0}
            history.append(record)
            if writer is not None:
                _write_scalars(writer, record, config.lr)
            if epoch + 1 == epochs or time.monotonic() - last_save >= save_seconds:
                prefix = run.savers["state_saver"].save(sess, os.path.join(run.work, "epoch.ckpt"),
                                                        global_step=epoch + 1, write_meta_graph=False)
                _save_state(run.work, run.fingerprint, epoch + 1, os.path.basename(prefix), history, initial)
                last_save = time.monotonic()
            if on_epoch:
                on_epoch(record)
        trained = dict(zip([v.op.name for v in run.state_vars], sess.run(run.state_vars)))
    return history, initial, start, trained


def _write_output(run: _Run, out: str, history: list, initial, start: int, trained: dict,
                  progress: bool) -> FinetuneResult:
    """`out/`, all or nothing: the checkpoint, `frozen.pb`, the SavedModel, the curves and the
    manifest; then the work directory goes."""
    sp, model = run.sp, run.model
    names = sp.names()
    trainable = [v.op.name for v in sp.var_list]
    final = history[-1]["val_accuracy"] if history else initial
    with atomic_path(out, directory=True) as tmp:
        prefix = _write_final_checkpoint(sp.graph, run.savers["final_saver"], os.path.join(tmp, CHECKPOINT), trained,
                                         run.pretrained, model.checkpoint, progress)
        frozen_graph = freeze_graph(sp.graph, [sp.probabilities], read_variable=CheckpointSource(prefix).read)
        write_graph_def(frozen_graph, os.path.join(tmp, FROZEN))
        # For TF Serving / tf.saved_model.load: the checkpoint just written, pruned to the
        # probabilities, its variables copied tensor by tensor (the backbone is never held twice).
        export_model(load_model(prefix), os.path.join(tmp, SAVED_MODEL), outputs=[sp.probabilities.name])
        plot_history(history, os.path.join(tmp, HISTORY_PNG))
        keras_file = _write_keras_model(run, prefix, os.path.join(tmp, FROZEN), tmp)
        manifest = write_manifest(
            tmp, source=source_info(model), pieces={"model": frozen_graph.manifest_entry(FROZEN)}, checkpoint=CHECKPOINT,
            finetune={"at": sp.at.name, "head": run.config.head_text, "boundary": sp.boundary, "names": names,
                      "trainable": trainable, "fixed": list(sp.fixed_variables), "num_classes": sp.num_classes,
                      "classes": run.classes, **run.config.record(), **keras_file,
                      "initial_val_accuracy": initial, "val_accuracy": final, "history": history})
    shutil.rmtree(run.work, ignore_errors=True)
    return FinetuneResult(out=os.path.abspath(out), names=names, trainable=trainable, history=history,
                          initial_val_accuracy=initial, val_accuracy=final, num_train=len(run.train_idx),
                          num_val=len(run.val_idx), resumed_from_epoch=start, manifest=manifest,
                          fixed=list(sp.fixed_variables))


def _write_keras_model(run: _Run, prefix: str, frozen: str, directory: str) -> dict:
    """For a Keras MODEL, `model.keras`: `surgery.keras.head` above the splice layer, the trained
    values loaded from `prefix`, checked against `frozen` (the same answers to 1e-5 on random rows)
    before it is written. Returns the manifest's record: `{"keras_model": FILE}`, or
    `{"keras_model": None, "keras_note": why}` where the splice point is no Keras layer."""
    if run.model.keras_model is None:
        return {}
    from ..passes.keras_split import head, load_checkpoint_weights, random_inputs
    from ..passes.split import import_piece

    layer = run.sp.at.name.split(":")[0]
    try:
        model = head(run.model.keras_model, at=layer, head=run.config.head, train_scopes=run.config.train_scopes)
    except SurgeryError as e:
        return {"keras_model": None, "keras_note": f"no model.keras: {e.message}"}
    load_checkpoint_weights(model, prefix)
    x = random_inputs(model, 4)
    with v1.Session(graph=import_piece(frozen)) as sess:
        expected = sess.run(run.sp.probabilities.name, {run.sp.input.name: x[0]})
    got = np.asarray(model(x if len(x) > 1 else x[0]))
    diff = float(np.max(np.abs(got - expected)))
    if diff > 1e-5:
        raise SurgeryError(f"the Keras twin of the fine-tuned model answers {diff:.3g} away from frozen.pb",
                           "please report this model; nothing was written")
    model.save(os.path.join(directory, KERAS_MODEL))
    return {"keras_model": KERAS_MODEL, "keras_trainable": [layer.name for layer in model.layers if layer.trainable
                                                            and layer.weights]}


def _fed(sp, cache) -> list:
    """The tensors the rows go into: the bottlenecks when cached, else the model's input."""
    return list(sp.bottlenecks) if cache is not None else [sp.input]


def _write_final_checkpoint(graph, saver, prefix, trained: dict, pretrained: dict, source_prefix, progress) -> str:
    """The whole trainable graph's checkpoint (+ `.meta` and the `checkpoint` file), written
    streaming: trained values from memory, the backbone copied tensor by tensor from the
    pretrained checkpoint inside TensorFlow (bit for bit the pretrained one, never all in memory)."""
    source = CheckpointSource(source_prefix) if pretrained else None
    by_var = {v.op.name: key for key, v in pretrained.items()}
    # A V2 checkpoint holding just the backbone, under the graph's names, goes in whole, unread.
    base = source_prefix if source is not None and os.path.exists(source_prefix + ".index") and \
        set(source.stored) == set(by_var) and all(k == n for n, k in by_var.items()) else None
    tensors = []
    for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES):
        name = v.op.name
        if name in trained:
            tensors.append((name, v.dtype.base_dtype, lambda n=name: trained[n]))
        elif base is None:
            tensors.append((name, v.dtype.base_dtype, CheckpointCopy.of(source, by_var[name])))
    write_checkpoint(prefix, tensors, base=base, progress=progress)
    with graph.as_default():
        saver.export_meta_graph(prefix + ".meta")
    name = os.path.basename(prefix)
    write_text(os.path.join(os.path.dirname(prefix), "checkpoint"),
               f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n')
    return prefix


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


def _cache_path(sp, work: str, fingerprint: dict) -> str:
    """The bottleneck cache's file, keyed by content: model, data, preprocessing, boundary."""
    key = _digest({"model": fingerprint["model"], "data": fingerprint["data"], "x": fingerprint["x"],
                   "preprocess": fingerprint["preprocess"], "boundary": sp.boundary})
    return os.path.join(work, f"bottlenecks-{key}.h5")


def _write_bottlenecks(sess, sp, source, feed_dtype, path: str, progress: bool) -> None:
    """The boundary tensors for every row (below the boundary nothing trains, so they never
    change), computed batch by batch as the rows stream from `source` and appended to an HDF5
    file, renamed into place when complete: neither the data nor the cache is ever whole in
    memory. Batches hold about ACTIVATION_BYTES of the backbone's largest activation. Closes
    `sess` (the only session holding the backbone) and drops it, so its memory goes back."""
    import h5py

    n = len(source)
    rows = _inference_rows(sp)
    try:
        run = sess.make_callable(sp.bottlenecks, feed_list=[sp.input])
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            datasets = None
            for i in tqdm(range(0, n, rows), desc="cache bottlenecks", unit="batch", leave=False,
                          disable=not progress, delay=0.5):  # (delayed: bad data found at once leaves one line)
                values = run(source.read(i, i + rows).astype(feed_dtype, copy=False))
                if datasets is None:
                    datasets = [f.create_dataset(f"b{k}", (n, *v.shape[1:]), v.dtype,
                                                 chunks=(min(n, max(1, (1 << 20) // max(1, v[0].nbytes))),
                                                         *v.shape[1:]))
                                for k, v in enumerate(values)]
                for ds, v in zip(datasets, values):
                    ds[i:i + len(v)] = v
        del run
    finally:
        sess.close()
        del sess
        gc.collect()


ACTIVATION_BYTES = 64 << 20


def _inference_rows(sp) -> int:
    """Rows per batch of the bottleneck pass: the largest tensor between the input and the
    boundary (static shapes) times four stays under ACTIVATION_BYTES, so a 224-pixel VGG
    streams an image at a time and a small network thousands."""
    graph = sp.graph
    largest = 1
    for name in g.ancestors(graph, sp.boundary, control=False):
        for t in graph.get_operation_by_name(name).outputs:  # batch-shaped ones: [None, known...]
            dims = t.shape.as_list() if t.shape.rank else []
            if dims and dims[0] is None and all(d is not None for d in dims[1:]):
                largest = max(largest, int(np.prod(dims[1:], dtype=np.int64)) * max(1, t.dtype.size))
    return max(1, ACTIVATION_BYTES // (4 * largest))


class _Cache:
    """Cached bottlenecks: in memory when they fit in `limit` bytes (default a quarter of the free
    memory), else read from the HDF5 file batch by batch (`read(sorted rows)`)."""

    def __init__(self, path: str, count: int, limit: int | None = None):
        import h5py

        self.file = h5py.File(path, "r")
        self.datasets = [self.file[f"b{k}"] for k in range(count)]
        if limit is None:
            limit = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
        self.in_memory = sum(ds.size * ds.dtype.itemsize for ds in self.datasets) <= limit
        if self.in_memory:
            self.datasets = [ds[...] for ds in self.datasets]
            self.close()

    def read(self, idx) -> list:
        return [ds[idx] for ds in self.datasets]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


# ---------------------------------------------------------------- curves

SCALARS = ("loss", "accuracy", "val_loss", "val_accuracy")


def _summary_writer(logdir: str, graph, start: int):
    """A TensorBoard event writer for `logdir`, with the graph on a fresh run; on a resumed run
    a restart marker at `start`, so TensorBoard drops the epochs written after the last save."""
    with graph.as_default():  # FileWriter refuses eager mode
        writer = v1.summary.FileWriter(logdir, graph=graph if start == 0 else None)
    if start:
        writer.add_session_log(v1.SessionLog(status=v1.SessionLog.START), global_step=start)
    return writer


def _write_scalars(writer, record: dict, lr: float) -> None:
    """One epoch's `loss`, `accuracy`, `val_loss`, `val_accuracy` and `learning_rate`, at step = epoch."""
    values = [v1.Summary.Value(tag=key, simple_value=record[key]) for key in SCALARS if record.get(key) is not None]
    values.append(v1.Summary.Value(tag="learning_rate", simple_value=lr))
    writer.add_summary(v1.Summary(value=values), global_step=record["epoch"])
    writer.flush()


def plot_history(history: list, path: str) -> bool:
    """A small loss / accuracy curve at `path` (PNG) when matplotlib is installed (the `viz`
    extra); False, and nothing written, without it or without epochs."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    if not history:
        return False
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(8, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    for ax, key in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        ax.plot(epochs, [r[key] for r in history], label="train")
        val = [r.get(f"val_{key}") for r in history]
        if any(v is not None for v in val):
            ax.plot(epochs, [float("nan") if v is None else v for v in val], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return True


__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "check_labels", "work_dir", "plot_history"]
