"""Run untrusted, model-written Python in a throw-away sandbox.

Every call starts a fresh interpreter (`python -S -B`: stdlib only, no site-packages, no .pyc
writes) in a private temp dir that is deleted afterwards, with an environment holding only
`PYTHONHASHSEED=0` (so set/dict orders, and hence verdicts, are reproducible) and
`PYTHONUTF8=1`: no PATH, HOME or API keys. Three isolation levels, best first:

  "bwrap"   bubblewrap: new pid/net/ipc/uts namespaces, a root file system made of read-only
            binds of /usr (+ /lib*, /bin symlinks) and the interpreter's prefix, and ONE tmpfs of
            `disk_mb` at /tmp (mode 1777, so any program may use /tmp) holding the private dir
            /tmp/sandbox (the cwd; the input files are copied in by bwrap from fds). Nothing else
            of the host (repo, $HOME, other processes, the network) is visible.
  "unshare" util-linux `unshare`: new pid/net/ipc/uts/mount namespaces; the same single tmpfs of
            `disk_mb` at /tmp with the private dir /tmp/sandbox (files copied in from the host
            dir, which the program never writes); tiny read-only-by-permission tmpfs over /var/tmp,
            /dev/shm, $HOME, the parent's cwd and every world-writable host dir found by a bounded
            scan (e.g. /run/lock); the interpreter is re-bound read-only at its own path; the host
            file system is otherwise visible read-only-by-permission.
  "rlimits" resource limits and a private uid only: NO network or file-system isolation
            (world-writable dirs such as /tmp are writable); leftover processes are swept by
            uid after the run (root only; there is no pid namespace to do it).

Caps on the whole run (all its processes together):
  memory  — a memory cgroup per run, limit `total_memory_mb` (cgroup v2 where a delegated memory
            controller exists, else cgroup v1's memory controller; both need write access to the
            cgroup tree, i.e. root in most containers). `memory_enforcement()` says which is in
            force; without either, the only bound is max_procs × memory_mb (RLIMIT_NPROC ×
            RLIMIT_AS). The tmpfs pages the run writes count against the cgroup too.
  disk    — bwrap and unshare: everything writable is the one `disk_mb` tmpfs (plus tiny masks);
            rlimits: no total (only RLIMIT_FSIZE per file).

At every level the program runs with rlimits (RLIMIT_CPU, AS, NPROC, FSIZE, NOFILE, CORE=0,
applied by `prlimit` before exec), in its own session killed as a process group on timeout or
when its output passes the byte cap, and — when we are root — under a private unprivileged uid
(setpriv, all capabilities and the bounding set dropped, no_new_privs). The uid drop is what
makes RLIMIT_NPROC bite (root is exempt from it) and what stops the program signalling or
writing anything of ours; each concurrent run gets its own uid so a fork bomb in one run cannot
starve its neighbours' process quota. When not root, bwrap and unshare build a user namespace
themselves and RLIMIT_NPROC counts all processes of the caller's uid.

As root, the rlimits level needs an interpreter and a temp dir (tempfile.gettempdir()) the
private uid can reach: an interpreter under /root (mode 0700, e.g. pyenv's) fails its probe;
the namespace levels re-bind both, so they do not care.

`isolation_level()` probes each level once (cached) and warns when the best one is not bwrap.
Force a level with `CTS_SANDBOX_ISOLATION=bwrap|unshare|rlimits` or the `isolation=` argument.
Override the interpreter with `CTS_SANDBOX_PYTHON` (default: this interpreter's real binary).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LEVELS",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "available_levels",
    "isolation_level",
    "memory_enforcement",
    "run_many",
    "run_python",
]

log = logging.getLogger(__name__)

LEVELS = ("bwrap", "unshare", "rlimits")  # best first
_ENV_LEVEL = "CTS_SANDBOX_ISOLATION"
_ENV_PYTHON = "CTS_SANDBOX_PYTHON"
_CHILD_ENV = {"PYTHONHASHSEED": "0", "PYTHONUTF8": "1"}
_PRIVATE_DIR = "/tmp/sandbox"  # the private dir (the cwd) under bwrap and unshare
_ENTRY = "main.py"
# Private uids: a block per parent process (pid-derived), a slot per concurrent run.
_UID_BASE, _UID_SLOTS = 1_900_000_000, 64
_uid_counter = itertools.count()
_uid_lock = threading.Lock()


class SandboxUnavailable(RuntimeError):
    """The requested isolation level (or every level) does not work on this machine."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits.

    Attributes:
      timeout_s: wall-clock limit; the whole process group is killed when it passes.
      cpu_s: RLIMIT_CPU per process (SIGXCPU at cpu_s, SIGKILL one second later).
      memory_mb: RLIMIT_AS (address space) per process.
      max_procs: RLIMIT_NPROC, processes of the sandbox uid (applies only when not root).
      max_file_mb: RLIMIT_FSIZE, the largest file the program may write.
      max_open_files: RLIMIT_NOFILE.
      max_output_bytes: cap per stream (stdout, stderr); the run is killed when one passes it.
      total_memory_mb: memory of ALL the run's processes together (a memory cgroup; see
        `memory_enforcement`). Without a usable cgroup the bound is max_procs × memory_mb.
      disk_mb: bytes the run may write in all (bwrap, unshare): the private dir and /tmp share
        one tmpfs of this size; every other writable place is masked (see the module doc).
    """

    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 512
    max_procs: int = 32
    max_file_mb: int = 8
    max_open_files: int = 64
    max_output_bytes: int = 64_000
    total_memory_mb: int = 1024
    disk_mb: int = 64

    def __post_init__(self):
        for name in ("timeout_s", "cpu_s", "memory_mb", "max_procs", "max_file_mb",
                     "max_open_files", "max_output_bytes", "total_memory_mb", "disk_mb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did.

    Attributes:
      returncode: exit status when the program exited by itself; None when it was killed
        (timeout, output cap, or a signal — see killed_by_signal).
      stdout, stderr: decoded (UTF-8, invalid bytes replaced), each at most max_output_bytes.
      timed_out: the wall-clock limit was hit.
      output_truncated: a stream passed max_output_bytes (the run was killed then).
      killed_by_signal: the signal that ended the program, if any (SIGKILL when we killed it).
        Under bwrap/unshare a program that itself exits with status 128+N is indistinguishable
        from one killed by signal N.
      wall_s: seconds from launch to reap.
      isolation: the level it ran under.
      memory_exceeded: the run's memory cgroup hit total_memory_mb and the kernel killed a process.
      memory_peak_bytes: the cgroup's peak usage (None without a cgroup, or when the kernel
        does not keep one).
    """

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    output_truncated: bool
    killed_by_signal: int | None
    wall_s: float
    isolation: str
    memory_exceeded: bool = False
    memory_peak_bytes: int | None = None

    @property
    def ok(self) -> bool:
        """Exited by itself with status 0, within every limit."""
        return self.returncode == 0 and not self.timed_out and not self.output_truncated


