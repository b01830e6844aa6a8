"""Generates the Feast repository from the feature specs and applies it.

The specs in :mod:`features.spec` are the one source of truth: this module
renders them into an ordinary Feast repo (``feature_store.yaml`` plus
``features.py``) under ``$FEATFLOW_HOME/feature_repo`` so anyone can open it
with ``FeatureStore(repo_path=...)`` or the ``feast`` CLI, and registers it by
executing exactly the file it wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from features.spec import DEFAULT_FEATURES, FeatureSpec
from features.views import MERCHANT_VIEWS, USER, View
from infra.config import Stores

if TYPE_CHECKING:
    from feast import FeatureStore

PROJECT = "featflow"
ENTITY = USER.entity
JOIN_KEY = USER.join_key
FEATURE_VIEW = USER.name
PUSH_SOURCE = USER.push_source
TIMESTAMP_FIELD = "event_timestamp"
#: Feast's entity key serialization version. Tests pin the online key layout it implies.
ENTITY_KEY_SERIALIZATION_VERSION = 3
#: Where Feast's repo takes the Redis password from (expanded when it reads the YAML).
REDIS_PASSWORD_VARIABLE = "FEATFLOW_REDIS_PASSWORD"

#: Columns every offline row carries besides the features, for replay de-duplication.
OFFLINE_EXTRA_COLUMNS = ("event_id", "kafka_partition", "kafka_offset")

_REGISTRY = "data/registry.db"  # relative to the repo
_APPLIED = "data/applied.json"  # what the last registration registered (``apply_repo``)

_INTEGER_AGGS = frozenset({"count", "distinct", "count_same", "below", "equals"})


def feast_type_name(spec: FeatureSpec) -> str:
    """Feast type of a feature: counts, indicators and ids are integers, the rest float64."""
    integer = spec.agg in _INTEGER_AGGS or (spec.agg == "last" and spec.column != "amount")
    return "Int64" if integer else "Float64"


def feature_store_yaml(stores: Stores) -> dict[str, object]:
    """The ``feature_store.yaml`` contents for ``stores`` (SQLite or Redis online, file offline)."""
    if stores.online_store_kind == "sqlite":
        online: dict[str, object] = {"type": "sqlite", "path": "data/online_store.db"}
    else:
        online = {"type": "redis", "connection_string": _redis_connection_string(stores)}
    return {
        "project": PROJECT,
        "provider": "local",
        "registry": _REGISTRY,
        "online_store": online,
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": ENTITY_KEY_SERIALIZATION_VERSION,
    }


def _redis_connection_string(stores: Stores) -> str:
    """Feast's redis connection string form: ``host:port[,db=N][,ssl=true,ssl_ca_certs=F]
    [,password=${FEATFLOW_REDIS_PASSWORD}],socket_timeout=S,socket_connect_timeout=S``
    (Feast hands each ``key=value`` to redis-py, as JSON where it parses). The password is
    the variable's name, which Feast expands when it reads the file: no secret on disk."""
    from urllib.parse import urlparse

    url = urlparse(stores.online_store)
    parts = [f"{url.hostname or '127.0.0.1'}:{url.port or 6379}"]
    db = url.path.strip("/")
    if db:
        parts.append(f"db={db}")
    if stores.redis_password is not None:
        if "," in stores.redis_password:
            raise ValueError("the Redis password must not contain ',' (Feast splits on it)")
        parts.append(f"password=${{{REDIS_PASSWORD_VARIABLE}}}")
    if url.scheme == "rediss":
        parts.append("ssl=true")
        if stores.redis_ca_file:
            parts.append(f"ssl_ca_certs={stores.redis_ca_file}")
    timeout = stores.redis_timeout_s
    parts += [f"socket_timeout={timeout}", f"socket_connect_timeout={timeout}"]
    return ",".join(parts)


def views_for(specs: Sequence[FeatureSpec]) -> tuple[View, ...]:
    """Every view, the user view with ``specs`` (tests and benchmarks pass their own)."""
    return (replace(USER, specs=tuple(specs)), *MERCHANT_VIEWS)


