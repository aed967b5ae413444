"""fpn.allocator: the glibc setting takes effect (freed memory stays mapped) and the environment switches it off."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fpn import allocator

glibc = pytest.mark.skipif(allocator._glibc() is None, reason="needs glibc")

# In a fresh process: the resident set after allocating, touching and freeing a 256 MB tensor, over before.
PROBE = """
import sys, torch
from fpn import allocator
from fpn.measure import _status_kb
print(allocator.apply_from_environment(), allocator.freed_memory_kept())
before = _status_kb("VmRSS")
blocks = [torch.ones(4 * 2**20) for _ in range(16)]  # 16 x 16 MB, every page touched
del blocks
print((_status_kb("VmRSS") - before) / 1024)
"""


def _probe(switch: str | None) -> tuple[str, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    env.pop(allocator.ENV_SWITCH, None)
    if switch is not None:
        env[allocator.ENV_SWITCH] = switch
    lines = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    flags, kept_mb = lines.stdout.strip().splitlines()
    return flags, float(kept_mb)


@glibc
def test_freed_memory_stays_mapped_only_with_the_setting():
    flags, kept_mb = _probe(None)  # the default: on
    assert flags == "True True"
    assert kept_mb > 200  # freed, yet still resident: the next maps of that size reuse those pages
    flags, kept_mb = _probe("0")
    assert flags == "False False"
    assert kept_mb < 50  # glibc's defaults: each 16 MB block was an mmap, unmapped at free


@glibc
def test_a_block_above_the_threshold_is_still_returned():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    code = PROBE.replace("torch.ones(4 * 2**20) for _ in range(16)", "torch.ones(80 * 2**20)")  # one 320 MB block
    lines = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert float(lines.stdout.split()[-1]) < 50  # above 32 MB: mmap'd and unmapped as glibc does by default


@pytest.mark.parametrize("value", ["0", "false", "Off", " no "])
def test_environment_switch_turns_it_off(value, monkeypatch):
    monkeypatch.setenv(allocator.ENV_SWITCH, value)
    assert allocator.switched_off()
    assert allocator.apply_from_environment() is False


def test_the_fpn_command_applies_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    env.pop(allocator.ENV_SWITCH, None)
    code = "from fpn import allocator, cli; cli.main(['models']); print(allocator.freed_memory_kept())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == str(allocator._glibc() is not None)
