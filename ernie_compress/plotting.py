"""Plots a person can read (the run report's and the search's ``report.png``): points are named in a
legend, never by labels on the axes that can land on each other; the axes are fitted to the points
themselves; a reference level (a teacher, a non-ERNIE baseline, a budget) is drawn where it falls
inside the axes and named at the nearer edge where it does not, so it cannot stretch them.
"""

from __future__ import annotations

from collections.abc import Sequence

DECADE = 10.0  # a latency axis spanning more than this ratio is drawn on a log scale


def fitted_limits(values: Sequence[float], pad: float = 0.12) -> tuple[float, float]:
    """Axis limits around ``values`` with a margin of ``pad`` of their span (of 1 when they are equal)."""
    low, high = min(values), max(values)
    margin = pad * ((high - low) or max(abs(high) * 0.05, 1e-3))
    return low - margin, high + margin


def set_latency_axis(ax, latencies: Sequence[float]) -> None:
    """A log scale when the latencies span more than a decade, limits fitted to them either way."""
    low, high = min(latencies), max(latencies)
    if high / max(low, 1e-12) > DECADE:
        ax.set_xscale("log")
        ax.set_xlim(low / 1.3, high * 1.3)
    else:
        ax.set_xlim(*fitted_limits(latencies, pad=0.08))


def reference_level(ax, value: float, label: str, color: str = "0.45", style: str = ":") -> None:
    """A horizontal line at ``value`` named at the right edge, or, outside the y limits already set,
    its name at the nearer edge of the axes (with the value)."""
    low, high = ax.get_ylim()
    if low <= value <= high:
        near_top = (value - low) > 0.9 * (high - low)  # the name goes under the line there, inside the frame
        ax.axhline(value, color=color, ls=style, lw=1, zorder=1)
        ax.annotate(label, xy=(1.0, value), xycoords=("axes fraction", "data"), xytext=(-4, -3 if near_top else 3),
                    textcoords="offset points", ha="right", va="top" if near_top else "bottom", fontsize=8,
                    color=color)
        return
    above = value > high
    ax.annotate(f"{label} ({'above' if above else 'below'} the axis)", xy=(1.0, 1.0 if above else 0.0),
                xycoords="axes fraction", xytext=(-4, -4 if above else 4), textcoords="offset points", ha="right",
                va="top" if above else "bottom", fontsize=8, color=color)


def legend_below(ax) -> None:
    """The legend under the axes, one entry a line (the figure grows with it: see ``figure_height``)."""
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), fontsize=8, frameon=False, ncol=1)


def figure_height(entries: int, axes_height: float = 4.2) -> float:
    return axes_height + 0.22 * (entries + 1)
