"""Mapping ids and values back to the user's terms, sampling and unknown ids."""

import logging
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from infer_stub import make_metadata

from sequifier.config.schema import PAD_ID, UNKNOWN_ID
from sequifier.infer.values import (
    CategoryDecoder,
    choose_ids,
    clamp_unknown_ids,
    destandardise,
    softmax,
)


def test_integer_column_decodes_to_ints():
    decoder = CategoryDecoder(make_metadata(), "itemId", 7)
    out = decoder.decode(np.array([2, 6, 4]))
    assert out.dtype == np.int64
    assert out.tolist() == [100, 104, 102]


def test_reserved_ids_decode_to_labels():
    decoder = CategoryDecoder(make_metadata(), "itemId", 7)
    out = decoder.decode(np.array([2, PAD_ID, UNKNOWN_ID]))
    assert out.tolist() == ["100", "<pad>", "<unknown>"]


def test_string_column_decodes_to_strings():
    decoder = CategoryDecoder(make_metadata(), "sup1", 4)
    assert decoder.decode(np.array([3, 2, UNKNOWN_ID])).tolist() == ["b", "a", "<unknown>"]
    assert decoder.class_names() == ["<pad>", "<unknown>", "a", "b"]


def test_class_names_stay_distinct_for_ids_missing_from_the_map():
    decoder = CategoryDecoder(make_metadata(), "sup1", 6)  # ids 4, 5 unmapped
    names = decoder.class_names()
    assert len(set(names)) == 6


def test_clamp_unknown_ids_counts_and_maps(caplog):
    ids = np.array([[2, UNKNOWN_ID, 9], [3, 4, 7]])
    with caplog.at_level(logging.WARNING):
        out = clamp_unknown_ids("itemId", ids, 7)
    assert out.tolist() == [[2, UNKNOWN_ID, UNKNOWN_ID], [3, 4, UNKNOWN_ID]]
    assert "itemId: 3 values unknown to the model mapped to <unknown>" in caplog.text


def test_clamp_is_silent_without_unknowns(caplog):
    with caplog.at_level(logging.WARNING):
        clamp_unknown_ids("itemId", np.array([[2, 3]]), 7)
    assert caplog.text == ""


def test_argmax_and_seeded_sampling():
    logits = np.log(np.array([[0.1, 0.6, 0.3]] * 4000))
    assert choose_ids(logits, None).tolist() == [1] * 4000
    draws = choose_ids(logits, np.random.default_rng(0))
    np.testing.assert_array_equal(draws, choose_ids(logits, np.random.default_rng(0)))
    shares = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(shares, [0.1, 0.6, 0.3], atol=0.03)


def test_softmax_rows_sum_to_one():
    probs = softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]]))
    np.testing.assert_allclose(probs, [[0.5, 0.5], [0.25, 0.75]])


def test_destandardise():
    out = destandardise(np.array([0.0, 1.0], dtype=np.float32), {"mean": 10.0, "std": 2.0})
    np.testing.assert_allclose(out, [10.0, 12.0])
