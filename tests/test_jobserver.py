"""cts.jobserver: a job handed to the fork server behaves like the same script run in its own process.

Each test runs a tiny script the way Snakemake runs a rule's script (`python <script> ...`, cwd = the
working directory) against a server started with no heavy preloads, so the whole file takes seconds.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cts import jobserver

REPO = Path(__file__).resolve().parents[1]

# The script of a "rule": hand off first (as every scripts/*.py does), then do what argv[1] says.
SCRIPT = textwrap.dedent("""
    import types, sys
    snakemake = types.SimpleNamespace(log=[sys.argv[2]], rule="tiny")
    from cts.jobserver import hand_off
    hand_off(snakemake)
    import json, os, time
    what, out = sys.argv[1], sys.argv[3]
    print("stdout of the job", flush=True)
    with open(out + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "cwd": os.getcwd(), "argv": sys.argv[1:],
                   "foo": os.environ.get("CTS_TEST_FOO"), "served": os.environ.get("CTS_JOB_SERVER_CHILD")}, f)
    os.replace(out + ".tmp", out)
    if what == "raise":
        raise ValueError("the job failed on purpose")
    if what == "exit3":
        sys.exit(3)
    if what == "exitmsg":
        sys.exit("a message instead of a code")
    if what == "tick":   # write a tick every 50 ms until killed
        i = 0
        while True:
            i += 1
            with open(out + ".ticks", "a") as f:
                f.write(f"{i}\\n")
            time.sleep(0.05)
