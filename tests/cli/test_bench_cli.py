"""``fpn bench``: the JSON it writes, the summary it prints, checkpoints, and one-line errors (exit status 2).

No timing is asserted; ``--peak-gflops`` skips measuring the peak to keep the tests short.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fpn.cli import main
from fpn.detection import FasterRCNN, save_detector
from fpn.presets import preset

FAST = ["--size", "128x160", "--runs", "2", "--warmup", "1", "--threads", "1", "--device", "cpu"]
DOCUMENTED = {
    "median_s", "images_per_s", "gflops", "gflops_per_s", "peak_gflops_per_s", "fraction_of_peak", "peak_mb",
    "stages", "size", "threads", "precision", "mode", "machine", "command",
}  # fmt: skip


def bench(tmp_path: Path, *args: str) -> tuple[int, dict | None]:
    out = tmp_path / "bench.json"
    code = main(["bench", *FAST, "--peak-gflops", "100", "--output", str(out), *args])
    return code, json.loads(out.read_text()) if out.exists() else None


def test_infer_with_memory(tmp_path, capsys):
    code, record = bench(tmp_path, "--model", "tiny-fpn")
    assert code == 0
    assert set(record) >= DOCUMENTED
    assert record["mode"] == "infer" and record["precision"] == "fp32" and record["size"] == "128x160"
    assert record["images_per_s"] == pytest.approx(1 / record["median_s"])
    assert record["peak_gflops_per_s"] == 100 and record["peak_kernel"] == "given"
    assert record["fraction_of_peak"] == pytest.approx(record["gflops_per_s"] / 100)
    # The subprocess's resident-set growth: a forward pass needs some memory, far less than the machine's.
    assert record["peak_mb_method"] in ("rss_hwm_delta", "ru_maxrss_delta")
    assert 0 < record["peak_mb"] < 4096
    assert {"cpu", "cores", "torch"} <= set(record["machine"])
    assert record["command"].startswith("fpn bench --model tiny-fpn --size 128x160")
    out = capsys.readouterr().out
    assert "images/s" in out and "GFLOP/s" in out and "backbone" in out and str(tmp_path) in out


def test_train_bf16(tmp_path):
    code, record = bench(tmp_path, "--model", "tiny-fpn", "--mode", "train", "--precision", "bf16", "--batch", "2",
                         "--no-memory")  # fmt: skip
    assert code == 0
    assert record["mode"] == "train" and record["precision"] == "bf16" and record["batch"] == 2
    assert record["images_per_s"] == pytest.approx(2 / record["median_s"])
    assert list(record["stages"])[-2:] == ["backward", "optimizer"]
    assert record["peak_mb"] is None


def test_layers(tmp_path, capsys):
    code, record = bench(tmp_path, "--model", "tiny-fpn", "--layers", "--no-memory")
    assert code == 0
    assert {"seconds", "share_of_iteration", "ceiling_fraction_of_peak", "slowest"} <= set(record["layers"])
    assert "--layers" in record["command"].split()  # the command repeats the measurement
    # Every dense call of the optimized forward pass is replayed: the same FLOPs as the record's own count.
    assert record["layers"]["executed_gflops"] == pytest.approx(record["executed_gflops"], rel=1e-9)
    out = capsys.readouterr().out
    # Which calls are the slowest depends on the machine's minute (a convolution, or Winograd's bmm): check
    # that the printed list is the record's, not what is in it.
    assert "dense calls timed alone" in out
    assert all(call["call"] in out for call in record["layers"]["slowest"][:3])  # the three it prints


def test_exact_is_in_the_command(tmp_path):
    code, record = bench(tmp_path, "--model", "tiny-fpn", "--exact", "--no-memory", "--runs", "1")
    assert code == 0 and record["optimized"] is False
    assert "--exact" in record["command"].split() and "--layers" not in record["command"].split()


def test_checkpoint(tmp_path):
    torch.manual_seed(0)
    weights = save_detector(FasterRCNN(preset("tiny-fpn")), tmp_path / "model.pt")
    code, record = bench(tmp_path, "--weights", str(weights), "--no-memory")
    assert code == 0
    assert record["model"] == str(weights) and record["weights"] == str(weights)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "128"], "--size must be HEIGHTxWIDTH"),
        (["--runs", "0"], "--runs must be at least 1"),
        (["--weights", "missing.pt"], "missing.pt: no such checkpoint file"),
        (["--model", "no-such-preset"], "unknown model preset"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, args, message):
    code, record = bench(tmp_path, *args)
    assert code == 2 and record is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fpn: error:") and message in err[0]


def test_model_and_weights_exclude_each_other(tmp_path):
    with pytest.raises(SystemExit) as exc:
        bench(tmp_path, "--model", "tiny-fpn", "--weights", "model.pt")
    assert exc.value.code == 2


def test_an_output_that_cannot_be_written_fails_before_timing(tmp_path, capsys, monkeypatch):
    import fpn.cli.bench as bench_cli

    monkeypatch.setattr(bench_cli, "run_bench", lambda options: pytest.fail("timed before checking --output"))
    (tmp_path / "afile").write_text("in the way\n")
    out = tmp_path / "afile" / "bench.json"
    assert main(["bench", *FAST, "--model", "micro-fpn", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fpn: error:") and str(out) in err[0]
