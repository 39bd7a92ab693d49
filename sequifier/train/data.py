"""Batches for training: one split held in RAM as tensors, sliced by a permutation.

A split is loaded once into `WindowTensors` (column -> [N, L+1] tensor, plus the pad
count of each window). A batch is a gather of B rows: inputs are slots 0..L-1, targets
slots 1..L, and `target_mask` is False where the target slot is padding. No per-sample
Python work happens in an epoch.

The loop only needs a *batch source*: an object with `set_epoch(epoch)`, `__len__`
(batches per epoch), `n_samples` and `__iter__` yielding `Batch`. `make_batch_sources`
is the one place that picks the implementation (in-RAM here; lazy shard loading and
distributed sharding plug in there).
"""

import os
from dataclasses import dataclass

import numpy as np
import torch

from sequifier.config.metadata import Metadata
from sequifier.config.schema import TrainConfig
from sequifier.data.windows import check_fingerprint, read_windows
from sequifier.errors import SequifierError
from sequifier.io_utils import resolve_path

SPLIT_FIELDS = {0: "training_data_path", 1: "validation_data_path"}


@dataclass
class WindowTensors:
    values: dict[str, torch.Tensor]  # column -> [N, L+1]; int64 ids or float32 values
    # int64 [N]: first slot scored as a target (earlier: padding or earlier-split context)
    target_start: torch.Tensor

    def __len__(self) -> int:
        return int(self.target_start.shape[0])


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # [B, L]
    targets: dict[str, torch.Tensor]  # [B, L]
    target_mask: torch.Tensor  # bool [B, L]: True where the target slot is real data
    # real target column -> [B, L]: its value in the slot before each target (for the
    # previous-value baseline); the input tensor itself when the target is also an input
    previous: dict[str, torch.Tensor]

    @property
    def size(self) -> int:
        return int(self.target_mask.shape[0])


def split_path(cfg: TrainConfig, metadata: Metadata, split: int) -> str:
    """The configured path of a split, else the metadata's (split 0 train, 1 validation)."""
    field = SPLIT_FIELDS[split]
    configured = getattr(cfg, field)
    if configured:
        path = resolve_path(cfg.project_root, configured)
    elif len(metadata.split_paths) <= split:
        raise SequifierError(
            f"{field}: the metadata lists {len(metadata.split_paths)} split(s), so there is no "
            f"split {split}; set {field} or preprocess with more split_ratios"
        )
    else:
        path = resolve_path(cfg.project_root, metadata.split_paths[split])
    check_fingerprint(path, cfg.read_format, metadata, cfg.metadata_config_path)
    return path


def needed_columns(cfg: TrainConfig, metadata: Metadata) -> list[str]:
    """Model inputs plus targets, in metadata order, after checking they exist there."""
    inputs = cfg.input_columns if cfg.input_columns is not None else metadata.columns
    for field, cols in (("input_columns", inputs), ("target_columns", cfg.target_columns)):
        for col in cols:
            if col not in metadata.column_types:
                raise SequifierError(
                    f"{field}: column '{col}' is not in the metadata (columns: {metadata.columns})"
                )
    wanted = set(inputs) | set(cfg.target_columns)
    return [c for c in metadata.columns if c in wanted]


def load_window_tensors(path: str, read_format: str, metadata: Metadata, columns: list[str],
                        seq_length: int, field: str) -> WindowTensors:
    if _is_empty_table(path, read_format):
        raise SequifierError(f"{field}: '{path}' holds no windows; use a larger data set or split")
    try:
        windows = read_windows(path, read_format, metadata.column_types, columns)
    except KeyError as e:
        raise SequifierError(f"{field}: column {e} not found in the data at '{path}'") from None
    except SequifierError as e:
        raise SequifierError(f"{field}: {e}") from None
    if len(windows) == 0:
        raise SequifierError(f"{field}: '{path}' holds no windows; use a larger data set or split")
    check_window_length(windows.window_length, seq_length, path)
    values = {}
    for col in columns:
        array = windows.values[col]
        if metadata.column_types[col] == "categorical":
            check_id_range(array, col, metadata.n_classes[col], path)
            values[col] = _tensor(array, np.int64)
        else:
            values[col] = _tensor(array, np.float32)
    return WindowTensors(values, _tensor(windows.target_start, np.int64))


def _is_empty_table(path: str, read_format: str) -> bool:
    """A tabular split without rows (read_windows would report missing columns instead)."""
    if not os.path.isfile(path):
        return False
    if read_format == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows == 0
        except (OSError, ValueError):  # not parquet: read_windows names the problem
            return False
    if read_format == "csv":
        with open(path, "rb") as f:  # bytes: a file in another format must not fail here
            return sum(1 for _, line in zip(range(2), f) if line.strip()) < 2
    return False


