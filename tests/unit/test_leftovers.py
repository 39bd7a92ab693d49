"""No leftovers: a failed command removes its work folders and temporaries, and a run that
finds those of a killed run (kill -9) removes them first and says so in one log line."""

import logging
import os
import subprocess
import sys

import pytest
from helpers.preprocess_data import config, expect_error, long_table, write_input
from helpers.train_data import make_project, train

from sequifier.data import preprocess
from sequifier.errors import SequifierError

pytestmark = pytest.mark.usefixtures("single_thread")


def dead_temporaries(folder, n=2):
    """Temporaries of a process that is gone (what kill -9 leaves)."""
    code = ("import sequifier.io_utils as io, os, sys\n"
            f"[io._make_file(sys.argv[1], '.pt') for _ in range({n})]; os._exit(0)")
    os.makedirs(folder, exist_ok=True)
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True)
    return sorted(os.listdir(folder))


def test_folder_preprocess_failing_on_a_data_error_leaves_no_work_folder(tmp_path):
    frame = long_table()
    write_input(frame[frame["sequenceId"] <= 2], tmp_path / "data" / "parts" / "a.csv")
    write_input(frame[frame["sequenceId"] >= 2], tmp_path / "data" / "parts" / "b.csv")
    expect_error(tmp_path, config(tmp_path, "data/parts"), "sequence id 2 appears in both")
    assert sorted(os.listdir(tmp_path / "data")) == ["parts"]  # no .parts-preprocess-work/


def test_failure_while_writing_keeps_only_the_caches_asked_for(tmp_path, monkeypatch):
    frame = long_table()
    write_input(frame[frame["sequenceId"] < 3], tmp_path / "in" / "a.csv")
    write_input(frame[frame["sequenceId"] >= 3], tmp_path / "in" / "b.csv")

    def full_disk(*args):
        raise SequifierError("cannot write 'data/in-split0.parquet': no space left on the device")

    monkeypatch.setattr(preprocess, "write_outputs", full_disk)  # windows are parked by now
    expect_error(tmp_path, config(tmp_path, "in"), "no space left")
    assert not (tmp_path / "data").exists() or os.listdir(tmp_path / "data") == []
    expect_error(tmp_path, config(tmp_path, "in", continue_preprocessing=True), "no space left")
    work = tmp_path / "data" / ".in-preprocess-work"
    assert sorted(os.listdir(work)) == ["a.csv.arrow", "b.csv.arrow", "settings.json"]  # no windows/


def test_stale_work_folder_of_a_killed_preprocess_is_removed_and_logged(tmp_path, caplog):
    write_input(long_table(), tmp_path / "items.csv")
    work = tmp_path / "data" / ".items-preprocess-work"
    os.makedirs(work / "windows")
    (work / "windows" / "0-split0.npy").write_bytes(b"half")
    caplog.set_level(logging.INFO)
    preprocess.run_preprocess(config(tmp_path, "items.csv"))
    assert not work.exists()
    lines = [r.getMessage() for r in caplog.records if "work folder of an unfinished" in r.getMessage()]
    assert lines == ["removed the work folder of an unfinished earlier run: data/.items-preprocess-work "
                     "(continue_preprocessing: false)"]


def test_train_removes_temporaries_of_a_killed_run_and_says_so(tmp_path, caplog):
    root = make_project(tmp_path, n_train=32, n_val=16)
    for folder in ("checkpoints", "models", "logs"):
        dead_temporaries(os.path.join(root, folder), n=1)
    caplog.set_level(logging.INFO)
    train(root, **{"training_spec.epochs": 1})
    for folder in ("checkpoints", "models", "logs"):
        assert not [n for n in os.listdir(os.path.join(root, folder)) if n.startswith(".tmp-")]
    lines = [r.getMessage() for r in caplog.records if "leftover" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("removed 3 leftover(s) of an interrupted earlier run")
