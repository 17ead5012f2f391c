"""Deterministic, leakage-free train/dev/test splits.

A problem's split is a pure function of its id (sha256 of `seed:id` mapped to [0, 1)), so adding
or removing other problems never moves it. Near-duplicate questions (character 5-gram Jaccard ≥
threshold on case/space-normalised text, candidates found by MinHash banding, then verified
exactly) are clustered, and a whole cluster goes to the split of its smallest id: no question
appears, even reworded a little, in two splits. Each split gets a manifest with content hashes
that the fairness fingerprint uses.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from cts.io import stable_json
from cts.tasks.schema import SPLITS, Problem

__all__ = ["assign_splits", "near_duplicate_clusters", "split_manifest", "horizon_bucket"]

_SHINGLE = 5
_BANDS, _ROWS = 16, 4  # 64 MinHash functions; detects Jaccard 0.9 pairs with p ≈ 1 − (1 − 0.9⁴)¹⁶


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def _shingles(text: str) -> set[int]:
    t = _normalise(text)
    if len(t) < _SHINGLE:
        return {hash(t) & 0xFFFFFFFF}
    return {int.from_bytes(hashlib.blake2b(t[i:i + _SHINGLE].encode(), digest_size=4).digest(), "big")
            for i in range(len(t) - _SHINGLE + 1)}


def near_duplicate_clusters(texts: Sequence[str], threshold: float = 0.9) -> list[int]:
    """Cluster label per text (the index of the cluster's first member)."""
    n = len(texts)
    shingles = [_shingles(t) for t in texts]
    rng = np.random.default_rng(0)
    a = rng.integers(1, 2**31 - 1, size=_BANDS * _ROWS, dtype=np.uint64)
    b = rng.integers(0, 2**31 - 1, size=_BANDS * _ROWS, dtype=np.uint64)
    prime = np.uint64(2**31 - 1)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, sh in enumerate(shingles):
        x = np.fromiter(sh, dtype=np.uint64)
        sig = ((np.outer(a, x) + b[:, None]) % prime).min(axis=1)
        for band in range(_BANDS):
            buckets[(band, *sig[band * _ROWS:(band + 1) * _ROWS].tolist())].append(i)
    checked = set()
    for members in buckets.values():
        for j in range(1, len(members)):
            for p in members[:j]:
                q = members[j]
                if (p, q) in checked:
                    continue
                checked.add((p, q))
                inter = len(shingles[p] & shingles[q])
                if inter / (len(shingles[p]) + len(shingles[q]) - inter) >= threshold:
                    parent[find(q)] = find(p)
    return [find(i) for i in range(n)]


def assign_splits(problems: Sequence[Problem], fractions: dict[str, float], seed: int,
                  near_dup_threshold: float = 0.9) -> tuple[list[Problem], dict]:
    """Problems with `split` set, and a report {n_clusters_merged, n_per_split}."""
    if set(fractions) != set(SPLITS) or abs(sum(fractions.values()) - 1) > 1e-9:
        raise ValueError(f"split fractions must cover {SPLITS} and sum to 1, got {fractions}")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"duplicate problem ids: {dup}")
    labels = near_duplicate_clusters([p.prompt for p in problems], near_dup_threshold)
    cluster_rep: dict[int, str] = {}
    for p, c in zip(problems, labels):
        cluster_rep[c] = min(cluster_rep.get(c, p.id), p.id)
    edges = np.cumsum([fractions[s] for s in SPLITS])
    out = []
    for p, c in zip(problems, labels):
        u = _unit_hash(f"{seed}:{cluster_rep[c]}")
        split = SPLITS[int(np.searchsorted(edges, u, side="right"))] if u < edges[-1] else SPLITS[-1]
        out.append(Problem.from_row({**p.to_row(), "split": split}, where=p.id))
    sizes = defaultdict(int)
    for c in labels:
        sizes[c] += 1
    report = {"near_duplicate_clusters": sum(1 for s in sizes.values() if s > 1),
              "problems_in_near_duplicate_clusters": sum(s for s in sizes.values() if s > 1),
              "n_per_split": {s: sum(p.split == s for p in out) for s in SPLITS}}
    return out, report


def horizon_bucket(h: int, edges: Sequence[int] = (2, 4, 6, 8)) -> str:
    """`≤2`, `3-4`, `5-6`, `7-8`, `>8` style bucket names for horizon breakdowns."""
    lo = 0
    for e in edges:
        if h <= e:
            return f"{lo + 1}-{e}" if lo else f"<={e}"
        lo = e
    return f">{edges[-1]}"


def split_manifest(problems: Sequence[Problem], split: str) -> dict:
    rows = sorted((p for p in problems if p.split == split), key=lambda p: p.id)
    content = hashlib.sha256("\n".join(stable_json(p.to_row()) for p in rows).encode()).hexdigest()
    horizons = defaultdict(int)
    for p in rows:
        horizons[horizon_bucket(p.horizon)] += 1
    return {"split": split, "n": len(rows), "sha256": content,
            "horizon_buckets": dict(sorted(horizons.items())),
            "ids_sha256": hashlib.sha256("\n".join(p.id for p in rows).encode()).hexdigest()}
