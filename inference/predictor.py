"""Scoring with onnxruntime, with atomic hot swap of the model.

The active model is one immutable ``LoadedModel`` held in one attribute. A swap
builds and warms the new session completely, then rebinds that attribute: a
request reads the attribute once, so it is scored wholly by the old model or
wholly by the new one, never by a half-loaded one, and never fails for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from inference.exceptions import ModelRejected
from inference.registry import ModelRegistry


@dataclass(frozen=True)
class LoadedModel:
    """One registry version loaded into an onnxruntime session, ready to score."""

    version: str
    session: ort.InferenceSession
    input_name: str
    feature_names: tuple[str, ...]

    def score(self, features: np.ndarray) -> np.ndarray:
        """Probability of the positive class for each row of ``features`` [n, F]."""
        outputs = self.session.run(None, {self.input_name: features.astype(np.float32)})
        return np.asarray(outputs[1], dtype=np.float64)[:, 1]


def load_model(version: str, model: bytes, feature_names: Sequence[str]) -> LoadedModel:
    """An onnxruntime session for ``model``, checked against the feature set and warmed."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # requests are tiny; threads only add latency
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelRejected(f"{version}: onnxruntime cannot load it: {exc}") from exc
    inputs = session.get_inputs()
    width = inputs[0].shape[-1] if inputs and inputs[0].shape else None
    if len(inputs) != 1 or width != len(feature_names):
        raise ModelRejected(
            f"{version}: expects inputs {[(i.name, i.shape) for i in inputs]}, "
            f"not one [n, {len(feature_names)}] tensor"
        )
    loaded = LoadedModel(version, session, inputs[0].name, tuple(feature_names))
    loaded.score(np.zeros((8, len(feature_names)), dtype=np.float32))  # warm-up
    return loaded


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

        A version that fails verification is refused (``last_error`` says why)
        and the current model keeps serving.
        """
        with self._swap_lock:
            version = self.alias()
            current = self._active.version if self._active else None
            if version == current:
                return False
            if version is None:
                if self.alias == self.registry.champion_version:
                    return False  # never serve nothing once a champion served
                self._active = None  # a shadow ended
                return True
            try:
                _, data = self.registry.load_verified(version, self.feature_names)
                loaded = load_model(version, data, self.feature_names)
            except ModelRejected as exc:
                self.last_error = str(exc)
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
