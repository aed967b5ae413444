"""Frozen BatchNorm folded into its convolution on the fly in training: the same function and gradients."""

import torch

from fpn.backbones.resnet import ResNet


def close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal to float32 rounding through 50 layers: the largest difference within 1e-5 of the largest value."""
    return float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


def test_frozen_bn_folded_on_the_fly_in_training_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    model = ResNet(50, width=8, norm="frozen_bn", trainable_stages=3)
    for module in model.modules():  # non-trivial statistics, so that the folding has work to do
        if hasattr(module, "running_var"):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.uniform_(-0.5, 0.5)
            module.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 64, 96)
    results = {}
    for mode in ("train", "eval"):  # train folds each frozen BN into its convolution; eval runs them apart
        model.train(mode == "train")
        model.zero_grad()
        out = model(x)
        sum((v * v).mean() for v in out.values()).backward()
        results[mode] = ({k: v.detach() for k, v in out.items()}, {n: p.grad for n, p in model.named_parameters()})
    for key in results["eval"][0]:
        assert close(results["train"][0][key], results["eval"][0][key]), key
    grads_train, grads_eval = results["train"][1], results["eval"][1]
    assert {n for n, g in grads_eval.items() if g is not None} == {n for n, g in grads_train.items() if g is not None}
    assert not any(n.startswith(("conv1", "layer1")) for n, g in grads_train.items() if g is not None)
    for name, grad in grads_eval.items():
        if grad is not None:
            assert close(grads_train[name], grad), name
