"""`surgery precompute`: the offline piece over a dataset, locally, on Beam or on Spark."""

from __future__ import annotations

from .common import data_args, model_arg, open_model, progress, sayer, set_arg

HELP = "run an offline piece over a dataset in batches into HDF5 (resumable)"
EXAMPLE = ("surgery precompute pieces --data data/shapes.h5 --key target/x --ids target/ids --out fc7.h5\n"
           "  surgery precompute data/models/vgg --outputs fc7=fc7,fc6 --data data/shapes.h5 --key target/x "
           "--out fc.h5")


def add_arguments(p) -> None:
    model_arg(p, "GRAPH", "a split directory, a frozen .pb, or any MODEL")
    data_args(p, "--key", preprocess=True)
    p.add_argument("--ids", metavar="KEY", help="row ids to store alongside as `ids`: an HDF5 dataset key, a TFRecord feature, a Parquet "
                   "column, a .npy file beside a .npy --data; for an image folder any value (e.g. --ids path) "
                   "stores each image's path relative to the folder, in row order (sorted class, then file "
                   "name) (default: no ids)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="rows per session run")
    p.add_argument("--inputs", metavar="T", help="input tensor (default: the graph's one input)")
    set_arg(p)
    p.add_argument("--outputs", metavar="T[=NAME],..",
                   help="tensors to store, optionally renamed (default: the piece's outputs; one is stored as "
                        "`embeddings`)")
    p.add_argument("--out", required=True, metavar="FILE.h5",
                   help="HDF5 to write; an interrupted run resumes from FILE.h5.partial when run again")
    p.add_argument("--runner", choices=["local", "beam", "spark"], default="local",
                   help="local, or Apache Beam: shards + index in FILE.h5.shards/, merged into FILE.h5 "
                        "(needs pip install 'surgery[beam]'), or Apache Spark: a Parquet directory DIR.parquet "
                        "(FILE.h5.parquet/ beside an .h5), --data may be Parquet (needs pip install 'surgery[spark]') "
                        "(default: local)")
    p.add_argument("--beam-option", action="append", default=[], metavar="K=V",
                   help="Beam pipeline option, repeatable: runner=DataflowRunner, direct_num_workers=2, "
                        "direct_running_mode=multi_processing, project=..., temp_location=gs://... (default: none)")
    p.add_argument("--spark-master", metavar="URL", help="Spark master (default local[*]): local-cluster[2,1,1024], "
                   "spark://host:7077, yarn, k8s://https://host:443")
    p.add_argument("--spark-conf", action="append", default=[], metavar="K=V",
                   help="Spark setting, repeatable: spark.executor.memory=4g, spark.executor.instances=8 (default: none)")


def run(args):
    if args.runner == "beam":
        return _precompute_on_beam(args)
    if args.runner == "spark":
        return _precompute_on_spark(args)
    import numpy as np

    from ..runners.precompute import precompute

    say = sayer(args)
    result = precompute(open_model(args), args.data, args.key, args.out, ids=args.ids, batch_size=args.batch_size,
                        inputs=args.inputs, outputs=args.outputs, preprocess=args.preprocess,
                        progress=progress(args), set=args.set)
    doc = {"written": args.out, "status": result.status, "rows": result.rows, "resumed_from": result.resumed_from,
           "computed": result.computed, "datasets": result.datasets, "ids": args.ids}
    if result.status == "up to date":
        say(f"{args.out} is up to date ({result.rows} rows, same graph and data); nothing to do")
        return 0, doc
    if result.resumed_from:
        say(f"resumed at row {result.resumed_from} of {result.rows}; computed {result.computed} rows")
    else:
        say(f"computed {result.computed} rows")
    for name, spec in result.datasets.items():
        shape = ", ".join(str(d) for d in [result.rows, *spec["shape"]])
        say(f"  {name:<12} [{shape}] {np.dtype(spec['dtype']).name}  ← {spec['tensor']}")
    if args.ids:
        say(f"  {'ids':<12} ← {args.ids}")
    say(f"→ {args.out}")
    return 0, doc


def _precompute_on_beam(args):
    """`precompute --runner beam`: shards + index in OUT.shards/, merged into OUT (see surgery/runners/beam.py)."""
    from ..runners.beam import merge_shards, require_beam, run_precompute, source_for

    require_beam()
    if args.set:
        from ..core.errors import SurgeryError

        raise SurgeryError("--set with --runner beam: Beam's workers load the piece from its file",
                           "bind the placeholders when you split or freeze (`surgery split … --set T=V`), "
                           "then precompute that piece")
    say = sayer(args)
    source = source_for(args.data, args.key, args.ids, preprocess=args.preprocess)
    shard_dir = args.out + ".shards"
    index = run_precompute(args.model, source, shard_dir, inputs=args.inputs, outputs=args.outputs,
                           batch_size=args.batch_size, beam_options=args.beam_option)
    merge_shards(index, args.out)
    say(f"precomputed {source.num_rows} rows on Beam → {args.out}")
    say(f"  shards and index: {index}")
    return 0, {"written": args.out, "rows": source.num_rows, "index": index, "runner": "beam"}


def _precompute_on_spark(args):
    """`precompute --runner spark`: a Parquet directory (+ the merged HDF5 for an .h5 --out); see surgery/runners/spark.py."""
    from ..runners.spark import run_precompute

    result = run_precompute(open_model(args), args.data, args.key, args.out, ids=args.ids, batch_size=args.batch_size,
                            inputs=args.inputs, outputs=args.outputs, master=args.spark_master,
                            conf=args.spark_conf, progress=progress(args) and not args.json,
                            preprocess=args.preprocess, set=args.set)
    say = sayer(args)
    say(f"precomputed {result.rows} rows on Spark ({result.partitions} partitions) → {result.out}")
    if result.h5:
        say(f"  merged: {result.h5}")
    return 0, {"written": result.out, "merged": result.h5, "rows": result.rows, "partitions": result.partitions,
               "runner": "spark"}
