"""The demo's report: one self-contained HTML file (inline SVG and CSS, works offline).

It reads what the services wrote under ``$FEATFLOW_HOME`` (the monitor's snapshot rows, the
model history, the registry) and what the demo measured itself (events sent, scored, how
fresh), and shows, on one time axis with the world's change, every trigger and every
promotion marked: throughput and lag, freshness, live AUC of each model beside the best
any model could reach (the AUC of the generator's true fraud probability), PSI per
feature, and the model versions with why each was promoted or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from featflow.charts import Marker, Series, line_chart
from inference.exceptions import RegistryDamaged
from inference.model_events import ModelEvents
from inference.registry import ModelRegistry
from infra.config import Stores

MIN_SAMPLES = 1000  # a window's metric is shown once this many values stand behind it
LINGER_MS = 5000  # a version's AUC line outlives its service by this (late labels)
MARKER_COLORS = {"triggered": "#ff7f0e", "shadow_started": "#9467bd", "promoted": "#2ca02c",
                 "rejected": "#d62728", "rolled_back": "#8c564b"}  # fmt: skip


@dataclass
class Story:
    """What the demo measured itself, on the wall clock (ms) from ``started_ms``."""

    started_ms: int
    change_ms: int | None  # when the first event of the changed world was sent
    ceiling: dict[str, float]  # "before" / "after" the change: AUC of the true probability
    summary: list[tuple[str, str]]  # (what, value), shown at the top
    throughput: list[Series] = field(default_factory=list)  # events/s
    lag: list[Series] = field(default_factory=list)  # events sent, not yet scored
    freshness: list[Series] = field(default_factory=list)  # ms from send to score
    # per model version: AUC of the true probability on that model's holdout rows
    holdout_ceiling: dict[str, float] = field(default_factory=dict)


def _s(ms: float, started_ms: int) -> float:
    return (ms - started_ms) / 1000.0


def _monitoring(stores: Stores) -> pd.DataFrame:
    folder = stores.monitoring_dir
    if not folder.exists() or not any(folder.glob("*.parquet")):
        return pd.DataFrame(columns=["time", "model_version", "metric", "feature", "value"])
    frame = pd.read_parquet(folder)
    epoch = pd.Timestamp(0, tz="UTC")
    frame["time_ms"] = (frame["time"] - epoch) // pd.Timedelta(milliseconds=1)
    return frame


def _champions(history: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(time, version) each time the champion changed."""
    return [
        (r["time_ms"], r["model_version"])
        for r in history
        if r["kind"] in ("promoted", "rolled_back") and r["model_version"]
    ]


def _serving(history: list[dict[str, Any]], end_ms: int) -> dict[str, list[tuple[int, int]]]:
    """When each version was scored (as champion or in shadow): its spans of wall time."""
    spans: dict[str, list[tuple[int, int]]] = {}
    open_: dict[str, int] = {}
    champion: str | None = None
    for r in history:
        version, kind, t = r["model_version"], r["kind"], r["time_ms"]
        if not version:
            continue
        if kind in ("promoted", "rolled_back"):
            if champion is not None and champion != version and champion in open_:
                spans.setdefault(champion, []).append((open_.pop(champion), t))
            champion = version
            open_.setdefault(version, t)
        elif kind == "shadow_started":
            open_.setdefault(version, t)
        elif kind == "rejected" and version in open_:
            spans.setdefault(version, []).append((open_.pop(version), t))
    for version, start in open_.items():
        spans.setdefault(version, []).append((start, end_ms))
    return spans


def _champion_at(changes: list[tuple[int, str]], t: int) -> str | None:
    current = None
    for when, version in changes:
        if when <= t:
            current = version
    return current


