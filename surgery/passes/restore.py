"""Restore: put someone else's weights into your graph, by plan.

A `RestorePlan` says, for every variable of the target graph, which source tensor fills it
(after `OLD=NEW` scope rewrites; one source tensor may fill several targets) or why none does
(skipped by --include/--exclude, training state absent from the source, missing, or of another
shape/dtype). The plan is computed and checked from the source's index before any value is
read, so a refused restore runs nothing and writes nothing.

Sources are `weights.WeightSource`s: TF checkpoints (V1/V2, TF2 object keys), HDF5 weights
files (both layouts), partitions joined; a partitioned target takes its slices of a whole
source tensor.

Three ways to run a plan (`method=`):
- `"saver"` (default): one selective `tf.compat.v1.train.Saver({source_key: variable})` per
  round (a key may appear once per Saver, so one-to-many maps take several rounds);
- `"assignment_map"`: `tf.compat.v1.train.init_from_checkpoint`, given variable objects (its
  by-name lookup only sees `get_variable` variables, never those of an imported meta graph);
- `"assign"`: values read into numpy and assigned through placeholders.
Checkpoint values the Saver cannot address (HDF5 files, source keys joined from `/part_N`
pieces) are always assigned directly; each report entry says `via` which way it went.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from ..core import tfcompat
from ..core.errors import RestoreError
from ..core.files import atomic_files, write_bytes, write_text
from ..core.names import is_machinery
from ..core.weights import PART as _PART
from ..core.weights import (
    CheckpointSource,
    KerasWeights,
    SourceTensor,
    WeightSource,
    open_weights,
    restore_checkpoint,
    saver_for,
)

tf = tfcompat.tf
v1 = tf.compat.v1
Source = WeightSource
open_source = open_weights  # the name `surgery.open_source` has always had

METHODS = ("saver", "assignment_map", "assign")
_TRAINING_STATE = "training state (optimizer slot / step counter) not in the source: keeps its own value"
_ASSIGN_BATCH_BYTES = 64 << 20  # direct assignment feeds values in runs of about this size


# ---------------------------------------------------------------------------- the plan

@dataclasses.dataclass
class PlanEntry:
    """One target variable (a partitioned one once, under its full name, `parts` its pieces)."""

    name: str
    shape: tuple
    dtype: str
    status: str = ""  # restored | skipped | missing | mismatched
    reason: str = ""
    source: str | None = None
    source_shape: tuple | None = None
    source_dtype: str | None = None
    parts: tuple = ()
    training_state: bool = False
    looked_for: tuple = ()
    via: str = ""

    def as_dict(self) -> dict:
        d = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.parts:
            d["parts"] = list(self.parts)
        if self.source is not None:
            d["source"] = self.source
            d["source_shape"] = list(self.source_shape)
            d["source_dtype"] = self.source_dtype
        if self.status == "missing":
            d["looked_for"] = list(self.looked_for)
        if self.reason:
            d["reason"] = self.reason
        if self.via:
            d["via"] = self.via
        return d


@dataclasses.dataclass
class RestorePlan:
    """Where every target variable's value comes from, checked before anything runs."""

    source: Source
    entries: list
    maps: list
    allow_missing: bool = False
    map_hint: str = ""

    def by_status(self, status: str) -> list:
        return [e for e in self.entries if e.status == status]

    @property
    def restored(self) -> list:
        return self.by_status("restored")

    @property
    def problems(self) -> list:
        """Entries that make a strict restore refuse."""
        return [e for e in self.entries
                if e.status == "mismatched" or (e.status == "missing" and not self.allow_missing)]

    @property
    def unused_source_keys(self) -> list:
        used = {e.source for e in self.restored}
        return sorted(k for k, t in self.source.tensors.items() if k not in used and not _is_part_of_used(t, k, used))

    def check(self) -> None:
        """Raise `RestoreError` naming each variable that would stay uninitialised or has
        another shape/dtype, and the flag that fixes it."""
        problems = self.problems
        if not problems:
            return
        shown = [_problem_text(e) for e in problems[:8]]
        more = f"; … and {len(problems) - 8} more" if len(problems) > 8 else ""
        fixes = []
        if any(e.status == "missing" for e in problems) and self.map_hint:
            fixes.append(self.map_hint)
        fixes.append("skip them with " + " ".join(f"--exclude '{r}'" for r in _exclude_patterns(problems)))
        if any(e.status == "missing" for e in problems):
            fixes.append("keep their initial values with --allow-missing")
        raise RestoreError(
            f"{len(problems)} target variable{'s' if len(problems) > 1 else ''} cannot be restored from "
            f"{self.source.path}: " + "; ".join(shown) + more,
            "; or ".join(fixes),
        )

    def report(self) -> dict:
        """`restored`, `skipped`, `missing`, `mismatched` (each entry with names and shapes)."""
        return {
            "source": self.source.path,
            "source_format": self.source.kind,
            "maps": [f"{o}={n}" for o, n in self.maps],
            "restored": [e.as_dict() for e in self.restored],
            "skipped": [e.as_dict() for e in self.by_status("skipped")],
            "missing": [e.as_dict() for e in self.by_status("missing")],
            "mismatched": [e.as_dict() for e in self.by_status("mismatched")],
            "unused_source_keys": self.unused_source_keys,
            "restored_values": int(sum(np.prod(e.shape, dtype=np.int64) for e in self.restored)),
        }


