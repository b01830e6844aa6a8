"""``featflow serve``: HTTP predictions from online features and the champion model.

``POST /predict`` reads the users' features from the Feast online store, and the
features of the merchant each user's newest event was at (``features.scoring_row``),
scores them with the champion ONNX model and publishes each prediction (id, user,
event id, score, model version, feature values, time) to the ``predictions``
topic so outcomes can be joined later. A background thread watches the
registry and hot-swaps the champion.

Given a transaction instead (``user_id``, ``merchant_id``, ``amount``, ``event_time``), it
scores the transaction before it is accepted: the features are the ones the stream will
compute for it as the user's next event, from a ``transactions`` callable the assembling
layer passes in (``streams.replica.FeatureReplica.peek``), with its merchant's features as
the online store holds them now, and nothing is written.
"""

from __future__ import annotations

import gc
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, BeforeValidator, Discriminator, Field, Tag
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from features.online import OnlineStore, OnlineUnavailable
from features.scoring_row import (
    MERCHANT_DEFAULTS,
    SCORING_FEATURES,
    MerchantReader,
    merchants_of,
    scoring_rows,
)
from features.spec import DEFAULT_FEATURES, DEFAULT_LATENESS_MS
from inference.auth import OPEN, Tokens
from inference.predictor import Predictor
from inference.publisher import PredictionPublisher
from infra.config import Stores
from infra.events import MIN_EVENT_TIME_MS, EventRules, amount_rule, value_faults

#: (user ids, merchants, amounts, event times ms) -> (features, late, known): each
#: transaction's features as its user's next event, without writing it
Transactions = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]
]

MAX_BATCH = 1000
#: Latency buckets from 50 us to 1 s (seconds).
LATENCY_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)


def _whole(value: object) -> object:
    """A JSON number with a zero fraction (``7.0``, ``7e3``) as the integer it spells.

    JSON Schema counts ``7.0`` as an integer, so the schema admits it; bodies parse
    fractions as ``Decimal`` (exact: ``9223372036854775000.0`` is not rounded to a float),
    and anything else is left to strict ``int`` validation to refuse.
    """
    whole = isinstance(value, Decimal) and value.is_finite() and value.copy_abs() <= 2**63
    if whole and value == value.to_integral_value():
        return int(value)
    return value


#: ``lt=2**63``, not ``le=2**63 - 1``: FastAPI's OpenAPI model holds bounds as floats, and
#: 2**63 - 1 is not a float (it rounds up to 2.0**63, admitting ids the server refuses);
#: +-2**63 are exact, and ``_exact_integer_bounds`` writes them back as JSON integers.
Int64 = Annotated[int, Field(ge=-(2**63), lt=2**63, strict=True), BeforeValidator(_whole)]

_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _exact_integer_bounds(node: object) -> None:
    """Write an integer property's whole-number float bounds as integers, in place.

    A client generating ids from ``9.223372036854776e+18`` does float arithmetic near 2**63
    and lands on ids past it; ``9223372036854775808`` leaves no room for that.
    """
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in _BOUNDS:
                value = node.get(key)
                if isinstance(value, float) and value.is_integer():
                    node[key] = int(value)
        for child in node.values():
            _exact_integer_bounds(child)
    elif isinstance(node, list):
        for child in node:
            _exact_integer_bounds(child)


EventId = Annotated[str | None, Field(min_length=1, max_length=256)]


class SinglePredictRequest(BaseModel):
    """One user, answered with one Prediction; event_id ties it to an event."""

    model_config = {"extra": "forbid"}

    user_id: Int64
    event_id: EventId = None


class BatchPredictRequest(BaseModel):
    """1 to 1000 users, answered with a BatchPrediction; event_id ties them to an event."""

    model_config = {"extra": "forbid"}

    user_ids: list[Int64] = Field(min_length=1, max_length=MAX_BATCH)
    event_id: EventId = None


