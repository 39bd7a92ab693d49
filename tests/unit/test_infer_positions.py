"""Every-position inference (positions: scored) and forecasting after the last item,
with real (tiny, untrained) exports."""

import os

import numpy as np
import pandas as pd
import pytest
from helpers.infer_project import LENGTHS, SEQ_LENGTH, infer_config, items_with_context, make_project, preprocess

from sequifier.errors import SequifierError
from sequifier.infer import run_infer
from sequifier.infer.model_runner import OnnxRunner


def read(path):
    return pd.read_csv(path)


@pytest.fixture(scope="module")
def split_project(tmp_path_factory):
    """Three splits; targets colour and value."""
    root = tmp_path_factory.mktemp("split_project")
    return (root,) + make_project(root)


@pytest.fixture(scope="module")
def forecast_project(tmp_path_factory):
    """One split (all of each sequence); every column a target, for autoregression."""
    root = tmp_path_factory.mktemp("forecast_project")
    return (root,) + make_project(root, targets=("colour", "code", "value"), split_ratios=(1.0,))


@pytest.mark.parametrize("strides", [None, [4, 1, 3]])
def test_scored_positions_predict_every_item_with_context_exactly_once(tmp_path, split_project, strides):
    models = split_project[3]
    frame, metadata = preprocess(tmp_path, stride_by_split=strides)
    for split in (1, 2):
        cfg = infer_config(tmp_path, models["onnx"], positions="scored", overwrite=True,
                           data_path=metadata.split_paths[split])
        table = read(run_infer(cfg)[0])
        keys = list(zip(table["sequenceId"], table["itemPosition"]))
        assert len(keys) == len(set(keys))  # once
        assert set(keys) == items_with_context(frame, split)  # every item that has context


def test_scored_rows_agree_with_last_position_rows_and_pt_with_onnx(tmp_path, split_project):
    models = split_project[3]
    preprocess(tmp_path)
    last = read(run_infer(infer_config(tmp_path, models["onnx"]))[0])
    tables = {}
    for kind, path in models.items():
        tables[kind] = read(run_infer(infer_config(tmp_path, path, positions="scored", overwrite=True))[0])
    # the prediction for a window's last slot is the same from one pass over all slots
    # (but a sequence's first item, predicted from padding alone, is not one scored)
    last = last[last["itemPosition"] != 5]
    joined = last.merge(tables["onnx"], on=["sequenceId", "itemPosition"], suffixes=("", "_all"))
    assert len(joined) == len(last)
    assert (joined["colour"] == joined["colour_all"]).all()
    np.testing.assert_allclose(joined["value"], joined["value_all"], rtol=1e-4, atol=1e-4)
    assert (tables["onnx"]["colour"] == tables["pt"]["colour"]).all()
    np.testing.assert_allclose(tables["onnx"]["value"], tables["pt"]["value"], rtol=1e-4, atol=1e-4)


def test_scored_probabilities_have_one_row_per_prediction(tmp_path, split_project):
    models = split_project[3]
    preprocess(tmp_path)
    paths = run_infer(infer_config(tmp_path, models["onnx"], positions="scored", output_probabilities=True))
    predictions, probabilities = read(paths[0]), read(paths[1])
    assert len(predictions) == len(probabilities)
    classes = probabilities.drop(columns=["sequenceId", "itemPosition"])
    np.testing.assert_allclose(classes.sum(axis=1), 1.0, atol=1e-5)
    assert (classes.idxmax(axis=1) == predictions["colour"]).all()