def _exclude_patterns(entries) -> list[str]:
    """Regexes naming the scopes of `entries`: each scope when there are one or two, their
    common scope when it exists, else the first three."""
    scopes = sorted({e.name.rsplit("/", 1)[0] + "/" if "/" in e.name else e.name + "$" for e in entries})
    if len(scopes) > 2:
        split = [s.split("/") for s in scopes]
        common = []
        for parts in zip(*split):
            if len(set(parts)) > 1:
                break
            common.append(parts[0])
        scopes = ["/".join(common) + "/"] if common and common[0] else scopes[:3]
    return ["^" + re.escape(s).replace("\\$", "$") for s in scopes]


def _is_part_of_used(t: SourceTensor, key: str, used: set) -> bool:
    m = _PART.match(key)
    return bool(m and m.group(1) in used)


def _shape_text(shape) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _problem_text(e: PlanEntry) -> str:
    if e.status == "missing":
        return f"{e.name} {_shape_text(e.shape)} is missing from the source"
    return (f"{e.name} {_shape_text(e.shape)} {e.dtype} ≠ source {e.source} "
            f"{_shape_text(e.source_shape)} {e.source_dtype}")


def parse_maps(maps) -> list[tuple[str, str]]:
    """`["OLD=NEW", …]`, `[(OLD, NEW), …]` or `{OLD: NEW}` → `[(OLD, NEW), …]`."""
    if isinstance(maps, dict):
        maps = list(maps.items())
    out = []
    for m in maps or ():
        if isinstance(m, str):
            if "=" not in m:
                raise RestoreError(f"--map '{m}' is not OLD=NEW", "write e.g. --map vgg_16/=net/vgg_16/")
            old, new = m.split("=", 1)
        else:
            old, new = m
        out.append((old.strip(), new.strip()))
    return out


def _apply_map(key: str, old: str, new: str) -> str | None:
    """`key` with scope `old` rewritten as `new`, or None when `key` is not under `old`.
    `old` without a trailing `/` is a whole scope (`vgg_16` does not match `vgg_16b/...`)."""
    if old == "":
        return (new.rstrip("/") + "/" + key) if new else key
    if old.endswith("/"):
        if not key.startswith(old):
            return None
        rest = key[len(old):]
    elif key == old:
        return new
    elif key.startswith(old + "/"):
        rest = key[len(old) + 1:]
    else:
        return None
    return (new.rstrip("/") + "/" + rest) if new.rstrip("/") else rest


def _compile(patterns, flag: str) -> list:
    out = []
    for p in patterns or ():
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise RestoreError(f"{flag} '{p}' is not a valid regular expression: {e}",
                               "use a Python regex, e.g. 'fc8' or '^net/vgg_16/fc8/'") from e
    return out


@dataclasses.dataclass
class _TargetVar:
    name: str
    shape: tuple
    dtype: str
    parts: tuple
    op_type: str


