"""``fpn.bench.run_bench``: the record's keys and the relations between its numbers (never how fast anything is).

Everything runs tiny-fpn at 128x160 with two timed runs on one thread; the peak kernels are shrunk
(``peak_scale``) and the memory subprocess is left to the CLI test, so the module takes a few seconds.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import fpn.bench.run as bench_run
from fpn import bench
from fpn.bench import STAGES, BenchOptions, parse_size, run_bench
from fpn.detection import FasterRCNN
from fpn.errors import ConfigError
from fpn.presets import preset

SIZE = (128, 160)
KEYS = {
    "median_s", "min_s", "max_s", "q25_s", "q75_s", "iqr_s", "times_s", "s_per_image", "images_per_s", "gflops",
    "gflops_per_s", "peak_gflops_per_s", "peak_kernel", "peak_kernels", "fraction_of_peak", "peak_mb",
    "peak_mb_method", "stages", "size", "batch", "threads", "precision", "mode", "device", "model", "design",
    "params", "machine", "date", "runs", "warmup", "weights", "executed_gflops", "executed_gflops_per_s",
    "executed_fraction_of_peak", "peak_during_runs_gflops_per_s", "paired_fraction_of_peak",
    "executed_paired_fraction_of_peak", "page_faults_per_iteration",
}  # fmt: skip


def options(**changes) -> BenchOptions:
    base = {
        "model": "tiny-fpn", "size": SIZE, "runs": 2, "warmup": 1, "threads": 1, "device": "cpu",
        "memory": False, "peak_scale": 0.125,
    }  # fmt: skip
    return BenchOptions(**{**base, **changes})


@pytest.fixture(scope="module")
def infer() -> dict:
    return run_bench(options())


@pytest.fixture(scope="module")
def train() -> dict:
    return run_bench(options(mode="train", batch=2))


def check_relations(record: dict, mode: str, batch: int) -> None:
    """What must hold between the numbers of any record, whatever the machine's speed."""
    assert set(record) >= KEYS
    assert record["mode"] == mode and record["batch"] == batch and record["size"] == "128x160"
    times = record["times_s"]
    assert len(times) == record["runs"] and all(t > 0 for t in times)
    assert record["min_s"] <= record["q25_s"] <= record["median_s"] <= record["q75_s"] <= record["max_s"]
    assert record["iqr_s"] == pytest.approx(record["q75_s"] - record["q25_s"])
    assert record["images_per_s"] == pytest.approx(batch / record["median_s"])
    assert record["s_per_image"] == pytest.approx(record["median_s"] / batch)
    assert list(record["stages"]) == list(STAGES[mode])
    assert all(seconds >= 0 for seconds in record["stages"].values())
    # The stages are disjoint intervals inside each iteration: together at most the iteration (plus slack for
    # medians taken stage by stage).
    assert 0 < sum(record["stages"].values()) <= 1.1 * record["median_s"] + 0.01
    assert record["gflops"] > 0
    assert record["gflops_per_s"] == pytest.approx(record["gflops"] / record["median_s"])
    assert record["fraction_of_peak"] == pytest.approx(record["gflops_per_s"] / record["peak_gflops_per_s"])
    assert 0 < record["executed_gflops"] <= record["gflops"]  # Winograd only ever does fewer multiplications
    ratio = record["executed_gflops"] / record["gflops"]
    assert record["executed_fraction_of_peak"] == pytest.approx(ratio * record["fraction_of_peak"])
    assert record["peak_gflops_per_s"] == pytest.approx(max(record["peak_kernels"].values()))
    assert record["peak_kernels"][record["peak_kernel"]] == record["peak_gflops_per_s"]
    # The peak kernel is timed again after each run; each run's effective rate is set against its own probe.
    rates = record["peak_during_runs_gflops_per_s"]
    assert len(rates) == record["runs"] and all(rate > 0 for rate in rates)
    paired = [record["gflops"] / t / rate for t, rate in zip(times, rates)]
    assert record["paired_fraction_of_peak"] == pytest.approx(statistics.median(paired))
    assert record["executed_paired_fraction_of_peak"] == pytest.approx(ratio * record["paired_fraction_of_peak"])
    assert {"cpu", "cores", "torch"} <= set(record["machine"])


def test_infer_record(infer):
    check_relations(infer, "infer", 1)
    assert infer["precision"] == "fp32" and infer["threads"] == 1
    assert infer["images_per_s"] == pytest.approx(1 / infer["median_s"])
    assert infer["peak_mb"] is None and infer["peak_mb_method"] == "not measured"
    assert len(infer["peak_kernels"]) == 3 and all(name.endswith("fp32") for name in infer["peak_kernels"])


