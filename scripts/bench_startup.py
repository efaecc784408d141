"""Start-up: `surgery --help` (and `--version`, a usage error) against a bare
`python -c "import tensorflow"`, each in a fresh process, medians of several runs.

The CLI imports only the standard library until a command runs, so asking it for help costs a
Python start, not a TensorFlow import (issue: ≤ 0.25× of the bare import).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _median_seconds(cmd: list, repeats: int) -> float:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(quick: bool = False) -> list:
    repeats = 3 if quick else 7
    baseline = _median_seconds([sys.executable, "-c", "import tensorflow"], repeats)
    rows = []
    for label, args in (("surgery --help", ["--help"]), ("surgery freeze --help", ["freeze", "--help"]),
                        ("surgery --version", ["--version"]), ("surgery freeze --ouy x.pb (usage error)",
                                                                ["freeze", "m", "--ouy", "x.pb"]),
                        ("import surgery", None)):
        cmd = [sys.executable, "-c", "import surgery"] if args is None else [sys.executable, "-m", "surgery", *args]
        t = _median_seconds(cmd, repeats)
        rows.append({"benchmark": "startup", "metric": f"{label} vs import tensorflow", "surgery": t,
                     "baseline": baseline, "ratio": t / baseline, "unit": "s"})
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(f"{row['metric']:<55} {row['surgery']:.3f} s vs {row['baseline']:.3f} s  ratio {row['ratio']:.3f}x")
