"""`sequifier evaluate`: every test item scored once, metrics and baselines checked
against computations from the raw table, several models, bad input."""

import json
import os
import sys

import numpy as np
import pandas as pd
import pytest
from helpers.infer_project import METADATA, infer_config, items_with_context, make_project, preprocess

from sequifier.config.schema import EvaluateConfig
from sequifier.errors import SequifierError
from sequifier.infer import run_infer
from sequifier.infer.evaluate import run_evaluate


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_project")
    return (root,) + make_project(root)


def evaluate_config(root, model_path, **overrides) -> EvaluateConfig:
    cfg = EvaluateConfig(project_root=str(root), model_path=model_path, metadata_config_path=METADATA,
                         inference_batch_size=3)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def raw_items(frame, split):
    """The raw table's items of `split` with an earlier item, plus that item's values."""
    frame = frame.sort_values(["sequenceId", "itemPosition"])
    frame = frame.assign(previous_value=frame.groupby("sequenceId")["value"].shift(1))
    keys = items_with_context(frame, split)
    return frame[[k in keys for k in zip(frame["sequenceId"], frame["itemPosition"])]]


def test_every_test_item_is_scored_once_and_metrics_match_the_raw_table(tmp_path, project):
    _, frame, metadata, models = project
    preprocess(tmp_path)
    written = run_evaluate(evaluate_config(tmp_path, models["onnx"]))
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["m-split2-metrics.json", "m-split2-metrics.md", "m-split2-predictions.csv"]
    report = json.loads((tmp_path / "outputs/evaluation/m-split2-metrics.json").read_text())
    rows = pd.read_csv(tmp_path / "outputs/evaluation/m-split2-predictions.csv")
    truth = raw_items(frame, 2)
    assert report["count"] == len(rows) == len(truth) == len(set(zip(rows.sequenceId, rows.itemPosition)))
    joined = rows.merge(truth, on=["sequenceId", "itemPosition"], suffixes=("", "_raw"))
    assert len(joined) == len(truth)
    # the truth column is the user's own value
    assert (joined["colour_true"] == joined["colour_raw"]).all()
    np.testing.assert_allclose(joined["value_true"], joined["value_raw"], atol=1e-6)
    colour, value = report["targets"]["colour"], report["targets"]["value"]
    assert colour["model"]["count"] == value["model"]["count"] == len(truth)
    assert colour["model"]["accuracy"] == pytest.approx((joined["colour"] == joined["colour_raw"]).mean())
    errors = joined["value"] - joined["value_raw"]
    assert value["model"]["mae"] == pytest.approx(errors.abs().mean(), abs=1e-4)
    assert value["model"]["rmse"] == pytest.approx(np.sqrt((errors ** 2).mean()), abs=1e-4)
    # cross-entropy and top-5 from the probabilities infer writes for the same rows
    probabilities = pd.read_csv(run_infer(infer_config(tmp_path, models["onnx"], positions="scored",
                                                       output_probabilities=True))[1])
    probabilities = probabilities.merge(truth, on=["sequenceId", "itemPosition"])
    classes = [c for c in probabilities.columns if c in metadata.id_maps["colour"] or c.startswith("<")]
    p = probabilities[classes].to_numpy()
    p_true = p[np.arange(len(p)), [classes.index(c) for c in probabilities["colour"]]]
    assert colour["model"]["cross_entropy"] == pytest.approx(-np.log(p_true).mean(), abs=1e-4)
    rank = (p > p_true[:, None]).sum(axis=1)
    # colour takes 4 values: top-5 accuracy would be 1.0 by construction, so it is left out
    assert "top5_accuracy" not in colour["model"] and "top5_accuracy" not in colour["baselines"]["unigram"]
    assert "| colour | m | " in (tmp_path / "outputs/evaluation/m-split2-metrics.md").read_text()
    assert " n/a " in (tmp_path / "outputs/evaluation/m-split2-metrics.md").read_text()
    top3 = run_evaluate(evaluate_config(tmp_path, models["onnx"], accuracy_top_k=3, overwrite=True))[0]
    assert json.loads(open(top3).read())["targets"]["colour"]["model"]["top3_accuracy"] == pytest.approx(
        (rank < 3).mean())
    # baselines on the same items: previous value, and the training split's majority class
    previous = joined["previous_value"] - joined["value_raw"]
    assert value["baselines"]["previous_value"]["mae"] == pytest.approx(previous.abs().mean(), abs=1e-4)
    assert value["baselines"]["training_mean"]["count"] == len(truth)
    majority = _training_majority(tmp_path, metadata)
    assert colour["baselines"]["unigram"]["accuracy"] == pytest.approx((joined["colour_raw"] == majority).mean())
    markdown = (tmp_path / "outputs/evaluation/m-split2-metrics.md").read_text()
    assert "| colour | m |" in markdown and "| colour | baseline: unigram |" in markdown
    assert "| value | baseline: previous_value |" in markdown


