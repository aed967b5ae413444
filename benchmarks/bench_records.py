"""Run the standard set of ``fpn bench`` records and tabulate them: one command for the folder of records.

    python benchmarks/bench_records.py --threads 2 [--repeat-bf16 3] [--only r50_infer_bf16 ...] [--out-dir DIR]

Each record is a separate ``fpn bench`` process (r50-fpn inference and training in fp32 and bf16 at 800x1216,
small-fpn and tiny-fpn inference (tiny with ``--scaling``) and training at their own size, every one with
``--layers``), run one after another, writing
``DIR/<name>.json``; ``--repeat-bf16 N`` runs the r50-fpn bf16 inference N times (``r50_infer_bf16_<i>.json``)
because that record moves most with the machine's speed. Then ``DIR/README.md`` is written: the machine, the
commit, this command, and one table row per JSON file in ``DIR`` (also ones written earlier), with each row's
own ``fpn bench`` command. The default ``DIR`` is ``benchmarks/results/fpn_bench_<date>_<HHMM>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

R50 = ["--model", "r50-fpn", "--size", "800x1216", "--layers"]
SMALL = ["--model", "small-fpn", "--layers"]
TINY = ["--model", "tiny-fpn", "--layers"]
# Every record also times its dense layers alone (--layers): the ceiling its fraction of peak is set against.
RECORDS: dict[str, list[str]] = {
    "r50_infer_fp32": [*R50, "--mode", "infer", "--precision", "fp32", "--runs", "5"],
    "r50_infer_bf16": [*R50, "--mode", "infer", "--precision", "bf16", "--runs", "5"],
    "r50_train_fp32": [*R50, "--mode", "train", "--precision", "fp32", "--runs", "3"],
    "r50_train_bf16": [*R50, "--mode", "train", "--precision", "bf16", "--runs", "3"],
    "small_infer_fp32": [*SMALL, "--mode", "infer", "--precision", "fp32", "--runs", "5"],
    "small_train_fp32": [*SMALL, "--mode", "train", "--precision", "fp32", "--runs", "5"],
    "tiny_infer_fp32": [*TINY, "--mode", "infer", "--precision", "fp32", "--runs", "5", "--scaling"],
    "tiny_train_fp32": [*TINY, "--mode", "train", "--precision", "fp32", "--runs", "5"],
}

HEADER = (
    "| file | model | mode | precision | input x batch | median s | images/s | GFLOPs | executed GFLOPs | GFLOP/s "
    "| peak GFLOP/s (kernel) | % of peak | executed % of peak | peak after each run, GFLOP/s | paired % of peak "
    "| executed paired % | layers alone, share of time | ceiling % of peak | paired ceiling % | peak MB | command |"
)
ALIGN = "| --- | --- | --- | --- | --- |" + " ---: |" * 15 + " --- |"


def percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.0f} %"


def table_row(path: Path, record: dict[str, Any]) -> str:
    """One Markdown row: '=' where Winograd did not change the executed FLOPs."""
    same = record["executed_gflops"] >= record["gflops"]
    rates = record.get("peak_during_runs_gflops_per_s") or []
    layers = record.get("layers") or {}  # records made without --layers leave those cells empty
    cells = [
        path.name,
        record["model"],
        record["mode"],
        record["precision"],
        f"{record['size']} x {record['batch']}",
        f"{record['median_s']:.3f}",
        f"{record['images_per_s']:.2f}",
        f"{record['gflops']:.1f}",
        "=" if same else f"{record['executed_gflops']:.1f}",
        f"{record['gflops_per_s']:.1f}",
        f"{record['peak_gflops_per_s']:.0f} ({record['peak_kernel'].split()[0]})",
        percent(record["fraction_of_peak"]),
        "=" if same else percent(record["executed_fraction_of_peak"]),
        f"{min(rates):.0f}-{max(rates):.0f}" if rates else "",
        percent(record.get("paired_fraction_of_peak")),
        "=" if same else percent(record.get("executed_paired_fraction_of_peak")),
        percent(layers.get("share_of_iteration")),
        percent(layers.get("ceiling_fraction_of_peak")),
        percent(layers.get("paired_ceiling_fraction_of_peak")),
        "" if record.get("peak_mb") is None else f"{record['peak_mb']:.0f}",
        f"`{record['command']}`",
    ]
    return "| " + " | ".join(cells) + " |"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_readme(out_dir: Path, command: str, started: str) -> Path:
    files = sorted(out_dir.glob("*.json"))
    records = {path: json.loads(path.read_text()) for path in files}
    machine = next((r.get("machine") for r in records.values() if r.get("machine")), {})
    lines = [
        f"# `fpn bench` records, {started}",
        "",
        f"Made by `{command}` at commit {commit()}, one `fpn bench` process after another.",
        f"Machine: {json.dumps(machine)}",
        "",
        "Columns: see benchmarks/README.md (`GFLOPs` counts every layer as a direct convolution, `executed` what",
        "ran; 'paired %' is the median over iterations of each iteration's rate over the peak kernel timed right",
        "after it, the fraction to read on a machine whose speed drifts). 'layers alone': the dense calls of one",
        "iteration timed one by one (`--layers`), their sum over the iteration's time; 'ceiling': the fraction of",
        "peak the model would show if nothing else cost time (% of peak / share).",
        "",
        HEADER,
        ALIGN,
        *(table_row(path, record) for path, record in records.items()),
    ]
    readme = out_dir / "README.md"
    readme.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat-bf16", type=int, default=1, help="how many r50-fpn bf16 inference records")
    parser.add_argument("--only", nargs="*", choices=sorted(RECORDS), help="a subset of the records")
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    out_dir = args.out_dir or Path(__file__).parent / "results" / f"fpn_bench_{time.strftime('%Y-%m-%d_%H%M')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, list[str]]] = []
    for name in args.only or RECORDS:
        copies = args.repeat_bf16 if name == "r50_infer_bf16" and args.repeat_bf16 > 1 else 1
        for i in range(copies):
            jobs.append((f"{name}_{i + 1}" if copies > 1 else name, RECORDS[name]))
    for name, options in jobs:
        output = Path(os.path.relpath(out_dir / f"{name}.json"))  # relative: the record's command names it
        bench = [sys.executable, "-m", "fpn", "bench", *options, "--threads", str(args.threads)]
        bench += ["--output", str(output)]
        print("$", shlex.join(bench), flush=True)
        if subprocess.run(bench).returncode != 0:
            print(f"bench_records: {name} failed; its record is not written", file=sys.stderr)
    write_readme(out_dir, shlex.join(["python", *sys.argv]), started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
