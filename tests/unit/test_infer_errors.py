"""Bad input to infer: one SequifierError line each, and no output file left behind."""

import json
import logging
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers.infer_stub import (
    COLUMN_TYPES,
    SEQ_LENGTH,
    export_stub,
    infer_config,
    make_metadata,
    make_windows,
    project_with_models,
)

from sequifier.data.windows import write_windows
from sequifier.errors import SequifierError
from sequifier.infer import run_infer


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    props = {
        "sequifier_format": "1",
        "model_type": json.dumps("generative"),
        "input_columns": json.dumps(["itemId", "sup1", "value"]),
        "target_columns": json.dumps(["itemId", "value"]),
        "target_column_types": json.dumps({"itemId": "categorical", "value": "real"}),
        "column_types": json.dumps({**COLUMN_TYPES, "sup1": "real"}),
        "seq_length": "4",
        "with_dropout": "false",
    }
    return {
        "gen": export_stub(str(folder / "gen.onnx")),
        "plain": export_stub(str(folder / "plain.onnx"), props={}),
        "wrong_types": export_stub(str(folder / "wrong_types.onnx"), props=props),
        "dropout": export_stub(str(folder / "dropout.onnx"), with_dropout=True),
        "wide": export_stub(str(folder / "wide.onnx"), n_classes={"itemId": 9, "sup1": 4}),
    }


@pytest.fixture
def project(tmp_path, models):
    return project_with_models(tmp_path, models)


