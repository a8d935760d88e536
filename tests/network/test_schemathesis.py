"""Property-based checks of the whole OpenAPI surface with schemathesis (bounded examples and time).

Two views of the same API: as an anonymous client (every /v1 call must be 401) and as member `b`,
whose requests a test-only wrapper signs after schemathesis has generated them, so generated
paths, queries and bodies reach the routes. Either way: no 5xx, and no refused request changes
the coordinator's state, events, receipts or blobs.
"""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from confide.platform.hub import CoordinatorHub
from confide.platform.messages import KeySetupRequest
from confide.platform.service.app import create_app
from confide.platform.service.signing import sign_request

from .conftest import Keys, make_federation, snapshot


class SignAs:
    """ASGI wrapper that signs each incoming request as `identity` (what a real agent would send)."""

    def __init__(self, app, identity, federation_id: str) -> None:
        self.app, self.identity, self.federation_id = app, identity, federation_id

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        target = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        signed = sign_request(self.identity, self.federation_id, scope["method"], target, body)
        headers = [(k, v) for k, v in scope["headers"] if not k.lower().startswith(b"x-confide-")]
        headers += [(k.lower().encode(), v.encode()) for k, v in signed.items()]
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app({**scope, "headers": headers}, replay, send)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("schemathesis")
    federation = make_federation(root, rounds=3)
    hub = CoordinatorHub(federation.policy, root / "coordinator", max_upload_bytes=200_000)
    keys = Keys(federation)
    hub.publish_keys("a", KeySetupRequest(**keys.request()))
    hub.tick(time.time())  # round 1 opens
    hub.identities = federation.identities
    yield hub
    hub.close()


@pytest.fixture(scope="module")
def anonymous_api(hub):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(hub, tick_s=0.05, max_wait_s=0.2))


@pytest.fixture(scope="module")
def member_api(hub):
    app = SignAs(create_app(hub, tick_s=0.05, max_wait_s=0.2), hub.identities["b"], "net-test")
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def check(case, hub) -> None:
    before = snapshot(hub)
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        assert snapshot(hub) == before, f"{case.method} {case.path} -> {response.status_code} changed the state"
    return response


BOUNDED = settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def explore(schema, hub, expect_401: bool) -> int:
    """Run every operation's generated cases through `check`; return how many operations ran.

    (Driven through `as_strategy` rather than schemathesis' pytest plugin, whose lazy fixtures do not
    work with pytest 9.)
    """
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:

        @BOUNDED
        @given(case=operation.as_strategy())
        def run(case):
            response = check(case, hub)
            if expect_401 and case.path.startswith("/v1/"):
                assert response.status_code == 401

        run()
    return len(operations)


def test_anonymous_requests_get_401_no_5xx_and_change_nothing(anonymous_api, hub):
    assert explore(anonymous_api, hub, expect_401=True) == 14


def test_signed_member_requests_get_no_5xx_and_refusals_change_nothing(member_api, hub):
    assert explore(member_api, hub, expect_401=False) == 14
