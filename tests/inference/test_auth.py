"""Bearer tokens on the HTTP service: 401 without a known token, 403 with another scope's,
admin routes only with the admin token set, and the tokens never in a log line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from featflow.processes import settings_env
from featflow.settings import Settings
from features.feast_repo import apply_repo
from features.online import open_online
from features.scoring_row import SCORING_FEATURES, MerchantReader
from features.spec import DEFAULT_FEATURES
from inference.auth import Tokens
from inference.model_events import ModelEvents
from inference.predictor import Predictor
from inference.registry import ModelRegistry
from inference.service import create_app
from infra.process import free_port
from tests.inference.test_service import USERS, _setup

PREDICT, METRICS, ADMIN = "p" * 20, "m" * 20, "a" * 24


def _client(settings: Settings, tokens: Tokens) -> TestClient:
    store = apply_repo(settings.stores)
    predictor = Predictor(ModelRegistry(settings.stores.models_dir), SCORING_FEATURES)
    reader = open_online(store, DEFAULT_FEATURES)
    app = create_app(predictor, reader, MerchantReader(store), None, tokens=tokens)
    return TestClient(app)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_each_scope_wants_its_own_token(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    _setup(settings, n_models=2)
    tokens = Tokens(predict=PREDICT, metrics=METRICS, admin=ADMIN)
    body = {"user_id": int(USERS[0])}
    with _client(settings, tokens) as client:
        for path, method, mine, kwargs in (
            ("/predict", client.post, PREDICT, {"json": body}),
            ("/metrics", client.get, METRICS, {}),
            ("/admin/rollback", client.post, ADMIN, {}),
        ):
            none = method(path, **kwargs)
            assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer")
            basic = method(path, headers={"Authorization": f"Basic {mine}"}, **kwargs)
            assert basic.status_code == 401
            unknown = method(path, headers=_bearer("x" * 20), **kwargs)
            assert unknown.status_code == 401 and "unknown" in unknown.json()["detail"]
            prefix = method(path, headers=_bearer(mine[:-1]), **kwargs)  # almost right
            assert prefix.status_code == 401
            for other in {PREDICT, METRICS, ADMIN} - {mine}:
                wrong = method(path, headers=_bearer(other), **kwargs)
                assert wrong.status_code == 403, (path, wrong.text)
            for response in (none, basic, unknown, prefix):
                assert mine not in response.text
        assert client.post("/predict", json=body, headers=_bearer(PREDICT)).status_code == 200
        assert client.get("/metrics", headers=_bearer(METRICS)).status_code == 200
        assert client.get("/health").status_code == 200  # probes need no token

        # admin: promote and roll back, each recorded, only with the admin token
        registry = ModelRegistry(settings.stores.models_dir)
        assert registry.champion_version() == "v0001"
        promoted = client.post("/admin/promote", json={"version": "v0002"}, headers=_bearer(ADMIN))
        assert promoted.status_code == 200 and promoted.json() == {"champion": "v0002"}
        assert registry.champion_version() == "v0002"
        scored = client.post("/predict", json=body, headers=_bearer(PREDICT)).json()
        assert scored["model_version"] == "v0002"  # serving at once
        missing = client.post("/admin/promote", json={"version": "v0099"}, headers=_bearer(ADMIN))
        assert missing.status_code == 409
        back = client.post("/admin/rollback", headers=_bearer(ADMIN))
        assert back.status_code == 200 and back.json() == {"champion": "v0001"}
        history = ModelEvents(settings.stores.models_dir).rows()
        assert [e["kind"] for e in history][-2:] == ["promoted", "rolled_back"]


def test_admin_routes_exist_only_with_the_admin_token(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    _setup(settings, n_models=2)
    for tokens in (Tokens(), Tokens(predict=PREDICT, metrics=METRICS)):
        with _client(settings, tokens) as client:
            for token in (None, PREDICT, METRICS, ADMIN):
                headers = _bearer(token) if token else {}
                response = client.post("/admin/rollback", headers=headers)
                assert response.status_code in (404, 405), (tokens, token, response.text)
            paths = client.get("/openapi.json").json()["paths"]
            assert not any(p.startswith("/admin") for p in paths)
    # and with no token at all, predict and metrics are open, as before
    with _client(settings, Tokens()) as client:
        assert client.post("/predict", json={"user_id": int(USERS[0])}).status_code == 200
        assert client.get("/metrics").status_code == 200


def test_tokens_are_checked_when_configured(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        Tokens(predict="short")
    with pytest.raises(ValueError, match="whitespace"):
        Tokens(admin=" " + "a" * 20)
    secret = tmp_path / "admin.token"
    secret.write_text(ADMIN + "\n")
    settings = Settings(home=tmp_path, admin_token_file=secret, predict_token=PREDICT)
    assert settings.tokens == Tokens(predict=PREDICT, admin=ADMIN)
    assert PREDICT not in repr(settings) and ADMIN not in repr(settings.tokens)
    both = Settings(home=tmp_path, admin_token_file=secret, admin_token=ADMIN + "x")
    with pytest.raises(ValueError, match="not both"):
        _ = both.tokens
    # the same secret from both (featflow exports a file's secret where Feast reads it)
    same = Settings(home=tmp_path, admin_token_file=secret, admin_token=ADMIN)
    assert same.tokens.admin == ADMIN


def test_serve_never_logs_a_token(tmp_path: Path) -> None:
    """``featflow serve`` as a process with tokens from a file and from the environment,
    asked with right and wrong tokens: none appears in what it prints."""
    settings = Settings(home=tmp_path / "home")
    _setup(settings)
    secret = tmp_path / "metrics.token"
    secret.write_text(METRICS)
    port = free_port()
    env = {
        **settings_env(settings),
        "FEATFLOW_PREDICT_TOKEN": PREDICT,
        "FEATFLOW_METRICS_TOKEN_FILE": str(secret),
        "FEATFLOW_ADMIN_TOKEN": ADMIN,
        "FEATFLOW_LOGLEVEL": "info",
    }
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "featflow.cli", "serve", "--no-publish", "--port", str(port)],
            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while "serving on" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        body = json.dumps({"user_id": int(USERS[0])}).encode()
        for token, want in ((PREDICT, 200), (METRICS, 403), (ADMIN + "x", 401)):
            request = urllib.request.Request(
                f"{url}/predict", body, {**_bearer(token), "Content-Type": "application/json"}
            )
            try:
                status = urllib.request.urlopen(request, timeout=10).status
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status == want
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text()
    assert "bearer tokens required for: predict, metrics, admin" in text
    for token in (PREDICT, METRICS, ADMIN):
        assert token not in text
