"""Training reports metrics and baselines per target: values checked against numpy,
logs, TensorBoard, checkpoint history, accuracy_top_k, the end-of-run summary."""

import glob
import json
import os

import numpy as np
import pytest
import torch
from helpers.train_data import SEQ_LENGTH, log_text, make_config, make_project

from sequifier.config.metadata import read_metadata
from sequifier.config.schema import PAD_ID
from sequifier.data.window_files import read_windows
from sequifier.errors import SequifierError
from sequifier.train.checkpoint import load_checkpoint
from sequifier.train.run import run_train

pytestmark = pytest.mark.usefixtures("single_thread")

STD = 2.5  # itemValue's std in the metadata: MAE/RMSE must come out in these units


@pytest.fixture
def root(tmp_path):
    # windows begin with up to 3 slots of earlier-split context that must not be scored
    return make_project(tmp_path, context=3, value_std=STD)


def _split(root, split):
    metadata = read_metadata(os.path.join(root, "configs/metadata_configs/tiny.json"))
    windows = read_windows(os.path.join(root, metadata.split_paths[split]), "parquet",
                           metadata.column_types)
    scored = np.arange(1, SEQ_LENGTH + 1)[None, :] >= windows.target_start[:, None]
    return windows.values, scored


def _model_outputs(root, cfg, weights, values):
    from sequifier.model.transformer import build_model

    metadata = read_metadata(os.path.join(root, cfg.metadata_config_path))
    model = build_model(cfg, metadata)
    model.load_state_dict(weights)
    model.eval()
    inputs = {c: torch.from_numpy(np.ascontiguousarray(v[:, :-1])) for c, v in values.items()}
    with torch.no_grad():
        return {c: o.numpy().astype(np.float64) for c, o in model(inputs).items()}


def _numpy_ranking(scores, targets, ks):
    """HR@k, NDCG@k, MRR: rank = 1 + ids (not PAD) scoring higher, or equal with a lower id."""
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    ids = np.arange(scores.shape[1])[None, :]
    beats = (scores > target_scores) | ((scores == target_scores) & (ids < targets[:, None]))
    beats[:, PAD_ID] = False
    ranks = 1 + beats.sum(axis=1)
    out = {f"hr@{k}": np.mean(ranks <= k) for k in ks}
    out.update({f"ndcg@{k}": np.mean(np.where(ranks <= k, 1 / np.log2(ranks + 1), 0)) for k in ks})
    out["mrr"] = np.mean(1 / ranks)
    return out


def _numpy_categorical(logits, targets, k, ks=(3, 5)):
    log_softmax = logits - logits.max(axis=1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
    order = np.argsort(-logits, axis=1)
    return {"count": len(targets),
            "cross_entropy": -log_softmax[np.arange(len(targets)), targets].mean(),
            "accuracy": np.mean(order[:, 0] == targets),
            f"top{k}_accuracy": np.mean((order[:, :k] == targets[:, None]).any(axis=1)),
            **_numpy_ranking(logits, targets, ks)}


def _numpy_real(predicted, truth):
    errors = (predicted - truth) * STD
    return {"count": len(truth), "mae": np.abs(errors).mean(), "mse": (errors**2).mean(),
            "rmse": np.sqrt((errors**2).mean())}


def _assert_close(got: dict, want: dict):
    assert set(got) == set(want)
    assert got["count"] == want["count"]
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-5, abs=1e-9), name


