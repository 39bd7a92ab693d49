"""`sequifier plot`: the curves of a run and of a sweep, as data and as PNG files."""

import json
import os
import sys

import pytest
from helpers.train_data import make_config, make_project

from sequifier import cli, plot
from sequifier.errors import SequifierError
from sequifier.multirun import start_sweep
from sequifier.project import RESULT_FILE
from sequifier.train.run import run_train

pytestmark = pytest.mark.usefixtures("single_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project with two finished runs of three and two epochs."""
    root = make_project(tmp_path_factory.mktemp("plot"))
    results = {name: run_train(make_config(root, model_name=name, **{"training_spec.epochs": epochs}), export=False)
               for name, epochs in (("first", 3), ("second", 2))}
    return root, results


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def test_run_picture_has_the_losses_learning_rate_and_each_metric_beside_its_baselines(trained):
    root, results = trained
    summary = plot.run_summary(root, "first")
    picture = plot.run_picture(summary)
    panels = {p.title: p for p in picture.panels}
    loss = panels["loss"]
    assert [c.label for c in loss.curves] == ["train", "validation", "validation itemId", "validation itemValue"]
    history = results["first"].history
    assert loss.curves[0].epochs == [1, 2, 3]
    assert loss.curves[1].values == pytest.approx([r.val_loss for r in history])
    assert panels["learning rate"].curves[0].values == pytest.approx([r.learning_rate for r in history])
    metrics = [(t, m) for t, values in history[-1].val_metrics.items() for m in values if m != "count"]
    assert len(picture.panels) == 2 + len(metrics)
    accuracy = panels["itemId accuracy (validation)"]
    assert accuracy.curves[0].values == pytest.approx([r.val_metrics["itemId"]["accuracy"] for r in history])
    baselines = results["first"].baselines["itemId"]
    assert {c.label for c in accuracy.curves if c.baseline} == set(baselines)
    assert picture.best_epoch == results["first"].best_epoch


def test_plot_writes_the_run_png_next_to_its_summary(trained):
    root, _ = trained
    lines = plot.plot("first", root)
    path = os.path.join(root, "logs", "first-curves.png")
    assert lines == [f"wrote {path}"] and is_png(path)


def test_without_a_name_the_latest_run_is_drawn(trained):
    root, _ = trained
    os.utime(os.path.join(root, "logs", "second-summary.json"))  # the newest
    assert plot.plot(None, root) == [f"wrote {os.path.join(root, 'logs', 'second-curves.png')}"]


def test_a_run_without_summary_is_drawn_from_its_latest_checkpoint(tmp_path):
    """A run still training (or killed) has no summary yet; its checkpoint holds the history."""
    root = make_project(tmp_path)
    result = run_train(make_config(root, model_name="busy"), export=False)
    os.remove(result.summary_path)
    picture = plot.run_picture(plot.run_summary(root, "busy"))
    assert picture.panels[0].curves[1].values == pytest.approx([r.val_loss for r in result.history])
    assert is_png(plot.plot_run(root, "busy"))


def test_no_run_found_is_one_line_listing_what_exists(trained, tmp_path):
    root, _ = trained
    with pytest.raises(SequifierError) as e:
        plot.plot("nope", root)
    assert len(str(e.value).splitlines()) == 1
    assert "no run or sweep 'nope'" in str(e.value) and "runs: first, second" in str(e.value)
    with pytest.raises(SequifierError, match=r"no training run found .*\(no runs; no sweeps\)"):
        plot.plot(None, str(tmp_path))


def test_the_cli_prints_one_error_line(trained, capsys):
    root, _ = trained
    with pytest.raises(SystemExit) as e:
        cli.main(["plot", "nope", "--project-root", root])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1 and err[0].startswith("sequifier: error: no run or sweep 'nope'")


def test_missing_matplotlib_is_one_line_saying_how_to_install_it(trained, monkeypatch):
    root, _ = trained
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(SequifierError, match=r"needs matplotlib.*pip install 'sequifier\[plot\]'"):
        plot.plot("first", root)


def write_sweep(folder, root, jobs):
    """A sweep folder as SweepSummary leaves it: its sweep number, one job_result.json per job."""
    os.makedirs(folder)
    sweep = start_sweep(folder)
    for number, (model_name, status, overrides) in enumerate(jobs):
        os.makedirs(os.path.join(folder, str(number)))
        with open(os.path.join(folder, str(number), RESULT_FILE), "w") as f:
            json.dump({"sweep": sweep, "job": number, "status": status, "model_name": model_name,
                       "overrides": overrides, "best_val_loss": None, "project_root": root}, f)


def test_sweep_picture_compares_the_jobs(trained, tmp_path):
    root, results = trained
    sweep = str(tmp_path / "sweep")
    write_sweep(sweep, root, [("first", "completed", "training_spec.epochs=3 export_onnx=false"),
                              ("second", "completed", "training_spec.epochs=2 export_onnx=false"),
                              ("broken", "failed", "training_spec.lr=-1 export_onnx=false")])
    jobs, notes = plot.sweep_jobs(sweep, root)
    picture = plot.sweep_picture(sweep, jobs)
    loss = picture.panels[0]
    assert loss.title == "validation loss"
    # labelled by the overrides that differ between the jobs
    assert [c.label for c in loss.curves] == ["job 0: training_spec.epochs=3", "job 1: training_spec.epochs=2"]
    assert loss.curves[1].values == pytest.approx([r.val_loss for r in results["second"].history])
    assert all(len(p.curves) == 2 for p in picture.panels)
    assert notes == ["job 2: training_spec.lr=-1 (failed, no curves)"]
    lines = plot.plot(sweep, root)
    assert lines[0] == f"wrote {os.path.join(sweep, 'curves.png')}" and is_png(os.path.join(sweep, "curves.png"))
    assert lines[1] == "left out: job 2: training_spec.lr=-1 (failed, no curves)"


def test_a_sweep_without_finished_jobs_is_one_line(trained, tmp_path):
    root, _ = trained
    sweep = str(tmp_path / "sweep")
    write_sweep(sweep, root, [("broken", "failed", "training_spec.lr=-1")])
    with pytest.raises(SequifierError, match="has no finished job with curves yet"):
        plot.plot(sweep, root)