class TransactionPredictRequest(BaseModel):
    """A transaction not yet accepted, scored with the features the stream will compute for
    it as its user's next event; nothing is written."""

    model_config = {"extra": "forbid"}

    user_id: Int64
    merchant_id: Int64
    # the stream's bounds (EventRules' default max_amount; a deployment may set it lower)
    amount: float = Field(strict=True, allow_inf_nan=False, ge=0, le=EventRules().max_amount)
    # epoch milliseconds, from 2000-01-01 (an event further in the future than the stream
    # allows, or too late for its user, is a 409: it conflicts with the stream's state)
    event_time: Annotated[
        int, Field(ge=MIN_EVENT_TIME_MS, lt=2**63, strict=True), BeforeValidator(_whole)
    ]
    event_id: EventId = None


_TRANSACTION_KEYS = frozenset({"merchant_id", "amount", "event_time"})


def _request_kind(body: Any) -> str | None:
    """The variant a body means, read from its keys, so pydantic validates it against that one
    alone (one error list, not all variants'); ``None`` (neither or both of user_id and
    user_ids) is a 422. A transaction's own keys make it a transaction."""
    if not isinstance(body, dict):
        return "single"  # reported as "should be a valid dictionary"
    single, batch = "user_id" in body, "user_ids" in body
    if single == batch:
        return None
    if single and _TRANSACTION_KEYS & body.keys():
        return "transaction"
    return "single" if single else "batch"


#: Exactly one of ``user_id`` or ``user_ids``: rendered as ``oneOf`` in the OpenAPI schema (each
#: variant forbids the other's key), so schema-driven clients know the rule the server applies.
PredictRequest = Annotated[
    Annotated[SinglePredictRequest, Tag("single")]
    | Annotated[BatchPredictRequest, Tag("batch")]
    | Annotated[TransactionPredictRequest, Tag("transaction")],
    Discriminator(
        _request_kind,
        custom_error_type="one_of",
        custom_error_message="give exactly one of user_id or user_ids",
    ),
]


class Prediction(BaseModel):
    """The response of a single-user ``POST /predict``."""

    prediction_id: str
    user_id: int
    score: float
    model_version: str
    features: dict[str, float]
    features_found: bool


class BatchPrediction(BaseModel):
    """The response of a batch ``POST /predict``: one prediction per requested user."""

    predictions: list[Prediction]


class Health(BaseModel):
    """The body of /health, 200 (ready) and 503 (not ready) alike."""

    ready: bool
    model_version: str | None
    online_store: Literal["ok", "unreachable"]
    online_store_error: str | None = None  # why it is unreachable
    last_model_error: str | None
    # events not yet in the state transactions are scored on (-1: unknown; None: no
    # transaction scoring here)
    transactions_lag: int | None = None


class FieldError(BaseModel):
    """Why a field of a request was refused (FastAPI's validation error item)."""

    type: str
    loc: list[str | int]
    msg: str
    input: Any = None


class Refused(BaseModel):
    """A transaction the stream would refuse now, and why."""

    detail: list[FieldError]


class Unavailable(BaseModel):
    """Why a request cannot be served right now."""

    detail: str


class PromoteRequest(BaseModel):
    """The version to make champion."""

    model_config = {"extra": "forbid"}
    version: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^v[0-9]{4,}$")]


class Champion(BaseModel):
    """The version serving now."""

    champion: str


DEFAULT_MAX_INFLIGHT = 64  # /predict requests in flight before the next is shed (503)
_RETRY_AFTER = {"Retry-After": "1"}  # seconds: a store outage is retried by the client
_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Unavailable, "description": "A bearer token is needed (or is unknown)."},
    403: {"model": Unavailable, "description": "The token is not allowed this."},
}


@dataclass
class _Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    found: Counter
    looked_up: Counter
    model: Gauge
    shed: Counter
    version_number: Gauge


