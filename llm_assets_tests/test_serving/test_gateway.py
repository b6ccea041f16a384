"""The gateway in front of vLLM: API key (401), allow-listed routes, routing, sampling with PII redaction,
and all-or-nothing adapter loading across replicas, against stub replicas that speak vLLM's API."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from llm_assets.lake import LocalLakeStorage
from llm_assets.monitoring.feedback import FEEDBACK_INBOX, FeedbackInbox
from llm_assets.serving.gateway import (
    SAMPLES_PREFIX,
    Gateway,
    GatewaySettings,
    SampleRecorder,
    Upstream,
    replicas_call,
)

KEY = "public-key-123"
INTERNAL = "internal-key-456"


class AppThread:
    """An aiohttp app served on 127.0.0.1 from its own event loop in a thread."""

    def __init__(self, app: web.Application) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None)
        self.url = ""
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def stub_replica(name: str, *, refuse_adapter: bool = False) -> tuple[web.Application, dict[str, Any]]:
    """A replica that answers with its own name, requires the internal key, and loads adapters on request."""
    seen: dict[str, Any] = {"requests": [], "adapters": [], "unloaded": []}

    def authorised(request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {INTERNAL}"

    async def completions(request: web.Request) -> web.StreamResponse:
        if not authorised(request):
            return web.json_response({"error": "no"}, status=401)
        body = await request.json()
        seen["requests"].append(body)
        text = f"{name} says hi to 555-0100 alice@example.org"
        if body.get("stream"):
            out = web.StreamResponse()
            out.content_type = "text/event-stream"
            await out.prepare(request)
            for piece in (text[:10], text[10:]):
                await out.write(f"data: {json.dumps({'choices': [{'text': piece}]})}\n\n".encode())
            usage = {"choices": [], "usage": {"completion_tokens": 2}}
            await out.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
            await out.write_eof()
            return out
        return web.json_response(
            {"choices": [{"text": text}], "usage": {"completion_tokens": 7}, "model": body["model"]}
        )

    async def load(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response({"error": "no"}, status=401)
        body = await request.json()
        if refuse_adapter:
            return web.json_response({"error": "shape mismatch"}, status=400)
        seen["adapters"].append(body["lora_name"])
        return web.Response(text="ok")

    async def unload(request: web.Request) -> web.Response:
        body = await request.json()
        seen["unloaded"].append(body["lora_name"])
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/load_lora_adapter", load)
    app.router.add_post("/v1/unload_lora_adapter", unload)
    app.router.add_post("/invocations", completions)
    return app, seen


@pytest.fixture()
def replicas() -> Iterator[list[tuple[AppThread, dict[str, Any]]]]:
    started = []
    for name, refuse in (("r0", False), ("r1", False), ("r2", True)):
        app, seen = stub_replica(name, refuse_adapter=refuse)
        started.append((AppThread(app), seen))
    yield started
    for server, _ in started:
        server.close()


def _gateway(replicas: list[tuple[AppThread, dict[str, Any]]], tmp_path: Path, rate: float = 1.0) -> Gateway:
    routes = {
        "banking77_intents": [Upstream(replicas[0][0].url, "banking-merged", INTERNAL)],
        "base": [Upstream(replicas[0][0].url, "base", INTERNAL), Upstream(replicas[1][0].url, "base", INTERNAL)],
    }
    recorder = SampleRecorder(LocalLakeStorage(tmp_path / "lake"), rate=rate, flush_every=1, seed=0)
    gateway = Gateway(
        GatewaySettings(api_keys=[KEY], routes=routes, admin_keys=["admin"]),
        recorder=recorder,
        feedback=FeedbackInbox(LocalLakeStorage(tmp_path / "lake")),
    )

    async def load(name: str, path: str) -> dict[str, Any]:
        import aiohttp

        ups = [Upstream(replicas[i][0].url, "base", INTERNAL) for i in (0, 1)]
        async with aiohttp.ClientSession() as session:
            results = await replicas_call(session, ups, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        if any(status != 200 for _, status, _ in results):
            raise ValueError("refused")
        gateway.settings.routes[name] = [Upstream(u.url, name, INTERNAL) for u in ups]
        return {"loaded": name}

    gateway.load_adapter = load
    return gateway


@pytest.fixture()
def gateway_url(replicas: list[tuple[AppThread, dict[str, Any]]], tmp_path: Path) -> Iterator[str]:
    server = AppThread(_gateway(replicas, tmp_path).app())
    yield server.url
    server.close()


def test_requests_without_the_key_get_401_on_every_route(gateway_url: str) -> None:
    body = {"model": "base", "prompt": "x", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        for route in ("/v1/completions", "/v1/chat/completions"):
            reply = httpx.post(gateway_url + route, json=body, headers=headers)
            assert reply.status_code == 401, (route, headers)
            assert reply.json()["error"]["type"] == "authentication_error"
        assert httpx.get(gateway_url + "/v1/models", headers=headers).status_code == 401
    assert httpx.get(gateway_url + "/health").status_code == 200  # probes need no key


def test_only_allow_listed_routes_are_exposed(gateway_url: str) -> None:
    """vLLM's --api-key leaves /invocations open; the gateway does not expose it at all."""
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(gateway_url + "/invocations", json={}, headers=auth).status_code in (404, 405)
    assert httpx.post(gateway_url + "/v1/load_lora_adapter", json={}, headers=auth).status_code in (404, 405)


