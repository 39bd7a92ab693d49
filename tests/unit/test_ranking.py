"""Ranking metrics (sequifier.ranking) and the Markov baseline, against brute force."""

import math

import numpy as np
import pytest
import torch

from sequifier import metrics, ranking
from sequifier.config.schema import PAD_ID


def _brute_rank(scores, target, seen=()):
    """1-based place of `target` among all ids but PAD and the seen ones (target kept);
    higher score first, equal scores by lower id."""
    candidates = [j for j in range(len(scores)) if j != PAD_ID and (j == target or j not in seen)]
    order = sorted(candidates, key=lambda j: (-scores[j], j))
    return order.index(target) + 1


def test_target_ranks_match_brute_force_with_and_without_seen_items():
    gen = torch.Generator().manual_seed(0)
    n, c = 60, 25
    scores = torch.randn(n, c, generator=gen)
    scores[:5] = 0.0  # all tied: ranks by id
    targets = torch.randint(2, c, (n,), generator=gen)
    seen = torch.randint(0, c, (n, 6), generator=gen)
    seen[:10, 0] = targets[:10]  # the target itself was seen: it stays a candidate
    plain = ranking.target_ranks(scores, targets)
    masked = ranking.target_ranks(scores, targets, seen)
    for i in range(n):
        s, t = scores[i].tolist(), int(targets[i])
        assert plain[i] == _brute_rank(s, t)
        assert masked[i] == _brute_rank(s, t, set(seen[i].tolist()))
    assert (masked <= plain).all() and (masked < plain).any()
    assert plain[:5].tolist() == targets[:5].tolist()  # ties: ids 1..t-1 first, PAD left out


def test_ranking_sums_add_up_over_any_row_chunks_and_give_hr_ndcg_mrr():
    ranks = torch.tensor([1, 3, 10, 11, 20, 21, 2])
    whole = ranking.ranking_sums(ranks, [10, 20])
    parts = ranking.ranking_sums(ranks[:3], [10, 20]) + ranking.ranking_sums(ranks[3:], [10, 20])
    assert torch.allclose(whole, parts)
    got = ranking.ranking_metrics(whole, [10, 20])
    r = ranks.double().numpy()
    assert got["hr@10"] == pytest.approx(np.mean(r <= 10))
    assert got["hr@20"] == pytest.approx(np.mean(r <= 20))
    assert got["ndcg@10"] == pytest.approx(np.mean(np.where(r <= 10, 1 / np.log2(r + 1), 0)))
    assert got["ndcg@20"] == pytest.approx(np.mean(np.where(r <= 20, 1 / np.log2(r + 1), 0)))
    assert got["mrr"] == pytest.approx(np.mean(1 / r))
    assert list(got) == ranking.metric_names([10, 20])
    assert math.isnan(ranking.ranking_metrics(ranking.empty_sums([10]), [10])["mrr"])


def test_slot_ranking_excludes_each_targets_own_context_in_any_chunk_size():
    gen = torch.Generator().manual_seed(1)
    b, length, c = 5, 7, 19
    logits = torch.randn(b, length, c, generator=gen)
    targets = torch.randint(2, c, (b, length), generator=gen)
    previous = torch.randint(2, c, (b, length), generator=gen)
    mask = torch.rand(b, length, generator=gen) > 0.3
    want = []
    for i in range(b):
        for j in range(length):
            if mask[i, j]:
                want.append(_brute_rank(logits[i, j].tolist(), int(targets[i, j]), set(previous[i, :j + 1].tolist())))
    want = ranking.ranking_sums(torch.tensor(want), [3, 5])
    for max_elements in (c, 4 * c, 1 << 20):  # chunks of 1 row, 4 rows, all rows
        got = ranking.slot_ranking_sums(logits, targets, mask, [3, 5], previous, max_elements)
        assert torch.allclose(got, want)


def _markov_fixture():
    # transitions: 2 -> 3 (twice), 2 -> 4 (once), 3 -> 2; item 5 only as a first item
    previous = torch.tensor([[PAD_ID, 2, 3, 2, 2]])
    targets = torch.tensor([[5, 3, 2, 3, 4]])
    n_classes = 8
    counts = metrics.class_counts(targets, n_classes)
    keys = metrics.transition_keys(previous, targets, n_classes)
    return metrics.MarkovBaseline.fit(keys, n_classes, counts), counts


