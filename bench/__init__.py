"""zapflow's benchmark: `uv run python bench/run.py` (see bench/README.md)."""