# ----------------------------------------------------------------------------- launch commands

def _interpreter() -> str:
    return os.path.realpath(os.environ.get(_ENV_PYTHON) or sys.executable)


def _python_argv(interp: str) -> list[str]:
    # -S: no site-packages (stdlib only); -B: never write .pyc anywhere.
    return [interp, "-S", "-B", _ENTRY]


def _is_root() -> bool:
    return os.geteuid() == 0


def _next_uid() -> int:
    with _uid_lock:
        slot = next(_uid_counter) % _UID_SLOTS
    return _UID_BASE + (os.getpid() % 100_000) * _UID_SLOTS + slot


def _prlimit_argv(limits: SandboxLimits) -> list[str]:
    mb = 1 << 20
    return [
        "prlimit",
        f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
        f"--as={limits.memory_mb * mb}",
        f"--nproc={limits.max_procs}",
        f"--fsize={limits.max_file_mb * mb}",
        f"--nofile={limits.max_open_files}",
        "--core=0",
        "--",
    ]


def _drop_argv(uid: int | None, drop_caps: bool) -> list[str]:
    """setpriv: become `uid` (when root), shed capabilities, and die with the parent.

    drop_caps: empty the bounding set, so nothing executed later can regain a capability
    (needed wherever the process still holds some: as root, or as root of its own user
    namespace under unprivileged `unshare`; impossible, and unneeded, for a plain user).
    """
    argv = ["setpriv"]
    if uid is not None:
        argv += [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    if drop_caps:
        argv += ["--inh-caps=-all", "--bounding-set=-all"]
    # pdeathsig must be set after the uid change (a credential change clears it).
    return argv + ["--no-new-privs", "--pdeathsig=KILL", "--"]


def _bwrap_argv(interp: str, files: Mapping[str, int], uid: int | None,
                limits: SandboxLimits) -> list[str]:
    prefix = os.path.dirname(os.path.dirname(interp))
    argv = ["bwrap", "--die-with-parent", "--new-session"]
    if uid is not None:  # root: privileged bwrap, the uid drop happens in setpriv
        argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                 "--unshare-cgroup-try"]
    else:
        argv += ["--unshare-all"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in ("lib", "lib32", "lib64", "libx32", "bin", "sbin"):
        host = f"/{name}"
        if os.path.islink(host):
            argv += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            argv += ["--ro-bind", host, host]
    if os.path.exists("/etc/ld.so.cache"):
        argv += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    # bwrap copies the modes of the host's parent dirs (/root is 0700): recreate them 0755.
    parents = list(Path(prefix).parents)[::-1][1:]  # without "/"
    for parent in parents:
        if not str(parent).startswith("/usr"):
            argv += ["--perms", "0755", "--dir", str(parent)]
    if prefix != "/usr" and not prefix.startswith("/usr/"):
        argv += ["--ro-bind", prefix, prefix]
    # One size-capped tmpfs holds /tmp (world-writable, sticky, as programs expect) and the
    # private dir inside it, so disk_mb bounds everything the run can write; the input files are
    # copied in from fds (nothing of the host dir is bound).
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", str(limits.disk_mb << 20), "--perms", "1777", "--tmpfs", "/tmp",
             "--perms", "0777", "--dir", _PRIVATE_DIR]
    made = {_PRIVATE_DIR}
    for name, fd in sorted(files.items()):
        dest = f"{_PRIVATE_DIR}/{name}"
        for parent in list(Path(dest).parents)[::-1]:
            if str(parent).startswith(_PRIVATE_DIR + "/") and str(parent) not in made:
                argv += ["--perms", "0777", "--dir", str(parent)]
                made.add(str(parent))
        argv += ["--perms", "0666", "--file", str(fd), dest]
    argv += ["--size", str(1 << 20), "--perms", "0755", "--tmpfs", "/dev/shm",
             "--chdir", _PRIVATE_DIR, "--"]
    return argv