def test_markov_baseline_predicts_the_most_frequent_successor_with_popularity_fallback():
    markov, counts = _markov_fixture()
    log_probs = markov.log_probs(torch.tensor([2, 3, 6]))
    probs = log_probs.exp()
    assert torch.allclose(probs.sum(-1), torch.ones(3, dtype=torch.float64))
    assert probs[0].argmax() == 3 and probs[1].argmax() == 2
    # an item never followed by anything ranks like the unigram (popularity): 3 is most frequent
    assert probs[2].argmax() == 3
    unigram = metrics.unigram_log_probs(counts).exp()
    assert probs[2] == pytest.approx(unigram)
    # (count + u) / (n + 1): 2 -> 3 seen twice of three
    assert float(probs[0, 3]) == pytest.approx((2 + float(unigram[3])) / 4)
    assert probs[0, PAD_ID] == 0


def test_baseline_ranking_sums_equal_ranking_their_full_score_tables():
    gen = torch.Generator().manual_seed(3)
    c = 15
    train_prev = torch.randint(2, c, (30, 6), generator=gen)
    train_next = (train_prev * 3 + 1) % (c - 2) + 2
    counts = metrics.class_counts(train_next, c)
    markov = metrics.MarkovBaseline.fit(metrics.transition_keys(train_prev, train_next, c), c, counts)
    previous = torch.randint(2, c, (4, 6), generator=gen)
    targets = torch.randint(2, c, (4, 6), generator=gen)
    mask = torch.rand(4, 6, generator=gen) > 0.2
    for exclude in (False, True):
        found = metrics.categorical_baseline_sums(targets, counts, 3, mask, previous=previous, markov=markov,
                                                  ranking_k=[5], exclude_seen=exclude, max_elements=2 * c)
        assert set(found) == set(metrics.CATEGORICAL_BASELINES)
        seen = previous if exclude else None
        unigram = metrics.unigram_log_probs(counts).float().expand(4, 6, c)
        want_unigram = ranking.slot_ranking_sums(unigram, targets, mask, [5], seen)
        assert torch.allclose(found["unigram"][len(metrics.CATEGORICAL_SUMS):], want_unigram)
        table = markov.log_probs(previous.reshape(-1)).reshape(4, 6, c)
        want_markov = metrics.ranked_categorical_sums(table, targets, 3, mask, [5], seen)
        assert torch.allclose(found["markov"], want_markov)
    # on data that follows its transitions, Markov beats popularity
    follow = (previous * 3 + 1) % (c - 2) + 2
    found = metrics.categorical_baseline_sums(follow, counts, 3, None, previous=previous, markov=markov,
                                              ranking_k=[5])
    scores = {k: metrics.categorical_metrics(v, 3, [5]) for k, v in found.items()}
    assert scores["markov"]["mrr"] == 1.0 > scores["unigram"]["mrr"]


def test_ranking_k_rules_and_defaults():
    n_classes = {"item": 12, "value": 0}
    types = {"item": "categorical", "value": "real"}
    assert ranking.resolve_ranking_k(None, 12) == (10,)  # 20 > the 10 items: left out
    assert ranking.resolve_ranking_k(None, 1000) == (10, 20)
    assert ranking.resolve_ranking_k(None, 5) == ()
    assert ranking.ranking_k_problems("ranking_k", [10], n_classes, types, True, "exclude_seen") == []
    (zero,) = ranking.ranking_k_problems("ranking_k", [0, 10], n_classes, types, False, "exclude_seen")
    assert zero.startswith("ranking_k: needs positive integers")
    (big,) = ranking.ranking_k_problems("ranking_k", [10, 20], n_classes, types, False, "exclude_seen")
    assert big == "ranking_k: 20 is larger than the 10 items of 'item'; use k values up to 10"
    real = {"value": "real"}
    lines = ranking.ranking_k_problems("ranking_k", [5], n_classes, real, True, "exclude_seen")
    assert [line.split(":")[0] for line in lines] == ["ranking_k", "exclude_seen"]
    assert "every target (value) is real" in lines[0]
