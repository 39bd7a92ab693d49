"""Where the windows of each split start: per-sequence segments and window starts.

All functions work on whole arrays of sequences at once (no loop per sequence or per
window). Positions are relative to the start of each sequence.

Split k of a sequence of n items is its segment [bounds[k], bounds[k+1]): with
`split_method: within_sequence` the first split_ratios[0] share of the items, then the
next share, and so on (time order); with `between_sequences` the whole sequence is the
segment of the one split it is assigned to (`assign_sequences`) and the others are empty;
with `leave_last_out` (n = `holdout_items`) the last n items are the last split's
segment, the n before them the previous split's, and training keeps the rest
(`leave_last_out_bounds`), the recommender's protocol: every held-out item is a target
whose window holds up to seq_length items of its history as context.

A window holds `window_length` = seq_length + 1 items. The windows of split k cover
its segment the way windows cover a sequence of their own:
  * a segment longer than a window gets windows starting at the segment's start up to
    the start that makes the last window end at the segment's end, `stride` apart
    (`exact`) or spread evenly at most `stride` apart (`distribute`);
  * a segment of at most one window gets one window ending at the segment's end.
A later split's windows cover its segment plus the one item before it (`covered_from`),
so that its first item is a target with context. Every window ends inside its segment.
A window reaching left of its segment takes the preceding items of the same sequence
as context (earlier splits only, never later ones), and slots before the sequence's
first item are padding. Split 0 therefore lies
wholly in its segment; only a short first segment is left-padded.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from sequifier.errors import SequifierError


def segment_bounds(lengths: np.ndarray, split_ratios: Sequence[float]) -> np.ndarray:
    """[n_seq, n_splits + 1] segment boundaries: split k is [bounds[:, k], bounds[:, k+1])."""
    cumulative = np.cumsum(np.asarray(split_ratios, dtype=np.float64))
    lengths = np.asarray(lengths, dtype=np.int64)
    # the epsilon keeps 10 * 0.9 = 8.999... from losing an item to floating point
    ends = np.floor(lengths[:, None] * cumulative[None, :] + 1e-9).astype(np.int64)
    ends = np.minimum(ends, lengths[:, None])
    ends[:, -1] = lengths
    return np.concatenate([np.zeros((len(lengths), 1), dtype=np.int64), ends], axis=1)


SPLIT_METHODS = ("within_sequence", "between_sequences", "leave_last_out")
LEAVE_LAST_OUT_SPLITS = (2, 3)  # training + test, or training + validation + test
START_MODES = ("distribute", "exact")  # subsequence_start_mode (data/rules.py checks it)


def leave_last_out_bounds(lengths: np.ndarray, n_splits: int, holdout_items: int) -> np.ndarray:
    """segment_bounds for `leave_last_out`: split k < n_splits - 1 ends (n_splits - 1 - k) *
    holdout_items items before the sequence's end. A sequence too short to keep an item
    of context before its held-out items (`too_short_for_holdout`) lies wholly in training."""
    lengths = np.asarray(lengths, dtype=np.int64)
    from_end = (n_splits - 1 - np.arange(n_splits)) * holdout_items
    ends = lengths[:, None] - from_end[None, :]
    ends = np.where(too_short_for_holdout(lengths, n_splits, holdout_items)[:, None], lengths[:, None], ends)
    return np.concatenate([np.zeros((len(lengths), 1), dtype=np.int64), ends], axis=1)


def too_short_for_holdout(lengths: np.ndarray, n_splits: int, holdout_items: int) -> np.ndarray:
    """bool per sequence: fewer items than the held-out ones plus one item of context."""
    return np.asarray(lengths) < (n_splits - 1) * holdout_items + 1


def holdout_problem(lengths: np.ndarray, n_splits: int, holdout_items: int) -> Optional[str]:
    """The one error of `holdout_items` too large for every sequence, else None."""
    lengths = np.asarray(lengths)
    if len(lengths) == 0 or not too_short_for_holdout(lengths, n_splits, holdout_items).all():
        return None
    need = (n_splits - 1) * holdout_items + 1
    return (f"holdout_items: {holdout_items} is too large for every sequence: leave_last_out with "
            f"{n_splits} splits needs sequences of at least {need} items, and the longest has "
            f"{int(lengths.max())}; use holdout_items: {max(1, (int(lengths.max()) - 1) // (n_splits - 1))} "
            "or fewer")


def holdout_setting_problems(split_method: str, holdout: Optional[int], n_splits: int) -> list:
    """The config rules of `holdout_items` (the data's rule is `holdout_problem`)."""
    if split_method != "leave_last_out":
        if holdout is not None:
            return [f"holdout_items: only used by split_method: leave_last_out (it is '{split_method}'); "
                    "remove holdout_items or set split_method: leave_last_out"]
        return []
    problems = []
    if holdout is not None and holdout < 1:
        problems.append(f"holdout_items: must be >= 1, got {holdout}")
    if n_splits not in LEAVE_LAST_OUT_SPLITS:
        problems.append(f"split_ratios: leave_last_out makes 2 splits (training, test) or 3 (training, "
                        f"validation, test), got {n_splits}; e.g. split_ratios: [0.8, 0.1, 0.1]")
    return problems


def split_bounds(lengths: np.ndarray, split_ratios: Sequence[float], holdout_items: int = 0) -> np.ndarray:
    """The segment bounds of `within_sequence` (holdout_items 0) or `leave_last_out`."""
    if holdout_items:
        return leave_last_out_bounds(lengths, len(split_ratios), holdout_items)
    return segment_bounds(lengths, split_ratios)


def assign_sequences(n_sequences: int, split_ratios: Sequence[float], seed: int) -> np.ndarray:
    """The split of each of `n_sequences` sequences (given in sorted id order) for
    `between_sequences`: a seeded shuffle cut by the ratios, so split k gets
    floor(n * cumulative ratio) - ... whole sequences, the same for the same seed."""
    order = np.random.default_rng(seed).permutation(n_sequences)
    ends = segment_bounds(np.array([n_sequences]), split_ratios)[0]
    split = np.empty(n_sequences, dtype=np.int64)
    for k in range(len(split_ratios)):
        split[order[ends[k]:ends[k + 1]]] = k
    return split


def whole_sequence_bounds(lengths: np.ndarray, split: np.ndarray, n_splits: int) -> np.ndarray:
    """segment_bounds for `between_sequences`: each sequence lies wholly in its split."""
    lengths = np.asarray(lengths, dtype=np.int64)
    after = np.arange(n_splits + 1)[None, :] > np.asarray(split)[:, None]
    return np.where(after, lengths[:, None], 0)


def covered_from(seg_start: np.ndarray, seg_end: np.ndarray) -> np.ndarray:
    """Where the windows of each segment start covering: one item before a non-empty
    segment that has an earlier item, else the segment's start.

    That item is context, never a target; with it the segment's first item is a target
    too, so with strides of at most `seq_length` every item that has an earlier item in
    its sequence is a target of some window of its split (train scores it, evaluate
    predicts it).
    """
    seg_start = np.asarray(seg_start, dtype=np.int64)
    seg_end = np.asarray(seg_end, dtype=np.int64)
    return np.where((seg_start > 0) & (seg_end > seg_start), seg_start - 1, seg_start)


@dataclass
class WindowStarts:
    """One entry per window: which sequence, where it starts, its number in the sequence."""

    sequence_index: np.ndarray  # int64, index into the sequences given
    start: np.ndarray  # int64, relative to the sequence start; negative = left padding
    subsequence_id: np.ndarray  # int64, 0.. within (sequence, split)


class StrideMismatch(SequifierError):
    """`exact` mode and a segment the stride does not divide; carries the first offender."""

    def __init__(self, message: str, sequence_index: int, segment_length: int, leftover: int):
        super().__init__(message)
        self.sequence_index = sequence_index
        self.segment_length = segment_length
        self.leftover = leftover

    def __reduce__(self):
        return (StrideMismatch, (self.args[0], self.sequence_index, self.segment_length,
                                 self.leftover))


def holdout_window_starts(seg_start: np.ndarray, seg_end: np.ndarray, window_length: int) -> WindowStarts:
    """leave_last_out's held-out splits: one window ending at each item of the segment, so
    every held-out item is the last slot of its own window, after up to seq_length items
    of its history (the caller scores only that slot: targetStart = window_length - 1)."""
    seg_start = np.asarray(seg_start, dtype=np.int64)
    counts = np.asarray(seg_end, dtype=np.int64) - seg_start
    sequence_index = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    number = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    start = seg_start[sequence_index] + number + 1 - window_length
    return WindowStarts(sequence_index, start, number)


def window_starts(seg_start: np.ndarray, seg_end: np.ndarray, window_length: int,
                  stride: int, mode: str) -> WindowStarts:
    """Starts of all windows of one split over many sequences (see module docstring)."""
    seg_start = np.asarray(seg_start, dtype=np.int64)
    seg_end = np.asarray(seg_end, dtype=np.int64)
    # distance from the first start (segment start) to the last (window ends at segment end)
    span = seg_end - window_length - seg_start
    long = span > 0
    if mode == "exact":
        leftover = np.where(long, span % stride, 0)
        bad = np.flatnonzero(leftover)
        if len(bad):
            i = int(bad[0])
            raise StrideMismatch(
                f"stride {stride} leaves {leftover[i]} items", i,
                int(seg_end[i] - seg_start[i]), int(leftover[i]),
            )
        n_long = span // stride + 1
    elif mode == "distribute":
        n_long = -(-span // stride) + 1
    else:
        raise SequifierError(f"subsequence_start_mode: '{mode}' is not one of {', '.join(START_MODES)}")
    counts = np.where(long, n_long, (seg_end > seg_start).astype(np.int64))
    sequence_index = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    number = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first, counts)

    w_span = span[sequence_index]
    w_start = seg_start[sequence_index]
    if mode == "exact":
        spread = number * stride
    else:
        # evenly spaced from 0 to span, rounded to the nearest item
        gaps = np.maximum(counts[sequence_index] - 1, 1)
        spread = (number * w_span + gaps // 2) // gaps
    start = np.where(w_span > 0, w_start + spread, seg_end[sequence_index] - window_length)
    return WindowStarts(sequence_index, start, number)
