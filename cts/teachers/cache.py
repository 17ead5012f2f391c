"""Content-addressed on-disk cache of LLM responses.

Key = sha256 of the canonical JSON of everything that determines a response:
{provider, model, messages (system text included), temperature, max_tokens, other params,
prompt_version}. API keys are never part of a request description, so never part of a key.

Layout: `<root>/<key[:2]>/<key>.json`, one file per entry (sharding keeps directories small),
each written atomically (temp file + rename) so a killed run leaves no torn entry. An entry holds
the request description (for audit), the raw response text and the provider's token usage.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cts.io import DataError, atomic_write_text, stable_json

__all__ = ["CacheStats", "CachedResponse", "ResponseCache", "request_key"]

_ENTRY_FORMAT = 1  # bump if the entry layout changes


def request_key(request: dict[str, Any]) -> str:
    """sha256 hex digest of the canonical JSON of a request description."""
    return hashlib.sha256(stable_json(request).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedResponse:
    """A stored response: the raw text the model returned and its token usage."""

    text: str
    input_tokens: int
    output_tokens: int


@dataclass
class CacheStats:
    """Counters for provenance: lookups that hit / missed and bytes read / written."""

    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    entries_written: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class ResponseCache:
    """Directory of cached responses. Thread-safe counters; entries are immutable once written."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.stats = CacheStats()
        self._lock = threading.Lock()

    def path_for(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be a sha256 hex digest, got {key!r}")
        return self.root / key[:2] / f"{key}.json"

    def get(self, request: dict[str, Any]) -> CachedResponse | None:
        """The stored response for `request`, or None (counted as a miss)."""
        key = request_key(request)
        path = self.path_for(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            with self._lock:
                self.stats.misses += 1
            return None
        try:
            entry = json.loads(raw)
            if entry["key"] != key:
                raise DataError(f"{path}: entry key {entry['key']!r} does not match its file name")
            resp = CachedResponse(text=entry["response_text"],
                                  input_tokens=int(entry["usage"]["input_tokens"]),
                                  output_tokens=int(entry["usage"]["output_tokens"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: corrupt cache entry ({e}); delete it to refetch") from e
        with self._lock:
            self.stats.hits += 1
            self.stats.bytes_read += len(raw)
        return resp

    def put(self, request: dict[str, Any], response: CachedResponse) -> Path:
        """Store `response` for `request` atomically; returns the entry's path."""
        key = request_key(request)
        path = self.path_for(key)
        entry = {
            "format": _ENTRY_FORMAT,
            "key": key,
            "request": request,
            "response_text": response.text,
            "usage": {"input_tokens": response.input_tokens, "output_tokens": response.output_tokens},
        }
        text = json.dumps(entry, sort_keys=True, ensure_ascii=False, indent=1) + "\n"
        atomic_write_text(path, text)
        with self._lock:
            self.stats.bytes_written += len(text.encode("utf-8"))
            self.stats.entries_written += 1
        return path

    def delete(self, request: dict[str, Any]) -> bool:
        """Remove the entry for `request` (a reply found invalid); True if there was one."""
        try:
            self.path_for(request_key(request)).unlink()
            return True
        except FileNotFoundError:
            return False

    def provenance(self) -> dict[str, Any]:
        """Cache directory and counters, for a run's provenance record."""
        with self._lock:
            return {"cache_dir": str(self.root), **self.stats.to_dict()}