def _training_majority(root, metadata):
    """Most frequent colour among the training windows' scored targets (what training learns)."""
    from sequifier.data.window_files import read_windows

    windows = read_windows(str(root / metadata.split_paths[0]), "parquet", metadata.column_types)
    slots = np.arange(1, windows.window_length)
    ids = windows.values["colour"][:, 1:][slots[None, :] >= windows.target_start[:, None]]
    counts = np.bincount(ids, minlength=metadata.n_classes["colour"])
    return metadata.inverse_id_map("colour")[int(counts.argmax())]


def test_onnx_and_pt_score_alike_in_one_comparison(tmp_path, project):
    _, _, _, models = project
    preprocess(tmp_path)
    os.makedirs(tmp_path / "models")
    for kind, path in models.items():
        os.link(path, tmp_path / "models" / f"m_{kind}.{kind}")
    written = run_evaluate(evaluate_config(tmp_path, ["models/m_onnx.onnx", "models/m_pt.pt"], write_format="parquet"))
    assert sorted(os.path.basename(p) for p in written) == [
        "m_onnx-split2-metrics.json", "m_onnx-split2-metrics.md", "m_onnx-split2-predictions.parquet",
        "m_pt-split2-metrics.json", "m_pt-split2-metrics.md", "m_pt-split2-predictions.parquet",
        "split2-comparison.md"]
    reports = [json.loads((tmp_path / f"outputs/evaluation/m_{k}-split2-metrics.json").read_text())
               for k in ("onnx", "pt")]
    for target in ("colour", "value"):
        for name, value in reports[0]["targets"][target]["model"].items():
            assert reports[1]["targets"][target]["model"][name] == pytest.approx(value, abs=1e-4)
    table = (tmp_path / "outputs/evaluation/split2-comparison.md").read_text()
    assert "| colour | m_onnx |" in table and "| colour | m_pt |" in table
    assert table.count("| colour | baseline: unigram |") == 1
    with pytest.raises(SequifierError, match="already exists; set overwrite=true"):
        run_evaluate(evaluate_config(tmp_path, "models/m_onnx.onnx"))


def test_a_split_without_items_to_score_is_refused(tmp_path, project):
    _, _, _, models = project
    from helpers.preprocess_data import config, write_input

    single = pd.DataFrame({"sequenceId": [0, 1, 2], "itemPosition": [5, 5, 5], "colour": ["red", "blue", "grey"],
                           "code": [7, 30, 9], "value": [1.0, 2.0, 3.0]})
    path = write_input(single, tmp_path / "data" / "single.csv")
    from sequifier.data.preprocess import run_preprocess

    run_preprocess(config(tmp_path, path, split_ratios=[1.0], stride_by_split=None,
                          reuse_metadata_path=str(project[0] / METADATA)))
    cfg = evaluate_config(tmp_path, models["onnx"], metadata_config_path="configs/metadata_configs/single.json",
                          baseline_data_path=str(project[0] / "data/t-split0.parquet"))
    with pytest.raises(SequifierError, match="data_path: .* has no item to score"):
        run_evaluate(cfg)
    assert not os.path.exists(tmp_path / "outputs")