def _metrics() -> _Metrics:
    reg = CollectorRegistry(auto_describe=True)
    return _Metrics(
        reg,
        Counter("featflow_http_requests", "HTTP requests.", ["path", "status"], registry=reg),
        Histogram(
            "featflow_predict_latency_seconds",
            "Time to read features and score, per request.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        ),
        Counter("featflow_features_found", "Users whose features were found.", registry=reg),
        Counter("featflow_features_requested", "Users looked up.", registry=reg),
        Gauge("featflow_model_info", "Serving model version (value 1).", ["version"], registry=reg),
        Counter(
            "featflow_predict_shed",
            "Requests to /predict answered 503 at once: too many in flight.",
            registry=reg,
        ),
        Gauge(
            "featflow_model_version_number",
            "Serving model version as a number (v0007: 7; NaN: none), to plot over time.",
            registry=reg,
        ),
    )


def _version_number(version: str) -> float:
    """``v0007`` as 7.0 (the registry names versions ``v`` and 4 or more digits).

    >>> _version_number("v0012")
    12.0
    """
    digits = version.removeprefix("v")
    return float(digits) if digits.isdigit() else math.nan


_encoder = msgspec.json.Encoder()
_PATHS = frozenset({"/predict", "/health", "/metrics", "/docs", "/openapi.json"})


class _CountRequests:
    """Counts responses by path and status (pure ASGI: Starlette's ``BaseHTTPMiddleware``
    costs a task and a stream per request). Unknown paths share one label value, so a
    scanner cannot blow up the metric's cardinality."""

    def __init__(self, app: ASGIApp, counter: Counter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in _PATHS else "other"

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.counter.labels(path, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


class _ShedLoad:
    """Past ``limit`` requests to /predict in flight, answer 503 with ``Retry-After`` at
    once rather than queue without bound: under overload every queued request would wait
    longer than its caller, so the ones that can be answered in time are answered and the
    rest are told to come back (what a load balancer or client retry policy acts on).

    In flight means entered and not yet answered: the scoring itself holds the event loop,
    so requests wait between reading their body and their turn, and that wait is this
    count. Counted in ``featflow_predict_shed_total``."""

    def __init__(self, app: ASGIApp, limit: int, shed: Counter) -> None:
        self.app = app
        self.limit = limit
        self.shed = shed
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            self.shed.inc()
            body = _encoder.encode(
                {"detail": f"overloaded: {self.inflight} requests in flight; retry after 1 s"}
            )
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


def _refuse(status: int, field: str, value: object, why: str) -> None:
    """A transaction the stream would dead-letter, shaped like a validation error: 422 for
    what the schema could say, 409 for what conflicts with the stream's state or clock."""
    raise HTTPException(
        status, [{"type": "value_error", "loc": ["body", field], "msg": why, "input": value}]
    )


class _NotJson(ValueError):
    """A body Python's ``json`` would read but JSON (RFC 8259) does not allow."""


def _reject_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON")


_json_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=Decimal)


class _Utf8JsonRequest(Request):
    """JSON bodies read strictly: UTF-8 only (RFC 8259; Starlette's ``json.loads(bytes)`` guesses
    UTF-16/32 too), no NaN/Infinity. FastAPI answers a ``JSONDecodeError`` with its documented
    422 ``json_invalid`` and the reason, but any other parse error with an undocumented 400."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = _json_decoder.decode(body.decode())
            except json.JSONDecodeError:
                raise
            except UnicodeDecodeError as exc:
                raise _invalid(f"not UTF-8: {exc.reason} at byte {exc.start}", exc.start) from exc
            except _NotJson as exc:
                raise _invalid(str(exc), 0) from exc
            except ValueError as exc:  # int() refuses more than sys.get_int_max_str_digits()
                raise _invalid("integer too long", 0) from exc
            except RecursionError as exc:
                raise _invalid("nested too deep", 0) from exc
        return self._json


def _invalid(reason: str, pos: int) -> json.JSONDecodeError:
    """A decode error FastAPI reports as 422 ``json_invalid`` with ``reason`` in ``ctx``."""
    return json.JSONDecodeError(reason, "", pos)


class _Utf8JsonRoute(APIRoute):
    """Routes whose handlers see :class:`_Utf8JsonRequest` (FastAPI's documented hook)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def utf8_json_handler(request: Request) -> Response:
            return await handler(_Utf8JsonRequest(request.scope, request.receive))

        return utf8_json_handler


#: The longest offending value (as text) a 422 repeats back; longer ones are left out.
ECHO_MAX = 64


def _echoable(value: object) -> bool:
    """Short scalars only: finite (JSON has no inf/NaN), at most ``ECHO_MAX`` characters."""
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or (isinstance(value, bool | int | str) and len(str(value)) <= ECHO_MAX)


def _brief(error: Mapping[str, Any]) -> dict[str, Any]:
    """One validation error as ``loc``, ``msg``, ``type``; ``input`` and ``ctx`` only when short.

    Pydantic's error carries the whole offending value (a 1,001-id list, a 100 kB string) and
    FastAPI would send it back; a key name in ``loc`` is cut to ``ECHO_MAX`` characters.
    """
    loc = [
        p if not isinstance(p, str) or len(p) <= ECHO_MAX else p[:ECHO_MAX] + "..."
        for p in error["loc"]
    ]
    brief: dict[str, Any] = {"type": error["type"], "loc": loc, "msg": error["msg"]}
    if _echoable(value := error.get("input")):
        brief["input"] = value
    ctx = error.get("ctx")
    if isinstance(ctx, Mapping) and ctx and all(_echoable(v) for v in ctx.values()):
        brief["ctx"] = dict(ctx)
    return brief


async def _validation_failed(_: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422 body (``HTTPValidationError``) without the echoed inputs. ``json.dumps``
    escapes non-ASCII, so a lone surrogate (``"\\ud800"``) cannot break the error itself."""
    detail = [_brief(error) for error in exc.errors()]
    return Response(json.dumps({"detail": detail}), 422, media_type="application/json")


def create_app(
    predictor: Predictor,
    reader: OnlineStore,
    merchants: MerchantReader,
    publisher: PredictionPublisher | None,
    *,
    refresh_interval_s: float = 1.0,
    transactions: Transactions | None = None,
    transactions_lag: Callable[[], int] | None = None,
    rules: EventRules = EventRules(),
    lateness_ms: int = DEFAULT_LATENESS_MS,
    tokens: Tokens = OPEN,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
) -> FastAPI:
    """The FastAPI app over a predictor, the user and merchant feature readers and an
    optional publisher; the registry is re-read every ``refresh_interval_s``; ``tokens``
    protect its scopes (``inference.auth``). Transactions
    are scored through ``transactions`` (``transactions_lag``: how far behind the stream
    that is) and judged by the stream's ``rules`` and ``lateness_ms``."""
    metrics = _metrics()
    stop = threading.Event()

    def watch_registry() -> None:
        while not stop.wait(refresh_interval_s):
            predictor.refresh()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        predictor.refresh()
        watcher = threading.Thread(target=watch_registry, name="champion-watch", daemon=True)
        watcher.start()
        if publisher is not None:
            publisher.start()
        # Everything imported and loaded so far (Feast, FastAPI, protobuf: ~190k objects) lives
        # as long as the process; a full collection walks it in ~130 ms, a stall every few
        # thousand requests. Freezing moves it out of the collector's reach.
        gc.collect()
        gc.freeze()
        yield
        stop.set()
        if publisher is not None:
            publisher.close()

    app = FastAPI(
        title="featflow",
        version="0.1.0",
        lifespan=lifespan,
        exception_handlers={RequestValidationError: _validation_failed},
    )
    app.router.route_class = _Utf8JsonRoute

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _exact_integer_bounds(FastAPI.openapi(app))  # FastAPI caches what it returns
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(_ShedLoad, limit=max_inflight, shed=metrics.shed)
    app.add_middleware(_CountRequests, counter=metrics.requests)  # outermost: counts the shed

    @app.post(
        "/predict",
        response_model=Prediction | BatchPrediction,
        dependencies=[Depends(tokens.guard("predict"))],
        responses={
            **(_AUTH_RESPONSES if tokens.protects("predict") else {}),
            409: {
                "model": Refused,
                "description": "A transaction the stream would refuse now: late for its user "
                "(behind the user's newest event by more than the allowed lateness) or too "
                "far in the future.",
            },
            503: {
                "model": Unavailable,
                "description": "No model is loaded yet, or the online store does not answer "
                "(with Retry-After).",
            },
        },
    )
    async def predict(body: PredictRequest) -> Any:
        """Score users with the champion model; unknown users get default features."""
        start = time.perf_counter()
        single = not isinstance(body, BatchPredictRequest)
        users = [body.user_id] if single else body.user_ids
        try:
            if isinstance(body, TransactionPredictRequest):
                features, found = _transaction_features(body)
            else:
                features, found = reader.read(users)
            # the merchant each row names (this transaction's, or the user's newest event's)
            merchant_rows = np.tile(MERCHANT_DEFAULTS, (len(users), 1))
            if found.any():
                merchant_rows[found] = merchants.read(merchants_of(features[found]))
        except OnlineUnavailable as exc:  # within the store's timeout: never a hung request
            raise HTTPException(503, str(exc), headers=_RETRY_AFTER) from exc
        features = scoring_rows(features, merchant_rows)
        try:
            version, scores = predictor.score(features)
        except RuntimeError as exc:
            raise HTTPException(503, "no model is loaded yet") from exc
        metrics.latency.observe(time.perf_counter() - start)
        metrics.looked_up.inc(len(users))
        metrics.found.inc(int(found.sum()))
        now_ms = int(time.time() * 1000)
        out = []
        for i, user in enumerate(users):
            values = dict(zip(SCORING_FEATURES, features[i].tolist(), strict=True))
            prediction = {
                "prediction_id": uuid.uuid4().hex,
                "user_id": user,
                "score": float(scores[i]),
                "model_version": version,
                "features": values,
                "features_found": bool(found[i]),
            }
            out.append(prediction)
            if publisher is not None:
                record = {**prediction, "event_id": body.event_id, "prediction_time": now_ms}
                publisher.offer(str(user).encode(), _encoder.encode(record))
        # Built by hand and encoded by msgspec: the response model documents the shape (OpenAPI)
        # without FastAPI re-validating what this function just built.
        payload = out[0] if single else {"predictions": out}
        return Response(_encoder.encode(payload), media_type="application/json")

    def _transaction_features(body: TransactionPredictRequest) -> tuple[np.ndarray, np.ndarray]:
        """The transaction's features as its user's next event, or an HTTP error saying why
        the stream would not accept it."""
        if transactions is None:
            raise HTTPException(
                503, "scoring a transaction needs the events topic: serve with a broker"
            )
        amount = np.array([body.amount])
        times = np.array([body.event_time], dtype=np.int64)
        now_ms = int(time.time() * 1000)
        bad_amount, too_old, in_future = value_faults(amount, times, now_ms=now_ms, rules=rules)
        if bad_amount[0]:
            _refuse(422, "amount", body.amount, f"out_of_range: {amount_rule(rules)}")
        if too_old[0]:
            _refuse(422, "event_time", body.event_time, "too_old: event_time is before 2000")
        if in_future[0]:
            ahead = f"{rules.max_future_skew_ms / 1000:g} s"
            _refuse(409, "event_time", body.event_time, f"in_future: more than {ahead} ahead")
        try:
            features, late, known = transactions(
                np.array([body.user_id], dtype=np.int64),
                np.array([body.merchant_id], dtype=np.int64),
                amount,
                times,
            )
        except RuntimeError as exc:  # the state it scores on cannot be trusted now
            raise HTTPException(503, f"transaction scoring unavailable: {exc}") from exc
        if late[0]:
            _refuse(
                409,
                "event_time",
                body.event_time,
                f"late: more than {lateness_ms / 1000:g} s behind the user's newest event "
                "(the stream would dead-letter it)",
            )
        return features, known

    @app.get(
        "/health",
        response_model=Health,
        responses={
            503: {
                "model": Health,
                "description": "Not ready: no model loaded or the online store unreachable.",
            }
        },
    )
    async def health(response: Response) -> dict[str, Any]:
        """Ready only when a model is loaded and the online store answers."""
        model = predictor.active
        store_error = reader.unavailable()
        ready = model is not None and store_error is None
        response.status_code = 200 if ready else 503
        return {
            "ready": ready,
            "model_version": model.version if model else None,
            "online_store": "ok" if store_error is None else "unreachable",
            "online_store_error": store_error,
            "last_model_error": predictor.last_error,
            "transactions_lag": None if transactions_lag is None else transactions_lag(),
        }

    # Prometheus' text exposition format, documented as such (not FastAPI's default JSON).
    if tokens.protects("admin"):  # else no admin route exists at all
        _admin_routes(app, predictor, tokens)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        dependencies=[Depends(tokens.guard("metrics"))],
        responses=_AUTH_RESPONSES if tokens.protects("metrics") else None,
    )
    async def prometheus() -> Response:
        """Request counts, predict latency, model version and feature hit counts."""
        model = predictor.active
        metrics.model.clear()
        metrics.version_number.set(math.nan if model is None else _version_number(model.version))
        if model is not None:
            metrics.model.labels(model.version).set(1)
        text = generate_latest(metrics.registry).decode()
        if publisher is not None:
            text += (
                "# HELP featflow_predictions_dropped_total Predictions not published: queue full.\n"
                "# TYPE featflow_predictions_dropped_total counter\n"
                f"featflow_predictions_dropped_total {publisher.dropped}\n"
                "# HELP featflow_predictions_published_total Predictions acknowledged by Kafka.\n"
                "# TYPE featflow_predictions_published_total counter\n"
                f"featflow_predictions_published_total {publisher.published}\n"
            )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return app


def _admin_routes(app: FastAPI, predictor: Predictor, tokens: Tokens) -> None:
    """Promote and rollback over HTTP, behind the admin token (recorded in the model history
    as the CLI's are); the new champion serves from the next request."""
    from inference import by_hand
    from inference.exceptions import ModelRejected, UnknownVersion

    guarded = [Depends(tokens.guard("admin"))]
    refused = {
        **_AUTH_RESPONSES,
        409: {"model": Unavailable, "description": "Refused: unknown, tampered or unfit."},
    }

    @app.post("/admin/promote", response_model=Champion, dependencies=guarded, responses=refused)
    def promote(body: PromoteRequest) -> dict[str, str]:
        """Make a version the champion (its file and inputs are checked first)."""
        try:
            version = by_hand.promote(predictor.registry, body.version, "HTTP /admin/promote")
        except (ModelRejected, UnknownVersion) as exc:
            raise HTTPException(409, str(exc).strip("'\"")) from exc
        predictor.refresh()
        return {"champion": version}

    @app.post("/admin/rollback", response_model=Champion, dependencies=guarded, responses=refused)
    def rollback() -> dict[str, str]:
        """Return to the previous champion."""
        try:
            version = by_hand.rollback(predictor.registry, "HTTP /admin/rollback")
        except (ModelRejected, UnknownVersion) as exc:
            raise HTTPException(409, str(exc).strip("'\"")) from exc
        predictor.refresh()
        return {"champion": version}


def build_app(
    stores: Stores,
    publisher: PredictionPublisher | None = None,
    *,
    transactions: Transactions | None = None,
    transactions_lag: Callable[[], int] | None = None,
    rules: EventRules = EventRules(),
    lateness_ms: int = DEFAULT_LATENESS_MS,
    tokens: Tokens = OPEN,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
) -> FastAPI:
    """The service over ``stores``: the registry's champion scoring features read from the
    configured online store (or, for a transaction, from ``transactions``); predictions go
    to ``publisher`` if given."""
    from features.feast_repo import apply_repo
    from features.online import open_online
    from inference.registry import ModelRegistry

    store = apply_repo(stores)
    predictor = Predictor(ModelRegistry(stores.models_dir), SCORING_FEATURES)
    reader = open_online(store, DEFAULT_FEATURES)
    return create_app(
        predictor, reader, MerchantReader(store), publisher, transactions=transactions,
        transactions_lag=transactions_lag, rules=rules, lateness_ms=lateness_ms, tokens=tokens,
        max_inflight=max_inflight,
    )  # fmt: skip
