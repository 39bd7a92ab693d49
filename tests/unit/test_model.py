"""Tests of the sequifier transformer (sequifier/model)."""

import itertools

import pytest
import torch

from sequifier.config.metadata import Metadata
from sequifier.config.schema import ModelSpec, TrainConfig, TrainingSpec
from sequifier.errors import SequifierError
from sequifier.model.dtypes import apply_layer_type_dtypes, layer_type_dtype_names
from sequifier.model.layers import concat_chunked
from sequifier.model.transformer import (
    ColumnLayout,
    SequifierModel,
    build_model,
    feature_embedding_dims,
)

L = 6


def make_layout(seq_length=L):
    return ColumnLayout(
        input_columns=["a", "b", "x"],
        column_types={"a": "categorical", "b": "categorical", "x": "real"},
        n_classes={"a": 7, "b": 5},
        target_columns=["a", "x"],
        target_column_types={"a": "categorical", "x": "real"},
        seq_length=seq_length,
    )


def make_spec(**overrides):
    values = dict(
        dim_model=16,
        n_head=4,
        num_layers=2,
        dim_feedforward=32,
        initial_embedding_dim=12,
        feature_embedding_dims={"a": 6, "b": 5, "x": 1},
    )
    values.update(overrides)
    return ModelSpec(**values)


def make_inputs(batch=3, length=L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "a": torch.randint(0, 7, (batch, length), generator=g),
        "b": torch.randint(0, 5, (batch, length), generator=g),
        "x": torch.randn(batch, length, generator=g),
    }


def make_model(seed=0, dropout=0.0, **overrides):
    torch.manual_seed(seed)
    return SequifierModel(make_spec(**overrides), make_layout(), dropout=dropout).eval()


ARCHITECTURES = [
    dict(attention_type=att, n_kv_heads=2 if att == "gqa" else None, positional_encoding=pos,
         activation_fn=act, normalization=norm, norm_first=nf)
    for att, pos, act, norm, nf in itertools.product(
        ["mha", "mqa", "gqa"], ["learned", "rope"], ["swiglu", "gelu", "relu"],
        ["rmsnorm", "layer_norm"], [True, False])
]


