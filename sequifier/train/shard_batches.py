"""Batch sources over `.pt` shards: lazy loading and per-rank shard groups under DDP.

`make_batch_sources` (train/data.py) hands over to `make_shard_batch_sources` when
`load_full_data_to_ram: false` or when training is distributed. The batches come from
`sequifier.data.lazy.LazyWindowLoader` (LRU cache bounded by `max_ram_gb`, `num_workers`
loader processes, one shard group per rank) and are shaped here into the loop's
`Batch`. With `load_full_data_to_ram: true` under DDP the cache is unbounded, so each
rank keeps its own shard group in RAM after the first epoch.
"""

import math
from typing import Dict, List, Tuple

import torch

from sequifier.config.metadata import Metadata
from sequifier.config.schema import TrainConfig
from sequifier.data.lazy import LazyWindowLoader
from sequifier.data.windows import TARGET_START_COLUMN
from sequifier.errors import SequifierError
from sequifier.train import distributed
from sequifier.train.data import (
    SPLIT_FIELDS,
    Batch,
    check_id_range,
    check_window_length,
    make_batch,
    needed_columns,
    split_path,
)


class ShardBatches:
    """The loop's batch source over one split's shards (see train/data.py for the protocol)."""

    def __init__(self, loader: LazyWindowLoader, input_columns: List[str],
                 target_columns: List[str], n_classes: Dict[str, int], device: torch.device,
                 where: str):
        self.loader = loader
        self.input_columns = list(input_columns)
        self.target_columns = list(target_columns)
        self.n_classes = n_classes  # categorical column -> ids allowed (0..n-1)
        self.device = device
        self.where = where

    @property
    def n_samples(self) -> int:
        """Windows of the whole split (all ranks), for logs and samples/s."""
        return int(self.loader.counts.sum())

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for raw in self.loader:
            yield self.to_batch(raw)

    def to_batch(self, raw: dict) -> Batch:
        columns = raw["columns"]
        # Lazy data cannot be checked up front; one min/max per column and batch is cheap.
        for col, n in self.n_classes.items():
            check_id_range(columns[col], col, n, self.where)
        return make_batch(columns, raw[TARGET_START_COLUMN], self.input_columns, self.target_columns,
                          self.device)


def _check_window_length(loader: LazyWindowLoader, seq_length: int, where: str) -> None:
    from sequifier.data.lazy import _load

    check_window_length(int(_load(loader.paths[0])["itemPosition"].shape[1]), seq_length, where)


def make_shard_batch_sources(cfg: TrainConfig, metadata: Metadata, input_columns: List[str],
                             device: torch.device) -> Tuple[ShardBatches, ShardBatches]:
    spec = cfg.training_spec
    ctx = distributed.context()
    if cfg.read_format != "pt":
        why = ("training_spec.distributed: true" if spec.distributed
               else "training_spec.load_full_data_to_ram: false")
        raise SequifierError(f"{why} needs read_format: pt (shards written by preprocess with "
                             f"write_format: pt), not '{cfg.read_format}'")
    columns = needed_columns(cfg, metadata)
    n_classes = {c: metadata.n_classes[c] for c in columns
                 if metadata.column_types[c] == "categorical"}
    max_ram_gb = math.inf if spec.load_full_data_to_ram else spec.max_ram_gb
    sources = []
    for split in (0, 1):
        path = split_path(cfg, metadata, split)
        loader = LazyWindowLoader(
            path, columns, spec.batch_size, shuffle=(split == 0), seed=spec.seed,
            max_ram_gb=max_ram_gb, num_workers=spec.num_workers,
            rank=ctx.rank, world_size=ctx.world_size)
        if loader.n_windows == 0 and ctx.world_size == 1:
            raise SequifierError(f"{SPLIT_FIELDS[split]}: '{path}' holds no windows")
        _check_window_length(loader, cfg.seq_length, path)
        sources.append(ShardBatches(loader, input_columns, cfg.target_columns, n_classes,
                                    device, path))
    return sources[0], sources[1]
