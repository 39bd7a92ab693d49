"""Shared test helpers: tiny projects, configs and stand-in models (imported as `helpers.X`;
`pythonpath = ["tests"]` in pyproject.toml puts this package on the path)."""
