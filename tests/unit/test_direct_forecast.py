"""Direct multi-step forecasts (`model_spec.direct_horizon`, data/masked_future.py): the
training masks, the model's masked cells, the engine's one-pass forecast against the
masked window it should run, the export, evaluate's backtest and infer's forecast."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.preprocess_data import config, write_input

from sequifier.config.metadata import read_metadata
from sequifier.config.schema import EvaluateConfig, InferConfig, ModelSpec, TrainConfig, TrainingSpec
from sequifier.data import masked_future
from sequifier.data.preprocess import run_preprocess
from sequifier.errors import SequifierError
from sequifier.gate import validate
from sequifier.infer import forecasting, run_infer
from sequifier.infer.evaluate import run_evaluate
from sequifier.infer.model_runner import load_runner
from sequifier.model.transformer import build_model
from sequifier.train.batch import Batch, mask_future
from sequifier.train.run import run_train

L, H = 8, 4
METADATA = "configs/metadata_configs/d.json"
COLUMNS = ["demand", "temperature", "half_hour"]


def half_hourly(days=4, future=H, seed=0) -> pd.DataFrame:
    """Two regions (a unicode id), half-hourly demand following temperature, `future`
    trailing rows with only the temperature (the forecast's known future)."""
    rng = np.random.default_rng(seed)
    parts = []
    for region in ("nord", "süd"):
        t = pd.date_range("2024-05-01", periods=days * 48 + future, freq="30min")
        temperature = 10 + 4 * np.sin(np.arange(len(t)) / 7.6) + rng.normal(0, 0.5, len(t))
        demand = 20 + 0.5 * temperature + rng.normal(0, 0.2, len(t))
        frame = pd.DataFrame({"ts": t, "region": region, "demand": demand.round(3),
                              "temperature": temperature.round(2)})
        frame.loc[len(t) - future:, "demand"] = np.nan
        parts.append(frame)
    return pd.concat(parts).reset_index(drop=True)


def train_config(root, **spec) -> TrainConfig:
    return TrainConfig(
        project_root=str(root), metadata_config_path=METADATA, model_name="direct",
        target_columns=["demand"], input_columns=COLUMNS, export_generative_model=True,
        export_embedding_model=False, export_pt=True, inference_batch_size=4,
        model_spec=ModelSpec(dim_model=16, n_head=2, num_layers=1, dim_feedforward=16,
                             **{"direct_horizon": H, **spec}),
        training_spec=TrainingSpec(device="cpu", epochs=2, batch_size=8, learning_rate=3e-3,
                                   criterion={"demand": "MSELoss"}, save_interval_epochs=10, seed=3),
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("direct")
    path = write_input(half_hourly(), os.path.join(str(root), "data", "d.csv"))
    run_preprocess(config(root, path, seq_length=L, split_ratios=[0.6, 0.2, 0.2], stride_by_split=[2, 4, 4],
                          sequence_id_column="region", position_column="ts", overwrite=True,
                          known_ahead_columns=["temperature"], time_features=["half_hour"],
                          missing_values={"temperature": "fill", "demand": "drop_rows"}))
    metadata = read_metadata(os.path.join(str(root), METADATA))
    result = run_train(train_config(root))
    models = os.path.join(str(root), "models")
    onnx = os.path.join(models, "sequifier-direct-best.onnx")
    assert os.path.exists(onnx), sorted(os.listdir(models))
    return root, metadata, onnx, result


# ---------------------------------------------------------------- training masks

def _batch(n=64):
    demand = torch.randn(n, L)
    return Batch(inputs={"demand": demand, "half_hour": torch.randint(2, 50, (n, L))},
                 targets={"demand": torch.randn(n, L)}, target_mask=torch.ones(n, L, dtype=torch.bool),
                 previous={"demand": demand})


def test_training_masks_the_fed_back_inputs_after_a_cut_in_the_last_h_positions():
    batch = _batch()
    masked = mask_future(batch, ["demand"], H, (3, 1, 7)).inputs["demand"]
    hidden = torch.isnan(masked)
    for row in range(len(masked)):
        n = int(hidden[row].sum())
        assert 0 <= n <= H - 1  # the cut is one of the last H positions; the last masks nothing
        assert hidden[row, L - n:].all() and not hidden[row, :L - n].any()
    assert len({int(r.sum()) for r in hidden}) == H  # every lead time is drawn
    # other columns, the baselines' previous values and the targets are untouched
    assert torch.equal(mask_future(batch, ["demand"], H, (3, 1, 7)).inputs["half_hour"], batch.inputs["half_hour"])
    assert not torch.isnan(mask_future(batch, ["demand"], H, (3, 1, 7)).previous["demand"]).any()
    # the cuts follow the seed only (a resumed run draws the same ones)
    assert torch.equal(hidden, torch.isnan(mask_future(batch, ["demand"], H, (3, 1, 7)).inputs["demand"]))
    assert not torch.equal(hidden, torch.isnan(mask_future(batch, ["demand"], H, (3, 1, 8)).inputs["demand"]))


def test_a_categorical_input_is_masked_with_the_masked_id():
    ids = torch.randint(2, 9, (32, L))
    batch = Batch({"item": ids}, {"item": ids}, torch.ones(32, L, dtype=torch.bool), {"item": ids})
    masked = mask_future(batch, ["item"], H, (0, 0, 0)).inputs["item"]
    assert masked.dtype == ids.dtype and (masked == masked_future.MASKED_ID).any()
    assert ((masked == ids) | (masked == masked_future.MASKED_ID)).all()


def test_training_learns_the_mask_vectors_of_the_fed_back_inputs(project):
    root, metadata, _, _ = project
    untrained = build_model(train_config(root), metadata)
    assert list(untrained.embedding.masks) == ["demand"]  # temperature is known ahead, not fed back
    assert torch.count_nonzero(untrained.embedding.masks["demand"]) == 0
    weights = torch.load(os.path.join(str(root), "models", "sequifier-direct-best.pt"), weights_only=True)
    trained = [v for k, v in _state(weights).items() if k.endswith("masks.demand")]
    assert trained and torch.count_nonzero(trained[0]) > 0  # only masked training moves them
    plain = build_model(train_config(root, direct_horizon=None), metadata)
    assert not list(plain.embedding.masks) and not any("masks" in k for k in plain.state_dict())


def _state(payload):
    return payload.get("state_dict", payload.get("model", payload)) if isinstance(payload, dict) else payload


# ---------------------------------------------------------------- the model

def test_a_masked_cell_hides_its_value_and_leaves_earlier_positions_alone(project):
    root, metadata, _, _ = project
    torch.manual_seed(0)
    model = build_model(train_config(root), metadata).eval()
    torch.nn.init.normal_(model.embedding.masks["demand"])
    inputs = {"demand": torch.randn(3, L), "temperature": torch.randn(3, L), "half_hour": torch.randint(2, 40, (3, L))}
    first = masked_future.first_masked_position(L, H)
    a = {**inputs, "demand": inputs["demand"].clone()}
    a["demand"][:, first:] = float("nan")
    b = {**a, "demand": a["demand"].clone()}
    with torch.no_grad():
        out_a, out_b, plain = model(a)["demand"], model(b)["demand"], model(inputs)["demand"]
    assert torch.isfinite(out_a).all()
    torch.testing.assert_close(out_a, out_b)
    torch.testing.assert_close(out_a[:, :first], plain[:, :first])  # causal: the past is unchanged
    assert not torch.allclose(out_a[:, first:], plain[:, first:])


# ---------------------------------------------------------------- the engine

def test_the_engine_forecasts_h_steps_from_one_pass_over_the_masked_window(project):
    root, metadata, _, _ = project
    torch.manual_seed(1)
    model = build_model(train_config(root), metadata).eval()
    torch.nn.init.normal_(model.embedding.masks["demand"])
    spec = forecasting.ForecastModel.of(model.layout)
    assert spec.direct_horizon == H
    rng = np.random.default_rng(0)
    history = {"demand": rng.normal(size=(5, L)).astype(np.float32),
               "temperature": rng.normal(size=(5, L)).astype(np.float32),
               "half_hour": rng.integers(2, 40, (5, L))}
    future = {"temperature": rng.normal(size=(5, H)).astype(np.float32), "half_hour": rng.integers(2, 40, (5, H))}
    calls = []

    def every(inputs):
        calls.append(inputs)
        with torch.no_grad():
            return {"demand": model({k: torch.from_numpy(v) for k, v in inputs.items()})["demand"].numpy()}

    direct = forecasting.forecast(lambda i: {"demand": every(i)["demand"][:, -1]}, spec, history, future, H,
                                  run_tail=lambda i, n: {"demand": every(i)["demand"][:, -n:]}, batch_size=2)
    assert len(calls) == 3  # one pass per batch of sequences, not per step
    # the window it should have run: the last L-H+1 observed items, then H-1 masked ones;
    # known-ahead inputs one slot later (up to the last forecast position)
    window = {"demand": np.concatenate([history["demand"][:, H - 1:], np.full((5, H - 1), np.nan, np.float32)], 1)}
    for c in ("temperature", "half_hour"):
        window[c] = np.concatenate([history[c][:, H:], future[c]], 1)
    with torch.no_grad():
        expected = model({k: torch.from_numpy(v) for k, v in window.items()})["demand"][:, -H:].numpy()
    np.testing.assert_allclose(direct["demand"], expected, rtol=1e-5, atol=1e-6)
    calls.clear()
    stepwise = forecasting.forecast(lambda i: {"demand": every(i)["demand"][:, -1]}, spec, history, future, H,
                                    run_tail=lambda i, n: {"demand": every(i)["demand"][:, -n:]},
                                    method="autoregressive")
    assert len(calls) == H
    # a forward pass per step, each with the whole L items of context
    assert not np.allclose(stepwise["demand"], direct["demand"])


def test_method_choice():
    spec = forecasting.ForecastModel(["y"], ["y"], {"y": "real"}, L, (), H)
    assert forecasting.method_for(spec, H) == "direct"
    assert forecasting.method_for(spec, H + 1) == "autoregressive"  # longer than it was trained for
    assert forecasting.method_for(spec, 1) == "autoregressive"
    plain = forecasting.ForecastModel(["y"], ["y"], {"y": "real"}, L)
    with pytest.raises(SequifierError, match="direct_horizon >= 3"):
        forecasting.method_for(plain, 3, "direct")


# ---------------------------------------------------------------- export, evaluate, infer

def test_the_onnx_export_records_the_horizon_and_runs_masks_like_torch(project):
    root, metadata, onnx, _ = project
    runner = load_runner(onnx, "cpu", "", "generative", metadata, False, 0, every_position=True)
    pt = load_runner(onnx.replace(".onnx", ".pt"), "cpu", "", "generative", metadata, False, 0, every_position=True)
    assert runner.info.direct_horizon == H == pt.info.direct_horizon
    rng = np.random.default_rng(2)
    inputs = {"demand": rng.normal(size=(3, L)).astype(np.float32),
              "temperature": rng.normal(size=(3, L)).astype(np.float32),
              "half_hour": rng.integers(2, 40, (3, L))}
    inputs = masked_future.mask_tail(inputs, ["demand"], masked_future.first_masked_position(L, H))
    a, b = runner.run(inputs)["demand"], pt.run(inputs)["demand"]
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_evaluate_backtests_a_direct_model_in_one_pass(project):
    root, metadata, onnx, _ = project
    cfg = EvaluateConfig(project_root=str(root), model_path=onnx, metadata_config_path=METADATA,
                         inference_batch_size=8, overwrite=True, forecast_horizon=H, seasonal_period=4)
    written = run_evaluate(cfg)
    report = json.loads(open(written[0]).read())["backtest"]
    assert report["method"] == "direct" and report["origins"] > 0
    longer = EvaluateConfig(project_root=str(root), model_path=onnx, metadata_config_path=METADATA,
                            inference_batch_size=8, overwrite=True, forecast_horizon=H + 1, seasonal_period=4)
    assert json.loads(open(run_evaluate(longer)[0]).read())["backtest"]["method"] == "autoregressive"


def test_infer_forecasts_the_future_rows_directly(project, caplog):
    root, metadata, onnx, _ = project
    cfg = InferConfig(project_root=str(root), model_path=onnx, metadata_config_path=METADATA,
                      model_type="generative", inference_batch_size=1, forecast=True, forecast_horizon=H,
                      overwrite=True)
    with caplog.at_level("INFO"):
        written = run_infer(cfg)
    assert "in one forward pass (direct)" in caplog.text
    table = pd.read_csv([p for p in written if "predictions" in p][0])
    assert len(table) == 2 * H and table["demand"].notna().all()
    assert set(table["region"]) == {"nord", "süd"}


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("horizon, line", [
    (1, "model_spec.direct_horizon: must be >= 2"),
    (L + 1, f"model_spec.direct_horizon: must be at most seq_length ({L})"),
])
def test_bad_direct_horizons_are_one_line(project, horizon, line):
    root = project[0]
    with pytest.raises(SequifierError) as raised:
        validate("train", train_config(root, direct_horizon=horizon))
    assert line in str(raised.value) and "\n" not in str(raised.value)


def test_a_direct_horizon_with_nothing_fed_back_is_refused(project):
    root = project[0]
    cfg = train_config(root)
    cfg.input_columns = ["temperature", "half_hour"]
    with pytest.raises(SequifierError, match="no target .* is also an input"):
        validate("train", cfg)


def test_a_direct_horizon_with_a_categorical_target_is_refused(project):
    root = project[0]
    cfg = train_config(root)
    cfg.target_columns = ["demand", "half_hour"]
    cfg.training_spec.criterion = {"demand": "MSELoss", "half_hour": "CrossEntropyLoss"}
    with pytest.raises(SequifierError, match=r"direct forecasts are for real targets, and \['half_hour'\]"):
        validate("train", cfg)


def test_a_checkpoint_of_a_direct_model_loads_with_its_mask_vectors(project):
    root, metadata, onnx, _ = project
    folder = os.path.join(str(root), "checkpoints")
    checkpoint = os.path.join(folder, sorted(f for f in os.listdir(folder) if f.endswith(".pt"))[-1])
    runner = load_runner(checkpoint, "cpu", "", "generative", metadata, False, 0, every_position=True)
    assert runner.info.direct_horizon == H
    inputs = {"demand": np.zeros((1, L), np.float32), "temperature": np.zeros((1, L), np.float32),
              "half_hour": np.full((1, L), 3)}
    inputs = masked_future.mask_tail(inputs, ["demand"], masked_future.first_masked_position(L, H))
    assert np.isfinite(runner.run(inputs)["demand"]).all()
