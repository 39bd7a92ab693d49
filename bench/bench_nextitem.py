#!/usr/bin/env python3
"""Next-item quality of the template's defaults: leave-last-out HR@10, NDCG@10 and MRR of
the model against the popularity (unigram) and Markov-1 baselines, with seen items
removed and not.

A `sequifier make` project on `gen_nextitem.py` data (Zipf popularity, item successors,
topics), configured as a user would: the templates, changed only where the data needs
it (column names, the target, `split_method: leave_last_out`). No per-dataset tuning.
Each seed is one training (training_spec.seed); `evaluate` scores each user's last item
once with `exclude_seen` false and true. Medians over the seeds; the goal is the model
at >= 1.5x the better baseline on NDCG@10.

usage: bench_nextitem.py [--seeds 1 2 3] [--sequences 1500] [--items 3000] [--epochs N]
                         [--set key=value ...]   (extra train overrides, e.g. to measure a default)
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gen_nextitem import generate, true_next_probs  # noqa: E402

BIN = os.path.dirname(sys.executable)
METRICS = ("hr@10", "ndcg@10", "mrr")
SEQ_LENGTH = 48  # the template's: the oracle sees the same history a window holds
PREDICTORS = ("model", "unigram", "markov")


def run(project: str, *args: str) -> str:
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    proc = subprocess.run(["nice", "-n", "5", f"{BIN}/sequifier", *args], cwd=project, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sequifier {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def edit(path: str, old: str, new: str) -> None:
    with open(path) as f:
        text = f.read()
    if old not in text:
        raise SystemExit(f"{path}: '{old}' not found (did the template change?)")
    with open(path, "w") as f:
        f.write(text.replace(old, new))


def oracle(data: dict) -> dict:
    """The ceiling: each test item (a user's last, users of >= 3 items) ranked by the
    generator's true next-item distribution, which knows the user's current topic."""
    import torch

    from sequifier import ranking

    truth = data["truth"]
    users = np.flatnonzero(truth["lengths"] >= 3)
    steps = truth["lengths"][users] - 1
    probs = torch.from_numpy(true_next_probs(truth, users, steps))
    # ids 0 and 1 stand for <pad> and <unknown> (never ranked ahead), items from id 2 on
    scores = torch.cat([torch.full((len(users), 2), -1.0, dtype=probs.dtype), probs], dim=1)
    targets = torch.from_numpy(truth["ranks"][users, steps] + 2)
    history = np.arange(SEQ_LENGTH)[None, :] + (steps - SEQ_LENGTH)[:, None]
    seen = np.where(history >= 0, truth["ranks"][users[:, None], np.maximum(history, 0)] + 2, 0)
    out = {}
    for exclude in (False, True):
        ranks = ranking.target_ranks(scores, targets, torch.from_numpy(seen) if exclude else None)
        out[exclude] = ranking.ranking_metrics(ranking.ranking_sums(ranks, [10]), [10])
    return out


def make_data_project(root: str, sequences: int, items: int) -> dict:
    from sequifier.make import make_project

    shutil.rmtree(root, ignore_errors=True)
    make_project(root)
    data = generate(n_seq=sequences, n_items=items, with_truth=True)
    with open(os.path.join(root, "data", "data.csv"), "w") as f:
        f.write("sequenceId,itemPosition,itemId\n")
        np.savetxt(f, np.column_stack([data["sequenceId"], data["itemPosition"], data["itemId"]]),
                   fmt="%d", delimiter=",")
    edit(os.path.join(root, "configs", "preprocess.yaml"), "split_method: within_sequence",
         "split_method: leave_last_out")
    print(f"data: {len(data['itemId'])} rows, {sequences} users, {len(np.unique(data['itemId']))} items",
          flush=True)
    print(run(root, "preprocess").strip().splitlines()[-2], flush=True)
    return oracle(data)


def one_seed(root: str, seed: int, epochs, extra) -> dict:
    name = f"seed{seed}"
    args = ["train", f"model_name={name}", f"training_spec.seed={seed}", *extra]
    if epochs:
        args.append(f"training_spec.epochs={epochs}")
    start = time.perf_counter()
    run(root, *args)
    seconds = time.perf_counter() - start
    out = {"train_seconds": seconds}
    for exclude in (False, True):
        run(root, "evaluate", f"model_path=models/sequifier-{name}-best.onnx", f"exclude_seen={exclude}",
            "overwrite=true")
        with open(os.path.join(root, "outputs", "evaluation", f"sequifier-{name}-best-split2-metrics.json")) as f:
            target = json.load(f)["targets"]["itemId"]
        scores = {"model": target["model"], **target["baselines"]}
        out[exclude] = {p: {m: scores[p][m] for m in METRICS} for p in PREDICTORS}
        out["count"] = target["model"]["count"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--sequences", type=int, default=1500)
    p.add_argument("--items", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=None, help="default: the template's")
    p.add_argument("--set", nargs="*", default=[], help="extra train overrides (key=value)")
    p.add_argument("--out", default=os.path.join(HERE, "out", "nextitem"))
    a = p.parse_args()
    ceiling = make_data_project(a.out, a.sequences, a.items)
    results = []
    for seed in a.seeds:
        results.append(one_seed(a.out, seed, a.epochs, a.set))
        r = results[-1]
        print(f"seed {seed}: trained in {r['train_seconds']:.0f} s; NDCG@10 model {r[False]['model']['ndcg@10']:.4f}"
              f" / {r[True]['model']['ndcg@10']:.4f} (seen removed)", flush=True)
    print(f"\nleave-last-out, {results[0]['count']} test users, medians of {len(results)} seeds "
          f"(template defaults{', ' + ' '.join(a.set) if a.set else ''}):")
    print("| seen items | predictor | " + " | ".join(METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    ratios = {}
    for exclude in (False, True):
        for who in PREDICTORS:
            cells = [statistics.median(r[exclude][who][m] for r in results) for m in METRICS]
            print(f"| {'removed' if exclude else 'kept'} | {who} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
        print(f"| {'removed' if exclude else 'kept'} | oracle (the generator's own distribution) | "
              + " | ".join(f"{ceiling[exclude][m]:.4f}" for m in METRICS) + " |")
        best_baseline = max(statistics.median(r[exclude][b]["ndcg@10"] for r in results) for b in ("unigram", "markov"))
        ratios[exclude] = statistics.median(r[exclude]["model"]["ndcg@10"] for r in results) / best_baseline
    for exclude, ratio in ratios.items():
        verdict = "meets" if ratio >= 1.5 else "misses"
        print(f"NDCG@10 model / best baseline, seen {'removed' if exclude else 'kept'}: {ratio:.2f}x "
              f"({verdict} the 1.5x goal)")
    print(f"training time, median: {statistics.median(r['train_seconds'] for r in results):.0f} s")


if __name__ == "__main__":
    main()
