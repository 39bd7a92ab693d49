"""Runs never mix: one training run per model_name; a killed run's lock is taken over."""

import os
import subprocess
import sys

import pytest

from sequifier.errors import SequifierError
from sequifier.run_lock import lock_path, model_lock


def test_a_second_run_of_the_same_model_refuses_naming_the_holder(tmp_path):
    with model_lock(str(tmp_path), "m"):
        with pytest.raises(SequifierError, match=rf"in progress \(pid {os.getpid()} on ") as e:
            with model_lock(str(tmp_path), "m"):
                pass
        assert "\n" not in str(e.value)
        with model_lock(str(tmp_path), "other"):  # another model_name runs freely
            pass


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    code = ("import os, sys\nfrom sequifier.run_lock import model_lock\n"
            "with model_lock(sys.argv[1], 'm'):\n    os.kill(os.getpid(), 9)\n")
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == -9
    assert os.path.getsize(lock_path(str(tmp_path), "m")) > 0  # the killed holder's record
    with model_lock(str(tmp_path), "m"):
        pass


def test_train_holds_the_lock(tmp_path, monkeypatch):
    from helpers.train_data import make_config, make_project

    from sequifier.train import run as run_module

    root = make_project(tmp_path)
    seen = []
    original = run_module._run_train

    def probe(cfg, export, *rest):
        with pytest.raises(SequifierError, match="in progress"):
            with model_lock(os.path.join(root, "checkpoints"), cfg.model_name):
                pass
        seen.append(True)
        return original(cfg, export, *rest)

    monkeypatch.setattr(run_module, "_run_train", probe)
    run_module.run_train(make_config(root, **{"training_spec.epochs": 1}), export=False)
    assert seen == [True]


def test_a_repeated_sweep_into_the_same_folder_gets_new_model_names(tmp_path):
    """A fixed hydra.sweep.dir used twice: the second sweep's jobs must not take the first
    sweep's model names (they would resume its checkpoints and be credited its results)."""
    from sequifier.multirun import start_sweep, tagged_model_name

    folder = str(tmp_path / "multirun" / "fixed")
    start_sweep(folder)
    first = tagged_model_name("m", folder, 0)
    start_sweep(folder)
    second = tagged_model_name("m", folder, 0)
    assert first == "m-multirun_fixed-0" and second == "m-multirun_fixed-r2-0"


def _end_job(sweep_dir: str, num: int, loss: float) -> None:
    """What Hydra calls when job `num` of a sweep into `sweep_dir` ends."""
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from sequifier.multirun import SweepSummary

    output_dir = os.path.join(sweep_dir, str(num))
    os.makedirs(output_dir, exist_ok=True)
    config = OmegaConf.create({
        "model_name": "m", "project_root": os.path.dirname(sweep_dir),
        "hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": sweep_dir},
                  "job": {"num": num}, "runtime": {"output_dir": output_dir},
                  "overrides": {"task": [f"training_spec.learning_rate={loss}"]}}})
    job_return = JobReturn()
    job_return.status, job_return.return_value = JobStatus.COMPLETED, loss
    SweepSummary().on_job_end(config, job_return)


def sweep_config(folder: str):
    from omegaconf import OmegaConf

    return OmegaConf.create({"hydra": {"sweep": {"dir": folder}}})


def test_a_repeated_sweep_summarises_only_its_own_jobs(tmp_path):
    """The second sweep into a folder runs fewer jobs: job folders it does not overwrite
    still hold the first sweep's results, which must not reach its summary."""
    from sequifier.multirun import SweepSummary
    from sequifier.project import read_results

    folder = str(tmp_path / "multirun" / "fixed")
    os.makedirs(folder)
    SweepSummary().on_multirun_start(sweep_config(folder))
    for num, loss in enumerate((0.5, 0.1, 0.2)):
        _end_job(folder, num, loss)
    assert [r["job"] for r in read_results(folder)] == [1, 2, 0]
    SweepSummary().on_multirun_start(sweep_config(folder))
    _end_job(folder, 0, 0.3)
    rows = read_results(folder)
    assert [(r["job"], r["model_name"]) for r in rows] == [(0, "m-multirun_fixed-r2-0")]
    with open(os.path.join(folder, "summary.csv")) as f:
        lines = f.read().splitlines()
    assert len(lines) == 2 and "learning_rate=0.3" in lines[1]


def test_preprocess_holds_the_lock_of_its_dataset(tmp_path, monkeypatch):
    """A second preprocess of one dataset_name would delete the first's work folder."""
    from helpers.preprocess_data import config, long_table, write_input

    from sequifier.data import preprocess
    from sequifier.run_lock import dataset_lock

    path = write_input(long_table(), tmp_path / "data" / "items.csv")
    seen = []
    original = preprocess._preprocess

    def probe(plan, cfg):
        with pytest.raises(SequifierError, match=r"dataset_name 'items': another preprocess run of this "
                                                 r"dataset is in progress \(pid "):
            with dataset_lock(os.path.dirname(plan.work_dir), "items"):
                pass
        seen.append(True)
        return original(plan, cfg)

    monkeypatch.setattr(preprocess, "_preprocess", probe)
    preprocess.run_preprocess(config(tmp_path, path))
    assert seen == [True]
    assert not [n for n in os.listdir(tmp_path / "data") if n.endswith(".lock")]  # released and removed
