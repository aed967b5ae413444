import pytest
import torch

from fpn.errors import ModelBuildError
from fpn.levels import Level, check_features, check_levels, level


def test_level_derives_stride_from_name():
    assert level("p3", 256) == Level("p3", 8, 256)
    assert level("c5", 2048).stride == 32
    assert level("p2", 8).index == 2 and level("p2", 8).kind == "p"


@pytest.mark.parametrize(
    "args, message",
    [
        (("p3", 16, 256), "must have stride 8"),
        (("q3", 8, 256), "not of the form"),
        (("p3", 8, 0), "positive channel count"),
    ],
)
def test_malformed_level_fails_with_its_name(args, message):
    with pytest.raises(ModelBuildError, match=message):
        Level(*args)


def test_chain_must_double_from_fine_to_coarse():
    check_levels([level("p2", 4), level("p3", 4), level("p4", 4)], consumer="x", channels=4)
    with pytest.raises(ModelBuildError, match="p4 .stride 16. follows p2"):
        check_levels([level("p2", 4), level("p4", 4)], consumer="x")
    with pytest.raises(ModelBuildError, match="follows"):
        check_levels([level("p3", 4), level("p2", 4)], consumer="x")
    with pytest.raises(ModelBuildError, match="duplicate"):
        check_levels([level("p2", 4), level("p2", 4)], consumer="x")
    with pytest.raises(ModelBuildError, match="mix"):
        check_levels([level("c2", 4), level("p3", 4)], consumer="x")


def test_channel_mismatch_names_the_level_and_consumer():
    with pytest.raises(ModelBuildError, match="RPN head expects 256 channels on every level, but p3 has 128"):
        check_levels([level("p2", 256), level("p3", 128)], consumer="RPN head", channels=256)


def test_check_features_against_declaration():
    levels = [level("p2", 4), level("p3", 4)]
    check_features({"p2": torch.zeros(1, 4, 8, 8), "p3": torch.zeros(1, 4, 4, 4)}, levels, producer="fpn")
    with pytest.raises(ModelBuildError, match="p3 declared 4 channels, produced 5"):
        check_features({"p2": torch.zeros(1, 4, 8, 8), "p3": torch.zeros(1, 5, 4, 4)}, levels, producer="fpn")
    with pytest.raises(ModelBuildError, match="declared levels"):
        check_features({"p2": torch.zeros(1, 4, 8, 8)}, levels, producer="fpn")