def _unshare_argv(interp: str, uid: int | None, limits: SandboxLimits) -> list[str]:
    """unshare + a root-owned setup shell that masks writable/secret dirs, then drops to uid."""
    prefix = os.path.dirname(os.path.dirname(interp))
    # One size-capped tmpfs holds /tmp and the private dir (disk_mb bounds all writes). The cwd
    # (the host's private dir, usually under the host /tmp) is still reachable as "." only: its
    # files are copied in, and the host dir is never written by the program.
    lines = ["set -e", f"mount -t tmpfs -o size={limits.disk_mb << 20},mode=1777 tmpfs /tmp"]
    lines += [f"mkdir -m 0700 {_PRIVATE_DIR}", f"cp -R . {_PRIVATE_DIR}/"]
    if uid is not None:
        lines += [f"chown -R {uid}:{uid} {_PRIVATE_DIR}"]
    lines += [f"cd {_PRIVATE_DIR}"]
    # Stash the interpreter before $HOME (which may contain it) is masked, re-bind it after.
    lines += [f"mkdir -p /tmp/.cts-python && mount --bind {_sh(prefix)} /tmp/.cts-python"]
    masked = []
    for d in (*_world_writable_dirs(), "/var/tmp", "/dev/shm", str(Path.home()), os.getcwd()):
        inside_tmp = d == "/tmp" or d.startswith("/tmp/")  # already masked
        if os.path.isdir(d) and d not in ("/", "/usr") and not d.startswith("/usr/") \
                and not inside_tmp and d not in masked:
            masked.append(d)
    for d in masked:
        lines += [f"mount -t tmpfs -o size=1048576,mode=0755 tmpfs {_sh(d)}"]
    if any(prefix == d or prefix.startswith(d.rstrip("/") + "/") for d in masked):
        lines += [f"mkdir -p {_sh(prefix)}", f"mount --bind /tmp/.cts-python {_sh(prefix)}"]
    lines += [f"mount -o remount,bind,ro {_sh(prefix)} 2>/dev/null || true"]
    lines += ["umount /tmp/.cts-python && rmdir /tmp/.cts-python"]
    # No exec: the shell stays pid 1 of the namespace, because the kernel drops default-action
    # signals (SIGXCPU from RLIMIT_CPU included) sent to a namespace's init.
    script = "\n".join(lines) + '\n"$@"'
    argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc",
            "--net", "--ipc", "--uts", "--propagation", "private"]
    if uid is None:
        argv += ["--user", "--map-root-user"]
    return argv + ["--", "/bin/sh", "-c", script, "cts-sandbox-setup"]


