"""`make demo`'s command, on a budget of two iterations: every promised file appears and it prints the folder."""

import json

from fpn.cli import main
from fpn.engine.config import DEMO_SCALE, demo_config


def test_demo_config_is_the_documented_run():
    config = demo_config()
    config.validate()
    assert config.data == "synthetic" and config.model.transform.min_size == [DEMO_SCALE]
    assert config.model.backbone.norm == "gn" and config.model.pyramid.design == "fpn"


def test_demo_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FPN_CACHE", str(tmp_path / "cache"))  # the real synthetic set, generated here
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--iters", "2", "--pictures", "1", "--score-thresh", "0"]) == 0
    printed = capsys.readouterr().out
    assert f"run folder: {out}" in printed and "val AP" in printed
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert set(metrics) >= {"AP", "AP50", "APs", "APm", "APl", "AR100"}
    for name in ("model.pt", "curves.png", "pyramid_maps.png", "config.yaml"):
        assert (out / name).is_file(), name
    assert len(list((out / "pictures").glob("*_levels.png"))) == 1
