"""sequifier: train causal transformers on multivariate sequences and export them."""

__version__ = "0.1.0"
