"""export_models: files, flags, metadata, dropout, .pt round trip, refusals."""

import json
import os

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest
import torch
from test_model import make_inputs, make_layout, make_model, make_train_config

from sequifier.errors import SequifierError
from sequifier.export import (
    EmbeddingHead,
    GenerativeHead,
    export_models,
    export_pt,
    load_pt_model,
    make_head,
    output_name,
    set_dropout_active,
)


def config(**overrides):
    values = dict(export_onnx=False, export_pt=True)
    values.update(overrides)
    cfg = make_train_config(**values)
    cfg.training_spec.layer_type_dtypes = None
    return cfg


def onnx_outputs(path, inputs):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in inputs.items()})


def test_pt_exports_named_per_flags_and_round_trip(tmp_path):
    model = make_model(seed=3)
    cfg = config(export_generative_model=True, export_embedding_model=True)
    written = export_models(model, model.layout, cfg, str(tmp_path), "best", 4, {"note": "x"})
    assert sorted(os.path.basename(p) for p in written) == [
        "sequifier-m-best-embedding.pt", "sequifier-m-best.pt"]
    # each stable name has an epoch-named twin: the same file
    assert sorted(os.listdir(tmp_path)) == ["sequifier-m-best-4-embedding.pt", "sequifier-m-best-4.pt",
                                            "sequifier-m-best-embedding.pt", "sequifier-m-best.pt"]
    assert os.path.samefile(tmp_path / "sequifier-m-best-4.pt", tmp_path / "sequifier-m-best.pt")
    loaded, layout, info = load_pt_model(str(tmp_path / "sequifier-m-best.pt"))
    assert layout == make_layout()
    assert info["model_type"] == "generative" and info["note"] == "x" and info["epoch"] == 4
    assert info["with_dropout"] is False and info["input_columns"] == ["a", "b", "x"]
    inputs = make_inputs()
    with torch.no_grad():
        for a, b in zip(GenerativeHead(model)(*inputs.values()), make_head(loaded, "generative")(*inputs.values())):
            torch.testing.assert_close(a, b)
    emb_model, _, emb_info = load_pt_model(str(tmp_path / "sequifier-m-best-embedding.pt"))
    assert emb_info["model_type"] == "embedding"
    with torch.no_grad():
        torch.testing.assert_close(EmbeddingHead(emb_model)(*inputs.values())[0], model.hidden_states(inputs)[:, -1])
    # plain containers only
    raw = torch.load(str(tmp_path / "sequifier-m-best.pt"), weights_only=True)
    assert raw["sequifier_format"] == 1 and set(raw) >= {"state_dict", "model_spec", "layout", "dropout"}


def test_flags_select_files(tmp_path):
    model = make_model()
    cfg = config(export_generative_model=False, export_embedding_model=True, export_pt=True)
    written = export_models(model, model.layout, cfg, str(tmp_path), "last", 1, {})
    assert [os.path.basename(p) for p in written] == ["sequifier-m-last-embedding.pt"]
    cfg = config(export_pt=False, export_onnx=False)
    assert export_models(model, model.layout, cfg, str(tmp_path / "none"), "last", 1, {}) == []
    assert not os.path.exists(tmp_path / "none")


def test_onnx_export_files_and_metadata(tmp_path):
    model = make_model(seed=2)
    cfg = config(export_onnx=True, export_pt=True, export_embedding_model=False, inference_batch_size=3)
    written = export_models(model, model.layout, cfg, str(tmp_path), "last", 2, {"dataset": "d"})
    assert sorted(os.path.basename(p) for p in written) == ["sequifier-m-last.onnx", "sequifier-m-last.pt"]
    path = str(tmp_path / "sequifier-m-last.onnx")
    proto = onnx.load(path)
    assert not proto.graph.initializer or all(not i.external_data for i in proto.graph.initializer)
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props["sequifier_format"] == 1 and props["model_type"] == "generative"
    assert props["input_columns"] == ["a", "b", "x"] and props["target_columns"] == ["a", "x"]
    assert props["target_column_types"] == {"a": "categorical", "x": "real"}
    assert props["column_types"]["b"] == "categorical" and props["seq_length"] == 6
    assert props["with_dropout"] is False and props["dataset"] == "d" and props["epoch"] == 2 and props["tag"] == "last"
    assert props["output_names"] == {"a": "a_output", "x": "x_output"}
    assert props["position_output_names"] == {"a": "a_positions", "x": "x_positions"}
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("a", "tensor(int64)"), ("b", "tensor(int64)"), ("x", "tensor(float)")]
    assert [o.name for o in session.get_outputs()] == [
        output_name("a"), output_name("x"), "a_positions", "x_positions", "a_query", "a_query_positions",
        "a_class_vectors", "a_class_bias"]
    assert props["query_output_names"] == {"a": "a_query"}
    assert props["query_position_output_names"] == {"a": "a_query_positions"}
    assert props["class_vector_names"] == {"a": ["a_class_vectors", "a_class_bias"]}
    # the class vectors are weights of the file: logits = query @ vectors.T + bias
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert weights["a_class_vectors"].shape[0] == weights["a_class_bias"].shape[0] == model.layout.n_classes["a"]
    # .pt and .onnx of one export give the same outputs
    loaded, _, _ = load_pt_model(str(tmp_path / "sequifier-m-last.pt"))
    inputs = make_inputs(batch=4, seed=9)
    with torch.no_grad():
        expected = make_head(loaded, "generative")(*inputs.values())
    got_outputs = onnx_outputs(path, inputs)
    for got, want in zip(got_outputs, expected):
        np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-4, rtol=1e-4)
    scored = got_outputs[4] @ weights["a_class_vectors"].T + weights["a_class_bias"]
    np.testing.assert_allclose(scored, got_outputs[0], atol=1e-4, rtol=1e-4)