@pytest.mark.parametrize("options", ARCHITECTURES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_output_shapes_and_causality_for_every_option(options):
    model = make_model(**options)
    inputs = make_inputs()
    with torch.no_grad():
        out = model(inputs)
        hidden = model.hidden_states(inputs)
    assert out["a"].shape == (3, L, 7) and out["a"].dtype == torch.float32
    assert out["x"].shape == (3, L) and out["x"].dtype == torch.float32
    assert hidden.shape == (3, L, 16)
    # Changing the last item must not change any earlier output.
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["a"][:, -1] = (changed["a"][:, -1] + 1) % 7
    changed["x"][:, -1] += 5.0
    with torch.no_grad():
        out2 = model(changed)
    torch.testing.assert_close(out2["a"][:, :-1], out["a"][:, :-1])
    torch.testing.assert_close(out2["x"][:, :-1], out["x"][:, :-1])
    assert not torch.allclose(out2["a"][:, -1], out["a"][:, -1])


def test_shorter_inputs_work_and_longer_are_refused():
    model = make_model()
    assert model(make_inputs(length=4))["a"].shape == (3, 4, 7)
    with pytest.raises(SequifierError, match="seq_length"):
        model(make_inputs(length=L + 1))


def test_decode_of_hidden_states_equals_forward():
    model = make_model()
    inputs = make_inputs()
    with torch.no_grad():
        direct = model(inputs)
        via = model.decode(model.hidden_states(inputs))
    for column in direct:
        torch.testing.assert_close(direct[column], via[column])


def test_rope_and_learned_positions_differ():
    inputs = make_inputs()
    learned = make_model(positional_encoding="learned")
    rope = make_model(positional_encoding="rope")
    assert "position.weight" in learned.state_dict()
    assert not any("position" in k or "rope" in k for k in rope.state_dict())
    with torch.no_grad():
        assert not torch.allclose(learned(inputs)["a"], rope(inputs)["a"])


def test_rope_theta_changes_outputs():
    inputs = make_inputs()
    with torch.no_grad():
        a = make_model(positional_encoding="rope", rope_theta=10000.0)(inputs)["a"]
        b = make_model(positional_encoding="rope", rope_theta=10.0)(inputs)["a"]
    assert not torch.allclose(a, b)


def test_rope_is_relative():
    """Attention scores after RoPE depend only on the distance between positions."""
    from sequifier.model.layers import RotaryEmbedding

    rope = RotaryEmbedding(head_dim=8, max_length=10, theta=100.0)
    q, k = torch.randn(8), torch.randn(8)
    seq_q = q.expand(1, 1, 10, 8)
    seq_k = k.expand(1, 1, 10, 8)
    rq, rk = rope(seq_q)[0, 0], rope(seq_k)[0, 0]
    torch.testing.assert_close(rq[5] @ rk[3], rq[7] @ rk[5], rtol=1e-5, atol=1e-5)


def kv_params(model):
    return model.blocks[0].attention.qkv.weight.shape[0]


def test_gqa_and_mqa_have_fewer_key_value_parameters():
    mha = kv_params(make_model(attention_type="mha"))
    gqa = kv_params(make_model(attention_type="gqa", n_kv_heads=2))
    mqa = kv_params(make_model(attention_type="mqa"))
    head_dim = 4
    assert mha == (4 + 2 * 4) * head_dim
    assert gqa == (4 + 2 * 2) * head_dim
    assert mqa == (4 + 2 * 1) * head_dim
    assert make_model(attention_type="gqa").blocks[0].attention.n_kv_heads == 4  # null -> n_head


def test_gqa_matches_explicitly_repeated_heads():
    """enable_gqa must equal attention with each k/v head repeated for its query group."""
    model = make_model(attention_type="gqa", n_kv_heads=2)
    attention = model.blocks[0].attention
    x = torch.randn(2, L, 16)
    q, k, v = attention.qkv(x).split([16, 8, 8], dim=-1)
    q = q.view(2, L, 4, 4).transpose(1, 2)
    k = k.view(2, L, 2, 4).transpose(1, 2).repeat_interleave(2, dim=1)
    v = v.view(2, L, 2, 4).transpose(1, 2).repeat_interleave(2, dim=1)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    expected = attention.out(expected.transpose(1, 2).reshape(2, L, 16))
    torch.testing.assert_close(attention(x), expected)


def test_bad_kv_heads_are_refused():
    with pytest.raises(SequifierError, match="n_kv_heads"):
        make_model(attention_type="mqa", n_kv_heads=2)
    with pytest.raises(SequifierError, match="n_kv_heads"):
        make_model(attention_type="gqa", n_kv_heads=3)


def test_feature_embedding_dims_are_respected():
    model = make_model(feature_embedding_dims={"a": 3, "b": 2, "x": 7}, initial_embedding_dim=12)
    assert model.embedding.tables["a"].weight.shape == (7, 3)
    assert model.embedding.tables["b"].weight.shape == (5, 2)
    assert model.embedding.projections["x"].weight.shape == (7, 1)
    # width 1 for a real column: the value itself, no layer
    model = make_model(feature_embedding_dims={"a": 6, "b": 5, "x": 1})
    assert "x" not in model.embedding.projections
    embedded = model.embedding(make_inputs())
    torch.testing.assert_close(embedded[..., -1], make_inputs()["x"])


def test_feature_embedding_dims_must_cover_and_sum():
    with pytest.raises(SequifierError, match="no width"):
        make_model(feature_embedding_dims={"a": 6, "b": 6})
    with pytest.raises(SequifierError, match="sum to"):
        make_model(feature_embedding_dims={"a": 6, "b": 6, "x": 6})


def test_automatic_feature_embedding_dims():
    layout = ColumnLayout(["p", "q"], {"p": "real", "q": "real"}, {}, ["p"], {"p": "real"}, L)
    assert feature_embedding_dims(make_spec(feature_embedding_dims=None, initial_embedding_dim=16), layout) == {"p": 8, "q": 8}
    # mixed columns: the model is built with the widths the validation gate checks
    mixed = make_layout()
    dims = feature_embedding_dims(make_spec(feature_embedding_dims=None, initial_embedding_dim=12), mixed)
    assert sum(dims.values()) == 12 and set(dims) == set(mixed.input_columns)
    model = make_model(feature_embedding_dims=None, initial_embedding_dim=None)
    assert isinstance(model.projection, torch.nn.Identity)  # initial_embedding_dim defaults to dim_model


def test_projection_to_dim_model():
    assert isinstance(make_model(initial_embedding_dim=12).projection, torch.nn.Linear)
    same = make_model(initial_embedding_dim=16, feature_embedding_dims={"a": 8, "b": 7, "x": 1})
    assert isinstance(same.projection, torch.nn.Identity)
    joint = make_model(initial_embedding_dim=16, joint_embedding_dim=16,
                       feature_embedding_dims={"a": 8, "b": 7, "x": 1})
    assert isinstance(joint.projection, torch.nn.Linear)
    with pytest.raises(SequifierError, match="joint_embedding_dim"):
        make_model(joint_embedding_dim=8)


def test_post_ln_has_no_final_norm_and_differs_from_pre_ln():
    inputs = make_inputs()
    pre, post = make_model(norm_first=True), make_model(norm_first=False)
    assert isinstance(post.final_norm, torch.nn.Identity)
    with torch.no_grad():
        assert not torch.allclose(pre(inputs)["a"], post(inputs)["a"])


def test_dropout_is_off_in_eval_and_on_in_train():
    model = make_model(dropout=0.5)
    inputs = make_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(inputs)["a"], model(inputs)["a"])
        model.train()
        assert not torch.allclose(model(inputs)["a"], model(inputs)["a"])
    no_dropout = make_model(dropout=0.0).train()
    with torch.no_grad():
        torch.testing.assert_close(no_dropout(inputs)["a"], no_dropout(inputs)["a"])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_layer_type_dtypes_cast_parameters_and_run(dtype):
    model = make_model()
    apply_layer_type_dtypes(model, {"linear": dtype, "embedding": dtype, "norm": dtype})
    torch_dtype = getattr(torch, dtype)
    assert model.blocks[0].attention.qkv.weight.dtype == torch_dtype
    assert model.embedding.tables["a"].weight.dtype == torch_dtype
    assert model.final_norm.weight.dtype == torch_dtype
    assert model.heads["a"].weight.dtype == torch.float32  # decoder not mapped
    assert layer_type_dtype_names(model) == {"linear": dtype, "embedding": dtype, "norm": dtype, "decoder": "float32"}
    out = make_model()(make_inputs())
    cast_out = model(make_inputs())
    assert cast_out["a"].dtype == torch.float32
    (cast_out["a"].sum() + cast_out["x"].sum()).backward()
    assert model.blocks[0].attention.qkv.weight.grad.dtype == torch_dtype
    # Lower precision changes results a little, not a lot.
    assert not torch.equal(cast_out["a"], out["a"])
    torch.testing.assert_close(cast_out["a"], out["a"], atol=0.1, rtol=0.1)


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2"])
def test_float8_quantises_weights_and_trains(dtype):
    model = make_model()
    apply_layer_type_dtypes(model, {"linear": dtype, "decoder": dtype})
    assert layer_type_dtype_names(model)["linear"] == dtype
    inputs = make_inputs()
    out = model(inputs)
    reference = make_model()(inputs)
    assert not torch.allclose(out["a"], reference["a"])  # rounding has a real effect
    # Same as a model whose weights were rounded to the float8 grid:
    import copy

    from sequifier.model.dtypes import bake_weight_quantization

    baked = bake_weight_quantization(copy.deepcopy(model))
    w = baked.blocks[0].attention.qkv.weight
    assert torch.equal(w, w.to(getattr(torch, dtype)).float())
    torch.testing.assert_close(baked(inputs)["a"], out["a"])
    # Trains with a standard optimizer (float32 master weights).
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    (out["a"].sum() + out["x"].sum()).backward()
    before = model.blocks[0].attention.qkv.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.blocks[0].attention.qkv.weight)


