"""A full disk while saving (checkpoints, exports, TensorBoard, the text log): one line
naming the file and the fix, the previous checkpoint intact, no partial file; a rerun
with space resumes where the last good checkpoint left off."""

import errno
import hashlib
import os

import pytest
import torch
from helpers.train_data import make_config, make_project, train

from sequifier.errors import SequifierError
from sequifier.train import logs
from sequifier.train.run import run_train

pytestmark = pytest.mark.usefixtures("single_thread")

# what torch's zip writer raises when the device fills up under it
ENFORCE = "[enforce fail at inline_container.cc:672] . unexpected pos 14912 vs 14800"
FIX = "it could not be written whole (no space left on the device, or a quota); free some space and run again"
EPOCHS = {"training_spec.epochs": 3}


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def temporaries(root):
    return [os.path.join(d, n) for d, dirs, names in os.walk(root) for n in dirs + names if n.startswith(".tmp-")]


def fill_disk_on_save(monkeypatch, on_call: int):
    """torch.save writes part of the file, then fails as on a full disk, from call `on_call` on."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) < on_call:
            return real_save(obj, f, *args, **kwargs)
        with open(f, "wb") as half:
            half.write(b"PK\x03\x04 half a file")
        raise RuntimeError(ENFORCE)

    monkeypatch.setattr(torch, "save", save)


def test_full_disk_at_a_checkpoint_keeps_the_previous_one_and_a_rerun_resumes(tmp_path, monkeypatch):
    straight = train(make_project(tmp_path / "a"), **EPOCHS)
    root = make_project(tmp_path / "b")
    fill_disk_on_save(monkeypatch, on_call=2)  # epoch 1's checkpoint is written, epoch 2's is not
    with pytest.raises(SequifierError) as e:
        train(root, **EPOCHS)
    checkpoints = os.path.join(root, "checkpoints")
    assert str(e.value) == f"cannot write '{checkpoints}/tiny-epoch-0002.pt': {FIX}"
    assert [n for n in os.listdir(checkpoints) if not n.startswith(".")] == ["tiny-epoch-0001.pt"]
    assert temporaries(root) == []
    kept = torch.load(os.path.join(checkpoints, "tiny-epoch-0001.pt"), weights_only=True)
    assert kept["state"]["epoch"] == 1
    monkeypatch.undo()  # space again
    resumed = train(root, **EPOCHS)
    assert resumed.resumed_from.endswith("tiny-epoch-0001.pt")
    a = torch.load(straight.checkpoint_path, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint_path, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_full_disk_at_a_mid_epoch_checkpoint_of_a_resumed_run(tmp_path, monkeypatch):
    root = make_project(tmp_path)
    train(root, **{"training_spec.epochs": 1})
    before = digest(os.path.join(root, "checkpoints", "tiny-epoch-0001.pt"))
    fill_disk_on_save(monkeypatch, on_call=1)
    with pytest.raises(SequifierError, match=r"tiny-epoch-0002-batch-000002\.pt': it could not be written whole"):
        train(root, **{"training_spec.epochs": 2, "training_spec.save_interval_steps": 4})
    assert digest(os.path.join(root, "checkpoints", "tiny-epoch-0001.pt")) == before
    assert temporaries(root) == []


def test_full_disk_at_the_export_names_the_model_file(tmp_path, monkeypatch):
    root = make_project(tmp_path)
    cfg = make_config(root, **{"training_spec.epochs": 1, "export_onnx": False, "export_pt": True})
    fill_disk_on_save(monkeypatch, on_call=2)  # the checkpoint is written, the export is not
    with pytest.raises(SequifierError) as e:
        run_train(cfg)
    message = str(e.value)
    assert message.startswith(f"cannot write '{root}/models/sequifier-tiny-best.pt'") and message.endswith(FIX)
    assert [n for n in os.listdir(os.path.join(root, "models")) if not n.startswith(".")] == []
    assert temporaries(root) == []


@pytest.mark.parametrize("target", ["text", "tensorboard"])
def test_full_disk_while_logging_names_the_log(tmp_path, monkeypatch, target):
    root = make_project(tmp_path, n_train=32, n_val=16)
    real_init = logs.TrainLogger.__init__

    def failing(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        if target == "text":
            self._file.close()
            self._file = type("Full", (), {"write": failing, "close": lambda s: None})()
        else:
            monkeypatch.setattr(self._writer, "add_scalar", failing)

    monkeypatch.setattr(logs.TrainLogger, "__init__", init)
    with pytest.raises(SequifierError) as e:
        train(root, **{"training_spec.epochs": 1})
    where = "sequifier-tiny-" if target == "text" else "tensorboard/tiny/"
    assert str(e.value).startswith(f"cannot write '{root}/logs/") and where in str(e.value)
    assert str(e.value).endswith("no space left on the device; free some space and run again")


def test_full_disk_when_tensorboard_starts_is_one_line_without_a_thread_traceback(tmp_path, monkeypatch, capsys):
    from tensorboard.summary.writer import record_writer

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)  # written by TensorBoard's thread
    with pytest.raises(SequifierError) as e:
        logs.TrainLogger(str(tmp_path / "logs"), "tiny")
    assert str(e.value).startswith(f"cannot write '{tmp_path}/logs/tensorboard/tiny/")
    assert str(e.value).endswith("no space left on the device; free some space and run again")
    assert "Traceback" not in capsys.readouterr().err


def test_only_the_event_writer_threads_os_errors_are_kept_quiet(monkeypatch):
    import threading
    from types import SimpleNamespace

    printed = []
    monkeypatch.setattr(threading, "excepthook", printed.append)
    logs._quiet_event_writer_threads()

    class _AsyncWriterThread(threading.Thread):  # TensorBoard's writer thread, by name
        pass

    threading.excepthook(SimpleNamespace(exc_value=OSError(errno.ENOSPC, "full"), thread=_AsyncWriterThread()))
    assert printed == []  # the run raises it again as one line
    other = SimpleNamespace(exc_value=ValueError("a bug"), thread=_AsyncWriterThread())
    threading.excepthook(other)
    assert printed == [other]
