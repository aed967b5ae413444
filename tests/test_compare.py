"""``fpn.compare``: every design trained, evaluated and measured under one config; its files, counts and ratios."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

import fpn.compare as compare_module
from fpn.compare import COSTS, METRICS, check_designs, compare, compare_config
from fpn.data import load_dataset, make_synthetic
from fpn.detection import load_detector
from fpn.errors import ConfigError
from fpn.viz.compare_plots import COLUMNS, format_cell

# The micro-fpn preset (96 px images) with three small test scales: a design trains and measures in seconds.
MODEL = "micro-fpn"
TINY = [
    "model.pyramid.test_scales=[64,96,128]",
    "train.workers=0",
    "train.warmup_iters=1",
]
DESIGNS = ["image-pyramid", "fpn"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("compare") / "set", num_train=6, num_val=3, image_size=96)


@pytest.fixture(scope="module")
def compared(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("compared") / "out"
    kwargs = {
        "data": str(data),
        "model_preset": MODEL,
        "iters": 2,
        "threads": 1,
        "overrides": TINY,
        "latency_runs": 2,
        "progress": False,
    }
    return out, compare(DESIGNS, out_dir=out, **kwargs)


def probe_image(data: Path) -> torch.Tensor:
    return load_dataset(str(data), "val")[0][0]


def flops(model: torch.nn.Module, image: torch.Tensor, **kwargs: Any) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model([image], **kwargs)
    return counter.get_total_flops() / 1e9


def test_writes_every_file_and_every_number(compared: tuple[Path, dict[str, Any]]) -> None:
    out, results = compared
    for name in ("results.json", "results.md", "ap_by_size.png", "accuracy_vs_latency.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert list(results["designs"]) == DESIGNS
    # image-pyramid's weights come from a single-map run, trained although single-map is not compared.
    for design in ("image-pyramid", "fpn", "single-map"):
        assert (out / "runs" / design / "model.pt").is_file(), design
        assert (out / "runs" / design / "metrics.json").is_file(), design
    for design, row in results["designs"].items():
        assert set(METRICS) | set(COSTS) <= set(row), design
        assert row["AP"] is not None and 0 <= row["AP"] <= 100
        assert row["GFLOPs"] > 0 and row["params"] > 0 and row["latency_s"] > 0
        assert row["train_peak_mb"] > 0 and row["infer_peak_mb"] > 0, row
        assert row["train_peak_mb"] > row["infer_peak_mb"]  # activations kept for backward, gradients
        assert row["iterations"] == 2
    assert results["config"]["budget"] == {"iters": 2, "minutes": None}
    assert results["config"]["run"]["model"]["backbone"]["width"] == 8
    assert "design" not in results["config"]["run"]["model"]["pyramid"]
    assert {"cpu", "cores", "torch", "threads"} <= set(results["machine"]) and results["machine"]["threads"] == 1


def test_counts_match_the_trained_models(compared: tuple[Path, dict[str, Any]], data: Path) -> None:
    out, results = compared
    image = probe_image(data)
    for design, row in results["designs"].items():
        model, _ = load_detector(out / "runs" / design / "model.pt")
        assert model.config.pyramid.design == design
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["GFLOPs"] == pytest.approx(flops(model, image), rel=1e-9)
    # The image pyramid pays for every scale: its count is the single-map model's at each test scale, summed.
    single, _ = load_detector(out / "runs" / "single-map" / "model.pt")
    per_scale = [flops(single, image, shorter=scale) for scale in (64, 96, 128)]
    assert results["designs"]["image-pyramid"]["GFLOPs"] == pytest.approx(sum(per_scale), rel=1e-9)
    assert results["designs"]["image-pyramid"]["GFLOPs"] > flops(single, image)


def test_image_pyramid_is_the_single_map_weights(compared: tuple[Path, dict[str, Any]]) -> None:
    out, _ = compared
    pyramid, _ = load_detector(out / "runs" / "image-pyramid" / "model.pt")
    single, _ = load_detector(out / "runs" / "single-map" / "model.pt")
    a, b = pyramid.state_dict(), single.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = json.loads((out / "runs" / "image-pyramid" / "metrics.json").read_text())
    assert metrics["weights_from"].endswith(str(Path("single-map") / "model.pt")) and metrics["images"] == 3


def markdown_rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| `")]
    return {cells[0].strip().strip("`"): [c.strip() for c in cells[1:]] for cells in rows}


def test_markdown_ratios_agree_with_the_json(compared: tuple[Path, dict[str, Any]]) -> None:
    out, results = compared
    rows = markdown_rows((out / "results.md").read_text())
    assert list(rows) == DESIGNS
    reference = results["designs"]["fpn"]
    checked = 0
    for design, cells in rows.items():
        row = results["designs"][design]
        for cell, (_, key, scale, _) in zip(cells, COLUMNS, strict=True):
            if row[key] is None:
                assert cell == "-"
                continue
            match = re.fullmatch(r"([\d.]+)(?: \(([\d.]+)x\))?", cell)
            assert match, cell
            assert float(match.group(1)) == pytest.approx(row[key] * scale, rel=0.05, abs=0.051)
            if reference[key]:
                assert float(match.group(2)) == pytest.approx(row[key] / reference[key], abs=0.0051), (design, key)
                checked += 1
            else:
                assert match.group(2) is None
    assert checked >= 2 * len(COSTS)  # every cost, for both designs
    assert all(cell.endswith("(1.00x)") for cell in rows["fpn"] if cell != "-" and "(" in cell)


def test_rerun_reuses_finished_runs_resumes_interrupted_ones_and_refuses_another_config(
    compared: tuple[Path, dict[str, Any]], data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished, results = compared
    out = tmp_path / "out"  # copies, so that the shared folder stays as it is
    shutil.copytree(finished / "runs" / "fpn", out / "runs" / "fpn")
    shutil.copytree(finished / "runs" / "single-map", out / "runs" / "single-map")
    for name in ("model.pt", "metrics.json"):  # as if interrupted after the last checkpoint
        (out / "runs" / "single-map" / name).unlink()
    calls: list[tuple[str, bool]] = []
    real_train = compare_module.train

    def spy(config: Any, run_dir: Path, **kwargs: Any) -> Path:
        calls.append((Path(run_dir).name, kwargs["resume"]))
        return real_train(config, run_dir, **kwargs)

    monkeypatch.setattr(compare_module, "train", spy)
    # Measured in the first comparison already; a subprocess per design would only slow this test down.
    monkeypatch.setattr(compare_module, "measure_memory", lambda *args, **kwargs: dict.fromkeys(COSTS[-2:], 1.0))
    kwargs = {
        "data": str(data),
        "model_preset": MODEL,
        "threads": 1,
        "overrides": TINY,
        "latency_runs": 1,
        "progress": False,
    }
    again = compare(["fpn", "single-map"], out_dir=out, iters=2, **kwargs)
    assert calls == [("single-map", True)]
    assert again["designs"]["fpn"]["AP"] == results["designs"]["fpn"]["AP"]
    assert again["designs"]["fpn"]["GFLOPs"] == results["designs"]["fpn"]["GFLOPs"]
    assert again["designs"]["single-map"]["iterations"] == 2
    with pytest.raises(ConfigError, match=r"runs/fpn.*train\.iters"):
        compare(["fpn"], out_dir=out, iters=3, **kwargs)
    assert calls == [("single-map", True)]


def test_bad_requests_are_config_errors(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'fpnn'"):
        check_designs(["fpn", "fpnn"])
    with pytest.raises(ConfigError, match="more than once"):
        check_designs(["fpn", "fpn"])
    with pytest.raises(ConfigError, match="none given"):
        check_designs([])
    with pytest.raises(ConfigError, match="design is what compare varies"):
        compare_config(overrides=["model.pyramid.design=hierarchy"])
    with pytest.raises(ConfigError, match="threads"):
        compare(["fpn"], out_dir=tmp_path / "x", data=str(data), model_preset=MODEL, iters=1, threads=0, overrides=TINY)
    spec = yaml.safe_load(data.read_text())
    spec["train"] = {key: str(data.parent / value) for key, value in spec["train"].items()}
    del spec["val"]
    train_only = tmp_path / "train_only.yaml"
    train_only.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="no val split"):
        compare(
            ["fpn"],
            out_dir=tmp_path / "x",
            data=str(train_only),
            model_preset=MODEL,
            iters=1,
            threads=1,
            overrides=TINY,
        )
    assert not (tmp_path / "x").exists()


def test_default_budget_and_cells() -> None:
    config = compare_config()
    assert config.train.iters == compare_module.DEFAULT_ITERS and config.train.epochs is None
    assert config.data == "synthetic" and config.model.backbone.width == 16  # tiny-fpn
    assert compare_config(minutes=5).train.iters is None
    assert format_cell(12.34, 24.68) == "12.3 (0.50x)"
    assert format_cell(12.34, 24.68, fixed=True) == "12.3 (0.50x)"
    assert format_cell(None, 1.0) == "-" and format_cell(3.0, 0.0) == "3.00" and format_cell(3.0, None) == "3.00"
    assert format_cell(1234567, 1000000, scale=1e-6) == "1.23 (1.23x)"
