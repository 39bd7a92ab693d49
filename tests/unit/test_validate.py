"""Every validation rule: a failing input and the one line it gives."""

import copy

import pytest
from helpers.config_data import TRAIN_CONFIG
from omegaconf import OmegaConf

from sequifier.config.metadata import Metadata, write_metadata
from sequifier.config.schema import InferConfig, PreprocessConfig, TrainConfig
from sequifier.errors import SequifierError
from sequifier.gate import validate
from sequifier.model.transformer import kv_heads

TRAIN = TRAIN_CONFIG


@pytest.fixture
def root(tmp_path):
    meta = Metadata(name="data", seq_length=8, write_format="parquet",
                    column_types={"itemId": "categorical", "sup1": "categorical", "value": "real"},
                    id_maps={"itemId": {"a": 2}, "sup1": {"x": 2}}, n_classes={"itemId": 3, "sup1": 3},
                    selected_columns_statistics={"value": {"mean": 0.0, "std": 1.0}},
                    original_dtypes={"itemId": "str", "sup1": "str"}, split_paths=["a", "b", "c"])
    write_metadata(meta, str(tmp_path / "configs" / "metadata_configs" / "data.json"))
    return str(tmp_path)


def train_cfg(root, **changes):
    raw = copy.deepcopy(TRAIN)
    raw["project_root"] = root
    raw["input_columns"] = ["itemId", "sup1"]
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), raw))


def errors(command, cfg):
    with pytest.raises(SequifierError) as e:
        validate(command, cfg)
    return str(e.value).splitlines()


def test_valid_config_passes(root):
    validate("train", train_cfg(root))
    validate("train", train_cfg(root, model_spec__tie_embeddings=True, training_spec__criterion={
        "itemId": {"name": "CrossEntropyLoss", "label_smoothing": 0.1}}))


