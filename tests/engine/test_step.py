"""``fpn.engine.step.train_step``: the one training step, on a stand-in detector small enough to reason about.

The training loop's use of it (seeding, the collective, divergence messages, bit-exact resumption) is tested
through ``train`` in test_train.py and test_train_robustness.py; here, what the step itself promises.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from fpn.engine.step import NonFiniteStep, train_step


class Toy(nn.Module):
    """``(images, targets) -> losses`` as a detector answers in training: per-image losses averaged over the call."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
        self.autocast_seen: list[bool] = []

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        self.autocast_seen.append(torch.is_autocast_enabled("cpu"))
        x = torch.stack([image.mean((1, 2)) for image in images])  # [N, 3]
        y = torch.stack([target["y"] for target in targets])  # [N]
        return {"fit": ((x @ self.weight - y) ** 2).mean(), "size": 0.01 * self.weight.square().sum()}


def batch(n: int = 4) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 5, 6, generator=generator) for _ in range(n)]
    return images, [{"y": torch.rand((), generator=generator)} for _ in range(n)]


def sgd(model: nn.Module, **kwargs) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=kwargs.pop("lr", 0.1), **kwargs)


def test_micro_batches_give_the_step_of_the_whole_batch():
    whole, split = Toy(), Toy()
    images, targets = batch()
    a = train_step(whole, sgd(whole, momentum=0.9), images, targets)
    b = train_step(split, sgd(split, momentum=0.9), images, targets, micro_batch=1)
    assert torch.allclose(whole.weight, split.weight, atol=1e-6)
    assert a.losses == pytest.approx(b.losses, rel=1e-5) and a.grad_norm == pytest.approx(b.grad_norm, rel=1e-5)
    assert set(a.losses) == {"fit", "size"} and all(isinstance(v, float) for v in a.losses.values())
    assert all(p.grad is None for p in (*whole.parameters(), *split.parameters()))  # none held between steps


def test_the_callers_hooks_are_called_in_order():
    model = Toy()
    images, targets = batch()
    seen: list[object] = []

    def reduce(sums: dict[str, torch.Tensor]) -> dict[str, float]:
        seen.append(("reduce", sorted(sums)))
        return {key: 2 * float(value) for key, value in sums.items()}

    def stage(name: str):
        seen.append(name)
        return contextlib.nullcontext()

    result = train_step(
        model, sgd(model), images, targets, micro_batch=3, seed=lambda chunk: seen.append(chunk), reduce=reduce,
        stage=stage,
    )  # fmt: skip
    assert seen == [range(0, 3), "backward", range(3, 4), "backward", ("reduce", ["fit", "size"]), "optimizer"]
    plain = train_step(Toy(), sgd(Toy()), images, targets, micro_batch=3)
    assert result.losses == pytest.approx({key: 2 * value for key, value in plain.losses.items()})


def test_clipping_bounds_the_update_and_reports_the_norm_before_it():
    model = Toy()
    before = model.weight.detach().clone()
    result = train_step(model, sgd(model, lr=1.0), *batch(), grad_clip=1e-3)
    assert result.grad_norm > 1e-3
    assert float((model.weight.detach() - before).norm()) == pytest.approx(1e-3, rel=1e-4)


def test_a_non_finite_loss_stops_the_step_before_the_update():
    model = Toy()
    before = copy.deepcopy(model.state_dict())
    images, targets = batch()
    targets[1]["y"] = torch.tensor(float("nan"))
    with pytest.raises(NonFiniteStep, match="^fit is nan$"):
        train_step(model, sgd(model), images, targets)
    assert torch.equal(model.weight, before["weight"])


def test_an_infinite_gradient_stops_the_step_before_the_update():
    class Root(Toy):  # sqrt at 0: a finite loss with an infinite gradient
        def forward(self, images, targets):
            return {"root": torch.sqrt(self.weight[0] - 1.0)}

    model = Root()
    with pytest.raises(NonFiniteStep, match="^the gradient norm is inf$"):
        train_step(model, sgd(model), *batch())
    assert float(model.weight.detach()[0]) == 1.0


def test_autocast_covers_the_forward_passes_when_asked():
    model = Toy()
    train_step(model, sgd(model), *batch(), micro_batch=2, amp_dtype=torch.bfloat16)
    train_step(model, sgd(model), *batch())
    assert model.autocast_seen == [True, True, False]
