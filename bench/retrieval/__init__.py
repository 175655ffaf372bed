"""The retrieval evaluation set of issue #10: `uv run python bench/retrieval/evaluate.py` (see README.md)."""
