"""LLM teachers (Anthropic Messages API, OpenAI chat.completions) producing `Quadruple` records.

    teacher = LLMTeacher(LLMTeacherConfig(provider="anthropic", model="claude-sonnet-4-5"),
                         cache=ResponseCache("results/teachers/cache"), cost_log="logs/cost.jsonl")
    quad = teacher.critique(problem, attempt)

One `critique` call:
  1. builds the versioned prompt (`cts.teachers.prompts`) with the attempt's steps numbered;
  2. looks the request up in the content-addressed cache — a hit makes no HTTP request;
  3. on a miss calls the official SDK (its own retries off) inside our retry loop: exponential
     backoff with jitter on 429 / 5xx / 408 / timeouts / connection errors, `retry-after` honoured,
     no retry on other 4xx (400, 401, 403, ...);
  4. validates the reply against the JSON schema; an unusable reply is sent back with the validation
     error appended, at most `max_reasks` times, then `InvalidReplyError` naming the problem id.
     The turns of a conversation enter the cache only once it ends in a valid reply: a reply that
     stays invalid is recorded as failed in the cost log (never cached as an answer), so a rerun
     asks the server again;
  5. appends one line per completion to the cost log (tokens, USD, latency, cache-hit flag).

Secrets: API keys come only from ANTHROPIC_API_KEY / OPENAI_API_KEY, are read when the first real
request is needed (a fully cached run needs no key), and are never written to cache keys, cache
entries, cost logs, outputs or exception messages (SDK error text is redacted and SDK exceptions are
not chained, since they carry the request with its auth header).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cts.answer_format import NO_ERROR, answer_line_span, attempt_steps
from cts.tasks.schema import Problem, Quadruple
from cts.teachers.cache import CachedResponse, ResponseCache, request_key
from cts.teachers.prompts import (
    PROMPT_VERSION,
    ResponseFormatError,
    build_messages,
    parse_response,
    reask_message,
)

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "PRICES_AS_OF",
    "PRICES_USD_PER_MTOK",
    "CostLog",
    "InvalidReplyError",
    "LLMTeacher",
    "LLMTeacherConfig",
    "MissingAPIKeyError",
    "TeacherError",
    "cost_usd",
    "retry_delay_s",
]

PROVIDERS = ("anthropic", "openai")
API_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
BASE_URL_ENV = {"anthropic": "CTS_ANTHROPIC_BASE_URL", "openai": "CTS_OPENAI_BASE_URL"}

# USD per million tokens (input, output), standard tier, no batch/prompt-caching discounts.
# Copied by hand from the providers' public pricing pages; re-check before reporting costs.
# Matched by longest model-name prefix, so dated ids ("claude-3-5-haiku-20241022") resolve.
PRICES_AS_OF = "2025-11-01"
PRICES_USD_PER_MTOK: dict[str, dict[str, tuple[float, float]]] = {
    "anthropic": {
        "claude-opus-4-5": (5.00, 25.00),
        "claude-opus-4": (15.00, 75.00),  # also claude-opus-4-1
        "claude-sonnet-4": (3.00, 15.00),  # also claude-sonnet-4-5
        "claude-haiku-4-5": (1.00, 5.00),
        "claude-3-7-sonnet": (3.00, 15.00),
        "claude-3-5-sonnet": (3.00, 15.00),
        "claude-3-5-haiku": (0.80, 4.00),
        "claude-3-haiku": (0.25, 1.25),
    },
    "openai": {
        "gpt-5-nano": (0.05, 0.40),
        "gpt-5-mini": (0.25, 2.00),
        "gpt-5": (1.25, 10.00),
        "gpt-4.1-nano": (0.10, 0.40),
        "gpt-4.1-mini": (0.40, 1.60),
        "gpt-4.1": (2.00, 8.00),
        "gpt-4o-mini": (0.15, 0.60),
        "gpt-4o": (2.50, 10.00),
    },
}

_RETRYABLE_STATUS = frozenset({408, 409, 429})  # plus every 5xx (529 = Anthropic "overloaded")
_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{6,})")  # provider key shapes: sk-ant-..., sk-proj-..., sk-...


class TeacherError(RuntimeError):
    """A teacher could not produce a record; the message names the problem id (never a key)."""


class InvalidReplyError(TeacherError):
    """The reply stayed unusable after the bounded re-asks (`teacher.on_invalid` decides: skip | fail)."""


class MissingAPIKeyError(TeacherError):
    """The API key environment variable is not set."""


@dataclass(kw_only=True, frozen=True)
class LLMTeacherConfig:
    """What determines the teacher's requests (all but base_url/timeout enter the cache key).

    Attributes:
      provider: "anthropic" or "openai".
      model: provider model id.
      temperature: sampling temperature; 0 for reproducibility. None = provider default (some
        recent models reject an explicit temperature).
      max_tokens: output token cap per reply.
      json_mode: OpenAI only: request `response_format={"type": "json_object"}`.
      max_reasks: how many times an unusable reply is sent back with its validation error.
      max_retries: retries per request on 429 / 5xx / timeouts / connection errors.
      timeout_s: client timeout per HTTP request.
      backoff_base_s, backoff_max_s: delay before retry k (0-based) is drawn uniformly from
        [d/2, d] with d = min(backoff_max_s, backoff_base_s * 2**k), unless the server sent retry-after.
      base_url: API base URL override (else $CTS_<PROVIDER>_BASE_URL, else the SDK default).
    """

    provider: str
    model: str
    temperature: float | None = 0.0
    max_tokens: int = 2048
    json_mode: bool = True
    max_reasks: int = 2
    max_retries: int = 5
    timeout_s: float = 120.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    base_url: str | None = None

    def __post_init__(self):
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}, got {self.provider!r}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        for name in ("max_tokens",):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("max_reasks", "max_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("timeout_s", "backoff_base_s", "backoff_max_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def teacher_name(self) -> str:
        return f"{self.provider}:{self.model}"


# COST ---------------------------------------------------------------------------------------------

def cost_usd(provider: str, model: str, input_tokens: int, output_tokens: int) -> float | None:
    """USD cost of one call from PRICES_USD_PER_MTOK (longest prefix match); None if unpriced."""
    table = PRICES_USD_PER_MTOK.get(provider, {})
    matches = [p for p in table if model.startswith(p)]
    if not matches:
        return None
    price_in, price_out = table[max(matches, key=len)]
    return (input_tokens * price_in + output_tokens * price_out) / 1e6


class CostLog:
    """Append-only JSONL of completions: one whole line per write, so concurrent appends stay intact."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.totals = {"calls": 0, "cache_hits": 0, "input_tokens": 0, "output_tokens": 0,
                       "cost_usd": 0.0, "unpriced_calls": 0}

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
            if record.get("cache_hit"):
                self.totals["cache_hits"] += 1
            else:
                self.totals["calls"] += 1
                self.totals["input_tokens"] += record.get("input_tokens", 0)
                self.totals["output_tokens"] += record.get("output_tokens", 0)
                if record.get("cost_usd") is None:
                    self.totals["unpriced_calls"] += 1
                else:
                    self.totals["cost_usd"] += record["cost_usd"]


