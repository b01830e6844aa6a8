"""Scoring with onnxruntime, with atomic hot swap of the model.

The active model is one immutable ``LoadedModel`` held in one attribute. A swap
builds and warms the new session completely, then rebinds that attribute: a
request reads the attribute once, so it is scored wholly by the old model or
wholly by the new one, never by a half-loaded one, and never fails for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

from inference.exceptions import ModelRejected, UnknownVersion
from inference.onnx_model import LoadedModel, load_model
from inference.registry import ModelRegistry


class Predictor:
    """The champion model of a registry (or the version another alias names, such as
    ``registry.shadow_version``), swapped atomically when that version changes."""

    def __init__(
        self,
        registry: ModelRegistry,
        feature_names: Sequence[str],
        alias: Callable[[], str | None] | None = None,
    ):
        self.registry = registry
        self.feature_names = tuple(feature_names)
        self.alias = alias or registry.champion_version
        self._active: LoadedModel | None = None
        self._swap_lock = threading.Lock()
        self.last_error: str | None = None

    @property
    def active(self) -> LoadedModel | None:
        """The model now serving, or None before a champion exists."""
        return self._active

    def refresh(self) -> bool:
        """Load the alias's version if it changed; returns True when swapped. When a
        shadow alias names none, its model is dropped; the champion's never is.

        A version that fails verification, or an alias that cannot be read or names no
        version, is refused (``last_error`` says why) and the current model keeps serving.
        """
        with self._swap_lock:
            try:
                version = self.alias()
            except ModelRejected as exc:  # champion.json edited into nonsense
                self.last_error = str(exc)
                return False
            current = self._active.version if self._active else None
            if version == current:
                self.last_error = None
                return False
            if version is None:
                if self.alias == self.registry.champion_version:
                    return False  # never serve nothing once a champion served
                self._active = None  # a shadow ended
                return True
            try:
                _, data = self.registry.load_verified(version, self.feature_names)
                loaded = load_model(version, data, self.feature_names)
            except (ModelRejected, UnknownVersion) as exc:
                self.last_error = str(exc).strip("'\"")
                return False
            self._active = loaded  # the atomic switch
            self.last_error = None
            return True

    def score(self, features: np.ndarray) -> tuple[str, np.ndarray]:
        """(version, scores) of the active model for feature rows [n, F]; one model per call."""
        model = self._active  # read once: the whole request uses this model
        if model is None:
            raise RuntimeError("no model loaded")
        return model.version, model.score(features)
