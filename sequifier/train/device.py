"""Device choice, mixed precision (`layer_autocast`) and determinism.

Autocast dtype per device:
  cuda  the dtype `layer_type_dtypes` puts layers in (bfloat16), else bfloat16 where the
        GPU computes it natively (compute capability 8.0+: A100, RTX 30xx and later),
        else float16 with a gradient scaler (V100, T4: their bfloat16 is emulated, slower
        than float32). float16 *parameters* are refused on cuda (`precision_problems`):
        a gradient scaler cannot unscale float16 gradients, and without one they underflow.
  mps   float16
  cpu   only when `layer_type_dtypes` already puts layers in bfloat16/float16 (that
        dtype is then used for the remaining autocast-eligible ops). A float32 model is
        not autocast on CPU: without native bf16 units (the machines this was measured on
        ran bf16 matmuls below 1 GFLOP/s) autocast makes CPU training many times slower.

On cuda, float32 matrix products use TF32 tensor cores (`set_float32_matmul_precision
("high")`, Ampere and later; a no-op elsewhere), unless `enforce_determinism` asks for
reproducible float32 results.
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


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 in hardware; emulated bf16 (CUDA before compute
    capability 8.0) is slower than float32 and does not count."""
    if device.type != "cuda":
        return False
    return torch.cuda.is_bf16_supported(including_emulation=False)


def _requested_low_precision(layer_type_dtypes: dict[str, str] | None) -> list[torch.dtype]:
    return [LOW_PRECISION[d] for d in (layer_type_dtypes or {}).values() if d in LOW_PRECISION]


def autocast_dtype(device: torch.device, enabled: bool,
                   layer_type_dtypes: dict[str, str] | None,
                   bf16_native: bool | None = None) -> torch.dtype | None:
    """The dtype to autocast to on `device`, or None for no autocast (see module doc).

    `bf16_native` overrides the hardware query (tests; None: ask `native_bf16`)."""
    if not enabled:
        return None
    requested = _requested_low_precision(layer_type_dtypes)
    if device.type == "cuda":
        if requested:  # the layers' own dtype, not a second one for the other ops
            return torch.bfloat16 if torch.bfloat16 in requested else requested[0]
        if bf16_native is None:
            bf16_native = native_bf16(device)
        return torch.bfloat16 if bf16_native else torch.float16
    if device.type == "mps":
        return torch.float16
    if torch.bfloat16 in requested:
        return torch.bfloat16
    return requested[0] if requested else None


def uses_grad_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> bool:
    """float16 autocast on cuda scales the loss (float32 parameters: the scaler unscales
    their gradients; float16 parameters are refused on cuda by `precision_problems`)."""
    return device.type == "cuda" and amp_dtype == torch.float16


def precision_problems(device: str, layer_type_dtypes: dict[str, str] | None) -> list[str]:
    """Settings of `layer_type_dtypes` that cannot train on `device` (the gate's rule).

    float16 parameters on cuda: torch's GradScaler refuses to unscale float16 gradients
    ("Attempting to unscale FP16 gradients"), and without loss scaling small float16
    gradients flush to zero. (CPU and mps runs keep their behaviour: no scaler there.)"""
    if device.split(":")[0] != "cuda":
        return []
    return [f"training_spec.layer_type_dtypes.{layer}: float16 parameters cannot be trained on cuda "
            "(a gradient scaler only unscales float32 gradients, and unscaled float16 gradients "
            "underflow); use bfloat16, or keep the layer in float32 with layer_autocast: true "
            "(float16 autocast with loss scaling on GPUs without native bfloat16)"
            for layer, dtype in (layer_type_dtypes or {}).items() if dtype == "float16"]


def configure_matmul(device: torch.device, enforce_determinism: bool) -> str:
    """Let float32 matmuls on cuda use TF32 tensor cores; the precision in effect.

    TF32 keeps float32's range with a 10-bit mantissa: a few times faster on Ampere and
    later, and the usual choice for training. With enforce_determinism, cuda runs keep
    full float32 ("highest", also after an earlier run in this process chose "high"). On
    CPU (where "high" could pick a bf16-based path on some CPUs) the setting is left as it is."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("highest" if enforce_determinism else "high")
    return torch.get_float32_matmul_precision()


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
