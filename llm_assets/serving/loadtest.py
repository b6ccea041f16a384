"""Load test for an OpenAI-compatible server (vLLM): TTFT, ITL, end-to-end latency, throughput and goodput per model.

Every LoRA adapter is served under its own model name, so requests go round-robin over `models` and each model is
summarised on its own; the health verdict fails if any one of them breaches the SLO. The test is bounded three
ways: a request count, a global deadline (`max_duration_s`, after which no new request starts) and a per-request
timeout; and it only targets loopback or an explicitly allowed host (`check_target`).

Latencies are measured on the client from streamed `/v1/completions` responses; only requests that succeeded
enter the latency percentiles and throughput figures, failed ones count in the error rate.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import ipaddress
import itertools
import json
import math
import platform
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from llm_assets.compliance.residency import note_egress

PROMPT_SET_VERSION = "canary-v1"
PROMPTS_RESOURCE = "canary_prompts_v1.jsonl"
REPORT_SCHEMA = "loadtest-report-v1"
PROFILES = ("constant", "step", "spike")
PROBE_TIMEOUT_S = 10.0
ERROR_BODY_CHARS = 200


class LoadTestError(RuntimeError):
    """A load test that cannot start or run; the message is one line saying what to do."""


@dataclass(frozen=True)
class Slo:
    """Service-level objective. A request is "good" (counts towards goodput) if it succeeded, its end-to-end
    latency is at most `p99_latency_s` and, when `ttft_p99_s` is set, its TTFT is at most that."""

    p99_latency_s: float = 5.0
    max_error_rate: float = 0.01
    ttft_p99_s: float | None = None


DEFAULT_SLO = Slo()


@dataclass(frozen=True)
class LoadLevel:
    """One phase of a profile. With `duration_s` (soak) requests keep coming for that long, still at most
    `requests` of them."""

    name: str
    concurrency: int
    requests: int
    duration_s: float | None = None


@dataclass
class RequestRecord:
    """One request as measured by the client. `started_s` is on the `time.perf_counter()` clock; the latencies
    are None when the request failed before producing them; `error` is None exactly when it succeeded."""

    model: str
    level: str
    prompt_id: int
    started_s: float
    ttft_s: float | None
    e2e_s: float | None
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def profile_levels(
    profile: str, *, requests: int, concurrency: int, level_duration_s: float | None = None
) -> list[LoadLevel]:
    """The levels of a load profile; the requests are split evenly over them, the remainder going to the last.

    constant: one level at `concurrency`; step: ceil(c/4), ceil(c/2), ceil(3c/4), c; spike: ceil(c/4), then a
    burst at c, then recovery at ceil(c/4).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if level_duration_s is not None and not level_duration_s > 0:
        raise ValueError(f"level duration must be positive seconds, got {level_duration_s}")
    if profile == "constant":
        shape = [("constant", concurrency)]
    elif profile == "step":
        shape = [(f"step-{i}", math.ceil(concurrency * i / 4)) for i in range(1, 5)]
    elif profile == "spike":
        low = math.ceil(concurrency / 4)
        shape = [("base", low), ("spike", concurrency), ("recovery", low)]
    else:
        raise ValueError(f"unknown load profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if requests < len(shape):
        raise ValueError(
            f"profile {profile!r} has {len(shape)} levels and needs at least that many requests, got {requests}"
        )
    share, remainder = divmod(requests, len(shape))
    return [
        LoadLevel(name, level_concurrency, share + (remainder if i == len(shape) - 1 else 0), level_duration_s)
        for i, (name, level_concurrency) in enumerate(shape)
    ]


def load_prompts(path: Path | None = None) -> tuple[str, list[str]]:
    """(sha256 of the file, prompts) from a JSONL file of {"id": ..., "prompt": ...} rows; the packaged canary
    set by default, so that reports from different runs are comparable (the hash goes into the report)."""
    if path is None:
        source = f"llm_assets/serving/{PROMPTS_RESOURCE}"
        data = importlib.resources.files("llm_assets.serving").joinpath(PROMPTS_RESOURCE).read_bytes()
    else:
        source = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LoadTestError(f"{source}: cannot read the prompt file ({exc.strerror}); check --prompts") from exc
    prompts: list[str] = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoadTestError(f"{source} line {number}: not valid JSON ({exc.msg})") from exc
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str) or not prompt:
            raise LoadTestError(f'{source} line {number}: expected {{"id": ..., "prompt": "<non-empty text>"}}')
        prompts.append(prompt)
    if not prompts:
        raise LoadTestError(f'{source}: no prompts; add rows like {{"id": 0, "prompt": "..."}}')
    return hashlib.sha256(data).hexdigest(), prompts