def test_unknown_layer_types_and_dtypes_are_refused():
    with pytest.raises(SequifierError, match="layer type"):
        apply_layer_type_dtypes(make_model(), {"attention": "float16"})
    with pytest.raises(SequifierError, match="dtype"):
        apply_layer_type_dtypes(make_model(), {"linear": "int8"})


def test_concat_chunked_joins_in_groups():
    parts = [torch.full((2, 1), float(i)) for i in range(29)]
    for max_length in (2, 3, 12, 40):
        torch.testing.assert_close(concat_chunked(parts, -1, max_length), torch.cat(parts, -1))
    calls = []
    original = torch.cat

    def counting_cat(tensors, dim=0):
        calls.append(len(tensors))
        return original(tensors, dim=dim)

    torch.cat = counting_cat
    try:
        concat_chunked(parts, -1, 4)
    finally:
        torch.cat = original
    assert max(calls) <= 4
    with pytest.raises(SequifierError, match="device_max_concat_length"):
        concat_chunked(parts, -1, 1)


def make_metadata():
    return Metadata(
        name="d", seq_length=L, write_format="parquet",
        column_types={"a": "categorical", "b": "categorical", "x": "real"},
        id_maps={"a": {}, "b": {}}, n_classes={"a": 7, "b": 5},
        selected_columns_statistics={"x": {"mean": 0.0, "std": 1.0}},
        original_dtypes={"a": "int64", "b": "int64"}, split_paths=[],
    )


