"""A fork server for the pipeline's jobs: import cts + MaxText once, fork a child per job.

Every JAX job spends ~11.7 CPU-s importing cts.stages.* and MaxText (transformers, tokamax, sympy,
fastapi come with it) before any work; measured 30 Nov 2026 on the 2-core machine: a child forked
after those imports builds a PolicyRuntime in 4.9 CPU-s, a fresh process in 12.3 (issue 16). So, as
gunicorn's preload or multiprocessing's forkserver do, one long-lived server (started by the
Snakefile's `onstart:`, resources.job_server) imports them and never starts a JAX backend; each job's
script calls `hand_off(snakemake)` first, which sends its argv, cwd, environment and stdin/stdout/
stderr (SCM_RIGHTS) over a Unix socket; the server forks, the child becomes that job (own session,
the client's cwd, environment and fds) and runs the same Snakemake temp script with runpy, then
reports its exit status and CPU-s. The client exits with that status. Without a server, or with a
client whose interpreter-level state differs (python, PYTHON*/JAX_*/XLA_*/TF_*/HF_* variables, the
cts sources), the job runs in its own process exactly as before and its log says why.

One output per job and resume after SIGKILL stay as they were: the child dies (SIGKILL, no further
writes) the moment its client's connection closes, i.e. when Snakemake kills or cancels the job.

The client side (`hand_off`, `start`, `stop`, `wait_ready`) uses only the standard library.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import signal
import socket
import sys
import time

__all__ = ["PRELOAD", "ENV_SOCKET", "ENV_CHILD", "hand_off", "serve", "start", "stop", "wait_ready",
           "socket_path_for"]

# What the server imports before forking: what the JAX jobs' scripts import (cts.stages.*) and the
# MaxText modules PolicyRuntime needs, which pull in transformers, tokamax, sympy, fastapi (issue 16:
# ~11.7 CPU-s per job). None of them starts a JAX backend or a thread (serve() asserts both).
PRELOAD = (
    "cts.script_support",
    "cts.stages.data",
    "cts.stages.teacher",
    "cts.stages.taxonomy",
    "cts.stages.train",
    "cts.stages.eval",
    "cts.stages.stats",
    "cts.stages.audit",
    "maxtext.configs.pyconfig",
    "maxtext.utils.maxtext_utils",
    "maxtext.utils.model_creation_utils",
    "snakemake.iocontainers",  # the temp script's preamble unpickles the `snakemake` object
    "snakemake.logging",
)

ENV_SOCKET = "CTS_JOB_SERVER"  # the server's socket path, set for the jobs by the Snakefile
ENV_CHILD = "CTS_JOB_SERVER_CHILD"  # "1" inside a served job: its hand_off is a no-op
# Environment read when the interpreter and the preloaded modules start (jax.config reads JAX_*
# at import, XLA/TSL read TF_* when jaxlib loads, huggingface reads HF_* ...): a job is served only
# if these equal the server's. Snakemake's per-job OMP_NUM_THREADS/TMPDIR are read later (or reset).
_INTERPRETER_ENV_PREFIXES = ("PYTHON", "JAX_", "XLA_", "TF_", "TPU_", "LIBTPU", "HF_", "TRANSFORMERS_",
                             "LD_", "MPL", "CUDA_", "CTS_THIRD_PARTY_LOGS")
_MAX_MSG = 1 << 20
_CTS_DIR = os.path.dirname(os.path.abspath(__file__))

served_cpu_s = 0.0  # CPU-s of this job's server child (read by bench/_jobcost/sitecustomize.py)


# ---------------------------------------------------------------- compatibility
def source_digest(root: str = _CTS_DIR) -> str:
    """sha256 over (path, mtime_ns, size) of every .py file under root: any edit changes it."""
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                p = os.path.join(d, name)
                st = os.stat(p)
                h.update(f"{os.path.relpath(p, root)}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
    return h.hexdigest()


def _fingerprint(env: dict) -> dict:
    """What must be equal between a client and the server for the server's imports to be its own."""
    return {"python": sys.executable, "prefix": sys.prefix, "cts": _CTS_DIR,
            "env": {k: v for k, v in sorted(env.items()) if k.startswith(_INTERPRETER_ENV_PREFIXES)}}


def _mismatch(mine: dict, theirs: dict) -> str | None:
    """One line naming what differs (None if nothing)."""
    for key in ("python", "prefix", "cts"):
        if mine[key] != theirs[key]:
            return f"{key} differs: server {mine[key]!r}, job {theirs[key]!r}"
    a, b = mine["env"], theirs["env"]
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        return "environment differs: " + ", ".join(f"{k} server={a.get(k)!r} job={b.get(k)!r}" for k in diff)
    if mine["digest"] != theirs["digest"]:
        return "cts sources changed since the server started (it would run stale code)"
    return None


# ---------------------------------------------------------------- client
class _Fallback(Exception):
    """The job runs in its own process; the message says why."""


def _log_line(smk, msg: str) -> None:
    logs = getattr(smk, "log", None) if smk is not None else None
    if logs:
        with open(logs[0], "a") as f:
            f.write(msg + "\n")
    else:
        print(msg, file=sys.stderr, flush=True)


