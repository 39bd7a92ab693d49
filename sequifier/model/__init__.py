"""The sequifier transformer (layers, model, per-layer dtypes)."""
