"""The train command guide (spec/train-command.md) field by field, where other tests leave a gap.

Each test here fails if the named field loses its documented effect: schema defaults and
mandatory fields, split path overrides, csv input, the lazy loader's knobs, activation and
normalization choices, the concat limit inside the forward pass, the export's example
batch, and the log lines for settings a run accepts but does not apply.
"""

import dataclasses
import os

import pytest
import torch
from helpers.train_data import log_text, make_config, make_project
from omegaconf import MISSING, OmegaConf

from sequifier.config.metadata import read_metadata
from sequifier.config.schema import ModelSpec, TrainConfig, TrainingSpec
from sequifier.train.data import make_batch_sources
from sequifier.train.run import run_train

pytestmark = pytest.mark.usefixtures("single_thread")

# (field, default) per the spec's tables; MISSING = mandatory ("Yes", no default).
SPEC_TRAIN = {
    "project_root": MISSING, "metadata_config_path": MISSING, "model_name": MISSING,
    "training_data_path": None, "validation_data_path": None, "read_format": "parquet",
    "target_columns": MISSING, "input_columns": None,
    # Deliberate deviations (issue 12): null = what the metadata records; a value that
    # disagrees with it is still an error (test_validate).
    "target_column_types": None, "seq_length": None,
    "export_generative_model": MISSING, "export_embedding_model": MISSING,
    "inference_batch_size": MISSING, "export_onnx": True, "export_pt": False,
    "export_with_dropout": False,
}
SPEC_MODEL = {
    "dim_model": MISSING, "n_head": MISSING, "num_layers": MISSING, "dim_feedforward": MISSING,
    "initial_embedding_dim": None,  # deliberate deviation (issue 12): null = dim_model
    "joint_embedding_dim": None, "feature_embedding_dims": None,
    "activation_fn": "swiglu", "attention_type": "mha", "n_kv_heads": None,
    "positional_encoding": "learned", "rope_theta": 10000.0, "normalization": "rmsnorm",
    "norm_first": True,
}
SPEC_TRAINING = {
    "device": MISSING, "epochs": MISSING, "batch_size": MISSING, "learning_rate": MISSING,
    "dropout": 0.0, "optimizer": {"name": "Adam"}, "scheduler_step_on": "epoch",
    "criterion": MISSING, "loss_weights": None, "class_weights": None,
    "save_interval_epochs": MISSING, "early_stopping_epochs": None, "log_interval": 10,
    "class_share_log_columns": [], "enforce_determinism": False, "num_workers": 0,
    "max_ram_gb": 16.0, "backend": "nccl", "device_max_concat_length": 12,
    "continue_training": True, "distributed": False, "load_full_data_to_ram": True,
    "layer_type_dtypes": None, "layer_autocast": True,
}


def defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


@pytest.mark.parametrize("cls,spec", [(TrainConfig, SPEC_TRAIN), (ModelSpec, SPEC_MODEL),
                                      (TrainingSpec, SPEC_TRAINING)], ids=["root", "model_spec", "training_spec"])
def test_schema_defaults_and_mandatory_fields_follow_the_spec(cls, spec):
    actual = defaults(cls)
    for name, expected in spec.items():
        assert name in actual, f"{cls.__name__}.{name} is not in the schema"
        assert actual[name] == expected, f"{cls.__name__}.{name}: {actual[name]!r} != spec {expected!r}"
    # the spec's types: a float field holds a float, so OmegaConf accepts e.g. max_ram_gb: 0.5
    node = OmegaConf.structured(cls)
    for name, expected in spec.items():
        if isinstance(expected, float):
            OmegaConf.update(node, name, 0.5)
            assert node[name] == 0.5


def test_scheduler_default_is_step_lr():
    # the spec's "StepLR..." default: validation fills step_size 1, gamma 0.99 (test_validate)
    assert TrainingSpec().scheduler["name"] == "StepLR"


# ---- file system & inputs -------------------------------------------------------------