CASES = [
    ({"model_spec__dim_model": 128, "model_spec__n_head": 5, "model_spec__initial_embedding_dim": 128},
     "model_spec.n_head: dim_model (128) must be divisible by n_head (5)"),
    ({"model_spec__attention_type": "gqa", "model_spec__n_kv_heads": 3}, "model_spec.n_kv_heads: must divide n_head (4)"),
    ({"model_spec__attention_type": "mqa", "model_spec__n_kv_heads": 2}, "model_spec.n_kv_heads: attention_type mqa uses 1"),
    ({"model_spec__attention_type": "mha", "model_spec__n_kv_heads": 2}, "model_spec.n_kv_heads: attention_type mha uses n_head"),
    ({"model_spec__attention_type": "xqa"}, "model_spec.attention_type: 'xqa' is not one of mha, mqa, gqa"),
    ({"model_spec__joint_embedding_dim": 16}, "model_spec.joint_embedding_dim: must equal dim_model (32)"),
    ({"model_spec__feature_embedding_dims": {"itemId": 16, "sup1": 8}},
     "model_spec.feature_embedding_dims: widths {'itemId': 16, 'sup1': 8} must be >= 1 and sum to initial_embedding_dim (32)"),
    ({"model_spec__feature_embedding_dims": {"itemId": 32}},
     "model_spec.feature_embedding_dims: no width for input column(s) ['sup1']"),
    ({"model_spec__initial_embedding_dim": 1},
     "model_spec.initial_embedding_dim: 1 is less than the 2 input columns"),
    ({"model_spec__activation_fn": "tanh"}, "model_spec.activation_fn: 'tanh' is not one of swiglu, gelu, relu"),
    ({"model_spec__positional_encoding": "sinus"}, "model_spec.positional_encoding: 'sinus' is not one of"),
    ({"model_spec__normalization": "batch"}, "model_spec.normalization: 'batch' is not one of"),
    ({"model_spec__positional_encoding": "rope", "model_spec__dim_model": 12, "model_spec__initial_embedding_dim": 12},
     "model_spec.positional_encoding: rope needs an even head size"),
    ({"target_column_types": {"itemId": "ordinal"}}, "target_column_types.itemId: 'ordinal' is not one of"),
    ({"training_spec__criterion": {}}, "training_spec.criterion.itemId: missing"),
    ({"training_spec__criterion": {"itemId": "FooLoss"}}, "training_spec.criterion.itemId: unknown loss 'FooLoss'"),
    ({"training_spec__optimizer": {"name": "Adamm"}}, "training_spec.optimizer.name: unknown optimizer 'Adamm'; known: ASGD, AdEMAMix"),
    ({"training_spec__scheduler": {"name": "Cosine"}}, "training_spec.scheduler.name: unknown scheduler 'Cosine'; known:"),
    ({"training_spec__scheduler_step_on": "step"}, "training_spec.scheduler_step_on: 'step' is not one of epoch, batch"),
    # the blocks are typed by the class they name: keys, kinds, required arguments, ranges
    ({"training_spec__optimizer": {"name": "SGD", "weight_decay": 0.01, "betas": [0.9, 0.99]}},
     "training_spec.optimizer.betas: SGD takes no argument 'betas'"),
    ({"training_spec__optimizer": {"name": "AdamW", "weight_decay": "high"}}, "training_spec.optimizer.weight_decay: must be a number, got 'high'"),
    ({"training_spec__optimizer": {"name": "Adam", "amsgrad": 1}}, "training_spec.optimizer.amsgrad: must be true or false"),
    ({"training_spec__optimizer": {"name": "Adam", "betas": [0.9]}}, "training_spec.optimizer.betas: must be a list of 2 values"),
    ({"training_spec__optimizer": {"name": "Adam", "betas": [0.9, 1.5]}}, "training_spec.optimizer: Adam rejected its arguments"),
    ({"training_spec__optimizer": {"name": "Adam", "lr": 0.1}}, "training_spec.optimizer.lr: set the learning rate with training_spec.learning_rate"),
    ({"training_spec__scheduler": {"name": "CosineAnnealingLR", "step_size": 1}}, "training_spec.scheduler.T_max: missing: CosineAnnealingLR needs it"),
    ({"training_spec__scheduler": {"name": "CosineAnnealingLR", "T_max": 2.5}}, "training_spec.scheduler.T_max: must be a whole number"),
    ({"training_spec__scheduler": {"name": "none", "gamma": 0.5}}, "training_spec.scheduler: name 'none' (constant learning rate) takes no arguments"),
    ({"training_spec__scheduler": {"name": "ReduceLROnPlateau"}, "training_spec__scheduler_step_on": "batch"},
     "training_spec.scheduler_step_on: ReduceLROnPlateau follows the validation loss"),
    ({"training_spec__device": "tpu"}, "training_spec.device: 'tpu' is not one of cpu, cuda, mps"),
    ({"training_spec__dropout": 1.5}, "training_spec.dropout: must be in [0, 1)"),
    ({"training_spec__epochs": 0}, "training_spec.epochs: must be >= 1"),
    ({"training_spec__learning_rate": -1.0}, "training_spec.learning_rate: must be > 0"),
    ({"training_spec__backend": "tcp", "training_spec__distributed": True}, "training_spec.backend: 'tcp' is not supported; choose one of nccl, gloo"),
    ({"training_spec__loss_weights": {"sup1": 2.0}}, "training_spec.loss_weights.sup1: 'sup1' is not in target_columns"),
    ({"training_spec__class_share_log_columns": ["value"]}, "training_spec.class_share_log_columns: 'value' must be a categorical target"),
    ({"training_spec__layer_type_dtypes": {"linear": "int4"}}, "training_spec.layer_type_dtypes.linear: 'int4' is not one of"),
    ({"training_spec__layer_type_dtypes": {"conv": "float16"}}, "training_spec.layer_type_dtypes.conv: 'conv' is not one of"),
    ({"training_spec__device": "cuda", "training_spec__layer_type_dtypes": {"linear": "float16"}},
     "training_spec.layer_type_dtypes.linear: float16 parameters cannot be trained on cuda"),
    ({"training_spec__device": "cuda:0", "training_spec__distributed": True, "training_spec__backend": "gloo"},
     "training_spec.device: 'cuda:0' names one GPU, but a distributed run uses one GPU per process"),
    ({"model_spec__tie_embeddings": ["sup1"]}, "model_spec.tie_embeddings: 'sup1' is not a target column"),
    ({"model_spec__tie_embeddings": ["value"]}, "model_spec.tie_embeddings: 'value' is real-valued"),
    ({"input_columns": ["sup1"], "model_spec__tie_embeddings": True},
     "model_spec.tie_embeddings: true, but no categorical column is both an input and a target"),
    ({"training_spec__criterion": {"itemId": {"name": "CrossEntropyLoss", "label_smoothing": 1.5}}},
     "training_spec.criterion.itemId.label_smoothing: must be in [0, 1), got 1.5"),
    ({"training_spec__criterion": {"itemId": {"name": "NLLLoss", "ignore_index": "x"}}},
     "training_spec.criterion.itemId.ignore_index: padding is already left out"),
    ({"training_spec__criterion": {"itemId": {"name": "CrossEntropyLoss", "smoothing": 0.1}}},
     "training_spec.criterion.itemId.smoothing: CrossEntropyLoss takes no argument 'smoothing'"),
    ({"training_spec__criterion": {"itemId": {"name": "CrossEntropyLoss", "reduction": "sum"}}},
     "training_spec.criterion.itemId.reduction: sequifier reduces every loss itself"),
    ({"training_spec__criterion": {"itemId": {"label_smoothing": 0.1}}},
     "training_spec.criterion.itemId: give a loss name or {name: LossName, argument: value}"),
    ({"training_spec__criterion": {"itemId": "MSELoss"}}, "training_spec.criterion.itemId: categorical targets need"),
    ({"training_spec__max_grad_norm": 0.0}, "training_spec.max_grad_norm: must be > 0, or null for no clipping"),
    ({"training_spec__max_grad_norm": -1.0}, "training_spec.max_grad_norm: must be > 0, or null for no clipping"),
    ({"model_name": "a/b"}, "model_name: 'a/b' must be a plain name, not a path"),
    ({"model_name": "../x"}, "model_name: '../x' must be a plain name, not a path"),
    ({"model_name": "x" * 300}, "model_name: is 300 bytes long"),
    ({"model_name": "a\0b"}, "model_name: 'a\\x00b' contains a control character"),
    ({"training_spec__backend": "mpi", "training_spec__distributed": True}, "training_spec.backend: 'mpi' is not supported"),
    ({"training_spec__data_parallelism": "zero3"},
     "training_spec.data_parallelism: 'zero3' is not one of ddp, fsdp"),
    ({"training_spec__scheduler": {"name": "StepLR", "step_size": "abc"}},
     "training_spec.scheduler"),
    ({"training_spec__optimizer": {"name": "AdamW", "betas": [0.9]}},
     "training_spec.optimizer"),
    ({"training_spec__optimizer": {"name": "Adam", "weight_decay": "abc"}},
     "training_spec.optimizer"),
    ({"training_spec__weight_decay_on": ["matrix"]}, "training_spec.weight_decay_on: unknown kind(s) ['matrix']"),
    ({"training_spec__scheduler": {"name": "WarmupCosineLR", "warmup_steps": 3}, "training_spec__epochs": 3},
     "training_spec.scheduler: WarmupCosineLR rejected its arguments {'warmup_steps': 3}: warmup_steps (3) "
     "must be shorter than the run (3 scheduler steps)"),
    ({"read_format": "xlsx"}, "read_format: 'xlsx' is not one of parquet, csv, pt"),
]


