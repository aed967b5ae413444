"""The comparison's report (:mod:`fpn.compare`): the ``results.md`` table, its two figures, a design's line.

Every number of a design's row is also shown as a ratio to the reference design's (``fpn`` by default), so
that the table reads as the paper's: what each design gains or costs against the feature pyramid. The
functions read only the ``results`` dictionary ``fpn.compare.compare`` returns (and writes as
``results.json``), so a report can be drawn again from a saved ``results.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fpn.io import atomic_write_text
from fpn.viz.save import save_picture

#: results.md's columns: (header, results key, scale applied to the value for display, whether it is an AP).
#: The AP-like ones are the metrics compare reads from each run's evaluation, the others its costs.
COLUMNS = (
    *((name, name, 1.0, True) for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")),
    ("GFLOPs", "GFLOPs", 1.0, False),
    ("params (M)", "params", 1e-6, False),
    ("latency (ms)", "latency_s", 1e3, False),
    ("train peak (MiB)", "train_peak_mb", 1.0, False),
    ("infer peak (MiB)", "infer_peak_mb", 1.0, False),
)


def write_report(results: dict[str, Any], out: Path) -> None:
    """``out/results.md``, ``out/ap_by_size.png`` and ``out/accuracy_vs_latency.png`` of ``results``."""
    atomic_write_text(results_markdown(results), out / "results.md")
    plot_ap_by_size(results, out / "ap_by_size.png")
    plot_accuracy_vs_latency(results, out / "accuracy_vs_latency.png")


def summary_line(row: dict[str, Any]) -> str:
    """One line: AP, cost and latency of a design's results."""
    ap = "n/a" if row.get("AP") is None else f"{row['AP']:.1f}"
    return f"AP {ap}, {row['GFLOPs']:.3g} GFLOPs, {row['params'] / 1e6:.2f}M params, {1e3 * row['latency_s']:.0f} ms"


def format_number(value: float, *, fixed: bool = False) -> str:
    """AP-like numbers with one decimal; others with about three significant digits, never in e-notation."""
    if fixed:
        return f"{value:.1f}"
    size = abs(value)
    if size >= 100 or value == 0:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_cell(
    value: float | None,
    reference: float | None,
    *,
    scale: float = 1.0,
    fixed: bool = False,
    spread: dict[str, Any] | None = None,
) -> str:
    """``"12.3 (0.85x)"``: the value and its ratio to the reference's; ``-`` where there is no value. With a
    ``spread`` over seeds (``{"min", "max"}``) the range follows the value: ``"12.3 [11.9-12.8] (0.85x)"``."""
    if value is None:
        return "-"
    text = format_number(value * scale, fixed=fixed)
    if spread is not None:
        low, high = (format_number(spread[end] * scale, fixed=fixed) for end in ("min", "max"))
        text += f" [{low}-{high}]"
    if reference:  # no ratio to a missing or zero reference
        text += f" ({value / reference:.2f}x)"
    return text


def results_markdown(results: dict[str, Any]) -> str:
    """``results.md``: what was run, on what, and the table."""
    config, machine, rows = results["config"], results["machine"], results["designs"]
    run = config["run"]
    reference = rows.get(config["reference"])
    budget = config["budget"]
    spent = " and ".join(
        text
        for text in (
            f"{budget['iters']} iterations" if budget["iters"] else "",
            f"{budget['minutes']} minutes" if budget["minutes"] else "",
        )
        if text
    )
    lines = [
        "# Pyramid designs compared",
        "",
        f"One detector (backbone R{run['model']['backbone']['depth']} width {run['model']['backbone']['width']}, "
        f"d = {run['model']['pyramid']['channels']}) per design, trained on `{config['data']}` for {spent} of "
        f"{run['train']['batch_size']} images ({run['train']['schedule']} schedule, lr {run['train']['lr']}, "
        f"{_seeds_text(config)}); COCO metrics on the val split. Costs on {machine['cpu']} with "
        f"{machine['threads']} thread{'s' if machine['threads'] != 1 else ''}, torch {machine['torch']}, for one "
        f"image (`{config['probe_image']}`).",
        "",
    ]
    if reference is not None:
        lines += [f"In parentheses: the ratio to `{config['reference']}`.", ""]
    header = ["design", *(column[0] for column in COLUMNS)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for design, row in rows.items():
        spreads = row.get("spread") or {}
        cells = [
            format_cell(
                row.get(key), None if reference is None else reference.get(key), scale=scale, fixed=fixed,
                spread=spreads.get(key),
            )
            for _, key, scale, fixed in COLUMNS
        ]  # fmt: skip
        lines.append(f"| `{design}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "- GFLOPs: one forward pass in eval mode (FlopCounterMode, 2 per multiply-add), every test scale for "
        "`image-pyramid`.",
        f"- latency: median of {config['latency_runs']} CPU forward passes after {config['latency_warmup']} "
        "untimed ones, timed in alternating rounds across the designs (each round every design once).",
        "- peak memory: resident memory one step adds to a process holding the model (fresh subprocess); "
        "train = forward, backward and update of one batch at the largest training scale.",
        "- `image-pyramid` is the `single-map` model run at the test scales "
        f"{run['model']['pyramid']['test_scales']}: it trains as `single-map` does.",
        "",
    ]
    if results.get("differences"):
        lines += ["## Which differences exceed the seed-to-seed spread", ""]
        lines += [f"- {line}" for line in results["differences"]] + [""]
    return "\n".join(lines)


def _seeds_text(config: dict[str, Any]) -> str:
    """``seed 0``, or for several ``seeds 0-2: each number the mean, the range over the seeds in brackets``."""
    seeds = config.get("seeds") or [config["seed"]]
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"seeds {seeds[0]}-{seeds[-1]}: each metric the mean, its range over the seeds in brackets"


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_ap_by_size(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: APs, APm and APl of every design."""
    rows = results["designs"]
    figure = _figure((max(6.0, 1.3 * len(rows) + 2), 4.0))
    ax = figure.subplots()
    width = 0.8 / 3
    for i, key in enumerate(("APs", "APm", "APl")):
        values = [float("nan") if row.get(key) is None else row[key] for row in rows.values()]
        ax.bar([x + (i - 1) * width for x in range(len(rows))], values, width, label=key)
    ax.set_xticks(range(len(rows)), list(rows), rotation=20)
    ax.set(ylabel="val AP (0-100)", title="AP by object size")
    ax.legend()
    save_picture(figure, path, dpi=100)


def plot_accuracy_vs_latency(results: dict[str, Any], path: Path) -> None:
    """AP against CPU latency, one labelled point per design (the reference design as a star)."""
    rows = results["designs"]
    figure = _figure((6.5, 4.5))
    ax = figure.subplots()
    for design, row in rows.items():
        latency, ap = 1e3 * row["latency_s"], row.get("AP") or 0.0
        ax.scatter([latency], [ap], s=60, marker="*" if design == results["config"]["reference"] else "o")
        ax.annotate(design, (latency, ap), textcoords="offset points", xytext=(5, 5), fontsize=9)
    machine = results["machine"]
    threads = f"{machine['threads']} thread{'s' if machine['threads'] != 1 else ''}"
    ax.set(xlabel=f"CPU latency per image (ms, {threads})", ylabel="val AP (0-100)")
    ax.set_title("accuracy vs latency")
    ax.margins(0.2)
    save_picture(figure, path, dpi=100)
