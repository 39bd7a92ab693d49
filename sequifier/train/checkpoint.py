"""Checkpoints: everything needed to continue a run exactly where it stopped.

`checkpoints/NAME-epoch-EEEE.pt` (after epoch EEEE) or, with `save_interval_steps`,
`NAME-epoch-EEEE-batch-BBBBBB.pt` (BBBBBB batches into epoch EEEE) holds the model, optimizer and scheduler states, the
epoch, the best validation loss so far with the best model's weights, the early-stopping
counter, the loss history and the RNG states of torch, numpy and Python. Everything is
plain tensors and containers, so `torch.load(..., weights_only=True)` can read it, and
files are written atomically (temp file + rename).
"""

import glob
import os
import random
import re
from typing import Any

import numpy as np
import torch

from sequifier.errors import SequifierError
from sequifier.io_utils import atomic_path
from sequifier.tensor_files import load_tensor_file

CHECKPOINT_FORMAT = 1


def checkpoint_file(folder: str, model_name: str, epoch: int, batch: int = 0) -> str:
    """The file of the state after `epoch` completed epochs and `batch` batches of the next."""
    if batch == 0:
        return os.path.join(folder, f"{model_name}-epoch-{epoch:04d}.pt")
    return os.path.join(folder, f"{model_name}-epoch-{epoch + 1:04d}-batch-{batch:06d}.pt")


def list_checkpoints(folder: str, model_name: str) -> list[tuple[tuple[int, int], str]]:
    """((completed epochs, batches of the next), path) of this model's checkpoints, oldest first."""
    pattern = re.compile(rf"^{re.escape(model_name)}-epoch-(\d+)(?:-batch-(\d+))?\.pt$")
    found = []
    for path in glob.glob(os.path.join(glob.escape(folder), "*.pt")):
        match = pattern.match(os.path.basename(path))
        if match:
            epoch, batch = int(match.group(1)), int(match.group(2) or 0)
            found.append(((epoch - 1, batch) if batch else (epoch, 0), path))
    return sorted(found)


def prune_checkpoints(folder: str, model_name: str, keep_last: int, best_epoch: int) -> list[str]:
    """Remove all but the `keep_last` newest checkpoints and the best epoch's; the removed paths."""
    found = list_checkpoints(folder, model_name)
    keep = {path for _, path in found[-keep_last:]} | {path for key, path in found if key == (best_epoch, 0)}
    removed = [path for _, path in found if path not in keep]
    for path in removed:
        os.remove(path)
    return removed


def latest_checkpoint(folder: str, model_name: str) -> str | None:
    found = list_checkpoints(folder, model_name)
    return found[-1][1] if found else None


def rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = states["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        restore_cuda_rng_states(states["cuda"], torch.cuda.device_count())


def restore_cuda_rng_states(saved: list, device_count: int, set_state=None) -> int:
    """Give GPU i the state saved for GPU i, for the GPUs both machines have; the number set.

    A checkpoint written where more GPUs were visible holds more states than this machine
    has GPUs (torch's set_rng_state_all would fail on the first missing one); with fewer,
    the extra GPUs keep their seeded state. Each process trains on one GPU, so only
    GPUs 0..n-1 of the same numbering matter.
    """
    set_state = set_state or torch.cuda.set_rng_state
    n = min(len(saved), device_count)
    for index in range(n):
        set_state(saved[index], index)
    return n


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    state = dict(state, format=CHECKPOINT_FORMAT, rng=rng_states())
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str) -> dict[str, Any]:
    state = load_tensor_file(path, "checkpoint", "delete it or set training_spec.continue_training: false "
                             "with overwrite: true")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SequifierError(f"checkpoint '{path}' is not a sequifier checkpoint of this version")
    return state


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the weights (safe to keep while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
