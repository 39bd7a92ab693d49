"""The project layout: which names the folders and files of a project get (torch-free).

Every command asks this module where its outputs go; no other module spells a folder name.
"""

import os

from sequifier.config.schema import PreprocessConfig
from sequifier.io_utils import resolve_path


def dataset_name(cfg: PreprocessConfig) -> str:
    """The name of preprocess's outputs: `dataset_name`, or else data_path's file or folder name."""
    data_path = resolve_path(cfg.project_root, cfg.data_path)
    if cfg.dataset_name:
        return cfg.dataset_name
    base = os.path.basename(os.path.normpath(data_path))
    return base if os.path.isdir(data_path) else os.path.splitext(base)[0]
