#!/usr/bin/env python3
"""Measured effect of the training-quality options (issue 14) on held-out data.

Two data sets, both preprocessed with seq_length 48, split_ratios [0.8, 0.1, 0.1]
(each sequence's last 10% is the test split) and strides [24, 48, 48]:

* nextitem: bench/gen_nextitem.py (3,000 items, Zipf popularity, successor and topic
  structure, lengths 20-700); input and target itemId.
* multivariate: ../shared/bench/gen_data.py (100 items, sup1, itemValue); inputs itemId,
  sup1, itemValue; target itemId.

Every variant trains the same tiny model (dim_model 64, 4 heads, 2 layers,
feed-forward 128, swiglu, batch 64, AdamW lr 1e-3 unless the variant says otherwise,
dropout 0.1, seed 1010) for
`--epochs` epochs; the best epoch by validation loss (split 1) is then scored on the
test split (split 2, never seen in training or model selection): accuracy, top-10
accuracy and NDCG@10 over every scored slot, plus the plain cross-entropy (nats).

Metrics: accuracy and top-10 come from `sequifier.metrics.categorical_sums` (the
functions `sequifier train` reports); NDCG@10 is computed here (one relevant item per
slot: 1 / log2(rank + 1) when its rank is <= 10, else 0), because `sequifier
evaluate` was not on main when the first rows were measured.

usage: nice python bench/quality_compare.py [--epochs 3] [--data nextitem,multivariate]
       [--variants baseline,clip,...] [--threads 1]
"""

import argparse
import copy
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out", "quality")
GEN_DATA = os.path.join(HERE, "..", "..", "shared", "bench", "gen_data.py")
SEQ_LENGTH = 48

# The baseline is the template's settings before issue 14; every other variant changes one thing.
BASELINE = {
    "optimizer": {"name": "AdamW", "weight_decay": 0.01},
    "weight_decay_on": ["matrices", "embeddings", "norms", "biases"],
    "scheduler": {"name": "StepLR", "step_size": 1, "gamma": 0.99},
    "scheduler_step_on": "epoch",
    "max_grad_norm": None,
    "tie_embeddings": False,
    "criterion": "CrossEntropyLoss",
    "learning_rate": 1e-3,
}
WARMUP_COSINE = {"scheduler": {"name": "WarmupCosineLR", "warmup_fraction": 0.05, "min_lr_ratio": 0.1},
                 "scheduler_step_on": "batch"}
VARIANTS = {
    "baseline": {},
    "clip": {"max_grad_norm": 1.0},
    "warmup_cosine": WARMUP_COSINE,
    "decay_matrices": {"weight_decay_on": ["matrices"]},
    "decay_matrices_0.1": {"weight_decay_on": ["matrices"], "optimizer": {"name": "AdamW", "weight_decay": 0.1}},
    "tied": {"tie_embeddings": True},
    "label_smoothing": {"criterion": {"name": "CrossEntropyLoss", "label_smoothing": 0.1}},
    "all": {"max_grad_norm": 1.0, **WARMUP_COSINE, "weight_decay_on": ["matrices"], "tie_embeddings": True,
            "criterion": {"name": "CrossEntropyLoss", "label_smoothing": 0.1}},
    "lr3e-3": {"learning_rate": 3e-3},
    "warmup_cosine_lr3e-3": {**WARMUP_COSINE, "learning_rate": 3e-3},
    "clip_decay_matrices": {"max_grad_norm": 1.0, "weight_decay_on": ["matrices"]},
    # the `sequifier make` template's settings after this comparison
    "new_template": {"max_grad_norm": 1.0, **WARMUP_COSINE, "weight_decay_on": ["matrices"], "learning_rate": 3e-3},
    "new_template_tied": {"max_grad_norm": 1.0, **WARMUP_COSINE, "weight_decay_on": ["matrices"], "learning_rate": 3e-3,
                          "tie_embeddings": True},
    "all_but_smoothing": {"max_grad_norm": 1.0, **WARMUP_COSINE, "weight_decay_on": ["matrices"],
                          "tie_embeddings": True},
}
DATASETS = {
    "nextitem": {"inputs": ["itemId"], "dims": None},
    "multivariate": {"inputs": ["itemId", "sup1", "itemValue"], "dims": {"itemId": 32, "sup1": 16, "itemValue": 16}},
}