def _target_variables(target) -> list[_TargetVar]:
    """Logical variables of a `Model` or `tf.Graph`: partitions grouped under their full
    name (`_save_slice_info`), local variables (never checkpointed) left out."""
    from ..core.model import Model

    if isinstance(target, Model):
        if target.is_frozen:
            raise RestoreError(f"{target.path} is a frozen graph: it has no variables to restore",
                               "restore into the .meta/checkpoint or SavedModel it was frozen from")
        if target.format == "saved_model_tf2" and target.variable_keys is None:
            raise RestoreError(f"{target.path} is a TF2 SavedModel; its variables are object-based",
                               "restore into a TF1 graph (.meta + checkpoint), or load the weights with Keras")
        graph = target.graph
        infos = target.variables()
    else:
        graph = target
        infos = None
    objects = _variable_objects(graph)
    local = {v.op.name for v in graph.get_collection(v1.GraphKeys.LOCAL_VARIABLES)}
    if infos is None:
        infos = [(v.op.name, v.op.type) for v in objects.values()]
    else:
        infos = [(i.name, i.op_type) for i in infos]
    out, seen = [], {}
    for name, op_type in infos:
        if name in local:
            continue
        var = objects.get(name)
        if var is None:
            op = graph.get_operation_by_name(name)
            dtype = tf.as_dtype(op.get_attr("dtype")).name
            shape = tuple(tf.TensorShape(op.get_attr("shape")).as_list())
            out.append(_TargetVar(name, shape, dtype, (), op_type))
            continue
        info = tfcompat.save_slice_info(var)
        dtype = var.dtype.base_dtype.name
        if info is None:
            out.append(_TargetVar(name, tuple(var.shape.as_list()), dtype, (), op_type))
        elif info.full_name in seen:
            tv = seen[info.full_name]
            tv.parts = tv.parts + (name,)
        else:
            tv = _TargetVar(info.full_name, tuple(info.full_shape), dtype, (name,), op_type)
            seen[info.full_name] = tv
            out.append(tv)
    return out


def _variable_objects(graph) -> dict:
    """{op name: tf.Variable} from the graph's global variables collection."""
    return {v.op.name: v for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES)}


def _own_saver_keys(target) -> dict:
    """{variable: checkpoint key} where a `Model`'s saver stores a variable under another name
    (a `Saver({key: variable})`), so a model's own checkpoint restores without maps."""
    from ..core.model import Model

    if not isinstance(target, Model):
        return {}
    return {name: key for name, key in target.checkpoint_keys().items() if name != key}


def _compatible(target_shape, source_shape) -> bool:
    return len(target_shape) == len(source_shape) and all(
        t is None or t == s for t, s in zip(target_shape, source_shape))


