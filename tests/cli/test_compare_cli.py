"""``fpn compare`` end to end on a tiny budget, and its one-line errors (exit status 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fpn.cli import main
from fpn.data import make_synthetic

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
