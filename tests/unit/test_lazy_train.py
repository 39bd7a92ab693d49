"""Training with lazy shard loading (load_full_data_to_ram: false) through run_train."""

import os

import numpy as np
import pytest
from helpers.train_data import make_config, make_project  # noqa: E402

from sequifier.config.metadata import read_metadata  # noqa: E402
from sequifier.errors import SequifierError  # noqa: E402
from sequifier.train.data import InRamBatches, make_batch_sources  # noqa: E402
from sequifier.train.run import run_train  # noqa: E402
from sequifier.train.streamed_batches import StreamedBatches  # noqa: E402

LAZY = {"read_format": "pt", "training_spec.load_full_data_to_ram": False,
        "training_spec.max_ram_gb": 1e-5}  # ~10 kB: below one 64-window shard


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("lazy"), n_train=200, n_val=48, write_format="pt")


def sources(project, **overrides):
    cfg = make_config(project, **overrides)
    metadata = read_metadata(os.path.join(project, cfg.metadata_config_path))
    return make_batch_sources(cfg, metadata, ["itemId", "itemValue"], "cpu")


def test_lazy_flag_picks_the_shard_source_and_batches_match_in_ram(project):
    lazy_train, lazy_val = sources(project, **LAZY)
    ram_train, ram_val = sources(project, read_format="pt")
    assert isinstance(lazy_train, StreamedBatches) and isinstance(ram_train, InRamBatches)
    assert lazy_train.n_samples == ram_train.n_samples == 200
    # validation is not shuffled and holds the same windows in the same order
    lazy = list(lazy_val)
    ram = list(ram_val)
    assert len(lazy) == len(ram)
    for a, b in zip(lazy, ram):
        for c in ("itemId", "itemValue"):
            np.testing.assert_array_equal(a.inputs[c].numpy(), b.inputs[c].numpy())
            np.testing.assert_array_equal(a.targets[c].numpy(), b.targets[c].numpy())
        np.testing.assert_array_equal(a.target_mask.numpy(), b.target_mask.numpy())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_from_lazy_shards(project, num_workers):
    result = run_train(make_config(project, model_name=f"lazy{num_workers}", **LAZY,
                                   **{"training_spec.num_workers": num_workers}), export=False)
    losses = [h.val_loss for h in result.history]
    assert len(losses) == 2 and np.isfinite(losses).all() and losses[1] < losses[0]


@pytest.mark.parametrize("write_format,sharded", [("parquet", False), ("parquet", True),
                                                  ("csv", False), ("csv", True)])
def test_lazy_reads_every_format_like_in_ram(tmp_path, write_format, sharded):
    root = make_project(tmp_path, n_train=120, n_val=40, write_format=write_format,
                        sharded=sharded, per_shard=16)
    fmt = {"read_format": write_format}
    # a budget below one 16-window piece: single files are read a piece at a time too
    lazy_train, lazy_val = sources(root, **fmt, **{"training_spec.load_full_data_to_ram": False,
                                                   "training_spec.max_ram_gb": 1e-6})
    ram_train, ram_val = sources(root, **fmt)
    assert isinstance(lazy_train, StreamedBatches) and isinstance(ram_train, InRamBatches)
    assert lazy_train.n_samples == ram_train.n_samples == 120
    if not sharded:
        assert len(lazy_train.loader.plan[0][0]) > 1  # the one file came in several pieces
    for a, b in zip(list(lazy_val), list(ram_val), strict=True):
        for c in ("itemId", "itemValue"):
            np.testing.assert_array_equal(a.inputs[c].numpy(), b.inputs[c].numpy())
        np.testing.assert_array_equal(a.target_mask.numpy(), b.target_mask.numpy())
    lazy_train.set_epoch(1)
    seen = np.sort(np.concatenate([batch.inputs["itemId"][:, 0].numpy() for batch in lazy_train]))
    ram = np.sort(ram_train.data.values["itemId"][:, 0].numpy())
    np.testing.assert_array_equal(seen, ram)


def test_lazy_checks_seq_length_and_ids(project):
    with pytest.raises(SequifierError, match="seq_length"):
        sources(project, **LAZY, seq_length=5)
