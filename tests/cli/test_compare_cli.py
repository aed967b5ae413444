"""``fpn compare`` end to end on a tiny budget, and its one-line errors (exit status 2)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
import torch

from fpn.cli import main
from fpn.data import make_synthetic
from fpn.engine import RunConfig
from fpn.io import read_state_dict
from fpn.presets import preset

TINY = [
    "model.pyramid.test_scales=[64,128]",
    "workers=0",  # a bare key: train.workers
    "warmup_iters=1",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("compare_cli") / "set", num_train=4, num_val=2, image_size=96)


def test_compare_writes_the_table_and_files(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--data",
        str(data),
        "--designs",
        "image-pyramid",
        "--iters",
        "1",
        "--threads",
        "1",
        "--model",
        "micro-fpn",
    ]
    assert main([*argv, "--latency-runs", "1", "--seed", "3", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "| `image-pyramid` |" in printed and printed.strip().endswith("*.png, runs/)")
    assert "x)" not in printed  # fpn was not compared: no ratios
    for name in ("results.json", "results.md", "ap_by_size.png", "accuracy_vs_latency.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert list(results["designs"]) == ["image-pyramid"] and results["config"]["seed"] == 3
    assert results["config"]["run"]["model"]["pyramid"]["test_scales"] == [64, 128]
    assert (out / "runs" / "single-map" / "model.pt").is_file()  # trained for the image pyramid


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--designs", "fpn,pyramid"], "'pyramid'"),
        (["--designs", "fpn", "model.pyramid.design=hierarchy"], "model.pyramid.design"),
        (["--designs", "fpn", "train.lrr=0.1"], "train.lrr"),
        (["--designs", "fpn", "--model", "huge-fpn"], "huge-fpn"),
        (["--designs", "fpn", "--iters", "0"], "train.iters"),
    ],
)
def test_bad_requests_exit_2_naming_the_problem(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    assert main(["compare", "--data", str(data), "--out", str(tmp_path / "cmp"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fpn: error:") and named in err
    assert not (tmp_path / "cmp").exists()


def test_an_out_folder_that_cannot_be_written_fails_first(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("in the way\n")
    out = tmp_path / "afile" / "cmp"
    assert main(["compare", "--data", str(data), "--designs", "fpn", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fpn: error:") and str(out) in err
    assert "is a file, not a folder" in err


def test_seeds_give_each_design_means_ranges_and_a_plain_verdict(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fpn.compare as compare_module

    # The memory probe's subprocesses are tested with the comparison itself; here they would only cost time.
    monkeypatch.setattr(compare_module, "measure_memory", lambda *a, **k: {"train_peak_mb": 2.0, "infer_peak_mb": 1.0})
    out = tmp_path / "cmp"
    argv = ["compare", "--data", str(data), "--designs", "fpn,hierarchy", "--iters", "2", "--threads", "1"]
    argv += ["--model", "micro-fpn", "--seeds", "2", "--seed", "4", "--latency-runs", "3", "--out", str(out)]
    assert main([*argv, *TINY]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["seeds"] == [4, 5]
    for design in ("fpn", "hierarchy"):
        row = results["designs"][design]
        runs = [out / "runs" / f"{design}-seed{seed}" for seed in (4, 5)]
        assert row["runs"] == [str(run) for run in runs]
        assert [RunConfig.load(run / "config.yaml").train.seed for run in runs] == [4, 5]
        values = [json.loads((run / "metrics.json").read_text())["metrics"]["AP"] for run in runs]
        spread = row["spread"]["AP"]
        assert spread["values"] == values and (spread["min"], spread["max"]) == (min(values), max(values))
        assert row["AP"] == pytest.approx(sum(values) / 2)
        assert len(row["latency_rounds_s"]) == 3
        assert row["latency_s"] == pytest.approx(statistics.median(row["latency_rounds_s"]), abs=1e-5)
    lines = results["differences"]
    assert lines[0].startswith("2 seeds per design") and lines[1].startswith("`hierarchy` vs `fpn`:")
    report = (out / "results.md").read_text()
    assert "## Which differences exceed the seed-to-seed spread" in report and lines[1] in report
    assert lines[1] in printed and "seeds 4-5" in report
    assert re.search(r"\| `fpn` \| [\d.]+ \[[\d.]+-[\d.]+\] \(1\.00x\) \|", report)  # mean [min-max] (ratio)


def test_backbone_weights_start_every_design_from_the_checkpoint(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fpn.compare as compare_module
    from fpn.backbones import build_backbone

    monkeypatch.setattr(compare_module, "measure_memory", lambda *a, **k: {"train_peak_mb": 2.0, "infer_peak_mb": 1.0})
    config = preset("micro-fpn").backbone
    torch.manual_seed(11)
    imagenet = {k: v + 0.01 for k, v in build_backbone(config).state_dict().items()}  # torchvision's ResNet keys
    weights = tmp_path / "resnet.pth"
    torch.save(imagenet, weights)
    out = tmp_path / "cmp"
    argv = ["compare", "--data", str(data), "--designs", "fpn", "--iters", "1", "--threads", "1", "--model"]
    argv += ["micro-fpn", "--latency-runs", "1", "--backbone-weights", str(weights), "--out", str(out)]
    assert main([*argv, *TINY, "train.lr=1e-12", "train.weight_decay=0"]) == 0  # a step that moves nothing
    saved = RunConfig.load(out / "runs" / "fpn" / "config.yaml")
    assert saved.model.backbone.weights == str(weights.resolve())
    trained = read_state_dict(out / "runs" / "fpn" / "model.pt")["model"]
    for key, value in imagenet.items():
        if value.dtype.is_floating_point:
            assert torch.allclose(trained[f"backbone.{key}"], value, atol=1e-6), key


def test_missing_backbone_weights_and_zero_seeds_exit_2(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["compare", "--data", str(data), "--designs", "fpn", "--out", str(tmp_path / "cmp")]
    assert main([*base, "--backbone-weights", str(tmp_path / "nope.pth")]) == 2
    assert "nope.pth: no such file" in capsys.readouterr().err
    assert main([*base, "--seeds", "0"]) == 2
    assert "seeds must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()
