"""Calendar columns derived from a time position (`time_features` of preprocess).

When `position_column` holds times or dates, each named feature becomes an integer
column of that name, categorical and known ahead (the calendar of a future position is
known), so a table needs no hand-made calendar. Preprocess derives them from the
positions it reads; infer derives them again for the positions it forecasts, from the
same function, so both agree.

Times are taken as they are written (a time zone in the data is used; naive times are
not shifted). Values:
"""

from typing import Dict, List, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

INTEGER_POSITIONS = "integer"  # read_table's position_type of integer positions


def _minutes_of_day(t):
    return pc.add(pc.multiply(pc.hour(t), 60), pc.minute(t))


# name -> (what it is, needs a time of day, how it is computed from a time/date array)
FEATURES = {
    "quarter_hour": ("quarter hour of the day, 0-95", True, lambda t: pc.divide(_minutes_of_day(t), 15)),
    "half_hour": ("half hour of the day, 0-47", True, lambda t: pc.divide(_minutes_of_day(t), 30)),
    "hour": ("hour of the day, 0-23", True, pc.hour),
    "day_of_week": ("day of the week, 0 (Monday) - 6 (Sunday)", False, pc.day_of_week),
    "is_weekend": ("1 on Saturday and Sunday, else 0", False,
                   lambda t: pc.cast(pc.greater_equal(pc.day_of_week(t), 5), pa.int64())),
    "day_of_month": ("day of the month, 1-31", False, pc.day),
    "day_of_year": ("day of the year, 1-366", False, pc.day_of_year),
    "week_of_year": ("ISO week of the year, 1-53", False, pc.iso_week),
    "month": ("month, 1-12", False, pc.month),
    "quarter": ("quarter of the year, 1-4", False, pc.quarter),
}

__doc__ += "".join(f"\n* `{name}`: {what}" for name, (what, _, _) in FEATURES.items()) + "\n"


def setting_problems(features: Sequence[str], known_ahead: Sequence[str]) -> List[str]:
    """`time_features` of preprocess, before any file is read."""
    problems = []
    for name in features:
        if name not in FEATURES:
            problems.append(f"time_features: '{name}' is not one of {', '.join(FEATURES)}")
        elif name in known_ahead:
            problems.append(f"known_ahead_columns: '{name}' is a time feature, known ahead "
                            "already; remove it from known_ahead_columns")
    if len(set(features)) != len(features):
        problems.append(f"time_features: names a feature twice ({list(features)})")
    return problems


def position_problem(features: Sequence[str], position_type: str, position_name: str,
                     path: str) -> str:
    """'' when the features can be derived from positions of `position_type`."""
    if not features:
        return ""
    if position_type == INTEGER_POSITIONS:
        return (f"time_features: position_column '{position_name}' of input file '{path}' holds "
                "integers, not times or dates, so there is no calendar to derive; give ISO 8601 "
                "times (e.g. 2024-05-01 13:30:00) or remove time_features")
    if position_type.startswith("date"):
        need_time = [f for f in features if FEATURES[f][1]]
        if need_time:
            return (f"time_features: {need_time} need a time of day, but position_column "
                    f"'{position_name}' of input file '{path}' holds dates; remove them or give times")
    return ""


def derive(features: Sequence[str], times: pa.Array) -> Dict[str, np.ndarray]:
    """{feature: int64 [n]} of positions as times or dates
    (`read_table.positions_to_user` of the stored ticks)."""
    if not features:
        return {}
    return {name: np.asarray(FEATURES[name][2](times).cast(pa.int64()).to_numpy(zero_copy_only=False),
                             dtype=np.int64)
            for name in features}
