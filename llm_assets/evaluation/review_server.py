"""The review queue as a small local web page: one pilot item at a time, four checkboxes, a comment.

Standard library only and bound to 127.0.0.1: the page has no external assets and works offline. Writes go
through `ReviewStore`, so the labels land in the lake where the review sensor picks them up. A POST must be
`application/json` and name this host, so another web page open in the same browser cannot submit labels.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from llm_assets.evaluation.review import ReviewError, ReviewStore, check_reviewer
from llm_assets.lake import LakeError, LakeStorage

MAX_BODY_BYTES = 64 * 1024
LABEL_FIELDS = {"reviewer", "item_id", "correct", "grounded", "clear", "safe", "comment", "version"}


class ReviewServer(ThreadingHTTPServer):
    """Serves the review page and its JSON API for the lake `storage`."""

    daemon_threads = True

    def __init__(self, storage: LakeStorage, host: str, port: int, *, verbose: bool = False) -> None:
        ReviewStore(storage)  # fail before listening when there is no pilot set
        self.storage = storage
        self.verbose = verbose
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "llm-assets-review"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": " ".join(message.split())})

    def _host_allowed(self) -> bool:
        port = self.server.server_address[1]
        return self.headers.get("Host", "") in {f"127.0.0.1:{port}", f"localhost:{port}"}

    def do_GET(self) -> None:
        if not self._host_allowed():
            return self._error(HTTPStatus.FORBIDDEN, "open the page as http://127.0.0.1:<port>/")
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if url.path == "/":
                return self._send(HTTPStatus.OK, PAGE.encode("utf-8"), "text/html; charset=utf-8")
            if url.path == "/api/next":
                store = ReviewStore(self.server.storage)
                reviewer = check_reviewer(query.get("reviewer", ""))
                item = store.next_item(reviewer, after=query.get("after") or None)
                return self._json(HTTPStatus.OK, {"item": item, "progress": store.progress(reviewer)})
            if url.path == "/api/progress":
                store = ReviewStore(self.server.storage)
                return self._json(HTTPStatus.OK, store.progress(check_reviewer(query.get("reviewer", ""))))
        except (ReviewError, LakeError) as exc:
            return self._error(HTTPStatus.BAD_REQUEST, str(exc))
        return self._error(HTTPStatus.NOT_FOUND, f"no such page {url.path}; open /")

    def do_POST(self) -> None:
        if not self._host_allowed():
            return self._error(HTTPStatus.FORBIDDEN, "open the page as http://127.0.0.1:<port>/")
        if urlsplit(self.path).path != "/api/label":
            return self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path}; POST labels to /api/label")
        if self.headers.get_content_type() != "application/json":
            return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the label as Content-Type: application/json")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            return self._error(HTTPStatus.BAD_REQUEST, f"body must be 1 to {MAX_BODY_BYTES} bytes of JSON")
        try:
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise ReviewError("body must be a JSON object with reviewer, item_id and the four criteria")
            unknown = sorted(set(body) - LABEL_FIELDS)
            if unknown:
                raise ReviewError(f"unknown fields {', '.join(unknown)}; send only {', '.join(sorted(LABEL_FIELDS))}")
            missing = sorted({"reviewer", "item_id", "correct", "grounded", "clear", "safe"} - set(body))
            if missing:
                raise ReviewError(f"missing fields {', '.join(missing)}")
            store = ReviewStore(self.server.storage)
            if body.get("version") not in (None, store.version):
                raise ReviewError(f"the pilot set changed (now {store.version[:16]}); reload the page")
            store.record(
                body["reviewer"],
                body["item_id"],
                body["correct"],
                body["grounded"],
                body["clear"],
                body["safe"],
                body.get("comment", ""),
            )
            return self._json(HTTPStatus.OK, {"ok": True, "progress": store.progress(body["reviewer"])})
        except ValueError as exc:  # ReviewError and json's decode error
            return self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except LakeError as exc:
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))


def make_server(storage: LakeStorage, port: int = 0, *, verbose: bool = False) -> ReviewServer:
    """A review server on 127.0.0.1 (port 0: any free port), not yet serving; call `serve_forever()`."""
    return ReviewServer(storage, "127.0.0.1", port, verbose=verbose)


def serve(storage: LakeStorage, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the review page until interrupted."""
    with ReviewServer(storage, host, port, verbose=True) as server:
        server.serve_forever()


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Eval set review</title>
<style>
body { font: 16px/1.5 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
header { display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; }
#progress { color: #555; }
.card { border: 1px solid #ccc; border-radius: 8px; padding: 1rem 1.25rem; margin: 1rem 0; }
.meta { color: #666; font-size: 0.9rem; }
.question { font-size: 1.15rem; white-space: pre-wrap; }
li.answer { font-weight: bold; }
fieldset { border: none; padding: 0; display: flex; gap: 1.25rem; flex-wrap: wrap; }
textarea { width: 100%; min-height: 4rem; margin: 0.5rem 0; }
button { font-size: 1rem; padding: 0.4rem 1.1rem; }
#message { min-height: 1.5rem; }
.error { color: #b00020; }
.saved { color: #1b5e20; }
.hint { color: #666; font-size: 0.85rem; }
</style>
</head>
<body>
<header>
  <h1>Eval set review</h1>
  <label>Reviewer <input id="reviewer" placeholder="your-name" pattern="[a-z0-9][a-z0-9_.\\-]{0,63}"></label>
  <button id="start" type="button">Start</button>
  <span id="progress"></span>
</header>
<p id="message"></p>
<section id="item" class="card" hidden>
  <p class="meta" id="meta"></p>
  <p class="question" id="question"></p>
  <ol id="choices" type="A"></ol>
  <p>Answer: <strong id="answer"></strong></p>
  <p class="meta">Source <code id="source"></code>, characters <code id="span"></code></p>
  <form id="form">
    <fieldset>
      <label><input type="checkbox" name="correct"> correct</label>
      <label><input type="checkbox" name="grounded"> grounded</label>
      <label><input type="checkbox" name="clear"> clear</label>
      <label><input type="checkbox" name="safe"> safe</label>
    </fieldset>
    <textarea name="comment" maxlength="2000" placeholder="Comment (optional)"></textarea>
    <button type="submit" id="submit">Submit</button>
    <button type="button" id="skip">Skip</button>
    <span class="hint">Tab and Space tick the boxes; Ctrl+Enter submits.</span>
  </form>
</section>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const form = $("form");
let current = null;
let version = null;

function say(text, kind) {
  $("message").textContent = text || "";
  $("message").className = kind || "";
}

function busy(on) {
  $("submit").disabled = on;
  $("skip").disabled = on;
}

function showProgress(p) {
  $("progress").textContent = p.labelled + " / " + p.total + " labelled";
}

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new Error("cannot reach the review server at " + location.origin + "; is `llm-assets review serve` running?");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) { throw new Error(body.error || "server answered " + response.status + " " + response.statusText); }
  return body;
}

async function load(after, notice) {
  const reviewer = $("reviewer").value.trim();
  localStorage.setItem("llm-assets-reviewer", reviewer);
  let url = "/api/next?reviewer=" + encodeURIComponent(reviewer);
  if (after) { url += "&after=" + encodeURIComponent(after); }
  try {
    const body = await api(url);
    showProgress(body.progress);
    version = body.progress.version;
    current = body.item;
    if (!current) {
      $("item").hidden = true;
      say(((notice || "") + " All items labelled. Thank you!").trim(), "saved");
      return;
    }
    say(notice || "", notice ? "saved" : "");
    $("meta").textContent = [current.kind, current.lang, current.domain, current.difficulty, current.id].join(" · ");
    $("question").textContent = current.question;
    const choices = $("choices");
    choices.replaceChildren();
    (current.choices || []).forEach((choice, index) => {
      const li = document.createElement("li");
      li.textContent = choice;
      if (index === current.answer_index) { li.className = "answer"; }
      choices.appendChild(li);
    });
    $("answer").textContent = current.answer;
    $("source").textContent = current.source_id;
    $("span").textContent = (current.span || []).join("–");
    form.reset();
    $("item").hidden = false;
    form.correct.focus();
  } catch (error) {
    $("item").hidden = true;
    say(error.message, "error");
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const label = {
    reviewer: $("reviewer").value.trim(),
    item_id: current.id,
    version: version,
    correct: form.correct.checked,
    grounded: form.grounded.checked,
    clear: form.clear.checked,
    safe: form.safe.checked,
    comment: form.comment.value,
  };
  busy(true);
  try {
    const body = await api("/api/label", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(label),
    });
    showProgress(body.progress);
    const ticked = ["correct", "grounded", "clear", "safe"].filter((name) => label[name]);
    await load(label.item_id, "Saved " + label.item_id + " (" + (ticked.join(", ") || "no criteria met") + ").");
  } catch (error) {
    say(error.message, "error");
  } finally {
    busy(false);
  }
});
form.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    form.requestSubmit();
  }
});
$("skip").addEventListener("click", () => load(current && current.id));
$("start").addEventListener("click", () => load(null));
$("reviewer").addEventListener("keydown", (event) => {
  if (event.key === "Enter") { load(null); }
});
$("reviewer").value = localStorage.getItem("llm-assets-reviewer") || "";
if ($("reviewer").value) { load(null); }
</script>
</body>
</html>
"""
