"""``featflow demo`` run as a user runs it: its own broker and services as processes, the
world changing part-way, and the story checked from what it leaves behind: the model
history (the monitor fired, a challenger was trained, trialled in shadow and decided on a
live paired verdict), the report's structure, and the printed summary."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import psutil
import pytest

from inference.model_events import ModelEvents, verify
from inference.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[2]


class _Page(HTMLParser):
    """What a reader sees of the report: charts, tables, text, and any outside link."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self.outside: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "svg":
            self.charts.append(values.get("aria-label") or "")
        for key in ("src", "href"):
            if values.get(key):
                self.outside.append(f"{tag} {key}={values[key]}")
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_demo_tells_the_whole_story(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATFLOW_")}
    env |= {"FEATFLOW_HOME": str(home), "COLUMNS": "100"}
    done = subprocess.run(
        [sys.executable, "-m", "featflow.cli", "demo", "--timeout", "240"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=560,
    )
    logs = home / "demo" / "logs"
    assert done.returncode == 0, (
        done.stdout[-3000:]
        + done.stderr[-3000:]
        + "".join(f"\n--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(logs.glob("*.log")))
    )

    # -- the model history: the first champion, the monitor's firing, a shadow trial decided
    # on the live paired verdict, and the challenger promoted (with the transaction's own
    # amount and merchant novelty as features it wins by ~+0.25 AUC, p < 1e-50)
    models = home / "demo" / "models"
    assert verify(models) == []
    history = ModelEvents(models).rows()
    kinds = [r["kind"] for r in history]
    assert kinds == ["triggered", "trained", "promoted",
                     "triggered", "trained", "shadow_started", "promoted"], kinds  # fmt: skip
    verdict = kinds[6]
    fired = history[3]["reason"]
    assert re.search(r"auc = 0\.\d+ breached auc < 0\.58|psi\(score\)", fired), fired
    assert history[4]["reason"].startswith("holdout: better")
    assert history[6]["reason"].startswith("shadow: better"), history[6]["reason"]
    registry = ModelRegistry(models)
    assert registry.versions() == ["v0001", "v0002"]
    assert registry.champion_version() == "v0002" and registry.shadow_version() is None

    # -- what the monitor saw: v0001 lost quality after the change, v0002 was scored live
    rows = pd.read_parquet(home / "demo" / "monitoring")
    auc = rows[(rows["metric"] == "auc") & (rows["samples"] >= 1000)]
    first = auc[auc["model_version"] == "v0001"]["value"]
    assert first.max() - first.min() > 0.08  # the drop that fired the trigger
    assert (auc["model_version"] == "v0002").sum() > 0

    # -- the report, as a reader sees it
    report = home / "reports" / "demo.html"
    page = _Page()
    page.feed(report.read_text(encoding="utf-8"))
    assert page.outside == []  # works offline: nothing linked or loaded from elsewhere
    assert len(page.charts) == 5
    for title in ("Throughput", "Lag", "Freshness", "Live AUC", "Drift: PSI"):
        assert any(c.startswith(title) for c in page.charts), (title, page.charts)
    text = " ".join(page.text)
    for label in ("world changes", "triggered v0001", "shadow_started v0002", f"{verdict} v0002"):
        assert label in text, label
    summary, versions = page.tables
    keys = [row[0] for row in summary]
    for key in ("live events/s (sent and scored)", "freshness p99 (send to score)",
                "/predict p99 (client side)", "live AUC before the change",
                "live AUC after the change, worst", "live AUC after the promotion"):  # fmt: skip
        assert key in keys, (key, keys)
    values = dict((row[0], row[1]) for row in summary)
    ceilings = re.findall(r"ceiling (0\.\d+)", " ".join(values.values()))
    assert len(ceilings) == 3 and all(0.7 < float(c) < 0.9 for c in ceilings), ceilings
    # live quality recovers: after the promotion, close to the best any model could reach
    recovered, ceiling = re.match(
        r"(0\.\d+) \(ceiling (0\.\d+)\)", values["live AUC after the promotion"]
    ).groups()
    assert float(recovered) > float(ceiling) - 0.04, values
    assert "0 errors" in values["/predict p99 (client side)"]
    assert [row[0] for row in versions[1:]] == ["v0001", "v0002"]
    assert [row[5] for row in versions[1:]] == ["promoted", verdict]
    assert "shadow: " in versions[2][6]
    # each model close to the ceiling on its own holdout (0.009 and 0.011 under in a run
    # here; the target is 0.03, and a 4,300-row holdout moves by ~0.01)
    for row in versions[1:]:
        assert float(row[3]) > float(row[4]) - 0.04, row

    # -- the summary printed at the end says the same
    assert "live AUC after the promotion" in done.stdout
    assert f"report: {report}" in done.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.timeout(180)
def test_a_stopped_demo_leaves_no_process_behind(tmp_path: Path, sig: signal.Signals) -> None:
    """Stopped mid-story, by a supervisor's SIGTERM (the services are stopped on the way out)
    or by SIGKILL (the kernel kills them with it), the demo leaves no broker or service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATFLOW_")}
    env |= {"FEATFLOW_HOME": str(tmp_path / "home")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "featflow.cli", "demo"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # the services have started
            if line.startswith("services:"):
                break
        else:
            raise AssertionError("the demo ended before starting its services")
        children = psutil.Process(demo.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        for part in ("worker", "monitor", "trainer", "serve", "tansu"):
            assert part in names, (part, names)
        time.sleep(2)
        demo.send_signal(sig)
        demo.wait(timeout=120)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert alive == [], [" ".join(p.cmdline()) for p in alive]
    finally:
        if demo.poll() is None:
            demo.kill()