def make_data(name: str) -> str:
    """Metadata path of the preprocessed data set (generated once)."""
    from sequifier.config.schema import PreprocessConfig
    from sequifier.data.preprocess import run_preprocess

    root = os.path.join(OUT, name)
    metadata = os.path.join(root, "configs", "metadata_configs", f"{name}.json")
    if os.path.exists(metadata):
        return metadata
    os.makedirs(root, exist_ok=True)
    csv = os.path.join(root, f"{name}.csv")
    if name == "nextitem":
        subprocess.run([sys.executable, os.path.join(HERE, "gen_nextitem.py"), csv, "--sequences", "1000"], check=True)
    else:
        subprocess.run([sys.executable, GEN_DATA, csv, "--sequences", "600"], check=True)
    run_preprocess(PreprocessConfig(
        project_root=root, data_path=csv, read_format="csv", write_format="parquet", seq_length=SEQ_LENGTH,
        split_ratios=[0.8, 0.1, 0.1], stride_by_split=[24, 48, 48], dataset_name=name, overwrite=True,
    ))
    return metadata


def train_config(data: str, variant: str, epochs: int):
    from omegaconf import OmegaConf

    from sequifier.config.schema import TrainConfig

    settings = {**copy.deepcopy(BASELINE), **copy.deepcopy(VARIANTS[variant])}
    root = os.path.join(OUT, data)
    raw = {
        "project_root": root, "metadata_config_path": f"configs/metadata_configs/{data}.json",
        "model_name": f"{variant}", "target_columns": ["itemId"],
        "target_column_types": {"itemId": "categorical"}, "input_columns": DATASETS[data]["inputs"],
        "seq_length": SEQ_LENGTH, "export_generative_model": False, "export_embedding_model": False,
        "inference_batch_size": 64, "overwrite": True,
        "model_spec": {"dim_model": 64, "n_head": 4, "num_layers": 2, "dim_feedforward": 128,
                       "initial_embedding_dim": 64, "feature_embedding_dims": DATASETS[data]["dims"],
                       "tie_embeddings": settings["tie_embeddings"]},
        "training_spec": {
            "device": "cpu", "epochs": epochs, "batch_size": 64, "learning_rate": settings["learning_rate"],
            "dropout": 0.1,
            "optimizer": settings["optimizer"], "scheduler": settings["scheduler"],
            "scheduler_step_on": settings["scheduler_step_on"], "max_grad_norm": settings["max_grad_norm"],
            "weight_decay_on": settings["weight_decay_on"], "criterion": {"itemId": settings["criterion"]},
            "save_interval_epochs": epochs, "log_interval": 1000, "continue_training": False,
        },
    }
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), raw))


def score_test_split(cfg, checkpoint_path: str) -> dict:
    """Test-split metrics of the best epoch's weights."""
    import dataclasses

    import torch

    from sequifier.config.metadata import read_metadata
    from sequifier.metrics import categorical_metrics, categorical_sums, empty_sums
    from sequifier.model.transformer import build_model
    from sequifier.train.data import make_batch_sources

    metadata = read_metadata(os.path.join(cfg.project_root, cfg.metadata_config_path))
    test_cfg = dataclasses.replace(cfg, validation_data_path=metadata.split_paths[2])
    _, test_batches = make_batch_sources(test_cfg, metadata, list(cfg.input_columns), torch.device("cpu"))
    model = build_model(cfg, metadata)
    model.load_state_dict(torch.load(checkpoint_path, weights_only=True)["state"]["best_model"])
    model.eval()
    sums = empty_sums("categorical")
    ndcg_sum = 0.0
    with torch.no_grad():
        for batch in test_batches:
            logits = model(batch.inputs)["itemId"]
            target = batch.targets["itemId"]
            mask = batch.target_mask
            sums += categorical_sums(logits, target, 10, mask)
            scored_logits, scored_target = logits[mask], target[mask]
            target_logit = scored_logits.gather(1, scored_target[:, None])
            rank = (scored_logits > target_logit).sum(1) + 1  # 1 = best
            ndcg_sum += torch.where(rank <= 10, 1.0 / torch.log2(rank.double() + 1), 0.0).sum().item()
    metrics = categorical_metrics(sums, 10)
    metrics["ndcg10"] = ndcg_sum / metrics["count"]
    return metrics


def run(data: str, variant: str, epochs: int) -> dict:
    from sequifier.gate import validate
    from sequifier.train.run import run_train

    cfg = train_config(data, variant, epochs)
    validate("train", cfg)
    start = time.perf_counter()
    result = run_train(cfg, export=False)
    seconds = time.perf_counter() - start
    metrics = score_test_split(cfg, result.checkpoint_path)
    return {"data": data, "variant": variant, "epochs": epochs, "best_epoch": result.best_epoch,
            "val_loss": result.best_val_loss, "test_cross_entropy": metrics["cross_entropy"],
            "accuracy": metrics["accuracy"], "top10": metrics["top10_accuracy"], "ndcg10": metrics["ndcg10"],
            "test_slots": int(metrics["count"]), "seconds": seconds}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--data", default="nextitem,multivariate")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=os.path.join(OUT, "results.jsonl"))
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    for data in a.data.split(","):
        make_data(data)
        for variant in a.variants.split(","):
            row = run(data, variant, a.epochs)
            with open(a.results, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
