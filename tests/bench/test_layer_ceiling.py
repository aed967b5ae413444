"""``fpn.bench.layer_ceiling``: which calls it records, how it replays them, and the relations of its record.

Small modules on one thread; no timing is asserted, only what must hold whatever the machine's speed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fpn.bench.flops import count_gflops
from fpn.bench.layer_ceiling import SLOWEST, TensorSpec, _spec, layer_ceiling, record_layers, time_layers


class TwiceConv(nn.Module):
    """The same convolution twice on same-sized maps (one signature, two calls), then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv(self.conv(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def model() -> TwiceConv:
    torch.manual_seed(0)
    return TwiceConv()


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_records_each_distinct_dense_call_once_with_its_count(model, context):
    x = torch.randn(2, 3, 16, 20)
    with context():  # under inference_mode aten.conv2d and aten.linear arrive whole and are decomposed
        calls = record_layers(lambda: model(x))
        assert time_layers(calls, lambda: None, 1).gflops == pytest.approx(count_gflops(lambda: model(x)), rel=1e-9)
    by_signature = {call.signature: call.count for call in calls}
    assert by_signature == {
        "aten.convolution.default [2,3,16,20] [8,3,3,3] [8]": 1,
        "aten.convolution.default [2,8,16,20] [8,8,3,3] [8]": 2,
        "aten.addmm.default [5] [2,8] [8,5]": 1,
    }  # relu and mean have no FLOP formula: not layers


def test_training_step_records_the_backward_and_counts_the_same_flops(model):
    x = torch.randn(2, 3, 16, 20)

    def step() -> None:
        model(x).square().sum().backward()

    calls = record_layers(step)
    names = {call.signature.split()[0] for call in calls}
    assert "aten.convolution_backward.default" in names and "aten.mm.default" in names
    ceiling = time_layers(calls, synchronize=lambda: None, repeats=1)
    assert ceiling.gflops == pytest.approx(count_gflops(step), rel=1e-9)
    assert all(call.seconds > 0 for call in calls)


def test_calls_with_an_out_tensor_are_grouped_by_layout_not_values():
    a, b = torch.randn(4, 8, 16), torch.randn(4, 16, 8)
    outs = [torch.empty(4, 8, 8), torch.full((4, 8, 8), 3.0)]
    calls = record_layers(lambda: [torch.bmm(a, b, out=out) for out in outs])
    assert [(call.signature, call.count) for call in calls] == [("aten.bmm.out [4,8,16] [4,16,8]", 2)]


def test_specs_keep_layout_and_materialize_random_tensors():
    expanded = torch.randn(1, 4, 1, 1).expand(2, 4, 5, 6)
    channels_last = torch.randn(2, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    for tensor in (expanded, channels_last, torch.randn(3, 7, dtype=torch.float64)[:, ::2]):
        spec = _spec(tensor)
        assert isinstance(spec, TensorSpec)
        fresh = spec.materialize()
        assert (fresh.shape, fresh.stride(), fresh.dtype) == (tensor.shape, tensor.stride(), tensor.dtype)
        assert not torch.equal(fresh, tensor)  # new values, not a copy
    assert _spec(3) == 3 and _spec("same") == "same"


def test_non_strided_tensors_are_replayed_as_they_are():
    packed = torch.randn(2, 3).to_sparse()
    assert _spec(packed) is packed


def test_record_relations(model):
    x = torch.randn(2, 3, 16, 20)
    with torch.no_grad():
        record = layer_ceiling(
            lambda: model(x), iteration_s=0.5, nominal_gflops=0.02, peak_gflops_per_s=100.0, paired_fraction_of_peak=0.3
        )
    assert record["calls"] == 4 and record["distinct_calls"] == 3
    assert record["share_of_iteration"] == pytest.approx(record["seconds"] / 0.5)
    assert record["gflops_per_s"] == pytest.approx(record["executed_gflops"] / record["seconds"])
    assert record["fraction_of_peak"] == pytest.approx(record["gflops_per_s"] / 100)
    assert record["ceiling_fraction_of_peak"] == pytest.approx(0.02 / record["seconds"] / 100)
    assert record["paired_ceiling_fraction_of_peak"] == pytest.approx(0.3 / record["share_of_iteration"])
    totals = [call["ms_total"] for call in record["slowest"]]
    assert totals == sorted(totals, reverse=True) and len(totals) <= SLOWEST
    assert sum(call["count"] for call in record["slowest"]) == 4  # all three fit in the list
    assert sum(totals) == pytest.approx(1e3 * record["seconds"])