def hand_off(smk=None) -> None:
    """First line of every scripts/*.py: run this job in a server child if one is configured and
    compatible, then exit with its status; otherwise return (the script runs here, as before)."""
    global served_cpu_s
    path = os.environ.get(ENV_SOCKET)
    if not path or os.environ.get(ENV_CHILD) == "1":
        return
    try:
        pid, rc, cpu_s = _run_on_server(path)
    except _Fallback as e:
        _log_line(smk, f"job server: not used ({e}); running in this process")
        return
    served_cpu_s = cpu_s
    _log_line(smk, f"job server: ran in server child {pid}, rc {rc}, {cpu_s:.2f} CPU-s there (Snakemake's "
                   "benchmark file counts only this client process)")
    sys.exit(rc)


def _run_on_server(path: str) -> tuple[int, int, float]:
    env = dict(os.environ)
    request = {"argv": [os.path.abspath(sys.argv[0]), *sys.argv[1:]], "cwd": os.getcwd(), "env": env,
               "sys_path": sys.path, "fingerprint": {**_fingerprint(env), "digest": source_digest()}}
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(path)
        socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
        # The server answers once its imports are done (it binds before importing).
        conn.settimeout(600)
        reply = _recv_json(conn)
    except (OSError, ValueError) as e:
        conn.close()
        raise _Fallback(f"no job server at {path}: {e}") from None
    if reply is None:
        raise _Fallback(f"the job server at {path} closed the connection")
    if reply.get("refused"):
        conn.close()
        raise _Fallback(reply["refused"])
    conn.settimeout(None)
    child = reply["pid"]
    # Snakemake cancels a job with SIGTERM (SIGINT on Ctrl-C): the job gets the same signal; if this
    # process dies any other way, the closed connection kills the child.
    def forward(signum, frame):
        try:
            conn.send(json.dumps({"signal": signum}).encode())
        except OSError:
            pass
        if signum != signal.SIGINT:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    try:
        result = _recv_json(conn)
    except OSError:
        result = None
    if result is None:  # the child died without reporting (killed): like a killed process
        return child, 1, 0.0
    return child, int(result["rc"]), float(result["cpu_s"])


def _recv_json(conn: socket.socket):
    while True:
        try:
            data = conn.recv(_MAX_MSG)
        except InterruptedError:
            continue
        return json.loads(data) if data else None


def socket_path_for(workdir: str) -> str:
    """.snakemake/cts-jobserver-<pid>.sock, or a short name in /tmp where that exceeds the ~107
    bytes a Unix socket path may have."""
    path = os.path.join(os.path.abspath(workdir), ".snakemake", f"cts-jobserver-{os.getpid()}.sock")
    if len(path.encode()) > 100:
        tag = hashlib.sha256(path.encode()).hexdigest()[:12]
        path = os.path.join("/tmp", f"cts-jobserver-{tag}.sock")
    return path


def start(socket_path: str, log_path: str, preload=PRELOAD, idle_timeout: float = 1800.0, env=None):
    """Start a server in the background (it dies with this process); returns its Popen."""
    import subprocess

    os.makedirs(os.path.dirname(os.path.abspath(log_path)) or ".", exist_ok=True)
    args = [sys.executable, "-m", "cts.jobserver", "--socket", socket_path, "--parent", str(os.getpid()),
            "--idle-timeout", str(idle_timeout), "--preload", ",".join(preload)]
    env = dict(os.environ if env is None else env)
    env.pop(ENV_SOCKET, None)
    with open(log_path, "a") as log:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=os.path.dirname(_CTS_DIR))


def wait_ready(socket_path: str, timeout: float = 120.0) -> None:
    """Block until the server listens (tests; the Snakefile does not wait: jobs queue on connect)."""
    deadline = time.time() + timeout
    while not os.path.exists(socket_path):
        if time.time() > deadline:
            raise TimeoutError(f"no job server at {socket_path} after {timeout} s")
        time.sleep(0.02)


def stop(proc, timeout: float = 10.0) -> None:
    """Stop a server started by start() (its running jobs finish: they belong to their clients)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except Exception:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- server
def _die_with_parent(parent: int) -> None:
    """SIGTERM when the starting process (Snakemake) dies (Linux prctl PR_SET_PDEATHSIG = 1)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the parent check in the serve loop still stops the server
    if os.getppid() != parent:
        sys.exit(0)


