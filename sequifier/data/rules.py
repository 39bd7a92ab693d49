"""The rules of `sequifier preprocess`'s config, and the read-format rule of every
command that reads windows (train, infer, evaluate).

Each rule appends one line per problem to the collector (`sequifier.config.problems`);
the gate (`sequifier.gate`) calls them before any file is touched. The lists of choices
belong to the modules that act on them (read_table, windows, splits, missing, budget).
"""

import math

from sequifier.config.metadata import COLUMN_TYPES, Metadata
from sequifier.config.problems import Problems
from sequifier.config.schema import PreprocessConfig
from sequifier.data import known_ahead, time_features
from sequifier.data.budget import budget_problem, default_workers
from sequifier.data.missing import parse_missing_values
from sequifier.data.read_table import EXTENSIONS
from sequifier.data.splits import SPLIT_METHODS, START_MODES, holdout_setting_problems
from sequifier.data.windows import WINDOW_FORMATS
from sequifier.project import dataset_name, name_problem


def preprocess_rules(cfg: PreprocessConfig, p: Problems) -> None:
    p.one_of(cfg.read_format, list(EXTENSIONS), "read_format")
    p.one_of(cfg.write_format, WINDOW_FORMATS, "write_format")
    _key_column_rules(cfg, p)
    p.extend(parse_missing_values(cfg.missing_values, (cfg.sequence_id_column, cfg.position_column))[1])
    p.extend(known_ahead.setting_problems(cfg.known_ahead_columns, (cfg.sequence_id_column,
                                          cfg.position_column), cfg.selected_columns))
    p.extend(time_features.setting_problems(cfg.time_features, cfg.known_ahead_columns))
    if cfg.write_format == "pt" and cfg.merge_output:
        p.add("merge_output", "write_format 'pt' writes sharded output: set merge_output: false")
    if cfg.n_cores is None or cfg.n_cores > 0:
        p.problem("max_ram_gb", budget_problem(cfg.max_ram_gb, cfg.n_cores or default_workers()))
    field = "dataset_name" if cfg.dataset_name else "dataset_name (from data_path)"
    p.problem(field, name_problem(dataset_name(cfg), cfg.project_root))
    p.positive(cfg.seq_length, "seq_length")
    _split_rules(cfg, p)
    p.positive(cfg.max_rows, "max_rows", allow_none=True)
    p.positive(cfg.n_cores, "n_cores", allow_none=True)
    p.positive(cfg.batches_per_file, "batches_per_file")


def _key_column_rules(cfg: PreprocessConfig, p: Problems) -> None:
    for field in ("sequence_id_column", "position_column"):
        p.check(bool(getattr(cfg, field)), field, "must name a column of the input")
    p.check(cfg.sequence_id_column != cfg.position_column, "position_column",
            f"'{cfg.position_column}' is also sequence_id_column; ids and positions need two columns")
    for col, kind in (cfg.column_types or {}).items():
        p.one_of(kind, COLUMN_TYPES, f"column_types.{col}")
        p.check(col not in (cfg.sequence_id_column, cfg.position_column), f"column_types.{col}",
                "is the id or position column, not a feature")


def _split_rules(cfg: PreprocessConfig, p: Problems) -> None:
    if not cfg.split_ratios or any(r <= 0 for r in cfg.split_ratios):
        p.add("split_ratios", f"needs one positive share per split, got {list(cfg.split_ratios or [])}")
    elif not math.isclose(sum(cfg.split_ratios), 1.0, abs_tol=1e-6):
        p.add("split_ratios", f"must sum to 1, got {list(cfg.split_ratios)} (sum {sum(cfg.split_ratios):g})")
    if cfg.stride_by_split is not None:
        p.check(len(cfg.stride_by_split) == len(cfg.split_ratios or []), "stride_by_split",
                f"needs one stride per split ({len(cfg.split_ratios or [])}), got {list(cfg.stride_by_split)}")
        p.check(all(s >= 1 for s in cfg.stride_by_split), "stride_by_split", "strides must be >= 1")
    p.one_of(cfg.subsequence_start_mode, START_MODES, "subsequence_start_mode")
    p.one_of(cfg.split_method, SPLIT_METHODS, "split_method")
    p.extend(holdout_setting_problems(cfg.split_method, cfg.holdout_items, len(cfg.split_ratios or [])))


def read_format_rule(read_format: str, reads_splits: bool, metadata: Metadata, p: Problems) -> None:
    """A command reading the splits the metadata names reads them in their written format."""
    if reads_splits and read_format != metadata.write_format:
        p.add("read_format", f"'{read_format}' but the metadata's splits are written as "
              f"{metadata.write_format}; set read_format: {metadata.write_format}")
