"""A long-lived `surgery` process for tests/test_fuzz.py: reads one JSON argument list per line
on stdin, runs `surgery.cli.main` on it in this process (TensorFlow imported once), and answers
one line `@@ {"rc": .., "stderr": ..}` on stdout. A case that kills the process (a TensorFlow
CHECK failure, a segfault) is seen by the test as the worker's death and its signal."""

import contextlib
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from surgery.cli import main

for line in sys.stdin:
    args = json.loads(line)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as e:  # argparse usage errors
            code = e.code
    sys.stdout.write("@@ " + json.dumps({"rc": code, "stderr": err.getvalue()[-3000:]}) + "\n")
    sys.stdout.flush()
