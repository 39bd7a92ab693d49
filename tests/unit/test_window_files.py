"""window_files: one reader for every window format, whole splits or ranges of windows."""


import numpy as np
import pytest
from helpers.train_data import make_windows  # noqa: E402

from sequifier.data.window_files import read_rows, read_windows, split_files  # noqa: E402
from sequifier.data.windows import windows_to_frame, write_shards, write_windows  # noqa: E402
from sequifier.errors import SequifierError  # noqa: E402

TYPES = {"itemId": "categorical", "itemValue": "real"}


@pytest.mark.parametrize("fmt", ["parquet", "csv", "pt"])
def test_a_range_of_windows_equals_the_slice_of_the_whole(tmp_path, fmt):
    windows = make_windows(40, 8, seed=1)
    folder = str(tmp_path / "split")
    write_shards(windows, folder, "s", 16, TYPES, fmt)
    files = split_files(folder, fmt)
    assert [f.n_windows for f in files] == [16, 16, 8]
    assert files[0].columns == ("itemPosition", "itemId", "itemValue")
    part = read_rows(files[1], 3, 11, ["itemValue"], TYPES)
    assert list(part.values) == ["itemValue"]
    np.testing.assert_array_equal(part.sequence_id, windows.sequence_id[19:27])
    np.testing.assert_array_equal(part.item_position, windows.item_position[19:27])
    np.testing.assert_allclose(part.values["itemValue"], windows.values["itemValue"][19:27],
                               rtol=1e-6)
    whole = read_windows(folder, fmt, TYPES)
    np.testing.assert_array_equal(whole.values["itemId"], windows.values["itemId"])


def test_parquet_range_reads_use_row_groups(tmp_path):
    windows = make_windows(50, 8, seed=2)
    path = str(tmp_path / "one.parquet")
    windows_to_frame(windows).to_parquet(path, index=False, row_group_size=7)  # 22 groups
    (file,) = split_files(path, "parquet")
    for start, stop in ((0, 50), (7, 8), (30, 50)):
        part = read_rows(file, start, stop, ["itemId"], TYPES)
        np.testing.assert_array_equal(part.values["itemId"], windows.values["itemId"][start:stop])


def test_a_folder_mixing_shard_schemas_is_one_line(tmp_path):
    folder = tmp_path / "split"
    folder.mkdir()
    write_windows(make_windows(4, 8, seed=1), str(folder / "a.parquet"), "parquet")
    other = make_windows(4, 8, seed=1)
    del other.values["itemValue"]
    write_windows(other, str(folder / "b.parquet"), "parquet")
    with pytest.raises(SequifierError, match=r"data file '.*b.parquet' has columns .* mixes shards"):
        split_files(str(folder), "parquet")


def test_missing_paths_and_foreign_files_are_one_line(tmp_path):
    with pytest.raises(SequifierError, match="not found"):
        split_files(str(tmp_path / "nope.parquet"), "parquet")
    with pytest.raises(SequifierError, match="holds no .csv files"):
        split_files(str(tmp_path), "csv")
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SequifierError, match="not in sequifier's window format"):
        split_files(str(tmp_path / "t.csv"), "csv")