def test_split_path_fields_override_the_metadata_splits(tmp_path):
    root = make_project(tmp_path, n_train=40, n_val=24)
    metadata = read_metadata(os.path.join(root, "configs/metadata_configs/tiny.json"))
    swapped = make_config(root, training_data_path=metadata.split_paths[1],
                          validation_data_path=os.path.join(root, metadata.split_paths[0]))  # absolute works too
    train, val = make_batch_sources(swapped, metadata, ["itemId", "itemValue"], torch.device("cpu"))
    assert (train.n_samples, val.n_samples) == (24, 40)
    train, val = make_batch_sources(make_config(root), metadata, ["itemId", "itemValue"], torch.device("cpu"))
    assert (train.n_samples, val.n_samples) == (40, 24)


def test_csv_read_format_trains_on_the_same_windows_as_parquet(tmp_path):
    a = make_project(tmp_path / "a", n_train=40, n_val=24)
    b = make_project(tmp_path / "b", n_train=40, n_val=24, write_format="csv")
    meta_a = read_metadata(os.path.join(a, "configs/metadata_configs/tiny.json"))
    meta_b = read_metadata(os.path.join(b, "configs/metadata_configs/tiny.json"))
    ta, _ = make_batch_sources(make_config(a), meta_a, ["itemId", "itemValue"], torch.device("cpu"))
    tb, _ = make_batch_sources(make_config(b, read_format="csv"), meta_b, ["itemId", "itemValue"],
                               torch.device("cpu"))
    assert torch.equal(ta.data.values["itemId"], tb.data.values["itemId"])
    torch.testing.assert_close(ta.data.values["itemValue"], tb.data.values["itemValue"])
    assert torch.equal(ta.data.target_start, tb.data.target_start)


# ---- lazy loading knobs reach the loader ----------------------------------------------

def test_max_ram_gb_and_num_workers_reach_the_lazy_loader(tmp_path):
    from sequifier.data.lazy import GB

    root = make_project(tmp_path, n_train=40, n_val=24, write_format="pt")
    metadata = read_metadata(os.path.join(root, "configs/metadata_configs/tiny.json"))
    lazy = {"read_format": "pt", "training_spec.load_full_data_to_ram": False}
    for workers, ram in ((0, 0.25), (2, 0.5)):
        cfg = make_config(root, **lazy, **{"training_spec.max_ram_gb": ram, "training_spec.num_workers": workers})
        train, _ = make_batch_sources(cfg, metadata, ["itemId", "itemValue"], torch.device("cpu"))
        assert train.loader.num_workers == workers
        assert train.loader.max_bytes_per_stream == pytest.approx(ram * GB / max(workers, 1))


# ---- model architecture -----------------------------------------------------------------

def test_num_layers_and_n_head_shape_the_backbone():
    from test_model import make_inputs, make_model

    assert len(make_model(num_layers=3).blocks) == 3
    two, four = make_model(n_head=2), make_model(n_head=4)
    assert (two.blocks[0].attention.n_head, two.blocks[0].attention.head_dim) == (2, 8)
    # the same weights (MHA's qkv shape does not depend on n_head) split into other heads
    assert all(torch.equal(a, b) for a, b in zip(two.state_dict().values(), four.state_dict().values()))
    with torch.no_grad():
        assert not torch.allclose(two(make_inputs())["a"], four(make_inputs())["a"])


def test_activation_fn_changes_the_feed_forward():
    from test_model import make_inputs, make_model

    swiglu, gelu, relu = (make_model(activation_fn=a) for a in ("swiglu", "gelu", "relu"))
    ff = swiglu.blocks[0].feed_forward
    width = {m.out_features for m in ff.modules() if isinstance(m, torch.nn.Linear)}
    assert 2 * 32 in width  # gate and value halves of SwiGLU
    inputs = make_inputs()
    with torch.no_grad():
        outputs = [m(inputs)["a"] for m in (swiglu, gelu, relu)]
    assert not torch.allclose(outputs[1], outputs[2])  # same weights, different activation
    assert not torch.allclose(outputs[0], outputs[1])


