"""Evaluate: every test item scored once, its quality against the unigram baseline, and
predicted items per second end to end, on 2 CPU cores.

Data: the benchmark set (../shared/bench/gen_data.py defaults, 403,730 rows, 2,000
sequences) preprocessed as in bench_infer.py (seq_length 48, split_ratios
[0.8, 0.1, 0.1], stride_by_split [8, 48, 48]).

Model: the training benchmark's model (bench_train.py: dim_model 128, 4 heads, 2 layers,
SwiGLU 256; inputs itemId, sup1, itemValue; target itemId) trained for 2 epochs and
exported to ONNX (made in bench/out/ when missing; delete bench/out/models to retrain).

Timed: `run_evaluate` as the CLI calls it - open the model, read the test split and the
training split (baselines), one forward pass per window for every test item, score,
map ids back, write metrics and per-row predictions (no probabilities). Also timed:
`infer` with `positions: scored` (the same predictions without scoring). Reported:
the evaluated item count, accuracy, top-5 accuracy and cross-entropy against the unigram
baseline, and predicted items per second (median of the runs; goal >= 30,000).

usage: python bench/bench_evaluate.py [--runs 5] [--batch 256] [--cores 2]
"""

import glob
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_infer import OUT, SEQ_LENGTH, start
from bench_train import train_config

TARGET_ITEMS_PER_S = 30_000
MODEL_NAME = "bench-evaluate"


def trained_model(metadata_path: str) -> str:
    """The ONNX export of the training benchmark's model after 2 epochs (trained when missing)."""
    def exports():
        return [p for p in glob.glob(os.path.join(OUT, "models", f"sequifier-{MODEL_NAME}-best*.onnx"))
                if not p.endswith("-embedding.onnx")]

    if not exports():
        from sequifier.train.run import run_train

        print("training the benchmark model for 2 epochs (once; kept in bench/out/models)", flush=True)
        run_train(train_config(metadata_path, MODEL_NAME, epochs=2, compile_model=False))
    return sorted(exports(), key=os.path.getmtime)[-1]


def time_evaluate(model_path: str, metadata_path: str, batch: int) -> tuple[dict, float]:
    from sequifier.config.schema import EvaluateConfig
    from sequifier.infer.evaluate import run_evaluate

    cfg = EvaluateConfig(project_root=OUT, model_path=model_path, metadata_config_path=metadata_path,
                         inference_batch_size=batch, overwrite=True)
    start = time.perf_counter()
    written = run_evaluate(cfg)
    seconds = time.perf_counter() - start
    with open(written[0]) as f:
        return json.load(f), seconds


def time_infer_scored(model_path: str, metadata_path: str, batch: int) -> tuple[int, float]:
    from sequifier.config.schema import InferConfig
    from sequifier.infer import run_infer

    cfg = InferConfig(project_root=OUT, model_path=model_path, metadata_config_path=metadata_path,
                      model_type="generative", seq_length=SEQ_LENGTH, inference_batch_size=batch,
                      positions="scored", overwrite=True)
    start = time.perf_counter()
    written = run_infer(cfg)
    seconds = time.perf_counter() - start
    with open(written[0]) as f:
        return sum(1 for _ in f) - 1, seconds


def main() -> int:
    args, metadata_path = start(__doc__.split("\n\n")[0])
    model_path = trained_model(metadata_path)
    evaluate_rates, infer_rates, report = [], [], None
    for _ in range(args.runs):
        report, seconds = time_evaluate(model_path, metadata_path, args.batch)
        evaluate_rates.append(report["count"] / seconds)
        n, infer_seconds = time_infer_scored(model_path, metadata_path, args.batch)
        infer_rates.append(n / infer_seconds)
        print(f"evaluate: {report['count']} items in {seconds:.2f} s -> {evaluate_rates[-1]:,.0f} items/s; "
              f"infer positions=scored: {n} items in {infer_seconds:.2f} s -> {infer_rates[-1]:,.0f} items/s",
              flush=True)
    item = report["targets"]["itemId"]
    model, unigram = item["model"], item["baselines"]["unigram"]
    median = statistics.median(evaluate_rates)
    print(f"\nevaluate on the test split ({os.path.basename(model_path)}, batch {args.batch}, "
          f"{args.cores} cores): {model['count']} items scored, each once")
    print(f"  itemId  model:   accuracy {model['accuracy']:.4f}  top-5 {model['top5_accuracy']:.4f}  "
          f"cross-entropy {model['cross_entropy']:.4f} nats")
    print(f"  itemId  unigram: accuracy {unigram['accuracy']:.4f}  top-5 {unigram['top5_accuracy']:.4f}  "
          f"cross-entropy {unigram['cross_entropy']:.4f} nats")
    print(f"  items/s end to end: evaluate median {median:,.0f} (best {max(evaluate_rates):,.0f}), "
          f"infer positions=scored median {statistics.median(infer_rates):,.0f} "
          f"(goal >= {TARGET_ITEMS_PER_S:,})")
    return 0 if median >= TARGET_ITEMS_PER_S else 1


if __name__ == "__main__":
    sys.exit(main())