def plan_restore(target, source, *, maps=(), include=(), exclude=(), allow_missing: bool = False) -> RestorePlan:
    """Compute where each variable of `target` (a `Model` or a `tf.Graph`) gets its value.

    `source`: a checkpoint prefix/directory, an HDF5 file, or a `Source`. `maps`: OLD=NEW scope
    rewrites from source names to target names, applied to every source key they match, so
    two maps with one OLD fill two targets from one tensor; a target under an explicit map
    prefers it to a same-named source key, the longest OLD winning. A `Model`'s own saver
    keys (`Model.checkpoint_keys()`) are tried before same-named keys. `include`/`exclude`:
    regexes searched in the target name and the source key (TF-slim's
    checkpoint_exclude_scopes). Nothing is read but the source's index; call `plan.check()`
    (the execute functions do) to refuse a strict restore.
    """
    source = open_source(source)
    if isinstance(source, KerasWeights):  # keyed by layer and position: named by the target's layers
        source = source.named_for(getattr(target, "declared_variables", None))
    maps = parse_maps(maps)
    includes, excludes = _compile(include, "--include"), _compile(exclude, "--exclude")
    for old, new in maps:
        if not any(_apply_map(k, old, new) is not None for k in source.tensors):
            scopes = sorted({k.split("/", 1)[0] + "/" for k in source.tensors})
            raise RestoreError(f"--map {old}={new}: no key of {source.path} is under '{old}'",
                               "its top-level scopes are " + ", ".join(scopes[:8]))
    # Each target name → candidate source keys, ranked: the length of the OLD that produced
    # them, then (-1) the key MODEL's own saver uses for it, then (-2) the same name.
    candidates: dict[str, list[tuple[int, str]]] = {}
    for key in source.tensors:
        candidates.setdefault(key, []).append((-2, key))
        for old, new in maps:
            name = _apply_map(key, old, new)
            if name is not None:
                candidates.setdefault(name, []).append((len(old), key))
    for name, key in _own_saver_keys(target).items():
        if key not in source.tensors and key in source.stored:  # a TF2 object key, stored with its suffix
            key = source.stored[key].key
        if key in source.tensors:
            candidates.setdefault(name, []).append((-1, key))

    entries = []
    for tv in _target_variables(target):
        e = PlanEntry(tv.name, tv.shape, tv.dtype, parts=tv.parts,
                      training_state=is_machinery(tv.name, tv.op_type))
        entries.append(e)
        found = sorted(candidates.get(tv.name, []), reverse=True)
        if len(found) > 1 and found[0][0] == found[1][0] and found[0][1] != found[1][1]:
            raise RestoreError(f"{tv.name} could come from {found[0][1]} or {found[1][1]}",
                               "make the --map scopes unambiguous")
        key = found[0][1] if found else None
        names = [tv.name] + ([key] if key else [])
        if includes and not any(r.search(n) for r in includes for n in names):
            e.status, e.reason = "skipped", "not matched by --include"
            continue
        hit = next((r.pattern for r in excludes for n in names if r.search(n)), None)
        if hit is not None:
            e.status, e.reason = "skipped", f"excluded by --exclude {hit}"
            continue
        if key is None:
            if e.training_state:
                e.status = "skipped"
                e.reason = _TRAINING_STATE
            else:
                e.status = "missing"
                e.looked_for = tuple(sorted({k for o, n in maps if (k := _unapply_map(tv.name, o, n))} | {tv.name}))
            continue
        t = source.tensors[key]
        if not _compatible(tv.shape, t.shape):
            t = source.tensors[key] = t.joined_to_fit(tv.shape)
        e.source, e.source_shape, e.source_dtype = key, t.shape, t.dtype
        if not _compatible(tv.shape, t.shape):
            e.status, e.reason = "mismatched", "shape"
        elif tf.as_dtype(tv.dtype).base_dtype.name != t.dtype:
            e.status, e.reason = "mismatched", "dtype"
        else:
            e.status = "restored"
    plan = RestorePlan(source, entries, maps, allow_missing)
    plan.map_hint = _suggest_map(plan.by_status("missing"), source)
    return plan


def _unapply_map(name: str, old: str, new: str) -> str | None:
    """The source key that `OLD=NEW` would turn into `name` (for the report's `looked_for`)."""
    return _apply_map(name, new, old)


def _suggest_map(missing: list, source: Source) -> str:
    """`--map OLD=NEW` when missing targets share their tails with source keys under
    one other scope (`vgg_16/conv1/...` in the source, `net/vgg_16/conv1/...` wanted)."""
    votes: dict[tuple[str, str], int] = {}
    for e in missing:
        parts = e.name.split("/")
        for i in range(len(parts)):
            tail = "/".join(parts[i:])
            hits = [k for k in source.tensors if k == tail or k.endswith("/" + tail)]
            if len(hits) == 1 and len(parts) - i >= 2:
                old = hits[0][: len(hits[0]) - len(tail)]
                new = "/".join(parts[:i]) + ("/" if i else "")
                if not old and len(parts) - i > 2:  # `vgg_16/=net/vgg_16/` reads better than `=net/`
                    old, new = parts[i] + "/", new + parts[i] + "/"
                votes[(old, new)] = votes.get((old, new), 0) + 1
                break
    if not votes:
        return ""
    (old, new), _ = max(votes.items(), key=lambda kv: kv[1])
    return f"map their scope with --map '{old}={new}'"


# ---------------------------------------------------------------------------- running a plan

