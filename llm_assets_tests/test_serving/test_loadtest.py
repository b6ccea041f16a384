"""The load-test engine against an in-process streaming stub whose latencies and failures are set per model."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_assets.serving.loadtest import (
    PROMPT_SET_VERSION,
    LoadLevel,
    LoadTestError,
    RequestRecord,
    Slo,
    check_target,
    health_verdict,
    load_prompts,
    percentile,
    profile_levels,
    run_level,
    run_loadtest,
    summarize,
)

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class StubModel:
    """How the stub answers one model name: delay to the first chunk, delay between chunks, tokens per chunk."""

    ttft_s: float = 0.02
    token_s: float = 0.005
    tokens_per_chunk: int = 1
    usage: bool = True
    breaks: str | None = None  # "error": an error object after the first chunk; "truncate": no [DONE]


FAST = StubModel()
SLOW = StubModel(ttft_s=0.3, token_s=0.005)


class StubServer:
    """An OpenAI-style streaming /v1/completions on 127.0.0.1, on its own event loop in a background thread."""

    def __init__(self, models: dict[str, StubModel], *, fail_every: int = 0, api_key: str | None = None) -> None:
        self.models = models
        self.fail_every = fail_every
        self.api_key = api_key
        self.completions = 0
        self.payloads: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.url = ""

    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response({"error": {"message": "invalid key"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": name, "object": "model"} for name in self.models]})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response({"error": {"message": "invalid key"}}, status=401)
        self.completions += 1
        if self.fail_every and self.completions % self.fail_every == 0:
            return web.json_response({"error": {"message": "injected failure"}}, status=500)
        payload = await request.json()
        self.payloads.append(payload)
        model = self.models[payload["model"]]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await asyncio.sleep(model.ttft_s)
            max_tokens = payload["max_tokens"]
            for index in range(math.ceil(max_tokens / model.tokens_per_chunk)):
                if index:
                    await asyncio.sleep(model.token_s)
                chunk = {"choices": [{"index": 0, "text": "ab" * model.tokens_per_chunk}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if model.breaks == "error":
                    await response.write(b'data: {"error": {"message": "engine died", "code": 500}}\n\n')
                    break
            if model.usage:
                usage = {"prompt_tokens": 5, "completion_tokens": max_tokens, "total_tokens": 5 + max_tokens}
                await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            if model.breaks != "truncate":
                await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            self.in_flight -= 1

    @contextmanager
    def running(self) -> Iterator[StubServer]:
        app = web.Application()
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_post("/v1/completions", self._complete)
        runner = web.AppRunner(app, handle_signals=False)
        loop = asyncio.new_event_loop()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.SockSite(runner, sock).start())
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()


def near(measured: float | None, expected: float) -> bool:
    """Loose: the CPU is shared, so allow 40 % plus 30 ms either way."""
    return measured is not None and abs(measured - expected) <= 0.4 * expected + 0.03


def quiet(_: str) -> None:
    pass


def record(ok: bool = True, e2e: float = 0.1, ttft: float = 0.02, tokens: int = 4, model: str = "m") -> RequestRecord:
    return RequestRecord(
        model=model,
        level="constant",
        prompt_id=0,
        started_s=0.0,
        ttft_s=ttft if ok else None,
        e2e_s=e2e if ok else None,
        itl_s=[0.01] * (tokens - 1) if ok else [],
        output_tokens=tokens if ok else 0,
        status=200 if ok else 503,
        error=None if ok else "HTTP 503: overloaded",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_measures_configured_latencies_per_model() -> None:
    with StubServer({"fast": FAST, "slow": SLOW}).running() as server:
        report = run_loadtest(
            server.url, ["fast", "slow"], requests=16, concurrency=4, max_tokens=8, log=quiet, slo=Slo(5.0)
        )
    json.dumps(report, allow_nan=False)
    fast, slow = report["per_model"]["fast"], report["per_model"]["slow"]
    assert fast["requests"] == slow["requests"] == 8
    assert near(fast["ttft_s"]["p50"], 0.02)
    assert near(fast["itl_s"]["p50"], 0.005)
    assert near(fast["e2e_s"]["p50"], 0.02 + 7 * 0.005)
    assert near(slow["ttft_s"]["p50"], 0.3)
    assert near(slow["e2e_s"]["p50"], 0.3 + 7 * 0.005)
    assert report["overall"]["output_tokens"] == 16 * 8
    assert report["overall"]["error_rate"] == 0
    assert report["health"]["passed"], report["health"]["reasons"]
    assert report["prompt_set"]["version"] == PROMPT_SET_VERSION
    assert server.max_in_flight <= 4
    sent = server.payloads[0]
    assert sent["stream"] is True and sent["ignore_eos"] is True and sent["temperature"] == 0
    assert sent["stream_options"] == {"include_usage": True} and sent["max_tokens"] == 8


def test_output_tokens_come_from_usage_else_from_chunks() -> None:
    models = {"usage": StubModel(0.0, 0.0, tokens_per_chunk=2), "chunks": StubModel(0.0, 0.0, usage=False)}
    level = LoadLevel("constant", concurrency=2, requests=4)

    async def run(url: str) -> list[RequestRecord]:
        async with httpx.AsyncClient(trust_env=False) as client:
            return await run_level(
                client,
                url,
                ["usage", "chunks"],
                level,
                ["a", "b", "c"],
                max_tokens=6,
                api_key=None,
                request_timeout_s=10,
                deadline=time.perf_counter() + 30,
            )

    with StubServer(models).running() as server:
        records = asyncio.run(run(server.url))
    assert [(r.model, r.prompt_id) for r in records] == [("usage", 0), ("chunks", 0), ("usage", 1), ("chunks", 1)]
    for r in records:
        assert r.ok and r.status == 200
        assert r.output_tokens == 6
        assert len(r.itl_s) == (2 if r.model == "usage" else 5)


def test_broken_streams_are_errors() -> None:
    models = {"error": StubModel(0.0, 0.0, breaks="error"), "truncate": StubModel(0.0, 0.0, breaks="truncate")}
    with StubServer(models).running() as server:
        report = run_loadtest(server.url, list(models), requests=4, concurrency=2, max_tokens=3, log=quiet)
    assert report["per_model"]["error"]["error_examples"] == {
        "StreamError": "StreamError: server error mid-stream: engine died"
    }
    assert report["per_model"]["truncate"]["errors"] == {"StreamError": 2}
    assert report["overall"]["succeeded"] == 0 and not report["health"]["passed"]


def test_injected_errors_give_exact_error_rate_and_fail_health() -> None:
    with StubServer({"fast": StubModel(0.0, 0.0)}, fail_every=4).running() as server:
        report = run_loadtest(server.url, ["fast"], requests=20, concurrency=2, max_tokens=2, log=quiet)
    overall = report["overall"]
    assert (overall["failed"], overall["succeeded"], overall["error_rate"]) == (5, 15, 0.25)
    assert overall["errors"] == {"HTTP 500": 5}
    assert "injected failure" in overall["error_examples"]["HTTP 500"]
    assert overall["good_fraction"] == 0.75
    passed, reasons = report["health"]["passed"], report["health"]["reasons"]
    assert not passed
    assert reasons == ["model fast: error rate 25.00% > SLO 1.00% (HTTP 500 x5)"]


def test_health_fails_on_the_slow_model_only() -> None:
    with StubServer({"fast": FAST, "slow": SLOW}).running() as server:
        report = run_loadtest(server.url, ["fast", "slow"], requests=6, concurrency=2, max_tokens=2, log=quiet)
    slo = Slo(p99_latency_s=0.1)
    passed, reasons = health_verdict(report, slo)
    assert not passed
    assert len(reasons) == 1 and reasons[0].startswith("model slow: p99 e2e 0.3") and "> SLO 0.10 s" in reasons[0]
    fast_only = {**report, "per_model": {"fast": report["per_model"]["fast"]}}
    fast_only["overall"] = report["per_model"]["fast"]
    assert health_verdict(fast_only, Slo(p99_latency_s=0.25))[0]


def test_health_verdict_on_error_rate_and_no_success() -> None:
    slo = Slo()
    records = [record() for _ in range(98)] + [record(ok=False) for _ in range(2)]
    report = {"overall": summarize(records, 1.0, slo), "per_model": {"m": summarize(records, 1.0, slo)}}
    passed, reasons = health_verdict(report, slo)
    assert not passed and reasons == ["model m: error rate 2.00% > SLO 1.00% (HTTP 503 x2)"]
    one_percent = [record() for _ in range(99)] + [record(ok=False)]
    assert health_verdict({"overall": summarize(one_percent, 1.0, slo)}, slo)[0]
    nothing = summarize([record(ok=False)], 1.0, slo)
    passed, reasons = health_verdict({"overall": nothing, "per_model": {"m": nothing}}, slo)
    assert not passed and reasons == [
        "no request succeeded (HTTP 503 x1)",
        "model m: all 1 requests failed (HTTP 503 x1)",
    ]
    ttft_slo = Slo(ttft_p99_s=0.01)
    passed, reasons = health_verdict({"overall": summarize(records[:5], 1.0, ttft_slo)}, ttft_slo)
    assert not passed and reasons == ["model all models: p99 TTFT 0.02 s > SLO 0.01 s"]


def test_summarize_figures() -> None:
    slo = Slo(p99_latency_s=0.5)
    records = [record(e2e=0.1, tokens=4), record(e2e=0.3, tokens=6), record(e2e=0.9, tokens=2), record(ok=False)]
    stats = summarize(records, 2.0, slo)
    assert (stats["requests"], stats["succeeded"], stats["failed"], stats["error_rate"]) == (4, 3, 1, 0.25)
    assert stats["e2e_s"]["p50"] == pytest.approx(0.3)
    assert stats["e2e_s"]["mean"] == pytest.approx(1.3 / 3)
    assert stats["output_tokens"] == 12 and stats["output_tokens_per_s"] == 6.0
    assert stats["requests_per_s"] == 1.5 and stats["goodput_rps"] == 1.0 and stats["good_fraction"] == 0.5
    assert stats["itl_s"]["p50"] == pytest.approx(0.01)
    empty = summarize([], 0.0, slo)
    assert empty["e2e_s"] == {"p50": None, "p90": None, "p99": None, "mean": None}
    assert empty["error_rate"] is None and empty["requests_per_s"] is None


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5:8000/v1",
        "http://example.com/v1",
        "http://127.0.0.1.nip.io/v1",
        "ftp://127.0.0.1/v1",
        "http://[::1",
    ],
)
def test_check_target_refuses_other_hosts(url: str) -> None:
    with pytest.raises(LoadTestError) as raised:
        check_target(url)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8000/v1", ()),
        ("http://127.8.9.10/v1", ()),
        ("http://[::1]:8000/v1", ()),
        ("http://LOCALHOST:8000/v1", ()),
        ("https://vllm.serving.svc:8000/v1", ("vllm.serving.svc",)),
        ("http://10.0.0.5:8000/v1", ("http://10.0.0.5:8000/v1",)),
        ("http://[::ffff:127.0.0.1]:8000/v1", ()),
        ("http://gpu-node:8000/v1", ("GPU-node:8000",)),
    ],
)
def test_check_target_allows_loopback_and_listed_hosts(url: str, allowed: tuple[str, ...]) -> None:
    check_target(url, allowed)


def test_unreachable_endpoint_is_one_line_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(LoadTestError) as raised:
        run_loadtest(url, ["fast"], requests=1, log=quiet)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"cannot reach {url}: ConnectError")
    assert message.endswith("start the server (llm-assets serve) or check --url")


def test_api_key_required() -> None:
    with StubServer({"fast": StubModel(0.0, 0.0)}, api_key="s3cret").running() as server:
        for key in (None, "wrong"):
            with pytest.raises(LoadTestError, match="--api-key-env NAME") as raised:
                run_loadtest(server.url, ["fast"], requests=2, api_key=key, log=quiet)
            assert "HTTP 401" in str(raised.value)
        report = run_loadtest(server.url, ["fast"], requests=2, api_key="s3cret", log=quiet)
    assert report["overall"]["succeeded"] == 2 and report["config"]["authenticated"]
    assert "s3cret" not in json.dumps(report)


def test_unserved_model_is_refused_before_the_test() -> None:
    with StubServer({"fast": FAST}).running() as server:
        with pytest.raises(LoadTestError, match="does not serve banking"):
            run_loadtest(server.url, ["fast", "banking"], requests=2, log=quiet)
        assert server.completions == 0


def test_requests_bound_and_step_profile() -> None:
    lines: list[str] = []
    with StubServer({"a": StubModel(0.0, 0.0), "b": StubModel(0.0, 0.0)}).running() as server:
        report = run_loadtest(
            server.url, ["a", "b"], profile="step", requests=22, concurrency=4, max_tokens=2, log=lines.append
        )
    assert server.completions == 22
    assert [(lv["level"], lv["concurrency"], lv["requests"]) for lv in report["per_level"]] == [
        ("step-1", 1, 5),
        ("step-2", 2, 5),
        ("step-3", 3, 5),
        ("step-4", 4, 7),
    ]
    assert report["per_model"]["a"]["requests"] == report["per_model"]["b"]["requests"] == 11
    assert len(lines) == 4 and lines[3].startswith("level step-4: concurrency 4, 7/7 requests, 0 failed")
    assert not report["stopped_early"]


def test_max_duration_bound() -> None:
    with StubServer({"slow": SLOW}).running() as server:
        started = time.perf_counter()
        report = run_loadtest(
            server.url, ["slow"], requests=1000, concurrency=2, max_tokens=2, max_duration_s=0.5, log=quiet
        )
        elapsed = time.perf_counter() - started
    # no request starts after 0.5 s; the last ones take ~0.3 s; the rest is slack for a loaded machine
    assert elapsed < 0.5 + 0.3 + 1.5
    assert 2 <= server.completions <= 2 * math.ceil(0.5 / 0.3) + 2
    assert report["stopped_early"] and report["overall"]["requests"] == server.completions


def test_soak_level_stops_at_its_duration_and_timeouts_are_errors() -> None:
    with StubServer({"slow": SLOW}).running() as server:
        report = run_loadtest(
            server.url, ["slow"], requests=1000, concurrency=1, max_tokens=2, level_duration_s=0.2, log=quiet
        )
        assert report["overall"]["requests"] == server.completions <= 2
        timed_out = run_loadtest(server.url, ["slow"], requests=2, concurrency=2, request_timeout_s=0.1, log=quiet)
    assert timed_out["overall"]["errors"] == {"TimeoutError": 2}
    assert not timed_out["health"]["passed"]


def test_load_prompts_packaged_and_errors(tmp_path: Path) -> None:
    sha, prompts = load_prompts()
    packaged = files("llm_assets.serving").joinpath("canary_prompts_v1.jsonl").read_bytes()
    assert sha == hashlib.sha256(packaged).hexdigest()
    assert 24 <= len(prompts) <= 40 and len(set(prompts)) == len(prompts)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 0, "prompt": "ok"}\n{"id": 1}\n', encoding="utf-8")
    with pytest.raises(LoadTestError, match=r"bad\.jsonl line 2"):
        load_prompts(bad)


@settings(max_examples=200, deadline=None)
@given(
    profile=st.sampled_from(["constant", "step", "spike"]),
    requests=st.integers(4, 10_000),
    concurrency=st.integers(1, 512),
)
def test_profile_levels_split_all_requests(profile: str, requests: int, concurrency: int) -> None:
    levels = profile_levels(profile, requests=requests, concurrency=concurrency)
    assert sum(level.requests for level in levels) == requests
    assert all(level.requests >= 1 and 1 <= level.concurrency <= concurrency for level in levels)
    assert max(level.concurrency for level in levels) == concurrency
    assert len({level.name for level in levels}) == len(levels)


@pytest.mark.parametrize(
    ("profile", "requests", "concurrency"), [("ramp", 10, 4), ("step", 3, 4), ("constant", 10, 0), ("spike", 2, 8)]
)
def test_profile_levels_rejects_bad_input(profile: str, requests: int, concurrency: int) -> None:
    with pytest.raises(ValueError):
        profile_levels(profile, requests=requests, concurrency=concurrency)


def test_profile_levels_shapes() -> None:
    assert [lv.concurrency for lv in profile_levels("step", requests=8, concurrency=10)] == [3, 5, 8, 10]
    assert [lv.concurrency for lv in profile_levels("spike", requests=9, concurrency=10)] == [3, 10, 3]
    assert profile_levels("constant", requests=5, concurrency=2, level_duration_s=3.0) == [
        LoadLevel("constant", 2, 5, 3.0)
    ]


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=200),
    q=st.floats(0, 100),
)
def test_percentile_matches_numpy(values: list[float], q: float) -> None:
    expected = float(np.percentile(values, q))
    assert percentile(values, q) == pytest.approx(expected, rel=1e-9, abs=1e-6)


def test_first_token_is_the_first_step_even_when_its_text_is_empty() -> None:
    """A token that only completes a character later streams as an empty text: it is still the first token."""
    from llm_assets.serving.loadtest import RequestRecord, _send

    chunks = [
        {"choices": [{"text": ""}]},
        {"choices": [{"text": "é"}]},
        {"choices": [{"text": "!", "finish_reason": "length"}]},
        {"choices": [], "usage": {"completion_tokens": 3}},
    ]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"

    async def go() -> RequestRecord:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, text=body))
        record = RequestRecord("m", "constant", 0, time.perf_counter(), None, None)
        async with httpx.AsyncClient(transport=transport) as client:
            await _send(client, "http://stub/v1/completions", {}, {}, record, 5.0)
        return record

    record = asyncio.run(go())
    assert record.error is None and record.ttft_s is not None and record.ttft_s <= record.e2e_s  # type: ignore[operator]
    assert len(record.itl_s) == 2 and record.output_tokens == 3
