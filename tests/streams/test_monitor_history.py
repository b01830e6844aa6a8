"""The monitor's /metrics counts the model history's decisions by kind (the dashboard's
promotion annotations and the model-version panel read them), re-reading the file only when
it changes, and keeping its last good reading when the last line is torn."""

from __future__ import annotations

from pathlib import Path

from featflow.settings import Settings
from inference.model_events import KINDS, ModelEvents
from streams.monitor import Monitor, render_monitor_metrics


def _lines(monitor: Monitor) -> set[str]:
    return set(render_monitor_metrics(monitor).splitlines())


def test_model_history_by_kind(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    monitor = Monitor(settings.monitor)
    lines = _lines(monitor)
    # every kind is there before any decision: the first promotion is an increase from 0
    for kind in KINDS:
        assert f'featflow_model_events_total{{kind="{kind}"}} 0' in lines
    assert not any(line.startswith("featflow_model_last_event") for line in lines)

    events = ModelEvents(settings.stores.models_dir)
    events.append("promoted", "v0001", time_ms=1_767_225_600_000)
    events.append("promoted", "v0002", champion_version="v0001", time_ms=1_767_225_660_000)
    events.append("rolled_back", "v0001", champion_version="v0002", time_ms=1_767_225_720_000)
    lines = _lines(monitor)
    assert 'featflow_model_events_total{kind="promoted"} 2' in lines
    assert 'featflow_model_events_total{kind="rolled_back"} 1' in lines
    assert 'featflow_model_events_total{kind="rejected"} 0' in lines
    assert 'featflow_model_last_event_timestamp_seconds{kind="promoted"} 1767225660.0' in lines
    assert 'featflow_model_last_event_timestamp_seconds{kind="rolled_back"} 1767225720.0' in lines

    with open(events.path, "a") as log:  # a writer killed mid-line
        log.write('{"kind": "prom')
    assert 'featflow_model_events_total{kind="promoted"} 2' in _lines(monitor)