def test_gflops_match_an_independent_count(infer):
    config = preset("tiny-fpn")
    config.transform.min_size, config.transform.max_size = [min(SIZE)], max(SIZE)
    torch.manual_seed(0)
    model = FasterRCNN(config).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(bench.synthetic_images(1, *SIZE))
    assert infer["gflops"] == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-9)


def test_winograd_counts_its_executed_flops_apart_from_what_the_layers_are_worth():
    # small-fpn's 128-channel pyramid convolutions run through Winograd at this size (tiny-fpn's 64 do not).
    record = run_bench(options(model="small-fpn", runs=1, warmup=0, peak_gflops=100.0))
    config = preset("small-fpn")
    config.transform.min_size, config.transform.max_size = [min(SIZE)], max(SIZE)
    torch.manual_seed(0)
    model = FasterRCNN(config).eval()  # as loaded: direct convolutions, unfolded BatchNorms
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(bench.synthetic_images(1, *SIZE))
    assert record["gflops"] == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-6)
    assert record["executed_gflops"] < 0.9 * record["gflops"]
    # A given peak is not measured, so there is nothing to pair the runs with.
    assert record["peak_during_runs_gflops_per_s"] == [] and record["paired_fraction_of_peak"] is None


def test_train_record(train, infer):
    check_relations(train, "train", 2)
    # A training step also runs the backward pass: more arithmetic per image than a forward pass.
    assert train["gflops"] / 2 > infer["gflops"]


def test_layer_ceiling_of_a_training_step():
    record = run_bench(options(mode="train", batch=2, runs=1, warmup=1, layers=True))
    check_relations(record, "train", 2)
    layers = record["layers"]
    # The replayed calls are the step's dense calls: the same FLOPs as the step's own count.
    assert layers["executed_gflops"] == pytest.approx(record["executed_gflops"], rel=1e-9)
    assert layers["share_of_iteration"] == pytest.approx(layers["seconds"] / record["median_s"])
    assert layers["ceiling_fraction_of_peak"] == pytest.approx(
        record["fraction_of_peak"] / layers["share_of_iteration"]
    )
    assert any(call["call"].startswith("aten.convolution_backward") for call in layers["slowest"])
    assert "layers" not in run_bench(options(runs=1, warmup=0))  # only when asked


def test_bf16_inference():
    record = run_bench(options(precision="bf16", runs=1, warmup=0))
    check_relations(record, "infer", 1)
    assert record["precision"] == "bf16"
    names = list(record["peak_kernels"])
    assert len(names) == 6 and sum(name.endswith("bf16") for name in names) == 3


def test_scaling():
    record = run_bench(options(runs=1, warmup=0, scaling=True))
    scaling = record["scaling"]
    sizes = scaling["sizes"]
    assert sizes[-1]["size"] == "128x160" and sizes[-1]["median_s"] == record["median_s"]
    assert len(sizes) >= 2
    pixels = [p["megapixels"] for p in sizes]
    assert pixels == sorted(pixels) and len(set(pixels)) == len(pixels)
    for point in sizes:
        height, width = parse_size(point["size"])
        assert height % 32 == 0 and width % 32 == 0  # multiples of the padding stride
        assert point["s_per_megapixel"] == pytest.approx(point["median_s"] / point["megapixels"])
    assert math.isfinite(scaling["size_fit"]["s_per_megapixel"])
    assert [p["post_nms_top_n"] for p in scaling["proposals"]] == [100, 300, 1000]
    assert scaling["proposals_key"] == "rpn.post_nms_top_n_test"
    # More proposals reach the box head: never fewer FLOPs.
    flops = [p["gflops"] for p in scaling["proposals"]]
    assert flops == sorted(flops)


def test_threads_are_restored(monkeypatch):
    seen = []
    monkeypatch.setattr(bench_run, "_run", lambda options, device, threads: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    run_bench(options(threads=before + 1))
    assert seen == [before + 1] and torch.get_num_threads() == before


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"runs": 0}, "--runs"),
        ({"batch": 0}, "--batch"),
        ({"size": (16, 160)}, "--size"),
        ({"precision": "fp16"}, "precision"),
        ({"weights": "model.pt", "design": "hierarchy"}, "--design"),
    ],
)
def test_bad_options(changes, message):
    with pytest.raises(ConfigError, match=message):
        run_bench(options(**changes))
