"""Every HTTP endpoint fuzzed from the live server's own OpenAPI schema by schemathesis,
with all its checks: no 5xx, status codes, content types and response bodies as the schema
promises, valid data accepted and invalid data refused with a 4xx that says why.

The server runs as ``featflow serve`` does with every scope protected (so the admin routes
exist): each case carries its scope's token, and the admin cases promote and roll back the
registry's models in whatever order the fuzzer picks.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from featflow.settings import Settings
from features.spec import DEFAULT_FEATURES
from features.state import WindowState
from inference.auth import Tokens
from tests.inference.test_service import USERS, _app, _serve, _setup, _state_peek

CASES = 10_000  # per operation (those without parameters run out of distinct cases sooner)
TOKENS = Tokens(predict="p" * 20, metrics="m" * 20, admin="a" * 24)


@pytest.fixture(scope="module")
def live_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    """The live service's own /openapi.json, with models so that /predict can answer 200 and
    the admin routes have something to promote and roll back."""
    settings = Settings(home=tmp_path_factory.mktemp("schemathesis"))
    _setup(settings, n_models=3)
    state = WindowState(DEFAULT_FEATURES)
    state.update(USERS, np.full(len(USERS), 1_767_225_600_000), np.full(len(USERS), 5.0), USERS)
    with _serve(_app(settings, transactions=_state_peek(state), tokens=TOKENS)) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


live = schemathesis.pytest.from_fixture("live_schema")


@pytest.fixture
def _schemathesis_node_id(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy schemas read ``node._nodeid``, which pytest 9.2 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def _token(path: str) -> str:
    scope = "admin" if path.startswith("/admin") else path.strip("/")
    token = getattr(TOKENS, scope, None)
    return "" if token is None else token


@pytest.mark.usefixtures("_schemathesis_node_id")
@live.parametrize()
@hypothesis_settings(
    max_examples=CASES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
def test_every_endpoint_conforms_to_its_schema(case: schemathesis.Case) -> None:
    token = _token(case.path)
    case.call_and_validate(headers={"Authorization": f"Bearer {token}"} if token else None)
