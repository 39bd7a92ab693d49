"""Device choice, mixed precision (`layer_autocast`) and determinism.

Autocast dtype per device:
  cuda  bfloat16 where the GPU supports it, else float16 (with a gradient scaler)
  mps   float16
  cpu   only when `layer_type_dtypes` already puts layers in bfloat16/float16 (that
        dtype is then used for the remaining autocast-eligible ops). A float32 model is
        not autocast on CPU: without native bf16 units (the machines this was measured on
        ran bf16 matmuls below 1 GFLOP/s) autocast makes CPU training many times slower.
"""

import os
import random
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from sequifier.errors import SequifierError

LOW_PRECISION = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise SequifierError(f"training_spec.device: '{name}' is not a device; use cpu, cuda or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SequifierError(
                "training_spec.device: cuda is not available on this machine (no GPU or a CPU-only "
                "torch build); use device: cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SequifierError(
                f"training_spec.device: '{name}' does not exist; {torch.cuda.device_count()} GPU(s) found"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise SequifierError("training_spec.device: mps is not available on this machine; use device: cpu")
    elif device.type != "cpu":
        raise SequifierError(f"training_spec.device: '{name}' is not supported; use cpu, cuda or mps")
    return device


def autocast_dtype(device: torch.device, enabled: bool,
                   layer_type_dtypes: dict[str, str] | None) -> torch.dtype | None:
    """The dtype to autocast to on `device`, or None for no autocast (see module doc)."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    requested = [LOW_PRECISION[d] for d in (layer_type_dtypes or {}).values() if d in LOW_PRECISION]
    if torch.bfloat16 in requested:
        return torch.bfloat16
    return requested[0] if requested else None


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def determinism(enforce: bool):
    """Deterministic kernels for the duration of a run (the global flag is restored)."""
    if not enforce:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    previous_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    # cuBLAS needs a fixed workspace for deterministic matmuls; must be set before first use.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous_cudnn
