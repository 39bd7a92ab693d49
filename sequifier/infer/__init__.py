"""`sequifier infer` and `sequifier evaluate`: run exported models on preprocessed windows
(see `run.py` and `evaluate.py`).

`run_infer` is imported on first use, so that importing a module of this package (the
gate imports `infer.options`) does not import the runner.
"""

__all__ = ["run_infer"]


def __getattr__(name: str):
    if name == "run_infer":
        from sequifier.infer.run import run_infer

        return run_infer
    raise AttributeError(f"module 'sequifier.infer' has no attribute {name!r}")