def test_routes_public_names_to_replica_models_round_robin(
    gateway_url: str, replicas: list[tuple[AppThread, dict[str, Any]]]
) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    models = httpx.get(gateway_url + "/v1/models", headers=auth).json()
    assert [m["id"] for m in models["data"]] == ["banking77_intents", "base"]
    reply = httpx.post(
        gateway_url + "/v1/completions", json={"model": "banking77_intents", "prompt": "p"}, headers=auth
    )
    assert reply.status_code == 200 and reply.json()["model"] == "banking-merged"
    for _ in range(4):
        httpx.post(gateway_url + "/v1/completions", json={"model": "base", "prompt": "p"}, headers=auth)
    assert len(replicas[1][1]["requests"]) == 2  # half of the base traffic went to the second replica
    unknown = httpx.post(gateway_url + "/v1/completions", json={"model": "nope", "prompt": "p"}, headers=auth)
    assert unknown.status_code == 404 and "banking77_intents" in unknown.json()["error"]["message"]
    bad = httpx.post(gateway_url + "/v1/completions", content=b"{not json", headers=auth)
    assert bad.status_code == 400


def test_streamed_responses_pass_through_and_samples_are_pii_redacted(gateway_url: str, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "base", "prompt": "Call me at +44 20 7946 0958 or mail bob@example.com", "stream": True}
    with httpx.stream("POST", gateway_url + "/v1/completions", json=body, headers=auth) as reply:
        text = "".join(reply.iter_text())
    assert reply.status_code == 200 and "data: [DONE]" in text
    deadline = time.monotonic() + 10  # the sample is written after the response, off the event loop
    while not (files := sorted((tmp_path / "lake" / SAMPLES_PREFIX / "base").rglob("*.jsonl"))):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert files, "a sampled request (rate 1.0) is written to the lake"
    row = json.loads(files[-1].read_text().splitlines()[0])
    assert "bob@example.com" not in row["prompt"] and "[EMAIL]" in row["prompt"]
    assert "alice@example.org" not in row["response"] and "[EMAIL]" in row["response"]
    assert row["completion_tokens"] == 2 and row["expires"] > row["ts"][:10]


