"""An OpenAI-compatible inference endpoint as a Dagster resource: vLLM, the reference server, or a remote one.

Assets talk to `InferenceEndpoint` and never to a concrete server, so the same asset runs against the CPU
reference server on a laptop (`python -m llm_assets.serving.reference_server`) and against vLLM in a cluster.
The API key is read from the environment variable named by `api_key_env`, never stored in config. Connect
errors and 5xx answers are retried with exponential backoff; anything else fails at once with a one-line
`EndpointError` that names the URL and the fix.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import time
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import dagster as dg
import httpx
from pydantic import Field, field_validator

from llm_assets.compliance.residency import note_egress

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_BACKOFF_S = 8.0


class EndpointError(Exception):
    """The endpoint cannot answer the call; the one-line message names the URL and what to do."""


class EndpointRequestError(EndpointError):
    """The server refused this one request (HTTP 400/413/422: e.g. a prompt longer than the model's context);
    other requests may still succeed, so a batch can record it against the request and go on."""


@cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for all calls; building it costs ~40 ms, more than a tiny model's answer."""
    return httpx.create_ssl_context()


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _reason(exc: Exception) -> str:
    """`[Errno 111] Connection refused` -> `connection refused`."""
    text = re.sub(r"\[Errno -?\d+\]\s*", "", str(exc)).strip() or type(exc).__name__
    return _one_line(text[:1].lower() + text[1:], 120)


def _server_message(response: httpx.Response) -> str:
    """The error text of an OpenAI (`error.message`), vLLM (`message`) or FastAPI (`detail`) error body."""
    try:
        body = response.json()
    except ValueError:
        return _one_line(response.text, 200) or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return _one_line(error["message"], 200)
        for key in ("message", "detail", "error"):
            if body.get(key):
                return _one_line(json.dumps(body[key]) if not isinstance(body[key], str) else body[key], 200)
    return _one_line(response.text, 200)


class InferenceEndpoint(dg.ConfigurableResource):
    """Any OpenAI-compatible server: the local vLLM or reference server, or a remote one.

    `base_url` is the OpenAI base URL, ending in `/v1`; `model` is the name the server serves (a LoRA module
    name selects that adapter on vLLM and the reference server).
    """

    base_url: str = Field(default="http://127.0.0.1:8000/v1", description="OpenAI base URL, ending in /v1.")
    model: str = Field(description="Model name the server serves (--served-model-name or a LoRA module name).")
    api_key_env: str | None = Field(
        default=None, description="NAME of the environment variable that holds the API key (never the key itself)."
    )
    timeout_s: float = Field(default=120.0, gt=0, description="Seconds to wait for one answer.")
    max_retries: int = Field(default=2, ge=0, description="Retries after connect errors and 5xx answers.")
    backoff_s: float = Field(default=0.5, ge=0, description="First retry delay; doubles per retry, capped at 8 s.")

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url {value!r}: not an http(s) URL; use e.g. http://127.0.0.1:8000/v1")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _check_api_key_env(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (e.g. LLM_ENDPOINT_API_KEY), not the key"
            )
        return value

    # ------------------------------------------------------------ API

    def health(self) -> float:
        """Seconds the server took to answer `GET /health` (at the server root); raises EndpointError if not 2xx."""
        root = self.base_url.removesuffix("/v1")
        started = time.monotonic()
        self._request("GET", f"{root}/health", expect_json=False)
        return time.monotonic() - started

    def models(self) -> list[str]:
        """The model ids the server serves (base model and LoRA modules)."""
        body = self._request("GET", f"{self.base_url}/models")
        try:
            return [str(entry["id"]) for entry in body["data"]]
        except (KeyError, TypeError) as exc:
            raise EndpointError(
                f"endpoint {self.base_url}/models: answer has no data[].id list; check base_url points at an "
                "OpenAI-compatible server"
            ) from exc

    def complete(self, prompt: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]], **params: Any) -> dict:
        """`POST /v1/completions`; returns the whole response (choices, usage). `params` go in the body as given
        (max_tokens, temperature, top_p, seed, stop, echo, logprobs, ...); `model` defaults to the resource's."""
        payload = {"model": self.model, **params, "prompt": prompt}
        body = self._request("POST", f"{self.base_url}/completions", json_body=payload)
        if not isinstance(body.get("choices"), list):
            raise EndpointError(f"endpoint {self.base_url}/completions: answer has no choices list; check base_url")
        return body

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        response_format: Mapping[str, Any] | None = None,
    ) -> str:
        """`POST /v1/chat/completions`; returns the first choice's message content.

        `response_format` ({"type": "json_object"} or a json_schema) is passed on; whether decoding is
        constrained depends on the server (vLLM: yes; the reference server: no), so validate the JSON.
        """
        params = {
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "seed": seed,
            "stop": stop if stop is None or isinstance(stop, str) else list(stop),
            "response_format": dict(response_format) if response_format is not None else None,
        }
        payload = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            **{k: v for k, v in params.items() if v is not None},
        }
        url = f"{self.base_url}/chat/completions"
        body = self._request("POST", url, json_body=payload)
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise EndpointError(f"endpoint {url}: answer has no choices[0].message.content; check base_url") from exc
        return "" if content is None else str(content)

    # ------------------------------------------------------------ transport

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise EndpointError(
                    f"endpoint {self.base_url}: environment variable {self.api_key_env} (api_key_env) is unset or "
                    "empty; export the API key there"
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(
        self, method: str, url: str, *, json_body: Mapping[str, Any] | None = None, expect_json: bool = True
    ) -> dict[str, Any]:
        headers = self._headers()
        note_egress(url, "inference_endpoint")
        attempts = self.max_retries + 1
        retry_reason = ""
        for attempt in range(1, attempts + 1):
            try:
                with httpx.Client(timeout=self.timeout_s, verify=_ssl_context()) as client:
                    response = client.request(method, url, json=json_body, headers=headers)
            except httpx.ConnectError as exc:
                retry_reason = f"unreachable ({_reason(exc)})"
            except httpx.ConnectTimeout:
                retry_reason = f"unreachable (no connection within {self.timeout_s:g}s)"
            except httpx.TimeoutException as exc:
                raise EndpointError(
                    f"endpoint {url}: no answer within {self.timeout_s:g}s; raise timeout_s or check the server's load"
                ) from exc
            except httpx.HTTPError as exc:
                raise EndpointError(f"endpoint {url}: request failed ({_reason(exc)}); check base_url") from exc
            else:
                if response.status_code >= 500:
                    retry_reason = f"HTTP {response.status_code} ({_server_message(response)})"
                elif response.status_code in (400, 413, 422):
                    raise EndpointRequestError(self._status_message(url, response))
                elif response.status_code >= 400:
                    raise EndpointError(self._status_message(url, response))
                else:
                    return self._parse(url, response) if expect_json else {}
            if attempt < attempts:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S))
        fix = "start the server or fix base_url" if retry_reason.startswith("unreachable") else "check the server's log"
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        raise EndpointError(f"endpoint {url}: {retry_reason}{tries}; {fix}")

    def _status_message(self, url: str, response: httpx.Response) -> str:
        status = response.status_code
        message = _server_message(response)
        if status in (401, 403):
            fix = (
                f"check the key in ${self.api_key_env} (api_key_env)"
                if self.api_key_env
                else "the server wants an API key: set api_key_env to the variable that holds it"
            )
        elif status == 404 and "model" in message.lower():
            fix = f"model {self.model!r} is not served; pick one of models() or fix the server's --lora-modules"
        elif status == 404:
            fix = "check base_url (it should end in /v1)"
        else:
            fix = "fix the request parameters"
        return f"endpoint {url}: HTTP {status} ({message}); {fix}"

    @staticmethod
    def _parse(url: str, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise EndpointError(
                f"endpoint {url}: answer is not JSON ({_one_line(response.text, 80)!r}); check base_url points at an "
                "OpenAI-compatible server"
            ) from exc
        if not isinstance(body, dict):
            raise EndpointError(f"endpoint {url}: answer is JSON but not an object; check base_url")
        return body