def test_data_without_the_target_column_is_refused(tmp_path, project):
    from sequifier.data.window_files import read_windows
    from sequifier.data.windows import write_windows

    _, _, metadata, models = project
    preprocess(tmp_path)
    windows = read_windows(str(tmp_path / metadata.split_paths[2]), "parquet", metadata.column_types,
                           ["colour", "code"])
    write_windows(windows, str(tmp_path / "data" / "no-value.parquet"), "parquet")
    with pytest.raises(SequifierError, match=r"data_path: data file '.*no-value.parquet' has no column\(s\) \['value'\]"):
        run_evaluate(evaluate_config(tmp_path, models["onnx"], data_path="data/no-value.parquet"))
    assert not os.path.exists(tmp_path / "outputs")


def test_read_format_must_match_the_splits_it_reads(project):
    """The one rule train and infer apply too (validate._check_read_format), in the gate."""
    root, _, _, models = project
    with pytest.raises(SequifierError, match="read_format: 'csv' but the metadata's splits are written as parquet"):
        run_evaluate(evaluate_config(root, models["onnx"], read_format="csv"))


def test_accuracy_top_k_for_a_model_without_categorical_targets_is_refused(tmp_path):
    _, _, models = make_project(tmp_path, targets=("value",))
    with pytest.raises(SequifierError, match="accuracy_top_k: the model 'm' has only real targets"):
        run_evaluate(evaluate_config(tmp_path, models["pt"], accuracy_top_k=3))
    written = run_evaluate(evaluate_config(tmp_path, models["pt"]))
    report = json.loads(open(written[0]).read())
    assert set(report["targets"]["value"]["model"]) == {"count", "mae", "rmse", "mse"}


def test_command_line_evaluate_and_its_one_line_error(tmp_path, project):
    import subprocess

    import yaml

    _, _, _, models = project
    preprocess(tmp_path)
    config = {"project_root": ".", "model_path": models["onnx"], "metadata_config_path": METADATA}
    (tmp_path / "configs" / "evaluate.yaml").write_text(yaml.safe_dump(config))
    script = os.path.join(os.path.dirname(sys.executable), "sequifier-evaluate")

    def run(*args):
        return subprocess.run([script, *args], cwd=tmp_path, capture_output=True, text=True, timeout=180)

    bad = run("accuracy_top_k=0")
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 1 and lines == ["sequifier: error: accuracy_top_k: must be >= 1, got 0"], bad.stderr
    assert not os.path.exists(tmp_path / "outputs" / "evaluation")
    good = run("write_format=parquet")
    assert good.returncode == 0, good.stderr
    assert "| colour | baseline: unigram |" in good.stdout + good.stderr
    assert os.path.exists(tmp_path / "outputs/evaluation/m-split2-predictions.parquet")


def _ranks(p, true_index, classes, seen=None):
    """1-based rank of the true class among the columns (PAD is not a column), ties by id."""
    ids = np.array([classes.index(c) for c in classes])
    p_true = p[np.arange(len(p)), true_index][:, None]
    beats = (p > p_true) | ((p == p_true) & (ids[None, :] < true_index[:, None]))
    if seen is not None:
        beats &= ~seen
    return 1 + beats.sum(axis=1)