def check_target(url: str, allowed_hosts: Sequence[str] = ()) -> None:
    """Refuse to load-test anything but loopback or an explicitly allowed host (the configured endpoint).

    Host names are compared literally, never resolved, so a name that merely points at loopback is refused.
    """
    try:
        parts = urlsplit(url)
        host = _normal_host(parts.hostname or "")
    except ValueError:
        parts, host = urlsplit(""), ""
    if parts.scheme not in ("http", "https") or not host:
        raise LoadTestError(f"{url!r} is not an http(s) URL; pass --url like http://127.0.0.1:8000/v1")
    if host == "localhost" or host in {_allowed_host(entry) for entry in allowed_hosts}:
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        if address.is_loopback or (mapped is not None and mapped.is_loopback):
            return
    raise LoadTestError(
        f"refusing to load-test {host}: only loopback or the configured endpoint's host may be targeted; "
        "add it to the allowed hosts if it is yours"
    )


def _normal_host(host: str) -> str:
    """Lower-case, without IPv6 brackets, IP addresses in their canonical form."""
    host = host.strip().strip("[]").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _allowed_host(entry: str) -> str:
    """An allowed-hosts entry may be a URL, host:port, or a bare host or address."""
    entry = entry.strip()
    try:
        if "://" not in entry:
            return str(ipaddress.ip_address(entry.strip("[]")))  # bare addresses, IPv6 ones included
    except ValueError:
        pass
    try:
        return _normal_host(urlsplit(entry if "://" in entry else f"//{entry}").hostname or "")
    except ValueError:
        return _normal_host(entry)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between closest ranks (numpy's default, Hyndman-Fan
    type 7); None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def _distribution(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "mean": sum(values) / len(values) if values else None,
    }


def _error_kind(error: str) -> str:
    """The part of an error message before the first ': ' ("HTTP 503", "ConnectError"), to group errors."""
    return error.split(": ", 1)[0]


def _is_good(record: RequestRecord, slo: Slo) -> bool:
    if not record.ok or record.e2e_s is None or record.e2e_s > slo.p99_latency_s:
        return False
    return slo.ttft_p99_s is None or (record.ttft_s is not None and record.ttft_s <= slo.ttft_p99_s)


def summarize(records: Sequence[RequestRecord], wall_s: float, slo: Slo) -> dict[str, Any]:
    """Latency distributions, throughput and goodput of `records` over `wall_s` seconds.

    Percentiles cover succeeded requests only; `output_tokens` counts the tokens of succeeded requests; the
    rates are None when `wall_s` is not positive. `errors` counts failures by kind, `error_examples` keeps the
    first message of each kind.
    """
    succeeded = [record for record in records if record.ok]
    failed = [record for record in records if not record.ok]
    tokens = sum(record.output_tokens for record in succeeded)
    good = sum(1 for record in succeeded if _is_good(record, slo))
    errors: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for record in failed:
        message = record.error or "unknown error"
        errors[_error_kind(message)] += 1
        examples.setdefault(_error_kind(message), message)

    def rate(count: float) -> float | None:
        return count / wall_s if wall_s > 0 else None

    return {
        "requests": len(records),
        "succeeded": len(succeeded),
        "failed": len(failed),
        "error_rate": len(failed) / len(records) if records else None,
        "ttft_s": _distribution([r.ttft_s for r in succeeded if r.ttft_s is not None]),
        "itl_s": _distribution([gap for r in succeeded for gap in r.itl_s]),
        "e2e_s": _distribution([r.e2e_s for r in succeeded if r.e2e_s is not None]),
        "output_tokens": tokens,
        "output_tokens_per_s": rate(tokens),
        "requests_per_s": rate(len(succeeded)),
        "goodput_rps": rate(good),
        "good_fraction": good / len(records) if records else None,
        "errors": dict(errors.most_common()),
        "error_examples": examples,
    }