def build_report(stores: Stores, story: Story, path: Path) -> Path:
    """Write the report to ``path`` and return it."""
    history = ModelEvents(stores.models_dir).rows()
    rows = _monitoring(stores)
    t0 = story.started_ms
    markers = [
        Marker(_s(r["time_ms"], t0), f"{r['kind']} {r['model_version'] or ''}".strip(),
               MARKER_COLORS.get(r["kind"], "#444"))
        for r in history
        if r["kind"] != "trained" and r["time_ms"] >= t0
    ]  # fmt: skip
    if story.change_ms is not None:
        markers.insert(0, Marker(_s(story.change_ms, t0), "world changes", "#000"))
    end = max([_s(t, t0) for t in rows["time_ms"]] + [m.x for m in markers] + [1.0])
    x_range = (0.0, end)

    charts = []
    if story.throughput:
        charts.append(line_chart("Throughput", story.throughput, y_label="events / s",
                                 markers=markers, x_range=x_range,
                                 y_range=(0.0, _top(story.throughput))))  # fmt: skip
    if story.lag:
        charts.append(line_chart("Lag: events sent, not yet scored", story.lag,
                                 y_label="events", markers=markers, x_range=x_range,
                                 y_range=(0.0, _top(story.lag))))  # fmt: skip
    if story.freshness:
        charts.append(line_chart("Freshness: from an event's send to its score (p50, p99)",
                                 story.freshness, y_label="ms", markers=markers,
                                 x_range=x_range))  # fmt: skip
    charts.append(_auc_chart(rows, story, markers, x_range, history))
    charts.append(_psi_chart(rows, story, markers, x_range, history))
    html = _page(story, charts, _versions_table(stores, history, story.holdout_ceiling))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


def _top(series: Sequence[Series]) -> float:
    """A y axis from 0 to a little above the largest value (at least 1)."""
    return max([1.0] + [float(y) * 1.1 for s in series for y in s.ys if y == y])


def _auc_chart(
    rows: pd.DataFrame,
    story: Story,
    markers: Sequence[Marker],
    x_range: tuple[float, float],
    history: list[dict[str, Any]],
) -> str:
    t0 = story.started_ms
    auc = rows[(rows["metric"] == "auc") & (rows["samples"] >= MIN_SAMPLES)].sort_values("time_ms")
    end_ms = int(auc["time_ms"].max()) if len(auc) else t0
    spans = _serving(history, end_ms)
    series = []
    for version, g in auc.groupby("model_version"):
        # a version no longer scored keeps its last window: its line ends with its service
        # (plus the time its last labels take to arrive)
        times = g["time_ms"].to_numpy()
        scored = np.zeros(len(g), dtype=bool)
        for start, stop in spans.get(version, []):
            scored |= (times >= start) & (times <= stop + LINGER_MS)
        g = g[scored]
        series.append(
            Series(f"live AUC {version}", [_s(t, t0) for t in g["time_ms"]], list(g["value"]))
        )
    change = _s(story.change_ms, t0) if story.change_ms is not None else x_range[1]
    if "before" in story.ceiling:
        series.append(Series("ceiling before", [x_range[0], change],
                             [story.ceiling["before"]] * 2, dashed=True))  # fmt: skip
    if "after" in story.ceiling and story.change_ms is not None:
        series.append(Series("ceiling after", [change, x_range[1]],
                             [story.ceiling["after"]] * 2, dashed=True))  # fmt: skip
    return line_chart(
        "Live AUC of each model (labelled window) and the best any model could reach",
        series, y_label="ROC AUC", markers=markers, x_range=x_range, y_range=(0.4, 0.9),
    )  # fmt: skip


def _psi_chart(
    rows: pd.DataFrame,
    story: Story,
    markers: Sequence[Marker],
    x_range: tuple[float, float],
    history: list[dict[str, Any]],
) -> str:
    """PSI of the serving champion's features against its own reference: the features
    that moved most, and the score."""
    t0 = story.started_ms
    changes = _champions(history)
    psi = rows[(rows["metric"] == "psi") & (rows["samples"] >= MIN_SAMPLES)].copy()
    if len(psi):
        serving = [_champion_at(changes, int(t)) for t in psi["time_ms"]]
        psi = psi[psi["model_version"].to_numpy() == pd.Series(serving, dtype=object).to_numpy()]
    top = psi.groupby("feature")["value"].max().sort_values(ascending=False)
    keep = [f for f in top.index if f != "score"][:6] + (["score"] if "score" in top else [])
    series = []
    for feature in keep:
        g = psi[psi["feature"] == feature].sort_values("time_ms")
        series.append(Series(feature, [_s(t, t0) for t in g["time_ms"]], list(g["value"])))
    series.append(Series("0.25: significant", list(x_range), [0.25, 0.25], dashed=True))
    return line_chart(
        "Drift: PSI per feature against the serving champion's reference",
        series, y_label="PSI", markers=markers, x_range=x_range,
    )  # fmt: skip


