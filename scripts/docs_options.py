"""Write each command's options into its docs page (docs/commands/NAME.md), from the CLI's own
argparse parser, between `<!-- options:begin -->` and `<!-- options:end -->`; `--check` only says
whether the pages are current (tests/test_docs.py runs it). The pages' prose explains; this table
is the complete list, so no flag goes undocumented.

    python scripts/docs_options.py          # rewrite the sections
    python scripts/docs_options.py --check  # exit 1 if a page is out of date
"""

from __future__ import annotations

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
BEGIN, END = "<!-- options:begin (scripts/docs_options.py writes this section) -->", "<!-- options:end -->"


def _subparsers():
    from surgery.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _row(action) -> str:
    names = ", ".join(f"`{o}`" if action.nargs == 0 or not action.metavar and not action.option_strings
                      else f"`{o} {action.metavar or action.dest.upper()}`" for o in action.option_strings)
    if not action.option_strings:
        names = f"`{action.metavar or action.dest.upper()}`"
    text = (action.help or "").replace("%(default)s", str(action.default)).replace("|", "\\|").replace("\n", " ")
    if action.choices and "{" not in names and action.nargs != 0:
        text += " (one of: " + ", ".join(f"`{c}`" for c in action.choices) + ")"
    if action.required:
        text = "**required**; " + text
    return f"| {names} | {text} |"


def section(name: str, parser) -> str:
    rows = [_row(a) for a in parser._actions if a.help != argparse.SUPPRESS and "--help" not in a.option_strings]
    usage = re.sub(r"\s+", " ", parser.format_usage().strip().removeprefix("usage: "))
    return "\n".join([BEGIN, "## Options", "", "```text", usage, "```", "", "| option | what it does |", "|---|---|",
                      *rows, "",
                      "Exit codes: `0` ok, `2` bad input or usage (one plain line naming the file or tensor and "
                      "what to try; nothing written), `1` an internal error" + (", `3` flagged" if name == "audit" else "")
                      + ". See [Concepts](../concepts.md).", END])


def main(argv=None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for name, parser in _subparsers().items():
        path = os.path.join(ROOT, "docs", "commands", f"{name}.md")
        text = open(path, encoding="utf-8").read()
        new = section(name, parser)
        if BEGIN in text:
            updated = text[:text.index(BEGIN)] + new + text[text.index(END) + len(END):]
        else:
            updated = text.rstrip("\n") + "\n\n" + new + "\n"
        if updated != text:
            stale.append(path)
            if not check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(updated)
    if check and stale:
        print("out of date (run python scripts/docs_options.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
