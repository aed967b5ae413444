"""The synthetic set: determinism, size buckets, class balance, loading through the YAML, and caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fpn.data import load_dataset
from fpn.data import synthetic as synthetic_module
from fpn.data.synthetic import CLASSES, SyntheticConfig, make_synthetic, render_image, size_buckets, synthetic_stats
from fpn.errors import DataError

NUM_TRAIN = 60


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synthetic") / "set", num_train=NUM_TRAIN, num_val=6, seed=3)


def _annotations(yaml_path: Path, split: str = "train") -> dict:
    return json.loads((yaml_path.parent / f"{split}.json").read_text())


def test_layout_and_loading(generated: Path) -> None:
    root = generated.parent
    assert generated.name == "data.yaml"
    assert len(list((root / "train").glob("*.jpg"))) == NUM_TRAIN and len(list((root / "val").glob("*.jpg"))) == 6
    assert not list(root.parent.glob(".set.*"))  # no temporary folders left behind

    dataset = load_dataset(generated, "train")
    assert dataset.names == list(CLASSES) and len(dataset) == NUM_TRAIN
    image, target = dataset[0]
    assert image.shape == (3, 320, 320)
    boxes = target["boxes"]
    assert len(boxes) >= 1
    assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())
    assert bool((boxes >= 0).all() and (boxes <= 320).all())


def test_sizes_cover_all_coco_buckets_and_classes_are_balanced(generated: Path) -> None:
    annotations = _annotations(generated)["annotations"]
    assert len(annotations) >= 3 * NUM_TRAIN
    buckets = size_buckets([a["area"] for a in annotations])
    for name, count in buckets.items():
        assert count >= 0.2 * len(annotations), (name, buckets)
    per_class = np.bincount([a["category_id"] for a in annotations], minlength=len(CLASSES) + 1)[1:]
    assert per_class.min() >= 0.1 * len(annotations) and per_class.max() <= 0.3 * len(annotations), per_class
    # The histogram recorded in the manifest is the one of the annotations.
    assert synthetic_stats(generated.parent)["train"]["buckets"] == buckets


def test_same_seed_same_data_regardless_of_set_size(generated: Path, tmp_path: Path) -> None:
    # Each image has its own generator keyed by (seed, split, index), so a smaller set is a prefix.
    small = make_synthetic(tmp_path / "small", num_train=4, num_val=1, seed=3)
    big_annotations = [a for a in _annotations(generated)["annotations"] if a["image_id"] <= 4]
    small_annotations = _annotations(small)["annotations"]
    strip = [{k: v for k, v in a.items() if k != "id"} for a in small_annotations]
    assert strip == [{k: v for k, v in a.items() if k != "id"} for a in big_annotations]
    for index in range(1, 5):
        name = f"train/{index:06d}.jpg"
        assert (small.parent / name).read_bytes() == (generated.parent / name).read_bytes()

    other = make_synthetic(tmp_path / "other", num_train=4, num_val=1, seed=4)
    assert _annotations(other)["annotations"] != small_annotations


def test_render_image_is_deterministic() -> None:
    config = SyntheticConfig(image_size=96, min_size=6, max_size=60)
    first = render_image(np.random.default_rng(7), config)
    second = render_image(np.random.default_rng(7), config)
    assert first[1] == second[1] and np.array_equal(np.asarray(first[0]), np.asarray(second[0]))
    assert first[0].size == (96, 96)


def test_cache_is_reused_and_regenerated_when_parameters_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    yaml_path = make_synthetic(root, num_train=2, num_val=1)
    manifest = (root / "manifest.json").read_text()

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated although the cache was valid")

    with monkeypatch.context() as patch:
        patch.setattr(synthetic_module, "_write_split", fail)
        assert make_synthetic(root, num_train=2, num_val=1) == yaml_path

    make_synthetic(root, num_train=3, num_val=1)
    assert (root / "manifest.json").read_text() != manifest
    assert len(list((root / "train").iterdir())) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # the outdated cache was removed

    # A corrupt manifest means an unusable cache, which is regenerated.
    (root / "manifest.json").write_text("{")
    make_synthetic(root, num_train=3, num_val=1)
    assert json.loads((root / "manifest.json").read_text())["params"]["num_train"] == 3


def test_never_overwrites_a_folder_that_is_not_a_cache(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="mine: exists and is not a synthetic data set cache"):
        make_synthetic(tmp_path / "mine", num_train=1, num_val=1)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"
    with pytest.raises(DataError, match="min_size"):
        make_synthetic(tmp_path / "x", num_train=1, num_val=1, min_size=50, max_size=40)
