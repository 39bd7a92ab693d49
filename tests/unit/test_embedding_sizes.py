"""The automatic embedding widths (model_spec.feature_embedding_dims: null)."""

import pytest

from sequifier.errors import SequifierError
from sequifier.model.embedding_sizes import REAL_WIDTH, feature_embedding_dims

CAT, REAL = "categorical", "real"


def test_mixed_columns_real_small_categorical_by_log_vocabulary():
    dims = feature_embedding_dims(128, ["big", "small", "price", "qty"],
                                  {"big": CAT, "small": CAT, "price": REAL, "qty": REAL},
                                  {"big": 2 ** 12, "small": 2 ** 3})
    assert dims["price"] == dims["qty"] == REAL_WIDTH
    assert sum(dims.values()) == 128
    # one each, then 12 : 3 bits share the 110 left (88 : 22)
    assert dims == {"big": 89, "small": 23, "price": REAL_WIDTH, "qty": REAL_WIDTH}


@pytest.mark.parametrize("total", [1, 2, 3, 7, 33, 64, 100, 512])
@pytest.mark.parametrize("types", [[CAT], [REAL], [CAT, REAL], [CAT, CAT, REAL], [REAL, REAL, CAT, CAT, CAT]])
def test_widths_always_sum_exactly_and_are_positive(total, types):
    columns = [f"c{i}" for i in range(len(types))]
    column_types = dict(zip(columns, types))
    n_classes = {c: 3 + 40 * i for i, c in enumerate(columns) if column_types[c] == CAT}
    if total < len(columns):
        with pytest.raises(SequifierError, match="initial_embedding_dim: .* less than the"):
            feature_embedding_dims(total, columns, column_types, n_classes)
        return
    dims = feature_embedding_dims(total, columns, column_types, n_classes)
    assert list(dims) == columns and sum(dims.values()) == total and min(dims.values()) >= 1


def test_one_kind_of_column_splits_evenly():
    assert feature_embedding_dims(64, ["a", "b"], {"a": CAT, "b": CAT}, {"a": 50, "b": 50}) == {"a": 32, "b": 32}
    assert feature_embedding_dims(10, ["a", "b", "c"], {c: REAL for c in "abc"}, {}) == {"a": 4, "b": 3, "c": 3}


def test_manual_widths_are_checked():
    types = {"a": CAT, "b": REAL}
    assert feature_embedding_dims(8, ["a", "b"], types, {"a": 9}, {"a": 5, "b": 3}) == {"a": 5, "b": 3}
    with pytest.raises(SequifierError, match="sum to initial_embedding_dim .8."):
        feature_embedding_dims(8, ["a", "b"], types, {"a": 9}, {"a": 5, "b": 2})
    with pytest.raises(SequifierError, match=r"no width for input column\(s\) \['b'\]"):
        feature_embedding_dims(8, ["a", "b"], types, {"a": 9}, {"a": 8})
