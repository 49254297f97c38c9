"""Evaluation metrics over graded samples: avg@n, pass@k, maj@k, format rate.

Each problem has ``n`` samples, each graded by :func:`sgsd.verifier.grade` into an
extracted final answer (None: no complete ``\\boxed{}``) and a verdict. Over a dataset:

- ``avg@n``: the mean over problems of the fraction of correct samples (the paper's
  avg@12, Sec. 4.1). It is an unbiased estimate of the one-sample accuracy.
- ``pass@k``: the mean over problems of the unbiased estimator of Chen et al. (2021,
  "Evaluating Large Language Models Trained on Code", eq. 1) from ``n >= k`` samples of
  which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)``, computed as the stable product
  ``1 - prod_{i=n-c+1..n} (1 - k/i)``. With ``k = n`` it is the fraction of problems
  solved at least once.
- ``maj@k``: majority vote over the extracted answers of the first ``k`` samples (in
  sample order). Samples without an answer abstain. Votes are grouped by equivalence
  (:func:`vote_keys`): every correct answer equals the reference, so all correct samples
  vote together whatever their spelling; wrong answers are grouped by the verifier's
  string normalisation, then by an ``equivalent(a, b)`` check (the verifier's symbolic
  comparison by default) against each group's first answer. A tie between the largest
  groups gives the expected score of a uniformly random tie-break: (correct groups among
  the tied) / (tied groups), so the score never depends on sample order.
- ``format_rate``: the fraction of samples with an extractable final answer.

Everything here is a pure function of the graded samples except the default
``equivalent``, which calls the verifier (math-verify in its worker processes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "CORRECT_KEY",
    "GradedSample",
    "ProblemScore",
    "majority_score",
    "pass_at_k",
    "score_problem",
    "verifier_equivalent",
    "vote_keys",
]

CORRECT_KEY = "<correct>"  # the vote key every correct answer shares


@dataclass(frozen=True)
class GradedSample:
    """One sample's verdict: ``extracted`` is None when it has no final ``\\boxed{}``."""

    extracted: str | None
    correct: bool


@dataclass(frozen=True)
class ProblemScore:
    """One problem's scores, each in [0, 1]."""

    samples: int
    correct: int
    accuracy: float  # correct / samples: the problem's share of avg@n
    pass_at_k: float
    maj_at_k: float
    with_answer: int  # samples with an extractable final answer


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct (Chen et al. 2021); needs ``1 <= k <= n``."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def verifier_equivalent(a: str, b: str) -> bool:
    """``a`` and ``b`` name the same value per :func:`sgsd.verifier.grade` (strings, then math-verify)."""
    from sgsd.verifier import grade

    return grade("\\boxed{" + a + "}", b).correct


def vote_keys(samples: Sequence[GradedSample],
              equivalent: Callable[[str, str], bool] | None = verifier_equivalent) -> list[str | None]:
    """One vote key per sample (None: abstains); equal keys vote together.

    ``equivalent=None`` groups wrong answers by normalised string only.
    """
    from sgsd.verifier import normalize_answer

    keys: list[str | None] = []
    groups: list[tuple[str, str]] = []  # (normalised key, first raw answer) per wrong-answer group
    for sample in samples:
        if sample.extracted is None:
            keys.append(None)
            continue
        if sample.correct:
            keys.append(CORRECT_KEY)
            continue
        norm = normalize_answer(sample.extracted)
        key = next((k for k, _ in groups if k == norm), None)
        if key is None and equivalent is not None:
            key = next((k for k, first in groups if equivalent(sample.extracted, first)), None)
        if key is None:
            key = norm
            groups.append((norm, sample.extracted))
        keys.append(key)
    return keys


def majority_score(keys: Sequence[str | None]) -> float:
    """Expected correctness of the majority answer among ``keys`` (ties split evenly; no vote: 0)."""
    counts: dict[str, int] = {}
    for key in keys:
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return 0.0
    top = max(counts.values())
    tied = [key for key, count in counts.items() if count == top]
    return tied.count(CORRECT_KEY) / len(tied)


def score_problem(samples: Sequence[GradedSample], k: int,
                  equivalent: Callable[[str, str], bool] | None = verifier_equivalent) -> ProblemScore:
    """Scores of one problem's samples (in sample order). ``k`` is capped at ``len(samples)``."""
    n = len(samples)
    if n == 0:
        raise ValueError("a problem needs at least one sample to be scored")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, n)
    c = sum(s.correct for s in samples)
    return ProblemScore(samples=n, correct=c, accuracy=c / n, pass_at_k=pass_at_k(n, c, k),
                        maj_at_k=majority_score(vote_keys(samples[:k], equivalent)),
                        with_answer=sum(s.extracted is not None for s in samples))
