#!/usr/bin/env python3
"""Fault probe: bad inputs and faults against the `sequifier` CLI, as a user would meet them.

Every case copies a small ready project (data preprocessed, one model trained), breaks
one thing (a config value, a data cell, a file, the file system, a kill -9, a second
concurrent run) and runs one command. A case passes when:

* an expected failure exits non-zero with a last stderr line `sequifier: error: ...` and
  no Python traceback; nothing that existed before the run is changed or lost, and no
  temporary file (`.tmp-*`) is left in the project;
* an expected success exits 0 and its outputs are right (the case's own check);
* after a kill -9, a rerun of the same command succeeds, leaves no temporary and its
  output sets are complete.

Counts: tracebacks, silent wrong results (wrong exit status or a failed check), lost or
changed files, leftovers. Read-only folders and full disks use a private mount namespace
(`unshare -m`, needs root); elsewhere those cases are skipped.

usage: probe_faults.py [--keep DIR] [--only SUBSTRING,...] [--category NAME,...] [--list]
Slow (some 20 minutes on a quiet 2-core machine, 45 on a busy one): not part of the test
suite. The last line gives the case total and the four counts.
"""

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

BIN = os.path.dirname(sys.executable)
SEQ = os.path.join(BIN, "sequifier")
MODEL = "models/sequifier-my-model-best.onnx"
COMMON = {
    "preprocess": ["seq_length=8", "n_cores=1", "dataset_name=data"],
    "train": ["seq_length=8", "model_spec.dim_model=16", "model_spec.n_head=2", "model_spec.num_layers=1",
              "model_spec.dim_feedforward=16", "model_spec.initial_embedding_dim=16", "training_spec.epochs=1",
              "training_spec.batch_size=32", "inference_batch_size=8", "training_spec.early_stopping_epochs=null",
              "+model_spec.feature_embedding_dims={itemId:8,value:8}"],
    "infer": ["seq_length=8", f"model_path={MODEL}"],
}


# ---------------------------------------------------------------- the base project


def long_table(n_seq=30, length=25, seed=0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "sequenceId": np.repeat([f"u{i:02d}" for i in range(n_seq)], length),
        "itemPosition": np.tile(np.arange(length), n_seq),
        "itemId": rng.choice(["a", "b", "c", "d", "e"], size=n_seq * length),
        "value": np.round(rng.normal(size=n_seq * length), 3),
    })


