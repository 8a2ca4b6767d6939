"""One way to draw the benchmarks' curves, so every plot in ``docs/bench/`` reads the same.

Why a helper: the scaling curves (XCom time and memory against payload size, fan-out time
against width, runtime throughput against connections) are compared side by side in the
README; the same axes, markers, colours per contender and reference lines make that
possible at a glance. matplotlib is imported lazily (the ``bench`` extra), with the
non-interactive Agg backend, so the benchmarks run headless.

    from plots import Series, plot_curves
    plot_curves(
        "docs/bench/xcom_time.png",
        [Series("knative", sizes, seconds), Series("common-io", sizes, seconds2)],
        title="XCom round trip", xlabel="payload", ylabel="seconds", log=True, xunit="bytes",
    )
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DOCS_DIR", "RESULTS_DIR", "Series", "format_bytes", "plot_curves"]

REPO = Path(__file__).resolve().parent.parent
#: committed plots the README links to
DOCS_DIR = REPO / "docs" / "bench"
#: scratch output (git-ignored)
RESULTS_DIR = REPO / "bench" / "results"

#: one colour and marker per contender name, the same in every plot
_STYLE = {
    "knative": ("#1f77b4", "o"),
    "@task.knative": ("#1f77b4", "o"),
    "runtime": ("#1f77b4", "o"),
    "common-io": ("#d62728", "s"),
    "limit": ("#2ca02c", "^"),
    "@task": ("#7f7f7f", "s"),
    "raw uvicorn": ("#2ca02c", "^"),
    "func-python": ("#ff7f0e", "D"),
}
_FALLBACK = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


@dataclass(frozen=True)
class Series:
    """One curve: a contender's y values at the given x values (None: not measured)."""

    name: str
    x: Sequence[float]
    y: Sequence[float | None]
    #: drawn dashed, without markers (a reference such as "= payload size")
    reference: bool = False


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if n == int(n) else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _plain_minor(v: float, _pos: int | None = None) -> str:
    """Minor tick label of a log axis: only 2x and 5x a power of ten, so labels do not crowd."""
    if v <= 0:
        return ""
    lead = v / 10 ** math.floor(math.log10(v))
    return f"{v:g}" if round(lead, 6) in (2.0, 5.0) else ""


def plot_curves(
    path: str | Path,
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log: bool = True,
    logy: bool | None = None,
    xticks: Sequence[float] | None = None,
    xunit: str | None = None,
    yunit: str | None = None,
    note: str | None = None,
    vline: tuple[float, str] | None = None,
) -> Path:
    """Draw ``series`` into one PNG at ``path`` (folders created) and return the path.

    ``log`` makes both axes logarithmic (a straight line of slope 1 is linear growth);
    ``logy`` (default: ``log``) decides the y axis on its own, e.g. ``log=True, logy=False``
    for req/s against connections 1..64. ``xticks`` labels exactly these x values.
    ``xunit``/``yunit`` ``"bytes"`` label ticks as KB/MB/GB, ``"plain"`` as plain numbers
    (20, not 2x10^1). ``vline`` marks an x value (e.g. the inline threshold) with a label.
    ``note`` goes under the title (machine, date).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullLocator

    logy = log if logy is None else logy
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    spare = iter(_FALLBACK)
    for s in series:
        points = [(x, y) for x, y in zip(s.x, s.y, strict=True) if y is not None and (not logy or y > 0)]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        color, marker = _STYLE.get(s.name, (next(spare, "#000000"), "x"))
        if s.reference:
            ax.plot(xs, ys, linestyle="--", color="#999999", linewidth=1, label=s.name)
        else:
            ax.plot(xs, ys, marker=marker, color=color, linewidth=1.6, markersize=5, label=s.name)
    if log:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    if xticks is not None:
        ax.set_xticks(list(xticks), [f"{v:g}" for v in xticks])
        ax.xaxis.set_minor_locator(NullLocator())
    if vline is not None:
        ax.axvline(vline[0], color="#bbbbbb", linestyle=":", linewidth=1)
        ax.annotate(
            vline[1],
            xy=(vline[0], 1),
            xycoords=("data", "axes fraction"),
            xytext=(4, -12),
            textcoords="offset points",
            fontsize=8,
            color="#666666",
        )
    for unit, axis in ((xunit, ax.xaxis), (yunit, ax.yaxis)):
        if unit == "bytes":
            axis.set_major_formatter(FuncFormatter(lambda v, _pos: format_bytes(v)))
        elif unit == "plain":  # 20 rather than 2x10^1, minor ticks of a log axis included
            axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(_plain_minor))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title if note is None else f"{title}\n{note}", fontsize=10)
    ax.grid(True, which="major", linewidth=0.5, alpha=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
