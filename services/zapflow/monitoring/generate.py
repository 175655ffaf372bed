"""Every generated monitoring file, by its path from the repository root."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from zapflow.monitoring import alerts, dashboards, layout

CHART_FILES = Path("charts/zapflow/files")
DASHBOARD_FILES = CHART_FILES / "dashboards"
RULES_FILE = CHART_FILES / "alerts.yaml"
PICTURES = Path("docs/dashboards")


@functools.cache
def generated_files() -> dict[Path, bytes]:
    """The rule file, each dashboard's JSON and the picture of its layout."""
    files = {RULES_FILE: alerts.render_rules().encode()}
    for name in dashboards.DASHBOARDS:
        text = dashboards.render(name)
        files[DASHBOARD_FILES / f"{name}.json"] = text.encode()
        files[PICTURES / f"{name}.png"] = layout.layout_png(json.loads(text))
    return files
