"""model_path: null in infer and evaluate = the best model of the project's newest training."""

import json
import os
import time

import pytest

from sequifier.config.schema import EvaluateConfig, InferConfig
from sequifier.errors import SequifierError
from sequifier.gate import validate
from sequifier.project import latest_best_model


def _training(root, name, files, age):
    """A finished training's summary and model files, `age` seconds old."""
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    os.makedirs(os.path.join(root, "models"), exist_ok=True)
    for f in files:
        open(os.path.join(root, f), "w").close()
    path = os.path.join(root, "logs", f"{name}-summary.json")
    with open(path, "w") as f:
        json.dump({"model_name": name, "models": {"best": [os.path.join(root, p) for p in files], "last": []}}, f)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def test_the_newest_training_wins_onnx_first_and_embeddings_only_when_asked(tmp_path):
    root = str(tmp_path)
    assert latest_best_model(root) is None
    _training(root, "old", ["models/sequifier-old-best.onnx"], age=100)
    _training(root, "new", ["models/sequifier-new-best.pt", "models/sequifier-new-best.onnx",
                            "models/sequifier-new-best-embedding.onnx"], age=10)
    assert latest_best_model(root) == (os.path.join(root, "models/sequifier-new-best.onnx"), "new")
    assert latest_best_model(root, "embedding") == (
        os.path.join(root, "models/sequifier-new-best-embedding.onnx"), "new")
    # a newest run whose files are gone (removed by hand) gives way to the one before
    os.remove(os.path.join(root, "models/sequifier-new-best.onnx"))
    os.remove(os.path.join(root, "models/sequifier-new-best.pt"))
    assert latest_best_model(root)[1] == "old"


def test_the_gate_fills_model_path_or_refuses_with_one_line(tmp_path):
    root = str(tmp_path)
    infer = InferConfig(project_root=root, model_path=None, metadata_config_path="m.json",
                        model_type="generative", inference_batch_size=2)
    with pytest.raises(SequifierError) as error:
        validate("infer", infer)
    assert str(error.value).splitlines()[0] == (
        "model_path: null means the best model of the project's newest training, and logs/ holds no "
        "training summary with a generative model; train first or set model_path to a model file")
    _training(root, "films", ["models/sequifier-films-best.onnx"], age=1)
    evaluate = EvaluateConfig(project_root=root, model_path=None, metadata_config_path="m.json")
    with pytest.raises(SequifierError, match="m.json"):  # the next check: the metadata file
        validate("evaluate", evaluate)
    assert evaluate.model_path == os.path.join(root, "models/sequifier-films-best.onnx")
