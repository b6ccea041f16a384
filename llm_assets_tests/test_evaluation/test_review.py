"""The review loop end to end: labels through the page's HTTP API, into the lake, then the gate and the sensor."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
from click.testing import CliRunner

from llm_assets.cli import main
from llm_assets.defs.evaluation.assets import eval_qa_pilot
from llm_assets.defs.evaluation.review import eval_qa_validated, review_definitions, review_labels_sensor
from llm_assets.evaluation.review import Label, ReviewError, ReviewStore, acceptance, latest_labels
from llm_assets.evaluation.review_server import ReviewServer, make_server
from llm_assets.lake import LocalLakeStorage
from llm_assets.resources.endpoint import InferenceEndpoint
from llm_assets.resources.lake import LocalLakeResource

UNUSED_ENDPOINT = InferenceEndpoint(base_url="http://127.0.0.1:9/v1", model="unused")  # the LLM generator is off

VERSION = "ab" * 32
PREFIX = f"evaluation/qa/pilot/{VERSION[:16]}"
LABELS = f"evaluation/qa/reviews/{VERSION[:16]}"


def pilot_item(n: int) -> dict[str, Any]:
    return {
        "id": f"item-{n}",
        "kind": "multiple_choice" if n % 2 else "cloze",
        "question": f"Η πρωτεύουσα αριθμός {n} είναι ____.",
        "choices": ["Αθήνα", "Πάτρα", "Λάρισα"] if n % 2 else [],
        "answer": "Αθήνα",
        "answer_index": 0 if n % 2 else None,
        "source_id": f"doc-{n}",
        "span": [10, 15],
        "lang": "el",
        "domain": "general",
        "difficulty": "easy",
    }


@pytest.fixture
def pilot(storage: LocalLakeStorage) -> LocalLakeStorage:
    items = "".join(json.dumps(pilot_item(n), ensure_ascii=False) + "\n" for n in range(3))
    storage.write_bytes(f"{PREFIX}/items.jsonl", items.encode())
    storage.write_bytes("evaluation/qa/pilot/current.json", json.dumps({"version": VERSION, "prefix": PREFIX}).encode())
    return storage


@pytest.fixture
def server(pilot: LocalLakeStorage) -> Iterator[ReviewServer]:
    with make_server(pilot, port=0) as running:
        thread = threading.Thread(target=running.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        yield running
        running.shutdown()
        thread.join(5)


def call(server: ReviewServer, path: str, body: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(server.url.rstrip("/") + path, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            raw, status, kind = response.read(), response.status, response.headers.get_content_type()
    except urllib.error.HTTPError as error:
        raw, status, kind = error.read(), error.code, error.headers.get_content_type()
    return status, json.loads(raw) if kind == "application/json" else raw.decode()


def label(reviewer: str, item_id: str, ok: bool = True, **overrides: Any) -> dict[str, Any]:
    return {"reviewer": reviewer, "item_id": item_id, "correct": ok, "grounded": ok, "clear": True, "safe": True} | (
        overrides
    )


def materialize(instance: dg.DagsterInstance, lake: LocalLakeResource, **config: Any) -> dg.ExecuteInJobResult:
    return dg.materialize(
        [eval_qa_pilot, eval_qa_validated],
        selection=[eval_qa_validated],
        resources={"lake": lake, "inference_endpoint": UNUSED_ENDPOINT},
        instance=instance,
        run_config={"ops": {"eval_qa_validated": {"config": config}}} if config else None,
        raise_on_error=False,
    )


def check_of(result: dg.ExecuteInJobResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def test_review_page_api_writes_labels_to_the_lake(server: ReviewServer, pilot: LocalLakeStorage) -> None:
    status, page = call(server, "/")
    assert status == 200 and "<form" in page and "localStorage" in page and "http" not in page.split("<body>")[1]

    status, body = call(server, "/api/next?reviewer=ana")
    assert status == 200 and body["item"]["id"] == "item-0"
    assert body["progress"] == {"reviewer": "ana", "version": VERSION, "labelled": 0, "total": 3, "remaining": 3}

    status, body = call(server, "/api/next?reviewer=ana&after=item-0")
    assert body["item"]["id"] == "item-1", "skip moves on to the next item"

    assert call(server, "/api/label", label("ana", "item-0", comment="fine"))[0] == 200
    status, body = call(server, "/api/label", label("ana", "item-1", ok=False, version=VERSION, comment="wrong span"))
    assert status == 200 and body == {"ok": True, "progress": body["progress"]}
    assert body["progress"]["labelled"] == 2
    assert call(server, "/api/next?reviewer=ana")[1]["item"]["id"] == "item-2"
    assert call(server, "/api/next?reviewer=bo")[1]["item"]["id"] == "item-0", "queues are per reviewer"

    assert call(server, "/api/label", label("ana", "item-2"))[0] == 200
    assert call(server, "/api/next?reviewer=ana")[1]["item"] is None
    assert call(server, "/api/progress?reviewer=ana")[1]["remaining"] == 0

    lines = [json.loads(line) for line in pilot.read_bytes(f"{LABELS}/ana.jsonl").splitlines()]
    assert [row["item_id"] for row in lines] == ["item-0", "item-1", "item-2"]
    assert lines[1]["correct"] is False and lines[1]["comment"] == "wrong span" and lines[1]["labelled_at"]

    assert call(server, "/api/label", label("ana", "item-1", comment="on second look, fine"))[0] == 200
    lines = [json.loads(line) for line in pilot.read_bytes(f"{LABELS}/ana.jsonl").splitlines()]
    assert len(lines) == 3 and lines[-1]["item_id"] == "item-1" and lines[-1]["correct"] is True


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status", "message"),
    [
        ("/api/next?reviewer=Ana%20B", None, "", 400, "invalid reviewer name"),
        ("/api/progress", None, "", 400, "invalid reviewer name"),
        ("/api/label", label("ana", "item-9"), "application/json", 400, "unknown item id 'item-9'"),
        (
            "/api/label",
            label("ana", "item-0", correct="yes"),
            "application/json",
            400,
            "correct: must be true or false",
        ),
        ("/api/label", {"reviewer": "ana", "item_id": "item-0"}, "application/json", 400, "missing fields clear"),
        ("/api/label", label("ana", "item-0", score=3), "application/json", 400, "unknown fields score"),
        ("/api/label", label("ana", "item-0", version="x"), "application/json", 400, "the pilot set changed"),
        ("/api/label", label("ana", "item-0", comment="x" * 2001), "application/json", 400, "comment: 2001 characters"),
        ("/api/label", b"{not json", "application/json", 400, "Expecting property name"),
        ("/api/label", [1, 2], "application/json", 400, "must be a JSON object"),
        ("/api/label", label("ana", "item-0"), "text/plain", 415, "Content-Type: application/json"),
        ("/api/nope", None, "", 404, "no such page"),
    ],
)
def test_review_page_refuses_bad_input_with_one_line(  # type: ignore[no-untyped-def]
    server, pilot, path, body, content_type, status, message
) -> None:
    got, payload = call(server, path, body, content_type)
    assert got == status
    assert message in payload["error"] and "\n" not in payload["error"]
    assert not pilot.exists(f"{LABELS}/ana.jsonl")


def test_review_page_refuses_foreign_host(server: ReviewServer) -> None:
    request = urllib.request.Request(server.url, headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=5)
    assert error.value.code == 403


def test_no_pilot_is_one_line_everywhere(storage: LocalLakeStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ReviewError, match=r"no pilot eval set; run `llm-assets demo` first"):
        make_server(storage)
    monkeypatch.setattr("llm_assets.cli._lake_storage", lambda: storage)
    for command in (["review", "status"], ["review", "serve", "--port", "0"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1
        assert result.output.strip() == "Error: no pilot eval set; run `llm-assets demo` first"


def test_acceptance_uses_latest_label_per_reviewer_and_item() -> None:
    def make(reviewer: str, item: str, at: str, ok: bool = True, safe: bool = True) -> Label:
        return Label(item, reviewer, ok, True, True, safe, "", at)

    labels = [
        make("ana", "a", "2026-01-01", ok=False),
        make("ana", "a", "2026-01-02"),  # replaces the rejection
        make("ana", "b", "2026-01-01", safe=False),
        make("bo", "a", "2026-01-01"),
        make("bo", "c", "2026-01-01", ok=False),
    ]
    assert len(latest_labels(labels)) == 4
    result = acceptance(labels)
    assert (result.labels, result.items_reviewed, result.reviewers) == (4, 3, ["ana", "bo"])
    assert result.rates == {"correct": 0.75, "grounded": 1.0, "clear": 1.0, "safe": 0.75}
    assert result.accepted_items == ["a"] and result.all_criteria == 2
    assert result.passes(0.75) and not result.passes(0.9) and result.failing(0.9) == ["correct", "safe"]
    assert not acceptance([]).passes(0.0), "never passes without labels"


def test_eval_qa_validated_gate(  # type: ignore[no-untyped-def]
    pilot, lake, instance
) -> None:
    awaiting = materialize(instance, lake)
    check = check_of(awaiting)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["status"].value == "awaiting review: no labels"
    summary = json.loads(pilot.read_bytes(f"evaluation/qa/validated/{VERSION[:16]}/summary.json"))
    assert summary["labels"] == 0 and summary["passed"] is False

    store = ReviewStore(pilot)
    store.record("ana", "item-0", True, True, True, True)
    store.record("ana", "item-1", False, True, True, True, "answer is ambiguous")
    store.record("bo", "item-0", True, True, True, True)
    below = materialize(instance, lake)
    check = check_of(below)
    assert not check.passed and not below.success, "a locked set's failed gate blocks"
    assert check.metadata["acceptance_correct"].value == pytest.approx(2 / 3)
    assert check.metadata["acceptance_grounded"].value == 1.0 and check.metadata["labels"].value == 3
    summary = json.loads(pilot.read_bytes(f"evaluation/qa/validated/{VERSION[:16]}/summary.json"))
    assert summary["rates"]["correct"] == pytest.approx(2 / 3) and summary["accepted_item_count"] == 1
    accepted = pilot.read_bytes(f"evaluation/qa/validated/{VERSION[:16]}/accepted.jsonl").decode().splitlines()
    assert [json.loads(line)["id"] for line in accepted] == ["item-0"]

    unlocked = check_of(materialize(instance, lake, locked=False, min_acceptance=0.5))
    assert unlocked.passed and unlocked.severity == dg.AssetCheckSeverity.WARN
    warned = materialize(instance, lake, locked=False)
    assert warned.success and check_of(warned).severity == dg.AssetCheckSeverity.WARN and not check_of(warned).passed

    store.record("ana", "item-1", True, True, True, True, "fixed after discussion")
    passed = materialize(instance, lake)
    assert passed.success and check_of(passed).passed
    assert check_of(passed).metadata["status"].value == "accepted on every criterion (3 labels)"


def test_review_status_prints_acceptance(pilot: LocalLakeStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llm_assets.cli._lake_storage", lambda: pilot)
    assert "awaiting review: no labels" in CliRunner().invoke(main, ["review", "status"]).output
    ReviewStore(pilot).record("ana", "item-0", True, True, True, False)
    result = CliRunner().invoke(main, ["review", "status"])
    assert result.exit_code == 0, result.output
    assert "below 90% on safe (1 label)" in result.output
    assert "correct   100.0%  (1/1)" in result.output and "safe        0.0%  (0/1)" in result.output


def test_review_labels_sensor_requests_a_run_only_when_labels_change(  # type: ignore[no-untyped-def]
    pilot, lake, instance
) -> None:
    defs = dg.Definitions.merge(
        dg.Definitions(assets=[eval_qa_pilot], resources={"lake": lake, "inference_endpoint": UNUSED_ENDPOINT}),
        review_definitions(),
    )

    def tick(cursor: str | None) -> dg.SensorResult:
        with dg.build_sensor_context(
            instance=instance,
            instance_ref=instance.get_ref(),
            cursor=cursor,
            resources={"lake": lake},
            definitions=defs,
        ) as context:
            return review_labels_sensor.evaluate_tick(context)

    quiet = tick(None)
    assert quiet.run_requests == [] and "awaiting review" in (quiet.skip_message or "")

    ReviewStore(pilot).record("ana", "item-0", True, True, True, True)
    first = tick(quiet.cursor)
    assert len(first.run_requests) == 1
    assert first.run_requests[0].asset_selection is None, "runs the sensor's target, eval_qa_validated"

    assert tick(first.cursor).run_requests == [], "unchanged labels request nothing"

    ReviewStore(pilot).record("ana", "item-0", False, True, True, True)
    second = tick(first.cursor)
    assert len(second.run_requests) == 1 and second.run_requests[0].run_key != first.run_requests[0].run_key