def test_ranking_metrics_and_the_markov_baseline_with_and_without_seen_items(tmp_path, project):
    _, frame, metadata, models = project
    preprocess(tmp_path)
    report = {}
    for exclude in (False, True):
        run_evaluate(evaluate_config(tmp_path, models["onnx"], ranking_k=[1, 3], exclude_seen=exclude,
                                     overwrite=True))
        report[exclude] = json.loads((tmp_path / "outputs/evaluation/m-split2-metrics.json").read_text())
    colour = report[False]["targets"]["colour"]
    assert colour["ranking_k"] == [1, 3] and "hr@1" not in report[False]["targets"]["value"]["model"]
    # HR@1 is the accuracy; HR@3, NDCG@3 and MRR from the probabilities infer writes for the same rows
    assert colour["model"]["hr@1"] == pytest.approx(colour["model"]["accuracy"])
    probabilities = pd.read_csv(run_infer(infer_config(tmp_path, models["onnx"], positions="scored",
                                                       output_probabilities=True, overwrite=True))[1])
    truth = raw_items(frame, 2)
    probabilities = probabilities.merge(truth, on=["sequenceId", "itemPosition"])
    # columns in id order: <unknown> (id 1) and the colours (ids 2..)
    classes = sorted([c for c in probabilities.columns if c in metadata.id_maps["colour"] or c == "<unknown>"],
                     key=lambda c: 1 if c == "<unknown>" else metadata.id_maps["colour"][c])
    p = probabilities[classes].to_numpy()
    true_index = np.array([classes.index(c) for c in probabilities["colour"]])
    ranks = _ranks(p, true_index, classes)
    assert colour["model"]["hr@3"] == pytest.approx((ranks <= 3).mean(), abs=1e-6)
    assert colour["model"]["ndcg@3"] == pytest.approx(np.where(ranks <= 3, 1 / np.log2(ranks + 1), 0).mean(), abs=1e-6)
    assert colour["model"]["mrr"] == pytest.approx((1 / ranks).mean(), abs=1e-6)
    # both baselines carry the same metrics; Markov is not the unigram
    assert set(colour["baselines"]) == {"unigram", "markov"}
    assert set(colour["baselines"]["markov"]) == set(colour["model"])
    # seen items out of the ranking: never worse, and better for some item here
    seen_colour = report[True]["targets"]["colour"]
    for who in ("model", "unigram", "markov"):
        plain = colour["model"] if who == "model" else colour["baselines"][who]
        masked = seen_colour["model"] if who == "model" else seen_colour["baselines"][who]
        assert masked["mrr"] >= plain["mrr"] and masked["accuracy"] == plain["accuracy"]
    assert seen_colour["model"]["mrr"] > colour["model"]["mrr"] and report[True]["exclude_seen"]
    markdown = (tmp_path / "outputs/evaluation/m-split2-metrics.md").read_text()
    assert "| ndcg@3 |" in markdown and "| colour | baseline: markov |" in markdown
    assert "Seen items are removed" in markdown


@pytest.mark.parametrize("overrides, message", [
    ({"ranking_k": [0]}, "ranking_k: needs positive integers (e.g. [10, 20]), got [0]"),
    ({"ranking_k": [5]}, "ranking_k: 5 is larger than the 4 items of 'colour'; use k values up to 4"),
])
def test_bad_ranking_settings_are_one_line_and_write_nothing(tmp_path, project, overrides, message):
    _, _, _, models = project
    preprocess(tmp_path)
    with pytest.raises(SequifierError) as error:
        run_evaluate(evaluate_config(tmp_path, models["onnx"], **overrides))
    assert str(error.value) == message
    assert not os.path.exists(tmp_path / "outputs" / "evaluation")


def test_ranking_settings_for_a_model_with_only_real_targets_are_refused(tmp_path):
    _, _, models = make_project(tmp_path, targets=("value",))
    with pytest.raises(SequifierError) as error:
        run_evaluate(evaluate_config(tmp_path, models["pt"], ranking_k=[2], exclude_seen=True))
    assert str(error.value).splitlines() == [
        "ranking_k: ranking metrics are for categorical targets, and every target (value) is real; remove ranking_k",
        "exclude_seen: removes seen items from the ranking of a categorical target, and every target (value) "
        "is real; remove exclude_seen"]
