"""The hash-chained model history: intact when written, broken by any edit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from featflow.cli import main
from inference.model_events import FILENAME, ModelEvents, verify


def _history(root: Path) -> ModelEvents:
    log = ModelEvents(root)
    log.append("trained", "v0002", champion_version="v0001", metrics={"auc": 0.74}, time_ms=1)
    log.append("shadow_started", "v0002", champion_version="v0001", time_ms=2)
    log.append("promoted", "v0002", champion_version="v0001", reason="better", time_ms=3)
    log.append("rolled_back", "v0001", champion_version="v0002", time_ms=4)
    return log


def test_an_intact_history(tmp_path: Path) -> None:
    log = _history(tmp_path)
    assert verify(tmp_path) == []
    rows = log.rows()
    assert [r["kind"] for r in rows] == ["trained", "shadow_started", "promoted", "rolled_back"]
    assert rows[0]["prev_sha256"] == "" and rows[2]["prev_sha256"] == rows[1]["sha256"]


@pytest.mark.parametrize("edit", ["change a reason", "drop a row", "swap rows", "tear the end"])
def test_any_edit_breaks_it(tmp_path: Path, edit: str) -> None:
    _history(tmp_path)
    path = tmp_path / FILENAME
    lines = path.read_text().splitlines()
    if edit == "change a reason":
        row = json.loads(lines[2])
        row["reason"] = "because I said so"
        lines[2] = json.dumps(row, sort_keys=True)
    elif edit == "drop a row":
        del lines[1]
    elif edit == "swap rows":
        lines[1], lines[2] = lines[2], lines[1]
    path.write_text("\n".join(lines) + ("" if edit == "tear the end" else "\n"))
    if edit == "tear the end":
        path.write_text(path.read_text()[:-10])
    problems = verify(tmp_path)
    assert problems, edit
    with pytest.raises(ValueError, match="broken history"):
        ModelEvents(tmp_path).append("triggered", None)


def test_featflow_audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATFLOW_HOME", str(tmp_path))
    _history(tmp_path / "models")
    result = CliRunner().invoke(main, ["audit"])
    assert result.exit_code == 0 and "4 model events, chain intact" in result.output
    path = tmp_path / "models" / FILENAME
    path.write_text(path.read_text().replace('"better"', '"worse"'))
    result = CliRunner().invoke(main, ["audit"])
    assert result.exit_code == 1 and "line 3" in result.output


def test_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        ModelEvents(tmp_path).append("deployed", "v1")
