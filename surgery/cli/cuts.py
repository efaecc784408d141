"""`surgery cuts`: where a graph can be split, and what each side costs per row."""

from __future__ import annotations

from .common import model_arg, open_model, progress, sayer, set_arg

HELP = "list every tensor that alone separates the inputs from the outputs: bytes per row, FLOPs and parameters"
EXAMPLE = ("surgery cuts data/models/vgg --outputs predictions\n"
           "  surgery cuts model.keras --outputs predictions --json\n"
           "  surgery cuts resnet.pb --outputs probs --plot cuts.png   # bytes per row against online FLOPs\n"
           "  surgery cuts model.keras --outputs predictions --measure --data images.h5   # time each Pareto cut\n\n"
           "each tensor listed is a valid `surgery split --cut`; * marks the Pareto front (no other cut has both "
           "fewer bytes per row and fewer online FLOPs)")


def add_arguments(p) -> None:
    model_arg(p)
    p.add_argument("--outputs", required=True, metavar="T[,..]", help="the tensors the online piece answers with")
    p.add_argument("--inputs", metavar="T[,..]", help="the inputs (default: the graph's placeholders)")
    set_arg(p)
    p.add_argument("--measure", action="store_true",
                   help="split at each Pareto cut and each cut narrower than all before it, and time both sides in TensorFlow (median ms per row); with "
                        "--data, also what crossing as float16 and int8 costs the outputs")
    p.add_argument("--data", action="append", default=[], metavar="SRC",
                   help="with --measure: FILE.h5[:KEY] or FILE.npy rows of the inputs (repeatable, one per input; "
                        "default: random rows)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="rows per timed run (default: 32)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw bytes per row against online FLOPs, cuts labelled (pip install 'surgery[viz]')")


def run(args):
    from ..core.errors import SurgeryError
    from ..passes.cuts import cuts

    if args.data and not args.measure:
        raise SurgeryError("--data is for --measure", "add --measure, or drop --data")
    if args.batch_size < 1:
        raise SurgeryError(f"--batch-size {args.batch_size} is not positive", "give a number of rows, e.g. 32")
    bar = progress(args) and not args.json
    report = cuts(open_model(args), args.outputs, inputs=args.inputs, set=args.set, measure=args.measure,
                  data=args.data, batch_size=args.batch_size,
                  progress=(lambda it: _bar(it, "measure")) if bar else None)
    doc = {"total": report["total"], "cuts": [c.as_dict() for c in report["cuts"]]}
    if report.get("flops_unknown"):
        doc["flops_unknown"] = report["flops_unknown"]
    if args.plot:
        plot(report["cuts"], args.plot, title=f"cuts of {args.model}")
        doc["plot"] = args.plot
    if not args.json:  # the table is the product: printed even with -q
        print(format_cuts(report, args.model))
        if args.plot:
            sayer(args)(f"\nplot written to {args.plot}")
    return 0, doc


def _bar(items, what: str):
    from tqdm import tqdm

    return tqdm(items, desc=what, unit="cut", leave=False)


def si(n: float) -> str:
    """1234567 → '1.23 M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f}"


def format_cuts(report: dict, model: str) -> str:
    """The table a person scans: one row per cut, the Pareto front starred."""
    from ..core.graph import shape_str

    total = report["total"]
    lines = [f"cuts of {model}: {si(total['flops'])}FLOPs and {total['params']:,} parameters a row in all", ""]
    header = ("", "tensor", "layer", "shape", "f32 B/row", "f16", "int8", "offline FLOPs", "online FLOPs",
              "online params")
    rows = []
    for c in report["cuts"]:
        name = c.tensor if c.kind == "cut" else f"{c.tensor} ({c.kind})"
        rows.append(("*" if c.pareto else "", name, c.layer or "", shape_str(c.shape) if c.shape else "?",
                     f"{c.bytes_per_row['float32']:,}", f"{c.bytes_per_row['float16']:,}",
                     f"{c.bytes_per_row['int8']:,}", si(c.offline["flops"]), si(c.online["flops"]),
                     f"{c.online['params']:,}"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {4, 5, 6, 7, 8, 9}
    for r in [header, *rows]:
        lines.append("  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
                     .rstrip())
    if report.get("flops_unknown"):
        lines.append(f"\n{len(report['flops_unknown'])} op(s) have shapes batch 1 does not fix; their FLOPs are not "
                     f"counted (e.g. {report['flops_unknown'][0]}): pin the input shape with a frozen graph")
    lines.append("\n* the Pareto front: no other cut has both fewer bytes per row and fewer online FLOPs")
    measured = [c for c in report["cuts"] if c.measured]
    if measured:
        lines += ["", format_measured(measured)]
    return "\n".join(lines)


def format_measured(cuts: list) -> str:
    """The --measure table: ms per row on each side, and what float16/int8 crossing costs."""
    def agreement(m, dtype):
        got = m.get(dtype)
        if not got:
            return "-"
        share = f"{got['agreement']:.1%}" if got["agreement"] is not None else "n/a"
        return f"{share} ({got['max_abs_diff']:.2g})"

    first = cuts[0].measured
    header = ("tensor", "offline ms/row", "online ms/row", "f16 top-1 (max diff)", "int8 top-1 (max diff)")
    rows = [(c.tensor, f"{c.measured['offline_ms']:.3g}", f"{c.measured['online_ms']:.3g}",
             agreement(c.measured, "float16"), agreement(c.measured, "int8")) for c in cuts]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"measured where the rows shrink and on the Pareto front: batch {first['batch_size']}, "
             "median of the timed runs"]
    for r in [header, *rows]:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    if "rows_compared" in first:
        lines.append(f"(top-1: the share of {first['rows_compared']} --data rows whose class is the float answer's; "
                     "int8 scales per channel from those rows)")
    elif "float16" not in first:
        lines.append("(--data FILE gives the float16/int8 columns: agreement with the float outputs on real rows)")
    return "\n".join(lines)


def plot(cuts: list, path: str, *, title: str) -> None:
    """Bytes per row (float32) against online FLOPs, each cut labelled, the Pareto front joined."""
    from ..core.errors import SurgeryError
    from ..core.files import atomic_path

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SurgeryError("--plot needs matplotlib", "pip install 'surgery[viz]'") from e
    fig, ax = plt.subplots(figsize=(8, 5))
    for c in cuts:
        x, y = max(c.bytes_per_row["float32"], 1), max(c.online["flops"], 1)
        ax.scatter([x], [y], color="tab:red" if c.pareto else "tab:gray", zorder=3)
        label = c.layer or (c.kind if c.kind.startswith("all") else c.tensor.split(":")[0].split("/")[-1])
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = sorted((max(c.bytes_per_row["float32"], 1), max(c.online["flops"], 1)) for c in cuts if c.pareto)
    if len(front) > 1:
        ax.plot(*zip(*front), color="tab:red", linewidth=1, zorder=2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bytes per row crossing the cut (float32)")
    ax.set_ylabel("online FLOPs per row")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
