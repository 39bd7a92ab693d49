#!/usr/bin/env python3
"""Deterministic next-item data: a large catalogue, Zipf popularity, sequential structure.

The shape of a recommender's interaction log, in the long format `sequifier preprocess`
reads (columns sequenceId, itemPosition, itemId):

* `items` items (default 3,000) with Zipf-like popularity: weight of the item of
  popularity rank r is 1 / r**zipf_exponent.
* items belong to `topics` topics; every item has 4 successors drawn from its own topic
  by popularity (the "people who watched X next watched Y" structure).
* each sequence (a user) starts in a random topic and at every step picks
  - with p_successor: one of the previous item's successors (fixed probabilities),
  - with p_topic: a popular item of its current topic,
  - otherwise: an item of the whole catalogue by popularity (exploration),
  and switches topic with p_switch after each step.
* sequence lengths are log-uniform between min_len and max_len (default 20..700).

The next item is therefore predictable from the last item (successors), from the
recent history (topic) and from popularity, and a model that uses more context does
better. numpy only, all sequences simulated together step by step.

usage: gen_nextitem.py OUT.csv [--sequences N] [--items V] [--seed S]
"""

import argparse

import numpy as np

SUCCESSOR_PROBS = np.array([0.45, 0.25, 0.18, 0.12])


def popularity(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def draw(rng: np.random.Generator, cumulative: np.ndarray, n: int) -> np.ndarray:
    """n draws from the distribution with this cumulative table."""
    return np.minimum(np.searchsorted(cumulative, rng.random(n) * cumulative[-1]), len(cumulative) - 1)


def generate(n_seq=1500, n_items=3000, n_topics=60, zipf_exponent=1.0, min_len=20, max_len=700,
             p_successor=0.55, p_topic=0.3, p_switch=0.03, seed=7, with_truth=False):
    """The columns of the table; `with_truth` adds "truth", the process behind it (the same
    draws, so the same table): each step's topic and the item of each popularity rank,
    for the true next-item distribution (`true_next_probs`)."""
    rng = np.random.default_rng(seed)
    # item ids are shuffled against popularity rank so ids carry no information
    item_of_rank = rng.permutation(n_items)
    global_cumulative = np.cumsum(popularity(n_items, zipf_exponent))
    topic_of_rank = rng.integers(0, n_topics, n_items)
    # per topic: its items' ranks and a popularity table restricted to them
    topic_ranks = [np.flatnonzero(topic_of_rank == t) for t in range(n_topics)]
    topic_cumulative = [np.cumsum(popularity(n_items, zipf_exponent)[r]) for r in topic_ranks]
    # successors of each item (by rank): 4 items of its topic, popular ones more often
    successors = np.empty((n_items, 4), dtype=np.int64)
    for t, ranks in enumerate(topic_ranks):
        successors[ranks] = ranks[draw(rng, topic_cumulative[t], len(ranks) * 4)].reshape(-1, 4)
    successor_cumulative = np.cumsum(SUCCESSOR_PROBS)

    lengths = np.exp(rng.uniform(np.log(min_len), np.log(max_len + 1), n_seq)).astype(np.int64)
    lengths = np.clip(lengths, min_len, max_len)
    topic = rng.integers(0, n_topics, n_seq)
    current = np.array([topic_ranks[t][draw(rng, topic_cumulative[t], 1)[0]] for t in topic])
    ranks = np.empty((n_seq, lengths.max()), dtype=np.int64)
    ranks[:, 0] = current
    topics = np.empty((n_seq, lengths.max()), dtype=np.int64)  # the topic each step drew in
    topics[:, 0] = topic
    for step in range(1, lengths.max()):
        topics[:, step] = topic
        mode = rng.random(n_seq)
        nxt = global_cumulative.searchsorted(rng.random(n_seq) * global_cumulative[-1])
        nxt = np.minimum(nxt, n_items - 1)
        follow = mode < p_successor
        pick = np.minimum(successor_cumulative.searchsorted(rng.random(n_seq)), 3)
        nxt[follow] = successors[current[follow], pick[follow]]
        in_topic = np.flatnonzero((mode >= p_successor) & (mode < p_successor + p_topic))
        for t in np.unique(topic[in_topic]):
            users = in_topic[topic[in_topic] == t]
            nxt[users] = topic_ranks[t][draw(rng, topic_cumulative[t], len(users))]
        current = nxt
        ranks[:, step] = current
        switch = rng.random(n_seq) < p_switch
        topic[switch] = rng.integers(0, n_topics, switch.sum())

    keep = np.arange(lengths.max())[None, :] < lengths[:, None]
    seq_ids = np.broadcast_to(np.arange(n_seq)[:, None], keep.shape)[keep]
    positions = np.broadcast_to(np.arange(lengths.max())[None, :], keep.shape)[keep]
    out = {
        "sequenceId": seq_ids,
        "itemPosition": positions,
        "itemId": item_of_rank[ranks[keep]] + 1000,
    }
    if with_truth:
        out["truth"] = {"ranks": ranks, "topics": topics, "lengths": lengths, "successors": successors,
                        "topic_ranks": topic_ranks, "item_of_rank": item_of_rank,
                        "popularity": popularity(n_items, zipf_exponent),
                        "p": (p_successor, p_topic)}
    return out


def true_next_probs(truth: dict, sequence: np.ndarray, step: np.ndarray) -> np.ndarray:
    """[n, n_items] the generator's own distribution of the item at `step` of each
    `sequence` (given the item before and the topic in force), by popularity rank."""
    p_successor, p_topic = truth["p"]
    pop = truth["popularity"]
    probs = np.tile((1 - p_successor - p_topic) * pop, (len(sequence), 1))
    previous = truth["ranks"][sequence, step - 1]
    rows = np.repeat(np.arange(len(sequence)), 4)
    np.add.at(probs, (rows, truth["successors"][previous].reshape(-1)), np.tile(p_successor * SUCCESSOR_PROBS,
                                                                                 len(sequence)))
    for i, t in enumerate(truth["topics"][sequence, step]):
        members = truth["topic_ranks"][t]
        probs[i, members] += p_topic * pop[members] / pop[members].sum()
    return probs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--sequences", type=int, default=1500)
    p.add_argument("--items", type=int, default=3000)
    p.add_argument("--topics", type=int, default=60)
    p.add_argument("--min-len", type=int, default=20)
    p.add_argument("--max-len", type=int, default=700)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    data = generate(a.sequences, a.items, a.topics, min_len=a.min_len, max_len=a.max_len, seed=a.seed)
    with open(a.out, "w") as f:
        f.write("sequenceId,itemPosition,itemId\n")
        np.savetxt(f, np.column_stack([data["sequenceId"], data["itemPosition"], data["itemId"]]),
                   fmt="%d", delimiter=",")
    print(f"{a.out}: {len(data['itemId'])} rows, {a.sequences} sequences, "
          f"{len(np.unique(data['itemId']))} distinct items")


if __name__ == "__main__":
    main()
