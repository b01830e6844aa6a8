"""HTTP contract, feature reads equal to Feast's, published predictions, hot swap under load."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from kafka import KafkaConsumer
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from featflow.settings import Settings
from features.feast_repo import apply_repo, feast_type_name
from features.online import default_features, open_online
from features.reader import read_online
from features.scoring_row import SCORING_FEATURES, MerchantReader
from features.spec import DEFAULT_FEATURES, FEATURE_NAMES
from features.state import WindowState
from features.views import MERCHANT_VIEWS
from inference.auth import OPEN, Tokens
from inference.predictor import Predictor
from inference.publisher import PredictionPublisher
from inference.registry import ModelRegistry
from inference.service import Transactions, create_app
from infra.predictions import decode_predictions
from infra.process import free_port
from infra.topics import ensure_topics

F = len(SCORING_FEATURES)
USERS = np.arange(1, 51, dtype=np.int64) * 1000
JSON = {"content-type": "application/json"}


def _model(seed: int) -> tuple[bytes, LogisticRegression]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, F)).astype(np.float32)
    y = (x[:, seed % F] + rng.normal(scale=0.5, size=300) > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    return to_onnx(
        model, x[:1], options={"zipmap": False}, target_opset=17
    ).SerializeToString(), model


def _setup(
    settings: Settings, n_models: int = 1
) -> tuple[dict[str, LogisticRegression], np.ndarray, np.ndarray]:
    """Online rows for USERS (their merchants 1-50) and for merchants 1-30 (the others have
    none yet), and models over the scoring row. Returns (models, user rows, the scoring
    rows built here by name: the user's features but its merchant id, then its merchant's
    features or zeros)."""
    store = apply_repo(settings.stores)
    rng = np.random.default_rng(0)
    features = rng.normal(10, 5, size=(len(USERS), len(DEFAULT_FEATURES)))
    for j, spec in enumerate(DEFAULT_FEATURES):
        if feast_type_name(spec) == "Int64":
            features[:, j] = rng.integers(1, 50, size=len(USERS))
    times = np.full(len(USERS), 1_767_225_600_000, dtype=np.int64)
    open_online(store, DEFAULT_FEATURES).write(
        entity_id=USERS, event_time_ms=times, features=features
    )
    merchants = np.arange(1, 31, dtype=np.int64)
    by_name = {}
    for view in MERCHANT_VIEWS:
        values = rng.integers(0, 9, size=(len(merchants), len(view.specs))).astype(float)
        open_online(store, view.specs, view=view).write(
            entity_id=merchants, event_time_ms=times[: len(merchants)], features=values
        )
        for j, spec in enumerate(view.specs):
            by_name[spec.name] = dict(zip(merchants.tolist(), values[:, j], strict=True))
    user = dict(zip(FEATURE_NAMES, features.T, strict=True))
    rows = np.column_stack(
        [
            user[n] if n in user
            else [by_name[n].get(int(m), 0.0) for m in user["merchant_id"]]
            for n in SCORING_FEATURES
        ]
    )  # fmt: skip
    registry = ModelRegistry(settings.stores.models_dir)
    models = {}
    for seed in range(1, n_models + 1):
        blob, model = _model(seed)
        models[registry.register(blob, {"feature_names": SCORING_FEATURES}).version] = model
    registry.promote("v0001")
    return models, features, rows


def _app(
    settings: Settings,
    publisher: PredictionPublisher | None = None,
    interval: float = 1.0,
    transactions: Transactions | None = None,
    tokens: Tokens = OPEN,
    max_inflight: int = 64,
):
    store = apply_repo(settings.stores)
    predictor = Predictor(ModelRegistry(settings.stores.models_dir), SCORING_FEATURES)
    reader = open_online(store, DEFAULT_FEATURES)
    return create_app(
        predictor, reader, MerchantReader(store), publisher, refresh_interval_s=interval,
        transactions=transactions, tokens=tokens, max_inflight=max_inflight,
    )  # fmt: skip


def _state_peek(state: WindowState) -> Transactions:
    """Transactions scored on a window state held in this process (what the service gets
    from a replica of the stream's state, without a broker)."""

    def peek(users, merchants, amounts, times):
        features, late = state.peek(users, times, amounts, merchants)
        return features, late, np.array([state.holds(int(u)) for u in users])

    return peek


@contextmanager
def _serve(app: FastAPI) -> Iterator[str]:
    """``app`` behind a real uvicorn on a free port (a thread), as a client reaches it."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_reader_equals_feast(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    online = request.getfixturevalue("redis_url") if backend == "redis" else "sqlite"
    settings = Settings(home=tmp_path, online_store=online)
    _, features, _ = _setup(settings)
    reader = open_online(apply_repo(settings.stores), DEFAULT_FEATURES)
    ids = [*USERS.tolist(), -7]
    got, found = reader.read(ids)
    feast = read_online(settings.stores, ids)
    np.testing.assert_array_equal(got[:-1], feast[list(FEATURE_NAMES)].to_numpy(float)[:-1])
    np.testing.assert_array_equal(got[:-1], features)
    assert found.tolist() == [True] * len(USERS) + [False]
    np.testing.assert_array_equal(got[-1], default_features(DEFAULT_FEATURES))
    assert reader.unavailable() is None


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_merchant_reader_equals_feast(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Both merchant views in one read (one HMGET on Redis) give what Feast reads; a merchant
    without rows reads as the views' defaults."""
    online = request.getfixturevalue("redis_url") if backend == "redis" else "sqlite"
    settings = Settings(home=tmp_path, online_store=online)
    _setup(settings)
    store = apply_repo(settings.stores)
    ids = [*range(1, 31), 999, 7]
    got = MerchantReader(store).read(ids)
    refs = [f"{v.name}:{s.name}" for v in MERCHANT_VIEWS for s in v.specs]
    feast = store.get_online_features(
        features=refs, entity_rows=[{"merchant_id": m} for m in ids]
    ).to_df()
    want = feast[[r.split(":")[1] for r in refs]].astype(float).fillna(0.0).to_numpy()
    np.testing.assert_array_equal(got, want)
    assert (got[-2] == 0).all() and (got[:30] != 0).any(axis=1).all()


def test_http_contract(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    models, _, rows = _setup(settings)
    assert (rows[:, -1] == 0).any() and (rows[:, -1] != 0).any()  # known and new merchants
    with TestClient(_app(settings)) as client:
        for i in range(len(USERS)):
            one = client.post("/predict", json={"user_id": int(USERS[i])}).json()
            assert one["model_version"] == "v0001" and one["features_found"] is True
            assert tuple(one["features"]) == SCORING_FEATURES
            np.testing.assert_allclose(list(one["features"].values()), rows[i])
            expected = models["v0001"].predict_proba(rows[i : i + 1].astype(np.float32))[0, 1]
            assert one["score"] == pytest.approx(expected, abs=1e-5)

        batch = client.post("/predict", json={"user_ids": [int(USERS[0]), 424242]}).json()
        assert [p["features_found"] for p in batch["predictions"]] == [True, False]
        unknown = batch["predictions"][1]["features"]
        assert unknown["seconds_since_last_txn"] == -1.0 and unknown["txn_count_24h"] == 0.0
        assert unknown["merchant_txns_24h"] == 0.0 and unknown["merchant_fraud_rate_7d"] == 0.0
        assert len({p["prediction_id"] for p in batch["predictions"]}) == 2

        for bad in (
            {},
            {"user_id": 1, "user_ids": [2]},
            {"user_id": "1"},
            {"user_id": 1.5},
            {"user_id": 2**63},
            {"user_ids": []},
            {"user_ids": list(range(1001))},
            {"user_id": 1, "colour": "red"},
            {"user_id": 1, "event_id": ""},
        ):
            response = client.post("/predict", json=bad)
            assert response.status_code == 422, (bad, response.text)
            assert response.json()["detail"]
        assert client.post("/predict", content=b"{oops").status_code == 422

        health = client.get("/health")
        assert health.status_code == 200 and health.json()["model_version"] == "v0001"
        metrics = client.get("/metrics").text
        assert 'featflow_model_info{version="v0001"} 1.0' in metrics
        assert "featflow_model_version_number 1.0" in metrics
        assert 'featflow_predict_latency_seconds_bucket{le="5e-05"}' in metrics
        assert 'featflow_http_requests_total{path="/predict",status="422"}' in metrics
        assert f"featflow_features_found_total {len(USERS) + 1}.0" in metrics
        assert client.get("/docs").status_code == 200


def test_health_is_503_without_a_model(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    apply_repo(settings.stores)
    with TestClient(_app(settings)) as client:
        openapi = client.get("/openapi.json").json()
        for path, method, request in (
            ("/health", "get", {}),
            ("/predict", "post", {"json": {"user_id": 1}}),
        ):
            response = client.request(method, path, **request)
            assert response.status_code == 503, response.text
            # The 503 is part of the contract: documented, with the body it really has.
            documented = openapi["paths"][path][method]["responses"]["503"]
            ref = documented["content"]["application/json"]["schema"]["$ref"]
            schema = openapi["components"]["schemas"][ref.rsplit("/", 1)[1]]
            assert set(schema["required"]) <= set(response.json()) <= set(schema["properties"])


def test_predictions_are_published(settings: Settings) -> None:
    _setup(settings)
    ensure_topics(settings.kafka, settings.topics)
    with TestClient(
        _app(settings, PredictionPublisher(settings.kafka, settings.topics.predictions))
    ) as client:
        sent = [
            client.post("/predict", json={"user_id": int(u), "event_id": f"ev{u}"}).json()
            for u in USERS[:5]
        ]
    consumer = KafkaConsumer(
        settings.predictions_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    raw = [message.value for message in consumer]
    records = [json.loads(v) for v in raw]
    got = {r["prediction_id"]: r for r in records}
    consumer.close()
    decoded, dead = decode_predictions(raw, partitions=[0] * len(raw), offsets=[0] * len(raw))
    assert not dead and {p.prediction_id for p in decoded} >= {p["prediction_id"] for p in sent}
    for p in sent:
        record = got[p["prediction_id"]]
        assert record["score"] == p["score"] and record["model_version"] == "v0001"
        assert record["event_id"] == f"ev{p['user_id']}" and record["features"] == p["features"]


def test_hot_swap_under_http_load(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    models, _, rows = _setup(settings, n_models=3)
    x = rows[:4].astype(np.float32)
    expected = {v: m.predict_proba(x)[:, 1] for v, m in models.items()}
    errors: list[str] = []
    versions: set[str] = set()
    stop = threading.Event()

    def client(url: str) -> None:
        with httpx.Client(base_url=url) as http:
            while not stop.is_set():
                response = http.post("/predict", json={"user_ids": USERS[:4].tolist()})
                if response.status_code != 200:
                    errors.append(response.text)
                    continue
                preds = response.json()["predictions"]
                version = {p["model_version"] for p in preds}
                if len(version) != 1:
                    errors.append(f"mixed versions {version}")
                    continue
                (v,) = version
                versions.add(v)
                if not np.allclose([p["score"] for p in preds], expected[v], atol=1e-5):
                    errors.append(f"scores do not match {v}")

    with _serve(_app(settings, interval=0.05)) as url:
        clients = [threading.Thread(target=client, args=(url,)) for _ in range(4)]
        for c in clients:
            c.start()
        registry = ModelRegistry(settings.stores.models_dir)
        try:
            for version in ["v0002", "v0003", "v0001", "v0002", "v0003"]:
                time.sleep(0.4)
                registry.promote(version)
            time.sleep(0.4)
        finally:
            stop.set()
            for c in clients:
                c.join()
    assert errors == []
    assert versions == {"v0001", "v0002", "v0003"}


def test_metrics_is_documented_as_prometheus_text(tmp_path: Path) -> None:
    """Scrapers and schema-driven clients read the media type from the schema."""
    settings = Settings(home=tmp_path)
    apply_repo(settings.stores)
    with TestClient(_app(settings)) as client:
        documented = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]["responses"]
        assert list(documented["200"]["content"]) == ["text/plain"]
        response = client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        assert "featflow_model_version_number NaN" in response.text  # no model yet


def test_every_malformed_body_is_a_documented_422(tmp_path: Path) -> None:
    """The README promises 422 with a reason for any malformed request, not FastAPI's bare 400."""
    settings = Settings(home=tmp_path)
    apply_repo(settings.stores)
    with TestClient(_app(settings)) as client:
        documented = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["responses"]
        assert "application/json" in documented["422"]["content"]
        for body, headers in (
            (b'{"user_id": 1, "event_id": "\xff"}', JSON),  # not UTF-8
            ('{"user_id": 1}'.encode("utf-16"), JSON),  # JSON must be UTF-8 (RFC 8259)
            (b"\xef\xbb\xbf" + b'{"user_id": 1}', JSON),  # nor start with a BOM
            (b"{oops", JSON),
            (b'{"user_id": NaN}', JSON),  # Python's json reads it, JSON has no NaN
            (b'{"user_id": ' + b"1" * 5000 + b"}", JSON),  # beyond int()'s digit limit
            (b'{"user_ids": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON),
            (b"", JSON),
            (b"[1]", JSON),
            (b'{"user_id": 1}', {"content-type": "text/plain"}),
        ):
            response = client.post("/predict", content=body, headers=headers)
            assert response.status_code == 422, (body, response.text)
            assert all(e["msg"] and e["type"] for e in response.json()["detail"]), response.text
        latin1 = b'{"user_id": 1, "x": "\xff"}'
        not_utf8 = client.post("/predict", content=latin1, headers=JSON)
        assert "UTF-8" in not_utf8.text


def test_whole_numbers_are_user_ids_as_json_schema_says(tmp_path: Path) -> None:
    """JSON Schema counts 7.0 as an integer, so the schema admits it: it must mean user 7,
    exactly (a float would turn 9223372036854775000.0 into another user), and a fraction,
    a string or a number past int64 must still be refused."""
    settings = Settings(home=tmp_path)
    _setup(settings)
    with TestClient(_app(settings)) as client:
        for text, user in (
            ("7.0", 7),
            ("7e3", 7000),
            ("-0.0", 0),
            ("9223372036854775000.0", 9223372036854775000),
            ("-9223372036854775808.0", -(2**63)),
        ):
            for body in (f'{{"user_id": {text}}}', f'{{"user_ids": [{text}]}}'):
                response = client.post("/predict", content=body.encode(), headers=JSON)
                assert response.status_code == 200, (body, response.text)
                answer = response.json()
                got = answer["predictions"][0] if "predictions" in answer else answer
                assert got["user_id"] == user, (body, answer)
        for text in ("7.5", '"7"', "true", "9223372036854775808.0", "1e400", "1e999999999"):
            response = client.post(
                "/predict", content=f'{{"user_id": {text}}}'.encode(), headers=JSON
            )
            assert response.status_code == 422, (text, response.text)


def test_validation_errors_do_not_echo_large_inputs(tmp_path: Path) -> None:
    """A 422 names what is wrong (loc, msg, type); it must not send a 1,001-id batch back."""
    settings = Settings(home=tmp_path)
    apply_repo(settings.stores)
    with TestClient(_app(settings)) as client:
        for bad in (
            {"user_ids": list(range(1001))},
            {"user_id": "9" * 100_000},
            {"user_id": 1, "event_id": "e" * 100_000},
            {"user_id": 1, "k" * 100_000: 1},  # the unknown key is part of loc
        ):
            response = client.post("/predict", json=bad)
            assert response.status_code == 422, response.text
            assert len(response.content) < 1000, response.text[:1000]
            for error in response.json()["detail"]:
                assert error["loc"] and error["msg"] and error["type"]
        # Values JSON cannot carry back (inf, a lone surrogate) must not break the 422 itself (500).
        for body in (b'{"user_id": 1e999}', b'{"user_id": "\\ud800"}', b'{"\\ud800": 1}'):
            response = client.post("/predict", content=body, headers=JSON)
            assert response.status_code == 422, (body, response.text)
        # A short offending value still helps the caller.
        assert client.post("/predict", json={"user_id": "7"}).json()["detail"][0]["input"] == "7"


def test_one_of_user_id_or_user_ids_is_in_the_schema(tmp_path: Path) -> None:
    """Schema-driven clients must know the rule the server applies: a body is a single
    request (``user_id``), a batch (``user_ids``, 1..1000) or a transaction (``user_id``,
    ``merchant_id``, ``amount``, ``event_time``), nothing else, never two."""
    settings = Settings(home=tmp_path)
    _setup(settings)
    with TestClient(_app(settings)) as client:
        openapi = client.get("/openapi.json").json()
        body = openapi["paths"]["/predict"]["post"]["requestBody"]
        assert body["required"] is True
        variants = body["content"]["application/json"]["schema"]["oneOf"]
        schemas = openapi["components"]["schemas"]
        single, batch, transaction = (schemas[v["$ref"].rsplit("/", 1)[1]] for v in variants)
        for schema, key in ((single, "user_id"), (batch, "user_ids")):
            assert schema["type"] == "object" and schema["additionalProperties"] is False
            assert schema["required"] == [key] and set(schema["properties"]) == {key, "event_id"}
        keys = ["user_id", "merchant_id", "amount", "event_time"]
        assert transaction["required"] == keys and transaction["additionalProperties"] is False
        assert set(transaction["properties"]) == {*keys, "event_id"}
        # a transaction needs all its keys; without a replica of the stream state it is a 503
        partial = client.post("/predict", json={"user_id": 1, "amount": 3.0})
        assert partial.status_code == 422
        assert {e["loc"][-1] for e in partial.json()["detail"]} == {"merchant_id", "event_time"}
        tx = {"user_id": 1, "merchant_id": 2, "amount": 3.0, "event_time": 1_767_225_600_000}
        refused = client.post("/predict", json=tx)
        assert refused.status_code == 503 and "events topic" in refused.json()["detail"]

    def stopped(*_: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise RuntimeError("the feature replica stopped: KeyError: partition 4")

    # a replica that stopped following the topic: a 503 saying why, not stale features
    with TestClient(_app(settings, transactions=stopped)) as client:
        refused = client.post("/predict", json=tx)
        assert refused.status_code == 503, refused.text
        assert "replica stopped" in refused.json()["detail"]
        assert (
            batch["properties"]["user_ids"]["minItems"],
            batch["properties"]["user_ids"]["maxItems"],
        ) == (1, 1000)

        # The wire format is unchanged: one object for user_id, {"predictions": [...]} for ids.
        one = client.post("/predict", json={"user_id": int(USERS[0]), "event_id": "e1"}).json()
        assert one["user_id"] == USERS[0] and "predictions" not in one
        many = client.post("/predict", json={"user_ids": [1, 2], "event_id": None}).json()
        assert [p["user_id"] for p in many["predictions"]] == [1, 2]
        # Each variant forbids the other's key, even as null.
        for bad in ({"user_id": None, "user_ids": [1]}, {"user_id": 1, "user_ids": None}):
            response = client.post("/predict", json=bad)
            assert response.status_code == 422, response.text
        both = client.post("/predict", json={"user_id": 1, "user_ids": [2]}).json()["detail"]
        assert "exactly one of user_id or user_ids" in both[0]["msg"]


def _admits(bounds: dict[str, float], n: int) -> bool:
    """Whether an integer schema's bounds admit ``n`` (Python compares int and float exactly)."""
    return bounds.get("minimum", -math.inf) <= n <= bounds.get("maximum", math.inf) and bounds.get(
        "exclusiveMinimum", -math.inf
    ) < n < bounds.get("exclusiveMaximum", math.inf)


def test_documented_user_id_range_is_exactly_int64(tmp_path: Path) -> None:
    """FastAPI writes numeric bounds as floats: ``le=2**63 - 1`` came out as 2.0**63, so the
    schema admitted ids the server refused. The edges must agree on both sides."""
    settings = Settings(home=tmp_path)
    _setup(settings)
    with TestClient(_app(settings)) as client:
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
        single = schemas["SinglePredictRequest"]["properties"]["user_id"]
        batch = schemas["BatchPredictRequest"]["properties"]["user_ids"]["items"]
        for n, valid in (
            (-(2**63), True),
            (2**63 - 1, True),
            (2**63, False),
            (-(2**63) - 1, False),
        ):
            assert _admits(single, n) is valid and _admits(batch, n) is valid, n
            status = client.post("/predict", json={"user_id": n}).status_code
            assert status == (200 if valid else 422), n


def test_past_capacity_predict_sheds_with_503_and_retry_after(tmp_path: Path) -> None:
    """64 requests at once against a limit of 2 in flight: the excess is answered 503 with
    Retry-After at once (counted on /metrics), the rest 200; nothing else, nothing hangs."""
    import asyncio

    settings = Settings(home=tmp_path)
    _setup(settings)

    async def burst(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            body = {"user_id": int(USERS[0])}
            return await asyncio.gather(*(client.post("/predict", json=body) for _ in range(64)))

    with _serve(_app(settings, max_inflight=2)) as url:
        answers = asyncio.run(burst(url))
        metrics = httpx.get(f"{url}/metrics").text
    codes = [a.status_code for a in answers]
    assert set(codes) == {200, 503}, codes
    shed = [a for a in answers if a.status_code == 503]
    assert all(a.headers["retry-after"] == "1" for a in shed)
    assert all(a.json()["detail"].startswith("overloaded: 2 requests in flight") for a in shed)
    assert f"featflow_predict_shed_total {float(len(shed))}" in metrics
