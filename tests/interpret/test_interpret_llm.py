"""The LLM client against a small OpenAI-compatible server on 127.0.0.1 that each test starts and
stops itself: well-formed, malformed and late answers, retries, the cache, the key; and the
interpret suite calling it end to end."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sae.config import ConfigError
from sae.interpret.llm import ChatClient, LLMConfig, LLMError, detect, explain, parse_json_object

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))  # the shared fixtures
from export_fixtures import script_model, script_sae, script_text  # noqa: F401

Reply = Callable[[dict], tuple]
"""request body -> (seconds to wait, message content[, HTTP status, {header: value}])."""


class LocalHTTP:
    """A threaded HTTP server on 127.0.0.1 (a port of its own), served while in a `with` block."""

    def _serve(self, handler) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class Server(LocalHTTP):
    """A loopback chat-completions endpoint answering with `replies` in turn (the last repeats)."""

    def __init__(self, replies: list[Reply]):
        self.replies, self.bodies, self.headers = replies, [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                outer.headers.append(dict(self.headers))
                i = min(len(outer.bodies), len(outer.replies)) - 1
                delay, content, status, extra = (*outer.replies[i](body), 200, {})[:4]
                time.sleep(delay)
                data = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
                try:
                    self.send_response(status)
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

            def log_message(self, *args):
                pass

        self._serve(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


def fixed(content: str, delay: float = 0.0) -> Reply:
    return lambda body: (delay, content)


def client(server: Server, tmp_path, **kw) -> ChatClient:
    kw.setdefault("backoff_s", 0.001)  # milliseconds of backoff: the tests stay fast
    cfg = LLMConfig(base_url=server.url, model="tiny", timeout_s=kw.pop("timeout_s", 5.0), **kw)
    cfg.check()
    return ChatClient(cfg, tmp_path / "cache")


CTX = [(["the", " cat"], [0.0, 1.5])]


def test_malformed_answers_are_retried_then_accepted(tmp_path):
    """Pins strict parsing with retries: prose, a JSON list, a missing key and an empty string
    are each rejected and asked again; a fenced object is accepted; the answer is returned."""
    replies = [
        fixed("Sure! The feature detects cats."),
        fixed('["cats"]'),
        fixed('{"explain": "cats"}'),
        fixed('{"explanation": ""}'),
        fixed('```json\n{"explanation": "the word cat"}\n```'),
    ]
    with Server(replies) as s:
        c = client(s, tmp_path, retries=4)
        assert explain(c, CTX) == "the word cat"
        assert c.requests == 5
        assert "<< cat>>" in s.bodies[0]["messages"][1]["content"]


def test_too_many_malformed_answers_raise_one_line(tmp_path):
    """Pins the give-up: after retries + 1 malformed answers an LLMError names the reason; a
    probability list of the wrong length or out of [0, 1] is malformed."""
    with Server([fixed('{"probabilities": [0.5]}'), fixed('{"probabilities": [2, 0]}')]) as s:
        c = client(s, tmp_path, retries=1)
        with pytest.raises(LLMError, match="malformed answer") as e:
            detect(c, "cats", [["a"], ["b"]])
        assert "\n" not in str(e.value) and c.requests == 2


def test_timeouts_are_retried_and_reported(tmp_path):
    """Pins the timeout: a late answer counts as a failure and is asked again (a prompt one is
    then accepted); an endpoint that is always late raises an LLMError saying so."""
    with Server([fixed('{"explanation": "late"}', 1.0), fixed('{"explanation": "cats"}')]) as s:
        c = client(s, tmp_path, retries=1, timeout_s=0.3)
        assert explain(c, CTX) == "cats" and c.requests == 2
    with Server([fixed('{"explanation": "late"}', 1.0)]) as s:
        c = client(s, tmp_path / "b", retries=1, timeout_s=0.3)
        with pytest.raises(LLMError, match="no answer within 0.3 s"):
            explain(c, CTX)


def test_cache_and_key(tmp_path, monkeypatch):
    """Pins the cache (the same request twice costs one call, also from a new client) and the
    key (sent as a bearer token from the named environment variable, never written to disk)."""
    monkeypatch.setenv("MY_LLM_KEY", "sk-secret-123")
    with Server([fixed('{"probabilities": [0.9, 0.1]}')]) as s:
        c = client(s, tmp_path, api_key_env="MY_LLM_KEY")
        assert detect(c, "cats", [["cat"], ["dog"]]) == [0.9, 0.1]
        assert detect(c, "cats", [["cat"], ["dog"]]) == [0.9, 0.1]
        c2 = client(s, tmp_path, api_key_env="MY_LLM_KEY")
        assert detect(c2, "cats", [["cat"], ["dog"]]) == [0.9, 0.1]
        assert len(s.bodies) == 1
        assert s.headers[0]["Authorization"] == "Bearer sk-secret-123"
    for f in (tmp_path / "cache").iterdir():
        assert "sk-secret" not in f.read_text()


def busy(status: int, retry_after: str | None) -> Reply:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return lambda body: (0.0, "", status, headers)


def test_rate_limits_are_waited_out_with_retry_after(tmp_path):
    """Pins issue 25.4: a 429/503 answer counted as a failure, so a rate-limited endpoint stopped
    the run after retries + 1 answers. They are now waited out, for their Retry-After when given
    (here 1 s once, so at least 1 s passes) and else a jittered backoff, and the answer that
    follows is used; past llm.max_wait_s of waiting the request fails in one line."""
    replies = [busy(429, "0"), busy(429, None), busy(503, "0"), busy(429, "1"), busy(503, None)]
    replies.append(fixed('{"explanation": "cats"}'))
    with Server(replies) as s:
        c = client(s, tmp_path, retries=1, max_wait_s=10.0)
        t0 = time.monotonic()
        assert explain(c, CTX) == "cats"
        assert c.requests == 6 and time.monotonic() - t0 >= 1.0 and c.waited_s >= 1.0
    with Server([busy(429, "0"), busy(429, "5")]) as s:
        c = client(s, tmp_path / "b", retries=1, max_wait_s=2.0)
        t0 = time.monotonic()
        with pytest.raises(LLMError, match="HTTP 429 2 times.*max_wait_s=2 s") as e:
            explain(c, CTX)
        assert "\n" not in str(e.value) and time.monotonic() - t0 < 2.0 and c.requests == 2


def test_the_key_goes_only_over_https_or_to_loopback(tmp_path, monkeypatch):
    """Pins issue 25.4: $OPENAI_API_KEY was sent to any --llm.base-url, plain http included. It
    now goes to https and loopback addresses only: to a plain-http host elsewhere the request
    carries no Authorization header, and an auth failure there says the key was withheld."""
    import httpx

    from sae.interpret.llm import key_may_go_to

    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-leak")
    seen: list[httpx.Request] = []

    def remote(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(401, json={"error": "no key"})

    cfg = LLMConfig(base_url="http://llm.example.org/v1", model="m", retries=0)
    cfg.check()
    c = ChatClient(cfg, tmp_path / "cache", transport=httpx.MockTransport(remote))
    with pytest.raises(LLMError, match="OPENAI_API_KEY was not sent") as e:
        explain(c, CTX)
    assert len(seen) == 1 and "authorization" not in seen[0].headers
    assert "sk-do-not-leak" not in str(e.value) and "\n" not in str(e.value)

    with Server([fixed('{"explanation": "cats"}')]) as s:  # loopback over http: sent
        assert explain(client(s, tmp_path / "b"), CTX) == "cats"
        assert s.headers[0]["Authorization"] == "Bearer sk-do-not-leak"
    for url, ok in [
        ("https://api.example.org/v1", True),
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.5.0.1/v1", True),
        ("http://[::1]:8000/v1", True),
        ("http://localhost:8000/v1", True),
        ("http://10.0.0.5:8000/v1", False),
        ("http://llm.example.org/v1", False),
        ("http://127.0.0.1.example.org/v1", False),
    ]:
        assert key_may_go_to(url) is ok, url


def test_loopback_means_a_loopback_address():
    """Pins issue 30.3: `http://evil.localhost` counted as loopback (any name ending in
    .localhost), so the key went over plain http to whatever that name resolves to. Loopback is
    now a loopback IP literal or exactly `localhost`."""
    from sae.interpret.llm import key_may_go_to

    for url, ok in [
        ("http://evil.localhost/v1", False),
        ("http://a.b.localhost:8000/v1", False),
        ("http://localhost.evil.com/v1", False),
        ("http://127.0.0.1.nip.io/v1", False),
        ("http://localhost:8000/v1", True),
        ("http://LOCALHOST/v1", True),
        ("http://127.0.0.1/v1", True),
        ("http://[::1]/v1", True),
        ("http://[::ffff:127.0.0.1]/v1", True),
        ("http://localhost./v1", False),
        ("http://0.0.0.0/v1", False),
        ("ftp://127.0.0.1/v1", False),
    ]:
        assert key_may_go_to(url) is ok, url


class CapturingProxy(LocalHTTP):
    """An HTTP proxy on 127.0.0.1 that records every request it receives (any method, CONNECT
    included) with its headers, and answers 502."""

    def __init__(self):
        self.seen: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n).decode(errors="replace") if n else ""
                outer.seen.append((self.requestline, {**dict(self.headers), "body": body}))
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_CONNECT = do_PUT = _record

            def log_message(self, *args):
                pass

        self._serve(Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


def test_the_key_never_goes_through_an_http_proxy(tmp_path, monkeypatch):
    """Pins issue 30.3: with HTTP_PROXY / ALL_PROXY set, the request to a plain-http loopback
    base_url (key in its Authorization header) went through the proxy in clear text. A
    plain-http endpoint is now reached directly: the proxy sees nothing, the endpoint the key."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-proxies")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    with CapturingProxy() as proxy, Server([fixed('{"explanation": "cats"}')]) as s:
        for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(var, proxy.url)
        c = client(s, tmp_path, retries=0)
        try:
            assert explain(c, CTX) == "cats"
        except LLMError:
            pass  # the proxy answered: the assertions below say why
        assert not any("sk-not-for-proxies" in str(r) for r in proxy.seen), proxy.seen
        assert proxy.seen == []
        assert s.headers[0]["Authorization"] == "Bearer sk-not-for-proxies"


