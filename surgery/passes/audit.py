"""`surgery audit`: a graph is a program. List every op that touches files, the network, the
environment or Python, where it sits, and whether the model's outputs depend on it.

Works on the parsed GraphDef only (`model.parse_model`): nothing of an untrusted graph is
imported or run, so unknown or hostile ops can be reported too. A Keras file is audited from its
config JSON alone: `Lambda` layers and classes from outside Keras are its Python findings.
"""

from __future__ import annotations

import dataclasses

from ..core import graph as g
from ..core import kerasfile
from ..core.errors import ModelLoadError
from ..core.names import is_machinery, node_input_op

FILE_OPS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2",
    "RestoreSlice", "MergeV2Checkpoints", "ImmutableConst", "InitializeTableFromTextFile",
    "InitializeTableFromTextFileV2", "LoadAndRemapMatrix", "GenerateVocabRemapping",
    "TFRecordReader", "TFRecordReaderV2", "TextLineReader", "TextLineReaderV2", "WholeFileReader",
    "WholeFileReaderV2", "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "LMDBReader",
    "IdentityReader", "IdentityReaderV2", "RecordInput",
    "TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset", "FixedLengthRecordDataset",
    "FixedLengthRecordDatasetV2", "LMDBDataset", "ExperimentalLMDBDataset", "MatchingFilesDataset",
    "ExperimentalMatchingFilesDataset", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord",
    "SaveDataset", "SaveDatasetV2", "LoadDataset", "DistributedSave", "SnapshotDataset", "SnapshotDatasetV2",
    "SnapshotDatasetReader", "SnapshotNestedDatasetReader", "SnapshotChunkDataset", "ListSnapshotChunksDataset",
    "CacheDataset", "CacheDatasetV2",
    "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteScalarSummary",
    "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary",
    "WriteRawProtoSummary", "FlushSummaryWriter", "CloseSummaryWriter",
    "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNanCount", "DebugNumericSummary",
    "DebugNumericSummaryV2",
})
NETWORK_OPS = frozenset({
    "Rpc", "TryRpc", "SqlDataset", "ExperimentalSqlDataset", "DataServiceDataset", "DataServiceDatasetV2",
    "DataServiceDatasetV3", "DataServiceDatasetV4", "BigQueryReader", "GcsConfigureCredentials",
    "GcsConfigureBlockCache", "CollectiveReduce", "CollectiveReduceV2", "CollectiveGather",
    "CollectiveGatherV2", "CollectiveBcastSend", "CollectiveBcastRecv", "CollectiveBcastSendV2",
    "CollectiveBcastRecvV2", "_Send", "_Recv", "_HostSend", "_HostRecv",
})
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
ENVIRONMENT_OPS = frozenset({"Print", "PrintV2", "FileSystemSetConfiguration", "Timestamp"})
# Ops whose attrs may name a file (a protobuf descriptor set on disk).
DESCRIPTOR_OPS = frozenset({"DecodeProtoV2", "EncodeProto"})
CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})


@dataclasses.dataclass
class Finding:
    name: str  # the node's name (for ops inside functions: "FUNCTION/node")
    op: str
    category: str  # files | network | python | environment
    where: str  # "graph" or "function F, called by node N"
    on_output_path: bool  # the likely outputs depend on it
    checkpoint_machinery: bool  # a Saver's own save/restore op, off the output path

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def category(node) -> str | None:
    if node.op in FILE_OPS:
        return "files"
    if node.op in NETWORK_OPS:
        return "network"
    if node.op in PYTHON_OPS:
        return "python"
    if node.op in ENVIRONMENT_OPS:
        return "environment"
    if node.op in DESCRIPTOR_OPS and node.attr["descriptor_source"].s not in (b"", b"local://"):
        return "files"
    return None


def _called_functions(node, library_names) -> list[str]:
    """Functions a node calls: its op itself, or any `func`-typed attr (If/While/PartitionedCall...)."""
    out = [node.op] if node.op in library_names else []
    for value in node.attr.values():
        if value.HasField("func") and value.func.name in library_names:
            out.append(value.func.name)
        for f in value.list.func:
            if f.name in library_names:
                out.append(f.name)
    return out


def _function_findings(library) -> dict:
    """{function name: [(node name, op, category)]}, following calls between functions."""
    functions = {f.signature.name: f for f in library.function}
    direct = {name: [(n.name, n.op, c) for n in f.node_def if (c := category(n))] for name, f in functions.items()}
    calls = {name: {c for n in f.node_def for c in _called_functions(n, functions)} for name, f in functions.items()}
    result = {}
    for name in functions:
        seen, stack, found = set(), [name], []
        while stack:
            fn = stack.pop()
            if fn in seen:
                continue
            seen.add(fn)
            found += [(f"{fn}/{n}", op, c) for n, op, c in direct[fn]]
            stack.extend(calls[fn])
        result[name] = found
    return result


