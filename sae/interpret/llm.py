"""An optional LLM explainer and detection scorer over any OpenAI-compatible chat endpoint.

    sae eval SAE_DIR --suite interpret --llm.base-url http://localhost:8000/v1 --llm.model qwen2.5-7b
    OPENAI_API_KEY=... sae eval SAE_DIR --suite interpret --llm.base-url https://api.openai.com/v1 \
        --llm.model gpt-4o-mini --llm.max-latents 50

The explainer sees a latent's contexts from the explanation windows with the activating tokens
highlighted (Bills et al. 2023, "Language models can explain neurons in language models"); the
scorer sees held-out contexts, firing and not, and says for each how likely the latent fires
there (the detection scorer of Paulo et al. 2024, "Automatically interpreting millions of
features in large language models"). Answers must be one JSON object of the asked shape (a single
``` fence around it is tolerated, nothing else); a malformed answer, an HTTP error or a timeout (the
whole answer must arrive within `timeout_s`, however slowly its bytes trickle in) is retried `retries` times after an exponential backoff with full jitter (a uniform draw in
[0, backoff_s * 2^i], at most MAX_BACKOFF_S). A 429 or 503 answer (rate limit, overload) is
waited out instead, for its Retry-After when it gives a readable one (delay-seconds or an HTTP
date; `nan`, `inf`, negative numbers and junk are unreadable and get the backoff), else the same
backoff. Every single wait is finite: a Retry-After is read as at most MAX_RETRY_AFTER_S, and a
wait that would pass `max_wait_s` (finite, checked) ends the request at once, in one line; so
does the MAX_RATE_LIMITED-th 429/503 answer to one request, so an endpoint answering
`Retry-After: 0` forever costs a bounded number of requests.
Answers are cached on disk by a hash of the request (endpoint, model, messages), so a rerun costs
nothing. The API key is read from the environment variable `api_key_env` at request time, is
never written anywhere, and is sent only over https or to a loopback host over http. Loopback
means the URL's host is a loopback IP literal (127.0.0.0/8, ::1, an IPv4-mapped 127.x) or exactly
`localhost`: names under it (`evil.localhost`) and names that merely start with it
(`localhost.evil.com`, `127.0.0.1.nip.io`) go to whatever a resolver answers, so they are not
loopback; over plain http to any other host the key would travel in clear text, so it is
withheld. A plain-http endpoint is reached directly, never through an `HTTP_PROXY`/`ALL_PROXY`
from the environment (nor with `.netrc` credentials): a proxy would read the request, key
included, in clear text. Over https the environment's proxies are used (they see only an
encrypted tunnel). Redirects are not followed, so the key never goes anywhere but `base_url`.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import math
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from sae.config import ConfigError, first_line
from sae.fsutil import atomic_write_json, sha256_json

T = TypeVar("T")


@dataclass
class LLMConfig:
    """`--llm.*`: the chat endpoint used by the interpret suite (off unless base_url is set)."""

    base_url: str | None = None
    """OpenAI-compatible API root, e.g. http://localhost:8000/v1 (None: no LLM is called)."""
    model: str | None = None
    """model name sent with every request."""
    api_key_env: str = "OPENAI_API_KEY"
    """environment variable holding the API key (unset: no Authorization header is sent)."""
    timeout_s: float = 60.0
    """seconds allowed per request (connecting, and the whole answer arriving)."""
    retries: int = 2
    """further attempts after a malformed answer, an HTTP error or a timeout."""
    backoff_s: float = 1.0
    """base of the backoff between attempts: attempt i waits a uniform draw in
    [0, backoff_s * 2^i] seconds (full jitter), at most 60 s."""
    max_wait_s: float = 300.0
    """seconds one request may spend waiting out 429/503 answers (their Retry-After, else the
    backoff) before it fails; also, at most MAX_RATE_LIMITED such answers per request."""
    max_latents: int = 20
    """scored latents explained and scored by the LLM (a seeded random sample)."""

    def check(self) -> None:
        """One-sentence ConfigError for a bad combination (called by EvalConfig)."""
        if self.base_url is None and self.model is None:
            return
        if not self.base_url or not self.model:
            raise ConfigError(
                f"llm.base_url={self.base_url!r} and llm.model={self.model!r}: give both to use "
                "an LLM, or neither."
            )
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"llm.base_url={self.base_url!r} must start with http:// or https://."
            )
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ConfigError(
                f"llm.timeout_s={self.timeout_s} must be a positive finite number of seconds."
            )
        if self.retries < 0:
            raise ConfigError(f"llm.retries={self.retries} must be >= 0.")
        if not all(v >= 0 and math.isfinite(v) for v in (self.backoff_s, self.max_wait_s)):
            raise ConfigError(
                f"llm.backoff_s={self.backoff_s} and llm.max_wait_s={self.max_wait_s} must be "
                ">= 0 and finite (seconds)."
            )
        if self.max_latents < 1:
            raise ConfigError(f"llm.max_latents={self.max_latents} must be at least 1.")

    @property
    def enabled(self) -> bool:
        return bool(self.base_url and self.model)


