"""The one validation gate: `validate(command, cfg)`, run right after composition.

Every command's runner (`run_preprocess`, `run_train` on every DDP rank, `run_infer`,
`run_evaluate`) calls it before it creates, renames or deletes a file. For each command
it calls, in order: the config rules, the `resolve` step (fills what defaults to the
metadata: seq_length, the targets' types, the scheduler's default arguments), then the
rules that compare the config with the preprocessed data. Each rule lives with the code
that owns its value (`data/rules.py`, `model/rules.py`, `train/rules.py`, optimizers,
schedulers, losses, `infer/options.py`) and appends to one collector
(`config/problems.py`); all lines of a stage are raised together as one SequifierError.

The rules are imported per command, so preprocess and infer never import torch here.
"""

from typing import Callable, Optional, Tuple

from sequifier.config.metadata import read_metadata
from sequifier.config.problems import Problems
from sequifier.project import resolve_path


def validate(command: str, cfg) -> None:
    """Check `cfg` of `command` (raising every problem at once) and resolve its defaults."""
    rules, resolve, metadata_rules = _stages(command)
    p = Problems()
    rules(cfg, p)
    p.raise_if_any()
    if metadata_rules is None:
        return
    metadata = read_metadata(resolve_path(cfg.project_root, cfg.metadata_config_path))
    if resolve is not None:
        resolve(cfg, metadata)
    metadata_rules(cfg, metadata, p)
    p.raise_if_any()


def _stages(command: str) -> Tuple[Callable, Optional[Callable], Optional[Callable]]:
    """(config rules, resolve, rules against the metadata) of a command."""
    if command == "preprocess":
        from sequifier.data.rules import preprocess_rules

        return preprocess_rules, None, None
    if command == "train":
        from sequifier.train import rules

        return rules.train_rules, rules.resolve, rules.train_metadata_rules
    from sequifier.infer import options

    if command == "infer":
        return options.infer_rules, options.resolve, options.infer_metadata_rules
    if command == "evaluate":
        return options.evaluate_rules, None, options.evaluate_metadata_rules
    raise KeyError(command)