def _sh(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


_WRITABLE_SCAN_ROOTS = ("/var", "/run", "/dev", "/srv", "/opt", "/home", "/mnt", "/media")


@functools.lru_cache(maxsize=None)
def _world_writable_dirs() -> tuple[str, ...]:
    """World-writable host dirs (e.g. /run/lock) that the unshare level masks with a tiny tmpfs.

    A bounded scan (3 levels under the usual roots, at most 20 000 dirs, once per process): the
    private uid could otherwise write to the host disk there. /tmp is masked separately.
    """
    found, seen = [], 0
    for root in _WRITABLE_SCAN_ROOTS:
        if not os.path.isdir(root) or os.path.islink(root):
            continue
        base_depth = root.rstrip("/").count("/")
        for dirpath, dirnames, _ in os.walk(root):
            seen += 1
            if seen > 20_000:
                return tuple(found)
            depth = dirpath.rstrip("/").count("/") - base_depth
            if dirpath.startswith("/proc") or depth >= 3:
                dirnames[:] = []
            try:
                st = os.lstat(dirpath)
            except OSError:
                continue
            if st.st_mode & 0o002 and not os.path.islink(dirpath):
                found.append(dirpath)
                dirnames[:] = []  # the mask covers everything below
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return tuple(found)


# ----------------------------------------------------------------------------- memory cgroup

_cg_counter = itertools.count()


def _own_cgroups() -> dict[str, str]:
    """{controller or "" (v2): path} from /proc/self/cgroup."""
    out = {}
    try:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            for line in f:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) == 3:
                    for ctl in (parts[1].split(",") if parts[1] else [""]):
                        out[ctl] = parts[2]
    except OSError:
        pass
    return out


def _cgroup_mounts() -> list[tuple[str, str, str, str]]:
    """(fstype, mount point, mount root, super options) of the cgroup file systems."""
    out = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, tail = left.split(), right.split()
                if len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
                    out.append((tail[0], fields[4], fields[3], tail[2]))
    except OSError:
        pass
    return out


def _cgroup_dir(mount: str, root: str, path: str) -> str:
    rel = path[len(root):] if root != "/" and path.startswith(root) else path
    return os.path.join(mount, rel.lstrip("/"))


def _try_child(parent: str, limit_file: str) -> tuple[bool, str]:
    probe = os.path.join(parent, f"cts-probe-{os.getpid()}-{threading.get_ident()}")
    try:
        os.mkdir(probe)
    except OSError as e:
        return False, f"cannot create a child of {parent}: {e.strerror}"
    try:
        ok = os.path.exists(os.path.join(probe, limit_file))
        return ok, "ok" if ok else f"{parent} has no memory controller for its children"
    finally:
        try:
            os.rmdir(probe)
        except OSError:
            pass