# RETRIES ------------------------------------------------------------------------------------------

def _parse_retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or HTTP date); None if absent/bad."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max((when - dt.datetime.now(dt.timezone.utc)).total_seconds(), 0.0)


def retry_delay_s(retry_index: int, cfg: LLMTeacherConfig, rng: random.Random,
                  retry_after_s: float | None = None) -> float:
    """Seconds to wait before retry `retry_index` (0-based).

    The server's retry-after wins when present (waiting less would only earn another 429);
    otherwise exponential backoff with "equal jitter": uniform in [d/2, d],
    d = min(backoff_max_s, backoff_base_s * 2**retry_index).
    """
    if retry_after_s is not None:
        return retry_after_s
    d = min(cfg.backoff_max_s, cfg.backoff_base_s * 2.0 ** retry_index)
    return d / 2 + rng.uniform(0.0, d / 2)


@dataclass(frozen=True)
class _CallFailure:
    retryable: bool
    summary: str  # redacted, safe to log or raise
    retry_after_s: float | None = None


def _redact(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "[REDACTED]")
    return _KEY_LIKE.sub("[REDACTED]", text)


def _classify(provider: str, exc: Exception, secret: str | None) -> _CallFailure | None:
    """Map an SDK exception to retry policy; None for exceptions that are not API errors."""
    sdk = _import_sdk(provider)
    if isinstance(exc, sdk.APITimeoutError):
        return _CallFailure(True, "request timed out")
    if isinstance(exc, sdk.APIConnectionError):
        return _CallFailure(True, f"connection error ({type(exc).__name__})")
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        detail = _redact(str(getattr(exc, "message", "") or ""), secret)[:300]
        retryable = status in _RETRYABLE_STATUS or status >= 500
        return _CallFailure(retryable, f"HTTP {status} {type(exc).__name__}: {detail}",
                            _parse_retry_after(getattr(exc.response, "headers", None)))
    if isinstance(exc, sdk.APIError):
        return _CallFailure(False, f"{type(exc).__name__}: {_redact(str(exc), secret)[:300]}")
    return None


