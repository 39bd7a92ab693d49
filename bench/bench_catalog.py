"""Large catalogues: training speed, peak memory and ranking throughput at 10^4..10^6 items.

Data (per size V, made in bench/out/catalog/ when missing): next-item sequences from
bench/gen_nextitem.py (Zipf popularity, topics, successors; 1,500 users of 20..700
items) over a catalogue of V items, plus "catalogue" users of 500 items each that
together hold every item the simulated users did not reach, so that the data has
exactly V distinct items. Preprocessed with the template's seq_length (48), the
leave-last-out split (each user's last item is the test target, the one before it
validation) and a training-split stride of `--stride` (96; `--compare-stride` 16).

Model: the `sequifier make` template's (dim_model 64, 2 layers, its optimizer,
schedule and clipping), itemId in and out; criterion `SampledSoftmax` with
`--negatives` (2048) negatives, or `CrossEntropyLoss` with `--exact`.

Per size, each step in a fresh process (peak memory = the summed RSS of the process
tree, sampled every 50 ms):
- train: 1 epoch (`--epochs`), samples/s of the loop (optimisation steps only), wall
  time and peak memory (training, exact validation over the whole catalogue, export);
- evaluate: the exported best ONNX model on the test split, top-10 ranking over the
  whole catalogue: items/s (evaluate's own figure: forward passes and scoring) and
  peak memory.

`--compare` instead trains the 10^4-item case with the exact and the sampled loss
(`--compare-epochs`, default 6) and reports evaluate's NDCG@10 of both, with and
without seen items (goal: the sampled loss loses <= 0.005 NDCG@10). Goals: 10^6 items train and evaluate on 2
cores within 6 GiB peak.

usage: python bench/bench_catalog.py [--sizes 10000 100000 1000000] [--negatives 2048]
       [--epochs 1] [--stride 96] [--exact] [--compare] [--compare-epochs 6] [--repeat 1]
"""

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_scale import measure  # noqa: E402

OUT = os.path.join(HERE, "out", "catalog")
SEQ_LENGTH = 48
PEAK_GOAL_GIB = 6.0
NDCG_GOAL = 0.005


# ---- steps (each in its own process) ---------------------------------------------------

def data_name(items: int, stride: int) -> str:
    return f"cat{items}-s{stride}"