class LLMError(RuntimeError):
    """Every attempt at one request failed (the last reason is in the message)."""


def parse_json_object(content: str) -> dict[str, Any]:
    """The JSON object that is the whole answer (one surrounding ``` fence allowed)."""
    text = content.strip()
    if text.startswith("```"):
        first_nl = text.find("\n")
        if first_nl < 0 or not text.endswith("```"):
            raise ValueError("unterminated code fence")
        text = text[first_nl + 1 : -3].strip()
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def is_loopback_host(host: str) -> bool:
    """Whether `host` (a URL's host) is a loopback IP literal (127.0.0.0/8, ::1, an IPv4-mapped
    127.x) or exactly `localhost`. No name is resolved: `evil.localhost`, `localhost.evil.com`
    or `127.0.0.1.nip.io` reach whatever a resolver answers, so they are not loopback."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def key_may_go_to(url: str) -> bool:
    """Whether an API key may be sent to `url`: over https, or over http to a loopback host
    (plain http elsewhere would carry it in clear text)."""
    u = httpx.URL(url)
    if u.scheme == "https":
        return True
    return u.scheme == "http" and is_loopback_host(u.host)


MAX_BACKOFF_S = 60.0
"""the longest single backoff, whatever backoff_s and the attempt."""
MAX_RETRY_AFTER_S = 3600.0
"""the longest single Retry-After honoured; a longer one reads as this (and so, past
llm.max_wait_s, ends the request at once)."""
MAX_RATE_LIMITED = 50
"""429/503 answers one request may receive before it fails, however short their waits."""
RATE_LIMITED = (429, 503)
MAX_ANSWER_BYTES = 4 << 20
"""the longest answer body read (a chat completion of one JSON object is a few kB)."""
_DELAY_SECONDS = re.compile(r"[0-9]+(\.[0-9]+)?")


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds (digits; a fraction tolerated)
    or an HTTP date (a past one is 0). None when absent or unreadable (`nan`, `inf`, a negative
    number, junk): then the backoff applies. Always finite, in [0, MAX_RETRY_AFTER_S]."""
    if value is None:
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        seconds = float(text)  # digits only: never nan or negative; inf for 400 nines
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
            seconds = when.timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class ChatClient:
    """POST /chat/completions with retries, backoff, a timeout and an on-disk answer cache."""

    def __init__(
        self, cfg: LLMConfig, cache_dir: str | Path, transport: httpx.BaseTransport | None = None
    ):
        cfg.check()
        self.cfg = cfg
        self.cache = Path(cache_dir)
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"  # type: ignore[union-attr]
        # Plain http never through the environment's proxies (nor .netrc): they would read the
        # request, key included, in clear text. Over https a proxy sees only a TLS tunnel.
        self.http = httpx.Client(
            timeout=cfg.timeout_s,
            follow_redirects=False,
            transport=transport,
            trust_env=httpx.URL(self.url).scheme == "https",
        )
        self.requests = 0
        """HTTP requests made (cache hits make none)."""
        self.waited_s = 0.0
        """seconds spent waiting out 429/503 answers and backing off, over all requests."""

    def close(self) -> None:
        self.http.close()

    def _headers(self) -> tuple[dict[str, str], str]:
        """(request headers, a note for errors when a key was withheld)."""
        key = os.environ.get(self.cfg.api_key_env)
        if not key:
            return {}, ""
        if not key_may_go_to(self.url):
            return {}, (
                f" (${self.cfg.api_key_env} was not sent: a key goes only over https or to a "
                "loopback address)"
            )
        return {"Authorization": f"Bearer {key}"}, ""

    def _post(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, str | None, bytes]:
        """(status, Retry-After header, answer body) of one POST; raises httpx errors. The body
        must arrive whole within timeout_s and hold at most MAX_ANSWER_BYTES: httpx's timeout
        bounds each read, so a server sending a byte at a time could hold a request for ever."""
        deadline = time.monotonic() + self.cfg.timeout_s
        with self.http.stream("POST", self.url, json=body, headers=headers) as r:
            if r.status_code in RATE_LIMITED:
                return r.status_code, r.headers.get("Retry-After"), b""
            r.raise_for_status()
            data = bytearray()
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > MAX_ANSWER_BYTES:
                    raise ValueError(f"the answer is longer than {MAX_ANSWER_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("the answer did not end in time", request=r.request)
        return r.status_code, None, bytes(data)

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.cfg.backoff_s * 2.0 ** min(attempt, 64), MAX_BACKOFF_S))

    def _sleep(self, seconds: float) -> None:
        self.waited_s += seconds
        time.sleep(seconds)

    def ask(self, messages: list[dict[str, str]], validate: Callable[[dict[str, Any]], T]) -> T:
        """`validate(answer object)` of the first well-formed answer; cached by request."""
        body = {"model": self.cfg.model, "messages": messages, "temperature": 0}
        path = self.cache / f"{sha256_json({'url': self.url, **body})}.json"
        if path.is_file():
            try:
                return validate(json.loads(path.read_text())["answer"])
            except (ValueError, KeyError, TypeError):
                pass  # a cache entry from an older prompt shape: ask again
        headers, withheld = self._headers()
        last, failures, limited, waited = "no attempt", 0, 0, 0.0
        while True:
            try:
                self.requests += 1
                status, retry_header, data = self._post(body, headers)
                if status in RATE_LIMITED:
                    wait = retry_after(retry_header)
                    wait = self._backoff(limited) if wait is None else wait
                    limited += 1
                    if waited + wait > self.cfg.max_wait_s:
                        raise LLMError(
                            f"{self.url} ({self.cfg.model}) answered HTTP {status} "
                            f"{limited} times; waiting {wait:.3g} s more would pass "
                            f"llm.max_wait_s={self.cfg.max_wait_s:g} s."
                        )
                    if limited >= MAX_RATE_LIMITED:
                        raise LLMError(
                            f"{self.url} ({self.cfg.model}) answered HTTP {status} "
                            f"{limited} times (at most {MAX_RATE_LIMITED} rate-limited answers per request)."
                        )
                    waited += wait
                    self._sleep(wait)
                    continue
                content = json.loads(data)["choices"][0]["message"]["content"]
                obj = parse_json_object(content)
                value = validate(obj)
            except httpx.TimeoutException:
                last = f"no answer within {self.cfg.timeout_s:g} s"
            except httpx.HTTPError as e:
                first = first_line(e)
                last = f"HTTP error: {first}{withheld}"
            except (ValueError, KeyError, TypeError, IndexError) as e:
                last = f"malformed answer: {e}"
            else:
                atomic_write_json(path, {"answer": obj})
                return value
            if failures >= self.cfg.retries:
                break
            self._sleep(self._backoff(failures))
            failures += 1
        raise LLMError(f"{self.url} ({self.cfg.model}) failed {self.cfg.retries + 1} times: {last}")