def cli(command: str, extra: List[str], cwd: str, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([SEQ, command] + COMMON[command] + extra, cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=timeout)


def make_base(folder: str) -> str:
    project = os.path.join(folder, "base")
    if os.path.isfile(os.path.join(project, MODEL)):
        return project  # from an earlier --keep run
    shutil.rmtree(project, ignore_errors=True)
    subprocess.run([SEQ, "make", project], check=True, capture_output=True)
    long_table().to_csv(os.path.join(project, "data", "data.csv"), index=False)
    for command in ("preprocess", "train"):
        r = cli(command, [], project)
        if r.returncode:
            sys.exit(f"base project: {command} failed:\n{r.stderr}")
    r = cli("infer", [], project)
    if r.returncode:
        sys.exit(f"base project: infer failed:\n{r.stderr}")
    shutil.rmtree(os.path.join(project, "outputs", "predictions"), ignore_errors=True)
    return project


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    category: str
    command: str
    args: List[str] = field(default_factory=list)
    expect: str = "error"  # "error", "ok" or "rerun" (kill -9, then the rerun must succeed)
    setup: Optional[Callable[[str], None]] = None
    check: Optional[Callable[[str, subprocess.CompletedProcess], Optional[str]]] = None
    fs: Optional[str] = None  # "ro:FOLDER" or "full:FOLDER" (relative to the project)
    kill_after: float = 0.0  # seconds, for expect == "rerun"
    concurrent: bool = False  # two runs at once: one must refuse, one succeed
    second_args: Optional[List[str]] = None  # concurrent with other arguments: both must succeed
    env: Dict[str, str] = field(default_factory=dict)  # extra environment variables
    # expect == "signal": (seconds after the trigger, signal) sent to the command's process
    # (or, with to_group, its process group, as a terminal or SLURM does); the trigger is
    # `signal_when` appearing (a glob in the project) or `kill_after` seconds
    signals: List[Tuple[float, int]] = field(default_factory=list)
    signal_when: Optional[str] = None
    to_group: bool = False
    # train cases: the same run uninterrupted under this model_name, whose final weights the
    # stopped-and-rerun run must equal bit for bit
    reference: Optional[str] = None
    rerun_ok: bool = False  # expect == "error": a rerun without the fault must then succeed


def write_csv(frame, project, name="data.csv"):
    frame.to_csv(os.path.join(project, "data", name), index=False)


def edit_data(fn):
    def setup(project):
        frame = long_table()
        write_csv(fn(frame) if fn(frame) is not None else frame, project, "bad.csv")
    return setup


def raw_data(text: bytes):
    def setup(project):
        with open(os.path.join(project, "data", "bad.csv"), "wb") as f:
            f.write(text)
    return setup


def outputs_exist(*patterns):
    def check(project, result):
        missing = [p for p in patterns if not glob.glob(os.path.join(project, p))]
        return f"missing outputs {missing}" if missing else None
    return check


def config_cases() -> List[Case]:
    cases = []
    bad_train = [
        "training_spec.epochs=ten", "training_spec.epochs=0", "training_spec.epochs=-1",
        "training_spec.batch_size=0", "training_spec.lr=abc", "training_spec.learning_rate=-1",
        "training_spec.dropout=1.5", "training_spec.device=tpu", "training_spec.device=cuda:x",
        "training_spec.optimizer.name=Adamm", "training_spec.optimizer.betas=[0.9]",
        "training_spec.optimizer.weight_decay=abc", "training_spec.optimizer.lr=0.1",
        "training_spec.scheduler.name=Cosine", "training_spec.scheduler.step_size=abc",
        "training_spec.scheduler.gamma=abc", "training_spec.scheduler.nope=1",
        "training_spec.scheduler_step_on=step", "training_spec.criterion.itemId=MSELoss",
        "training_spec.criterion.itemId=FooLoss", "+training_spec.criterion.value=MSELoss",
        "training_spec.distributed=true training_spec.backend=mpi", "training_spec.max_ram_gb=0",
        "training_spec.save_interval_epochs=0", "training_spec.log_interval=0",
        "training_spec.layer_type_dtypes={linear:int4}", "training_spec.class_share_log_columns=[value]",
        "model_spec.n_head=5", "model_spec.dim_model=abc", "model_spec.attention_type=xqa",
        "model_spec.attention_type=mqa model_spec.n_kv_heads=2",
        "model_spec.attention_type=gqa model_spec.n_kv_heads=3",
        "model_spec.activation_fn=tanh", "model_spec.positional_encoding=sinus", "model_spec.normalization=batch",
        "model_spec.joint_embedding_dim=8", "model_spec.initial_embedding_dim=15", "model_spec.rope_theta=0",
        "seq_length=9", "target_columns=[nope]", "target_column_types.itemId=ordinal",
        "target_column_types.itemId=real", "input_columns=[nope]", "read_format=xlsx", "read_format=csv",
        "model_name=a,b", "model_name=", "training_spec.lr=[", "+model_spec=nope", "nonsense=1",
        "training_spec.epochz=1", "metadata_config_path=configs/metadata_configs/nope.json",
    ]
    for args in bad_train:
        cases.append(Case(f"train {args}", "config", "train", args.split()))
    # lazy loading and DDP read parquet splits too (issue 13): valid settings, not errors
    for args, name in (("training_spec.load_full_data_to_ram=false", "lazy"),
                       ("training_spec.distributed=true", "ddp")):
        cases.append(Case(f"train {args} on parquet splits", "config", "train", [f"model_name={name}", args],
                          expect="ok", check=outputs_exist(f"models/sequifier-{name}-best.onnx")))
    cases.append(Case("train training_spec.backend=tcp without distributed: logged as not used", "config",
                      "train", ["model_name=nodist", "training_spec.backend=tcp"], expect="ok",
                      check=lambda p, r: None if "training_spec.backend (tcp) is not used" in r.stdout + r.stderr
                      else "an unused backend was neither refused nor logged"))
    cases.append(Case("train criterion MSELoss + overwrite, old outputs kept", "config", "train",
                      ["training_spec.criterion.itemId=MSELoss", "overwrite=true",
                       "training_spec.continue_training=false"]))
    bad_pre = [
        "split_ratios=[0.8,0.1]", "split_ratios=[0.8,0.3,-0.1]", "split_ratios=[0.8,0.2,0]",
        "stride_by_split=[1,2]", "stride_by_split=[0,1,1]", "seq_length=0", "seq_length=abc",
        "read_format=parquet", "read_format=xlsx", "write_format=json", "write_format=pt",
        "merge_output=false", "subsequence_start_mode=random", "max_rows=0", "n_cores=0",
        "batches_per_file=0", "data_path=data/nope.csv", "selected_columns=[nope]",
        "missing_values=guess", "reuse_metadata_path=configs/nope.json", "overwrite=false",
    ]
    for args in bad_pre:
        cases.append(Case(f"preprocess {args}", "config", "preprocess", args.split()))
    bad_infer = [
        "model_type=discriminative", "model_type=embedding", "write_format=xlsx", "read_format=csv",
        "device=tpu", "seq_length=9", "inference_batch_size=0", "autoregression_extra_steps=3",
        "autoregression=true autoregression_extra_steps=-1", "model_path=models/nope.onnx", "model_path=[]",
        "target_columns=[nope]", "input_columns=[value]", "sample_from_distribution_columns=[value]",
        "target_column_types.itemId=real", "infer_with_dropout=true", "data_path=data/nope.parquet",
        "metadata_config_path=configs/metadata_configs/nope.json",
    ]
    for args in bad_infer:
        cases.append(Case(f"infer {args}", "config", "infer", args.split()))
    cases.append(Case("infer twice without overwrite", "config", "infer", [],
                      setup=lambda p: cli("infer", [], p)))
    cases.append(Case("config file is not YAML", "config", "train", ["--config-path", "configs/broken.yaml"],
                      setup=lambda p: open(os.path.join(p, "configs", "broken.yaml"), "w").write("a: [\n")))
    cases.append(Case("config file unknown key", "config", "train", ["--config-path", "configs/odd.yaml"],
                      setup=lambda p: open(os.path.join(p, "configs", "odd.yaml"), "w").write(
                          open(os.path.join(p, "configs", "train.yaml")).read() + "\nmodel_nam: x\n")))
    return cases


def name_cases() -> List[Case]:
    cases = []
    for name in ["../../escaped", "a/b", "x" * 300, ".hidden", "..", "a\\b"]:
        cases.append(Case(f"train model_name={name[:20]}", "names", "train", [f"model_name={name}"],
                          check=lambda p, r: None))
        cases.append(Case(f"preprocess dataset_name={name[:20]}", "names", "preprocess",
                          [f"dataset_name={name}", "overwrite=true"]))
    cases.append(Case("train model_name with unicode and spaces", "names", "train", ["model_name='modèle ü 1'"],
                      expect="ok", check=outputs_exist("models/sequifier-modèle ü 1-best.onnx")))

    def nul_name(project):  # argv cannot hold a NUL; a YAML file can
        with open(os.path.join(project, "configs", "train.yaml")) as f:
            lines = [line for line in f if not line.startswith("model_name:")]
        with open(os.path.join(project, "configs", "nul.yaml"), "w") as f:
            f.write("".join(lines) + 'model_name: "a\\0b"\n')
    cases.append(Case("train model_name with a NUL (from YAML)", "names", "train",
                      ["--config-path", "configs/nul.yaml"], setup=nul_name))
    cases.append(Case("train project_root that does not exist", "names", "train", ["project_root=nope"]))
    cases.append(Case("preprocess data_path outside the project (read only)", "names", "preprocess",
                      ["data_path=../outside.csv", "dataset_name=outside"], expect="ok",
                      setup=lambda p: long_table().to_csv(os.path.join(os.path.dirname(p), "outside.csv"), index=False),
                      check=outputs_exist("data/outside-split0.parquet")))
    cases.append(Case("preprocess data file with a 300-character stem", "names", "preprocess",
                      ["data_path=data/" + "y" * 240 + ".csv", "dataset_name=null"],
                      setup=lambda p: write_csv(long_table(), p, "y" * 240 + ".csv")))
    return cases


def data_cases() -> List[Case]:
    def with_inf(sign):
        def fn(f):
            f.loc[3, "value"] = sign * np.inf
            return f
        return fn

    def col(name, values):
        def fn(f):
            f[name] = values(f)
            return f
        return fn

    bad = {
        "inf in a real column": with_inf(1),
        "-inf in a real column": with_inf(-1),
        "NaN in a real column": col("value", lambda f: np.where(np.arange(len(f)) == 5, np.nan, f["value"])),
        "empty id cell": col("sequenceId", lambda f: np.where(np.arange(len(f)) == 5, "", f["sequenceId"])),
        "duplicate (id, position)": col("itemPosition",
                                        lambda f: np.where(np.arange(len(f)) == 1, 0, f["itemPosition"])),
        "numbers as text with units": col("value", lambda f: [f"{v} kg" if i % 50 == 0 else str(v)
                                                             for i, v in enumerate(f["value"])]),
        "no itemPosition column": lambda f: f.drop(columns=["itemPosition"]),
        "no sequenceId column": lambda f: f.drop(columns=["sequenceId"]),
        "only key columns": lambda f: f[["sequenceId", "itemPosition"]],
    }
    cases = [Case(f"data: {name}", "data", "preprocess", ["data_path=data/bad.csv", "overwrite=true"],
                  setup=edit_data(fn)) for name, fn in bad.items()]
    raw = {
        "empty file": b"",
        "header only": b"sequenceId,itemPosition,itemId\n",
        "duplicate column in the header": b"sequenceId,itemPosition,itemId,itemId\n1,0,a,b\n1,1,b,c\n",
        "binary garbage": bytes(range(256)) * 4,
        "ragged rows": b"sequenceId,itemPosition,itemId\n1,0,a\n1,1\n",
        "latin-1 text": "sequenceId,itemPosition,itemId\n1,0,caf\xe9\n1,1,b\n".encode("latin-1"),
        "parquet bytes read as csv": b"PAR1\x00\x00garbage",
    }
    cases += [Case(f"data: {name}", "data", "preprocess", ["data_path=data/bad.csv", "overwrite=true"],
                   setup=raw_data(text)) for name, text in raw.items()]
    cases.append(Case("data: csv read as parquet", "data", "preprocess",
                      ["data_path=data/data.csv", "read_format=parquet", "overwrite=true"]))

    def bom(project):
        text = open(os.path.join(project, "data", "data.csv"), "rb").read()
        open(os.path.join(project, "data", "bom.csv"), "wb").write(b"\xef\xbb\xbf" + text)
    cases.append(Case("data: UTF-8 byte-order mark", "data", "preprocess",
                      ["data_path=data/bom.csv", "dataset_name=bom"], expect="ok", setup=bom,
                      check=outputs_exist("configs/metadata_configs/bom.json", "data/bom-split2.parquet")))

    def unicode(project):
        frame = long_table()
        frame["itemId"] = frame["itemId"].map({"a": "é", "b": "日本", "c": "a,b", "d": '"q"', "e": "e"})
        frame = frame.rename(columns={"itemId": "item Id ü"})
        write_csv(frame, project, "uni.csv")
    cases.append(Case("data: unicode values and an odd column name", "data", "preprocess",
                      ["data_path=data/uni.csv", "dataset_name=uni"], expect="ok", setup=unicode,
                      check=outputs_exist("configs/metadata_configs/uni.json")))
    cases.append(Case("data: fractional positions (refused: integers, times or dates)", "data", "preprocess",
                      ["data_path=data/frac.csv", "dataset_name=frac"],
                      setup=lambda p: write_csv(long_table().assign(itemPosition=lambda f: f["itemPosition"] + 0.5),
                                                p, "frac.csv")))
    cases.append(Case("data: sequences shorter than a window", "data", "preprocess",
                      ["data_path=data/short.csv", "dataset_name=short"], expect="ok",
                      setup=lambda p: write_csv(long_table(length=3), p, "short.csv"),
                      check=outputs_exist("configs/metadata_configs/short.json")))
    return cases


def shard_cases() -> List[Case]:
    """Split files that are corrupt, foreign or crafted."""
    def replace_split(content: bytes, name="data/data-split2.parquet"):
        def setup(project):
            with open(os.path.join(project, name), "wb") as f:
                f.write(content)
        return setup

    cases = [
        Case("infer: truncated parquet split", "files", "infer", [], setup=replace_split(b"PAR1 truncated")),
        Case("infer: empty split file", "files", "infer", [], setup=replace_split(b"")),
        Case("train: truncated training split", "files", "train", ["model_name=fresh"],
             setup=replace_split(b"PAR1 x", "data/data-split0.parquet")),
        Case("infer: metadata is not JSON", "files", "infer", [],
             setup=replace_split(b"{not json", "configs/metadata_configs/data.json")),
        Case("infer: model file is garbage", "files", "infer", [], setup=replace_split(b"garbage", MODEL)),
    ]

    def pt_project(project):
        r = cli("preprocess", ["write_format=pt", "merge_output=false", "dataset_name=pt"], project)
        assert r.returncode == 0, r.stderr

    def crafted_file(target: str):
        """A setup that saves, at `target`, a pickle whose loading would create PWNED."""
        def setup(project):
            code = ("import os, torch\n"
                    "class P:\n"
                    "    def __reduce__(self):\n"
                    f"        return (os.system, ('touch {project}/PWNED',))\n"
                    f"torch.save({{'format': P()}}, '{project}/{target}')\n")
            subprocess.run([sys.executable, "-c", code], check=True)
        return setup

    def crafted(project):
        pt_project(project)
        crafted_file("data/pt-split0/pt-split0-00000.pt")(project)

    def no_pwned(project, result):
        return "crafted shard ran code" if os.path.exists(os.path.join(project, "PWNED")) else None

    env_unsafe = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    pt_args = ["model_name=pt", "read_format=pt", "metadata_config_path=configs/metadata_configs/pt.json"]
    cases += [
        Case("train: crafted pickle shard (in RAM)", "safe-load", "train", pt_args, setup=crafted, check=no_pwned),
        Case("train: crafted pickle shard (lazy)", "safe-load", "train",
             pt_args + ["training_spec.load_full_data_to_ram=false"], setup=crafted, check=no_pwned),
        Case("train: crafted shard with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "safe-load", "train",
             pt_args + ["+env=unsafe"], setup=crafted, check=no_pwned),
        Case("train: foreign .pt shard", "files", "train", pt_args,
             setup=lambda p: (pt_project(p), subprocess.run(
                 [sys.executable, "-c", f"import torch; torch.save([1,2], '{p}/data/pt-split0/pt-split0-00000.pt')"],
                 check=True))),
        Case("train: truncated .pt shard (lazy)", "files", "train",
             pt_args + ["training_spec.load_full_data_to_ram=false"],
             setup=lambda p: (pt_project(p),
                              open(f"{p}/data/pt-split0/pt-split0-00000.pt", "wb").write(b"PK\x03\x04"))),
    ]

    cases += [
        Case("train: crafted pickle checkpoint resumed, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "safe-load", "train",
             ["+env=unsafe"], setup=crafted_file("checkpoints/my-model-epoch-0009.pt"), check=no_pwned),
        Case("infer: crafted pickle .pt model, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "safe-load", "infer",
             ["model_path=models/evil.pt", "+env=unsafe"], setup=crafted_file("models/evil.pt"), check=no_pwned),
        Case("infer: model_path is a folder", "files", "infer", ["model_path=models"]),
        Case("train: metadata_config_path is a folder", "files", "train",
             ["metadata_config_path=configs/metadata_configs"]),
    ]
    for case in cases:
        if "+env=unsafe" in case.args:
            case.args.remove("+env=unsafe")
            case.env = env_unsafe
    return cases


def idmap_cases() -> List[Case]:
    def other_map(project):
        frame = long_table(seed=1)
        frame["itemId"] = frame["itemId"].map({"a": "z", "b": "y", "c": "x", "d": "w", "e": "v"})
        write_csv(frame, project, "other.csv")
        r = cli("preprocess", ["data_path=data/other.csv", "dataset_name=other"], project)
        assert r.returncode == 0, r.stderr
    return [
        Case("infer: windows made with another id map", "id-map", "infer",
             ["data_path=data/other-split2.parquet"], setup=other_map),
        Case("train: windows made with another id map", "id-map", "train",
             ["model_name=mixed", "training_data_path=data/other-split0.parquet"], setup=other_map),
    ]


def infer_data_cases() -> List[Case]:
    """Infer on data that does not fit the model."""
    def without_value(project):
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(os.path.join(project, "data", "data-split2.parquet"))  # keeps the fingerprint
        pq.write_table(table.filter(pc.not_equal(table["inputCol"], "value")),
                       os.path.join(project, "data", "novalue.parquet"))

    def other_length(project):
        r = cli("preprocess", ["dataset_name=six", "seq_length=6", "data_path=data/data.csv"], project)
        assert r.returncode == 0, r.stderr

    return [
        Case("infer: data without an input column of the model", "infer", "infer",
             ["data_path=data/novalue.parquet"], setup=without_value),
        Case("infer: windows of another seq_length", "infer", "infer",
             ["data_path=data/six-split2.parquet"], setup=other_length),
        Case("infer: data_path is a folder of parquet files", "infer", "infer", ["data_path=data"]),
        Case("infer: scored positions and probabilities", "infer", "infer",
             ["positions=scored", "output_probabilities=true"], expect="ok",
             check=outputs_exist("outputs/predictions/*", "outputs/probabilities/*")),
    ]


def fs_cases() -> List[Case]:
    cases = [
        Case("read-only data/ (preprocess)", "os", "preprocess", ["overwrite=true", "dataset_name=new"], fs="ro:data"),
        Case("read-only project (preprocess)", "os", "preprocess", ["dataset_name=new"], fs="ro:."),
        Case("read-only models/ (train export)", "os", "train", ["model_name=ro"], fs="ro:models"),
        Case("read-only checkpoints/ (train)", "os", "train", ["model_name=ro"], fs="ro:checkpoints"),
        Case("read-only logs/ (train)", "os", "train", ["model_name=ro"], fs="ro:logs"),
        Case("read-only outputs/ (infer)", "os", "infer", [], fs="ro:outputs"),
        Case("read-only metadata folder (preprocess)", "os", "preprocess", ["dataset_name=new"],
             fs="ro:configs/metadata_configs"),
        Case("full disk data/ (preprocess)", "os", "preprocess", ["dataset_name=new"], fs="full:data"),
        Case("full disk models/ (train export)", "os", "train", ["model_name=full"], fs="full:models"),
        Case("full disk checkpoints/ (train)", "os", "train", ["model_name=full"], fs="full:checkpoints"),
        Case("full disk outputs/ (infer)", "os", "infer", [], fs="full:outputs"),
        Case("full disk metadata folder (preprocess)", "os", "preprocess", ["dataset_name=new"],
             fs="full:configs/metadata_configs"),
    ]
    return cases


def kill_cases() -> List[Case]:
    cases = []
    for t in (1.5, 3.0, 4.5, 6.0):
        cases.append(Case(f"kill -9 train after {t}s, rerun", "kill", "train",
                          ["model_name=killed", "training_spec.epochs=3"], expect="rerun", kill_after=t,
                          check=outputs_exist("models/sequifier-killed-best.onnx")))
        cases.append(Case(f"kill -9 infer (probabilities) after {t}s, rerun", "kill", "infer",
                          ["output_probabilities=true"], expect="rerun", kill_after=t,
                          check=outputs_exist("outputs/predictions/*", "outputs/probabilities/*")))
    for t in (1.5, 3.0):
        cases.append(Case(f"kill -9 preprocess after {t}s, rerun", "kill", "preprocess",
                          ["dataset_name=k", "write_format=pt", "merge_output=false"], expect="rerun", kill_after=t,
                          check=outputs_exist("configs/metadata_configs/k.json", "data/k-split2")))
    return cases


def concurrency_cases() -> List[Case]:
    def sweep_twice(project):
        sweep = ["-m", "hydra.sweep.dir=multirun/fixed", "model_name=sw"]
        r = subprocess.run([SEQ, "train", "-m"] + COMMON["train"] + sweep[1:] + ["training_spec.lr=0.01,0.02,0.03"],
                           cwd=project, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

    def fresh_jobs(project, result):
        logs = "".join(open(p).read() for p in glob.glob(os.path.join(project, "logs", "sequifier-sw-*.txt")))
        if "resuming from" in logs:
            return "a repeated sweep resumed the earlier sweep's checkpoints"
        with open(os.path.join(project, "multirun", "fixed", "summary.csv")) as f:
            rows = f.read().splitlines()[1:]
        if len(rows) != 2 or not all("0.05" in r or "0.06" in r for r in rows):
            return f"the repeated sweep's summary holds other jobs: {rows}"
        return None

    return [
        Case("two trains of one model_name at once", "concurrency", "train", ["model_name=twin"],
             concurrent=True),
        Case("two preprocess runs of one dataset_name at once", "concurrency", "preprocess",
             ["data_path=data/big.csv", "dataset_name=twin"], concurrent=True,
             setup=lambda p: write_csv(long_table(n_seq=3000), p, "big.csv")),
        Case("two trains of different model_names at once", "concurrency", "train", ["model_name=left"],
             concurrent=True, second_args=["model_name=right"],
             check=outputs_exist("models/sequifier-left-best.onnx", "models/sequifier-right-best.onnx")),
        Case("repeated sweep into a fixed hydra.sweep.dir", "concurrency", "train",
             ["-m", "hydra.sweep.dir=multirun/fixed", "model_name=sw", "training_spec.lr=0.05,0.06"],
             expect="ok", setup=sweep_twice, check=fresh_jobs),
    ]


SIGNAL_TRAIN = ["training_spec.epochs=3", "training_spec.batch_size=4", "training_spec.save_interval_steps=2",
                "training_spec.enforce_determinism=true", "training_spec.dropout=0.1"]


def final_weights(project: str, model_name: str):
    import torch

    path = os.path.join(project, "checkpoints", f"{model_name}-epoch-0003.pt")
    return torch.load(path, weights_only=True)["model"] if os.path.exists(path) else None


def same_weights_as(reference: str, model_name: str):
    def check(project, result):
        a, b = final_weights(project, reference), final_weights(project, model_name)
        if a is None or b is None:
            return f"no final checkpoint to compare ({reference}: {a is not None}, {model_name}: {b is not None})"
        import torch

        differ = [k for k in a if not torch.equal(a[k], b[k])]
        return f"weights differ from the uninterrupted run in {differ[:3]}" if differ else None
    return check


def train_reference(name: str, extra: List[str]):
    def setup(project):
        r = cli("train", [f"model_name={name}"] + SIGNAL_TRAIN + extra, project)
        assert r.returncode == 0, r.stderr[-500:]
    return setup


def signal_cases() -> List[Case]:
    """SIGTERM and friends at random points of train (also while a checkpoint is written,
    twice, under DDP), preprocess and infer; train must continue bit-identically."""
    rng = np.random.default_rng(21)
    cases = []
    for i, t in enumerate(np.round(rng.uniform(4.0, 9.0, size=10), 2)):
        signum = [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT][i % 3]
        cases.append(Case(f"{signal.Signals(signum).name} train after {t}s, rerun continues bit-identically",
                          "signal", "train", [f"model_name=sig{i}"] + SIGNAL_TRAIN, expect="signal",
                          kill_after=float(t), signals=[(0.0, signum)], reference="ref",
                          setup=train_reference("ref", []), check=same_weights_as("ref", f"sig{i}")))
    for i in range(3):
        cases.append(Case(f"SIGTERM train while a checkpoint is written (#{i + 1}), rerun", "signal", "train",
                          [f"model_name=ckw{i}"] + SIGNAL_TRAIN + ["training_spec.save_interval_steps=1"],
                          expect="signal", signal_when="checkpoints/.tmp-sequifier-*",
                          signals=[(0.002 * i, signal.SIGTERM)], reference="ref",
                          setup=train_reference("ref", []), check=same_weights_as("ref", f"ckw{i}")))
    cases.append(Case("SIGTERM twice (3 s apart) stops train at once, rerun", "signal", "train",
                      ["model_name=twice"] + SIGNAL_TRAIN, expect="signal", kill_after=5.0,
                      signals=[(0.0, signal.SIGTERM), (3.0, signal.SIGTERM)], reference="ref",
                      setup=train_reference("ref", []), check=same_weights_as("ref", "twice")))
    ddp = ["training_spec.distributed=true", "training_spec.world_size=2", "training_spec.backend=gloo"]
    for i, t in enumerate((8.0, 11.0)):
        cases.append(Case(f"SIGTERM to the process group of DDP train after {t}s, rerun", "signal", "train",
                          [f"model_name=dsig{i}"] + SIGNAL_TRAIN + ddp, expect="signal", kill_after=t,
                          signals=[(0.0, signal.SIGTERM)], to_group=True, reference="dref",
                          setup=train_reference("dref", ddp), check=same_weights_as("dref", f"dsig{i}")))
    for t in (1.5, 2.5, 3.5):
        cases.append(Case(f"SIGTERM preprocess (folder, pt shards) after {t}s, rerun", "signal", "preprocess",
                          ["data_path=data/parts", "dataset_name=s", "write_format=pt", "merge_output=false"],
                          expect="signal", kill_after=t, signals=[(0.0, signal.SIGTERM)], setup=parts_folder,
                          check=outputs_exist("configs/metadata_configs/s.json", "data/s-split2")))
        cases.append(Case(f"SIGTERM infer (probabilities) after {t}s, rerun", "signal", "infer",
                          ["output_probabilities=true"], expect="signal", kill_after=t,
                          signals=[(0.0, signal.SIGTERM)],
                          check=outputs_exist("outputs/predictions/*", "outputs/probabilities/*")))
    return cases


def parts_folder(project: str, clash: bool = False) -> None:
    """data/parts/: the base table cut into three files (with `clash`, a sequence in two)."""
    frame = long_table(n_seq=600)
    os.makedirs(os.path.join(project, "data", "parts"), exist_ok=True)
    ids = sorted(frame["sequenceId"].unique())
    for k in range(3):
        part = frame[frame["sequenceId"].isin(ids[k::3])]
        if clash and k == 2:
            part = frame[frame["sequenceId"].isin(ids[k::3] + ids[:1])]
        part.to_csv(os.path.join(project, "data", "parts", f"p{k}.csv"), index=False)


def leftover_cases() -> List[Case]:
    return [
        Case("folder preprocess with a sequence id in two files", "leftovers", "preprocess",
             ["data_path=data/parts", "dataset_name=parts"], setup=lambda p: parts_folder(p, clash=True)),
        Case("stale preprocess work folder of a killed run", "leftovers", "preprocess",
             ["dataset_name=stale"], expect="ok", setup=stale_work_folder,
             check=outputs_exist("configs/metadata_configs/stale.json")),
    ]


def stale_work_folder(project: str) -> None:
    work = os.path.join(project, "data", ".stale-preprocess-work", "windows")
    os.makedirs(work)
    with open(os.path.join(work, "0-split0.npy"), "wb") as f:
        f.write(b"half a file")


def disk_full_cases() -> List[Case]:
    """A full disk during each kind of save of train; a rerun with space must then succeed."""
    return [
        Case("full disk logs/ (train: text log, TensorBoard, summary), rerun", "os", "train", ["model_name=fl"],
             fs="full:logs", rerun_ok=True, check=outputs_exist("models/sequifier-fl-best.onnx")),
        Case("full disk checkpoints/ (train, step checkpoints), rerun", "os", "train",
             ["model_name=fs", "training_spec.save_interval_steps=1"], fs="full:checkpoints", rerun_ok=True,
             check=outputs_exist("models/sequifier-fs-best.onnx")),
        Case("full disk checkpoints/ (resumed train), rerun", "os", "train",
             ["model_name=my-model", "training_spec.epochs=2"], fs="full:checkpoints", rerun_ok=True,
             check=outputs_exist("checkpoints/my-model-epoch-0002.pt")),
        Case("full disk models/ (train .pt export), rerun", "os", "train",
             ["model_name=fp", "export_onnx=false", "export_pt=true"], fs="full:models", rerun_ok=True,
             check=outputs_exist("models/sequifier-fp-best.pt")),
        Case("full disk data/ (folder preprocess work folder), rerun", "os", "preprocess",
             ["data_path=data/parts", "dataset_name=fd"], fs="full:data", rerun_ok=True, setup=parts_folder,
             check=outputs_exist("configs/metadata_configs/fd.json")),
    ]


def all_cases() -> List[Case]:
    return (config_cases() + name_cases() + data_cases() + shard_cases() + idmap_cases()
            + infer_data_cases() + fs_cases() + kill_cases() + concurrency_cases()
            + signal_cases() + leftover_cases() + disk_full_cases())


# ---------------------------------------------------------------- running a case


def snapshot(project: str) -> Dict[str, str]:
    """sha1 of every file, except Hydra's run folders and logs (new files every run)."""
    out = {}
    for dirpath, _, names in os.walk(project):
        rel = os.path.relpath(dirpath, project)
        if rel.startswith(("outputs/runs", "multirun", "outputs/multirun")):
            continue
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or name.endswith(".lock"):
                continue
            with open(path, "rb") as f:
                out[os.path.relpath(path, project)] = hashlib.sha1(f.read()).hexdigest()
    return out


def leftovers(project: str) -> List[str]:
    found = []
    for dirpath, dirnames, names in os.walk(project):
        for name in names + dirnames:
            if name.startswith(".tmp-") or name.endswith((".part", "-preprocess-work")):
                found.append(os.path.relpath(os.path.join(dirpath, name), project))
    return found


FS_SCRIPT = {
    "ro": 'mount --bind "$D" "$D" && mount -o remount,bind,ro "$D"',
    "full": ('cp -a "$D" "$D.copy" && mount -t tmpfs -o size=8m tmpfs "$D" && cp -a "$D.copy/." "$D/" '
             '&& rm -rf "$D.copy" && (dd if=/dev/zero of="$D/.probe-filler" bs=4k 2>/dev/null; true)'),
}


def fs_report_path(project: str) -> str:
    """Beside the project, not in it: the project itself may be the read-only folder."""
    return project.rstrip("/") + ".probe-fs-report.json"


def command_line(case: Case, project: str) -> List[str]:
    flags = [a for a in case.args if a == "-m"]  # Hydra wants flags before the overrides
    args = [SEQ, case.command] + flags + COMMON[case.command] + [a for a in case.args if a != "-m"]
    if case.fs is None:
        return args
    kind, folder = case.fs.split(":", 1)
    target = os.path.normpath(os.path.join(project, folder))
    os.makedirs(target, exist_ok=True)
    # the checks run inside the namespace, where the mount is still visible
    report = fs_report_path(project)
    check = (f'{sys.executable} -c "import json,sys; sys.path.insert(0, \'{os.path.dirname(__file__)}\'); '
             f'import probe_faults as p; json.dump(p.leftovers(\'{target}\'), open(\'{report}\', \'w\'))"')
    script = f'D="{target}"; {FS_SCRIPT[kind]} && "$@"; rc=$?; {check}; exit $rc'
    return ["unshare", "-m", "sh", "-c", script, "sh"] + args


def one_line_error(result) -> Optional[str]:
    if "Traceback (most recent call last)" in result.stderr:
        return "traceback"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if result.returncode == 0:
        return "silent"
    if not lines or not lines[-1].startswith("sequifier: error:"):
        return "not one line"
    return None


def run_case(case: Case, project: str) -> Dict[str, object]:
    env = dict(os.environ, **case.env)
    env.pop("HYDRA_FULL_ERROR", None)
    if os.path.exists(fs_report_path(project)):  # from an interrupted earlier probe
        os.remove(fs_report_path(project))
    if case.setup:
        case.setup(project)
    before = snapshot(project)
    problems: List[str] = []
    kind = None
    extra: Dict[str, object] = {}
    argv = command_line(case, project)
    if case.concurrent:
        first = subprocess.Popen(argv, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        second_argv = argv if case.second_args is None else command_line(
            Case(case.name, case.category, case.command, case.second_args), project)
        second = subprocess.run(second_argv, cwd=project, env=env, capture_output=True, text=True, timeout=300)
        out, err = first.communicate(timeout=300)
        codes = sorted([first.returncode, second.returncode])
        errs = err + second.stderr
        if "Traceback (most recent call last)" in errs:
            kind = "traceback"
        elif case.second_args is not None and codes != [0, 0]:
            kind = "silent"
            problems.append(f"exit codes {codes}: independent runs got in each other's way: "
                            + (errs.strip().splitlines() or [""])[-1][:200])
        # the second run refuses: the first holds the lock, or (runs that did not overlap)
        # the first's complete outputs exist and are not replaced unasked
        elif case.second_args is None and (codes != [0, 1] or not ("in progress" in errs or "already exist" in errs)):
            kind = "silent"
            problems.append(f"exit codes {codes}: both runs went ahead")
        result = second
    elif case.expect == "rerun":
        proc = subprocess.Popen(argv, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(case.kill_after)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # a run that finished, or was killed after its outputs were complete, is rerun with
        # overwrite (refusing to replace complete outputs unasked is right)
        complete = proc.returncode == 0 or (case.check is not None and case.check(project, None) is None)
        result = subprocess.run(argv + (["overwrite=true"] if complete else []), cwd=project,
                                env=env, capture_output=True, text=True, timeout=600)
        if "Traceback (most recent call last)" in result.stderr:
            kind = "traceback"
        elif result.returncode != 0:
            kind = "silent"
            problems.append("rerun after kill -9 failed: " + (result.stderr.strip().splitlines() or [""])[-1][:200])
    elif case.expect == "signal":
        kind, result, signalled = run_signalled(case, argv, project, env, problems)
        if signalled is not None:
            extra["first_exit"], extra["triggered"] = signalled
    else:
        result = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=600)
        if case.expect == "error":
            kind = one_line_error(result)
            if case.rerun_ok and kind is None:
                # the check comes after: the fault is gone, the same command must now succeed
                plain = command_line(dataclasses.replace(case, fs=None), project)
                again = subprocess.run(plain, cwd=project, env=env, capture_output=True, text=True, timeout=600)
                if again.returncode != 0:
                    kind = "traceback" if "Traceback (most recent call last)" in again.stderr else "silent"
                    problems.append("rerun with space failed: " + (again.stderr.strip().splitlines() or [""])[-1][:200])
        elif result.returncode != 0:
            kind = "traceback" if "Traceback (most recent call last)" in result.stderr else "silent"
            problems.append((result.stderr.strip().splitlines() or [""])[-1][:200])
    if case.check:
        message = case.check(project, result)
        if message:
            kind = kind or "silent"
            problems.append(message)
    lost = []
    if (case.expect == "error" and not case.rerun_ok) or case.concurrent:
        after = snapshot(project)
        lost = [p for p, digest in before.items() if after.get(p) != digest and not p.startswith(".probe")]
    left = leftovers(project)
    report = fs_report_path(project)
    if os.path.exists(report):
        left += json.load(open(report))
        os.remove(report)
    return {"name": case.name, "category": case.category, "kind": kind, "lost": lost, "leftovers": left,
            "problems": problems, "last_line": (result.stderr.strip().splitlines() or [""])[-1][:240], **extra}


STOPPED_STATUS = 75  # sequifier/signals.py


def run_signalled(case: Case, argv: List[str], project: str, env, problems: List[str]):
    """Run the command, signal it, check its exit, then rerun it: (kind, rerun result,
    (first exit status, whether the trigger was seen))."""
    proc = subprocess.Popen(argv, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    start, triggered = time.time(), False
    while proc.poll() is None:
        if case.signal_when:
            triggered = bool(glob.glob(os.path.join(project, case.signal_when)))
        else:
            triggered = time.time() - start >= case.kill_after
        if triggered or time.time() - start > 120:
            break
        time.sleep(0.002 if case.signal_when else 0.02)
    sent_at = time.time()
    for delay, signum in case.signals:
        while time.time() - sent_at < delay:
            time.sleep(0.005)
        if proc.poll() is None:
            (os.killpg if case.to_group else os.kill)(proc.pid, signum)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        problems.append("the signalled command did not end within 300 s")
        return "silent", subprocess.CompletedProcess(argv, -9, "", err), (None, triggered)
    kind = None
    if "Traceback (most recent call last)" in err:
        kind = "traceback"
    elif proc.returncode not in (0, STOPPED_STATUS):
        kind = "silent"
        problems.append(f"exit status {proc.returncode} after a signal (want 0 or {STOPPED_STATUS}): "
                        + (err.strip().splitlines() or [""])[-1][:200])
    left = leftovers(project)  # before the rerun, which would clean them
    if left:
        problems.append(f"leftovers after the signal: {left[:3]}")
        kind = kind or "silent"
    complete = proc.returncode == 0 and case.command != "train"  # outputs there: rerun with overwrite
    result = subprocess.run(argv + (["overwrite=true"] if complete else []), cwd=project, env=env,
                            capture_output=True, text=True, timeout=600)
    if "Traceback (most recent call last)" in result.stderr:
        kind = "traceback"
    elif result.returncode != 0:
        kind = kind or "silent"
        problems.append("rerun after the signal failed: " + (result.stderr.strip().splitlines() or [""])[-1][:200])
    return kind, result, (proc.returncode, triggered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="work folder to keep (default: a temporary one)")
    parser.add_argument("--only", help="run the cases whose name contains this (several: comma-separated)")
    parser.add_argument("--category", help="run the cases of these categories (comma-separated)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    cases = all_cases()
    if args.only:
        cases = [c for c in cases if any(part in c.name for part in args.only.split(","))]
    if args.category:
        cases = [c for c in cases if c.category in args.category.split(",")]
    if args.list:
        for c in cases:
            print(f"{c.category:12} {c.name}")
        print(f"{len(cases)} cases")
        return
    can_mount = os.geteuid() == 0 and subprocess.run(["unshare", "-m", "true"]).returncode == 0
    work = args.keep or tempfile.mkdtemp(prefix="sequifier-probe-")
    os.makedirs(work, exist_ok=True)
    base = make_base(work)
    results = []
    start = time.time()
    for i, case in enumerate(cases):
        if case.fs and not can_mount:
            results.append({"name": case.name, "category": case.category, "kind": "skipped"})
            continue
        project = os.path.join(work, f"case{i:03d}")
        shutil.rmtree(project, ignore_errors=True)
        shutil.copytree(base, project, symlinks=True)
        try:
            row = run_case(case, project)
        except Exception as e:  # noqa: BLE001  (a probe bug: count it, go on)
            row = {"name": case.name, "category": case.category, "kind": "probe error", "problems": [repr(e)],
                   "lost": [], "leftovers": []}
        results.append(row)
        status = "ok" if not (row["kind"] or row["lost"] or row["leftovers"]) else "FAIL"
        print(f"[{i + 1:3}/{len(cases)}] {status:4} {case.category:11} {case.name[:60]:60} "
              f"{row.get('kind') or ''} {row['problems'][:1] if row.get('problems') else ''}"
              f"{' lost ' + str(row['lost'][:3]) if row.get('lost') else ''}"
              f"{' leftovers ' + str(row['leftovers'][:3]) if row.get('leftovers') else ''}", flush=True)
        if not args.keep:
            shutil.rmtree(project, ignore_errors=True)
    ran = [r for r in results if r["kind"] != "skipped"]
    totals = {
        "cases": len(results), "ran": len(ran), "skipped": len(results) - len(ran),
        "tracebacks": sum(r["kind"] == "traceback" for r in ran),
        "silent_wrong_results": sum(r["kind"] == "silent" for r in ran),
        "not_one_line": sum(r["kind"] == "not one line" for r in ran),
        "probe_errors": sum(r["kind"] == "probe error" for r in ran),
        "files_lost": sum(len(r["lost"]) for r in ran),
        "leftovers": sum(len(r["leftovers"]) for r in ran),
        "minutes": round((time.time() - start) / 60, 1),
        "by_category": {c: sum(r["category"] == c for r in ran) for c in sorted({r["category"] for r in ran})},
    }
    signalled = [r for r in ran if r["category"] == "signal"]
    train_signalled = [r for r in signalled if "train" in r["name"]]
    totals["signal_cases"] = len(signalled)
    totals["signal_stopped_75"] = sum(r.get("first_exit") == 75 for r in signalled)
    totals["signal_finished_first"] = sum(r.get("first_exit") == 0 for r in signalled)
    totals["train_resumes_bit_identical"] = f"{sum(not r['kind'] for r in train_signalled)}/{len(train_signalled)}"
    print(json.dumps(totals, indent=2))
    print(f"cases {totals['cases']} (ran {totals['ran']}, skipped {totals['skipped']}): "
          f"tracebacks {totals['tracebacks']}, silent wrong results {totals['silent_wrong_results']}, "
          f"files lost {totals['files_lost']}, leftovers {totals['leftovers']} "
          f"(not one line {totals['not_one_line']}, probe errors {totals['probe_errors']}); "
          f"signals {totals['signal_cases']} ({totals['signal_stopped_75']} stopped with 75, "
          f"{totals['signal_finished_first']} finished first), train resumed bit-identically "
          f"{totals['train_resumes_bit_identical']}")
    with open(os.path.join(work, "probe_results.json"), "w") as f:
        json.dump({"totals": totals, "cases": results}, f, indent=2)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    bad = sum(totals[k] for k in ("tracebacks", "silent_wrong_results", "not_one_line", "probe_errors",
                                  "files_lost", "leftovers"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
