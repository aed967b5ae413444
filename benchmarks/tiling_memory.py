"""Peak memory of ``fpn detect --tile`` on large images: each run a fresh process, its RSS high-water mark.

Run from the repository root with the package's venv::

    .venv/bin/python benchmarks/tiling_memory.py --weights RUN/model.pt --sizes 4096 16384 --tile 512

For each size, a flat-colour PNG of SIZE x SIZE px (small on disk, full size once decoded) goes through
``fpn detect`` in a fresh Python process, tiled (``--tile``), and at the smaller sizes also whole (the model's
own resize), and the process's peak resident set (``ru_maxrss``) is reported with the wall time. A flat image
gives no detections, so what is measured is the image and the network, not the merging of many boxes.
Writes a Markdown table to ``--output``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

CHILD = """
import resource, sys
from fpn.cli import main
status = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
sys.exit(status)
"""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def peak_mb(args: list[str]) -> tuple[int, float]:
    """``(peak RSS in MB, wall seconds)`` of ``fpn ARGS`` in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"fpn {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return int(done.stdout.strip().splitlines()[-1]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="checkpoint to run")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384], help="image sides in px")
    parser.add_argument("--tile", type=int, default=512, help="tile size (default: %(default)s)")
    parser.add_argument("--tile-batch", type=int, default=4, help="tiles per forward pass (default: %(default)s)")
    parser.add_argument("--whole-up-to", type=int, default=8192, help="also run untiled up to this size")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/tiling_memory.md"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            image = Path(folder) / f"flat_{size}.png"
            Image.new("RGB", (size, size), (90, 120, 60)).save(image)
            common = ["detect", str(image), "--weights", args.weights, "--output", str(Path(folder) / "d.json")]
            tiled = [*common, "--tile", str(args.tile), "--tile-batch", str(args.tile_batch), "--device", "cpu"]
            mb, seconds = peak_mb(tiled)
            rows.append((size, f"--tile {args.tile} --tile-batch {args.tile_batch}", mb, seconds))
            if size <= args.whole_up_to:
                mb, seconds = peak_mb([*common, "--device", "cpu"])
                rows.append((size, "whole image", mb, seconds))
            image.unlink()
    command = " ".join([Path(sys.executable).name, *sys.argv])
    lines = [
        f"# Peak memory of tiled detection, {datetime.date.today().isoformat()}",
        "",
        f"Command: `{command}`",
        "",
        f"CPU: {cpu_name()}; model: {args.weights}; flat-colour PNG images; each run a fresh process.",
        "",
        "| image | run | peak RSS (MB) | wall s |",
        "|---|---|---:|---:|",
        *[f"| {s} x {s} | {run} | {mb} | {sec:.1f} |" for s, run, mb, sec in rows],
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
