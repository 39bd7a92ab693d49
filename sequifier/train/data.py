"""Batches for training: one split held in RAM as tensors, sliced by a permutation.

A split is loaded once into `WindowTensors` (column -> [N, L+1] tensor, plus the pad
count of each window). A batch is a gather of B rows: inputs are slots 0..L-1 (slots
1..L for known-ahead columns, data/known_ahead.py), targets slots 1..L, and
`target_mask` is False where the target slot is padding. No per-sample
Python work happens in an epoch.

The loop only needs a *batch source*: an object with `set_epoch(epoch)`, `__len__`
(batches per epoch), `n_samples` and `__iter__` yielding `Batch`. `make_batch_sources`
is the one place that picks the implementation: `InRamBatches` here, or
`StreamedBatches` (train/streamed_batches.py) for lazy loading and per-rank reading
under DDP. Every read format works with both.
"""

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from sequifier.config.metadata import Metadata
from sequifier.config.schema import TrainConfig
from sequifier.data.known_ahead import known_ahead_inputs
from sequifier.data.lazy import LazyWindowLoader
from sequifier.data.window_files import check_fingerprint, read_windows
from sequifier.errors import SequifierError
from sequifier.project import resolve_path
from sequifier.train import distributed
from sequifier.train.batch import Batch, check_id_range, check_window_length, make_batch, pinned_rows
from sequifier.train.streamed_batches import StreamedBatches

SPLIT_FIELDS = {0: "training_data_path", 1: "validation_data_path"}


@dataclass
class WindowTensors:
    values: dict[str, torch.Tensor]  # column -> [N, L+1]; int64 ids or float32 values
    # int64 [N]: first slot scored as a target (earlier: padding or earlier-split context)
    target_start: torch.Tensor

    def __len__(self) -> int:
        return int(self.target_start.shape[0])


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
    try:
        windows = read_windows(path, read_format, metadata.column_types, columns)
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


def _tensor(array: np.ndarray, dtype) -> torch.Tensor:
    array = np.ascontiguousarray(array, dtype=dtype)
    if not array.flags.writeable:  # e.g. a view into an Arrow buffer
        array = array.copy()
    return torch.from_numpy(array)


class InRamBatches:
    """Batches of one in-RAM split; shuffled per epoch with a (seed, epoch) permutation.

    Seeding by epoch (rather than drawing from a running generator) makes the order of
    epoch k independent of how many epochs ran in this process, so resuming from a
    checkpoint replays exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, data: WindowTensors, input_columns: list[str], target_columns: list[str],
                 batch_size: int, shuffle: bool, seed: int, device: torch.device,
                 known_ahead: list[str] = ()):
        self.data = data
        self.input_columns = list(input_columns)
        self.known_ahead = list(known_ahead)
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
        # the split stays in host RAM (the GPU's memory is the model's); on cuda the rows
        # are gathered into pinned memory and copied asynchronously (batch.pinned_rows)
        if torch.device(self.device).type == "cuda":
            rows = {c: pinned_rows(v, index) for c, v in self.data.values.items()}
        else:
            rows = {c: v.index_select(0, index) for c, v in self.data.values.items()}
        return make_batch(rows, self.data.target_start.index_select(0, index), self.input_columns,
                          self.target_columns, self.device, self.known_ahead)


@contextmanager
def host_batches(source):
    """`source` (either batch source) yielding batches on the CPU for the duration: for
    passes that only count (the baselines' training statistics), which would otherwise
    copy the whole split to the GPU and read results back batch by batch."""
    device, source.device = source.device, torch.device("cpu")
    try:
        yield source
    finally:
        source.device = device


def make_batch_sources(cfg: TrainConfig, metadata: Metadata, input_columns: list[str],
                       device: torch.device) -> tuple[object, object]:
    """Training and validation batch sources for this config.

    In RAM unless `load_full_data_to_ram: false` or the run is distributed: then each
    rank streams its own part of the split (see sequifier/data/lazy.py).
    """
    spec = cfg.training_spec
    if not spec.load_full_data_to_ram or spec.distributed:
        return make_streamed_batch_sources(cfg, metadata, input_columns, device)
    columns = needed_columns(cfg, metadata)
    known = known_ahead_inputs(input_columns, metadata.known_ahead_columns)
    sources = []
    for split in (0, 1):
        field = SPLIT_FIELDS[split]
        data = load_window_tensors(split_path(cfg, metadata, split), cfg.read_format, metadata,
                                   columns, cfg.seq_length, field)
        sources.append(InRamBatches(data, input_columns, cfg.target_columns, spec.batch_size,
                                    shuffle=(split == 0), seed=spec.seed, device=device,
                                    known_ahead=known))
    return sources[0], sources[1]


def make_streamed_batch_sources(cfg: TrainConfig, metadata: Metadata, input_columns: list[str],
                                device: torch.device) -> tuple[StreamedBatches, StreamedBatches]:
    ctx = distributed.context()
    columns = needed_columns(cfg, metadata)
    n_classes = {c: metadata.n_classes[c] for c in columns
                 if metadata.column_types[c] == "categorical"}
    sources = []
    for split in (0, 1):
        path = split_path(cfg, metadata, split)
        loader = streamed_loader(cfg, metadata, split, path, columns, ctx.rank, ctx.world_size)
        sources.append(StreamedBatches(loader, input_columns, cfg.target_columns, n_classes,
                                       device, path,
                                       known_ahead_inputs(input_columns, metadata.known_ahead_columns)))
    return sources[0], sources[1]


def streamed_loader(cfg: TrainConfig, metadata: Metadata, split: int, path: str,
                    columns: list[str], rank: int, world_size: int) -> LazyWindowLoader:
    """The lazy loader of one split for one rank, its division over the ranks checked."""
    spec = cfg.training_spec
    field = SPLIT_FIELDS[split]
    try:
        loader = LazyWindowLoader(
            path, columns, spec.batch_size, read_format=cfg.read_format,
            column_types=metadata.column_types, shuffle=(split == 0), seed=spec.seed,
            max_ram_gb=math.inf if spec.load_full_data_to_ram else spec.max_ram_gb,
            num_workers=spec.num_workers, rank=rank, world_size=world_size,
            pin_memory=spec.device.startswith("cuda"))
    except SequifierError as e:
        raise SequifierError(f"{field}: {e}") from None
    if int(loader.counts.sum()) == 0:
        raise SequifierError(f"{field}: '{path}' holds no windows; use a larger data set or split")
    check_window_length(loader.window_length, cfg.seq_length, path)
    return loader


def check_rank_division(cfg: TrainConfig, metadata: Metadata, world_size: int) -> None:
    """Before the ranks of a distributed run start: every split gives every rank batches.

    The loaders only read file headers (and the parquet/csv inputCol column) here, so a
    split that cannot feed `world_size` ranks is one line in a few seconds, not an error
    inside a rank after the others started.
    """
    columns = needed_columns(cfg, metadata)
    for split in (0, 1):
        streamed_loader(cfg, metadata, split, split_path(cfg, metadata, split), columns, 0, world_size)
