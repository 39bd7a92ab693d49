"""The CLI forms, run as a user would: both compose the same config; errors are one line."""

import os
import subprocess
import sys
import zipfile

import pytest

from sequifier.make import make_project

BIN = os.path.dirname(sys.executable)


def run(args, cwd, env=None):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    make_project(str(root / "p"))
    return str(root / "p")


def test_make_creates_templates(project):
    assert sorted(os.listdir(os.path.join(project, "configs"))) == ["evaluate.yaml", "infer.yaml", "preprocess.yaml", "train.yaml"]
    assert os.path.isdir(os.path.join(project, "data"))
    assert os.path.isfile(os.path.join(project, ".gitignore"))


def test_make_refuses_existing_folder(project):
    r = run([f"{BIN}/sequifier", "make", project], cwd=os.path.dirname(project))
    assert r.returncode == 1
    assert r.stderr.strip().startswith("sequifier: error:") and "already exists" in r.stderr


def test_both_forms_compose_the_same_config(project):
    overrides = ["training_spec.lr=3e-4", "model_spec.num_layers=3"]
    a = run([f"{BIN}/sequifier-train", "--cfg", "job", "+model_spec=gqa"] + overrides, cwd=project)
    b = run([f"{BIN}/sequifier", "train", "--config-path", "configs/train.yaml", "--cfg", "job",
             "+model_spec=gqa"] + overrides, cwd=project)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout
    assert "attention_type: gqa" in a.stdout and "learning_rate: 0.0003" in a.stdout
    assert "num_layers: 3" in a.stdout


def test_config_path_outside_project(project, tmp_path):
    r = run([f"{BIN}/sequifier", "train", "--config-path", os.path.join(project, "configs", "train.yaml"),
             "--cfg", "job"], cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "model_name: my-model" in r.stdout


def test_invalid_config_exits_with_one_line(project):
    r = run([f"{BIN}/sequifier-train", "model_spec.dim_model=128", "model_spec.n_head=5"], cwd=project)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "model_spec.n_head" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_key_and_missing_file_are_one_line(project):
    r = run([f"{BIN}/sequifier", "train", "training_spec.epoch=2"], cwd=project)
    assert r.returncode == 1 and "did you mean 'epochs'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run([f"{BIN}/sequifier", "train", "--config-path", "configs/nope.yaml"], cwd=project)
    assert r.returncode == 1 and "configs/nope.yaml' not found" in r.stderr


def test_unknown_command(project):
    r = run([f"{BIN}/sequifier", "trian"], cwd=project)
    assert r.returncode == 1 and "unknown command 'trian'" in r.stderr


def test_wheel_ships_the_config_tree(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", str(tmp_path / "dist"), repo], cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    (wheel,) = [str(tmp_path / "dist" / f) for f in os.listdir(tmp_path / "dist")]
    names = zipfile.ZipFile(wheel).namelist()
    for path in ["sequifier/conf/train.yaml", "sequifier/conf/model_spec/gqa.yaml",
                 "sequifier/conf/optimizer/ademamix.yaml", "sequifier/templates/train.yaml"]:
        assert path in names
    # pyproject lists the packages by hand (conf/ is mapped in): a new subpackage must be listed
    for dirpath, _, files in os.walk(os.path.join(repo, "sequifier")):
        if "__init__.py" in files:
            rel = os.path.relpath(os.path.join(dirpath, "__init__.py"), repo)
            assert rel.replace(os.sep, "/") in names, f"{rel} missing from the wheel: list it in pyproject.toml"
    # import sequifier from the wheel itself (zip import), not the source tree, and compose
    make_project(str(tmp_path / "w"))
    env = {**os.environ, "PYTHONPATH": wheel}
    code = ("import sequifier, sys; assert sequifier.__file__.startswith(sys.argv[1]), sequifier.__file__;"
            "sys.argv=['sequifier-train','--cfg','job','+model_spec=mqa'];"
            "from sequifier.cli import train_main; train_main()")
    r = run([sys.executable, "-c", code, wheel], cwd=str(tmp_path / "w"), env=env)
    assert r.returncode == 0, r.stderr
    assert "attention_type: mqa" in r.stdout


@pytest.mark.parametrize("override,fragment", [
    ("training_spec.epochs=ten", "could not be converted to Integer"),
    ("model_name=a,b", "Ambiguous value"),
    ("training_spec.lr=[", "no viable alternative"),
    ("+model_spec=nope", "Could not find 'model_spec/nope'"),
])
def test_hydra_errors_are_one_line(project, override, fragment):
    r = run([f"{BIN}/sequifier", "train", override], cwd=project)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("sequifier: error:") and fragment in lines[0]


def read_only(folder, args):
    """`args` run with `folder` read-only: a private read-only bind mount when root (chmod
    does not stop root), a chmod otherwise."""
    if os.geteuid() != 0:
        return args, lambda: os.chmod(folder, 0o555), lambda: os.chmod(folder, 0o755)
    script = f'mount --bind "{folder}" "{folder}" && mount -o remount,bind,ro "{folder}" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, "sh"] + args, lambda: None, lambda: None


def test_read_only_project_is_one_line_naming_the_path(tmp_path):
    make_project(str(tmp_path / "p"))
    data = tmp_path / "p" / "data"
    (data / "items.csv").write_text("sequenceId,itemPosition,itemId\n" + "".join(
        f"{i // 20},{i % 20},{i % 7}\n" for i in range(200)))
    args, before, after = read_only(str(data), [f"{BIN}/sequifier", "preprocess",
                                                "data_path=data/items.csv", "seq_length=4"])
    before()
    try:
        r = run(args, cwd=str(tmp_path / "p"))
    finally:
        after()
    if "unshare" in r.stderr or "mount:" in r.stderr:
        pytest.skip("no private mounts here")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "cannot write" in lines[0] and "data/" in lines[0] and "read-only" in lines[0]
