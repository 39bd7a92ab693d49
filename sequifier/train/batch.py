"""What the loop consumes: a `Batch` of windows, and the checks every batch source applies.

Both batch sources (`InRamBatches` in train/data.py, `StreamedBatches` in
train/streamed_batches.py) build their batches with `make_batch`.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from sequifier.data.known_ahead import input_slots
from sequifier.data.masked_future import MASKED_ID, MASKED_REAL
from sequifier.errors import SequifierError


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # [B, L]
    targets: dict[str, torch.Tensor]  # [B, L]
    target_mask: torch.Tensor  # bool [B, L]: True where the target slot is real data
    # target column -> [B, L]: its value in the slot before each target (the previous-value
    # and Markov baselines, the items seen before a target); the input tensor itself when
    # the target is also an input
    previous: dict[str, torch.Tensor]

    @property
    def size(self) -> int:
        return int(self.target_mask.shape[0])


def make_batch(rows: dict[str, torch.Tensor], target_start: torch.Tensor, input_columns: list[str],
               target_columns: list[str], device: torch.device,
               known_ahead: Sequence[str] = ()) -> Batch:
    """The `Batch` of whole windows `rows` (column -> [B, L+1]) on `device`; the
    `known_ahead` inputs are taken one slot later (data/known_ahead.py).

    Each column's windows go to the device once; its inputs, targets and previous values
    are views of that copy (a column that is both input and target is not sent twice)."""
    seq_length = rows[target_columns[0]].shape[1] - 1
    # target position j (0-based) is slot j + 1; it is scored once j + 1 >= target_start
    slots = torch.arange(1, seq_length + 1)
    mask = slots.unsqueeze(0) >= target_start.unsqueeze(1)
    windows = {c: to_device(rows[c], device) for c in dict.fromkeys([*input_columns, *target_columns])}
    inputs = {c: windows[c][:, input_slots(c, known_ahead, 0, seq_length)] for c in input_columns}
    return Batch(
        inputs=inputs,
        targets={c: windows[c][:, 1:] for c in target_columns},
        target_mask=to_device(mask, device),
        previous={c: inputs[c] if c in inputs and c not in known_ahead else windows[c][:, :-1]
                  for c in target_columns},
    )


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One host-to-device copy, asynchronous where the host tensor is pinned (the batch
    sources pin on cuda); from pageable memory a copy cannot overlap anyway."""
    device = torch.device(device)
    return tensor.to(device, non_blocking=tensor.is_pinned() if device.type == "cuda" else False)


def pinned_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[index] gathered straight into page-locked memory (cuda runs), so the copy
    to the GPU runs asynchronously; torch's pinned-memory cache keeps the buffer until
    that copy has finished."""
    out = torch.empty((len(index),) + tuple(values.shape[1:]), dtype=values.dtype, pin_memory=True)
    return torch.index_select(values, 0, index, out=out)


def mask_future(batch: Batch, columns: Sequence[str], horizon: int, seed: Sequence[int]) -> Batch:
    """`batch` with the inputs of `columns` masked after a random cut per window, drawn
    uniformly from the last `horizon` input positions (data/masked_future.py): what a
    model with `direct_horizon` trains on. The cuts depend only on `seed` (e.g. the run's
    seed, the epoch and the batch index), so a resumed run draws the same ones."""
    if not columns:
        return batch
    size, length = batch.inputs[columns[0]].shape
    rng = np.random.default_rng(list(seed))
    cuts = torch.from_numpy(rng.integers(length - horizon, length, size=size))
    after = (torch.arange(length).unsqueeze(0) > cuts.unsqueeze(1)).to(batch.inputs[columns[0]].device)
    inputs = dict(batch.inputs)
    for column in columns:
        value = inputs[column]
        fill = MASKED_REAL if value.is_floating_point() else MASKED_ID
        inputs[column] = value.masked_fill(after, fill)
    # `previous` (the baselines' previous value) keeps the unmasked inputs
    return replace(batch, inputs=inputs)


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
