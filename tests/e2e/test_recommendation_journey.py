"""A recommender's session through the real CLI: "each user's next items, and how good is
that?" on a messy ratings table, scored leave-last-out against popularity and Markov;
then the README recipe "predict the next event for each of my users", run as written.

The table: unsorted rows, text user ids, event numbers with gaps, movie ids with unicode
titles, a genre column with missing cells, users with 1 to 3 events among longer ones.
The configs are the `sequifier make` templates, changed only where the user must.
"""

import json
import os
import shlex

import numpy as np
import pandas as pd
import pytest
from test_user_journey import edit, sequifier

# four CLI runs with a training and two ONNX exports: about a minute on 2 cores
pytestmark = pytest.mark.slow

from sequifier.make import make_project

TITLES = ["Amélie", "Crouching Tiger, Hidden Dragon (臥虎藏龍)", "Léon", "Der Untergang", "Ōkami",
          "Spirited Away (千と千尋の神隠し)", "La Haine", "Смерть", "Zoë", "Il Postino"]


def ratings_table(n_users=60, seed=0) -> pd.DataFrame:
    """Users watch films in a mostly fixed order (so history predicts the next film)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        length = int(rng.integers(1, 4)) if u % 5 == 0 else int(rng.integers(5, 20))
        movie = int(rng.integers(0, 10))
        for event in range(length):
            movie = (movie + 3) % 10 if rng.random() < 0.8 else int(rng.integers(0, 10))
            genre = None if rng.random() < 0.2 else ["drama", "comédie", "anime"][movie % 3]
            rows.append((f"user-{u:03d}-ß", event * 2 + 1, 100 + movie, TITLES[movie],
                         float(rng.integers(1, 6)), genre))
    frame = pd.DataFrame(rows, columns=["user", "event_no", "movie_id", "title", "stars", "genre"])
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("recommend") / "films")
    make_project(root)
    ratings_table().to_csv(os.path.join(root, "data", "data.csv"), index=False)
    pre = os.path.join(root, "configs", "preprocess.yaml")
    edit(pre, "sequence_id_column: sequenceId", "sequence_id_column: user")
    edit(pre, "position_column: itemPosition", "position_column: event_no")
    edit(pre, "missing_values: error", "missing_values: fill")
    edit(pre, "seq_length: 48", "seq_length: 8")
    edit(pre, "split_method: within_sequence", "split_method: leave_last_out")
    # three strides: the setting the README recipe used to fail on
    edit(pre, "stride_by_split: null", "stride_by_split: [2, 8, 8]")
    train = os.path.join(root, "configs", "train.yaml")
    edit(train, "target_columns: [itemId]", "target_columns: [movie_id]")
    edit(train, "    itemId: CrossEntropyLoss", "    movie_id: CrossEntropyLoss")
    edit(train, "model_name: my-model", "model_name: films")
    edit(train, "epochs: 10", "epochs: 2")
    edit(train, "dim_model: 64", "dim_model: 16")
    edit(train, "dim_feedforward: 128", "dim_feedforward: 32")
    edit(train, "exclude_seen: false", "exclude_seen: true")
    edit(train, "select_on: loss", "select_on: ndcg@10")
    return root


def test_leave_last_out_ranking_against_popularity_and_markov(project):
    proc = sequifier(project, "preprocess")
    assert "leave_last_out: the last item of each sequence for split 2" in proc.stdout + proc.stderr
    assert "have fewer than 3 items and go to training whole" in proc.stdout + proc.stderr
    proc = sequifier(project, "train")
    log = proc.stdout + proc.stderr
    assert "movie_id markov: cross_entropy" in log and "ndcg@10" in log
    with open(os.path.join(project, "logs", "films-summary.json")) as f:
        summary = json.load(f)
    ndcg = [r["val_metrics"]["movie_id"]["ndcg@10"] for r in summary["history"]]
    assert summary["best_epoch"] == int(np.argmax(ndcg)) + 1
    # the template's model_path: null finds the films model and says so
    proc = sequifier(project, "evaluate", "exclude_seen=true")
    assert "model_path:" in proc.stdout + proc.stderr and "model_name 'films'" in proc.stdout + proc.stderr
    with open(os.path.join(project, "outputs", "evaluation", "sequifier-films-best-split2-metrics.json")) as f:
        report = json.load(f)
    movie = report["targets"]["movie_id"]
    n_test = ratings_table().groupby("user").size().ge(3).sum()
    assert movie["model"]["count"] == n_test  # each user's last film, once
    assert set(movie["baselines"]) == {"unigram", "markov"}
    for who in [movie["model"], *movie["baselines"].values()]:
        assert {"hr@10", "ndcg@10", "mrr"} <= set(who)
    # films follow each other: Markov beats popularity on this table
    assert movie["baselines"]["markov"]["ndcg@10"] > movie["baselines"]["unigram"]["ndcg@10"]


def readme_recipe():
    """The shell lines of the README's "Predict the next event for each of my users" block."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "README.md")) as f:
        block = f.read().split("## Predict the next event for each of my users")[1].split("```bash")[1]
    text = block.split("```")[0].replace("\\\n", " ")
    return [shlex.split(line.split(" #")[0]) for line in text.splitlines() if line.strip()]


def test_readme_next_event_recipe_runs_as_written(project):
    if not os.path.exists(os.path.join(project, "models", "sequifier-films-best.onnx")):
        test_leave_last_out_ranking_against_popularity_and_markov(project)
    latest = ratings_table(n_users=60, seed=0)
    latest.to_csv(os.path.join(project, "data", "latest.csv"), index=False)
    commands = readme_recipe()
    assert [c[:2] for c in commands] == [["sequifier", "preprocess"], ["sequifier", "infer"]]
    for command in commands:
        sequifier(project, *command[1:])
    (predictions,) = [f for f in os.listdir(os.path.join(project, "outputs", "predictions"))
                      if f.startswith("sequifier-films-best")]
    frame = pd.read_csv(os.path.join(project, "outputs", "predictions", predictions))
    # one forecast per user with an event, in the user's own ids and film ids
    assert sorted(frame["user"]) == sorted(latest["user"].unique())
    assert set(frame["movie_id"].astype(int)) <= set(latest["movie_id"])
