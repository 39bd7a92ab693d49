"""Known-ahead columns, time features, future rows and the multi-step forecast engine,
on a tiny half-hourly table with text ids (untrained exports: consistency, not skill)."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.preprocess_data import config, load_splits, long_table, write_input

from sequifier.config.metadata import read_metadata
from sequifier.config.schema import InferConfig, ModelSpec, TrainConfig, TrainingSpec
from sequifier.data.known_ahead import window_inputs
from sequifier.data.preprocess import run_preprocess
from sequifier.data.read_table import positions_to_user
from sequifier.data.time_features import derive
from sequifier.errors import SequifierError
from sequifier.export import export_onnx, export_pt
from sequifier.gate import validate
from sequifier.infer import forecasting, run_infer
from sequifier.infer.model_runner import load_runner
from sequifier.infer.reading import model_inputs
from sequifier.model.transformer import build_model
from sequifier.train.batch import make_batch

L = 8
FUTURE = 6
METADATA = "configs/metadata_configs/d.json"
COLUMNS = ["demand", "temperature", "half_hour", "day_of_week"]


def half_hourly(days=3, future=FUTURE, seed=0) -> pd.DataFrame:
    """Two regions (text ids, one with unicode), half-hourly, a gap in temperature, an
    interior row without demand, and `future` trailing rows with only temperature."""
    rng = np.random.default_rng(seed)
    parts = []
    for region in ("nord", "süd"):
        t = pd.date_range("2024-05-01", periods=days * 48 + future, freq="30min")
        demand = 20 + 3 * np.sin(np.arange(len(t)) / 7.6) + rng.normal(0, 0.2, len(t))
        frame = pd.DataFrame({"ts": t, "region": region, "demand": demand.round(3),
                              "temperature": (10 + rng.normal(0, 2, len(t))).round(2)})
        frame.loc[len(t) - future:, "demand"] = np.nan
        frame.loc[5, "temperature"] = np.nan
        frame.loc[9, "demand"] = np.nan  # a missing reading, not a future row
        parts.append(frame)
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def preprocess(root, frame=None, **overrides):
    frame = half_hourly() if frame is None else frame
    path = write_input(frame, os.path.join(str(root), "data", "d.csv"))
    settings = dict(seq_length=L, split_ratios=[0.8, 0.2], stride_by_split=[3, 4],
                    sequence_id_column="region", position_column="ts", overwrite=True,
                    known_ahead_columns=["temperature"], time_features=["half_hour", "day_of_week"],
                    missing_values={"temperature": "fill", "demand": "drop_rows"})
    settings.update(overrides)
    run_preprocess(config(root, path, **settings))
    return frame, read_metadata(os.path.join(str(root), METADATA))


def train_config(root, inputs=COLUMNS, targets=("demand",)) -> TrainConfig:
    return TrainConfig(
        project_root=str(root), metadata_config_path=METADATA, model_name="m",
        target_columns=list(targets), input_columns=list(inputs), export_generative_model=True,
        export_embedding_model=False, inference_batch_size=2,
        model_spec=ModelSpec(dim_model=16, n_head=2, num_layers=1, dim_feedforward=16),
        training_spec=TrainingSpec(device="cpu", epochs=1, batch_size=4, learning_rate=1e-3,
                                   criterion={t: "MSELoss" for t in targets}, save_interval_epochs=1),
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("forecast")
    frame, metadata = preprocess(root)
    torch.manual_seed(0)
    model = build_model(train_config(root), metadata)
    os.makedirs(os.path.join(str(root), "models"), exist_ok=True)
    paths = {"onnx": os.path.join(str(root), "models", "m.onnx"),
             "pt": os.path.join(str(root), "models", "m.pt")}
    export_onnx(model, paths["onnx"], "generative", 2, with_dropout=False)
    export_pt(model, paths["pt"], "generative", with_dropout=False)
    return root, frame, metadata, model, paths


def infer_cfg(root, model_path, **overrides) -> InferConfig:
    cfg = InferConfig(project_root=str(root), model_path=model_path, metadata_config_path=METADATA,
                      model_type="generative", inference_batch_size=1, forecast=True,
                      forecast_horizon=FUTURE, overwrite=True)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


# ---------------------------------------------------------------- preprocess

def test_metadata_records_known_ahead_columns_time_features_and_future_rows(project):
    root, frame, metadata, _, _ = project
    assert metadata.known_ahead_columns == ["temperature", "half_hour", "day_of_week"]
    assert metadata.time_features == ["half_hour", "day_of_week"]
    assert metadata.column_types["half_hour"] == "categorical"
    future = pd.read_parquet(os.path.join(str(root), metadata.future_path))
    assert list(future.columns) == ["region", "ts", "temperature"]
    expected = frame[frame["demand"].isna()].sort_values(["region", "ts"])
    expected = expected.groupby("region").tail(FUTURE)  # the interior row without demand is not one
    assert len(future) == 2 * FUTURE
    assert sorted(zip(future["region"], pd.to_datetime(future["ts"]))) == \
        sorted(zip(expected["region"], pd.to_datetime(expected["ts"])))
    # the windows hold the observed items only: no future position, the interior row dropped
    windows = load_splits(root, metadata)
    last = max(int(w.item_position.max()) for w in windows)
    assert pd.Timestamp(last, unit="s") == pd.Timestamp(frame["ts"].max()) - pd.Timedelta(minutes=30 * FUTURE)


def test_time_features_follow_the_calendar():
    times = pd.to_datetime(["2024-05-04 13:30", "2024-05-06 00:00", "2024-12-31 23:45"])
    ticks = (times - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
    got = derive(["half_hour", "hour", "day_of_week", "is_weekend", "month", "quarter_hour"],
                 positions_to_user(np.asarray(ticks, dtype=np.int64), "timestamp[s]"))
    assert got["half_hour"].tolist() == [27, 0, 47]
    assert got["hour"].tolist() == [13, 0, 23]
    assert got["day_of_week"].tolist() == [5, 0, 1]  # Saturday, Monday, Tuesday
    assert got["is_weekend"].tolist() == [1, 0, 0]
    assert got["month"].tolist() == [5, 5, 12]
    assert got["quarter_hour"].tolist() == [54, 0, 95]


def test_time_feature_ids_in_the_windows_match_their_positions(project):
    root, _, metadata, _, _ = project
    windows = load_splits(root, metadata)[0]
    real = windows.item_position >= 0
    inverse = metadata.inverse_id_map("half_hour")
    got = np.array([inverse[int(i)] for i in windows.values["half_hour"][real]])
    expected = derive(["half_hour"], positions_to_user(windows.item_position[real],
                                                       metadata.position_type))["half_hour"]
    assert (got == expected).all()


@pytest.mark.parametrize("overrides, message", [
    (dict(time_features=["hour"], known_ahead_columns=[]), "time_features: position_column 'itemPosition'"),
    (dict(known_ahead_columns=["itemPosition"]), "known_ahead_columns: 'itemPosition' is the id or position"),
    (dict(known_ahead_columns=["nope"]), "known_ahead_columns: 'nope' is not a column of input file"),
    (dict(time_features=["fortnight"]), "time_features: 'fortnight' is not one of"),
    (dict(time_features=["month"]), "time_features: 'month' is also the name of a column"),
])
def test_bad_known_ahead_and_time_feature_settings_are_one_line_and_write_nothing(tmp_path, overrides, message):
    frame = long_table().rename(columns={"code": "month"})
    path = write_input(frame, os.path.join(str(tmp_path), "data", "t.csv"))
    with pytest.raises(SequifierError) as e:
        run_preprocess(config(tmp_path, path, **overrides))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(os.path.join(str(tmp_path), "configs"))
    assert sorted(os.listdir(os.path.join(str(tmp_path), "data"))) == ["t.csv"]


def test_a_table_of_only_future_rows_says_so_in_one_line(tmp_path):
    t = pd.date_range("2024-05-01", periods=5, freq="30min")  # every row: temperature only
    frame = pd.DataFrame({"ts": t, "region": "nord", "demand": np.nan, "temperature": np.arange(5.0)})
    path = write_input(frame, os.path.join(str(tmp_path), "data", "d.csv"))
    with pytest.raises(SequifierError) as e:
        run_preprocess(config(tmp_path, path, seq_length=L, split_ratios=[1.0], stride_by_split=[1],
                              sequence_id_column="region", position_column="ts",
                              known_ahead_columns=["temperature"]))
    assert "every row is a future row" in str(e.value) and "future_data_path" in str(e.value)
    assert "\n" not in str(e.value) and not os.path.exists(os.path.join(str(tmp_path), "configs"))


def test_a_known_ahead_target_is_one_error_line(project):
    root = project[0]
    cfg = train_config(root, targets=("demand", "temperature"))
    cfg.training_spec.criterion = {"demand": "MSELoss", "temperature": "MSELoss"}
    with pytest.raises(SequifierError) as e:
        validate("train", cfg)
    assert str(e.value).startswith("target_columns: 'temperature' is a known-ahead column")
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- train / infer / export agree

def test_training_and_inference_see_known_ahead_columns_one_slot_later(project):
    root, _, metadata, model, paths = project
    windows = load_splits(root, metadata)[1]
    info = load_runner(paths["onnx"], "cpu", "", "generative", metadata, False, 0).info
    assert info.known_ahead_columns == ["temperature", "half_hour", "day_of_week"]
    rows = {c: torch.from_numpy(np.ascontiguousarray(windows.values[c])) for c in COLUMNS}
    batch = make_batch(rows, torch.from_numpy(windows.target_start), COLUMNS, ["demand"],
                       torch.device("cpu"), model.layout.known_ahead_columns)
    inputs = model_inputs(metadata, info, windows)
    for column in COLUMNS:
        shift = 1 if column in info.known_ahead_columns else 0
        assert np.array_equal(inputs[column], windows.values[column][:, shift:shift + L])
        assert np.allclose(batch.inputs[column].numpy(), inputs[column])


def test_the_prediction_for_a_position_sees_its_known_ahead_value_and_not_its_target(project):
    root, _, metadata, model, paths = project
    runner = load_runner(paths["onnx"], "cpu", "", "generative", metadata, False, 0)
    windows = load_splits(root, metadata)[1]
    base = model_inputs(metadata, runner.info, windows)
    out = runner.run(base)["demand"]
    warmer = dict(base, temperature=base["temperature"].copy())
    warmer["temperature"][:, -1] += 3.0  # the temperature at the predicted slot L
    assert not np.allclose(runner.run(warmer)["demand"], out)
    # the window's slot L demand (the truth being predicted) is not an input
    changed = windows.values["demand"].copy()
    changed[:, -1] += 5.0
    windows.values["demand"] = changed
    assert np.allclose(runner.run(model_inputs(metadata, runner.info, windows))["demand"], out)


def test_forecast_writes_the_horizon_per_sequence_with_ids_and_times_and_pt_matches_onnx(project):
    root, frame, metadata, _, paths = project
    tables = {k: pd.read_csv(run_infer(infer_cfg(root, p))[0]) for k, p in paths.items()}
    onnx = tables["onnx"]
    assert len(onnx) == 2 * FUTURE
    future = frame[frame["demand"].isna()].sort_values("ts").groupby("region").tail(FUTURE)
    assert sorted(zip(onnx["region"], pd.to_datetime(onnx["ts"]))) == \
        sorted(zip(future["region"], pd.to_datetime(future["ts"])))
    assert np.allclose(onnx["demand"], tables["pt"]["demand"], atol=1e-4)


def test_the_engine_rolls_the_model_as_training_aligned_it(project):
    """forecast() against a hand-written loop over the torch model: step s predicts from
    the ordinary inputs up to the position before it and the known-ahead ones up to it."""
    root, _, metadata, model, paths = project
    windows = load_splits(root, metadata)[1]
    info = forecasting.ForecastModel.of(model.layout)
    history = {c: windows.values[c][:, 1:] for c in COLUMNS}  # the last L items
    rng = np.random.default_rng(1)
    future = {"temperature": rng.normal(0, 1, (len(windows), 3)).astype(np.float32),
              **{c: rng.integers(2, metadata.n_classes[c], (len(windows), 3))
                 for c in ("half_hour", "day_of_week")}}
    typed = {c: (v.astype(np.float32) if metadata.column_types[c] == "real" else v.astype(np.int64))
             for c, v in history.items()}

    def run(inputs):
        with torch.no_grad():
            out = model({c: torch.from_numpy(v) for c, v in inputs.items()})
        return {"demand": out["demand"][:, -1].numpy()}

    got = forecasting.forecast(run, info, typed, future, 3, batch_size=2)["demand"]
    demand = typed["demand"].copy()
    for step in range(3):
        inputs = {"demand": demand[:, -L:]}
        for c in info.known_ahead_columns:
            inputs[c] = np.concatenate([typed[c], future[c][:, :step + 1].astype(typed[c].dtype)], axis=1)[:, -L:]
        expected = run(inputs)["demand"]
        assert np.allclose(got[:, step], expected, atol=1e-6)
        demand = np.concatenate([demand, expected[:, None]], axis=1)


def test_the_engine_refuses_inputs_nobody_gives_the_future_of():
    model = forecasting.ForecastModel(["a", "b"], ["a"], {"a": "real"}, 4)
    history = {c: np.zeros((2, 4), np.float32) for c in ("a", "b")}
    one = forecasting.forecast(lambda x: {"a": x["a"][:, -1] + 1}, model, history, {}, 1)
    assert one["a"].shape == (2, 1)
    with pytest.raises(SequifierError, match=r"\['b'\] are neither targets nor known-ahead"):
        forecasting.forecast(lambda x: {"a": x["a"][:, -1]}, model, history, {}, 2)


# ---------------------------------------------------------------- future rows

def test_future_data_path_replaces_the_table_rows_and_changes_the_forecast(project, tmp_path):
    root, frame, metadata, _, paths = project
    before = pd.read_csv(run_infer(infer_cfg(root, paths["onnx"]))[0])
    future = frame[frame["demand"].isna()].sort_values("ts").groupby("region").tail(FUTURE)[["region", "ts", "temperature"]]
    future = future.assign(temperature=future["temperature"] + 15.0)
    write_input(future, os.path.join(str(root), "data", "weather.csv"))
    after = pd.read_csv(run_infer(infer_cfg(root, paths["onnx"], future_data_path="data/weather.csv"))[0])
    assert len(after) == len(before)
    assert not np.allclose(after["demand"], before["demand"])


def test_a_forecast_position_without_its_known_values_is_one_line_naming_it(project):
    root, _, _, _, paths = project
    out = os.path.join(str(root), "outputs")
    existing = sorted(os.listdir(os.path.join(out, "predictions"))) if os.path.isdir(out) else []
    with pytest.raises(SequifierError) as e:
        run_infer(infer_cfg(root, paths["onnx"], forecast_horizon=FUTURE + 1))
    message = str(e.value)
    assert message.startswith("forecast: no future row with the known-ahead values of ['temperature'] for region")
    assert "2 of 14 forecast positions lack them" in message and "\n" not in message
    assert "future_data_path" in message
    now = sorted(os.listdir(os.path.join(out, "predictions"))) if os.path.isdir(out) else []
    assert now == existing


@pytest.mark.parametrize("overrides, message", [
    (dict(forecast_horizon=0), "forecast_horizon: must be at least 1"),
    (dict(forecast_horizon=L + 1), f"forecast_horizon: must be 1..{L} (the model's seq_length), got {L + 1}"),
    (dict(forecast=False), "forecast_horizon: is set but forecast is false"),
    (dict(forecast_horizon=None, future_data_path="x.csv", forecast=False),
     "future_data_path: is set but forecast is false"),
    (dict(autoregression=True, autoregression_extra_steps=2), "forecast_horizon: 6 disagrees"),
])
def test_bad_horizons_are_one_line(project, overrides, message):
    root, _, _, _, paths = project
    with pytest.raises(SequifierError) as e:
        run_infer(infer_cfg(root, paths["onnx"], **overrides))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_windows_inputs_helper_takes_known_ahead_slots_one_later():
    values = {"a": np.arange(10).reshape(2, 5), "k": np.arange(10, 20).reshape(2, 5)}
    got = window_inputs(values, ["a", "k"], ["k"], 4)
    assert got["a"].tolist() == [[0, 1, 2, 3], [5, 6, 7, 8]]
    assert got["k"].tolist() == [[11, 12, 13, 14], [16, 17, 18, 19]]


def test_evaluate_scores_a_known_ahead_model_with_the_inputs_infer_gives_it(project, tmp_path):
    from sequifier.config.schema import EvaluateConfig
    from sequifier.infer.evaluate import run_evaluate

    root, _, _, _, paths = project
    written = run_evaluate(EvaluateConfig(project_root=str(root), model_path=paths["onnx"],
                                          metadata_config_path=METADATA, overwrite=True,
                                          inference_batch_size=2))
    scored = [p for p in written if p.endswith("predictions.csv")][0]
    evaluated = pd.read_csv(scored)
    inferred = pd.read_csv(run_infer(infer_cfg(root, paths["onnx"], forecast=False, forecast_horizon=None,
                                               positions="scored"))[0])
    joined = evaluated.merge(inferred, on=["region", "ts"], suffixes=("", "_infer"))
    assert len(joined) == len(evaluated) == len(inferred) > 0
    assert np.allclose(joined["demand"], joined["demand_infer"], atol=1e-5)


def test_future_data_path_for_a_model_that_needs_no_future_rows_is_logged(project, tmp_path, caplog):
    root, _, metadata, _, _ = project
    torch.manual_seed(0)
    model = build_model(train_config(root, inputs=["demand", "half_hour"]), metadata)
    path = os.path.join(str(tmp_path), "calendar.onnx")
    export_onnx(model, path, "generative", 2, with_dropout=False)
    table = pd.read_csv(run_infer(infer_cfg(root, path, future_data_path="no/such.csv"))[0])
    assert len(table) == 2 * FUTURE  # the calendar of the forecast positions needs no rows
    assert "future_data_path: no model has known-ahead inputs that future rows give" in caplog.text


def test_new_data_for_a_trained_model_keeps_its_known_ahead_columns_and_future_rows(project, tmp_path):
    root, _, metadata, _, paths = project
    newer = half_hourly(seed=3)
    path = write_input(newer, os.path.join(str(root), "data", "newer.csv"))
    run_preprocess(config(root, path, seq_length=L, split_ratios=[1.0], stride_by_split=[L],
                          sequence_id_column="region", position_column="ts", dataset_name="newer",
                          missing_values={"temperature": "fill", "demand": "drop_rows"},
                          reuse_metadata_path=METADATA, overwrite=True))
    reused = read_metadata(os.path.join(str(root), "configs", "metadata_configs", "newer.json"))
    assert reused.known_ahead_columns == metadata.known_ahead_columns
    assert reused.future_path == "data/newer-future.parquet"
    table = pd.read_csv(run_infer(infer_cfg(root, paths["onnx"], metadata_config_path=
                                            "configs/metadata_configs/newer.json"))[0])
    assert len(table) == 2 * FUTURE
