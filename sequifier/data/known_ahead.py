"""Columns known in advance: the one home of how the model sees them.

A window holds `seq_length + 1` slots and the model's output after input slot j is its
prediction for slot j + 1. An ordinary input column gives the model its value at slot j;
a known-ahead column (`known_ahead_columns` of preprocess, e.g. a weather forecast, a
planned price, a calendar column) gives its value at slot j + 1, the position being
predicted, because that value is known when the prediction is made. So the input of a
known-ahead column is the window shifted by one slot: slots 1..L instead of 0..L-1.

Training (`train.batch.make_batch`), one-step inference and evaluate
(`infer.run.model_inputs`) and the multi-step forecast (`infer.forecasting`) all take
their input slots from `input_slots`, so they agree; the exports record which columns
are known ahead (`known_ahead_columns` in their metadata) and take the shifted values
as their ordinary `[batch, seq_length]` inputs.

A known-ahead column cannot be a target (its value is given, not predicted).
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np

KNOWN_AHEAD_SHIFT = 1


def shift(column: str, known_ahead: Sequence[str]) -> int:
    """How many slots later than an ordinary input the column's input slots start."""
    return KNOWN_AHEAD_SHIFT if column in known_ahead else 0


def input_slots(column: str, known_ahead: Sequence[str], first_slot: int, length: int) -> slice:
    """The window slots that make the model's `length` inputs of `column` when its
    ordinary inputs are slots first_slot..first_slot+length-1."""
    start = first_slot + shift(column, known_ahead)
    return slice(start, start + length)


def window_inputs(values: Dict[str, np.ndarray], columns: Sequence[str], known_ahead: Sequence[str],
                  length: int, first_slot: int = 0) -> Dict[str, np.ndarray]:
    """{column: [N, length]} model inputs from whole windows (column -> [N, L+1])."""
    return {c: values[c][:, input_slots(c, known_ahead, first_slot, length)] for c in columns}


def known_ahead_inputs(input_columns: Sequence[str], known_ahead: Sequence[str]) -> List[str]:
    """The model's input columns that are known ahead, in input order."""
    return [c for c in input_columns if c in known_ahead]


def target_problems(known_ahead: Sequence[str], target_columns: Sequence[str],
                    field: str = "target_columns") -> List[str]:
    """A known-ahead column cannot also be predicted: one line per such target."""
    return [f"{field}: '{c}' is a known-ahead column (known_ahead_columns of preprocess), so "
            "its value at the predicted position is given, not predicted; remove it from "
            f"{field}, or preprocess without it in known_ahead_columns to forecast it"
            for c in target_columns if c in known_ahead]


def setting_problems(known_ahead: Sequence[str], key_columns: Tuple[str, str],
                     selected_columns=None) -> List[str]:
    """`known_ahead_columns` of preprocess, before any file is read."""
    problems = []
    for column in known_ahead:
        if column in key_columns:
            problems.append(f"known_ahead_columns: '{column}' is the id or position column, not a "
                            "feature; remove it (time_features derives calendar columns from positions)")
        elif selected_columns is not None and column not in selected_columns:
            problems.append(f"known_ahead_columns: '{column}' is not in selected_columns "
                            f"{list(selected_columns)}; add it there")
    if len(set(known_ahead)) != len(known_ahead):
        problems.append(f"known_ahead_columns: names a column twice ({list(known_ahead)})")
    return problems


def header_problems(known_ahead: Sequence[str], header: Sequence[str], path: str) -> List[str]:
    """`known_ahead_columns` against the columns of one input file."""
    return [f"known_ahead_columns: '{c}' is not a column of input file '{path}' (its columns: "
            f"{list(header)[:12]}); fix the name" for c in known_ahead if c not in header]
