"""Shards, checkpoints and .pt models are loaded with weights_only=True: a crafted file
runs nothing, even when TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD asks torch to unpickle anything."""

import os

import pytest
import torch

from sequifier.data.window_files import WindowFile, read_rows, read_windows, split_files
from sequifier.errors import SequifierError


class Payload:
    """Unpickling this runs os.system, which would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def crafted(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "ran"
    path = tmp_path / "d-split0-00000.pt"
    torch.save({"sequenceId": Payload(str(marker))}, str(path))
    return str(path), marker


def read_shard(path):
    return read_windows(os.path.dirname(path), "pt", {})


@pytest.mark.parametrize("load", [
    lambda p: read_shard(p),
    lambda p: split_files(os.path.dirname(p), "pt"),
    lambda p: read_rows(WindowFile(p, "pt", 1, 1, ("itemPosition", "x"), True), 0, 1, ["x"], {}),
])
def test_crafted_shard_runs_nothing_and_is_one_line(crafted, load):
    path, marker = crafted
    with pytest.raises(SequifierError, match="shard .* cannot be read") as info:
        load(path)
    assert not marker.exists()
    assert "\n" not in str(info.value) and path in str(info.value)


def test_crafted_checkpoint_and_pt_model_run_nothing_and_are_one_line(crafted):
    from sequifier.export import load_pt_model
    from sequifier.train.checkpoint import load_checkpoint

    path, marker = crafted
    for load, what in ((load_checkpoint, "checkpoint"), (load_pt_model, "model_path:")):
        with pytest.raises(SequifierError, match=f"{what} '.*' cannot be read \\(it holds Python objects") as info:
            load(path)
        assert not marker.exists()
        assert "\n" not in str(info.value) and path in str(info.value)


def test_foreign_and_truncated_shards_are_one_line(tmp_path):
    foreign = tmp_path / "a.pt"
    torch.save([1, 2, 3], str(foreign))
    with pytest.raises(SequifierError, match="is not a sequifier shard"):
        read_shard(str(foreign))
    foreign.unlink()
    truncated = tmp_path / "b.pt"
    truncated.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SequifierError, match="shard .* cannot be read"):
        read_shard(str(truncated))