def health_verdict(report: dict[str, Any], slo: Slo) -> tuple[bool, list[str]]:
    """(passed, reasons). Fails if no request succeeded or if any model breaches the p99 end-to-end latency, the
    TTFT p99 (when the SLO sets one) or the error rate; the reasons then name each breach, one line each. A pass
    gives one line with the worst figures."""
    reasons: list[str] = []
    overall = report["overall"]
    if not overall["succeeded"]:
        kinds = ", ".join(f"{kind} x{count}" for kind, count in overall["errors"].items()) or "no requests were sent"
        reasons.append(f"no request succeeded ({kinds})")
    per_model: dict[str, dict[str, Any]] = report.get("per_model") or {"all models": overall}
    for model, stats in per_model.items():
        if not stats["requests"]:
            reasons.append(f"model {model}: no request was sent before the deadline")
            continue
        kinds = ", ".join(f"{kind} x{count}" for kind, count in stats["errors"].items())
        if not stats["succeeded"]:
            reasons.append(f"model {model}: all {stats['requests']} requests failed ({kinds})")
            continue
        if stats["error_rate"] > slo.max_error_rate:
            reasons.append(
                f"model {model}: error rate {stats['error_rate']:.2%} > SLO {slo.max_error_rate:.2%} ({kinds})"
            )
        e2e_p99 = stats["e2e_s"]["p99"]
        if e2e_p99 is not None and e2e_p99 > slo.p99_latency_s:
            reasons.append(f"model {model}: p99 e2e {e2e_p99:.2f} s > SLO {slo.p99_latency_s:.2f} s")
        ttft_p99 = stats["ttft_s"]["p99"]
        if slo.ttft_p99_s is not None and (ttft_p99 is None or ttft_p99 > slo.ttft_p99_s):
            measured = "none" if ttft_p99 is None else f"{ttft_p99:.2f} s"
            reasons.append(f"model {model}: p99 TTFT {measured} > SLO {slo.ttft_p99_s:.2f} s")
    if reasons:
        return False, reasons
    worst_p99 = max(stats["e2e_s"]["p99"] for stats in per_model.values())
    worst_errors = max(stats["error_rate"] for stats in per_model.values())
    return True, [
        f"{len(per_model)} model(s) within SLO: worst p99 e2e {worst_p99:.2f} s <= {slo.p99_latency_s:.2f} s, "
        f"worst error rate {worst_errors:.2%} <= {slo.max_error_rate:.2%}"
    ]


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _exception_message(exc: BaseException) -> str:
    detail = _one_line(str(exc))
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


class StreamError(ValueError):
    """A 2xx response whose body is not a well-formed completion stream."""


def _chunk_text(chunk: Any) -> tuple[str | None, int | None]:
    """(text of choices[0] or None when the chunk has no choice, usage.completion_tokens) of one streamed chunk;
    raises StreamError on a chunk that is not a completion chunk, e.g. an error object sent mid-stream."""
    if not isinstance(chunk, dict):
        raise StreamError(f"unexpected chunk {str(chunk)[:ERROR_BODY_CHARS]}")
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise StreamError(f"server error mid-stream: {str(message)[:ERROR_BODY_CHARS]}")
    choices = chunk.get("choices") or []
    text = choices[0].get("text") if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    usage = chunk.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if not (isinstance(choices, list) and choices):
        text = None
    elif not isinstance(text, str):
        text = ""
    return text, (tokens if isinstance(tokens, int) else None)


async def _send(
    client: httpx.AsyncClient,
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    record: RequestRecord,
    request_timeout_s: float,
) -> None:
    """Stream one completion into `record`; raises on transport errors and malformed streams."""
    async with (
        asyncio.timeout(request_timeout_s),
        client.stream("POST", url, json=payload, headers=headers) as response,
    ):
        record.status = response.status_code
        if not response.is_success:
            body = (await response.aread()).decode("utf-8", "replace")
            record.error = f"HTTP {response.status_code}: {_one_line(body)[:ERROR_BODY_CHARS]}"
            return
        last_text_at: float | None = None
        text_chunks = 0
        usage_tokens: int | None = None
        done = False
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError as exc:
                raise StreamError(f"chunk is not JSON ({exc.msg}): {data[:ERROR_BODY_CHARS]}") from exc
            text, tokens = _chunk_text(chunk)
            usage_tokens = tokens if tokens is not None else usage_tokens
            # A chunk with a choice is one generation step, even when its text is still empty (a token that
            # completes a character later): TTFT and ITL time steps, as vLLM's own benchmark does.
            if text is not None:
                now = time.perf_counter()
                if last_text_at is None:
                    record.ttft_s = now - record.started_s
                else:
                    record.itl_s.append(now - last_text_at)
                last_text_at = now
                text_chunks += 1
        record.e2e_s = time.perf_counter() - record.started_s
        record.output_tokens = usage_tokens if usage_tokens is not None else text_chunks
        if not done:
            raise StreamError("the stream ended before 'data: [DONE]'")