def highlight(tokens: Sequence[str], acts: Sequence[float]) -> str:
    """A context as text with every activating token wrapped in << >>."""
    return "".join(f"<<{t}>>" if a > 0 else t for t, a in zip(tokens, acts, strict=True))


def explain(client: ChatClient, contexts: list[tuple[list[str], list[float]]]) -> str:
    """A short explanation of a latent from its highlighted contexts."""
    shown = "\n".join(
        f"{i + 1}. {highlight(t, a)}  (max {max(a):.3g})" for i, (t, a) in enumerate(contexts)
    )
    messages = [
        {
            "role": "system",
            "content": "You explain features of a language model. Answer with one JSON object "
            'only: {"explanation": "<a short phrase>"}.',
        },
        {
            "role": "user",
            "content": "The feature fires on the tokens marked <<like this>> in these texts:\n"
            f"{shown}\n\nWhat does the feature detect?",
        },
    ]

    def ok(obj: dict[str, Any]) -> str:
        e = obj["explanation"]
        if not isinstance(e, str) or not e.strip() or len(e) > 300:
            raise ValueError("'explanation' must be a non-empty string of at most 300 characters")
        return e.strip()

    return client.ask(messages, ok)


def detect(client: ChatClient, explanation: str, contexts: list[list[str]]) -> list[float]:
    """For each context, the LLM's probability that the explained feature fires in it."""
    shown = "\n".join(f"{i + 1}. {''.join(t)}" for i, t in enumerate(contexts))
    n = len(contexts)
    messages = [
        {
            "role": "system",
            "content": "You predict where a language-model feature fires. Answer with one JSON "
            'object only: {"probabilities": [p_1, ..., p_n]}, one number in [0, 1] per text.',
        },
        {
            "role": "user",
            "content": f"Feature: {explanation}\n\nFor each of these {n} texts, how likely is the "
            f"feature to fire on some token of it?\n{shown}",
        },
    ]

    def ok(obj: dict[str, Any]) -> list[float]:
        p = obj["probabilities"]
        if not isinstance(p, list) or len(p) != n:
            raise ValueError(f"'probabilities' must be a list of {n} numbers")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in p):
            raise ValueError("'probabilities' must hold numbers")
        if not all(0.0 <= v <= 1.0 for v in p):
            raise ValueError("'probabilities' must lie in [0, 1]")
        return [float(v) for v in p]

    return client.ask(messages, ok)