def restore_into_session(sess, plan: RestorePlan, *, method: str = "saver", progress: bool = False) -> dict:
    """Fill `sess.graph`'s variables as `plan` says; returns the report (with `via` per entry).

    For a graph with extra variables (a new head): make the plan with those excluded or with
    `allow_missing=True`, run your initializers first, then call this — only the planned
    variables change. Adds restore ops to the graph (it must not be finalized).
    """
    if method not in METHODS:
        raise RestoreError(f"unknown restore method '{method}'", "use one of " + ", ".join(METHODS))
    plan.check()
    objects = _variable_objects(sess.graph)
    todo = []
    for e in plan.restored:
        names = e.parts or (e.name,)
        missing = [n for n in names if n not in objects]
        if missing:
            raise RestoreError(f"variable {missing[0]} is not in the session graph's global variables",
                               "build the plan from the graph you restore into")
        todo.append((e, [objects[n] for n in names]))
    source = plan.source
    native = isinstance(source, CheckpointSource)
    direct, by_checkpoint = [], []
    for e, vs in todo:
        needs_numpy = method == "assign" or not native or bool(source.tensors[e.source].parts)
        (direct if needs_numpy else by_checkpoint).append((e, vs))
    if method == "saver":
        _restore_with_savers(sess, source, by_checkpoint)
    elif by_checkpoint:
        _restore_with_assignment_map(sess, source, by_checkpoint)
    _assign_directly(sess, source, direct, progress)
    for e, _ in by_checkpoint:
        e.via = method
    for e, _ in direct:
        e.via = "assign"
    return plan.report()


def _rounds(source, todo) -> list[dict]:
    """`{stored source key: variable or its partitions}` dicts, each key once per dict: a key
    that fills several targets (a one-to-many map) is spread over several rounds."""
    rounds: list[dict] = []
    for e, vs in todo:
        stored = source.tensors[e.source].stored
        value = vs if e.parts else vs[0]
        for r in rounds:
            if stored not in r:
                r[stored] = value
                break
        else:
            rounds.append({stored: value})
    return rounds


def _restore_with_savers(sess, source, todo) -> None:
    """One selective Saver per round (partitions restore their slices of the stored tensor)."""
    for i, var_list in enumerate(_rounds(source, todo)):
        saver = v1.train.Saver(var_list=var_list, name=f"surgery_restore_{i}", sharded=False,
                               write_version=v1.train.SaverDef.V2)
        restore_checkpoint(saver, sess, source.prefix)


def _restore_with_assignment_map(sess, source, todo) -> None:
    """`init_from_checkpoint(prefix, {source_key: variable})` per round, then run the
    rewritten initializers. Variable objects, not names: the name lookup goes through the
    variable store, which knows only `get_variable` variables of this Python process."""
    for assignment_map in _rounds(source, todo):
        v1.train.init_from_checkpoint(source.prefix, assignment_map)
    sess.run([v.initializer for _, vs in todo for v in vs])


def _assign_directly(sess, source, todo, progress: bool) -> None:
    """Read each value into numpy and assign it through a placeholder (no constants baked
    into the graph); a partitioned target gets its slices. All ops are built first so the
    session extends its graph once; values are fed in runs of ~64 MB to bound memory."""
    if not todo:
        return
    from tqdm import tqdm

    ops = []
    for e, vs in todo:
        phs = [v1.placeholder(var.dtype.base_dtype, var.shape) for var in vs]
        ops.append((phs, [var.assign(ph, read_value=False) for var, ph in zip(vs, phs)]))
    fetches, feeds, pending = [], {}, 0
    for (e, vs), (phs, assigns) in tqdm(list(zip(todo, ops)), desc="restore", unit="var", disable=not progress,
                                         leave=False):
        value = source.read(e.source)
        feeds.update(zip(phs, _slices(value, vs) if e.parts else [value]))
        fetches.extend(assigns)
        pending += value.nbytes
        if pending >= _ASSIGN_BATCH_BYTES:
            sess.run(fetches, feeds)
            fetches, feeds, pending = [], {}, 0
    if fetches:
        sess.run(fetches, feeds)


def _slices(value: np.ndarray, parts) -> list:
    out = []
    for var in parts:
        info = tfcompat.save_slice_info(var)
        index = tuple(slice(o, o + n) for o, n in zip(info.var_offset, info.var_shape))
        out.append(value[index])
    return out


