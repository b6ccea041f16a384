"""`llm-assets serve ...` and `llm-assets loadtest`: help, and one-line errors without an endpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_assets.cli import main
from llm_assets.serving.vllm_server import free_port


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLM_ASSETS_HOME", str(tmp_path))
    return tmp_path


def _one_line_error(args: list[str], *needles: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_loadtest_help_names_the_slo_and_bounds() -> None:
    result = CliRunner().invoke(main, ["loadtest", "--help"])
    assert result.exit_code == 0
    for option in ("--profile", "--requests", "--concurrency", "--max-duration", "--p99", "--out", "--allow-host"):
        assert option in result.output


def test_loadtest_refuses_a_host_that_is_not_loopback(home: Path) -> None:
    _one_line_error(["loadtest", "--url", "http://example.org/v1", "--model", "m"], "example.org")


def test_loadtest_of_an_unreachable_endpoint_says_what_to_do(home: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    _one_line_error(["loadtest", "--url", url, "--model", "m", "--requests", "2"], "cannot reach", "llm-assets serve")


def test_serve_status_and_stop_without_an_endpoint(home: Path) -> None:
    _one_line_error(["serve", "status"], "no endpoint 'llm-assets'", "llm-assets serve start")
    result = CliRunner().invoke(main, ["serve", "stop"])
    assert result.exit_code == 0 and "was not running" in result.output


def test_serve_start_needs_an_api_key(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_ASSETS_SERVE_API_KEY", raising=False)
    _one_line_error(["serve", "start"], "LLM_ASSETS_SERVE_API_KEY")
