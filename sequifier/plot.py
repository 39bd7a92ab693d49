"""`sequifier plot`: PNG pictures of a run's curves, or of a sweep's jobs side by side.

For users who will not start a TensorBoard server. The data comes from what training
already writes, never from console text:

* a run: the per-epoch history in `logs/NAME-summary.json` (written at the end of the
  run), or, while it still trains or after it was killed, the history in its latest
  checkpoint; the baselines (summary only) are drawn as dashed lines beside each metric.
* a sweep: its folder's `job_result.json` files (sequifier/project.py) name each job's
  model and overrides; each job's curves come from its summary.

The curves are first built as plain data (`Panel`s of `Curve`s), then drawn with
matplotlib's Agg backend (no display needed). matplotlib is an optional dependency
(`pip install 'sequifier[plot]'`; `make install` includes it).
"""

import glob
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from sequifier.errors import SequifierError
from sequifier.io_utils import atomic_path
from sequifier.project import (
    CHECKPOINTS,
    LOGS,
    SWEEP_PICTURE,
    folder,
    is_sweep,
    read_results,
    sweep_folders,
)

CURVES_SUFFIX = "-curves.png"


@dataclass
class Curve:
    label: str
    epochs: list[int]
    values: list[float]
    baseline: bool = False  # a value without a model (drawn dashed, constant over the epochs)


@dataclass
class Panel:
    title: str
    curves: list[Curve] = field(default_factory=list)
    log_scale: bool = False


@dataclass
class Picture:
    title: str
    panels: list[Panel]
    best_epoch: int | None = None  # marked in every panel of a run's picture
    shared_legend: bool = False  # one legend under the panels (a sweep's jobs), not one per panel


# ---------------------------------------------------------------- the curves, as data


def metric_names(history: list[dict]) -> list[tuple[str, str]]:
    """(target, metric) pairs of the validation metrics, in order of first appearance."""
    names: dict[tuple[str, str], None] = {}
    for record in history:
        for target, values in (record.get("val_metrics") or {}).items():
            names.update(dict.fromkeys((target, m) for m in values if m != "count"))
    return list(names)


def _series(history: list[dict], read) -> tuple[list[int], list[float]]:
    """(epochs, values) of the records where `read(record)` gives a value."""
    pairs = [(r["epoch"], read(r)) for r in history]
    pairs = [(e, float(v)) for e, v in pairs if v is not None]
    return [e for e, _ in pairs], [v for _, v in pairs]


def _metric(target: str, name: str):
    return lambda r: (r.get("val_metrics") or {}).get(target, {}).get(name)


def run_picture(summary: dict[str, Any]) -> Picture:
    """A run's panels: losses, learning rate, and each target's validation metrics next to
    the baselines. `summary`: the run summary's keys `model_name`, `history` and, if
    known, `best_epoch` and `baselines`."""
    history = summary.get("history") or []
    epochs = [r["epoch"] for r in history]
    loss = Panel("loss", [Curve("train", *_series(history, lambda r: r["train_loss"])),
                          Curve("validation", *_series(history, lambda r: r["val_loss"]))])
    targets = sorted({t for r in history for t in r.get("val_losses") or {}})
    if len(targets) > 1:
        loss.curves += [Curve(f"validation {t}", *_series(history, lambda r, t=t: r["val_losses"].get(t)))
                        for t in targets]
    panels = [loss, Panel("learning rate", [Curve("learning rate", *_series(history, lambda r: r["learning_rate"]))],
                          log_scale=True)]
    baselines = summary.get("baselines") or {}
    for target, name in metric_names(history):
        panel = Panel(f"{target} {name} (validation)", [Curve("model", *_series(history, _metric(target, name)))])
        for baseline, values in baselines.get(target, {}).items():
            if values.get(name) is not None and epochs:
                panel.curves.append(Curve(baseline, [epochs[0], epochs[-1]], [values[name]] * 2, baseline=True))
        panels.append(panel)
    return Picture(f"{summary['model_name']}: {len(history)} epochs", panels, summary.get("best_epoch") or None)


