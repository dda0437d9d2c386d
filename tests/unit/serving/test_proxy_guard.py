"""facemask.serving.proxy_guard's decisions, driven through its ASGI interface with a stand-in for Serve's proxy.

The same guard inside a real Serve proxy, with real replicas killed, is tested in
tests/integration/serving/test_serve.py; these cases pin each decision on its own.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from facemask.serving.proxy_guard import GuardSettings, ProxyGuard, ReplicaWatch

FAST = GuardSettings(body_timeout_s=0.3, ready_wait_s=0.4, poll_s=0.05)


def test_settings_come_from_the_environment_and_bad_values_name_the_variable():
    assert GuardSettings.from_env({}) == GuardSettings()
    assert GuardSettings.from_env({"FACEMASK_PROXY_READY_WAIT_S": "5", "FACEMASK_PROXY_RETRIES": "0"}) == GuardSettings(
        ready_wait_s=5.0, retries=0
    )
    with pytest.raises(ValueError, match="FACEMASK_PROXY_MAX_HEADER_KB='big' is not an integer"):
        GuardSettings.from_env({"FACEMASK_PROXY_MAX_HEADER_KB": "big"})
    with pytest.raises(ValueError, match="FACEMASK_PROXY_BODY_TIMEOUT_S='0' must be above 0"):
        GuardSettings.from_env({"FACEMASK_PROXY_BODY_TIMEOUT_S": "0"})


def details(replicas: dict[str, list[tuple[str, str]]]) -> dict:
    """Serve's instance details for apps at /<name> (facemask at /), with (actor name, state) replicas."""
    return {
        "applications": {
            app: {
                "route_prefix": "/" if app == "facemask" else f"/{app}",
                "deployments": {"D": {"replicas": [{"actor_name": n, "state": s} for n, s in reps]}},
            }
            for app, reps in replicas.items()
        }
    }


def test_the_watch_maps_paths_to_apps_and_counts_running_replicas_that_are_alive():
    watch = ReplicaWatch(poll_s=0.5)
    apps = details({"facemask": [("a1", "RUNNING")], "secured": [("s1", "RUNNING"), ("s2", "STARTING")]})
    watch.update(apps, alive={"a1", "s1", "s2"}, now=100.0)
    assert watch.app_for("/predict") == "facemask"
    assert watch.app_for("/secured/predict") == "secured"
    assert watch.app_for("/securedx") == "facemask"
    assert watch.app_for("/-/healthz") is None
    assert watch.waiting_since("secured", 100.1) is None

    watch.update(apps, alive={"a1", "s2"}, now=101.0)  # s1's process died; the controller still lists it
    assert watch.waiting_since("secured", 101.1) == 101.0
    watch.update(apps, alive={"a1", "s2"}, now=101.5)
    assert watch.waiting_since("secured", 101.6) == 101.0, "the wait counts from when it began"
    assert watch.waiting_since("secured", 200.0) is None, "an out-of-date watch holds nothing back"
    watch.update(details({"facemask": [("a1", "RUNNING")], "secured": [("s2", "RUNNING")]}), {"a1", "s2"}, 102.0)
    assert watch.waiting_since("secured", 102.1) is None
    watch.update(details({"facemask": [("a1", "RUNNING")], "gone": []}), {"a1"}, 103.0)
    watch.update(details({"facemask": [("a1", "RUNNING")]}), {"a1"}, 104.0)
    assert watch.unready_since == {}, "a deleted app is forgotten"


def guard_of(inner, settings: GuardSettings = FAST) -> ProxyGuard:
    """A guard whose replica watch is fed by the test, not by a Serve controller."""
    guard = ProxyGuard(inner, settings)
    guard.watch.start = lambda: None
    return guard


class StandIn:
    """Serve's proxy app as the guard sees it: each call does what the next script entry says."""

    def __init__(self, *script: str) -> None:
        self.script, self.bodies = list(script), []

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        scope["path"] = "/rewritten"  # as Serve's proxy does: the guard must hand each pass a fresh scope
        action = self.script.pop(0)
        if action == "lost":
            return  # a replica died holding the request: nothing was sent
        if action == "client left":
            assert (await receive())["type"] == "http.disconnect"
            return  # as Serve's proxy does when the client goes: the request is dropped unanswered
        if action == "hang":
            await asyncio.sleep(60)
        if action == "plain503":
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"2")],
                }
            )
            await send({"type": "http.response.body", "body": b"Deployment is unavailable."})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})


def call(guard: ProxyGuard, chunks: list[bytes], gap_s: float = 0.0, path: str = "/predict") -> tuple[int, dict, dict]:
    """One POST through `guard`, its body sent in `chunks` `gap_s` apart: (status, headers, JSON body)."""
    sent: list[dict] = []

    async def capture(message: dict) -> None:
        sent.append(message)

    async def run() -> None:
        pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

        async def receive() -> dict:
            if pending:
                await asyncio.sleep(gap_s)
                return pending.pop(0)
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"host", b"test")]}
        await asyncio.wait_for(guard(scope, receive, capture), timeout=10)

    asyncio.run(run())
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(body)


def test_a_request_lost_with_its_replica_is_sent_again_with_the_same_body():
    inner = StandIn("lost", "ok")
    status, _, body = call(guard_of(inner), [b"part one,", b" part two"])
    assert (status, body) == (200, {"ok": True})
    assert inner.bodies == [b"part one, part two"] * 2


def test_a_request_lost_twice_gets_a_json_503_with_retry_after():
    inner = StandIn("lost", "lost", "ok")
    status, headers, body = call(guard_of(inner), [b"x"])
    assert status == 503 and body["error"] == "unavailable" and headers[b"retry-after"] == b"1"
    assert len(inner.bodies) == 2, "one retry, no more"


def test_a_request_whose_client_left_is_not_sent_again():
    inner, sent = StandIn("client left", "ok"), []

    async def run() -> None:
        messages = [{"type": "http.request", "body": b"x", "more_body": False}, {"type": "http.disconnect"}]

        async def receive() -> dict:
            return messages.pop(0)

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
        await asyncio.wait_for(guard_of(inner)(scope, receive, send), timeout=10)

    asyncio.run(run())
    assert inner.bodies == [b"x"] and sent == []


def test_no_running_replica_gets_a_503_after_ready_wait_s_instead_of_waiting():
    import time

    guard = guard_of(StandIn("hang"))
    guard.watch.update(details({"facemask": [("a1", "RUNNING")]}), alive=set(), now=0.0)
    guard.watch.updated_at = float("inf")  # keep it current for the length of the test
    began = time.monotonic()
    status, _, body = call(guard, [b"x"])
    assert status == 503 and body["error"] == "unavailable"
    assert FAST.ready_wait_s <= time.monotonic() - began < FAST.ready_wait_s + 1


def test_the_proxys_plain_text_errors_get_the_json_shape():
    status, headers, body = call(guard_of(StandIn("plain503")), [b"x"])
    assert (status, body) == (503, {"error": "unavailable", "message": "Deployment is unavailable."})
    assert headers[b"retry-after"] == b"2"


def test_a_body_that_trickles_in_past_body_timeout_s_gets_408_and_never_reaches_a_replica():
    inner = StandIn("ok")
    status, _, body = call(guard_of(inner), [b"a", b"b", b"c", b"d"], gap_s=0.15)
    assert status == 408 and body["error"] == "body_timeout"
    assert inner.bodies == []
