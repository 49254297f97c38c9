"""Which of a problem's candidate skills a teacher sees: SDAR's four retrieval strategies and
an embedding ranking (SDAR paper Sec. 3 "retrieval strategies": UCB, keyword matching, full,
random; Skill-SD: a UCB bandit over a task's summaries).

Every strategy implements ``select(problem, candidates, task=None) -> tuple[Skill, ...]``
(``candidates`` from a source of :mod:`sgsd.skill_sources`, in the source's order; ``task``
keys per-task state and defaults to the problem text) and ``observe(task, names, reward)``
(the verifier outcome of a rollout whose teacher used the skills ``names``; a no-op except
for UCB). Selections are deterministic given the strategy's seed and history.

* :class:`FullStrategy` - every candidate (SDAR's ``skill_all``).
* :class:`KeywordStrategy` - every general skill (no keywords) plus every skill with a
  keyword in the problem; the SDAR code's rule (``rlsd_utils.SkillProvider
  .get_privileged_info_from_prompt``: a task type matches if ANY of its keywords occurs in
  the lower-cased prompt, all matches are concatenated after ``general_skills``), except
  that a keyword matches whole words only (``put`` does not match ``input``).
* :class:`RandomStrategy` - ``k`` candidates uniformly without replacement, from a
  generator seeded by ``(seed, task, how many draws this task had)``: the same run gives the
  same draws whatever the batch order.
* :class:`EmbeddingStrategy` - the ``k`` candidates most similar to the problem (cosine,
  the retriever's :class:`sgsd.retrieval.Encoder`), ties broken by candidate order.
* :class:`UCBStrategy` - UCB1 (Auer, Cesa-Bianchi, Fischer 2002) per task over its
  candidates; see its docstring for the exploration constant and tie-breaking.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sgsd.checks import check, check_int
from sgsd.skill_sources import Skill

__all__ = [
    "EmbeddingStrategy",
    "FullStrategy",
    "KeywordStrategy",
    "RandomStrategy",
    "STRATEGIES",
    "SkillStrategy",
    "UCBStrategy",
    "make_strategy",
]


@runtime_checkable
class SkillStrategy(Protocol):
    name: str

    def select(self, problem: str, candidates: Sequence[Skill], task: str | None = None) -> tuple[Skill, ...]: ...

    def observe(self, task: str, names: Sequence[str], reward: float) -> None: ...


class _Stateless:
    def observe(self, task: str, names: Sequence[str], reward: float) -> None:
        """Nothing to learn."""


class FullStrategy(_Stateless):
    name = "full"

    def select(self, problem: str, candidates: Sequence[Skill], task: str | None = None) -> tuple[Skill, ...]:
        return tuple(candidates)


class KeywordStrategy(_Stateless):
    name = "keyword"

    def __init__(self) -> None:
        self._patterns: dict[str, re.Pattern[str]] = {}

    def _pattern(self, keyword: str) -> re.Pattern[str]:
        pattern = self._patterns.get(keyword)
        if pattern is None:
            # whole words: no word character right before or after; inner spaces match any whitespace
            body = r"\s+".join(re.escape(part) for part in keyword.split())
            pattern = self._patterns[keyword] = re.compile(r"(?<!\w)" + body + r"(?!\w)", re.IGNORECASE)
        return pattern

    def matches(self, problem: str, skill: Skill) -> bool:
        return any(self._pattern(kw).search(problem) for kw in skill.keywords)

    def select(self, problem: str, candidates: Sequence[Skill], task: str | None = None) -> tuple[Skill, ...]:
        return tuple(s for s in candidates if not s.keywords or self.matches(problem, s))


class RandomStrategy(_Stateless):
    name = "random"

    def __init__(self, k: int = 1, seed: int = 0) -> None:
        check_int("k", k, 1)
        self.k, self.seed = k, seed
        self._draws: dict[str, int] = {}

    def select(self, problem: str, candidates: Sequence[Skill], task: str | None = None) -> tuple[Skill, ...]:
        task = problem if task is None else task
        draw = self._draws.get(task, 0)
        self._draws[task] = draw + 1
        # str seeds are hashed with sha512 by random.seed: the same across processes and runs
        rng = random.Random(f"{self.seed}\x00{task}\x00{draw}")
        return tuple(rng.sample(list(candidates), min(self.k, len(candidates))))

    def state_dict(self) -> dict[str, Any]:
        return {"draws": dict(self._draws)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._draws = {str(k): int(v) for k, v in state["draws"].items()}


class EmbeddingStrategy(_Stateless):
    name = "embedding"

    def __init__(self, encoder: Any, k: int = 1) -> None:
        check_int("k", k, 1)
        self.encoder, self.k = encoder, k
        self._docs: dict[bytes, np.ndarray] = {}

    def _doc_vectors(self, candidates: Sequence[Skill]) -> np.ndarray:
        keys = [hashlib.sha256(s.text.encode("utf-8")).digest() for s in candidates]
        missing = {k: s.text for k, s in zip(keys, candidates) if k not in self._docs}
        if missing:
            self._docs.update(zip(missing, self.encoder.encode_documents(list(missing.values()))))
        return np.stack([self._docs[k] for k in keys])

    def select(self, problem: str, candidates: Sequence[Skill], task: str | None = None) -> tuple[Skill, ...]:
        if not candidates:
            return ()
        scores = self._doc_vectors(candidates) @ self.encoder.encode_queries([problem])[0]
        order = np.argsort(-scores, kind="stable")[: self.k]
        return tuple(candidates[i] for i in order)


class UCBStrategy:
    """UCB1 over a task's candidate skills (the arms), ``k`` arms per selection.

    Arm ``i`` of task ``x`` with ``n_i`` pulls and mean reward ``mu_i`` scores
    ``mu_i + c * sqrt(ln(N) / n_i)``, ``N`` = the pulls of the task's current candidates.
    ``c = exploration``, default ``sqrt(2)``: UCB1's constant for rewards in [0, 1] (the
    verifier's 0/1 outcome). An arm never pulled is chosen before any scored arm (its score
    is infinite). Ties, among unpulled arms or equal scores, go to the earlier candidate (the
    source's order: file order, or the oldest summary). A pull is one ``observe`` call: with
    n rollouts of a problem sharing one selection, the trainer observes each rollout's
    outcome, so the arm gets n pulls. Candidates that left the source (an evicted summary)
    lose their statistics at the next selection of their task.
    """

    name = "ucb"

    def __init__(self, k: int = 1, exploration: float = math.sqrt(2.0)) -> None:
        check_int("k", k, 1)
        check("exploration", exploration, isinstance(exploration, (int, float)) and 0 <= exploration < math.inf,
              "a finite number >= 0")
        self.k, self.exploration = k, float(exploration)
        self._arms: dict[str, dict[str, list[float]]] = {}  # task -> name -> [pulls, reward sum]

    def scores(self, task: str, candidates: Sequence[Skill]) -> list[float]:
        """Each candidate's UCB score (``inf``: never pulled)."""
        arms = self._arms.get(task, {})
        stats = [arms.get(s.name, [0.0, 0.0]) for s in candidates]
        total = sum(n for n, _ in stats)
        return [math.inf if n == 0 else r / n + self.exploration * math.sqrt(math.log(total) / n)
                for n, r in stats]

    def select(self, problem: str, candidates: Sequence[Skill], task: str | None = None) -> tuple[Skill, ...]:
        task = problem if task is None else task
        arms = self._arms.get(task)
        if arms is not None:  # forget arms that are no longer candidates
            live = {s.name for s in candidates}
            for name in [n for n in arms if n not in live]:
                del arms[name]
        scores = self.scores(task, candidates)
        order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
        return tuple(candidates[i] for i in order[: self.k])

    def observe(self, task: str, names: Sequence[str], reward: float) -> None:
        check("reward", reward, isinstance(reward, (int, float)) and math.isfinite(reward), "a finite number")
        arms = self._arms.setdefault(task, {})
        for name in names:
            stat = arms.setdefault(name, [0.0, 0.0])
            stat[0] += 1
            stat[1] += float(reward)

    def pulls(self, task: str, name: str) -> int:
        return int(self._arms.get(task, {}).get(name, [0, 0])[0])

    def state_dict(self) -> dict[str, Any]:
        return {"arms": {t: {n: list(v) for n, v in arms.items()} for t, arms in self._arms.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._arms = {str(t): {str(n): [float(v[0]), float(v[1])] for n, v in arms.items()}
                      for t, arms in state["arms"].items()}


STRATEGIES = ("embedding", "full", "keyword", "random", "ucb")


def make_strategy(name: str, *, k: int = 1, seed: int = 0, exploration: float = math.sqrt(2.0),
                  encoder: Any = None) -> SkillStrategy:
    """The strategy called ``name`` (one of :data:`STRATEGIES`)."""
    if name == "full":
        return FullStrategy()
    if name == "keyword":
        return KeywordStrategy()
    if name == "random":
        return RandomStrategy(k=k, seed=seed)
    if name == "ucb":
        return UCBStrategy(k=k, exploration=exploration)
    if name == "embedding":
        if encoder is None:
            raise ValueError("the embedding strategy needs an encoder (sgsd.retrieval.SentenceTransformerEncoder)")
        return EmbeddingStrategy(encoder, k=k)
    raise ValueError(f"unknown skill retrieval strategy {name!r}; valid: {', '.join(STRATEGIES)}")