def test_forecast_predicts_after_the_last_item_from_the_observed_tail(tmp_path, forecast_project, monkeypatch):
    models = forecast_project[3]
    frame, metadata = preprocess(tmp_path, split_ratios=(1.0,))
    seen = []
    original = OnnxRunner.run
    monkeypatch.setattr(OnnxRunner, "run", lambda self, inputs: seen.append(inputs) or original(self, inputs))
    cfg = infer_config(tmp_path, models["onnx"], forecast=True, autoregression=True,
                       autoregression_extra_steps=2, inference_batch_size=100)
    table = read(run_infer(cfg)[0])
    # one forecast per sequence, 3 steps each, at last + 3 * (1, 2, 3) (long_table's step is 3)
    last = frame.groupby("sequenceId")["itemPosition"].max()
    expected = {(s, int(p) + step) for s, p in last.items() for step in (3, 6, 9)}
    expected -= {(4, 5 + 3), (4, 5 + 6), (4, 5 + 9)}  # sequence 4 has one item: step 1
    expected |= {(4, 6), (4, 7), (4, 8)}
    assert set(zip(table["sequenceId"], table["itemPosition"])) == expected
    assert len(table) == 3 * len(LENGTHS)
    # the first pass sees each sequence's last SEQ_LENGTH items (left-padded when shorter)
    first = seen[0]
    for row, sequence in enumerate(sorted(last.index)):
        tail = frame[frame["sequenceId"] == sequence].sort_values("itemPosition").tail(SEQ_LENGTH)
        ids = [metadata.id_maps["colour"][v] for v in tail["colour"]]
        assert first["colour"][row].tolist()[-len(ids):] == ids
        assert first["colour"][row].tolist()[:SEQ_LENGTH - len(ids)] == [0] * (SEQ_LENGTH - len(ids))


def test_forecast_position_step_sets_the_step(tmp_path, forecast_project):
    models = forecast_project[3]
    frame, _ = preprocess(tmp_path, split_ratios=(1.0,))
    cfg = infer_config(tmp_path, models["pt"], forecast=True, forecast_position_step=10)
    table = read(run_infer(cfg)[0])
    last = frame.groupby("sequenceId")["itemPosition"].max()
    assert dict(zip(table["sequenceId"], table["itemPosition"])) == {s: p + 10 for s, p in last.items()}


def test_sampled_forecasts_are_reproducible_and_never_reserved(tmp_path, forecast_project):
    models = forecast_project[3]
    preprocess(tmp_path, split_ratios=(1.0,))
    runs = []
    for seed in (3, 3, 4):
        cfg = infer_config(tmp_path, models["onnx"], forecast=True, autoregression=True,
                           autoregression_extra_steps=20, overwrite=True, seed=seed,
                           sample_from_distribution_columns=["colour", "code"],
                           temperature={"colour": 5.0, "code": 5.0})
        runs.append(read(run_infer(cfg)[0]))
    assert runs[0].equals(runs[1]) and not runs[0].equals(runs[2])
    for table in runs:
        assert set(table["colour"]) <= {"red", "green", "blue", "grey"}
        assert table["code"].dtype == np.int64  # no "<unknown>" turned the column into strings


@pytest.mark.parametrize("overrides, message", [
    (dict(positions="every"), "positions: 'every' is not one of last, scored"),
    (dict(positions="scored", autoregression=True), "positions: 'scored' predicts the items inside"),
    (dict(positions="scored", forecast=True), "positions: 'scored' predicts the items inside"),
    (dict(forecast_position_step=2), "forecast_position_step: is set but forecast is false"),
    (dict(forecast=True, forecast_position_step=0), "forecast_position_step: must be >= 1"),
    (dict(top_k={"colour": 3}), "top_k.colour: 'colour' is not sampled"),
])
def test_option_errors_name_the_field(tmp_path, split_project, overrides, message):
    models = split_project[3]
    preprocess(tmp_path)
    with pytest.raises(SequifierError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_infer(infer_config(tmp_path, models["onnx"], **overrides))
    assert not os.path.exists(tmp_path / "outputs")


def test_forecast_refuses_a_window_without_any_item(tmp_path, forecast_project):
    from sequifier.data.window_files import read_windows
    from sequifier.data.windows import write_windows

    models = forecast_project[3]
    _, metadata = preprocess(tmp_path, split_ratios=(1.0,))
    windows = read_windows(str(tmp_path / metadata.split_paths[0]), "parquet", metadata.column_types)
    windows = windows.select(np.arange(len(windows)))  # writable copies
    windows.padding[0] = SEQ_LENGTH + 1
    windows.target_start[0] = SEQ_LENGTH + 1
    windows.item_position[0] = -1
    for column in windows.values:
        windows.values[column][0] = 0
    write_windows(windows, str(tmp_path / "data" / "hollow.parquet"), "parquet")
    cfg = infer_config(tmp_path, models["onnx"], forecast=True, data_path="data/hollow.parquet")
    with pytest.raises(SequifierError, match="data_path: 1 windows of .* hold no item"):
        run_infer(cfg)
    assert not os.path.exists(tmp_path / "outputs")