def _tensor(array: np.ndarray, dtype) -> torch.Tensor:
    array = np.ascontiguousarray(array, dtype=dtype)
    if not array.flags.writeable:  # e.g. a view into an Arrow buffer
        array = array.copy()
    return torch.from_numpy(array)


def check_window_length(window_length: int, seq_length: int, path: str) -> None:
    if window_length != seq_length + 1:
        raise SequifierError(
            f"seq_length: the data at '{path}' has windows of {window_length - 1} inputs "
            f"+ 1 target, but seq_length is {seq_length}; use the seq_length of preprocess"
        )


def check_id_range(ids: np.ndarray | torch.Tensor, col: str, n_classes: int, path: str) -> None:
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= n_classes:
        bad = low if low < 0 else high
        raise SequifierError(
            f"data '{path}': column '{col}' holds id {bad}, outside 0..{n_classes - 1} of the "
            "metadata's n_classes; the data and metadata_config_path come from different "
            "preprocess runs"
        )


class InRamBatches:
    """Batches of one in-RAM split; shuffled per epoch with a (seed, epoch) permutation.

    Seeding by epoch (rather than drawing from a running generator) makes the order of
    epoch k independent of how many epochs ran in this process, so resuming from a
    checkpoint replays exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, data: WindowTensors, input_columns: list[str], target_columns: list[str],
                 batch_size: int, shuffle: bool, seed: int, device: torch.device):
        self.data = data
        self.input_columns = list(input_columns)
        self.target_columns = list(target_columns)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = device
        self.epoch = 0

    @property
    def n_samples(self) -> int:
        return len(self.data)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.n_samples + self.batch_size - 1) // self.batch_size

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n_samples)
        rng = np.random.default_rng([self.seed, self.epoch])
        return torch.from_numpy(rng.permutation(self.n_samples))

    def __iter__(self):
        order = self.order()
        for start in range(0, self.n_samples, self.batch_size):
            yield self.gather(order[start:start + self.batch_size])

    def gather(self, index: torch.Tensor) -> Batch:
        rows = {c: v.index_select(0, index) for c, v in self.data.values.items()}
        return make_batch(rows, self.data.target_start.index_select(0, index), self.input_columns,
                          self.target_columns, self.device)


def make_batch(rows: dict[str, torch.Tensor], target_start: torch.Tensor, input_columns: list[str],
               target_columns: list[str], device: torch.device) -> Batch:
    """The `Batch` of whole windows `rows` (column -> [B, L+1]) on `device`."""
    seq_length = rows[target_columns[0]].shape[1] - 1
    # target position j (0-based) is slot j + 1; it is scored once j + 1 >= target_start
    slots = torch.arange(1, seq_length + 1)
    mask = slots.unsqueeze(0) >= target_start.unsqueeze(1)
    inputs = {c: rows[c][:, :-1].to(device, non_blocking=True) for c in input_columns}
    return Batch(
        inputs=inputs,
        targets={c: rows[c][:, 1:].to(device, non_blocking=True) for c in target_columns},
        target_mask=mask.to(device, non_blocking=True),
        previous={c: inputs[c] if c in inputs else rows[c][:, :-1].to(device, non_blocking=True)
                  for c in target_columns if rows[c].is_floating_point()},
    )


def make_batch_sources(cfg: TrainConfig, metadata: Metadata, input_columns: list[str],
                       device: torch.device) -> tuple[object, object]:
    """Training and validation batch sources for this config.

    Scale-out hook: lazy shard loading (`load_full_data_to_ram: false`) and per-rank
    sharding under DDP are chosen here; the loop does not care which source it gets.
    """
    spec = cfg.training_spec
    if not spec.load_full_data_to_ram or spec.distributed:
        from sequifier.train.shard_batches import make_shard_batch_sources

        return make_shard_batch_sources(cfg, metadata, input_columns, device)
    columns = needed_columns(cfg, metadata)
    sources = []
    for split in (0, 1):
        field = SPLIT_FIELDS[split]
        data = load_window_tensors(split_path(cfg, metadata, split), cfg.read_format, metadata,
                                   columns, cfg.seq_length, field)
        sources.append(InRamBatches(data, input_columns, cfg.target_columns, spec.batch_size,
                                    shuffle=(split == 0), seed=spec.seed, device=device))
    return sources[0], sources[1]