def test_normalization_picks_the_norm_layer():
    from test_model import make_inputs, make_model

    rms, layer = make_model(normalization="rmsnorm"), make_model(normalization="layer_norm")
    assert isinstance(rms.final_norm, torch.nn.RMSNorm) and isinstance(layer.final_norm, torch.nn.LayerNorm)
    assert isinstance(rms.blocks[0].norm_attention, torch.nn.RMSNorm)
    with torch.no_grad():
        assert not torch.allclose(rms(make_inputs())["a"], layer(make_inputs())["a"])


def test_device_max_concat_length_limits_the_forward_concat(monkeypatch):
    from test_model import make_inputs, make_layout, make_spec

    from sequifier.model import transformer
    from sequifier.model.transformer import SequifierModel

    seen = []
    original = transformer.concat_chunked

    def spy(tensors, dim, max_length):
        seen.append(max_length)
        return original(tensors, dim, max_length)

    monkeypatch.setattr(transformer, "concat_chunked", spy)
    SequifierModel(make_spec(), make_layout(), max_concat_length=2)(make_inputs())
    assert seen == [2]


# ---- export -------------------------------------------------------------------------------

def test_inference_batch_size_is_the_onnx_example_batch(tmp_path, monkeypatch):
    from test_model import make_model, make_train_config

    from sequifier import export

    seen = []
    monkeypatch.setattr(export, "export_onnx",
                        lambda model, path, model_type, example_batch, *a, **k: seen.append(example_batch))
    cfg = make_train_config(export_onnx=True, export_pt=False, inference_batch_size=7)
    cfg.training_spec.layer_type_dtypes = None
    model = make_model()
    export.export_models(model, model.layout, cfg, str(tmp_path), "last", 1, {})
    assert seen == [7, 7]  # generative and embedding


# ---- settings a run accepts but does not apply are logged, not silently dropped ------------

def test_unused_num_workers_world_size_backend_and_cpu_autocast_are_logged(tmp_path):
    root = make_project(tmp_path, n_train=32, n_val=16)
    one_epoch = {"training_spec.epochs": 1}
    # backend is checked only where it takes effect (distributed: true); unused, it is logged
    noted = log_text(run_train(make_config(root, model_name="a", **one_epoch,
                                           **{"training_spec.num_workers": 2,
                                              "training_spec.world_size": 2,
                                              "training_spec.max_ram_gb": 3.5,
                                              "training_spec.backend": "mpi"}), export=False))
    assert "training_spec.num_workers (2) is not used with load_full_data_to_ram: true" in noted
    assert ("training_spec.max_ram_gb (3.5) is not used with load_full_data_to_ram: true: the splits "
            "are loaded into RAM whole") in noted
    assert "training_spec.world_size (2) is not used: distributed is false" in noted
    assert "training_spec.backend (mpi) is not used: distributed is false" in noted
    assert "training_spec.layer_autocast: no autocast on cpu for a float32 model" in noted
    quiet = log_text(run_train(make_config(root, model_name="b", **one_epoch,
                                           **{"training_spec.layer_autocast": False}), export=False))
    assert "training_spec." not in quiet


def test_max_ram_gb_noted_where_it_cannot_bound_the_cache():
    from sequifier.train.run import _unused_setting_notes

    def notes(**fields):
        spec = make_config("/x", **{f"training_spec.{k}": v for k, v in fields.items()}).training_spec
        return [n for n in _unused_setting_notes(spec, torch.device("cpu"), None, {"v": "real"})
                if n.startswith("training_spec.max_ram_gb")]

    distributed = notes(max_ram_gb=4, distributed=True)
    assert len(distributed) == 1 and "each rank keeps every piece of its shard" in distributed[0]
    assert "\n" not in distributed[0]
    assert notes(max_ram_gb=4, load_full_data_to_ram=False) == []  # lazy loading: it bounds the cache
    assert notes() == []  # the default is not the user's choice: no line on every run
