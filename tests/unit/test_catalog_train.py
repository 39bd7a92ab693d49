"""Large catalogues in training: the SampledSoftmax criterion and chunked validation."""

import math

import pytest
import torch
from helpers.train_data import N_CLASSES, make_config, make_project

from sequifier import catalog
from sequifier.errors import SequifierError
from sequifier.gate import validate
from sequifier.model.transformer import SequifierModel
from sequifier.train.losses import SampledSoftmax
from sequifier.train.run import run_train

SAMPLED = {"name": "SampledSoftmax", "num_negatives": 6}
pytestmark = pytest.mark.usefixtures("single_thread")


def validate_train(cfg):
    validate("train", cfg)


@pytest.fixture
def root(tmp_path):
    return make_project(tmp_path)


def train(root, **overrides):
    return run_train(make_config(root, **overrides), export=False)


def test_sampled_softmax_is_the_corrected_softmax_over_target_and_negatives():
    loss = SampledSoftmax(num_negatives=4, uniform_share=0.5)
    counts = torch.tensor([0, 0, 6, 2, 0, 2])  # pad, unknown, three items
    loss.set_proposal(counts)
    proposal = 0.5 * torch.tensor([0, 0, .6, .2, 0, .2]) + 0.5 * torch.tensor([0, .2, .2, .2, .2, .2])
    assert torch.allclose(loss.proposal, proposal.float())
    assert loss.proposal[0] == 0  # pad is never drawn
    torch.manual_seed(3)
    query, weight, bias = torch.randn(3, 2), torch.randn(6, 2), torch.randn(6)
    target = torch.tensor([2, 3, 5])
    torch.manual_seed(3)
    got = loss.sums(query, target, weight, bias)
    torch.manual_seed(3)
    negatives = torch.multinomial(loss.proposal, 4, replacement=True)
    log_q = proposal.log()
    expected = 0.0
    for i in range(3):
        pos = query[i] @ weight[target[i]] + bias[target[i]] - log_q[target[i]]
        neg = [query[i] @ weight[j] + bias[j] - log_q[j] for j in negatives if j != target[i]]
        expected += torch.logsumexp(torch.stack([pos] + neg), 0) - pos
    assert torch.allclose(got, expected.float(), atol=1e-5)


def test_sampled_softmax_trains_without_full_logits_and_validates_exactly(root, monkeypatch):
    calls = []
    decode = SequifierModel.decode

    def spy(self, hidden, skip=()):
        out = decode(self, hidden, skip)
        if self.training and "itemId" in out:
            calls.append(out["itemId"].shape)
        return out

    monkeypatch.setattr(SequifierModel, "decode", spy)
    sampled = train(root, **{"training_spec.epochs": 4, "training_spec.criterion.itemId": SAMPLED})
    assert calls == []  # the training batches never built itemId's [B, L, n_classes] logits
    exact = train(root, **{"training_spec.epochs": 4, "model_name": "exact"})
    # validation reports the exact cross-entropy either way: comparable, and both learn
    unigram = sampled.baselines["itemId"]["unigram"]["cross_entropy"]
    for result in (sampled, exact):
        assert result.best_metrics["itemId"]["cross_entropy"] < 0.8 * unigram
    assert abs(sampled.best_metrics["itemId"]["cross_entropy"]
               - exact.best_metrics["itemId"]["cross_entropy"]) < 0.3


def test_validation_in_row_chunks_equals_one_pass(root, monkeypatch):
    whole = train(root, **{"training_spec.epochs": 1})
    monkeypatch.setattr(catalog, "SCORE_CHUNK_ELEMENTS", 3 * N_CLASSES)  # 3 rows per pass
    chunked = train(root, **{"training_spec.epochs": 1, "model_name": "chunked"})
    assert catalog.rows_per_chunk(N_CLASSES) == 3
    assert math.isclose(whole.history[0].val_loss, chunked.history[0].val_loss, rel_tol=1e-5)
    for name, value in whole.history[0].val_metrics["itemId"].items():
        assert math.isclose(value, chunked.history[0].val_metrics["itemId"][name], rel_tol=1e-5), name


