"""Promotion and rollback by hand (the CLI's ``featflow models`` and the HTTP admin routes):
one definition of what they check and what they record in the model history."""

from __future__ import annotations

from features.scoring_row import SCORING_FEATURES
from inference.model_events import ModelEvents
from inference.registry import ModelRegistry


def promote(registry: ModelRegistry, version: str, via: str) -> str:
    """Make ``version`` the champion (``ModelRejected`` or ``UnknownVersion`` if it may not
    serve); a change is recorded in the model history, ``via`` saying who asked."""
    before = registry.champion_version()
    registry.promote(version, SCORING_FEATURES)
    if before != version:
        ModelEvents(registry.root).append(
            "promoted", version, champion_version=before, reason=f"by hand ({via})"
        )
    return version


def rollback(registry: ModelRegistry, via: str) -> str:
    """Return to the previous champion (``UnknownVersion`` if there is none,
    ``ModelRejected`` if its file no longer checks out); recorded."""
    before = registry.champion_version()
    now = registry.rollback()
    ModelEvents(registry.root).append(
        "rolled_back", now, champion_version=before, reason=f"by hand ({via})"
    )
    return now
