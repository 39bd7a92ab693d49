"""Composition through Hydra's compose API: every group option, precedence, aliases."""

import pytest
from helpers.config_data import TRAIN_CONFIG
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sequifier.config import compose as comp
from sequifier.config.problems import Problems
from sequifier.config.schema import TrainConfig
from sequifier.errors import SequifierError
from sequifier.train import optimizers, schedulers

USER = TRAIN_CONFIG


def composed(overrides, user=USER, command="train"):
    """Compose as the CLI does: overrides rewritten, the YAML registered for them."""
    overrides = comp.rewrite_overrides(command, overrides)
    comp.register_configs(command, user, overrides)
    with initialize_config_module(config_module="sequifier.conf", version_base="1.3"):
        return compose(config_name=command, overrides=overrides)


GROUP_OPTIONS = {
    "model_spec": {"small": {"dim_model": 64}, "base": {"dim_model": 128}, "large": {"dim_model": 512},
                   "rope": {"positional_encoding": "rope"}, "gqa": {"attention_type": "gqa", "n_kv_heads": 2},
                   "mqa": {"attention_type": "mqa", "n_kv_heads": 1}},
    "attention": {"mha": {"attention_type": "mha", "n_kv_heads": None},
                  "mqa": {"attention_type": "mqa", "n_kv_heads": 1},
                  "gqa": {"attention_type": "gqa", "n_kv_heads": 2}},
    "training_spec": {"default": {"epochs": 10}, "fast_dev": {"epochs": 1, "batch_size": 16}},
    "optimizer": {"adam": {"name": "Adam"}, "adamw": {"name": "AdamW"},
                  "ademamix": {"name": "AdEMAMix"}, "sgd": {"name": "SGD"}},
    "scheduler": {"step_lr": {"name": "StepLR"}, "cosine": {"name": "CosineAnnealingLR"},
                  "none": {"name": "none"},
                  "warmup_cosine": {"name": "WarmupCosineLR", "warmup_fraction": 0.05}},
}
WHERE = {"model_spec": "model_spec", "attention": "model_spec", "training_spec": "training_spec",
         "optimizer": "training_spec.optimizer", "scheduler": "training_spec.scheduler"}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts])
def test_every_group_option_composes(group, option):
    cfg = composed([f"+{group}={option}"])
    node = OmegaConf.select(cfg, WHERE[group])
    for key, value in GROUP_OPTIONS[group][option].items():
        assert node[key] == value
    config = comp.to_dataclass("train", cfg)
    assert isinstance(config, TrainConfig)
    # every optimizer/scheduler preset is a complete block its class accepts
    spec = config.training_spec
    p = Problems()
    optimizers.optimizer_rules(spec, p)
    schedulers.scheduler_rules(spec, p)
    assert p.lines == []


def test_precedence_schema_yaml_preset_override():
    cfg = composed(["+model_spec=small", "model_spec.n_head=2"])
    assert cfg.model_spec.dim_model == 64          # preset beats YAML (32)
    assert cfg.model_spec.n_head == 2              # override beats preset
    assert cfg.model_spec.num_layers == 2          # preset
    assert cfg.training_spec.batch_size == 4       # YAML beats schema
    assert cfg.training_spec.log_interval == 10    # schema default


def test_lr_alias_on_command_line_and_in_yaml():
    cfg = composed(comp.rewrite_overrides("train", ["training_spec.lr=3e-4"]))
    assert comp.to_dataclass("train", cfg).training_spec.learning_rate == pytest.approx(3e-4)
    user = {**USER, "training_spec": {**USER["training_spec"]}}
    del user["training_spec"]["learning_rate"]
    user["training_spec"]["lr"] = 0.05
    comp.fold_aliases(user, "train.yaml")
    assert composed([], user=user).training_spec.learning_rate == 0.05


