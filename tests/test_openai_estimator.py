"""The openai estimator against a local OpenAI-compatible server: replies parse, and a bad key, model or URL
fails at once with a config error instead of turning every question into an unusable estimate."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from capt_jax.config import ConfigError
from capt_jax.data import abstract, load_examples
from capt_jax.estimate import estimation_target, model_estimates, openai_completer


class FakeOpenAI(BaseHTTPRequestHandler):
    replies: list[str] = []
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append(body)
        if self.headers["Authorization"] != "Bearer good-key":
            return self._send(401, {"error": {"message": "Incorrect API key", "type": "invalid_request_error"}})
        if body["model"] != "served-model":
            return self._send(404, {"error": {"message": "model not found", "type": "invalid_request_error"}})
        content = FakeOpenAI.replies[(len(FakeOpenAI.requests) - 1) % len(FakeOpenAI.replies)]
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        self._send(
            200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}
        )

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


@pytest.fixture
def examples():
    return load_examples("prontoqa", source="generate", num_examples=3, hops=(1, 2), seed=2)


def test_replies_from_the_endpoint_are_parsed(server, examples, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "good-key")
    FakeOpenAI.replies = [estimation_target(abstract(e), "map") for e in examples]
    FakeOpenAI.requests = []
    complete = openai_completer(server, "served-model", "TEST_KEY", max_retries=0)
    estimates = model_estimates(examples, complete, "map", retries=0)
    assert estimates.valid == 3 and [r["temperature"] for r in FakeOpenAI.requests] == [0.0] * 3


@pytest.mark.parametrize(
    "key, model, message",
    [("bad-key", "served-model", "was refused"), ("good-key", "no-such-model", "no model 'no-such-model'")],
)
def test_auth_and_not_found_fail_at_once(server, examples, monkeypatch, key, model, message):
    monkeypatch.setenv("TEST_KEY", key)
    FakeOpenAI.requests = []
    complete = openai_completer(server, model, "TEST_KEY", max_retries=0)
    with pytest.raises(ConfigError, match=message):
        model_estimates(examples, complete, "map", retries=3)
    assert len(FakeOpenAI.requests) == 1  # the first question stopped the run


def test_unreachable_url_and_missing_key_are_config_errors(examples, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "good-key")
    complete = openai_completer("http://127.0.0.1:9/v1", "served-model", "TEST_KEY", timeout=2, max_retries=0)
    with pytest.raises(ConfigError, match="eval.openai_base_url.*cannot reach"):
        model_estimates(examples, complete, "map")
    monkeypatch.delenv("TEST_KEY")
    with pytest.raises(ConfigError, match=r"needs an API key in \$TEST_KEY"):
        openai_completer("http://127.0.0.1:9/v1", "served-model", "TEST_KEY")
