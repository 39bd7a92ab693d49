"""Hydra multirun: the runnable examples (grid, Optuna, joblib) on a tiny project.

Each sweep job trains one epoch of a tiny model; torch gets one thread per process so
the jobs don't fight over the two cores.
"""

import csv
import glob
import json
import os
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "multirun_examples")
BIN = os.path.dirname(sys.executable)


def run(args, cwd, check=True):
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
               OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def sweep_dir(project):
    (found,) = glob.glob(os.path.join(project, "outputs", "multirun", "train", "*", "*"))
    return found


def summary(project):
    with open(os.path.join(sweep_dir(project), "summary.csv")) as f:
        return list(csv.DictReader(f))


def test_grid_sweep_runs_four_separate_jobs_and_writes_a_summary(tmp_path):
    project = str(tmp_path / "grid")
    run(["bash", os.path.join(EXAMPLES, "grid", "run.sh"), project], cwd=str(tmp_path))
    rows = summary(project)
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    losses = [float(r["best_val_loss"]) for r in rows]
    assert losses == sorted(losses)
    names = {r["model_name"] for r in rows}
    assert len(names) == 4
    overrides = {r["overrides"] for r in rows}
    assert "model_spec.num_layers=2 training_spec.learning_rate=0.0003" in overrides
    for name in names:  # each job kept its own checkpoint, models and log
        assert len(glob.glob(os.path.join(project, "checkpoints", f"{name}-epoch-*.pt"))) == 1
        assert glob.glob(os.path.join(project, "models", f"sequifier-{name}-best-1*"))
        assert len(glob.glob(os.path.join(project, "logs", f"sequifier-{name}-*.txt"))) == 1
    assert len(glob.glob(os.path.join(sweep_dir(project), "*", ".hydra", "config.yaml"))) == 4
    # the job configs really differ: 2 layer counts reached the models
    with open(os.path.join(sweep_dir(project), "summary.md")) as f:
        assert f.read().startswith("| job | status | best_val_loss | itemId/cross_entropy | itemId/accuracy")
    # each row carries its job's best-epoch validation metrics, as its summary JSON has them
    for row in rows:
        with open(os.path.join(project, "logs", f"{row['model_name']}-summary.json")) as f:
            metrics = json.load(f)["metrics"]
        for name in ("accuracy", "top5_accuracy", "cross_entropy"):
            assert float(row[f"itemId/{name}"]) == pytest.approx(metrics["itemId"][name])
        for name in ("mae", "rmse"):
            assert float(row[f"itemValue/{name}"]) == pytest.approx(metrics["itemValue"][name])
    # the sweep's end drew the jobs' curves side by side; `sequifier plot` draws them again
    picture = os.path.join(sweep_dir(project), "curves.png")
    with open(picture, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    os.remove(picture)
    proc = run(["sequifier", "plot", sweep_dir(project)], cwd=project)
    assert proc.stdout.strip() == f"wrote {picture}" and os.path.exists(picture)


def test_optuna_preset_minimises_the_validation_loss(tmp_path):
    project = str(tmp_path / "optuna")
    run(["bash", os.path.join(EXAMPLES, "optuna", "run.sh"), project, "hydra.sweeper.n_trials=2"],
        cwd=str(tmp_path))
    rows = summary(project)
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
    with open(os.path.join(sweep_dir(project), "optimization_results.yaml")) as f:
        best = yaml.safe_load(f)["best_value"]
    assert best == pytest.approx(min(float(r["best_val_loss"]) for r in rows))


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    project = str(tmp_path / "joblib")
    proc = run(["bash", os.path.join(EXAMPLES, "joblib_parallel", "run.sh"), project],
               cwd=str(tmp_path))
    assert "Joblib.Parallel" in proc.stdout + proc.stderr
    rows = summary(project)
    assert sorted(r["overrides"] for r in rows) == ["model_spec.num_layers=1",
                                                    "model_spec.num_layers=2"]
    assert all(r["status"] == "completed" for r in rows)


def test_a_failed_job_is_listed_and_the_others_kept(tmp_path):
    project = str(tmp_path / "fail")
    run([sys.executable, os.path.join(EXAMPLES, "make_tiny_project.py"), project], cwd=str(tmp_path))
    # n_head=3 does not divide dim_model=16: that job fails validation
    proc = run(["sequifier-train", "-m", "model_spec.n_head=2,3"], cwd=project, check=False)
    assert proc.returncode != 0
    rows = {r["overrides"]: r for r in summary(project)}
    assert rows["model_spec.n_head=2"]["status"] == "completed"
    assert rows["model_spec.n_head=3"]["status"] == "failed"
    assert "n_head" in rows["model_spec.n_head=3"]["error"]


def test_slurm_preset_composes(tmp_path):
    project = str(tmp_path / "slurm")
    run([sys.executable, os.path.join(EXAMPLES, "make_tiny_project.py"), project], cwd=str(tmp_path))
    proc = run(["sequifier-train", "hydra/launcher=slurm", "--cfg", "hydra",
                "--package", "hydra.launcher"], cwd=project)
    launcher = yaml.safe_load(proc.stdout)
    launcher = launcher.get("hydra", launcher).get("launcher", launcher)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["gpus_per_node"] == 1 and launcher["timeout_min"] == 240
