"""sequifier.metrics against independent numpy / hand computations."""

import math

import numpy as np
import pytest
import torch

from sequifier import metrics
from sequifier.config.schema import PAD_ID


def _numpy_categorical(logits: np.ndarray, targets: np.ndarray, k: int) -> dict:
    """Reference: log-softmax by hand, arg-max and top-k by full sort."""
    z = logits.astype(np.float64)
    log_softmax = z - z.max(axis=1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
    nll = -log_softmax[np.arange(len(targets)), targets]
    order = np.argsort(-z, axis=1)
    return {"count": len(targets), "cross_entropy": nll.mean(),
            "accuracy": np.mean(order[:, 0] == targets),
            f"top{k}_accuracy": np.mean((order[:, :k] == targets[:, None]).any(axis=1))}


def _random_batch(seed=0, batch=6, length=7, n_classes=9):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (batch, length, n_classes)).astype(np.float32)
    targets = rng.integers(2, n_classes, (batch, length))
    target_start = rng.integers(1, length + 1, batch)
    mask = np.arange(1, length + 1)[None, :] >= target_start[:, None]
    return logits, targets, mask


def test_categorical_metrics_match_numpy_on_the_scored_slots_only():
    logits, targets, mask = _random_batch()
    sums = metrics.categorical_sums(torch.from_numpy(logits), torch.from_numpy(targets), 3,
                                    torch.from_numpy(mask))
    got = metrics.categorical_metrics(sums, 3)
    want = _numpy_categorical(logits[mask], targets[mask], 3)
    assert got["count"] == want["count"] == mask.sum()
    for name in ("cross_entropy", "accuracy", "top3_accuracy"):
        assert got[name] == pytest.approx(want[name], rel=1e-6), name
    # unscored slots change nothing
    scrambled = np.where(mask, targets, 2)
    again = metrics.categorical_sums(torch.from_numpy(logits), torch.from_numpy(scrambled), 3,
                                     torch.from_numpy(mask))
    assert torch.equal(again, sums)


def test_categorical_metrics_by_hand():
    # row 0: target 2 is the arg-max; row 1: target 0 ranks second; row 2: target 1 ranks third
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)], [math.log(3.0), math.log(6.0), 0.0],
                           [2.0, 1.0, 0.0]])
    sums = metrics.categorical_sums(logits, torch.tensor([2, 0, 2]), top_k=2)
    got = metrics.categorical_metrics(sums, 2)
    p = [2 / 4, 3 / 10, math.exp(0) / (math.exp(2) + math.exp(1) + 1)]
    assert got["count"] == 3
    assert got["cross_entropy"] == pytest.approx(-sum(math.log(x) for x in p) / 3)
    assert got["accuracy"] == pytest.approx(1 / 3)
    assert got["top2_accuracy"] == pytest.approx(2 / 3)
    # k beyond the number of classes counts every slot as a top-k hit
    assert metrics.categorical_metrics(metrics.categorical_sums(logits, torch.tensor([2, 0, 2]), 10),
                                       10)["top10_accuracy"] == 1.0


def test_sums_of_parts_equal_the_sums_of_the_whole():
    logits, targets, mask = (torch.from_numpy(a) for a in _random_batch(seed=4, batch=10))
    whole = metrics.categorical_sums(logits, targets, 5, mask)
    parts = sum(metrics.categorical_sums(logits[i:i + 3], targets[i:i + 3], 5, mask[i:i + 3])
                for i in range(0, 10, 3))
    torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-9)
    assert parts[0] == whole[0] and parts[2] == whole[2] and parts[3] == whole[3]  # counts exact
    values = torch.randn(10, 7)
    predictions = torch.randn(10, 7, 1)
    whole = metrics.real_sums(predictions, values, 2.5, mask)
    parts = sum(metrics.real_sums(predictions[i:i + 4], values[i:i + 4], 2.5, mask[i:i + 4])
                for i in range(0, 10, 4))
    torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-9)


def test_real_metrics_are_in_original_units():
    mean, std = 40.0, 4.0
    truth = np.array([[36.0, 44.0, 50.0], [40.0, 30.0, 41.0]])
    predicted = np.array([[37.0, 44.0, 45.0], [0.0, 33.0, 40.0]])
    mask = np.array([[True, True, True], [False, True, True]])
    standardise = lambda x: torch.from_numpy((x - mean) / std).float()  # noqa: E731
    got = metrics.real_metrics(metrics.real_sums(standardise(predicted), standardise(truth), std,
                                                 torch.from_numpy(mask)))
    errors = (predicted - truth)[mask]  # [1, 0, -5, 3, -1]
    assert got["count"] == 5
    assert got["mae"] == pytest.approx(np.abs(errors).mean(), rel=1e-6) == pytest.approx(2.0)
    assert got["mse"] == pytest.approx((errors**2).mean(), rel=1e-6) == pytest.approx(7.2)
    assert got["rmse"] == pytest.approx(math.sqrt(7.2), rel=1e-6)


