"""Rolling-origin backtest in `evaluate` (sequifier/infer/backtest.py) and the forecasting
baselines (sequifier/infer/baselines.py): the series rebuilt from windows, origins,
forecasts checked against a step-by-step loop over the same model, baselines against the
raw table, intervals, seasonal period, bad input."""

import json
import os
import sys

import numpy as np
import pytest
from helpers.infer_project import METADATA, SEQ_LENGTH, make_project

from sequifier.config.metadata import read_metadata
from sequifier.config.schema import EvaluateConfig
from sequifier.data.windows import Windows
from sequifier.errors import SequifierError
from sequifier.infer import backtest
from sequifier.infer.baselines import Series, detect_seasonal_period, seasonal_index, series_from_windows
from sequifier.infer.evaluate import run_evaluate
from sequifier.infer.reading import read_model_windows as read_input


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("backtest_project")
    # every input is a target, so every input can be forecast
    return (root,) + make_project(root, columns=("colour", "value"), targets=("colour", "value"))


def evaluate_config(root, model_path, **overrides) -> EvaluateConfig:
    cfg = EvaluateConfig(project_root=str(root), model_path=model_path, metadata_config_path=METADATA,
                         inference_batch_size=3, overwrite=True)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def test_series_from_overlapping_windows_holds_each_item_once():
    # two windows of sequence 5 overlapping on positions 11, 12; the first left-padded
    positions = np.array([[-1, 10, 11, 12], [11, 12, 13, 14]])
    values = np.array([[0.0, 1.0, 2.0, 3.0], [2.0, 3.0, 4.0, 5.0]])
    windows = Windows(np.array([5, 5]), np.array([0, 1]), np.array([1, 0]), positions, {"v": values},
                      np.array([1, 2]))
    series = series_from_windows(windows, ["v"])
    assert series.position.tolist() == [10, 11, 12, 13, 14]
    assert series.values["v"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert series.start.tolist() == [0] * 5
    assert series.in_split.tolist() == [True, True, True, True, True]


def _series(lengths, split_from):
    """Sequences of `lengths` items, values = 100 * sequence + position, split items from
    position `split_from` on."""
    sequence = np.repeat(np.arange(len(lengths)), lengths)
    position = np.concatenate([np.arange(n) for n in lengths])
    start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    values = (100 * sequence + position).astype(np.float64)
    return Series(sequence, position, {"v": values}, position >= split_from, start)


def test_origins_every_stride_with_history_and_a_whole_horizon():
    series = _series([10, 4, 7], split_from=3)
    found = backtest.origins(series, horizon=2, stride=2, min_history=3)
    # sequence 0 (items 0-9): origins at positions 3, 5, 7 (9 has no second step);
    # sequence 1 (4 items): position 3 has only one step; sequence 2: positions 3, 5
    assert series.position[found].tolist() == [3, 5, 7, 3, 5]
    assert series.sequence[found].tolist() == [0, 0, 0, 2, 2]
    # a season of 3 for step h repeats the last observed season
    index = found[:, None] + np.arange(4)[None, :]
    index = np.minimum(index, len(series) - 1)
    source = seasonal_index(index[:1], np.arange(4)[None, :], 3, series)
    # origin 3: steps 0-2 one season back (positions 0-2), step 3 two seasons back (position 0)
    assert (series.position[source] == [0, 1, 2, 0]).all()


def _reference_forecast(runner, series, origin, horizon, columns, types):
    """Step by step for one origin: the last SEQ_LENGTH items (left-padded), append the
    model's arg-max / value, repeat."""
    window = {}
    for c in columns:
        before = series.values[c][max(series.start[origin], origin - SEQ_LENGTH):origin]
        pad = np.zeros(SEQ_LENGTH - len(before), dtype=before.dtype)
        window[c] = np.concatenate([pad, before])
    out = {c: [] for c in columns}
    for _ in range(horizon):
        batch = {c: (v[None, -SEQ_LENGTH:].astype(np.int64) if types[c] == "categorical"
                     else v[None, -SEQ_LENGTH:].astype(np.float32)) for c, v in window.items()}
        raw = runner.run(batch)
        for c in columns:
            last = np.asarray(raw[c])[0, -1]
            value = last.argmax() if types[c] == "categorical" else float(last)
            out[c].append(value)
            window[c] = np.append(window[c], value)
    return out


def test_backtest_forecasts_match_a_step_by_step_loop_and_baselines_the_raw_series(tmp_path, project):
    root, frame, metadata, models = project
    cfg = evaluate_config(root, models["onnx"], forecast_horizon=2, backtest_stride=1, seasonal_period=2)
    written = run_evaluate(cfg)
    report = json.loads(open(written[0]).read())
    bt = report["backtest"]
    assert bt["horizon"] == 2 and bt["seasonal_period"] == 2
    # the same origins again, with the model run one origin at a time
    test = read_input("parquet", metadata, str(root / metadata.split_paths[2]), ["colour", "value"],
                      SEQ_LENGTH, METADATA)
    validation = read_input("parquet", metadata, str(root / metadata.split_paths[1]), ["colour", "value"],
                            SEQ_LENGTH, METADATA)
    series = series_from_windows(test, ["colour", "value"], validation)
    found = backtest.origins(series, 2, 1, backtest.min_history(2, 2))
    assert bt["origins"] == len(found) > 3 and bt["forecast_steps"] == 2 * len(found)
    from sequifier.infer.model_runner import load_runner
    runner = load_runner(models["onnx"], "cpu", "", "generative", metadata, False, 0, every_position=True)
    types = metadata.column_types
    reference = [_reference_forecast(runner, series, o, 2, ["colour", "value"], types) for o in found]
    truth = series.values["value"][found[:, None] + np.arange(2)]
    predicted = np.array([r["value"] for r in reference])
    std = metadata.selected_columns_statistics["value"]["std"]
    value = bt["targets"]["value"]
    assert value["model"]["mae"] == pytest.approx(np.abs(predicted - truth).mean() * std, rel=1e-4)
    np.testing.assert_allclose(value["per_step"]["model"]["mae"], np.abs(predicted - truth).mean(axis=0) * std,
                               rtol=1e-4)
    colour_truth = series.values["colour"][found[:, None] + np.arange(2)]
    colour_predicted = np.array([r["colour"] for r in reference])
    assert bt["targets"]["colour"]["model"]["accuracy"] == pytest.approx((colour_predicted == colour_truth).mean())
    # baselines on the same origins: the last value before the origin, the value one season back
    persistence = series.values["value"][found - 1][:, None]
    assert value["baselines"]["persistence"]["mae"] == pytest.approx(np.abs(persistence - truth).mean() * std,
                                                                     rel=1e-4)
    seasonal = series.values["value"][found[:, None] + np.arange(2) - 2]
    assert value["baselines"]["seasonal_naive"]["mae"] == pytest.approx(np.abs(seasonal - truth).mean() * std,
                                                                        rel=1e-4)
    best = min(value["baselines"], key=lambda b: value["baselines"][b]["mae"])
    assert value["best_baseline"] == best
    assert value["skill"] == pytest.approx(1 - value["model"]["mae"] / value["baselines"][best]["mae"])
    # intervals calibrated on split1 (the split before the test split)
    intervals = value["intervals"]
    assert intervals["quantiles"] == [0.1, 0.5, 0.9] and 0 <= intervals["coverage"] <= 1
    assert bt["calibration_data_path"].endswith(metadata.split_paths[1])
    markdown = open(written[1]).read()
    assert "## Backtest of m: 2 steps ahead" in markdown and "| value | model |" in markdown
    assert "baseline: seasonal_naive" in markdown and "interval covers" in markdown
    # the one-step table has the seasonal baseline too
    assert "seasonal_naive" in report["targets"]["value"]["baselines"]


def test_one_step_seasonal_baseline_is_the_value_one_season_earlier(tmp_path, project):
    root, frame, metadata, models = project
    report = json.loads(open(run_evaluate(evaluate_config(root, models["pt"], seasonal_period=3))[0]).read())
    # the history of the test split is the split before it (with its windows' context)
    rows = frame.sort_values(["sequenceId", "itemPosition"]).copy()
    rows["season_ago"] = rows.groupby("sequenceId")["value"].shift(3)
    predictions = json.loads(json.dumps(report))  # the items scored are those of split2
    import pandas as pd
    scored = pd.read_csv(root / "outputs/evaluation/m-split2-predictions.csv")
    joined = scored.merge(rows, on=["sequenceId", "itemPosition"]).dropna(subset=["season_ago"])
    seasonal = predictions["targets"]["value"]["baselines"]["seasonal_naive"]
    assert seasonal["count"] == len(joined) < report["count"]  # the first season has no value
    assert seasonal["mae"] == pytest.approx((joined["season_ago"] - joined["value_true"]).abs().mean(), rel=1e-4)
    assert report["seasonal_period"] == 3


def _forecasts(rng, n, horizon):
    truth = rng.normal(size=(n, horizon))
    index = np.arange(n * horizon).reshape(n, horizon)
    series = Series(np.zeros(n * horizon, dtype=np.int64), np.arange(n * horizon), {"v": truth.reshape(-1)},
                    np.ones(n * horizon, dtype=bool), np.zeros(n * horizon, dtype=np.int64))
    predicted = truth + rng.normal(scale=1 + np.arange(horizon), size=(n, horizon))  # errors grow
    return backtest.Forecasts(np.arange(n), index, {"v": predicted}, {}, 1.0), series


def test_intervals_from_calibration_errors_cover_as_asked_on_new_origins():
    rng = np.random.default_rng(0)
    calibration, cal_series = _forecasts(rng, 4000, 6)
    evaluated, series = _forecasts(rng, 4000, 6)
    offsets = backtest.residual_quantiles(calibration, cal_series, "v", [0.1, 0.5, 0.9])
    assert offsets.shape == (3, 6) and (np.diff(offsets[2] - offsets[0]) > 0).all()  # wider with the step
    scored = backtest.score_intervals(evaluated, series, "v", [0.1, 0.5, 0.9], offsets, std=2.0)
    assert scored["coverage"] == pytest.approx(0.8, abs=0.02)
    assert scored["nominal_coverage"] == pytest.approx(0.8)
    error = (series.values["v"][evaluated.index] - evaluated.values["v"] - offsets[1]) * 2.0
    assert scored["pinball"]["0.5"] == pytest.approx(0.5 * np.abs(error).mean())


def test_seasonal_period_from_time_positions():
    def series(step):
        return Series(np.zeros(5, dtype=np.int64), np.arange(5) * step, {}, np.ones(5, dtype=bool),
                      np.zeros(5, dtype=np.int64))

    metadata = read_metadata.__globals__["Metadata"](
        name="t", seq_length=4, write_format="parquet", column_types={}, id_maps={}, n_classes={},
        selected_columns_statistics={}, original_dtypes={}, split_paths=[])
    metadata.position_type = "timestamp[s]"
    assert detect_seasonal_period(metadata, series(1800))[0] == 48
    metadata.position_type = "timestamp[ns, tz=UTC]"
    assert detect_seasonal_period(metadata, series(3_600_000_000_000))[0] == 24
    metadata.position_type = "date32[day]"
    assert detect_seasonal_period(metadata, series(1))[0] == 7
    metadata.position_type = "timestamp[s]"
    assert detect_seasonal_period(metadata, series(7 * 3600))[0] is None  # a day is no whole number of steps
    metadata.position_type = "integer"
    assert detect_seasonal_period(metadata, series(1))[0] is None


@pytest.mark.parametrize("overrides, line", [
    ({"forecast_horizon": 0}, "forecast_horizon: must be >= 1"),
    ({"forecast_horizon": 500}, "forecast_horizon: must be 1..4 (the model's seq_length), got 500"),
    ({"seasonal_period": 400}, "seasonal_period: 400 items is longer than the history available"),
    ({"forecast_horizon": 2, "output_quantiles": [0.1, 1.0]}, "output_quantiles: [1.0] outside (0, 1)"),
    ({"backtest_stride": 2}, "backtest_stride: is set but forecast_horizon is not"),
])
def test_bad_backtest_options_are_one_line_and_write_nothing(tmp_path, project, overrides, line):
    root, _, _, models = project
    out = root / "outputs" / "evaluation"
    before = sorted(os.listdir(out)) if out.exists() else []
    with pytest.raises(SequifierError) as error:
        run_evaluate(evaluate_config(root, models["onnx"], **overrides))
    assert line in str(error.value) and len(str(error.value).splitlines()) == 1
    assert (sorted(os.listdir(out)) if out.exists() else []) == before


def test_command_line_refuses_a_zero_horizon_in_one_line(tmp_path, project):
    import subprocess

    root, _, _, models = project
    script = os.path.join(os.path.dirname(sys.executable), "sequifier-evaluate")
    result = subprocess.run([script, f"project_root={root}", f"model_path={models['onnx']}",
                             f"metadata_config_path={METADATA}", "forecast_horizon=0"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=180)
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode == 1 and lines == [
        "sequifier: error: forecast_horizon: must be >= 1 (items forecast from each origin), got 0"], result.stderr


def test_quantiles_of_a_model_without_real_targets_are_refused(tmp_path):
    _, _, models = make_project(tmp_path, columns=("colour",), targets=("colour",))
    with pytest.raises(SequifierError, match="output_quantiles: the model 'm' has only categorical targets"):
        run_evaluate(evaluate_config(tmp_path, models["onnx"], forecast_horizon=2, output_quantiles=[0.1, 0.9]))


def test_calibration_offsets_are_the_error_quantiles_of_the_validation_backtest(project):
    root, _, metadata, models = project
    from sequifier.infer.model_runner import load_runner
    from sequifier.infer.run import ModelJob

    runner = load_runner(models["onnx"], "cpu", "", "generative", metadata, False, 0, every_position=True)
    job = ModelJob(models["onnx"], "m", runner, runner.info)
    columns = ["colour", "value"]
    read = [read_input("parquet", metadata, str(root / p), columns, SEQ_LENGTH, METADATA)
            for p in metadata.split_paths[:2]]
    calibration = series_from_windows(read[1], columns, read[0])
    offsets = backtest.calibration_offsets(job, metadata, calibration, 2, [0.1, 0.5, 0.9], 3)
    assert list(offsets) == ["value"] and offsets["value"].shape == (3, 2)
    assert (np.diff(offsets["value"], axis=0) >= 0).all()
    found = backtest.forecast(job, metadata, calibration, backtest.origins(calibration, 2, 1, 1), 2, 3)
    errors = calibration.values["value"][found.index] - found.values["value"]
    np.testing.assert_allclose(offsets["value"][1], np.median(errors, axis=0), rtol=1e-5)


@pytest.fixture(scope="module")
def known_ahead_project(tmp_path_factory):
    """Half-hourly demand of two text-id regions with a temperature known ahead and
    calendar features, a model over them (untrained: consistency, not skill)."""
    import pandas as pd
    import torch
    from helpers.preprocess_data import config, write_input

    from sequifier.config.schema import ModelSpec, TrainConfig, TrainingSpec
    from sequifier.data.preprocess import run_preprocess
    from sequifier.export import export_onnx
    from sequifier.model.transformer import build_model

    root = tmp_path_factory.mktemp("backtest_known")
    rng = np.random.default_rng(1)
    parts = []
    for region in ("nord", "süd"):
        t = pd.date_range("2024-05-01", periods=4 * 48, freq="30min")
        parts.append(pd.DataFrame({"ts": t, "region": region,
                                   "demand": (20 + 3 * np.sin(np.arange(len(t)) / 7.6)
                                              + rng.normal(0, 0.2, len(t))).round(3),
                                   "temperature": (10 + rng.normal(0, 2, len(t))).round(2)}))
    path = write_input(pd.concat(parts), os.path.join(str(root), "data", "d.csv"))
    run_preprocess(config(root, path, seq_length=8, stride_by_split=[3, 4, 4], sequence_id_column="region",
                          position_column="ts", known_ahead_columns=["temperature"],
                          time_features=["half_hour"], overwrite=True))
    metadata = read_metadata(os.path.join(str(root), "configs/metadata_configs/d.json"))
    columns = ["demand", "temperature", "half_hour"]
    cfg = TrainConfig(project_root=str(root), metadata_config_path="configs/metadata_configs/d.json",
                      model_name="k", target_columns=["demand"], input_columns=columns,
                      export_generative_model=True, export_embedding_model=False, inference_batch_size=2,
                      model_spec=ModelSpec(dim_model=16, n_head=2, num_layers=1, dim_feedforward=16),
                      training_spec=TrainingSpec(device="cpu", epochs=1, batch_size=4, learning_rate=1e-3,
                                                 criterion={"demand": "MSELoss"}, save_interval_epochs=1))
    torch.manual_seed(0)
    model = build_model(cfg, metadata)
    os.makedirs(os.path.join(str(root), "models"), exist_ok=True)
    onnx = os.path.join(str(root), "models", "k.onnx")
    export_onnx(model, onnx, "generative", 2, with_dropout=False)
    return root, metadata, onnx, columns


def test_a_known_ahead_backtest_steps_first_as_one_step_evaluation_and_detects_a_day(known_ahead_project):
    import pandas as pd

    root, metadata, onnx, columns = known_ahead_project
    meta_path = "configs/metadata_configs/d.json"
    cfg = EvaluateConfig(project_root=str(root), model_path=onnx, metadata_config_path=meta_path,
                         inference_batch_size=5, overwrite=True, forecast_horizon=3)
    written = run_evaluate(cfg)
    bt = json.loads(open(written[0]).read())["backtest"]
    assert bt["seasonal_period"] == 48 and "one day" in bt["seasonal_period_source"]
    assert set(bt["targets"]["demand"]["baselines"]) == {"persistence", "seasonal_naive", "training_mean"}
    # step 1 of every origin is the one-step prediction of the origin's item, which
    # evaluate's every-position pass makes with the same known-ahead inputs
    from sequifier.infer.model_runner import load_runner
    from sequifier.infer.models import ModelJob

    runner = load_runner(onnx, "cpu", "", "generative", metadata, False, 0, every_position=True)
    job = ModelJob(onnx, "k", runner, runner.info)
    test, before = (read_input("parquet", metadata, str(root / p), columns, 8, meta_path)
                    for p in metadata.split_paths[2:0:-1])
    series = series_from_windows(test, columns, before)
    found = backtest.origins(series, 3, 1, backtest.min_history(48, 3))
    assert len(found) == bt["origins"] > 0
    forecasts = backtest.forecast(job, metadata, series, found, 3, 4)
    one_step = pd.read_csv(root / "outputs/evaluation/k-split2-predictions.csv")
    stats = metadata.selected_columns_statistics["demand"]
    first = forecasts.values["demand"][:, 0] * stats["std"] + stats["mean"]
    from sequifier.data.read_table import positions_to_user
    times = positions_to_user(series.position[found], metadata.position_type).to_pylist()
    keyed = dict(zip(zip(one_step["region"], pd.to_datetime(one_step["ts"])), one_step["demand"]))
    names = np.array(metadata.sequence_ids)[series.sequence[found]]
    # evaluate predicts a window's last slot from a whole window of context, as the backtest does
    from sequifier.data.windows import first_predicted_slot
    full = first_predicted_slot(test) <= 8
    last_slot = set(zip(test.sequence_id[full], test.item_position[full, 8]))
    whole = np.array([(s, p) in last_slot for s, p in zip(series.sequence[found], series.position[found])])
    assert whole.sum() >= 8
    expected = np.array([keyed[(n, pd.Timestamp(t))] for n, t in zip(names[whole], np.array(times)[whole])])
    np.testing.assert_allclose(first[whole], expected, atol=1e-4)


def test_infer_writes_forecast_quantiles_from_the_validation_backtest(known_ahead_project):
    import pandas as pd

    from sequifier.config.schema import InferConfig
    from sequifier.infer import run_infer
    from sequifier.infer.model_runner import load_runner
    from sequifier.infer.models import ModelJob

    root, metadata, onnx, columns = known_ahead_project
    meta_path = "configs/metadata_configs/d.json"
    # future rows: the known-ahead temperature of the 3 positions after each region's end
    last = pd.read_csv(root / "data" / "d.csv").groupby("region")["ts"].max()
    future = pd.DataFrame([{"region": r, "ts": pd.Timestamp(t) + pd.Timedelta(minutes=30 * k), "temperature": 9.5}
                           for r, t in last.items() for k in (1, 2, 3)])
    future.to_csv(root / "data" / "future.csv", index=False)
    cfg = InferConfig(project_root=str(root), model_path=onnx, metadata_config_path=meta_path,
                      model_type="generative", inference_batch_size=4, forecast=True, forecast_horizon=3,
                      output_quantiles=[0.1, 0.5, 0.9], overwrite=True, future_data_path="data/future.csv")
    table = pd.read_csv(run_infer(cfg)[0])
    assert list(table.columns) == ["region", "ts", "demand", "demand_q0.1", "demand_q0.5", "demand_q0.9"]
    assert len(table) == 6 and (table["demand_q0.1"] <= table["demand_q0.9"]).all()
    # the offsets are those of the validation backtest, per horizon step
    runner = load_runner(onnx, "cpu", "", "generative", metadata, False, 0)
    job = ModelJob(onnx, "k", runner, runner.info)
    history, split = (read_input("parquet", metadata, str(root / p), columns, 8, meta_path)
                      for p in metadata.split_paths[:2])
    offsets = backtest.calibration_offsets(job, metadata, series_from_windows(split, columns, history), 3,
                                           [0.1, 0.5, 0.9], 4)["demand"]
    std = metadata.selected_columns_statistics["demand"]["std"]
    step = np.tile(np.arange(3), 2)
    np.testing.assert_allclose(table["demand_q0.9"] - table["demand"], offsets[2][step] * std, atol=1e-4)


@pytest.mark.parametrize("overrides, line", [
    ({"output_quantiles": [0.1, 1.5]}, "output_quantiles: [1.5] outside (0, 1)"),
    ({"output_quantiles": [0.5], "forecast": False, "forecast_horizon": None},
     "output_quantiles: intervals are of forecasts; set forecast: true"),
])
def test_bad_infer_quantiles_are_one_line(known_ahead_project, overrides, line):
    from sequifier.config.schema import InferConfig
    from sequifier.infer import run_infer

    root, _, onnx, _ = known_ahead_project
    cfg = InferConfig(project_root=str(root), model_path=onnx, metadata_config_path="configs/metadata_configs/d.json",
                      model_type="generative", inference_batch_size=4, forecast=True, forecast_horizon=3,
                      overwrite=True)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    with pytest.raises(SequifierError) as error:
        run_infer(cfg)
    assert line in str(error.value) and len(str(error.value).splitlines()) == 1
