"""io_utils: output modes follow the umask, output sets are all-or-nothing across a
crash, leftovers of killed runs are cleaned, names stay literal, OS errors are one line."""

import errno
import os
import subprocess
import sys

import pytest

from sequifier.errors import SequifierError, user_os_error
from sequifier.io_utils import TMP_PREFIX, atomic_dir, atomic_write_text, clean_leftovers, existing_outputs, output_set
from sequifier.project import name_problem


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_outputs_get_the_umask_mode(tmp_path, umask022):
    atomic_write_text(str(tmp_path / "a.txt"), "x")
    with atomic_dir(str(tmp_path / "shards")) as tmp:
        open(os.path.join(tmp, "s.pt"), "w").close()
    assert oct(os.stat(tmp_path / "a.txt").st_mode & 0o777) == oct(0o644)
    assert oct(os.stat(tmp_path / "shards").st_mode & 0o777) == oct(0o755)


def test_set_members_appear_together_and_error_leaves_old_ones(tmp_path):
    a, b = str(tmp_path / "p" / "a.csv"), str(tmp_path / "q" / "b.csv")
    with output_set([a, b]) as tmps:
        for path in (a, b):
            with open(tmps[path], "w") as f:
                f.write("old")
    with pytest.raises(RuntimeError):
        with output_set([a, b]) as tmps:
            with open(tmps[a], "w") as f:
                f.write("new")
            raise RuntimeError("boom")
    assert open(a).read() == open(b).read() == "old"
    assert not [n for d in ("p", "q") for n in os.listdir(tmp_path / d) if n.startswith(TMP_PREFIX)]


CRASH = """
import os, sys
import sequifier.io_utils as io
real = os.replace
calls = []
def replace(src, dst):
    calls.append(dst)
    if len(calls) == {crash_at}:
        os._exit(9)  # killed between renames
    real(src, dst)
io.os.replace = replace
with io.output_set(sys.argv[1:]) as tmps:
    for path, tmp in tmps.items():
        open(tmp, "w").write("new")
"""


@pytest.mark.parametrize("crash_at", [2, 3, 4])
def test_set_interrupted_by_a_kill_is_rolled_back_by_the_next_run(tmp_path, crash_at):
    pred, prob = str(tmp_path / "predictions" / "m.csv"), str(tmp_path / "probabilities" / "m.csv")
    args = [sys.executable, "-c", CRASH.format(crash_at=crash_at), pred, prob]
    assert subprocess.run(args).returncode == 9
    assert existing_outputs([pred, prob]) == []  # absent: a rerun proceeds without overwrite
    for folder in ("predictions", "probabilities"):
        assert os.listdir(tmp_path / folder) == []


def test_leftover_temporaries_of_dead_processes_are_removed(tmp_path):
    code = ("import sequifier.io_utils as io, os, sys\n"
            "io._make_file(sys.argv[1], '.csv'); io._make_dir(sys.argv[1]); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert len(os.listdir(tmp_path)) == 2
    with output_set([str(tmp_path / "x")]) as tmps:
        assert len(clean_leftovers([str(tmp_path)])) == 2
        # a live process's temporaries stay
        assert os.listdir(tmp_path) == [os.path.basename(tmps[str(tmp_path / "x")])]


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "a\0b", "x" * 300, ""])
def test_names_must_be_literal_and_short(tmp_path, name):
    assert name_problem(name, str(tmp_path)) is not None


def test_plain_names_pass(tmp_path):
    assert name_problem("my model-1.ünï", str(tmp_path)) is None


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES, errno.ENAMETOOLONG])
def test_os_errors_become_one_line_naming_the_path(code):
    error = user_os_error(OSError(code, os.strerror(code), "/p/f.csv"), "/p/f.csv")
    assert isinstance(error, SequifierError) and "'/p/f.csv'" in str(error) and "\n" not in str(error)


def test_torch_disk_full_message_is_recognised_and_bugs_are_not():
    torch_error = RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter "
                               "failed writing file data/0: file write failed")
    assert "no space" in str(user_os_error(torch_error, "/p/c.pt"))
    assert user_os_error(RuntimeError("shape mismatch"), "/p/c.pt") is None
    assert user_os_error(FileNotFoundError(errno.ENOENT, "x", "/p"), "/p") is None
