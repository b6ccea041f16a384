"""Stands in for vLLM's interpreter in supervisor tests: `-c` prints a version, `-m ENTRYPOINT --port P
--served-model-name N [--lora-modules a=b ...]` serves /health and /v1/completions with vLLM's key check."""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main(argv: list[str]) -> int:
    if argv[:1] == ["-c"]:
        print("0.0.0-fake")
        return 0
    args = argv[2:]
    port = int(args[args.index("--port") + 1])
    names = [args[args.index("--served-model-name") + 1]]
    if "--lora-modules" in args:
        names += [item.split("=", 1)[0] for item in args[args.index("--lora-modules") + 1 :] if "=" in item]
    key = os.environ.get("VLLM_API_KEY")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200, {}) if self.path == "/health" else self._send(404, {})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if key and self.headers.get("Authorization") != f"Bearer {key}":
                return self._send(401, {"error": "Unauthorized"})
            if body.get("model") not in names:
                return self._send(404, {"error": f"no model {body.get('model')}"})
            self._send(
                200,
                {
                    "model": body["model"],
                    "choices": [{"text": f"pid {os.getpid()}"}],
                    "usage": {"completion_tokens": 1},
                },
            )

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
