"""A picture of a dashboard's panel layout for the docs: each panel a box where its gridPos puts it, with its title."""

from __future__ import annotations

import io
import textwrap
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

GRID_COLUMNS = 24
# Grafana's grid rows are 30 px high; a column is a 24th of the width (about 80 px on a wide screen).
ROW_TO_COLUMN = 0.375
INCHES_PER_COLUMN = 0.5
PANEL_COLOURS = {"timeseries": "#dbe9f6", "stat": "#fde7c8"}


def layout_png(model: dict[str, Any]) -> bytes:
    """The layout as PNG bytes: rows as bands, panels as boxes coloured by kind (graph, single value)."""
    panels: list[dict[str, Any]] = model["panels"]
    depth = max(panel["gridPos"]["y"] + panel["gridPos"]["h"] for panel in panels)
    width_in = GRID_COLUMNS * INCHES_PER_COLUMN
    height_in = depth * ROW_TO_COLUMN * INCHES_PER_COLUMN + 0.6
    figure = Figure(figsize=(width_in, height_in))
    axes = figure.add_axes((0.0, 0.0, 1.0, (height_in - 0.6) / height_in))
    axes.set_xlim(0, GRID_COLUMNS)
    axes.set_ylim(depth, 0)
    axes.axis("off")
    for panel in panels:
        grid = panel["gridPos"]
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        if panel["type"] == "row":
            axes.add_patch(Rectangle((x, y), w, h, facecolor="#4a4a4a", edgecolor="white"))
            axes.text(x + 0.2, y + h / 2, panel["title"], color="white", va="center", fontsize=9, weight="bold")
            continue
        colour = PANEL_COLOURS.get(panel["type"], "#eeeeee")
        axes.add_patch(Rectangle((x + 0.08, y + 0.15), w - 0.16, h - 0.3, facecolor=colour, edgecolor="#555555"))
        title = textwrap.fill(panel["title"], width=max(10, w * 6))
        axes.text(x + w / 2, y + h / 2, title, ha="center", va="center", fontsize=8)
        kind = "single value" if panel["type"] == "stat" else "graph"
        axes.text(x + 0.3, y + h - 0.45, kind, fontsize=6, color="#555555", va="bottom")
    figure.suptitle(model["title"], fontsize=11, y=1 - 0.25 / height_in)
    buffer = io.BytesIO()
    # No software version in the file: the picture changes only when the layout does.
    figure.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    return buffer.getvalue()
