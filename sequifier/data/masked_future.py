"""Direct multi-step forecasts: the one home of how a model is shown "not known yet".

An autoregressive forecast of H steps runs the model H times, feeding each prediction
back as the next input. A model trained with `model_spec.direct_horizon: H` can instead
forecast all H steps in one forward pass: the window ends H - 1 slots after the origin,
the known-ahead columns hold their (known) future values there, and the inputs of the
targets in those slots are *masked*, i.e. marked "not known yet". The model's outputs at
the last H positions are then its forecasts of steps 1..H after the origin.

Masked values are marked in the input arrays themselves, so that exports need no extra
input: NaN in a real column, `MASKED_ID` (-1) in a categorical one. The model replaces a
masked cell's embedding by a learned vector of its column (`ColumnEmbedding`).

Training (train/batch.py `mask_future`) masks, in every training window, the target
inputs after a random cut `c` drawn uniformly from the last H input positions
(`L - H <= c <= L - 1`; `c = L - 1` masks nothing), so the model learns every lead time
1..H as well as ordinary one-step predictions. Validation, one-step evaluate and infer
see unmasked windows, as before.
"""

from typing import Dict, List, Optional, Sequence

import numpy as np

MASKED_ID = -1
MASKED_REAL = float("nan")


def masked_columns(input_columns: Sequence[str], target_columns: Sequence[str],
                   known_ahead: Sequence[str]) -> List[str]:
    """The inputs a direct forecast masks: those that are targets (fed back when
    forecasting autoregressively), in input order."""
    return [c for c in input_columns if c in target_columns and c not in known_ahead]


def first_masked_position(seq_length: int, horizon: int) -> int:
    """Input position of the first masked slot of a direct forecast of `horizon` steps
    (positions before it hold the history up to the origin)."""
    return seq_length - horizon + 1


def mask_tail(inputs: Dict[str, np.ndarray], columns: Sequence[str], start: int) -> Dict[str, np.ndarray]:
    """Copies of `inputs` ([N, L] each) with `columns` masked from position `start` on."""
    out = dict(inputs)
    for column in columns:
        values = np.array(inputs[column], copy=True)
        values[:, start:] = MASKED_REAL if np.issubdtype(values.dtype, np.floating) else MASKED_ID
        out[column] = values
    return out


def horizon_problems(direct_horizon: Optional[int], seq_length: Optional[int],
                     field: str = "model_spec.direct_horizon") -> List[str]:
    """`direct_horizon` against the window length: the masked slots and at least one
    observed one must fit into the model's seq_length inputs."""
    if direct_horizon is None:
        return []
    if direct_horizon < 2:
        return [f"{field}: must be >= 2 (steps forecast in one forward pass; 1 is an ordinary "
                f"one-step model: remove it), got {direct_horizon}"]
    if seq_length is not None and direct_horizon > seq_length:
        return [f"{field}: must be at most seq_length ({seq_length}), got {direct_horizon}; the "
                "forecast's masked steps and at least one observed item must fit in the window: "
                "lower it or preprocess with a longer seq_length"]
    return []
