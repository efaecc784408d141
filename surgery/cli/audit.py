"""`surgery audit`: ops that touch files, the network or Python (exit 3 when flagged)."""

from __future__ import annotations

from .common import load_options, model_arg

HELP = "list ops that touch files, the network or Python (exit 3 when flagged)"
EXAMPLE = "surgery audit downloaded.pb"


def add_arguments(p) -> None:
    model_arg(p)


def run(args):
    from ..passes.audit import audit_path, format_audit

    reports = audit_path(args.model, load_options(args))
    if not args.json:
        print("\n".join(format_audit(r) for r in reports))
    clean = all(r["clean"] for r in reports)
    return (0 if clean else 3), (reports[0] if len(reports) == 1 else {"clean": clean, "pieces": reports})


def refuse_flagged(args) -> None:
    """--strict: audit MODEL before any command touches it."""
    from ..core.errors import SurgeryError
    from ..passes.audit import audit_path, strict_violations

    bad = [f for r in audit_path(args.model, load_options(args)) for f in strict_violations(r)]
    if bad:
        listed = ", ".join(f"{f['name']} ({f['op']})" for f in bad[:3]) + (" …" if len(bad) > 3 else "")
        raise SurgeryError(f"--strict: {args.model} has {len(bad)} op(s) that touch files, the network or "
                           f"Python: {listed}", "run `surgery audit` on it, or drop --strict if you trust it")
