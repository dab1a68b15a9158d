"""The console API under bad input (issue 19): every refusal a JSON error, never
a 500, never a traceback in the console's output.

A real `packetbus serve` (the session's server) and a real `packetbus console`
process; httpx sends what a careless or hostile caller might: routes that do not
exist, wrong methods, bodies nested thousands deep, JSON strings holding lone
surrogates, bodies that are not UTF-8, and (hypothesis) arbitrary path segments,
query values and body strings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests._console import CHANGE, output, start_console, stop

pytestmark = pytest.mark.one_backend

JSON = {**CHANGE, "content-type": "application/json"}


@pytest.fixture(scope="module")
def console(target: str) -> Iterator[str]:
    process, url = start_console(target)
    yield url
    stop(process)
    assert "Traceback" not in output(url), output(url)


def assert_error(response: httpx.Response, status: int, code: str, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": error, "code": code}


async def test_unknown_routes_and_methods_are_json_errors(console: str) -> None:
    async with httpx.AsyncClient() as http:
        assert_error(
            await http.get(f"{console}/api/nothing"), 404, "NOT_FOUND", "no such API route"
        )
        # A slash in a tracking id (percent-encoded or not) matches no route.
        for path in ("/api/held/a%2Fb/approve", "/api/custody/a/b/c"):
            assert_error(
                await http.post(console + path, headers=CHANGE),
                404,
                "NOT_FOUND",
                "no such API route",
            )
        # A POST outside the API is no page either (a GET there is the front end).
        root = await http.post(f"{console}/", headers=CHANGE)
        assert_error(root, 404, "NOT_FOUND", "no page or file here")
        wrong = await http.get(f"{console}/api/session")
        assert_error(wrong, 405, "METHOD_NOT_ALLOWED", "method GET is not allowed here")
        assert set(wrong.headers["allow"].split(", ")) == {"DELETE", "POST"}
        put = await http.put(f"{console}/api/carcel/purge", headers=CHANGE)
        assert_error(put, 405, "METHOD_NOT_ALLOWED", "method PUT is not allowed here")
        assert put.headers["allow"] == "POST"
        head = await http.head(f"{console}/api/policy/stats")  # as GET, without the body
        assert (head.status_code, head.content) == (200, b"")
    assert "Traceback" not in output(console)


# The routes of the Topics, Task queues, Findings and Overview pages and their live twins.
_READ_ROUTES = (
    "/api/topics",
    "/api/topics/events",
    "/api/topics/t",
    "/api/topics/t/events",
    "/api/topics/t/packets",
    "/api/queues",
    "/api/queues/events",
    "/api/queues/q/tasks",
    "/api/queues/q/tasks/x",
    "/api/queues/q/events",
    "/api/findings",
    "/api/findings/events",
    "/api/escalations",
    "/api/escalations/events",
    "/api/overview",
    "/api/overview/events",
)


async def test_the_read_routes_refuse_other_methods_and_trailing_slashes(console: str) -> None:
    async with httpx.AsyncClient() as http:
        for path in _READ_ROUTES:
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                wrong = await http.request(method, console + path, headers=CHANGE)
                assert_error(
                    wrong, 405, "METHOD_NOT_ALLOWED", f"method {method} is not allowed here"
                )
                assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD"}, path
            # Without the CSRF header too: the method is refused before anything runs.
            unguarded = await http.post(console + path)
            assert_error(unguarded, 405, "METHOD_NOT_ALLOWED", "method POST is not allowed here")
        # A trailing slash is no route: a JSON 404, not a redirect built from the request.
        for path in ("/api/findings/", "/api/escalations/", "/api/overview/", "/api/held/"):
            slash = await http.get(console + path)
            assert_error(slash, 404, "NOT_FOUND", "no such API route")
            assert "location" not in slash.headers
    assert "Traceback" not in output(console)


async def test_bodies_the_parser_cannot_take_are_400(console: str) -> None:
    deep = b'{"a":' * 5000
    async with httpx.AsyncClient() as http:
        for path in ("/api/session", "/api/carcel/purge", "/api/held/x/deny"):
            nested = await http.post(console + path, content=deep, headers=JSON)
            assert_error(nested, 400, "INVALID_ARGUMENT", "the body is nested too deeply")
            arrays = await http.post(console + path, content=b"[" * 50_000, headers=JSON)
            assert_error(arrays, 400, "INVALID_ARGUMENT", "the body is nested too deeply")
            latin = await http.post(console + path, content=b'{"topic": "\xff"}', headers=JSON)
            assert latin.status_code == 400
            assert latin.json()["code"] == "INVALID_ARGUMENT"
            assert latin.json()["error"].startswith("the body is not JSON: ")
    assert "Traceback" not in output(console)


async def test_lone_surrogates_are_400_and_nothing_is_called(console: str) -> None:
    async with httpx.AsyncClient() as http:
        purge = await http.post(
            f"{console}/api/carcel/purge", content=b'{"topic": "a\\ud800"}', headers=JSON
        )
        assert_error(
            purge, 400, "INVALID_ARGUMENT", "topic is not valid Unicode (a lone surrogate)"
        )
        deny = await http.post(
            f"{console}/api/held/x/deny",
            content=b'{"topic": "t", "reason": "\\udfff"}',
            headers=JSON,
        )
        assert_error(
            deny, 400, "INVALID_ARGUMENT", "reason is not valid Unicode (a lone surrogate)"
        )
        requeue = await http.post(
            f"{console}/api/carcel/e/requeue", content=b'{"topic": "\\ud83d"}', headers=JSON
        )
        assert_error(
            requeue, 400, "INVALID_ARGUMENT", "topic is not valid Unicode (a lone surrogate)"
        )
    assert "Traceback" not in output(console)


_ROUTES = (
    ("POST", "/api/held/{}/approve"),
    ("POST", "/api/held/{}/deny"),
    ("POST", "/api/carcel/{}/requeue"),
    ("GET", "/api/custody/{}"),
    ("GET", "/api/custody/{}/export"),
    ("GET", "/api/carcel?topic={}&reason={}&limit={}"),
    ("GET", "/api/held?topic={}&limit={}"),
    ("GET", "/api/agents?role={}&liveness={}"),
    ("GET", "/api/policy/stats?topic={}"),
    ("POST", "/api/carcel/purge?topic={}"),
    ("GET", "/api/queues/{}/tasks?status={}&pageToken={}"),
    ("GET", "/api/queues/q/tasks/{}"),
    ("GET", "/api/queues?prefix={}&limit={}"),
    ("GET", "/api/findings?taskId={}&threshold={}"),
    ("GET", "/api/escalations?taskId={}&limit={}"),
    ("GET", "/api/topics/{}/packets?after={}&limit={}"),
    ("GET", "/api/overview?{}={}"),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=st.sampled_from(_ROUTES),
    segment=st.text(max_size=300),
    value=st.one_of(st.text(max_size=50), st.integers(), st.none(), st.lists(st.integers())),
)
async def test_arbitrary_segments_and_values_are_never_a_500(
    console: str, route: tuple[str, str], segment: str, value: object
) -> None:
    method, template = route
    path = template.replace("{}", quote(segment, safe=""))
    body = json.dumps({"topic": value, "reason": value, "note": value})
    async with httpx.AsyncClient(timeout=15) as http:
        response = await http.request(method, console + path, content=body, headers=JSON)
    assert response.status_code < 500, (method, path, body, response.text)
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) >= ({"error", "code"} if response.status_code >= 400 else set())