def audit_graph_def(graph_def, *, outputs=()) -> dict:
    """Findings for a GraphDef: `{"clean", "outputs", "findings": [Finding.as_dict()]}`."""
    outputs = [node_input_op(t) for t in outputs] or g.likely_output_nodes(graph_def)
    on_path = g.ancestors(graph_def, outputs)
    functions = _function_findings(graph_def.library)
    findings = []
    for node in graph_def.node:
        c = category(node)
        if c:
            findings.append(Finding(node.name, node.op, c, "graph", node.name in on_path,
                                    node.name not in on_path and is_machinery(node.name, node.op)))
        for fn in _called_functions(node, functions):
            for name, op, c in functions[fn]:
                findings.append(Finding(name, op, c, f"function {fn}, called by {node.name}",
                                        node.name in on_path, False))
    findings = [f.as_dict() for f in findings]
    # A Saver's own SaveV2/RestoreV2 off the output path is how every checkpoint and SavedModel is
    # read: informational, not a flag (the same rule `--strict` applies).
    return {"clean": not strict_violations({"findings": findings}), "outputs": outputs, "findings": findings}


def audit_model(model) -> dict:
    """Audit a `Model` (from `parse_model` or `load_model`), outputs from its signature if any."""
    sig = model.signature_defs.get("serving_default") if model.signature_defs else None
    outputs = [t.name for t in sig.outputs.values()] if sig is not None else ()
    report = audit_graph_def(model.graph_def, outputs=outputs)
    report.update(path=model.path, format=model.format)
    return report


def audit_keras_file(path: str) -> dict:
    """A Keras file's config, read as JSON and never loaded: each `Lambda` layer (Python code
    stored in the file, run on load) and each class Keras does not ship is a `python` finding."""
    config = kerasfile.read_config(path)
    if config is None:
        raise ModelLoadError(f"{path} holds weights only, no model config: nothing runs from it",
                             f"audit the model you load them into; `surgery restore MODEL --from {path}` reads them")
    findings = [Finding(f["layer"], f"{f['class']} layer", "python",
                        "Keras config: " + ("Python code stored in the file" if f["kind"] == "lambda"
                                            else "a class from outside Keras"), True, False)
                for f in kerasfile.code_findings(config)]
    fmt = "keras" if path.lower().endswith(".keras") else "keras_h5"
    return {"clean": not findings, "outputs": [], "findings": [f.as_dict() for f in findings], "path": path,
            "format": fmt}


def strict_violations(report: dict) -> list[dict]:
    """Findings `--strict` refuses: everything but a Saver's own ops off the output path."""
    return [f for f in report["findings"] if not f["checkpoint_machinery"]]


def format_audit(report: dict) -> str:
    findings = report["findings"]
    lines = [f"Audit  {report['path']}  ({report['format']})"]
    if not findings:
        lines.append("  clean: no op touches files, the network, the environment or Python")
        return "\n".join(lines)
    flagged = strict_violations(report)
    if not flagged:
        lines.append(f"  clean: only the checkpoint's own save/restore ops ({len(findings)}), off the output path:")
    else:
        lines.append(f"  {len(flagged)} op(s) touch files, the network, the environment or Python"
                     + (f" (+ {len(findings) - len(flagged)} checkpoint save/restore ops, informational)"
                        if len(findings) > len(flagged) else "") + ":")
    rows = [(f["category"], f["name"], f["op"],
             "on the output path" if f["on_output_path"] else
             ("checkpoint machinery, off the output path" if f["checkpoint_machinery"] else "off the output path"),
             "" if f["where"] == "graph" else f["where"]) for f in findings]
    rows.insert(0, ("category", "op", "type", "where", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + (f"  [{r[4]}]" if r[4] else ""))
    return "\n".join(lines)


def audit_path(path, options=None) -> list:
    """Reports for MODEL, or one per piece of a split directory (each piece's graph parsed only,
    never imported). `options`: how to read a MODEL (`model.LoadOptions`)."""
    from ..core.model import LoadOptions
    from ..core.pieces import open_pieces

    options = options or LoadOptions()
    if kerasfile.is_keras_file(path):
        return [audit_keras_file(path)]
    opened = open_pieces(path, options)
    if opened.is_split:
        return [audit_model(options.parse(p.path)) for p in opened.pieces.values()]
    return [audit_model(options.parse(path))]