def test_no_scored_slot_gives_nan_metrics_and_count_zero():
    empty = metrics.categorical_sums(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), 5,
                                     torch.zeros(2, 3, dtype=torch.bool))
    got = metrics.categorical_metrics(empty, 5)
    assert got["count"] == 0 and math.isnan(got["accuracy"]) and math.isnan(got["cross_entropy"])
    got = metrics.real_metrics(metrics.empty_sums("real"))
    assert got["count"] == 0 and math.isnan(got["rmse"])


def test_unigram_baseline_by_hand():
    # training targets: id 2 three times, id 3 once (id 1 = unknown never); 5 ids incl. PAD
    train = torch.tensor([[0, 2, 2], [3, 2, 9]])
    train_mask = torch.tensor([[False, True, True], [True, True, False]])
    counts = metrics.class_counts(train, 10, train_mask)
    assert counts.tolist() == [0, 0, 3, 1, 0, 0, 0, 0, 0, 0]
    log_probs = metrics.unigram_log_probs(counts)
    # add-one over the 9 ids other than PAD: 4 + 9 = 13 in all
    assert log_probs[PAD_ID] == -math.inf
    assert log_probs[2].exp().item() == pytest.approx(4 / 13)
    assert log_probs[7].exp().item() == pytest.approx(1 / 13)
    validation = torch.tensor([2, 3, 5, 2])
    sums = metrics.unigram_sums(validation, log_probs, top_k=2)
    got = metrics.categorical_metrics(sums, 2)
    assert got["cross_entropy"] == pytest.approx(-(2 * math.log(4 / 13) + math.log(2 / 13) + math.log(1 / 13)) / 4)
    assert got["accuracy"] == 0.5  # the majority class 2
    assert got["top2_accuracy"] == 0.75  # classes 2 and 3
    # the same numbers as scoring constant logits with categorical_sums
    logits = log_probs.float().clamp_min(-1e4).expand(4, -1)
    torch.testing.assert_close(metrics.categorical_sums(logits, validation, 2), sums)
    # the Markov baseline needs the previous items and its fitted transitions
    assert set(metrics.categorical_baseline_sums(validation, counts, 2)) == {"unigram"}


def test_real_baselines_by_hand():
    std = 2.0
    train = torch.tensor([[9.0, 1.0, 2.0], [3.0, 0.0, 9.0]])  # standardised
    train_mask = torch.tensor([[False, True, True], [True, True, False]])
    mean = metrics.mean_from_value_sums(metrics.value_sums(train, train_mask))
    assert mean == pytest.approx(1.5)
    targets = torch.tensor([[1.0, 2.0], [0.5, 1.0]])
    previous = torch.tensor([[0.0, 1.0], [9.0, 0.5]])
    mask = torch.tensor([[True, True], [False, True]])
    got = {name: metrics.real_metrics(s) for name, s in
           metrics.real_baseline_sums(targets, previous, mean, std, mask).items()}
    assert set(got) == set(metrics.REAL_BASELINES)
    # mean 1.5 vs 1, 2, 1 -> errors 0.5, 0.5, 0.5 (standardised) = 1, 1, 1 original units
    assert got["training_mean"]["mse"] == pytest.approx(1.0)
    assert got["training_mean"]["mae"] == pytest.approx(1.0)
    # previous 0, 1, 0.5 vs 1, 2, 1 -> 1, 1, 0.5 -> 2, 2, 1 original units
    assert got["previous_value"]["mse"] == pytest.approx(3.0)
    assert got["previous_value"]["mae"] == pytest.approx(5 / 3)


def test_top_k_is_left_out_where_a_column_has_k_values_or_fewer():
    sums = metrics.categorical_sums(torch.randn(6, 5), torch.tensor([2, 3, 4, 2, 3, 4]), top_k=3)
    # 5 ids = PAD, UNKNOWN and 3 values: every truth is among the 3 best, so no top-3 line
    assert "top3_accuracy" not in metrics.categorical_metrics(sums, 3, n_classes=5)
    assert "top3_accuracy" in metrics.categorical_metrics(sums, 3, n_classes=6)
    assert "top3_accuracy" in metrics.metrics_from_sums("categorical", sums, 3)  # classes unknown
    from sequifier.train.scoring import ScoredTarget
    assert ScoredTarget("c", "categorical", 5, n_classes=4).shown == ("cross_entropy", "accuracy")
    assert ScoredTarget("c", "categorical", 2, n_classes=5).shown[-1] == "top2_accuracy"
    assert "top5_accuracy" not in ScoredTarget("c", "categorical", 5, n_classes=4).metrics(sums)


def test_evaluate_markdown_marks_a_void_top_k_n_a():
    from sequifier.infer.evaluate import _row
    row = _row("flag", "m", {"count": 3, "accuracy": 0.5, "cross_entropy": 0.7},
               ["count", "accuracy", "top5_accuracy", "cross_entropy"])
    assert row == "| flag | m | 3 | 0.5000 | n/a | 0.7000 |"