def test_lr_and_learning_rate_disagreeing_is_an_error():
    user = {"training_spec": {"lr": 0.1, "learning_rate": 0.2}}
    with pytest.raises(SequifierError, match="training_spec.lr .* and training_spec.learning_rate .* disagree"):
        comp.fold_aliases(user, "train.yaml")


def test_missing_mandatory_value_names_the_field():
    user = {k: v for k, v in USER.items() if k != "model_name"}
    with pytest.raises(SequifierError, match="Missing mandatory value: model_name"):
        comp.to_dataclass("train", composed([], user=user))


def test_nested_missing_value_names_the_path():
    user = {**USER, "model_spec": {k: v for k, v in USER["model_spec"].items() if k != "num_layers"}}
    with pytest.raises(SequifierError, match="Missing mandatory value: model_spec.num_layers"):
        comp.to_dataclass("train", composed([], user=user))


def test_unknown_yaml_key_suggests_the_right_one(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model_spec:\n  dim_modle: 3\ntraining_spec:\n  epoch: 2\n")
    with pytest.raises(SequifierError) as e:
        comp.load_user_config("train", str(path))
    lines = str(e.value).splitlines()
    assert "model_spec.dim_modle: unknown field; did you mean 'dim_model'?" in lines[0]
    assert "training_spec.epoch: unknown field; did you mean 'epochs'?" in lines[1]


def test_unknown_override_key_suggests_the_right_one():
    with pytest.raises(SequifierError, match="training_spec.batchsize: unknown field .* did you mean 'batch_size'"):
        comp.rewrite_overrides("train", ["training_spec.batchsize=3"])


def test_free_form_dicts_and_groups_pass_override_check():
    args = ["training_spec.optimizer.weight_decay=0.1", "+model_spec=gqa", "hydra.verbose=true",
            "+training_spec.criterion.sup1=MSELoss", "+optimizer=sgd", "~training_spec.criterion.itemId"]
    # map entries are set whether or not they exist; an optimizer preset replaces a block
    assert comp.rewrite_overrides("train", args) == [
        "++training_spec.optimizer.weight_decay=0.1", "+model_spec=gqa", "hydra.verbose=true",
        "++training_spec.criterion.sup1=MSELoss", "optimizer=sgd", "~training_spec.criterion.itemId"]


WITH_BLOCKS = {**USER, "training_spec": {**USER["training_spec"],
                                         "optimizer": {"name": "AdamW", "weight_decay": 0.01},
                                         "scheduler": {"name": "StepLR", "step_size": 2, "gamma": 0.5}}}


@pytest.mark.parametrize("form", ["+", ""])
def test_a_preset_replaces_the_whole_block(form):
    cfg = composed([f"{form}optimizer=sgd", f"{form}scheduler=cosine"], user=WITH_BLOCKS)
    assert OmegaConf.to_container(cfg.training_spec.optimizer) == {"name": "SGD", "momentum": 0.9}
    assert OmegaConf.to_container(cfg.training_spec.scheduler) == {"name": "CosineAnnealingLR", "T_max": 10}


def test_yaml_block_then_preset_then_key_override():
    cfg = composed([], user=WITH_BLOCKS)  # no preset: the YAML's block as written
    assert OmegaConf.to_container(cfg.training_spec.optimizer) == {"name": "AdamW", "weight_decay": 0.01}
    cfg = composed(["+optimizer=sgd", "training_spec.optimizer.momentum=0.5",
                    "training_spec.optimizer.nesterov=true"], user=WITH_BLOCKS)
    assert OmegaConf.to_container(cfg.training_spec.optimizer) == {"name": "SGD", "momentum": 0.5, "nesterov": True}
    # a whole block on the command line replaces the YAML's block too
    cfg = composed(["training_spec.scheduler={name: ExponentialLR, gamma: 0.9}"], user=WITH_BLOCKS)
    assert OmegaConf.to_container(cfg.training_spec.scheduler) == {"name": "ExponentialLR", "gamma": 0.9}


def test_a_preset_and_a_whole_block_at_once_is_an_error():
    with pytest.raises(SequifierError, match="training_spec.optimizer: given as a whole and as the preset"):
        comp.rewrite_overrides("train", ["+optimizer=sgd", "training_spec.optimizer={name: Adam}"])


@pytest.mark.parametrize("overrides,where,expected", [
    (["training_spec.class_weights={itemId: [0, 0, 1, 2]}"], "training_spec.class_weights", {"itemId": [0, 0, 1, 2]}),
    (["training_spec.class_weights.itemId=[0,0,1,2]"], "training_spec.class_weights", {"itemId": [0, 0, 1, 2]}),
    (["training_spec.loss_weights.itemId=2"], "training_spec.loss_weights", {"itemId": 2.0}),
    (["model_spec.feature_embedding_dims.itemId=32"], "model_spec.feature_embedding_dims", {"itemId": 32}),
    (["+training_spec.layer_type_dtypes.linear=float32"], "training_spec.layer_type_dtypes", {"linear": "float32"}),
    # a whole map replaces the YAML's (here the criterion's itemId entry); entries add to it
    (["training_spec.criterion={other: MSELoss}", "training_spec.criterion.more=L1Loss"],
     "training_spec.criterion", {"other": "MSELoss", "more": "L1Loss"}),
])
def test_optional_maps_are_set_from_the_command_line(overrides, where, expected):
    user = {**USER, "model_spec": {**USER["model_spec"], "feature_embedding_dims": None},
            "training_spec": {**USER["training_spec"], "class_weights": None, "layer_type_dtypes": None}}
    assert OmegaConf.to_container(OmegaConf.select(composed(overrides, user=user), where)) == expected


def test_optional_maps_can_be_swept():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = comp.rewrite_overrides("train", ["model_spec.feature_embedding_dims.itemId=16,32"])
    parsed = OverridesParser.create().parse_overrides(args)
    jobs = BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]
    values = [composed(job).model_spec.feature_embedding_dims.itemId for job in jobs]
    assert values == [16, 32]


