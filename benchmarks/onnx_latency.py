"""onnxruntime CPU latency of fpn's exported detectors, against fpn's PyTorch path and torchvision's, one run.

Runs in the reference venv (torchvision is never a dependency of fpn; DEVELOPERS.md) with onnx and onnxruntime
added, from the repository root::

    /tmp/ref/refvenv/bin/pip install onnx onnxruntime
    /tmp/ref/refvenv/bin/python benchmarks/onnx_latency.py --threads 2 --runs 5

Per preset (``--presets``: r50-fpn and the CPU presets), the models of ``reference_torchvision.py``'s pairs,
same weights, same images: torchvision's model, fpn's as ``fpn detect`` runs it (``optimize_for_inference``:
folded BatchNorms, channels-last, Winograd), and fpn's plain model exported by ``fpn.export.export_onnx``
(static input of the images' size, batch 1, fp32; its own check against PyTorch runs first) and run by
``fpn.export.runtime.OnnxDetector`` with ``--threads`` intra-op threads. Every model's resize is set so the
networks see the images' size exactly. Timed rounds interleave every model of every preset, the order rotating
each round (``reference_torchvision.interleaved``). Writes ``benchmarks/results/onnx_<date>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import reference_torchvision as ref

from fpn.export.onnx_export import ExportOptions, export_onnx
from fpn.export.runtime import OnnxDetector


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, torch and onnxruntime")
    parser.add_argument(
        "--presets", default="r50-fpn,small-fpn,tiny-fpn", help="comma-separated (default: %(default)s)"
    )
    parser.add_argument("--size", default="800x1216", help="HEIGHTxWIDTH for r50-fpn (default: %(default)s)")
    parser.add_argument("--images", type=int, default=3, help="test images per preset (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return parser.parse_args(argv)


def machine() -> dict[str, str]:
    def run(command: str) -> str:
        return subprocess.run(command, shell=True, capture_output=True, text=True).stdout.strip()

    return {
        "cpu": run("lscpu | grep 'Model name'").split(":", 1)[-1].strip(),
        "uptime_before": run("uptime"),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine()
    sizes = ref.parse_args(["--size", args.size])
    tasks, exports = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets.split(","):
            pair = ref.build_pair(name, ref.preset_size(name, sizes), args.images)
            optimized = pair.fresh_fpn().optimize_for_inference()
            # r50-fpn's deterministic weights pass the export's check; the CPU presets' seeded random weights are
            # chaotic (boxes moved by px between runtimes), so they are exported unchecked, for timing only.
            checked = name == "r50-fpn"
            path = Path(tmp) / f"{name}.onnx"
            report = export_onnx(pair.fresh_fpn(), path, ExportOptions(size=pair.size), check=checked)
            exports[name] = report.summary() if checked else f"{path.name}: seeded random weights, exported unchecked"
            print(exports[name], flush=True)
            runner = OnnxDetector(report.path, threads=args.threads)
            tasks[f"{name} torchvision"] = [ref.infer_call(pair.reference, image) for image in pair.images]
            tasks[f"{name} fpn PyTorch"] = [ref.infer_call(optimized, image) for image in pair.images]
            tasks[f"{name} fpn onnxruntime"] = [lambda image=image, r=runner: r([image]) for image in pair.images]
        times = ref.interleaved(tasks, runs=args.runs, warmup=args.warmup)
    info["uptime_after"] = machine()["uptime_before"]
    medians = {task: statistics.median(values) for task, values in times.items()}
    best = {task: min(values) for task, values in times.items()}
    date = datetime.date.today().isoformat()
    command = "/tmp/ref/refvenv/bin/python benchmarks/onnx_latency.py " + " ".join(argv or sys.argv[1:])
    lines = [
        f"# onnxruntime latency of exported detectors, {date}",
        "",
        f"Command: `{command}`  ",
        f"CPU: {info['cpu']}; torch {info['torch']} (reference venv), {args.threads} threads; batch 1, fp32.  ",
        f"Load before: `{info['uptime_before']}`; after: `{info['uptime_after']}` (2 cores: a load above 2 means other "
        "work shared them). The rounds are interleaved, so drift over the run hits every model alike.",
        "",
        "| preset, runtime | median ms/image | best ms/image | vs torchvision (median) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for task in tasks:
        reference = medians[task.split(" ")[0] + " torchvision"]
        lines.append(
            f"| {task} | {medians[task] * 1e3:.0f} | {best[task] * 1e3:.0f} | {reference / medians[task]:.2f}x |"
        )
    lines += ["", "Exports:", ""]
    lines += [f"* {name}: {summary}" for name, summary in exports.items()]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"onnx_{date}.md").write_text("\n".join(lines) + "\n")
    (args.out_dir / f"onnx_{date}.json").write_text(json.dumps({"machine": info, "times_s": times}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
