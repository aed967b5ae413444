"""What the benchmark scripts share: the COCO metrics they tabulate and how a result is written."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def write_record(out_dir: Path, name: str, lines: list[str], record: dict[str, Any]) -> Path:
    """Print the Markdown ``lines`` and write them with ``record`` to ``out_dir/<name>_<date>.{md,json}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{name}_{time.strftime('%Y-%m-%d')}"
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print("\n".join(lines))
    print(f"-> {stem}.md, {stem}.json")
    return stem
