"""`sequifier infer`: run exported models on preprocessed windows (see `run.py`)."""

from sequifier.infer.run import run_infer

__all__ = ["run_infer"]