def step_data(items: int, stride: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from gen_nextitem import generate

    from sequifier.config.schema import PreprocessConfig
    from sequifier.data.preprocess import run_preprocess

    name = data_name(items, stride)
    path = os.path.join(OUT, f"cat{items}.parquet")
    if not os.path.isfile(path):
        data = generate(n_seq=1500, n_items=items, n_topics=max(60, items // 200), seed=7)
        users, positions, item_ids = data["sequenceId"], data["itemPosition"], data["itemId"]
        missing = np.setdiff1d(np.arange(items) + 1000, item_ids)
        np.random.default_rng(8).shuffle(missing)
        per_user = 500
        extra_users = users.max() + 1 + np.arange(len(missing)) // per_user
        extra_positions = np.arange(len(missing)) % per_user
        table = pa.table({
            "sequenceId": np.concatenate([users, extra_users]),
            "itemPosition": np.concatenate([positions, extra_positions]),
            "itemId": np.concatenate([item_ids, missing]),
        })
        os.makedirs(OUT, exist_ok=True)
        pq.write_table(table, path + ".tmp")
        os.replace(path + ".tmp", path)
    split = {"split_method": "leave_last_out", "split_ratios": [0.8, 0.1, 0.1]}
    metadata = run_preprocess(PreprocessConfig(
        project_root=OUT, data_path=path, read_format="parquet", write_format="parquet",
        seq_length=SEQ_LENGTH, stride_by_split=[stride, SEQ_LENGTH, SEQ_LENGTH], n_cores=2, overwrite=True,
        dataset_name=name, **split))
    print(json.dumps({"items": int(metadata.n_classes["itemId"]) - 2, "split": split["split_method"]}))


def step_train(data: str, model_name: str, criterion, epochs: int) -> None:
    from bench_infer import pin_cores
    from bench_train import template_quality_settings

    from sequifier.config.schema import ModelSpec, TrainConfig, TrainingSpec
    from sequifier.train.run import run_train

    pin_cores(2)
    model, training = template_quality_settings()
    training["criterion"] = {"itemId": criterion}
    cfg = TrainConfig(
        project_root=OUT, metadata_config_path=f"configs/metadata_configs/{data}.json",
        model_name=model_name, read_format="parquet", target_columns=["itemId"],
        input_columns=["itemId"], export_generative_model=True, export_embedding_model=False,
        inference_batch_size=256, overwrite=True,
        model_spec=ModelSpec(dim_model=64, n_head=4, num_layers=2, dim_feedforward=128, **model),
        training_spec=TrainingSpec(device="cpu", epochs=epochs, batch_size=64, dropout=0.1,
                                   save_interval_epochs=epochs, continue_training=False,
                                   log_interval=50, **training),
    )
    result = run_train(cfg)
    print(json.dumps({"samples_per_s": [r.samples_per_second for r in result.history],
                      "val_samples_per_s": [r.val_samples_per_second for r in result.history],
                      "best": result.best_metrics.get("itemId", {})}))


def step_evaluate(data: str, model_name: str, exclude_seen: str = "false") -> None:
    from bench_infer import pin_cores

    from sequifier.config.schema import EvaluateConfig
    from sequifier.infer.evaluate import run_evaluate

    pin_cores(2)
    cfg = EvaluateConfig(project_root=OUT, model_path=f"models/sequifier-{model_name}-best.onnx",
                         metadata_config_path=f"configs/metadata_configs/{data}.json",
                         inference_batch_size=256, overwrite=True, write_format="parquet",
                         ranking_k=[10], exclude_seen=exclude_seen == "true")
    paths = run_evaluate(cfg)
    with open(next(p for p in paths if p.endswith("metrics.json"))) as f:
        report = json.load(f)
    print(json.dumps({"items_per_s": report["items_per_second"], "count": report["count"],
                      "model": report["targets"]["itemId"]["model"]}))


STEPS = {"data": step_data, "train": step_train, "evaluate": step_evaluate}


# ---- driver ----------------------------------------------------------------------------

def child(*args) -> tuple[float, int, dict]:
    cmd = ["nice", "-n", "5", sys.executable, os.path.abspath(__file__), "--step", *map(str, args)]
    wall, peak, out = measure(cmd)
    return wall, peak, json.loads(out.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def run_sizes(a) -> None:
    criterion = "CrossEntropyLoss" if a.exact else {"name": "SampledSoftmax", "num_negatives": a.negatives}
    rows = []
    for items in a.sizes:
        _, _, info = child("data", items, a.stride)
        data = data_name(items, a.stride)
        name = f"{data}-{'exact' if a.exact else 'sampled'}"
        runs = []
        for _ in range(a.repeat):
            train_wall, train_peak, trained = child("train", data, name, json.dumps(criterion), a.epochs)
            eval_wall, eval_peak, evaluated = child("evaluate", data, name)
            runs.append((statistics.median(trained["samples_per_s"]), train_peak, train_wall,
                         evaluated["items_per_s"], eval_peak, eval_wall, evaluated["count"]))
        med = [statistics.median(r[i] for r in runs) for i in range(7)]
        rows.append((items, info["split"], *med))
        print(f"{items:,} items: train {med[0]:.0f} samples/s, peak {gib(med[1])} ({med[2]:.0f} s); "
              f"evaluate {med[3]:,.0f} items/s over {int(med[6]):,} items, peak {gib(med[4])} ({med[5]:.0f} s)",
              flush=True)
    print(f"\ncriterion {json.dumps(criterion)}, {a.epochs} epoch(s), median of {a.repeat} run(s), 2 cores")
    print("| items | split | train samples/s | train peak (all processes) | evaluate items/s (top-10 ranking) "
          "| evaluate peak |")
    print("|---|---|---|---|---|---|")
    for items, split, sps, tpeak, _, ips, epeak, _, _ in rows:
        print(f"| {items:,} | {split} | {sps:,.0f} | {gib(tpeak)} | {ips:,.0f} | {gib(epeak)} |")
    for items, _, _, tpeak, _, _, epeak, _, _ in rows:
        if items >= 10**6:
            ok = max(tpeak, epeak) <= PEAK_GOAL_GIB * 2**30
            print(f"goal 10^6 items within {PEAK_GOAL_GIB} GiB: {'met' if ok else 'NOT met'} "
                  f"(peak {gib(max(tpeak, epeak))})")


def run_compare(a) -> None:
    items = 10_000
    child("data", items, a.compare_stride)
    data = data_name(items, a.compare_stride)
    results = {}
    for label, criterion in (("exact", "CrossEntropyLoss"),
                             ("sampled", {"name": "SampledSoftmax", "num_negatives": a.negatives})):
        name = f"{data}-cmp-{label}"
        _, _, trained = child("train", data, name, json.dumps(criterion), a.compare_epochs)
        for seen in ("false", "true"):
            _, _, evaluated = child("evaluate", data, name, seen)
            results[label, seen] = evaluated["model"]
        print(f"{label}: train {statistics.median(trained['samples_per_s']):.0f} samples/s; evaluate "
              f"{json.dumps({k: round(v, 4) for k, v in evaluated['model'].items() if '@' in k or k == 'mrr'})}"
              " (seen items removed)", flush=True)
    for seen in ("false", "true"):
        exact, sampled = results["exact", seen]["ndcg@10"], results["sampled", seen]["ndcg@10"]
        loss = exact - sampled
        print(f"ndcg@10 (exclude_seen {seen}): exact {exact:.4f}, sampled {sampled:.4f}, sampled loses "
              f"{loss:+.4f} (goal <= {NDCG_GOAL}: {'met' if loss <= NDCG_GOAL else 'NOT met'})")


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--step":
        step, *args = sys.argv[2:]
        if step == "data":
            return STEPS[step](int(args[0]), int(args[1]))
        if step == "train":
            return STEPS[step](args[0], args[1], json.loads(args[2]), int(args[3]))
        return STEPS[step](*args)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--negatives", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--exact", action="store_true", help="train with CrossEntropyLoss instead")
    p.add_argument("--compare", action="store_true", help="NDCG@10 of sampled vs exact loss at 10^4 items")
    p.add_argument("--compare-epochs", type=int, default=6)
    p.add_argument("--stride", type=int, default=96, help="training-split window step")
    p.add_argument("--compare-stride", type=int, default=16)
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args()
    run_compare(a) if a.compare else run_sizes(a)


if __name__ == "__main__":
    main()
