"""From raw column values to model values: categorical ids and standardised reals.

Each input file is summarised on its own (possibly in a worker process); the summaries
are merged into one `ColumnEncoding`, which every worker then applies to its rows.

* Id maps are built from the values of every row read (all splits), so a value that
  only occurs in validation or test data still gets its own id. Ids 0 (PAD_ID) and
  1 (UNKNOWN_ID) are reserved; known values get 2, 3, ... in sorted order (numeric for
  integer columns, code point order for strings), so the same data always gives the
  same ids.
* Mean and standard deviation of real columns are computed over the rows of split 0
  (training) only, so standardisation does not leak validation/test data. The std is
  the population std (ddof=0); a constant column, or one without training rows, gets
  std 1.0 so values stay finite.
* Cells that `missing_values: fill` leaves null (missing.py) are left out of both; a
  real one is encoded as 0.0 (the training mean, standardised), a categorical one as
  the column's own `<missing>` category, the last id of its map.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sequifier.config.metadata import Metadata
from sequifier.config.schema import PAD_ID, UNKNOWN_ID
from sequifier.data.missing import MISSING_CATEGORY, MissingReport
from sequifier.data.read_table import KEY_COLUMNS, SEQUENCE_COLUMN, LongTable, feature_kind
from sequifier.data.splits import split_bounds
from sequifier.errors import SequifierError, shown

FIRST_ID = max(PAD_ID, UNKNOWN_ID) + 1


@dataclass
class FileSummary:
    """What the merge step needs to know about one (sorted) input file."""

    path: str
    n_rows: int
    columns: List[str]  # feature columns in file order
    kinds: Dict[str, str]  # column -> "real" | "int64" | "str"
    # unique, ascending: int64 ids, or text ids (object array) until `number_sequences`
    sequence_ids: np.ndarray
    sequence_offsets: np.ndarray  # row where each sequence starts, plus n_rows at the end
    position_type: str  # read_table.canonical_position
    # the original text ids when `number_sequences` has replaced them by numbers
    sequence_labels: Optional[np.ndarray] = None
    uniques: Dict[str, np.ndarray] = field(default_factory=dict)  # categorical values
    # real column -> per sequence (count, mean, sum of squared deviations) over its
    # training rows (sequence_moments)
    moments: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    # between_sequences: the split of each sequence (set by preprocess before merging)
    sequence_split: Optional[np.ndarray] = None
    missing: MissingReport = field(default_factory=MissingReport)
    date_like: List[str] = field(default_factory=list)
    null_columns: List[str] = field(default_factory=list)  # feature columns with null cells


def sequence_offsets(sequence_column) -> np.ndarray:
    """Start row of each run of equal ids in a sorted column, plus the total at the end."""
    n = len(sequence_column)
    if n == 1:
        return np.array([0, 1], dtype=np.int64)
    changed = pc.not_equal(sequence_column[1:], sequence_column[:-1])
    changed = np.asarray(changed.to_numpy(zero_copy_only=False), dtype=bool)
    starts = np.flatnonzero(np.r_[True, changed])
    return np.r_[starts, n].astype(np.int64)


def training_row_mask(offsets: np.ndarray, split_ratios: Sequence[float], holdout_items: int = 0) -> np.ndarray:
    """Rows in split 0's segment of their sequence (within_sequence, or leave_last_out
    with `holdout_items`), in every sequence: with between_sequences all rows count here
    and merging keeps split 0's sequences."""
    lengths = np.diff(offsets)
    split0_end = split_bounds(lengths, split_ratios, holdout_items)[:, 1]
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    return within < np.repeat(split0_end, lengths)


