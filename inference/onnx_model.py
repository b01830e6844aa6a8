"""A model version loaded into onnxruntime, checked against the feature set and warmed.

The registry uses it to refuse a promotion of a file onnxruntime cannot load (a truncated
model whose recorded sha256 was updated to match would pass the hash), and the predictor
to serve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from inference.exceptions import ModelRejected


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