def test_retry_after_is_finite_and_capped():
    """Pins issue 30.3: `Retry-After: nan` parsed to nan (and `inf` to inf), which no budget
    comparison stops. Every value now reads as a finite wait in [0, MAX_RETRY_AFTER_S], or None
    (unreadable: the backoff applies)."""
    import email.utils

    from sae.interpret import llm
    from sae.interpret.llm import retry_after

    for junk in ["nan", "NaN", "inf", "-inf", "Infinity", "-5", "1e3", "soon", "", " ", "0x10"]:
        assert retry_after(junk) is None, junk
    assert retry_after(None) is None
    assert retry_after("0") == 0.0 and retry_after(" 7 ") == 7.0 and retry_after("1.5") == 1.5
    MAX_RETRY_AFTER_S = llm.MAX_RETRY_AFTER_S
    assert retry_after("9" * 400) == MAX_RETRY_AFTER_S  # float() of it is inf
    assert retry_after("99999999999") == MAX_RETRY_AFTER_S
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25.0 <= retry_after(soon) <= 31.0
    assert retry_after("Fri, 31 Dec 9999 23:59:59 GMT") == MAX_RETRY_AFTER_S
    for date in ["Mon, 32 Foo 2015 07:28:00 GMT", "Sun, 06 Nov 1994 08:49:37 +9999"]:
        value = retry_after(date)
        assert value is None or 0.0 <= value <= MAX_RETRY_AFTER_S, date