@pytest.mark.parametrize("changes,message", CASES, ids=[c[1][:40] for c in CASES])
def test_rule_fails_with_its_line(root, changes, message):
    lines = errors("train", train_cfg(root, **changes))
    assert any(message in line for line in lines), lines


def test_automatic_embedding_sizes_for_any_mix_of_columns(root):
    for changes in ({"input_columns": ["itemId", "value"]},
                    {"input_columns": ["itemId", "sup1", "value"], "model_spec__initial_embedding_dim": 33},
                    {"input_columns": None, "model_spec__initial_embedding_dim": None}):
        validate("train", train_cfg(root, **changes))


def test_types_and_seq_length_default_to_the_metadata(root):
    cfg = train_cfg(root, target_column_types=None, seq_length=None, input_columns=None)
    validate("train", cfg)
    assert cfg.seq_length == 8 and cfg.target_column_types == {"itemId": "categorical"}
    cfg = train_cfg(root, target_columns=["itemId", "value"], target_column_types={"value": "real"},
                    training_spec__criterion={"itemId": "CrossEntropyLoss", "value": "MSELoss"})
    validate("train", cfg)
    assert cfg.target_column_types == {"itemId": "categorical", "value": "real"}


def test_metadata_mismatches(root):
    lines = errors("train", train_cfg(root, seq_length=16, target_columns=["nope"],
                                      target_column_types={"nope": "real"},
                                      training_spec__criterion={"nope": "MSELoss"}))
    assert any(line.startswith("seq_length: 16 differs from the preprocessed data's seq_length 8") for line in lines)
    assert any(line.startswith("target_columns: 'nope' is not a column") for line in lines)


