"""What does bf16 mixed-precision training cost in accuracy? ``make demo``'s run with ``train.amp=true``.

    python benchmarks/amp_training.py --reference runs/demo/metrics.json --threads 2

Trains exactly ``make demo``'s configuration (``fpn.engine.config.demo_config``: tiny-fpn, 1200 iterations of
2 images, synthetic set) with ``train.amp=true`` (bf16 autocast on a CPU with bf16 instructions), evaluates on
the val split as the demo does, and sets the metrics beside an fp32 run's ``metrics.json`` (``make demo``'s).
One run each: CPU training is not repeatable to the bit across kernel changes, so a difference of a point or
two is within what two fp32 runs can show. Writes ``results/amp_training_<date>.md/.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from records import METRIC_KEYS, write_record  # benchmarks/records.py (this script's folder)

from fpn.bench import machine_info
from fpn.engine import train
from fpn.engine.config import demo_config

KEYS = METRIC_KEYS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="an fp32 run's metrics.json (make demo's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference = json.loads(args.reference.read_text())["metrics"]
    config = demo_config()
    config.train.amp = True
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        train(config, Path(folder) / "run", progress=False)
        seconds = time.perf_counter() - start
        metrics = json.loads((Path(folder) / "run" / "metrics.json").read_text())["metrics"]
    record = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "reference": str(args.reference),
        "machine": machine_info(threads=args.threads),
        "amp_dtype": "bfloat16",
        "train_and_eval_s": seconds,
        "fp32": {k: reference[k] for k in KEYS},
        "amp": {k: metrics[k] for k in KEYS},
    }
    machine = record["machine"]
    lines = [
        f"# bf16 mixed-precision training vs fp32, {record['date']}",
        "",
        f"`{record['command']}`",
        "",
        f"{machine.get('cpu')}, {args.threads} thread(s), torch {machine.get('torch')}; make demo's run "
        f"(tiny-fpn, 1200 iterations of 2 images, synthetic set, val split); fp32 metrics from {args.reference}; "
        f"the amp run took {seconds:.0f} s (training and evaluation).",
        "",
        "| training | " + " | ".join(KEYS) + " |",
        "| --- | " + " | ".join("---:" for _ in KEYS) + " |",
    ]
    for name in ("fp32", "amp"):
        label = "fp32" if name == "fp32" else "bf16 autocast (train.amp=true)"
        lines.append(f"| {label} | " + " | ".join(f"{record[name][k]:.2f}" for k in KEYS) + " |")
    lines += ["", f"AP change amp - fp32: {record['amp']['AP'] - record['fp32']['AP']:+.2f} points (one run each)."]
    write_record(args.out_dir, "amp_training", lines, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
