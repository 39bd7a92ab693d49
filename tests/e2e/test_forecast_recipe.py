"""The README's "forecast tomorrow from known calendar and weather" recipe, run as written
through the real CLI on a fresh `sequifier make` project (a small, messy half-hourly
table: text region ids with unicode, temperature gaps, tomorrow's rows with demand empty)."""

import os
import shlex
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from sequifier.make import make_project

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
# the recipe's commands with a tiny model (the README's defaults would train for minutes)
SMALL = {"train": ["model_spec.dim_model=16", "model_spec.n_head=2", "model_spec.num_layers=1",
                   "model_spec.dim_feedforward=32", "training_spec.epochs=1", "training_spec.batch_size=16"]}


def sequifier(project, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "sequifier"), *args], cwd=project,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"sequifier {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


def recipe_commands():
    with open(os.path.join(ROOT, "README.md")) as f:
        block = f.read().split("## Forecast tomorrow")[1].split("```bash")[1].split("```")[0]
    return [shlex.split(command)[1:] for command in block.replace("\\\n", " ").splitlines() if command.strip()]


def demand_table(days=12, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for region, base in (("north", 30.0), ("süd-ost", 22.0)):
        t = pd.date_range("2024-03-01", periods=(days + 1) * 48, freq="30min")
        half_hour = np.asarray(t.hour * 2 + t.minute // 30)
        temperature = 12 + 6 * np.sin(2 * np.pi * (half_hour - 18) / 48) + rng.normal(0, 1, len(t))
        demand = base + 5 * np.sin(2 * np.pi * (half_hour - 14) / 48) + 0.1 * (temperature - 15) ** 2
        frame = pd.DataFrame({"timestamp": t, "region": region, "demand_gw": demand.round(3),
                              "temperature_c": temperature.round(2)})
        frame.loc[days * 48:, "demand_gw"] = np.nan  # tomorrow: to forecast
        frame.loc[rng.choice(days * 48, 10, replace=False), "temperature_c"] = np.nan
        parts.append(frame)
    return pd.concat(parts).sample(frac=1.0, random_state=seed)


@pytest.mark.slow
def test_the_readme_forecast_recipe_writes_tomorrows_48_half_hours_per_region(tmp_path):
    project = str(tmp_path / "proj")
    make_project(project)
    table = demand_table()
    table.to_csv(os.path.join(project, "data", "demand.csv"), index=False)
    commands = recipe_commands()
    assert [c[0] for c in commands] == ["preprocess", "train", "infer"]
    for command in commands:
        sequifier(project, *command, *SMALL.get(command[0], []))
    out = pd.read_csv(os.path.join(project, "outputs", "predictions", "sequifier-demand-best-predictions.csv"))
    assert len(out) == 2 * 48 and sorted(set(out["region"])) == ["north", "süd-ost"]
    tomorrow = table[table["demand_gw"].isna()]
    assert sorted(zip(out["region"], pd.to_datetime(out["timestamp"]))) == \
        sorted(zip(tomorrow["region"], pd.to_datetime(tomorrow["timestamp"])))
    assert np.isfinite(out["demand_gw"]).all()
