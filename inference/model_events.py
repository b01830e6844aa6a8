"""The model history: every decision about which model serves, as a hash-chained log.

``$FEATFLOW_HOME/models/model_events.jsonl`` holds one JSON object per decision:
``time_ms, kind, model_version, champion_version, reason, metrics, prev_sha256, sha256``
with ``kind`` one of :data:`KINDS`. ``sha256`` is the hash of the row's canonical JSON
without it, and ``prev_sha256`` the previous row's (``""`` for the first), so editing,
dropping or reordering any row breaks the chain from there on: :func:`verify` (``featflow
audit``) proves the history of what served when is the one that was written. Rows are
appended with fsync, one write each; a torn last line (a crash mid-write) is reported, not
silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

KINDS = ("triggered", "trained", "shadow_started", "promoted", "rejected", "rolled_back")
FILENAME = "model_events.jsonl"


def _digest(row: dict[str, Any]) -> str:
    body = {k: v for k, v in row.items() if k != "sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ModelEvents:
    """The log under ``models_dir``: append decisions, read them back."""

    def __init__(self, models_dir: Path) -> None:
        self.path = models_dir / FILENAME
        models_dir.mkdir(parents=True, exist_ok=True)

    def rows(self) -> list[dict[str, Any]]:
        """Every row, oldest first (as written; :func:`verify` says whether to trust them)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def append(
        self,
        kind: str,
        model_version: str | None,
        *,
        champion_version: str | None = None,
        reason: str = "",
        metrics: dict[str, Any] | None = None,
        time_ms: int | None = None,
    ) -> dict[str, Any]:
        """Write one decision; returns the row with its hashes."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        problems = verify(self.path.parent)
        if problems:
            raise ValueError(f"refusing to extend a broken history: {problems[0]}")
        previous = self.rows()
        row: dict[str, Any] = {
            "time_ms": int(time.time() * 1000) if time_ms is None else time_ms,
            "kind": kind,
            "model_version": model_version,
            "champion_version": champion_version,
            "reason": reason,
            "metrics": metrics or {},
            "prev_sha256": previous[-1]["sha256"] if previous else "",
        }
        row["sha256"] = _digest(row)
        line = json.dumps(row, sort_keys=True, allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())
        return row


def verify(models_dir: Path) -> list[str]:
    """What is wrong with the history under ``models_dir`` (empty: the chain holds)."""
    path = models_dir / FILENAME
    if not path.exists():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        return [f"{path}: the last line is incomplete (a write was cut off)"]
    previous = ""
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return [f"line {number}: not JSON"]
        if row.get("prev_sha256") != previous:
            return [f"line {number}: does not follow line {number - 1} (a row edited, "
                    "dropped or moved before it)"]  # fmt: skip
        if row.get("sha256") != _digest(row):
            return [f"line {number}: its content does not match its sha256 (edited)"]
        previous = row["sha256"]
    return []