@pytest.mark.parametrize("entry, overrides, message", [
    ({"name": "SampledSoftmax", "num_negatives": N_CLASSES - 1}, {},
     "training_spec.criterion.itemId.num_negatives: 11 is not below the catalogue"),
    ({"name": "SampledSoftmax"}, {}, "training_spec.criterion.itemId.num_negatives: missing"),
    ({"name": "SampledSoftmax", "num_negatives": 0}, {}, "num_negatives: must be a whole number >= 1"),
    ({"name": "SampledSoftmax", "num_negatives": 4, "label_smoothing": 0.1}, {},
     "training_spec.criterion.itemId.label_smoothing: SampledSoftmax takes no 'label_smoothing'"),
    ({"name": "SampledSoftmax", "num_negatives": 4, "uniform_share": 2}, {}, "uniform_share: must be"),
    (SAMPLED, {"training_spec.class_weights": {"itemId": {"100": 2.0}}},
     "training_spec.class_weights.itemId: SampledSoftmax does not weight classes"),
    (SAMPLED, {"training_spec.distributed": True, "training_spec.world_size": 2,
               "training_spec.backend": "gloo"},
     "training_spec.criterion.itemId: SampledSoftmax trains in one process only"),
])
def test_bad_sampled_softmax_settings_are_one_line_each(root, entry, overrides, message):
    cfg = make_config(root, **{"training_spec.criterion.itemId": entry, **overrides})
    with pytest.raises(SequifierError) as e:
        validate_train(cfg)
    assert message in str(e.value)


def test_sampled_softmax_on_a_real_target_is_refused(root):
    cfg = make_config(root, **{"training_spec.criterion.itemValue": SAMPLED})
    with pytest.raises(SequifierError, match="criterion.itemValue: SampledSoftmax samples classes"):
        validate_train(cfg)


def test_a_model_too_large_for_one_onnx_file_is_refused_before_training(root, monkeypatch):
    from sequifier import export_format

    monkeypatch.setattr(export_format, "ONNX_FILE_LIMIT_BYTES", export_format.ONNX_GRAPH_ROOM_BYTES + 1000)
    with pytest.raises(SequifierError, match="export_onnx: the model has [0-9,]+ weights .* above the 2 GiB"):
        validate_train(make_config(root))
    validate_train(make_config(root, export_onnx=False, export_pt=True))  # .pt has no such limit


def test_a_large_item_table_exports_to_onnx_and_ranks_in_chunks(tmp_path, monkeypatch):
    """100,002 classes x 8 dims: the export's class vectors score the whole catalogue in
    chunks of rows and give the same top items as the dense logits output."""
    import numpy as np

    from sequifier.config.schema import ModelSpec
    from sequifier.export import export_onnx
    from sequifier.infer.model_runner import OnnxRunner
    from sequifier.model.transformer import ColumnLayout

    n_classes = 100_002
    layout = ColumnLayout(["item"], {"item": "categorical"}, {"item": n_classes}, ["item"],
                          {"item": "categorical"}, 4)
    torch.manual_seed(0)
    model = SequifierModel(ModelSpec(dim_model=8, n_head=2, num_layers=1, dim_feedforward=8), layout)
    path = str(tmp_path / "big.onnx")
    export_onnx(model, path, "generative", 2, with_dropout=False)
    inputs = {"item": np.random.default_rng(0).integers(2, n_classes, (5, 4))}
    dense = OnnxRunner(path, "cpu", 0, queries=False).run(inputs)["item"]
    runner = OnnxRunner(path, "cpu", 0, queries=True)
    vectors, bias = runner.class_vectors["item"]
    assert vectors.shape == (n_classes, 8) and bias.shape == (n_classes,)
    monkeypatch.setattr(catalog, "SCORE_CHUNK_ELEMENTS", 2 * n_classes)  # 2 rows per pass
    queries = runner.run(inputs)["item"]
    assert queries.shape == (5, 8)
    chunks = list(catalog.logit_chunks(queries, (vectors, bias)))
    assert [end - start for start, end, _ in chunks] == [2, 2, 1]
    scored = np.concatenate([logits for _, _, logits in chunks])
    np.testing.assert_allclose(scored, dense, atol=1e-4)
    ids, _ = catalog.top_k(scored, 10, [0, 1])
    assert (ids == np.argsort(-dense[:, 2:], axis=1, kind="stable")[:, :10] + 2).mean() > 0.9
