"""Forecasting baselines that need no model, and the series they are computed on.

`evaluate` reads windows; the baselines of a time series need the series itself (the
value one season earlier, the last value before a forecast origin). `series_from_windows`
rebuilds each sequence's items from its (overlapping, left-padded) windows, in position
order, with a flag for the items of the evaluated split (the rest is the context that
preprocess puts in front of a later split's windows).

Seasonal naive predicts the value one season (`seasonal_period` items) earlier; for a
forecast h steps ahead (h = 0, 1, ...) of an origin it repeats the last observed season:
the value `period * (h // period + 1)` items before the forecast item.

`seasonal_period`: set it (items per season), or let it be detected from time positions:
the items of one day at the series' most common position step (48 for half-hourly
data), a week (7) for daily dates. Integer positions carry no unit, so nothing is
detected and the seasonal-naive baseline is left out (with a log line saying why).
"""

from dataclasses import dataclass

import numpy as np

from sequifier.config.metadata import Metadata
from sequifier.data.windows import Windows
from sequifier.errors import SequifierError

TICKS_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


@dataclass
class Series:
    """All sequences' items back to back, each sequence in position order.

    `values[col]` [n] (ids or standardised values), `position` [n], `sequence` [n]
    (the windows' sequence id), `in_split` [n] (an item of the evaluated split),
    `start` [n] (flat index of the item's sequence's first item).
    """

    sequence: np.ndarray
    position: np.ndarray
    values: dict
    in_split: np.ndarray
    start: np.ndarray

    def __len__(self) -> int:
        return len(self.position)


def series_from_windows(windows: Windows, columns: list[str], context: Windows | None = None) -> Series:
    """The items of `windows` once each (overlapping windows hold the same item with the
    same values), preceded by the items of `context` (the split before: a later split's
    windows start with as little of the earlier split as their stride needs, and a
    forecast origin or a season needs more history than that)."""
    parts = [context, windows] if context is not None else [windows]
    sequence, position, own, values = [], [], [], {c: [] for c in columns}
    for part, is_split in zip(parts, [False] * (len(parts) - 1) + [True]):
        n, width = part.item_position.shape
        slot = np.arange(width)[None, :]
        real = slot >= part.padding[:, None]
        sequence.append(np.broadcast_to(part.sequence_id[:, None], (n, width))[real])
        position.append(part.item_position[real])
        own.append(np.broadcast_to(slot >= part.target_start[:, None], (n, width))[real] & is_split)
        for c in columns:
            values[c].append(part.values[c][real])
    sequence, position, own = np.concatenate(sequence), np.concatenate(position), np.concatenate(own)
    order = np.lexsort((position, sequence))
    sequence, position = sequence[order], position[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (sequence[1:] != sequence[:-1]) | (position[1:] != position[:-1])
    keep = order[first]
    # an item is the split's own when any window of the split holds it from targetStart on
    group = np.cumsum(first) - 1
    in_split = np.zeros(int(first.sum()), dtype=bool)
    np.logical_or.at(in_split, group, own[order])
    values = {c: np.concatenate(v)[keep] for c, v in values.items()}
    sequence, position = sequence[first], position[first]
    new_sequence = np.ones(len(sequence), dtype=bool)
    new_sequence[1:] = sequence[1:] != sequence[:-1]
    start = np.maximum.accumulate(np.where(new_sequence, np.arange(len(sequence)), 0))
    return Series(sequence, position, values, in_split, start)


def detect_seasonal_period(metadata: Metadata, series: Series) -> tuple[int | None, str]:
    """(period in items or None, how it was found) from the time positions' step."""
    kind = metadata.position_type
    if kind == "integer":
        return None, ("positions are integers (no unit to find a day in); set seasonal_period "
                      "for a seasonal-naive baseline")
    steps = np.diff(series.position)[series.sequence[1:] == series.sequence[:-1]]
    steps = steps[steps > 0]
    if len(steps) == 0:
        return None, "no sequence has two items to find the position step from"
    values, counts = np.unique(steps, return_counts=True)
    step = int(values[counts.argmax()])
    if kind.startswith("date"):
        return 7, "a week of daily dates"
    unit = kind[len("timestamp["):].split(",")[0].rstrip("]") if kind.startswith("timestamp[") else None
    ticks = TICKS_PER_DAY.get(unit)
    if ticks is None or ticks % step:
        return None, f"a day is not a whole number of position steps ({step} ticks of {kind})"
    period = ticks // step
    return (period, f"one day of the {step}-tick position step") if period > 1 else (
        None, "the position step is a day or longer; set seasonal_period")


def check_seasonal_period(period: int, series: Series, field: str = "seasonal_period") -> None:
    """A season longer than every sequence's history in the data is refused."""
    history = np.arange(len(series)) - series.start
    longest = int(history.max()) if len(series) else 0
    if period > longest:
        raise SequifierError(
            f"{field}: {period} items is longer than the history available in the data (at most "
            f"{longest} items before any item); use a shorter seasonal_period, or longer "
            "sequences / seq_length"
        )


def seasonal_index(index: np.ndarray, ahead: np.ndarray, period: int, series: Series) -> np.ndarray:
    """Flat index of the seasonal-naive value for the item at `index`, forecast `ahead`
    steps after its origin (0 for the first step; one-step evaluation passes 0); -1 where
    the sequence has no such item."""
    lag = period * (ahead // period + 1)
    source = index - lag
    return np.where(source >= series.start[index], source, -1)