@pytest.mark.parametrize("header", ["nan", "0"])
def test_an_endlessly_rate_limited_endpoint_costs_bounded_requests(tmp_path, header):
    """Pins issue 30.3: `Retry-After: nan` became a nan wait, which no budget comparison stops
    (here time.sleep(nan) raised and the request failed as a "malformed answer"; with the sleep
    patched out it went on for ever), and an endpoint answering `Retry-After: 0` was never given
    up on (0 adds nothing to the budget). The request now fails, in one line naming the status,
    after at most MAX_RATE_LIMITED answers, having waited a finite time. (This server relents
    after 300 answers, so the old code ends too.)"""
    import math

    from sae.interpret import llm

    def reply(body):
        return (0.0, '{"explanation": "cats"}') if len(s.bodies) > 300 else busy(429, header)(body)

    with Server([reply]) as s:
        c = client(s, tmp_path, retries=1, max_wait_s=10.0)
        with pytest.raises(LLMError, match="HTTP 429") as e:
            explain(c, CTX)
    assert "\n" not in str(e.value)
    assert c.requests <= llm.MAX_RATE_LIMITED and math.isfinite(c.waited_s)


def test_config_rejects_endless_waits():
    """Pins issue 30.3: llm.max_wait_s=inf or llm.timeout_s=inf passed the checks, so a
    rate-limited or silent endpoint could hold a request forever. Both must be finite now."""
    inf = float("inf")
    for kw in ({"max_wait_s": inf}, {"timeout_s": inf}, {"backoff_s": inf}, {"max_wait_s": -1}):
        with pytest.raises(ConfigError, match="finite"):
            LLMConfig(base_url="http://127.0.0.1:1/v1", model="m", **kw).check()