def make_train_config(**overrides):
    values = dict(
        project_root=".", metadata_config_path="m.json", model_name="m",
        target_columns=["a", "x"], target_column_types={"a": "categorical", "x": "real"},
        seq_length=L, export_generative_model=True, export_embedding_model=True,
        inference_batch_size=2, model_spec=make_spec(),
        training_spec=TrainingSpec(device="cpu", epochs=1, batch_size=2, learning_rate=1e-3,
                                   criterion={}, save_interval_epochs=1, dropout=0.1,
                                   device_max_concat_length=2,
                                   layer_type_dtypes={"norm": "bfloat16"}),
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_layout_from_config_and_build_model():
    cfg = make_train_config()
    layout = ColumnLayout.from_config(cfg, make_metadata())
    assert layout.input_columns == ["a", "b", "x"]
    assert layout.n_classes == {"a": 7, "b": 5}
    assert ColumnLayout.from_config(make_train_config(input_columns=["x", "a"]), make_metadata()).input_columns == ["x", "a"]
    model = build_model(cfg, make_metadata())
    assert model.dropout.p == 0.1
    assert model.embedding.max_concat_length == 2
    assert model.final_norm.weight.dtype == torch.bfloat16


def test_layout_refuses_unknown_columns_and_wrong_types():
    with pytest.raises(SequifierError, match="input_columns"):
        ColumnLayout.from_config(make_train_config(input_columns=["zz"]), make_metadata())
    with pytest.raises(SequifierError, match="target_column_types.x"):
        ColumnLayout.from_config(
            make_train_config(target_column_types={"a": "categorical", "x": "categorical"}),
            make_metadata(),
        )


# ---- tied embeddings (model_spec.tie_embeddings) ----------------------------------------

def test_tied_logits_use_the_input_table_through_a_projection():
    model = make_model(seed=4, tie_embeddings=True)
    assert model.tied_columns == ["a"]  # "x" is real: never tied
    table = model.embedding.tables["a"]
    head = model.heads["a"]
    # The head owns no class-vector matrix: only the projection (width 6 -> dim_model 16) and a bias.
    assert {n: tuple(p.shape) for n, p in head.named_parameters()} == {"bias": (7,), "project.weight": (6, 16)}
    # The table is one parameter of the model, not a copy.
    assert sum(p is table.weight for p in model.parameters()) == 1
    inputs = make_inputs()
    hidden = model.hidden_states(inputs)
    expected = head.project(hidden) @ table.weight.T + head.bias
    torch.testing.assert_close(model.decode(hidden)["a"], expected)
    # Training the logits trains the input table (shared storage, shared gradient).
    model.train()
    model(inputs)["a"].logsumexp(-1).sum().backward()
    assert table.weight.grad is not None and table.weight.grad.abs().sum() > 0
    with torch.no_grad():
        table.weight[3] += 1.0
        changed = model(inputs)["a"]
    assert not torch.allclose(changed[..., 3], expected[..., 3].detach())


def test_tied_head_needs_no_projection_at_dim_model_width():
    model = make_model(tie_embeddings=["a"], initial_embedding_dim=22,
                       feature_embedding_dims={"a": 16, "b": 5, "x": 1})
    assert model.heads["a"].project is None
    with torch.no_grad():
        hidden = model.hidden_states(make_inputs())
        torch.testing.assert_close(model.decode(hidden)["a"],
                                   hidden @ model.embedding.tables["a"].weight.T + model.heads["a"].bias)


def test_tying_saves_parameters_and_counts_the_saving():
    from sequifier.model.transformer import tied_parameter_saving

    tied, untied = make_model(tie_embeddings=True), make_model()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert tied_parameter_saving(tied) == count(untied) - count(tied) == 7 * 16 - 6 * 16
    assert tied_parameter_saving(untied) == 0


def test_tied_model_with_reduced_precision_tables_runs():
    model = make_model(tie_embeddings=True)
    apply_layer_type_dtypes(model, {"embedding": "bfloat16"})
    out = model(make_inputs())
    assert out["a"].dtype == torch.float32 and torch.isfinite(out["a"]).all()


@pytest.mark.parametrize("setting,message", [
    (["x"], "'x' is real-valued"),
    (["b"], "'b' is not a target column"),
    ("a", "must be true, false or a list of column names"),
])
def test_tie_embeddings_refusals(setting, message):
    with pytest.raises(SequifierError, match=f"model_spec.tie_embeddings: .*{message}"):
        make_model(tie_embeddings=setting)


def test_tie_embeddings_needs_an_input_table_and_an_eligible_column():
    layout = ColumnLayout(["b", "x"], {"a": "categorical", "b": "categorical", "x": "real"},
                          {"a": 7, "b": 5}, ["a"], {"a": "categorical"}, L)
    spec = make_spec(feature_embedding_dims={"b": 11, "x": 1}, tie_embeddings=["a"])
    with pytest.raises(SequifierError, match="'a' is not an input column, so it has no embedding table"):
        SequifierModel(spec, layout)
    spec.tie_embeddings = True
    with pytest.raises(SequifierError, match="true, but no categorical column is both an input and a target"):
        SequifierModel(spec, layout)


def test_tied_head_starts_at_the_scale_of_an_untied_one():
    # A small-init projection times small-init table rows would start the logits (and
    # their gradients) near zero: the projection keeps the hidden state's scale instead.
    spec = dict(dim_model=64, n_head=4, initial_embedding_dim=64, feature_embedding_dims={"a": 32, "b": 31, "x": 1})
    tied, untied = make_model(seed=1, tie_embeddings=True, **spec), make_model(seed=1, **spec)
    assert tied.heads["a"].project.weight.std().item() == pytest.approx(64 ** -0.5, rel=0.1)
    with torch.no_grad():
        tied_std = tied(make_inputs())["a"].std().item()
        untied_std = untied(make_inputs())["a"].std().item()
    assert 0.5 < tied_std / untied_std < 2.0