def fails(cfg, match):
    with pytest.raises(SequifierError, match=match) as info:
        run_infer(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert not os.path.exists(os.path.join(cfg.project_root, "outputs")), "partial output"
    return message


def test_not_a_sequifier_export(project):
    fails(infer_config(project, "models/plain.onnx"), "not a sequifier export")


def test_unloadable_model_file(project):
    (project / "models/broken.onnx").write_bytes(b"this is not onnx")
    fails(infer_config(project, "models/broken.onnx"), "could not be loaded as an ONNX model")


def test_missing_model_file_lists_the_models_present(project):
    message = fails(infer_config(project, "models/nope.onnx"), "model_path: file .* not found")
    present = sorted(f for f in os.listdir(project / "models") if f.endswith((".onnx", ".pt")))
    assert present and "models in" in message and all(name in message for name in present[:12]), message
    empty = project / "empty"
    empty.mkdir(exist_ok=True)
    fails(infer_config(project, "empty/sequifier-x-best.onnx"), "no models in .*empty/; run `sequifier train` first")

    message = fails(infer_config(project, "models"), "model_path: file .*models' is a folder, not a model file; "
                                                     "models in .*models/: ")
    assert all(name in message for name in present[:12]), message


def test_unknown_model_extension(project):
    (project / "models/model.txt").write_text("x")
    fails(infer_config(project, "models/model.txt"), "neither an .onnx nor a .pt")


def test_one_bad_model_in_a_list_writes_nothing(project):
    fails(infer_config(project, ["models/gen.onnx", "models/plain.onnx"]), "plain.onnx")


def test_models_with_the_same_stem(project, models, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere") / "gen.onnx"
    shutil.copy(models["gen"], other)
    fails(infer_config(project, ["models/gen.onnx", str(other)]), "share the file name 'gen'")


def test_missing_data_file(project):
    fails(infer_config(project, "models/gen.onnx", data_path="data/nope.parquet"), "not found")


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_empty_data(project, fmt):
    empty = make_windows(1).select(np.array([], dtype=np.int64))
    write_windows(empty, str(project / f"data/empty.{fmt}"), fmt)
    cfg = infer_config(project, "models/gen.onnx", data_path=f"data/empty.{fmt}", read_format=fmt)
    fails(cfg, "holds no windows")


def test_data_without_a_model_column(project):
    w = make_windows()
    del w.values["sup1"]
    write_windows(w, str(project / "data/nosup.parquet"), "parquet")
    fails(infer_config(project, "models/gen.onnx", data_path="data/nosup.parquet"),
          r"data_path: data file '.*nosup.parquet' has no column\(s\) \['sup1'\]")


def test_column_type_differs_between_model_and_metadata(project):
    fails(infer_config(project, "models/wrong_types.onnx"), "'sup1' is categorical in the metadata")


def test_model_with_other_number_of_classes(project, monkeypatch):
    from sequifier.infer.model_runner import OnnxRunner

    # caught from the export's output shape, before anything runs
    monkeypatch.setattr(OnnxRunner, "run", lambda self, inputs: pytest.fail("model was run"))
    fails(infer_config(project, "models/wide.onnx"), "has 9 classes for 'itemId'")


@pytest.mark.parametrize("field,value", [
    ("model_type", "embedding"),
    ("input_columns", ["itemId", "value"]),
    ("target_columns", ["itemId"]),
    ("target_column_types", {"itemId": "categorical", "value": "categorical"}),
])
def test_config_must_match_model(project, field, value):
    message = fails(infer_config(project, "models/gen.onnx", **{field: value}), f"^{field}: ")
    assert "gen.onnx" in message


def test_matching_columns_given_explicitly_are_fine(project):
    cfg = infer_config(project, "models/gen.onnx", input_columns=["value", "sup1", "itemId"],
                       target_columns=["itemId", "value"],
                       target_column_types={"value": "real", "itemId": "categorical"})
    path = str(project / "outputs/predictions/gen-predictions.csv")
    assert run_infer(cfg) == [path]
    given = pd.read_csv(path)
    # the same predictions, in the model's column order, as with the columns left to the model
    run_infer(infer_config(project, "models/gen.onnx", overwrite=True))
    pd.testing.assert_frame_equal(given, pd.read_csv(path))
    assert list(given.columns) == ["sequenceId", "itemPosition", "itemId", "value"] and len(given) > 0


def test_seq_length_must_match_model(project):
    fails(infer_config(project, "models/gen.onnx", seq_length=5), "^seq_length: 5 .* seq_length 4")


def test_seq_length_must_match_data(project):
    write_windows(make_windows(4, width=SEQ_LENGTH + 3), str(project / "data/long.parquet"), "parquet")
    fails(infer_config(project, "models/gen.onnx", data_path="data/long.parquet"),
          "windows of seq_length 6")


def test_autoregression_needs_every_input_to_be_a_target(project):
    fails(infer_config(project, "models/gen.onnx", autoregression=True),
          r"autoregression: input columns \['sup1'\] are neither targets nor known-ahead")


def test_extra_steps_need_autoregression(project):
    fails(infer_config(project, "models/gen.onnx", autoregression_extra_steps=2),
          "autoregression_extra_steps: is set but autoregression is false")


def test_sampling_only_categorical_targets(project):
    fails(infer_config(project, "models/gen.onnx", sample_from_distribution_columns=["value"]),
          "sample_from_distribution_columns: 'value' is not a categorical target")


def test_infer_with_dropout_needs_dropout_export(project):
    fails(infer_config(project, "models/gen.onnx", infer_with_dropout=True),
          "exported without dropout")


def test_dropout_export_needs_infer_with_dropout(project):
    fails(infer_config(project, "models/dropout.onnx"), "exported with dropout on")


@pytest.mark.parametrize("device,match", [("cuda", "no CUDAExecutionProvider"),
                                          ("mps", "not supported for ONNX")])
def test_unavailable_device(project, device, match):
    fails(infer_config(project, "models/gen.onnx", device=device), f"device: '{device}'")
    fails(infer_config(project, "models/gen.onnx", device=device), match)


def test_unknown_ids_are_counted_not_fatal(project, caplog):
    w = make_windows()
    w.values["itemId"][2, 1] = 1  # mapped to <unknown> by preprocess
    w.values["itemId"][3, 2] = 50  # an id the model has never seen
    w.values["itemId"][4, SEQ_LENGTH] = 60  # target slot: not input, not counted
    write_windows(w, str(project / "data/unknown.parquet"), "parquet")
    with caplog.at_level(logging.WARNING):
        run_infer(infer_config(project, "models/gen.onnx", data_path="data/unknown.parquet"))
    assert "itemId: 2 values unknown to the model mapped to <unknown>" in caplog.text


def test_failed_write_leaves_no_file(project, monkeypatch):
    import pyarrow.csv as pcsv

    def broken(table, path, write_options=None):
        with open(path, "w") as f:
            f.write("sequenceId,itemPos")
        raise OSError("disk full")

    monkeypatch.setattr(pcsv, "write_csv", broken)
    with pytest.raises(OSError):
        run_infer(infer_config(project, "models/gen.onnx"))
    assert os.listdir(project / "outputs/predictions") == []


def test_metadata_without_splits_needs_data_path(project):
    from sequifier.config.metadata import write_metadata

    metadata = make_metadata()
    metadata.split_paths = []
    write_metadata(metadata, str(project / "configs/metadata_configs/toy.json"))
    fails(infer_config(project, "models/gen.onnx"), "data_path: not set")




def test_read_format_must_match_default_split(project):
    fails(infer_config(project, "models/gen.onnx", read_format="csv"),
          "read_format: 'csv' but the metadata's splits are written as parquet")


def test_parquet_data_read_as_csv(project):
    cfg = infer_config(project, "models/gen.onnx", data_path="data/toy-split2.parquet",
                       read_format="csv")
    fails(cfg, "toy-split2.parquet' could not be read as csv .*check read_format")


def test_folder_of_whole_splits_as_data_path(project):
    fails(infer_config(project, "models/gen.onnx", data_path="data"),
          r"data folder '.*data' holds whole split files \(toy-split0.parquet, .*point the path at one split")


def test_folder_without_shards_as_data_path(project):
    fails(infer_config(project, "models/gen.onnx", data_path="models"),
          "data folder '.*models' holds no .parquet files")


def test_data_unfit_for_a_later_model_writes_nothing(project):
    export_stub(str(project / "models/two_inputs.onnx"), inputs=("itemId", "value"))
    w = make_windows()
    del w.values["sup1"]
    write_windows(w, str(project / "data/nosup.parquet"), "parquet")
    cfg = infer_config(project, ["models/two_inputs.onnx", "models/gen.onnx"],
                       data_path="data/nosup.parquet")
    fails(cfg, r"has no column\(s\) \['sup1'\]")
