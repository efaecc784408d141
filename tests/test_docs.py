"""The README stays true: every ```python block runs as written, and every ```sh block's `surgery`
commands run, in README order, in one workspace holding the demo data (`scripts/make_data.py`,
`scripts/build_vgg.py`) — so a later block may use what an earlier one wrote, as a reader would.

Directives in an HTML comment right above a block (invisible on GitHub):
  <!-- setup:
  lines run first (Python for a python block; shell commands for a sh block) -->
  <!-- pysetup:
  Python run before a sh block (making the files its commands name) -->
  <!-- exits: 2 0 -->            expected exit codes of the block's commands, in order (default 0)
  <!-- needs: apache_beam -->    skip unless the optional module is installed (an extra); `java`: a Java runtime
  <!-- env: K=V ... -->          environment variables for the block's commands (e.g. a test-sized limit)
  <!-- no-test: reason -->       not run; the reason must say why (a cluster, `make` itself)
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, cli

README = os.path.join(ROOT, "README.md")
ENV = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
COMMENT = re.compile(r"<!--((?:(?!<!--).)*?)-->\s*$", re.S)  # the last comment before the fence


def readme_blocks() -> list:
    """[(line, lang, code, directives)] for every python and sh block."""
    text = open(README, encoding="utf-8").read()
    blocks = []
    for m in FENCE.finditer(text):
        lang = m.group(1)
        if lang not in ("python", "sh"):
            continue
        before = text[:m.start()].rstrip()
        directives = {}
        while True:  # the comments stacked right above the fence
            c = COMMENT.search(before)
            if not c:
                break
            body = c.group(1).strip()
            key, _, value = body.partition(":")
            directives[key.strip()] = value.strip("\n ") if "setup" in key else value.strip()
            before = before[:c.start()].rstrip()
        blocks.append((text.count("\n", 0, m.start()) + 1, lang, m.group(2), directives))
    return blocks


BLOCKS = readme_blocks()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The demo data, built as `make data models` builds it (one pretraining epoch: the README's
    snippets are about what runs, not about accuracy)."""
    d = tmp_path_factory.mktemp("readme")
    for cmd in (["scripts/make_data.py", "--out", str(d / "data/shapes.h5")],
                ["scripts/build_vgg.py", "--data", str(d / "data/shapes.h5"), "--out", str(d / "data/models/vgg"),
                 "--epochs", "1"]):
        subprocess.run([sys.executable, os.path.join(ROOT, cmd[0]), *cmd[1:]], env=ENV, check=True, cwd=ROOT,
                       capture_output=True, timeout=600)
    for name in ("recipes", "scripts"):  # the recipes find scripts/nets.py beside them
        os.symlink(os.path.join(ROOT, name), d / name)
    return d


def _commands(code: str) -> list:
    """The shell block's command lines: continuations joined, comments and blank lines dropped."""
    lines, current = [], ""
    for raw in code.splitlines():
        line = raw.rstrip()
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    return lines


SHELL_PRELUDE = 'surgery() { "$PY" -m surgery "$@"; }; python() { "$PY" "$@"; }; set -o pipefail; '


def _run_shell(command: str, cwd, env=None) -> subprocess.CompletedProcess:
    """One README command line in bash, `surgery` and `python` being this checkout's."""
    first = shlex.split(command, comments=True)[0]
    assert first in ("surgery", "python", "cat"), f"README shell line runs neither surgery nor python: {command}"
    return subprocess.run(["bash", "-c", SHELL_PRELUDE + command], cwd=cwd, env=dict(ENV, PY=sys.executable, **(env or {})),
                          capture_output=True, text=True, timeout=600)


SHELL_SYNTAX = re.compile(r"[|<>;&$`*?]|(^|\s)-(\s|$)")  # pipes, redirections, variables, globs, `-` for stdin/stdout


def _run_line(command: str, cwd, env, monkeypatch) -> subprocess.CompletedProcess:
    """A plain `surgery ...` line runs in this process (`conftest.cli`: TensorFlow is imported once,
    which keeps the README test fast); anything using the shell runs in bash."""
    words = shlex.split(command, comments=True)
    if words[0] != "surgery" or SHELL_SYNTAX.search(" ".join(words)):
        return _run_shell(command, cwd, env)
    with monkeypatch.context() as m:
        for k, v in (env or {}).items():
            m.setenv(k, v)
        return cli(*words[1:])


def _exec(source: str, line: int) -> None:
    namespace = {"__name__": "__readme__"}
    exec(compile(source, f"README.md:{line}", "exec"), namespace)


def test_the_readme_has_blocks_of_both_kinds():
    langs = [b[1] for b in BLOCKS]
    assert langs.count("python") >= 6 and langs.count("sh") >= 8
    for line, _, _, d in BLOCKS:
        if "no-test" in d:
            assert len(d["no-test"].split()) >= 3, f"README.md:{line}: no-test needs a stated reason"


@pytest.mark.parametrize("line,lang,code,directives", BLOCKS, ids=[f"L{b[0]}-{b[1]}" for b in BLOCKS])
def test_readme_block(line, lang, code, directives, workspace, monkeypatch):
    if "no-test" in directives:
        pytest.skip(directives["no-test"])
    for module in directives.get("needs", "").split():
        if module == "java":
            if shutil.which("java") is None:
                pytest.skip(f"README.md:{line} needs Java (Spark)")
            continue
        pytest.importorskip(module, reason=f"README.md:{line} needs the optional {module}")
    env = dict(kv.split("=", 1) for kv in directives.get("env", "").split())
    monkeypatch.chdir(workspace)
    if lang == "python":
        _exec(directives.get("setup", "") + "\n" + code, line)
        return
    if "pysetup" in directives:
        _exec(directives["pysetup"], line)
    for command in _commands(directives.get("setup", "")):
        r = _run_shell(command, workspace, env)
        assert r.returncode == 0, f"README.md:{line} setup `{command}` failed:\n{r.stderr}"
    commands = _commands(code)
    exits = [int(x) for x in directives.get("exits", "").split()] or [0] * len(commands)
    assert len(exits) == len(commands), f"README.md:{line}: `exits` lists {len(exits)} codes for {len(commands)} lines"
    for command, want in zip(commands, exits):
        r = _run_line(command, workspace, env, monkeypatch)
        assert r.returncode == want, f"README.md:{line} `{command}` exited {r.returncode}, not {want}:\n{r.stderr}"
        assert "Traceback" not in r.stderr
