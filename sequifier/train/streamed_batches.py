"""The loop's batch source over data read piece by piece (`sequifier.data.lazy`).

`make_batch_sources` (train/data.py) picks `StreamedBatches` when
`load_full_data_to_ram: false` or when training is distributed. The batches come from
`LazyWindowLoader` (LRU cache bounded by `max_ram_gb`, `num_workers` loader processes,
one part of the split per rank) and are shaped here into the loop's `Batch`. With
`load_full_data_to_ram: true` under DDP the cache is unbounded, so each rank keeps its
own part in RAM after the first epoch.
"""

from typing import Dict, List

import torch

from sequifier.data.lazy import LazyWindowLoader
from sequifier.data.windows import TARGET_START_COLUMN
from sequifier.train.batch import Batch, check_id_range, make_batch


class StreamedBatches:
    """Batches of one split from a `LazyWindowLoader` (see train/data.py for the protocol)."""

    def __init__(self, loader: LazyWindowLoader, input_columns: List[str],
                 target_columns: List[str], n_classes: Dict[str, int], device: torch.device,
                 where: str, known_ahead: List[str] = ()):
        self.loader = loader
        self.known_ahead = list(known_ahead)
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
        return make_batch(columns, raw[TARGET_START_COLUMN], self.input_columns,
                          self.target_columns, self.device, self.known_ahead)