def sequence_moments(x: np.ndarray, rows: np.ndarray, offsets: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Per sequence: count, mean and sum of squared deviations of the known (not NaN)
    values in the rows selected by `rows`."""
    lengths = np.diff(offsets)
    sequence = np.repeat(np.arange(len(lengths)), lengths)
    valid = rows & ~np.isnan(x)
    x = np.where(valid, x, 0.0)
    count = np.bincount(sequence, weights=valid, minlength=len(lengths))
    mean = np.bincount(sequence, weights=x, minlength=len(lengths)) / np.maximum(count, 1)
    m2 = np.bincount(sequence, weights=np.where(valid, (x - mean[sequence]) ** 2, 0.0), minlength=len(lengths))
    return count, mean, m2


def summarize_table(path: str, long: LongTable, split_ratios: Sequence[float],
                    split_method: str = "within_sequence", holdout_items: int = 0) -> FileSummary:
    table = long.table
    seq = table.column(SEQUENCE_COLUMN)
    offsets = sequence_offsets(seq)
    ids = seq.take(pa.array(offsets[:-1])).to_numpy()
    columns = [c for c in table.column_names if c not in KEY_COLUMNS]
    kinds = {c: feature_kind(table.column(c).type) for c in columns}
    summary = FileSummary(path, table.num_rows, columns, kinds, ids, offsets, long.position_type,
                          missing=long.missing, date_like=long.date_like,
                          null_columns=[c for c in columns if table.column(c).null_count])
    train_rows = None
    for c in columns:
        if kinds[c] == "real":
            if train_rows is None:
                train_rows = (np.ones(table.num_rows, dtype=bool) if split_method == "between_sequences"
                              else training_row_mask(offsets, split_ratios, holdout_items))
            summary.moments[c] = sequence_moments(table.column(c).to_numpy(), train_rows, offsets)
        else:
            values = pc.unique(pc.drop_null(table.column(c)))
            summary.uniques[c] = np.unique(values.to_numpy(zero_copy_only=False))
    return summary


def input_order(summaries: List[FileSummary]) -> np.ndarray:
    """The order (file, then sequence id) of the sequences of `summaries` taken together.

    A file read in chunks has one summary per chunk, each sorted by id, but the chunks
    hold hash buckets of ids; a file read whole is in order already.
    """
    lengths = [len(s.sequence_ids) for s in summaries]
    paths = [s.path for s in summaries]
    if len(set(paths)) == len(paths):
        return np.arange(sum(lengths))
    file_index = {p: i for i, p in enumerate(dict.fromkeys(paths))}
    owner = np.repeat([file_index[p] for p in paths], lengths)
    ids = np.concatenate([s.sequence_ids for s in summaries])
    if ids.dtype == object:  # text ids: their rank in sorted order
        ids = pc.rank(pa.array(ids, type=pa.string()), sort_keys="ascending",
                      tiebreaker="first").to_numpy()
    return np.lexsort((ids, owner))


def _id_kind(summary: FileSummary) -> str:
    return "text" if summary.sequence_ids.dtype == object else "integer"


def _check_same_schema(summaries: List[FileSummary]) -> None:
    first = summaries[0]
    for other in summaries[1:]:
        for what, get in (("sequence ids", _id_kind), ("positions", lambda s: s.position_type)):
            if get(other) != get(first):
                raise SequifierError(
                    f"data_path: files mix schemas: {what} are {get(first)} in '{first.path}' "
                    f"but {get(other)} in '{other.path}'; give them one type in all files"
                )
        if set(other.columns) != set(first.columns):
            raise SequifierError(
                f"data_path: files mix schemas: '{first.path}' has columns {first.columns} "
                f"but '{other.path}' has {other.columns}; give all files the same columns "
                "or set selected_columns"
            )
        for c in first.columns:
            if other.kinds[c] != first.kinds[c]:
                raise SequifierError(
                    f"data_path: files mix schemas: column '{c}' is {first.kinds[c]} in "
                    f"'{first.path}' but {other.kinds[c]} in '{other.path}'; give the column "
                    "one type in all files"
                )


def _check_disjoint_sequences(summaries: List[FileSummary]) -> None:
    if len(summaries) < 2:
        return
    ids = np.concatenate([s.sequence_ids for s in summaries])
    owner = np.repeat(np.arange(len(summaries)), [len(s.sequence_ids) for s in summaries])
    order = np.argsort(ids, kind="stable")
    ids, owner = ids[order], owner[order]
    clash = np.flatnonzero(ids[1:] == ids[:-1])
    if len(clash):
        i = clash[0]
        raise SequifierError(
            f"data_path: sequence id {shown(ids[i])} appears in both "
            f"'{summaries[owner[i]].path}' and '{summaries[owner[i + 1]].path}'; keep each "
            "sequence in one file"
        )


def number_sequences(summaries: List[FileSummary]) -> Optional[List[str]]:
    """Give text sequence ids integer numbers (in place): their index in the sorted list
    of all ids, which is returned for the metadata. Integer ids stay; returns None."""
    if _id_kind(summaries[0]) == "integer":
        return None
    ids = pa.array(np.concatenate([s.sequence_ids for s in summaries]), type=pa.string())
    ordered = ids.take(pc.array_sort_indices(ids))  # files hold disjoint ids (checked before)
    for s in summaries:
        s.sequence_labels = s.sequence_ids
        s.sequence_ids = pc.index_in(pa.array(s.sequence_ids, type=pa.string()),
                                     value_set=ordered).to_numpy().astype(np.int64)
    return ordered.to_pylist()


@dataclass
class ColumnEncoding:
    """The merged maps and statistics, applied to every file's rows."""

    columns: List[str]
    kinds: Dict[str, str]  # column -> "real" | "int64" | "str"
    values: Dict[str, np.ndarray]  # categorical column -> sorted known values
    mean: Dict[str, float]
    std: Dict[str, float]
    # categorical columns with a <missing> category (id FIRST_ID + number of values)
    missing_category: Set[str] = field(default_factory=set)

    def is_real(self, column: str) -> bool:
        return self.kinds[column] == "real"

    def id_map(self, column: str) -> Dict[str, int]:
        ids = {str(v): i + FIRST_ID for i, v in enumerate(self.values[column].tolist())}
        if column in self.missing_category:
            ids[MISSING_CATEGORY] = FIRST_ID + len(ids)
        return ids

    def encode(self, table: pa.Table) -> Dict[str, np.ndarray]:
        """Column -> int64 ids (categorical) or float64 standardised values (real)."""
        out = {}
        for c in self.columns:
            column = table.column(c)
            if self.is_real(c):
                out[c] = (column.to_numpy() - self.mean[c]) / self.std[c]
                if column.null_count:  # filled with the training mean
                    out[c][np.isnan(out[c])] = 0.0
            else:
                index = pc.index_in(column, value_set=pa.array(self.values[c]))
                if column.null_count and c in self.missing_category:
                    index = pc.if_else(pc.is_null(column), len(self.values[c]), index)
                # every value was seen while building the maps; UNKNOWN_ID is a safety net
                # (and the id of missing cells when a reused map has no <missing> category)
                index = pc.fill_null(index, UNKNOWN_ID - FIRST_ID)
                out[c] = index.to_numpy().astype(np.int64) + FIRST_ID
        return out


# text that starts like an ISO date or time: 2024-05-01, 2024-05-01T13:45, 13:45:00
DATE_TEXT = r"^\s*(\d{4}-\d{2}-\d{2}|\d{2}:\d{2}(:\d{2})?)([ T]\d{2}:\d{2}.*)?\s*$"


def column_warnings(summaries: List[FileSummary], encoding: ColumnEncoding) -> List[str]:
    """Warnings about categorical columns that are probably not categories: nearly one
    class per row (ids, times, free text), or values that look like dates or times."""
    n_rows = sum(s.n_rows for s in summaries)
    date_like = {c for s in summaries for c in s.date_like}
    lines = []
    options = ("drop it (selected_columns), read it as real (column_types: {{{c}: real}}) or use "
               "it as the position (position_column: {c})")
    for c in encoding.columns:
        if encoding.is_real(c):
            continue
        values = encoding.values[c]
        looks_like_dates = c in date_like or (
            encoding.kinds[c] == "str" and len(values) > 0
            and bool(pc.all(pc.match_substring_regex(pa.array(values[:1000], pa.string()), DATE_TEXT)).as_py()))
        if looks_like_dates:
            lines.append(f"column '{c}' looks like dates or times and is read as categorical "
                         f"({len(values)} classes); " + options.format(c=c))
        elif len(values) > n_rows / 2:
            lines.append(f"categorical column '{c}' has {len(values)} distinct values in {n_rows} "
                         "rows (an id, a time or free text?); " + options.format(c=c))
    return lines


def _check_missing_category_free(column: str, values: np.ndarray) -> None:
    if MISSING_CATEGORY in values.tolist():
        raise SequifierError(
            f"missing_values.{column}: the column already holds the value '{MISSING_CATEGORY}', "
            "the category fill gives missing cells; rename that value or use {fill: VALUE}")


def merge_summaries(summaries: List[FileSummary], filled_later: Set[str] = frozenset()
                    ) -> ColumnEncoding:
    """Merge the files' summaries; `filled_later` are the columns whose missing cells take
    the training mean (real) or a <missing> category (categorical)."""
    _check_same_schema(summaries)
    _check_disjoint_sequences(summaries)
    first = summaries[0]
    columns, kinds = first.columns, first.kinds
    values, mean, std = {}, {}, {}
    order = input_order(summaries)
    split = (None if first.sequence_split is None
             else np.concatenate([s.sequence_split for s in summaries]))
    for c in columns:
        if kinds[c] != "real":
            values[c] = np.unique(np.concatenate([s.uniques[c] for s in summaries]))
            if c in filled_later:
                _check_missing_category_free(c, values[c])
            continue
        # Chan et al.: combine the training sequences' counts, means and squared deviations,
        # in input order (the sums' rounding must not depend on how files were chunked)
        count, means, m2s = (np.concatenate(v)[order] for v in zip(*(s.moments[c] for s in summaries)))
        if split is not None:
            count, means, m2s = (v[split[order] == 0] for v in (count, means, m2s))
        n = count.sum()
        m = float((count * means).sum() / n) if n else 0.0
        m2 = float(m2s.sum() + (count * (means - m) ** 2).sum())
        sd = float(np.sqrt(m2 / n)) if n else 0.0
        mean[c] = float(m)
        std[c] = sd if sd > 0 else 1.0
    missing = {c for c in columns if c in filled_later and kinds[c] != "real"}
    return ColumnEncoding(columns, kinds, values, mean, std, missing)


def _known_values(metadata: Metadata, column: str) -> np.ndarray:
    """A column's known values ordered by id, so index i is id FIRST_ID + i (as `encode` needs)."""
    items = sorted(((v, i) for v, i in metadata.id_maps[column].items() if v != MISSING_CATEGORY),
                   key=lambda kv: kv[1])
    ids = [i for _, i in items]
    if ids != list(range(FIRST_ID, FIRST_ID + len(ids))):
        raise SequifierError(f"reuse_metadata_path: the id map of '{column}' is not a sequifier id map "
                             f"(ids must run from {FIRST_ID} without gaps); re-run preprocess to rebuild it")
    if metadata.original_dtypes.get(column) == "int64":
        return np.array([int(v) for v, _ in items], dtype=np.int64)
    return np.array([v for v, _ in items], dtype=object)


def encoding_from_metadata(metadata: Metadata, source: str, summaries: List[FileSummary]
                           ) -> Tuple[ColumnEncoding, Dict[str, np.ndarray]]:
    """The id maps and statistics of an earlier run, applied to new data.

    New data for a trained model must be encoded exactly as its training data was.
    Returns the encoding and, per categorical column, the values the maps do not know
    (they are encoded as UNKNOWN_ID).
    """
    _check_same_schema(summaries)
    _check_disjoint_sequences(summaries)
    first = summaries[0]
    expected = metadata.column_types
    missing = [c for c in expected if c not in first.columns]
    extra = [c for c in first.columns if c not in expected]
    if missing or extra:
        raise SequifierError(
            f"reuse_metadata_path: '{source}' describes columns {list(expected)} but '{first.path}' has "
            f"{first.columns}; the data needs exactly those feature columns (use selected_columns to drop others)")
    values, mean, std, unknown = {}, {}, {}, {}
    for c, kind in expected.items():
        found = first.kinds[c]
        wanted = "real" if kind == "real" else metadata.original_dtypes.get(c, "str")
        if found != wanted:
            raise SequifierError(
                f"reuse_metadata_path: column '{c}' is {wanted} in '{source}' but {found} in "
                f"'{first.path}'; give it the type it had when the model's data was preprocessed")
        if kind == "real":
            stats = metadata.selected_columns_statistics[c]
            mean[c], std[c] = float(stats["mean"]), float(stats["std"])
        else:
            values[c] = _known_values(metadata, c)
            seen = np.unique(np.concatenate([s.uniques[c] for s in summaries]))
            unknown[c] = seen[~np.isin(seen, values[c])]
    missing = {c for c in values if MISSING_CATEGORY in metadata.id_maps[c]}
    encoding = ColumnEncoding(list(expected), {c: first.kinds[c] for c in expected}, values, mean, std,
                              missing)
    return encoding, unknown


def metadata_encoding(metadata: Metadata, columns: Sequence[str]) -> ColumnEncoding:
    """The encoding `metadata` records, for `columns` only (e.g. the known-ahead values of
    future rows that infer reads in the user's terms)."""
    values, mean, std, kinds = {}, {}, {}, {}
    for c in columns:
        if metadata.column_types[c] == "real":
            stats = metadata.selected_columns_statistics[c]
            mean[c], std[c], kinds[c] = float(stats["mean"]), float(stats["std"]), "real"
        else:
            values[c] = _known_values(metadata, c)
            kinds[c] = metadata.original_dtypes.get(c, "str")
    missing = {c for c in values if MISSING_CATEGORY in metadata.id_maps[c]}
    return ColumnEncoding(list(columns), kinds, values, mean, std, missing)