def _import_sdk(provider: str):
    if provider == "anthropic":
        import anthropic
        return anthropic
    import openai
    return openai


# TEACHER ------------------------------------------------------------------------------------------

@dataclass
class _Completion:
    response: CachedResponse
    cache_hit: bool
    request: dict[str, Any] | None = None


@dataclass
class LLMTeacher:
    """Critiques first attempts with an LLM. Thread-safe: `critique` may run in a thread pool.

    Args:
      config: the request-shaping settings.
      cache: response cache; None disables caching.
      cost_log: a CostLog or a path for one; None disables the log.
      sleep: called with the backoff delay (inject a no-op in tests).
      rng: jitter source (seeded for reproducible delays).
      error_classifier: optional rule-based tagger `(problem, attempt, first_error_step) -> label`
        for `Quadruple.error_type` (e.g. from cts.taxonomy); default: the LLM's own tag.
    """

    config: LLMTeacherConfig
    cache: ResponseCache | None = None
    cost_log: CostLog | str | os.PathLike | None = None
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    error_classifier: Callable[[Problem, str, int | None], str] | None = None

    def __post_init__(self):
        if self.cost_log is not None and not isinstance(self.cost_log, CostLog):
            self.cost_log = CostLog(self.cost_log)
        self._client = None
        self._secret: str | None = None
        self._client_lock = threading.Lock()
        self._rng_lock = threading.Lock()

    # -- SDK client ------------------------------------------------------------------------------
    def _get_client(self):
        with self._client_lock:
            if self._client is None:
                cfg = self.config
                var = API_KEY_ENV[cfg.provider]
                key = os.environ.get(var, "").strip()
                if not key:
                    raise MissingAPIKeyError(
                        f"{var} is not set: export {var} to use the {cfg.provider} teacher "
                        f"(keys are read only from the environment; cached responses need none)")
                base_url = cfg.base_url or os.environ.get(BASE_URL_ENV[cfg.provider]) or None
                sdk = _import_sdk(cfg.provider)
                cls = sdk.Anthropic if cfg.provider == "anthropic" else sdk.OpenAI
                # SDK retries off: ours count attempts, honour injected sleep and log latency
                self._client = cls(api_key=key, base_url=base_url, max_retries=0,
                                   timeout=cfg.timeout_s)
                self._secret = key
            return self._client

    def _request(self, system: str, messages: list[dict[str, str]]) -> dict[str, Any]:
        """Provider-neutral description of one call; exactly what the cache key hashes."""
        cfg = self.config
        params: dict[str, Any] = {}
        if cfg.provider == "openai" and cfg.json_mode:
            params["response_format"] = {"type": "json_object"}
        return {"provider": cfg.provider, "model": cfg.model, "system": system,
                "messages": messages, "temperature": cfg.temperature,
                "max_tokens": cfg.max_tokens, "params": params, "prompt_version": PROMPT_VERSION}

    def _send(self, request: dict[str, Any]) -> CachedResponse:
        """One HTTP request through the SDK (may raise SDK exceptions)."""
        client = self._get_client()
        if request["provider"] == "anthropic":
            extra = {} if request["temperature"] is None else {"temperature": request["temperature"]}
            msg = client.messages.create(
                model=request["model"], max_tokens=request["max_tokens"], system=request["system"],
                messages=request["messages"], extra_body=extra or None)
            text = "".join(getattr(b, "text", "") for b in msg.content if b.type == "text")
            return CachedResponse(text, int(msg.usage.input_tokens), int(msg.usage.output_tokens))
        kwargs = dict(request["params"])
        if request["temperature"] is not None:
            kwargs["temperature"] = request["temperature"]
        resp = client.chat.completions.create(
            model=request["model"], max_completion_tokens=request["max_tokens"],
            messages=[{"role": "system", "content": request["system"]}, *request["messages"]],
            **kwargs)
        text = (resp.choices[0].message.content or "") if resp.choices else ""
        usage = resp.usage
        return CachedResponse(text, int(usage.prompt_tokens) if usage else 0,
                              int(usage.completion_tokens) if usage else 0)

    def _log(self, **record) -> None:
        if self.cost_log is not None:
            self.cost_log.append({
                "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                "provider": self.config.provider, "model": self.config.model,
                "prompt_version": PROMPT_VERSION, **record})

    def complete(self, system: str, messages: list[dict[str, str]], problem_id: str,
                 reask: int = 0, store: bool = True) -> _Completion:
        """The response to one request: from the cache, else via the API with retries.
        store=False leaves a fresh response out of the cache (the caller stores it once valid)."""
        request = self._request(system, messages)
        key = request_key(request)
        t0 = time.perf_counter()
        if self.cache is not None:
            hit = self.cache.get(request)
            if hit is not None:
                self._log(problem_id=problem_id, reask=reask, cache_hit=True, cache_key=key,
                          input_tokens=hit.input_tokens, output_tokens=hit.output_tokens,
                          cost_usd=0.0, latency_s=round(time.perf_counter() - t0, 4),
                          http_attempts=0)
                return _Completion(hit, cache_hit=True, request=request)
        self._get_client()  # a missing key fails here, before any timing or logging
        t0 = time.perf_counter()  # latency = HTTP attempts + backoff, not SDK import
        failure: _CallFailure | None = None
        for attempt in range(self.config.max_retries + 1):
            if failure is not None:
                with self._rng_lock:
                    delay = retry_delay_s(attempt - 1, self.config, self.rng, failure.retry_after_s)
                self.sleep(delay)
            try:
                response = self._send(request)
            except Exception as exc:  # noqa: BLE001 (classified below; unknown ones re-raised)
                failure = _classify(self.config.provider, exc, self._secret)
                if failure is None:
                    raise
                if not failure.retryable:
                    break
                continue
            cost = cost_usd(self.config.provider, self.config.model,
                            response.input_tokens, response.output_tokens)
            self._log(problem_id=problem_id, reask=reask, cache_hit=False, cache_key=key,
                      input_tokens=response.input_tokens, output_tokens=response.output_tokens,
                      cost_usd=cost, latency_s=round(time.perf_counter() - t0, 4),
                      http_attempts=attempt + 1)
            if self.cache is not None and store:
                self.cache.put(request, response)
            return _Completion(response, cache_hit=False, request=request)
        n = attempt + 1
        self._log(problem_id=problem_id, reask=reask, cache_hit=False, cache_key=key,
                  input_tokens=0, output_tokens=0, cost_usd=0.0,
                  latency_s=round(time.perf_counter() - t0, 4), http_attempts=n,
                  error=failure.summary)
        # raised outside the except block on purpose: SDK exceptions hold the request (auth header)
        raise TeacherError(f"problem {problem_id!r}: {self.config.teacher_name} request failed "
                           f"after {n} attempt(s): {failure.summary}")

    def critique(self, problem: Problem, attempt: str) -> Quadruple:
        """Critique and revise one first attempt.

        Args:
          problem: the Problem (kind decides step splitting and labels).
          attempt: y⁰, the first attempt text.

        Returns:
          A Quadruple with the LLM's critique, revision, first error step, the step's char span,
          and `teacher_error_type` = the LLM's tag. A "none" verdict gives attempt_correct=True
          and revision = attempt.

        Raises:
          TeacherError: the API failed after retries.
          InvalidReplyError: no valid reply after max_reasks re-asks (nothing of it is cached).
          MissingAPIKeyError: a real request was needed and the key variable is unset.
        """
        if not isinstance(attempt, str):
            raise TypeError(f"problem {problem.id!r}: attempt must be a string, got {type(attempt).__name__}")
        steps = attempt_steps(problem.kind, attempt)
        system, messages = build_messages(problem, attempt)
        errors: list[str] = []
        turns: list[_Completion] = []
        for reask in range(self.config.max_reasks + 1):
            done = self.complete(system, messages, problem.id, reask, store=False)
            turns.append(done)
            text = done.response.text
            try:
                reply = parse_response(text, problem.kind, len(steps))
                break
            except ResponseFormatError as e:
                errors.append(str(e))
                messages = [*messages, {"role": "assistant", "content": text or "(empty reply)"},
                            {"role": "user", "content": reask_message(str(e))}]
        else:
            if self.cache is not None:  # an entry of an older run must not replay the failure either
                for t in turns:
                    if t.cache_hit:
                        self.cache.delete(t.request)
            self._log(problem_id=problem.id, reask=len(turns) - 1, cache_hit=False, input_tokens=0,
                      output_tokens=0, cost_usd=0.0, failed="invalid reply", error=errors[-1][:300])
            raise InvalidReplyError(
                f"problem {problem.id!r}: {self.config.teacher_name} gave no valid reply after "
                f"{self.config.max_reasks} re-ask(s); last error: {errors[-1]}")
        if self.cache is not None:  # the whole conversation, so a rerun replays it without a request
            for t in turns:
                if not t.cache_hit:
                    self.cache.put(t.request, t.response)
        return self._to_quadruple(problem, attempt, steps, reply)

    def _to_quadruple(self, problem: Problem, attempt: str, steps: list[tuple[int, int]],
                      reply: dict[str, Any]) -> Quadruple:
        step = reply["first_error_step"]
        correct = reply["error_type"] == NO_ERROR
        if correct:
            span = None
        elif step < len(steps):
            span = list(steps[step])
        elif problem.kind == "math":  # step n_steps = the final answer line, or where it is missing
            answer = answer_line_span(attempt)
            span = list(answer) if answer else [len(attempt), len(attempt)]
        else:
            span = [0, len(attempt)]  # code without any step is wrong as a whole
        tag = reply["error_type"]
        error_type = tag if self.error_classifier is None else self.error_classifier(problem, attempt, step)
        return Quadruple(
            problem_id=problem.id, prompt=problem.prompt, attempt=attempt,
            critique=reply["critique"], revision=attempt if correct else reply["revision"],
            attempt_correct=correct, first_error_step=step, error_span=span, n_steps=len(steps),
            error_type=error_type, teacher=self.config.teacher_name, teacher_error_type=tag)

    def provenance(self) -> dict[str, Any]:
        """Settings, prompt version, cache counters and cost totals for a run record (no secrets)."""
        from cts.teachers.prompts import prompt_template_hash
        cfg = self.config
        return {
            "teacher": cfg.teacher_name, "temperature": cfg.temperature, "max_tokens": cfg.max_tokens,
            "json_mode": cfg.json_mode, "max_reasks": cfg.max_reasks, "max_retries": cfg.max_retries,
            "prompt_version": PROMPT_VERSION, "prompt_template_hash": prompt_template_hash(),
            "prices_as_of": PRICES_AS_OF,
            "cache": None if self.cache is None else self.cache.provenance(),
            "cost": None if self.cost_log is None else dict(self.cost_log.totals),
        }