def test_lr_and_learning_rate_disagreeing_on_the_command_line_is_an_error():
    with pytest.raises(SequifierError, match="training_spec.lr .0.1. and training_spec.learning_rate .0.2. disagree"):
        comp.rewrite_overrides("train", ["training_spec.lr=0.1", "training_spec.learning_rate=0.2"])
    assert comp.rewrite_overrides("train", ["training_spec.lr=0.1", "training_spec.learning_rate=0.1"]) == [
        "training_spec.learning_rate=0.1", "training_spec.learning_rate=0.1"]


@pytest.mark.parametrize("command", ["preprocess", "infer"])
def test_other_commands_compose(command):
    user = {"project_root": ".", "seq_length": 8}
    cfg = composed(["+data_path=x.csv" if command == "preprocess" else "model_type=generative"],
                   user=user, command=command)
    assert cfg.seq_length == 8


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(SequifierError, match="must hold a mapping"):
        comp.load_user_config("train", str(path))


def test_config_path_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert comp.find_user_config("train", None, None) is None
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.yaml").write_text("model_name: a\n")
    (tmp_path / "configs" / "other.yaml").write_text("model_name: b\n")
    assert comp.find_user_config("train", None, None) == "configs/train.yaml"
    assert comp.find_user_config("train", "configs/other.yaml", None) == "configs/other.yaml"
    assert comp.find_user_config("train", "configs", "other") == "configs/other.yaml"
    assert comp.find_user_config("train", None, "other") == "configs/other.yaml"
    with pytest.raises(SequifierError, match="config file 'configs/missing.yaml' not found"):
        comp.find_user_config("train", "configs/missing.yaml", None)
    path, name, rest = comp.split_config_flags(["--config-path=c.yaml", "a=1", "-cn", "x"])
    assert (path, name, rest) == ("c.yaml", "x", ["a=1"])
