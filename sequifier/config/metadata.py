"""The metadata file that `preprocess` writes and `train`/`infer` read.

`configs/metadata_configs/NAME.json` records everything needed to turn windows back
into the user's terms: the id map of each categorical column (original value, as a
string, -> id; ids PAD_ID and UNKNOWN_ID are reserved), the mean/std used to
standardise each real column, column types and the paths of the splits.
"""

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from sequifier.errors import SequifierError
from sequifier.io_utils import atomic_write_text

COLUMN_TYPES = ("categorical", "real")
# the category of missing cells under missing_values: fill (sequifier/data/missing.py)
MISSING_CATEGORY = "<missing>"


@dataclass
class Metadata:
    name: str
    seq_length: int
    write_format: str
    column_types: Dict[str, str]
    # categorical column -> {str(original value): id}; ids start after the reserved ones
    id_maps: Dict[str, Dict[str, int]]
    # categorical column -> number of ids including the reserved ones (embedding size)
    n_classes: Dict[str, int]
    # real column -> {"mean": m, "std": s}; stored values are (x - m) / s
    selected_columns_statistics: Dict[str, Dict[str, float]]
    # categorical column -> "int64" or "str": how to turn id_maps keys back into values
    original_dtypes: Dict[str, str]
    # split index -> path relative to project_root (a file, or a folder of .pt shards)
    split_paths: List[str]
    split_ratios: List[float] = field(default_factory=list)
    stride_by_split: List[int] = field(default_factory=list)
    # within_sequence (each sequence cut in time order) | between_sequences (whole sequences)
    split_method: str = "within_sequence"
    # the user's id and position columns: outputs are written under these names
    sequence_id_column: str = "sequenceId"
    position_column: str = "itemPosition"
    # "integer", or the time type positions were read as ("timestamp[s]", "date32[day]",
    # ...); windows hold them as int64 ticks of that type
    position_type: str = "integer"
    # text sequence ids in sorted order: windows hold the index into this list
    # (None: the ids are integers and windows hold them as they are)
    sequence_ids: Optional[List[str]] = None
    # hash of id_maps, also stored in the windows (parquet, pt): train/infer refuse windows
    # encoded with other id maps (None: metadata of an older version, not checked)
    id_map_fingerprint: Optional[str] = None
    # columns whose value at the predicted position is known in advance (the model
    # predicting slot j+1 sees them at slot j+1); includes the derived time features
    known_ahead_columns: List[str] = field(default_factory=list)
    # calendar columns derived from the time positions (data/time_features.py)
    time_features: List[str] = field(default_factory=list)
    # future rows (known-ahead values after each sequence's last observed item), a file
    # relative to project_root (None: the input had none)
    future_path: Optional[str] = None

    @property
    def columns(self) -> List[str]:
        return list(self.column_types)

    def inverse_id_map(self, column: str) -> Dict[int, object]:
        """id -> original value (ints restored for integer columns; the `<missing>`
        category that missing_values: fill adds stays text)."""
        cast = int if self.original_dtypes.get(column) == "int64" else str
        return {i: v if v == MISSING_CATEGORY else cast(v) for v, i in self.id_maps[column].items()}


def write_metadata(metadata: Metadata, path: str) -> None:
    atomic_write_text(path, json.dumps(asdict(metadata), indent=2, sort_keys=False))


def read_metadata(path: str) -> Metadata:
    if not os.path.isfile(path):
        raise SequifierError(
            f"metadata_config_path: file '{path}' not found; run `sequifier preprocess` "
            "first or point metadata_config_path at its JSON output"
        )
    try:
        with open(path) as f:
            raw = json.load(f)
        return Metadata(**raw)
    except (json.JSONDecodeError, TypeError) as e:
        raise SequifierError(
            f"metadata_config_path: '{path}' is not a sequifier metadata file ({e}); "
            "re-run `sequifier preprocess` to regenerate it"
        ) from None
