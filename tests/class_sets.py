"""Data sets with chosen class names, made from the synthetic set: fine-tuning's {a, b} and {b, c}."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from fpn.data import make_synthetic


def renamed_set(data: Path, names: dict[int, str], tag: str) -> Path:
    """The synthetic set's train split with only the categories ``names`` keeps, renamed (ids from 1)."""
    root = data.parent
    coco = json.loads((root / "train.json").read_text())
    ids = {old: new for new, old in enumerate(names, start=1)}
    coco["categories"] = [{"id": ids[old], "name": name} for old, name in names.items()]
    coco["annotations"] = [
        {**a, "category_id": ids[a["category_id"]]} for a in coco["annotations"] if a["category_id"] in ids
    ]
    (root / f"{tag}.json").write_text(json.dumps(coco))
    spec = {"format": "coco", "names": list(names.values()), "train": {"annotations": f"{tag}.json", "images": "train"}}
    path = root / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def ab_and_bc(folder: Path) -> dict[str, Path]:
    """Two train-only sets over the same 4 images: classes {a, b} and {b, c} (b the same shapes in both)."""
    data = make_synthetic(folder / "set", num_train=4, num_val=1, image_size=96)
    return {"ab": renamed_set(data, {1: "a", 2: "b"}, "ab"), "bc": renamed_set(data, {2: "b", 3: "c"}, "bc")}