def serve(socket_path: str, preload=PRELOAD, parent: int | None = None, idle_timeout: float = 1800.0) -> None:
    """Bind socket_path, import `preload`, then fork one child per request until stopped (SIGTERM),
    idle for idle_timeout seconds, or orphaned."""
    import importlib
    import threading

    if parent is not None:
        _die_with_parent(parent)
    digest = source_digest()  # before importing cts: an edit after this point is never served
    start_env = dict(os.environ)  # what a job's environment is compared with (before setdefaults below)
    mine = {**_fingerprint(start_env), "digest": digest}
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(socket_path + ".tmp")
    listener.listen(128)
    os.replace(socket_path + ".tmp", socket_path)  # the path appears only once it accepts

    def shutdown(signum=None, frame=None):
        try:
            import atexit

            atexit._run_exitfuncs()  # what a normal exit runs (bench/_jobcost records the server's CPU)
        except BaseException:
            pass
        try:
            if os.path.exists(socket_path) and os.stat(socket_path).st_ino == bound_ino:
                os.unlink(socket_path)
        finally:
            os._exit(0)

    bound_ino = os.stat(socket_path).st_ino
    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the jobs through their clients
    t0 = time.process_time()
    # What a job's script does before its own imports (cts.script_support.stage_logger), so the
    # preloaded modules see the same environment they would in the job.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if preload:
        from cts.script_support import _quiet_third_party

        _quiet_third_party()
    for name in preload:
        importlib.import_module(name)
    jax_mod = sys.modules.get("jax._src.xla_bridge")
    assert jax_mod is None or not jax_mod._backends, "a preload started a JAX backend: forking would be unsafe"
    assert threading.active_count() == 1, f"a preload started threads ({threading.enumerate()}): unsafe to fork"
    print(f"job server {os.getpid()}: {len(preload)} modules imported in {time.process_time() - t0:.1f} CPU-s; "
          f"serving {socket_path}", flush=True)

    children: dict[int, float] = {}
    last_active = time.time()
    listener.settimeout(0.2)
    while True:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            children.pop(pid, None)
            last_active = time.time()
        if parent is not None and os.getppid() != parent:
            shutdown()
        if not children and time.time() - last_active > idle_timeout:
            print(f"job server {os.getpid()}: idle for {idle_timeout:.0f} s, exiting", flush=True)
            shutdown()
        try:
            conn, _ = listener.accept()
        except (TimeoutError, socket.timeout, InterruptedError):
            continue
        last_active = time.time()
        fds = []
        try:
            conn.settimeout(10)
            data, fds, _, _ = socket.recv_fds(conn, _MAX_MSG, 3)
            request = json.loads(data)
            why = _mismatch(mine, request["fingerprint"]) if len(fds) == 3 else "stdin/stdout/stderr not received"
            if why:
                conn.send(json.dumps({"refused": why}).encode())
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                _child(conn, fds, request)  # never returns
            children[pid] = time.time()
            print(f"job server: {request['argv'][0]} -> child {pid}", flush=True)
        except Exception as e:  # a bad request must not stop the server
            print(f"job server: request failed: {e!r}", flush=True)
        finally:
            conn.close()
            for fd in fds:
                os.close(fd)


def _child(conn: socket.socket, fds: list[int], request: dict) -> None:
    """Become the job: its session, fds, cwd, environment, argv; run its script; report; exit."""
    import atexit
    import logging
    import resource
    import runpy
    import tempfile
    import threading
    import traceback

    rc = 1
    try:
        conn.settimeout(None)
        os.setsid()  # signals to the server's process group do not reach jobs; their clients forward them
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[ENV_CHILD] = "1"
        tempfile.tempdir = None  # re-read TMPDIR (Snakemake sets one per job)
        sys.argv = list(request["argv"])
        sys.path[:] = request["sys_path"]
        if "numpy" in sys.modules:  # a fresh process seeds numpy's global RNG from the OS; random does at fork
            sys.modules["numpy"].random.seed()
        atexit._clear()  # the server's own exit handlers are not the job's
        atexit.register(logging.shutdown)
        done = threading.Event()

        def watch_client():
            """The client's signals are forwarded here; its death (EOF) kills the job at once."""
            while True:
                try:
                    data = conn.recv(_MAX_MSG)
                except OSError:
                    data = b""
                if not data:
                    if not done.is_set():
                        os.kill(os.getpid(), signal.SIGKILL)
                    return
                os.kill(os.getpid(), json.loads(data)["signal"])

        threading.Thread(target=watch_client, name="cts-jobserver-client", daemon=True).start()
        conn.send(json.dumps({"pid": os.getpid()}).encode())
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
            rc = 0
        except SystemExit as e:
            if e.code is None:
                rc = 0
            elif isinstance(e.code, int):
                rc = e.code
            else:
                print(e.code, file=sys.stderr)
                rc = 1
        except KeyboardInterrupt:
            traceback.print_exc()
            rc = 130
        except BaseException:
            traceback.print_exc()
            rc = 1
        try:
            atexit._run_exitfuncs()
        finally:
            for f in (sys.stdout, sys.stderr):
                try:
                    f.flush()
                except Exception:
                    pass
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
        done.set()
        conn.send(json.dumps({"rc": rc, "cpu_s": cpu_s}).encode())
    except BaseException:
        try:
            traceback.print_exc()
        except Exception:
            pass
    finally:
        os._exit(rc & 0xFF if rc >= 0 else 1)


def _main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--parent", type=int)
    ap.add_argument("--idle-timeout", type=float, default=1800.0)
    ap.add_argument("--preload", default=",".join(PRELOAD), help="comma-separated modules ('' = none)")
    a = ap.parse_args(argv)
    serve(a.socket, tuple(filter(None, a.preload.split(","))), a.parent, a.idle_timeout)


if __name__ == "__main__":
    _main()
