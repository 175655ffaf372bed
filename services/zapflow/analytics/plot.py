"""`zapflow report --plot`: the report's daily volumes and response times as a PNG.

A `Figure` made directly (not through pyplot) renders with Agg and never looks for a display,
so the plot works on a server and leaves no global state behind.
"""

from __future__ import annotations

import math
from itertools import groupby
from pathlib import Path

from matplotlib.figure import Figure

from zapflow.analytics.report import Period, ReportRow

VOLUMES = (("messages in", "messages_in", "-"), ("messages out", "messages_out", "--"), ("turns", "turns", ":"))
RESPONSE_TIMES = (("median", "response_p50_ms", "-"), ("p95", "response_p95_ms", "--"))


def plot_report(rows: list[ReportRow], period: Period, path: Path) -> None:
    """Two panels sharing the day axis: volumes above, response times below; a colour per tenant."""
    figure = Figure(figsize=(12, 8), layout="constrained")
    volumes, response_times = figure.subplots(2, 1, sharex=True)
    by_tenant = [(tenant, list(tenant_rows)) for tenant, tenant_rows in groupby(rows, key=lambda row: row.tenant)]
    several = len(by_tenant) > 1
    for tenant_index, (tenant, tenant_rows) in enumerate(by_tenant):
        days = [row.day for row in tenant_rows]
        for panel, series in ((volumes, VOLUMES), (response_times, RESPONSE_TIMES)):
            for series_index, (label, field, linestyle) in enumerate(series):
                # A day without a figure is NaN, which matplotlib leaves as a gap in the line.
                values = [math.nan if (value := getattr(row, field)) is None else value for row in tenant_rows]
                panel.plot(
                    days,
                    values,
                    linestyle=linestyle,
                    marker=".",
                    color=f"C{tenant_index if several else series_index}",
                    label=f"{tenant} {label}" if several else label,
                )
    volumes.set_ylabel("per day")
    volumes.set_title("volumes")
    response_times.set_ylabel("ms")
    response_times.set_title("response time (turn latency)")
    for panel in (volumes, response_times):
        panel.grid(alpha=0.3)
        if rows:
            # Beside the panel, so no line hides behind it; constrained layout makes room.
            panel.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    figure.autofmt_xdate()
    response_times.set_xlabel("UTC day")
    title = f"zapflow report {period.since} to {period.until}"
    if not rows:
        title += ": no data"
    elif not several:
        title += f": {rows[0].tenant}"
    figure.suptitle(title)
    figure.savefig(path, format="png", dpi=100)
