"""Line charts as inline SVG: a report that opens offline, with nothing to download.

Small on purpose: lines (solid or dashed), horizontal reference lines, vertical markers
(trigger, promotion) labelled at the top in rows that do not overlap, a legend, and ticks
on both axes. Values are escaped; NaN points break a line instead of drawing it to zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22")  # fmt: skip


LABEL_CHAR_PX = 6.0  # a marker label's width per character at its 10.5 px font (about)


@dataclass(frozen=True)
class Series:
    """One line: ``xs`` and ``ys`` of equal length."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    dashed: bool = False


@dataclass(frozen=True)
class Marker:
    """A vertical line at ``x`` (an event on the time axis)."""

    x: float
    label: str
    color: str = "#444"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.3g}"


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    y_label: str,
    x_label: str = "seconds since the demo started",
    markers: Sequence[Marker] = (),
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    width: int = 920,
    height: int = 280,
) -> str:
    """An SVG element: the ``series`` over a shared x axis, with ``markers``."""
    left, right, top, bottom = 64, 170, 34, 40
    xs = [x for s in series for x in s.xs] + [m.x for m in markers]
    ys = [y for s in series for y in s.ys if y == y]
    x0, x1 = x_range or ((min(xs), max(xs)) if xs else (0.0, 1.0))
    y0, y1 = y_range or ((min(ys), max(ys)) if ys else (0.0, 1.0))
    if y1 <= y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    if x1 <= x0:
        x1 = x0 + 1
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}" class="chart">',
        f'<text x="{left}" y="20" class="title">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>',
    ]
    for t in _ticks(y0, y1):
        y = py(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in _ticks(x0, x1, 8):
        x = px(t)
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{_fmt(t)}</text>')
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle" class="axis">'
        f"{escape(x_label)}</text>"
    )
    out.append(
        f'<text transform="translate(14,{top + ph / 2}) rotate(-90)" text-anchor="middle" '
        f'class="axis">{escape(y_label)}</text>'
    )
    rows_end: list[float] = []  # where the last label of each row of labels ends
    for m in sorted(markers, key=lambda m: m.x):
        x = px(m.x)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" stroke="{m.color}" '
            'stroke-dasharray="4 3"/>'
        )
        row = next((r for r, end in enumerate(rows_end) if end < x), len(rows_end))
        if row == len(rows_end):
            rows_end.append(0.0)
        rows_end[row] = x + 3 + LABEL_CHAR_PX * len(m.label) + 4
        out.append(
            f'<text x="{x + 3:.1f}" y="{top + 11 + 11 * row}" fill="{m.color}" '
            f'class="marker">{escape(m.label)}</text>'
        )
    for k, s in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        for run in _runs(s):
            points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
            if len(run) == 1:
                (x, y), = run  # fmt: skip
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2" fill="{color}"/>')
            else:
                out.append(
                    f'<polyline points="{points}" fill="none" stroke="{color}" '
                    f'stroke-width="1.8"{dash}/>'
                )
        ly = top + 14 + 16 * k
        out.append(
            f'<line x1="{left + pw + 10}" x2="{left + pw + 28}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{color}" stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{left + pw + 32}" y="{ly}">{escape(s.name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _runs(s: Series) -> list[list[tuple[float, float]]]:
    """The series split at NaN values, in x order."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in sorted(zip(s.xs, s.ys, strict=True)):
        if y != y:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((float(x), float(y)))
    return [r for r in runs if r]
