"""A new user's session on a fresh `sequifier make` project, through the real CLI.

The table looks like real data (string item ids, an odd column name with unicode, sequences shorter
than a window); the configs are the templates, changed only where the user must
(shorter windows and two epochs, to keep the test quick).
"""

import glob
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from sequifier.make import make_project

BIN = os.path.dirname(sys.executable)


def sequifier(project, *args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    proc = subprocess.run([f"{BIN}/sequifier", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"sequifier {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def user_table(n_sequences=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sequences):
        length = int(rng.integers(4, 40))  # some shorter than a window
        item = int(rng.integers(0, 8))
        for position in range(length):
            item = (item + 1) % 8 if rng.random() < 0.8 else int(rng.integers(0, 8))
            rows.append((1000 + 7 * s, position * 10, f"prod_{item}", f"grp {item % 3}"))
    return pd.DataFrame(rows, columns=["sequenceId", "itemPosition", "itemId", "Gruppe ü"])


def edit(path, old, new):
    with open(path) as f:
        text = f.read()
    assert old in text, (path, old)
    with open(path, "w") as f:
        f.write(text.replace(old, new))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("journey") / "proj")
    make_project(root)
    user_table().to_csv(os.path.join(root, "data", "data.csv"), index=False)
    # train and infer take seq_length from the metadata, and the embedding width follows dim_model
    edit(os.path.join(root, "configs", "preprocess.yaml"), "seq_length: 48", "seq_length: 8")
    train_yaml = os.path.join(root, "configs", "train.yaml")
    edit(train_yaml, "epochs: 10", "epochs: 2")
    edit(train_yaml, "dim_model: 64", "dim_model: 16")
    edit(train_yaml, "dim_feedforward: 128", "dim_feedforward: 32")
    sequifier(root, "preprocess")
    sequifier(root, "train")
    return root


def test_template_infer_config_runs_after_every_training(project):
    sequifier(project, "infer")
    predictions = os.path.join(project, "outputs", "predictions", "sequifier-my-model-best-predictions.csv")
    first = pd.read_csv(predictions)
    assert len(first) > 0
    # training on (resumed, two more epochs) replaces the best model under the same name
    sequifier(project, "train", "training_spec.epochs=4")
    models = sorted(os.listdir(os.path.join(project, "models")))
    assert "sequifier-my-model-best.onnx" in models and "sequifier-my-model-last.onnx" in models
    assert "sequifier-my-model-last-4.onnx" in models and "sequifier-my-model-last-2.onnx" not in models
    sequifier(project, "infer", "overwrite=true")
    assert len(pd.read_csv(predictions)) == len(first)


def readme_train_examples():
    """The `sequifier-train` lines of the README's configuration block (not the sweep)."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "README.md")) as f:
        block = f.read().split("## Configuration")[1].split("```bash")[1].split("```")[0]
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("sequifier-train ") and " -m " not in line]


def test_readme_preset_examples_run_as_written(project):
    examples = readme_train_examples()
    assert len(examples) == 3
    for args in examples:  # after the first training of my-model, as a user would run them
        sequifier(project, "train", *args)
    proc = sequifier(project, "train", "--cfg", "job", "+optimizer=sgd", "model_name=presets")
    assert "weight_decay" not in proc.stdout.split("optimizer:")[1].split("scheduler:")[0]


def test_resume_logs_a_changed_lr_and_refuses_a_changed_architecture(project):
    proc = sequifier(project, "train", "training_spec.lr=0.0005", "training_spec.epochs=5")
    # 0.003: the template's learning rate
    assert "changed since the checkpoint, applied: training_spec.learning_rate: 0.003 -> 0.0005" in proc.stdout
    proc = sequifier(project, "train", "model_spec.dim_model=32", "model_spec.initial_embedding_dim=32", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "model_spec.dim_model: 16 -> 32" in lines[0] and "model_name=NEW_NAME" in lines[0]


def test_every_hydra_run_folder_holds_a_non_empty_command_log(project):
    runs = glob.glob(os.path.join(project, "outputs", "runs", "*", "*", "*"))
    assert {os.path.basename(os.path.dirname(os.path.dirname(r))) for r in runs} >= {"preprocess", "train", "infer"}
    for run in runs:
        command = os.path.basename(os.path.dirname(os.path.dirname(run)))
        log = os.path.join(run, f"{command}.log")
        if command == "train" and not os.path.exists(log):
            continue  # `--cfg job` prints the config and starts no job
        assert os.path.getsize(log) > 0, log


LOG_LINE = r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[[\w.]+\]\[(INFO|WARNING|ERROR)\] - "


def test_every_command_logs_its_progress_in_one_format(project):
    sequifier(project, "evaluate")
    progress = {"preprocess": r"\[sequifier.preprocess\]\[INFO\] - read files: 1/1 .*\n.*- wrote \w+ windows",
                "train": r"\[sequifier.train\]\[INFO\] - epoch 1/",
                "infer": r"\[sequifier.infer.run\]\[INFO\] - wrote ",
                "evaluate": r"\[sequifier.infer.evaluate\]\[INFO\] - wrote "}
    for command, pattern in progress.items():
        logs = sorted(glob.glob(os.path.join(project, "outputs", "runs", command, "*", "*", f"{command}.log")))
        with open(logs[0]) as f:
            text = f.read()
        assert re.match(LOG_LINE, text) and re.search(pattern, text, re.DOTALL), (command, text)
    # a refused run's error line is in its run folder's log, in the same format
    errors = [line for path in glob.glob(os.path.join(project, "outputs", "runs", "train", "*", "*", "train.log"))
              for line in open(path) if "sequifier: error:" in line]
    assert errors and all(re.match(LOG_LINE.replace("(INFO|WARNING|ERROR)", "ERROR") + "sequifier: error: ", e)
                          for e in errors), errors
