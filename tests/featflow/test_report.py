"""The report's parts without a demo run: the SVG line chart and the spans in which each
model version was scored (the whole report is checked on a real run in test_demo.py)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from featflow.charts import Marker, Series, line_chart
from featflow.report import _serving

SVG = "{http://www.w3.org/2000/svg}"


def test_a_chart_is_valid_svg_with_escaped_text_and_gaps_at_nan() -> None:
    svg = line_chart(
        "AUC <of> & such",
        [Series("<script>alert(1)</script>", [0, 1, 2, 3, 4], [0.5, 0.6, float("nan"), 0.7, 0.8]),
         Series("flat", [0, 4], [0.5, 0.5], dashed=True)],
        y_label="ROC AUC",
        markers=[Marker(1.0, "triggered v0001"), Marker(1.2, "promoted v0002"),
                 Marker(3.5, "world changes")],
    )  # fmt: skip
    root = ET.fromstring(svg)  # well-formed: every text escaped
    assert root.get("aria-label") == "AUC <of> & such"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "<script>alert(1)</script>" in texts
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == 2 + 1  # the NaN splits the first series in two; the dashed one
    assert sum(1 for p in lines if p.get("stroke-dasharray")) == 1
    # markers: labels close together go to separate rows, a far one back to the first
    labels = {t.text: float(t.get("y")) for t in root.iter(f"{SVG}text") if t.get("class")
              == "marker"}  # fmt: skip
    assert labels["triggered v0001"] != labels["promoted v0002"]
    assert labels["world changes"] == labels["triggered v0001"]
    numbers = [float(v) for v in re.findall(r'points="([^"]+)"', svg)[0].replace(",", " ").split()]
    assert all(v == v for v in numbers)


def _row(t: int, kind: str, version: str | None) -> dict:
    return {"time_ms": t, "kind": kind, "model_version": version}


def test_each_version_is_scored_from_its_promotion_or_shadow_to_its_end() -> None:
    history = [
        _row(0, "triggered", None),
        _row(10, "trained", "v0001"),
        _row(11, "promoted", "v0001"),
        _row(50, "triggered", "v0001"),
        _row(60, "trained", "v0002"),
        _row(61, "shadow_started", "v0002"),
        _row(70, "rejected", "v0002"),  # lost its shadow trial
        _row(80, "trained", "v0003"),
        _row(81, "shadow_started", "v0003"),
        _row(90, "promoted", "v0003"),
        _row(95, "rolled_back", "v0001"),
    ]
    assert _serving(history, end_ms=100) == {
        "v0001": [(11, 90), (95, 100)],
        "v0002": [(61, 70)],
        "v0003": [(81, 95)],
    }
