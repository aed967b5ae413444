"""What the benchmark scripts share: the COCO metrics they tabulate, how a run is timed and a result written."""

from __future__ import annotations

import json
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def timed_run(command: list[str], env: dict | None = None, log: Path | None = None) -> tuple[float, float]:
    """Run ``command`` (output to ``log`` if given); its wall seconds and CPU seconds (user + system, its own
    and its ended children's, from the rusage of the processes this one has waited for)."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    if log is None:
        subprocess.run(command, check=True, env=env)
    else:
        with open(log, "w") as out:
            subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def write_record(out_dir: Path, name: str, lines: list[str], record: dict[str, Any]) -> Path:
    """Print the Markdown ``lines`` and write them with ``record`` to ``out_dir/<name>_<date>.{md,json}``, or to
    ``<name>_<date>_<HHMM>`` where a record of that day exists already (committed results are never overwritten)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{name}_{time.strftime('%Y-%m-%d')}"
    if stem.with_suffix(".md").exists() or stem.with_suffix(".json").exists():
        stem = out_dir / f"{name}_{time.strftime('%Y-%m-%d_%H%M')}"
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print("\n".join(lines))
    print(f"-> {stem}.md, {stem}.json")
    return stem