_cgroup_probe_lock = threading.Lock()


def _memory_cgroup_parent() -> tuple[str, str, str]:
    """("cgroup2" | "cgroup1" | "", parent dir, reason) — where per-run memory cgroups go."""
    with _cgroup_probe_lock:  # probed once per process, not concurrently by a pool's threads
        return _probe_memory_cgroup_parent()


@functools.lru_cache(maxsize=None)
def _probe_memory_cgroup_parent() -> tuple[str, str, str]:
    own = _own_cgroups()
    reasons = []
    for fstype, mount, root, opts in _cgroup_mounts():
        if fstype == "cgroup2" and "" in own:
            parent = _cgroup_dir(mount, root, own[""])
            try:
                with open(os.path.join(parent, "cgroup.controllers"), encoding="ascii") as f:
                    has_memory = "memory" in f.read().split()
            except OSError:
                has_memory = False
            if not has_memory:
                reasons.append(f"cgroup2 at {mount}: no memory controller")
                continue
            ok, why = _try_child(parent, "memory.max")
            if ok:
                return "cgroup2", parent, "ok"
            reasons.append(f"cgroup2: {why}")
        elif fstype == "cgroup" and "memory" in opts.split(",") and "memory" in own:
            parent = _cgroup_dir(mount, root, own["memory"])
            ok, why = _try_child(parent, "memory.limit_in_bytes")
            if ok:
                return "cgroup1", parent, "ok"
            reasons.append(f"cgroup1: {why}")
    return "", "", "; ".join(reasons) or "no cgroup file system mounted"


def memory_enforcement(limits: SandboxLimits) -> tuple[str, str]:
    """How total_memory_mb is enforced here: ("cgroup2" | "cgroup1" | "rlimits", explanation).

    "rlimits" means no memory cgroup can be made (not root, no delegated controller): the run's
    memory is then bounded only by max_procs processes × memory_mb of address space each.
    """
    kind, parent, why = _memory_cgroup_parent()
    if kind:
        return kind, f"a {kind} memory cgroup per run under {parent}: {limits.total_memory_mb} MB in all"
    return "rlimits", (f"no memory cgroup ({why}); bound: max_procs × memory_mb = "
                       f"{limits.max_procs} × {limits.memory_mb} MB = "
                       f"{limits.max_procs * limits.memory_mb} MB")


class _MemoryCgroup:
    """A per-run memory cgroup (created before launch, emptied and removed after)."""

    def __init__(self, limits: SandboxLimits):
        self.kind, parent, _ = _memory_cgroup_parent()
        self.path = None
        if not self.kind:
            return
        path = os.path.join(parent, f"cts-sbx-{os.getpid()}-{next(_cg_counter)}")
        limit = str(limits.total_memory_mb << 20)
        try:
            os.mkdir(path)
            if self.kind == "cgroup2":
                self._write(path, "memory.max", limit)
                self._write(path, "memory.swap.max", "0", optional=True)
            else:
                self._write(path, "memory.limit_in_bytes", limit)
                self._write(path, "memory.memsw.limit_in_bytes", limit, optional=True)
                self._write(path, "memory.swappiness", "0", optional=True)
        except OSError as e:
            log.warning("could not set up memory cgroup %s: %s", path, e)
            try:
                os.rmdir(path)
            except OSError:
                pass
            return
        self.path = path

    @staticmethod
    def _write(path: str, name: str, value: str, optional: bool = False) -> None:
        try:
            with open(os.path.join(path, name), "w", encoding="ascii") as f:
                f.write(value)
        except OSError:
            if not optional:
                raise

    def _read(self, name: str) -> str:
        try:
            with open(os.path.join(self.path, name), encoding="ascii") as f:
                return f.read()
        except OSError:
            return ""

    def wrap(self, argv: list[str]) -> list[str]:
        """argv that first moves itself into the cgroup (so every descendant is in it)."""
        if self.path is None:
            return argv
        procs = os.path.join(self.path, "cgroup.procs")
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *argv]

    def oom_killed(self) -> bool:
        if self.path is None:
            return False
        text = self._read("memory.events" if self.kind == "cgroup2" else "memory.oom_control")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key in ("oom_kill", "oom") and value.strip().isdigit() and int(value) > 0:
                return True
        return False

    def peak_bytes(self) -> int | None:
        if self.path is None:
            return None
        text = self._read("memory.peak" if self.kind == "cgroup2" else "memory.max_usage_in_bytes")
        return int(text) if text.strip().isdigit() else None

    def close(self) -> None:
        """Kill whatever is left in the cgroup and remove it."""
        if self.path is None:
            return
        for _ in range(50):
            pids = [int(p) for p in self._read("cgroup.procs").split() if p.isdigit()]
            if not pids:
                break
            if self.kind == "cgroup2" and os.path.exists(os.path.join(self.path, "cgroup.kill")):
                self._write(self.path, "cgroup.kill", "1", optional=True)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.01)
        log.warning("could not remove memory cgroup %s", self.path)


