"""infer's top-k recommendations (output_top_k, top_k_format, exclude_seen) and the
whole-catalogue scoring in bounded chunks behind them."""

import os

import numpy as np
import pandas as pd
import pytest
from helpers.infer_project import SEQ_LENGTH, infer_config, make_project

from sequifier import catalog
from sequifier.data.window_files import read_windows
from sequifier.errors import SequifierError
from sequifier.gate import validate
from sequifier.infer import recommend, run_infer

COLOURS = {"red", "green", "blue", "grey"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    frame, metadata, paths = make_project(root)
    return root, metadata, paths


def run(project, model="onnx", **overrides):
    root, _, paths = project
    overrides.setdefault("overwrite", True)
    written = run_infer(infer_config(root, paths[model], **overrides))
    found = [p for p in written if "recommendations" in p]
    return {os.path.basename(p): pd.read_csv(p) for p in found}, written


def test_long_top_k_lists_the_most_likely_items_in_the_users_ids(project):
    tables, written = run(project, output_top_k=3, output_probabilities=True)
    assert list(tables) == ["m-colour-top3.csv"]
    top = tables["m-colour-top3.csv"]
    assert list(top.columns) == ["sequenceId", "itemPosition", "rank", "colour", "probability"]
    assert set(top["colour"]) <= COLOURS  # never <pad> or <unknown>, the user's values
    predictions = pd.read_csv(next(p for p in written if "predictions" in p))
    assert len(top) == 3 * len(predictions)
    assert top.groupby(["sequenceId", "itemPosition"])["rank"].apply(list).map([1, 2, 3].__eq__).all()
    # the same items and probabilities as the dense probability table, best first
    dense = pd.read_csv(next(p for p in written if "probabilities" in p))
    for (_, row), (_, group) in zip(dense.iterrows(), top.groupby(["sequenceId", "itemPosition"], sort=False)):
        best = row[list(COLOURS)].astype(float).sort_values(ascending=False)
        assert list(group["colour"]) == list(best.index[:3])
        np.testing.assert_allclose(group["probability"], best.values[:3], rtol=1e-4)
    # rank 1 is the prediction unless a reserved id was the arg-max
    first = top[top["rank"] == 1].reset_index(drop=True)
    same = first["colour"] == predictions["colour"]
    assert same.mean() > 0.5


def test_wide_format_and_pt_model_agree(project):
    wide, _ = run(project, output_top_k=2, top_k_format="wide")
    table = wide["m-colour-top2.csv"]
    assert list(table.columns) == ["sequenceId", "itemPosition", "colour_1", "colour_2",
                                   "probability_1", "probability_2"]
    assert (table["probability_1"] >= table["probability_2"]).all()
    pt, _ = run(project, model="pt", output_top_k=2, top_k_format="wide")
    pd.testing.assert_frame_equal(pt["m-colour-top2.csv"].drop(columns=["probability_1", "probability_2"]),
                                  table.drop(columns=["probability_1", "probability_2"]))


def test_exclude_seen_leaves_out_the_windows_items(project):
    root, metadata, _ = project
    tables, _ = run(project, output_top_k=3, top_k_format="wide", exclude_seen=True)
    table = tables["m-colour-top3.csv"]
    windows = read_windows(os.path.join(str(root), metadata.split_paths[-1]), "parquet",
                           metadata.column_types, ["colour"])
    names = {v: k for k, v in metadata.id_maps["colour"].items()}
    assert len(table) == len(windows)
    short = 0
    for i in range(len(windows)):
        seen = {names[j] for j in windows.values["colour"][i, :SEQ_LENGTH] if j in names}
        listed = [c for c in table.loc[i, ["colour_1", "colour_2", "colour_3"]] if isinstance(c, str)]
        assert not seen & set(listed)
        assert len(listed) == min(3, len(COLOURS - seen))
        short += len(listed) < 3
    assert short > 0  # some windows hold 2+ colours: fewer than k are left, the rest is empty


def test_scored_positions_exclude_what_came_before_each_slot(project):
    root, metadata, _ = project
    tables, written = run(project, output_top_k=4, exclude_seen=True, positions="scored")
    top = tables["m-colour-top4.csv"]
    predictions = pd.read_csv(next(p for p in written if "predictions" in p))
    rows = top.groupby(["sequenceId", "itemPosition"]).size()
    assert len(rows) <= len(predictions) and rows.max() <= 4
    assert set(top["colour"]) <= COLOURS


def test_chunked_scoring_gives_the_same_lists(project, monkeypatch):
    whole, _ = run(project, output_top_k=3, positions="scored")
    monkeypatch.setattr(catalog, "SCORE_CHUNK_ELEMENTS", 2 * 6)  # 2 rows of 6 classes per pass
    chunked, _ = run(project, output_top_k=3, positions="scored")
    pd.testing.assert_frame_equal(whole["m-colour-top3.csv"], chunked["m-colour-top3.csv"])


def test_top_k_never_chooses_excluded_ids():
    logits = np.array([[9.0, 8.0, 1.0, 2.0, 3.0], [0.0, 0.0, 5.0, 5.0, 1.0]], dtype=np.float32)
    ids, probs = catalog.top_k(logits.copy(), 2, [0, 1], np.array([[4], [2]]))
    assert ids.tolist() == [[3, 2], [3, 4]]
    z = np.log(np.exp(logits).sum(axis=1))
    np.testing.assert_allclose(probs, np.exp(np.take_along_axis(logits, ids, 1) - z[:, None]), rtol=1e-5)
    ids, _ = catalog.top_k(logits.copy(), 4, [0, 1], np.array([[4], [2]]))
    assert ids.tolist() == [[3, 2, -1, -1], [3, 4, -1, -1]]


@pytest.mark.parametrize("overrides, message", [
    ({"output_top_k": 0}, "output_top_k: must be a whole number >= 1"),
    ({"output_top_k": 3, "top_k_format": "tall"}, "top_k_format: 'tall' is not one of long, wide"),
    ({"exclude_seen": True}, "exclude_seen: leaves seen items out of the top-k lists, but output_top_k"),
    ({"top_k_format": "wide"}, "top_k_format: is set but output_top_k is not"),
    ({"allow_dense_probabilities": True}, "allow_dense_probabilities: is set but output_probabilities"),
])
def test_bad_options_are_one_line_each_before_anything_runs(project, overrides, message):
    root, _, paths = project
    with pytest.raises(SequifierError) as e:
        validate("infer", infer_config(root, paths["onnx"], **overrides))
    assert str(e.value).startswith(message)


def test_model_dependent_refusals(project, monkeypatch, tmp_path):
    root, _, paths = project
    with pytest.raises(SequifierError, match="output_top_k: 5 is more than the 4 items of 'colour'"):
        run(project, output_top_k=5)
    monkeypatch.setattr(recommend, "DENSE_PROBABILITY_LIMIT", 5)
    with pytest.raises(SequifierError, match="output_probabilities: 'colour' has 6 classes, more than 5"):
        run(project, output_probabilities=True)
    run(project, output_probabilities=True, allow_dense_probabilities=True)  # the opt-in
    other = tmp_path / "other"
    _, _, model = make_project(other, columns=("code", "value"), targets=("colour", "value"))
    with pytest.raises(SequifierError, match="exclude_seen: 'colour' is not an input of the model"):
        run_infer(infer_config(other, model["onnx"], output_top_k=2, exclude_seen=True))
    assert not os.path.exists(other / "outputs")