def render_definitions(views: Sequence[View], offline_paths: Sequence[str]) -> str:
    """Python source of the Feast objects for ``views`` (entities, sources, views)."""
    entities: dict[str, View] = {}
    for view in views:
        entities.setdefault(view.entity, view)
    blocks = [
        f"""{v.entity} = Entity(
    name={v.entity!r},
    join_keys=[{v.join_key!r}],
    value_type=ValueType.INT64,
    description={v.entity_description!r},
)
"""
        for v in entities.values()
    ]
    for view, path in zip(views, offline_paths, strict=True):
        fields = "\n".join(
            f"        Field(name={s.name!r}, dtype={feast_type_name(s)},"
            f" description={s.description!r}),"
            for s in view.specs
        )
        blocks.append(f"""{view.offline_source} = FileSource(
    name={view.offline_source!r},
    path={path!r},
    file_format=ParquetFormat(),
    timestamp_field={TIMESTAMP_FIELD!r},
    description="Parquet part files written by the featflow worker and backfill.",
)

{view.push_source} = PushSource(name={view.push_source!r}, batch_source={view.offline_source})

{view.name} = FeatureView(
    name={view.name!r},
    entities=[{view.entity}],
    ttl=timedelta(0),
    schema=[
        Field(name={view.join_key!r}, dtype=Int64),
{fields}
    ],
    source={view.push_source},
    online=True,
    description={view.description!r},
)
""")
    body = "\n".join(blocks)
    return f'''"""Feast definitions generated by featflow from its feature specs. Do not edit."""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64, Int64

{body}'''


def write_repo(stores: Stores, specs: Sequence[FeatureSpec] = DEFAULT_FEATURES) -> Path:
    """Write the repo files; returns the repo directory. Idempotent."""
    repo = stores.feature_repo
    (repo / "data").mkdir(parents=True, exist_ok=True)
    views = views_for(specs)
    paths = []
    for view in views:
        folder = stores.view_dir(view.name)
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(str(Path("..") / folder.relative_to(stores.home)))
    config = yaml.safe_dump(feature_store_yaml(stores), sort_keys=False)
    _write_if_changed(repo / "feature_store.yaml", config)
    _write_if_changed(repo / "features.py", render_definitions(views, paths))
    return repo


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def apply_repo(stores: Stores, specs: Sequence[FeatureSpec] = DEFAULT_FEATURES) -> FeatureStore:
    """Write and register the repo (like ``feast apply``); returns the store.

    Registering is skipped when this process's definitions are the ones last registered and
    the registry is as that registration left it (``_APPLIED``): ``FeatureStore.apply`` took
    0.53 s (Feast imported, beside a test run) and ~6 s of a worker's start-up beside a busy
    broker, and every service and restart paid it for nothing; skipped, the call takes ~1 ms.
    Anything else that writes the registry (another repo's ``feast apply``, a deleted file)
    makes the next start register again.
    """
    import feast
    from feast import Entity, FeatureStore, FeatureView, FileSource, PushSource

    repo = write_repo(stores, specs)
    _export_password(stores)
    digest = hashlib.sha256(feast.__version__.encode())
    for name in ("feature_store.yaml", "features.py"):
        digest.update((repo / name).read_bytes())
    stamp = repo / _APPLIED
    registered = _registered_as(repo, digest.hexdigest())
    if registered is not None and registered == _read_stamp(stamp):
        return FeatureStore(repo_path=str(repo))
    namespace = runpy.run_path(str(repo / "features.py"))
    objects = [
        value
        for value in namespace.values()
        if isinstance(value, Entity | FeatureView | FileSource | PushSource)
    ]
    store = FeatureStore(repo_path=str(repo))
    store.apply(objects)
    _write_if_changed(stamp, json.dumps(_registered_as(repo, digest.hexdigest())))
    return store


def _registered_as(repo: Path, definitions: str) -> dict[str, object] | None:
    """What ``_APPLIED`` holds once these definitions are registered: their digest and the
    registry file's size and modification time (None without a registry)."""
    try:
        stat = (repo / _REGISTRY).stat()
    except FileNotFoundError:
        return None
    return {"definitions": definitions, "registry": [stat.st_size, stat.st_mtime_ns]}


def _read_stamp(stamp: Path) -> object:
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return "unreadable"


def open_store(stores: Stores) -> FeatureStore:
    """The Feast store for an applied repo (``apply_repo`` must have run once)."""
    from feast import FeatureStore

    _export_password(stores)
    return FeatureStore(repo_path=str(stores.feature_repo))


def _export_password(stores: Stores) -> None:
    """Put the Redis password where the repo's ``feature_store.yaml`` names it (it may have
    come from a file): this process's environment, which Feast expands."""
    if stores.redis_password is not None:
        os.environ[REDIS_PASSWORD_VARIABLE] = stores.redis_password