async def run_level(
    client: httpx.AsyncClient,
    base_url: str,
    models: Sequence[str],
    level: LoadLevel,
    prompts: Sequence[str],
    *,
    max_tokens: int,
    api_key: str | None,
    request_timeout_s: float,
    deadline: float,
    first_index: int = 0,
) -> list[RequestRecord]:
    """Run one level with `level.concurrency` workers until `level.requests` were issued, `deadline` (a
    `time.perf_counter()` value) passed or the level's own duration ran out; in-flight requests finish or time
    out after `request_timeout_s`. Request i (counted from `first_index`, so shares stay equal across levels)
    goes to models[i % len(models)] with prompt (i // len(models)) % len(prompts)."""
    url = f"{base_url.rstrip('/')}/completions"
    headers = _headers(api_key)
    if level.duration_s is not None:
        deadline = min(deadline, time.perf_counter() + level.duration_s)
    indexes = itertools.count()
    records: list[RequestRecord] = []

    async def worker() -> None:
        while time.perf_counter() < deadline and (i := next(indexes)) < level.requests:
            global_index = first_index + i
            model = models[global_index % len(models)]
            prompt_id = (global_index // len(models)) % len(prompts)
            payload = {
                "model": model,
                "prompt": prompts[prompt_id],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
                "ignore_eos": True,
            }
            record = RequestRecord(model, level.name, prompt_id, time.perf_counter(), None, None)
            records.append(record)
            try:
                await _send(client, url, payload, headers, record, request_timeout_s)
            except TimeoutError:  # asyncio.timeout; a timeout set on the caller's client lands below
                record.error = f"TimeoutError: no complete response within {request_timeout_s:g} s"
            except (httpx.HTTPError, OSError, ValueError) as exc:
                record.error = _exception_message(exc)

    async with asyncio.TaskGroup() as group:
        for _ in range(level.concurrency):
            group.create_task(worker())
    return records


async def _probe(client: httpx.AsyncClient, base_url: str, models: Sequence[str], api_key: str | None) -> None:
    """GET /models before loading the server, so a wrong URL, key or model fails fast with what to do."""
    try:
        response = await client.get(f"{base_url}/models", headers=_headers(api_key), timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise LoadTestError(
            f"cannot reach {base_url}: {_exception_message(exc)}; start the server (llm-assets serve) or check --url"
        ) from exc
    if response.status_code in (401, 403):
        given = "the API key was refused" if api_key else "the server requires an API key"
        raise LoadTestError(
            f"{base_url}/models answered HTTP {response.status_code}: {given}; "
            "set it in an environment variable and pass --api-key-env NAME"
        )
    if not response.is_success:
        raise LoadTestError(
            f"{base_url}/models answered HTTP {response.status_code}: {_one_line(response.text)[:ERROR_BODY_CHARS]}; "
            "check --url (it should end in /v1) and the server log"
        )
    try:
        served = {entry["id"] for entry in response.json()["data"]}
    except (ValueError, KeyError, TypeError):
        return  # not an OpenAI model list; the completions themselves will tell
    missing = [model for model in models if model not in served]
    if missing:
        raise LoadTestError(
            f"{base_url} does not serve {', '.join(missing)} (it serves {', '.join(sorted(served)) or 'nothing'}); "
            "load the adapter or check --model"
        )


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


async def _run(
    base_url: str,
    models: Sequence[str],
    levels: Sequence[LoadLevel],
    prompts: Sequence[str],
    *,
    max_tokens: int,
    api_key: str | None,
    max_duration_s: float,
    request_timeout_s: float,
    slo: Slo,
    log: Callable[[str], None],
) -> tuple[float, list[RequestRecord], list[dict[str, Any]], bool]:
    """(wall seconds, all records, per-level summaries, whether the deadline cut the run short)."""
    widest = max(level.concurrency for level in levels)
    note_egress(base_url, "load_test")
    # no httpx timeout: run_level bounds each whole request with asyncio.timeout(request_timeout_s);
    # trust_env=False: a proxy from the environment would distort every latency measured
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(None),
        limits=httpx.Limits(max_connections=widest, max_keepalive_connections=widest),
        trust_env=False,
    ) as client:
        await _probe(client, base_url, models, api_key)
        started = time.perf_counter()
        deadline = started + max_duration_s
        records: list[RequestRecord] = []
        per_level: list[dict[str, Any]] = []
        for level in levels:
            level_started = time.perf_counter()
            level_records = await run_level(
                client,
                base_url,
                models,
                level,
                prompts,
                max_tokens=max_tokens,
                api_key=api_key,
                request_timeout_s=request_timeout_s,
                deadline=deadline,
                first_index=len(records),
            )
            level_wall = time.perf_counter() - level_started
            records.extend(level_records)
            failed = sum(1 for record in level_records if not record.ok)
            p99 = percentile([r.e2e_s for r in records if r.ok and r.e2e_s is not None], 99)
            log(
                f"level {level.name}: concurrency {level.concurrency}, {len(level_records)}/{level.requests} "
                f"requests, {failed} failed, {level_wall:.1f} s, p99 e2e so far {_seconds(p99)}"
            )
            per_level.append(
                {
                    "level": level.name,
                    "concurrency": level.concurrency,
                    "planned_requests": level.requests,
                    **summarize(level_records, level_wall, slo),
                }
            )
        wall_s = time.perf_counter() - started
    return wall_s, records, per_level, len(records) < sum(level.requests for level in levels)


def run_loadtest(
    base_url: str,
    models: Sequence[str],
    *,
    profile: str = "constant",
    requests: int = 64,
    concurrency: int = 4,
    max_tokens: int = 32,
    api_key: str | None = None,
    slo: Slo = DEFAULT_SLO,
    max_duration_s: float = 300.0,
    level_duration_s: float | None = None,
    request_timeout_s: float = 60.0,
    allowed_hosts: Sequence[str] = (),
    prompts_path: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Load-test `base_url` (ending in /v1) and return the JSON-serialisable report with its health verdict.

    Runs at most `requests` requests and starts none after `max_duration_s`; a request in flight then still has up
    to `request_timeout_s`. Raises LoadTestError if the target is not allowed or fails the /models probe, and
    ValueError on bad arguments. Must not be called from a running event loop.
    """
    check_target(base_url, allowed_hosts)
    base_url = base_url.rstrip("/")
    if not models:
        raise ValueError("no model to test; pass at least one model name (the base or an adapter)")
    if len(set(models)) != len(models):
        raise ValueError(f"model names repeat in {list(models)}; each model is summarised once")
    if requests < len(models):
        raise ValueError(f"{requests} requests cannot cover {len(models)} models; give at least one per model")
    for name, value in (("max_tokens", max_tokens), ("max_duration_s", max_duration_s)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if not request_timeout_s > 0:
        raise ValueError(f"request_timeout_s must be positive, got {request_timeout_s}")
    levels = profile_levels(profile, requests=requests, concurrency=concurrency, level_duration_s=level_duration_s)
    prompts_sha256, prompts = load_prompts(prompts_path)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    wall_s, records, per_level, cut_short = asyncio.run(
        _run(
            base_url,
            models,
            levels,
            prompts,
            max_tokens=max_tokens,
            api_key=api_key,
            max_duration_s=max_duration_s,
            request_timeout_s=request_timeout_s,
            slo=slo,
            log=log,
        )
    )
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "target": base_url,
        "models": list(models),
        "profile": profile,
        "config": {
            "requests": requests,
            "concurrency": concurrency,
            "max_tokens": max_tokens,
            "max_duration_s": max_duration_s,
            "level_duration_s": level_duration_s,
            "request_timeout_s": request_timeout_s,
            "authenticated": api_key is not None,
            "levels": [asdict(level) for level in levels],
        },
        "prompt_set": {"version": PROMPT_SET_VERSION, "sha256": prompts_sha256, "prompts": len(prompts)},
        "slo": asdict(slo),
        "started_at": started_at,
        "wall_s": wall_s,
        "stopped_early": cut_short,
        "overall": summarize(records, wall_s, slo),
        "per_model": {model: summarize([r for r in records if r.model == model], wall_s, slo) for model in models},
        "per_level": per_level,
        "client": {"python": platform.python_version(), "httpx": httpx.__version__},
    }
    passed, reasons = health_verdict(report, slo)
    report["health"] = {"passed": passed, "reasons": reasons}
    return report
