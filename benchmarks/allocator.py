"""What does fpn.allocator (freed memory kept in glibc's heap) change? Fresh ``fpn bench`` processes, alternated.

    python benchmarks/allocator.py --rounds 4 --threads 2
    python benchmarks/allocator.py --jobs tiny-fpn:train --rounds 2   # quick

Each round runs every job twice, in fresh processes, once with the ``fpn`` command's default (the setting on) and
once with ``FPN_KEEP_FREED_MEMORY=0`` (glibc's own dynamic thresholds), the order alternating from round to
round. The setting cannot be switched back within a process (glibc has no call that restores its dynamic
thresholds), so only separate processes compare it fairly. Per job: the median iteration time of each process,
the paired ratio (median over rounds of default-off time over setting-on time, the two processes run one after
the other), the minor page faults per iteration, and the peak memory of one iteration (``fpn bench``'s
``peak_mb``: a fresh probe process with the same setting). Writes benchmarks/results/allocator_<date>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from records import write_record  # benchmarks/records.py (this script's folder)

from fpn.allocator import ENV_SWITCH
from fpn.measure import machine_info

DEFAULT_JOBS = ("tiny-fpn:train", "small-fpn:train", "r18-fpn:train", "r50-fpn:infer")
LARGE = {"r18-fpn", "r50-fpn"}  # COCO-sized models: --size


def bench(model: str, mode: str, kept: bool, args: argparse.Namespace) -> dict:
    """One ``fpn bench`` process; its JSON record."""
    env = dict(os.environ)
    env[ENV_SWITCH] = "1" if kept else "0"
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "bench.json"
        command = [
            sys.executable,
            "-m",
            "fpn",
            "bench",
            "--model",
            model,
            "--mode",
            mode,
            "--threads",
            str(args.threads),
            "--runs",
            str(args.runs),
            "--peak-gflops",
            "1",
            "--output",
            str(output),
        ]
        if model in LARGE:
            command += ["--size", args.size]
        subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        return json.loads(output.read_text())


def _median(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default=",".join(DEFAULT_JOBS), help="MODEL:MODE,... (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5, help="timed iterations per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", default="800x1216", help="input of r18-fpn and r50-fpn")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    jobs = [tuple(job.split(":")) for job in args.jobs.split(",")]
    runs: dict[str, dict[str, list[dict]]] = {f"{m} {mode}": {"kept": [], "default": []} for m, mode in jobs}
    for round_index in range(args.rounds):
        for model, mode in jobs:
            order = (True, False) if round_index % 2 == 0 else (False, True)
            for kept in order:
                record = bench(model, mode, kept, args)
                runs[f"{model} {mode}"]["kept" if kept else "default"].append(
                    {
                        "median_s": record["median_s"],
                        "peak_mb": record["peak_mb"],
                        "page_faults": record["page_faults_per_iteration"],
                        "allocator": record["allocator"],
                    }
                )
                print(
                    f"round {round_index + 1} {model} {mode} {'kept' if kept else 'default'}: "
                    f"{record['median_s']:.3f} s, {record['peak_mb']} MB",
                    flush=True,
                )

    machine = machine_info(None)
    lines = [
        "# fpn.allocator: glibc's thresholds fixed (freed memory kept) against glibc's defaults",
        "",
        f"`{shlex.join(['python', 'benchmarks/allocator.py', *sys.argv[1:]])}`",
        "",
        f"{machine['cpu']}, {args.threads} thread(s), torch {machine['torch']}; {args.rounds} rounds, each a fresh "
        f"`fpn bench` process per setting ({args.runs} timed iterations); r18/r50 at {args.size}, the small presets "
        "at their test size.",
        "",
        "| job | default median s | kept median s | paired speed-up (default / kept) | range | peak MB default | "
        "peak MB kept | page faults per iteration, default | kept |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    summary = {}
    for name, by in runs.items():
        default = [r["median_s"] for r in by["default"]]
        kept = [r["median_s"] for r in by["kept"]]
        ratios = [d / k for d, k in zip(default, kept)]
        peak_default = [r["peak_mb"] for r in by["default"] if r["peak_mb"] is not None]
        peak_kept = [r["peak_mb"] for r in by["kept"] if r["peak_mb"] is not None]
        summary[name] = {
            "paired_speedup": statistics.median(ratios),
            "speedups": ratios,
            "median_default_s": statistics.median(default),
            "median_kept_s": statistics.median(kept),
            "peak_mb_default": statistics.median(peak_default) if peak_default else None,
            "peak_mb_kept": statistics.median(peak_kept) if peak_kept else None,
            "page_faults_default": _median([r["page_faults"] for r in by["default"]]),
            "page_faults_kept": _median([r["page_faults"] for r in by["kept"]]),
        }
        row = summary[name]
        lines.append(
            f"| {name} | {row['median_default_s']:.3f} | {row['median_kept_s']:.3f} | {row['paired_speedup']:.2f}x "
            f"| {min(ratios):.2f}-{max(ratios):.2f}x | {row['peak_mb_default'] or float('nan'):.0f} | "
            f"{row['peak_mb_kept'] or float('nan'):.0f} | {row['page_faults_default'] or float('nan'):.0f} | "
            f"{row['page_faults_kept'] or float('nan'):.0f} |"
        )
    lines += ["", "Timings are comparable only within one run on one machine."]
    record = {
        "command": sys.argv,
        "machine": machine,
        "threads": args.threads,
        "rounds": args.rounds,
        "runs": args.runs,
        "size": args.size,
        "summary": summary,
        "processes": runs,
    }
    write_record(args.out_dir, "allocator", lines, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
