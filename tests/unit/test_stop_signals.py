"""Stopping on a signal: the step is finished, a step checkpoint and the summary are written,
and running again continues to weights bit-identical to an uninterrupted run."""

import glob
import json
import os
import signal
import time

import pytest
import torch
from helpers.train_data import log_text, make_config, make_project

from sequifier import signals
from sequifier.config.problems import Problems
from sequifier.signals import DEFAULT_STOP_SIGNALS, Stopped, StopSignals
from sequifier.train.loop import Trainer
from sequifier.train.rules import training_spec_rules
from sequifier.train.run import run_train

pytestmark = pytest.mark.usefixtures("single_thread")
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# dropout draws from the RNG, AdEMAMix/StepLR carry state, accumulation groups batches:
# all must continue exactly
SETTINGS = {"training_spec.dropout": 0.2, "training_spec.enforce_determinism": True,
            "training_spec.scheduler": {"name": "StepLR", "step_size": 1, "gamma": 0.7},
            "training_spec.optimizer": {"name": "AdEMAMix", "alpha_warmup": 10, "beta3_warmup": 10},
            "training_spec.epochs": 3, "training_spec.save_interval_steps": 4,
            "training_spec.gradient_accumulation_steps": 2, "training_spec.batch_size": 8}


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def signal_at_steps(monkeypatch, steps, signum=signal.SIGTERM):
    """Send this process `signum` during the given optimizer steps (counted from 1 per run)."""
    real, count = Trainer.optimizer_step, []

    def step(self, group):
        count.append(1)
        if len(count) in steps:
            os.kill(os.getpid(), signum)  # arrives mid-step: the step must still complete
        return real(self, group)

    monkeypatch.setattr(Trainer, "optimizer_step", step)


def test_stopped_at_several_points_and_rerun_ends_bit_identical(tmp_path, monkeypatch):
    straight = run_train(make_config(make_project(tmp_path / "a"), **SETTINGS), export=False)
    root = make_project(tmp_path / "b")  # 10 steps of 2 micro-batches per epoch
    # after a step-checkpoint step (4), mid-epoch, an epoch's last step (10), the next epoch
    points = [(4, signal.SIGTERM), (3, signal.SIGUSR1), (3, signal.SIGINT), (7, signal.SIGTERM)]
    for at, signum in points:
        with monkeypatch.context() as m:
            signal_at_steps(m, {at}, signum)
            result = run_train(make_config(root, **SETTINGS), export=False)
        assert result.stopped == signal.Signals(signum).name
        assert f"stopped by {result.stopped} at " in log_text(result)
        with open(result.summary_path) as f:
            assert json.load(f)["stopped"] == result.stopped
        assert not glob.glob(os.path.join(root, "*", ".tmp-*"))
    last = run_train(make_config(root, **SETTINGS), export=False)
    assert last.stopped is None and last.last_epoch == 3
    stops = sorted(os.path.basename(p) for p in glob.glob(os.path.join(root, "checkpoints", "*-batch-*")))
    # stops after optimizer steps 4, 7, 10 (an epoch's last: batch 20 of 20) and 17 (micro-batch 14
    # of epoch 2); step checkpoints count micro-batches
    assert {"tiny-epoch-0001-batch-000014.pt", "tiny-epoch-0001-batch-000020.pt",
            "tiny-epoch-0002-batch-000014.pt"} <= set(stops)
    a, b = weights(straight.checkpoint_path), weights(last.checkpoint_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r.train_loss for r in last.history] == [r.train_loss for r in straight.history]
    assert [r.val_loss for r in last.history] == [r.val_loss for r in straight.history]


def test_a_second_signal_stops_at_once_keeping_the_last_checkpoint(tmp_path, monkeypatch):
    root = make_project(tmp_path)
    settings = {**SETTINGS, "training_spec.save_interval_steps": None}
    run_train(make_config(root, **{**settings, "training_spec.epochs": 1}), export=False)
    before = sorted(os.listdir(os.path.join(root, "checkpoints")))
    signal_at_steps(monkeypatch, {2, 3})  # the second arrives before the first's stop is taken
    monkeypatch.setattr(Trainer, "_stop_agreed", lambda self, state: False)
    monkeypatch.setattr(signals, "REPEAT_WINDOW_S", 0.0)
    with pytest.raises(Stopped, match="stopped by SIGTERM"):
        run_train(make_config(root, **settings), export=False)
    assert sorted(os.listdir(os.path.join(root, "checkpoints"))) == before
    assert not glob.glob(os.path.join(root, "*", ".tmp-*"))


def test_the_same_stop_delivered_twice_at_once_is_one_stop(tmp_path, monkeypatch):
    # a terminal or SLURM signals every process, and a launcher passes the signal on too
    signal_at_steps(monkeypatch, {2, 3})
    monkeypatch.setattr(signals, "REPEAT_WINDOW_S", 60.0)
    real, seen = Trainer._stop_agreed, []

    def agreed(self, state):  # the first signal's stop is taken after step 3, not step 2
        seen.append(self.stop.signum is not None)
        return real(self, state) if len(seen) >= 3 else False

    monkeypatch.setattr(Trainer, "_stop_agreed", agreed)
    result = run_train(make_config(make_project(tmp_path, n_train=64, n_val=16), **SETTINGS), export=False)
    assert result.stopped == "SIGTERM" and result.checkpoint_path.endswith("tiny-epoch-0001-batch-000006.pt")


