"""infer with stand-in ONNX exports: every config field's effect on the outputs."""

import os

import numpy as np
import pandas as pd
import pytest
from helpers.infer_stub import (
    ITEM_VALUES,
    SEQ_LENGTH,
    VALUE_MEAN,
    VALUE_STD,
    export_stub,
    infer_config,
    make_metadata,
    make_project,
    make_windows,
    project_with_models,
)

from sequifier.data.windows import write_shards, write_windows
from sequifier.infer import run_infer
from sequifier.infer.model_runner import OnnxRunner

ID_TO_ITEM = {i + 2: v for i, v in enumerate(ITEM_VALUES)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Stand-in exports shared by the tests of this module (exporting takes a moment)."""
    folder = tmp_path_factory.mktemp("models")
    return {
        "gen": export_stub(str(folder / "gen.onnx")),
        "gen2": export_stub(str(folder / "other.onnx")),
        "ar": export_stub(str(folder / "ar.onnx"), inputs=("itemId", "value")),
        "emb": export_stub(str(folder / "emb.onnx"), model_type="embedding"),
        "dropout": export_stub(str(folder / "dropout.onnx"), with_dropout=True),
    }


@pytest.fixture
def project(tmp_path, models):
    return project_with_models(tmp_path, models)


def expected_next(windows, steps=1):
    """What the stand-in predicts: id + 1 within the real ids, value + 1 (standardised)."""
    item = windows.values["itemId"][:, SEQ_LENGTH - 1]
    value = windows.values["value"][:, SEQ_LENGTH - 1].astype(np.float64)
    ids, values = [], []
    for _ in range(steps):
        item = (item - 2 + 1) % 5 + 2
        value = value + 1.0
        ids.append(item)
        values.append(value)
    return np.stack(ids, 1).reshape(-1), np.stack(values, 1).reshape(-1)


def read(path):
    return pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)


def test_predictions_in_original_terms(project):
    written = run_infer(infer_config(project, "models/gen.onnx"))
    path = str(project / "outputs/predictions/gen-predictions.csv")
    assert written == [path]
    frame = read(path)
    windows = make_windows()
    ids, values = expected_next(windows)
    assert list(frame.columns) == ["sequenceId", "itemPosition", "itemId", "value"]
    np.testing.assert_array_equal(frame["sequenceId"], windows.sequence_id)
    # the predicted position is the window's slot L (the held-out item)
    np.testing.assert_array_equal(frame["itemPosition"], windows.item_position[:, SEQ_LENGTH])
    assert frame["itemId"].tolist() == [ID_TO_ITEM[i] for i in ids]
    # real targets come back on the original scale
    np.testing.assert_allclose(frame["value"], values * VALUE_STD + VALUE_MEAN, rtol=1e-6)


def test_map_to_id_false_writes_ids(project):
    run_infer(infer_config(project, "models/gen.onnx", map_to_id=False))
    frame = read(str(project / "outputs/predictions/gen-predictions.csv"))
    ids, values = expected_next(make_windows())
    assert frame["itemId"].tolist() == ids.tolist()
    np.testing.assert_allclose(frame["value"], values * VALUE_STD + VALUE_MEAN, rtol=1e-6)


def test_output_probabilities(project):
    cfg = infer_config(project, "models/gen.onnx", output_probabilities=True)
    written = run_infer(cfg)
    prob_path = str(project / "outputs/probabilities/gen-itemId-probabilities.csv")
    assert prob_path in written
    probs = read(prob_path)
    preds = read(str(project / "outputs/predictions/gen-predictions.csv"))
    classes = ["<pad>", "<unknown>"] + [str(v) for v in ITEM_VALUES]
    assert list(probs.columns) == ["sequenceId", "itemPosition"] + classes
    np.testing.assert_array_equal(probs["itemPosition"], preds["itemPosition"])
    np.testing.assert_allclose(probs[classes].sum(axis=1), 1.0, rtol=1e-5)
    argmax = probs[classes].to_numpy().argmax(1)
    assert [int(classes[j]) for j in argmax] == preds["itemId"].tolist()
    # no probability file for the real target
    assert not os.path.exists(project / "outputs/probabilities/gen-value-probabilities.csv")


def test_probabilities_named_by_id_without_map_to_id(project):
    run_infer(infer_config(project, "models/gen.onnx", output_probabilities=True, map_to_id=False))
    probs = read(str(project / "outputs/probabilities/gen-itemId-probabilities.csv"))
    assert list(probs.columns)[2:] == [str(i) for i in range(7)]


def test_no_probabilities_by_default(project):
    run_infer(infer_config(project, "models/gen.onnx"))
    assert not os.path.exists(project / "outputs/probabilities")


def test_parquet_output(project):
    written = run_infer(infer_config(project, "models/gen.onnx", write_format="parquet"))
    assert written == [str(project / "outputs/predictions/gen-predictions.parquet")]
    frame = pd.read_parquet(written[0])
    assert frame["itemId"].dtype == np.int64
    assert len(frame) == 10


@pytest.mark.parametrize("fmt,sharded", [("csv", False), ("pt", True), ("parquet", True),
                                         ("csv", True)])
def test_read_formats(tmp_path, models, fmt, sharded):
    metadata = make_metadata()
    make_project(str(tmp_path))  # metadata (+ parquet splits we do not use)
    windows = make_windows(7, seed=3)
    path = str(tmp_path / f"data/other.{fmt}")
    if sharded:  # a folder of shards, as preprocess writes with merge_output: false
        path = str(tmp_path / "data/other-split2")
        write_shards(windows, path, "other-split2", 3, metadata.column_types, fmt)
    else:
        write_windows(windows, path, fmt)
    run_infer(infer_config(tmp_path, models["gen"], read_format=fmt, data_path=path))
    frame = read(str(tmp_path / "outputs/predictions/gen-predictions.csv"))
    ids, _ = expected_next(windows)
    assert frame["itemId"].tolist() == [ID_TO_ITEM[i] for i in ids]


def test_data_path_defaults_to_last_split(project):
    metadata = make_metadata()
    # a different last split: the output must come from it, not from split 0
    write_windows(make_windows(5, seed=9), str(project / metadata.split_paths[-1]), "parquet")
    run_infer(infer_config(project, "models/gen.onnx"))
    assert len(read(str(project / "outputs/predictions/gen-predictions.csv"))) == 5
    run_infer(infer_config(project, "models/gen.onnx", data_path=metadata.split_paths[0],
                           overwrite=True))
    assert len(read(str(project / "outputs/predictions/gen-predictions.csv"))) == 10


def test_several_models_named_by_stem(project):
    written = run_infer(infer_config(project, ["models/gen.onnx", "models/other.onnx"]))
    assert [os.path.basename(p) for p in written] == [
        "gen-predictions.csv", "other-predictions.csv"
    ]


def test_inference_batch_size_batches_the_run(project, monkeypatch):
    sizes = []
    original = OnnxRunner.run

    def spy(self, inputs):
        sizes.append(len(next(iter(inputs.values()))))
        return original(self, inputs)

    monkeypatch.setattr(OnnxRunner, "run", spy)
    run_infer(infer_config(project, "models/gen.onnx", inference_batch_size=4))
    assert sizes == [4, 4, 2]
    first = read(str(project / "outputs/predictions/gen-predictions.csv"))
    sizes.clear()
    run_infer(infer_config(project, "models/gen.onnx", inference_batch_size=3, overwrite=True))
    assert sizes == [3, 3, 3, 1]
    pd.testing.assert_frame_equal(first, read(str(project / "outputs/predictions/gen-predictions.csv")))


def test_autoregression_feeds_predictions_back(project):
    cfg = infer_config(project, "models/ar.onnx", autoregression=True,
                       autoregression_extra_steps=2, input_columns=["itemId", "value"])
    run_infer(cfg)
    frame = read(str(project / "outputs/predictions/ar-predictions.csv"))
    windows = make_windows()
    assert len(frame) == 3 * len(windows)
    start = windows.item_position[:, SEQ_LENGTH]
    np.testing.assert_array_equal(
        frame["itemPosition"], (start[:, None] + np.arange(3)).reshape(-1)
    )
    np.testing.assert_array_equal(frame["sequenceId"], np.repeat(windows.sequence_id, 3))
    ids, values = expected_next(windows, steps=3)
    assert frame["itemId"].tolist() == [ID_TO_ITEM[i] for i in ids]
    np.testing.assert_allclose(frame["value"], values * VALUE_STD + VALUE_MEAN, rtol=1e-6)


def test_autoregression_without_extra_steps_is_one_step(project):
    run_infer(infer_config(project, "models/ar.onnx", autoregression=True))
    assert len(read(str(project / "outputs/predictions/ar-predictions.csv"))) == 10


def test_sampling_is_reproducible_with_seed(tmp_path, models):
    make_project(str(tmp_path), windows=make_windows(300))

    def sampled(seed, name):
        cfg = infer_config(tmp_path, models["gen"], sample_from_distribution_columns=["itemId"],
                           seed=seed, map_to_id=False, overwrite=True)
        run_infer(cfg)
        return read(str(tmp_path / "outputs/predictions/gen-predictions.csv"))["itemId"].to_numpy()

    argmax, _ = expected_next(make_windows(300))
    a, b, c = sampled(1, "a"), sampled(1, "b"), sampled(2, "c")
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    # the stand-in puts ~96% on the argmax: samples mostly agree with it, but not always
    agree = (a == argmax).mean()
    assert 0.85 < agree < 1.0


def test_embeddings(project):
    written = run_infer(infer_config(project, "models/emb.onnx", model_type="embedding"))
    assert written == [str(project / "outputs/embeddings/emb-embeddings.csv")]
    frame = read(written[0])
    windows = make_windows()
    assert list(frame.columns) == ["sequenceId", "itemPosition", "0", "1", "2"]
    # an embedding describes the window up to its last input slot
    np.testing.assert_array_equal(frame["itemPosition"], windows.item_position[:, SEQ_LENGTH - 1])
    first_input = windows.values["itemId"][:, :SEQ_LENGTH]
    np.testing.assert_allclose(frame["0"], first_input.mean(1), rtol=1e-6)
    np.testing.assert_allclose(frame["1"], first_input[:, -1], rtol=1e-6)


def test_infer_with_dropout_uses_dropout_export(project, monkeypatch):
    """The dropout export runs with dropout on (the runner is asked for it) and its
    outputs are the predictions. (Real sampling: test_infer_exports.py.)"""
    from sequifier.infer import models

    asked = []

    def spy(path, device, training_config_path, model_type, metadata, infer_with_dropout, *args, **kwargs):
        asked.append(infer_with_dropout)
        return load_runner(path, device, training_config_path, model_type, metadata, infer_with_dropout,
                           *args, **kwargs)

    load_runner = models.load_runner
    monkeypatch.setattr(models, "load_runner", spy)
    written = run_infer(infer_config(project, "models/dropout.onnx", infer_with_dropout=True))
    assert written == [str(project / "outputs/predictions/dropout-predictions.csv")] and asked == [True]
    ids, values = expected_next(make_windows())
    frame = read(written[0])
    assert frame["itemId"].tolist() == [ID_TO_ITEM[i] for i in ids]
    np.testing.assert_allclose(frame["value"], values * VALUE_STD + VALUE_MEAN, rtol=1e-6)


def test_existing_output_needs_overwrite(project):
    cfg = infer_config(project, "models/gen.onnx")
    run_infer(cfg)
    from sequifier.errors import SequifierError

    with pytest.raises(SequifierError, match="overwrite"):
        run_infer(cfg)
    cfg.overwrite = True
    assert run_infer(cfg)


def test_outputs_use_the_users_columns_ids_and_times(project):
    """Every output names its rows by the user's id and position columns, in their values."""
    from sequifier.config.metadata import read_metadata, write_metadata

    path = str(project / "configs/metadata_configs/toy.json")
    metadata = read_metadata(path)
    metadata.sequence_id_column, metadata.position_column = "user_id", "event time"
    metadata.position_type = "timestamp[s]"
    metadata.sequence_ids = ["u_00017", "u_00020", "ü_3"]
    write_metadata(metadata, path)
    windows = make_windows()
    ids = np.array(metadata.sequence_ids, dtype=object)[windows.sequence_id]
    for model, kind in (("gen", "generative"), ("emb", "embedding")):
        written = run_infer(infer_config(project, f"models/{model}.onnx", model_type=kind,
                                         output_probabilities=kind == "generative",
                                         write_format="parquet"))
        slot = SEQ_LENGTH if kind == "generative" else SEQ_LENGTH - 1
        for out in written:
            frame = pd.read_parquet(out)
            assert list(frame.columns[:2]) == ["user_id", "event time"], out
            assert frame["user_id"].tolist() == ids.tolist()
            np.testing.assert_array_equal(
                frame["event time"], pd.to_datetime(windows.item_position[:, slot], unit="s"))


def test_sequence_numbers_beyond_the_metadata_are_refused(project):
    from sequifier.config.metadata import read_metadata, write_metadata
    from sequifier.errors import SequifierError

    path = str(project / "configs/metadata_configs/toy.json")
    metadata = read_metadata(path)
    metadata.sequence_ids = ["only-one"]
    write_metadata(metadata, path)
    with pytest.raises(SequifierError, match="metadata_config_path: the data holds sequence numbers"):
        run_infer(infer_config(project, "models/gen.onnx"))
    assert not os.path.exists(project / "outputs/predictions/gen-predictions.csv")