""")


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "PYTHONPATH": str(REPO), "CTS_TEST_FOO": "bar"}


@pytest.fixture
def server(tmp_path, env):
    sock = str(tmp_path / "js.sock")
    proc = jobserver.start(sock, str(tmp_path / "server.log"), preload=(), env=env)
    jobserver.wait_ready(sock, timeout=60)
    yield sock
    jobserver.stop(proc)


def _job(tmp_path, env, what, sock=None, **kw):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    workdir = tmp_path / "wd"
    workdir.mkdir(exist_ok=True)
    env = dict(env)
    if sock:
        env[jobserver.ENV_SOCKET] = sock
    args = [sys.executable, str(script), what, str(tmp_path / "job.log"), "out.json"]
    return subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def _result(tmp_path):
    return json.loads((tmp_path / "wd" / "out.json").read_text())


def _log(tmp_path):
    p = tmp_path / "job.log"
    return p.read_text() if p.exists() else ""


def test_a_job_runs_in_a_server_child_with_the_clients_cwd_env_argv_and_stdout(tmp_path, env, server):
    p = _job(tmp_path, env, "ok", server)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    r = _result(tmp_path)
    assert r["served"] == "1" and r["pid"] != p.pid
    assert r["cwd"] == str(tmp_path / "wd") and r["foo"] == "bar"
    assert r["argv"] == ["ok", str(tmp_path / "job.log"), "out.json"]
    assert "stdout of the job" in out
    assert "job server: ran in server child" in _log(tmp_path) and "CPU-s" in _log(tmp_path)


def test_an_exception_gives_rc_1_and_its_traceback_on_the_jobs_stderr(tmp_path, env, server):
    p = _job(tmp_path, env, "raise", server)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert _result(tmp_path)["served"] == "1"
    assert "Traceback" in err and "ValueError: the job failed on purpose" in err


@pytest.mark.parametrize("what, rc, text", [("exit3", 3, ""), ("exitmsg", 1, "a message instead of a code")])
def test_systemexit_gives_its_code(tmp_path, env, server, what, rc, text):
    p = _job(tmp_path, env, what, server)
    out, err = p.communicate(timeout=60)
    assert p.returncode == rc and text in err
    assert _result(tmp_path)["served"] == "1"


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] in "ZX"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_the_client_kills_the_job_at_once(tmp_path, env, server, sig):
    p = _job(tmp_path, env, "tick", server)
    ticks = tmp_path / "wd" / "out.json.ticks"
    deadline = time.time() + 60
    while not ticks.exists() and time.time() < deadline:
        time.sleep(0.05)
    child = _result(tmp_path)["pid"]
    assert child != p.pid and not _gone(child)
    p.send_signal(sig)
    p.wait(timeout=10)
    deadline = time.time() + 2
    while not _gone(child) and time.time() < deadline:
        time.sleep(0.02)
    assert _gone(child), f"server child {child} still running 2 s after its client got {sig!r}"
    n = len(ticks.read_text().splitlines())
    time.sleep(0.3)
    assert len(ticks.read_text().splitlines()) == n, "the job wrote after it was killed"


@pytest.mark.parametrize("var, value", [("PYTHONHASHSEED", "123"), ("JAX_ENABLE_X64", "1"),
                                        ("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")])
def test_a_client_with_other_interpreter_state_runs_in_process_and_says_why(tmp_path, env, server, var, value):
    p = _job(tmp_path, {**env, var: value}, "ok", server)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    r = _result(tmp_path)
    assert r["served"] is None and r["pid"] == p.pid
    assert "job server: not used" in _log(tmp_path) and var in _log(tmp_path)


def test_no_server_runs_in_process_and_says_why(tmp_path, env):
    p = _job(tmp_path, env, "exit3", str(tmp_path / "nobody.sock"))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 3
    assert _result(tmp_path)["pid"] == p.pid
    assert "job server: not used" in _log(tmp_path) and "nobody.sock" in _log(tmp_path)


def test_a_stopped_server_falls_back(tmp_path, env):
    sock = str(tmp_path / "js.sock")
    proc = jobserver.start(sock, str(tmp_path / "server.log"), preload=(), env=env)
    jobserver.wait_ready(sock, timeout=60)
    jobserver.stop(proc)
    assert proc.poll() is not None and not os.path.exists(sock)
    p = _job(tmp_path, env, "ok", sock)
    p.communicate(timeout=60)
    assert p.returncode == 0 and _result(tmp_path)["pid"] == p.pid
    assert "job server: not used" in _log(tmp_path)


def test_edited_cts_sources_are_never_served_stale(tmp_path, env, server):
    """An edit of any cts/**/*.py after the server started: the job runs in-process (new code)."""
    f = REPO / "cts" / "__init__.py"
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        p = _job(tmp_path, env, "ok", server)
        p.communicate(timeout=60)
    finally:
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.returncode == 0 and _result(tmp_path)["pid"] == p.pid
    assert "cts sources changed" in _log(tmp_path)


def test_a_job_inside_a_server_child_does_not_hand_off_again(tmp_path, env):
    p = _job(tmp_path, {**env, jobserver.ENV_CHILD: "1"}, "ok", str(tmp_path / "nobody.sock"))
    p.communicate(timeout=60)
    assert p.returncode == 0 and "job server" not in _log(tmp_path)


def test_the_server_dies_with_its_parent(tmp_path, env):
    """PR_SET_PDEATHSIG (+ a parent check): a Snakemake that is SIGKILLed leaves no server behind."""
    sock = str(tmp_path / "js.sock")
    code = ("import sys; from cts import jobserver; p = jobserver.start(sys.argv[1], sys.argv[2], preload=()); "
            "jobserver.wait_ready(sys.argv[1], timeout=60); print(p.pid, flush=True); import time; time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code, sock, str(tmp_path / "server.log")], env=env,
                              stdout=subprocess.PIPE, text=True)
    server_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.time() + 5
    while not _gone(server_pid) and time.time() < deadline:
        time.sleep(0.05)
    assert _gone(server_pid)


def test_preloads_never_start_a_jax_backend():
    """The list the real server imports: importing it must leave no JAX backend and no thread,
    or forking it would not be safe (checked again by serve() itself at start)."""
    assert "cts.stages.train" in jobserver.PRELOAD and "maxtext.configs.pyconfig" in jobserver.PRELOAD
