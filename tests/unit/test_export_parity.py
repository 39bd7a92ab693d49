"""ONNX Runtime and PyTorch give the same outputs for every architecture option."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_model import make_inputs, make_model

from sequifier.export import EmbeddingHead, GenerativeHead, export_onnx, output_name

# A covering subset of the option product: every value of every option at least once,
# plus GQA with RoPE (the combination most likely to break in export), and tied
# embeddings with and without the projection to the table's width.
COVERING = [
    dict(attention_type="mha", positional_encoding="learned", activation_fn="swiglu",
         normalization="rmsnorm", norm_first=True),
    dict(attention_type="mqa", positional_encoding="rope", activation_fn="gelu",
         normalization="layer_norm", norm_first=False, tie_embeddings=True),
    dict(attention_type="gqa", n_kv_heads=2, positional_encoding="rope", activation_fn="relu",
         normalization="rmsnorm", norm_first=False),
    dict(attention_type="gqa", n_kv_heads=2, positional_encoding="learned",
         activation_fn="swiglu", normalization="layer_norm", norm_first=True, tie_embeddings=["a"],
         initial_embedding_dim=22, feature_embedding_dims={"a": 16, "b": 5, "x": 1}),
]


def run_onnx(path, inputs):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {k: v.numpy() for k, v in inputs.items()})))


@pytest.mark.parametrize("options", COVERING, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_onnx_matches_torch(tmp_path, options):
    model = make_model(seed=1, **options)
    path = str(tmp_path / "g.onnx")
    export_onnx(model, path, "generative", example_batch=3, with_dropout=False)
    onnx.checker.check_model(onnx.load(path))
    inputs = make_inputs(batch=5, seed=2)  # not the example batch
    outputs = run_onnx(path, inputs)
    with torch.no_grad():
        expected = GenerativeHead(model)(*inputs.values())
        full = model(inputs)
    assert outputs[output_name("a")].shape == (5, 7)
    assert outputs[output_name("x")].shape == (5,)
    np.testing.assert_allclose(outputs[output_name("a")], expected[0].numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(outputs[output_name("x")], expected[1].numpy(), atol=1e-4, rtol=1e-4)
    # The head's outputs are the model's last-position outputs.
    torch.testing.assert_close(expected[0], full["a"][:, -1])
    torch.testing.assert_close(expected[1], full["x"][:, -1])
    # batch 1 works too
    single = run_onnx(path, {k: v[:1] for k, v in inputs.items()})
    np.testing.assert_allclose(single[output_name("a")], expected[0][:1].numpy(), atol=1e-4, rtol=1e-4)


def test_embedding_onnx_matches_torch(tmp_path):
    model = make_model(seed=1, attention_type="gqa", n_kv_heads=2, positional_encoding="rope")
    path = str(tmp_path / "e.onnx")
    export_onnx(model, path, "embedding", example_batch=2, with_dropout=False)
    onnx.checker.check_model(onnx.load(path))
    inputs = make_inputs(batch=4, seed=5)
    outputs = run_onnx(path, inputs)
    with torch.no_grad():
        expected = EmbeddingHead(model)(*inputs.values())[0]
        hidden = model.hidden_states(inputs)[:, -1]
    torch.testing.assert_close(expected, hidden)
    assert list(outputs) == ["embedding"]
    np.testing.assert_allclose(outputs["embedding"], expected.numpy(), atol=1e-4, rtol=1e-4)


def test_reduced_precision_models_export_in_float32(tmp_path):
    from sequifier.model.dtypes import apply_layer_type_dtypes

    model = make_model(seed=1)
    apply_layer_type_dtypes(model, {"linear": "bfloat16", "decoder": "float8_e4m3fn"})
    path = str(tmp_path / "g.onnx")
    export_onnx(model, path, "generative", example_batch=2, with_dropout=False)
    inputs = make_inputs(batch=3)
    outputs = run_onnx(path, inputs)
    with torch.no_grad():
        expected = GenerativeHead(model.float())(*inputs.values())
    # bf16 weights are exact in float32; float8 rounding is baked into the weights.
    np.testing.assert_allclose(outputs[output_name("a")], expected[0].numpy(), atol=1e-4, rtol=1e-4)