def test_epoch_metrics_and_baselines_equal_an_independent_numpy_computation(root):
    cfg = make_config(root, **{"training_spec.epochs": 1, "training_spec.accuracy_top_k": 3,
                               "training_spec.ranking_k": [3, 5]})
    result = run_train(cfg, export=False)
    values, scored = _split(root, 1)
    outputs = _model_outputs(root, cfg, load_checkpoint(result.checkpoint_path)["model"], values)

    got = result.history[0].val_metrics
    ids = values["itemId"][:, 1:]
    _assert_close(got["itemId"], _numpy_categorical(outputs["itemId"][scored], ids[scored], 3))
    reals = values["itemValue"][:, 1:].astype(np.float64)
    _assert_close(got["itemValue"], _numpy_real(outputs["itemValue"].reshape(reals.shape)[scored],
                                                reals[scored]))
    # context slots exist and were left out
    assert got["itemId"]["count"] == scored.sum() < scored.size - (values["itemId"][:, 1:] == PAD_ID).sum()

    train_values, train_scored = _split(root, 0)
    counts = np.bincount(train_values["itemId"][:, 1:][train_scored], minlength=12).astype(np.float64)
    smoothed = counts + 1
    smoothed[PAD_ID] = 0
    p = smoothed / smoothed.sum()
    ranked = np.argsort(-p, kind="stable")
    truth = ids[scored]
    np.seterr(divide="ignore")  # log(0) of PAD_ID: -inf, never a target
    _assert_close(result.baselines["itemId"]["unigram"], {
        "count": len(truth), "cross_entropy": -np.log(p[truth]).mean(),
        "accuracy": np.mean(truth == ranked[0]), "top3_accuracy": np.mean(np.isin(truth, ranked[:3])),
        **_numpy_ranking(np.log(np.tile(p, (len(truth), 1))), truth, (3, 5))})
    # Markov-1: (count(prev -> x) + p(x)) / (count(prev) + 1), fitted on the training split
    transitions = np.zeros((12, 12))
    np.add.at(transitions, (train_values["itemId"][:, :-1][train_scored], train_values["itemId"][:, 1:][train_scored]), 1)
    before = values["itemId"][:, :-1][scored]
    markov = (transitions[before] + p) / (transitions[before].sum(axis=1, keepdims=True) + 1)
    _assert_close(result.baselines["itemId"]["markov"], _numpy_categorical(np.log(markov), truth, 3))
    mean = train_values["itemValue"][:, 1:][train_scored].astype(np.float64).mean()
    _assert_close(result.baselines["itemValue"]["training_mean"],
                  _numpy_real(np.full(scored.sum(), mean), reals[scored]))
    previous = values["itemValue"][:, :-1].astype(np.float64)
    _assert_close(result.baselines["itemValue"]["previous_value"],
                  _numpy_real(previous[scored], reals[scored]))