def test_feedback_endpoint_stores_redacted_corrections_and_explains_refusals(gateway_url: str, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    good = {
        "model": "banking77_intents",
        "prompt": "My card never came, write to ana@example.org",
        "response": "exchange_rate",
        "correction": "card_arrival",
        "reviewer": "desk-3",
    }
    assert httpx.post(gateway_url + "/v1/feedback", json=good).status_code == 401
    missing = httpx.post(gateway_url + "/v1/feedback", json=good | {"correction": " "}, headers=auth)
    assert missing.status_code == 400 and "correction" in missing.json()["error"]["message"]
    unknown = httpx.post(gateway_url + "/v1/feedback", json=good | {"model": "nope"}, headers=auth)
    assert unknown.status_code == 404 and "banking77_intents" in unknown.json()["error"]["message"]
    assert httpx.post(gateway_url + "/v1/feedback", content=b"[1,", headers=auth).status_code == 400
    reply = httpx.post(gateway_url + "/v1/feedback", json=good, headers=auth)
    assert reply.status_code == 201 and reply.json()["status"] == "received"
    files = sorted((tmp_path / "lake" / FEEDBACK_INBOX).rglob("*.jsonl"))
    assert len(files) == 1, "only the accepted submission is stored"
    row = json.loads(files[0].read_text())
    assert row["id"] == reply.json()["id"] and row["reviewer"] == "desk-3"
    assert "ana@example.org" not in row["prompt"] and "[EMAIL]" in row["prompt"]
    assert row["correction"] == "card_arrival" and row["pii_policy"].startswith("eu-gdpr@")


def test_sampling_keeps_about_the_configured_share(tmp_path: Path) -> None:
    recorder = SampleRecorder(LocalLakeStorage(tmp_path / "lake"), rate=0.01, seed=1)
    kept = sum(recorder.sampled() for _ in range(20_000))
    assert 140 <= kept <= 260  # 1 % of 20,000 = 200, +-4.3 standard deviations


def test_admin_adapter_loading_needs_the_admin_key_and_reaches_every_replica(
    gateway_url: str, replicas: list[tuple[AppThread, dict[str, Any]]]
) -> None:
    payload = {"name": "civics", "path": "/models/civics"}
    denied = httpx.post(gateway_url + "/admin/adapters", json=payload, headers={"Authorization": f"Bearer {KEY}"})
    assert denied.status_code == 401  # the public key is not an admin key
    reply = httpx.post(gateway_url + "/admin/adapters", json=payload, headers={"Authorization": "Bearer admin"})
    assert reply.status_code == 200, reply.text
    assert replicas[0][1]["adapters"] == ["civics"] and replicas[1][1]["adapters"] == ["civics"]
    served = httpx.get(gateway_url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert "civics" in [m["id"] for m in served["data"]]


def test_replicas_call_reports_each_replica(replicas: list[tuple[AppThread, dict[str, Any]]]) -> None:
    import aiohttp

    async def run() -> list[tuple[Upstream, int, str]]:
        ups = [Upstream(server.url, "base", INTERNAL) for server, _ in replicas] + [
            Upstream("http://127.0.0.1:9", "base", INTERNAL)
        ]
        async with aiohttp.ClientSession() as session:
            return await replicas_call(session, ups, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/x"})

    statuses = [status for _, status, _ in asyncio.run(run())]
    assert statuses == [200, 200, 400, 0]


def test_a_gateway_needs_a_key() -> None:
    with pytest.raises(ValueError, match="LLM_ASSETS_SERVE_API_KEY"):
        GatewaySettings(api_keys=[""], routes={})


def test_recorder_flushes_when_due_and_keeps_rows_when_the_lake_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalLakeStorage(tmp_path / "lake")
    recorder = SampleRecorder(storage, rate=1.0, flush_every=100, flush_interval_s=3600, seed=0)
    recorder.record("banking77_intents", "/v1/completions", {"prompt": "hello"}, "hi")
    assert recorder.flush_if_due() is None and not storage.list_objects("serving/samples/")  # not due yet
    recorder.flush_interval_s = 0

    def unavailable(key: str, data: bytes) -> None:
        raise OSError("lake unavailable")

    monkeypatch.setattr(storage, "write_bytes", unavailable)
    with pytest.raises(OSError, match="unavailable"):
        recorder.flush_if_due()
    monkeypatch.undo()
    key = recorder.flush_if_due()  # the row was kept for this try
    assert key is not None and b'"prompt": "hello"' in storage.read_bytes(key)
