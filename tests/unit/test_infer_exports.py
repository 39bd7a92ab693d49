"""infer on real exports of a tiny sequifier model: ONNX and .pt agree, MC dropout, and
.pt weights that take their architecture from the training config."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers.infer_stub import SEQ_LENGTH, infer_config, make_metadata, make_project, make_windows

from sequifier.config.schema import ModelSpec, TrainConfig, TrainingSpec
from sequifier.errors import SequifierError
from sequifier.export import export_onnx, export_pt
from sequifier.infer import run_infer
from sequifier.model.transformer import build_model
from sequifier.train.resume import config_record

COLUMNS = {"input_columns": ["itemId", "value"], "target_columns": ["itemId", "value"],
               "target_column_types": {"itemId": "categorical", "value": "real"}}
SPEC = {"dim_model": 8, "n_head": 2, "num_layers": 1, "dim_feedforward": 16, "initial_embedding_dim": 8,
            "feature_embedding_dims": {"itemId": 6, "value": 2}}


def train_config(dropout=0.0) -> TrainConfig:
    return TrainConfig(
        project_root=".", metadata_config_path="m.json", model_name="tiny",
        seq_length=SEQ_LENGTH, export_generative_model=True, export_embedding_model=True,
        inference_batch_size=4, model_spec=ModelSpec(**SPEC),
        training_spec=TrainingSpec(device="cpu", epochs=1, batch_size=4, learning_rate=1e-3,
                                   criterion={}, save_interval_epochs=1, dropout=dropout),
        **COLUMNS,
    )


class Exports:
    """Exports of two tiny models, made on first use (an ONNX export takes seconds)."""

    def __init__(self, folder):
        self.folder = folder
        self.paths = {}
        torch.manual_seed(0)
        self.model = build_model(train_config(), make_metadata())
        torch.manual_seed(0)
        self.dropout_model = build_model(train_config(dropout=0.3), make_metadata())

    def __getitem__(self, kind):
        if kind not in self.paths:
            self.paths[kind] = self._export(kind)
        return self.paths[kind]

    def _export(self, kind):
        name = {"onnx": "tiny.onnx", "pt": "tiny.pt", "emb_onnx": "tiny-embedding.onnx",
                "emb_pt": "tiny-embedding.pt", "weights": "weights.pt", "checkpoint": "checkpoint.pt",
                "mc_onnx": "mc.onnx",
                "mc_pt": "mc.pt"}[kind]
        path = str(self.folder / name)
        model = self.dropout_model if kind.startswith("mc") else self.model
        model_type = "embedding" if kind.startswith("emb") else "generative"
        dropout = kind.startswith("mc")
        if kind == "weights":
            torch.save({"model": model.state_dict()}, path)  # like a checkpoint of an older version
        elif kind == "checkpoint":  # the weights and the composed config they were trained with
            torch.save({"model": model.state_dict(), "config": config_record(train_config())}, path)
        elif path.endswith(".onnx"):
            export_onnx(model, path, model_type, 4, with_dropout=dropout)
        else:
            export_pt(model, path, model_type, with_dropout=dropout)
        return path


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return Exports(tmp_path_factory.mktemp("exports"))


@pytest.fixture
def project(tmp_path):
    make_project(str(tmp_path))
    return tmp_path


def predictions(root, name):
    return pd.read_csv(os.path.join(root, f"outputs/predictions/{name}-predictions.csv"))


def test_onnx_and_pt_give_the_same_predictions(project, exports):
    def run(path):
        run_infer(infer_config(project, path, output_probabilities=True, overwrite=True))
        probs = pd.read_csv(project / "outputs/probabilities/tiny-itemId-probabilities.csv")
        return predictions(project, "tiny"), probs

    (onnx, onnx_probs), (pt, pt_probs) = run(exports["onnx"]), run(exports["pt"])
    assert onnx["itemId"].tolist() == pt["itemId"].tolist()
    np.testing.assert_allclose(onnx["value"], pt["value"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(onnx_probs.to_numpy(), pt_probs.to_numpy(), atol=1e-6)


@pytest.mark.slow
def test_onnx_and_pt_give_the_same_embeddings(project, exports):
    def embeddings(path):
        run_infer(infer_config(project, path, model_type="embedding", overwrite=True))
        return pd.read_csv(project / "outputs/embeddings/tiny-embedding-embeddings.csv")

    onnx, pt = embeddings(exports["emb_onnx"]), embeddings(exports["emb_pt"])
    assert onnx.shape == (10, 2 + 8)
    np.testing.assert_allclose(onnx.to_numpy(), pt.to_numpy(), rtol=1e-4, atol=1e-5)


def test_pt_weights_take_architecture_from_training_config(project, exports):
    config = {"project_root": ".", "metadata_config_path": "configs/metadata_configs/toy.json",
              "model_name": "tiny", "seq_length": SEQ_LENGTH, "model_spec": SPEC, **COLUMNS}
    os.makedirs(project / "configs", exist_ok=True)
    (project / "configs/train.yaml").write_text(yaml.safe_dump(config))
    run_infer(infer_config(project, [exports["pt"], exports["weights"]]))
    pd.testing.assert_frame_equal(predictions(project, "tiny"), predictions(project, "weights"))


def test_pt_weights_without_training_config(project, exports):
    with pytest.raises(SequifierError, match="training_config_path: .* not found"):
        run_infer(infer_config(project, exports["weights"]))


def test_checkpoint_uses_the_config_it_was_trained_with(project, exports):
    """Not the training YAML, which lacks the presets and overrides of the run: a YAML
    with another architecture would not fit the weights (see the next test)."""
    config = {"seq_length": SEQ_LENGTH, "model_spec": {**SPEC, "dim_feedforward": 32}, **COLUMNS}
    (project / "train.yaml").write_text(yaml.safe_dump(config))
    run_infer(infer_config(project, [exports["pt"], exports["checkpoint"]], training_config_path="train.yaml"))
    pd.testing.assert_frame_equal(predictions(project, "tiny"), predictions(project, "checkpoint"))


def test_pt_with_other_architecture_in_training_config(project, exports):
    config = {"seq_length": SEQ_LENGTH, "model_spec": {**SPEC, "dim_feedforward": 32},
              **COLUMNS}
    (project / "train.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SequifierError, match="do not fit the architecture"):
        run_infer(infer_config(project, exports["weights"], training_config_path="train.yaml"))


@pytest.mark.parametrize("kind", [pytest.param("mc_onnx", marks=pytest.mark.slow), "mc_pt"])
def test_infer_with_dropout_samples(project, exports, kind):
    def run(seed):
        run_infer(infer_config(project, exports[kind], infer_with_dropout=True, seed=seed,
                               overwrite=True))
        return predictions(project, "mc")["value"].to_numpy()

    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_pt_without_dropout_refuses_infer_with_dropout(project, exports):
    with pytest.raises(SequifierError, match="exported without dropout"):
        run_infer(infer_config(project, exports["pt"], infer_with_dropout=True))


def test_pt_dropout_model_is_deterministic_without_infer_with_dropout(project, exports):
    run_infer(infer_config(project, exports["mc_pt"]))
    a = predictions(project, "mc")
    run_infer(infer_config(project, exports["mc_pt"], overwrite=True, seed=5))
    pd.testing.assert_frame_equal(a, predictions(project, "mc"))


def test_preprocessed_data_end_to_end(tmp_path):
    """Real preprocess output -> .pt export -> infer: rows line up with the user's table
    and values come back as the model computes them, mapped through the metadata."""
    from sequifier.config.metadata import read_metadata
    from sequifier.config.schema import PreprocessConfig
    from sequifier.data.preprocess import run_preprocess
    from sequifier.data.window_files import read_windows

    rng = np.random.default_rng(0)
    lengths = [30, 7, 18]
    n = sum(lengths)
    table = pd.DataFrame({
        "sequenceId": np.repeat(np.arange(len(lengths)), lengths),
        "itemPosition": np.concatenate([np.arange(k) * 3 + 5 for k in lengths]),
        "colour": rng.choice(["red", "green", "blue"], size=n),
        "code": rng.choice([7, 30, 100], size=n),
        "value": np.round(rng.normal(50.0, 8.0, size=n), 3),
    })
    table.to_csv(tmp_path / "events.csv", index=False)
    run_preprocess(PreprocessConfig(
        project_root=str(tmp_path), data_path="events.csv", seq_length=SEQ_LENGTH,
        split_ratios=[0.6, 0.2, 0.2], stride_by_split=[2, 2, 2], n_cores=1))
    metadata = read_metadata(str(tmp_path / "configs/metadata_configs/events.json"))
    cfg = train_config()
    cfg.input_columns = ["colour", "code", "value"]
    cfg.target_columns, cfg.target_column_types = ["code", "value"], {"code": "categorical",
                                                                     "value": "real"}
    cfg.model_spec = ModelSpec(**{**SPEC, "feature_embedding_dims": {"colour": 3, "code": 3,
                                                                      "value": 2}})
    torch.manual_seed(0)
    model = build_model(cfg, metadata).eval()
    export_pt(model, str(tmp_path / "events-model.pt"), "generative", with_dropout=False)

    infer = infer_config(tmp_path, "events-model.pt", inference_batch_size=3,
                         metadata_config_path="configs/metadata_configs/events.json")
    run_infer(infer)
    out = predictions(tmp_path, "events-model")

    windows = read_windows(str(tmp_path / metadata.split_paths[-1]), "parquet",
                           metadata.column_types)
    assert len(out) == len(windows) > 0
    # each prediction is for a real item of the user's table: the one after the inputs
    truth = table.set_index(["sequenceId", "itemPosition"])
    assert truth.index.is_unique
    keys = list(zip(out["sequenceId"], out["itemPosition"]))
    assert all(k in truth.index for k in keys)
    # independent computation from the windows
    with torch.no_grad():
        raw = model({c: torch.from_numpy(windows.values[c][:, :SEQ_LENGTH].astype(
            np.int64 if metadata.column_types[c] == "categorical" else np.float32))
            for c in cfg.input_columns})
    inverse = metadata.inverse_id_map("code")
    labels = {0: "<pad>", 1: "<unknown>", **inverse}
    expected_code = [labels[i] for i in raw["code"][:, -1].argmax(-1).tolist()]
    assert [str(v) for v in out["code"]] == [str(v) for v in expected_code]
    stats = metadata.selected_columns_statistics["value"]
    np.testing.assert_allclose(out["value"], raw["value"][:, -1].numpy() * stats["std"]
                               + stats["mean"], rtol=1e-5)


def test_pt_embeddings_are_the_last_hidden_state(project, exports):
    run_infer(infer_config(project, exports["emb_pt"], model_type="embedding"))
    frame = pd.read_csv(project / "outputs/embeddings/tiny-embedding-embeddings.csv")
    windows = make_windows()
    with torch.no_grad():
        hidden = exports.model.hidden_states({
            "itemId": torch.from_numpy(windows.values["itemId"][:, :SEQ_LENGTH]),
            "value": torch.from_numpy(windows.values["value"][:, :SEQ_LENGTH]),
        })[:, -1]
    np.testing.assert_allclose(frame[[str(j) for j in range(8)]].to_numpy(), hidden.numpy(),
                               rtol=1e-4, atol=1e-5)


def test_pt_on_unavailable_device(project, exports):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SequifierError, match="device: 'cuda'"):
        run_infer(infer_config(project, exports["pt"], device="cuda"))
