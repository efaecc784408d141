"""Benchmarks: every `scripts/bench_*.py` module, each timing surgery against plain TensorFlow
doing the same work in the same run, reported as ratios of medians.

    python scripts/bench.py                 # all benchmarks
    python scripts/bench.py freeze split    # only bench_freeze.py and bench_split.py
    python scripts/bench.py --quick         # smaller sizes, for a smoke run

Each module has `run(quick: bool) -> list[dict]`; every dict is one result row with at
least `benchmark`, `metric`, `surgery`, `baseline`, `ratio` and `unit`.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def median_time(fn, repeats: int = 5) -> float:
    """Median wall time of `fn()` over `repeats` runs, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("only", nargs="*", help="benchmark names (bench_NAME.py)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    names = sorted(os.path.basename(p)[len("bench_"):-3] for p in glob.glob(os.path.join(HERE, "bench_*.py")))
    if args.only:
        names = [n for n in names if n in args.only]
    rows = []
    for name in names:
        print(f"── bench_{name}", flush=True)
        for row in importlib.import_module(f"bench_{name}").run(quick=args.quick):
            rows.append(row)
            print(f"  {row['metric']:<46} surgery {row['surgery']:>10.4g} {row['unit']:<5}"
                  f" baseline {row['baseline']:>10.4g} {row['unit']:<5} ratio {row['ratio']:.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
