"""The public entry point in front of vLLM: API key, an allow-list of routes, adapter control, 1 % sampling.

vLLM's own `--api-key` guards only its `/v1` routes (`/invocations` and others stay open), and runtime adapter
loading there reaches one replica at a time. The gateway therefore:

- requires `Authorization: Bearer <key>` on every route but `/health` (keys from the environment or a secret
  store, compared in constant time; 401 otherwise) and exposes only `/health`, `/v1/models`,
  `/v1/completions` and `/v1/chat/completions`;
- maps each public model name (the base, a task adapter, a merged model) to the replicas that serve it,
  round-robin, rewriting `model` to the replica's own name and passing the replicas' internal key;
- loads or unloads an adapter on every replica behind one admin call (`POST /admin/adapters`,
  `DELETE /admin/adapters/{name}`, admin key), all-or-nothing, after the compatibility check;
- takes reviewers' and citizens' corrections at `POST /v1/feedback` (`model`, `prompt`, `response`,
  `correction`; API key), redacted and stored in the lake's feedback inbox for `feedback_examples`;
- logs no request or response text, except a sampled fraction (default 1 %) that is PII-redacted with the
  curation detectors before it is written to the lake under `serving/samples/<model>/<day>/` with its
  retention date (30 days by default) for drift monitoring.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

from llm_assets.curation.pii import load_policy
from llm_assets.curation.pii.scrub import redact_text, scan_text
from llm_assets.lake.storage import LakeStorage
from llm_assets.monitoring.feedback import FeedbackInbox, FeedbackInvalid

SAMPLES_PREFIX = "serving/samples"
PROXIED_ROUTES = ("/v1/completions", "/v1/chat/completions")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upstream:
    """One replica's route for a public model: its base URL, its own model name, its internal key."""

    url: str
    model: str
    key: str | None = None


AdapterLoader = Callable[[str, str], Awaitable[dict[str, Any]]]
AdapterUnloader = Callable[[str], Awaitable[dict[str, Any]]]


@dataclass
class GatewaySettings:
    api_keys: Sequence[str]
    routes: dict[str, list[Upstream]]
    admin_keys: Sequence[str] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not [key for key in self.api_keys if key]:
            raise ValueError("the gateway needs at least one API key (set LLM_ASSETS_SERVE_API_KEY)")


class SampleRecorder:
    """Keeps a random `rate` share of request/response pairs, PII-redacted, in the lake (buffered, atomic)."""

    def __init__(
        self,
        storage: LakeStorage,
        *,
        rate: float = 0.01,
        policy: str = "eu-gdpr",
        retention_days: int = 30,
        flush_every: int = 20,
        flush_interval_s: float = 30.0,
        seed: int | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sample rate {rate} must be between 0 and 1")
        self.storage = storage
        self.rate = rate
        self.policy = load_policy(policy)
        self.retention_days = retention_days
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self._oldest: float | None = None
        self._random = random.Random(seed)
        self._clock = clock
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # records are redacted and written off the event loop, in threads
        self.seen = 0
        self.kept = 0
        self.redactions = 0

    def sampled(self) -> bool:
        self.seen += 1
        return self.rate > 0 and self._random.random() < self.rate

    def _redact(self, text: str) -> str:
        hits = scan_text(text, self.policy)
        self.redactions += len(hits)
        return redact_text(text, hits, self.policy)

    def record(self, model: str, route: str, request: Mapping[str, Any], response_text: str, **figures: Any) -> None:
        if "messages" in request:
            prompt = "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in request.get("messages") or [])
        else:
            raw = request.get("prompt", "")
            prompt = raw if isinstance(raw, str) else json.dumps(raw)
        now = self._clock()
        row = {
            "ts": now.isoformat(),
            "model": model,
            "route": route,
            "prompt": self._redact(prompt),
            "response": self._redact(response_text),
            "pii_policy": f"{self.policy.name}@{self.policy.version}",
            "expires": (now + timedelta(days=self.retention_days)).date().isoformat(),
            **figures,
        }
        with self._lock:
            self._buffer.append(row)
            self.kept += 1
            if self._oldest is None:
                self._oldest = time.monotonic()
            full = len(self._buffer) >= self.flush_every or time.monotonic() - self._oldest >= self.flush_interval_s
        if full:
            self.flush()

    def flush_if_due(self) -> str | None:
        """Flush when the oldest buffered record has waited `flush_interval_s` (quiet traffic still lands)."""
        with self._lock:
            due = self._oldest is not None and time.monotonic() - self._oldest >= self.flush_interval_s
        return self.flush() if due else None

    def flush(self) -> str | None:
        """Writes the buffer as one new object (atomic); returns its key."""
        with self._lock:
            rows, self._buffer = self._buffer, []
            self._oldest = None
        if not rows:
            return None
        by_model: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_model.setdefault(row["model"], []).append(row)
        key = None
        written = 0
        try:
            for model, model_rows in by_model.items():
                day = model_rows[0]["ts"][:10]
                key = f"{SAMPLES_PREFIX}/{model}/{day}/{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.jsonl"
                body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in model_rows)
                self.storage.write_bytes(key, body.encode("utf-8"))
                written += len(model_rows)
        except Exception:
            # Rows not yet written go back to the buffer for the next flush (each object is atomic).
            unwritten = [row for model_rows in by_model.values() for row in model_rows][written:]
            with self._lock:
                self._buffer[:0] = unwritten
                if self._oldest is None:
                    self._oldest = time.monotonic()
            raise
        return key


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else ""


