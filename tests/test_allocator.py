"""fpn.allocator: the glibc setting takes effect (freed memory stays mapped) and can be switched off."""

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
block = torch.ones(64 * 2**20)  # 256 MB, every page touched
del block
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
    assert kept_mb > 200  # freed, yet still resident: the next map of that size reuses those pages
    flags, kept_mb = _probe("0")
    assert flags == "False False"
    assert kept_mb < 50  # glibc's defaults: the 256 MB block was an mmap, unmapped at free


@glibc
def test_switching_on_and_off_in_process():
    try:
        assert allocator.keep_freed_memory() is True and allocator.freed_memory_kept()
        assert allocator.keep_freed_memory(False) is False and not allocator.freed_memory_kept()
    finally:
        allocator.keep_freed_memory(False)  # leave the test process as it was


@pytest.mark.parametrize("value", ["0", "false", "Off", " no "])
def test_environment_switch_turns_it_off(value, monkeypatch):
    monkeypatch.setenv(allocator.ENV_SWITCH, value)
    assert allocator.apply_from_environment() is False