def _command(level: str, interp: str, workdir: str, uid: int | None, limits: SandboxLimits,
             files: Mapping[str, int]) -> tuple[list[str], str]:
    """(argv, cwd) for one run at `level`; `files`: {relative name: readable fd} (bwrap)."""
    python = _python_argv(interp)
    root = uid is not None
    if level == "bwrap":
        argv = _bwrap_argv(interp, files, uid, limits) + _drop_argv(uid, root) + python
    elif level == "unshare":
        argv = _unshare_argv(interp, uid, limits) + _drop_argv(uid, True) + python
    elif level == "rlimits":
        argv = _drop_argv(uid, root) + python
    else:
        raise ValueError(f"unknown isolation level {level!r}; expected one of {LEVELS}")
    return _prlimit_argv(limits) + argv, workdir


# ----------------------------------------------------------------------------- probing

_PROBE_SOURCE = "import sys, json\nprint(json.dumps([6 * 7, sys.flags.no_site]))\n"


def _probe(level: str) -> tuple[bool, str]:
    """Run a trivial program at `level` with the current interpreter; (works, reason)."""
    return _probe_with(level, _interpreter())


@functools.lru_cache(maxsize=None)
def _probe_with(level: str, interp: str) -> tuple[bool, str]:
    tools = {"bwrap": ("bwrap", "prlimit", "setpriv"), "unshare": ("unshare", "prlimit", "setpriv"),
             "rlimits": ("prlimit", "setpriv")}[level]
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return False, f"missing {', '.join(missing)}"
    try:
        res = _run(_PROBE_SOURCE, stdin=b"", limits=SandboxLimits(timeout_s=20.0), level=level)
    except OSError as e:
        return False, f"launch failed: {e}"
    if res.stdout.strip() == "[42, 1]":
        return True, "ok"
    return False, f"probe returned {res.returncode}: {(res.stderr or res.stdout).strip()[-300:]}"


def available_levels() -> list[str]:
    """The isolation levels that work here, best first (each probed once per process)."""
    return [lvl for lvl in LEVELS if _probe(lvl)[0]]


def _best_level(forced: str | None) -> str:
    return _best_level_with(forced, _interpreter())


@functools.lru_cache(maxsize=None)
def _best_level_with(forced: str | None, interp: str) -> str:
    if forced is not None:
        ok, why = _probe(forced)
        if not ok:
            raise SandboxUnavailable(f"{_ENV_LEVEL}={forced}: that level does not work here "
                                     f"({why})")
        level = forced
    else:
        reasons = {}
        for lvl in LEVELS:
            ok, reasons[lvl] = _probe(lvl)
            if ok:
                level = lvl
                break
        else:
            raise SandboxUnavailable(f"no sandbox level works here: {reasons}")
        if level != "bwrap":
            msg = (f"code sandbox isolation level is {level!r} (bwrap: {reasons['bwrap']})"
                   + ("; NO network or file-system isolation" if level == "rlimits" else ""))
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            log.warning(msg)
    log.info("code sandbox isolation level: %s", level)
    return level


