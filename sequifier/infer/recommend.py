"""Top-k recommendations: the k most likely items of every predicted row, in the user's ids.

`output_top_k: k` writes, per categorical target, outputs/recommendations/MODEL-TARGET-
top{k}.csv|parquet: for every row `infer` predicts (the same rows as the predictions
file), the k items the model ranks highest with their probabilities (the model's softmax
over the whole catalogue), best first. The reserved ids `<pad>` and `<unknown>` are
never recommended; with `exclude_seen: true`, neither is an item the model's input window
already holds (the sequence's last seq_length items: what the user has already seen,
bought or rated). Formats (`top_k_format`):

* `long`: one row per recommended item: the key columns, `rank` (1 = best), TARGET
  (the item, in the user's ids) and `probability`;
* `wide`: one row per predicted row: the key columns, `TARGET_1..TARGET_k` and
  `probability_1..probability_k`.

The scores come from `sequifier.catalog` in bounded chunks of rows, so a catalogue of a
million items never needs a dense [rows, catalogue] table. Dense probability tables
(`output_probabilities`) have one column per class; above `DENSE_PROBABILITY_LIMIT`
classes they need `allow_dense_probabilities: true`.
"""

import os

import numpy as np

from sequifier.config.schema import PAD_ID, UNKNOWN_ID
from sequifier.errors import shown

TOP_K_FORMATS = ("long", "wide")
# classes above which a dense probability table (one column per class) needs an opt-in:
# 10,000 float32 columns are 40 kB per predicted row
DENSE_PROBABILITY_LIMIT = 10_000
RESERVED_IDS = (PAD_ID, UNKNOWN_ID)


def option_problems(cfg) -> list[str]:
    """The rules of the top-k options that need no model (for the validation gate)."""
    problems = []
    k = cfg.output_top_k
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        problems.append(f"output_top_k: must be a whole number >= 1 (items per predicted row), got {shown(k)}")
    if cfg.top_k_format not in TOP_K_FORMATS:
        problems.append(f"top_k_format: '{cfg.top_k_format}' is not one of {', '.join(TOP_K_FORMATS)}")
    elif k is None and cfg.top_k_format != "long":
        problems.append("top_k_format: is set but output_top_k is not; set output_top_k: 10 (say) "
                        "or remove top_k_format")
    if cfg.exclude_seen and k is None:
        problems.append("exclude_seen: leaves seen items out of the top-k lists, but output_top_k is "
                        "not set; set output_top_k: 10 (say) or remove exclude_seen")
    if cfg.allow_dense_probabilities and not cfg.output_probabilities:
        problems.append("allow_dense_probabilities: is set but output_probabilities is false; set "
                        "output_probabilities: true or remove allow_dense_probabilities")
    if k is not None and cfg.model_type == "embedding":
        problems.append("output_top_k: embedding models predict no items; use a generative model")
    return problems


def model_problems(cfg, info, n_classes: dict[str, int], path: str) -> list[str]:
    """The rules that need the model's targets and the metadata's catalogue sizes."""
    problems = []
    name = os.path.basename(path)
    categorical = [t for t in info.target_columns if info.target_column_types.get(t) == "categorical"]
    k = cfg.output_top_k
    if k is not None:
        if not categorical:
            problems.append(f"output_top_k: the model '{name}' has no categorical target to "
                            "recommend items of; remove output_top_k")
        for column in categorical:
            items = n_classes[column] - len(RESERVED_IDS)
            if k > items:
                problems.append(f"output_top_k: {k} is more than the {items} items of '{column}' "
                                f"(model '{name}'); set output_top_k to at most {items}")
            if cfg.exclude_seen and column not in info.input_columns:
                problems.append(f"exclude_seen: '{column}' is not an input of the model '{name}', so "
                                "its rows show no seen items to leave out; remove exclude_seen")
    if cfg.output_probabilities and not cfg.allow_dense_probabilities:
        for column in categorical:
            if n_classes[column] > DENSE_PROBABILITY_LIMIT:
                problems.append(
                    f"output_probabilities: '{column}' has {n_classes[column]:,} classes, more than "
                    f"{DENSE_PROBABILITY_LIMIT:,}: one float per class and predicted row is a table of "
                    f"{4 * n_classes[column] / 1e6:.1f} MB per row; use output_top_k for the most likely "
                    "items, or set allow_dense_probabilities: true")
    return problems


def seen_ids(inputs: np.ndarray, upto: np.ndarray | None = None) -> np.ndarray:
    """[rows, m] ids each row's top k must leave out: the row's input ids (all of them,
    or, with `upto`, those in input slots < upto per row; the rest become PAD_ID, which
    is excluded anyway)."""
    if upto is None:
        return np.asarray(inputs, dtype=np.int64)
    slots = np.arange(inputs.shape[1])[None, :]
    return np.where(slots < upto[:, None], inputs, PAD_ID).astype(np.int64)
