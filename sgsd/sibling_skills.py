"""The sibling methods' skills of one run: candidates, selection, learning, state.

SGSD retrieves skill-mistake pairs from its bank (:mod:`sgsd.retrieval`). Skill-SD and SDAR
condition ONE teacher on skills of their own (:mod:`sgsd.skill_sources`): Skill-SD on the
trajectory summaries of a problem's earlier rollouts, SDAR on static skill files. A
:class:`SiblingSkills` holds a run's source, its retrieval strategy
(:mod:`sgsd.skill_strategies`) and, for summaries, the background summarizer:

* :meth:`select` (the teacher pass): each distinct problem of the batch is asked once, so the
  ``n`` rollouts of a problem share one teacher (one prompt, one strategy draw);
* :meth:`observe` (after the pass): each rollout's verifier reward credits the skills its
  teacher saw (UCB's pulls; the other strategies learn nothing);
* :meth:`submit` (step end): finished rollouts go to the summarizer, which writes off the
  step's critical path; :meth:`collect` takes in what finished (the store already holds it);
* :meth:`state_dict` / :meth:`load_state_dict`: the strategy's statistics; the summaries are
  their own atomically saved file (:class:`~sgsd.skill_sources.SummaryStore`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sgsd.atomic import atomic_write_json
from sgsd.llm.base import GenerationSettings, LLMClient
from sgsd.records import RolloutRecord
from sgsd.skill_sources import Skill, SummaryStore, TrajectorySummarizer, load_skill_files, task_key
from sgsd.skill_strategies import SkillStrategy, make_strategy

__all__ = ["SiblingSkills", "make_sibling_skills"]

_STATE_FILE = "skill_strategy.json"
_STORE_FILE = "summaries.json"


class SiblingSkills:
    """Skills for Skill-SD / SDAR teachers.

    Args:
        strategy: picks a problem's teacher skills among its candidates.
        files: the static skills (SDAR); every problem's candidates.
        store: the trajectory-summary store (Skill-SD); a problem's candidates are its summaries.
        summarizer: writes summaries into ``store`` (required with a store that should grow).
    Exactly one of ``files`` and ``store`` is the source.
    """

    def __init__(self, strategy: SkillStrategy, *, files: Sequence[Skill] | None = None,
                 store: SummaryStore | None = None, summarizer: TrajectorySummarizer | None = None) -> None:
        if (files is None) == (store is None):
            raise ValueError("give exactly one skill source: files (SDAR) or a summary store (Skill-SD)")
        if files is not None and not files:
            raise ValueError("the skill files hold no skill")
        self.strategy = strategy
        self.files = tuple(files) if files is not None else None
        self.store = store
        self.summarizer = summarizer

    @classmethod
    def from_files(cls, path: str | os.PathLike[str], strategy: SkillStrategy) -> SiblingSkills:
        return cls(strategy, files=load_skill_files(path))

    @property
    def source(self) -> str:
        return "files" if self.files is not None else "summaries"

    def candidates(self, problem: str) -> tuple[Skill, ...]:
        return self.files if self.files is not None else self.store.skills_for(problem)

    def select(self, problems: Sequence[str]) -> list[tuple[Skill, ...]]:
        """The teacher skills of each rollout (empty: no teacher for it); one draw per problem."""
        chosen: dict[str, tuple[Skill, ...]] = {}
        for problem in problems:
            if problem not in chosen:
                candidates = self.candidates(problem)
                chosen[problem] = self.strategy.select(problem, candidates, task_key(problem)) if candidates else ()
        return [chosen[p] for p in problems]

    def observe(self, problems: Sequence[str], selections: Sequence[Sequence[Skill]],
                rewards: Sequence[float]) -> None:
        """Credit each rollout's reward to the skills its teacher saw."""
        if not len(problems) == len(selections) == len(rewards):
            raise ValueError(f"{len(problems)} problems, {len(selections)} selections, {len(rewards)} rewards")
        for problem, skills, reward in zip(problems, selections, rewards):
            if skills:
                self.strategy.observe(task_key(problem), [s.name for s in skills], float(reward))

    # ------------------------------------------------------------------ summaries
    def submit(self, records: Iterable[RolloutRecord], step: int | None = None) -> int:
        """Hand finished rollouts to the summarizer (returns at once; 0 without one)."""
        if self.summarizer is None:
            return 0
        return self.summarizer.submit(records, step)

    def collect(self, wait: bool = False, timeout: float | None = None) -> int:
        """How many summaries finished since the last call (``wait``: until none is pending)."""
        if self.summarizer is None:
            return 0
        return len(self.summarizer.drain(timeout) if wait else self.summarizer.collect())

    def metrics(self) -> dict[str, float]:
        """``sgsd/skills/*``: the source's size and the summarizer's counts."""
        out: dict[str, float] = {}
        if self.files is not None:
            out["sgsd/skills/files"] = float(len(self.files))
        if self.store is not None:
            out["sgsd/skills/summaries"] = float(len(self.store))
            out["sgsd/skills/summary_tasks"] = float(self.store.num_tasks)
        if self.summarizer is not None:
            counts = self.summarizer.counts
            out["sgsd/skills/summaries_written"] = float(counts.written)
            out["sgsd/skills/summary_failures"] = float(sum(counts.failures.values()))
            out["sgsd/skills/summaries_pending"] = float(self.summarizer.pending)
        return out

    def close(self, timeout: float | None = None) -> None:
        if self.summarizer is not None:
            self.summarizer.close(timeout)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = getattr(self.strategy, "state_dict", None)
        return {"strategy": getattr(self.strategy, "name", type(self.strategy).__name__),
                "state": state() if state is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        name = getattr(self.strategy, "name", type(self.strategy).__name__)
        if state.get("strategy") != name:
            raise ValueError(f"the saved skill-retrieval state is of strategy {state.get('strategy')!r}, "
                             f"this run retrieves with {name!r}")
        if state.get("state") is not None and hasattr(self.strategy, "load_state_dict"):
            self.strategy.load_state_dict(state["state"])

    def save_checkpoint(self, folder: str | os.PathLike[str]) -> None:
        """The strategy's statistics and (summaries) a copy of the store, atomically, into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.store is not None:
            atomic_write_json(folder / _STORE_FILE, self.store.to_dict(), indent=None)
        atomic_write_json(folder / _STATE_FILE, self.state_dict())

    def load_checkpoint(self, folder: str | os.PathLike[str]) -> bool:
        """Restore what :meth:`save_checkpoint` wrote (False: nothing there). The summaries of the
        checkpoint replace the store's (a resumed run continues from the checkpointed step)."""
        folder = Path(folder)
        state_path = folder / _STATE_FILE
        if not state_path.exists():
            return False
        self.load_state_dict(json.loads(state_path.read_text(encoding="utf-8")))
        if self.store is not None and (folder / _STORE_FILE).exists():
            restored = SummaryStore(folder / _STORE_FILE, max_per_task=self.store.max_per_task)
            self.store.replace_with(restored)
        return True


def make_sibling_skills(config: Any, *, encoder: Any = None, writer: LLMClient | None = None,
                        store_path: str | os.PathLike[str] | None = None) -> SiblingSkills:
    """A run's skills from its validated settings (:class:`sgsd.config.SGSDConfig` of a sibling
    method): ``sgsd.skills.files`` (a path or a shipped name) or a summary store at ``store_path``
    grown by ``writer`` with the ``sgsd.update.*`` generation settings; the strategy
    ``sgsd.skills.strategy`` (``encoder``: the embedding strategy's)."""
    from sgsd.datasets import resolve

    sk = config.skills
    strategy = make_strategy(config.skill_strategy, k=sk.top_k, seed=sk.seed, exploration=sk.ucb_exploration,
                             encoder=encoder)
    if config.skill_source == "files":
        return SiblingSkills.from_files(resolve(sk.files, "skills"), strategy)
    store = SummaryStore(store_path, max_per_task=sk.max_per_task)
    summarizer = None
    if writer is not None:
        up = config.update
        settings = GenerationSettings(max_new_tokens=up.max_new_tokens, temperature=up.temperature, top_p=up.top_p,
                                      enable_thinking=up.enable_thinking, timeout_s=up.timeout_s)
        summarizer = TrajectorySummarizer(writer, store, settings=settings,
                                          max_completion_chars=up.max_completion_chars)
    return SiblingSkills(strategy, store=store, summarizer=summarizer)