def test_target_type_must_match_metadata(root):
    lines = errors("train", train_cfg(root, target_column_types={"itemId": "real"}))
    assert any("target_column_types.itemId: 'real' but preprocess recorded 'categorical'" in x for x in lines)


def test_missing_metadata_file(tmp_path):
    lines = errors("train", train_cfg(str(tmp_path)))
    assert "metadata_config_path: file" in lines[0] and "not found" in lines[0]


def test_several_problems_one_line_each(root):
    lines = errors("train", train_cfg(root, training_spec__epochs=0, training_spec__batch_size=0))
    assert len(lines) == 2


def test_normalisations(root):
    cfg = train_cfg(root, model_spec__attention_type="mqa")
    validate("train", cfg)
    assert kv_heads(cfg.model_spec) == 1
    assert cfg.training_spec.scheduler == {"name": "StepLR", "step_size": 1, "gamma": 0.99}


def preprocess_cfg(**changes):
    raw = {"project_root": ".", "data_path": "d.csv", "seq_length": 8, "split_ratios": [0.8, 0.2]}
    raw.update(changes)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PreprocessConfig), raw))


@pytest.mark.parametrize("changes,message", [
    ({"split_ratios": [0.5, 0.4]}, "split_ratios: must sum to 1, got [0.5, 0.4] (sum 0.9)"),
    ({"split_ratios": [1.2, -0.2]}, "split_ratios: needs one positive share per split"),
    ({"stride_by_split": [4]}, "stride_by_split: needs one stride per split (2)"),
    ({"write_format": "pt"}, "merge_output: write_format 'pt' writes sharded output: set merge_output: false"),
    ({"subsequence_start_mode": "random"}, "subsequence_start_mode: 'random' is not one of distribute, exact"),
    ({"read_format": "json"}, "read_format: 'json' is not one of csv, parquet"),
    ({"batches_per_file": 0}, "batches_per_file: must be >= 1"),
    ({"sequence_id_column": "t", "position_column": "t"}, "position_column: 't' is also sequence_id_column"),
    ({"sequence_id_column": ""}, "sequence_id_column: must name a column"),
])
def test_preprocess_rules(changes, message):
    assert any(message in line for line in errors("preprocess", preprocess_cfg(**changes)))


def test_valid_preprocess_config():
    validate("preprocess", preprocess_cfg(write_format="pt", merge_output=False))


def infer_cfg(root, **changes):
    raw = {"project_root": root, "model_path": "m.onnx", "metadata_config_path": "configs/metadata_configs/data.json",
           "model_type": "generative", "seq_length": 8, "inference_batch_size": 4}
    raw.update(changes)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(InferConfig), raw))


@pytest.mark.parametrize("changes,message", [
    ({"model_type": "classifier"}, "model_type: 'classifier' is not one of generative, embedding"),
    ({"write_format": "pt"}, "write_format: 'pt' is not one of csv, parquet"),
    ({"autoregression_extra_steps": 3}, "autoregression_extra_steps: is set but autoregression is false"),
    ({"model_path": []}, "model_path: must be a model file path or a list of them"),
    ({"seq_length": 9}, "seq_length: 9 differs from the preprocessed data's seq_length 8"),
    ({"target_columns": ["itemId"], "sample_from_distribution_columns": ["sup1"]},
     "sample_from_distribution_columns: 'sup1' is not in target_columns"),
])
def test_infer_rules(root, changes, message):
    assert any(message in line for line in errors("infer", infer_cfg(root, **changes)))


def test_valid_infer_config(root):
    validate("infer", infer_cfg(root, model_path=["a.onnx", "b.pt"]))


def test_gqa_without_n_kv_heads_agrees_with_the_model(root):
    """One rule: validation accepts what the model builds (null -> n_head, as the spec says)."""
    cfg = train_cfg(root, model_spec__attention_type="gqa")
    validate("train", cfg)
    assert kv_heads(cfg.model_spec) == cfg.model_spec.n_head


def test_infer_seq_length_defaults_to_the_metadata(root):
    cfg = infer_cfg(root, seq_length=None)
    validate("infer", cfg)
    assert cfg.seq_length == 8