def test_refuses_to_overwrite_unless_asked(tmp_path):
    model = make_model()
    cfg = config()
    export_models(model, model.layout, cfg, str(tmp_path), "best", 1, {})
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SequifierError, match="overwrite"):
        export_models(model, model.layout, cfg, str(tmp_path), "best", 2, {})
    # nothing half-written: no file of the refused run was created
    assert sorted(os.listdir(tmp_path)) == before
    cfg.overwrite = True
    export_models(make_model(seed=7), model.layout, cfg, str(tmp_path), "best", 2, {})
    assert load_pt_model(str(tmp_path / "sequifier-m-best.pt"))[2]["epoch"] == 2


def test_export_with_dropout(tmp_path):
    model = make_model(dropout=0.3)
    inputs = make_inputs(batch=4)
    for with_dropout in (True, False):
        cfg = config(export_onnx=True, export_pt=True, export_embedding_model=False,
                     export_with_dropout=with_dropout, model_name=f"d{int(with_dropout)}")
        cfg.training_spec.dropout = 0.3
        export_models(model, model.layout, cfg, str(tmp_path), "last", 1, {})
        path = str(tmp_path / f"sequifier-d{int(with_dropout)}-last.onnx")
        # Random ops are sampled anew on every run of one session (a new session restarts
        # from the same seed; infer can set one with onnxruntime.set_seed).
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = {k: v.numpy() for k, v in inputs.items()}
        first, second = session.run(None, feed)[0], session.run(None, feed)[0]
        assert (not np.allclose(first, second)) == with_dropout
        props = {p.key: json.loads(p.value) for p in onnx.load(path).metadata_props}
        assert props["with_dropout"] is with_dropout
        loaded, _, info = load_pt_model(path[:-5] + ".pt")
        assert info["with_dropout"] is with_dropout and info["dropout"] == 0.3
        head = make_head(set_dropout_active(loaded, info["with_dropout"]), "generative")
        with torch.no_grad():
            differs = not torch.allclose(head(*inputs.values())[0], head(*inputs.values())[0])
        assert differs == with_dropout


def test_load_pt_model_refuses_foreign_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(SequifierError, match=r"junk.pt. cannot be read \(not a file of tensors"):
        load_pt_model(str(junk))
    other = tmp_path / "other.pt"
    torch.save({"model": torch.zeros(2)}, str(other))
    with pytest.raises(SequifierError, match="not a sequifier .pt export"):
        load_pt_model(str(other))
    with pytest.raises(SequifierError, match="not found"):
        load_pt_model(str(tmp_path / "missing.pt"))
    path = str(tmp_path / "m.pt")
    export_pt(make_model(), path, "generative", False)
    raw = torch.load(path, weights_only=True)
    raw["state_dict"].pop("heads.a.weight")
    torch.save(raw, path)
    with pytest.raises(SequifierError, match="do not fit"):
        load_pt_model(path)


def test_output_name_clash_is_refused(tmp_path):
    from test_model import make_spec

    from sequifier.model.transformer import ColumnLayout, SequifierModel

    layout = ColumnLayout(["a", "a_output"], {"a": "real", "a_output": "real"}, {}, ["a"], {"a": "real"}, 4)
    model = SequifierModel(make_spec(feature_embedding_dims=None, initial_embedding_dim=16), layout)
    with pytest.raises(SequifierError, match="clash"):
        export_pt(model, str(tmp_path / "c.pt"), "generative", False)


def test_tied_model_exports_one_table_and_round_trips(tmp_path):
    model = make_model(seed=5, tie_embeddings=True)
    cfg = config(export_onnx=True, export_pt=True, export_embedding_model=False,
                 model_spec=model.spec)
    export_models(model, model.layout, cfg, str(tmp_path), "best", 1, {})
    # ONNX: the class vectors of "a" are stored once, as its input table.
    shapes = [tuple(i.dims) for i in onnx.load(str(tmp_path / "sequifier-m-best-1.onnx")).graph.initializer]
    assert shapes.count((7, 6)) == 1 and (7, 16) not in shapes
    inputs = make_inputs(batch=4, seed=3)
    with torch.no_grad():
        expected = GenerativeHead(model)(*inputs.values())
    got = onnx_outputs(str(tmp_path / "sequifier-m-best-1.onnx"), inputs)
    np.testing.assert_allclose(got[0], expected[0].numpy(), atol=1e-4, rtol=1e-4)
    loaded, _, info = load_pt_model(str(tmp_path / "sequifier-m-best-1.pt"))
    assert loaded.tied_columns == ["a"] and info["model_spec"]["tie_embeddings"] is True
    with torch.no_grad():
        torch.testing.assert_close(make_head(loaded, "generative")(*inputs.values())[0], expected[0])