def isolation_level() -> str:
    """The level `run_python` uses: $CTS_SANDBOX_ISOLATION if set, else the best that works."""
    forced = os.environ.get(_ENV_LEVEL) or None
    if forced is not None and forced not in LEVELS:
        raise ValueError(f"{_ENV_LEVEL}={forced!r}: expected one of {LEVELS}")
    return _best_level(forced)


# ----------------------------------------------------------------------------- running

def _feed_stdin(pipe, data: bytes) -> None:
    try:
        if data:
            pipe.write(data)
    except (BrokenPipeError, OSError):
        pass  # the program exited or closed stdin without reading everything
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _pids_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) host processes whose real uid is `uid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
                if fields["State"].split()[0] != "Z" and int(fields["Uid"].split()[0]) == uid:
                    pids.append(int(entry))
            except (OSError, ValueError, KeyError):
                continue
    return pids


def _reap_uid(uid: int, attempts: int = 20) -> None:
    """SIGKILL every process of the private `uid` (those that left the session included).

    Without a pid namespace (the rlimits level) a program can outlive the process-group kill
    by calling setsid, or by forking while the group is being killed. `kill(-1)` sent *as*
    that uid reaches exactly its processes; repeat until none is left. (Zombies are skipped:
    orphans are reaped by the host's init, which in some containers never does it.)
    """
    for _ in range(attempts):
        if not _pids_of_uid(uid):
            return
        subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
                        "/bin/sh", "-c", "kill -9 -1"], env={}, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        time.sleep(0.01)
    log.warning("sandbox uid %d still has processes after %d kill sweeps", uid, attempts)


def _remove_tree(path: str) -> None:
    """rmtree that also clears dirs the program made unreadable (chmod 000) for us."""
    def make_writable_and_retry(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable_and_retry)
    else:  # the unprivileged-caller test drives this module with the system python
        shutil.rmtree(path, onerror=make_writable_and_retry)
    if os.path.exists(path):
        log.warning("could not remove sandbox dir %s", path)


def _run(source: str, *, stdin: bytes, limits: SandboxLimits, level: str,
         extra_files: Mapping[str, str | bytes] | None = None) -> SandboxResult:
    interp = _interpreter()
    uid = _next_uid() if _is_root() else None
    workdir = tempfile.mkdtemp(prefix="cts-sbx-")
    fds: dict[str, int] = {}
    cgroup = None
    try:
        files = {_ENTRY: source, **(extra_files or {})}
        for name, content in files.items():
            if os.path.isabs(name) or ".." in Path(name).parts:
                raise ValueError(f"extra file name {name!r} must be a relative path inside "
                                 "the sandbox")
            path = Path(workdir, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        if uid is not None:
            for root, dirs, names in os.walk(workdir):
                for n in [*dirs, *names]:
                    os.chown(os.path.join(root, n), uid, uid)
            os.chown(workdir, uid, uid)
        os.chmod(workdir, 0o700)
        if level == "bwrap":  # copied into the sandbox's tmpfs by bwrap itself
            for name in files:
                fds[name] = os.open(os.path.join(workdir, name), os.O_RDONLY)
        argv, cwd = _command(level, interp, workdir, uid, limits, fds)
        cgroup = _MemoryCgroup(limits)
        return _execute(cgroup.wrap(argv), cwd, stdin, limits, level, cgroup, list(fds.values()))
    finally:
        for fd in fds.values():
            os.close(fd)
        if cgroup is not None:
            cgroup.close()
        if uid is not None and level == "rlimits":
            _reap_uid(uid)  # the other levels' pid namespace dies with its first process
        _remove_tree(workdir)


def _execute(argv: list[str], cwd: str, stdin: bytes, limits: SandboxLimits,
             level: str, cgroup: _MemoryCgroup | None = None,
             pass_fds: Sequence[int] = ()) -> SandboxResult:
    cap = limits.max_output_bytes
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=dict(_CHILD_ENV), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, close_fds=True, pass_fds=tuple(pass_fds))
    feeder = threading.Thread(target=_feed_stdin, args=(proc.stdin, stdin), daemon=True)
    feeder.start()
    out_buf, err_buf = bytearray(), bytearray()
    bufs = {proc.stdout.fileno(): out_buf, proc.stderr.fileno(): err_buf}
    sel = selectors.DefaultSelector()
    for f in (proc.stdout, proc.stderr):
        os.set_blocking(f.fileno(), False)
        sel.register(f.fileno(), selectors.EVENT_READ)
    deadline = start + limits.timeout_s
    timed_out = truncated = killed = False
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                if not killed:
                    timed_out = True
                    _kill_group(proc)
                    killed = True
                    deadline = now + 1.0  # grace to drain; escaped grandchildren may hold pipes
                    continue
                break
            for key, _ in sel.select(timeout=deadline - now):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                room = cap - len(buf)
                buf += chunk[:max(room, 0)]
                if len(chunk) > room and not truncated:
                    truncated = True
                    _kill_group(proc)
                    killed = True
                    deadline = min(deadline, time.monotonic() + 1.0)
        try:
            status = proc.wait(timeout=max(deadline - time.monotonic(), 0.0) + 0.5)
        except subprocess.TimeoutExpired:
            if not killed:
                timed_out = True
            _kill_group(proc)
            killed = True
            status = proc.wait()
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    wall = time.monotonic() - start
    signum = None
    if status < 0:
        signum = -status
    elif level in ("bwrap", "unshare") and status > 128 and status - 128 < signal.NSIG:
        signum = status - 128  # bwrap and the setup shell report a signalled child as 128+N
    returncode = None if (signum is not None or killed) else status
    return SandboxResult(
        returncode=returncode,
        stdout=_decode(out_buf),
        stderr=_decode(err_buf),
        timed_out=timed_out,
        output_truncated=truncated,
        killed_by_signal=signum if signum is not None else (signal.SIGKILL if killed else None),
        wall_s=wall,
        isolation=level,
        memory_exceeded=cgroup.oom_killed() if cgroup is not None else False,
        memory_peak_bytes=cgroup.peak_bytes() if cgroup is not None else None,
    )


def _decode(b: bytes | bytearray) -> str:
    return bytes(b).decode("utf-8", errors="replace")


def run_python(source: str, *, stdin: str = "", limits: SandboxLimits = SandboxLimits(),
               isolation: str | None = None,
               extra_files: Mapping[str, str | bytes] | None = None) -> SandboxResult:
    """Run `source` as `main.py` in a fresh sandbox and return what happened.

    Args:
      source: Python source, run as the script `main.py` in the private dir (the cwd).
      stdin: text fed to the program's stdin (UTF-8), then closed.
      limits: resource limits (see SandboxLimits).
      isolation: force a level from LEVELS (default: `isolation_level()`); raises
        SandboxUnavailable if that level does not work here.
      extra_files: {relative path: content} written next to main.py before the run.
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be str, got {type(source).__name__}")
    if isolation is None:
        level = isolation_level()
    else:
        if isolation not in LEVELS:
            raise ValueError(f"isolation={isolation!r}: expected one of {LEVELS}")
        ok, why = _probe(isolation)
        if not ok:
            raise SandboxUnavailable(f"isolation level {isolation!r} does not work here ({why})")
        level = isolation
    return _run(source, stdin=stdin.encode("utf-8"), limits=limits, level=level,
                extra_files=extra_files)


def run_many(sources: Sequence[str], *, stdins: Sequence[str] | None = None,
             limits: SandboxLimits = SandboxLimits(), workers: int = 2,
             isolation: str | None = None) -> list[SandboxResult]:
    """run_python over many sources with a bounded thread pool; results keep the input order."""
    if stdins is None:
        stdins = [""] * len(sources)
    if len(stdins) != len(sources):
        raise ValueError(f"stdins has {len(stdins)} entries but sources has {len(sources)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if isolation is None:
        isolation = isolation_level()  # resolve (and warn) once, outside the pool
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda a: run_python(a[0], stdin=a[1], limits=limits,
                                                  isolation=isolation),
                             zip(sources, stdins)))
