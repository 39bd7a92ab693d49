"""Mapping ids and values back to the user's terms, sampling and unknown ids."""

import logging

import numpy as np
from helpers.infer_stub import make_metadata

from sequifier.config.schema import PAD_ID, UNKNOWN_ID
from sequifier.infer.values import (
    CategoryDecoder,
    Sampling,
    choose_ids,
    clamp_unknown_ids,
    destandardise,
    sampling_problems,
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
    # ids 0, 1 are <pad>, <unknown>: argmax may name them, a draw never does
    logits = np.log(np.array([[0.3, 0.1, 0.1, 0.3, 0.2]] * 4000))
    assert choose_ids(logits, None).tolist() == [0] * 4000
    draws = choose_ids(logits, np.random.default_rng(0))
    np.testing.assert_array_equal(draws, choose_ids(logits, np.random.default_rng(0)))
    shares = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(shares, [0, 0, 1 / 6, 1 / 2, 1 / 3], atol=0.03)


def shares_of(logits_row, sampling, n=6000):
    draws = choose_ids(np.log(np.array([logits_row] * n)), np.random.default_rng(1), sampling)
    return np.bincount(draws, minlength=len(logits_row)) / n


def test_temperature_top_k_and_top_p_shape_the_draw():
    row = [0.2, 0.2, 0.1, 0.4, 0.2, 0.3]  # reserved ids 0, 1 drop out: 0.1, 0.4, 0.2, 0.3 -> /1.0
    np.testing.assert_allclose(shares_of(row, Sampling()), [0, 0, 0.1, 0.4, 0.2, 0.3], atol=0.03)
    # temperature 0.5 squares the probabilities: 0.01, 0.16, 0.04, 0.09 (/ 0.30)
    np.testing.assert_allclose(shares_of(row, Sampling(temperature=0.5)),
                               [0, 0, 0.01 / 0.3, 0.16 / 0.3, 0.04 / 0.3, 0.09 / 0.3], atol=0.03)
    # top_k 2 keeps ids 3 and 5
    np.testing.assert_allclose(shares_of(row, Sampling(top_k=2)), [0, 0, 0, 4 / 7, 0, 3 / 7], atol=0.03)
    # top_p 0.75 keeps 0.4 + 0.3 (0.7 < 0.75) and then 0.2 (reaching 0.9): ids 3, 5, 4
    np.testing.assert_allclose(shares_of(row, Sampling(top_p=0.75)), [0, 0, 0, 4 / 9, 2 / 9, 3 / 9], atol=0.03)
    # top_p small keeps the most likely id alone
    assert shares_of(row, Sampling(top_p=0.1))[3] == 1.0


def test_sampling_settings_are_checked_per_column():
    problems = sampling_problems(["itemId"], {"temperature": {"itemId": 0.0}, "top_k": {"sup1": 3},
                                              "top_p": {"itemId": 1.5}})
    assert any(p.startswith("temperature.itemId: must be > 0") for p in problems)
    assert any(p.startswith("top_k.sup1: 'sup1' is not sampled") for p in problems)
    assert any(p.startswith("top_p.itemId: must be in (0, 1]") for p in problems)
    assert sampling_problems(["itemId"], {"top_k": {"itemId": 3}}) == []


def test_softmax_rows_sum_to_one():
    probs = softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]]))
    np.testing.assert_allclose(probs, [[0.5, 0.5], [0.25, 0.75]])


def test_destandardise():
    out = destandardise(np.array([0.0, 1.0], dtype=np.float32), {"mean": 10.0, "std": 2.0})
    np.testing.assert_allclose(out, [10.0, 12.0])
