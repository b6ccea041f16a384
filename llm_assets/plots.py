"""Small PNG plots for Dagster asset metadata (Markdown with an inline image), where people would rather look.

Headless (Agg backend); each function returns Markdown text so the wiring stays a one-liner.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _markdown_png(fig: plt.Figure, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def bar_chart(values: Mapping[str, float], *, title: str, xlabel: str = "", percent: bool = False) -> str:
    """Horizontal bars, one per key (e.g. retention per source, hits per PII type)."""
    labels = list(values)
    fig, ax = plt.subplots(figsize=(6, 0.35 * max(len(labels), 2) + 1))
    ax.barh(labels, [values[k] * (100 if percent else 1) for k in labels], color="#4C72B0")
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(xlabel + (" (%)" if percent else ""))
    return _markdown_png(fig, title)


def histogram(
    samples: Mapping[str, Sequence[float]], *, title: str, xlabel: str, bins: int = 40, log_x: bool = False
) -> str:
    """Overlaid histograms, one per group (e.g. perplexity per language)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, values in samples.items():
        if len(values):
            ax.hist(values, bins=bins, alpha=0.5, label=f"{label} ({len(values)})")
    if log_x:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("documents")
    if samples:
        ax.legend(fontsize="small", ncol=2)
    return _markdown_png(fig, title)


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
    hlines: Mapping[str, float] | None = None,
) -> str:
    """One line per series of (x, y) points (e.g. train and validation loss over steps); `hlines` mark targets."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, y in (hlines or {}).items():
        ax.axhline(y, linestyle="--", color="grey", linewidth=1, label=label)
    for label, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=label)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if series or hlines:
        ax.legend(fontsize="small")
    return _markdown_png(fig, title)
