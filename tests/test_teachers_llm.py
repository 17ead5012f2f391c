"""LLM teachers: prompt/steps/schema units, cache and cost units, and the real Anthropic/OpenAI SDKs
driven against a local fake HTTP server (tests/fake_llm_server.py) — no network, dummy keys only.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer, Reply  # noqa: E402

from cts.io import DataError, read_jsonl  # noqa: E402
from cts.tasks.schema import Problem, Quadruple  # noqa: E402
from cts.teachers import cli, prompts  # noqa: E402
from cts.teachers.cache import CachedResponse, ResponseCache, request_key  # noqa: E402
from cts.teachers.llm import (  # noqa: E402
    LLMTeacher,
    LLMTeacherConfig,
    MissingAPIKeyError,
    TeacherError,
    cost_usd,
    retry_delay_s,
)
from cts.answer_format import CODE_LABELS, LABELS, MATH_LABELS, NO_ERROR, attempt_steps  # noqa: E402
from cts.teachers.prompts import ResponseFormatError, parse_response  # noqa: E402

ANTHROPIC_DUMMY_KEY = "sk-ant-test-XXXX-dummy-7f3a91"
OPENAI_DUMMY_KEY = "sk-test-XXXX-dummy-openai-c42e"
DUMMY_KEYS = (ANTHROPIC_DUMMY_KEY, OPENAI_DUMMY_KEY)

# Everything the tests produce that must never contain a key: artifact folders and exception text.
_ARTIFACT_DIRS: list[Path] = []
_MESSAGES: list[str] = []

MATH_PROBLEM = Problem(id="gsm8k-train-00001", task="gsm8k", kind="math", split="train",
                       prompt="Ann has 3 apples and buys 4 bags of 2. How many apples?",
                       reference="4 * 2 = 8\n3 + 8 = 11\n#### 11", answer="11", horizon=2)
MATH_ATTEMPT = "Ann buys 4 * 2 = 8 apples.\n  Total: 3 + 8 = 12\n\n#### 12\n"
MATH_REPLY = {"first_error_step": 1, "error_type": "arithmetic_slip",
              "critique": "Step 1 adds 3 + 8 but writes 12; it is 11.",
              "revision": "Ann buys 4 * 2 = 8 apples.\nTotal: 3 + 8 = 11\n#### 11"}


@pytest.fixture(autouse=True)
def _dummy_env(monkeypatch):
    """Dummy keys only; no env var may steer the SDKs to a real endpoint."""
    for var in ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL", "ANTHROPIC_AUTH_TOKEN",
                "CTS_ANTHROPIC_BASE_URL", "CTS_OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_DUMMY_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_DUMMY_KEY)


@pytest.fixture
def art(tmp_path):
    _ARTIFACT_DIRS.append(tmp_path)
    return tmp_path


def _teacher(server, art, provider="anthropic", sleeps=None, **cfg) -> LLMTeacher:
    base = server.anthropic_base_url if provider == "anthropic" else server.openai_base_url
    model = "claude-haiku-4-5" if provider == "anthropic" else "gpt-4o-mini"
    cfg = {"timeout_s": 2.0, **cfg}
    return LLMTeacher(LLMTeacherConfig(provider=provider, model=model, base_url=base, **cfg),
                      cache=ResponseCache(art / "cache"), cost_log=art / "cost.jsonl",
                      sleep=(sleeps.append if sleeps is not None else lambda s: None))


def _raises(exc_type, fn, *args, match=None):
    with pytest.raises(exc_type, match=match) as info:
        fn(*args)
    _MESSAGES.append(str(info.value))
    return info.value


# STEPS --------------------------------------------------------------------------------------------

def test_math_steps_are_nonempty_lines_before_final_answer():
    text = "Ann buys 4 * 2 = 8 apples.\n  Total: 3 + 8 = 12\n\n#### 12\n"
    # line 0 = [0, 26); line 1 starts at 27, content after 2 spaces at 29, "Total: 3 + 8 = 12" has 17 chars
    assert attempt_steps("math", text) == [(0, 26), (29, 46)]
    assert attempt_steps("math", "a\n\nb") == [(0, 1), (3, 4)]  # no #### line: every non-empty line
    assert attempt_steps("math", "#### 5") == []
    assert attempt_steps("math", "") == []


def test_code_steps_are_function_body_lines_without_comments():
    text = ("import math\n"            # 0..11: outside any function
            "def f(a,\n"               # 12..20: multi-line signature
            "      b):\n"              # 21..30: still the signature
            "    # add them\n"         # 31..45: comment
            "\n"                       # 46: blank
            "    s = a + b\n"          # 47..60: content at 51..60
            "    return s  # done\n")  # 61..81: content at 65..80
    spans = attempt_steps("code", text)
    assert [text[s:e] for s, e in spans] == ["s = a + b", "return s  # done"]
    assert spans == [(51, 60), (65, 81)]
    script = "n = int(input())\n# echo\nprint(n)\n"
    assert [script[s:e] for s, e in attempt_steps("code", script)] == ["n = int(input())", "print(n)"]
    with pytest.raises(ValueError, match="kind"):
        attempt_steps("prose", "x")


def test_step_rules_agree_with_the_rule_based_tagger():
    """Step indices mean the same lines in the teacher's prompt and in cts.taxonomy's diagnosis
    (teacher-vs-rule agreement): both read steps from cts.answer_format."""
    from cts.taxonomy import diagnose
    text = "a\n#### 1\nb\n#### 2"
    assert [text[s:e] for s, e in attempt_steps("math", text)] == ["a", "#### 1", "b"]
    code = "import re\ndef f(s):\n    # strip\n    t = s.strip()\n\n    return t[::-1]\n"
    assert [code[s:e] for s, e in attempt_steps("code", code)] == ["t = s.strip()", "return t[::-1]"]
    d = diagnose(MATH_PROBLEM, MATH_ATTEMPT)  # 3 + 8 = 12: the slip is step 1, as MATH_REPLY says
    assert d.step == MATH_REPLY["first_error_step"] and d.span == attempt_steps("math", MATH_ATTEMPT)[1]


# PROMPT AND RESPONSE SCHEMA -----------------------------------------------------------------------

def test_parse_response_accepts_fenced_json_and_rejects_bad_replies():
    good = json.dumps(MATH_REPLY)
    assert parse_response("```json\n" + good + "\n```", "math", 2) == MATH_REPLY
    assert parse_response(good, "math", 2) == MATH_REPLY
    with pytest.raises(ResponseFormatError, match="not valid JSON"):
        parse_response("{first_error_step: 1", "math", 2)
    bad = [({**MATH_REPLY, "error_type": "syntax"}, "error_type"),           # code label on math
           ({**MATH_REPLY, "first_error_step": 3}, "first_error_step"),      # steps 0, 1 + answer line 2
           ({**MATH_REPLY, "error_type": "none"}, "first_error_step"),      # "none" needs null step
           ({**MATH_REPLY, "first_error_step": None}, "first_error_step"),  # an error needs a step
           ({k: v for k, v in MATH_REPLY.items() if k != "revision"}, "revision")]
    for obj, field in bad:
        with pytest.raises(ResponseFormatError, match=field):
            parse_response(json.dumps(obj), "math", 2)
    assert parse_response(json.dumps({**MATH_REPLY, "first_error_step": 2}), "math", 2)  # answer line
    with pytest.raises(ResponseFormatError, match="first_error_step"):  # code has no answer line
        parse_response(json.dumps({**MATH_REPLY, "error_type": "syntax", "first_error_step": 2}), "code", 2)
    none_reply = {"first_error_step": None, "error_type": "none", "critique": "Correct.", "revision": "x"}
    assert parse_response(json.dumps(none_reply), "code", 3)["error_type"] == "none"


def test_prompt_numbers_steps_and_hash_tracks_template(monkeypatch):
    system, messages = prompts.build_messages(MATH_PROBLEM, MATH_ATTEMPT)
    assert "arithmetic_slip" in system and "wrong_algorithm" not in system
    assert ("[0] Ann buys 4 * 2 = 8 apples.\n[1] Total: 3 + 8 = 12\n[2] #### 12   (final answer line)\n"
            in messages[0]["content"])
    _, no_answer = prompts.build_messages(MATH_PROBLEM, "4 * 2 = 8")
    assert "[1] (no final `#### N` answer line)" in no_answer[0]["content"]
    assert set(LABELS) == {*MATH_LABELS, *CODE_LABELS, NO_ERROR}
    code_problem = Problem(id="mbpp-1", task="mbpp", kind="code", prompt="Reverse s.",
                           reference="def f(s):\n    return s[::-1]", tests=["assert f('ab') == 'ba'"])
    code_system, _ = prompts.build_messages(code_problem, "def f(s):\n    return s")
    assert all(label in code_system for label in CODE_LABELS)
    assert "arithmetic_slip" not in code_system
    h = prompts.prompt_template_hash()
    assert len(h) == 64 and h == prompts.prompt_template_hash()
    monkeypatch.setattr(prompts, "SYSTEM_TEMPLATE", prompts.SYSTEM_TEMPLATE + " ")
    assert prompts.prompt_template_hash() != h


# CACHE, COST, BACKOFF UNITS -----------------------------------------------------------------------

def test_cache_key_roundtrip_and_stats(art):
    req = {"provider": "openai", "model": "m", "messages": [{"role": "user", "content": "hi"}],
           "temperature": 0.0, "max_tokens": 5, "params": {}, "prompt_version": "v"}
    assert request_key(req) == request_key(dict(reversed(list(req.items()))))  # order-free
    assert request_key(req) != request_key({**req, "temperature": 0.5})
    cache = ResponseCache(art / "c")
    assert cache.get(req) is None
    path = cache.put(req, CachedResponse("out", 7, 3))
    key = request_key(req)
    assert path == art / "c" / key[:2] / f"{key}.json"
    assert cache.get(req) == CachedResponse("out", 7, 3)
    st = cache.stats
    assert (st.hits, st.misses, st.entries_written) == (1, 1, 1)
    assert st.bytes_read == st.bytes_written == path.stat().st_size
    path.write_text("{not json")
    with pytest.raises(DataError, match=key):
        cache.get(req)


def test_cost_from_price_table():
    # claude-haiku-4-5: $1 / $5 per Mtok → 2000 in + 1000 out = 0.002 + 0.005
    assert cost_usd("anthropic", "claude-haiku-4-5-20251001", 2000, 1000) == pytest.approx(0.007)
    # longest prefix wins: gpt-4o-mini ($0.15/$0.60), not gpt-4o ($2.50/$10)
    assert cost_usd("openai", "gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert cost_usd("openai", "some-unknown-model", 10, 10) is None


def test_backoff_delays():
    cfg = LLMTeacherConfig(provider="openai", model="m", backoff_base_s=1.0, backoff_max_s=5.0)

    class Edge(random.Random):
        def __init__(self, u):
            super().__init__(0)
            self.u = u

        def uniform(self, a, b):
            return a + self.u * (b - a)

    # d = min(5, 2**k): k=0 → [0.5, 1], k=2 → [2, 4], k=5 → capped at [2.5, 5]
    assert [retry_delay_s(k, cfg, Edge(0.0)) for k in (0, 2, 5)] == [0.5, 2.0, 2.5]
    assert [retry_delay_s(k, cfg, Edge(1.0)) for k in (0, 2, 5)] == [1.0, 4.0, 5.0]
    assert retry_delay_s(3, cfg, Edge(0.5), retry_after_s=0.25) == 0.25


# REAL SDKs AGAINST THE FAKE SERVER ----------------------------------------------------------------

@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_success_builds_quadruple_and_logs_cost(provider, art):
    with FakeLLMServer([Reply(json.dumps(MATH_REPLY), input_tokens=1000, output_tokens=200)]) as srv:
        quad = _teacher(srv, art, provider).critique(MATH_PROBLEM, MATH_ATTEMPT)
        assert srv.n_requests == 1
        req = srv.requests[0]
    assert isinstance(quad, Quadruple)
    assert quad.first_error_step == 1 and quad.attempt_correct is False
    assert MATH_ATTEMPT[slice(*quad.error_span)] == "Total: 3 + 8 = 12"
    assert quad.n_steps == 2 and quad.revision == MATH_REPLY["revision"]
    assert quad.error_type == quad.teacher_error_type == "arithmetic_slip"
    key = ANTHROPIC_DUMMY_KEY if provider == "anthropic" else OPENAI_DUMMY_KEY
    if provider == "anthropic":
        assert quad.teacher == "anthropic:claude-haiku-4-5"
        assert req.path == "/v1/messages" and "Ann has 3 apples" in req.body["messages"][0]["content"]
        assert "meticulous teacher" in req.body["system"] and req.body["temperature"] == 0.0
        price = (1000 * 1.00 + 200 * 5.00) / 1e6
    else:
        assert quad.teacher == "openai:gpt-4o-mini"
        assert req.path == "/v1/chat/completions"
        assert [m["role"] for m in req.body["messages"]] == ["system", "user"]
        assert req.body["response_format"] == {"type": "json_object"}
        price = (1000 * 0.15 + 200 * 0.60) / 1e6
    # the key travels only in the request's auth header
    assert any(key in v for v in req.headers.values())
    (line,) = read_jsonl(art / "cost.jsonl")
    assert line["cache_hit"] is False and line["http_attempts"] == 1
    assert (line["input_tokens"], line["output_tokens"]) == (1000, 200)
    assert line["cost_usd"] == pytest.approx(price) and line["problem_id"] == MATH_PROBLEM.id


def test_error_in_final_answer_line_is_step_n_steps(art):
    reply = {"first_error_step": 2, "error_type": "wrong_final_answer_extraction",
             "critique": "The steps give 12 but... fine.", "revision": "x\n#### 11"}
    with FakeLLMServer([Reply(json.dumps(reply))]) as srv:
        quad = _teacher(srv, art).critique(MATH_PROBLEM, MATH_ATTEMPT)
    assert quad.first_error_step == quad.n_steps == 2
    assert MATH_ATTEMPT[slice(*quad.error_span)] == "#### 12"


def test_correct_verdict_keeps_attempt_as_revision(art):
    reply = {"first_error_step": None, "error_type": "none", "critique": "All steps are right.",
             "revision": "something else"}
    with FakeLLMServer([Reply(json.dumps(reply))]) as srv:
        quad = _teacher(srv, art).critique(MATH_PROBLEM, MATH_ATTEMPT)
    assert quad.attempt_correct and quad.first_error_step is None and quad.error_span is None
    assert quad.revision == MATH_ATTEMPT and quad.error_type == "none"


def test_429_honours_retry_after_then_succeeds(art):
    sleeps: list[float] = []
    script = [Reply("slow down", status=429, headers={"retry-after": "0.25"}),
              Reply("slow down", status=429, headers={"retry-after-ms": "40"}),
              Reply(json.dumps(MATH_REPLY))]
    with FakeLLMServer(script) as srv:
        quad = _teacher(srv, art, sleeps=sleeps).critique(MATH_PROBLEM, MATH_ATTEMPT)
        assert srv.n_requests == 3
    assert sleeps == [0.25, 0.04] and quad.first_error_step == 1
    (line,) = read_jsonl(art / "cost.jsonl")
    assert line["http_attempts"] == 3


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_500_retries_with_backoff_then_gives_up(provider, art):
    sleeps: list[float] = []
    with FakeLLMServer([Reply("boom", status=500), Reply("boom", status=503),
                        Reply(json.dumps(MATH_REPLY))]) as srv:
        _teacher(srv, art, provider, sleeps=sleeps, backoff_base_s=1.0).critique(MATH_PROBLEM, MATH_ATTEMPT)
        assert srv.n_requests == 3
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # equal-jitter bands for k = 0, 1
    sleeps.clear()
    with FakeLLMServer(default=Reply("down", status=500)) as srv:
        teacher = _teacher(srv, art / "down", provider, sleeps=sleeps, max_retries=3)
        err = _raises(TeacherError, teacher.critique, MATH_PROBLEM, MATH_ATTEMPT,
                      match=f"{MATH_PROBLEM.id}.*4 attempt.*HTTP 500")
        assert srv.n_requests == 4 and len(sleeps) == 3
    assert not isinstance(err.__cause__, Exception) and err.__context__ is None
    (line,) = read_jsonl(art / "down" / "cost.jsonl")
    assert line["http_attempts"] == 4 and "HTTP 500" in line["error"]


@pytest.mark.parametrize("status", [400, 401, 403])
def test_client_errors_are_not_retried(status, art):
    with FakeLLMServer(default=Reply("nope", status=status)) as srv:
        _raises(TeacherError, _teacher(srv, art).critique, MATH_PROBLEM, MATH_ATTEMPT,
                match=f"HTTP {status}")
        assert srv.n_requests == 1


def test_timeout_is_retried(art):
    sleeps: list[float] = []
    script = [Reply(json.dumps(MATH_REPLY), delay_s=1.5), Reply(json.dumps(MATH_REPLY))]
    with FakeLLMServer(script) as srv:
        quad = _teacher(srv, art, sleeps=sleeps, timeout_s=0.3).critique(MATH_PROBLEM, MATH_ATTEMPT)
        assert srv.n_requests == 2 and len(sleeps) == 1 and quad.first_error_step == 1
    with FakeLLMServer(default=Reply("late", delay_s=1.5)) as srv:
        teacher = _teacher(srv, art / "t2", timeout_s=0.3, max_retries=1)
        _raises(TeacherError, teacher.critique, MATH_PROBLEM, MATH_ATTEMPT, match="timed out")
        assert srv.n_requests == 2


def test_connection_refused_is_retried_then_reported(art):
    with FakeLLMServer() as srv:
        base = srv.anthropic_base_url
    sleeps: list[float] = []  # the server is closed now: nothing listens on the port
    teacher = LLMTeacher(LLMTeacherConfig(provider="anthropic", model="claude-haiku-4-5",
                                          base_url=base, max_retries=2, timeout_s=1.0),
                         sleep=sleeps.append)
    _raises(TeacherError, teacher.critique, MATH_PROBLEM, MATH_ATTEMPT, match="connection error")
    assert len(sleeps) == 2


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_malformed_json_is_reasked_with_the_error(provider, art):
    script = [Reply("Sure! Here is my analysis: {first_error_step: 1"), Reply(json.dumps(MATH_REPLY))]
    with FakeLLMServer(script) as srv:
        quad = _teacher(srv, art, provider).critique(MATH_PROBLEM, MATH_ATTEMPT)
        assert srv.n_requests == 2
        second = srv.requests[1].body["messages"]
    assert quad.first_error_step == 1
    assert second[-2] == {"role": "assistant", "content": "Sure! Here is my analysis: {first_error_step: 1"}
    assert second[-1]["role"] == "user" and "not valid JSON" in second[-1]["content"]
    lines = read_jsonl(art / "cost.jsonl")
    assert [line["reask"] for line in lines] == [0, 1]


def test_invalid_schema_exhausts_reasks(art):
    bad = json.dumps({**MATH_REPLY, "error_type": "wrong_algorithm"})  # a code label on math
    with FakeLLMServer(default=Reply(bad)) as srv:
        teacher = _teacher(srv, art, max_reasks=2)
        _raises(TeacherError, teacher.critique, MATH_PROBLEM, MATH_ATTEMPT,
                match=f"{MATH_PROBLEM.id}.*2 re-ask.*schema violation at error_type")
        assert srv.n_requests == 3


def test_cache_hit_makes_zero_requests_and_needs_no_key(art, monkeypatch):
    script = [Reply("not json"), Reply(json.dumps(MATH_REPLY))]  # re-ask turns are cached too
    with FakeLLMServer(script) as srv:
        first = _teacher(srv, art).critique(MATH_PROBLEM, MATH_ATTEMPT)
        assert srv.n_requests == 2
        monkeypatch.delenv("ANTHROPIC_API_KEY")
        again = _teacher(srv, art)
        assert again.critique(MATH_PROBLEM, MATH_ATTEMPT) == first
        assert srv.n_requests == 2  # zero new HTTP requests
    prov = again.provenance()
    assert prov["cache"]["hits"] == 2 and prov["cache"]["misses"] == 0 and prov["cache"]["bytes_read"] > 0
    assert prov["cost"]["calls"] == 0 and prov["cost"]["cache_hits"] == 2 and prov["cost"]["cost_usd"] == 0
    lines = read_jsonl(art / "cost.jsonl")
    assert [line["cache_hit"] for line in lines] == [False, False, True, True]
    assert len(list((art / "cache").glob("*/*.json"))) == 2


def test_missing_key_names_the_variable(art, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with FakeLLMServer([Reply(json.dumps(MATH_REPLY))]) as srv:
        _raises(MissingAPIKeyError, _teacher(srv, art, "openai").critique, MATH_PROBLEM, MATH_ATTEMPT,
                match="OPENAI_API_KEY is not set")
        assert srv.n_requests == 0


def _write_attempts(path: Path, n: int, task="gsm8k") -> None:
    rows = []
    for i in range(n):
        p = Problem(**{**MATH_PROBLEM.to_row(), "id": f"gsm8k-train-{i:05d}", "task": task})
        rows.append(json.dumps({"problem": p.to_row(), "attempt": MATH_ATTEMPT}))
    path.write_text("\n".join(rows) + "\n")


def test_cli_end_to_end_with_limit_and_provenance(art, monkeypatch):
    _write_attempts(art / "attempts.jsonl", 3)
    with FakeLLMServer(default=Reply(json.dumps(MATH_REPLY))) as srv:
        monkeypatch.setenv("CTS_OPENAI_BASE_URL", srv.openai_base_url)
        argv = ["--task", "gsm8k", "--split", "train", "--teacher", "openai", "--model", "gpt-4o-mini",
                "--attempts", str(art / "attempts.jsonl"), "--out", str(art / "out.jsonl"),
                "--limit", "2", "--cache-dir", str(art / "cache"), "--cost-log", str(art / "cost.jsonl"),
                "--max-reasks", "1", "--provenance", str(art / "prov.json"), "--workers", "2"]
        assert cli.main(argv) == 0
        assert srv.n_requests == 2
        assert cli.main(argv) == 0  # rerun: all from cache
        assert srv.n_requests == 2
    rows = read_jsonl(art / "out.jsonl")
    assert [r["problem_id"] for r in rows] == ["gsm8k-train-00000", "gsm8k-train-00001"]
    assert all(Quadruple.from_row(r).teacher == "openai:gpt-4o-mini" for r in rows)
    prov = json.loads((art / "prov.json").read_text())
    assert prov["cache"]["hits"] == 2 and prov["n_written"] == 2 and prov["max_reasks"] == 1


def test_cli_rejects_rows_of_another_task(art):
    _write_attempts(art / "attempts.jsonl", 2, task="mbpp")
    with pytest.raises(DataError, match=r"attempts.jsonl: row 1.*task 'mbpp'"):
        cli.load_attempts(art / "attempts.jsonl", "gsm8k", "train")


def test_no_key_in_any_artifact_log_or_error(art):
    """Scans the files and error messages of every test run before it (it is last in the file)
    and of its own runs against a server that echoes the key into its error bodies."""
    echo = f"invalid x-api-key: {ANTHROPIC_DUMMY_KEY}"  # a proxy echoing headers into its error
    with FakeLLMServer(default=Reply(echo, status=401)) as srv:
        _raises(TeacherError, _teacher(srv, art).critique, MATH_PROBLEM, MATH_ATTEMPT)
    with FakeLLMServer(default=Reply(echo, status=500)) as srv:
        teacher = _teacher(srv, art / "500", max_retries=1)
        _raises(TeacherError, teacher.critique, MATH_PROBLEM, MATH_ATTEMPT)
    with FakeLLMServer([Reply("no json"), Reply(json.dumps(MATH_REPLY))]) as srv:
        _teacher(srv, art / "ok").critique(MATH_PROBLEM, MATH_ATTEMPT)  # cache entries + cost lines
    scanned = 0
    for root in _ARTIFACT_DIRS:
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                scanned += 1
                for key in DUMMY_KEYS:
                    assert key.encode() not in data, f"{key} leaked into {path}"
    assert scanned >= 4  # at least this test's own cost logs and cache entries
    for msg in _MESSAGES:
        for key in DUMMY_KEYS:
            assert key not in msg, f"{key} leaked into exception message {msg!r}"