def restore_model(model, plan: RestorePlan, out: str, *, method: str = "saver", progress: bool = False) -> dict:
    """Write a checkpoint at prefix `out` (+ `out.meta`, MODEL's graph) with the plan's values.

    Variables the plan does not fill keep MODEL's own values: those of its checkpoint when it
    has one, else their initializers. The checkpoint is written under MODEL's own saver's keys,
    so `load_model(out)` and the graph's saver read it back. Files are written into a
    temporary directory and moved into place at the end; a refused plan writes nothing.
    Returns the report, with `out`.
    """
    plan.check()
    out = os.fspath(out)
    if out.endswith(os.sep) or os.path.isdir(out):
        out = os.path.join(out, "model.ckpt")
    out = os.path.abspath(out)
    graph = tf.Graph()
    with graph.as_default():
        v1.train.import_meta_graph(model.meta_graph_def, clear_devices=True)
        own = saver_for(model, graph, fallback=False)
        meta = model.meta_graph_def
        if own is None:  # no saved saver to reuse: a new one, recorded in the .meta written
            own = saver_for(model, graph)
            meta = v1.train.export_meta_graph(graph=graph, saver_def=own.as_saver_def(), clear_devices=True)
        init = [v1.global_variables_initializer(), v1.local_variables_initializer()]
    try:
        with v1.Session(graph=graph) as sess:
            sess.run(init)
            if model.checkpoint:
                restore_checkpoint(own, sess, model.checkpoint)
            report = restore_into_session(sess, plan, method=method, progress=progress)
            with atomic_files(os.path.dirname(out)) as tmp:
                own.save(sess, os.path.join(tmp, os.path.basename(out)), write_meta_graph=False, write_state=False)
                write_bytes(os.path.join(tmp, os.path.basename(out) + ".meta"), meta.SerializeToString())
                state = os.path.join(os.path.dirname(out), "checkpoint")
                if not os.path.exists(state):
                    write_text(os.path.join(tmp, "checkpoint"),
                               f'model_checkpoint_path: "{os.path.basename(out)}"\n'
                               f'all_model_checkpoint_paths: "{os.path.basename(out)}"\n')
    except tf.errors.OpError as e:
        raise RestoreError(f"restoring into {model.path} failed: {e.message.splitlines()[0][:200]}",
                           "the source changed after planning or is corrupt; check it with `surgery inspect`") from e
    report["out"] = out
    return report


def restore_weights(model, source, out: str, *, maps=(), include=(), exclude=(), allow_missing: bool = False,
                    method: str = "saver", progress: bool = False) -> dict:
    """`plan_restore` + `restore_model`: the library side of `surgery restore`."""
    plan = plan_restore(model, source, maps=maps, include=include, exclude=exclude, allow_missing=allow_missing)
    return restore_model(model, plan, out, method=method, progress=progress)


def format_report(report: dict, *, max_rows: int = 12) -> str:
    """The report as people read it: counts, then each variable with its shape and source
    (restored cut at `max_rows`; absent optimizer slots and step counters on one line)."""
    lines = [f"source: {report['source']} ({report['source_format']})"]
    if report.get("out"):
        lines.append(f"wrote:  {report['out']} (+ .meta)")
    restored = report["restored"]
    lines.append(f"restored {len(restored)} variables ({report['restored_values']:,} values)")
    for e in restored[:max_rows]:
        src = "" if e["source"] == e["name"] else f"  ← {e['source']}"
        lines.append(f"  {e['name']} {_shape_text(e['shape'])}{src}")
    if len(restored) > max_rows:
        lines.append(f"  … and {len(restored) - max_rows} more (--json lists all)")
    skipped = report["skipped"]
    state = [e for e in skipped if e["reason"] == _TRAINING_STATE]
    if skipped:
        lines.append(f"skipped {len(skipped)}")
    lines.extend(f"  {e['name']} {_shape_text(e['shape'])} {e['dtype']}: {e['reason']}"
                 for e in skipped if e not in state)
    if state:
        names = ", ".join(e["name"] for e in state[:3]) + (", …" if len(state) > 3 else "")
        lines.append(f"  {len(state)} training-state variables ({names}): not in the source, keep their own values")
    for status in ("missing", "mismatched"):
        items = report[status]
        if items:
            lines.append(f"{status} {len(items)}")
        for e in items:
            if status == "mismatched":
                why = f"source {e['source']} {_shape_text(e['source_shape'])} {e['source_dtype']}"
            else:
                why = "looked for " + ", ".join(e["looked_for"]) + " (keeps its own value)"
            lines.append(f"  {e['name']} {_shape_text(e['shape'])} {e['dtype']}: {why}")
    unused = report["unused_source_keys"]
    if unused:
        lines.append(f"unused in the source: {len(unused)} ({', '.join(unused[:6])}{', …' if len(unused) > 6 else ''})")
    return "\n".join(lines)
