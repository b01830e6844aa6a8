"""Registry integrity, champion alias, and atomic hot swap under concurrent load."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from inference.exceptions import ModelRejected, UnknownVersion
from inference.predictor import Predictor
from inference.registry import ModelRegistry

NAMES = [f"f{i}" for i in range(4)]


def _onnx(seed: int, width: int = 4) -> tuple[bytes, LogisticRegression]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, width)).astype(np.float32)
    y = (x[:, 0] + rng.normal(scale=0.5, size=200) > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    blob = to_onnx(model, x[:1], options={"zipmap": False}, target_opset=17).SerializeToString()
    return blob, model


def _register(registry: ModelRegistry, seed: int, names: list[str] = NAMES) -> str:
    blob, _ = _onnx(seed, len(names))
    return registry.register(blob, {"feature_names": names}).version


def test_versions_champion_promote_rollback(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    v1, v2 = _register(registry, 1), _register(registry, 2)
    assert (v1, v2) == ("v0001", "v0002") and registry.versions() == [v1, v2]
    assert registry.champion() is None
    registry.promote(v1)
    registry.promote(v2)
    assert registry.champion_version() == v2
    assert registry.get(v2).metadata["parent_version"] is None  # registered before any champion
    v3 = _register(registry, 3)
    assert registry.get(v3).metadata["parent_version"] == v2
    assert registry.rollback() == v1 and registry.champion_version() == v1
    with pytest.raises(UnknownVersion):
        registry.rollback()
    with pytest.raises(UnknownVersion):
        registry.get("v9999")


def test_tampered_model_is_refused_and_champion_keeps_serving(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    good = _register(registry, 1)
    registry.promote(good)
    predictor = Predictor(registry, NAMES)
    assert predictor.refresh()
    bad = _register(registry, 2)
    path = registry.get(bad).model_path
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelRejected, match="sha256"):
        registry.promote(bad)
    # Even if the alias is forced onto it, the serving predictor refuses to switch.
    registry._write_alias({"version": bad, "history": [good]})
    assert not predictor.refresh()
    assert "sha256" in (predictor.last_error or "")
    assert predictor.score(np.zeros((1, 4)))[0] == good


def test_model_with_other_inputs_is_refused(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    other = _register(registry, 1, names=["a", "b", "c"])
    with pytest.raises(ModelRejected, match="feature set"):
        registry.promote(other, feature_names=NAMES)
    liar = registry.register(_onnx(2, 3)[0], {"feature_names": NAMES}).version  # 3 inputs
    registry._write_alias({"version": liar, "history": []})
    predictor = Predictor(registry, NAMES)
    assert not predictor.refresh()
    assert "expects inputs" in (predictor.last_error or "")


def test_hot_swap_under_concurrent_load_has_no_errors_or_mixed_scores(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    blobs = {}
    for seed in range(1, 5):
        blob, model = _onnx(seed)
        version = registry.register(blob, {"feature_names": NAMES}).version
        blobs[version] = model
    predictor = Predictor(registry, NAMES)
    registry.promote("v0001")
    predictor.refresh()
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    expected = {v: m.predict_proba(x)[:, 1] for v, m in blobs.items()}
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                version, scores = predictor.score(x)
                # every request is scored wholly by the one version it reports
                np.testing.assert_allclose(scores, expected[version], atol=1e-5)
                seen.add(version)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    versions = registry.versions()
    for _ in range(3):
        for version in versions[1:] + versions[:1]:  # every promotion changes the champion
            registry.promote(version)
            assert predictor.refresh()
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert seen == set(registry.versions())
