"""Write or check the generated monitoring files, from the repository root.

uv run python -m zapflow.monitoring --write   # dashboards, alert rules and layout pictures, in place
uv run python -m zapflow.monitoring --check   # exit 1, naming them, when committed files are stale
"""

from __future__ import annotations

import sys
from pathlib import Path

from zapflow.monitoring.generate import generated_files


def stale_files(root: Path) -> list[Path]:
    """Generated files that are missing or differ from what the code generates."""
    return [
        path
        for path, content in generated_files().items()
        if not (root / path).is_file() or (root / path).read_bytes() != content
    ]


def write(root: Path) -> None:
    for path, content in generated_files().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(content)


def main(arguments: list[str]) -> None:
    root = Path.cwd()
    if arguments == ["--write"]:
        write(root)
    elif arguments == ["--check"]:
        stale = stale_files(root)
        if stale:
            names = "\n  ".join(str(path) for path in stale)
            raise SystemExit(f"stale generated files (uv run python -m zapflow.monitoring --write):\n  {names}")
    else:
        raise SystemExit("usage: python -m zapflow.monitoring --write | --check")


if __name__ == "__main__":
    main(sys.argv[1:])