def _versions_table(
    stores: Stores, history: list[dict[str, Any]], ceilings: dict[str, float]
) -> str:
    registry = ModelRegistry(stores.models_dir)
    last: dict[str, dict[str, Any]] = {}
    for r in history:
        if r["model_version"] and r["kind"] in ("promoted", "rejected", "shadow_started"):
            last[r["model_version"]] = r
    body = []
    for version in registry.versions():
        try:
            meta = registry.get(version).metadata
        except RegistryDamaged as exc:
            body.append(f"<tr><td>{escape(version)}</td><td colspan='6'>damaged: "
                        f"{escape(str(exc))}</td></tr>")  # fmt: skip
            continue
        window = meta.get("training_window", {})
        holdout = meta.get("holdout_metrics", {})
        decision = last.get(version, {})
        auc = holdout.get("auc")
        body.append(
            "<tr>"
            f"<td>{escape(version)}</td>"
            f"<td>{escape(str(window.get('start', ''))[:19])} → "
            f"{escape(str(window.get('end', ''))[:19])}</td>"
            f"<td>{meta.get('rows', {}).get('train', '')}</td>"
            f"<td>{'' if auc is None else f'{auc:.3f}'}</td>"
            f"<td>{f'{ceilings[version]:.3f}' if version in ceilings else ''}</td>"
            f"<td class='kind {escape(decision.get('kind', ''))}'>"
            f"{escape(decision.get('kind', 'registered'))}</td>"
            f"<td>{escape(decision.get('reason', ''))}</td>"
            "</tr>"
        )
    head = ("<tr><th>version</th><th>trained on events (event time)</th><th>rows</th>"
            "<th>holdout AUC</th><th>ceiling</th><th>decision</th><th>why</th></tr>")  # fmt: skip
    return f"<table class='versions'>{head}{''.join(body)}</table>"


def _page(story: Story, charts: Sequence[str], versions: str) -> str:
    summary = "".join(
        f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in story.summary
    )
    figures = "\n".join(f"<figure>{c}</figure>" for c in charts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>featflow demo report</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 960px;
       color: #222; }}
h1 {{ font-size: 22px; margin-bottom: 4px; }}
h2 {{ font-size: 17px; margin-top: 28px; }}
table {{ border-collapse: collapse; margin: 8px 0; }}
th, td {{ border-bottom: 1px solid #e3e3e3; padding: 4px 10px; text-align: left;
         vertical-align: top; }}
table.summary th {{ font-weight: 500; color: #555; }}
table.versions td:nth-child(6) {{ max-width: 420px; font-size: 12.5px; }}
td.kind.promoted {{ color: #2ca02c; font-weight: 600; }}
td.kind.rejected {{ color: #d62728; font-weight: 600; }}
figure {{ margin: 18px 0; }}
svg.chart text {{ font: 11px system-ui, sans-serif; fill: #333; }}
svg.chart text.title {{ font-size: 14px; font-weight: 600; }}
svg.chart text.marker {{ font-size: 10.5px; }}
svg.chart text.axis {{ fill: #666; }}
p.note {{ color: #555; font-size: 12.5px; }}
</style></head><body>
<h1>featflow: the loop, closed</h1>
<p class="note">Events streamed through the worker and were scored as they came; labels
followed late; part-way through, the world changed (amounts grew, the fraud rule moved).
The monitor noticed, the trainer retrained, trialled the challenger in shadow beside the
champion on the same events, and promoted it. Dashed vertical lines mark each step.</p>
<h2>Summary</h2>
<table class="summary">{summary}</table>
<h2>Over time</h2>
{figures}
<h2>Model versions</h2>
{versions}
<p class="note">Live AUC: the monitor's exact ROC AUC over each model's latest labelled
predictions. Ceiling: the AUC of the generator's true fraud probability on the same
period's labelled events, the best any model could reach. PSI bins are fixed by each
champion's training reference: deciles kept out of any one entity's tight cluster of values,
plus under- and overflow far outside the training range.</p>
</body></html>
"""
