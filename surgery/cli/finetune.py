"""`surgery finetune`: splice a head above a tensor and train it."""

from __future__ import annotations

from .common import data_args, load_options, model_arg, preprocess_arg, progress, sayer, set_arg

HELP = "splice a head above a tensor behind stop_gradient and train it"
EXAMPLE = ("surgery finetune data/models/vgg --at fc7 --head dense:5 --data data/shapes.h5 "
           "--x target/x --y target/y --out runs/ft")


def add_arguments(p) -> None:
    model_arg(p)
    p.add_argument("--at", required=True, metavar="TENSOR", help="splice the head above this tensor")
    set_arg(p)
    p.add_argument("--head", required=True, metavar="SPEC",
                   help="layers, comma-separated: dense:UNITS[:ACTIVATION], dropout:RATE, flatten; "
                        "e.g. dense:256:relu,dropout:0.5,dense:5 (the last dense's units are the classes)")
    data_args(p, "--x")
    p.add_argument("--y", metavar="KEY", help="integer labels: HDF5 dataset / TFRecord feature / Parquet column / "
                   "a second .npy (default: none; an image folder labels by sub-directory)")
    preprocess_arg(p)
    p.add_argument("--epochs", type=int, default=5, metavar="N", help="passes over the training rows")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="rows per training step")
    p.add_argument("--lr", type=float, default=1e-3, metavar="F", help="learning rate")
    p.add_argument("--optimizer", choices=["adam", "sgd", "momentum"], default="adam", help="the optimizer")
    p.add_argument("--train-scopes", action="append", default=[], metavar="RE",
                   help="also train original layers matching RE (repeatable; moves the stop_gradient below them; "
                        "default: only the head trains)")
    p.add_argument("--val-split", type=float, default=0.2, metavar="F", help="held-out fraction for evaluation")
    p.add_argument("--cache-bottlenecks", action="store_true", help="compute the splice tensor once, train on it")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed for the head's initial weights and "
                   "the shuffling")
    p.add_argument("--tensorboard", metavar="LOGDIR",
                   help="write per-epoch loss/accuracy/val_loss/val_accuracy/learning_rate and the graph to LOGDIR "
                        "(tensorboard --logdir LOGDIR)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="directory to write (model.ckpt*, frozen.pb, manifest.json; history.png with matplotlib); "
                        "appears only when complete")


def run(args):
    from ..passes.bind import bind
    from ..runners.finetune import finetune

    say = sayer(args)
    model = bind(load_options(args).load(args.model),
                 args.set)
    history = []

    def on_epoch(r):
        if not history and r["epoch"] > 1:
            say(f"(resumed an interrupted run after epoch {r['epoch'] - 1})")
        history.append(r)
        val = "" if r["val_accuracy"] is None else f"  val accuracy {r['val_accuracy']:.1%}"
        say(f"epoch {r['epoch']}/{args.epochs}: loss {r['loss']:.4f}  train accuracy {r['accuracy']:.1%}"
            f"{val}  ({r['seconds']:.1f}s)")

    result = finetune(model, at=args.at, head=args.head, data=args.data, x_key=args.x, y_key=args.y, out=args.out,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                      train_scopes=args.train_scopes, val_split=args.val_split,
                      cache_bottlenecks=args.cache_bottlenecks, seed=args.seed, preprocess=args.preprocess,
                      tensorboard=args.tensorboard, progress=progress(args), on_epoch=on_epoch)
    names = result.names
    if result.val_accuracy is not None:
        say(f"held-out accuracy ({result.num_val} rows): {result.initial_val_accuracy:.1%} before → "
            f"{result.val_accuracy:.1%} after")
    out = args.out.rstrip("/") or "/"
    say(f"trained {len(result.trainable)} variables: " + ", ".join(result.trainable))
    if result.fixed:
        say(f"kept fixed {len(result.fixed)} non-trainable variables --train-scopes matched (statistics): "
            + ", ".join(result.fixed))
    record = result.manifest.get("finetune", {})
    keras_file = ", model.keras" if record.get("keras_model") else ""
    say(f"wrote {out}/: model.ckpt (+ .meta), frozen.pb, saved_model/{keras_file}, manifest.json")
    if keras_file:
        say(f"  model.keras: the pretrained layers and the new head in Keras (trainable: "
            f"{', '.join(record['keras_trainable'])}); it answers as frozen.pb")
    elif record.get("keras_note"):
        say(f"  note: {record['keras_note']}")
    say(f"  feed:  {names['input']} (or cached values at {names['bottleneck']})")
    say(f"  fetch: {names['probabilities']}, {names['logits']}")
    return 0, {"written": out, "names": names, "trainable": result.trainable, "fixed": result.fixed,
               "history": result.history,
               "initial_val_accuracy": result.initial_val_accuracy, "val_accuracy": result.val_accuracy,
               "num_train": result.num_train, "num_val": result.num_val,
               "resumed_from_epoch": result.resumed_from_epoch, "manifest": result.manifest}
