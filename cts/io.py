"""Atomic file output and line-checked JSONL input.

Every artifact the pipeline writes goes through `atomic_write*`: the bytes land in a temp
file in the destination folder and are renamed over the target, so a killed job never
leaves a half-written file that Snakemake (or a reader) could mistake for a finished one.

One writer: when a job runs as several JAX processes (cts.distributed), only process 0's
writes reach the file system; the others run the same code and write into os.devnull.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "DataError",
    "is_writer_process",
    "atomic_open",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_jsonl",
    "ConfigError",
    "read_json",
    "read_jsonl",
    "sha256_file",
    "sha256_text",
    "stable_json",
]


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the field."""


class ConfigError(ValueError):
    """A config that fails the schema or is inconsistent; the message names the key and the value.
    Defined here, below every layer, so a module that checks its part of the config (such as
    cts.model.pretrained) raises it without importing cts.config; cts.config re-exports it."""


def is_writer_process() -> bool:
    """False only in a multi-process JAX job on a process other than 0. Never imports JAX: a
    process that has not loaded it (data, stats and report rules) is a single process."""
    jax = sys.modules.get("jax")
    if jax is None or not jax.distributed.is_initialized():
        return True
    return jax.process_index() == 0


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[Any]:
    """Open a temp file next to `path`; rename it over `path` only if the block succeeds."""
    if not is_writer_process():  # another process of this job writes the file
        with open(os.devnull, mode, **kwargs) as f:
            yield f
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def stable_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) used for hashing and fingerprints."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as JSON lines; returns the number written."""
    n = 0
    with atomic_open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from e


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = ()) -> list[dict]:
    """Read a JSONL file; a malformed line or a missing key raises DataError naming file:line."""
    required = tuple(required)
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from e
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise DataError(f"{path}:{lineno}: missing key(s) {missing}")
            rows.append(row)
    return rows


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
