"""Window geometry: segment bounds and window starts (sequifier/data/splits.py)."""

import numpy as np
import pytest

from sequifier.data.splits import StrideMismatch, covered_from, segment_bounds, window_starts


def starts_of(seg_start, seg_end, window_length, stride, mode="distribute"):
    ws = window_starts(np.array([seg_start]), np.array([seg_end]), window_length, stride, mode)
    return ws.start.tolist()


def test_segment_bounds_follow_ratios_in_time_order():
    bounds = segment_bounds(np.array([10, 5, 1, 0]), [0.8, 0.1, 0.1])
    assert bounds.tolist() == [[0, 8, 9, 10], [0, 4, 4, 5], [0, 0, 0, 1], [0, 0, 0, 0]]


def test_segment_bounds_do_not_lose_items_to_float_rounding():
    # 10 * 0.9 is 8.999999999999998 in floating point
    assert segment_bounds(np.array([10]), [0.7, 0.2, 0.1])[0].tolist() == [0, 7, 9, 10]


def test_distribute_covers_segment_from_start_to_end():
    # span 7 with stride 3: four windows, at most 3 apart, first at 0, last ending at 11
    assert starts_of(0, 11, 4, 3) == [0, 2, 5, 7]


def test_distribute_with_dividing_stride_is_regular():
    assert starts_of(0, 10, 4, 3) == [0, 3, 6]


def test_distribute_large_stride_still_reaches_segment_end():
    assert starts_of(0, 30, 4, 100) == [0, 26]


def test_exact_mode_steps_by_stride():
    assert starts_of(0, 10, 4, 3, "exact") == [0, 3, 6]


def test_exact_mode_rejects_ragged_tail():
    with pytest.raises(StrideMismatch) as e:
        starts_of(0, 11, 4, 3, "exact")
    assert (e.value.segment_length, e.value.leftover) == (11, 1)


def test_exactly_one_window():
    assert starts_of(0, 4, 4, 3) == [0]
    assert starts_of(0, 4, 4, 3, "exact") == [0]


def test_short_first_segment_gives_one_left_padded_window():
    assert starts_of(0, 2, 4, 3) == [-2]


def test_later_segment_takes_earlier_items_as_context():
    # split 1 segment [8, 10): one window ending at 10, starting inside split 0
    assert starts_of(8, 10, 4, 4) == [6]


def test_later_segment_longer_than_a_window_starts_at_its_own_start():
    assert starts_of(8, 20, 4, 4) == [8, 12, 16]


def test_empty_segment_has_no_windows():
    assert starts_of(5, 5, 4, 2) == []


def test_many_sequences_at_once_number_windows_per_sequence():
    ws = window_starts(np.array([0, 0, 0]), np.array([10, 2, 0]), 4, 3, "distribute")
    assert ws.sequence_index.tolist() == [0, 0, 0, 1]
    assert ws.subsequence_id.tolist() == [0, 1, 2, 0]
    assert ws.start.tolist() == [0, 3, 6, -2]


def test_every_window_ends_inside_its_segment():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 60, size=200)
    bounds = segment_bounds(lengths, [0.6, 0.3, 0.1])
    for k, stride in enumerate([1, 5, 13]):
        a, b = bounds[:, k], bounds[:, k + 1]
        ws = window_starts(a, b, 7, stride, "distribute")
        end = ws.start + 7
        assert np.all(end > a[ws.sequence_index]) and np.all(end <= b[ws.sequence_index])
        long = (b - a)[ws.sequence_index] >= 7
        assert np.all(ws.start[long] >= a[ws.sequence_index][long])
        # consecutive windows of a sequence are at most `stride` apart
        same = ws.sequence_index[1:] == ws.sequence_index[:-1]
        gaps = np.diff(ws.start)[same]
        assert np.all((gaps >= 1) & (gaps <= stride))


def test_a_later_segment_is_covered_from_the_item_before_it():
    # split 0 [0, 8) has no earlier item; split 1 [8, 20) starts covering at 7, so item 8
    # is a target with item 7 as context; an empty segment stays empty
    assert covered_from(np.array([0, 8, 5]), np.array([8, 20, 5])).tolist() == [0, 7, 5]
    assert starts_of(7, 20, 4, 4) == [7, 10, 13, 16]
