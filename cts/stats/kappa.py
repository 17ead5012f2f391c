"""Cohen's κ between two raters, with undefined κ reported as None plus the reason.

κ = 1 − Σ w∘O / Σ w∘E over the confusion matrix O of the two label sequences and its
chance expectation E = outer(row sums, column sums)/n (the same definition as
`sklearn.metrics.cohen_kappa_score`, including its "linear"/"quadratic" weights over the
label order). sklearn returns NaN when chance disagreement is zero (both raters used one
and the same label for every item); here that is `kappa=None` with `reason` saying so.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["KappaResult", "cohen_kappa", "pairwise_kappa"]


@dataclass(frozen=True)
class KappaResult:
    """κ or the reason it is undefined.

    Attributes:
      kappa: Cohen's κ, or None when undefined.
      n: items rated by both raters.
      observed_agreement: fraction of identical labels (None when n = 0).
      expected_agreement: chance agreement Σ_k p_a(k) p_b(k) (None when n = 0).
      reason: why kappa is None, else None.
    """

    kappa: float | None
    n: int
    observed_agreement: float | None
    expected_agreement: float | None
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _sorted_labels(labels: set) -> list:
    """Natural order (as sklearn's np.unique) when comparable, else by repr."""
    try:
        return sorted(labels)
    except TypeError:
        return sorted(labels, key=repr)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable], *, labels: Sequence[Hashable] | None = None,
                weights: str | None = None) -> KappaResult:
    """Cohen's κ of two equally long label sequences (item i rated a[i] and b[i]).

    Args:
      a, b: [n] labels.
      labels: the label set and order (needed for weighted κ on ordinal labels); default:
        sorted union of the labels used.
      weights: None, "linear" or "quadratic" (disagreement weight |i−j| or (i−j)² by label index).
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: rater sequences differ in length ({len(a)} vs {len(b)})")
    if weights not in (None, "linear", "quadratic"):
        raise ValueError(f"cohen_kappa: weights must be None, 'linear' or 'quadratic', got {weights!r}")
    n = len(a)
    if n == 0:
        return KappaResult(None, 0, None, None, "no items rated by both raters")
    labels = list(labels) if labels is not None else _sorted_labels(set(a) | set(b))
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted({x for x in a + b if x not in index}, key=repr)
    if unknown:
        raise ValueError(f"cohen_kappa: labels {unknown} not in the label set {labels}")
    k = len(labels)
    confusion = np.zeros((k, k))
    for x, y in zip(a, b):
        confusion[index[x], index[y]] += 1
    expected = np.outer(confusion.sum(1), confusion.sum(0)) / n  # chance: independent marginals
    i, j = np.indices((k, k))
    w = {None: (i != j).astype(float), "linear": np.abs(i - j).astype(float),
         "quadratic": ((i - j) ** 2).astype(float)}[weights]
    p_o = float(np.trace(confusion) / n)
    p_e = float(np.trace(expected) / n)
    chance_disagreement = float((w * expected).sum())
    if chance_disagreement == 0:
        used = _sorted_labels(set(a) | set(b))
        return KappaResult(None, n, p_o, p_e,
                           f"undefined: both raters gave every item the label {used[0]!r}, so chance "
                           "agreement is 1" if len(used) == 1 else
                           "undefined: zero chance disagreement under these weights")
    return KappaResult(float(1 - (w * confusion).sum() / chance_disagreement), n, p_o, p_e)


def pairwise_kappa(ratings: Mapping[str, Mapping[Hashable, Hashable]], *,
                   labels: Sequence[Hashable] | None = None, weights: str | None = None) -> list[dict]:
    """κ for every pair of raters over the items both rated.

    Args:
      ratings: {rater: {item_id: label}}; raters may be annotators or teachers, so this
        serves teacher-vs-human and teacher-vs-teacher agreement alike.

    Returns one dict per unordered pair (sorted by name): rater_a, rater_b, plus KappaResult fields.
    """
    out = []
    for ra, rb in itertools.combinations(sorted(ratings), 2):
        common = sorted(set(ratings[ra]) & set(ratings[rb]), key=repr)
        res = cohen_kappa([ratings[ra][i] for i in common], [ratings[rb][i] for i in common],
                          labels=labels, weights=weights)
        out.append({"rater_a": ra, "rater_b": rb, **res.to_dict()})
    return out
