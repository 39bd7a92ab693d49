"""Automatic embedding widths of the input columns (`model_spec.feature_embedding_dims: null`).

The rule, for `initial_embedding_dim` D (default: `dim_model`) and the input columns:

* only real columns, or only categorical columns with vocabularies of one size: D is
  split evenly (the first columns get one more when D does not divide);
* otherwise each real column gets a small fixed width, `min(REAL_WIDTH, D // n_columns)`
  (at least 1): a single standardised number needs few dimensions;
* the categorical columns share the rest in proportion to log2 of their number of
  classes (a 10,000-value column gets twice the width of a 100-value one), each at
  least 1 (one each, then the rest shared), rounded by largest remainder so the widths
  sum exactly to D.

torch-free, so the validation gate can check a config with the same function the model
is built with.
"""

import math
from typing import Dict, List, Mapping, Optional

from sequifier.errors import SequifierError

REAL_WIDTH = 8


def initial_embedding_dim(spec) -> int:
    """`model_spec.initial_embedding_dim`, which defaults to `dim_model`."""
    return spec.dim_model if spec.initial_embedding_dim is None else spec.initial_embedding_dim


def _shares(total: int, weights: Dict[str, float]) -> Dict[str, int]:
    """Split `total` into integers >= 1 in proportion to `weights` (largest remainder)."""
    spare = total - len(weights)
    weight_sum = sum(weights.values())
    exact = {c: spare * w / weight_sum for c, w in weights.items()}
    widths = {c: 1 + math.floor(x) for c, x in exact.items()}
    left = total - sum(widths.values())
    by_remainder = sorted(weights, key=lambda c: -(exact[c] - math.floor(exact[c])))
    for c in by_remainder[:left]:
        widths[c] += 1
    return widths


def feature_embedding_dims(total: int, columns: List[str], column_types: Mapping[str, str],
                           n_classes: Mapping[str, int],
                           manual: Optional[Mapping[str, int]] = None) -> Dict[str, int]:
    """The width of each input column; the widths sum to `total` (initial_embedding_dim)."""
    if manual:
        dims = {c: int(manual[c]) for c in columns if c in manual}
        missing = [c for c in columns if c not in dims]
        if missing:
            raise SequifierError(
                f"model_spec.feature_embedding_dims: no width for input column(s) {missing}; give "
                "every input column a width, or set feature_embedding_dims: null for automatic widths")
        extra = [c for c in manual if c not in columns]
        if extra:
            raise SequifierError(f"model_spec.feature_embedding_dims: {extra} are not input columns {columns}")
        if sum(dims.values()) != total or min(dims.values()) < 1:
            raise SequifierError(
                f"model_spec.feature_embedding_dims: widths {dims} must be >= 1 and sum to "
                f"initial_embedding_dim ({total}); or set feature_embedding_dims: null")
        return dims
    if total < len(columns):
        raise SequifierError(
            f"model_spec.initial_embedding_dim: {total} is less than the {len(columns)} input "
            "columns; every column needs at least one dimension")
    real = [c for c in columns if column_types[c] == "real"]
    categorical = [c for c in columns if column_types[c] != "real"]
    if not categorical or len({n_classes[c] for c in categorical}) == 1 and not real:
        return _shares(total, {c: 1.0 for c in columns})
    real_width = max(1, min(REAL_WIDTH, total // len(columns)))
    dims = {c: real_width for c in real}
    weights = {c: math.log2(max(n_classes[c], 2)) for c in categorical}
    dims.update(_shares(total - real_width * len(real), weights))
    return {c: dims[c] for c in columns}
