"""The from-scratch recipe, measured: tiny-fpn on the built-in synthetic set, each change against the baseline.

    .venv/bin/python benchmarks/recipe.py --arms baseline,full --seeds 0,1 --iters 600 --parallel 2

Every run is ``fpn train --data synthetic --model tiny-fpn --iters N`` with ``fpn compare``'s train settings
(the demo's: batch 2, lr 0.02, cosine, 50 warm-up iterations), one thread and no loader processes
(``OMP_NUM_THREADS=1``, ``train.workers=0``), so that the process's CPU time is all the run's work: what is held
equal is the iteration count, and the CPU seconds each run took (training and its final evaluation, from
``wait4``'s rusage) are reported beside its metrics, so that an arm that costs more per iteration shows it. On a
shared machine wall time is not comparable between runs, CPU time nearly is.

Arms (``key=value`` train overrides over the baseline):

* ``baseline``: flips and multi-scale training only, as the presets train today;
* ``mosaic``: ``train.mosaic=1.0`` (closing for the last ``train.close_mosaic=0.1`` of the run);
* ``jitter``: scale 0.5 and translation 0.1 (``train.scale_jitter``, ``train.translate``), HSV gains
  ``(0.015, 0.7, 0.4)``: Ultralytics' defaults;
* ``ema``: ``train.ema=0.998``, ``train.ema_tau=100``: Ultralytics' 0.9999 / 2000 updates ramp is made for
  100k-step runs; over 600 iterations it would average the last few steps only;
* ``full``: all of the above.

The val metrics are each run's own final evaluation (``metrics.json``, the same code for every arm; the EMA
weights where EMA is on). Per arm: mean and range over the seeds; an arm beats the baseline in a metric only
when its range lies above the baseline's (:func:`fpn.compare.seeds.beyond_spread`). Writes
``benchmarks/results/recipe_<date>.md`` (and ``.json``) with the command, CPU model and machine load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fpn.compare.seeds import beyond_spread, summarise
from fpn.engine.config import DEMO_TRAIN

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
JITTER = ["train.scale_jitter=0.5", "train.translate=0.1", "train.hsv=[0.015,0.7,0.4]"]
MOSAIC = ["train.mosaic=1.0", "train.close_mosaic=0.1"]
EMA = ["train.ema=0.998", "train.ema_tau=100"]
ARMS = {"baseline": [], "mosaic": MOSAIC, "jitter": JITTER, "ema": EMA, "full": [*MOSAIC, *JITTER, *EMA]}


def shell(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def train_command(arm: str, seed: int, iters: int, out: Path) -> list[str]:
    shared = [f"train.{k}={v}" for k, v in DEMO_TRAIN.items() if k != "workers"]
    return [
        sys.executable, "-m", "fpn", "train", "--data", "synthetic", "--model", "tiny-fpn", "--iters", str(iters),
        "--out", str(out), *shared, "train.workers=0", f"train.seed={seed}", *ARMS[arm],
    ]  # fmt: skip


def run(arm: str, seed: int, iters: int, root: Path) -> dict:
    """One training run in a child process; its metrics, CPU seconds and wall seconds."""
    out = root / f"{arm}-seed{seed}"
    if (out / "metrics.json").is_file():  # finished in an earlier invocation: reuse (its CPU time was recorded)
        return json.loads((out / "bench.json").read_text())
    command = train_command(arm, seed, iters, out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    with open(root / f"{arm}-seed{seed}.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise RuntimeError(f"{arm} seed {seed} failed ({status}); see {root / f'{arm}-seed{seed}.log'}")
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    record = {
        "arm": arm, "seed": seed, "iters": iters, "metrics": {k: metrics[k] for k in METRICS},
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "wall_s": round(time.perf_counter() - start, 1),
        "command": shlex.join(command),
    }  # fmt: skip
    (out / "bench.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{arm} seed {seed}: AP {metrics['AP']:.1f} AP75 {metrics['AP75']:.1f}, {record['cpu_s']} CPU s", flush=True)
    return record


def report(records: list[dict], args: argparse.Namespace, load: tuple[str, str]) -> str:
    arms = list(dict.fromkeys(r["arm"] for r in records))
    spreads = {
        arm: {m: summarise([r["metrics"][m] for r in records if r["arm"] == arm]) for m in METRICS} for arm in arms
    }
    cpu = {arm: [r["cpu_s"] for r in records if r["arm"] == arm] for arm in arms}
    lines = [
        f"# The from-scratch recipe on `synthetic`, tiny-fpn ({datetime.date.today()})",
        "",
        f"Command: `{' '.join(sys.argv)}`; each run: `{records[0]['command']}` (arm overrides appended).",
        "",
        f"CPU: {shell(['lscpu']).split('Model name:')[-1].splitlines()[0].strip()}; `uptime` before: {load[0]}; "
        f"after: {load[1]}.",
        "",
        f"Held equal: {args.iters} iterations of batch 2 per run, one thread, no loader processes; seeds "
        f"{', '.join(map(str, args.seeds))} per arm. CPU seconds (training and the final val evaluation of the "
        "200 val images) are reported per arm, not held equal. Cells: mean (min-max over the seeds).",
        "",
        "| arm | " + " | ".join(METRICS) + " | CPU s |",
        "|---|" + "---|" * (len(METRICS) + 1),
    ]
    for arm in arms:
        cells = [
            "-" if s is None else f"{s['mean']:.1f} ({s['min']:.1f}-{s['max']:.1f})"
            for s in (spreads[arm][m] for m in METRICS)
        ]
        lines.append(f"| `{arm}` | " + " | ".join(cells) + f" | {min(cpu[arm]):.0f}-{max(cpu[arm]):.0f} |")
    lines += ["", "Against the baseline (a change counts only when its range lies beyond the baseline's):", ""]
    for arm in arms:
        if arm == "baseline" or "baseline" not in spreads:
            continue
        beyond = [
            f"{m} {'higher' if spreads[arm][m]['mean'] > spreads['baseline'][m]['mean'] else 'lower'}"
            for m in METRICS
            if beyond_spread(spreads[arm][m], spreads["baseline"][m])
        ]
        lines.append(f"- `{arm}`: " + (", ".join(beyond) + " beyond the spread" if beyond else "within the spread"))
    lines += ["", "Runs:", "", "| arm | seed | " + " | ".join(METRICS) + " | CPU s | wall s |"]
    lines.append("|---|---|" + "---|" * (len(METRICS) + 2))
    for r in records:
        values = " | ".join(f"{r['metrics'][m]:.1f}" for m in METRICS)
        lines.append(f"| `{r['arm']}` | {r['seed']} | {values} | {r['cpu_s']:.0f} | {r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default="baseline,full", help=f"comma-separated among {', '.join(ARMS)}")
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds, each arm trained with each")
    p.add_argument("--iters", type=int, default=600, help="iterations per run (fpn compare's default budget)")
    p.add_argument("--parallel", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--runs", default="runs/recipe", help="folder for the run folders (finished runs are reused)")
    p.add_argument("--output", help="report path (default: benchmarks/results/recipe_<date>.md)")
    args = p.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    arms = [a.strip() for a in args.arms.split(",")]
    unknown = set(arms) - set(ARMS)
    if unknown:
        p.error(f"unknown arms {sorted(unknown)}; available: {', '.join(ARMS)}")
    root = Path(args.runs)
    root.mkdir(parents=True, exist_ok=True)
    before = shell(["uptime"])
    jobs = [(arm, seed) for seed in args.seeds for arm in arms]  # seeds outer: each pair of runs is one seed
    with ThreadPoolExecutor(args.parallel) as pool:
        records = list(pool.map(lambda job: run(*job, args.iters, root), jobs))
    text = report(records, args, (before, shell(["uptime"])))
    output = Path(args.output or f"benchmarks/results/recipe_{datetime.date.today()}.md")
    output.write_text(text)
    output.with_suffix(".json").write_text(json.dumps(records, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