def test_an_answer_trickling_in_is_cut_at_the_timeout(tmp_path):
    """Pins issue 30.3: llm.timeout_s bounded each read, not the answer, so an endpoint sending
    one byte every 0.1 s held a request as long as it liked (here 4 s, then a valid answer that
    was accepted). The whole answer must now arrive within timeout_s."""
    answer = json.dumps({"choices": [{"message": {"content": '{"explanation": "cats"}'}}]})
    data = (" " * 40 + answer).encode()

    class Trickle(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for i in range(40):  # 40 blanks, 0.1 s apart, then the rest at once
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.1)
                self.wfile.write(data[40:])
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        cfg = LLMConfig(base_url=url, model="m", timeout_s=0.5, retries=0)
        c = ChatClient(cfg, tmp_path / "cache")
        t0 = time.monotonic()
        with pytest.raises(LLMError, match="no answer within 0.5 s") as e:
            explain(c, CTX)
        assert time.monotonic() - t0 < 2.0 and "\n" not in str(e.value)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_config_errors():
    """Pins the one-sentence errors: a base URL without a model, and a URL without a scheme."""
    with pytest.raises(ConfigError, match="give both"):
        LLMConfig(base_url="http://127.0.0.1:1/v1").check()
    with pytest.raises(ConfigError, match="http:// or https://"):
        LLMConfig(base_url="127.0.0.1:1", model="m").check()
    assert parse_json_object(' {"a": 1} ') == {"a": 1}


@pytest.mark.usefixtures("one_torch_thread")
def test_suite_calls_the_llm(tmp_path, script_sae, script_model, script_text, monkeypatch):
    """Pins the suite's LLM part end to end: sampled latents get the LLM's explanation, its model's
    name (issue 25.6: the export named a placeholder) and detection scores in latents.parquet and
    report.json; the explainer's prompt holds highlighted tokens; the key never reaches the report.
    A rerun without the LLM drops the interp_llm_* columns (issue 24: they stayed, stale, and the
    exports published them)."""
    from sae.eval import cli_main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-on-disk")

    def answer(body: dict) -> tuple[float, str]:
        text = body["messages"][1]["content"]
        if "probabilities" in body["messages"][0]["content"]:
            n = int(text.split("For each of these ")[1].split()[0])
            return 0.0, json.dumps({"probabilities": [0.5] * n})
        return 0.0, json.dumps({"explanation": "words"})

    out = tmp_path / "rep"
    with Server([answer]) as s:
        args = [str(script_sae), "--suite", "interpret", "--out", str(out), "--n-boot", "20",
                "--data.source", script_text, "--model-name", script_model]  # fmt: skip
        cli_main(args + ["--llm.base-url", s.url, "--llm.model", "tiny", "--llm.max-latents", "3"])
        assert any("<<" in b["messages"][1]["content"] for b in s.bodies)
    llm = json.loads((out / "report.json").read_text())["saes"][0]["results"]["interpret"]["llm"]
    assert llm["scored"] == 3 and not llm["errors"]
    assert llm["scores"]["auroc"]["value"] == 0.5  # constant probabilities: chance by design
    table = pq.read_table(out / "sae" / "latents.parquet").to_pandas()
    assert (table["interp_llm_explanation"] == "words").sum() == 3
    # The model that wrote them is recorded, and it is what the Neuronpedia upload names.
    from sae.interpret.export_fields import neuronpedia_explanations

    rows = table[table["interp_llm_explanation"] == "words"].to_dict("records")
    assert {r["interp_llm_model"] for r in rows} == {"tiny"}
    assert neuronpedia_explanations(rows[0])[-1]["modelName"] == "tiny"
    for f in out.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".md"):
            assert "sk-never-on-disk" not in f.read_text()
    cli_main(args)
    cols = pq.read_table(out / "sae" / "latents.parquet").column_names
    assert "interp_token_f1" in cols and not [c for c in cols if c.startswith("interp_llm_")]