def sweep_picture(sweep_dir: str, jobs: list[tuple[str, dict[str, Any]]]) -> Picture:
    """The jobs of a sweep side by side: validation loss and each validation metric, one
    curve per job. `jobs`: (label, run summary) of each job that has a history."""
    panels = [Panel("validation loss", [Curve(label, *_series(s["history"], lambda r: r["val_loss"]))
                                        for label, s in jobs])]
    names: dict[tuple[str, str], None] = {}
    for _, summary in jobs:
        names.update(dict.fromkeys(metric_names(summary["history"])))
    for target, name in names:
        panels.append(Panel(f"{target} {name} (validation)",
                            [Curve(label, *_series(s["history"], _metric(target, name))) for label, s in jobs]))
    where = "/".join(os.path.normpath(sweep_dir).split(os.sep)[-2:])
    return Picture(f"sweep {where}: {len(jobs)} jobs", panels, shared_legend=True)


# ---------------------------------------------------------------- finding the data


def run_summary(project_root: str, model_name: str) -> dict[str, Any] | None:
    """The run's summary with its history, or (still training, killed) its latest
    checkpoint's history; None when the run left neither."""
    from sequifier.train.checkpoint import latest_checkpoint, load_checkpoint
    from sequifier.train.summary import read_summary, summary_path

    summary = read_summary(summary_path(folder(project_root, LOGS), model_name))
    if summary is not None and summary.get("history"):
        return summary
    checkpoint = latest_checkpoint(folder(project_root, CHECKPOINTS), model_name)
    if checkpoint is None:
        return summary
    state = load_checkpoint(checkpoint)["state"]
    return {"model_name": model_name, "history": state["history"], "best_epoch": state["best_epoch"],
            "baselines": (summary or {}).get("baselines", {})}


def run_files(project_root: str) -> list[tuple[float, str]]:
    """(modification time, model name) of every run summary and checkpoint in `project_root`."""
    from sequifier.train.summary import SUMMARY_SUFFIX

    def found(name: str, pattern: str, name_of) -> list[tuple[float, str]]:
        paths = glob.glob(os.path.join(glob.escape(folder(project_root, name)), pattern))
        return [(os.path.getmtime(p), name_of(os.path.basename(p))) for p in paths]

    return (found(LOGS, f"*{SUMMARY_SUFFIX}", lambda f: f[: -len(SUMMARY_SUFFIX)])
            + found(CHECKPOINTS, "*-epoch-*.pt", lambda f: f.split("-epoch-")[0]))


def known_runs(project_root: str) -> list[str]:
    """Model names that have a summary or a checkpoint in `project_root`."""
    return sorted({name for _, name in run_files(project_root)})


def known_sweeps(project_root: str) -> list[str]:
    """Sweep folders of `sequifier train -m` under `project_root` (project.SWEEPS)."""
    return sweep_folders(project_root)


def sweep_jobs(sweep_dir: str, project_root: str) -> tuple[list[tuple[str, dict]], list[str]]:
    """([(label, summary)] of the jobs with curves, [notes on jobs without])."""
    rows = sorted(read_results(sweep_dir), key=lambda r: r.get("job", 0))
    # overrides every job shares say nothing about the differences between them
    overrides = [(row.get("overrides") or "").split() for row in rows]
    shared = set.intersection(*map(set, overrides)) if len(rows) > 1 else set()
    jobs, notes = [], []
    for row, job_overrides in zip(rows, overrides):
        differing = " ".join(o for o in job_overrides if o not in shared)
        label = f"job {row.get('job')}" + (f": {differing}" if differing else "")
        summary = None
        if row.get("status") == "completed" and isinstance(row.get("model_name"), str):
            summary = run_summary(row.get("project_root") or project_root, row["model_name"])
        if summary and summary.get("history"):
            jobs.append((label, summary))
        else:
            notes.append(f"{label} ({row.get('status')}, no curves)")
    return jobs, notes


# ---------------------------------------------------------------- drawing