def test_metrics_reach_log_tensorboard_history_and_summary(root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_train(make_config(root, **{"training_spec.epochs": 2}))
    text = log_text(result)
    # baselines once, before the first epoch
    assert text.count("baselines on the validation split") == 1
    assert text.index("itemId unigram: cross_entropy") < text.index("epoch 1/2:")
    assert "itemValue previous_value: mae" in text and "itemValue training_mean: mae" in text
    for epoch in (1, 2):
        record = result.history[epoch - 1]
        accuracy = record.val_metrics["itemId"]["accuracy"]
        unigram = result.baselines["itemId"]["unigram"]["accuracy"]
        assert "validation itemId: cross_entropy" in text
        markov = result.baselines["itemId"]["markov"]["accuracy"]
        assert f"accuracy {accuracy:.5g} (unigram {unigram:.5g}, markov {markov:.5g})" in text
        ndcg = record.val_metrics["itemId"]["ndcg@10"]  # the default ranking_k within 10 items
        assert f"ndcg@10 {ndcg:.5g} (unigram " in text
        assert f"rmse {record.val_metrics['itemValue']['rmse']:.5g} (training_mean" in text
    # the history in the checkpoint carries the metrics
    saved = load_checkpoint(result.checkpoint_path)["state"]["history"]
    assert [r["val_metrics"] for r in saved] == [r.val_metrics for r in result.history]

    (run,) = glob.glob(os.path.join(root, "logs", "tensorboard", "tiny", "*"))
    events = EventAccumulator(run)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("epoch/validation/accuracy/itemId", "epoch/validation/top5_accuracy/itemId",
                "epoch/validation/cross_entropy/itemId", "epoch/validation/mae/itemValue",
                "epoch/validation/rmse/itemValue", "epoch/baseline/unigram/accuracy/itemId",
                "epoch/validation/hr@10/itemId", "epoch/validation/ndcg@10/itemId",
                "epoch/validation/mrr/itemId", "epoch/baseline/markov/ndcg@10/itemId",
                "epoch/baseline/training_mean/mse/itemValue",
                "epoch/baseline/previous_value/mse/itemValue"):
        assert tag in tags, tag
    accuracy = [e.value for e in events.Scalars("epoch/validation/accuracy/itemId")]
    assert accuracy == pytest.approx([r.val_metrics["itemId"]["accuracy"] for r in result.history])

    # the end-of-run summary: log block and JSON
    assert result.summary_path == os.path.join(root, "logs", "tiny-summary.json")
    with open(result.summary_path) as f:
        summary = json.load(f)
    assert summary["best_epoch"] == result.best_epoch
    assert summary["best_val_loss"] == pytest.approx(result.best_val_loss)
    assert summary["metrics"] == result.best_metrics == result.history[result.best_epoch - 1].val_metrics
    assert summary["baselines"] == result.baselines
    assert summary["models"] == {"best": result.best_model_paths, "last": result.last_model_paths}
    assert summary["models"]["best"] and all(os.path.isfile(p) for p in summary["models"]["best"])
    assert summary["log"] == result.log_path and os.path.isdir(summary["tensorboard"])
    block = text[text.index("summary of tiny:"):]
    assert f"best epoch {result.best_epoch} of 2" in block
    assert "validation itemId: cross_entropy" in block
    assert all(p in block for p in result.best_model_paths + result.last_model_paths)
    assert summary["tensorboard"] in block and result.summary_path in block

    # the summary is an output of the run: not replaced unless asked
    for path in glob.glob(os.path.join(root, "checkpoints", "*")) + glob.glob(os.path.join(root, "models", "*")):
        os.remove(path)
    with pytest.raises(SequifierError, match="tiny-summary.json"):
        run_train(make_config(root, **{"training_spec.continue_training": False}), export=False)


def test_accuracy_top_k_sets_k_and_is_validated(root):
    from sequifier.gate import validate

    result = run_train(make_config(root, **{"training_spec.epochs": 1,
                                            "training_spec.accuracy_top_k": 1}), export=False)
    scores = result.history[0].val_metrics["itemId"]
    assert "top5_accuracy" not in scores and scores["top1_accuracy"] == scores["accuracy"]
    assert result.baselines["itemId"]["unigram"]["top1_accuracy"] == result.baselines["itemId"]["unigram"]["accuracy"]
    cfg = make_config(root, **{"training_spec.accuracy_top_k": 0})
    with pytest.raises(SequifierError, match="training_spec.accuracy_top_k: must be >= 1"):
        validate("train", cfg)
    # only real targets: k has nothing to apply to, and the log says so
    only_real = run_train(make_config(
        root, model_name="real", target_columns=["itemValue"],
        target_column_types={"itemValue": "real"},
        **{"training_spec.epochs": 1, "training_spec.accuracy_top_k": 3,
           "training_spec.criterion": {"itemValue": "MSELoss"}}), export=False)
    assert "training_spec.accuracy_top_k (3) is not used" in log_text(only_real)
    assert set(only_real.history[0].val_metrics) == {"itemValue"}


def test_a_validation_split_without_scored_slots_is_one_line_and_writes_nothing(tmp_path):
    from helpers.train_data import make_windows

    from sequifier.data.windows import Windows, write_windows

    root = make_project(tmp_path)
    windows = make_windows(8, SEQ_LENGTH, 5)
    no_targets = Windows(windows.sequence_id, windows.subsequence_id, windows.padding,
                         windows.item_position, windows.values,
                         np.full(8, SEQ_LENGTH + 1, dtype=np.int64))
    write_windows(no_targets, os.path.join(root, "data", "tiny-split1.parquet"), "parquet")
    with pytest.raises(SequifierError, match="^validation_data_path: the validation split has no scored"):
        run_train(make_config(root), export=False)
    assert not os.path.exists(os.path.join(root, "logs"))
    assert not os.path.exists(os.path.join(root, "checkpoints"))


def test_select_on_a_ranking_metric_picks_the_best_epoch_and_stops_early(root):
    cfg = make_config(root, **{"training_spec.epochs": 4, "training_spec.select_on": "mrr",
                               "training_spec.exclude_seen": True, "training_spec.learning_rate": 0.05,
                               "training_spec.early_stopping_epochs": 1})
    result = run_train(cfg, export=False)
    mrr = [r.val_metrics["itemId"]["mrr"] for r in result.history]
    # the best epoch is the first with the highest MRR (not the lowest loss), and a run stops
    # one epoch after the MRR stopped improving
    assert result.best_epoch == int(np.argmax(mrr)) + 1
    for epoch in range(1, len(mrr)):
        assert mrr[epoch] > max(mrr[:epoch]) or epoch == len(mrr) - 1
    assert "select_on: mrr" in log_text(result) or len(mrr) == 4
    # a sweep minimises the selection score: the best MRR negated, not the loss
    assert result.objective == pytest.approx(-max(mrr))
    # exclude_seen reaches the baselines too: popularity ranks better without the seen items
    plain = run_train(make_config(root, model_name="plain", **{"training_spec.epochs": 1}), export=False)
    assert plain.objective == plain.best_val_loss
    assert result.baselines["itemId"]["unigram"]["mrr"] > plain.baselines["itemId"]["unigram"]["mrr"]
    assert result.baselines["itemId"]["unigram"]["accuracy"] == plain.baselines["itemId"]["unigram"]["accuracy"]


def test_selection_score_and_select_on_rules():
    from sequifier.train.loop import select_on_problems, selection_score

    scores = {"item": {"ndcg@10": 0.3, "cross_entropy": 2.0}, "other": {"ndcg@10": 0.1}}
    assert selection_score("loss", 1.5, scores) == 1.5
    assert selection_score("item.ndcg@10", 1.5, scores) == -0.3  # higher-better: negated
    assert selection_score("item.cross_entropy", 1.5, scores) == 2.0
    available = {"item": ["ndcg@10", "cross_entropy"], "other": ["ndcg@10"], "v": ["mae"]}
    assert select_on_problems("loss", available) == [] == select_on_problems("mae", available)
    assert select_on_problems("ndcg@10", available) == [
        "training_spec.select_on: 'ndcg@10' is computed for several targets (item, other); "
        "name one, e.g. item.ndcg@10"]
    assert select_on_problems("x.mae", available)[0].startswith("training_spec.select_on: 'x' is not a target")


@pytest.mark.parametrize("overrides, message", [
    ({"training_spec.ranking_k": [0]}, "training_spec.ranking_k: needs positive integers (e.g. [10, 20]), got [0]"),
    ({"training_spec.ranking_k": [5, 11]},
     "training_spec.ranking_k: 11 is larger than the 10 items of 'itemId'; use k values up to 10"),
    ({"training_spec.select_on": "ndcg@20"},
     "training_spec.select_on: 'ndcg@20' is not a computed validation metric; use loss or one of accuracy, "
     "cross_entropy, hr@10, mae, mrr, mse, ndcg@10, rmse, top5_accuracy (ranking metrics follow "
     "training_spec.ranking_k)"),
    ({"target_columns": ["itemValue"], "target_column_types": {"itemValue": "real"},
      "training_spec.criterion": {"itemValue": "MSELoss"}, "training_spec.exclude_seen": True},
     "training_spec.exclude_seen: removes seen items from the ranking of a categorical target, and every "
     "target (itemValue) is real; remove training_spec.exclude_seen"),
])
def test_bad_ranking_settings_are_one_line_before_any_file(root, overrides, message):
    from sequifier.gate import validate

    with pytest.raises(SequifierError) as error:
        validate("train", make_config(root, **overrides))
    assert str(error.value) == message
    assert not os.path.exists(os.path.join(root, "logs"))
