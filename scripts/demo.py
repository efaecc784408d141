"""`make demo`: the pipeline end to end on the bundled demo model and data, as a user types it.

Each step is a real `surgery` command run in a subprocess; the demo stops at the first
failure. Outputs go to `demo-out/`.
"""

from __future__ import annotations

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
    ("Freeze it for a C++/mobile runtime: variables → constants, training nodes stripped",
     ["freeze", MODEL, "--outputs", "predictions", "--out", f"{OUT}/vgg_frozen.pb"]),
    ("Inspect the frozen graph",
     ["inspect", f"{OUT}/vgg_frozen.pb"]),
    ("Freeze only the classifier above fc7: fc7 becomes a placeholder",
     ["freeze", MODEL, "--inputs", "fc7", "--outputs", "predictions", "--out", f"{OUT}/head_above_fc7.pb"]),
]


def main() -> int:
    os.chdir(ROOT)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    env = dict(os.environ, PYTHONPATH=ROOT)
    for i, (title, args) in enumerate(STEPS, start=1):
        print(f"\n── {i}/{len(STEPS)}  {title}")
        print("$ surgery " + " ".join(shlex.quote(a) for a in args), flush=True)
        rc = subprocess.call([sys.executable, "-m", "surgery", *args], env=env)
        if rc != 0:
            print(f"demo step {i} failed with exit code {rc}", file=sys.stderr)
            return rc
    print(f"\nDemo complete. Outputs are in {OUT}/.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
