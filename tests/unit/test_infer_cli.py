"""`sequifier infer` from the command line on a stand-in model: files and exit codes."""

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from helpers.infer_stub import export_stub, make_project

SEQUIFIER = os.path.join(os.path.dirname(sys.executable), "sequifier")


@pytest.fixture
def project(tmp_path_factory, tmp_path):
    models = tmp_path_factory.mktemp("cli_models")
    make_project(str(tmp_path))
    os.makedirs(tmp_path / "models")
    shutil.copy(export_stub(str(models / "gen.onnx")), tmp_path / "models")
    config = {"project_root": ".", "model_path": ["models/gen.onnx"],
              "metadata_config_path": "configs/metadata_configs/toy.json",
              "model_type": "generative", "seq_length": 4, "inference_batch_size": 3}
    (tmp_path / "configs/infer.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def sequifier(project, *args):
    return subprocess.run([SEQUIFIER, "infer", "--config-path", "configs/infer.yaml", *args],
                          cwd=project, capture_output=True, text=True, timeout=120, check=False)


def test_cli_writes_predictions(project):
    result = sequifier(project, "write_format=parquet", "output_probabilities=true")
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(project / "outputs/predictions/gen-predictions.parquet")
    assert list(frame.columns) == ["sequenceId", "itemPosition", "itemId", "value"]
    assert len(frame) == 10
    assert os.path.exists(project / "outputs/probabilities/gen-itemId-probabilities.parquet")


def test_cli_error_is_one_line(project):
    result = sequifier(project, "model_type=embedding")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "model_type" in lines[0], result.stderr
    assert not os.path.exists(project / "outputs/predictions")
