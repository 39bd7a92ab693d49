"""A tracked sweep through the CLI: one MLflow parent run, one child per job, read back
with MlflowClient from the project's own store (outputs/mlflow/mlflow.db)."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("mlflow")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def run(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PATH=BIN + os.pathsep + os.environ.get("PATH", ""), OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def project(tmp_path):
    root = str(tmp_path / "sweep")
    subprocess.run([sys.executable, os.path.join(REPO, "multirun_examples", "make_tiny_project.py"), root],
                   check=True, capture_output=True)
    return root


def sweep_runs(project):
    from sequifier.train import tracking

    client = tracking._client(f"sqlite:///{os.path.join(project, 'outputs', 'mlflow', 'mlflow.db')}")
    experiment = client.get_experiment_by_name("sweep")
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`sequifier.sweep_of` = 'tiny'")
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return client, parent, sorted(children, key=lambda r: int(r.data.tags["sequifier.sweep_job"]))


def check_sweep(project, overrides):
    client, parent, children = sweep_runs(project)
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"summary.md", "summary.csv", "curves.png"}
    assert [c.data.tags["sequifier.overrides"] for c in children] == [f"{o} tracking=mlflow" for o in overrides]
    assert all(c.info.status == "FINISHED" and c.info.run_name.startswith("tiny-") for c in children)
    assert len({c.info.run_name for c in children}) == len(overrides)
    assert parent.data.metrics["best_val_loss"] == min(c.data.metrics["epoch/validation_loss"] for c in children)
    return children


def test_a_sweep_is_a_parent_run_with_one_child_per_job(project):
    proc = run(["sequifier-train", "-m", "training_spec.learning_rate=0.01,0.02", "tracking=mlflow"], cwd=project)
    assert proc.returncode == 0, proc.stderr
    children = check_sweep(project, ["training_spec.learning_rate=0.01", "training_spec.learning_rate=0.02"])
    assert [c.data.params["training_spec.learning_rate"] for c in children] == ["0.01", "0.02"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["hydra/launcher=local_parallel", "hydra/launcher=submitit_local"])
def test_jobs_in_other_processes_are_children_too(project, launcher):
    proc = run(["sequifier-train", "-m", launcher, "model_spec.num_layers=1,2", "tracking=mlflow"], cwd=project)
    assert proc.returncode == 0, proc.stderr
    check_sweep(project, ["model_spec.num_layers=1", "model_spec.num_layers=2"])


@pytest.mark.slow
def test_an_optuna_search_is_a_parent_run_with_its_trials_as_children(project):
    proc = run(["sequifier-train", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "tracking=mlflow"],
               cwd=project)
    assert proc.returncode == 0, proc.stderr
    _, parent, children = sweep_runs(project)
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)


@pytest.mark.slow
def test_a_bad_store_stops_the_sweep_with_one_line_before_any_file(project):
    proc = run(["sequifier-train", "-m", "training_spec.learning_rate=0.01,0.02", "tracking=mlflow",
                "tracking_uri=http://127.0.0.1:9"], cwd=project)
    assert proc.returncode == 1
    # Hydra names the failed job ("Error executing job with overrides: ..."), then sequifier's line
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("sequifier: error:")]
    assert len(lines) == 1 and lines[0].startswith("sequifier: error: tracking_uri: cannot reach"), proc.stderr
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(os.path.join(project, "checkpoints"))