def test_no_stop_signals_leaves_signals_alone(tmp_path):
    result = run_train(make_config(make_project(tmp_path, n_train=32, n_val=16),
                                   **{"training_spec.epochs": 1, "training_spec.stop_signals": []}), export=False)
    assert result.stopped is None and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.parametrize("names, bad", [(["SIGKILL"], "SIGKILL"), (["TERM"], "TERM"), (["SIG_DFL"], "SIG_DFL")])
def test_stop_signals_must_be_catchable_signal_names(tmp_path, names, bad):
    p = Problems()
    training_spec_rules(make_config(tmp_path, **{"training_spec.stop_signals": names}), p)
    assert len(p.lines) == 1 and p.lines[0].startswith(f"training_spec.stop_signals: '{bad}' is not a signal")


@pytest.mark.slow
def test_two_gloo_ranks_agree_on_the_stop_save_once_and_continue_bit_identically(tmp_path):
    import threading

    common = {"read_format": "pt", "training_spec.epochs": 6, "training_spec.distributed": True,
              "training_spec.world_size": 2, "training_spec.backend": "gloo", "training_spec.batch_size": 8,
              "training_spec.save_interval_steps": 3, "training_spec.keep_last_checkpoints": 1}
    straight = run_train(make_config(make_project(tmp_path / "a", write_format="pt"), **common), export=False)
    root = make_project(tmp_path / "b", write_format="pt")

    def terminate_after_the_first_step_checkpoint():  # the launcher forwards it to both ranks
        while not glob.glob(os.path.join(root, "checkpoints", "*-batch-*.pt")):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_after_the_first_step_checkpoint, daemon=True).start()
    stopped = run_train(make_config(root, **common), export=False)
    assert stopped.stopped == "SIGTERM" and stopped.last_epoch < 6
    assert len(glob.glob(os.path.join(root, "logs", "sequifier-tiny-*.txt"))) == 1
    assert log_text(stopped).count("stopped by SIGTERM at") == 1  # rank 0 saved and logged, once
    resumed = run_train(make_config(root, **common), export=False)
    assert resumed.stopped is None and resumed.last_epoch == 6
    a, b = weights(straight.checkpoint_path), weights(resumed.checkpoint_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_command_exits_75_after_a_stop_and_says_how_to_continue(tmp_path, monkeypatch, caplog):
    import logging

    from omegaconf import OmegaConf

    from sequifier import cli

    root = make_project(tmp_path, n_train=32, n_val=16)
    signal_at_steps(monkeypatch, {1})
    caplog.set_level(logging.INFO)
    with pytest.raises(SystemExit) as e:
        cli.make_task("train")(OmegaConf.structured(make_config(root, **{"training_spec.epochs": 2})))
    assert e.value.code == 75
    assert any("stopped by SIGTERM" in r.getMessage() and "run the same command again to continue"
               in r.getMessage() for r in caplog.records)


def test_preprocess_stopped_by_a_signal_leaves_nothing(tmp_path, monkeypatch, capsys):
    from helpers.preprocess_data import config, long_table, write_input
    from omegaconf import OmegaConf

    from sequifier import cli
    from sequifier.data import preprocess

    write_input(long_table(), tmp_path / "data" / "items.csv")
    real = preprocess.make_metadata

    def signalled(*args):  # the windows are parked, the splits not yet written
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(preprocess, "make_metadata", signalled)
    with pytest.raises(SystemExit) as e, StopSignals(DEFAULT_STOP_SIGNALS, graceful=False):  # as the CLI
        cli.make_task("preprocess")(OmegaConf.structured(config(tmp_path, "data/items.csv")))
    assert e.value.code == 75
    assert capsys.readouterr().err.strip().splitlines() == [
        "sequifier: error: stopped by SIGTERM before preprocess finished: no partial output was left; "
        "run the same command again"]
    assert os.listdir(tmp_path / "data") == ["items.csv"]
    assert not os.path.exists(tmp_path / "configs")


def test_a_launchers_handler_is_called_once_after_the_stop_is_saved(tmp_path, monkeypatch):
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))  # submitit's, say
    try:
        signal_at_steps(monkeypatch, {2}, signal.SIGUSR2)
        with StopSignals(DEFAULT_STOP_SIGNALS, graceful=False):  # the CLI's, around run_train's own
            result = run_train(make_config(make_project(tmp_path, n_train=32, n_val=16),
                                           **{"training_spec.epochs": 2}), export=False)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert result.stopped == "SIGUSR2" and os.path.exists(result.checkpoint_path)
    assert calls == [signal.SIGUSR2]


def test_a_rank_ended_by_the_signal_while_starting_is_a_stop_not_a_failure(monkeypatch):
    import torch.multiprocessing as mp

    from sequifier.config.schema import TrainingSpec
    from sequifier.train import distributed

    class Ranks:  # a rank that the process group's SIGTERM ended before its handlers were set
        processes = []

        def join(self):
            os.kill(os.getpid(), signal.SIGTERM)  # the launcher got it too
            raise mp.ProcessExitedException("process 1 terminated with signal SIGTERM", 1, 1, os.getpid(),
                                            signal_name="SIGTERM")

    monkeypatch.setattr(mp, "start_processes", lambda *a, **kw: Ranks())
    spec = TrainingSpec(device="cpu", epochs=1, batch_size=4, learning_rate=0.1, criterion={},
                        save_interval_epochs=1, distributed=True, world_size=2, backend="gloo")
    with pytest.raises(Stopped, match="stopped by SIGTERM"):
        distributed.launch(print, (), spec)