def _authorised(token: str, keys: Sequence[str]) -> bool:
    # Compare against every key so the time taken does not say which one came close.
    return bool(token) and any([hmac.compare_digest(token.encode(), key.encode()) for key in keys if key])


def _text_of(body: bytes, streamed: bool) -> tuple[str, int | None]:
    """(generated text, completion tokens) from a completion response, streamed (SSE) or not."""
    texts: list[str] = []
    tokens = None
    payloads = []
    if streamed:
        for line in body.decode("utf-8", "replace").splitlines():
            if line.startswith("data: ") and line[6:].strip() != "[DONE]":
                payloads.append(line[6:])
    else:
        payloads.append(body.decode("utf-8", "replace"))
    for payload in payloads:
        try:
            data = json.loads(payload)
        except json.JSONDecodeError:
            continue
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            message = choice.get("message") or {}
            texts.append(choice.get("text") or delta.get("content") or message.get("content") or "")
        usage = data.get("usage") or {}
        if usage.get("completion_tokens") is not None:
            tokens = int(usage["completion_tokens"])
    return "".join(texts), tokens


@dataclass
class Gateway:
    """The aiohttp application and its state (routes can change at run time through the admin API)."""

    settings: GatewaySettings
    recorder: SampleRecorder | None = None
    feedback: FeedbackInbox | None = None
    load_adapter: AdapterLoader | None = None
    unload_adapter: AdapterUnloader | None = None
    counters: dict[str, int] = field(default_factory=lambda: {"requests": 0, "unauthorised": 0, "upstream_errors": 0})
    _cycles: dict[str, Any] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None
    _flusher: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        for route in PROXIED_ROUTES:
            app.router.add_post(route, self.proxy)
        app.router.add_post("/v1/feedback", self.submit_feedback)
        app.router.add_post("/admin/adapters", self.admin_load)
        app.router.add_delete("/admin/adapters/{name}", self.admin_unload)
        app.on_startup.append(self._start_flusher)
        app.on_cleanup.append(self._close)
        return app

    async def _start_flusher(self, _app: web.Application) -> None:
        if self.recorder is not None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_periodically())

    async def _flush_periodically(self) -> None:
        assert self.recorder is not None
        while True:
            await asyncio.sleep(min(1.0, self.recorder.flush_interval_s))
            try:
                await asyncio.to_thread(self.recorder.flush_if_due)
            except Exception:  # a lake hiccup must not stop serving; the rows stay for the next try
                _log.exception("sample flush failed; the rows stay buffered for the next try")

    async def _close(self, _app: web.Application) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        if self._session is not None:
            await self._session.close()
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.flush)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout_s, sock_connect=10)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    def _pick(self, model: str) -> Upstream | None:
        upstreams = self.settings.routes.get(model)
        if not upstreams:
            return None
        cycle = self._cycles.get(model)
        if cycle is None or cycle[0] is not upstreams:
            cycle = (upstreams, itertools.cycle(range(len(upstreams))))
            self._cycles[model] = cycle
        return upstreams[next(cycle[1]) % len(upstreams)]

    def _check_key(self, request: web.Request, keys: Sequence[str]) -> web.Response | None:
        if _authorised(_bearer(request), keys):
            return None
        self.counters["unauthorised"] += 1
        return _error(401, "missing or invalid API key: send 'Authorization: Bearer <key>'", "authentication_error")

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "models": sorted(self.settings.routes)})

    async def models(self, request: web.Request) -> web.Response:
        if (denied := self._check_key(request, self.settings.api_keys)) is not None:
            return denied
        created = int(time.time())
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "llm-assets"}
            for name in self.settings.routes
        ]
        return web.json_response({"object": "list", "data": sorted(data, key=lambda d: d["id"])})

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._check_key(request, self.settings.api_keys)) is not None:
            return denied
        self.counters["requests"] += 1
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the request body is not JSON", "invalid_request_error")
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body over {self.settings.max_body_bytes} bytes", "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _error(400, "the request needs a 'model' (see GET /v1/models)", "invalid_request_error")
        public = body["model"]
        upstream = self._pick(public)
        if upstream is None:
            known = ", ".join(sorted(self.settings.routes)) or "none"
            return _error(404, f"model '{public}' is not served here; served: {known}", "not_found_error")
        forwarded = dict(body) | {"model": upstream.model}
        headers = {"Authorization": f"Bearer {upstream.key}"} if upstream.key else {}
        sampled = self.recorder is not None and self.recorder.sampled()
        started = time.monotonic()
        try:
            async with self._client().post(f"{upstream.url}{request.path}", json=forwarded, headers=headers) as reply:
                out = web.StreamResponse(status=reply.status)
                out.content_type = reply.content_type
                await out.prepare(request)
                kept = bytearray()
                async for chunk in reply.content.iter_any():
                    await out.write(chunk)
                    if sampled:
                        kept.extend(chunk)
                await out.write_eof()
                status = reply.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.counters["upstream_errors"] += 1
            return _error(502, f"replica {upstream.url} did not answer: {type(exc).__name__}", "upstream_error")
        if status >= 500:
            self.counters["upstream_errors"] += 1
        if sampled and self.recorder is not None and status < 400:
            text, tokens = _text_of(bytes(kept), bool(body.get("stream")))
            await asyncio.to_thread(
                self.recorder.record,
                public,
                request.path,
                body,
                text,
                status=status,
                latency_s=round(time.monotonic() - started, 4),
                completion_tokens=tokens,
            )
        return out

    async def submit_feedback(self, request: web.Request) -> web.Response:
        """A reviewer or citizen says a response was wrong and gives the right one (stored redacted)."""
        if (denied := self._check_key(request, self.settings.api_keys)) is not None:
            return denied
        if self.feedback is None:
            return _error(501, "this gateway has no lake to keep feedback in", "not_implemented")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the feedback body is not JSON", "invalid_request_error")
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"feedback body over {self.settings.max_body_bytes} bytes", "invalid_request_error")
        if isinstance(body, dict) and isinstance(body.get("model"), str) and body["model"] not in self.settings.routes:
            known = ", ".join(sorted(self.settings.routes)) or "none"
            return _error(404, f"model '{body['model']}' is not served here; served: {known}", "not_found_error")
        try:
            stored = await asyncio.to_thread(self.feedback.submit, body)
        except FeedbackInvalid as exc:
            return _error(400, f"feedback not accepted: {exc}", "invalid_request_error")
        except Exception as exc:  # the lake is down: say so, the client retries
            _log.exception("feedback write failed")
            return _error(503, f"feedback could not be stored ({type(exc).__name__}); try again", "storage_error")
        self.counters["feedback"] = self.counters.get("feedback", 0) + 1
        return web.json_response({"id": stored["id"], "status": "received"}, status=201)

    async def admin_load(self, request: web.Request) -> web.Response:
        if (denied := self._check_key(request, self.settings.admin_keys)) is not None:
            return denied
        if self.load_adapter is None:
            return _error(501, "this gateway does not manage adapters", "not_implemented")
        try:
            body = await request.json()
            name, path = str(body["name"]), str(body["path"])
        except (json.JSONDecodeError, KeyError, TypeError):
            return _error(400, "send {'name': ..., 'path': ...}", "invalid_request_error")
        try:
            result = await self.load_adapter(name, path)
        except ValueError as exc:  # incompatible adapter, or a replica refused it (rolled back everywhere)
            return _error(409, str(exc), "adapter_error")
        return web.json_response(result)

    async def admin_unload(self, request: web.Request) -> web.Response:
        if (denied := self._check_key(request, self.settings.admin_keys)) is not None:
            return denied
        if self.unload_adapter is None:
            return _error(501, "this gateway does not manage adapters", "not_implemented")
        try:
            result = await self.unload_adapter(request.match_info["name"])
        except ValueError as exc:
            return _error(409, str(exc), "adapter_error")
        return web.json_response(result)


async def replicas_call(
    session: aiohttp.ClientSession, upstreams: Sequence[Upstream], path: str, payload: Mapping[str, Any]
) -> list[tuple[Upstream, int, str]]:
    """POSTs `payload` to `path` on every replica; (replica, status, body) for each (status 0 = unreachable)."""

    async def one(upstream: Upstream) -> tuple[Upstream, int, str]:
        headers = {"Authorization": f"Bearer {upstream.key}"} if upstream.key else {}
        try:
            async with session.post(f"{upstream.url}{path}", json=dict(payload), headers=headers) as reply:
                return upstream, reply.status, (await reply.text())[:300]
        except (aiohttp.ClientError, TimeoutError) as exc:
            return upstream, 0, f"{type(exc).__name__}: {exc}"

    return list(await asyncio.gather(*(one(u) for u in upstreams)))
