"""Safe reading and atomic writing (fpn.io): a failed or interrupted write keeps the old file, no temporary left."""

from __future__ import annotations

import os
import re

import pytest
import torch

from fpn.errors import CheckpointError, FpnError
from fpn.io import atomic_save, atomic_write_text, read_state_dict


def test_atomic_save_keeps_the_old_file_when_saving_fails(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    atomic_save({"weights": torch.ones(3)}, path)
    original = path.read_bytes()

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")  # something reaches the disk before the failure
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"weights": torch.zeros(3)}, path)
    assert path.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]  # no temporary file left behind
    monkeypatch.undo()
    assert torch.equal(read_state_dict(path)["weights"], torch.ones(3))


def test_atomic_save_cleans_up_on_interrupt(tmp_path, monkeypatch):
    def interrupted(obj, handle, *args, **kwargs):
        handle.write(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"a": torch.ones(1)}, tmp_path / "new.pt")
    assert os.listdir(tmp_path) == []  # neither the target nor a temporary file


def test_atomic_save_replaces_and_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "weights.pt"
    atomic_save({"x": torch.ones(2)}, path)
    atomic_save({"x": torch.zeros(2)}, path)
    assert torch.equal(read_state_dict(path)["x"], torch.zeros(2))
    assert os.listdir(path.parent) == ["weights.pt"]


def test_atomic_write_text(tmp_path):
    path = atomic_write_text("[1, 2]\n", tmp_path / "out" / "results.json")
    assert path.read_text() == "[1, 2]\n"
    assert os.listdir(path.parent) == ["results.json"]


def test_read_state_dict_names_the_folder(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path))):
        read_state_dict(tmp_path)


def test_checkpoint_error_is_an_fpn_error():
    assert issubclass(CheckpointError, FpnError)