def require_matplotlib():
    """matplotlib.pyplot on the Agg backend, or the one-line error that says how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise SequifierError("plotting needs matplotlib, which is not installed: pip install "
                             "'sequifier[plot]' (make install includes it)") from None
    matplotlib.use("Agg")  # files only; no display is needed or opened
    import matplotlib.pyplot as plt

    return plt


def draw(picture: Picture, path: str) -> str:
    """Draw `picture` into the PNG `path` (written to a temporary name, then renamed)."""
    plt = require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    columns = min(3, len(picture.panels))
    rows = -(-len(picture.panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.8 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, picture.panels):
        for curve in panel.curves:
            ax.plot(curve.epochs, curve.values, linestyle="--" if curve.baseline else "-",
                    marker=None if curve.baseline or len(curve.epochs) > 30 else ".", label=curve.label)
        if picture.best_epoch:
            ax.axvline(picture.best_epoch, color="grey", linestyle=":", linewidth=1)
        if panel.log_scale and all(v > 0 for c in panel.curves for v in c.values):
            ax.set_yscale("log")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not picture.shared_legend:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(picture.panels):]:
        ax.set_visible(False)
    title = picture.title + (f" (dotted line: best epoch {picture.best_epoch})" if picture.best_epoch else "")
    figure.suptitle(title)
    legend_height = 0.0
    if picture.shared_legend:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        columns_of_legend = min(3, len(labels))
        legend_height = 0.03 * (-(-len(labels) // columns_of_legend)) / rows + 0.02
        figure.legend(handles, labels, loc="lower center", ncol=columns_of_legend, fontsize=8)
    with warnings.catch_warnings():
        # a sweep's long shared legend can leave tight_layout no room; the default layout
        # is still readable, so the user does not need matplotlib's warning on stderr
        warnings.filterwarnings("ignore", message="Tight layout not applied")
        figure.tight_layout(rect=(0, legend_height, 1, 1))
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return path


# ---------------------------------------------------------------- the command


def plot_run(project_root: str, model_name: str) -> str:
    """Write `logs/NAME-curves.png` of a run; its path."""
    summary = run_summary(project_root, model_name)
    if summary is None or not summary.get("history"):
        raise SequifierError(no_run_message(project_root, f"no trained epoch of run '{model_name}'"))
    return draw(run_picture(summary), os.path.join(folder(project_root, LOGS), model_name + CURVES_SUFFIX))


def plot_sweep(sweep_dir: str, project_root: str) -> tuple[str, list[str]]:
    """Write `SWEEP/curves.png` comparing the sweep's jobs; (its path, notes on jobs left out)."""
    jobs, notes = sweep_jobs(sweep_dir, project_root)
    if not jobs:
        raise SequifierError(f"sweep '{sweep_dir}' has no finished job with curves yet"
                             + (f" ({'; '.join(notes)})" if notes else ""))
    return draw(sweep_picture(sweep_dir, jobs), os.path.join(sweep_dir, SWEEP_PICTURE)), notes


def latest_run(project_root: str) -> str | None:
    """The model name of the most recently written summary or checkpoint."""
    files = run_files(project_root)
    return max(files)[1] if files else None


def no_run_message(project_root: str, what: str) -> str:
    runs, sweeps = known_runs(project_root), known_sweeps(project_root)
    found = (f"runs: {', '.join(runs)}" if runs else "no runs") + "; " + (
        f"sweeps: {', '.join(sweeps)}" if sweeps else "no sweeps")
    return (f"{what} in '{project_root}' ({found}); give a model name or a sweep folder, "
            "or run it from the project folder (--project-root DIR)")


def plot(target: str | None, project_root: str = ".") -> list[str]:
    """`sequifier plot [TARGET]`: a run's or a sweep's picture; the lines to print."""
    require_matplotlib()  # before looking for anything: the one thing every use needs
    if not os.path.isdir(project_root):
        raise SequifierError(f"--project-root: folder '{project_root}' not found")
    if target is not None and is_sweep(target):
        path, notes = plot_sweep(target, project_root)
        return [f"wrote {path}"] + [f"left out: {note}" for note in notes]
    name = target if target is not None else latest_run(project_root)
    if name is None:
        raise SequifierError(no_run_message(project_root, "no training run found"))
    if name not in known_runs(project_root):
        raise SequifierError(no_run_message(project_root, f"no run or sweep '{name}'"))
    return [f"wrote {plot_run(project_root, name)}"]
