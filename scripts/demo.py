"""`make demo`: the pipeline end to end on the bundled demo model and data, as a user types it.

Each step is a real `surgery` command run in a subprocess; the demo stops at the first
failure. Outputs go to `demo-out/`.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = "demo-out"
MODEL = "data/models/vgg"
DATA = "data/shapes.h5"

STEPS = [
    ("Inspect the pretrained network (a .meta + checkpoint directory)",
     ["inspect", MODEL, "--tensors", "^fc[678]:"]),
    ("Fine-tune at fc7 on the new 5-class task: a new head behind stop_gradient, trained on cached fc7 values",
     ["finetune", MODEL, "--at", "fc7", "--head", "dense:5", "--data", DATA, "--x", "target/x", "--y", "target/y",
      "--epochs", "15", "--lr", "0.01", "--cache-bottlenecks", "--out", f"{OUT}/finetuned"]),
    ("Where can it be cut? Every tensor that alone separates the images from the answer, with the bytes a row "
     "of it takes and the FLOPs and parameters on each side (* marks the Pareto front)",
     ["cuts", f"{OUT}/finetuned", "--outputs", "head/probabilities", "--measure", "--data", f"{DATA}:target/x"]),
    ("Split the fine-tuned network at fc7: an offline backbone and an online head, each frozen",
     ["split", f"{OUT}/finetuned", "--cut", "fc7", "--outputs", "head/probabilities", "--out", f"{OUT}/pieces"]),
    ("The same split with fc7 crossing as int8 (per-channel scales from the source images): a quarter of the "
     "bytes, and what it changes in the answers on 200 target images",
     ["split", f"{OUT}/finetuned", "--cut", "fc7", "--outputs", "head/probabilities", "--cut-dtype", "int8",
      "--calibration", f"{DATA}:source/x", "--verify", "200", "--verify-data", f"{DATA}:target/x",
      "--out", f"{OUT}/pieces_int8"]),
    ("Precompute the int8 fc7 rows: stored as int8, 128 bytes a row instead of 512",
     ["precompute", f"{OUT}/pieces_int8", "--data", DATA, "--key", "target/x", "--ids", "target/ids",
      "--out", f"{OUT}/fc7_int8.h5"]),
    ("Precompute fc7 embeddings for every target image with the offline piece (resumable, ids alongside)",
     ["precompute", f"{OUT}/pieces", "--data", DATA, "--key", "target/x", "--ids", "target/ids",
      "--out", f"{OUT}/fc7_embeddings.h5"]),
    ("Precompute the same embeddings on Apache Spark (local[2]) into Parquet, ids alongside "
     "(skipped without Java or the spark extra)",
     ["precompute", f"{OUT}/pieces", "--data", DATA, "--key", "target/x", "--ids", "target/ids", "--runner", "spark",
      "--spark-master", "local[2]", "--spark-conf", "spark.ui.enabled=false", "--out", f"{OUT}/fc7_embeddings.parquet"]),
    ("Export both pieces as SavedModels with a serving_default signature (TF Serving layout)",
     ["export", f"{OUT}/pieces", "--saved-model", f"{OUT}/serving"]),
    ("Export the online head for phones: LiteRT int8, calibrated on the precomputed fc7 rows, verified in LiteRT",
     ["export", f"{OUT}/pieces/online.pb", "--tflite", f"{OUT}/mobile/online_int8.tflite", "--quantize", "int8",
      "--calibration", f"{OUT}/fc7_embeddings.h5"], {"needs": "ai_edge_litert", "extra": "tflite"}),
    ("Export both pieces for onnxruntime (one .onnx per piece), verified in onnxruntime",
     ["export", f"{OUT}/pieces", "--onnx", f"{OUT}/onnx"], {"needs": "onnxruntime", "extra": "onnx"}),
    ("Inspect the online piece: fed at fc7:0, none of the backbone inside",
     ["inspect", f"{OUT}/pieces/online.pb"]),
    ("Freeze the whole fine-tuned network for a C++/mobile runtime",
     ["freeze", f"{OUT}/finetuned", "--outputs", "head/probabilities", "--out", f"{OUT}/finetuned_frozen.pb"]),
    ("Freeze it optimised for inference: constants folded, identities and the training switch removed",
     ["freeze", f"{OUT}/finetuned", "--outputs", "head/probabilities", "--optimize",
      "--out", f"{OUT}/finetuned_optimized.pb"]),
    ("Audit the frozen pieces: nothing in them touches files, the network or Python",
     ["audit", f"{OUT}/pieces/online.pb"]),
    ("Restore selectively: refill the fine-tuned graph's backbone from the pretrained checkpoint, head excluded",
     ["restore", f"{OUT}/finetuned", "--from", MODEL, "--exclude", "^head/", "--out", f"{OUT}/restored/model.ckpt"]),
    ("Recipe: a two-tower recommender split at its item embedding, served from precomputed items",
     ["python", "recipes/split_recommender.py", "--out", f"{OUT}/recommender"]),
]


def spark_missing() -> str | None:
    """Why the Spark step cannot run here (no Java, no pyspark), or None."""
    import importlib.util

    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        return "Java is not installed"
    missing = [m for m in ("pyspark", "pyarrow", "pandas") if importlib.util.find_spec(m) is None]
    return f"{', '.join(missing)} not installed (pip install 'surgery[spark]')" if missing else None


def main() -> int:
    os.chdir(ROOT)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    env = dict(os.environ, PYTHONPATH=ROOT)
    for i, (title, args, *needs) in enumerate(STEPS, start=1):
        print(f"\n── {i}/{len(STEPS)}  {title}")
        if needs and importlib.util.find_spec(needs[0]["needs"]) is None:
            print(f"(skipped: needs pip install 'surgery[{needs[0]['extra']}]')")
            continue
        if "spark" in args and spark_missing():
            print(f"(skipped: {spark_missing()})")
            continue
        if args[0] == "python":  # a recipe script
            print("$ " + " ".join(shlex.quote(a) for a in args), flush=True)
            rc = subprocess.call([sys.executable, *args[1:]], env=env)
        else:
            print("$ surgery " + " ".join(shlex.quote(a) for a in args), flush=True)
            rc = subprocess.call([sys.executable, "-m", "surgery", *args], env=env)
        if rc != 0:
            print(f"demo step {i} failed with exit code {rc}", file=sys.stderr)
            return rc
    print(f"\nDemo complete. Outputs are in {OUT}/.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
