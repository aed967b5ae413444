"""``fpn.bench.machine``: the description a record carries."""

import torch

from fpn.bench import machine_info


def test_machine_info_names_the_threads():
    info = machine_info(threads=3)
    assert info["threads"] == 3 and info["cores"] >= 1 and info["torch"] == torch.__version__
