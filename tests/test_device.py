"""Device choice: ``auto``/``cpu``/``cuda[:N]``, anything else refused with one line."""

import pytest
import torch

from fpn.device import resolve_device
from fpn.errors import ConfigError


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_unknown_device_is_refused_naming_it():
    with pytest.raises(ConfigError, match="'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_says_so():
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
