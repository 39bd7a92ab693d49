"""What preprocess does with missing cells: the `missing_values` policy.

A cell is missing when it is null (in CSV: empty, `NaN`, `nan`, `NULL`, `null`), NaN in a
float column, or an empty string. The policy is one of

* `error` (default): the run stops with one line naming the columns and counts;
* `drop_rows`: rows with a missing cell in that column are left out;
* `fill`: a real column's missing cells take the training mean (they are stored as
  0.0, the standardised mean, once the mean is known); a categorical column's get an own
  category `<missing>` (the last id of its id map);
* `{fill: VALUE}`: missing cells take VALUE, which must suit the column's type (a
  number for a real column, an integer for an integer column, text for a text column);
* `interpolate` (real columns): linear in the position between the known values around
  the cell, within its sequence (`fill_series`);
* `carry_forward`: the sequence's last known value before the cell.

For both series policies a cell before a sequence's first known value takes that value
(and one after the last known value of `interpolate` the last); a sequence without any
known value in the column gets the training mean (real) or the `<missing>` category
(categorical), as with `fill`.

`missing_values` is one policy for every column, or a map `{column: policy}` in which
`"*"` stands for every column not named (default `error`). The id and position columns
can only be `error` or `drop_rows`.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sequifier.config.metadata import MISSING_CATEGORY
from sequifier.errors import SequifierError, shown

ERROR, DROP_ROWS, FILL = "error", "drop_rows", "fill"
INTERPOLATE, CARRY_FORWARD = "interpolate", "carry_forward"
SERIES = (INTERPOLATE, CARRY_FORWARD)  # filled within each sequence, after sorting
POLICIES = (ERROR, DROP_ROWS, FILL) + SERIES
OTHER_COLUMNS = "*"


@dataclass(frozen=True)
class Policy:
    action: str  # error | drop_rows | fill | interpolate | carry_forward
    value: Any = None  # the fill value; None: training mean / <missing> category

    @property
    def fills_later(self) -> bool:
        """Cells left null here: filled within their sequence (interpolate,
        carry_forward) or once the encoding is known (training mean, <missing> category)."""
        return self.action in SERIES or (self.action == FILL and self.value is None)


@dataclass(frozen=True)
class MissingValues:
    """The parsed `missing_values` setting."""

    by_column: Dict[str, Policy] = field(default_factory=dict)
    default: Policy = Policy(ERROR)

    def policy(self, column: str) -> Policy:
        return self.by_column.get(column, self.default)

    def key_policy(self, column: str) -> Policy:
        """Id and position columns: their own policy, or drop_rows when the default is."""
        if column in self.by_column:
            return self.by_column[column]
        return self.default if self.default.action == DROP_ROWS else Policy(ERROR)

    def as_setting(self) -> Any:
        """A JSON-able form, for the resume fingerprint."""
        return {c: [p.action, p.value] for c, p in
                sorted(self.by_column.items()) + [(OTHER_COLUMNS, self.default)]}


def _parse_policy(raw: Any, where: str, problems: List[str]) -> Optional[Policy]:
    if isinstance(raw, str) and raw in POLICIES:
        return Policy(raw)
    if isinstance(raw, dict) and list(raw) == [FILL]:
        value = raw[FILL]
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            problems.append(f"{where}: the fill value must be a number or text, got {shown(value)}")
            return None
        return Policy(FILL, value)
    problems.append(f"{where}: '{raw}' is not one of error, drop_rows, fill, {{fill: VALUE}}, "
                    "interpolate, carry_forward")
    return None


def parse_missing_values(raw: Any, key_columns: Tuple[str, str]) -> Tuple[MissingValues, List[str]]:
    """The setting and one problem line per bad entry (the validation gate reports them)."""
    problems: List[str] = []
    if raw is None:
        raw = ERROR
    if isinstance(raw, dict) and list(raw) != [FILL]:
        by_column = {}
        for column, value in raw.items():
            policy = _parse_policy(value, f"missing_values.{column}", problems)
            if policy is not None:
                by_column[str(column)] = policy
        default = by_column.pop(OTHER_COLUMNS, Policy(ERROR))
        setting = MissingValues(by_column, default)
    else:
        policy = _parse_policy(raw, "missing_values", problems)
        setting = MissingValues({}, policy or Policy(ERROR))
    for column in key_columns:
        if setting.by_column.get(column, Policy(ERROR)).action not in (ERROR, DROP_ROWS):
            problems.append(f"missing_values.{column}: the id/position column can only be error or "
                            "drop_rows (a made-up id or position would invent items)")
    return setting, problems


def missing_count(column: pa.ChunkedArray) -> int:
    n = column.null_count
    if pa.types.is_floating(column.type):
        n += pc.sum(pc.is_nan(column)).as_py() or 0
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        n += pc.sum(pc.equal(column, "")).as_py() or 0
    return n


def missing_mask(column: pa.ChunkedArray) -> np.ndarray:
    """True where a cell is missing: null, NaN, or an empty string."""
    missing = pc.is_null(column, nan_is_null=True)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        missing = pc.or_(missing, pc.fill_null(pc.equal(column, ""), False))
    return np.asarray(missing.to_numpy(zero_copy_only=False), dtype=bool)


def _fill_value(path: str, name: str, column: pa.ChunkedArray, value: Any) -> pa.Scalar:
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_null(kind):  # every cell missing: the value decides the type
        return pa.scalar(value)
    ok = (pa.types.is_floating(kind) and isinstance(value, (int, float)) and not isinstance(value, bool)) \
        or (pa.types.is_integer(kind) and isinstance(value, int) and not isinstance(value, bool)) \
        or ((pa.types.is_string(kind) or pa.types.is_large_string(kind)) and isinstance(value, str))
    if not ok:
        wanted = "a number" if pa.types.is_floating(kind) else \
            "an integer" if pa.types.is_integer(kind) else "text"
        raise SequifierError(
            f"missing_values.{name}: fill value {shown(value)} does not suit column '{name}' of input "
            f"file '{path}', which holds {kind}; give {wanted}"
        )
    return pa.scalar(value, type=kind)


@dataclass
class MissingReport:
    """Per column: how many cells were missing and what was done (for the run's summary)."""

    dropped_rows: int = 0
    counts: Dict[str, Tuple[str, int]] = field(default_factory=dict)  # column -> (what was done, n)


def apply_missing_values(path: str, table: pa.Table, setting: MissingValues,
                         key_columns: Tuple[str, str]) -> Tuple[pa.Table, MissingReport]:
    """Drop rows and fill cells as the policy says; missing cells under `error` raise.

    Cells filled later (interpolate and carry_forward: `fill_series` once the table is
    sorted; training mean, <missing> category: the encoding) stay null here.
    """
    report = MissingReport()
    counts = {name: missing_count(table.column(name)) for name in table.column_names}
    masks = {name: missing_mask(table.column(name)) for name in table.column_names if counts[name]}
    policies = {name: setting.key_policy(name) if name in key_columns else setting.policy(name)
                for name in table.column_names}
    errors = [name for name in table.column_names if counts[name] and policies[name].action == ERROR]
    if errors:
        listed = ", ".join(f"'{c}' ({counts[c]} rows)" for c in errors)
        keys = [c for c in errors if c in key_columns]
        fix = ("set missing_values: {COLUMN: drop_rows} for the id/position column" if keys else
               "set missing_values (drop_rows, fill, {fill: VALUE}, interpolate or carry_forward, for "
               "all columns or per column)")
        raise SequifierError(
            f"input file '{path}': NaN or empty values in column {listed}; {fix}, or fill or "
            "drop those rows before preprocessing"
        )
    drop = np.zeros(table.num_rows, dtype=bool)
    for name, policy in policies.items():
        if counts[name] and policy.action == DROP_ROWS:
            drop |= masks[name]
            report.counts[name] = ("rows dropped", counts[name])
    if drop.any():
        table = table.filter(pa.array(~drop))
        report.dropped_rows = int(drop.sum())
        masks = {name: mask[~drop] for name, mask in masks.items()}
    for name, policy in policies.items():
        n = int(masks[name].sum()) if name in masks else 0
        if not (policy.action == FILL or policy.action in SERIES) or n == 0:
            continue
        column = table.column(name)
        if policy.value is None:
            # NaN and "" become null, which the encoding fills (mean / <missing>)
            filled = pc.if_else(pa.array(masks[name]), pa.scalar(None, column.type), column)
        else:
            fill = _fill_value(path, name, column, policy.value)
            filled = pc.if_else(pa.array(masks[name]), fill, column.cast(fill.type))
        table = table.set_column(table.column_names.index(name), name, filled)
        if policy.action == INTERPOLATE:
            done = "cells interpolated"
        elif policy.action == CARRY_FORWARD:
            done = "cells carried forward"
        elif policy.value is not None:
            done = f"cells filled with {shown(policy.value)}"
        elif pa.types.is_floating(column.type):
            done = "cells filled with the training mean"
        else:
            done = f"cells filled with the '{MISSING_CATEGORY}' category"
        report.counts[name] = (done, n)
    return table, report


def fill_series(path: str, table: pa.Table, setting: MissingValues) -> pa.Table:
    """Fill the cells left null for `interpolate` / `carry_forward` (apply_missing_values),
    within each sequence of a table sorted by sequence and position (read_table's
    canonical columns `sequenceId`, `itemPosition`); vectorised over all rows.

    carry_forward takes the sequence's last known value before the cell (the first known
    one after it for cells before any); interpolate is linear in the position between
    the known values around the cell (the nearest known value before the first or after
    the last). Cells of a sequence without any known value stay null and get the
    training mean (real) or the `<missing>` category (categorical) like `fill`.
    """
    names = [c for c in table.column_names if c not in ("sequenceId", "itemPosition")
             and setting.policy(c).action in SERIES and table.column(c).null_count]
    if not names:
        return table
    n = table.num_rows
    sequence = table.column("sequenceId")
    changed = np.asarray(pc.not_equal(sequence[1:], sequence[:-1]).to_numpy(zero_copy_only=False), dtype=bool)
    offsets = np.r_[0, np.flatnonzero(changed) + 1, n]
    lengths = np.diff(offsets)
    start = np.repeat(offsets[:-1], lengths)
    end = np.repeat(offsets[1:], lengths)
    rows = np.arange(n)
    for name in names:
        column = table.column(name)
        action = setting.policy(name).action
        if action == INTERPOLATE and not pa.types.is_floating(column.type):
            raise SequifierError(
                f"missing_values.{name}: interpolate works on real columns, but '{name}' of input "
                f"file '{path}' is categorical ({column.type}); use carry_forward, fill or drop_rows")
        known = np.asarray(pc.is_valid(column).to_numpy(zero_copy_only=False), dtype=bool)
        before = np.maximum.accumulate(np.where(known, rows, -1))
        after = np.minimum.accumulate(np.where(known, rows, n)[::-1])[::-1]
        has_before, has_after = before >= start, after < end
        if action == CARRY_FORWARD:
            source = np.where(has_before, before, np.where(has_after, after, -1))
            index = pa.array(source, mask=source < 0)
            filled = column.take(index)
        else:
            values = column.to_numpy()
            pos = table.column("itemPosition").to_numpy().astype(np.float64)
            b, a = np.clip(before, 0, n - 1), np.clip(after, 0, n - 1)
            span = pos[a] - pos[b]
            share = np.divide(pos - pos[b], span, out=np.zeros(n), where=span != 0)
            both = has_before & has_after
            out = np.where(both, values[b] + (values[a] - values[b]) * share,
                           np.where(has_before, values[b], np.where(has_after, values[a], np.nan)))
            out = np.where(known, values, out)
            filled = pa.array(out, mask=np.isnan(out))
        table = table.set_column(table.column_names.index(name), name, filled)
    return table


def report_lines(reports: List[MissingReport]) -> List[str]:
    """One line per column with missing cells, summed over the input files."""
    total: Dict[str, Tuple[str, int]] = {}
    dropped = 0
    for report in reports:
        dropped += report.dropped_rows
        for column, (action, n) in report.counts.items():
            total[column] = (action, total.get(column, (action, 0))[1] + n)
    lines = [f"'{column}': {n} {done}" for column, (done, n) in total.items()]
    if dropped:
        lines.append(f"{dropped} rows dropped in all")
    return lines
