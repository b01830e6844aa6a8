"""The generated artefacts agree with the specs: README table, Feast repo, storage layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from featflow.settings import Settings
from features.docs import render_readme
from features.feast_repo import (
    ENTITY_KEY_SERIALIZATION_VERSION,
    FEATURE_VIEW,
    apply_repo,
    open_store,
)
from features.spec import DEFAULT_FEATURES

ROOT = Path(__file__).resolve().parents[2]


def test_readme_feature_table_is_current() -> None:
    text = (ROOT / "README.md").read_text()
    assert render_readme(text) == text, "run `python -m features.docs` to regenerate"


def test_generated_repo_opens_with_plain_feast(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    apply_repo(settings.stores)
    store = open_store(settings.stores)
    view = store.get_feature_view(FEATURE_VIEW)
    assert [f.name for f in view.features] == [s.name for s in DEFAULT_FEATURES]
    assert store.config.entity_key_serialization_version == ENTITY_KEY_SERIALIZATION_VERSION == 3
    assert (settings.stores.feature_repo / "feature_store.yaml").exists()


def test_registration_is_skipped_only_when_nothing_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second start registers nothing; new specs, a registry written by someone else or
    a deleted registry register again, and plain Feast then reads what this build defines."""
    from feast import Entity, FeatureStore

    applied: list[int] = []
    real_apply = FeatureStore.apply

    def counting_apply(self: FeatureStore, objects: object, *args: object, **kw: object) -> None:
        applied.append(1)
        real_apply(self, objects, *args, **kw)

    monkeypatch.setattr(FeatureStore, "apply", counting_apply)
    settings = Settings(home=tmp_path)
    apply_repo(settings.stores)
    apply_repo(settings.stores)
    assert len(applied) == 1
    fewer = DEFAULT_FEATURES[:3]
    apply_repo(settings.stores, fewer)  # the specs changed
    assert len(applied) == 2
    view = open_store(settings.stores).get_feature_view(FEATURE_VIEW)
    assert [f.name for f in view.features] == [s.name for s in fewer]
    apply_repo(settings.stores)  # and back
    assert len(applied) == 3
    other = FeatureStore(repo_path=str(settings.stores.feature_repo))
    real_apply(other, [Entity(name="someone_else", join_keys=["x"])])  # another writer
    apply_repo(settings.stores)
    assert len(applied) == 4
    (settings.stores.feature_repo / "data" / "registry.db").unlink()
    apply_repo(settings.stores)
    assert len(applied) == 5
    view = open_store(settings.stores).get_feature_view(FEATURE_VIEW)
    assert [f.name for f in view.features] == [s.name for s in DEFAULT_FEATURES]
    apply_repo(settings.stores)
    assert len(applied) == 5


def test_sqlite_online_key_layout_is_pinned(tmp_path: Path) -> None:
    """Feast's entity key bytes for user_id=42 (serialization v3) must not drift silently."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    key = EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=42)])
    blob = serialize_entity_key(key, entity_key_serialization_version=3)
    assert blob.hex() == (
        "01000000"  # one join key
        "02000000"
        + "07000000"
        + b"user_id".hex()  # string type, length, name
        + "04000000"
        + "08000000"
        + (42).to_bytes(8, "little").hex()  # int64 type, length, value
    )


@pytest.mark.parametrize("bad", ["redis:/nope", "postgres://x", ""])
def test_online_store_setting_is_validated(bad: str) -> None:
    with pytest.raises(ValueError, match="online_store"):
        Settings(online_store=bad)


def test_yaml_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "featflow.yaml"
    path.write_text("topic_partitions: 3\nonline_store: redis://127.0.0.1:7000\n")
    monkeypatch.setenv("FEATFLOW_CONFIG", str(path))
    monkeypatch.setenv("FEATFLOW_TOPIC_PARTITIONS", "5")
    settings = Settings()
    assert settings.topic_partitions == 5  # env beats the file
    assert settings.stores.online_store_kind == "redis"
