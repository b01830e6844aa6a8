"""Registry integrity, champion alias, and atomic hot swap under concurrent load."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from inference.exceptions import ModelRejected, RegistryDamaged, UnknownVersion
from inference.predictor import Predictor
from inference.registry import ModelRegistry, sha256_of

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


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _truncate_and_rehash(path: Path) -> None:
    """A truncated model whose recorded sha256 was updated to match: only parsing tells."""
    _truncate(path)
    meta = path.parent / "metadata.json"
    fields = json.loads(meta.read_text())
    meta.write_text(json.dumps({**fields, "sha256": sha256_of(path.read_bytes())}))


def _edit_metadata(change: dict | str) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        meta = model.parent / "metadata.json"
        if isinstance(change, str):
            meta.write_text(change)
        else:
            fields = {**json.loads(meta.read_text()), **change}
            meta.write_text(json.dumps({k: v for k, v in fields.items() if v is not None}))

    return edit


# Each edit damages the version the alias names next: (edit, what the refusal says).
VERSION_EDITS = {
    "model deleted": (lambda p: p.unlink(), "is missing"),
    "model truncated": (_truncate, "sha256"),
    "model truncated, sha256 updated": (_truncate_and_rehash, "onnxruntime cannot load it"),
    "model replaced by text": (lambda p: p.write_text("not a model"), "sha256"),
    "metadata not JSON": (_edit_metadata("{'feature_names': "), "not JSON"),
    "metadata a list": (_edit_metadata("[1, 2]"), "not a JSON object"),
    "feature names dropped": (_edit_metadata({"feature_names": None}), "feature_names"),
    "feature names a string": (_edit_metadata({"feature_names": "f0,f1"}), "feature_names"),
    "sha256 dropped": (_edit_metadata({"sha256": None}), "no sha256"),
    "features renamed": (_edit_metadata({"feature_names": ["a", "b", "c", "d"]}), "feature set"),
}

ALIAS_EDITS = {
    "not JSON": ('{"version": "v0002"', "not JSON"),
    "empty": ("", "not JSON"),
    "a list": ('["v0002"]', "not a JSON object"),
    "version a number": ('{"version": 2}', "is not a version name"),
    "version a path": ('{"version": "../v0002"}', "is not a version name"),
    "history a string": ('{"version": "v0002", "history": "v0001"}', "history"),
    "history holds null": ('{"version": "v0002", "history": [null]}', "history"),
    "shadow a dict": ('{"version": "v0001", "shadow": {}}', "shadow"),
    "names no version": ('{"version": "v0042", "history": ["v0001"]}', "no model version"),
}


@pytest.mark.parametrize("edit", VERSION_EDITS, ids=list(VERSION_EDITS))
def test_a_version_edited_by_hand_is_refused_and_the_champion_keeps_serving(
    tmp_path: Path, edit: str
) -> None:
    damage, says = VERSION_EDITS[edit]
    registry = ModelRegistry(tmp_path)
    good, bad = _register(registry, 1), _register(registry, 2)
    registry.promote(good)
    predictor = Predictor(registry, NAMES)
    assert predictor.refresh()
    damage(registry.root / bad / "model.onnx")

    with pytest.raises(ModelRejected, match=says):
        registry.promote(bad, NAMES)
    with pytest.raises(ModelRejected, match=says):
        registry.start_shadow(bad, NAMES)
    assert registry.champion_version() == good  # the refused writes changed nothing
    registry._write_alias({"version": bad, "history": [good], "shadow": None})  # forced
    assert not predictor.refresh()
    assert says in (predictor.last_error or "")
    assert predictor.score(np.zeros((1, 4)))[0] == good
    # a new version still registers beside the damaged one, and serves once promoted
    fresh = _register(registry, 3)
    registry.promote(fresh, NAMES)
    assert predictor.refresh() and predictor.score(np.zeros((1, 4)))[0] == fresh
    assert predictor.last_error is None


@pytest.mark.parametrize("edit", ALIAS_EDITS, ids=list(ALIAS_EDITS))
def test_an_alias_edited_by_hand_is_refused_and_the_champion_keeps_serving(
    tmp_path: Path, edit: str
) -> None:
    text, says = ALIAS_EDITS[edit]
    registry = ModelRegistry(tmp_path)
    good, other = _register(registry, 1), _register(registry, 2)
    registry.promote(good)
    champion = Predictor(registry, NAMES)
    shadow = Predictor(registry, NAMES, registry.shadow_version)
    assert champion.refresh()
    (registry.root / "champion.json").write_text(text)

    assert not champion.refresh() and not shadow.refresh()
    assert says in (champion.last_error or "")
    assert champion.score(np.zeros((1, 4)))[0] == good
    if edit != "names no version":  # the alias itself is unreadable: writes refuse it
        for write in (lambda: registry.promote(other), registry.rollback, registry.end_shadow):
            with pytest.raises(RegistryDamaged, match=r"champion\.json"):
                write()
        with pytest.raises(RegistryDamaged):
            registry.register(_onnx(3)[0], {"feature_names": NAMES})  # its parent is unknown
        assert (registry.root / "champion.json").read_text() == text  # not overwritten
        assert registry.versions() == [good, other]


def test_rollback_refuses_a_previous_champion_that_no_longer_checks_out(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    first, second = _register(registry, 1), _register(registry, 2)
    registry.promote(first)
    registry.promote(second)
    _truncate(registry.root / first / "model.onnx")
    with pytest.raises(ModelRejected, match="sha256"):
        registry.rollback()
    assert registry.champion_version() == second
    shutil.rmtree(registry.root / first)
    with pytest.raises(UnknownVersion):
        registry.rollback()
    assert registry.champion_version() == second
