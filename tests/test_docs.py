"""The docs stay true: every ```python block of the README and of the docs/ pages runs as written,
and every ```sh block's `surgery` commands run, the README first, then the pages in the order of
mkdocs.yml's nav, in one workspace holding the demo data (`scripts/make_data.py`,
`scripts/build_vgg.py`), so a later block may use what an earlier one wrote, as a reader would.

Directives in an HTML comment right above a block (invisible on the rendered page):
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

ENV = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
COMMENT = re.compile(r"<!--((?:(?!<!--).)*?)-->\s*$", re.S)  # the last comment before the fence


def pages() -> list[str]:
    """README.md, then the docs pages in mkdocs.yml's nav order (paths relative to the root)."""
    nav = re.findall(r"^\s*- (?:[^:\n]+: )?(\S+\.md)\s*$", open(os.path.join(ROOT, "mkdocs.yml")).read(), re.M)
    return ["README.md"] + [os.path.join("docs", p) for p in nav]


def doc_blocks(page: str) -> list:
    """[(page, line, lang, code, directives)] for every python and sh block of `page`."""
    text = open(os.path.join(ROOT, page), encoding="utf-8").read()
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
        blocks.append((page, text.count("\n", 0, m.start()) + 1, lang, m.group(2), directives))
    return blocks


BLOCKS = [block for page in pages() for block in doc_blocks(page)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The demo data, built as `make data models` builds it (one pretraining epoch: the pages'
    snippets are about what runs, not about accuracy)."""
    d = tmp_path_factory.mktemp("docs")
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
    """One docs command line in bash, `surgery` and `python` being this checkout's."""
    first = shlex.split(command, comments=True)[0]
    assert first in ("surgery", "python", "cat"), f"docs shell line runs neither surgery nor python: {command}"
    return subprocess.run(["bash", "-c", SHELL_PRELUDE + command], cwd=cwd, env=dict(ENV, PY=sys.executable, **(env or {})),
                          capture_output=True, text=True, timeout=600)


SHELL_SYNTAX = re.compile(r"[|<>;&$`*?]|(^|\s)-(\s|$)")  # pipes, redirections, variables, globs, `-` for stdin/stdout


def _run_line(command: str, cwd, env, monkeypatch) -> subprocess.CompletedProcess:
    """A plain `surgery ...` line runs in this process (`conftest.cli`: TensorFlow is imported once,
    which keeps the docs test fast); anything using the shell runs in bash."""
    words = shlex.split(command, comments=True)
    if words[0] != "surgery" or SHELL_SYNTAX.search(" ".join(words)):
        return _run_shell(command, cwd, env)
    with monkeypatch.context() as m:
        for k, v in (env or {}).items():
            m.setenv(k, v)
        return cli(*words[1:])


def _exec(source: str, where: str) -> None:
    namespace = {"__name__": "__docs__"}
    exec(compile(source, where, "exec"), namespace)


def test_the_docs_have_blocks_of_both_kinds_and_every_page_is_in_the_nav():
    langs = [b[2] for b in BLOCKS]
    assert langs.count("python") >= 6 and langs.count("sh") >= 8
    for page, line, _, _, d in BLOCKS:
        if "no-test" in d:
            assert len(d["no-test"].split()) >= 3, f"{page}:{line}: no-test needs a stated reason"
    on_disk = {os.path.relpath(os.path.join(folder, f), ROOT) for folder, _, files in os.walk(os.path.join(ROOT, "docs"))
               for f in files if f.endswith(".md")}
    assert on_disk == set(pages()[1:]), "every docs page is in mkdocs.yml's nav (and so tested)"
    hidden = [f"{page}:{line}" for page, line, _, _, d in BLOCKS if "setup" in d or "pysetup" in d]
    assert not hidden, f"examples build their inputs in visible code, not in hidden setups: {hidden}"


def test_every_flag_of_every_command_is_on_its_page():
    """docs/commands/NAME.md holds the options table scripts/docs_options.py writes from the parser."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "docs_options.py"), "--check"],
                          capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr


def test_the_readme_stays_short():
    assert len(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().splitlines()) <= 250


@pytest.mark.parametrize("page,line,lang,code,directives", BLOCKS, ids=[f"{b[0]}:{b[1]}-{b[2]}" for b in BLOCKS])
def test_docs_block(page, line, lang, code, directives, workspace, monkeypatch):
    where = f"{page}:{line}"
    if "no-test" in directives:
        pytest.skip(directives["no-test"])
    for module in directives.get("needs", "").split():
        if module == "java":
            if shutil.which("java") is None:
                pytest.skip(f"{where} needs Java (Spark)")
            continue
        pytest.importorskip(module, reason=f"{where} needs the optional {module}")
    env = dict(kv.split("=", 1) for kv in directives.get("env", "").split())
    monkeypatch.chdir(workspace)
    if lang == "python":
        _exec(directives.get("setup", "") + "\n" + code, where)
        return
    if "pysetup" in directives:
        _exec(directives["pysetup"], where)
    for command in _commands(directives.get("setup", "")):
        r = _run_shell(command, workspace, env)
        assert r.returncode == 0, f"{where} setup `{command}` failed:\n{r.stderr}"
    commands = _commands(code)
    exits = [int(x) for x in directives.get("exits", "").split()] or [0] * len(commands)
    assert len(exits) == len(commands), f"{where}: `exits` lists {len(exits)} codes for {len(commands)} lines"
    for command, want in zip(commands, exits):
        r = _run_line(command, workspace, env, monkeypatch)
        assert r.returncode == want, f"{where} `{command}` exited {r.returncode}, not {want}:\n{r.stderr}"
        assert "Traceback" not in r.stderr
