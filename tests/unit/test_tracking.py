"""tracking: mlflow against a real local MLflow store (SQLite), read back with MlflowClient.

Creating a SQLite store runs MLflow's migrations (about 3 s), so one empty store is made
per session and copied into each test's project, where the run finds it as its default
store (outputs/mlflow/mlflow.db).
"""

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
from helpers.train_data import make_config, make_project

pytest.importorskip("mlflow")

from sequifier.errors import SequifierError  # noqa: E402
from sequifier.project import TRACKING_DB, TRACKING_STORE  # noqa: E402
from sequifier.train import tracking  # noqa: E402
from sequifier.train.run import run_train  # noqa: E402


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("store") / TRACKING_DB)
    tracking._client(f"sqlite:///{path}").search_experiments()  # creates the tables
    return path


def project_with_store(folder, empty_store) -> str:
    root = make_project(folder / "project")
    os.makedirs(os.path.join(root, TRACKING_STORE))
    shutil.copy(empty_store, os.path.join(root, TRACKING_STORE, TRACKING_DB))
    return root


@pytest.fixture
def project(tmp_path, empty_store, monkeypatch):
    monkeypatch.delenv(tracking.URI_ENV, raising=False)
    return project_with_store(tmp_path, empty_store)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, empty_store):
    """A project whose model trained 2 epochs with tracking: mlflow and was exported."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(tracking.URI_ENV, raising=False)
        root = project_with_store(tmp_path_factory.mktemp("trained"), empty_store)
        return root, run_train(make_config(root, tracking="mlflow"))


def client_of(result):
    return tracking._client(result.tracking["mlflow_tracking_uri"])


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def artifacts(client, run_id, path=None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_a_train_run_is_an_mlflow_run_with_params_histories_tags_and_artifacts(trained):
    project, result = trained
    client = client_of(result)
    run = client.get_run(result.tracking["mlflow_run_id"])
    assert result.tracking["mlflow_tracking_uri"] == "sqlite:///" + os.path.join(project, TRACKING_STORE, TRACKING_DB)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "project"  # the project folder's name
    # the composed config, flattened
    params = run.data.params
    assert params["training_spec.learning_rate"] == "0.01" and params["model_spec.dim_model"] == "16"
    assert params["training_spec.criterion.itemId"] == "CrossEntropyLoss"
    assert params["target_columns"] == '["itemId", "itemValue"]' and params["tracking"] == "mlflow"
    # per-epoch histories with the epoch as step, equal to the run's own history
    assert history(client, run.info.run_id, "epoch/validation_loss") == [(r.epoch, r.val_loss) for r in result.history]
    assert [s for s, _ in history(client, run.info.run_id, "epoch/validation/ndcg_at_10/itemId")] == [1, 2]
    assert [v for _, v in history(client, run.info.run_id, "epoch/validation/mae/itemValue")] == [
        r.val_metrics["itemValue"]["mae"] for r in result.history]
    assert history(client, run.info.run_id, "epoch/baseline/unigram/accuracy/itemId")[0][1] == \
        result.baselines["itemId"]["unigram"]["accuracy"]
    # windowed training loss, learning rate and gradient norm with the optimizer step (10 batches / epoch)
    assert [s for s, _ in history(client, run.info.run_id, "train/grad_norm")] == [5, 10, 15, 20]
    assert [s for s, _ in history(client, run.info.run_id, "train/learning_rate")] == [5, 10, 15, 20]
    tags = run.data.tags
    assert tags["sequifier.model_name"] == "tiny" and tags["sequifier.resumed"] == "false"
    assert len(tags["sequifier.dataset_fingerprint"]) == 32
    # artifacts: summary JSON (naming the run), config, curves, the best model with its signature
    files = artifacts(client, run.info.run_id)
    assert set(files) >= {"tiny-summary.json", "config.yaml", "curves.png", "model/sequifier-tiny-best.onnx",
                          "model/sequifier-tiny-best-signature.json"}
    signature = json.load(open(client.download_artifacts(run.info.run_id, "model/sequifier-tiny-best-signature.json")))
    assert [i["name"] for i in signature["inputs"]] == ["itemId", "itemValue"]
    assert signature["inputs"][0]["type"] == "int64" and isinstance(signature["inputs"][0]["shape"][0], str)
    summary = json.load(open(result.summary_path))
    assert summary["tracking"] == result.tracking


def evaluate_config(root, model_path, **changes):
    from sequifier.config.schema import EvaluateConfig

    return EvaluateConfig(project_root=root, model_path=model_path,
                          metadata_config_path="configs/metadata_configs/tiny.json", **{"tracking": "mlflow", **changes})


def test_evaluate_logs_its_scores_to_the_models_training_run(trained, monkeypatch):
    from sequifier.infer.evaluate import run_evaluate

    monkeypatch.delenv(tracking.URI_ENV, raising=False)
    project, result = trained
    written = run_evaluate(evaluate_config(project, "models/sequifier-tiny-best.onnx"))
    report = json.load(open(written[0]))
    client = client_of(result)
    run = client.get_run(result.tracking["mlflow_run_id"])
    model = report["targets"]["itemId"]["model"]
    assert run.data.metrics["evaluate/split1/accuracy/itemId"] == model["accuracy"]
    assert run.data.metrics["evaluate/split1/ndcg_at_10/itemId"] == model["ndcg@10"]
    assert run.data.metrics["evaluate/split1/baseline/unigram/accuracy/itemId"] == \
        report["targets"]["itemId"]["baselines"]["unigram"]["accuracy"]
    assert run.data.metrics["evaluate/split1/mae/itemValue"] == report["targets"]["itemValue"]["model"]["mae"]
    assert run.data.tags["sequifier.evaluated.split1"].endswith("models/sequifier-tiny-best.onnx")
    assert set(artifacts(client, run.info.run_id, "evaluation")) == {
        "evaluation/split1/sequifier-tiny-best-split1-metrics.json",
        "evaluation/split1/sequifier-tiny-best-split1-metrics.md"}
    # a model the store has no training run of: a new run, tagged with the model
    shutil.copy(os.path.join(project, "models", "sequifier-tiny-best.onnx"),
                os.path.join(project, "models", "sequifier-untracked-best.onnx"))
    run_evaluate(evaluate_config(project, "models/sequifier-untracked-best.onnx"))
    runs = client.search_runs([run.info.experiment_id], filter_string="tags.`sequifier.evaluates_model` = 'untracked'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "evaluate/split1/accuracy/itemId" in runs[0].data.metrics
    assert client.get_run(run.info.run_id).data.tags["sequifier.model_name"] == "tiny"


def test_evaluate_refuses_bad_tracking_settings_before_writing(trained, monkeypatch):
    from sequifier.infer.evaluate import run_evaluate

    monkeypatch.delenv(tracking.URI_ENV, raising=False)
    project, _ = trained
    with pytest.raises(SequifierError, match=r"^tracking: 'neptune' is not a supported tracker"):
        run_evaluate(evaluate_config(project, "models/sequifier-tiny-best.onnx", tracking="neptune",
                                     data_path="data/tiny-split0.parquet"))
    assert not any("split0" in n for n in os.listdir(os.path.join(project, "outputs", "evaluation")))


def test_a_resumed_run_continues_the_same_mlflow_run(project):
    first = run_train(make_config(project, tracking="mlflow", **{"training_spec.epochs": 1}), export=False)
    second = run_train(make_config(project, tracking="mlflow", **{"training_spec.epochs": 2,
                                                                   "training_spec.learning_rate": 0.005}),
                       export=False)
    client = client_of(second)
    assert second.resumed_from is not None
    assert second.tracking["mlflow_run_id"] == first.tracking["mlflow_run_id"]
    assert len(client.search_runs([client.get_experiment_by_name("project").experiment_id])) == 1
    run = client.get_run(second.tracking["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert [s for s, _ in history(client, run.info.run_id, "epoch/validation_loss")] == [1, 2]
    assert run.data.tags["sequifier.resumed"] == "true"
    # params are fixed in MLflow: a setting changed on resume is a tag
    assert run.data.params["training_spec.learning_rate"] == "0.01"
    assert run.data.tags["sequifier.changed.training_spec.learning_rate"] == "0.01 -> 0.005"


@pytest.mark.slow
def test_the_uri_follows_mlflow_tracking_uri(project, tmp_path, empty_store, monkeypatch):
    store = tmp_path / "elsewhere.db"
    shutil.copy(empty_store, store)
    monkeypatch.setenv(tracking.URI_ENV, f"sqlite:///{store}")
    result = run_train(make_config(project, tracking="mlflow", tracking_experiment="exp one",
                                   **{"training_spec.epochs": 1}), export=False)
    assert result.tracking["mlflow_tracking_uri"] == f"sqlite:///{store}"
    assert tracking._client(f"sqlite:///{store}").get_experiment_by_name("exp one") is not None
    assert not os.path.exists(os.path.join(project, TRACKING_STORE, "artifacts"))


@pytest.mark.slow
def test_a_store_failing_mid_run_loses_none_of_the_runs_files(project, monkeypatch, caplog):
    started = tracking.TrackedRun.metrics

    def failing(self, values, step):  # the store goes away after the run started
        def refuse(*args, **kwargs):
            raise OSError("disk I/O error")

        self.client.log_batch = refuse
        self.client.set_terminated = refuse
        started(self, values, step)
        self.flush()

    monkeypatch.setattr(tracking.TrackedRun, "metrics", failing)
    with caplog.at_level(logging.WARNING):
        result = run_train(make_config(project, tracking="mlflow"))
    assert result.last_epoch == 2 and os.path.exists(result.summary_path) and os.path.exists(result.checkpoint_path)
    assert all(os.path.exists(p) for p in result.best_model_paths + result.last_model_paths)
    warnings = [r.getMessage() for r in caplog.records if "tracking: MLflow failed" in r.getMessage()]
    assert len(warnings) == 1 and "disk I/O error" in warnings[0] and "training and its files go on" in warnings[0]


@pytest.mark.parametrize("changes, field, fragment", [
    ({"tracking": "wandb"}, "tracking", "'wandb' is not a supported tracker; use tracking: mlflow"),
    ({"tracking": "mlflow", "tracking_uri": "http://127.0.0.1:9"}, "tracking_uri", "cannot reach the MLflow server"),
    ({"tracking": "mlflow", "tracking_uri": "sqlite:///configs/train.yaml/mlflow.db"}, "tracking_uri",
     "is a file, not a folder"),
    ({"tracking": "mlflow", "tracking_uri": "sqlite:///data"}, "tracking_uri", "is a folder; name the store's file"),
    ({"tracking": "mlflow", "tracking_uri": "mlruns"}, "tracking_uri", "is a folder store"),
    ({"tracking": "mlflow", "tracking_uri": "s3://bucket/x"}, "tracking_uri", "the scheme 's3' is not supported"),
    ({"tracking": "mlflow", "tracking_experiment": ""}, "tracking_experiment", "is refused by MLflow"),
    ({"tracking": "mlflow", "tracking_experiment": "x" * 501}, "tracking_experiment", "is refused by MLflow"),
    ({"tracking": "mlflow", "tracking_experiment": "a\nb"}, "tracking_experiment", "control character"),
    ({"tracking_uri": "sqlite:///x.db"}, "tracking_uri", "is set but tracking is off"),
])
def test_bad_tracking_settings_are_one_line_before_anything_is_written(project, changes, field, fragment):
    open(os.path.join(project, "configs", "train.yaml"), "w").close()
    before = sorted(os.listdir(project))
    with pytest.raises(SequifierError) as error:
        run_train(make_config(project, **changes))
    lines = str(error.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{field}: ") and fragment in lines[0]
    assert sorted(os.listdir(project)) == before
    assert os.listdir(os.path.join(project, TRACKING_STORE)) == [TRACKING_DB]


def test_mlflow_tracking_uri_is_named_when_it_is_the_bad_one(project, monkeypatch):
    monkeypatch.setenv(tracking.URI_ENV, "http://127.0.0.1:9")
    with pytest.raises(SequifierError, match=r"^MLFLOW_TRACKING_URI: cannot reach"):
        run_train(make_config(project, tracking="mlflow"))


def test_the_default_path_never_imports_mlflow():
    code = ("import sys; import sequifier.cli, sequifier.gate, sequifier.train.run, sequifier.train.rules, "
            "sequifier.infer.evaluate, sequifier.multirun; print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_metric_keys_mlflow_refuses_are_rewritten():
    assert tracking.metric_key("epoch/validation/hr@10/itemId") == "epoch/validation/hr_at_10/itemId"
    assert tracking.metric_key("epoch/validation/mae/Preis (€)") == "epoch/validation/mae/Preis ___"
    assert tracking.metric_key("größe.über/x-y:z") == "größe.über/x-y:z"


@pytest.mark.slow
def test_under_ddp_only_rank_0_logs_one_run(tmp_path, empty_store, monkeypatch):
    monkeypatch.delenv(tracking.URI_ENV, raising=False)
    root = project_with_store(tmp_path, empty_store)
    result = run_train(make_config(root, tracking="mlflow", **{"training_spec.distributed": True,
                                                                "training_spec.world_size": 2,
                                                                "training_spec.backend": "gloo"}), export=False)
    client = client_of(result)
    (run,) = client.search_runs([client.get_experiment_by_name("project").experiment_id])
    assert run.info.run_id == result.tracking["mlflow_run_id"] and run.info.status == "FINISHED"
    assert history(client, run.info.run_id, "epoch/validation_loss") == [(r.epoch, r.val_loss) for r in result.history]
