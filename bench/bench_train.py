"""Training throughput and learning on the benchmark data, on 2 CPU cores.

Data: the benchmark set (../shared/bench/gen_data.py defaults, 403,730 rows, 2,000
sequences) preprocessed with seq_length 48, split_ratios [0.8, 0.1, 0.1] and
stride_by_split [8, 48, 48] (made in bench/out/ when missing, shared with bench_infer).

Model: dim_model 128, n_head 4, num_layers 2, dim_feedforward 256, swiglu; inputs
itemId, sup1, itemValue; target itemId (CrossEntropyLoss); batch_size 64, Adam 1e-3.

Timed: `run_train` as the CLI calls it (export skipped), eager and with compile: true.
Reported: training samples (windows) per second of each epoch - the loop's own
measurement of the optimisation steps, without validation - validation windows per
second (forward pass plus metrics), and the last epoch's validation metrics (cross-
entropy, accuracy, top-5 accuracy) against the run's unigram baseline (the training
split's class frequencies: what a model that ignores the context would reach).
Target: >= 700 samples/s.

`--template-settings` trains with the `sequifier make` template's tied embeddings,
learning rate, optimizer, weight-decay groups, scheduler, clipping and criterion instead.

usage: python bench/bench_train.py [--epochs 2] [--cores 2] [--no-compile] [--template-settings]
"""

import argparse
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_infer import OUT, SEQ_LENGTH, ensure_data, pin_cores

TARGET_SAMPLES_PER_S = 700


def template_quality_settings() -> tuple[dict, dict]:
    """(model_spec, training_spec) settings of issue 14 as the `sequifier make` template sets
    them: tied embeddings, learning rate, optimizer, weight decay groups, scheduler,
    clipping, criterion."""
    import yaml

    from sequifier import templates

    with open(os.path.join(os.path.dirname(templates.__file__), "train.yaml")) as f:
        template = yaml.safe_load(f)
    model = {"tie_embeddings": template["model_spec"]["tie_embeddings"]}
    keys = ("learning_rate", "optimizer", "weight_decay_on", "scheduler", "scheduler_step_on", "max_grad_norm")
    training = {k: template["training_spec"][k] for k in keys}
    training["criterion"] = {"itemId": template["training_spec"]["criterion"]["itemId"]}
    return model, training


def train_config(metadata_path: str, name: str, epochs: int, compile_model: bool,
                 template_settings: bool = False):
    cfg = _bench_config(metadata_path, name, epochs, compile_model)
    if template_settings:
        model, training = template_quality_settings()
        for key, value in model.items():
            setattr(cfg.model_spec, key, value)
        for key, value in training.items():
            setattr(cfg.training_spec, key, value)
    return cfg


def _bench_config(metadata_path: str, name: str, epochs: int, compile_model: bool):
    from sequifier.config.schema import ModelSpec, TrainConfig, TrainingSpec

    return TrainConfig(
        project_root=OUT, metadata_config_path=metadata_path, model_name=name,
        target_columns=["itemId"], target_column_types={"itemId": "categorical"},
        input_columns=["itemId", "sup1", "itemValue"], seq_length=SEQ_LENGTH,
        export_generative_model=True, export_embedding_model=False, inference_batch_size=64,
        overwrite=True,
        model_spec=ModelSpec(
            dim_model=128, n_head=4, num_layers=2, dim_feedforward=256,
            initial_embedding_dim=128, activation_fn="swiglu",
            feature_embedding_dims={"itemId": 64, "sup1": 32, "itemValue": 32},
        ),
        training_spec=TrainingSpec(
            device="cpu", epochs=epochs, batch_size=64, learning_rate=1e-3,
            criterion={"itemId": "CrossEntropyLoss"}, save_interval_epochs=epochs,
            scheduler={"name": "none"}, log_interval=100, continue_training=False,
            compile=compile_model,
        ),
    )


def run(metadata_path: str, name: str, epochs: int, compile_model: bool, template_settings: bool = False):
    from sequifier.gate import validate
    from sequifier.train.run import run_train

    cfg = train_config(metadata_path, name, epochs, compile_model, template_settings)
    validate("train", cfg)  # as the CLI does: fills StepLR's defaults, checks the blocks
    start = time.perf_counter()
    result = run_train(cfg, export=False)
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--template-settings", action="store_true",
                        help="train with the template's quality settings (issue 14) instead of "
                             "Adam, constant learning rate, no clipping, untied")
    args = parser.parse_args()
    pin_cores(args.cores)
    metadata_path = ensure_data()

    modes = [("eager", False)] + ([] if args.no_compile else [("compiled", True)])
    rows = []
    for mode, compile_model in modes:
        result, seconds = run(metadata_path, f"bench-train-{mode}", args.epochs, compile_model,
                              args.template_settings)
        rows.append((mode, result, seconds))

    print(f"\ntraining benchmark: {args.cores} threads, batch 64, seq_length {SEQ_LENGTH}, "
          f"{args.epochs} epochs")
    for mode, result, seconds in rows:
        per_epoch = ", ".join(f"{r.samples_per_second:.0f}" for r in result.history)
        steady = result.history[-1].samples_per_second
        verdict = "ok" if steady >= TARGET_SAMPLES_PER_S else f"BELOW target {TARGET_SAMPLES_PER_S}"
        print(f"  {mode:9s} samples/s per epoch: {per_epoch}  (last epoch {steady:.0f}: {verdict}); "
              f"wall {seconds:.0f} s incl. data loading and validation")
    for mode, result, _ in rows:
        per_epoch = ", ".join(f"{r.val_samples_per_second:.0f}" for r in result.history)
        print(f"  {mode:9s} validation windows/s per epoch (forward + metrics): {per_epoch}")
    for mode, result, _ in rows:
        got = result.history[-1].val_metrics["itemId"]
        base = result.baselines["itemId"]["unigram"]
        print(f"  {mode:9s} validation after {result.last_epoch} epochs ({got['count']} items): "
              f"cross-entropy {got['cross_entropy']:.4f} nats (perplexity {math.exp(got['cross_entropy']):.1f}), "
              f"accuracy {got['accuracy']:.4f}, top-5 {got['top5_accuracy']:.4f}; unigram baseline "
              f"{base['cross_entropy']:.4f} nats (perplexity {math.exp(base['cross_entropy']):.1f}), "
              f"accuracy {base['accuracy']:.4f}, top-5 {base['top5_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
